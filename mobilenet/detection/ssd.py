"""MobileNet-SSD: the TF Object Detection API's ``ssd_mobilenet_v1`` layout on a MobileNet v1 of any width.

Six feature maps (19, 10, 5, 3, 2, 1 at 300x300): the backbone's stride-16 and stride-32 outputs
(``Conv2d_11_pointwise`` and ``Conv2d_13_pointwise`` in TF names), then four extra blocks, each a
1x1 conv to half the depth and a 3x3 stride-2 conv to the full depth (512, 256, 256, 128, times
the width multiplier, at least 16). Each map has a box predictor and a class predictor (a 1x1 conv
with bias in TF's config; 3x3 optional). SSDLite (Sandler et al. 2018) makes the extra 3x3 convs and
the predictors depthwise separable.

The model only wires the parts: anchors (``anchors.py``), the codec (``codec.py``) and
post-processing (``postprocess.py``). ``forward`` returns raw (box offsets, class logits); ``detect``
returns decoded, NMS-ed detections. Anchors are made for the actual feature-map sizes of each input
size, so any input (e.g. wide KITTI frames) works.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ..model import MobileNetConfig, MobileNetV1, conv_bn_act
from .anchors import AnchorConfig, generate_anchors, num_anchors_per_location
from .codec import BoxCoder
from .postprocess import Detections, PostprocessConfig, postprocess

ARCHITECTURE = "ssd_mobilenet_v1"
EXTRA_DEPTHS = (512, 256, 256, 128)
MIN_DEPTH = 16  # TF's ssd_mobilenet_v1 feature extractor min_depth


@dataclass(frozen=True)
class SSDConfig:
    """Everything that rebuilds an SSD; travels inside its weights file.

    ``num_classes`` counts object classes (no background); the class predictor has one more column.
    ``image_size`` is the (height, width) the model is trained and run at.
    """

    num_classes: int = 90
    width_mult: float = 1.0
    image_size: tuple[int, int] = (300, 300)
    preset: str = "tf"
    ssdlite: bool = False
    head_kernel_size: int = 1
    extra_depths: tuple[int, ...] = EXTRA_DEPTHS
    min_depth: int = MIN_DEPTH
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    scale_factors: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    # input normalisation (pixels 0..255): TF's detectors see x / 127.5 - 1
    pixel_mean: tuple[float, float, float] = (127.5, 127.5, 127.5)
    pixel_std: tuple[float, float, float] = (127.5, 127.5, 127.5)
    # True: the anchors for ``image_size`` are a buffer in the weights (``anchor_table``), e.g. the
    # uint8-quantized constant of an imported detect.tflite, which its box predictors were run with
    anchors_in_weights: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.num_classes, int) or self.num_classes < 1:
            raise ValueError(f"num_classes must be an integer >= 1, got {self.num_classes!r}")
        size = tuple(int(s) for s in self.image_size)
        if len(size) != 2 or min(size) < 32:
            raise ValueError(f"image_size must be (height, width) with both >= 32, got {self.image_size!r}")
        if self.head_kernel_size not in (1, 3):
            raise ValueError(f"head_kernel_size must be 1 or 3, got {self.head_kernel_size!r}")
        object.__setattr__(self, "image_size", size)
        object.__setattr__(self, "extra_depths", tuple(int(d) for d in self.extra_depths))
        object.__setattr__(self, "scale_factors", tuple(float(s) for s in self.scale_factors))
        object.__setattr__(self, "pixel_mean", tuple(float(s) for s in self.pixel_mean))
        object.__setattr__(self, "pixel_std", tuple(float(s) for s in self.pixel_std))
        if isinstance(self.anchors, dict):
            object.__setattr__(self, "anchors", AnchorConfig.from_dict(self.anchors))
        if isinstance(self.postprocess, dict):
            object.__setattr__(self, "postprocess", PostprocessConfig.from_dict(self.postprocess))

    def depth(self, d: int) -> int:
        return max(int(d * self.width_mult), self.min_depth)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SSDConfig:
        return cls(**d)


def _extra_block(in_ch: int, depth: int, cfg: SSDConfig, bcfg: MobileNetConfig) -> nn.Sequential:
    """1x1 to depth/2 channels, then 3x3 stride 2 to depth channels (depthwise separable in SSDLite).

    Both widths go through ``cfg.depth`` (times alpha, at least 16), as TF's ``depth_fn``.
    """
    mid, out_ch = cfg.depth(depth // 2), cfg.depth(depth)
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    layers["reduce"] = conv_bn_act(in_ch, mid, kernel_size=1, stride=1, cfg=bcfg)
    if cfg.ssdlite:
        layers["dw"] = conv_bn_act(mid, mid, kernel_size=3, stride=2, groups=mid, cfg=bcfg)
        layers["pw"] = conv_bn_act(mid, out_ch, kernel_size=1, stride=1, cfg=bcfg)
    else:
        layers["conv"] = conv_bn_act(mid, out_ch, kernel_size=3, stride=2, cfg=bcfg)
    return nn.Sequential(layers)


def _predictor(in_ch: int, out_ch: int, cfg: SSDConfig, bcfg: MobileNetConfig) -> nn.Module:
    if cfg.ssdlite:
        return nn.Sequential(OrderedDict(
            dw=conv_bn_act(in_ch, in_ch, kernel_size=3, stride=1, groups=in_ch, cfg=bcfg),
            conv=nn.Conv2d(in_ch, out_ch, 1, bias=True),
        ))
    k = cfg.head_kernel_size
    return nn.Conv2d(in_ch, out_ch, k, padding=k // 2, bias=True)


def _in_channels(head: nn.Module) -> int:
    first = next(m for m in head.modules() if isinstance(m, nn.Conv2d))
    return first.in_channels


def _flatten(x: torch.Tensor, per_anchor: int) -> torch.Tensor:
    """(B, a*k, H, W) predictor output -> (B, H*W*a, k): row, column, anchor order (as the anchors)."""
    b = x.shape[0]
    return x.permute(0, 2, 3, 1).reshape(b, -1, per_anchor)


class SSD(nn.Module):
    """MobileNet v1 SSD (see module doc). Inputs are normalised images (B, 3, H, W)."""

    def __init__(self, config: SSDConfig | None = None) -> None:
        super().__init__()
        cfg = config or SSDConfig()
        self.config = cfg
        self.backbone = MobileNetV1(width_mult=cfg.width_mult, resolution=min(cfg.image_size), num_classes=0,
                                    preset=cfg.preset)  # type: ignore[arg-type]
        bcfg = self.backbone.config
        info = self.backbone.feature_info
        in_chs = [info[-2]["num_chs"], info[-1]["num_chs"]]
        extras = []
        for d in cfg.extra_depths:
            extras.append(_extra_block(in_chs[-1], d, cfg, bcfg))
            in_chs.append(cfg.depth(d))
        self.extras = nn.ModuleList(extras)
        self.num_anchors = num_anchors_per_location(cfg.anchors, len(in_chs))
        pairs = list(zip(in_chs, self.num_anchors, strict=True))
        self.box_heads = nn.ModuleList(_predictor(c, a * 4, cfg, bcfg) for c, a in pairs)
        self.cls_heads = nn.ModuleList(
            _predictor(c, a * (cfg.num_classes + 1), cfg, bcfg) for c, a in zip(in_chs, self.num_anchors, strict=True))
        self.coder = BoxCoder(cfg.scale_factors)
        self._anchor_cache: dict[tuple[Any, ...], torch.Tensor] = {}
        if cfg.anchors_in_weights:
            n = sum(h * w * a for (h, w), a in zip(self.feature_sizes(cfg.image_size), self.num_anchors, strict=True))
            self.register_buffer("anchor_table", torch.zeros(n, 4))  # (A, 4) cx, cy, w, h
        for head in [*self.box_heads, *self.cls_heads]:
            for m in head.modules():
                if isinstance(m, nn.Conv2d) and m.bias is not None:  # the predictor convs
                    nn.init.trunc_normal_(m.weight, std=0.03, a=-0.06, b=0.06)
                    nn.init.zeros_(m.bias)

    def reset_classes(self, num_classes: int) -> None:
        """New class predictors for ``num_classes`` (fine-tuning, e.g. COCO -> VOC); boxes and features kept."""
        from dataclasses import replace

        self.config = replace(self.config, num_classes=num_classes)
        bcfg = self.backbone.config
        device = next(self.parameters()).device
        in_chs = [_in_channels(h) for h in self.box_heads]
        self.cls_heads = nn.ModuleList(
            _predictor(c, a * (num_classes + 1), self.config, bcfg)
            for c, a in zip(in_chs, self.num_anchors, strict=True)
        ).to(device)
        for m in self.cls_heads.modules():
            if isinstance(m, nn.Conv2d) and m.bias is not None:
                nn.init.trunc_normal_(m.weight, std=0.03, a=-0.06, b=0.06)
                nn.init.zeros_(m.bias)

    def to_metadata(self) -> dict[str, Any]:
        """What ``mobilenet.checkpoint.save`` writes to rebuild this model."""
        return {"architecture": ARCHITECTURE, "config": self.config.to_dict()}

    def output_sources(self) -> tuple[list[str], list[str]]:
        """Names of the modules whose outputs ``forward`` concatenates into its box offsets and its class logits
        (e.g. for :mod:`mobilenet.tflite.fidelity`, which rounds each onto the concatenation's grid)."""
        return ([f"box_heads.{i}" for i in range(len(self.box_heads))],
                [f"cls_heads.{i}" for i in range(len(self.cls_heads))])

    def decoded(self, image_size: tuple[int, int] | None = None) -> DecodedSSD:
        """This network with its box decoding, for export at a fixed input size (default: the config's): a copy
        with the tf preset's SAME padding frozen to constant pads, the anchors baked in (see :class:`DecodedSSD`).
        Every export target (the network part of the ONNX export, TF Lite, ExecuTorch, OpenVINO, Core ML)
        exports this."""
        import copy

        from ..deploy.static import freeze_same_padding

        size = tuple(image_size or self.config.image_size)
        model = freeze_same_padding(copy.deepcopy(self).eval(), size)
        return DecodedSSD(model, size).eval()  # type: ignore[arg-type]

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) -> the six feature maps the predictors read."""
        stages = self.backbone.forward_stages(x)
        feats = [stages[-2], stages[-1]]
        for block in self.extras:
            feats.append(block(feats[-1]))
        return feats

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) -> box offsets (B, A, 4) and class logits (B, A, num_classes + 1)."""
        feats = self.feature_maps(x)
        self._remember_sizes(x, feats)
        k = self.config.num_classes + 1
        boxes = torch.cat([_flatten(h(f), 4) for h, f in zip(self.box_heads, feats, strict=True)], dim=1)
        logits = torch.cat([_flatten(h(f), k) for h, f in zip(self.cls_heads, feats, strict=True)], dim=1)
        return boxes, logits

    def _remember_sizes(self, x: torch.Tensor, feats: list[torch.Tensor]) -> None:
        key = tuple(x.shape[-2:])
        if ("sizes", key) not in self._anchor_cache:
            self._anchor_cache[("sizes", key)] = torch.tensor([f.shape[-2:] for f in feats])

    def feature_sizes(self, image_size: tuple[int, int]) -> list[tuple[int, int]]:
        """(height, width) of each feature map for an input of ``image_size``."""
        key = ("sizes", tuple(image_size))
        if key not in self._anchor_cache:
            was_training = self.training
            self.eval()  # a probe must not touch BatchNorm statistics (nor fail on 1x1 maps in training mode)
            with torch.no_grad():
                p = next(self.parameters())
                feats = self.feature_maps(torch.zeros(1, 3, *image_size, device=p.device, dtype=p.dtype))
            self.train(was_training)
            self._anchor_cache[key] = torch.tensor([f.shape[-2:] for f in feats])
        return [tuple(s) for s in self._anchor_cache[key].tolist()]

    def anchors(self, image_size: tuple[int, int] | None = None, device: torch.device | str | None = None
                ) -> torch.Tensor:
        """(A, 4) normalised cx, cy, w, h anchors for inputs of ``image_size`` (default: the config's)."""
        image_size = tuple(image_size or self.config.image_size)
        device = device or next(self.parameters()).device
        if self.config.anchors_in_weights and image_size == self.config.image_size:
            return self.anchor_table.to(device)
        key = ("anchors", image_size, str(device))
        if key not in self._anchor_cache:
            self._anchor_cache[key] = generate_anchors(self.config.anchors, self.feature_sizes(image_size),
                                                       image_size, device=device)
        return self._anchor_cache[key]

    @torch.no_grad()
    def detect(self, x: torch.Tensor, cfg: PostprocessConfig | None = None) -> list[Detections]:
        """(B, 3, H, W) normalised images -> per-image detections with normalised xyxy boxes."""
        box_pred, logits = self(x)
        anchors = self.anchors(tuple(x.shape[-2:]), device=x.device)
        return postprocess(box_pred, logits, anchors, self.coder, cfg or self.config.postprocess)


class DecodedSSD(nn.Module):
    """An SSD plus box decoding: (B, 3, H, W) -> decoded boxes (B, A, 4) normalised x1, y1, x2, y2 and class
    logits (B, A, C + 1), the anchors of one input size baked in as a buffer."""

    def __init__(self, model: SSD, image_size: tuple[int, int]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("anchors", model.anchors(image_size, device="cpu").clone())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        box_pred, logits = self.model(x)
        return self.model.coder.decode(box_pred, self.anchors), logits


def build_ssd(config: dict[str, Any] | SSDConfig) -> SSD:
    """Builder used by ``mobilenet.checkpoint.load`` for ``architecture == "ssd_mobilenet_v1"``."""
    return SSD(config if isinstance(config, SSDConfig) else SSDConfig.from_dict(config))
