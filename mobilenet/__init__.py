"""MobileNet v1 for PyTorch (Howard et al. 2017): the public API.

The names below are imported on first use, so ``import mobilenet`` (and ``mobilenet --version`` or
``--help``) does not load PyTorch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {"load": "checkpoint", "save": "checkpoint", "decode_predictions": "inference", "preprocess": "inference",
            "resolve_data_config": "inference", "MobileNetConfig": "model", "MobileNetV1": "model",
            "Preprocessing": "preprocessing", "create_model": "zoo", "list_models": "zoo"}

__all__ = ["MobileNetConfig", "MobileNetV1", "Preprocessing", "create_model", "decode_predictions", "list_models",
           "load", "preprocess", "resolve_data_config", "save", "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value  # once: later lookups skip this function
        return value
    raise AttributeError(f"module 'mobilenet' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
