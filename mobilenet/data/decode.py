"""Robust image decoding: encoded bytes -> RGB PIL image (or array), or an ImageDecodeError naming the file.

JPEGs go through ``simplejpeg`` (libjpeg-turbo without Pillow's per-image overhead) when it is installed, and
through Pillow otherwise or when simplejpeg cannot decode the file's variant. Everything else (PNG, GIF, BMP,
WebP, TIFF) goes through Pillow. Every failure mode of a bad file (truncated data, not an image, a decompression
bomb, an unsupported mode) becomes one ``ImageDecodeError`` so callers catch a single type.

Never a half-grey picture. A JPEG cut short and given its end-of-image marker back is the hard case: libjpeg
pads the missing entropy data with zeros (uniform grey 128 blocks) and only *warns*. simplejpeg runs in strict
mode, so that warning is an error there (benign warnings, such as bytes after the last scan, are retried
leniently). Pillow never reports it, so on the Pillow path a JPEG is checked after decoding: a progressive file
must code every coefficient of every component to full precision, and a picture whose last block is exactly
grey 128 is decoded a second time with padding bytes placed before its end marker: a complete scan ignores
them, an incomplete one decodes them as image data, so a changed picture means missing data.
``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` must stay off (nothing here turns it on; a test pins it).

EXIF orientation is applied on every path (a phone photo taken sideways is upright), and images above
``PIL.Image.MAX_IMAGE_PIXELS`` are refused as decompression bombs before any pixel is decoded.

``sniff`` is the cheap scan-time check: it looks only at the first and last bytes of a file.
"""

from __future__ import annotations

import errno
import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})
JPEG_MAGIC = b"\xff\xd8\xff"
# How far from the end of a JPEG we look for the end-of-image marker: some cameras pad files after EOI.
_TAIL_WINDOW = 1024
_ORIENTATION_TAG = 0x0112
# EXIF orientation -> the PIL transpose that makes the picture upright (as PIL.ImageOps.exif_transpose).
_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
            5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}
# libjpeg warnings that mean pixels were invented (missing or corrupt entropy data); the others (extra bytes
# after a scan, an unknown JFIF revision, a bad ICC marker) leave the picture intact.
_CORRUPT = ("premature end", "bad huffman code", "bad arithmetic code", "instead of rst")

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


# ----------------------------------------------------------------------------- JPEG structure


_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM and RST0-7 carry no length field


def _jpeg_segments(data: bytes):
    """``(marker, payload start, payload end)`` of each marker segment of a JPEG, up to and including the first
    SOS (start of scan); stops quietly at anything malformed."""
    pos = 2
    n = len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _STANDALONE:  # markers without a payload
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        if length < 2:
            return
        yield marker, pos + 4, min(pos + 2 + length, n)
        if marker in (0xDA, 0xD9):
            return
        pos += 2 + length


def _tiff_orientation(tiff: bytes) -> int:
    """The Orientation tag of a TIFF/EXIF block's first IFD; 1 when absent or malformed."""
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return 1
    order = "little" if tiff[:2] == b"II" else "big"
    ifd = int.from_bytes(tiff[4:8], order)
    if ifd + 2 > len(tiff):
        return 1
    count = int.from_bytes(tiff[ifd:ifd + 2], order)
    for k in range(count):
        entry = tiff[ifd + 2 + 12 * k:ifd + 14 + 12 * k]
        if len(entry) < 12:
            return 1
        if int.from_bytes(entry[:2], order) == _ORIENTATION_TAG:
            value = int.from_bytes(entry[8:10], order)  # a SHORT, left-justified in the value field
            return value if value in _UPRIGHT else 1
    return 1


_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def jpeg_header(data: bytes) -> tuple[int, int, int]:
    """``(width, height, EXIF orientation 1-8)`` of JPEG bytes from their marker segments, without decoding
    (0 x 0 when no frame header is found; orientation 1 when there is no EXIF)."""
    width = height = 0
    orientation = 1
    for marker, start, end in _jpeg_segments(data):
        if marker == 0xE1 and orientation == 1 and data[start:start + 6] == b"Exif\x00\x00":
            orientation = _tiff_orientation(data[start + 6:end])
        elif marker in _SOF_MARKERS and end - start >= 5:
            height = int.from_bytes(data[start + 1:start + 3], "big")
            width = int.from_bytes(data[start + 3:start + 5], "big")
    return width, height, orientation


def jpeg_orientation(data: bytes) -> int:
    """EXIF orientation (1-8) of JPEG bytes, read from the APP1 segment without decoding; 1 when absent."""
    return jpeg_header(data)[2]


def _progressive_scans_complete(data: bytes) -> bool:
    """For a progressive JPEG: does every component get every coefficient coded down to full precision?

    A file cut short and given its end marker back loses its last scans, which are exactly those refinements.
    Baseline files have one complete pass by construction: True.
    """
    components: list[int] = []
    precision: dict[int, list[int]] = {}  # component id -> lowest successive-approximation bit reached, per coef
    pos = 2
    n = len(data)
    progressive = False
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            pos = data.find(b"\xff", pos)  # inside entropy-coded data: skip to the next marker candidate
            if pos < 0:
                break
            continue
        marker = data[pos + 1]
        if marker == 0x00 or marker == 0xFF or marker in _STANDALONE:  # stuffed byte, fill, RSTn: scan data
            pos += 2 if marker != 0xFF else 1
            continue
        if marker == 0xD9:
            break
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        body = data[pos + 4:pos + 2 + length]
        if marker == 0xC2 and len(body) >= 6:
            progressive = True
            components = [body[6 + 3 * i] for i in range(body[5]) if 6 + 3 * i < len(body)]
            precision = {c: [99] * 64 for c in components}
        elif marker == 0xDA and progressive and len(body) >= 1:
            ns = body[0]
            ids = [body[1 + 2 * i] for i in range(ns) if 1 + 2 * i < len(body)]
            if len(body) >= 4 + 2 * ns:
                ss, se, al = body[1 + 2 * ns], body[2 + 2 * ns], body[3 + 2 * ns] & 0x0F
                for c in ids:
                    row = precision.get(c)
                    if row is not None:
                        for k in range(ss, min(se, 63) + 1):
                            row[k] = min(row[k], al)
        elif marker in (0xC0, 0xC1):
            return True
        pos += 2 + length
    return not progressive or all(al == 0 for row in precision.values() for al in row)


# ----------------------------------------------------------------------------- decoders


def _check_pixels(width: int, height: int, name: str) -> None:
    limit = Image.MAX_IMAGE_PIXELS
    if limit and width * height > limit:
        raise ImageDecodeError(f"{name}: decompression bomb: {width}x{height} = {width * height} pixels, over "
                               f"PIL.Image.MAX_IMAGE_PIXELS = {limit} (raise that limit to read it)")


def _upright_array(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation to an ``(H, W, C)`` array (the same result as the PIL transpose)."""
    if orientation == 2:
        arr = arr[:, ::-1]
    elif orientation == 3:
        arr = arr[::-1, ::-1]
    elif orientation == 4:
        arr = arr[::-1]
    elif orientation == 5:
        arr = arr.transpose(1, 0, 2)
    elif orientation == 6:
        arr = np.rot90(arr, -1)
    elif orientation == 7:
        arr = np.rot90(arr, 2).transpose(1, 0, 2)
    elif orientation == 8:
        arr = np.rot90(arr, 1)
    else:
        return arr
    return np.ascontiguousarray(arr)


def _decode_simplejpeg(data: bytes, name: str, min_size: int | None, strict_only: bool) -> np.ndarray | None:
    """RGB array, or None when simplejpeg cannot decode this JPEG variant (Pillow then tries)."""
    width, height, orientation = jpeg_header(data)
    _check_pixels(width, height, name)
    kwargs = {} if min_size is None else {"min_height": min_size, "min_width": min_size}
    try:
        arr = _simplejpeg.decode_jpeg(data, colorspace="RGB", **kwargs)
    except ValueError as error:
        message = str(error)
        if any(word in message.lower() for word in _CORRUPT):
            raise ImageDecodeError(f"{name}: truncated or corrupt JPEG data ({message})") from error
        if strict_only:
            raise ImageDecodeError(f"{name}: {message}") from error
        try:  # a benign libjpeg warning (extra bytes after the scan, unknown JFIF revision): decode leniently
            arr = _simplejpeg.decode_jpeg(data, colorspace="RGB", strict=False, **kwargs)
        except ValueError:
            return None  # a variant simplejpeg does not handle (e.g. CMYK): let Pillow try
    return _upright_array(arr, orientation)


def _open_pillow(data: bytes, min_size: int | None) -> tuple[Image.Image, tuple[int, int]]:
    """The fully decoded image and its size before any DCT-domain downscaling."""
    with warnings.catch_warnings():
        # DecompressionBombWarning becomes an error: a 100-megapixel "photo" in a training set is a bad file.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image = Image.open(io.BytesIO(data))
        full_size = image.size
        if min_size is not None and image.format == "JPEG":
            # DCT-domain downscaling by 1/2, 1/4 or 1/8 while keeping both sides >= min_size: much faster decode.
            image.draft("RGB", (min_size, min_size))
        image.load()  # force the full decode here, so truncation surfaces now and not inside a transform
    return image, full_size


def _grey_tail(image: Image.Image, full_size: tuple[int, int]) -> bool:
    """True when the last pixels (in block order: the bottom-right corner, 4 full-size pixels square) are
    exactly the grey 128 that libjpeg writes for missing data."""
    w, h = image.size
    k = max(1, min(4 * w // max(full_size[0], 1), w, h))
    corner = np.asarray(image.crop((w - k, h - k, w, h)).convert("RGB"))
    return bool((corner == 128).all())


# Pseudo-random bytes without 0xFF (so no marker appears): decoded as image data by an incomplete scan, skipped
# as extraneous bytes after a complete one. Zeros would not do: zero bits refine nothing in a progressive scan.
_PADDING = bytes(np.random.default_rng(12345).integers(0, 255, 4096, dtype=np.uint8))
_SMALL = 128 * 128  # pictures this small are always checked by a second decode (a cut may sit in their last block)


def _check_jpeg_complete(image: Image.Image, full_size: tuple[int, int], data: bytes, min_size: int | None,
                         name: str) -> None:
    if not _progressive_scans_complete(data):
        raise ImageDecodeError(f"{name}: truncated JPEG (its progressive scans stop before the picture is complete)")
    progressive = bool(image.info.get("progressive") or image.info.get("progression"))
    if not (progressive or image.width * image.height <= _SMALL or _grey_tail(image, full_size)):
        return
    end = data.rfind(b"\xff\xd9")
    if end < 0:
        return
    try:
        again, _ = _open_pillow(data[:end] + _PADDING + data[end:], min_size)
    except (OSError, ValueError, SyntaxError):
        return
    if again.tobytes() != image.tobytes():
        raise ImageDecodeError(f"{name}: truncated JPEG (its entropy-coded data ends before the picture does; "
                               "the end-of-image marker was put back)")


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit / 32-bit grey (some PNGs and TIFFs): scale to 8 bits rather than let convert() clip.
        arr = np.asarray(image, dtype=np.float32)
        peak = 65535.0 if image.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        image = Image.fromarray(np.clip(arr * (255.0 / peak), 0, 255).astype(np.uint8))
    elif "A" in image.getbands() or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels become white, not whatever colour happens to sit under alpha = 0.
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return image.convert("RGB")


def _orientation(image: Image.Image) -> int:
    try:
        value = image.getexif().get(_ORIENTATION_TAG, 1)
    except (OSError, ValueError, SyntaxError, TypeError, KeyError, IndexError):  # malformed EXIF: no rotation
        return 1
    return value if value in _UPRIGHT else 1


def _decode_pillow(data: bytes, name: str, min_size: int | None) -> Image.Image:
    image, full_size = _open_pillow(data, min_size)
    if image.format == "JPEG":
        _check_jpeg_complete(image, full_size, data, min_size, name)
    orientation = _orientation(image)
    image = _to_rgb(image)
    return image.transpose(_UPRIGHT[orientation]) if orientation in _UPRIGHT else image


def _decode(data: bytes, name: str, min_size: int | None, decoder: str) -> Image.Image | np.ndarray:
    if decoder not in ("auto", "pillow", "simplejpeg"):
        raise ValueError(f"decoder must be 'auto', 'pillow' or 'simplejpeg', got {decoder!r}")
    if decoder == "simplejpeg" and _simplejpeg is None:
        raise ImportError("decoder='simplejpeg' needs the simplejpeg package: pip install simplejpeg")
    if not data:
        raise ImageDecodeError(f"{name}: empty file")
    if decoder != "pillow" and _simplejpeg is not None and data.startswith(JPEG_MAGIC):
        arr = _decode_simplejpeg(data, name, min_size, strict_only=decoder == "simplejpeg")
        if arr is not None:
            return arr
    try:
        return _decode_pillow(data, name, min_size)
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageDecodeError(f"{name}: decompression bomb: {error}") from error
    except (OSError, ValueError, SyntaxError, MemoryError) as error:
        # OSError covers truncation and UnidentifiedImageError (not an image); SyntaxError is raised by some
        # Pillow plugins on corrupt headers. The cheap sniff names the common cases better than Pillow does
        # ("cannot identify image file <_io.BytesIO object at 0x...>").
        reason = sniff(data[:16], data[-_TAIL_WINDOW:])
        if reason is None and isinstance(error, Image.UnidentifiedImageError):
            reason = f"not an image Pillow can read (starts with {data[:8]!r})"
        raise ImageDecodeError(f"{name}: {type(error).__name__}: {reason or error}") from error


def decode_image(data: bytes, name: str = "<bytes>", *, min_size: int | None = None,
                 decoder: str = "auto") -> Image.Image:
    """Decode encoded image bytes into an upright (EXIF orientation applied) RGB PIL image.

    Args:
        data: the file's bytes.
        name: used only in error messages.
        min_size: when given, JPEGs may be decoded at a reduced scale (1/2, 1/4, 1/8) as long as both sides stay
            >= ``min_size``: a large speed-up for evaluation at 224 px from multi-megapixel photos.
        decoder: ``"auto"`` (simplejpeg for JPEGs when installed, else Pillow), ``"pillow"`` or ``"simplejpeg"``.

    Raises:
        ImageDecodeError: the bytes are not a complete, readable image (truncated, corrupt, not an image, or a
            decompression bomb over ``PIL.Image.MAX_IMAGE_PIXELS``).
    """
    out = _decode(data, name, min_size, decoder)
    return Image.fromarray(out) if isinstance(out, np.ndarray) else out


def decode_image_array(data: bytes, name: str = "<bytes>", *, decoder: str = "auto") -> np.ndarray:
    """Like ``decode_image`` but returns the ``(H, W, 3)`` uint8 array, skipping the PIL object for JPEGs when
    simplejpeg is installed (the bulk-decoding fast path of ``load_tensor_dataset``)."""
    out = _decode(data, name, None, decoder)
    return out if isinstance(out, np.ndarray) else np.asarray(out)


def read_image(path: str | os.PathLike[str], *, min_size: int | None = None) -> Image.Image:
    """An image file on disk as an upright RGB PIL image (see ``decode_image``); the one way this package reads
    image files, so every command treats truncation, orientation and decompression bombs alike.

    Raises:
        ImageDecodeError: the file cannot be read or is not a complete, readable image.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        if Path(path).is_symlink() and not Path(path).exists() and error.errno != errno.ELOOP:
            raise ImageDecodeError(f"{path}: cannot read: a broken symbolic link (to {os.readlink(path)})") from error
        raise ImageDecodeError(f"{path}: cannot read: {error.strerror or error}") from error
    return decode_image(data, str(path), min_size=min_size)


def unreadable(error: ImageDecodeError) -> str:
    """The reason an image was left out, without its file name (results list the file beside it):
    ``cannot read image: truncated JPEG ...``."""
    reason = str(error).split(": ", 1)[-1]
    return reason if reason.startswith("cannot read") else f"cannot read image: {reason}"


def read_image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """``(width, height)`` of an image file as ``read_image`` returns it (EXIF orientation applied), from its
    header alone: cheap, and it refuses empty files, non-images and decompression bombs, but not truncation.

    Raises:
        ImageDecodeError: the file cannot be opened as an image, or is over ``PIL.Image.MAX_IMAGE_PIXELS``.
    """
    try:
        if os.path.getsize(path) == 0:
            raise ImageDecodeError(f"{path}: empty file")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                orientation = _orientation(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageDecodeError(f"{path}: decompression bomb: {error}") from error
    except ImageDecodeError:
        raise
    except (OSError, ValueError, SyntaxError) as error:
        raise ImageDecodeError(f"{path}: {type(error).__name__}: {error}") from error
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)
