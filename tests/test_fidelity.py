"""TF Lite fidelity: rounding activations to recorded uint8 grids (mobilenet.tflite.fidelity)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mobilenet.checkpoint import load, save
from mobilenet.detection.postprocess import PostprocessConfig
from mobilenet.detection.ssd import SSD, SSDConfig
from mobilenet.model import MobileNetV1
from mobilenet.tflite.fidelity import add_activation_hooks, can_run_exact, recorded_activation_grids, uint8_activations
from mobilenet.tflite.grid import ActivationGrid, logistic_table, requantize_table
from mobilenet.weights import WeightsInfo
from tests.conftest import shared_file

RELU6_GRID = ActivationGrid(scale=6 / 255, zero_point=0)


def test_fake_quantize_rounds_to_the_grid_and_clamps():
    g = ActivationGrid(scale=0.5, zero_point=2)  # real values -1.0, -0.5, ..., 126.5
    x = torch.tensor([-5.0, -1.0, 0.2, 0.25, 0.74, 0.75, -0.75, 200.0])
    assert g.quantize(x).tolist() == [0, 0, 2, 3, 3, 4, 0, 255]  # 0.25 / 0.5 = 0.5: ties round away from zero
    assert g.fake_quantize(x).tolist() == [-1.0, -1.0, 0.0, 0.5, 0.5, 1.0, -1.0, 126.5]
    assert g.range == (-1.0, 126.5)
    assert g.quantize(torch.tensor([-0.75])).item() == 0  # -1.5 -> -2 -> q 0 (away from zero)


def test_grid_from_tflite_narrows_a_fused_relu6_and_maps_int8():
    # an extra block of detect.tflite: scale 0.0512, zero point 121, RELU6 fused into the conv
    g = ActivationGrid.from_tflite(0.0512428805232048, 121, activation="RELU6")
    assert (g.quant_min, g.quant_max) == (121, 238)  # the integer images of 0 and 6 (121 + round(117.09))
    assert g.fake_quantize(torch.tensor([-3.0, 9.0])).tolist() == pytest.approx([0.0, 117 * 0.0512428805232048])
    plain = ActivationGrid.from_tflite(0.0512428805232048, 121)
    assert (plain.quant_min, plain.quant_max) == (0, 255)
    i8 = ActivationGrid.from_tflite(0.1, -128, dtype="int8")
    assert i8.zero_point == 0 and i8.range == pytest.approx((0.0, 25.5))
    with pytest.raises(ValueError, match="float32"):
        ActivationGrid.from_tflite(0.1, 0, dtype="float32")
    with pytest.raises(ValueError, match="scale must be > 0, got 0.0"):
        ActivationGrid(scale=0.0, zero_point=0)


def test_grid_from_a_recorded_range_is_the_same_grid():
    g = ActivationGrid(scale=1 / 128, zero_point=128)
    back = ActivationGrid.from_range(*g.range)
    assert back.scale == pytest.approx(1 / 128, rel=1e-12) and back.zero_point == 128
    assert ActivationGrid.from_dict(g.to_dict()) == g


def _tiny_classifier(extra: dict) -> MobileNetV1:
    """A tiny classifier carrying the record of a weights-file header whose ``extra`` is ``extra``."""
    torch.manual_seed(0)
    model = MobileNetV1(width_mult=0.25, resolution=32, num_classes=5, preset="tf").eval()
    model.weights_info = WeightsInfo.from_header({"extra": extra})
    return model


def _grid_values(t: torch.Tensor, g: ActivationGrid) -> bool:
    q = t / g.scale + g.zero_point
    return bool(torch.allclose(q, q.round(), atol=1e-3))


def test_uint8_activations_rounds_named_units_and_removes_its_hooks():
    logit_grid = ActivationGrid(scale=0.01, zero_point=128)
    grids = {"input": ActivationGrid(scale=1 / 128, zero_point=128), "stem": RELU6_GRID,
             "blocks.0.pw": RELU6_GRID, "pool": RELU6_GRID, "classifier": logit_grid}
    model = _tiny_classifier({"activation_grids": {k: g.to_dict() for k, g in grids.items()}})
    seen: dict[str, torch.Tensor] = {}
    spies = [model.stem.register_forward_hook(lambda m, i, o: seen.__setitem__("stem_in", i[0])),
             model.blocks[0].dw.register_forward_hook(lambda m, i, o: seen.__setitem__("stem", i[0])),
             model.blocks[0].dw.register_forward_hook(lambda m, i, o: seen.__setitem__("dw", o)),
             model.classifier.register_forward_hook(lambda m, i, o: seen.__setitem__("pool", i[0]))]
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        plain = model(x)
        with uint8_activations(model) as same:
            assert same is model
            rounded = model(x)
            assert _grid_values(seen["stem_in"], grids["input"])  # the input pre-hook
            assert _grid_values(seen["stem"], RELU6_GRID)  # a unit's output, as the next unit reads it
            assert _grid_values(seen["pool"], RELU6_GRID)  # the pooled features before the classifier
            assert not _grid_values(seen["dw"], RELU6_GRID)  # a unit without a recorded grid stays float
            assert _grid_values(rounded, logit_grid)
        again = model(x)
    for s in spies:
        s.remove()
    assert not torch.equal(rounded, plain)
    assert torch.equal(again, plain)  # hooks gone after the block
    assert not model._forward_hooks and not model._forward_pre_hooks and not model.stem._forward_hooks


def test_hooks_are_removed_after_an_exception():
    model = _tiny_classifier({"activation_grids": {"stem": RELU6_GRID.to_dict()}})
    with pytest.raises(RuntimeError, match="boom"), uint8_activations(model):
        raise RuntimeError("boom")
    assert not model.stem._forward_hooks


def test_ranges_only_metadata_gives_256_level_grids():
    model = _tiny_classifier({"activation_ranges": {"input": [-1.0, 127 / 128], "stem": [0.0, 6.0]}})
    grids = recorded_activation_grids(model)
    assert set(grids) == {"input", "stem"}
    assert grids["input"].zero_point == 128 and grids["input"].scale == pytest.approx(1 / 128)
    assert grids["stem"].scale == pytest.approx(6 / 255)


def test_no_recorded_grids_is_a_clear_error():
    model = _tiny_classifier({"source": "float.h5"})
    with pytest.raises(ValueError, match=r"from float\.h5 carries no recorded activation grids"):
        with uint8_activations(model):
            pass
    del model.weights_info
    with pytest.raises(ValueError, match="no recorded activation grids"):
        recorded_activation_grids(model)


def test_a_grid_for_a_missing_module_is_an_error_and_leaves_no_hooks():
    model = _tiny_classifier({})
    grids = {"stem": RELU6_GRID, "blocks.99.dw": RELU6_GRID}
    with pytest.raises(ValueError, match=r"'blocks.99.dw' matches no module of MobileNetV1"):
        add_activation_hooks(model, grids)
    assert not model.stem._forward_hooks
    with pytest.raises(ValueError, match="has no 'classifier' module"):
        add_activation_hooks(nn.Sequential(nn.Identity()), {"pool": RELU6_GRID})


def test_grids_survive_save_and_load(tmp_path):
    grids = {"stem": RELU6_GRID.to_dict(), "classifier": {"scale": 0.13083283603191376, "zero_point": 96,
                                                          "quant_min": 0, "quant_max": 255}}
    model = _tiny_classifier({})
    path = save(model, tmp_path / "m.safetensors", extra={"activation_grids": grids})
    loaded = recorded_activation_grids(load(path))
    assert loaded == {k: ActivationGrid.from_dict(v) for k, v in grids.items()}
    assert loaded["classifier"].scale == 0.13083283603191376  # exact: float32 scale through JSON


def _tiny_ssd(score_fn: str = "sigmoid") -> SSD:
    torch.manual_seed(0)
    pp = PostprocessConfig(score_fn=score_fn, nms_mode="class_agnostic", max_detections=5)
    return SSD(SSDConfig(num_classes=3, width_mult=0.25, image_size=(96, 96), postprocess=pp)).eval()


def test_ssd_outputs_land_on_the_concat_and_logistic_grids():
    model = _tiny_ssd()
    box_grid, logit_grid, score_grid = (ActivationGrid(scale=0.05, zero_point=120), ActivationGrid(0.04, 200),
                                        ActivationGrid(1 / 256, 0))
    grids = {"backbone.stem": RELU6_GRID, "extras.0.conv": ActivationGrid.from_tflite(0.05, 121, activation="RELU6"),
             "cls_heads.0": ActivationGrid(0.03, 128), "box_encodings": box_grid, "class_logits": logit_grid,
             "class_scores": score_grid}
    x = torch.rand(1, 3, 96, 96) * 2 - 1
    with torch.no_grad(), uint8_activations(model, grids):
        boxes, logits = model(x)
        dets = model.detect(x)[0]
    assert _grid_values(boxes, box_grid)
    scores = torch.sigmoid(logits.double())  # what post-processing computes from the logits
    assert torch.allclose(scores * 256, (scores * 256).round(), atol=1e-4)  # the interpreter's uint8 scores
    # rounding the logits to their grid first, then the sigmoid to 1/256 (two roundings, as TF Lite)
    assert len(dets.scores) and torch.allclose(dets.scores * 256, (dets.scores * 256).round(), atol=1e-4)
    assert not model._forward_hooks


def test_score_grid_needs_sigmoid_scores():
    with pytest.raises(ValueError, match="grid of sigmoid scores.*'softmax'"):
        add_activation_hooks(_tiny_ssd("softmax"), {"class_scores": ActivationGrid(1 / 256, 0)})


def test_requantize_accumulator_is_xnnpacks_float32_rint():
    # accumulators 0..9 of scale 0.25 onto a grid of scale 0.5: multiplier 0.5 -> 0, 0.5, 1, 1.5, ...: ties to even
    g = ActivationGrid(scale=0.5, zero_point=3, accumulator_scale=(0.25,))
    y = torch.arange(10, dtype=torch.float64).reshape(1, 10, 1, 1) * 0.25
    q = g.quantize(g.requantize_accumulator(y)).flatten().tolist()
    assert q == [3, 3, 4, 5, 5, 5, 6, 7, 7, 7]  # 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, 3.5 -> 4, 4.5 -> 4 (+3)
    per_channel = ActivationGrid(scale=1.0, zero_point=0, accumulator_scale=(1.0, 2.0))
    y2 = torch.tensor([[[[3.0]], [[3.0]]]], dtype=torch.float64)  # acc 3 (x1) and 1.5 -> 2 (x2)
    assert per_channel.requantize_accumulator(y2).flatten().tolist() == [3.0, 4.0]
    with pytest.raises(ValueError, match="no accumulator_scale"):
        RELU6_GRID.requantize_accumulator(y)


def test_each_kernel_set_breaks_ties_its_own_way():
    # multiplier 1/4: accumulators -10, -6, 6, 10 are the ties -2.5, -1.5, 1.5, 2.5
    g = ActivationGrid(scale=1.0, zero_point=100, accumulator_scale=(0.25,))
    y = torch.tensor([-10.0, -6.0, 6.0, 10.0], dtype=torch.float64).reshape(1, 4, 1, 1) * 0.25
    rounded = {k: (g.quantize(g.requantize_accumulator(y, k)).flatten() - 100).tolist()
               for k in ("default", "builtin", "reference")}
    assert rounded == {"default": [-2, -2, 2, 2],  # XNNPACK: float32 rint, ties to even
                       "builtin": [-2, -1, 2, 3],  # optimized kernels: ties upwards
                       "reference": [-3, -2, 2, 3]}  # gemmlowp: ties away from zero
    with pytest.raises(ValueError, match="kernels must be one of default, builtin, reference, got 'xnnpack'"):
        g.requantize_accumulator(y, "xnnpack")


def test_concat_and_logistic_tables():
    src, dst = ActivationGrid(scale=0.02, zero_point=100), ActivationGrid(scale=0.05, zero_point=200)
    table = requantize_table(src, dst)
    assert table.shape == (256,)
    q = torch.arange(256)
    expected = (torch.round((q - 100) * 0.4).long() + 200).clamp(0, 255)  # q * 0.4 never ends in .5: no ties
    assert torch.equal(dst.integers(table), expected)
    assert torch.equal(src.integers(requantize_table(src, src)), q)  # the same grid: a copy
    probs = logistic_table(ActivationGrid(scale=0.1, zero_point=128), ActivationGrid(scale=1 / 256, zero_point=0))
    # sigmoid(0) = 128/256; sigmoid(-12.8) rounds to 0; sigmoid(12.7) rounds to 256/256, clamped to 255/256
    assert probs[128] == 0.5 and probs[0] == 0.0 and probs[255] == 255 / 256
    assert probs[138] == round(256 / (1 + np.exp(-1.0))) / 256
    assert bool((probs.diff() >= 0).all())


def _on_grid_classifier() -> tuple[MobileNetV1, dict[str, ActivationGrid]]:
    """A tiny classifier whose weights sit on per-tensor grids, with the grids an importer would record."""
    model = _tiny_classifier({})
    units = ["stem"] + [f"blocks.{i}.{p}" for i in range(len(model.blocks)) for p in ("dw", "pw")]
    weights, grids = {}, {"input": ActivationGrid(scale=1 / 128, zero_point=128)}
    s_in = grids["input"].scale
    with torch.no_grad():
        for name in units:
            unit = model.get_submodule(name)
            unit.bn.running_var.fill_(1 - unit.bn.eps)  # BN as an import leaves it: the identity (bias 0 here)
            unit.bn.running_mean.zero_(), unit.bn.weight.fill_(1), unit.bn.bias.zero_()
            conv = unit.conv
            # the stem's multiplier s_in * s_w / s_out is 1/64: accumulators ending in 32/64 are ties (half to even)
            s_w = 2 * 6 / 255 if name == "stem" else float(conv.weight.abs().max()) / 127
            conv.weight.copy_(torch.round(conv.weight / s_w) * s_w)
            weights[f"{name}.conv.weight"] = {"scale": [s_w], "zero_point": [0], "quant_min": -127,
                                              "quant_max": 127, "axis": 0}
            grids[name] = ActivationGrid.from_tflite(6 / 255, 0, activation="RELU6", accumulator_scale=(s_in * s_w,))
            s_in = grids[name].scale
    extra = {"activation_grids": {k: g.to_dict() for k, g in grids.items()}, "weight_quantization": weights}
    model.weights_info = WeightsInfo.from_header({"extra": extra})
    return model, grids


def test_exact_mode_requantizes_the_integer_accumulator():
    model, grids = _on_grid_classifier()
    assert can_run_exact(model)
    x = grids["input"].fake_quantize(torch.rand(1, 3, 32, 32) * 2 - 1)
    seen = {}
    spy = model.blocks[0].dw.register_forward_hook(lambda m, i, o: seen.__setitem__("stem", i[0]))
    with torch.no_grad(), uint8_activations(model) as m:
        logits = m(x)
    spy.remove()
    assert logits.dtype == torch.float32 and seen["stem"].dtype == torch.float64
    # the stem by hand in integers: acc = sum (q_in - 128) * q_w over TF's SAME padding (0 top/left, 1 bottom/right)
    q_in = grids["input"].integers(x).double() - 128
    s_w = model.weights_info.quantization.weights["stem.conv.weight"].scale[0]
    q_w = torch.round(model.stem.conv.weight.detach().double() / s_w)
    acc = F.conv2d(F.pad(q_in, (0, 1, 0, 1)), q_w, stride=2)
    g = grids["stem"]
    multiplier = np.float32(g.accumulator_scale[0] / g.scale)
    expected = np.clip(np.rint(acc.numpy().astype(np.float32) * multiplier), 0, 255)
    ours = g.integers(seen["stem"]).numpy()
    assert ours.shape == expected.shape
    mismatch = np.abs(ours - expected)
    assert mismatch.max() == 0, f"{int((mismatch > 0).sum())} of {mismatch.size} stem values differ"
    # rounding the float output instead (ties away from zero) misses the interpreter on those ties
    with torch.no_grad(), uint8_activations(model, exact=False) as m:
        spy = model.blocks[0].dw.register_forward_hook(lambda m, i, o: seen.__setitem__("stem", i[0]))
        m(x)
        spy.remove()
    assert (g.integers(seen["stem"]).numpy() != expected).any()


def test_exact_mode_restores_dtype_and_weights_even_under_inference_mode():
    model, _ = _on_grid_classifier()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.inference_mode(), uint8_activations(model, exact=True):
        model(torch.rand(1, 3, 32, 32))
    state = model.state_dict()
    assert all(torch.equal(state[k], v) and state[k].dtype == v.dtype for k, v in before.items())
    assert not any(p.is_inference() for p in model.parameters())  # still trainable afterwards
    model.train()
    model(torch.rand(2, 3, 32, 32)).sum().backward()


def test_exact_mode_needs_recorded_accumulators():
    model = _tiny_classifier({"activation_grids": {"stem": RELU6_GRID.to_dict()}})
    assert not can_run_exact(model)
    with pytest.raises(ValueError, match="exact fidelity needs an accumulator scale"):
        with uint8_activations(model, exact=True):
            pass
    assert not model.stem._forward_hooks and next(model.parameters()).dtype == torch.float32


@pytest.mark.realdata
def test_imported_tflite_classifier_records_its_exact_grids():
    from mobilenet.convert import import_model

    model = import_model(shared_file("weights", "tflite", "mobilenet_v1_0.25_128_quant.tflite"))
    grids = recorded_activation_grids(model)
    assert set(grids) == {"input", "stem", "pool", "classifier"} | {f"blocks.{i}.{p}" for i in range(13)
                                                                    for p in ("dw", "pw")}
    assert grids["input"] == ActivationGrid(scale=0.0078125, zero_point=128)
    assert grids["stem"].scale == pytest.approx(0.0235284772) and grids["stem"].zero_point == 0
    x = torch.rand(1, 3, 128, 128) * 2 - 1
    with torch.no_grad(), uint8_activations(model):
        logits = model(x)
    assert _grid_values(logits, grids["classifier"])


@pytest.mark.realdata
def test_exact_fidelity_gives_the_interpreters_uint8_softmax():
    pytest.importorskip("ai_edge_litert.interpreter", reason="the TF Lite reference needs ai-edge-litert")
    from mobilenet.convert import import_model
    from mobilenet.convert.parity import labelled_photos, photo_pixels, torch_logits
    from mobilenet.tflite.parity import tflite_outputs

    path = shared_file("weights", "tflite", "mobilenet_v1_0.25_128_quant.tflite")
    model = import_model(path)
    pre = model.weights_info.preprocessing
    pixels = photo_pixels([p for p, _ in labelled_photos(shared_file("imagenet", "images"))[:8]], pre)
    ref = tflite_outputs(path, pixels)  # (8, 1001) uint8 softmax, dequantized (steps of 1/256)
    with uint8_activations(model) as exact:
        probs = torch.softmax(torch.from_numpy(torch_logits(exact, pixels, pre)).double(), dim=1).numpy()
    assert np.array_equal(np.round(probs * 256) / 256, ref)
