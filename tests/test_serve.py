"""`mobilenet serve` over real HTTP on localhost: the JSON API (batched concurrent requests, bad inputs), the
command, and the page in a real headless chromium with a screenshot."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("starlette", reason="serve tests need mobilenet[serve]")
pytest.importorskip("uvicorn", reason="serve tests need mobilenet[serve]")

from mobilenet.checkpoint import save  # noqa: E402
from mobilenet.model import MobileNetV1  # noqa: E402
from mobilenet.serve.app import create_app  # noqa: E402
from mobilenet.serve.batcher import Batcher, Busy  # noqa: E402
from mobilenet.serve.model import load_served  # noqa: E402
from tests.conftest import shared_file  # noqa: E402
from tests.serve_helpers import chromium, have_chromium, running_server, upload_and_wait  # noqa: E402

CLASSES = ["apple", "bear", "cat", "dog", "eel", "fox"]


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    path = tmp_path_factory.mktemp("serve") / "clf.safetensors"
    save(MobileNetV1(width_mult=0.25, resolution=32, num_classes=len(CLASSES)), path, class_names=CLASSES)
    return path


def png(seed: int, size=(40, 30)) -> bytes:
    rgb = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def post(url: str, body: bytes, ctype: str = "image/png", timeout: float = 60) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": ctype})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def multipart(field: str, filename: str, data: bytes) -> tuple[bytes, str]:
    boundary = "----mobilenet-test-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def test_classifier_api_answers_and_refuses_bad_requests(classifier):
    app = create_app(load_served(classifier), max_upload_bytes=50_000)
    with running_server(app) as base:
        assert get(base + "/health") == (200, {"status": "ok", "kind": "classifier", "images": 0, "batches": 0,
                                                "largest_batch": 0, "errors": 0})
        code, info = get(base + "/model")
        assert code == 200 and info["kind"] == "classifier" and info["class_names"] == CLASSES
        assert info["config"]["width_mult"] == 0.25 and info["preprocessing"]["resolution"] == 32
        code, raw = post(base + "/predict", png(1))
        assert code == 200 and len(raw["top"]) == 5
        probs = [t["prob"] for t in raw["top"]]
        assert probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6
        assert {t["label"] for t in raw["top"]} <= set(CLASSES)
        body, ctype = multipart("image", "x.png", png(1))
        code, form = post(base + "/predict?topk=2", body, ctype)
        assert code == 200 and form["top"] == raw["top"][:2]  # the same image as a form file
        for url, data, ctype, status, message in (
            ("/predict", b"hello, not an image", "text/plain", 400, "not a readable image: not an image"),
            ("/predict", png(2)[:60], "image/png", 400, "truncated PNG"),
            ("/predict", b"", "image/png", 400, "the request body is empty"),
            ("/predict", b"x" * 60_000, "image/png", 413, "the limit is 50000"),
            ("/predict?topk=abc", png(1), "image/png", 400, "topk must be a int"),
            ("/predict?topk=0", png(1), "image/png", 400, "topk must be in [1, 6]"),
            ("/detect", png(1), "image/png", 400, "this server runs a classifier: use POST /predict"),
            ("/predict", b"--x\r\n\r\n", "multipart/form-data; boundary=x", 400, ""),
        ):
            code, answer = post(base + url, data, ctype)
            assert code == status and message in answer["error"] and "\n" not in answer["error"], (url, answer)
        assert get(base + "/nope")[0] == 404 and get(base + "/predict") == (405, {"error": "Method Not Allowed"})
        assert get(base + "/health")[1]["images"] == 2  # the refused requests never reached the model


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(classifier):
    served = load_served(classifier)
    images = [png(seed) for seed in range(24)]
    alone = [served.format(served.run([Image.open(io.BytesIO(b)).convert("RGB")])[0]) for b in images]
    app = create_app(served, max_batch=8, max_wait_ms=50)
    with running_server(app) as base, ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(lambda b: post(base + "/predict", b), images))
        stats = get(base + "/health")[1]
    assert all(code == 200 for code, _ in answers)
    for (_, got), want in zip(answers, alone, strict=True):
        assert [t["label"] for t in got["top"]] == [t["label"] for t in want["top"]]
        assert [t["prob"] for t in got["top"]] == pytest.approx([t["prob"] for t in want["top"]], abs=1e-5)
    assert stats["images"] == 24 and stats["batches"] < 24 and stats["largest_batch"] > 1, stats


def test_a_full_queue_is_refused_not_dropped(classifier):
    served = load_served(classifier)
    gate = threading.Event()
    real_run = served._run
    served._run = lambda images: (gate.wait(30), real_run(images))[1]  # hold the worker until the queue fills
    batcher = Batcher(served, max_batch=1, max_wait_ms=0, max_queue=2)
    image = Image.open(io.BytesIO(png(0))).convert("RGB")
    first = batcher.submit(image)
    time.sleep(0.2)  # the worker took the first image and waits at the gate
    queued = [batcher.submit(image), batcher.submit(image)]
    with pytest.raises(Busy, match="2 images are already waiting"):
        batcher.submit(image)
    gate.set()
    assert all(f.result(timeout=60).shape == (len(CLASSES),) for f in [first, *queued])
    batcher.close()
    assert batcher.stats["images"] == 3


def _serve(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    return subprocess.Popen([sys.executable, "-m", "mobilenet", "serve", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


@pytest.mark.slow
def test_serve_command_runs_and_refuses_bad_settings(classifier, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = _serve([str(classifier), "--port", str(port)])
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if get(f"http://127.0.0.1:{port}/health")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.3)
        assert post(f"http://127.0.0.1:{port}/predict", png(3))[0] == 200
        busy = _serve([str(classifier), "--port", str(port)])  # the port is taken
        _, err = busy.communicate(timeout=90)
        assert busy.returncode == 2 and err.strip().count("\n") == 0 and f"cannot listen on 127.0.0.1:{port}" in err
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=60)
    assert "serving classifier clf.safetensors" in out
    missing = _serve([str(tmp_path / "none.safetensors")])
    _, err = missing.communicate(timeout=90)
    assert missing.returncode == 2 and "weights file not found" in err and err.strip().count("\n") == 0


def _colour_pixels(png_bytes: bytes, rgb: tuple[int, int, int], tol: int = 12) -> int:
    arr = np.asarray(Image.open(io.BytesIO(png_bytes)).convert("RGB")).astype(int)
    return int((np.abs(arr - np.array(rgb)).max(-1) <= tol).sum())


@pytest.mark.slow
@pytest.mark.skipif(not have_chromium(), reason="needs Debian's chromium and chromium-driver (apt-get install "
                    "chromium chromium-driver)")
def test_page_shows_top5_bars_in_chromium(classifier, tmp_path):
    (tmp_path / "pick.png").write_bytes(png(5, size=(120, 90)))
    with running_server(create_app(load_served(classifier))) as base, chromium() as driver:
        bars = upload_and_wait(driver, base, tmp_path / "pick.png", ".bar")
        widths = [b.size["width"] for b in bars]
        shot = driver.get_screenshot_as_png()
        rows = [r.text for r in driver.find_elements("css selector", ".row")]
    (tmp_path / "page.png").write_bytes(shot)
    assert len(bars) == 5 and all(w > 0 for w in widths) and widths == sorted(widths, reverse=True)
    assert all(any(c in r for c in CLASSES) and r.endswith("%") for r in rows), rows
    assert _colour_pixels(shot, (0x2C, 0x7B, 0xE5)) > 200  # the bars' blue is on the screenshot


@pytest.mark.slow
@pytest.mark.realdata
@pytest.mark.skipif(not have_chromium(), reason="needs Debian's chromium and chromium-driver")
def test_page_draws_boxes_of_the_coco_ssd_in_chromium(tmp_path):
    """A frame of the shared clip (Intel IoT DevKit sample-videos, CC BY 4.0) through the imported COCO SSD."""
    from mobilenet.video.frames import open_frames

    with open_frames(shared_file("video", "one-by-one-person-detection.mp4")) as src:
        frame = next(f for f in src if f.index == 300).rgb  # someone stands at the table
    Image.fromarray(frame).save(tmp_path / "frame.jpg", quality=92)
    app = create_app(load_served(shared_file("weights", "tflite", "detect.tflite")))
    with running_server(app) as base, chromium() as driver:
        boxes = upload_and_wait(driver, base, tmp_path / "frame.jpg", "#boxes .box")
        labels = [b.text for b in boxes]
        shot = driver.get_screenshot_as_png()
    assert any(label.startswith("person") for label in labels), labels
    assert _colour_pixels(shot, (0x1F, 0x77, 0xB4)) > 200  # the person box's colour is on the screenshot


@pytest.mark.slow
def test_an_onnx_classifier_is_served_as_the_pytorch_one(classifier, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from mobilenet import load
    from mobilenet.export.onnx import export_onnx

    export_onnx(load(classifier), tmp_path / "clf.onnx")
    ours, theirs = load_served(classifier), load_served(tmp_path / "clf.onnx")
    assert theirs.kind == "classifier" and theirs.class_names == CLASSES and theirs.info["runtime"] == "onnxruntime"
    with running_server(create_app(theirs)) as base:
        code, answer = post(base + "/predict?topk=3", png(4))
    want = ours.format(ours.run([Image.open(io.BytesIO(png(4))).convert("RGB")])[0], topk=3)
    assert code == 200 and [t["label"] for t in answer["top"]] == [t["label"] for t in want["top"]]
    assert [t["prob"] for t in answer["top"]] == pytest.approx([t["prob"] for t in want["top"]], abs=1e-4)
