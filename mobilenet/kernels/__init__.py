"""Triton GPU kernels for MobileNet v1's depthwise separable blocks, and the models that use them.

MobileNet v1 is memory-bound on a modern GPU: its convolutions do little arithmetic per byte, so the time
goes into moving activations through HBM. Two kernels attack that:

* :mod:`.dwpw` (inference): one kernel per depthwise separable block. The 3x3 depthwise conv (BN folded,
  activation applied) is computed tile by tile in registers and fed straight into the 1x1 pointwise matrix
  product (BN folded, activation in the epilogue), so the depthwise output never goes to memory.
* :mod:`.depthwise` (training): a depthwise 3x3 convolution with forward and both backward passes in
  Triton, channels_last, as a drop-in for the ``nn.Conv2d`` of each ``dw`` stage.

:mod:`.fast` builds the models: ``fused_inference_model(model)`` and ``use_triton_depthwise(model)``.
Everything falls back to plain PyTorch where a kernel does not apply. Triton is optional (it ships with CUDA
builds of PyTorch); without a GPU the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``), which is
how the tests check them against the PyTorch blocks on a CPU.
"""

from __future__ import annotations

import importlib.util
import os


def triton_available() -> bool:
    """Whether Triton is importable at all."""
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """Whether Triton kernels run in its CPU interpreter (``TRITON_INTERPRET=1``) instead of on a GPU."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def kernels_usable(device_type: str) -> bool:
    """Whether the kernels can run on tensors of ``device_type`` ("cuda", or "cpu" under the interpreter)."""
    if not triton_available():
        return False
    return device_type == "cuda" or (device_type == "cpu" and interpreting())
