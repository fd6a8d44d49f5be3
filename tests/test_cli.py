"""The command line: discovery, help, error handling (one line, exit 2, no traceback)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mobilenet.cli import build_parser, main


def test_help_lists_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for command in ("demo", "models"):
        assert command in out


def test_every_command_has_help() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():  # type: ignore[union-attr]
        assert p.format_help().strip(), name


def test_models_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "mobilenet_v1_050_*", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert list(data) == ["mobilenet_v1_050_224", "mobilenet_v1_050_192", "mobilenet_v1_050_160",
                          "mobilenet_v1_050_128"]
    assert data["mobilenet_v1_050_160"] == {"width_mult": 0.5, "resolution": 160}


def test_bad_flag_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["models", "--format", "xml"])
    assert e.value.code == 2
    assert "invalid choice: 'xml'" in capsys.readouterr().err


def test_no_command_lists_the_commands_in_one_line_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "choose a command: demo, models" in err and "--help" in err


def test_console_entry_point_runs_as_module() -> None:
    done = subprocess.run([sys.executable, "-m", "mobilenet", "--version"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("mobilenet ")
    bad = subprocess.run([sys.executable, "-m", "mobilenet", "no-such-command"], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
