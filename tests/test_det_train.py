"""Evidence that the detection parts work together: a small SSD trained on generated shapes reaches mAP@0.5 >= 0.9."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mobilenet.detection import SSD, SSDConfig
from mobilenet.detection.datasets import read_voc
from mobilenet.detection.synthetic import SHAPE_CLASSES, make_shapes_voc
from mobilenet.detection.train import DetTrainConfig, train_detector
from mobilenet.train_state import list_states
from mobilenet.weights import WeightsInfo


@pytest.fixture
def one_thread():
    # 2 shared cores: one intra-op thread avoids OpenMP spin-waiting against other processes (10x faster here)
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.mark.slow
def test_small_ssd_learns_shapes_to_map_090(tmp_path, one_thread):
    root = make_shapes_voc(tmp_path / "shapes", num_train=2000, num_test=100, image_size=64, min_frac=0.3,
                           max_frac=0.6, max_objects=2, easy=True, seed=0)
    train, test = read_voc(root, "trainval", SHAPE_CLASSES), read_voc(root, "test", SHAPE_CLASSES)
    model = SSD(SSDConfig(num_classes=3, width_mult=0.25, image_size=(64, 64)))
    cfg = DetTrainConfig(epochs=10, batch_size=64, optimizer="adamw", lr=1e-2, weight_decay=0.0, warmup_epochs=1,
                         augment=False, eval_every=0, metric="voc", device="cpu")
    result = train_detector(model, train, test, cfg, tmp_path / "run", progress=False, log=lambda s: None)
    history = result["history"]
    assert history[-1]["loss"] < history[0]["loss"] / 2
    assert history[-1]["map"] >= 0.9, history
    assert result["final"].is_file() and result["best"].is_file()


def test_training_resumes_from_its_last_state(tmp_path, one_thread):
    root = make_shapes_voc(tmp_path / "shapes", num_train=16, num_test=4, image_size=64, seed=1)
    train = read_voc(root, "trainval", SHAPE_CLASSES)
    cfg = DetTrainConfig(epochs=1, batch_size=8, optimizer="sgd", lr=1e-3, eval_every=0, device="cpu")
    model = SSD(SSDConfig(num_classes=3, width_mult=0.25, image_size=(64, 64)))
    train_detector(model, train, None, cfg, tmp_path / "run", progress=False, log=lambda s: None)
    assert len(list_states(tmp_path / "run")) == 1
    logs: list[str] = []
    cfg2 = DetTrainConfig(epochs=2, batch_size=8, optimizer="sgd", lr=1e-3, eval_every=0, device="cpu")
    model2 = SSD(SSDConfig(num_classes=3, width_mult=0.25, image_size=(64, 64)))
    r = train_detector(model2, train, None, cfg2, tmp_path / "run", resume="auto", progress=False, log=logs.append)
    assert any("resumed" in line for line in logs)
    assert [h["epoch"] for h in r["history"]] == [1, 2]  # epoch 1 from the state, epoch 2 trained now


def test_fine_tuning_reads_scores_the_way_the_loss_trains_them(tmp_path, one_thread):
    from mobilenet.detection.postprocess import PostprocessConfig

    root = make_shapes_voc(tmp_path / "shapes", num_train=8, num_test=2, image_size=64, seed=4)
    tf_like = PostprocessConfig(score_fn="sigmoid", nms_mode="class_agnostic", max_detections=10, clip_boxes=False)
    model = SSD(SSDConfig(num_classes=3, width_mult=0.25, image_size=(64, 64), postprocess=tf_like))
    logs: list[str] = []
    cfg = DetTrainConfig(epochs=1, batch_size=8, optimizer="sgd", lr=1e-4, eval_every=0, device="cpu", freeze_bn=True)
    bn = model.backbone.stem.bn.running_mean.clone()
    train_detector(model, read_voc(root, "trainval", SHAPE_CLASSES), None, cfg, tmp_path / "run", progress=False,
                   log=logs.append)
    assert model.config.postprocess.score_fn == "softmax" and model.config.postprocess.nms_mode == "per_class"
    assert any("softmax scores" in line for line in logs)
    assert torch.equal(model.backbone.stem.bn.running_mean, bn)  # freeze_bn: statistics untouched


CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name", ["ssd_voc", "ssd_kitti"])
def test_detection_recipes_resolve_and_flags_win(name):
    from mobilenet.detection.train import resolve_recipe

    path = CONFIGS / f"{name}.toml"
    setup, cfg = resolve_recipe(path)
    assert cfg.neg_pos_ratio == 3.0 and cfg.classification == "softmax" and cfg.optimizer == "rmsprop_tf"
    if name == "ssd_voc":
        assert setup.format == "voc" and setup.image_hw() == (300, 300) and cfg.batch_size == 24
        assert cfg.metric == "voc07" and setup.class_names() is None  # the 20 VOC classes
    else:
        assert setup.format == "kitti" and setup.image_hw() == (384, 1248) and cfg.metric == "kitti"
        assert setup.class_names() == ["Car", "Pedestrian", "Cyclist"]
    setup2, cfg2 = resolve_recipe(path, {"lr": 0.1, "image_size": "64"}, defaults={"workers": 2, "seed": 5})
    assert cfg2.lr == 0.1 and setup2.image_hw() == (64, 64)  # overrides beat the recipe
    assert cfg2.workers == 4 and cfg2.seed == 0  # the recipe beats the defaults
    assert cfg2.epochs == cfg.epochs  # the rest from the recipe


def test_recipe_errors_name_the_file_and_the_key(tmp_path):
    from mobilenet.detection.train import DetTrainConfig, resolve_recipe

    bad = tmp_path / "bad.toml"
    bad.write_text("[optim]\nlearning_rate = 0.1\n")
    with pytest.raises(ValueError, match=r"bad.toml: unknown training option 'learning_rate'"):
        resolve_recipe(bad)
    bad.write_text("[model]\nwidth_mult = 'wide'\n")
    with pytest.raises(ValueError, match=r"bad.toml: width_mult must be float, got 'wide'"):
        resolve_recipe(bad)
    bad.write_text("image_size = '300x'\n")
    with pytest.raises(ValueError, match=r"image_size must be N or HxW, got '300x'"):
        resolve_recipe(bad)
    with pytest.raises(ValueError, match="optimizer must be one of rmsprop_tf, sgd, adamw, got 'adam'"):
        DetTrainConfig(optimizer="adam")
    with pytest.raises(FileNotFoundError, match="recipe not found"):
        resolve_recipe(tmp_path / "missing.toml")
    # with no recipe and no metric, KITTI data is scored with the KITTI metric
    assert resolve_recipe(None, {"format": "kitti"})[1].metric == "kitti"


def test_set_input_size_drops_anchors_stored_for_the_old_size(tmp_path):
    from mobilenet.checkpoint import load, save
    from mobilenet.detection.train import set_input_size

    model = SSD(SSDConfig(num_classes=2, width_mult=0.25, image_size=(64, 64), anchors_in_weights=True)).eval()
    assert not set_input_size(model, (64, 64)) and hasattr(model, "anchor_table")
    assert set_input_size(model, (64, 128))
    assert model.config.image_size == (64, 128) and not model.config.anchors_in_weights
    assert "anchor_table" not in model.state_dict()
    box_pred, _ = model(torch.zeros(1, 3, 64, 128))
    assert model.anchors().shape == (box_pred.shape[1], 4)  # anchors for the new feature maps
    again = load(save(model, tmp_path / "wide.safetensors"))  # the file rebuilds the wide model
    assert again.config.image_size == (64, 128)


def test_adopt_classes_renames_so_evaluation_does_not_map_by_the_old_names(tmp_path):
    from mobilenet.detection.evaluate import evaluate_detector
    from mobilenet.detection.train import adopt_classes

    root = make_shapes_voc(tmp_path / "shapes", num_train=2, num_test=2, image_size=64, seed=5)
    test = read_voc(root, "test", SHAPE_CLASSES)
    model = SSD(SSDConfig(num_classes=5, width_mult=0.25, image_size=(64, 64))).eval()
    model.weights_info = WeightsInfo(classes=["person", "car", "dog", "cat", "bird"], extra={"x": 1})
    with pytest.raises(ValueError, match="share no name"):  # what fine-tuning an import ran into
        evaluate_detector(model, test)
    cfg = DetTrainConfig(epochs=1, batch_size=2, optimizer="sgd", lr=1e-4, eval_every=0, device="cpu")
    with pytest.raises(ValueError, match="the model detects 5 classes, the training set has 3"):
        train_detector(model, read_voc(root, "trainval", SHAPE_CLASSES), None, cfg, tmp_path / "run",
                       progress=False, log=lambda s: None)
    adopt_classes(model, list(SHAPE_CLASSES))
    assert model.config.num_classes == 3 and model.cls_heads[0].out_channels == 3 * 4
    assert model.weights_info == WeightsInfo(classes=list(SHAPE_CLASSES), extra={"x": 1})
    assert evaluate_detector(model, test)["metric"] == "voc"
