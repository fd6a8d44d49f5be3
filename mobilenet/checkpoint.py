"""Weights files: one ``.safetensors`` file whose header carries the JSON metadata needed to rebuild
the model (config, class names, preprocessing, provenance). No pickle: loading never runs code.

Writes are atomic (temporary file in the same folder, fsync, rename), so a crash mid-save leaves the
previous file intact. A temporary's name says who wrote it (``.<name>.<host>-<pid>-<random>.tmp``), so
``clean_stale_temporaries`` can remove those of writers that died (SIGKILL, power loss) without touching
a live writer's. Files get the usual permissions (``0666`` minus the umask, e.g. ``0644``), or keep the
mode of the file they replace.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes
from torch import nn

from .model import MobileNetV1
from .preprocessing import Preprocessing
from .weights import WeightsInfo

FORMAT_VERSION = 1
METADATA_KEY = "mobilenet"


class WeightsFileError(ValueError):
    """A weights file is missing, unreadable, or does not match the model it is loaded into."""


_TMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<host>[^.]*)-(?P<pid>\d+)-[^.]+\.tmp$")
# A temporary whose writer cannot be checked (another host, or an older name without the pid) is stale once
# it is this old: no single write takes that long.
STALE_AFTER_SECONDS = 6 * 3600


def _host() -> str:
    # The host part of temporary and lock names: no dots or dashes (they delimit the fields).
    return re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname().split(".")[0]) or "host"


def writer_tag() -> str:
    """``<host>-<pid>``: who is writing, as recorded in temporary names and lock files."""
    return f"{_host()}-{os.getpid()}"


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine (a zombie counts as dead for our purpose:
    it can write nothing more)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux ``/proc``)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere: read by setting (briefly process-wide), then restore
    os.umask(mask)
    return mask


def stale_writer(name: str, path: Path | None = None) -> bool:
    """True when ``name`` is a temporary (``.<name>.<host>-<pid>-<x>.tmp`` or a state folder
    ``.tmp-step-<n>-<host>-<pid>``) whose writer is dead: same host and no such process, or another host's (or
    an unattributed one's) that is older than ``STALE_AFTER_SECONDS``."""
    m = _TMP_NAME.match(name) or re.match(r"^\.tmp-step-\d+-(?:(?P<host>[^-]*)-)?(?P<pid>\d+)$", name)
    if m is None:
        if not (name.startswith(".") and name.endswith(".tmp")):
            return False
        host, pid = None, None  # tempfile's own name (before writers were named): judged by age
    else:
        host, pid = m.group("host"), int(m.group("pid"))
    if pid is not None and host in (None, _host()):
        return not process_alive(pid)
    if path is None:
        return False
    try:
        return time.time() - path.lstat().st_mtime > STALE_AFTER_SECONDS
    except OSError:
        return False


def clean_stale_temporaries(folder: str | os.PathLike[str], *, recursive: bool = False) -> list[Path]:
    """Remove temporaries left in ``folder`` by writers that died mid-write (see ``stale_writer``); a live
    writer's are kept. Returns what was removed. Safe to call at any time, by any process."""
    import shutil

    root = Path(folder)
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    for entry in sorted(root.iterdir()):
        if entry.name.startswith(".") and stale_writer(entry.name, entry):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
        elif recursive and entry.is_dir() and not entry.is_symlink():
            removed += clean_stale_temporaries(entry, recursive=True)
    return removed


def make_folder(folder: str | os.PathLike[str], what: str = "") -> Path:
    """``mkdir -p`` with one clear error when the folder, or a folder above it, is an existing file (instead of
    ``[Errno 17] File exists``)."""
    folder = Path(folder)
    for q in (folder, *folder.parents):
        if q.exists():
            if not q.is_dir():
                prefix = f"{what}: " if what else ""
                raise NotADirectoryError(f"{prefix}{q} is a file, not a folder")
            break
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[Any]:
    """Open a temporary file beside ``path``; on success fsync it and rename it over ``path``.

    The file ends with ``path``'s previous mode, or ``0666`` minus the umask for a new file (``mkstemp``'s
    private ``0600`` would otherwise leak into every weights file)."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder: give a file name to write")
    make_folder(path.parent, f"cannot write {path}")
    try:
        final_mode = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        final_mode = 0o666 & ~current_umask()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{writer_tag()}-", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fchmod(f.fileno(), final_mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def model_metadata(model: nn.Module) -> dict[str, Any]:
    """Architecture name and config of a model this package can rebuild."""
    if isinstance(model, MobileNetV1):  # BN folded away (mobilenet.deploy.fold) is another state-dict layout
        arch = "mobilenet_v1_folded" if getattr(model, "bn_folded", False) else "mobilenet_v1"
        return {"architecture": arch, "config": model.config.to_dict()}
    to_metadata = getattr(model, "to_metadata", None)
    if callable(to_metadata):
        return to_metadata()
    raise TypeError(f"cannot save a {type(model).__name__}: it has no config this package can rebuild")


def save(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    class_names: list[str] | None = None,
    preprocessing: Preprocessing | None = None,
    extra: dict[str, Any] | None = None,
    info: WeightsInfo | None = None,
) -> Path:
    """Write ``model``'s weights and everything ``load`` needs into one safetensors file.

    ``info`` (:class:`~mobilenet.weights.WeightsInfo`) is what travels with the weights; ``class_names``,
    ``preprocessing`` and ``extra`` (header keys, see :mod:`mobilenet.weights`) set or add to it.
    """
    meta = model_metadata(model)
    header = (info or WeightsInfo()).to_header()
    if class_names is not None:
        header["class_names"] = list(class_names)
    if preprocessing is not None:
        header["preprocessing"] = preprocessing.to_dict()
    if header["preprocessing"] is None and "config" in meta and "resolution" in meta["config"]:
        header["preprocessing"] = Preprocessing.imagenet(meta["config"]["resolution"]).to_dict()
    header["extra"].update(extra or {})
    meta.update(format_version=FORMAT_VERSION, **header)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    blob = safetensors_bytes(tensors, metadata={METADATA_KEY: json.dumps(meta)})
    path = Path(path)
    with atomic_write(path) as f:
        f.write(blob)
    return path


def _foreign(path: Path) -> str:
    """What a file that is not safetensors is, when its first bytes say (HDF5, TF Lite, a zip), and what to do."""
    with open(path, "rb") as f:
        head = f.read(8)
    kind = ("a Keras HDF5 file" if head.startswith(b"\x89HDF") else "a TF Lite model" if head[4:8] == b"TFL3"
            else "a zip archive (a .keras or torch.save file)" if head.startswith(b"PK") else None)
    return f": it is {kind}; import it with `mobilenet convert`" if kind else ""


def _open(path: str | os.PathLike[str], *, tensors: bool) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise WeightsFileError(f"weights file not found: {path}" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()} if tensors else {}
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsFileError(f"{path} is not a readable safetensors file ({e}){_foreign(path)}") from None
    return state, _parse_metadata(header, path)


def read(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state_dict, metadata) of a weights file, with clear errors for missing or foreign files."""
    return _open(path, tensors=True)


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata of a weights file without loading its tensors."""
    return _open(path, tensors=False)[1]


def _parse_metadata(header: dict[str, str], path: Path) -> dict[str, Any]:
    if METADATA_KEY not in header:
        raise WeightsFileError(
            f"{path} has no '{METADATA_KEY}' metadata: it was not written by mobilenet "
            "(import foreign weights with `mobilenet convert`)")
    try:
        meta = json.loads(header[METADATA_KEY])
    except json.JSONDecodeError as e:
        raise WeightsFileError(f"{path}: its '{METADATA_KEY}' metadata is not valid JSON ({e.msg})") from None
    if not isinstance(meta, dict):
        raise WeightsFileError(f"{path}: its '{METADATA_KEY}' metadata is not a JSON object")
    version = meta.get("format_version", 0)
    if not isinstance(version, int):
        raise WeightsFileError(f"{path}: malformed metadata: format_version {version!r} is not an integer")
    if version > FORMAT_VERSION:
        raise WeightsFileError(f"{path} uses format version {version}; upgrade mobilenet to read it")
    for key, kind, what in (("config", dict, "an object"), ("class_names", list, "a list"),
                            ("preprocessing", dict, "an object"), ("extra", dict, "an object")):
        if meta.get(key) is not None and not isinstance(meta[key], kind):
            raise WeightsFileError(f"{path}: malformed metadata: {key!r} must be {what}, got "
                                   f"{type(meta[key]).__name__}")
    names = meta.get("class_names")
    if names is not None and not all(isinstance(n, str) for n in names):
        raise WeightsFileError(f"{path}: malformed metadata: class_names must be strings")
    return meta


# Builders for each architecture a weights file may name. Those of other subpackages are imported on
# first use (module, function), so `load` works without importing detection or deploy first.
BUILDERS: dict[str, Callable[[dict[str, Any]], nn.Module]] = {
    "mobilenet_v1": lambda cfg: MobileNetV1.from_config(cfg),
}
LAZY_BUILDERS: dict[str, tuple[str, str]] = {
    "ssd_mobilenet_v1": ("mobilenet.detection.ssd", "build_ssd"),
    "mobilenet_v1_folded": ("mobilenet.deploy.fold", "build_folded"),
}


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load every tensor or fail naming the first missing/unexpected/mis-shaped key."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        first = f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}"
        raise WeightsFileError(
            f"{source} does not match the model: {first} ({len(missing)} missing, {len(unexpected)} unexpected)")
    for k, v in own.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise WeightsFileError(
                f"{source} does not match the model: {k!r} has shape {tuple(state[k].shape)}, "
                f"the model expects {tuple(v.shape)}")
    model.load_state_dict(state)


def _weights_info(meta: dict[str, Any], path: str | os.PathLike[str]) -> WeightsInfo:
    pre = meta.get("preprocessing")
    if pre:
        try:
            Preprocessing.from_dict(pre)
        except (TypeError, ValueError) as e:
            raise WeightsFileError(f"{path}: malformed metadata: its preprocessing {pre} is not valid ({e})") from None
    try:
        return WeightsInfo.from_header(meta)
    except (TypeError, ValueError, KeyError, AttributeError, IndexError) as e:
        raise WeightsFileError(f"{path}: malformed metadata: {type(e).__name__}: {e}") from None


def load(path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a model from a weights file alone; it comes back in eval mode.

    What travels with the weights (class names, preprocessing, source ...) is attached as
    ``model.weights_info`` (:class:`~mobilenet.weights.WeightsInfo`).
    """
    tensors, meta = read(path)
    arch = meta.get("architecture")
    if not isinstance(arch, str):
        raise WeightsFileError(f"{path}: malformed metadata: no 'architecture' name")
    if arch not in BUILDERS and arch in LAZY_BUILDERS:
        module, function = LAZY_BUILDERS[arch]
        BUILDERS[arch] = getattr(importlib.import_module(module), function)
    if arch not in BUILDERS:
        raise WeightsFileError(f"{path}: unknown architecture {arch!r} (known: {', '.join(sorted(BUILDERS))})")
    if not isinstance(meta.get("config"), dict):
        raise WeightsFileError(f"{path}: malformed metadata: no 'config' object to rebuild the model from")
    try:
        model = BUILDERS[arch](meta["config"])
    except (TypeError, ValueError, KeyError) as e:
        raise WeightsFileError(f"{path}: malformed metadata: its config does not build a {arch} ({e})") from None
    load_state_strict(model, tensors, str(path))
    model.weights_info = _weights_info(meta, path)  # type: ignore[assignment]
    return model.to(map_location).eval()


def load_weights_into(model: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Load a weights file into an existing model, strictly (same keys and shapes)."""
    tensors, meta = read(path)
    load_state_strict(model, tensors, str(path))
    model.weights_info = _weights_info(meta, path)  # type: ignore[assignment]
    return model
