"""evaluate(): top-k, BN in eval mode, class names mapped by name; `mobilenet eval` / `predict` CLIs."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from mobilenet.checkpoint import save
from mobilenet.cli import main
from mobilenet.evaluate import accuracy, evaluate, label_map
from mobilenet.model import MobileNetV1
from mobilenet.predict import expand_inputs, predict
from mobilenet.preprocessing import Preprocessing

WNIDS = ["n01440764", "n01443537", "n01484850", "n01491361"]



def test_accuracy_counts_topk_hits():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.15, 0.05], [0.2, 0.3, 0.5]])
    target = torch.tensor([1, 1, 0])
    top1, top2 = accuracy(logits, target, (1, 2))
    assert (top1.item(), top2.item()) == (1, 2)


class MeanToClass(nn.Module):
    """Logits peaked at output round(mean(x)): images filled with value v are 'recognised' as class v."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idx = x.mean((1, 2, 3)).round().long().clamp(0, self.n - 1)
        return nn.functional.one_hot(idx, self.n).float() * 10


def test_partial_folder_is_scored_against_the_models_class_list():
    # The data holds classes 1 and 3 of the model's 4 (as labels 0 and 1); images of model class c have value c.
    x = torch.tensor([1.0, 1.0, 3.0, 3.0, 3.0]).view(5, 1, 1, 1).expand(5, 3, 4, 4)
    y = torch.tensor([0, 0, 1, 1, 0])  # the last is mislabelled on purpose
    res = evaluate(MeanToClass(4), [(x, y)], class_names=WNIDS, dataset_classes=[WNIDS[1], WNIDS[3]])
    assert res["count"] == 5 and res["top1"] == pytest.approx(80.0)
    assert res["per_class"] == {WNIDS[1]: {"count": 3, "top1": pytest.approx(200 / 3)},
                                WNIDS[3]: {"count": 2, "top1": 100.0}}
    # scored positionally (without names) the same predictions would be wrong: the mapping matters
    assert evaluate(MeanToClass(4), [(x, y)])["top1"] == 0.0
    with pytest.raises(ValueError, match="1 class folder.*not among the model's 4 classes: 'n99'"):
        label_map(["n99", WNIDS[0]], WNIDS, 4)


def test_evaluate_uses_bn_running_statistics_and_restores_mode():
    model = MobileNetV1(width_mult=0.25, resolution=32, num_classes=5)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    x, y = torch.randn(6, 3, 32, 32), torch.arange(6) % 5
    model.train()
    res = evaluate(model, [(x, y)], confusion=True)
    assert model.training  # mode restored
    model.eval()
    with torch.no_grad():
        want = nn.functional.cross_entropy(model(x), y).item()
    model.train()
    with torch.no_grad():
        train_mode = nn.functional.cross_entropy(model(x), y).item()
    assert res["loss"] == pytest.approx(want, rel=1e-5) and abs(train_mode - want) > 1e-3
    assert sum(map(sum, res["confusion"])) == 6 and {"top1", "top5", "count"} <= res.keys()


# ----------------------------------------------------------------------------- CLI


def _weights(tmp_path: Path, class_names: list[str]) -> Path:
    model = MobileNetV1(width_mult=0.25, resolution=32, num_classes=len(class_names))
    return save(model, tmp_path / "w.safetensors", class_names=class_names,
                preprocessing=Preprocessing(resolution=32, crop_fraction=1.0))


def _folder(root: Path, classes: list[str], per_class: int = 2) -> Path:
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray((rng.random((40, 48, 3)) * 255).astype(np.uint8)).save(root / c / f"{i}.png")
    return root


def test_cli_eval_json_on_a_folder_with_some_of_the_classes(tmp_path, capsys):
    w = _weights(tmp_path, WNIDS)
    data = _folder(tmp_path / "val", [WNIDS[2], WNIDS[0]])
    assert main(["eval", "--weights", str(w), "--data", str(data), "--format", "json", "--workers", "0",
                 "--confusion", "--device", "cpu"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["count"] == 4 and set(res["per_class"]) == {WNIDS[0], WNIDS[2]}
    assert 0 <= res["top1"] <= res["top5"] <= 100 and len(res["confusion"][0]) == 4
    assert main(["eval", "--weights", str(w), "--data", str(data), "--workers", "0"]) == 0
    assert "top-1" in capsys.readouterr().out


def test_cli_predict_image_dir_glob_json_csv(tmp_path, capsys):
    w = _weights(tmp_path, ["cat", "dog", "fox"])
    data = _folder(tmp_path / "imgs", ["a", "b"])
    one = data / "a" / "0.png"
    assert main(["predict", str(one), "--weights", str(w), "--topk", "2", "--format", "json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res[0]["path"] == str(one) and [t["label"] for t in res[0]["top"]] != [] and len(res[0]["top"]) == 2
    assert sum(t["prob"] for t in res[0]["top"]) <= 1.0 + 1e-6
    assert main(["predict", str(data), "--weights", str(w), "--format", "csv", "--topk", "3"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 4 * 3 and {r["label"] for r in rows} <= {"cat", "dog", "fox"}
    assert main(["predict", str(data / "*" / "1.png"), "--weights", str(w)]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2
    assert expand_inputs([str(data)]) == sorted(data.rglob("*.png"))


def test_predict_reports_unreadable_images_without_stopping(tmp_path):
    model = MobileNetV1(width_mult=0.25, resolution=32, num_classes=3)
    good = tmp_path / "good.png"
    Image.new("RGB", (32, 32), (200, 10, 10)).save(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    res = predict(model, [bad, good], topk=1, preprocessing=Preprocessing(resolution=32))
    assert "error" in res[0] and res[1]["top"][0]["label"] in {"0", "1", "2"}


@pytest.mark.parametrize("argv,needle", [
    (["eval", "--weights", "missing.safetensors", "--data", "."], "weights file not found"),
    (["predict", "nothing/*.png", "--weights", "w.safetensors"], "matches no files"),
    (["train", "--config", "missing.toml"], "recipe not found"),
    (["train", "--lr", "-1"], "lr must be > 0, got -1.0"),
    (["train", "--data", "no/such/folder", "--out", "OUT"], "no/such/folder"),
])
def test_cli_user_errors_exit_2_with_one_line(tmp_path, capsys, monkeypatch, argv, needle):
    monkeypatch.chdir(tmp_path)
    argv = [a.replace("OUT", str(tmp_path / "run")) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err and "Traceback" not in err


def test_cli_eval_rejects_a_folder_of_unknown_classes(tmp_path, capsys):
    w = _weights(tmp_path, WNIDS)
    data = _folder(tmp_path / "val", ["n99999999"])
    assert main(["eval", "--weights", str(w), "--data", str(data), "--workers", "0"]) == 2
    assert "not among the model's 4 classes" in capsys.readouterr().err
