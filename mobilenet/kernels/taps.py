"""The 3x3 window arithmetic every kernel here shares: which input pixels an output pixel's taps read (NHWC)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def window(rm, H, Ho, Wo, stride, pad_t, pad_l):
    """For output pixels ``rm`` (flattened over N, Ho, Wo): the first input row of their image (int64, to index
    without overflow) and the top-left corner (ih0, iw0) of their 3x3 windows, which may lie in the padding."""
    img = rm // (Ho * Wo)
    rest = rm % (Ho * Wo)
    return img.to(tl.int64) * H, (rest // Wo) * stride - pad_t, (rest % Wo) * stride - pad_l


@triton.jit
def load_tap(x_ptr, row0, ih, iw, H, W, C, rows_ok, rc, c_ok):
    """The (pixels, channels) tile of input ``x`` (NHWC) at (ih, iw) per pixel, zero where it falls in the padding."""
    ok = rows_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
    pixel = ((row0 + ih) * W + iw) * C
    return tl.load(x_ptr + pixel[:, None] + rc[None, :], mask=ok[:, None] & c_ok[None, :], other=0.0)
