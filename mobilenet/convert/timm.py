"""PyTorch state dicts of other MobileNet v1 implementations -> ours: timm and Hugging Face transformers.

* timm ``mobilenetv1_100`` (``efficientnet.py`` ``_gen_mobilenet_v1``: stages of 1, 2, 2, 6, 2 ``dsa``
  blocks, no skip): ``conv_stem``, ``bn1``, ``blocks.{stage}.{i}.{conv_dw,bn1,conv_pw,bn2}``,
  ``classifier`` (Linear). ReLU6, symmetric padding, BN eps 1e-5: our ``"timm"`` preset.
  ``mobilenetv1_100h`` adds a ``conv_head`` that MobileNet v1 does not have and is refused.
* Hugging Face ``MobileNetV1ForImageClassification`` (``google/mobilenet_v1_1.0_224``):
  ``mobilenet_v1.conv_stem.{convolution,normalization}``, ``mobilenet_v1.layer.{0..25}`` alternating
  depthwise / pointwise, ``classifier`` (Linear, 1001 classes). TF padding, ReLU6, eps 1e-3: our tf preset.

Files: ``.safetensors`` or a ``torch.save`` checkpoint read with ``weights_only=True`` (no code runs).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..model import LAYERS
from ..preprocessing import Preprocessing
from .imported import ConvUnit, Imported

TIMM_STAGES = (1, 2, 2, 6, 2)  # blocks per stage of timm's arch_def
TIMM_BN_EPS = 1e-5
HF_BN_EPS = 1e-3


# timm's eval crop per width where it is not the default 0.875 (default_cfgs in timm/models/efficientnet.py)
TIMM_CROP_FRACTION = {1.25: 0.9}


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or a ``torch.save``d state dict (unwrapping ``state_dict``/``model``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"state dict not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # pickle errors vary by torch version; report them as one line
            raise ValueError(f"{path} is not a readable PyTorch state dict ({type(e).__name__}: {e})") from None
        for key in ("state_dict", "model", "state_dict_ema"):
            if isinstance(state, dict) and key in state and isinstance(state[key], dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a flat dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _bn(state: dict[str, torch.Tensor], prefix: str, src: str) -> tuple[np.ndarray, ...]:
    out = []
    for name in ("weight", "bias", "running_mean", "running_var"):
        key = f"{prefix}.{name}"
        if key not in state:
            raise ValueError(f"{src}: missing {key!r}")
        out.append(state[key].float().numpy())
    return tuple(out)


def _get(state: dict[str, torch.Tensor], key: str, src: str) -> np.ndarray:
    if key not in state:
        raise ValueError(f"{src}: missing {key!r}")
    return state[key].float().numpy()


def _timm_units(state: dict[str, torch.Tensor], src: str) -> list[ConvUnit]:
    if "conv_head.weight" in state:
        raise ValueError(f"{src} has a conv_head (timm mobilenetv1_*h): not the paper's MobileNet v1 architecture")
    units = [ConvUnit("conv_stem", _get(state, "conv_stem.weight", src), _bn(state, "bn1", src), TIMM_BN_EPS)]
    for stage, n in enumerate(TIMM_STAGES):
        for i in range(n):
            p = f"blocks.{stage}.{i}"
            units.append(ConvUnit(f"{p}.conv_dw", _get(state, f"{p}.conv_dw.weight", src),
                                  _bn(state, f"{p}.bn1", src), TIMM_BN_EPS))
            units.append(ConvUnit(f"{p}.conv_pw", _get(state, f"{p}.conv_pw.weight", src),
                                  _bn(state, f"{p}.bn2", src), TIMM_BN_EPS))
    return units


def _hf_units(state: dict[str, torch.Tensor], src: str) -> list[ConvUnit]:
    p = "mobilenet_v1.conv_stem"
    units = [ConvUnit(p, _get(state, f"{p}.convolution.weight", src), _bn(state, f"{p}.normalization", src),
                      HF_BN_EPS)]
    for i in range(2 * len(LAYERS)):
        p = f"mobilenet_v1.layer.{i}"
        units.append(ConvUnit(p, _get(state, f"{p}.convolution.weight", src), _bn(state, f"{p}.normalization", src),
                              HF_BN_EPS))
    return units


def import_timm(path: str | os.PathLike[str], *, resolution: int | None = None) -> Imported:
    """Map a timm or Hugging Face MobileNet v1 state dict onto our layout."""
    src = Path(path).name
    state = load_state_dict(path)
    res = resolution or 224
    if "conv_stem.weight" in state:
        units, preset, layout = _timm_units(state, src), "timm", "timm"
        # timm's mobilenetv1_*.ra4_e3600_r224_in1k configs: inception mean/std (0.5), bicubic, crop by width
        crop = TIMM_CROP_FRACTION.get(units[-1].weight.shape[0] / 1024, 0.875)
        pre = Preprocessing(resolution=res, crop_fraction=crop, interpolation="bicubic", mean=(127.5,) * 3,
                            std=(127.5,) * 3)
    elif "mobilenet_v1.conv_stem.convolution.weight" in state:
        units, preset, layout = _hf_units(state, src), "tf", "huggingface"
        pre = Preprocessing(resolution=res, mean=(127.5,) * 3, std=(127.5,) * 3)  # resize 256, crop 224, [-1, 1]
    else:
        raise ValueError(f"{src}: neither a timm (conv_stem.weight) nor a Hugging Face "
                         f"(mobilenet_v1.conv_stem.convolution.weight) MobileNet v1; first keys: {sorted(state)[:3]}")
    cls_w = state["classifier.weight"].float().numpy() if "classifier.weight" in state else None
    cls_b = state["classifier.bias"].float().numpy() if "classifier.bias" in state else None
    return Imported(units=units, classifier_weight=cls_w, classifier_bias=cls_b, preset=preset, format="timm",
                    source=src, resolution=res, preprocessing=pre, extra={"layout": layout})
