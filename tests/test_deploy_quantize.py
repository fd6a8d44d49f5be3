"""int8: PTQ stays close to float on a small trained model, QAT runs, files round-trip, ONNX QDQ, CLI errors,
and a quantization-aware trained import's recorded grids are used as they are."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mobilenet
from mobilenet.cli import main
from mobilenet.deploy.quantize import load_quantized, quantize_ptq, quantize_qat, save_quantized
from mobilenet.export.metadata import artifact_metadata
from mobilenet.preprocessing import Preprocessing

PRE = Preprocessing(resolution=32, crop_fraction=1.0, mean=(128.0,) * 3, std=(64.0,) * 3)


def _digits(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    from mobilenet.data import open_digits

    ds = open_digits(split, transform=PRE)
    xs, ys = zip(*(ds[i] for i in range(len(ds))), strict=True)
    return torch.stack(xs), torch.tensor(ys)


@pytest.fixture(scope="module")
def digits_model():
    """MobileNet 0.25 at 32 px trained for 4 epochs on the bundled digits (~80% test top-1), and the data."""
    xtr, ytr = _digits("train")
    xte, yte = _digits("test")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small tensors: one thread is faster than two on a busy machine
    try:
        torch.manual_seed(0)
        model = mobilenet.create_model("mobilenet_v1_025_128", resolution=32, num_classes=10)
        opt = torch.optim.Adam(model.parameters(), 5e-3)
        g = torch.Generator().manual_seed(0)
        model.train()
        for _ in range(4):
            perm = torch.randperm(len(xtr), generator=g)
            for i in range(0, len(xtr) - 127, 128):
                idx = perm[i:i + 128]
                loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        # exact BN statistics of the final weights (the running averages lag behind a 4-epoch run)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None
        with torch.no_grad():
            model(xtr[:512])
        model.eval()
    finally:
        torch.set_num_threads(threads)
    return model, (xtr, ytr), (xte, yte)


def _top1(logits: torch.Tensor, y: torch.Tensor) -> float:
    return (logits.argmax(1) == y).float().mean().item() * 100


@pytest.mark.slow
def test_ptq_int8_stays_close_to_float(digits_model):
    model, (xtr, _), (xte, yte) = digits_model
    q = quantize_ptq(model, xtr[::20])  # 72 calibration images
    with torch.no_grad():
        ref, out = model(xte), q(xte)
    assert _top1(ref, yte) > 60, "the fixture model did not train"
    # A 0.25x model at 32 px trained for seconds has small logit margins: int8 costs it ~2-3 points.
    assert (out.argmax(1) == ref.argmax(1)).float().mean() >= 0.9
    assert _top1(out, yte) >= _top1(ref, yte) - 5
    # per-channel int8 weights in the graph
    convs = [m for m in q.modules() if type(m).__module__.startswith(("torch.ao.nn.quantized", "torch.ao.nn.intrinsic"))
             and callable(getattr(m, "weight", None))]
    assert len(convs) == 28  # stem + 13 x (dw, pw), each fused with its ReLU, and the classifier
    for c in convs:  # per-channel, symmetric (packed weights report "affine" with zero points all 0)
        w = c.weight()
        assert w.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric)
        assert w.q_per_channel_zero_points().eq(0).all() and w.q_per_channel_scales().numel() == w.shape[0]
    # the float model is untouched
    assert isinstance(model.stem.bn, nn.BatchNorm2d)


@pytest.mark.slow
def test_qat_fine_tunes_and_converts(digits_model):
    model, (xtr, ytr), (xte, yte) = digits_model
    batches = [(xtr[i:i + 64], ytr[i:i + 64]) for i in range(0, 512, 64)]
    q = quantize_qat(model, lambda: iter(batches), epochs=2)
    with torch.no_grad():
        ref, out = model(xte), q(xte)
    assert _top1(out, yte) >= _top1(ref, yte) - 3  # fine-tuning keeps (here: improves) accuracy
    with pytest.raises(ValueError, match="epochs"):
        quantize_qat(model, lambda: iter(batches), epochs=0)


def test_tf_preset_quantizes_with_frozen_padding(tmp_path):
    model = mobilenet.create_model("mobilenet_v1_025_128", preset="tf", resolution=64, num_classes=5).train()
    with torch.no_grad():  # give BatchNorm statistics of real activations
        model(torch.randn(16, 3, 64, 64))
    model.eval()
    calib = torch.randn(8, 3, 64, 64)
    q = quantize_ptq(model, calib, observer="minmax")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref, out = model(x), q(x)
    assert out.shape == (2, 5)
    assert (out - ref).abs().max() <= 0.1 * ref.abs().max() + 1e-3
    # ReLU6 became a fused ReLU whose output range is capped at 6 (uint8 saturation = the clamp)
    fused = [m for m in q.modules() if type(m).__name__ == "ConvReLU2d"]
    assert len(fused) == 27 and all(m.scale * (255 - m.zero_point) <= 6.0 + 1e-6 for m in fused)
    path = save_quantized(q, tmp_path / "q.pt", x[:1], metadata=artifact_metadata(model))
    loaded, meta = load_quantized(path)
    assert torch.equal(loaded(x), q(x))
    assert meta["config"]["preset"] == "tf" and meta["quantization"]["input_size"] == [64, 64]


def test_qat_tf_preset_keeps_relu6_as_fixed_range():
    model = mobilenet.create_model("mobilenet_v1_025_128", preset="tf", resolution=32, num_classes=4).train()
    with torch.no_grad():
        model(torch.randn(16, 3, 32, 32))
    model.eval()
    batches = [(torch.randn(8, 3, 32, 32), torch.randint(0, 4, (8,))) for _ in range(2)]
    q = quantize_qat(model, lambda: iter(batches), epochs=1)
    fused = [m for m in q.modules() if type(m).__name__ == "ConvReLU2d"]
    # every ReLU6 is a fused ReLU whose uint8 output range is exactly [0, 6]
    assert len(fused) == 27 and all(m.scale == pytest.approx(6 / 255) and m.zero_point == 0 for m in fused)
    with torch.no_grad():
        assert q(torch.randn(2, 3, 32, 32)).shape == (2, 4)


def test_quantize_rejects_bad_calibration():
    model = mobilenet.create_model("mobilenet_v1_025_128", resolution=64)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        quantize_ptq(model, torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match="must all be"):
        quantize_ptq(model, [torch.randn(1, 3, 64, 64), torch.randn(1, 3, 32, 32)])
    with pytest.raises(ValueError, match="engine"):
        quantize_ptq(model, torch.randn(1, 3, 64, 64), engine="arm")
    with pytest.raises(ValueError, match="observer"):
        quantize_ptq(model, torch.randn(1, 3, 64, 64), observer="mse")
    with pytest.raises(TypeError, match="MobileNetV1"):
        quantize_ptq(nn.Linear(2, 2), torch.randn(1, 3, 64, 64))  # type: ignore[arg-type]


@pytest.mark.slow
def test_onnxruntime_int8_stays_close_to_float(digits_model, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from mobilenet.deploy.quantize import quantize_onnx
    from mobilenet.export.onnx import export_onnx, read_onnx_metadata
    from mobilenet.runtimes.onnxruntime import session as onnx_session

    model, (xtr, _), (xte, yte) = digits_model
    f = export_onnx(model, tmp_path / "f.onnx")
    qpath = quantize_onnx(f, tmp_path / "q.onnx", xtr[::20])
    assert qpath.stat().st_size < f.stat().st_size / 2
    sess = onnx_session(qpath)
    out = torch.from_numpy(sess.run(None, {"input": xte.numpy()})[0])  # dynamic batch survives quantization
    with torch.no_grad():
        ref = model(xte)
    assert (out.argmax(1) == ref.argmax(1)).float().mean() >= 0.9
    assert _top1(out, yte) >= _top1(ref, yte) - 5
    assert read_onnx_metadata(qpath)["config"]["num_classes"] == 10


@pytest.mark.slow
def test_cli_quantize_report(digits_model, tmp_path, capsys):
    model = digits_model[0]
    src = mobilenet.save(model, tmp_path / "m.safetensors", class_names=[str(d) for d in range(10)], preprocessing=PRE)
    out = tmp_path / "q.pt"
    rc = main(["quantize", str(src), "--calib", "digits#train", "--num-calib", "40", "-o", str(out),
               "--observer", "minmax", "--eval", "digits#test", "--num-eval", "120", "--repeats", "3",
               "--json", str(tmp_path / "r.json")])
    assert rc == 0, capsys.readouterr().err
    text = capsys.readouterr().out
    assert "top-1 (%)" in text and "latency b=1" in text
    import json

    report = json.loads((tmp_path / "r.json").read_text())
    assert report["top1"]["int8"] >= report["top1"]["fp32"] - 5
    loaded, meta = load_quantized(out)
    assert meta["class_names"][3] == "3"


def test_cli_quantize_errors(tmp_path, capsys):
    assert main(["quantize", str(tmp_path / "missing.safetensors"), "--calib", "digits", "-o", "q.pt"]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["quantize", "mobilenet_v1_025_128", "--calib", "digits", "-o", "q.pt", "--qat"]) == 2
    assert "--train" in capsys.readouterr().err
    assert main(["quantize", "mobilenet_v1_025_128", "--calib", str(tmp_path), "-o", "q.pt"]) == 2
    assert "no images" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["quantize", "mobilenet_v1_025_128", "-o", "q.pt"])  # --calib is required: argparse exits 2


# --- recorded grids of a quantization-aware trained import (issue 5 follow-up) ---------------------------

def _units() -> list[str]:
    from mobilenet.model import LAYERS

    return ["stem"] + [f"blocks.{i}.{p}" for i in range(len(LAYERS)) for p in ("dw", "pw")]


def _import_with_recorded_ranges(tmp_path):
    """A tiny tf-preset TF Lite import (uint8 per-channel stem kernel) plus TF Lite-style activation ranges."""
    from mobilenet.convert import import_model
    from tests.convert_writers import randomize_bn, write_tflite

    torch.manual_seed(0)
    model = randomize_bn(mobilenet.MobileNetV1(width_mult=0.25, resolution=32, num_classes=5, preset="tf"))
    ours = import_model(write_tflite(model, tmp_path / "tiny.tflite", quantize_stem=True))
    q = ours.weights_info.quantization
    # the writer quantizes only the stem kernel; the activation ranges a uint8 file would carry are added here
    assert not q.activation_ranges() and set(q.weights) == {"stem.conv.weight"}
    ranges = {"input": (-1.0, 127 / 128), **{u: (0.0, 6.0) for u in _units()}, "classifier": (-8.0, 8.0)}
    ours.weights_info = ours.weights_info.replace(quantization=dataclasses.replace(q, ranges=ranges))
    return ours


def test_recorded_grids_fix_torch_observers_and_weights(tmp_path):
    from mobilenet.deploy.quantize import DEPTHWISE_WEIGHT_LIMIT, recorded_grids

    model = _import_with_recorded_ranges(tmp_path)
    ranges, grids = recorded_grids(model)
    assert ranges["input"] == (-1.0, 127 / 128) and len(grids["stem.conv.weight"]["scale"]) == 8
    calib = torch.rand(4, 3, 32, 32) * 0.2  # narrow: a calibrated input grid would be 0.2 / 255, not 1 / 128
    q = quantize_ptq(model, calib)
    scales = {str(n.args[0].target): getattr(q, n.args[1].target) for n in q.graph.nodes
              if n.op == "call_function" and n.target is torch.quantize_per_tensor}
    zero_points = {str(n.args[0].target): getattr(q, n.args[2].target) for n in q.graph.nodes
                   if n.op == "call_function" and n.target is torch.quantize_per_tensor}
    # the input is quantized on TF Lite's pixel grid (after the stem's SAME pad, which keeps it)
    assert scales["stem.pad"] == pytest.approx(1 / 128) and zero_points["stem.pad"] == 128
    fused = {n: m for n, m in q.named_modules() if type(m).__name__ == "ConvReLU2d"}
    assert len(fused) == 27 and all(m.scale == pytest.approx(6 / 255) and m.zero_point == 0 for m in fused.values())
    assert q.classifier.scale == pytest.approx(16 / 255)
    # the stem kernel is requantized on the file's own per-channel uint8 grid: lossless
    stem_w = fused["stem.conv"].weight()
    assert torch.equal(stem_w.dequantize(), model.stem.conv.weight.detach())
    assert torch.equal(stem_w.q_per_channel_zero_points(),
                       torch.tensor(grids["stem.conv.weight"]["zero_point"]) - 128)
    # depthwise kernels stay within +-64 so fbgemm's int16 pair sums cannot saturate
    for name, m in fused.items():
        if ".dw." in name:
            assert m.weight().int_repr().abs().max() <= DEPTHWISE_WEIGHT_LIMIT


@pytest.mark.slow  # ~8 s, nearly all of it the first ONNX export of the session
def test_recorded_grids_become_onnxruntime_overrides(tmp_path):
    pytest.importorskip("onnxruntime")
    import onnx

    from mobilenet.deploy.quantize import onnx_overrides, quantize_onnx, recorded_grids
    from mobilenet.export.onnx import export_onnx

    model = _import_with_recorded_ranges(tmp_path)
    ranges, grids = recorded_grids(model)
    float_onnx = export_onnx(model, tmp_path / "f.onnx", resolution=32)
    graph = onnx.load(str(float_onnx)).graph
    overrides = onnx_overrides(onnx.load(str(float_onnx)), ranges, grids)
    clips = [n.output[0] for n in graph.node if n.op_type == "Clip"]
    assert len(clips) == 27 and all(float(overrides[c][0]["scale"]) == pytest.approx(6 / 255) for c in clips)
    assert int(overrides[graph.input[0].name][0]["zero_point"]) == 128
    assert len(overrides["stem.conv.weight"]) == 8 and overrides["stem.conv.weight"][0]["axis"] == 0
    q = onnx.load(str(quantize_onnx(float_onnx, tmp_path / "q.onnx", torch.rand(2, 3, 32, 32) * 0.2,
                                    activation_ranges=ranges, weight_grids=grids)))
    init = {t.name: onnx.numpy_helper.to_array(t) for t in q.graph.initializer}
    first_q = next(n for n in q.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == graph.input[0].name)
    assert float(init[first_q.input[1]]) == pytest.approx(1 / 128) and int(init[first_q.input[2]]) == 128


def test_real_quantized_tflite_records_its_grids(shared_data):
    from mobilenet.convert import import_model
    from tests.conftest import shared_file

    model = import_model(shared_file("weights", "tflite", "mobilenet_v1_0.25_128_quant.tflite"))
    q = model.weights_info.quantization
    ranges, grids = q.activation_ranges(), {k: g.to_dict() for k, g in q.weights.items()}
    assert set(ranges) == {"input", "classifier", *_units()}
    assert ranges["input"] == (-1.0, 0.9921875)
    assert all(r[0] == 0 and r[1] == pytest.approx(6.0, abs=1e-3) for u, r in ranges.items() if u in _units())
    assert len(grids) == 28
    state = model.state_dict()
    for name, g in grids.items():  # the imported float weights lie exactly on the recorded grid
        q = state[name] / g["scale"][0] + g["zero_point"][0]
        assert (q - q.round()).abs().max() < 1e-3
        assert g["quant_min"] <= q.round().min() and q.round().max() <= g["quant_max"]
