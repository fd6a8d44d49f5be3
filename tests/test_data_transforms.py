"""Decoding, PIL transforms and on-device batch augmentation."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from conftest import shared_file
from PIL import Image

from mobilenet.data import ImageDecodeError, available_decoders, decode_image, eval_transform, train_transform
from mobilenet.data.batch_augment import cutout, iterate_batches, normalize_batch, random_crop_flip
from mobilenet.data.decode import sniff
from mobilenet.data.transforms import (
    ColorJitter,
    PadRandomCrop,
    RandomHorizontalFlip,
    RandomResizedCrop,
    ToModelInput,
)
from mobilenet.preprocessing import Preprocessing


def _gradient(w: int = 40, h: int = 30) -> Image.Image:
    """An image whose every pixel is different: (x, y, x + y) as RGB."""
    ys, xs = np.mgrid[0:h, 0:w]
    return Image.fromarray(np.stack([xs * 5, ys * 7, xs + ys], -1).astype(np.uint8))


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


# ---------------------------------------------------------------- decoding


@pytest.mark.parametrize("decoder", available_decoders())
def test_decoders_agree_and_reject_truncated_jpegs(decoder):
    photo = _gradient(64, 48).resize((256, 192))
    data = _encode(photo, "JPEG", quality=90)
    reference = np.asarray(decode_image(data, decoder="pillow"), dtype=np.float32)
    image = decode_image(data, "photo.jpg", decoder=decoder)
    assert image.mode == "RGB" and image.size == (256, 192)
    assert np.abs(np.asarray(image, dtype=np.float32) - reference).mean() < 1.0
    small = decode_image(data, decoder=decoder, min_size=64)  # DCT-domain downscale, both sides stay >= 64
    assert 64 <= min(small.size) < 192
    with pytest.raises(ImageDecodeError, match="photo.jpg"):
        decode_image(data[: len(data) // 2], "photo.jpg", decoder=decoder)


def test_decode_modes_and_garbage():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red -> white, not red
    assert decode_image(_encode(rgba, "PNG")).getpixel((0, 0)) == (255, 255, 255)
    grey = Image.new("L", (4, 4), 77)
    assert decode_image(_encode(grey, "PNG")).getpixel((1, 1)) == (77, 77, 77)
    deep = Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16))
    assert decode_image(_encode(deep, "PNG")).getpixel((0, 0)) == (255, 255, 255)
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # red in CMYK: converted, not shown as cyan
    red = decode_image(_encode(cmyk, "JPEG"))
    assert red.mode == "RGB" and np.abs(np.asarray(red, dtype=int)[4, 4] - (255, 0, 0)).max() < 30
    with pytest.raises(ImageDecodeError, match="notes.jpg: UnidentifiedImageError"):
        decode_image(b"hello, not a picture", "notes.jpg")
    with pytest.raises(ImageDecodeError, match="empty file"):
        decode_image(b"", "x.png")
    with pytest.raises(ValueError, match="decoder must be"):
        decode_image(b"x", decoder="opencv")


def test_sniff():
    jpeg = _encode(_gradient(), "JPEG")
    png = _encode(_gradient(), "PNG")
    assert sniff(jpeg[:16], jpeg[-1024:]) is None and sniff(png[:16], png[-1024:]) is None
    assert sniff(jpeg[:16], jpeg[:-50][-1024:]).startswith("truncated JPEG")
    assert sniff(png[:16], png[:-20][-1024:]).startswith("truncated PNG")
    assert sniff(b"", b"") == "empty file"
    assert sniff(b"<!DOCTYPE html>", b"</html>").startswith("not an image")
    gif = _encode(_gradient(), "GIF")
    assert sniff(gif[:16], gif[-16:]) is None


# ---------------------------------------------------------------- PIL transforms


def test_random_resized_crop_samples_within_the_range():
    crop = RandomResizedCrop(24, scale=(0.25, 0.5), ratio=(0.75, 1.333))
    for _ in range(50):
        left, top, right, bottom = crop.box(200, 100)
        assert 0 <= left < right <= 200 and 0 <= top < bottom <= 100
        area = (right - left) * (bottom - top) / (200 * 100)
        assert 0.22 < area < 0.53  # rounding of the sides moves the area a little
    assert crop(_gradient()).size == (24, 24)
    # A range no window can satisfy falls back to the central crop clamped to the ratio range.
    assert RandomResizedCrop(8, scale=(1.0, 1.0), ratio=(1.0, 1.0)).box(40, 20) == (10, 0, 30, 20)
    with pytest.raises(ValueError, match="scale"):
        RandomResizedCrop(8, scale=(0.5, 0.1))


def test_flip_jitter_and_pad_crop_are_what_they_say():
    image = _gradient()
    assert np.array_equal(np.asarray(RandomHorizontalFlip(1.0)(image)), np.asarray(image)[:, ::-1])
    assert RandomHorizontalFlip(0.0)(image) is image
    assert ColorJitter()(image) is image
    jittered = np.asarray(ColorJitter(0.4, 0.4, 0.4)(image), dtype=int)
    assert jittered.shape == (30, 40, 3) and not np.array_equal(jittered, np.asarray(image))
    padded = np.pad(np.asarray(image), ((4, 4), (4, 4), (0, 0)))  # zero padding, as CIFAR recipes use
    windows = {padded[y:y + 30, x:x + 40].tobytes() for y in range(9) for x in range(9)}
    for _ in range(10):
        assert np.asarray(PadRandomCrop(4)(image)).tobytes() in windows


def test_train_and_eval_transforms_give_normalised_tensors():
    pre = Preprocessing.tf(resolution=32)
    image = _gradient(64, 48)
    x = train_transform("imagenet", pre, scale=(0.5, 1.0))(image)
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and -1 <= x.min() and x.max() <= 1
    y = train_transform("cifar", pre)(image)
    assert y.shape == (3, 32, 32)
    e = eval_transform(pre)
    assert torch.equal(e(image), pre(image)) and torch.equal(e(image), e(image))  # deterministic
    assert torch.equal(train_transform("none", pre)(image), pre(image))
    with pytest.raises(ValueError, match="kind must be one of"):
        train_transform("autoaugment", pre)
    with pytest.raises(TypeError, match="Preprocessing"):
        eval_transform({"resolution": 224})


@pytest.mark.parametrize("pre", [Preprocessing.imagenet(48), Preprocessing.tf(48), Preprocessing.caffe(48)],
                         ids=["imagenet", "tf", "caffe_bgr"])
def test_fast_tensor_conversion_is_bit_identical_to_preprocessing(pre):
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (50, 70, 3), dtype=np.uint8))
    assert torch.equal(eval_transform(pre)(image), pre(image))
    assert torch.equal(ToModelInput(pre)(image), pre.normalize(torch.from_numpy(np.array(image)).permute(2, 0, 1)))
    assert ToModelInput(pre)(image.convert("L")).shape == (3, 50, 70)  # grey input becomes RGB


def test_cifar_transform_matches_an_explicit_pad_crop_flip():
    pre = Preprocessing(resolution=32, crop_fraction=1.0, mean=(0, 0, 0), std=(1, 1, 1))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    padded = np.pad(np.asarray(image), ((4, 4), (4, 4), (0, 0)))
    candidates = {padded[y:y + 32, x:x + 32][:, ::s].tobytes() for y in range(9) for x in range(9) for s in (1, -1)}
    t = train_transform("cifar", pre)
    for _ in range(10):
        out = t(image).permute(1, 2, 0).to(torch.uint8).numpy()
        assert out.tobytes() in candidates


# ---------------------------------------------------------------- batch augmentation


def test_random_crop_flip_on_a_batch_matches_per_image_crops():
    x = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    out = random_crop_flip(x, padding=2, generator=torch.Generator().manual_seed(0))
    assert out.dtype == torch.uint8 and out.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    seen = set()
    for i in range(64):
        matches = [(dy, dx, f) for dy in range(5) for dx in range(5) for f in (False, True)
                   if torch.equal(out[i], (lambda w: w.flip(-1) if f else w)(padded[i, :, dy:dy + 8, dx:dx + 8]))]
        assert matches, f"image {i} is not a pad-crop(-flip) of its input"
        seen.update(matches)
    assert len({m[2] for m in seen}) == 2 and len({m[0] for m in seen}) >= 4  # flips and offsets both vary
    assert torch.equal(random_crop_flip(x, padding=0, flip=False), x)
    with pytest.raises(ValueError, match="batch"):
        random_crop_flip(x[0])


def test_cutout_normalize_and_iterate_batches():
    ones = torch.ones(200, 3, 16, 16)
    holes = (cutout(ones, 4, generator=torch.Generator().manual_seed(0)) == 0).all(1).sum((1, 2))
    assert holes.max() == 16 and holes.min() >= 4 and (holes < 16).any()  # clipped at borders sometimes
    assert torch.equal(cutout(ones, 0), ones)
    pre = Preprocessing.imagenet(32)
    batch = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    normed = normalize_batch(batch, pre, channels_last=True)
    assert torch.allclose(normed, pre.normalize(batch)) and normed.is_contiguous(memory_format=torch.channels_last)
    images, labels = torch.arange(10).view(10, 1, 1, 1).expand(10, 3, 2, 2), torch.arange(10)
    batches = list(iterate_batches(images, labels, 4, generator=torch.Generator().manual_seed(0)))
    assert [len(b[1]) for b in batches] == [4, 4, 2]
    got = torch.cat([b[1] for b in batches])
    assert sorted(got.tolist()) == list(range(10)) and got.tolist() != list(range(10))
    assert all(torch.equal(b[0][:, 0, 0, 0], b[1]) for b in batches)  # images stay paired with their labels
    assert len(list(iterate_batches(images, labels, 4, shuffle=False, drop_last=True))) == 2


@pytest.mark.gpu
def test_batch_augmentation_runs_on_the_gpu():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    x = torch.randint(0, 256, (256, 3, 32, 32), dtype=torch.uint8, device="cuda")
    generator = torch.Generator(device="cuda").manual_seed(0)
    out = random_crop_flip(x, 4, generator=generator)
    out = cutout(out, 8, generator=generator)
    normed = normalize_batch(out, Preprocessing(resolution=32), channels_last=True)
    assert out.device.type == "cuda" and out.dtype == torch.uint8 and normed.shape == (256, 3, 32, 32)
    batches = list(iterate_batches(x, torch.arange(256, device="cuda"), 100, generator=generator))
    assert sorted(torch.cat([b[1] for b in batches]).tolist()) == list(range(256))


@pytest.mark.realdata
def test_real_imagenet_photos_decode_alike_with_every_decoder():
    folder = shared_file("imagenet", "images")
    files = sorted(folder.iterdir())[:20]
    for path in files:
        data = path.read_bytes()
        reference = np.asarray(decode_image(data, path.name, decoder="pillow"), dtype=np.float32)
        assert reference.ndim == 3 and min(reference.shape[:2]) >= 100
        for decoder in available_decoders():
            got = np.asarray(decode_image(data, path.name, decoder=decoder), dtype=np.float32)
            assert got.shape == reference.shape and np.abs(got - reference).mean() < 1.0, (path.name, decoder)
