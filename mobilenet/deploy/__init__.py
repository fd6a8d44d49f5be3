"""Deployment: BN folding, int8 quantization, the static graph exports start from, and the time benchmark.

Each submodule stands alone; heavy or optional imports (``torch.ao.quantization``, ``onnx``,
``onnxruntime``, ``matplotlib``) happen inside the functions that need them.
"""

from .fold import fold_bn, load_folded, save_folded
from .static import StaticMobileNet, freeze_same_padding, static_model

__all__ = ["StaticMobileNet", "fold_bn", "freeze_same_padding", "load_folded", "save_folded", "static_model"]
