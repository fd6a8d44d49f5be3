"""The README's deterministic tables are command output, not typed numbers: re-run each command and compare.

Blocks marked ``<!-- generated: mobilenet ... -->`` must equal the command's output today; measured results
(timings, accuracies) are marked ``<!-- measured: ... -->`` instead and are not re-run here.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from conftest import REPO

from mobilenet.cli import main

BLOCK = re.compile(r"<!-- generated: (mobilenet [^>]*?) -->\n(.*?)\n<!-- end generated -->", re.S)
BLOCKS = BLOCK.findall((REPO / "README.md").read_text())


def test_readme_has_generated_blocks() -> None:
    assert BLOCKS, "README.md lost its generated tables"


@pytest.mark.parametrize(("command", "text"), BLOCKS, ids=[c for c, _ in BLOCKS])
def test_generated_block_is_current(command: str, text: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(shlex.split(command)[1:]) == 0
    assert capsys.readouterr().out.strip() == text.strip(), f"README is stale: re-run `{command}` and paste"


def test_python_quickstart_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    readme = (REPO / "README.md").read_text()
    code = re.search(r"## Quickstart\n\n```python\n(.*?)```", readme, re.S)
    assert code, "README.md lost its Python quickstart"
    monkeypatch.chdir(tmp_path)  # it writes model.safetensors
    scope: dict = {}
    exec(compile(code.group(1), "README.md quickstart", "exec"), scope)
    assert scope["logits"].shape == (8, 10) and (tmp_path / "model.safetensors").is_file()


def test_pretrained_quickstart_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's pretrained snippet, against a cache built here from the shared TF Lite file (no network)."""
    from conftest import shared_file

    from mobilenet.hub import add

    readme = (REPO / "README.md").read_text()
    code = re.search(r"### Pretrained weights by name, as in timm and Keras\n\n```python\n(.*?)```", readme, re.S)
    assert code, "README.md lost its pretrained quickstart"
    tflite = shared_file("weights", "tflite", "mobilenet_v1_0.25_128_quant.tflite")
    photo = shared_file("imagenet", "images", "n01440764_tench.JPEG")
    monkeypatch.setenv("MOBILENET_CACHE", str(tmp_path / "cache"))
    add(tflite)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "photo.jpg").write_bytes(photo.read_bytes())
    scope: dict = {}
    exec(compile(code.group(1), "README.md pretrained quickstart", "exec"), scope)
    assert scope["x"].shape == (1, 3, 128, 128) and scope["config"]["input_size"] == (3, 128, 128)
    assert scope["top5"][0]["label"] == "n01440764" and len(scope["top5"]) == 5
    assert scope["tuned"].num_classes == 3
