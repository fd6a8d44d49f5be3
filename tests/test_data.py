"""Datasets: image folders, zip/tar archives, bad files, class mapping, splits, tensor fast path, bundled digits."""

from __future__ import annotations

import io
import pickle
import tarfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import shared_file
from PIL import Image

from mobilenet.data import (
    CIFAR10_CLASSES,
    ImageDecodeError,
    eval_transform,
    load_tensor_dataset,
    make_loader,
    open_digits,
    open_image_dataset,
    split_dataset,
)
from mobilenet.data.folder import index_tree
from mobilenet.preprocessing import Preprocessing

# Each class is one flat colour, so a sample's pixels tell which file it came from.
COLOURS = {"cat": (200, 30, 30), "dog": (30, 30, 200)}


def _encode(colour: tuple[int, int, int], fmt: str, size: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, fmt)
    return buf.getvalue()


def make_tree_files(n_per_class: int = 3) -> dict[str, bytes]:
    """Relative path -> bytes of a small ImageFolder tree with every kind of bad entry in it."""
    files: dict[str, bytes] = {}
    for name, colour in COLOURS.items():
        for i in range(n_per_class):
            fmt, ext = ("JPEG", "jpg") if i % 2 == 0 else ("PNG", "png")
            files[f"{name}/{i:03d}.{ext}"] = _encode(colour, fmt)
    good_jpeg = _encode(COLOURS["cat"], "JPEG", size=64)
    files["cat/truncated.jpg"] = good_jpeg[: len(good_jpeg) // 2]
    files["dog/notes.txt"] = b"not an image"
    files["dog/html.jpg"] = b"<html>404 not found</html>"
    files["dog/empty.png"] = b""
    files["README.md"] = b"# a file outside any class folder"
    files[".DS_Store"] = b"\0\0"
    return files


def write_folder(root: Path, files: dict[str, bytes], empty_dirs: tuple[str, ...] = ("zebra",)) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    for d in empty_dirs:
        (root / d).mkdir(parents=True, exist_ok=True)
    return root


def write_archive(path: Path, files: dict[str, bytes], top: str = "train") -> Path:
    members = {f"{top}/{rel}" if top else rel: data for rel, data in files.items()}
    if path.suffix == ".zip":
        method = zipfile.ZIP_DEFLATED if "deflated" in path.name else zipfile.ZIP_STORED
        with zipfile.ZipFile(path, "w", method) as zf:
            zf.writestr(f"{top}/zebra/", b"")  # an empty class folder, as zip tools record it
            for name, data in members.items():
                zf.writestr(name, data)
    else:
        with tarfile.open(path, "w:gz" if path.name.endswith(".tar.gz") else "w") as tar:
            zebra = tarfile.TarInfo(f"{top}/zebra")
            zebra.type = tarfile.DIRTYPE
            tar.addfile(zebra)
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def _open_quiet(source, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = open_image_dataset(source, **kwargs)
    return ds, [str(w.message) for w in caught]


def _check_tree_dataset(ds) -> None:
    assert ds.class_names == ["cat", "dog", "zebra"]  # the empty class keeps its index: stable labels
    assert len(ds) == 6 and ds.targets == [0, 0, 0, 1, 1, 1]
    reasons = {name.rstrip("/").rsplit("/", 1)[-1]: reason for name, reason in ds.skipped}
    assert reasons["truncated.jpg"].startswith("truncated JPEG")
    assert reasons["notes.txt"].startswith("not an image file")
    assert reasons["html.jpg"].startswith("not an image (starts with")
    assert reasons["empty.png"] == "empty file"
    assert reasons["README.md"] == "not inside a class folder"
    assert reasons["zebra"] == "empty class folder"
    for i in range(len(ds)):
        image, label = ds[i]
        assert image.mode == "RGB" and image.size == (16, 16)
        expected = COLOURS[ds.class_names[label]]
        assert np.abs(np.asarray(image, dtype=int)[8, 8] - expected).max() <= 6  # JPEG is lossy


def test_folder_layout_labels_and_bad_files(tmp_path):
    root = write_folder(tmp_path / "data", make_tree_files())
    ds, messages = _open_quiet(root)
    _check_tree_dataset(ds)
    assert len(ds.skipped) == 6
    assert any("skipped 6 file(s)" in m and "truncated JPEG" in m for m in messages)  # one summary warning


@pytest.mark.parametrize("name", ["data.zip", "deflated.zip", "data.tar", "data.tar.gz"])
def test_archive_gives_the_same_dataset_as_the_folder(tmp_path, name):
    archive = write_archive(tmp_path / name, make_tree_files())
    ds, _ = _open_quiet(archive)
    _check_tree_dataset(ds)
    folder, _ = _open_quiet(write_folder(tmp_path / "data", make_tree_files()))
    assert [n.split("/", 1)[1] for n in ds.names] == folder.names  # "train/" stripped from the labels only
    assert all(n.startswith("train/") for n in ds.names)


def test_archive_reader_reopens_in_dataloader_workers(tmp_path):
    archive = write_archive(tmp_path / "data.zip", make_tree_files(n_per_class=8))
    ds, _ = _open_quiet(archive, transform=eval_transform(Preprocessing(resolution=16, crop_fraction=1.0)))
    ds[0]  # open the zip in this process first: workers must not reuse this handle
    loader = make_loader(ds, batch_size=4, workers=2)
    labels = torch.cat([y for _, y in loader])
    assert labels.tolist() == ds.targets
    clone = pickle.loads(pickle.dumps(ds))  # spawn-style workers: the open handle is dropped, then reopened
    assert not vars(clone.reader._local) and torch.equal(clone[3][0], ds[3][0])


def test_class_names_map_folders_onto_a_given_list(tmp_path):
    root = write_folder(tmp_path / "data", make_tree_files(), empty_dirs=("zebra",))
    ds, _ = _open_quiet(root, class_names=["bird", "cat", "horse", "dog"])  # empty "zebra": reported, no error
    assert ds.class_names == ["bird", "cat", "horse", "dog"]
    assert sorted(set(ds.targets)) == [1, 3]
    with pytest.raises(ValueError, match="not in the given class list of 2: dog"):
        open_image_dataset(root, class_names=["cat", "cow"])


def test_index_tree_strips_only_a_single_common_top_folder():
    paths = ["a/train/x/1.jpg", "a/train/y/2.jpg", "a/notes.txt"]
    samples, names, skipped = index_tree(paths, strip_single_top=True)
    assert names == ["x", "y"] and samples == [("a/train/x/1.jpg", 0), ("a/train/y/2.jpg", 1)]
    assert skipped == [("a/notes.txt", "not inside a class folder")]
    samples, names, _ = index_tree(["x/1.jpg", "y/2.jpg"], strip_single_top=True)
    assert names == ["x", "y"]  # nothing to strip: classes at the top
    with pytest.raises(ValueError, match="no images found"):
        index_tree(["x/readme.txt"])
    with pytest.raises(ValueError, match="2 image.s. lie directly in the root"):
        index_tree(["1.jpg", "2.png"])
    samples, names, _ = index_tree(["./cat/1.jpg", "./dog/2.jpg"])  # as `tar cf x.tar .` names members
    assert names == ["cat", "dog"] and samples == [("./cat/1.jpg", 0), ("./dog/2.jpg", 1)]


def test_unreadable_file_at_load_time_is_replaced_and_recorded(tmp_path):
    files = make_tree_files()
    root = write_folder(tmp_path / "data", files)
    # check="none": nothing filtered at scan time, so the bad files surface in __getitem__.
    ds, _ = _open_quiet(root, check="none")
    bad = ds.names.index("cat/truncated.jpg")
    with pytest.warns(UserWarning, match="cat/truncated.jpg"):
        image, label = ds[bad]
    assert ds.targets[bad + 1] == label and image.size == (16, 16)  # the next file, with its own label
    assert ds.skipped[-1][0] == "cat/truncated.jpg"
    with pytest.raises(ImageDecodeError, match="truncated"):
        ds.load_image(bad)
    with pytest.raises(IndexError, match="out of range"):
        ds[len(ds)]


def test_split_is_stratified_deterministic_and_has_its_own_transforms():
    ds = open_digits("all")
    train, val = split_dataset(ds, val_fraction=0.25, seed=3, val_transform=lambda im: "val")
    assert sorted(train.indices + val.indices) == list(range(len(ds)))
    for c in range(10):
        n = ds.targets.count(c)
        assert val.targets.count(c) == round(n * 0.25)
    again = split_dataset(ds, val_fraction=0.25, seed=3)[1]
    other = split_dataset(ds, val_fraction=0.25, seed=4)[1]
    assert again.indices == val.indices and other.indices != val.indices
    assert val[0][0] == "val" and train[0][0].size == (32, 32)  # base transform None -> PIL
    tiny_train, tiny_val = split_dataset(ds, val_fraction=0.001)
    assert len(tiny_val) == 10  # at least one per class
    with pytest.raises(ValueError, match="val_fraction"):
        split_dataset(ds, val_fraction=1.0)


@pytest.mark.filterwarnings("ignore:.*skipped 3 file")
def test_load_tensor_dataset_from_folder_and_sizes(tmp_path):
    files = make_tree_files()
    files["dog/big.png"] = _encode(COLOURS["dog"], "PNG", size=20)
    root = write_folder(tmp_path / "data", files)
    with pytest.raises(ValueError, match="pass size="):
        load_tensor_dataset(root, progress=False)
    with pytest.warns(UserWarning, match="decoding .* skipped 3 file.*truncated.jpg"):
        images, labels = data = load_tensor_dataset(root, size=16, progress=False)
    assert {name for name, _ in data.skipped} >= {"cat/truncated.jpg", "dog/html.jpg", "dog/empty.png"}
    assert images.dtype == torch.uint8 and images.shape == (7, 3, 16, 16)
    assert labels.tolist() == [0, 0, 0, 1, 1, 1, 1] and data.class_names == ["cat", "dog", "zebra"]
    assert images[0, :, 8, 8].tolist() == pytest.approx(COLOURS["cat"], abs=6)


def test_load_tensor_dataset_of_an_array_source_is_a_slice():
    data = load_tensor_dataset("digits#test", progress=False)
    ds = open_digits("test")
    assert data.images.shape == (len(ds), 3, 32, 32)
    assert torch.equal(data.images[5].permute(1, 2, 0), torch.from_numpy(np.array(ds[5][0])))


def test_bundled_digits():
    full, train, test = open_digits("all"), open_digits("train"), open_digits("test")
    assert len(full) == 1797 and len(train) + len(test) == 1797
    assert full.class_names == [str(d) for d in range(10)]
    assert [full.targets.count(c) for c in range(10)] == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    image, _ = full[0]
    arr = np.asarray(image)
    assert image.size == (32, 32) and arr.max() > 200 and arr.min() == 0  # ink bright on black, full range
    assert (arr[..., 0] == arr[..., 2]).all()  # grey replicated to RGB
    assert open_digits("train", size=8)[0][0].size == (8, 8)
    with pytest.raises(ValueError, match="digits split"):
        open_digits("val")


def test_bundled_digits_match_scikit_learn():
    datasets = pytest.importorskip("sklearn.datasets")
    from mobilenet.data.digits import load_digit_arrays

    images, labels = load_digit_arrays()
    reference = datasets.load_digits()
    assert np.array_equal(images, reference.images.astype(np.uint8))
    assert np.array_equal(labels, reference.target)


def test_open_image_dataset_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset not found"):
        open_image_dataset(tmp_path / "missing")
    (tmp_path / "file.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="not a .zip/.tar"):
        open_image_dataset(tmp_path / "file.bin")
    (tmp_path / "broken.zip").write_bytes(b"PK not really")
    with pytest.raises(ValueError, match="cannot read archive"):
        open_image_dataset(tmp_path / "broken.zip")
    with pytest.raises(ValueError, match="unknown split 'val'"):
        open_image_dataset("digits#val")
    with pytest.raises(ValueError, match="classes are fixed"):
        open_image_dataset("digits", class_names=["a", "b"])
    with pytest.raises(ValueError, match="check must be"):
        open_image_dataset(write_folder(tmp_path / "d", make_tree_files()), check="full")


@pytest.mark.realdata
def test_real_cifar10_test_zip():
    path = shared_file("cifar10", "test.zip")
    ds = open_image_dataset(f"cifar10:{path.parent}#test")
    assert len(ds) == 10000 and ds.skipped == []
    assert ds.class_names == list(CIFAR10_CLASSES)
    assert [ds.targets.count(c) for c in range(10)] == [1000] * 10
    images, labels = load_tensor_dataset(path, progress=False)
    assert images.shape == (10000, 3, 32, 32) and labels.tolist() == ds.targets
    assert 60 < images.float().mean() < 200  # real photos, not blank decodes


def test_archive_reader_gives_each_thread_its_own_handle(tmp_path):
    # one ZipFile shared by decoding threads lost 7 % of CIFAR-10's members on Python 3.12 (16 threads)
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from mobilenet.data.archive import ZipReader

    archive = write_archive(tmp_path / "data.zip", make_tree_files(n_per_class=8))
    reader = ZipReader(archive)
    names = [n for n in reader.names() if not n.endswith("/")]
    barrier = threading.Barrier(4)

    def handle_of_this_thread(_):
        handle = reader.handle()
        barrier.wait(timeout=30)  # all four threads hold theirs at once
        return id(handle)

    with ThreadPoolExecutor(4) as pool:
        assert len(set(pool.map(handle_of_this_thread, range(4)))) == 4
        contents = list(pool.map(reader.read, names * 8))
    assert contents == [reader.read(n) for n in names * 8]
