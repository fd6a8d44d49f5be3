"""Every way to run a classifier on this CPU, as data: ours (PyTorch variants, and each export in its runtime) and
the peers a user would reach for without us. The time table (``mobilenet bench``), its ``--peers`` rows, the
CPU-runtimes benchmark and ``export --target cpu`` are all loops over :data:`PATHS`.

A path is built for one model, batch size and thread count (:func:`build`): the file is exported into a
folder and loaded in its runtime through :mod:`mobilenet.runtimes`, or the PyTorch variant is made. A
:class:`Built` path predicts logits (``predict``: for accuracy) and gives a call on a prepared input for timing
(``timed``: the runtime on its own input, so conversion to NHWC or uint8 is not timed, alike for every path).

Peers: ``peer-openvino`` is OpenVINO with its own defaults on our float ONNX file (bf16 on CPUs that have it),
what a user who takes our ONNX to OpenVINO gets; ``peer-openvino-nncf`` is what the same user gets from OpenVINO's
own int8 recipe (``nncf.quantize`` with its defaults on that ONNX, the same calibration images, compiled with the
plugin's defaults); ``peer-tflite`` is the TF Lite interpreter (XNNPACK) on Google's
own ``.tflite`` for the variant (where one is given); ``peer-timm`` and ``peer-timm-compile`` are timm's
``mobilenetv1_*`` for the same width (where timm has it), eager and ``torch.compile``d.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..model import MobileNetV1


@dataclass(frozen=True)
class DeployPath:
    """One way to run a model: ``format`` exported and run in ``runtime`` with ``options`` (or a PyTorch variant)."""

    name: str
    runtime: str
    format: str | None = None  # None: the PyTorch model itself (``variant`` says how)
    options: tuple[tuple[str, Any], ...] = ()
    precision: str = "float32"  # float32, bfloat16 or int8: what accuracy to expect
    peer: bool = False
    variant: str | None = None  # PyTorch: eager, folded, channels_last, compile, int8
    slow: bool = False  # takes tens of seconds to build (compilation): left out unless asked for
    export: tuple[tuple[str, Any], ...] = ()  # extra arguments of ``mobilenet.export.export`` (e.g. the int8 method)

    @property
    def reduced(self) -> bool:
        """Computes in less than float32 (int8, bf16): its accuracy must be checked before it is chosen."""
        return self.precision != "float32"


PATHS: dict[str, DeployPath] = {p.name: p for p in (
    DeployPath("eager", "torch", variant="eager"),
    DeployPath("folded", "torch", variant="folded"),
    DeployPath("channels_last", "torch", variant="channels_last"),
    DeployPath("compile", "torch", variant="compile", slow=True),
    DeployPath("int8", "torch", variant="int8", precision="int8"),
    DeployPath("onnxruntime", "onnxruntime", "onnx"),
    DeployPath("onnxruntime-int8", "onnxruntime", "onnx-int8", precision="int8"),
    DeployPath("openvino", "openvino", "openvino", (("precision", "f32"),)),
    DeployPath("openvino-bf16", "openvino", "openvino", (("precision", "bf16"),), precision="bfloat16"),
    DeployPath("openvino-int8", "openvino", "openvino-int8", (("precision", "f32"),), precision="int8"),
    DeployPath("openvino-int8-nncf", "openvino", "openvino-int8", (("precision", "f32"),), precision="int8",
               export=(("method", "nncf"),)),
    DeployPath("tflite", "tflite", "tflite"),
    DeployPath("executorch", "executorch", "executorch", slow=True),
    DeployPath("executorch-int8", "executorch", "executorch-int8", precision="int8", slow=True),
    DeployPath("peer-openvino", "openvino", "onnx", peer=True, precision="default"),
    DeployPath("peer-openvino-nncf", "openvino", "onnx", peer=True, precision="int8"),
    DeployPath("peer-tflite", "tflite", None, peer=True, precision="file"),
    DeployPath("peer-timm", "torch", variant="timm", peer=True),
    DeployPath("peer-timm-compile", "torch", variant="timm-compile", peer=True, slow=True),
)}
OURS = tuple(n for n, p in PATHS.items() if not p.peer)
PEERS = tuple(n for n, p in PATHS.items() if p.peer)
TIMM_WIDTHS = {1.0: "mobilenetv1_100", 1.25: "mobilenetv1_125"}  # timm's MobileNet v1 (its widths only)


class Unavailable(Exception):
    """A path that cannot run here (a runtime not installed, a CPU without bf16, no Google file): the reason."""


@dataclass
class Built:
    """A path ready to run: ``predict(x)`` -> logits for any batch; ``timed(x)`` -> a call on a prepared input."""

    path: DeployPath
    predict: Callable[[torch.Tensor], torch.Tensor]
    timed: Callable[[torch.Tensor], Callable[[], Any]]
    description: str
    file: Path | None = None

    def size_bytes(self) -> int | None:
        if self.file is None:
            return None
        from ..export import file_size

        return file_size(self.file)


def _inference(fn: Callable[[torch.Tensor], Any], *, grad: bool = False) -> Callable[[torch.Tensor], Any]:
    # torch.compile'd graphs are built under no_grad (inference_mode tensors cannot be captured into them)
    def call(x: torch.Tensor) -> Any:
        with torch.no_grad() if grad else torch.inference_mode():
            return fn(x)
    return call


def _torch_variant(model: MobileNetV1, path: DeployPath, calibration: torch.Tensor | None, folder: Path) -> Built:
    from .fold import fold_bn

    variant = path.variant
    describe = f"torch {torch.__version__}"
    file = None
    if variant == "eager":
        fn = _inference(model)
    elif variant == "folded":
        fn = _inference(fold_bn(model))
    elif variant == "channels_last":
        m = copy.deepcopy(model).to(memory_format=torch.channels_last)
        fn = _inference(lambda x: m(x.contiguous(memory_format=torch.channels_last)))
    elif variant == "compile":
        fn = _inference(torch.compile(fold_bn(model)), grad=True)
    elif variant == "int8":
        from ..export.metadata import artifact_metadata
        from .quantize import quantize_ptq, quantized_engine, save_quantized

        images = calibration if calibration is not None else torch.randn(8, *_input(model))
        q = quantize_ptq(model, images)
        engine = q.quantized_engine
        file = save_quantized(q, folder / "int8.pt", images[:1], metadata=artifact_metadata(model))

        def fn(x: torch.Tensor) -> Any:
            with quantized_engine(engine), torch.inference_mode():
                return q(x)
        describe += f" (int8, {engine})"
    elif variant in ("timm", "timm-compile"):
        fn = _timm(model, compiled=variant == "timm-compile")
        describe = f"timm {TIMM_WIDTHS[model.config.width_mult]}" + (" compiled" if variant == "timm-compile" else "")
    else:
        raise ValueError(f"unknown PyTorch variant {variant!r}")
    return Built(path, fn, lambda x: (lambda: fn(x)), describe, file)


def _timm(model: MobileNetV1, *, compiled: bool) -> Callable[[torch.Tensor], Any]:
    name = TIMM_WIDTHS.get(model.config.width_mult)
    if name is None:
        raise Unavailable(f"timm has no MobileNet v1 of width {model.config.width_mult}")
    try:  # benchmarks/timm_peer.py makes it importable without torchvision, before this runs
        import timm
    except ImportError as e:
        raise Unavailable(f"timm is not importable here ({e})") from None
    peer = timm.create_model(name, pretrained=False, num_classes=model.config.num_classes).eval()
    if compiled:
        return _inference(torch.compile(peer), grad=True)
    return _inference(peer)


def _input(model: nn.Module) -> tuple[int, int, int]:
    cfg = model.config
    return cfg.in_chans, cfg.resolution, cfg.resolution


def _exported(model: MobileNetV1, path: DeployPath, *, batch: int, threads: int, folder: Path,
              calibration: torch.Tensor | None, google_file: str | os.PathLike[str] | None) -> Built:
    from .. import runtimes
    from ..export import SUFFIXES, export

    reason = runtimes.available(path.runtime)
    if reason:
        raise Unavailable(reason)
    options = dict(path.options)
    if path.name == "peer-tflite":
        if google_file is None:
            raise Unavailable("no Google .tflite given for this variant")
        file = Path(google_file)
    elif path.name == "peer-openvino-nncf":
        onnx_file = folder / f"onnx{SUFFIXES['onnx']}"  # the float ONNX of the onnxruntime path, shared
        if not onnx_file.exists():
            export(model, onnx_file, format="onnx")
        file = nncf_defaults(onnx_file, calibration if calibration is not None else torch.randn(8, *_input(model)),
                             folder / "peer-nncf.xml")
    else:
        stem = path.name if path.export else path.format
        file = folder / f"{stem}{SUFFIXES[path.format]}"  # type: ignore[index]
        if not file.exists():  # a format shared by several paths (onnx, onnx-int8) is exported once
            kwargs: dict[str, Any] = dict(path.export)
            if path.format in ("tflite", "executorch", "executorch-int8"):
                kwargs["batch"] = batch
            if path.format.endswith("-int8"):  # type: ignore[union-attr]
                kwargs["calibration"] = calibration if calibration is not None else torch.randn(8, *_input(model))
            try:
                export(model, file, format=path.format, **kwargs)  # type: ignore[arg-type]
            except runtimes.RuntimeMissingError as e:
                raise Unavailable(str(e)) from None
    if options.get("precision") == "bf16":
        from ..runtimes.openvino import default_precision

        if default_precision() != "bf16":
            raise Unavailable("this CPU has no bf16 unit (OpenVINO computes in f32 here)")
    try:
        predictor = runtimes.load(file, runtime=path.runtime, threads=threads, **options)
    except ValueError as e:
        raise Unavailable(str(e)) from None

    def timed(x: torch.Tensor) -> Callable[[], Any]:
        fed = predictor.feed(x.detach().to("cpu", torch.float32))
        if predictor.input_shape[0] not in (None, len(x)):
            return lambda: predictor(x)  # a fixed-batch file of another size: chunked by the predictor
        return lambda: predictor.run(fed)

    def predict(x: torch.Tensor) -> torch.Tensor:
        out = predictor(x)
        return out[0] if isinstance(out, tuple) else out

    return Built(path, predict, timed, predictor.describe(), file)


def nncf_defaults(onnx_file: Path, calibration: torch.Tensor, file: Path) -> Path:
    """OpenVINO's int8 recipe as its documentation gives it, on a float ONNX file: ``read_model``,
    ``nncf.quantize`` with every setting at its default, ``save_model`` into ``file`` (kept when it exists).
    What a user does without us: the peer of our own int8 IRs (recorded grids and our choices on top)."""
    import contextlib
    import sys

    if file.exists():
        return file
    try:
        import nncf
        import openvino as ov
    except ImportError:
        raise Unavailable("OpenVINO's int8 recipe needs openvino and nncf: pip install 'mobilenet[openvino]'") from None
    dataset = nncf.Dataset([x[None].numpy() for x in calibration])
    with contextlib.redirect_stdout(sys.stderr):  # NNCF draws its progress on stdout
        quantized = nncf.quantize(ov.Core().read_model(str(onnx_file)), dataset, subset_size=len(calibration))
    ov.save_model(quantized, str(file))
    return file


def build(model: MobileNetV1, name: str, *, batch: int = 1, threads: int | None = None,
          folder: str | os.PathLike[str], calibration: torch.Tensor | None = None,
          google_file: str | os.PathLike[str] | None = None) -> Built:
    """Path ``name`` of :data:`PATHS` for ``model`` at ``batch`` images per call and ``threads`` (default: torch's);
    exports go into ``folder``. ``calibration``: images ``(N, C, H, W)`` for the int8 paths (default: random, which
    keeps speed and loses accuracy). Raises :class:`Unavailable` with the reason when it cannot run here."""
    if name not in PATHS:
        raise ValueError(f"unknown deployment path {name!r} (choose from {', '.join(PATHS)})")
    path = PATHS[name]
    model = model.eval()
    if path.format is None and path.name != "peer-tflite":
        return _torch_variant(model, path, calibration, Path(folder))
    return _exported(model, path, batch=batch, threads=threads or torch.get_num_threads(), folder=Path(folder),
                     calibration=calibration, google_file=google_file)
