"""timm, the peer every speed comparison here is made against, importable even where torchvision is not.

timm imports torchvision at module level, but only for data transforms and a frozen-BN helper that
``mobilenetv1_*`` never calls. Where torchvision is not installed (this project's CPU machines: its wheels pull a
CUDA torch), empty stand-in modules are registered first, so timm's model code runs unchanged. Where torchvision
is installed (a GPU machine) nothing is stubbed. Use it in a process of its own: the stand-ins stay registered.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType
from unittest import mock

TORCHVISION_MODULES = ("torchvision", "torchvision.ops", "torchvision.ops.misc", "torchvision.transforms",
                       "torchvision.transforms.functional", "torchvision.transforms.v2", "torchvision.datasets",
                       "torchvision.io", "torchvision.models")


def import_timm() -> ModuleType:
    """The ``timm`` package; raises ImportError (with the reason) where timm itself is not installed."""
    if importlib.util.find_spec("timm") is None:
        raise ImportError("timm is not installed (pip install --no-deps timm)")
    if importlib.util.find_spec("torchvision") is None:
        for name in TORCHVISION_MODULES:
            sys.modules.setdefault(name, mock.MagicMock(__name__=name))
    import timm

    return timm
