"""MobileNet v1 for PyTorch (Howard et al. 2017): the public API."""

from .checkpoint import load, save
from .inference import decode_predictions, preprocess, resolve_data_config
from .model import MobileNetConfig, MobileNetV1
from .preprocessing import Preprocessing
from .zoo import create_model, list_models

__version__ = "0.1.0"

__all__ = ["MobileNetConfig", "MobileNetV1", "Preprocessing", "create_model", "decode_predictions", "list_models",
           "load", "preprocess", "resolve_data_config", "save", "__version__"]
