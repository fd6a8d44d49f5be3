"""The bundled default dataset: 1,797 real handwritten digits (0-9), offline, shipped inside the package.

What it is: the "Optical Recognition of Handwritten Digits" set (E. Alpaydin, C. Kaynak, 1998; UCI Machine
Learning Repository, licensed CC BY 4.0), the copy that scikit-learn ships as ``load_digits``: 8x8 images of
ink counts 0..16 (each pixel counts the set pixels of a 4x4 block of a 32x32 bitmap) written by 13 people.
``mobilenet/assets/digits.npz`` (45 KB) holds exactly those arrays, so neither scikit-learn nor a network is
needed; ``export_digits_asset`` regenerates it from scikit-learn and a test checks it against scikit-learn when
that is installed.

Images are served as RGB (grey replicated), ink bright on black, upscaled bilinearly to ``size`` x ``size``
(default 32, MobileNet's smallest sensible input). ``"digits#train"`` / ``"digits#test"`` are a fixed stratified
80/20 split (seed 0): 1,438 / 359 images.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from .dataset import ArrayImageDataset, Transform, stratified_indices

ASSET = Path(__file__).resolve().parents[1] / "assets" / "digits.npz"
DIGIT_CLASSES = tuple(str(d) for d in range(10))
TEST_FRACTION = 0.2
SPLIT_SEED = 0
SPLITS = ("all", "train", "test")


def load_digit_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The raw bundled arrays: images ``(1797, 8, 8)`` uint8 in 0..16 and labels ``(1797,)`` uint8 in 0..9."""
    if not ASSET.is_file():
        raise FileNotFoundError(f"bundled digits missing: {ASSET} (reinstall mobilenet, or run "
                                f"mobilenet.data.digits.export_digits_asset() with scikit-learn installed)")
    with np.load(ASSET) as npz:
        return npz["images"], npz["labels"]


def upscale(images: np.ndarray, size: int) -> np.ndarray:
    """``(N, 8, 8)`` ink counts 0..16 -> ``(N, size, size, 3)`` uint8 RGB, bilinear."""
    if size < 8:
        raise ValueError(f"size must be >= 8 (the digits are 8x8), got {size}")
    grey = np.rint(images.astype(np.float32) * (255.0 / 16.0)).astype(np.uint8)
    out = np.empty((len(grey), size, size), dtype=np.uint8)
    for i, img in enumerate(grey):
        out[i] = np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))
    return np.repeat(out[..., None], 3, axis=-1)


def open_digits(split: str = "all", *, size: int = 32, transform: Transform | None = None) -> ArrayImageDataset:
    """The bundled handwritten digits as an image dataset (``split``: "all", "train" or "test")."""
    if split not in SPLITS:
        raise ValueError(f"digits split must be one of {SPLITS}, got {split!r}")
    images, labels = load_digit_arrays()
    if split != "all":
        train_idx, test_idx = stratified_indices(labels.tolist(), len(DIGIT_CLASSES), TEST_FRACTION, SPLIT_SEED)
        keep = np.asarray(train_idx if split == "train" else test_idx)
        images, labels = images[keep], labels[keep]
    source = "digits" if split == "all" else f"digits#{split}"
    return ArrayImageDataset(upscale(images, size), labels.tolist(), DIGIT_CLASSES, transform=transform,
                             source=source)


def export_digits_asset(path: str | os.PathLike[str] = ASSET) -> Path:
    """Write scikit-learn's ``load_digits`` arrays to ``path`` as compressed npz (how the asset was made)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise ImportError("export_digits_asset needs scikit-learn: pip install scikit-learn") from error
    digits = load_digits()
    path = Path(path)
    np.savez_compressed(path, images=digits.images.astype(np.uint8), labels=digits.target.astype(np.uint8))
    return path
