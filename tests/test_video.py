"""Video in and out (PyAV), change detection, temporal detection and `mobilenet detect video` on real files:
synthetic clips made here, the shared clip (Intel IoT DevKit sample-videos, CC BY 4.0) with the COCO SSD."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch
from PIL import Image

from mobilenet.cli import main
from tests.conftest import shared_file

av = pytest.importorskip("av", reason="video tests need PyAV (pip install 'mobilenet[video]')")

from mobilenet.video.frames import VideoError, VideoWriter, open_frames  # noqa: E402
from mobilenet.video.temporal import (  # noqa: E402
    TemporalConfig,
    connected_components,
    crop_windows,
    find_changes,
    grey,
)

CLIP = ("video", "one-by-one-person-detection.mp4")
SSD = ("weights", "tflite", "detect.tflite")


def moving_square(n: int = 24, size: tuple[int, int] = (160, 96)) -> list[np.ndarray]:
    """Frames of a grey background with a white square moving right 3 px a frame."""
    w, h = size
    frames = []
    for i in range(n):
        rgb = np.full((h, w, 3), 60, np.uint8)
        rgb[30:60, 10 + 3 * i:40 + 3 * i] = 230
        frames.append(rgb)
    return frames


def write_clip(path, frames, fps=12.0):
    with VideoWriter(path, fps, (frames[0].shape[1], frames[0].shape[0])) as w:
        for f in frames:
            w.write(f)
    return path


@pytest.mark.parametrize("suffix", [".mp4", ".webm", ".avi"])
def test_writer_and_reader_round_trip(tmp_path, suffix):
    frames = moving_square()
    path = write_clip(tmp_path / f"clip{suffix}", frames)
    assert not list(tmp_path.glob(".clip*"))  # the temporary file was moved into place
    with open_frames(path) as src:
        got = list(src)
        assert src.size == (160, 96) and src.fps == pytest.approx(12.0) and src.error is None
    assert [f.index for f in got] == list(range(len(frames)))
    assert got[5].time == pytest.approx(5 / 12, abs=1e-3)
    assert np.abs(got[10].rgb.astype(int) - frames[10]).mean() < 6  # lossy, but the same picture


def test_frame_folder_skips_and_reports_bad_frames(tmp_path):
    for i, rgb in enumerate(moving_square(6)):
        Image.fromarray(rgb).save(tmp_path / f"{i:03d}.png")
    (tmp_path / "003.png").write_bytes(b"not a png")
    Image.new("RGB", (10, 10)).save(tmp_path / "999.png")
    with open_frames(tmp_path, fps=5) as src:
        got = list(src)
    assert len(got) == 5 and src.fps == 5 and got[1].time == pytest.approx(0.2)
    assert any(p.startswith("003.png: not a readable image") for p in src.problems)
    assert any(p.startswith("999.png: 10x10") for p in src.problems)


def test_bad_sources_are_one_clear_error(tmp_path):
    (tmp_path / "text.mp4").write_text("hello")
    with pytest.raises(VideoError, match="cannot open video .*text.mp4"):
        open_frames(tmp_path / "text.mp4")
    with pytest.raises(FileNotFoundError, match="video not found"):
        open_frames(tmp_path / "missing.mp4")
    # an AVI whose codec tag was changed to one FFmpeg does not know
    data = bytearray(write_clip(tmp_path / "x.avi", moving_square(4)).read_bytes())
    assert data.count(b"FMP4")
    (tmp_path / "unknown.avi").write_bytes(bytes(data.replace(b"FMP4", b"QQQQ")))
    with pytest.raises(VideoError, match="unknown video codec"):
        open_frames(tmp_path / "unknown.avi")
    with pytest.raises(VideoError, match="output video must end in"):
        VideoWriter(tmp_path / "out.gif", 10, (16, 16))


def test_truncated_file_and_dropped_stream_stop_with_a_reason(tmp_path):
    path = write_clip(tmp_path / "clip.mp4", moving_square(60))
    data = path.read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) * 2 // 3])
    # the index (moov) is at the end of an .mp4 PyAV writes: cut off, the file has no readable stream
    with pytest.raises(VideoError, match="no video stream"):
        open_frames(tmp_path / "cut.mp4")

    class Dropping(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Type", "video/x-matroska")
            self.send_header("Content-Length", str(len(stream)))
            self.end_headers()
            self.wfile.write(stream[: len(stream) // 2])  # then the connection drops

        def log_message(self, *args):
            pass

    stream = write_clip(tmp_path / "live.mkv", moving_square(60)).read_bytes()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Dropping)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with open_frames(f"http://127.0.0.1:{server.server_address[1]}/live.mkv", timeout_s=5) as src:
            n = sum(1 for _ in src)
    finally:
        server.shutdown()
    assert 0 < n < 60 and src.error and "decoding stopped after" in src.error


def test_change_detection_finds_the_moving_square_and_nothing_else():
    a, b = (torch.from_numpy(f).permute(2, 0, 1).float() for f in moving_square()[4:6])
    cfg = TemporalConfig(cell=4, min_region_cells=1)
    change = find_changes(grey(a), grey(b), cfg)
    # the square's trailing and leading edges changed (its inside did not): one or two regions around them
    assert 1 <= change.regions.shape[0] <= 2 and 0 < change.fraction < 0.2 and change.brightness_shift < 1
    x1, y1 = change.regions[:, :2].min(0).values.tolist()
    x2, y2 = change.regions[:, 2:].max(0).values.tolist()
    assert x1 <= 22 and x2 >= 55 and y1 <= 30 and y2 >= 60 and x2 - x1 < 60 and y2 - y1 < 50  # not the frame
    assert find_changes(grey(a), grey(a), cfg).regions.shape[0] == 0
    lit = find_changes(grey(a), grey(a * 1.5), cfg)  # lights brighter: most of the frame changes
    assert lit.fraction > cfg.max_changed and lit.brightness_shift > cfg.max_brightness_shift


def test_connected_components_and_crop_windows():
    mask = torch.zeros(6, 9, dtype=torch.bool)
    mask[0:2, 0:2] = True
    mask[2, 2] = True  # touches the first blob diagonally: 8-connected
    mask[4:6, 6:9] = True
    labels = connected_components(mask)
    assert labels[0, 0] == labels[2, 2] != labels[5, 8] and (labels[~mask] == 0).all()
    assert len(labels[mask].unique()) == 2
    cfg = TemporalConfig()
    regions = torch.tensor([[100.0, 100.0, 140.0, 180.0]])
    tracked = torch.tensor([[90.0, 60.0, 150.0, 200.0], [600.0, 10.0, 700.0, 100.0]])
    (win,) = crop_windows(regions, tracked, (768, 432), cfg).tolist()
    assert win[0] <= 90 and win[1] <= 60 and win[2] >= 150 and win[3] >= 200  # takes in the tracked box it touches
    assert (win[2] - win[0]) / (win[3] - win[1]) == pytest.approx(768 / 432)  # the frame's aspect ratio
    assert win[2] < 600  # not the far box


@pytest.mark.realdata
@pytest.mark.slow
def test_temporal_detection_on_the_shared_clip_agrees_with_full_frames(tmp_path):
    """90 frames from the clip's first visit, temporal against full frames in one pass."""
    from mobilenet.video.detect import detect_video
    from mobilenet.video.detector import load_frame_detector

    detector = load_frame_detector(shared_file(*SSD))
    with open_frames(shared_file(*CLIP)) as src:
        frames = iter(src)
        for _ in range(60):  # the empty room before the first person
            next(frames)

        class Part:
            name, fps, size, count, problems, error = "clip[60:150]", src.fps, src.size, 90, [], None

            def __iter__(self):
                return frames

        s = detect_video(Part(), detector, temporal=TemporalConfig(), compare=True, max_frames=90, progress=False,
                         out_jsonl=tmp_path / "d.jsonl")
    c = s["compare"]
    assert s["frames"] == 90 and c["full_detections"] > 40
    assert c["full_found"] >= 0.9 and c["temporal_found"] >= 0.85, c
    modes = s["temporal"]["modes"]
    full = modes.get("key", 0) + modes.get("changed", 0) + modes.get("brightness", 0)  # each resets the key count
    assert full >= 9 and modes.get("static", 0) + modes.get("crops", 0) > 20, modes
    assert s["detections_per_class"].get("person", 0) > 40


@pytest.mark.realdata
@pytest.mark.slow
def test_detect_video_cli_writes_video_jsonl_summary_and_plot(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["detect", "video", str(shared_file(*CLIP)), "--weights", str(shared_file(*SSD)), "--out", str(out),
                 "--max-frames", "8", "--temporal", "--compare", "--hold-frames", "0", "--no-progress"])
    text = capsys.readouterr().out
    assert code == 0 and "8 frames (768x432, 10 fps)" in text and "temporal found" in text
    lines = [json.loads(x) for x in (out / "detections.jsonl").read_text().splitlines()]
    assert [r["frame"] for r in lines] == list(range(8)) and lines[3]["time"] == pytest.approx(0.3)
    assert {"mode", "latency_ms", "full_latency_ms", "detections", "changed"} <= set(lines[1])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] == 8 and summary["error"] is None and summary["compare"]["speedup"] > 0
    assert "held" not in summary["temporal"]["modes"]  # --hold-frames 0
    with open_frames(out / "annotated.mp4") as src:
        assert src.size == (768, 432) and src.fps == pytest.approx(10.0) and sum(1 for _ in src) == 8
    assert (out / "temporal.png").stat().st_size > 5000


def test_detect_video_cli_bad_inputs_are_one_line(tmp_path, capsys):
    (tmp_path / "text.mp4").write_text("hello")
    weights = tmp_path / "w.safetensors"
    from mobilenet.checkpoint import save
    from mobilenet.detection.ssd import SSD, SSDConfig

    save(SSD(SSDConfig(num_classes=2, width_mult=0.25, image_size=(64, 64))), weights, class_names=["a", "b"])
    for argv, message in (
        ([str(tmp_path / "text.mp4")], "cannot open video"),
        ([str(tmp_path / "nope.mp4")], "video not found"),
        ([str(tmp_path / "text.mp4"), "--compare"], "--compare needs --temporal"),
    ):
        code = main(["detect", "video", *argv, "--weights", str(weights), "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and message in err[0], err


def test_detect_video_cli_on_a_frame_folder_with_our_weights(tmp_path, capsys):
    """A frame folder and a .safetensors detector (a new SSD: the boxes mean nothing, the plumbing is real)."""
    from mobilenet.checkpoint import save
    from mobilenet.detection.ssd import SSD, SSDConfig

    frames = tmp_path / "frames"
    frames.mkdir()
    for i, rgb in enumerate(moving_square(5)):
        Image.fromarray(rgb).save(frames / f"{i:02d}.jpg")
    weights = tmp_path / "w.safetensors"
    save(SSD(SSDConfig(num_classes=2, width_mult=0.25, image_size=(64, 64))), weights, class_names=["a", "b"])
    code = main(["detect", "video", str(frames), "--weights", str(weights), "--out", str(tmp_path / "o"), "--fps", "5",
                 "--video", "a.webm", "--score-threshold", "0", "--no-progress"])
    assert code == 0 and "5 frames (160x96, 5 fps)" in capsys.readouterr().out
    lines = (tmp_path / "o" / "detections.jsonl").read_text().splitlines()
    assert len(lines) == 5 and json.loads(lines[4])["time"] == pytest.approx(0.8)
    with open_frames(tmp_path / "o" / "a.webm") as src:
        assert sum(1 for _ in src) == 5 and src.size == (160, 96)


@pytest.mark.slow
def test_an_onnx_export_detects_as_the_pytorch_model(tmp_path):
    """The same SSD through ONNX Runtime (an export with NMS) and PyTorch gives the same detections."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from mobilenet.detection.export import export_detector_onnx
    from mobilenet.detection.ssd import SSD, SSDConfig
    from mobilenet.video.detector import frames_to_tensor, load_frame_detector, resize_pixels, torch_detector

    model = SSD(SSDConfig(num_classes=3, width_mult=0.25, image_size=(96, 96))).eval()
    export_detector_onnx(model, tmp_path / "ssd.onnx", class_names=["a", "b", "c"], score_threshold=0.05)
    onnx_det = load_frame_detector(tmp_path / "ssd.onnx")
    torch_det = torch_detector(model)
    assert onnx_det.class_names == ["a", "b", "c"] and onnx_det.input_size == (96, 96) and not onnx_det.flexible
    pixels = resize_pixels(frames_to_tensor(np.stack(moving_square(2)), torch.device("cpu")), (96, 96))
    for ours, theirs in zip(torch_det.detect(pixels), onnx_det.detect(pixels), strict=True):
        keep = ours.scores >= 0.05
        assert theirs.boxes.shape[0] == int(keep.sum()) > 0
        assert torch.allclose(theirs.scores, ours.scores[keep], atol=1e-4)
        assert torch.allclose(theirs.boxes, ours.boxes[keep], atol=1e-4)
    with pytest.raises(ValueError, match="takes 96x96 inputs"):
        onnx_det.detect(torch.zeros(1, 3, 64, 64))
