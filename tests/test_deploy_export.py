"""Export: ONNX Runtime parity (<= 1e-4), dynamic batch, metadata, TorchScript and torch.export load back, CLI."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import mobilenet
from mobilenet.cli import main
from mobilenet.deploy.export import export, export_program, export_torchscript
from mobilenet.deploy.quantize import METADATA_FILE
from mobilenet.weights import WeightsInfo


def _model(preset: str) -> mobilenet.MobileNetV1:
    model = mobilenet.create_model("mobilenet_v1_025_128", preset=preset, resolution=64, num_classes=6).train()
    with torch.no_grad():  # BatchNorm statistics of real activations, so outputs are not ~0
        model(torch.randn(16, 3, 64, 64))
    return model.eval()


@pytest.fixture(scope="module", params=["paper", "tf"])
def onnx_export(request, tmp_path_factory):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model = _model(request.param)
    model.weights_info = WeightsInfo(classes=[f"c{i}" for i in range(6)])
    path = export(model, tmp_path_factory.mktemp("onnx") / f"{request.param}.onnx", format="onnx")
    return model, path


@pytest.mark.slow
def test_onnx_matches_pytorch_at_any_batch(onnx_export):
    from mobilenet.deploy.export import onnx_session

    model, path = onnx_export
    sess = onnx_session(path)
    assert [i.name for i in sess.get_inputs()] == ["input"] and [o.name for o in sess.get_outputs()] == ["logits"]
    for batch in (1, 3):
        x = torch.randn(batch, 3, 64, 64)
        out = torch.from_numpy(sess.run(None, {"input": x.numpy()})[0])
        with torch.no_grad():
            ref = model(x)
        assert out.shape == (batch, 6)
        assert (out - ref).abs().max().item() <= 1e-4


@pytest.mark.slow
def test_onnx_metadata_and_opset(onnx_export):
    import onnx

    from mobilenet.deploy.export import read_onnx_metadata

    model, path = onnx_export
    proto = onnx.load(str(path))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["preprocessing"])["resolution"] == 64
    assert json.loads(props["class_names"])[5] == "c5"
    meta = read_onnx_metadata(path)
    assert meta["config"]["preset"] == model.config.preset and meta["config"]["num_classes"] == 6
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 64, 64]


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


def test_export_rejects_bad_arguments(tmp_path):
    model = _model("paper")
    with pytest.raises(ValueError, match="format"):
        export(model, tmp_path / "m.x", format="tflite")
    with pytest.raises(ValueError, match="calibration"):
        export(model, tmp_path / "m.onnx", format="onnx-int8")
    with pytest.raises(ValueError, match="opset"):
        export(model, tmp_path / "m.onnx", format="onnx", opset=13)
    with pytest.raises(TypeError, match="MobileNetV1"):
        export(nn.Linear(2, 2), tmp_path / "m.onnx")  # type: ignore[arg-type]


def test_cli_export(tmp_path, capsys):
    src = mobilenet.save(_model("tf"), tmp_path / "m.safetensors")
    out = tmp_path / "m.pt"
    assert main(["export", str(src), "--format", "torchscript", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "max abs difference" in text and "top-1 agreement 100%" in text
    assert main(["export", str(src), "--format", "onnx-int8", "-o", str(tmp_path / "q.onnx")]) == 2
    assert "--calib" in capsys.readouterr().err
    assert main(["export", str(src), "--opset", "16", "-o", str(tmp_path / "m.onnx")]) == 2
    assert "opset" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "none.safetensors"), "-o", str(out)]) == 2
    assert "not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["export", str(src), "--format", "tflite", "-o", str(out)])
