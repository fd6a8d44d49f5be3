"""Recipes, the sharded sampler, and the training loop on a tiny in-memory dataset."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from mobilenet.checkpoint import load, save
from mobilenet.distributed import ShardedBatchSampler
from mobilenet.engine.classify import build_model, distillation_loss, fit, train
from mobilenet.engine.data import SeededDataset
from mobilenet.model import MobileNetV1
from mobilenet.recipe import TrainConfig, resolve
from mobilenet.train_state import latest_state, list_states

CLASSES = ["a", "b", "c"]



def tiny_data(n: int = 24, seed: int = 0) -> torch.utils.data.TensorDataset:
    """n 32x32 images whose class shows as a bright band, so a tiny net can learn it."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    x = torch.randn(n, 3, 32, 32, generator=g) * 0.3
    for i in range(n):
        x[i, :, 10 * int(y[i]):10 * int(y[i]) + 10, :] += 1.5
    return torch.utils.data.TensorDataset(x, y)


def tiny_cfg(tmp_path, **kw) -> TrainConfig:
    base = dict(width_mult=0.25, resolution=32, epochs=2, batch_size=8, lr=0.05, workers=0, curves=False,
                out=str(tmp_path / "run"), tensorboard=False, schedule="constant", weight_decay=0.0)
    return TrainConfig(**{**base, **kw})


# ----------------------------------------------------------------------------- recipe


def test_resolve_recipe_then_flags(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('[model]\nmodel = "mobilenet_v1_050_160"\n[optim]\nlr = 1\noptimizer = "rmsprop_tf"\n'
                      '[train]\nepochs = 3\n')
    cfg = resolve(recipe, {"epochs": 5, "amp": "bf16"})
    assert (cfg.width_mult, cfg.resolution, cfg.lr, cfg.optimizer, cfg.epochs, cfg.amp) == \
        (0.5, 160, 1.0, "rmsprop_tf", 5, "bf16")
    assert isinstance(cfg.lr, float)
    assert resolve(recipe, {"model": "mobilenet_v1_025_128"}).width_mult == 0.25


@pytest.mark.parametrize("text,match", [
    ("lrr = 0.1", "unknown training option 'lrr' .*did you mean 'lr'"),
    ("epochs = 'ten'", "epochs must be int, got 'ten'"),
    ("optimizer = 'lamb'", "optimizer must be one of"),
    ("lr = 0.1\n[x]\nlr = 0.2", "key 'lr' is set twice"),
    ("lr = ", "is not valid TOML"),
])
def test_recipe_errors_name_the_key(tmp_path, text, match):
    recipe = tmp_path / "bad.toml"
    recipe.write_text(text)
    with pytest.raises(ValueError, match=match):
        resolve(recipe)


def test_shipped_recipes_resolve():
    from pathlib import Path

    for path in sorted((Path(__file__).parents[1] / "configs").glob("*.toml")):
        if path.name.startswith("ssd_"):  # detection recipes: tests/test_det_train.py, tests/test_det_cli.py
            with pytest.raises(ValueError, match="detect train --config"):
                resolve(path)
            continue
        resolve(path)


def test_config_choices_are_the_optimizers_and_schedules_of_optim():
    from mobilenet.config import field_choices
    from mobilenet.optim import OPTIMIZERS, SCHEDULES
    from mobilenet.recipe import EngineConfig

    assert set(field_choices(EngineConfig, "optimizer")) == set(OPTIMIZERS)
    assert set(field_choices(EngineConfig, "schedule")) == set(SCHEDULES)


def test_demo_recipe_equals_configs_digits_toml():
    from pathlib import Path

    from mobilenet.cli.demo import DIGITS_RECIPE

    shipped = resolve(Path(__file__).parents[1] / "configs" / "digits.toml")
    assert shipped == TrainConfig(**DIGITS_RECIPE)


# ----------------------------------------------------------------------------- sampler


def test_sharded_sampler_ranks_and_micro_batches_partition_the_global_batch():
    one = ShardedBatchSampler(40, global_batch=8, seed=3)
    one.set_epoch(2)
    ref = [[i for _, i in b] for b in one]
    assert len(ref) == 5 and sorted(sum(ref, [])) == list(range(40)) and sum(ref, []) != list(range(40))
    shards = [ShardedBatchSampler(40, global_batch=8, rank=r, world_size=2, accum_steps=2, seed=3) for r in (0, 1)]
    for s in shards:
        s.set_epoch(2)
    got = [[[i for _, i in b] for b in s] for s in shards]
    for k in range(5):  # step k: 2 ranks x 2 micro-batches of 2 == the 1-rank batch of 8
        union = got[0][2 * k] + got[0][2 * k + 1] + got[1][2 * k] + got[1][2 * k + 1]
        assert sorted(union) == sorted(ref[k])
    # resume mid-epoch: the remaining batches are exactly the tail
    one.set_epoch(2, start_step=3)
    assert [[i for _, i in b] for b in one] == ref[3:]
    assert all(e == 2 for b in shards[0] for e, _ in b)
    with pytest.raises(ValueError, match="divisible"):
        ShardedBatchSampler(40, global_batch=6, world_size=4)
    with pytest.raises(ValueError, match="fewer than one batch"):
        ShardedBatchSampler(4, global_batch=8)


def test_seeded_dataset_is_a_pure_function_of_epoch_and_index():
    class Noisy(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.rand(2), i

    ds = SeededDataset(Noisy(), seed=1)
    before = torch.get_rng_state()
    a, b, c = ds[(0, 1)][0], ds[(0, 1)][0], ds[(1, 1)][0]
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(before, torch.get_rng_state())  # the caller's RNG is left as it was


# ----------------------------------------------------------------------------- loop


def test_training_learns_and_writes_the_run_folder(tmp_path):
    data = tiny_data()
    cfg = tiny_cfg(tmp_path, epochs=3, ema_decay=0.9, save_every_steps=2, keep_last=2, curves=True)
    events = list(train(cfg, train_set=data, val_set=data, class_names=CLASSES))
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "end" and kinds.count("epoch") == 3 and kinds.count("step") == 9
    end = events[-1]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3] and all("val_top1" in r for r in rows)
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    model = load(end["best"])
    assert model.weights_info.classes == CLASSES
    assert model.weights_info.training.config["ema_decay"] == 0.9
    assert json.loads((tmp_path / "run" / "config.json").read_text())["epochs"] == 3
    assert (tmp_path / "run" / "curves.png").stat().st_size > 1000
    states = [p.name for p in list_states(tmp_path / "run")]
    assert len(states) <= 3 and latest_state(tmp_path / "run").name == "step-00000009"


def test_a_loss_gone_non_finite_between_reports_is_never_saved(tmp_path):
    # the loss is read back every 1000 steps only, states are saved every step: the save itself must notice
    data = tiny_data()
    cfg = tiny_cfg(tmp_path, epochs=3, lr=1e30, optimizer="sgd", save_every_steps=1, log_every_steps=1000)
    with pytest.raises(FloatingPointError, match="non-finite loss"):
        fit(cfg, train_set=data, class_names=CLASSES)
    states = list_states(tmp_path / "run")
    assert states, "the steps before the divergence were saved"
    for state in states:
        weights = load(state / "model.safetensors").state_dict()
        assert all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point()), state.name


def test_max_steps_and_resume_auto_continue_the_same_run(tmp_path):
    data = tiny_data()
    first = fit(tiny_cfg(tmp_path, epochs=2, max_steps=4), train_set=data, class_names=CLASSES)
    assert first["global_step"] == 4
    second = fit(tiny_cfg(tmp_path, epochs=2, resume="auto"), train_set=data, class_names=CLASSES)
    assert second["global_step"] == 6
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # the partial row of epoch 2 (stopped by max_steps) is replaced by the whole epoch's once resumed
    assert [r["epoch"] for r in rows] == [1, 2] and rows[1]["train_images"] == 24 and "partial" not in rows[1]
    with pytest.raises(ValueError, match="cannot resume .* with batch_size=4: the run was started with batch_size=8"):
        fit(tiny_cfg(tmp_path, batch_size=4, resume="auto"), train_set=data, class_names=CLASSES)
    with pytest.raises(FileNotFoundError, match="no training state"):
        fit(tiny_cfg(tmp_path, resume=str(tmp_path / "nowhere")), train_set=data, class_names=CLASSES)


def test_fine_tune_replaces_classifier_and_freezes_backbone(tmp_path):
    src = MobileNetV1(width_mult=0.25, resolution=32, num_classes=5)
    save(src, tmp_path / "src.safetensors", class_names=list("vwxyz"))
    cfg = tiny_cfg(tmp_path, weights=str(tmp_path / "src.safetensors"), freeze_backbone_epochs=1, epochs=1)
    model, note = build_model(cfg, 3, CLASSES)
    assert model.num_classes == 3 and "new 3-class classifier" in note
    assert torch.equal(model.blocks[3].pw.conv.weight, src.blocks[3].pw.conv.weight)
    end = fit(cfg, train_set=tiny_data(), class_names=CLASSES)
    tuned = load(end["last"])
    # one frozen epoch: the backbone (weights and BN statistics) is untouched, the classifier moved
    assert torch.equal(tuned.blocks[3].pw.conv.weight, src.blocks[3].pw.conv.weight)
    assert torch.equal(tuned.blocks[3].pw.bn.running_mean, src.blocks[3].pw.bn.running_mean)
    assert tuned.classifier.weight.shape == (3, src.num_features)


def test_weights_take_the_resolution_and_stem_given_and_refuse_another_width(tmp_path):
    # issue 13: --weights used to drop --resolution/--stem-stride from the config while the preprocessing took them
    src = MobileNetV1(width_mult=0.25, resolution=128, num_classes=3)
    save(src, tmp_path / "src.safetensors", class_names=CLASSES)
    cfg = tiny_cfg(tmp_path, weights=str(tmp_path / "src.safetensors"), resolution=32, stem_stride=1, epochs=1)
    tuned = load(fit(cfg, train_set=tiny_data(), class_names=CLASSES)["last"])
    assert (tuned.config.resolution, tuned.config.stem_stride) == (32, 1)
    assert tuned.weights_info.preprocessing.resolution == 32  # one resolution: the config's
    kept = load(fit(tiny_cfg(tmp_path, weights=str(tmp_path / "src.safetensors"), resolution=None, epochs=1,
                             out=str(tmp_path / "kept")), train_set=tiny_data(), class_names=CLASSES)["last"])
    assert kept.config.resolution == 128 and kept.weights_info.preprocessing.resolution == 128  # the file's
    with pytest.raises(ValueError, match="holds a width_mult=0.25 model: width_mult=0.5 cannot change it"):
        fit(tiny_cfg(tmp_path, weights=str(tmp_path / "src.safetensors"), width_mult=0.5, out=str(tmp_path / "w")),
            train_set=tiny_data(), class_names=CLASSES)


def test_weights_keep_their_input_normalisation_unless_told(tmp_path, capsys):
    # issue 16: fine-tuning a [-1, 1] model silently switched it to ImageNet mean/std
    from mobilenet.cli import main
    from mobilenet.preprocessing import Preprocessing

    src = MobileNetV1(width_mult=0.25, resolution=32, num_classes=3, preset="tf")
    save(src, tmp_path / "src.safetensors", class_names=CLASSES, preprocessing=Preprocessing.tf(32))
    kept = load(fit(tiny_cfg(tmp_path, weights=str(tmp_path / "src.safetensors"), resolution=None, epochs=1),
                    train_set=tiny_data(), class_names=CLASSES)["last"])
    assert kept.weights_info.preprocessing.mean == (127.5,) * 3 and kept.weights_info.preprocessing.std == (127.5,) * 3
    told = load(fit(tiny_cfg(tmp_path, weights=str(tmp_path / "src.safetensors"), resolution=None, epochs=1,
                             normalization="imagenet", out=str(tmp_path / "told")),
                    train_set=tiny_data(), class_names=CLASSES)["last"])
    assert told.weights_info.preprocessing.mean == Preprocessing.imagenet(32).mean
    new = load(fit(tiny_cfg(tmp_path, epochs=1, out=str(tmp_path / "new")), train_set=tiny_data(),
                   class_names=CLASSES)["last"])
    assert new.weights_info.preprocessing.mean == Preprocessing.imagenet(32).mean  # no weights: ImageNet's
    # --print-config shows what the weights decide
    assert main(["train", "--weights", str(tmp_path / "src.safetensors"), "--print-config"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["preset"], shown["width_mult"], shown["resolution"]) == ("tf", 0.25, 32)
    assert shown["normalization"] == "from the weights" and shown["preprocessing"]["mean"] == [127.5] * 3


def test_a_tflite_import_fine_tunes_with_real_batchnorm(tmp_path):
    # issue 13: the import's BN is identity + folded bias; trained as a real BN it normalised with batch statistics
    # the weights never saw (digits: 98% -> 60% after one unfrozen epoch; 98.3 / 96.9 / 98.6% with this fix)
    from mobilenet.convert import import_model
    from mobilenet.engine.classify import restore_batchnorm
    from tests.convert_writers import randomize_bn, write_tflite

    torch.manual_seed(0)
    src = randomize_bn(MobileNetV1(width_mult=0.25, resolution=32, num_classes=3, preset="tf")).eval()
    imported = import_model(write_tflite(src, tmp_path / "m.tflite"))
    x = tiny_data().tensors[0][:16]
    with torch.no_grad():
        want = imported.eval()(x)
        # what training saw (on a copy: a training-mode pass moves the running statistics): far from the model
        drift = (copy.deepcopy(imported).train()(x) - want).abs().max()
    assert restore_batchnorm(imported, [x]) == 27
    with torch.no_grad():
        torch.testing.assert_close(imported.eval()(x), want, rtol=1e-4, atol=1e-4)  # the same function
        # batch statistics now match the running ones
        assert (copy.deepcopy(imported).train()(x) - want).abs().max() < drift / 100
    assert restore_batchnorm(imported, [x]) == 0  # real statistics are left alone
    save(import_model(tmp_path / "m.tflite"), tmp_path / "imported.safetensors")
    start = next(train(tiny_cfg(tmp_path, weights=str(tmp_path / "imported.safetensors"), resolution=None, epochs=1),
                       train_set=tiny_data(), class_names=CLASSES))
    assert any("BatchNorm of 27 layers re-estimated" in note for note in start["notes"])


def test_the_papers_baselines_train(tmp_path):
    # Table 4's full-conv MobileNet and Table 5's shallow one: settings of TrainConfig (and flags of `train`)
    end = fit(tiny_cfg(tmp_path, conv_type="full", shallow=True, epochs=1), train_set=tiny_data(), class_names=CLASSES)
    model = load(end["last"])
    assert model.config.conv_type == "full" and model.config.shallow and len(model.blocks) == 8
    with pytest.raises(ValueError, match="in_chans must be 3: the training data are RGB images, got 1"):
        TrainConfig(in_chans=1)


def test_distillation_from_a_teacher(tmp_path):
    teacher = MobileNetV1(width_mult=0.25, resolution=32, num_classes=3)
    save(teacher, tmp_path / "t.safetensors", class_names=CLASSES)
    end = fit(tiny_cfg(tmp_path, teacher=str(tmp_path / "t.safetensors"), distill_alpha=0.7, epochs=1),
              train_set=tiny_data(), class_names=CLASSES)
    assert end["event"] == "end"
    s = torch.tensor([[2.0, 0.0, -1.0]])
    assert distillation_loss(s, s.clone(), 4.0).item() == pytest.approx(0.0, abs=1e-7)
    assert distillation_loss(s, -s, 4.0).item() > 0
    wrong = MobileNetV1(width_mult=0.25, resolution=32, num_classes=4)
    save(wrong, tmp_path / "w.safetensors")
    with pytest.raises(ValueError, match="teacher .* has 4 classes, the data has 3"):
        fit(tiny_cfg(tmp_path, teacher=str(tmp_path / "w.safetensors")), train_set=tiny_data(), class_names=CLASSES)


def test_bf16_autocast_channels_last_accumulation_and_clipping_run(tmp_path):
    end = fit(tiny_cfg(tmp_path, epochs=1, amp="bf16", channels_last=True, accum_steps=2, grad_clip=1.0,
                       optimizer="rmsprop_tf", lr=0.01, label_smoothing=0.1),
              train_set=tiny_data(), class_names=CLASSES)
    assert end["global_step"] == 3
    w = load(end["last"]).classifier.weight
    assert torch.isfinite(w).all()


# ----------------------------------------------------------------------------- states, devices


def test_incomplete_state_folders_are_ignored_and_optimizer_state_loads_without_pickle(tmp_path):
    data = tiny_data()
    fit(tiny_cfg(tmp_path, epochs=1, save_every_steps=1, keep_last=5), train_set=data, class_names=CLASSES)
    states = tmp_path / "run" / "states"
    assert [p.name for p in list_states(tmp_path / "run")] == [f"step-0000000{i}" for i in (1, 2, 3)]
    # a crash mid-save leaves a temporary folder, or a folder without its state.json: neither is resumed from
    (states / ".tmp-step-00000004-123").mkdir()
    (states / "step-00000005").mkdir()
    (states / "step-00000005" / "model.safetensors").write_bytes(b"partial")
    assert latest_state(tmp_path / "run").name == "step-00000003"
    blob = torch.load(states / "step-00000003" / "optim.pt", weights_only=True)
    assert {"optimizer", "rng", "ema", "scaler"} <= blob.keys()


def test_sync_bn_and_devices_fail_clearly_on_cpu():
    from mobilenet.distributed import DistInfo, resolve_device, wrap_model

    with pytest.raises(ValueError, match="sync_bn needs CUDA"):
        wrap_model(MobileNetV1(width_mult=0.25), DistInfo(rank=0, world_size=2), sync_bn=True)
    with pytest.raises(ValueError, match="device must be auto, cpu, cuda or cuda:N, got 'gpu0'"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_train_takes_the_idle_cores_by_default(monkeypatch):
    # issue 13: on a busy 2-core machine torch's default (2 threads) trained at 5-13 img/s, 1 thread at 67-161
    import mobilenet.machine as machine
    from mobilenet.cli import main

    monkeypatch.setattr(machine, "usable_cores", lambda: 2)
    monkeypatch.setattr(machine, "busy_cores", lambda: 2)  # the other core is busy too: one thread
    torch.set_num_threads(2)
    assert main(["train", "--print-config"]) == 0
    assert torch.get_num_threads() == 1
    assert main(["train", "--print-config", "--threads", "2"]) == 0 and torch.get_num_threads() == 2
