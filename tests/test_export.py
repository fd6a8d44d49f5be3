"""Export to every target, each file run back in its own runtime: parity with PyTorch (<= 1e-4), metadata, batch
sizes, refusals, the CLI. Core ML cannot run on Linux: its package is inspected (inputs, outputs, labels, ops)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import mobilenet
from mobilenet import runtimes
from mobilenet.cli import main
from mobilenet.export import check, export, file_size
from mobilenet.export.pytorch import export_program, export_torchscript
from mobilenet.runtimes.pytorch import METADATA_FILE
from mobilenet.weights import WeightsInfo

CLASSES = [f"c{i}" for i in range(6)]


def _model(preset: str) -> mobilenet.MobileNetV1:
    model = mobilenet.create_model("mobilenet_v1_025_128", preset=preset, resolution=64, num_classes=6).train()
    with torch.no_grad():  # BatchNorm statistics of real activations, so outputs are not ~0
        model(torch.randn(16, 3, 64, 64))
    model.eval()
    model.weights_info = WeightsInfo(classes=CLASSES)
    return model


@pytest.fixture(scope="module")
def tf_model():
    return _model("tf")  # the tf preset: SAME padding frozen to constant pads in every export


def _inputs(n: int = 3) -> torch.Tensor:
    return torch.randn(n, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def _agrees(path, model, **options) -> runtimes.Predictor:
    """The file in its runtime equals the model to 1e-4 at batch 1 and 3, and carries names and preprocessing."""
    result = check(path, model, _inputs(), **options)
    assert result.max_abs_diff <= 1e-4 and result.top1_agreement == 1.0, result
    predictor = runtimes.load(path, **options)
    x = _inputs(1)
    with torch.no_grad():
        assert (predictor(x) - model(x)).abs().max().item() <= 1e-4
    assert predictor.class_names == CLASSES and predictor.preprocessing.resolution == 64
    assert predictor.config.preset == model.config.preset and predictor.task == "classify"
    return predictor


@pytest.fixture(scope="module", params=["paper", "tf"])
def onnx_export(request, tmp_path_factory):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model = _model(request.param)
    path = export(model, tmp_path_factory.mktemp("onnx") / f"{request.param}.onnx", format="onnx")
    return model, path


@pytest.mark.slow
def test_onnx_matches_pytorch_at_any_batch(onnx_export):
    model, path = onnx_export
    predictor = _agrees(path, model)
    assert predictor.input_shape == (None, 3, 64, 64) and predictor.output_names == ["logits"]
    assert predictor(_inputs(7)).shape == (7, 6)


@pytest.mark.slow
def test_onnx_metadata_and_opset(onnx_export):
    import onnx

    from mobilenet.export.onnx import read_onnx_metadata

    model, path = onnx_export
    proto = onnx.load(str(path))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["preprocessing"])["resolution"] == 64
    assert json.loads(props["class_names"])[5] == "c5"
    meta = read_onnx_metadata(path)
    assert meta["config"]["preset"] == model.config.preset and meta["config"]["num_classes"] == 6
    assert meta["input_size"] == [64, 64] and meta["task"] == "classify"
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 64, 64]


@pytest.mark.slow
def test_onnx_runs_in_openvino_too(onnx_export):
    pytest.importorskip("openvino")
    model, path = onnx_export
    predictor = _agrees(path, model, runtime="openvino", precision="f32")
    assert predictor.runtime == "openvino"


@pytest.mark.parametrize("preset", ["paper", "tf"])
def test_torchscript_and_torch_export_load_back(preset, tmp_path):
    model = _model(preset)
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
    ts = export_torchscript(model, tmp_path / "m.pt")
    extra = {METADATA_FILE: ""}
    loaded = torch.jit.load(str(ts), _extra_files=extra)
    assert torch.allclose(loaded(x), ref, atol=1e-5)
    assert json.loads(extra[METADATA_FILE])["config"]["preset"] == preset
    ep = torch.export.load(str(export_program(model, tmp_path / "m.pt2")))
    assert torch.allclose(ep.module()(x), ref, atol=1e-5)
    assert torch.allclose(ep.module()(x[:1]), ref[:1], atol=1e-5)  # dynamic batch
    for path in (ts, tmp_path / "m.pt2"):
        predictor = _agrees(path, model)
        assert predictor.runtime == "torch"


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_tflite_float(tf_model, layout, tmp_path):
    pytest.importorskip("litert_torch")
    path = export(tf_model, tmp_path / "m.tflite", format="tflite", layout=layout)
    predictor = _agrees(path, tf_model)
    assert predictor.layout == layout and predictor.input_shape == (1, 3, 64, 64)  # batch 3 ran in chunks of 1
    from mobilenet.runtimes.tflite import read_metadata

    assert read_metadata(path)[0]["input_layout"] == layout


@pytest.mark.slow
def test_executorch_float_and_int8(tf_model, tmp_path):
    pytest.importorskip("executorch")
    from mobilenet.export.executorch import pt2e_model, simulate_xnnpack

    path = export(tf_model, tmp_path / "m.pte", format="executorch", batch=2)
    predictor = _agrees(path, tf_model)
    assert predictor.input_shape[0] == 2 and "XNNPACK" in predictor.describe()
    calib = torch.randn(8, 3, 64, 64)
    q = export(tf_model, tmp_path / "q.pte", format="executorch-int8", calibration=calib)
    qp = runtimes.load(q)
    assert qp.metadata["quantization"]["method"] == "pt2e-xnnpack" and qp.class_names == CLASSES
    assert qp.metadata["quantization"]["grids"] == "calibrated"
    x = _inputs(8)
    with torch.no_grad():
        ref = tf_model(x)
    out = qp(x)
    assert out.shape == ref.shape and (out - ref).abs().max().item() < 0.5 * ref.abs().max().item()
    assert file_size(q) < file_size(path) / 2  # int8 weights
    # our own simulation of the program: the PT2E module it was lowered from, in XNNPACK's integer arithmetic
    converted = pt2e_model(tf_model, calib)
    assert torch.equal(simulate_xnnpack(converted, x), out)


def test_pt2e_fuses_relu6_into_its_conv_and_pads_keep_their_grid(tf_model):
    """XNNPACKQuantizer alone quantizes each conv's output before its ReLU6 (over the pre-activation range) and gives
    the tf preset's pads a grid of their own; ours observes the ReLU6 output, and a pad's grid is its input's."""
    pytest.importorskip("executorch")
    from mobilenet.export.executorch import pt2e_model

    converted = pt2e_model(tf_model, torch.randn(4, 3, 64, 64))
    nodes = [n for n in converted.graph.nodes if n.op == "call_function"]
    names = {n: str(n.target) for n in nodes}
    convs = [n for n in nodes if "conv2d" in names[n]]
    assert len(convs) == 28
    for conv in convs[:-1]:  # the classifier has no activation
        (act,) = conv.users
        assert "hardtanh" in names[act] and "quantize_per_tensor" in names[next(iter(act.users))]
    pads = [n for n in nodes if names[n] == "aten.pad.default"]
    assert pads
    for pad in pads:
        (q,) = pad.users
        assert q.args[1:3] == pad.args[0].args[1:3]  # the same scale and zero point as the dequantize it pads


def test_symmetric_scales_keep_a_recorded_grid_where_it_fits():
    from mobilenet.deploy.quantize import symmetric_scales

    s = 0.01
    w = torch.zeros(3, 1, 3, 3)
    w[0].view(-1)[:3] = torch.tensor([-100, 3, 120]) * s  # on the grid, within 127 steps: kept, exact
    w[1].view(-1)[:2] = torch.tensor([-200, 50]) * s  # on the grid but 200 steps: no symmetric int8 grid holds it
    w[2].view(-1)[:2] = torch.tensor([0.5, -0.013])  # off the grid
    scales = symmetric_scales(w, s)
    assert scales[0].item() == pytest.approx(s, rel=1e-6)
    assert scales[1].item() == pytest.approx(2.0 / 127, rel=1e-6) and scales[2].item() == pytest.approx(0.5 / 127)
    q = w[0] / scales[0]
    assert (q - q.round()).abs().max() < 1e-4  # lossless (up to the float32 storage of the values)
    assert torch.allclose(symmetric_scales(w), w.flatten(1).abs().amax(1) / 127)


@pytest.mark.slow
def test_onnx_int8_equals_our_simulation(tf_model, tmp_path):
    """onnx-int8 of a model without recorded grids (per-channel symmetric weights chosen here, bias correction) in
    ONNX Runtime against :func:`~mobilenet.export.onnx.simulate_qdq` of the same file."""
    pytest.importorskip("onnxruntime")
    from mobilenet.export.onnx import simulate_qdq

    calib, x = torch.randn(16, 3, 64, 64), _inputs(8)
    path = export(tf_model, tmp_path / "q.onnx", format="onnx-int8", calibration=calib)
    out, ours = runtimes.load(path)(x), simulate_qdq(path, x)
    assert (out.argmax(1) == ours.argmax(1)).all()
    assert (out - ours).abs().max().item() <= 1.01 * _logit_step(path)  # at most one step of the output grid


def _logit_step(path) -> float:
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    last_q = [n for n in proto.graph.node if n.op_type == "QuantizeLinear"][-1]
    init = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    return float(init[last_q.input[1]])


@pytest.mark.slow
def test_openvino_float_and_int8(tf_model, tmp_path):
    pytest.importorskip("openvino")
    path = export(tf_model, tmp_path / "m.xml", format="openvino")
    assert path.with_suffix(".bin").is_file() and file_size(path) > path.stat().st_size
    predictor = _agrees(path, tf_model, precision="f32")
    assert predictor.input_shape[0] is None and predictor.precision == "f32"
    pytest.importorskip("nncf")  # a classifier's default is qdq (tests/test_export_int8.py); NNCF on request
    q = export(tf_model, tmp_path / "q.xml", format="openvino-int8", calibration=torch.randn(8, 3, 64, 64),
               method="nncf")
    qp = runtimes.load(q, precision="f32")
    assert qp.metadata["quantization"]["method"] == "nncf" and qp(_inputs(2)).shape == (2, 6)


@pytest.mark.slow
def test_coreml_package_is_inspected_not_run(tf_model, tmp_path):
    pytest.importorskip("coremltools")
    from mobilenet.export.coreml import inspect_coreml

    path = export(tf_model, tmp_path / "m.mlpackage", format="coreml")
    info = inspect_coreml(path)
    assert info["type"] == "mlProgram"
    assert info["inputs"] == [{"name": "image", "type": "imageType", "width": 64, "height": 64, "color": "RGB"}]
    assert [o["name"] for o in info["outputs"]] == ["classLabel", "classLabel_probs"]
    assert info["class_labels"] == CLASSES and info["predicted_feature"] == "classLabel"
    assert {"conv", "pad", "softmax", "classify"} <= set(info["ops"])  # static pads: no shape arithmetic left
    assert info["metadata"]["preprocessing"]["resolution"] == 64
    with pytest.raises(ValueError, match="mlpackage"):
        export(tf_model, tmp_path / "m.mlmodel", format="coreml")


def test_export_rejects_bad_arguments(tmp_path):
    model = _model("paper")
    with pytest.raises(ValueError, match="format"):
        export(model, tmp_path / "m.x", format="tflite-float16")
    with pytest.raises(ValueError, match="calibration"):
        export(model, tmp_path / "m.onnx", format="onnx-int8")
    with pytest.raises(ValueError, match="opset"):
        export(model, tmp_path / "m.onnx", format="onnx", opset=13)
    with pytest.raises(ValueError, match="opset"):
        export(model, tmp_path / "m.pt", format="torchscript", opset=18)
    with pytest.raises(ValueError, match=r"\.pt file"):  # a file that is not what its name says
        export(model, tmp_path / "m.onnx", format="torchscript")
    with pytest.raises(TypeError, match="MobileNetV1"):
        export(nn.Linear(2, 2), tmp_path / "m.onnx")  # type: ignore[arg-type]
    from mobilenet.export.openvino import default_method, export_openvino

    assert default_method(model) == "qdq"
    with pytest.raises(ValueError, match="qdq_onnx"):  # an int8 ONNX to convert, but NNCF asked for
        export_openvino(model, tmp_path / "m.xml", calibration=torch.randn(2, 3, 64, 64), method="nncf",
                        qdq_onnx=tmp_path / "q.onnx")
    with pytest.raises(ValueError, match="qdq_onnx"):  # ... or no int8 export at all
        export_openvino(model, tmp_path / "m.xml", qdq_onnx=tmp_path / "q.onnx")


def test_cli_export(tmp_path, capsys):
    src = mobilenet.save(_model("tf"), tmp_path / "m.safetensors")
    out = tmp_path / "m.pt"
    assert main(["export", str(src), "--format", "torchscript", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "max abs difference" in text and "top-1 agreement 100%" in text and "torch 2" in text
    assert main(["export", str(src), "--format", "onnx-int8", "-o", str(tmp_path / "q.onnx")]) == 2
    assert "--calib" in capsys.readouterr().err
    assert main(["export", str(src), "--format", "torchscript", "-o", str(tmp_path / "m.onnx")]) == 2
    assert "m.onnx" in capsys.readouterr().err
    assert main(["export", str(src), "--opset", "16", "-o", str(tmp_path / "m.onnx")]) == 2
    assert "opset" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "none.safetensors"), "--format", "torchscript", "-o", str(out)]) == 2
    assert "not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["export", str(src), "--format", "tflite-float16", "-o", str(out)])


@pytest.mark.slow
def test_cli_export_int8_defaults_match_the_librarys(tmp_path):
    """`mobilenet export` writes what `mobilenet.export.export` writes: openvino-int8 of a classifier by our QDQ
    ONNX, tflite-int8 in TF Lite's int8 scheme unless --scheme per-tensor."""
    pytest.importorskip("openvino")
    pytest.importorskip("ai_edge_litert")
    from PIL import Image

    src = mobilenet.save(_model("tf"), tmp_path / "m.safetensors")
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(photos / f"{i}.png")
    calib = ["--calib", str(photos), "--no-check"]
    assert main(["export", str(src), "--format", "openvino-int8", "-o", str(tmp_path / "q.xml"), *calib]) == 0
    assert runtimes.load(tmp_path / "q.xml").metadata["quantization"]["method"] == "onnx-qdq"
    for scheme in ("per-channel", "per-tensor"):
        out = tmp_path / f"{scheme}.tflite"
        assert main(["export", str(src), "--format", "tflite-int8", "-o", str(out), *calib, *(
            ["--scheme", scheme] if scheme == "per-tensor" else [])]) == 0
        assert runtimes.load(out).metadata["quantization"]["scheme"].startswith(scheme)


@pytest.fixture(scope="module")
def ssd():
    from mobilenet.detection.ssd import SSD, SSDConfig

    model = SSD(SSDConfig(num_classes=3, width_mult=0.25, image_size=(128, 128))).train()
    with torch.no_grad():  # BatchNorm statistics of real activations
        model(torch.randn(8, 3, 128, 128))
    model.eval()
    model.weights_info = WeightsInfo(classes=["cat", "dog", "fox"])
    return model


@pytest.mark.slow
def test_detector_exports_its_decoded_network(ssd, tmp_path):
    pytest.importorskip("litert_torch")
    pytest.importorskip("openvino")
    x = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(2))
    for fmt, name, options in (("tflite", "d.tflite", {}), ("openvino", "d.xml", {"precision": "f32"})):
        path = export(ssd, tmp_path / name, format=fmt)
        result = check(path, ssd, x, **options)  # decoded boxes and logits
        assert result.max_abs_diff <= 1e-4 and result.top1_agreement is None, result
        predictor = runtimes.load(path, **options)
        assert predictor.task == "detect" and predictor.class_names == ["cat", "dog", "fox"]
        assert predictor.metadata["postprocess"] == ssd.config.postprocess.to_dict()
        assert predictor.metadata["outputs"] == ["decoded", "logits"]
    with pytest.raises(ValueError, match="post-processing"):
        export(ssd, tmp_path / "d.onnx", format="onnx")


@pytest.mark.slow
def test_detector_coreml_package(ssd, tmp_path):
    pytest.importorskip("coremltools")
    from mobilenet.export.coreml import inspect_coreml

    info = inspect_coreml(export(ssd, tmp_path / "d.mlpackage", format="coreml"))
    anchors = ssd.anchors().shape[0]
    assert [(o["name"], o["shape"]) for o in info["outputs"]] == [("decoded", [1, anchors, 4]),
                                                                   ("logits", [1, anchors, 4])]
    assert info["metadata"]["task"] == "detect" and info["inputs"][0]["type"] == "imageType"
