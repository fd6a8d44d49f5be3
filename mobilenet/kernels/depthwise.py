"""A depthwise 3x3 convolution in Triton, forward and backward, for channels_last training.

``depthwise3x3(x, weight, stride, pads)`` equals ``F.conv2d(F.pad(x, ...), weight, stride=stride, groups=C)``
and is differentiable in both ``x`` and ``weight``. Three kernels, each reading and writing every tensor once:

* forward: a tile of output pixels x channels, the nine taps gathered from the input;
* input gradient: a tile of *input* pixels, gathering the output gradients whose window covered them (the
  transposed convolution, done as a gather so that no atomics are needed);
* weight gradient: each program reduces a chunk of output pixels into nine per-channel partial sums,
  written to a (chunks, 9, C) buffer that is summed afterwards (deterministic, unlike atomics).

Products are accumulated in float32; outputs take the input's dtype (the weight gradient the weight's).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .dwpw import output_size
from .taps import load_tap, window

_NOSPEC = ["M", "H", "W", "Ho", "Wo", "stride", "pad_t", "pad_l"]


@triton.jit(do_not_specialize=_NOSPEC)
def _forward_kernel(x_ptr, w_ptr, y_ptr, M, H, W, Ho, Wo, C, stride, pad_t, pad_l,
                    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rc = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    m_ok = rm < M
    c_ok = rc < C
    row0, ih0, iw0 = window(rm, H, Ho, Wo, stride, pad_t, pad_l)
    acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
    for kh in tl.static_range(3):
        for kw in tl.static_range(3):
            xv = load_tap(x_ptr, row0, ih0 + kh, iw0 + kw, H, W, C, m_ok, rc, c_ok)
            wv = tl.load(w_ptr + rc * 9 + (kh * 3 + kw), mask=c_ok, other=0.0)
            acc += xv.to(tl.float32) * wv.to(tl.float32)[None, :]
    out = rm.to(tl.int64)[:, None] * C + rc[None, :]
    tl.store(y_ptr + out, acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & c_ok[None, :])


@triton.jit(do_not_specialize=_NOSPEC)
def _input_grad_kernel(dy_ptr, w_ptr, dx_ptr, M, H, W, Ho, Wo, C, stride, pad_t, pad_l,
                       BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # input pixels, flattened over (N, H, W)
    rc = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    m_ok = rm < M
    c_ok = rc < C
    img = rm // (H * W)
    rest = rm % (H * W)
    ih = rest // W
    iw = rest % W
    row0 = img.to(tl.int64) * Ho
    acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
    for kh in tl.static_range(3):
        oh_s = ih + pad_t - kh  # = oh * stride for the output pixel whose tap kh lands here
        oh = oh_s // stride
        h_ok = m_ok & (oh_s >= 0) & (oh_s % stride == 0) & (oh < Ho)
        for kw in tl.static_range(3):
            ow_s = iw + pad_l - kw
            ow = ow_s // stride
            ok = h_ok & (ow_s >= 0) & (ow_s % stride == 0) & (ow < Wo)
            pixel = ((row0 + oh) * Wo + ow) * C
            g = tl.load(dy_ptr + pixel[:, None] + rc[None, :], mask=ok[:, None] & c_ok[None, :], other=0.0)
            wv = tl.load(w_ptr + rc * 9 + (kh * 3 + kw), mask=c_ok, other=0.0)
            acc += g.to(tl.float32) * wv.to(tl.float32)[None, :]
    out = rm.to(tl.int64)[:, None] * C + rc[None, :]
    tl.store(dx_ptr + out, acc.to(dx_ptr.dtype.element_ty), mask=m_ok[:, None] & c_ok[None, :])


@triton.jit(do_not_specialize=_NOSPEC + ["ROWS"])
def _weight_grad_kernel(x_ptr, dy_ptr, part_ptr, M, H, W, Ho, Wo, C, stride, pad_t, pad_l, ROWS,
                        BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    chunk = tl.program_id(0)
    rc = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = rc < C
    taps = tl.arange(0, 16)  # nine taps, padded to a power of two
    acc = tl.zeros((16, BLOCK_C), dtype=tl.float32)
    lo = chunk * ROWS
    hi = tl.minimum(lo + ROWS, M)
    for start in range(lo, hi, BLOCK_M):
        rm = start + tl.arange(0, BLOCK_M)
        m_ok = rm < hi
        row0, ih0, iw0 = window(rm, H, Ho, Wo, stride, pad_t, pad_l)
        g = tl.load(dy_ptr + rm.to(tl.int64)[:, None] * C + rc[None, :], mask=m_ok[:, None] & c_ok[None, :],
                    other=0.0).to(tl.float32)
        for kh in tl.static_range(3):
            for kw in tl.static_range(3):
                xv = load_tap(x_ptr, row0, ih0 + kh, iw0 + kw, H, W, C, m_ok, rc, c_ok)
                s = tl.sum(g * xv.to(tl.float32), axis=0)  # (BLOCK_C,)
                acc += tl.where(taps[:, None] == kh * 3 + kw, s[None, :], 0.0)
    out = (chunk * 9 + taps).to(tl.int64)[:, None] * C + rc[None, :]
    tl.store(part_ptr + out, acc, mask=(taps[:, None] < 9) & c_ok[None, :])


BLOCK_M, BLOCK_C, WARPS = 64, 64, 4
ROWS = 4096  # output pixels reduced by one weight-gradient program


def _blocks(c: int) -> int:
    return max(16, min(BLOCK_C, triton.next_power_of_2(c)))


def _per_pixel(kernel, src: torch.Tensor, weight: torch.Tensor, out: torch.Tensor, pixels: int,
               x_shape: torch.Size, y_shape: torch.Size, stride: int, pads: tuple[int, int, int, int]) -> torch.Tensor:
    """Launch a kernel that writes ``out`` tile by tile over ``pixels`` x channels (forward, input gradient)."""
    (_, c, h, w), (ho, wo) = x_shape, y_shape[-2:]
    bc = _blocks(c)
    kernel[(triton.cdiv(pixels, BLOCK_M), triton.cdiv(c, bc))](
        src, weight, out, pixels, h, w, ho, wo, c, stride, pads[0], pads[1], BLOCK_M=BLOCK_M, BLOCK_C=bc,
        num_warps=WARPS)
    return out


def depthwise_forward(x: torch.Tensor, weight: torch.Tensor, stride: int,
                      pads: tuple[int, int, int, int]) -> torch.Tensor:
    n, c, h, w = x.shape
    ho, wo = output_size(h, stride, pads[0], pads[2]), output_size(w, stride, pads[1], pads[3])
    y = torch.empty((n, c, ho, wo), device=x.device, dtype=x.dtype, memory_format=torch.channels_last)
    return _per_pixel(_forward_kernel, x, weight, y, n * ho * wo, x.shape, y.shape, stride, pads)


def depthwise_input_grad(dy: torch.Tensor, weight: torch.Tensor, x: torch.Tensor, stride: int,
                         pads: tuple[int, int, int, int]) -> torch.Tensor:
    dx = torch.empty_like(x, memory_format=torch.channels_last)
    return _per_pixel(_input_grad_kernel, dy, weight, dx, x.numel() // x.shape[1], x.shape, dy.shape, stride, pads)


def depthwise_weight_grad(x: torch.Tensor, dy: torch.Tensor, weight: torch.Tensor, stride: int,
                          pads: tuple[int, int, int, int]) -> torch.Tensor:
    n, c, h, w = x.shape
    ho, wo = dy.shape[-2:]
    m, bc = n * ho * wo, _blocks(c)
    chunks = triton.cdiv(m, ROWS)
    part = torch.empty((chunks, 9, c), device=x.device, dtype=torch.float32)
    _weight_grad_kernel[(chunks, triton.cdiv(c, bc))](
        x, dy, part, m, h, w, ho, wo, c, stride, pads[0], pads[1], ROWS, BLOCK_M=BLOCK_M, BLOCK_C=bc,
        num_warps=WARPS)
    return part.sum(0).t().reshape(c, 1, 3, 3).to(weight.dtype)


class _Depthwise3x3(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, stride, pads):  # noqa: D102  (torch.autograd.Function protocol)
        x = x.contiguous(memory_format=torch.channels_last)
        weight = weight.contiguous()
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.pads = stride, pads
        return depthwise_forward(x, weight, stride, pads)

    @staticmethod
    def backward(ctx, dy):  # noqa: D102
        x, weight = ctx.saved_tensors
        dy = dy.contiguous(memory_format=torch.channels_last)
        dx = dw = None
        if ctx.needs_input_grad[0]:
            dx = depthwise_input_grad(dy, weight, x, ctx.stride, ctx.pads)
        if ctx.needs_input_grad[1]:
            dw = depthwise_weight_grad(x, dy, weight, ctx.stride, ctx.pads)
        return dx, dw, None, None


def depthwise3x3(x: torch.Tensor, weight: torch.Tensor, stride: int,
                 pads: tuple[int, int, int, int]) -> torch.Tensor:
    """Depthwise 3x3 conv of ``x`` (N, C, H, W) with ``weight`` (C, 1, 3, 3), zero ``pads`` = (top, left, bottom,
    right); differentiable. The result is channels_last in ``x``'s dtype."""
    c = x.shape[1]
    if weight.shape != (c, 1, 3, 3):
        raise ValueError(f"depthwise weight must be ({c}, 1, 3, 3) for {c} channels, got {tuple(weight.shape)}")
    return _Depthwise3x3.apply(x, weight, stride, tuple(pads))
