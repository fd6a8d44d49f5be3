"""CIFAR-10 official format: safe unpickling, tar.gz and folder forms, cache, download and the offline message."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest

from mobilenet.data import cifar10 as cifar
from mobilenet.data import open_image_dataset
from mobilenet.data.cifar10 import UnsafePickleError, open_cifar10, read_cifar10_batches, safe_unpickle

N_PER_BATCH = 3


def _batch(seed: int) -> tuple[bytes, np.ndarray, list[int]]:
    """A pickled batch laid out like the official ones (bytes keys, (N, 3072) uint8 rows R|G|B), protocol 2."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (N_PER_BATCH, 32, 32, 3), dtype=np.uint8)  # NHWC, what we expect back
    labels = [int(v) for v in rng.integers(0, 10, N_PER_BATCH)]
    rows = images.transpose(0, 3, 1, 2).reshape(N_PER_BATCH, 3072)
    batch = {b"batch_label": b"fake", b"labels": labels, b"data": rows,
             b"filenames": [b"x.png"] * N_PER_BATCH}
    return pickle.dumps(batch, protocol=2), images, labels


def make_official(tmp_path: Path, form: str = "tar.gz") -> tuple[Path, dict]:
    """A fake cifar-10-python.tar.gz (or extracted folder) with tiny batches; returns (path, expected arrays)."""
    files, expected = {}, {"train": ([], []), "test": ([], [])}
    for i, name in enumerate([*cifar.TRAIN_BATCHES, *cifar.TEST_BATCHES]):
        data, images, labels = _batch(i)
        files[name] = data
        split = "test" if name == "test_batch" else "train"
        expected[split][0].append(images)
        expected[split][1].extend(labels)
    names = [n.encode() for n in cifar.CIFAR10_CLASSES]
    files["batches.meta"] = pickle.dumps({b"label_names": names, b"num_vis": 3072}, protocol=2)
    files["readme.html"] = b"<html></html>"
    if form == "folder":
        folder = tmp_path / "cifar-10-batches-py"
        folder.mkdir()
        for name, data in files.items():
            (folder / name).write_bytes(data)
        path = folder
    else:
        path = tmp_path / cifar.CIFAR10_FILENAME
        with tarfile.open(path, "w:gz") as tar:
            for name, data in files.items():
                info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path, {k: (np.concatenate(v[0]), v[1]) for k, v in expected.items()}


@pytest.mark.parametrize("form", ["tar.gz", "folder"])
def test_official_format_pixels_labels_and_classes(tmp_path, form):
    path, expected = make_official(tmp_path, form)
    for split, n in (("train", 5 * N_PER_BATCH), ("test", N_PER_BATCH)):
        images, labels, names = read_cifar10_batches(path, split)
        assert images.shape == (n, 32, 32, 3) and images.dtype == np.uint8
        assert np.array_equal(images, expected[split][0])  # R|G|B rows correctly turned into HWC
        assert labels.tolist() == expected[split][1]
        assert names == list(cifar.CIFAR10_CLASSES)
    ds = open_image_dataset(f"cifar10:{path}#test")
    image, label = ds[1]
    assert np.array_equal(np.asarray(image), expected["test"][0][1]) and label == expected["test"][1][1]
    assert len(open_image_dataset(f"cifar10:{tmp_path}")) == 5 * N_PER_BATCH  # folder holding the official form


def test_safe_unpickle_refuses_code(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    payload = pickle.dumps({b"data": Exploit()}, protocol=2)
    with pytest.raises(UnsafePickleError, match="refusing to unpickle global"):
        safe_unpickle(payload)
    assert not marker.exists()
    # Plain data and numpy arrays (every pickle protocol) do load.
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    for protocol in (2, 4, 5):
        out = safe_unpickle(pickle.dumps({b"data": arr, b"labels": [1, 2]}, protocol=protocol))
        assert np.array_equal(out[b"data"], arr) and out[b"labels"] == [1, 2]


def test_bad_or_incomplete_official_files(tmp_path):
    path, _ = make_official(tmp_path, "folder")
    (path / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="missing: data_batch_3"):
        read_cifar10_batches(path, "train")
    assert len(read_cifar10_batches(path, "test")[0]) == N_PER_BATCH  # the test split does not need it
    (path / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(ValueError, match=r"expected uint8 data \(N, 3072\)"):
        read_cifar10_batches(path, "test")
    with pytest.raises(ValueError, match="split must be"):
        read_cifar10_batches(path, "val")
    with pytest.raises(FileNotFoundError, match="CIFAR-10 not found"):
        open_cifar10(tmp_path / "nothing.tar.gz")


def test_cache_download_checksum_and_offline_message(tmp_path, monkeypatch):
    monkeypatch.setenv("MOBILENET_CACHE", str(tmp_path / "cache"))
    cached = tmp_path / "cache" / cifar.CIFAR10_FILENAME
    assert cifar.cifar10_cache_path() == cached

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(cifar.urllib.request, "urlopen", offline)
    with pytest.raises(FileNotFoundError, match=f"offline.*download {cifar.CIFAR10_URL} to {cached}"):
        open_image_dataset("cifar10#test")
    with pytest.raises(FileNotFoundError, match="not in the cache"):
        open_cifar10(None, "test", download=False)

    source, _ = make_official(tmp_path)
    payload = source.read_bytes()

    class Response(io.BytesIO):
        headers = {"Content-Length": str(len(payload))}

    monkeypatch.setattr(cifar.urllib.request, "urlopen", lambda *a, **k: Response(payload))
    with pytest.raises(ValueError, match="has md5"):  # the real checksum does not match the fake file
        cifar.download_cifar10()
    assert not cached.exists() and not cached.with_name(cached.name + ".part").exists()
    monkeypatch.setattr(cifar, "CIFAR10_MD5", hashlib.md5(payload).hexdigest())
    assert cifar.download_cifar10() == cached and cached.read_bytes() == payload
    monkeypatch.setattr(cifar.urllib.request, "urlopen", offline)  # cached and valid: no network needed
    assert len(open_image_dataset("cifar10#test")) == N_PER_BATCH
