"""One Triton kernel per depthwise separable block at inference: 3x3 depthwise -> act -> 1x1 pointwise -> act.

For a channels_last input ``x`` (N, C, H, W) the kernel computes, for a tile of ``BLOCK_M`` output pixels and
``BLOCK_N`` output channels, a loop over ``BLOCK_K`` input channels at a time:

    d = act(sum over the 3x3 taps of x[pixel + tap, k] * w_dw[k, tap] + b_dw[k])   # (BLOCK_M, BLOCK_K), registers
    acc += d @ w_pw[k, n]                                                          # tensor cores

then ``act(acc + b_pw)`` is written once. The depthwise output, which the unfused network writes to memory
and reads back, never leaves the chip. BatchNorm must be folded into both convs first (``fold_bn``); the
activation is ReLU or ReLU6. The depthwise sum is accumulated in float32 and rounded to the input's dtype
before the matrix product, as the unfused network rounds its stored depthwise output.

Programs are numbered so that the output-channel tiles of one pixel tile run next to each other: the
input tile they all read is then still in L2 for the second and later ones.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import interpreting
from .taps import load_tap, window


@triton.jit(do_not_specialize=["M", "H", "W", "Ho", "Wo", "stride", "pad_t", "pad_l"])
def _dwpw_kernel(
    x_ptr, wd_ptr, bd_ptr, wp_ptr, bp_ptr, y_ptr,
    M, H, W, Ho, Wo, C, COUT, stride, pad_t, pad_l,
    RELU6: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0)
    tiles_n = tl.cdiv(COUT, BLOCK_N)
    pid_m = pid // tiles_n
    pid_n = pid % tiles_n
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # output pixels, flattened over (N, Ho, Wo)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # output channels
    m_ok = rm < M
    n_ok = rn < COUT
    row0, ih0, iw0 = window(rm, H, Ho, Wo, stride, pad_t, pad_l)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, C, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        k_ok = rk < C
        d = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
        for kh in tl.static_range(3):
            for kw in tl.static_range(3):
                xv = load_tap(x_ptr, row0, ih0 + kh, iw0 + kw, H, W, C, m_ok, rk, k_ok)
                wv = tl.load(wd_ptr + rk * 9 + (kh * 3 + kw), mask=k_ok, other=0.0)  # w_dw is (C, 1, 3, 3)
                d += xv.to(tl.float32) * wv.to(tl.float32)[None, :]
        d = tl.maximum(d + tl.load(bd_ptr + rk, mask=k_ok, other=0.0).to(tl.float32)[None, :], 0.0)
        if RELU6:
            d = tl.minimum(d, 6.0)
        # w_pw is (COUT, C, 1, 1): the (BLOCK_K, BLOCK_N) tile is read along k
        wp = tl.load(wp_ptr + rn[None, :] * C + rk[:, None], mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        acc = tl.dot(d.to(wp.dtype), wp, acc)
    acc = tl.maximum(acc + tl.load(bp_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :], 0.0)
    if RELU6:
        acc = tl.minimum(acc, 6.0)
    out = rm.to(tl.int64)[:, None] * COUT + rn[None, :]
    tl.store(y_ptr + out, acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages): the few tilings worth trying; the first call for each
# layer shape times them all on the GPU and keeps the fastest.
# Every output-channel tile recomputes the depthwise taps of its pixel tile, so a narrow BLOCK_N multiplies the
# reads of the input: with 64-wide tiles the 13 blocks at batch 256 issue about 39 GB of tap loads (counted, before
# L1 reuse) for 3.2 GB of activations, and they took 5.3 ms on an H200 (measured) where cuDNN's convs take ~1.6 ms.
# The 256-wide tiles cut the wide layers' recomputation to 2-4x.
CONFIGS = ((64, 64, 32, 4, 3), (128, 64, 32, 4, 3), (64, 128, 32, 4, 3), (128, 128, 32, 8, 3),
           (64, 64, 64, 4, 2), (128, 64, 64, 8, 2), (64, 256, 32, 8, 3), (64, 256, 64, 8, 2),
           (32, 32, 64, 2, 2))  # the last: small maps at batch 1
INTERPRETER_CONFIG = (64, 64, 64, 4, 1)  # small tiles keep the CPU interpreter quick
_chosen: dict[tuple, tuple[int, int, int, int, int]] = {}


def output_size(size: int, stride: int, pad_before: int, pad_after: int) -> int:
    return (size + pad_before + pad_after - 3) // stride + 1


def _launch(cfg, x, wd, bd, wp, bp, y, shape, stride, pads, relu6) -> None:
    n, c, h, w, ho, wo, cout = shape
    bm, bn, bk, warps, stages = cfg
    m = n * ho * wo
    grid = (triton.cdiv(m, bm) * triton.cdiv(cout, bn),)
    _dwpw_kernel[grid](x, wd, bd, wp, bp, y, m, h, w, ho, wo, c, cout, stride, pads[0], pads[1],
                       RELU6=relu6, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps, num_stages=stages)


def _tune(key, run) -> tuple[int, int, int, int, int]:
    """The fastest of ``CONFIGS`` for this layer shape, timed with CUDA events (once per shape, then cached)."""
    if key in _chosen:
        return _chosen[key]
    if interpreting():
        _chosen[key] = INTERPRETER_CONFIG
        return INTERPRETER_CONFIG
    best, best_ms = CONFIGS[0], float("inf")
    for cfg in CONFIGS:
        try:
            run(cfg)  # compile + warm up
        except Exception:  # a tiling this GPU cannot fit (shared memory, registers): try the next
            continue
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(5):
            run(cfg)
        end.record()
        end.synchronize()
        ms = start.elapsed_time(end)
        if ms < best_ms:
            best, best_ms = cfg, ms
    _chosen[key] = best
    return best


def dwpw(x: torch.Tensor, w_dw: torch.Tensor, b_dw: torch.Tensor, w_pw: torch.Tensor, b_pw: torch.Tensor, *,
         stride: int, pads: tuple[int, int, int, int], relu6: bool) -> torch.Tensor:
    """``act(conv1x1(act(dwconv3x3(x) + b_dw)) + b_pw)`` for a channels_last ``x`` (N, C, H, W), in one kernel.

    ``w_dw`` (C, 1, 3, 3), ``b_dw`` (C,), ``w_pw`` (COUT, C, 1, 1), ``b_pw`` (COUT,): folded conv weights.
    ``pads`` = (top, left, bottom, right) zero padding of the depthwise conv. Returns (N, COUT, Ho, Wo)
    channels_last, in ``x``'s dtype.
    """
    n, c, h, w = x.shape
    cout = w_pw.shape[0]
    if w_dw.shape != (c, 1, 3, 3) or w_pw.shape[1:] != (c, 1, 1):
        raise ValueError(f"weights {tuple(w_dw.shape)}, {tuple(w_pw.shape)} do not fit an input of {c} channels")
    x = x.contiguous(memory_format=torch.channels_last)
    ho, wo = output_size(h, stride, pads[0], pads[2]), output_size(w, stride, pads[1], pads[3])
    y = torch.empty((n, cout, ho, wo), device=x.device, dtype=x.dtype, memory_format=torch.channels_last)
    w_dw, b_dw, w_pw, b_pw = (t.contiguous() for t in (w_dw, b_dw, w_pw, b_pw))
    shape = (n, c, h, w, ho, wo, cout)

    def run(cfg):
        _launch(cfg, x, w_dw, b_dw, w_pw, b_pw, y, shape, stride, pads, relu6)

    cfg = _tune((shape, stride, pads, relu6, x.dtype, w_pw.dtype, x.device.type), run)
    run(cfg)
    return y
