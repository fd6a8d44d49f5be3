"""Filling the pretrained cache (:mod:`mobilenet.cache`): from a published file you downloaded, or from the Hub.

* :func:`add` imports any published MobileNet v1 file that ``mobilenet convert`` reads (Keras ``.h5``, TF-slim
  checkpoint, ``.tflite``, Caffe, timm / Hugging Face state dicts), or one of Google's ``.tgz`` archives as
  published (the TF-slim checkpoint inside, else its ``.tflite``), and saves it as
  ``<cache>/pretrained/<variant>.<source>.safetensors``.
* :func:`download` fetches a variant's file from the Hugging Face Hub (Google's checkpoints converted by
  Hugging Face, timm's own training: :data:`mobilenet.published.RELEASES`) with ``huggingface_hub`` (the optional
  ``hub`` extra), then adds it. Offline it fails at once with :class:`~mobilenet.cache.PretrainedNotFound`,
  whose one line says which file to download by hand and the command that puts it in place.

After either, ``mobilenet.create_model(name, pretrained=True)`` and ``--pretrained`` work without a network.
"""

from __future__ import annotations

import os
import socket
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from .cache import Cached, PretrainedNotFound, cache_dir, cache_path, not_found_message, releases
from .checkpoint import save
from .model import MobileNetV1
from .weights import weights_info
from .zoo import VARIANTS, variant_config, variant_name

HF_ENDPOINT = "https://huggingface.co"
_TGZ = (".tgz", ".tar.gz")


def source_of(model: MobileNetV1) -> str:
    """The cache's name for where imported weights came from: the format (``keras``, ``slim``, ``tflite``,
    ``caffe``), ``timm`` or ``huggingface`` for the two layouts of PyTorch state dicts, ``_quant`` for a
    quantized ``.tflite``, ``_notop`` for a file without classifier."""
    src = weights_info(model).source
    fmt = (src.format if src is not None else None) or "mobilenet"
    details = src.details if src is not None else {}
    tag = str(details.get("layout") or fmt) if fmt == "timm" else fmt
    if fmt == "tflite" and details.get("quantized"):
        tag += "_quant"
    return tag + ("_notop" if model.num_classes == 0 else "")


@contextmanager
def _unpacked(src: Path) -> Iterator[Path]:
    """``src`` itself, or for a ``.tgz`` the weights inside it: the TF-slim checkpoint (``.ckpt.index`` and its
    data shards) if there is one, else the ``.tflite``. Only those regular files are extracted, by base name,
    into a temporary folder (never a path from the archive, never a link)."""
    if not src.name.lower().endswith(_TGZ):
        yield src
        return
    with tarfile.open(src, "r:gz") as tar, tempfile.TemporaryDirectory(prefix="mobilenet-tgz-") as tmp:
        members = [m for m in tar.getmembers() if m.isfile()]
        names = {Path(m.name).name: m for m in members}
        index = sorted(n for n in names if n.endswith(".ckpt.index"))
        if index:
            prefix = index[0][: -len(".index")]
            wanted = [n for n in names if n == index[0] or n.startswith(prefix + ".data-")]
            target = index[0]
        else:
            tflite = sorted(n for n in names if n.endswith(".tflite"))
            if not tflite:
                raise ValueError(f"{src}: no TF-slim checkpoint (.ckpt.index) and no .tflite inside")
            target = tflite[0]
            wanted = [target]
        for n in wanted:
            reader = tar.extractfile(names[n])
            assert reader is not None  # a regular file
            with reader, open(Path(tmp) / n, "wb") as out:
                while block := reader.read(1 << 20):
                    out.write(block)
        yield Path(tmp) / target


def add(src: str | os.PathLike[str], *, name: str | None = None, format: str = "auto") -> Cached:
    """Import a published weights file into the cache; returns what was added.

    ``name`` (a variant of the grid) gives the resolution where the file does not say it (a PyTorch state dict)
    and checks the width; without it the variant comes from the file (its width and its resolution).
    """
    from .convert import import_model

    path = Path(src)
    if not path.exists() and not Path(f"{path}.index").is_file():
        raise FileNotFoundError(f"published weights file not found: {path}")
    expected = variant_config(name) if name is not None else None
    with _unpacked(path) as unpacked:
        model = import_model(unpacked, format, width_mult=expected.width_mult if expected else None,
                             resolution=expected.resolution if expected else None)
    variant = variant_name(model.config.width_mult, model.config.resolution)
    if variant not in VARIANTS:
        raise ValueError(f"{path} is a width {model.config.width_mult:g}, {model.config.resolution} px MobileNet v1, "
                         f"not a variant of the grid: use it as a weights file (`mobilenet convert`) instead")
    target = cache_path(variant, source_of(model))
    target.parent.mkdir(parents=True, exist_ok=True)
    save(model, target, info=model.weights_info)
    return Cached(variant, source_of(model), target)


def _endpoint() -> str:
    return os.environ.get("HF_ENDPOINT") or HF_ENDPOINT


def _reachable(url: str, timeout: float) -> str | None:
    """None when a TCP connection to ``url``'s host opens within ``timeout`` s, else why not (so that offline
    ends at once in one line, not after the Hub client's minute of retries)."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname or "", port), timeout=timeout).close()
    except OSError as e:
        return f"{parts.hostname}:{port} unreachable: {e.strerror or e}"
    return None


def download(name: str, source: str | None = None, *, timeout: float = 5.0) -> Cached:
    """Fetch ``name``'s weights from the Hugging Face Hub (``source``: ``huggingface`` or ``timm``; default: the
    first published there) into the cache. Raises :class:`PretrainedNotFound` (one line) when the variant is not
    on the Hub, ``huggingface_hub`` is missing, or the Hub cannot be reached."""
    on_hub = [r for r in releases(name) if r.hub and source in (None, r.source)]
    if not on_hub:
        raise PretrainedNotFound(not_found_message(name, source, "not on the Hugging Face Hub"))
    release = on_hub[0]
    assert release.hub is not None
    repo, filename = release.hub
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise PretrainedNotFound(not_found_message(
            name, release.source, "huggingface_hub is not installed: pip install 'mobilenet[hub]'")) from None
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise PretrainedNotFound(not_found_message(name, release.source, "HF_HUB_OFFLINE is set"))
    if (why := _reachable(_endpoint(), timeout)) is not None:
        raise PretrainedNotFound(not_found_message(name, release.source, f"offline: {why}"))
    try:
        local = hf_hub_download(repo, filename, cache_dir=str(cache_dir() / "huggingface"))
    except Exception as e:  # the Hub client's errors (HTTP, connection, missing file) vary by version
        reason = f"{repo}/{filename}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        raise PretrainedNotFound(not_found_message(name, release.source, reason)) from None
    return add(local, name=name)


__all__ = ["add", "download", "source_of"]
