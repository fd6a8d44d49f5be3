"""Temporal (frame-differencing) detection against the full detector on every frame of the same clip.

One pass over the shared clip (Intel IoT DevKit sample-videos, CC BY 4.0): each frame goes through the
temporal detector and through the full detector, timed one after the other (so a busy machine slows both
alike); reports both detection rates (frames per second of detection alone), the speed-up, the agreement
(full-frame detections the temporal run found, same label and IoU >= 0.5, and the reverse), the frames per
mode, and the same on the clip under a camera pan and a lighting change (the cases that must fall back to full
frames). Writes JSON and the per-frame latency / changed-area plot.

    python benchmarks/video_temporal.py [--device cpu] [--threads 2] [--max-frames N] [--out runs/video_temporal]

Timing numbers mean something only on a quiet machine; the agreement does not depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mobilenet.distributed import resolve_device  # noqa: E402
from mobilenet.video.detect import CREDIT, detect_video  # noqa: E402
from mobilenet.video.detector import load_frame_detector  # noqa: E402
from mobilenet.video.frames import Frame, open_frames  # noqa: E402
from mobilenet.video.plot import plot_temporal  # noqa: E402
from mobilenet.video.temporal import TemporalConfig  # noqa: E402

DATA = Path(os.environ.get("MOBILENET_DATA", REPO.parent / "shared" / "data"))
CLIP = DATA / "video" / "one-by-one-person-detection.mp4"
WEIGHTS = DATA / "weights" / "tflite" / "detect.tflite"


def disturbed(source, kind: str, start: int):
    """The clip's frames with a camera pan (shifting 6 px a frame) or lights dimmed by 35 % from ``start`` on."""
    for f in source:
        if f.index < start:
            yield f
            continue
        if kind == "pan":
            rgb = np.roll(f.rgb, 6 * (f.index - start + 1), axis=1)
        else:
            rgb = (f.rgb.astype(np.float32) * 0.65).astype(np.uint8)
        yield Frame(f.index, f.time, rgb)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--max-frames", type=int, help="only the first N frames (a quick check)")
    p.add_argument("--key-interval", type=int, default=TemporalConfig.key_interval)
    p.add_argument("--no-disturbed", action="store_true", help="skip the camera-pan and lighting-change runs")
    p.add_argument("--out", default="runs/video_temporal")
    args = p.parse_args()
    if not CLIP.is_file() or not WEIGHTS.is_file():
        sys.exit(f"needs {CLIP} and {WEIGHTS} (set MOBILENET_DATA)")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    detector = load_frame_detector(WEIGHTS, resolve_device(args.device))
    cfg = TemporalConfig(key_interval=args.key_interval)
    result = {"clip": CLIP.name, "credit": CREDIT, "detector": WEIGHTS.name, "device": str(detector.device),
              "threads": torch.get_num_threads(), "torch": torch.__version__, "machine": platform.machine(),
              "config": cfg.to_dict(), "runs": {}}
    with open_frames(CLIP) as source:
        summary = detect_video(source, detector, out_jsonl=out / "clip.jsonl", temporal=cfg, compare=True,
                               max_frames=args.max_frames)
    result["runs"]["clip"] = summary
    plot_temporal(out / "clip.jsonl", out / "temporal.png", credit=f"clip: {CREDIT}",
                  title=f"temporal detection on {CLIP.name} ({detector.device}, {torch.get_num_threads()} threads)")
    if not args.no_disturbed:
        for kind in ("pan", "lighting"):
            with open_frames(CLIP) as source:
                start = 300  # a stretch with people in it
                n = 40
                frames = disturbed(source, kind, start)
                for _ in range(start - 5):  # begin shortly before the disturbance
                    next(frames)
                wrapped = _Wrapped(source, f"{CLIP.name} ({kind})", frames, n)
                summary = detect_video(wrapped, detector, temporal=cfg, compare=True, max_frames=n,
                                       out_jsonl=out / f"{kind}.jsonl", progress=False)
            result["runs"][kind] = summary
    (out / "result.json").write_text(json.dumps(result, indent=1))
    print(f"{'run':<10}{'frames':>7}{'full fps':>10}{'temporal fps':>14}{'speed-up':>10}{'found full':>12}"
          f"{'found temporal':>16}  modes")
    for name, s in result["runs"].items():
        c = s["compare"]
        print(f"{name:<10}{s['frames']:>7}{c['full_fps']:>10}{c['temporal_fps']:>14}{c['speedup']:>10}"
              f"{_pct(c['full_found']):>12}{_pct(c['temporal_found']):>16}  {s['temporal']['modes']}")
    print(f"device {result['device']}, {result['threads']} threads; wrote {out}/result.json and temporal.png")


class _Wrapped:
    """A FrameSource's attributes over another iterator of frames."""

    def __init__(self, source, name: str, frames, count: int) -> None:
        self.name, self.fps, self.size, self.count = name, source.fps, source.size, count
        self.problems, self.error = [], None
        self._frames = frames

    def __iter__(self):
        return self._frames


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


if __name__ == "__main__":
    main()
