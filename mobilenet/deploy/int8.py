"""A weights file to int8 end to end, measured: calibrate, quantize, save, compare with the float model.

:func:`quantize_file` is what ``mobilenet quantize`` runs: post-training static quantization (or QAT
fine-tuning) on the torch x86 kernels or ONNX Runtime (:mod:`mobilenet.deploy.quantize`), reusing the grids
a quantization-aware trained import recorded, then a before/after report: file size, batch-1 latency
(timed interleaved in one run) and top-1 (on labelled images) or the int8/float top-1 agreement.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable, Iterable
from typing import Any

import torch

from ..weights import weights_info


def _train_batches(source: str, model: Any, pre: Any, batch_size: int) -> Callable[[], Iterable[Any]]:
    """Labelled batches of ``source`` for QAT, labels mapped onto the model's classes by name."""
    from ..data import open_image_dataset
    from ..evaluate import label_map

    ds = open_image_dataset(source, transform=pre)
    mapping = torch.tensor(label_map(ds.class_names, weights_info(model).classes, model.num_classes))
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, drop_last=len(ds) > batch_size,
                                         generator=torch.Generator().manual_seed(0))
    return lambda: ((x, mapping[y]) for x, y in loader)


def quantize_file(weights: str, output: str | os.PathLike[str], calib: str, *, num_calib: int = 100,
                  backend: str | None = None, engine: str = "x86", observer: str = "minmax",
                  calibrated_ranges: bool = False, eval_data: str | None = None, num_eval: int | None = None,
                  qat: bool = False, train_data: str | None = None, epochs: int = 1, lr: float = 1e-4,
                  batch_size: int = 32, repeats: int = 30, threads: int | None = None,
                  progress: bool = True) -> dict[str, Any]:
    """Quantize ``weights`` (a file or a model name) to ``output`` and return the before/after report.

    ``backend``: ``torch`` (TorchScript ``.pt``) or ``onnxruntime`` (int8 ONNX), default from ``output``'s suffix.
    The report's keys: backend, engine, qat, output, calibration_images, recorded_grids (activation ranges and
    weight grids reused), size_mb, latency_ms, speedup, threads, top1_agreement, images, and top1 (fp32/int8)
    when ``eval_data`` is given.
    """
    from ..deploy.bench import num_threads, time_interleaved
    from ..deploy.calibration import load_images, load_labelled
    from ..deploy.loading import load_model
    from ..deploy.quantize import (
        quantize_ptq,
        quantize_qat,
        quantized_engine,
        recorded_grids,
        save_quantized,
    )
    from ..export.metadata import artifact_metadata
    from ..export.onnx import export_onnx_int8
    from ..preprocessing import Preprocessing
    from ..runtimes.onnxruntime import session as onnx_session

    backend = backend or ("onnxruntime" if str(output).endswith(".onnx") else "torch")
    if num_calib < 1:
        raise ValueError(f"--num-calib must be >= 1, got {num_calib}")
    if qat and (train_data is None or epochs < 1):
        raise ValueError("--qat needs --train DATA and --epochs >= 1")
    if qat and backend != "torch":
        raise ValueError("--qat is implemented for the torch backend (write a .pt file)")
    if repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {repeats}")
    model = load_model(weights)
    info = weights_info(model)
    pre = info.preprocessing or Preprocessing.imagenet(model.config.resolution)
    calib_x, _ = load_images(calib, pre, limit=num_calib)
    example = calib_x[:1]
    ranges, grids = ({}, {}) if calibrated_ranges else recorded_grids(model)

    if backend == "torch":
        if qat:
            q = quantize_qat(model, _train_batches(train_data, model, pre, batch_size),  # type: ignore[arg-type]
                             epochs=epochs, lr=lr, engine=engine, progress=progress)
        else:
            q = quantize_ptq(model, calib_x, engine=engine, observer=observer, use_recorded=not calibrated_ranges,
                             progress=progress)
        path = save_quantized(q, output, example, metadata=artifact_metadata(model))

        def int8(x: torch.Tensor) -> torch.Tensor:
            with quantized_engine(engine), torch.inference_mode():
                return q(x)
    else:
        # the int8 ONNX of `mobilenet export --format onnx-int8`: recorded grids, or per-channel symmetric
        # weights with bias correction when calibrated
        path = export_onnx_int8(model, output, calib_x, resolution=calib_x.shape[-1],
                                use_recorded=not calibrated_ranges)
        sess = onnx_session(path, threads=threads or torch.get_num_threads())
        name = sess.get_inputs()[0].name

        def int8(x: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(sess.run(None, {name: x.numpy()})[0])

    def fp32(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(x)

    if eval_data:
        xs, ys = load_labelled(eval_data, pre, num_classes=model.num_classes, class_names=info.classes,
                               limit=num_eval)
    else:
        xs, ys = calib_x, None
    ref = torch.cat([fp32(b) for b in xs.split(32)])
    out = torch.cat([int8(b) for b in xs.split(1 if backend == "torch" else 32)])
    with num_threads(threads):
        times = time_interleaved({"fp32": lambda: fp32(example), "int8": lambda: int8(example)},
                                 repeats=repeats, warmup=3, min_sample_s=0.02)
    float_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    report: dict[str, Any] = {
        "backend": backend, "engine": engine if backend == "torch" else "onnxruntime", "qat": qat,
        "output": str(path), "calibration_images": len(calib_x),
        "recorded_grids": {"activation_ranges": len(ranges), "weight_grids": len(grids)},
        "size_mb": {"fp32_state_dict": float_bytes / 1e6, "int8_file": os.path.getsize(path) / 1e6},
        "latency_ms": {k: statistics.median(v) * 1e3 for k, v in times.items()},
        "threads": threads or torch.get_num_threads(), "repeats": repeats,
        "top1_agreement": (out.argmax(1) == ref.argmax(1)).float().mean().item() * 100, "images": len(xs),
    }
    report["speedup"] = report["latency_ms"]["fp32"] / report["latency_ms"]["int8"]
    if ys is not None:
        report["top1"] = {"fp32": (ref.argmax(1) == ys).float().mean().item() * 100,
                          "int8": (out.argmax(1) == ys).float().mean().item() * 100}
    return report
