"""The import graph of ``mobilenet/``: no circle, and every arrow points down the layers below.

Every ``import`` counts, also those inside functions (a lazy import is still a dependency). A module's
layer is that of the longest prefix listed in ``LAYERS``; a module may import its own layer and those
below it. A new top-level module or package needs a line here: that is the point where its place in
the design is decided.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mobilenet"

# Lowest first. Within a layer any arrow is allowed (the circle check still applies).
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundation: model, preprocessing, settings, pure file formats", (
        "mobilenet.model", "mobilenet.preprocessing", "mobilenet.config", "mobilenet.optim", "mobilenet.distributed",
        "mobilenet.published", "mobilenet.imagenet_classes", "mobilenet.weights", "mobilenet.strict_json",
        "mobilenet.table",
        "mobilenet.machine",
        "mobilenet.tflite", "mobilenet.tflite.flexbuffers", "mobilenet.tflite.format", "mobilenet.tflite.grid",
        "mobilenet.tflite.writer")),
    ("core: weights files, variants, cost, training state", (
        "mobilenet.checkpoint", "mobilenet.zoo", "mobilenet.profile", "mobilenet.train_state", "mobilenet.plots",
        "mobilenet.cache")),
    ("data, evaluation, prediction", ("mobilenet.data", "mobilenet.evaluate", "mobilenet.predict",
                                      "mobilenet.inference")),
    ("deployment: folding, int8, export, runtimes, TF Lite fidelity", (
        "mobilenet.deploy", "mobilenet.export", "mobilenet.runtimes", "mobilenet.kernels",
        "mobilenet.tflite.fidelity", "mobilenet.tflite.quantized")),
    ("detection: the SSD and its parts", ("mobilenet.detection",)),
    ("importers: foreign weights into our models", (
        "mobilenet.convert", "mobilenet.tflite.classifier", "mobilenet.tflite.ssd", "mobilenet.tflite.parity",
        "mobilenet.hub")),
    ("training: the engine and its tasks", ("mobilenet.recipe", "mobilenet.engine")),
    ("applications", ("mobilenet.video", "mobilenet.serve", "mobilenet.embed")),
    ("the public API", ("mobilenet",)),
    ("the command line", ("mobilenet.cli", "mobilenet.__main__")),
]


def _modules(package: Path) -> dict[str, Path]:
    mods = {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        mods[".".join(parts)] = path
    return mods


def import_graph() -> dict[str, set[str]]:
    """module -> the mobilenet modules it imports (``from a import b`` counts as ``a.b`` when that is a module)."""
    return {m: set(targets) for m, targets in _import_graph(PACKAGE).items()}


@functools.cache  # parsing every module takes seconds; the three checks below read the same files
def _import_graph(package: Path) -> dict[str, frozenset[str]]:
    mods = _modules(package)
    graph: dict[str, frozenset[str]] = {}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                targets.update(f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names)
        graph[name] = frozenset(t for t in targets if t in mods and t != name)
    return graph


def layer_of(module: str) -> int:
    best, found = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, found = len(p), i
    assert found is not None, f"{module} has no layer: add it to LAYERS in {Path(__file__).name}"
    return found


def test_every_module_has_a_layer():
    for module in import_graph():
        layer_of(module)


def test_no_upward_arrow():
    graph = import_graph()
    upward = sorted(f"{a} ({LAYERS[layer_of(a)][0]}) -> {b} ({LAYERS[layer_of(b)][0]})"
                    for a, targets in graph.items() for b in targets if layer_of(b) > layer_of(a))
    assert not upward, "imports pointing up the layers:\n" + "\n".join(upward)


def test_no_import_circle():
    graph = import_graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                return path[path.index(t):] + [t]
            if t not in state and (cycle := visit(t)):
                return cycle
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            raise AssertionError("import circle: " + " -> ".join(cycle))


def test_the_checker_sees_lazy_imports_and_circles(tmp_path, monkeypatch):
    # a function-level import is an arrow too, and a two-module circle is found
    pkg = tmp_path / "mobilenet"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "model.py").write_text("def f():\n    from .optim import g\n")
    (pkg / "optim.py").write_text("from mobilenet.model import f\n")
    monkeypatch.setattr(__import__(__name__, fromlist=["PACKAGE"]), "PACKAGE", pkg)
    graph = import_graph()
    assert graph["mobilenet.model"] == {"mobilenet.optim"} and graph["mobilenet.optim"] == {"mobilenet.model"}
    try:
        test_no_import_circle()
    except AssertionError as e:
        assert "mobilenet.model -> mobilenet.optim -> mobilenet.model" in str(e)
    else:
        raise AssertionError("the circle was not found")


def test_the_command_line_parses_without_loading_torch():
    # `mobilenet --version` / `--help` build every command's flags: none of that may import torch (seconds)
    import subprocess
    import sys

    code = ("import sys; from mobilenet.cli import build_parser; build_parser(); import mobilenet; "
            "print(mobilenet.__version__, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent, check=True)
    assert out.stdout.split()[1] == "False", out.stdout


def test_the_command_lines_copies_of_library_names_are_the_librarys():
    # copied so that building the parser loads no torch (the test above); kept equal here
    from mobilenet.cli.export import FORMATS as CLI_EXPORT_FORMATS
    from mobilenet.export import FORMATS

    assert CLI_EXPORT_FORMATS == FORMATS
