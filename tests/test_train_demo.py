"""The demo's training step: bundled digits -> trained weights, evaluation, predictions, saved run."""

from __future__ import annotations

import pytest

from mobilenet.checkpoint import load


@pytest.mark.slow
def test_demo_training_step_trains_evaluates_and_predicts(tmp_path, capsys):
    from mobilenet.cli.demo import evaluate_and_predict, train_digits

    end = train_digits(tmp_path / "digits", epochs=2)
    res = evaluate_and_predict(tmp_path / "digits" / "last.safetensors", tmp_path, n_samples=3)
    out = capsys.readouterr().out
    assert "epoch  2:" in out and "evaluation of" in out and out.count("test") >= 3
    assert load(end["last"]).weights_info.classes == [str(d) for d in range(10)]
    assert res["count"] > 300 and 0 <= res["top1"] <= 100 and len(list((tmp_path / "samples").glob("*.png"))) == 3
    assert end["history"][1]["train_loss"] < end["history"][0]["train_loss"]
    assert (tmp_path / "digits" / "metrics.jsonl").is_file() and (tmp_path / "digits" / "curves.png").is_file()
