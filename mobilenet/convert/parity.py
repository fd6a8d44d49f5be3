"""Compare an imported classifier with its source framework on real photos (used by tests and benchmarks).

The reference runtimes are optional: ``keras`` for Keras files (:func:`keras_outputs`), ``ai-edge-litert``
for ``.tflite`` files (:func:`mobilenet.tflite.parity.tflite_outputs`). Photos are named
``<wnid>_<anything>.JPEG`` (the shared ImageNet sample), so the label of each photo is its WordNet id;
1001-way TF outputs are mapped to the 1000 classes by dropping index 0.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..imagenet_classes import imagenet_wnids
from ..preprocessing import Preprocessing


def labelled_photos(folder: str | os.PathLike[str]) -> list[tuple[Path, int]]:
    """(path, ImageNet class index) for every ``<wnid>_*`` photo under ``folder``, sorted by name."""
    from ..predict import expand_inputs  # the one lister of image files

    index = {w: i for i, w in enumerate(imagenet_wnids())}
    out = []
    for p in expand_inputs([os.fspath(folder)]):
        wnid = p.name.split("_", 1)[0]
        if wnid not in index:
            raise ValueError(f"{p.name}: file name does not start with an ImageNet WordNet id")
        out.append((p, index[wnid]))
    return out


def photo_pixels(paths: list[Path], pre: Preprocessing) -> np.ndarray:
    """(N, R, R, 3) uint8 RGB crops, exactly what both runtimes are fed (geometry from ``pre``)."""
    return np.stack([np.asarray(pre.crop_and_resize(Image.open(p)), dtype=np.uint8) for p in paths])


def torch_logits(model: torch.nn.Module, pixels: np.ndarray, pre: Preprocessing, batch: int = 50) -> np.ndarray:
    """Our model's outputs for uint8 NHWC pixels, normalised by ``pre``."""
    outs = []
    with torch.no_grad():
        for i in range(0, len(pixels), batch):
            x = pre.normalize(torch.from_numpy(pixels[i:i + batch]).permute(0, 3, 1, 2))
            outs.append(model(x).float().numpy())
    return np.concatenate(outs)


def keras_outputs(path: str | os.PathLike[str], model: torch.nn.Module, x: torch.Tensor, *,
                  float64: bool = False) -> np.ndarray:
    """Keras' own ``keras.applications.MobileNet`` with the weights in ``path``, run on NCHW ``x``.

    Built to ``model``'s configuration (alpha, resolution, classes; no top when it has no classes) and
    returned NHWC: logits for a classifier, the last feature map otherwise. Keras must run on the torch
    backend (``KERAS_BACKEND=torch``). With ``float64`` the whole network runs in float64: Keras' dtype
    promotion follows ``jnp.result_type`` without x64 (float64 with float32 gives float32), so its
    BatchNormalization would compute a float64 input in float32; that promotion is widened while the
    model is built and run, and Keras' global float type and dtype policy are restored afterwards.
    """
    os.environ.setdefault("KERAS_BACKEND", "torch")
    try:
        import keras
        from keras.src import backend as keras_backend
    except ImportError:
        raise ImportError("the Keras reference needs keras and h5py: pip install keras h5py") from None
    if keras.backend.backend() != "torch":
        raise RuntimeError(f"the Keras reference runs on the torch backend, not {keras.backend.backend()}")
    cfg = model.config
    floatx, policy, result_type = keras.config.floatx(), keras.config.dtype_policy(), keras_backend.result_type

    def widened(*dtypes: object) -> str:
        return "float64" if any("float64" in str(d) for d in dtypes) else result_type(*dtypes)

    try:
        if float64:
            keras.config.set_floatx("float64")
            keras.config.set_dtype_policy("float64")
            keras_backend.result_type = widened
        km = keras.applications.MobileNet(
            input_shape=(cfg.resolution, cfg.resolution, 3), alpha=cfg.width_mult, weights=None,
            include_top=cfg.num_classes > 0, classes=max(cfg.num_classes, 1), classifier_activation=None)
        km.load_weights(str(path))
        y = km(x.to(torch.float64 if float64 else torch.float32).permute(0, 2, 3, 1).numpy())
        return keras.ops.convert_to_numpy(y)
    finally:
        keras.config.set_floatx(floatx)
        keras.config.set_dtype_policy(policy)
        keras_backend.result_type = result_type


@dataclass(frozen=True)
class Agreement:
    n: int
    ref_top1: float
    ref_top5: float
    ours_top1: float
    ours_top5: float
    # fraction of photos where our top-1 class is a top-1 class of the reference. A uint8 reference (TF Lite's
    # quantized softmax, steps of 1/256) can tie several classes for first place: any of them is its top-1.
    top1_agreement: float


def _topk(scores: np.ndarray, k: int) -> np.ndarray:
    # stable: ties keep the lower index first, like np.argmax
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def compare(ref: np.ndarray, ours: np.ndarray, labels: list[int]) -> Agreement:
    """Top-1/top-5 of both against ``labels`` (1000-class indices) and their top-1 agreement."""
    if ref.shape != ours.shape:
        raise ValueError(f"reference outputs {ref.shape} and ours {ours.shape} differ in shape")
    offset = 1 if ref.shape[1] == 1001 else 0  # TF's background class at index 0
    y = np.asarray(labels) + offset
    r5, o5 = _topk(ref, 5), _topk(ours, 5)
    return Agreement(
        n=len(labels),
        ref_top1=float(np.mean(r5[:, 0] == y)), ref_top5=float(np.mean((r5 == y[:, None]).any(1))),
        ours_top1=float(np.mean(o5[:, 0] == y)), ours_top5=float(np.mean((o5 == y[:, None]).any(1))),
        top1_agreement=float(np.mean(ref[np.arange(len(ref)), o5[:, 0]] == ref.max(axis=1))))
