"""Where our int8 OpenVINO file spends its time: OpenVINO's per-node profile (``PERF_COUNT``), one thread, batch 1.

Exports a variant (random weights: time does not depend on them) to ``openvino-int8`` with the given method,
runs it with profiling on, and prints the time per node type and kernel with its share, and the pointwise
(1x1) convolutions' MAC rate: how close they run to the CPU's int8 peak, so how much any other layer can still
give (the README's "The fastest MobileNet on this CPU").

    python benchmarks/openvino_profile.py [mobilenet_v1_100_224] [--method nncf|qdq] [--runs 200]
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def pointwise_macs(model: torch.nn.Module, size: int) -> int:
    """Multiply-accumulates of the model's 1x1 convolutions for one image."""
    total = 0

    def hook(m: torch.nn.Conv2d, _: object, out: torch.Tensor) -> None:
        nonlocal total
        total += out.shape[2] * out.shape[3] * m.in_channels * m.out_channels // m.groups

    hooks = [m.register_forward_hook(hook) for m in model.modules()
             if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1)]
    with torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    for h in hooks:
        h.remove()
    return total


def main() -> None:
    import openvino as ov

    from mobilenet import create_model
    from mobilenet.export import export

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("variant", nargs="?", default="mobilenet_v1_100_224")
    ap.add_argument("--method", choices=("nncf", "qdq"), default="nncf")
    ap.add_argument("--runs", type=int, default=200)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = create_model(args.variant).eval()
    size = model.config.resolution
    with tempfile.TemporaryDirectory() as tmp:
        path = export(model, Path(tmp) / "m.xml", format="openvino-int8", method=args.method,
                      calibration=torch.randn(8, 3, size, size))
        core = ov.Core()
        m = core.read_model(str(path))
        if m.inputs[0].get_partial_shape().is_dynamic:
            m.reshape([1, 3, size, size])
        compiled = core.compile_model(m, "CPU", {"PERF_COUNT": True, "INFERENCE_NUM_THREADS": 1, "NUM_STREAMS": 1,
                                                 "INFERENCE_PRECISION_HINT": "f32"})
    req = compiled.create_infer_request()
    x = np.random.default_rng(0).standard_normal((1, 3, size, size), dtype=np.float32)
    for _ in range(50):
        req.infer({0: x})
    per_kind: dict[tuple[str, str], float] = collections.defaultdict(float)
    pointwise_us = 0.0
    for _ in range(args.runs):
        req.infer({0: x})
        for p in req.profiling_info:
            if p.status == p.Status.EXECUTED:
                us = p.real_time.total_seconds() * 1e6 / args.runs
                per_kind[(p.node_type, p.exec_type)] += us
                if p.node_type == "Convolution" and "1x1" in p.exec_type:
                    pointwise_us += us
    total = sum(per_kind.values())
    print(f"{args.variant} openvino-int8 ({args.method}), 1 thread, batch 1: {total:.0f} us per image "
          f"(sum of node times, mean of {args.runs} runs)")
    for (node, kernel), us in sorted(per_kind.items(), key=lambda kv: -kv[1])[:12]:
        print(f"{us:8.1f} us {100 * us / total:5.1f} %  {node} ({kernel})")
    macs = pointwise_macs(model, size)
    print(f"1x1 convolutions (their 1x1 kernels): {100 * pointwise_us / total:.0f} % of "
          f"the time, {macs / 1e6:.0f} M MACs at {macs / pointwise_us / 1e3:.0f} GMAC/s")


if __name__ == "__main__":
    main()
