"""Time table and grid: structure of the results (not the timings), interleaving, Pareto frontier, budgets, CLI."""

from __future__ import annotations

import json

import pytest
import torch

import mobilenet
from mobilenet.cli import main
from mobilenet.deploy.bench import format_result, run_bench, time_interleaved
from mobilenet.deploy.grid import GridRow, format_grid, pareto_front, pick_for_budget, plot_grid, run_grid


def test_time_interleaved_rotates_and_counts():
    calls: list[str] = []
    fns = {n: (lambda n=n: calls.append(n)) for n in "abc"}
    times = time_interleaved(fns, repeats=3, warmup=1)
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}
    assert calls[3:] == list("abc" "bca" "cab")  # after one warm-up call each, the order rotates every round
    calls.clear()
    times = time_interleaved(fns, repeats=2, warmup=0, min_sample_s=1.0)  # blocks: 100 calls per sample
    assert len(calls) == 3 + 2 * 3 * 100 and len(times["a"]) == 2
    with pytest.raises(ValueError, match="repeats"):
        time_interleaved(fns, repeats=0, warmup=0)


def test_run_bench_rows_and_recommendation():
    model = mobilenet.create_model("mobilenet_v1_025_128", resolution=64)
    result = run_bench(model, variants=["eager", "folded", "int8"], compile=False, repeats=2, warmup=1,
                       progress=False)
    got = {(r.device, r.pass_, r.variant) for r in result.rows}
    assert got == {("cpu", "forward", v) for v in ("eager", "folded", "int8")} | {("cpu", "forward-backward", "eager")}
    for r in result.rows:
        assert r.samples == 2 and r.p10_ms <= r.median_ms <= r.p90_ms and r.batch_size == 1
    eager = [r for r in result.rows if r.variant == "eager"]
    assert all(r.speedup == pytest.approx(1.0) for r in eager)
    assert result.recommended["cpu"] in ("eager", "folded")  # float paths only, never int8
    if not torch.cuda.is_available():
        assert result.skipped["cuda"] == "no CUDA device"
    text = format_result(result, "markdown")
    assert text.count("| cpu |") == 4 and "recommended float path on cpu" in text
    assert json.loads(format_result(result, "json"))["environment"]["threads"] >= 1


def test_run_bench_rejects_unknown_names():
    model = mobilenet.create_model("mobilenet_v1_025_128", resolution=64)
    with pytest.raises(ValueError, match="unknown variant"):
        run_bench(model, variants=["turbo"])
    with pytest.raises(ValueError, match="unknown device"):
        run_bench(model, devices=["tpu"])
    with pytest.raises(ValueError, match="batch_size"):
        run_bench(model, batch_size=0)


@pytest.mark.gpu
def test_cuda_rows_run():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    model = mobilenet.create_model("mobilenet_v1_025_128", resolution=64)
    result = run_bench(model, devices=["cuda"], compile=False, repeats=2, warmup=1, progress=False)
    variants = {r.variant for r in result.rows if r.pass_ == "forward"}
    assert {"eager", "fp16", "bf16", "cuda-graphs-fp16"} <= variants


def _row(name: str, ms: float, top1: float, macs: float = 100, params: float = 1.0) -> GridRow:
    return GridRow(name, 1.0, 224, macs, params, top1, ms, ms, ms)


def test_pareto_front_and_budgets():
    rows = [_row("fast", 1, 50, macs=10), _row("mid", 2, 60, macs=50), _row("dominated", 3, 55, macs=60),
            _row("slow", 4, 70, macs=500, params=4)]
    assert [r.name for r in pareto_front(rows)] == ["fast", "mid", "slow"]
    assert pick_for_budget(rows, budget_ms=3.5).name == "mid"
    assert pick_for_budget(rows, budget_ms=10).name == "slow"
    assert pick_for_budget(rows, budget_macs=55).name == "mid"
    assert pick_for_budget(rows, budget_params=2).name == "mid"
    assert pick_for_budget(rows, budget_ms=0.5) is None
    with pytest.raises(ValueError, match="at least one budget"):
        pick_for_budget(rows)
    with pytest.raises(ValueError, match="budget_ms"):
        pick_for_budget(rows, budget_ms=-1)
    assert "| fast |" in format_grid(rows, "markdown")


def test_run_grid_and_plot(tmp_path):
    names = ["mobilenet_v1_025_128", "mobilenet_v1_050_128"]
    rows = run_grid(names=names, repeats=2, warmup=0, progress=False)
    assert [r.name for r in rows] == names
    assert rows[0].top1 == 41.5 and rows[0].macs_m < rows[1].macs_m  # published top-1, counted MACs
    assert any(r.pareto for r in rows)
    pytest.importorskip("matplotlib")
    png = plot_grid(rows, tmp_path / "grid.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_bench(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "mobilenet_v1_025_128", "--device", "cpu", "--pass", "forward", "--variants",
                 "eager,folded", "--repeats", "2", "--warmup", "0", "--format", "markdown", "--out", str(out)]) == 0
    assert "| cpu | forward | folded |" in capsys.readouterr().out
    assert {r["variant"] for r in json.loads(out.read_text())["rows"]} == {"eager", "folded"}
    assert main(["bench", "--budget-ms", "3"]) == 2
    assert "needs --grid" in capsys.readouterr().err
    assert main(["bench", str(tmp_path / "missing.safetensors")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["bench", "--variants", "turbo"]) == 2  # checked by the library, which names the known variants
    assert "unknown variant" in capsys.readouterr().err
