"""Deployment paths as data, the time table's runtime and peer rows, a deployed file timed in its runtime, and the
CPU target choice (`bench --recommend`, `export --target cpu`): int8 only when faster and as accurate."""

from __future__ import annotations

import json

import pytest
import torch

import mobilenet
from mobilenet import runtimes
from mobilenet.cli import main
from mobilenet.deploy.bench import bench_file, run_bench
from mobilenet.deploy.paths import OURS, PATHS, PEERS, Unavailable, build
from mobilenet.deploy.target import Candidate, _choose, split_held_out, target_images


def _model() -> mobilenet.MobileNetV1:
    model = mobilenet.create_model("mobilenet_v1_025_128", preset="tf", resolution=64, num_classes=10).train()
    with torch.no_grad():
        model(torch.randn(16, 3, 64, 64))
    return model.eval()


def _c(name: str, precision: str, ms: float, top1: float | None, agree: float = 100.0) -> Candidate:
    return Candidate(name, precision, name, ms, ms, ms, top1, agree)


def test_the_choice_rules():
    rows = [_c("onnxruntime", "float32", 2.0, 70.0), _c("eager", "float32", 5.0, 70.0),
            _c("onnxruntime-int8", "int8", 1.0, 69.2, 95), _c("openvino-int8", "int8", 0.8, 68.5, 90)]
    name, why = _choose(rows, 1.0, 99.0, labelled=True)
    assert name == "onnxruntime-int8" and "2.00x the fastest float path (onnxruntime)" in why
    assert "loses 1.5 points" in rows[3].verdict  # the fastest, but not accurate enough
    rows = [_c("onnxruntime", "float32", 1.0, 70.0), _c("int8", "int8", 1.5, 70.0)]
    name, why = _choose(rows, 1.0, 99.0, labelled=True)
    assert name == "onnxruntime" and "slower than float" in rows[1].verdict and "no reduced-precision" in why
    rows = [_c("tflite", "float32", 1.0, None), _c("openvino-bf16", "bfloat16", 0.5, None, 98.0)]
    assert _choose(rows, 1.0, 99.0, labelled=False)[0] == "tflite"  # unlabelled: 98% agreement is not enough
    rows[1].agreement = 99.5
    assert _choose(rows, 1.0, 99.0, labelled=False)[0] == "openvino-bf16"


def test_held_out_images_never_calibrate():
    x, y = torch.arange(10.0).view(10, 1, 1, 1), torch.arange(10)
    calib, held, labels = split_held_out(x, y)
    assert set(calib.flatten().tolist()).isdisjoint(held.flatten().tolist()) and labels.tolist() == [1, 3, 5, 7, 9]
    with pytest.raises(ValueError, match="at least 2"):
        split_held_out(x[:1], None)


def test_paths_are_data():
    assert set(OURS) | set(PEERS) == set(PATHS) and "eager" in OURS and "peer-openvino" in PEERS
    assert PATHS["openvino-int8"].reduced and not PATHS["tflite"].reduced
    with pytest.raises(Unavailable, match="no Google .tflite"):
        build(_model(), "peer-tflite", folder=".")
    with pytest.raises(Unavailable, match="timm has no MobileNet v1 of width 0.25"):
        build(_model(), "peer-timm", folder=".")


@pytest.mark.slow
def test_time_table_has_a_row_per_runtime_and_peers(tmp_path):
    pytest.importorskip("openvino")
    pytest.importorskip("onnxruntime")
    result = run_bench(_model(), devices=["cpu"], passes=["forward"], compile=False, peers=True, repeats=2, warmup=0,
                       progress=False, variants=["eager", "onnxruntime", "openvino", "openvino-int8", "peer-openvino"])
    rows = {r.variant: r for r in result.rows}
    assert set(rows) == {"eager", "onnxruntime", "openvino", "openvino-int8", "peer-openvino"}
    assert rows["openvino-int8"].dtype == "int8" and rows["openvino"].dtype == "float32"
    assert result.environment["openvino"] and result.recommended["cpu"] in ("eager", "onnxruntime", "openvino")
    path = mobilenet.export.export(_model(), tmp_path / "m.onnx", format="onnx")
    timed = bench_file(str(path), batch_size=2, repeats=2, warmup=0, progress=False)
    assert [r.variant for r in timed.rows] == ["onnxruntime"] and timed.rows[0].batch_size == 2
    assert "onnxruntime" in timed.environment["runtime:onnxruntime"]


@pytest.mark.slow
def test_recommend_and_export_target_cpu(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    model = _model()
    images, labels = target_images(model, "digits#test", limit=40, progress=False)
    assert labels is not None and len(images) == 40
    src = mobilenet.save(model, tmp_path / "m.safetensors")
    out = tmp_path / "deploy"
    # refused before any work
    assert main(["export", str(src), "--target", "cpu", "-o", str(out)]) == 2
    assert "--calib" in capsys.readouterr().err
    assert main(["export", str(src), "--target", "cpu", "--calib", "digits#test", "-o", str(tmp_path / "x.onnx")]) == 2
    assert "folder" in capsys.readouterr().err
    # one recommend_cpu run (its exports take the time), through the command that writes its choice
    assert main(["export", str(src), "--target", "cpu", "--calib", "digits#test", "--num-calib", "40",
                 "--paths", "eager,folded,onnxruntime,onnxruntime-int8", "-o", str(out), "--threads", "1"]) == 0
    text = capsys.readouterr().out
    record = json.loads((out / "target.json").read_text())
    candidates = {c["name"]: c for c in record["candidates"]}
    assert record["held_out"] == 20 and record["threads"] == 1
    assert set(candidates) == {"eager", "folded", "onnxruntime", "onnxruntime-int8"}
    floats = [c for c in candidates.values() if c["precision"] == "float32"]
    # never slower than the fastest float path
    assert candidates[record["choice"]]["median_ms"] <= min(c["median_ms"] for c in floats)
    assert candidates["eager"]["agreement"] == 100.0 and candidates["eager"]["top1"] is not None
    assert f"chosen: {record['choice']}" in text and record["written"].startswith(str(out))
    predictor = runtimes.load(record["written"])  # the file written runs, and carries the model's metadata
    assert predictor(images[:2]).shape == (2, 10)


@pytest.mark.slow
def test_cpu_runtimes_benchmark_runs_on_tiny_settings(tmp_path):
    pytest.importorskip("onnxruntime")
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, str(repo / "benchmarks" / "cpu_runtimes.py"), "--tiny", "--paths",
                           "eager,onnxruntime,onnxruntime-int8,peer-openvino", "--json", str(out)],
                          capture_output=True, text=True, cwd=repo, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (result,) = json.loads(out.read_text())
    rows = result["variants"]["mobilenet_v1_025_128@1"]["rows"]
    assert {"eager", "onnxruntime", "onnxruntime-int8"} <= set(rows) and result["threads"] == 1
    assert "| path | precision | median ms |" in proc.stdout and "thread(s):" in proc.stdout
