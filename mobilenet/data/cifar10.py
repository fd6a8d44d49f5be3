"""CIFAR-10 in its official ``cifar-10-python.tar.gz`` form (pickled batches), read without executing pickle code.

The official batches are Python pickles of ``{b"data": uint8 (10000, 3072), b"labels": [...], ...}``. Plain
``pickle.load`` would run whatever a tampered file asks for, so ``SafeUnpickler`` resolves only the handful of
globals that a numpy array needs (``numpy.core.multiarray._reconstruct``, ``numpy.ndarray``, ``numpy.dtype``)
and refuses everything else with ``UnsafePickleError``.

Sources accepted by ``open_cifar10(path, split)``:
* the official ``cifar-10-python.tar.gz`` (read straight from the archive, no extraction);
* its extracted folder ``cifar-10-batches-py/`` (or a folder containing it or the tar.gz);
* a folder with the ImageFolder archives ``train.zip`` / ``test.zip`` (the shared copy), picked by ``split``.

``cifar10_cache_path()`` is where ``"cifar10"`` without a path looks (``$MOBILENET_CACHE`` or
``~/.cache/mobilenet``); ``download_cifar10()`` fetches the official file there and checks its MD5, or, offline,
raises with the one line the user needs: which URL to download to which path.
"""

from __future__ import annotations

import codecs
import hashlib
import importlib
import io
import os
import pickle
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from .archive import archive_kind, open_archive
from .dataset import ArrayImageDataset, ImageDataset, Transform

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_FILENAME = "cifar-10-python.tar.gz"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCHES = ("test_batch",)
SPLITS = ("train", "test")

# The only globals a pickled numpy array (protocol 2, numpy 1.x or 2.x) refers to.
_ALLOWED_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    # pickle protocol 5 (a batch re-saved by Python 3.8+) builds arrays from raw bytes instead.
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    # Python 3 writes bytes as _codecs.encode(str, "latin1") under protocols < 3 (a pure str -> bytes function).
    ("_codecs", "encode"),
})


class UnsafePickleError(ValueError):
    """A pickle asked for a global outside the allow-list: the file is not a plain CIFAR batch."""


def _numpy_private(module: str, name: str):
    # numpy 2 moved ``numpy.core`` to ``numpy._core`` (the old name still works but warns): try the new one first.
    for prefix in ("numpy._core", "numpy.core"):
        try:
            return getattr(importlib.import_module(f"{prefix}.{module}"), name)
        except (ImportError, AttributeError):
            continue
    raise UnsafePickleError(f"numpy has no {module}.{name}")


class SafeUnpickler(pickle.Unpickler):
    """Unpickles plain containers, bytes, numbers and numpy arrays; any other global raises UnsafePickleError."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise UnsafePickleError(f"refusing to unpickle global {module}.{name}: not a plain data pickle")
        if module == "numpy":
            return np.ndarray if name == "ndarray" else np.dtype
        if module == "_codecs":
            return codecs.encode
        return _numpy_private(module.rsplit(".", 1)[-1], name)


def safe_unpickle(data: bytes) -> object:
    """``pickle.loads`` restricted to plain data and numpy arrays (CIFAR batches pickled by Python 2 included)."""
    return SafeUnpickler(io.BytesIO(data), encoding="bytes").load()


def _batch_arrays(batch: object, name: str) -> tuple[np.ndarray, np.ndarray]:
    """One unpickled batch -> (uint8 images (N, 32, 32, 3), int64 labels (N,))."""
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise ValueError(f"{name}: not a CIFAR-10 batch (expected a dict with b'data' and b'labels')")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise ValueError(f"{name}: expected uint8 data (N, 3072) and N labels, got {data.dtype} {data.shape} "
                         f"and {labels.shape}")
    # Rows are 1024 red, then 1024 green, then 1024 blue values, each 32x32 row-major: (N, 3, 32, 32) -> NHWC.
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), labels


def _class_names(meta: object) -> list[str]:
    if isinstance(meta, dict) and b"label_names" in meta:
        return [n.decode() if isinstance(n, bytes) else str(n) for n in meta[b"label_names"]]
    return list(CIFAR10_CLASSES)


def read_cifar10_batches(path: str | os.PathLike[str], split: str = "train") -> tuple[np.ndarray, np.ndarray,
                                                                                       list[str]]:
    """Images ``(N, 32, 32, 3)`` uint8, labels ``(N,)`` and class names from the official tar.gz or its folder."""
    if split not in SPLITS:
        raise ValueError(f"CIFAR-10 split must be 'train' or 'test', got {split!r}")
    wanted = TRAIN_BATCHES if split == "train" else TEST_BATCHES
    path = Path(path)
    files: dict[str, bytes] = {}
    if path.is_file():
        try:
            with tarfile.open(path, "r:*") as tar:
                for member in tar:
                    base = member.name.rsplit("/", 1)[-1]
                    if member.isfile() and (base in wanted or base == "batches.meta"):
                        files[base] = tar.extractfile(member).read()
        except (tarfile.TarError, EOFError, OSError) as error:
            raise ValueError(f"cannot read CIFAR-10 archive {path}: {error}") from error
    else:
        for base in (*wanted, "batches.meta"):
            if (path / base).is_file():
                files[base] = (path / base).read_bytes()
    missing = [b for b in wanted if b not in files]
    if missing:
        raise FileNotFoundError(f"{path}: CIFAR-10 batch file(s) missing: {', '.join(missing)}")
    arrays = [_batch_arrays(safe_unpickle(files[b]), f"{path}:{b}") for b in wanted]
    names = _class_names(safe_unpickle(files["batches.meta"])) if "batches.meta" in files else list(CIFAR10_CLASSES)
    images = np.concatenate([a for a, _ in arrays])
    labels = np.concatenate([y for _, y in arrays])
    if labels.min() < 0 or labels.max() >= len(names):
        raise ValueError(f"{path}: labels outside 0..{len(names) - 1}: {labels.min()}..{labels.max()}")
    return images, labels, names


def cifar10_cache_path() -> Path:
    """Where the official CIFAR-10 file is cached: ``<cache>/cifar-10-python.tar.gz`` in the package's cache
    (:func:`mobilenet.cache.cache_dir`: ``$MOBILENET_CACHE``, else ``$XDG_CACHE_HOME/mobilenet`` or
    ``~/.cache/mobilenet``)."""
    from ..cache import cache_dir

    return cache_dir() / CIFAR10_FILENAME


def md5sum(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex MD5 of a file (the checksum CIFAR-10's authors publish)."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def download_cifar10(destination: str | os.PathLike[str] | None = None, *, timeout: float = 30.0) -> Path:
    """Download the official CIFAR-10 archive (163 MB) to ``destination`` and verify its MD5.

    Already there and valid: nothing is downloaded. Offline: ``FileNotFoundError`` saying which URL to fetch to
    which path. Writes to a temporary name and renames, so an interrupted download never looks complete.
    """
    target = Path(destination) if destination is not None else cifar10_cache_path()
    if target.is_file() and md5sum(target) == CIFAR10_MD5:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    try:
        from tqdm import tqdm

        with urllib.request.urlopen(CIFAR10_URL, timeout=timeout) as response, open(partial, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc="cifar-10-python.tar.gz") as bar:
                while block := response.read(1 << 20):
                    out.write(block)
                    bar.update(len(block))
    except (urllib.error.URLError, OSError, TimeoutError) as error:
        partial.unlink(missing_ok=True)
        raise FileNotFoundError(f"offline ({error}): download {CIFAR10_URL} to {target} (md5 {CIFAR10_MD5}), "
                                f"or pass cifar10:<path to cifar-10-python.tar.gz or train.zip/test.zip folder>"
                                ) from error
    got = md5sum(partial)
    if got != CIFAR10_MD5:
        partial.unlink(missing_ok=True)
        raise ValueError(f"downloaded {CIFAR10_URL} has md5 {got}, expected {CIFAR10_MD5}; try again")
    os.replace(partial, target)
    return target


def open_cifar10(path: str | os.PathLike[str] | None = None, split: str = "train", *,
                 transform: Transform | None = None, download: bool = True) -> ImageDataset:
    """CIFAR-10 ``split`` ("train": 50,000 images, "test": 10,000) from any of the forms in the module docstring.

    ``path=None`` uses the cache (see ``cifar10_cache_path``), downloading into it when ``download`` is true.
    """
    if split not in SPLITS:
        raise ValueError(f"CIFAR-10 split must be 'train' or 'test', got {split!r}")
    if path is None:
        path = cifar10_cache_path()
        if not path.is_file():
            if not download:
                raise FileNotFoundError(f"CIFAR-10 not in the cache: download {CIFAR10_URL} to {path}")
            path = download_cifar10(path)
    path = Path(path)
    if path.is_dir():
        for candidate in (path / f"{split}.zip", path / f"{split}.tar"):
            if candidate.is_file():  # the ImageFolder form: train.zip / test.zip
                path = candidate
                break
    if path.is_file() and archive_kind(path) in ("zip", "tar"):
        # ImageFolder archive; the official class order is alphabetical, so folder names map onto it directly.
        return open_archive(path, transform=transform, class_names=CIFAR10_CLASSES)
    if path.is_dir():
        for candidate in (path / "cifar-10-batches-py", path / CIFAR10_FILENAME):
            if candidate.exists():
                path = candidate
                break
    elif not path.is_file():
        raise FileNotFoundError(f"CIFAR-10 not found at {path}: expected {CIFAR10_FILENAME}, its extracted "
                                f"cifar-10-batches-py/ folder, or a folder with {split}.zip")
    images, labels, names = read_cifar10_batches(path, split)
    return ArrayImageDataset(images, labels.tolist(), names, transform=transform, source=f"cifar10:{path}#{split}")
