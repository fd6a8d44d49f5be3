"""timm, the peer every speed comparison here is made against, importable even where torchvision is not.

timm imports torchvision at module level, but only for data transforms and a frozen-BN helper that
``mobilenetv1_*`` never calls. Where torchvision is not installed (this project's CPU machines: its wheels pull a
CUDA torch), empty stand-in modules are registered first, so timm's model code runs unchanged. Where torchvision
is installed (a GPU machine) nothing is stubbed. Use it in a process of its own: the stand-ins stay registered.

Where is timm? An installed ``timm`` wins. Otherwise the copy ``make test`` puts beside the venv's packages,
``<venv>/timm-reference`` (``pip install --no-deps --target``), or the folder ``$MOBILENET_TIMM_PATH`` names, is
put on ``sys.path`` here only: installing timm into site-packages without torchvision would leave a venv where
``import timm`` fails for everyone, while this copy is seen only by the parity test and the benchmarks.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from unittest import mock

TORCHVISION_MODULES = ("torchvision", "torchvision.ops", "torchvision.ops.misc", "torchvision.transforms",
                       "torchvision.transforms.functional", "torchvision.transforms.v2", "torchvision.datasets",
                       "torchvision.io", "torchvision.models")


REFERENCE_DIR = "timm-reference"  # under sys.prefix (the venv): where `make test` installs timm's model code


def reference_path() -> Path | None:
    """The folder holding a ``timm`` package outside site-packages (``$MOBILENET_TIMM_PATH`` or
    ``<venv>/timm-reference``), or None."""
    for folder in (os.environ.get("MOBILENET_TIMM_PATH"), Path(sys.prefix) / REFERENCE_DIR):
        if folder and (Path(folder) / "timm" / "__init__.py").is_file():
            return Path(folder)
    return None


def timm_available() -> bool:
    """Whether :func:`import_timm` can find timm (installed, or the reference copy)."""
    return importlib.util.find_spec("timm") is not None or reference_path() is not None


def import_timm() -> ModuleType:
    """The ``timm`` package; raises ImportError (with the reason) where timm itself is not installed."""
    if importlib.util.find_spec("timm") is None:
        folder = reference_path()
        if folder is None:
            raise ImportError(f"timm is not installed: `make test` puts its model code in "
                              f"{Path(sys.prefix) / REFERENCE_DIR} (pip install --no-deps --target <that folder> "
                              f"timm==1.0.31), or set MOBILENET_TIMM_PATH to a folder holding timm")
        sys.path.insert(0, str(folder))
    if importlib.util.find_spec("torchvision") is None:
        for name in TORCHVISION_MODULES:
            sys.modules.setdefault(name, mock.MagicMock(__name__=name))
    import timm

    return timm
