"""Evaluation preprocessing: both crop conventions, normalisation presets, channel order."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mobilenet.preprocessing import Preprocessing


def _image(w: int, h: int) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("mode", ["resize_crop", "crop_resize"])
@pytest.mark.parametrize("size", [(640, 480), (300, 500), (50, 40)])
def test_output_size(mode: str, size: tuple[int, int]) -> None:
    x = Preprocessing(resolution=96, crop_mode=mode)(_image(*size))
    assert x.shape == (3, 96, 96) and x.dtype == torch.float32


def test_crop_resize_takes_the_central_fraction() -> None:
    # A white border outside the central 87.5% must vanish entirely in the TF convention.
    arr = np.full((160, 160, 3), 255, np.uint8)
    arr[10:150, 10:150] = 0
    out = Preprocessing(resolution=64, crop_mode="crop_resize", interpolation="nearest").crop_and_resize(
        Image.fromarray(arr))
    assert np.asarray(out).max() == 0


def test_normalisation_presets() -> None:
    white, black = Image.new("RGB", (64, 64), (255, 255, 255)), Image.new("RGB", (64, 64), (0, 0, 0))
    tf = Preprocessing.tf(32)
    assert torch.allclose(tf(white), torch.ones(3, 32, 32)) and torch.allclose(tf(black), -torch.ones(3, 32, 32))
    red = Image.new("RGB", (64, 64), (255, 0, 0))
    caffe = Preprocessing.caffe(32)(red)
    # BGR: channel 0 is blue (0), channel 2 is red (255)
    assert caffe[0, 0, 0].item() == pytest.approx((0 - 103.94) * 0.017, abs=1e-4)
    assert caffe[2, 0, 0].item() == pytest.approx((255 - 123.68) * 0.017, abs=1e-4)
    imagenet = Preprocessing.imagenet(32)(white)
    assert imagenet[0, 0, 0].item() == pytest.approx((255 - 123.675) / 58.395, abs=1e-5)


def test_round_trip_and_validation() -> None:
    p = Preprocessing.caffe(160)
    assert Preprocessing.from_dict(p.to_dict()) == p
    with pytest.raises(ValueError, match="crop_fraction must be in"):
        Preprocessing(crop_fraction=0)
    with pytest.raises(ValueError, match="channel_order must be 'RGB' or 'BGR', got 'GBR'"):
        Preprocessing(channel_order="GBR")  # type: ignore[arg-type]
