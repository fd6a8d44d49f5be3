"""Bad images never become wrong results: truncated JPEGs whose end marker was put back, EXIF orientation,
decompression bombs, archive members pointing outside the archive, and the leave-out policy of evaluation,
calibration and prediction (training keeps replace-by-next)."""

from __future__ import annotations

import importlib
import io
import json
import pkgutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile, ImageOps

import mobilenet
from mobilenet.checkpoint import save
from mobilenet.cli import main
from mobilenet.data import (
    ImageDecodeError,
    decode_image,
    eval_transform,
    make_eval_loader,
    open_image_dataset,
    read_image,
)
from mobilenet.data.decode import available_decoders, decode_image_array, jpeg_header, read_image_size
from mobilenet.evaluate import evaluate
from mobilenet.model import MobileNetV1
from mobilenet.predict import output_names, predict
from mobilenet.preprocessing import Preprocessing

DECODERS = available_decoders()  # simplejpeg (when installed) and pillow: both must be strict
RNG = np.random.default_rng(0)
PHOTO = (RNG.random((120, 160, 3)) * 255).astype(np.uint8)  # noise: every block carries data


def _jpeg(arr: np.ndarray, **kwargs) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", **kwargs)
    return buf.getvalue()


def _cut_with_eoi(data: bytes, fraction: float) -> bytes:
    """A JPEG cut short by an interrupted copy, then "repaired" by putting the end-of-image marker back."""
    return data[:int(len(data) * fraction)] + b"\xff\xd9"


def _with_orientation(arr: np.ndarray, orientation: int, fmt: str = "JPEG") -> bytes:
    image = Image.fromarray(arr)
    exif = image.getexif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    image.save(buf, fmt, exif=exif.tobytes(), **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


# ----------------------------------------------------------------------------- decoding


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("variant", [dict(quality=90), dict(quality=90, progressive=True),
                                     dict(quality=75, optimize=True), dict(quality=90, subsampling=0)])
def test_a_truncated_jpeg_whose_end_marker_was_put_back_is_refused(decoder, variant):
    data = _jpeg(PHOTO, **variant)
    decode_image(data, decoder=decoder)  # the complete file decodes
    for fraction in (0.3, 0.6, 0.9):
        with pytest.raises(ImageDecodeError, match="truncated"):
            decode_image(_cut_with_eoi(data, fraction), "cut.jpg", decoder=decoder)


@pytest.mark.parametrize("decoder", DECODERS)
def test_complete_jpegs_ending_in_flat_grey_are_not_mistaken_for_truncated_ones(decoder):
    letterboxed = PHOTO.copy()
    letterboxed[80:] = 128  # grey padding at the bottom: exactly what libjpeg writes for missing data
    for arr in (letterboxed, np.full((64, 64, 3), 128, np.uint8), PHOTO[:5, :7]):
        for variant in (dict(quality=90), dict(quality=90, progressive=True)):
            image = decode_image(_jpeg(arr, **variant), decoder=decoder)
            assert image.size == (arr.shape[1], arr.shape[0])


def test_pillow_never_loads_truncated_images_after_importing_every_module():
    for module in pkgutil.walk_packages(mobilenet.__path__, "mobilenet."):
        if module.name.endswith("__main__"):
            continue
        try:
            importlib.import_module(module.name)
        except ImportError:  # optional dependencies (keras ...) missing: nothing of ours ran
            continue
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize("decoder", DECODERS)
def test_exif_orientation_is_applied_like_pillows_exif_transpose(decoder):
    arr = np.zeros((40, 60, 3), np.uint8)
    arr[:10, :20] = 255  # a white block in the stored top-left corner
    for orientation in range(1, 9):
        data = _with_orientation(arr, orientation)
        expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
        assert jpeg_header(data) == (60, 40, orientation)
        got = np.asarray(decode_image(data, decoder=decoder))
        assert got.shape == expected.shape and np.array_equal(got, expected), orientation
        assert np.array_equal(decode_image_array(data, decoder=decoder), expected)
    png = _with_orientation(arr, 6, "PNG")  # PNG carries EXIF too (eXIf chunk)
    assert np.asarray(decode_image(png)).shape == (60, 40, 3)


def test_a_sideways_phone_photo_is_upright_in_datasets_predict_and_detection(tmp_path):
    arr = np.zeros((40, 60, 3), np.uint8)
    arr[:, :30] = 255  # left half white as stored; upright (rotated 90 degrees clockwise) the top is white
    (tmp_path / "cls" / "a").mkdir(parents=True)
    path = tmp_path / "cls" / "a" / "phone.jpg"
    path.write_bytes(_with_orientation(arr, 6))
    image, _ = open_image_dataset(tmp_path / "cls")[0]
    assert image.size == (40, 60) and np.asarray(image)[:30].mean() > 200 and np.asarray(image)[30:].mean() < 50
    assert read_image(path).size == (40, 60) and read_image_size(path) == (40, 60)


@pytest.mark.parametrize("decoder", DECODERS)
def test_decompression_bombs_are_refused_before_decoding(decoder, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 40 x 30 = 1200 pixels: a "bomb" here
    for data in (_jpeg(PHOTO[:30, :40]), _png(PHOTO[:30, :40])):
        with pytest.raises(ImageDecodeError, match="decompression bomb"):
            decode_image(data, "bomb", decoder=decoder)


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def test_read_image_names_the_file_and_the_reason(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.png").write_text("hello")
    for name, reason in (("empty.jpg", "empty file"), ("text.png", "UnidentifiedImageError"),
                         ("missing.jpg", "cannot read")):
        with pytest.raises(ImageDecodeError, match=reason) as caught:
            read_image(tmp_path / name)
        assert name in str(caught.value)


# ----------------------------------------------------------------------------- archives


def test_archive_members_with_absolute_or_parent_paths_are_ignored_and_reported(tmp_path):
    path = tmp_path / "evil.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for member in ("cat/1.png", "dog/1.png", "/etc/passwd.png", "../escape/1.png", "cat/../../x/2.png",
                       "C:/windows/3.png"):
            zf.writestr(member, _png(PHOTO[:16, :16]))
    with pytest.warns(UserWarning, match="unsafe path"):
        ds = open_image_dataset(path)
    assert ds.class_names == ["cat", "dog"] and len(ds) == 2  # no "etc", "..", "x" or "C:" class
    assert sorted(name for name, reason in ds.skipped if reason.startswith("unsafe path")) == [
        "../escape/1.png", "/etc/passwd.png", "C:/windows/3.png", "cat/../../x/2.png"]


# ----------------------------------------------------------------------------- evaluation leaves out, training replaces


def _labelled_folder(root: Path, per_class: int = 3) -> dict[str, list[str]]:
    """cat/dog folders of distinct PNGs, plus one JPEG per class that is cut short with its end marker back
    (it passes the quick scan, which only looks for the end marker, and fails at decode time)."""
    bad = {}
    for c, name in enumerate(("cat", "dog")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(np.full((32, 32, 3), 40 * i + 100 * c, np.uint8)).save(root / name / f"{i}.png")
        (root / name / "cut.jpg").write_bytes(_cut_with_eoi(_jpeg(PHOTO, quality=90), 0.5))
        bad[name] = [f"{name}/cut.jpg"]
    return bad


def test_eval_loader_leaves_unreadable_images_out_and_lists_them(tmp_path):
    _labelled_folder(tmp_path / "data")
    ds = open_image_dataset(tmp_path / "data")
    assert len(ds) == 8 and not ds.skipped  # the cut files pass the scan
    batches = make_eval_loader(ds, 3, transform=eval_transform(Preprocessing(resolution=32, crop_fraction=1.0)))
    labels = torch.cat([y for _, y in batches])
    assert labels.tolist() == [0, 0, 0, 1, 1, 1]  # each readable image once, under its own class
    assert sorted(name for name, _ in batches.skipped) == ["cat/cut.jpg", "dog/cut.jpg"]
    assert all("truncated" in reason for _, reason in batches.skipped)
    # training keeps its batches full: the next readable image, with its own label, and a warning
    with pytest.warns(UserWarning, match="replaced by the next one"):
        _, label = ds[ds.names.index("cat/cut.jpg")]
    assert label == 1  # the next file is dog/0.png


def test_eval_loader_leaves_out_with_workers_too(tmp_path):
    _labelled_folder(tmp_path / "data")
    ds = open_image_dataset(tmp_path / "data")
    batches = make_eval_loader(ds, 2, workers=2,
                               transform=eval_transform(Preprocessing(resolution=32, crop_fraction=1.0)))
    assert sum(len(y) for _, y in batches) == 6 and len(batches.skipped) == 2


def test_evaluate_counts_only_scored_images_and_refuses_an_all_bad_folder(tmp_path):
    model = MobileNetV1(width_mult=0.25, resolution=32, num_classes=2)
    _labelled_folder(tmp_path / "data")
    pre = Preprocessing(resolution=32, crop_fraction=1.0)
    ds = open_image_dataset(tmp_path / "data")
    res = evaluate(model, make_eval_loader(ds, 4, transform=eval_transform(pre)), dataset_classes=ds.class_names)
    assert res["count"] == 6 and [row["count"] for row in res["per_class"].values()] == [3, 3]
    all_bad = tmp_path / "bad"
    for name in ("cat", "dog"):
        (all_bad / name).mkdir(parents=True)
        (all_bad / name / "cut.jpg").write_bytes(_cut_with_eoi(_jpeg(PHOTO), 0.5))
    bad_ds = open_image_dataset(all_bad)
    with pytest.raises(ValueError, match="no readable image to evaluate: all 2 file"):
        evaluate(model, make_eval_loader(bad_ds, 4, transform=eval_transform(pre)), dataset_classes=["cat", "dog"])


def _weights(tmp_path: Path, classes=("cat", "dog"), **kwargs) -> Path:
    model = MobileNetV1(width_mult=0.25, resolution=32, num_classes=len(classes), **kwargs)
    return save(model, tmp_path / "w.safetensors", class_names=list(classes),
                preprocessing=Preprocessing(resolution=32, crop_fraction=1.0))


def test_cli_eval_reports_left_out_images_and_fails_cleanly_when_none_is_readable(tmp_path, capsys):
    w = _weights(tmp_path)
    _labelled_folder(tmp_path / "data")
    assert main(["eval", "--weights", str(w), "--data", str(tmp_path / "data"), "--format", "json",
                 "--workers", "0"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["count"] == 6 and res["skipped_count"] == 2
    assert {row["name"] for row in res["skipped"]} == {"cat/cut.jpg", "dog/cut.jpg"}
    for name in ("cat", "dog"):
        for f in (tmp_path / "data" / name).glob("*.png"):
            f.unlink()
    assert main(["eval", "--weights", str(w), "--data", str(tmp_path / "data"), "--workers", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no readable image" in err


def test_predict_lists_unreadable_images_and_refuses_when_none_is_readable(tmp_path, capsys):
    w = _weights(tmp_path)
    good, cut, bomb = tmp_path / "good.png", tmp_path / "cut.jpg", tmp_path / "big.png"
    Image.fromarray(PHOTO).save(good)
    cut.write_bytes(_cut_with_eoi(_jpeg(PHOTO), 0.5))
    model = MobileNetV1(width_mult=0.25, resolution=32, num_classes=2)
    res = predict(model, [good, cut], topk=1)
    assert "top" in res[0] and "truncated" in res[1]["error"] and "top" not in res[1]
    assert main(["predict", str(good), str(cut), "--weights", str(w), "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [("error" in r) for r in out] == [False, True]
    assert main(["predict", str(cut), "--weights", str(w)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cut.jpg" in err and "truncated" in err
    Image.fromarray(PHOTO).save(bomb)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
        assert main(["predict", str(good), str(bomb), "--weights", str(w), "--format", "json"]) == 2  # both
    assert "decompression bomb" in capsys.readouterr().err


def test_predict_refuses_a_backbone_without_a_classifier_and_a_detector(tmp_path, capsys):
    img = tmp_path / "x.png"
    Image.fromarray(PHOTO).save(img)
    backbone = save(MobileNetV1(width_mult=0.25, resolution=32, num_classes=0), tmp_path / "b.safetensors")
    for command in (["predict", str(img)], ["eval", "--data", "digits#test"]):
        assert main([*command, "--weights", str(backbone)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "this model has no classifier: use embed" in err.replace(
            " (a backbone whose outputs are features):", ":")


def test_predict_refuses_non_finite_outputs(tmp_path):
    model = MobileNetV1(width_mult=0.25, resolution=32, num_classes=2)
    with torch.no_grad():
        model.classifier.weight.fill_(float("nan"))
    img = tmp_path / "x.png"
    Image.fromarray(PHOTO).save(img)
    with pytest.raises(ValueError, match="non-finite outputs"):
        predict(model, [img])


def test_calibration_leaves_unreadable_images_out(tmp_path):
    from mobilenet.deploy.calibration import load_images, load_labelled

    _labelled_folder(tmp_path / "data")
    pre = Preprocessing(resolution=32, crop_fraction=1.0)
    with pytest.warns(UserWarning, match="skipped 2 file"):
        images, names = load_images(tmp_path / "data", pre, progress=False)
    assert len(images) == 6 and not any("cut" in n for n in names)
    # no two calibration images are copies of one another (replace-by-next would duplicate dog/0.png)
    flat = images.flatten(1)
    assert len(torch.unique(flat, dim=0)) == 6
    with pytest.warns(UserWarning, match="skipped 2 file"):
        x, y = load_labelled(tmp_path / "data", pre, num_classes=2, class_names=["cat", "dog"], progress=False)
    assert y.tolist() == [0, 0, 0, 1, 1, 1]
    flat_folder = tmp_path / "flat"
    flat_folder.mkdir()
    Image.fromarray(PHOTO).save(flat_folder / "a.png")
    (flat_folder / "b.jpg").write_bytes(_cut_with_eoi(_jpeg(PHOTO), 0.5))
    with pytest.warns(UserWarning, match="b.jpg"):
        images, names = load_images(flat_folder, pre, progress=False)
    assert names == ["a.png"]


def test_output_names_are_short_unique_and_keep_the_suffix(tmp_path):
    paths = [tmp_path / "a" / "x.jpg", tmp_path / "b" / "x.jpg", tmp_path / "b" / "y.png",
             tmp_path / "c" / "d" / "x.jpg", tmp_path / "b" / "y.png"]
    assert output_names(paths) == ["a/x.jpg", "b/x.jpg", "y.png", "d/x.jpg", "y-2.png"]


# ----------------------------------------------------------------------------- detection datasets


def _voc(root: Path, images: dict[str, bytes]) -> Path:
    for d in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for stem, data in images.items():
        (root / "JPEGImages" / f"{stem}.jpg").write_bytes(data)
        (root / "Annotations" / f"{stem}.xml").write_text(
            f"<annotation><filename>{stem}.jpg</filename><size><width>160</width><height>120</height></size>"
            "<object><name>cat</name><bndbox><xmin>10</xmin><ymin>10</ymin><xmax>50</xmax><ymax>60</ymax>"
            "</bndbox></object></annotation>")
    (root / "ImageSets" / "Main" / "test.txt").write_text("\n".join(images) + "\n")
    return root


def test_voc_with_empty_and_truncated_images_reports_instead_of_crashing(tmp_path):
    from mobilenet.detection.datasets import read_voc
    from mobilenet.detection.evaluate import evaluate_detector
    from mobilenet.detection.ssd import build_ssd

    root = _voc(tmp_path / "VOC2007", {"cut": _cut_with_eoi(_jpeg(PHOTO), 0.5), "empty": b"", "good": _jpeg(PHOTO)})
    ds = read_voc(root, "test", ("cat", "dog"))
    assert [a.image_id for a in ds.annotations] == ["cut", "good"]  # the empty file is left out at read time
    assert any("empty" in p and "skipped" in p for p in ds.problems)
    with pytest.warns(UserWarning, match="replaced by the next one"):
        image, ann = ds[0]  # training: the truncated one is replaced by the next readable image
    assert ann.image_id == "good"
    model = build_ssd({"num_classes": 2, "width_mult": 0.25, "image_size": [96, 96]})
    r = evaluate_detector(model, ds)
    assert [s["image"].rsplit("/", 1)[-1] for s in r["skipped"]] == ["cut.jpg"]
    assert r["num_gt"] == {"cat": 1, "dog": 0}  # the left-out image's box is not counted as missed


def test_kitti_with_a_zero_byte_image_reports_instead_of_crashing(tmp_path):
    from mobilenet.detection.datasets import read_kitti

    for d in ("image_2", "label_2"):
        (tmp_path / d).mkdir()
    Image.fromarray(PHOTO).save(tmp_path / "image_2" / "000000.png")
    (tmp_path / "image_2" / "000001.png").write_bytes(b"")
    for stem in ("000000", "000001"):
        (tmp_path / "label_2" / f"{stem}.txt").write_text("Car 0.0 0 0 10 10 50 60 0 0 0 0 0 0 0\n")
    ds = read_kitti(tmp_path)
    assert [a.image_id for a in ds.annotations] == ["000000"]
    assert any("000001" in p and "empty file" in p for p in ds.problems)


def test_detect_predict_json_without_image_key_is_one_clear_error(tmp_path):
    from mobilenet.detection.predict import read_predictions

    path = tmp_path / "p.json"
    for doc, needle in (([{"detections": []}], 'an "image" file name'),
                        ([{"image": "a.jpg", "detections": [{"label": "cat"}]}], 'needs "label", a 4-number'),
                        ([{"image": "a.jpg", "detections": [{"label": "cat", "box": [0, 0, 1, float("nan")],
                                                               "score": 1}]}], "finite")):
        path.write_text(json.dumps(doc))
        with pytest.raises(ValueError, match=needle):
            read_predictions(path, ["cat"])
