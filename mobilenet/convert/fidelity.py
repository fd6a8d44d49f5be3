"""Moved to :mod:`mobilenet.tflite.fidelity` (the TF Lite wing); this name keeps code written against it working."""

import warnings

from ..tflite.fidelity import add_activation_hooks, can_run_exact, recorded_activation_grids, uint8_activations
from ..tflite.grid import ActivationGrid

warnings.warn("mobilenet.convert.fidelity moved to mobilenet.tflite.fidelity", DeprecationWarning, stacklevel=2)

__all__ = ["ActivationGrid", "add_activation_hooks", "can_run_exact", "recorded_activation_grids", "uint8_activations"]
