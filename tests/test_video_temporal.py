"""Temporal detection's choice per frame when a large tracked object moves: its crop would cost a full frame,
so its box is held for ``hold_frames`` frames before the full detector runs again; anything new is detected."""

from __future__ import annotations

import torch

from mobilenet.detection.postprocess import Detections
from mobilenet.video.detector import FrameDetector
from mobilenet.video.temporal import TemporalConfig, TemporalDetector

W, H = 192, 108  # the frame: 16:9 as the shared clip


def _bright_boxes(x: torch.Tensor) -> list[Detections]:
    """A stand-in detector: the bounding box of the bright pixels of each image, normalised, score 0.9."""
    out = []
    for img in x:
        ys, xs = (img[0] > 0.5).nonzero(as_tuple=True)
        if ys.numel() == 0:
            out.append(Detections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long)))
            continue
        h, w = img.shape[-2:]
        box = torch.tensor([[xs.min() / w, ys.min() / h, (xs.max() + 1) / w, (ys.max() + 1) / h]])
        out.append(Detections(box.float(), torch.tensor([0.9]), torch.tensor([0])))
    return out


def _detector() -> FrameDetector:
    return FrameDetector(name="bright", class_names=["person"], input_size=(96, 96), mean=(0.0,) * 3,
                         std=(255.0,) * 3, device=torch.device("cpu"), flexible=True, run=_bright_boxes)


def _frame(*boxes: tuple[int, int, int, int]) -> torch.Tensor:
    f = torch.full((3, H, W), 20.0)
    for x1, y1, x2, y2 in boxes:
        f[:, y1:y2, x1:x2] = 230.0
    return f


def _modes(detector: TemporalDetector, frames: list[torch.Tensor]) -> list[str]:
    return [detector.step(f)[1]["mode"] for f in frames]


def test_a_large_moving_tracked_object_is_held_then_detected_again():
    # a "person" 90 % of the frame's height walking 4 px a frame: any crop of the frame's aspect is the frame
    walk = [_frame((40 + 4 * i, 5, 70 + 4 * i, 102)) for i in range(7)]
    held = TemporalDetector(_detector(), TemporalConfig(key_interval=100, hold_frames=1))
    assert _modes(held, walk) == ["key", "held", "changed", "held", "changed", "held", "changed"]
    twice = TemporalDetector(_detector(), TemporalConfig(key_interval=100, hold_frames=2))
    assert _modes(twice, walk) == ["key", "held", "held", "changed", "held", "held", "changed"]
    never = TemporalDetector(_detector(), TemporalConfig(key_interval=100, hold_frames=0))
    assert _modes(never, walk)[1:] == ["changed"] * 6
    # a held frame answers with the boxes of the last full detection
    d = TemporalDetector(_detector(), TemporalConfig(key_interval=100, hold_frames=1))
    first, _ = d.step(walk[0])
    kept, record = d.step(walk[1])
    assert record["mode"] == "held" and torch.equal(kept.boxes, first.boxes)


def test_a_new_object_is_never_held():
    person = (40, 5, 70, 102)
    frames = [_frame(person), _frame(person), _frame(person, (165, 30, 180, 75))]  # someone new appears
    d = TemporalDetector(_detector(), TemporalConfig(key_interval=100, hold_frames=5))
    modes = _modes(d, frames)
    assert modes[:2] == ["key", "static"] and modes[2] in ("changed", "crops"), modes
