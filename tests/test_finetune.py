"""Fine-tuning: the head's learning-rate factor, `--pretrained` from the cache, and configs/finetune.toml."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mobilenet.checkpoint import load, save
from mobilenet.cli import main
from mobilenet.engine.classify import fit
from mobilenet.hub import add
from mobilenet.model import MobileNetV1
from mobilenet.optim import build_optimizer, param_groups
from mobilenet.recipe import TrainConfig, resolve
from tests.conftest import REPO, banded_image_folder
from tests.convert_writers import randomize_bn, slim_variables, write_tf_checkpoint
from tests.test_train import CLASSES, tiny_cfg, tiny_data

RECIPE = REPO / "configs" / "finetune.toml"


def test_head_groups_carry_their_lr_scale() -> None:
    model = MobileNetV1(width_mult=0.25, num_classes=3)
    groups = {g["name"]: g for g in param_groups(model, weight_decay=1e-4, lr_scales={"classifier.": 10.0})}
    assert list(groups) == ["decay", "depthwise", "no_decay", "decay@classifier.", "no_decay@classifier."]
    assert {id(p) for p in groups["decay@classifier."]["params"]} == {id(model.classifier.weight)}
    assert groups["decay@classifier."]["lr_scale"] == 10.0 and "lr_scale" not in groups["decay"]
    opt = build_optimizer(model, "sgd", lr=0.01, lr_scales={"classifier.": 10.0})
    assert [round(g["lr"], 6) for g in opt.param_groups] == [0.01, 0.01, 0.01, 0.1, 0.1]
    # a factor of 1 is no group of its own
    assert len(param_groups(model, weight_decay=0.0, lr_scales={"classifier.": 1.0})) == 3


def test_training_applies_the_head_factor(tmp_path: Path) -> None:
    # body at lr 1e-7, head at 1e-7 x 1e6 = 0.1: the head moves, the body all but stays
    start = MobileNetV1(width_mult=0.25, resolution=32, num_classes=3)
    save(start, tmp_path / "start.safetensors", class_names=CLASSES)
    cfg = tiny_cfg(tmp_path, weights=str(tmp_path / "start.safetensors"), lr=1e-7, head_lr_mult=1e6, epochs=1)
    tuned = load(fit(cfg, train_set=tiny_data(), class_names=CLASSES)["last"])
    body = (tuned.blocks[5].pw.conv.weight - start.blocks[5].pw.conv.weight).abs().max().item()
    head = (tuned.classifier.weight - start.classifier.weight).abs().max().item()
    assert head > 1e-3 and body < 1e-5, (head, body)


def _published_slim(tmp_path: Path) -> Path:
    """A TF-slim checkpoint as Google publishes them (1001 classes, tf preset), random weights."""
    model = randomize_bn(MobileNetV1(width_mult=0.25, resolution=128, preset="tf", num_classes=1001))
    return write_tf_checkpoint(tmp_path / "mobilenet_v1_0.25_128.ckpt", slim_variables(model))


def test_train_pretrained_from_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MOBILENET_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="pretrained needs the variant: add --model NAME"):
        TrainConfig(pretrained=True)
    with pytest.raises(ValueError, match="--pretrained or --weights, not both"):
        TrainConfig(model="mobilenet_v1_025_128", pretrained=True, weights="w.safetensors")
    data = banded_image_folder(tmp_path / "data", per_class=4)
    args = ["train", "--config", str(RECIPE), "--model", "mobilenet_v1_025_128", "--pretrained", "--data", str(data),
            "--val-data", str(data), "--epochs", "1", "--batch-size", "6", "--workers", "0", "--no-curves",
            "--no-tensorboard", "--out", str(tmp_path / "run")]
    assert main(args) == 2  # not cached yet: one line saying what to download
    err = capsys.readouterr().err
    assert "no pretrained weights for mobilenet_v1_025_128" in err and "mobilenet_2_5_128_tf.h5" in err
    cached = add(f"{_published_slim(tmp_path)}.index")
    assert main(args) == 0
    out = capsys.readouterr().out
    assert str(cached.path) in out  # the run says which file it started from
    tuned = load(tmp_path / "run" / "last.safetensors")
    assert tuned.num_classes == 3 and tuned.config.preset == "tf" and tuned.config.width_mult == 0.25
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["pretrained"] is True and config["head_lr_mult"] == 5.0


def test_finetune_recipe_resolves_to_a_fine_tuning_run() -> None:
    cfg = resolve(RECIPE, {"weights": "w.safetensors"})
    assert cfg.lr < TrainConfig().lr and cfg.freeze_backbone_epochs >= 1 and cfg.head_lr_mult > 1
    assert cfg.width_mult is None and cfg.resolution is None  # the weights decide the architecture
