"""`mobilenet detect video`: detection on every frame of a video, a frame folder, a camera or a stream.

Registered by ``cli/detect.py`` as a subcommand (this module has no ``NAME``, so it is not a command of its own).

Examples::

    mobilenet detect video clip.mp4 --weights detect.tflite --out runs/video
    mobilenet detect video clip.mp4 --weights detect.tflite --out runs/video --temporal --compare
    mobilenet detect video rtsp://camera/stream --weights ssd.onnx --out runs/cam --no-video
    mobilenet detect video 0 --weights coco_ssd.safetensors --out runs/webcam     # camera 0; Ctrl-C stops
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import strict_json
from .flags import CLIError, float_in, int_at_least, positive_float, positive_int, probability
from .paths import check_output_dir, check_output_file

DESCRIPTION = """Detect objects in every frame of a video file (mp4/mov/mkv/webm/avi), a folder of frames, a camera
(0, /dev/video0) or a stream URL (rtsp://, http://). Writes to --out: the annotated video (same size and fps),
detections.jsonl (one line per frame: frame, time, detections with pixel boxes, labels, scores), summary.json.
--temporal runs the full detector on key frames only and, in between, on crops around the regions that changed
(frame differencing); --compare also runs the full detector on every frame and reports both rates and their
agreement. The detector is any detector file: .safetensors, TF Lite's detect.tflite, or an ONNX export."""


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``video`` to ``mobilenet detect``'s subcommands."""
    v = sub.add_parser("video", help="detect objects in a video, frame folder, camera or stream",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    v.add_argument("source", metavar="VIDEO|DIR|CAMERA|URL")
    v.add_argument("--weights", required=True, help="detector: .safetensors, detect.tflite, or .onnx (with NMS)")
    v.add_argument("--out", required=True, help="output folder")
    v.add_argument("--video", default="annotated.mp4", help="annotated video's file name in --out; its suffix "
                   "picks the format: .mp4/.mov/.mkv (H.264), .webm (VP9), .avi (MPEG-4) (default annotated.mp4)")
    v.add_argument("--no-video", action="store_true", help="write no annotated video (JSON Lines and summary only)")
    v.add_argument("--score-threshold", type=probability, default=0.5,
                   help="keep detections scoring at least this, in [0, 1] (default: 0.5)")
    v.add_argument("--fps", type=positive_float,
                   help="frame rate of a frame folder (default 30) or override the source's")
    v.add_argument("--max-frames", type=positive_int, help="stop after this many frames")
    v.add_argument("--temporal", action="store_true", help="frame-differencing detection between key frames")
    v.add_argument("--compare", action="store_true", help="with --temporal: also run the full detector on every "
                   "frame; report both rates and the agreement")
    v.add_argument("--key-interval", type=positive_int, default=10,
                   help="--temporal: a full frame every N frames (default: 10)")
    v.add_argument("--max-changed", type=float_in(0, 1, low_open=True), default=0.35, help="--temporal: changed "
                   "fraction of the frame, in (0, 1], above which the full frame is detected (default: 0.35)")
    v.add_argument("--crop-size", type=int_at_least(32), default=160,
                   help="--temporal: detector input side for crops, >= 32 (default: 160)")
    v.add_argument("--hold-frames", type=int_at_least(0), default=1,
                   help="--temporal: frames a large moving tracked object keeps its box before the full detector "
                        "runs again; 0 runs it at once (default: 1)")
    v.add_argument("--no-plot", action="store_true", help="--temporal: no temporal.png (latency, changed area)")
    v.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default: auto)")
    v.add_argument("--no-progress", action="store_true")
    return v


def run(args: argparse.Namespace) -> int:
    from ..distributed import resolve_device

    if args.compare and not args.temporal:
        raise ValueError("--compare needs --temporal (it compares the temporal run with the full detector)")
    check_output_dir(args.out, inputs=[args.source])
    try:
        from ..video.detect import detect_video
        from ..video.detector import load_frame_detector
        from ..video.frames import VIDEO_SUFFIXES, open_frames
        from ..video.temporal import TemporalConfig
    except ImportError as e:
        raise CLIError(str(e)) from None
    if not args.no_video:  # before the detector loads and the frames are decoded
        if Path(args.video).name != args.video:
            raise CLIError(f"--video {args.video}: a file name inside --out, not a path")
        check_output_file(Path(args.out) / args.video, flag="--video", suffixes=VIDEO_SUFFIXES, what="a video",
                          inputs=[args.source])
    out = Path(args.out)
    temporal = (TemporalConfig(key_interval=args.key_interval, max_changed=args.max_changed,
                               crop_size=args.crop_size, hold_frames=args.hold_frames) if args.temporal else None)
    try:
        detector = load_frame_detector(args.weights, resolve_device(args.device))
        source = open_frames(args.source, fps=args.fps)
    except ImportError as e:
        raise CLIError(str(e)) from None
    with source:
        out.mkdir(parents=True, exist_ok=True)
        video = None if args.no_video else out / args.video
        summary = detect_video(source, detector, out_video=video, out_jsonl=out / "detections.jsonl",
                               score_threshold=args.score_threshold, temporal=temporal, compare=args.compare,
                               max_frames=args.max_frames, progress=not args.no_progress)
    (out / "summary.json").write_text(strict_json.dumps(summary, indent=1) + "\n")
    if temporal is not None and not args.no_plot:
        try:
            from ..video.plot import plot_temporal

            plot_temporal(out / "detections.jsonl", out / "temporal.png")
        except ImportError as e:  # matplotlib missing: the rest is written; say so
            print(f"no temporal.png: {e}", file=sys.stderr)
    _print_summary(summary, video)
    for line in summary["problems"][:20]:
        print(f"skipped {line}", file=sys.stderr)
    if summary["error"]:
        raise CLIError(f"{summary['error']}; wrote the {summary['frames']} frame(s) before it to {out}")
    # Ctrl-C is how a camera or a stream is stopped (count None): a success. A file or a frame folder left
    # unfinished exits as interrupted (130), so that a script does not take the partial outputs for the whole.
    return 130 if summary.get("interrupted") and source.count is not None else 0


def _print_summary(s: dict, video: Path | None) -> None:
    print(f"{s['frames']} frames ({s['size'][0]}x{s['size'][1]}, {s['fps']:g} fps) in {s['wall_seconds']:.1f} s: "
          f"{s['effective_fps']} frames/s overall, {s['detector_fps']} frames/s detection ({s['device']})")
    per_class = ", ".join(f"{k} {v}" for k, v in s["detections_per_class"].items()) or "none"
    print(f"detections (score >= {s['score_threshold']:g}): {per_class}")
    if "temporal" in s:
        print("temporal modes: " + ", ".join(f"{k} {v}" for k, v in s["temporal"]["modes"].items()))
    if "compare" in s:
        c = s["compare"]
        print(f"full detector {c['full_fps']} frames/s, temporal {c['temporal_fps']} frames/s: x{c['speedup']}; "
              f"temporal found {_pct(c['full_found'])} of the {c['full_detections']} full-frame detections, "
              f"full found {_pct(c['temporal_found'])} of the temporal run's {c['temporal_detections']}")
    if video is not None and s["frames"]:
        print(f"wrote {video}")
    if s.get("interrupted"):
        print("interrupted: the outputs hold the frames done so far", file=sys.stderr)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"
