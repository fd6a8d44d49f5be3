"""Frames in and out: video files, frame folders, cameras and streams, decoded and encoded with PyAV.

PyAV (FFmpeg's libraries, bundled in its wheels) rather than OpenCV, because:

* its wheels carry an H.264 encoder (libx264), so the annotated video is an ordinary ``.mp4`` that browsers
  and players open; OpenCV's PyPI wheels write MPEG-4 Part 2 (``mp4v``) only;
* every frame comes with its presentation time (``frame.time``), so JSON Lines timestamps are the
  container's, right for variable frame rates too; OpenCV's ``CAP_PROP_POS_MSEC`` is an estimate;
* failures are exceptions naming the cause (``InvalidDataError``, an unknown codec, a dropped connection)
  where OpenCV's ``VideoCapture.read()`` returns ``False`` for all of them alike;
* the same call opens files, ``rtsp://``/``http://`` streams and cameras (v4l2, avfoundation, dshow).

A source yields :class:`Frame` (index, time in seconds, ``(H, W, 3)`` uint8 RGB). Problems are
:class:`VideoError` (a ``ValueError``: one line for the command line).
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..data.decode import IMAGE_EXTENSIONS, ImageDecodeError, has_image_extension, read_image, read_image_size

VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm")
IMAGE_SUFFIXES = tuple(sorted(IMAGE_EXTENSIONS))  # a frame folder holds what every command reads as an image
# output container -> (format name, codecs to try in order, pixel format)
_OUTPUTS = {
    ".mp4": ("mp4", ("libx264", "h264", "mpeg4"), "yuv420p"),
    ".m4v": ("mp4", ("libx264", "h264", "mpeg4"), "yuv420p"),
    ".mov": ("mov", ("libx264", "h264", "mpeg4"), "yuv420p"),
    ".mkv": ("matroska", ("libx264", "h264", "mpeg4"), "yuv420p"),
    ".webm": ("webm", ("libvpx-vp9", "libvpx"), "yuv420p"),
    ".avi": ("avi", ("mpeg4",), "yuv420p"),
}
DEFAULT_FPS = 30.0  # frame folders and streams that do not say


class VideoError(ValueError):
    """A video source or output that cannot be used; the message is one line naming the cause."""


def require_av() -> Any:
    """The ``av`` module, or an ImportError saying how to install it."""
    try:
        import av
    except ImportError:
        raise ImportError("video needs PyAV: pip install 'mobilenet[video]'") from None
    return av


@dataclass
class Frame:
    """One decoded frame: its index in the source, its time in seconds, and (H, W, 3) uint8 RGB pixels."""

    index: int
    time: float
    rgb: np.ndarray


@dataclass
class FrameSource:
    """An open source of frames (iterate it; close it, or use ``with``).

    ``count`` is the number of frames when the container says (None for streams and cameras);
    ``problems`` collects frames that were skipped (unreadable images in a folder) as one line each;
    ``error`` is set when decoding stopped early (a dropped stream, corrupt data), after the frames before it.
    """

    name: str
    fps: float
    size: tuple[int, int]  # (width, height)
    count: int | None
    codec: str
    _frames: Iterator[Frame] = field(repr=False, default=iter(()))
    _close: Any = field(repr=False, default=None)
    problems: list[str] = field(default_factory=list)
    error: str | None = None

    def __iter__(self) -> Iterator[Frame]:
        return self._frames

    def close(self) -> None:
        if self._close is not None:
            self._close()
            self._close = None

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _is_camera(spec: str) -> bool:
    return spec.isdigit() or spec.startswith("/dev/video")


def _is_url(spec: str) -> bool:
    return re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", spec) is not None


def open_frames(spec: str | os.PathLike[str], *, fps: float | None = None, timeout_s: float = 10.0) -> FrameSource:
    """Open a video file, a folder of frame images (sorted by name), a camera (``0``, ``/dev/video0``) or a
    stream URL (``rtsp://``, ``http://`` ...). ``fps`` overrides the source's rate (needed for folders; default 30).
    ``timeout_s`` bounds how long a stream or camera may stay silent before it counts as dropped."""
    text = os.fspath(spec)
    path = Path(text)
    if path.is_dir():
        return _open_folder(path, fps or DEFAULT_FPS)
    if _is_camera(text) or _is_url(text):
        return _open_av(text, fps=fps, timeout_s=timeout_s, live=True)
    if not path.exists():
        raise FileNotFoundError(f"video not found: {text} (expected a video file, a folder of frames, a camera "
                                "number such as 0, or a stream URL)")
    return _open_av(text, fps=fps, timeout_s=timeout_s, live=False)


def _open_av(spec: str, *, fps: float | None, timeout_s: float, live: bool) -> FrameSource:
    av = require_av()
    kwargs: dict[str, Any] = {}
    target = spec
    if _is_camera(spec):
        target = f"/dev/video{spec}" if spec.isdigit() else spec
        fmt = {"darwin": "avfoundation", "win32": "dshow"}.get(sys.platform, "v4l2")
        if sys.platform in ("darwin", "win32"):
            target = spec if spec.isdigit() else target
        kwargs["format"] = fmt
    if live:
        kwargs["timeout"] = (timeout_s, timeout_s)  # (open, read): a silent stream is a dropped stream
        if spec.startswith("rtsp://"):
            kwargs["options"] = {"rtsp_transport": "tcp"}
    try:
        container = av.open(target, "r", **kwargs)
    except (av.error.FFmpegError, OSError) as e:
        what = "camera" if _is_camera(spec) else "stream" if live else "video"
        raise VideoError(f"cannot open {what} {spec}: {_reason(e)}") from None
    if not container.streams.video:
        container.close()
        raise VideoError(f"{spec} has no video stream (not a video, or a file cut off before its index)")
    stream = container.streams.video[0]
    ctx = stream.codec_context
    if ctx is None or not getattr(ctx, "name", None) or stream.codec_context.codec is None:
        container.close()
        raise VideoError(f"{spec}: unknown video codec (FFmpeg has no decoder for it)")
    width, height = int(ctx.width), int(ctx.height)
    if width <= 0 or height <= 0:
        container.close()
        raise VideoError(f"{spec}: the video stream has no frame size (unknown codec or corrupt header)")
    rate = fps or (float(stream.average_rate) if stream.average_rate else None) or DEFAULT_FPS
    count = int(stream.frames) if stream.frames and not live else None
    stream.thread_type = "AUTO"  # frame-threaded decoding
    source = FrameSource(name=spec, fps=rate, size=(width, height), count=count, codec=ctx.name,
                         _close=container.close)

    def frames() -> Iterator[Frame]:
        index = 0
        try:
            for frame in container.decode(stream):
                t = float(frame.time) if frame.time is not None else index / rate
                rgb = frame.to_ndarray(format="rgb24")
                if rgb.shape[:2] != (height, width):  # a mid-stream size change: keep the output size fixed
                    rgb = np.asarray(Image.fromarray(rgb).resize((width, height), Image.BILINEAR))
                yield Frame(index, t, rgb)
                index += 1
        except (av.error.FFmpegError, OSError) as e:
            source.error = f"decoding stopped after {index} frame(s): {_reason(e)}"
        if source.error is None and count is not None and index < count:
            source.error = f"the video ended after {index} of its {count} frames (truncated or dropped)"

    source._frames = frames()
    return source


def _reason(e: BaseException) -> str:
    """FFmpeg's message without PyAV's errno prefix and repeated file name."""
    msg = getattr(e, "strerror", None) or str(e)
    return str(msg).strip().rstrip(".") or type(e).__name__


def _open_folder(folder: Path, fps: float) -> FrameSource:
    files = sorted(f for f in folder.iterdir() if f.is_file() and has_image_extension(f.name))
    if not files:
        raise VideoError(f"no frames ({', '.join(IMAGE_SUFFIXES)}) in folder {folder}")
    size: tuple[int, int] | None = None
    first_problems: list[str] = []
    for f in files:  # the first readable frame fixes the size (upright, as read_image returns it)
        try:
            size = read_image_size(f)
            break
        except ImageDecodeError as e:
            first_problems.append(f"{f.name}: not a readable image ({str(e).split(': ', 1)[-1]})")
    if size is None:
        raise VideoError(f"no readable frame in folder {folder}")
    source = FrameSource(name=str(folder), fps=fps, size=size, count=len(files), codec="images",
                         problems=first_problems)

    def frames() -> Iterator[Frame]:
        index = 0
        for f in files:
            try:  # EXIF orientation applied; truncated frames and decompression bombs refused, never half grey
                rgb = np.asarray(read_image(f))
            except ImageDecodeError as e:
                if not any(p.startswith(f"{f.name}:") for p in source.problems):
                    source.problems.append(f"{f.name}: not a readable image ({str(e).split(': ', 1)[-1]})")
                continue
            if (rgb.shape[1], rgb.shape[0]) != size:
                source.problems.append(f"{f.name}: {rgb.shape[1]}x{rgb.shape[0]}, not the first frame's "
                                       f"{size[0]}x{size[1]}; skipped")
                continue
            yield Frame(index, index / fps, rgb)
            index += 1

    source._frames = frames()
    return source


class VideoWriter:
    """Encode RGB frames to a video file at a constant rate; the file appears only when ``close`` succeeds.

    The container comes from the suffix (.mp4/.mov/.mkv: H.264, .webm: VP9, .avi: MPEG-4 Part 2).
    """

    def __init__(self, path: str | os.PathLike[str], fps: float, size: tuple[int, int], *, crf: int = 23) -> None:
        av = require_av()
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix not in _OUTPUTS:
            raise VideoError(f"output video must end in one of {', '.join(_OUTPUTS)}, got {self.path.name}")
        fmt, codecs, pix_fmt = _OUTPUTS[suffix]
        codec = next((c for c in codecs if _has_encoder(av, c)), None)
        if codec is None:
            raise VideoError(f"this PyAV build has no encoder for {suffix} ({', '.join(codecs)})")
        width, height = size
        if codec in ("libx264", "h264") and (width % 2 or height % 2):
            pix_fmt = "yuv444p"  # 4:2:0 needs even sizes; keep the source's size exactly
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=suffix)
        os.close(fd)
        self._tmp = Path(tmp)
        self.rate = Fraction(fps).limit_denominator(1001)
        self._container = av.open(str(self._tmp), "w", format=fmt)
        self._stream = self._container.add_stream(codec, rate=self.rate)
        self._stream.width, self._stream.height, self._stream.pix_fmt = width, height, pix_fmt
        if codec == "libx264":
            self._stream.options = {"crf": str(crf), "preset": "veryfast"}
        self.codec = codec
        self.size = size
        self.frames = 0
        self._av = av

    def write(self, rgb: np.ndarray) -> None:
        """Append one (H, W, 3) uint8 RGB frame of the writer's size."""
        if (rgb.shape[1], rgb.shape[0]) != self.size:
            raise ValueError(f"frame is {rgb.shape[1]}x{rgb.shape[0]}, the video is {self.size[0]}x{self.size[1]}")
        frame = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame.pts = self.frames
        frame.time_base = 1 / self.rate
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.frames += 1

    def close(self) -> Path:
        """Flush the encoder and move the finished file into place."""
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        from ..checkpoint import current_umask

        os.chmod(self._tmp, 0o666 & ~current_umask())  # mkstemp made it private
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Drop the unfinished file."""
        try:
            self._container.close()
        except Exception:  # noqa: BLE001  (already failing; the temporary file goes either way)
            pass
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _has_encoder(av: Any, name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
    except Exception:  # noqa: BLE001  (UnknownCodecError, or a codec without an encoder)
        return False
    return True
