"""The Triton kernels against the plain PyTorch blocks they replace.

Without a GPU the kernels run in Triton's CPU interpreter (TRITON_INTERPRET=1, set here before Triton is
imported), which executes the same kernel code; with a GPU the same tests run on it. Shapes are small (the
interpreter is slow) but cover every case the kernels branch on: stride 1 and 2, odd and even sizes,
symmetric and TF "SAME" padding, ReLU and ReLU6, channel counts that are not multiples of the tiles,
pixel tiles that straddle images.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch
import torch.nn.functional as F

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton", reason="Triton is not installed (pip install triton)")

from mobilenet.deploy.fold import fold_bn  # noqa: E402
from mobilenet.kernels import kernels_usable  # noqa: E402
from mobilenet.kernels.depthwise import depthwise3x3  # noqa: E402
from mobilenet.kernels.dwpw import dwpw  # noqa: E402
from mobilenet.kernels.fast import (  # noqa: E402
    TritonDepthwiseConv2d,
    count_fused,
    fused_inference_model,
    use_triton_depthwise,
)
from mobilenet.model import MobileNetV1  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CASES = [  # (batch, channels, out channels, h, w, stride, pads (top, left, bottom, right), relu6)
    (2, 8, 24, 7, 9, 1, (1, 1, 1, 1), False),
    (1, 40, 20, 8, 8, 2, (0, 0, 1, 1), True),  # TF SAME at stride 2 on an even input
    (3, 16, 48, 5, 6, 2, (1, 1, 1, 1), True),
    (1, 33, 70, 9, 7, 1, (1, 1, 1, 1), True),
]


def _randomise_bn(model: torch.nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)


def _reference_block(x, w_dw, b_dw, w_pw, b_pw, stride, pads, relu6):
    top, left, bottom, right = pads
    act = (lambda t: t.clamp(0, 6)) if relu6 else F.relu
    d = act(F.conv2d(F.pad(x, (left, right, top, bottom)), w_dw, b_dw, stride, groups=x.shape[1]))
    return act(F.conv2d(d, w_pw, b_pw))


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"c{c[1]}-s{c[5]}-{c[3]}x{c[4]}")
def test_fused_block_matches_pytorch(case):
    n, c, cout, h, w, stride, pads, relu6 = case
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, h, w, generator=g).to(DEVICE).contiguous(memory_format=torch.channels_last)
    w_dw, b_dw = torch.randn(c, 1, 3, 3, generator=g).to(DEVICE), torch.randn(c, generator=g).to(DEVICE)
    w_pw = (torch.randn(cout, c, 1, 1, generator=g) / c**0.5).to(DEVICE)
    b_pw = torch.randn(cout, generator=g).to(DEVICE)
    out = dwpw(x, w_dw, b_dw, w_pw, b_pw, stride=stride, pads=pads, relu6=relu6)
    ref = _reference_block(x, w_dw, b_dw, w_pw, b_pw, stride, pads, relu6)
    assert out.shape == ref.shape and out.is_contiguous(memory_format=torch.channels_last)
    # float32 everywhere (tf32 for the GPU's matrix product): exact up to summation order
    tol = 2e-3 if DEVICE == "cuda" else 1e-4
    assert (out - ref).abs().max().item() <= tol * ref.abs().max().item()


def test_fused_block_half_precision():
    # fp16 operands for the matrix product (bf16 is what a GPU runs; the CPU interpreter cannot do bf16 dots)
    n, c, cout, h, w = 2, 32, 64, 10, 10
    x = torch.randn(n, c, h, w).to(DEVICE).contiguous(memory_format=torch.channels_last)
    w_dw, b_dw = torch.randn(c, 1, 3, 3).to(DEVICE), torch.randn(c).to(DEVICE) * 0.1
    w_pw, b_pw = (torch.randn(cout, c, 1, 1) / c**0.5).to(DEVICE), torch.randn(cout).to(DEVICE) * 0.1
    ref = _reference_block(x, w_dw, b_dw, w_pw, b_pw, 1, (1, 1, 1, 1), True)
    out = dwpw(x.half(), w_dw.half(), b_dw.half(), w_pw.half(), b_pw.half(), stride=1, pads=(1, 1, 1, 1), relu6=True)
    assert out.dtype == torch.float16
    assert (out.float() - ref).abs().max().item() <= 1e-2 * ref.abs().max().item()


@pytest.mark.parametrize("preset,resolution", [("paper", 32), ("tf", 32), ("timm", 33)])
def test_fused_model_matches_eval_model(preset, resolution):
    model = MobileNetV1(width_mult=0.25, preset=preset, num_classes=10, resolution=resolution).eval()
    _randomise_bn(model)
    x = torch.randn(1, 3, resolution, resolution)
    with torch.no_grad():
        ref = model(x)
        fused = fused_inference_model(model).to(DEVICE).to(memory_format=torch.channels_last)
        out = fused(x.to(DEVICE).contiguous(memory_format=torch.channels_last)).cpu()
    assert count_fused(fused) == 13
    assert (out - ref).abs().max().item() <= 1e-3 * ref.abs().max().item()
    assert model.blocks[0].dw.bn.__class__ is torch.nn.BatchNorm2d  # the caller's model was not folded


def test_fused_model_falls_back_without_kernels(monkeypatch):
    # the fallback path is the folded PyTorch blocks: same function, no Triton involved
    import mobilenet.kernels.fast as fast

    model = MobileNetV1(width_mult=0.25, num_classes=5, resolution=32).eval()
    _randomise_bn(model)
    monkeypatch.setattr(fast, "kernels_usable", lambda device_type: False)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(fused_inference_model(model)(x), model(x), atol=1e-5, rtol=1e-4)


def test_fused_model_refuses_unfolded_blocks():
    from mobilenet.kernels.fast import FusedSeparable

    with pytest.raises(ValueError, match="fold BatchNorm"):
        FusedSeparable(MobileNetV1(width_mult=0.25).blocks[0])
    folded = fold_bn(MobileNetV1(width_mult=0.25))
    assert FusedSeparable(folded.blocks[0]).stride == 1


@pytest.mark.parametrize("case", CASES[:3], ids=lambda c: f"c{c[1]}-s{c[5]}-{c[3]}x{c[4]}")
def test_depthwise_forward_and_backward(case):
    n, c, _, h, w, stride, pads, _ = case
    x = torch.randn(n, c, h, w, device=DEVICE).contiguous(memory_format=torch.channels_last).requires_grad_()
    weight = torch.randn(c, 1, 3, 3, device=DEVICE, requires_grad=True)
    x_ref, w_ref = x.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
    top, left, bottom, right = pads
    ref = F.conv2d(F.pad(x_ref, (left, right, top, bottom)), w_ref, None, stride, groups=c)
    out = depthwise3x3(x, weight, stride, pads)
    assert out.shape == ref.shape
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-5)
    grad = torch.randn_like(ref)
    out.backward(grad)
    ref.backward(grad)
    assert torch.allclose(x.grad, x_ref.grad, atol=1e-4, rtol=1e-4)
    assert torch.allclose(weight.grad, w_ref.grad, atol=1e-3, rtol=1e-4)


def test_depthwise_weight_grad_spans_several_chunks(monkeypatch):
    # the weight gradient reduces in chunks of ROWS output pixels: make several, with a ragged last one
    import mobilenet.kernels.depthwise as dw

    monkeypatch.setattr(dw, "ROWS", 40)
    x = torch.randn(2, 16, 9, 9, device=DEVICE).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(16, 1, 3, 3, device=DEVICE, requires_grad=True)
    w_ref = weight.detach().clone().requires_grad_()
    grad = torch.randn(2, 16, 9, 9, device=DEVICE)
    dw.depthwise3x3(x, weight, 1, (1, 1, 1, 1)).backward(grad)
    F.conv2d(x, w_ref, None, 1, 1, groups=16).backward(grad)
    assert torch.allclose(weight.grad, w_ref.grad, atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("preset", ["paper", "tf"])
def test_triton_depthwise_training_step_matches(preset):
    # A training step through 13 BatchNorms amplifies float32 rounding to ~2e-4 (relative) in the gradients, in
    # PyTorch's own float32 run as much as in ours, so both are compared with a float64 run of PyTorch's.
    torch.manual_seed(0)
    ref = MobileNetV1(width_mult=0.25, preset=preset, num_classes=4, resolution=32).train()
    ours, ref64 = copy.deepcopy(ref).to(DEVICE), copy.deepcopy(ref).double()
    ref = ref.to(DEVICE)
    assert use_triton_depthwise(ours) == 13
    assert use_triton_depthwise(ours) == 0  # idempotent
    assert isinstance(ours.blocks[3].dw.conv, TritonDepthwiseConv2d)
    assert list(ours.state_dict()) == list(ref.state_dict())  # same keys: saves and loads as before
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    for model in (ref, ours):
        F.cross_entropy(model(x.to(DEVICE).contiguous(memory_format=torch.channels_last)), y.to(DEVICE)).backward()
    F.cross_entropy(ref64(x.double()), y).backward()
    for (name, exact), p, q in zip(ref64.named_parameters(), ref.parameters(), ours.parameters(), strict=True):
        err_ref, err_ours = ((t.grad.cpu().double() - exact.grad).norm() / exact.grad.norm() for t in (p, q))
        assert err_ours <= max(2 * err_ref, 1e-5), name
    for exact, b in zip(ref64.buffers(), ours.buffers(), strict=True):  # BN running statistics updated alike
        assert torch.allclose(b.cpu().double(), exact.double(), atol=1e-5, rtol=1e-4)


def test_kernels_usable_reflects_the_environment():
    assert kernels_usable("cuda" if torch.cuda.is_available() else "cpu")
    assert not kernels_usable("mps")


def test_fused_ssd_backbone_matches():
    from mobilenet.detection.ssd import SSD, SSDConfig

    ssd = SSD(SSDConfig(num_classes=3, width_mult=0.25, image_size=(64, 64))).eval()
    _randomise_bn(ssd)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = ssd(x)
        fused = fused_inference_model(ssd).to(DEVICE)
        out = fused(x.to(DEVICE).contiguous(memory_format=torch.channels_last))
    assert count_fused(fused) == 13
    for a, b in zip(out, ref, strict=True):
        assert (a.cpu() - b).abs().max().item() <= 1e-3 * b.abs().max().item()
