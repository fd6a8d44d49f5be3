"""Robust image decoding: encoded bytes -> RGB PIL image, or an ImageDecodeError naming the file.

JPEGs go through ``simplejpeg`` (libjpeg-turbo without Pillow's per-image overhead) when it is installed,
and through Pillow otherwise or when simplejpeg refuses the file: both
decoders are strict, so a truncated JPEG is an error with either, never a half-grey picture. Everything else
(PNG, GIF, BMP, WebP, TIFF) goes through Pillow. Every failure mode of a bad file (truncated data, not an image,
a decompression bomb, an unsupported mode) becomes one ``ImageDecodeError`` so callers catch a single type.

``sniff`` is the cheap scan-time check: it looks only at the first and last bytes of a file.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})
JPEG_MAGIC = b"\xff\xd8\xff"
# How far from the end of a JPEG we look for the end-of-image marker: some cameras pad files after EOI.
_TAIL_WINDOW = 1024

try:  # optional fast path, see module docstring
    import simplejpeg as _simplejpeg
except ImportError:  # pragma: no cover - depends on the environment
    _simplejpeg = None


class ImageDecodeError(ValueError):
    """A file that is not a readable image; the message names the file and the reason."""


def available_decoders() -> list[str]:
    """Names of the JPEG decoders usable here, fastest first (``"simplejpeg"`` only when installed)."""
    return (["simplejpeg"] if _simplejpeg is not None else []) + ["pillow"]


def has_image_extension(name: str) -> bool:
    """True when ``name`` ends with one of ``IMAGE_EXTENSIONS`` (case-insensitive)."""
    dot = name.rfind(".")
    return dot >= 0 and name[dot:].lower() in IMAGE_EXTENSIONS


def sniff(head: bytes, tail: bytes) -> str | None:
    """Cheap validity check from a file's first (>= 12) and last (up to 1 KiB) bytes.

    Returns ``None`` when the bytes look like a complete image, else the reason. Catches the common failures
    (empty file, text or HTML saved as .jpg, a JPEG or PNG cut short by an interrupted copy) without decoding.
    """
    if not head:
        return "empty file"
    if head.startswith(JPEG_MAGIC):
        return None if b"\xff\xd9" in tail[-_TAIL_WINDOW:] else "truncated JPEG (no end-of-image marker)"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return None if b"IEND" in tail[-64:] else "truncated PNG (no IEND chunk)"
    if head[:6] in (b"GIF87a", b"GIF89a") or head[:2] == b"BM" or head[:4] in (b"II*\x00", b"MM\x00*"):
        return None
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return None
    if head[:2] in (b"P5", b"P6"):
        return None
    return f"not an image (starts with {head[:8]!r})"


def _decode_pillow(data: bytes, min_size: int | None) -> Image.Image:
    with warnings.catch_warnings():
        # DecompressionBombWarning becomes an error: a 100-megapixel "photo" in a training set is a bad file.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image = Image.open(io.BytesIO(data))
        if min_size is not None and image.format == "JPEG":
            # DCT-domain downscaling by 1/2, 1/4 or 1/8 while keeping both sides >= min_size: much faster decode.
            image.draft("RGB", (min_size, min_size))
        image.load()  # force the full decode here, so truncation surfaces now and not inside a transform
    if image.mode in ("I;16", "I", "F"):
        # 16-bit / 32-bit grey (some PNGs and TIFFs): scale to 8 bits rather than let convert() clip.
        arr = np.asarray(image, dtype=np.float32)
        peak = 65535.0 if image.mode == "I;16" else max(float(arr.max()), 1.0)
        image = Image.fromarray(np.clip(arr * (255.0 / peak), 0, 255).astype(np.uint8))
    elif "A" in image.getbands() or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels become white, not whatever colour happens to sit under alpha = 0.
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return image.convert("RGB")


def decode_image(data: bytes, name: str = "<bytes>", *, min_size: int | None = None,
                 decoder: str = "auto") -> Image.Image:
    """Decode encoded image bytes into an RGB PIL image.

    Args:
        data: the file's bytes.
        name: used only in error messages.
        min_size: when given, JPEGs may be decoded at a reduced scale (1/2, 1/4, 1/8) as long as both sides stay
            >= ``min_size``: a large speed-up for evaluation at 224 px from multi-megapixel photos.
        decoder: ``"auto"`` (simplejpeg for JPEGs when installed, else Pillow), ``"pillow"`` or ``"simplejpeg"``.

    Raises:
        ImageDecodeError: the bytes are not a complete, readable image.
    """
    if decoder not in ("auto", "pillow", "simplejpeg"):
        raise ValueError(f"decoder must be 'auto', 'pillow' or 'simplejpeg', got {decoder!r}")
    if decoder == "simplejpeg" and _simplejpeg is None:
        raise ImportError("decoder='simplejpeg' needs the simplejpeg package: pip install simplejpeg")
    if not data:
        raise ImageDecodeError(f"{name}: empty file")
    if decoder != "pillow" and _simplejpeg is not None and data.startswith(JPEG_MAGIC):
        try:
            kwargs = {} if min_size is None else {"min_height": min_size, "min_width": min_size}
            return Image.fromarray(_simplejpeg.decode_jpeg(data, colorspace="RGB", **kwargs))
        except ValueError as error:
            if "Premature end" in str(error) or decoder == "simplejpeg":
                raise ImageDecodeError(f"{name}: {error}") from error
            # Any other refusal (a JPEG variant or marker simplejpeg does not accept): let Pillow try.
    try:
        return _decode_pillow(data, min_size)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning,
            MemoryError) as error:
        # OSError covers truncation and UnidentifiedImageError (not an image); SyntaxError is raised by some
        # Pillow plugins on corrupt headers.
        raise ImageDecodeError(f"{name}: {type(error).__name__}: {error}") from error


def decode_image_array(data: bytes, name: str = "<bytes>", *, decoder: str = "auto") -> np.ndarray:
    """Like ``decode_image`` but returns the ``(H, W, 3)`` uint8 array, skipping the PIL object for JPEGs when
    simplejpeg is installed (the bulk-decoding fast path of ``load_tensor_dataset``)."""
    if decoder != "pillow" and _simplejpeg is not None and data.startswith(JPEG_MAGIC):
        try:
            return _simplejpeg.decode_jpeg(data, colorspace="RGB")
        except ValueError as error:
            if "Premature end" in str(error) or decoder == "simplejpeg":
                raise ImageDecodeError(f"{name}: {error}") from error
    return np.asarray(decode_image(data, name, decoder="pillow" if decoder == "auto" else decoder))
