"""MobileNet-SSD object detection: small parts (anchors, codec, matching, loss, NMS, metrics) and the SSD.

Importing this package registers the ``ssd_mobilenet_v1`` builder with ``mobilenet.checkpoint`` so
``mobilenet.load(path)`` rebuilds saved detectors.
"""

from .. import checkpoint as _checkpoint
from .anchors import AnchorConfig, generate_anchors
from .codec import BoxCoder
from .postprocess import Detections, PostprocessConfig
from .ssd import ARCHITECTURE, SSD, SSDConfig, build_ssd

_checkpoint.BUILDERS.setdefault(ARCHITECTURE, build_ssd)

__all__ = ["SSD", "AnchorConfig", "BoxCoder", "Detections", "PostprocessConfig", "SSDConfig", "build_ssd",
           "generate_anchors"]
