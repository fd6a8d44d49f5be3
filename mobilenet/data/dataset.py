"""The dataset classes every source returns: images as encoded files (folder, zip, tar) or as a uint8 array.

All of them share one contract: ``ds[i] -> (transform(image), label)`` with ``image`` an RGB PIL image,
plus ``ds.class_names`` (list[str]), ``ds.targets`` (list[int]) and ``ds.skipped`` (list of (name, reason)).

Bad files, the policy (documented in the README): a cheap scan-time check (``sniff``: first and last bytes)
drops empty, non-image and visibly truncated files before training starts, with a warning summary. A file that
still fails to decode at load time is handled by purpose:

* training (``ds[i]``): ``__getitem__`` records it in ``skipped``, warns, and returns the next readable sample
  instead (with that sample's own label), so a batch keeps its size and every image keeps its correct label.
  Only when many consecutive files fail does it raise. (In worker processes ``skipped`` grows in the worker's
  copy; the warning is what reaches the console.)
* evaluation, calibration, prediction (``LeaveOutUnreadable``, used by ``make_eval_loader``): a stand-in would
  be scored twice under the wrong class, so the image is left out and listed (``Unreadable(name, reason)``
  travels through the DataLoader to the caller instead of a sample).
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch
from PIL import Image

from .decode import ImageDecodeError, decode_image, decode_image_array

# After this many consecutive unreadable files, stop replacing and raise: the data set itself is broken.
MAX_CONSECUTIVE_FAILURES = 16

Transform = Callable[[Image.Image], Any]


class Unreadable(NamedTuple):
    """What ``LeaveOutUnreadable`` returns in place of a sample whose file cannot be decoded."""

    name: str
    reason: str


class ByteReader(Protocol):
    """Random access to the files of a folder or an archive, safe to use from DataLoader workers."""

    def read(self, name: str) -> bytes: ...


def require_readable(samples: Sequence[Any], skipped: Sequence[tuple[str, str]], where: str) -> None:
    """Refuse, in one line, a source whose every image was left out at scan time: naming why beats an empty
    dataset failing later ("0 samples") after a warning line."""
    if not samples and skipped:
        first = "; ".join(f"{name}: {reason}" for name, reason in skipped[:3])
        raise ValueError(f"no readable image in {where}: all {len(skipped)} file(s) were left out (e.g. {first})")


def warn_skipped(skipped: Sequence[tuple[str, str]], where: str) -> None:
    """One warning summarising skipped files: count, reasons with counts, and the first few names."""
    if not skipped:
        return
    reasons = Counter(reason.split(" (")[0] for _, reason in skipped)
    summary = ", ".join(f"{n} {reason}" for reason, n in reasons.most_common())
    first = "; ".join(f"{name}: {reason}" for name, reason in skipped[:3])
    warnings.warn(f"{where}: skipped {len(skipped)} file(s) ({summary}); e.g. {first}", stacklevel=3)


class ImageDataset(torch.utils.data.Dataset):
    """Base class: subclasses implement ``__len__`` and ``load_image(i) -> RGB PIL image``."""

    class_names: list[str]
    targets: list[int]
    skipped: list[tuple[str, str]]
    transform: Transform | None

    def load_image(self, index: int) -> Image.Image:
        raise NotImplementedError

    def load_array(self, index: int) -> np.ndarray:
        """Sample ``index`` as an ``(H, W, 3)`` uint8 array (bulk decoding; may skip the PIL object)."""
        return np.asarray(self.load_image(index))

    def sample_name(self, index: int) -> str:
        """A human-readable name for sample ``index`` (file path inside the source, or ``source[index]``)."""
        return f"[{index}]"

    def get(self, index: int, transform: Transform | None, *, replace_unreadable: bool = True) -> tuple[Any, int]:
        """``(transform(image), label)`` for ``index``; unreadable files are replaced by the next readable one
        (see module docstring), or, with ``replace_unreadable=False``, raise ``ImageDecodeError``."""
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} images")
        index %= n
        if not replace_unreadable:
            image = self.load_image(index)
            return (image if transform is None else transform(image)), self.targets[index]
        for attempt in range(MAX_CONSECUTIVE_FAILURES):
            i = (index + attempt) % n
            try:
                image = self.load_image(i)
            except ImageDecodeError as error:
                reason = str(error).split(": ", 1)[-1]
                self.skipped.append((self.sample_name(i), reason))
                warnings.warn(f"unreadable image replaced by the next one: {error}", stacklevel=2)
                continue
            return (image if transform is None else transform(image)), self.targets[i]
        raise RuntimeError(f"{MAX_CONSECUTIVE_FAILURES} consecutive unreadable images starting at index {index} "
                           f"({self.sample_name(index)}); last: {self.skipped[-1]}")

    def __getitem__(self, index: int) -> tuple[Any, int]:
        return self.get(index, self.transform)


class LeaveOutUnreadable(torch.utils.data.Dataset):
    """The evaluation view of an ``ImageDataset``: ``ds[i]`` is ``(transform(image), label)``, or
    ``Unreadable(name, reason)`` when the file cannot be decoded (never another image in its place).

    Batch it with ``collate_readable`` (``make_eval_loader`` does both).
    """

    def __init__(self, base: ImageDataset, transform: Transform | None = None) -> None:
        self.base = base
        self.transform = base.transform if transform is None else transform
        self.class_names = base.class_names
        self.targets = base.targets

    @property
    def skipped(self) -> list[tuple[str, str]]:
        """Files the scan already left out (decode-time failures travel with the batches)."""
        return self.base.skipped

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[Any, int] | Unreadable:
        try:
            return self.base.get(index, self.transform, replace_unreadable=False)
        except ImageDecodeError as error:
            return Unreadable(self.base.sample_name(index), str(error).split(": ", 1)[-1])

    def __repr__(self) -> str:
        return f"LeaveOutUnreadable({self.base!r})"


class EncodedImageDataset(ImageDataset):
    """Images stored as encoded files (JPEG, PNG ...) read through a ``ByteReader``, decoded on access."""

    def __init__(self, reader: ByteReader, samples: Sequence[tuple[str, int]], class_names: Sequence[str], *,
                 transform: Transform | None = None, skipped: Sequence[tuple[str, str]] = (),
                 source: str = "") -> None:
        self.reader = reader
        self.names = [name for name, _ in samples]
        self.targets = [label for _, label in samples]
        self.class_names = list(class_names)
        self.transform = transform
        self.skipped = list(skipped)
        self.source = source

    def __len__(self) -> int:
        return len(self.names)

    def sample_name(self, index: int) -> str:
        return self.names[index]

    def _read(self, name: str) -> bytes:
        try:
            return self.reader.read(name)
        except OSError as error:  # vanished or unreadable file: same policy as an undecodable one
            raise ImageDecodeError(f"{name}: cannot read: {error}") from error

    def load_image(self, index: int) -> Image.Image:
        name = self.names[index]
        return decode_image(self._read(name), name)

    def load_array(self, index: int) -> np.ndarray:
        name = self.names[index]
        return decode_image_array(self._read(name), name)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.source!r}, images={len(self)}, classes={len(self.class_names)}, "
                f"skipped={len(self.skipped)})")


class ArrayImageDataset(ImageDataset):
    """Images already decoded into one uint8 array ``(N, H, W, 3)`` (CIFAR-10 batches, the bundled digits)."""

    def __init__(self, images: np.ndarray, targets: Sequence[int], class_names: Sequence[str], *,
                 transform: Transform | None = None, source: str = "") -> None:
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be a uint8 array (N, H, W, 3), got {images.dtype} {images.shape}")
        if len(targets) != len(images):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        self.images = images
        self.targets = [int(t) for t in targets]
        self.class_names = list(class_names)
        self.transform = transform
        self.skipped: list[tuple[str, str]] = []
        self.source = source

    def __len__(self) -> int:
        return len(self.images)

    def sample_name(self, index: int) -> str:
        return f"{self.source}[{index}]"

    def load_image(self, index: int) -> Image.Image:
        return Image.fromarray(self.images[index])

    def __repr__(self) -> str:
        h, w = self.images.shape[1:3]
        return (f"{type(self).__name__}({self.source!r}, images={len(self)}, size={w}x{h}, "
                f"classes={len(self.class_names)})")


class SubsetView(ImageDataset):
    """A subset of an ``ImageDataset`` with its own transform (train and validation splits of one source differ:
    the validation half must not be augmented)."""

    def __init__(self, base: ImageDataset, indices: Sequence[int], transform: Transform | None = None) -> None:
        self.base = base
        self.indices = [int(i) for i in indices]
        self.transform = base.transform if transform is None else transform
        self.class_names = base.class_names
        self.targets = [base.targets[i] for i in self.indices]

    @property
    def skipped(self) -> list[tuple[str, str]]:  # type: ignore[override]
        return self.base.skipped

    def __len__(self) -> int:
        return len(self.indices)

    def sample_name(self, index: int) -> str:
        return self.base.sample_name(self.indices[index])

    def load_image(self, index: int) -> Image.Image:
        return self.base.load_image(self.indices[index])

    def load_array(self, index: int) -> np.ndarray:
        return self.base.load_array(self.indices[index])

    def __repr__(self) -> str:
        return f"SubsetView({self.base!r}, images={len(self)})"


def stratified_indices(targets: Sequence[int], num_classes: int, val_fraction: float,
                       seed: int) -> tuple[list[int], list[int]]:
    """Deterministic stratified split of sample indices into (train, validation), each sorted.

    Each class contributes ``round(n_class * val_fraction)`` samples to validation (at least one when the class has
    two or more and ``val_fraction > 0``, never all of them), picked by a permutation seeded with ``seed``.
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    generator = torch.Generator().manual_seed(seed)
    labels = torch.as_tensor(list(targets), dtype=torch.long)
    train_idx: list[int] = []
    val_idx: list[int] = []
    for label in range(num_classes):
        members = torch.nonzero(labels == label).flatten()
        members = members[torch.randperm(len(members), generator=generator)].tolist()
        n_val = round(len(members) * val_fraction)
        if val_fraction > 0 and len(members) >= 2:
            n_val = min(max(n_val, 1), len(members) - 1)
        val_idx += members[:n_val]
        train_idx += members[n_val:]
    return sorted(train_idx), sorted(val_idx)


def split_dataset(dataset: ImageDataset, val_fraction: float = 0.1, seed: int = 0, *,
                  train_transform: Transform | None = None,
                  val_transform: Transform | None = None) -> tuple[SubsetView, SubsetView]:
    """Stratified, deterministic train/validation split of one dataset (see ``stratified_indices``).

    The same inputs always give the same split, on any machine. Each half may get its own transform (default: the
    dataset's), so the validation half is not augmented: ``split_dataset(ds, 0.1, train_transform=t,
    val_transform=e)``.
    """
    train_idx, val_idx = stratified_indices(dataset.targets, len(dataset.class_names), val_fraction, seed)
    return SubsetView(dataset, train_idx, train_transform), SubsetView(dataset, val_idx, val_transform)
