"""`predict` and `detect predict` pictures: an auto-numbered run folder unless --out (runs/classify/predict,
predict2 ...; runs/detect/predict ...), --no-save prints only, unique relative names, formats kept, inputs never
overwritten, captions inside the picture and clear of each other. Every test runs in its own working directory,
so nothing lands in the repository's runs/."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mobilenet.checkpoint import save
from mobilenet.cli import build_parser, main
from mobilenet.detection.draw import draw_detections, place_captions
from mobilenet.model import MobileNetV1
from mobilenet.predict import display_copy, draw_topk, new_run_folder, picture_targets, topk_layout
from mobilenet.preprocessing import Preprocessing

RNG = np.random.default_rng(0)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("weights")
    from mobilenet.detection.ssd import build_ssd

    w = save(MobileNetV1(width_mult=0.25, resolution=32, num_classes=3), root / "w.safetensors",
             class_names=["cat", "dog", "fox"], preprocessing=Preprocessing(resolution=32, crop_fraction=1.0))
    ssd = save(build_ssd({"num_classes": 2, "width_mult": 0.25, "image_size": [96, 96]}), root / "ssd.safetensors",
               class_names=["cat", "dog"])
    return {"w": str(w), "ssd": str(ssd)}


@pytest.fixture
def photos(tmp_path, monkeypatch) -> Path:
    """A working directory of its own (runs/ goes there) with a folder of images: two x.jpg in different
    subfolders, a PNG, a nested one and an unreadable one."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MOBILENET_RUNS", raising=False)
    root = tmp_path / "photos"
    for rel in ("a/x.jpg", "b/x.jpg", "c.png", "d/e/f.png"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((RNG.random((48, 64, 3)) * 255).astype(np.uint8)).save(root / rel)
    (root / "broken.jpg").write_bytes(b"not an image")
    return root


def _pictures(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.suffix != ".json")


def test_run_folders_are_numbered_as_ultralytics_does_and_never_shared(tmp_path, monkeypatch):
    monkeypatch.delenv("MOBILENET_RUNS", raising=False)
    monkeypatch.chdir(tmp_path)
    assert new_run_folder("detect") == Path("runs/detect/predict")
    assert new_run_folder("detect") == Path("runs/detect/predict2")
    (tmp_path / "runs/detect/predict3").write_text("a file of that name")  # taken: skipped, not reused
    assert new_run_folder("detect") == Path("runs/detect/predict4")
    monkeypatch.setenv("MOBILENET_RUNS", str(tmp_path / "elsewhere"))
    assert new_run_folder("classify") == tmp_path / "elsewhere/classify/predict"


def test_predict_writes_captioned_pictures_to_a_new_run_folder(weights, photos, capsys):
    assert main(["predict", str(photos), "--weights", weights["w"], "--topk", "2"]) == 0
    err = capsys.readouterr().err
    assert "wrote 4 picture(s) and predictions.json to runs/classify/predict\n" in err
    run = Path("runs/classify/predict")
    # recursion into folders, unique names by relative path, PNG stays PNG, the unreadable image gets no picture
    assert _pictures(run) == ["a/x.jpg", "b/x.jpg", "c.png", "f.png"]
    assert Image.open(run / "c.png").format == "PNG" and Image.open(run / "a/x.jpg").format == "JPEG"
    saved = json.loads((run / "predictions.json").read_text())
    assert len(saved) == 5 and sum("error" in r for r in saved) == 1 and all(len(r["top"]) == 2 for r in saved
                                                                              if "error" not in r)
    assert main(["predict", str(photos / "c.png"), "--weights", weights["w"]]) == 0
    assert "to runs/classify/predict2" in capsys.readouterr().err and _pictures(Path("runs/classify/predict2")) == [
        "c.png"]


def test_no_save_prints_only_and_out_keeps_its_folder(weights, photos, capsys):
    assert main(["predict", str(photos / "c.png"), "--weights", weights["w"], "--no-save"]) == 0
    assert main(["detect", "predict", str(photos / "c.png"), "--weights", weights["ssd"], "--no-save"]) == 0
    assert not Path("runs").exists() and "wrote" not in capsys.readouterr().err
    assert main(["predict", str(photos / "c.png"), "--weights", weights["w"], "--out", "mine"]) == 0
    assert _pictures(Path("mine")) == ["c.png"] and (Path("mine") / "predictions.json").is_file()
    assert not Path("runs").exists()
    with pytest.raises(SystemExit) as e:  # both: argparse's one line
        main(["predict", str(photos / "c.png"), "--weights", weights["w"], "--out", "x", "--no-save"])
    assert e.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_detect_predict_writes_pictures_and_detections_to_a_new_run_folder(weights, photos, capsys):
    assert main(["detect", "predict", str(photos), "--weights", weights["ssd"], "--format", "json"]) == 0
    captured = capsys.readouterr()
    assert len(json.loads(captured.out)) == 5  # stdout stays the JSON alone
    assert "wrote 4 picture(s) and detections.json to runs/detect/predict\n" in captured.err
    run = Path("runs/detect/predict")
    assert _pictures(run) == ["a/x.jpg", "b/x.jpg", "c.png", "f.png"] and (run / "detections.json").is_file()
    # a 64x48 input is drawn 6x (the shorter side >= 256) so that its captions are readable
    assert Image.open(run / "c.png").format == "PNG" and Image.open(run / "c.png").size == (384, 288)


@pytest.mark.parametrize("command", [["predict"], ["detect", "predict"]])
def test_pictures_never_overwrite_an_input(weights, photos, capsys, command):
    before = {p: p.read_bytes() for p in photos.rglob("*") if p.is_file()}
    key = weights["ssd" if command[0] == "detect" else "w"]
    for out in (photos, photos / "a"):  # the input folder itself, and the folder of one input
        target = [str(photos / "a" / "x.jpg")] if out != photos else [str(photos)]
        assert main([*command, *target, "--weights", key, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "would overwrite the input" in err, err
    assert {p: p.read_bytes() for p in photos.rglob("*") if p.is_file()} == before


def test_picture_targets_keep_writable_formats_and_add_jpg_to_others(tmp_path):
    paths = [tmp_path / "a.PNG", tmp_path / "b.webp", tmp_path / "c.xyz"]
    got = [(t.name, fmt) for t, fmt in picture_targets(paths, tmp_path / "out")]
    assert got == [("a.PNG", "PNG"), ("b.webp", "WEBP"), ("c.xyz.jpg", "JPEG")]


def test_help_shows_the_defaults():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices  # type: ignore[union-attr]
    text = " ".join(sub["predict"].format_help().split())
    assert "labels per image (default: 5)" in text and "runs/classify/predict, predict2" in text
    det = next(a for a in sub["detect"]._actions if a.dest == "detect_command").choices["predict"]  # type: ignore
    text = " ".join(det.format_help().split())
    assert "(default: 0.3)" in text and "runs/detect/predict, predict2" in text and "--no-save" in text


# ----------------------------------------------------------------------------- captions


def _inside(rect, size) -> bool:
    return rect[0] >= 0 and rect[1] >= 0 and rect[2] <= size[0] and rect[3] <= size[1]


def test_captions_stay_inside_the_picture_and_clear_of_each_other():
    canvas = (300, 200)
    # a crowd of boxes on the same spot, boxes at every edge, one wider than the picture's remaining width
    boxes = [(100, 50, 140, 90)] * 6 + [(0, 0, 20, 20), (290, 190, 300, 200), (250, 0, 299, 10), (-5, -5, 400, 300)]
    sizes = [(60, 14)] * len(boxes)
    spots = place_captions(boxes, sizes, canvas)
    assert all(_inside(s, canvas) for s in spots)
    assert all(not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3])
               for i, a in enumerate(spots) for b in spots[i + 1:]), spots


@pytest.mark.parametrize("size", [(1, 1), (32, 32), (20000, 1), (1, 3000), (640, 480), (200, 30)])
def test_a_classification_caption_is_never_cut_at_the_edge(size):
    image = Image.new("RGB", size, (0, 128, 0))
    shown, _ = display_copy(image)
    caption = (180, 40)
    picture, (x, y) = topk_layout(shown.size, caption)
    assert _inside((x, y, x + caption[0], y + caption[1]), picture)
    assert picture == shown.size or y >= shown.height  # inside the image, or in a band below it (never over it)
    top = [{"label": "n01440764", "name": "tench, Tinca tinca", "prob": 0.912, "index": 0},
           {"label": "n01443537", "name": "goldfish", "prob": 0.05, "index": 1}]
    drawn = np.asarray(draw_topk(image, {"top": top}))
    assert drawn.shape[1] >= shown.width and drawn.shape[0] >= shown.height
    # the caption's last column and row of pixels are its padding: the text ends inside the picture
    assert (drawn[:, -1] == drawn[0, -1]).all() or (drawn[-1] == drawn[-1, 0]).all()


@pytest.mark.parametrize("size", [(1, 1), (20000, 1), (32, 32), (640, 480)])
def test_a_detection_picture_has_room_for_its_captions_and_a_video_frame_keeps_its_size(size):
    image = Image.new("RGB", size, (0, 128, 0))
    dets = [{"box": [0, 0, size[0], size[1]], "label": "a long label name", "score": 0.9, "class_id": 1}]
    drawn = draw_detections(image, dets, enlarge=True)
    assert drawn.width >= 100 and drawn.height >= 12  # room for the caption even on a 1-pixel image
    assert draw_detections(image, dets).size == size  # video frames keep their size
