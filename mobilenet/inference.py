"""What goes into a classifier and what comes out, as its weights decide (the habits of Keras and timm).

* :func:`resolve_data_config`: the input contract of the weights as a dict in timm's keys (``input_size``,
  ``interpolation``, ``mean``, ``std``, ``crop_pct``) plus ours (``crop_mode``, ``channel_order``).
* :func:`preprocess`: images (files, PIL images, HWC arrays) -> the ``(N, 3, r, r)`` batch the model expects,
  with the preprocessing stored with its weights (Keras' ``preprocess_input`` plus resizing and cropping).
* :func:`decode_predictions`: logits -> per image the top classes with their label, readable name and
  probability (Keras' ``decode_predictions``), the entries ``mobilenet predict`` prints.

A model imported from TF Lite scales pixels to [-1, 1] with TF's central crop, a timm model uses bicubic
resizing, a model trained here ImageNet's mean and std: these helpers read that from ``model.weights_info``
(:mod:`mobilenet.weights`) instead of assuming one convention. A model without that record (built with
``create_model`` and no weights) gets ImageNet's convention at its resolution.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from .data.decode import read_image
from .preprocessing import Preprocessing
from .weights import weights_info

ImageLike = str | os.PathLike[str] | Image.Image | np.ndarray


def model_preprocessing(model: nn.Module) -> Preprocessing:
    """The preprocessing stored with the model's weights, else ImageNet's at the model's resolution."""
    pre = weights_info(model).preprocessing
    if pre is not None:
        return pre
    config = getattr(model, "config", None)
    return Preprocessing.imagenet(getattr(config, "resolution", 224))


def resolve_data_config(model: nn.Module) -> dict[str, Any]:
    """The model's input contract, as timm's ``resolve_data_config`` gives it: ``input_size`` (C, H, W),
    ``interpolation``, ``mean`` and ``std`` (on pixels scaled to [0, 1] as timm writes them, to 6 decimals),
    ``crop_pct``, plus ``crop_mode`` (``resize_crop``: timm's/PyTorch's resize then central crop;
    ``crop_resize``: TF's central crop then resize) and ``channel_order`` (``BGR`` for Caffe weights)."""
    pre = model_preprocessing(model)
    return {"input_size": (3, pre.resolution, pre.resolution), "interpolation": pre.interpolation,
            "mean": tuple(round(m / 255, 6) for m in pre.mean), "std": tuple(round(s / 255, 6) for s in pre.std),
            "crop_pct": pre.crop_fraction, "crop_mode": pre.crop_mode, "channel_order": pre.channel_order}


def _as_image(item: ImageLike) -> Image.Image:
    if isinstance(item, Image.Image):
        return item
    if isinstance(item, np.ndarray):
        if item.ndim != 3 or item.shape[-1] not in (1, 3, 4):
            raise ValueError(f"an image array must be (H, W, 3) pixels in 0..255 (Keras' layout), got shape "
                             f"{item.shape}")
        pixels = np.clip(np.rint(item), 0, 255).astype(np.uint8) if item.dtype != np.uint8 else item
        return Image.fromarray(pixels.squeeze(-1) if pixels.shape[-1] == 1 else pixels)
    if isinstance(item, (str, os.PathLike)):
        return read_image(item)  # EXIF orientation applied; a broken file is one ImageDecodeError naming it
    raise TypeError(f"expected an image file, a PIL image or an (H, W, 3) array, got {type(item).__name__}")


def preprocess(images: ImageLike | Sequence[ImageLike], model: nn.Module) -> torch.Tensor:
    """Images -> the float32 batch ``(N, 3, r, r)`` ``model`` expects, with its weights' own preprocessing.

    ``images``: one or a list of image files, PIL images or ``(H, W, 3)`` arrays of pixels in 0..255, or one
    ``(N, H, W, 3)`` array (Keras' layout). Each is resized, cropped and normalised exactly as ``mobilenet
    predict`` and ``mobilenet eval`` do.
    """
    pre = model_preprocessing(model)
    if isinstance(images, np.ndarray) and images.ndim == 4:
        items: Sequence[ImageLike] = list(images)
    elif isinstance(images, (str, os.PathLike, Image.Image, np.ndarray)):
        items = [images]
    else:
        items = list(images)
    if not items:
        raise ValueError("no images to preprocess")
    return torch.stack([pre(_as_image(item)) for item in items])


def class_names(model: nn.Module, num_outputs: int) -> list[str]:
    """The class ids stored with the weights (e.g. WordNet ids ``n01440764``), else the output indices."""
    names = weights_info(model).classes
    if names and len(names) == num_outputs:
        return list(names)
    return [str(i) for i in range(num_outputs)]


def readable_names(model: nn.Module, num_outputs: int) -> list[str] | None:
    """Human-readable class names (``weights_info.class_labels``, set by the importers: "tench, Tinca tinca"
    beside the id ``n01440764``), or None when the weights carry none for every output."""
    labels = weights_info(model).class_labels
    if isinstance(labels, list) and len(labels) == num_outputs:
        return [str(x) for x in labels]
    return None


def check_finite(logits: torch.Tensor, source: str = "the model") -> None:
    """Refuse non-finite outputs: NaN/inf logits mean broken weights (e.g. a diverged run), never a result."""
    if not bool(torch.isfinite(logits).all()):
        raise ValueError(f"{source} produced non-finite outputs (NaN or inf): its weights are broken, e.g. by a "
                         "training run that diverged")


def probabilities(outputs: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """Class probabilities of a classifier's outputs ``(N, classes)``: their softmax, or the outputs themselves for
    a deployed file that ends in its softmax (``outputs_probabilities``: a full-integer TF Lite file)."""
    x = outputs.float()
    return x if getattr(model, "outputs_probabilities", False) else x.softmax(dim=1)


def as_logits(outputs: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """A classifier's outputs as logits (what a cross-entropy and an argmax read): unchanged, or for a file that ends
    in its softmax the log of its probabilities (a quantized file's exact zeros kept finite at log(1e-12))."""
    x = outputs.float()
    return x.clamp_min(1e-12).log() if getattr(model, "outputs_probabilities", False) else x


def decode_predictions(logits: torch.Tensor | np.ndarray, model: nn.Module,
                       top: int = 5) -> list[list[dict[str, Any]]]:
    """Per image, the ``top`` classes by probability (:func:`probabilities` of ``logits``, ``(N, classes)`` or
    ``(classes,)``): ``{"label", "index", "prob"}`` and ``"name"`` where the weights carry readable names
    (``{"label": "n01440764", "name": "tench, Tinca tinca", "index": 1, "prob": 0.81}``)."""
    if top < 1:
        raise ValueError(f"top must be >= 1, got {top}")
    x = torch.as_tensor(logits).detach().float().cpu()
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2:
        raise ValueError(f"expected logits of shape (N, classes), got {tuple(x.shape)}")
    check_finite(x)
    labels, readable = class_names(model, x.shape[1]), readable_names(model, x.shape[1])
    probs, idx = probabilities(x, model).topk(min(top, x.shape[1]), dim=1)
    out = []
    for p_row, i_row in zip(probs.tolist(), idx.tolist(), strict=True):
        row = [{"label": labels[i], "index": i, "prob": p} for p, i in zip(p_row, i_row, strict=True)]
        if readable is not None:
            for entry in row:
                entry["name"] = readable[entry["index"]]
        out.append(row)
    return out


__all__ = ["check_finite", "class_names", "decode_predictions", "model_preprocessing", "preprocess",
           "readable_names", "resolve_data_config"]
