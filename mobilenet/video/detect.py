"""Detect objects in every frame of a video: an annotated video, JSON Lines per frame, and a summary.

``detect_video`` runs the full detector on every frame, or :class:`~mobilenet.video.temporal.TemporalDetector`
with ``temporal=``; with ``compare=True`` it also runs the full detector on every frame of the same pass and
reports both rates and their agreement (the full-frame detections the temporal run found, same label and
IoU >= 0.5, and the reverse). Timings interleave the two per frame, so a busy machine slows both alike.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import torch
from PIL import Image

from .. import strict_json
from ..checkpoint import atomic_write
from ..detection.boxes import clip_boxes
from ..detection.draw import draw_detections
from ..detection.postprocess import Detections
from .detector import FrameDetector, frames_to_tensor, resize_pixels
from .frames import FrameSource, VideoWriter
from .temporal import TemporalConfig, TemporalDetector, match_count

CREDIT = "Intel IoT DevKit sample-videos, CC BY 4.0"  # the shared clip's required credit


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def as_records(d: Detections, names: list[str], size: tuple[int, int]) -> list[dict[str, Any]]:
    """Pixel ``Detections`` -> JSON-ready dicts (box clipped to the frame, score, label, class id), best first."""
    boxes = clip_boxes(d.boxes, *size)
    order = d.scores.argsort(descending=True).tolist()
    b, s, c = boxes.tolist(), d.scores.tolist(), d.labels.tolist()
    return [{"box": [round(v, 1) for v in b[i]], "score": round(s[i], 4), "label": names[c[i]] if c[i] < len(names)
             else f"class_{c[i]}", "class_id": int(c[i])} for i in order]


def detect_video(
    source: FrameSource,
    detector: FrameDetector,
    *,
    out_video: str | os.PathLike[str] | None = None,
    out_jsonl: str | os.PathLike[str] | None = None,
    score_threshold: float = 0.5,
    temporal: TemporalConfig | None = None,
    compare: bool = False,
    max_frames: int | None = None,
    progress: bool = True,
    on_frame: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run ``detector`` over ``source`` (see the module doc); returns the summary.

    The summary: frames, seconds of video, wall seconds, effective fps (frames per wall second, decode and
    encode included), detector fps (frames per second of detection alone), detections per class, problems
    (skipped frames), error (why decoding stopped early, if it did), and for temporal runs the frame count per
    mode and, with ``compare``, the full-frame fps and the agreement. Ctrl-C stops cleanly: what was done is
    written and the summary says ``interrupted``.
    """
    if compare and temporal is None:
        raise ValueError("compare needs temporal: it compares the temporal run with the full detector")
    device = detector.device
    names = detector.class_names
    tracker = TemporalDetector(detector, temporal, score_threshold=score_threshold) if temporal else None
    per_class: Counter[str] = Counter()
    modes: Counter[str] = Counter()
    det_seconds = full_seconds = 0.0
    full_total = temporal_total = matched_full = matched_temporal = 0
    frames = 0
    last_time = 0.0
    interrupted = False
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=max_frames or source.count, unit="frame", dynamic_ncols=True, desc="detect")
    start = time.perf_counter()
    with ExitStack() as stack:
        writer = stack.enter_context(VideoWriter(out_video, source.fps, source.size)) if out_video else None
        lines = stack.enter_context(atomic_write(out_jsonl, "w")) if out_jsonl else None
        try:
            for frame in source:
                if max_frames is not None and frames >= max_frames:
                    break
                pixels = frames_to_tensor(frame.rgb, device)[0]
                _sync(device)
                t0 = time.perf_counter()
                record: dict[str, Any] = {"frame": frame.index, "time": round(frame.time, 4)}
                if tracker is not None:
                    dets, info = tracker.step(pixels)
                    record.update(info)
                    modes[info["mode"]] += 1
                else:
                    h, w = pixels.shape[-2:]
                    d = detector.detect(resize_pixels(pixels[None], detector.input_size))[0].scaled(w, h)
                    dets = Detections(d.boxes[d.scores >= score_threshold], d.scores[d.scores >= score_threshold],
                                      d.labels[d.scores >= score_threshold])
                _sync(device)
                elapsed = time.perf_counter() - t0
                det_seconds += elapsed
                record["latency_ms"] = round(1000 * elapsed, 2)
                if compare:
                    h, w = pixels.shape[-2:]
                    _sync(device)
                    t1 = time.perf_counter()
                    full = detector.detect(resize_pixels(pixels[None], detector.input_size))[0].scaled(w, h)
                    full = Detections(full.boxes[full.scores >= score_threshold],
                                      full.scores[full.scores >= score_threshold],
                                      full.labels[full.scores >= score_threshold])
                    _sync(device)
                    full_elapsed = time.perf_counter() - t1
                    full_seconds += full_elapsed
                    found_full, found_temporal = match_count(full, dets), match_count(dets, full)
                    full_total += full.boxes.shape[0]
                    temporal_total += dets.boxes.shape[0]
                    matched_full += found_full
                    matched_temporal += found_temporal
                    record.update(full_latency_ms=round(1000 * full_elapsed, 2), full_detections=full.boxes.shape[0],
                                  full_found=found_full, temporal_found=found_temporal)
                record["detections"] = as_records(dets, names, source.size)
                per_class.update(r["label"] for r in record["detections"])
                if writer is not None:
                    writer.write(_draw(frame.rgb, record["detections"]))
                if lines is not None:
                    lines.write(strict_json.dumps(record) + "\n")
                if on_frame is not None:
                    on_frame(record)
                frames += 1
                last_time = frame.time
                if bar is not None:
                    bar.update(1)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            if bar is not None:
                bar.close()
    wall = time.perf_counter() - start
    summary: dict[str, Any] = {
        "source": source.name, "detector": detector.name, "size": list(source.size), "fps": source.fps,
        "frames": frames, "video_seconds": round(last_time + 1 / source.fps, 3) if frames else 0.0,
        "wall_seconds": round(wall, 3), "effective_fps": round(frames / wall, 2) if wall > 0 else None,
        "detector_fps": round(frames / det_seconds, 2) if det_seconds > 0 else None,
        "score_threshold": score_threshold, "detections_per_class": dict(per_class.most_common()),
        "device": str(device), "problems": list(source.problems), "error": source.error, "interrupted": interrupted,
    }
    if temporal is not None:
        summary["temporal"] = {"config": temporal.to_dict(), "modes": dict(modes)}
    if compare:
        summary["compare"] = {
            "full_fps": round(frames / full_seconds, 2) if full_seconds > 0 else None,
            "temporal_fps": summary["detector_fps"],
            "speedup": round(full_seconds / det_seconds, 3) if det_seconds > 0 else None,
            "full_detections": full_total, "temporal_detections": temporal_total,
            "full_found": round(matched_full / full_total, 4) if full_total else None,
            "temporal_found": round(matched_temporal / temporal_total, 4) if temporal_total else None,
        }
    return summary


def _draw(rgb: Any, detections: list[dict[str, Any]]) -> Any:
    import numpy as np

    if not detections:
        return rgb
    return np.asarray(draw_detections(Image.fromarray(rgb), detections))
