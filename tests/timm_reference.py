"""Run timm's own ``mobilenetv1_*`` on random weights and save what it computed (the timm parity reference).

Run as a script in a child process by ``tests/test_convert_timm.py``::

    python tests/timm_reference.py OUT_DIR [--model mobilenetv1_100] [--resolution 224] [--seed 0]

It writes ``OUT_DIR/model.safetensors`` (timm's state dict, BN statistics randomized so they matter),
``OUT_DIR/io.safetensors`` (input ``x`` NCHW and timm's ``logits``) and ``OUT_DIR/pretrained_cfg.json``.
timm is imported through ``benchmarks/timm_peer.py``, which registers stand-ins for torchvision where it is not
installed; that is why this runs in its own process.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.timm_peer import import_timm  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--model", default="mobilenetv1_100")
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    timm = import_timm()
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(args.seed)
    model = timm.create_model(args.model, pretrained=False).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):  # timm's BatchNormAct2d subclasses it
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.1)
    x = torch.randn(2, 3, args.resolution, args.resolution)
    with torch.no_grad():
        logits = model(x)
    args.out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(args.out / "model.safetensors"))
    save_file({"x": x, "logits": logits}, str(args.out / "io.safetensors"))
    cfg = {k: v for k, v in model.pretrained_cfg.items() if isinstance(v, (str, int, float, list, tuple))}
    (args.out / "pretrained_cfg.json").write_text(json.dumps({"timm": timm.__version__, **cfg}, indent=1))


if __name__ == "__main__":
    main()
