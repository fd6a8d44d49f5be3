"""MobileNet-SSD object detection: small parts (anchors, codec, matching, loss, NMS, metrics) and the SSD.

``mobilenet.load(path)`` rebuilds saved detectors (``mobilenet.checkpoint.LAZY_BUILDERS`` names ``build_ssd``).
"""

from .anchors import AnchorConfig, generate_anchors
from .codec import BoxCoder
from .postprocess import Detections, PostprocessConfig
from .ssd import SSD, SSDConfig, build_ssd

__all__ = ["SSD", "AnchorConfig", "BoxCoder", "Detections", "PostprocessConfig", "SSDConfig", "build_ssd",
           "generate_anchors"]
