"""Weights files: one ``.safetensors`` file whose header carries the JSON metadata needed to rebuild
the model (config, class names, preprocessing, provenance). No pickle: loading never runs code.

Writes are atomic (temporary file in the same folder, fsync, rename), so a crash mid-save leaves the
previous file intact.
"""

from __future__ import annotations

import importlib
import json
import os
import tempfile
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


@contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[Any]:
    """Open a temporary file beside ``path``; on success fsync it and rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
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


def _open(path: str | os.PathLike[str], *, tensors: bool) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise WeightsFileError(f"weights file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()} if tensors else {}
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsFileError(f"{path} is not a readable safetensors file ({e})") from None
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
    meta = json.loads(header[METADATA_KEY])
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise WeightsFileError(f"{path} uses format version {meta['format_version']}; upgrade mobilenet to read it")
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


def load(path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a model from a weights file alone; it comes back in eval mode.

    What travels with the weights (class names, preprocessing, source ...) is attached as
    ``model.weights_info`` (:class:`~mobilenet.weights.WeightsInfo`).
    """
    tensors, meta = read(path)
    arch = meta.get("architecture")
    if arch not in BUILDERS and arch in LAZY_BUILDERS:
        module, function = LAZY_BUILDERS[arch]
        BUILDERS[arch] = getattr(importlib.import_module(module), function)
    if arch not in BUILDERS:
        raise WeightsFileError(f"{path}: unknown architecture {arch!r} (known: {', '.join(sorted(BUILDERS))})")
    model = BUILDERS[arch](meta["config"])
    load_state_strict(model, tensors, str(path))
    model.weights_info = WeightsInfo.from_header(meta)  # type: ignore[assignment]
    return model.to(map_location).eval()


def load_weights_into(model: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Load a weights file into an existing model, strictly (same keys and shapes)."""
    tensors, meta = read(path)
    load_state_strict(model, tensors, str(path))
    model.weights_info = WeightsInfo.from_header(meta)  # type: ignore[assignment]
    return model
