"""Integer-only inference: what an int8 kernel really computes, written with PyTorch integer ops.

A quantized layer maps uint8 inputs to uint8 outputs without a single float tensor:

1. **accumulate** in int32, with the zero-points expanded so that the inner loop is a plain
   integer dot product (``integer_linear``, ``integer_conv2d``)::

       sum_k (q_w - z_w)(q_x - z_x) = sum_k q_w q_x - z_x sum_k q_w - z_w sum_k q_x + K z_w z_x

   The second term depends only on the weights (precomputed per output channel, folded into the
   bias), the fourth is a constant, and the third is a per-input cost that vanishes when the
   weights are symmetric (z_w = 0): that is why weights are quantized symmetrically.
2. add the **bias**, quantized to int32 at the accumulator's scale s_w * s_x (``quantize_bias``);
3. **requantize** to the output's grid: ``q_y = clamp(round(M * acc) + z_y, 0, 255)`` with
   ``M = s_w s_x / s_y``. onnxruntime's x86 kernels (MLAS ``MlasRequantizeOutput``) convert the
   int32 sum to float32, multiply by M (float32, computed as ``(s_x * s_w) / s_y``) and round half
   to even (``requantize``: bit for bit the same). Integer-only hardware writes M as a fixed-point
   integer and a shift, ``M ~ M0 * 2**-n`` (``fixed_point_multiplier``, ``requantize_fixed_point``),
   which can differ from the float path by one step on a few outputs;
4. a **ReLU** after the layer is folded into the clamp: clamp at z_y (the integer for 0.0) instead
   of 0 (``relu=True``); when the output range starts at 0 (z_y = 0) the ReLU is free.

Ranges: activations uint8 [0, 255] with zero-point z_x in [0, 255]; weights int8 [-128, 127] with
zero-point z_w in [-128, 127] (one per tensor, or one per output channel); accumulators int32.
The exact sum fits int32 for up to ``ACC_MAX_TERMS`` terms per output (|q_w - z_w|, |q_x - z_x|
<= 255). Everything is exact integer arithmetic except the float32 requantization, which follows
onnxruntime's definition. ``quantized_linear`` and ``quantized_conv2d`` chain the steps.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .._validate import int_in

__all__ = ["ACC_MAX_TERMS", "integer_linear", "integer_conv2d", "quantize_bias", "output_multiplier",
           "requantize", "fixed_point_multiplier", "requantize_fixed_point", "quantized_linear",
           "quantized_conv2d"]

INT32_MAX = 2 ** 31 - 1
ACC_MAX_TERMS = INT32_MAX // (255 * 255)  # 33,025 products of |q - z| <= 255 always fit an int32
FIXED_POINT_BITS = 31                     # M0 in [2**30, 2**31): a Q31 fraction, as in gemmlowp/TFLite


# ---------------------------------------------------------------- argument checks
def _int_tensor(name: str, t, lo: int, hi: int, ndim: int | None = None) -> torch.Tensor:
    """``t`` as an int64 tensor after checking it is an integer tensor with values in [lo, hi]."""
    if not torch.is_tensor(t) or t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        got = f"a {t.dtype} tensor" if torch.is_tensor(t) else type(t).__name__
        raise ValueError(f"{name} must be an integer tensor (uint8, int8, int32 or int64), got {got}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    t = t.to(torch.int64)
    if t.numel() and (int(t.min()) < lo or int(t.max()) > hi):
        raise ValueError(f"{name} holds values in [{int(t.min())}, {int(t.max())}], outside the valid range [{lo}, {hi}]")
    return t


def _zero_point(name: str, z, lo: int, hi: int, channels: int | None = None) -> torch.Tensor:
    """A zero-point as an int64 tensor: 0-dim, or (channels,) per output channel."""
    if torch.is_tensor(z):
        t = _int_tensor(name, z, lo, hi)
        if t.dim() == 0 or (t.dim() == 1 and t.numel() == 1):
            return t.reshape(())
        if channels is None or tuple(t.shape) != (channels,):
            raise ValueError(f"{name} must be one integer or have shape ({channels},), got shape {tuple(t.shape)}")
        return t
    return torch.tensor(int_in(name, z, lo, hi), dtype=torch.int64)


def _scale(name: str, s, channels: int | None = None) -> torch.Tensor:
    """A positive, finite float32 scale: 0-dim, or (channels,) per output channel."""
    t = torch.as_tensor(s, dtype=torch.float32)
    if t.dim() == 1 and t.numel() == 1:
        t = t.reshape(())
    if t.dim() != 0 and (channels is None or tuple(t.shape) != (channels,)):
        raise ValueError(f"{name} must be one number or have shape ({channels},), got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()) or not bool((t > 0).all()):
        raise ValueError(f"{name}={t.tolist()!r} must be finite and > 0")
    return t


def _to_int32(acc: torch.Tensor) -> torch.Tensor:
    if acc.numel() and (int(acc.abs().max()) > INT32_MAX):
        raise ValueError(f"the accumulator reaches {int(acc.abs().max())}, which overflows int32")
    return acc.to(torch.int32)


def _per_channel(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """Reshape a 0-dim or (M,) tensor so it broadcasts along axis 1 of an ndim tensor (N, M, ...)."""
    return t if t.dim() == 0 else t.reshape([1, -1] + [1] * (ndim - 2))


# ---------------------------------------------------------------- 1. int32 accumulation
def _expanded_sum(cols: torch.Tensor, q_w: torch.Tensor, z_x: torch.Tensor, z_w: torch.Tensor) -> torch.Tensor:
    """sum_k (q_w - z_w)(q_x - z_x) for cols (..., K) and q_w (M, K) by the zero-point expansion -> (..., M)."""
    k = cols.shape[-1]
    zw = z_w if z_w.dim() == 0 else z_w.reshape(-1)
    main = cols @ q_w.T                                   # sum q_w q_x: the integer dot products
    per_input = cols.sum(-1, keepdim=True) * zw           # z_w sum q_x: a runtime cost unless z_w = 0
    per_channel = q_w.sum(1) * z_x                        # z_x sum q_w: weights only, precomputed
    return main - per_input - per_channel + k * z_x * zw  # + K z_w z_x: a constant


def integer_linear(q_x: torch.Tensor, z_x, q_w: torch.Tensor, z_w=0) -> torch.Tensor:
    """The int32 accumulators of a quantized linear layer: ``sum_k (q_w[m,k] - z_w)(q_x[n,k] - z_x)``.

    q_x: integer tensor (N, K) of uint8 values [0, 255], z_x in [0, 255]; q_w: integer tensor (M, K)
    of int8 values [-128, 127], z_w in [-128, 127] (an int, or a tensor (M,) per output channel).
    K <= ``ACC_MAX_TERMS``. Computed with the zero-point expansion (integer matmul plus the
    correction terms, all int64, exact). Returns int32 (N, M), no bias.
    """
    q_x = _int_tensor("q_x", q_x, 0, 255, ndim=2)
    q_w = _int_tensor("q_w", q_w, -128, 127, ndim=2)
    if q_x.shape[1] != q_w.shape[1]:
        raise ValueError(f"q_x has {q_x.shape[1]} features per row but q_w expects {q_w.shape[1]} (q_w is (M, K))")
    int_in("K (input features)", q_x.shape[1], 1, ACC_MAX_TERMS)
    z_x = _zero_point("z_x", z_x, 0, 255)
    z_w = _zero_point("z_w", z_w, -128, 127, q_w.shape[0])
    return _to_int32(_expanded_sum(q_x, q_w, z_x, z_w))


def _pair(name: str, v) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"{name}={v!r} must be an int or a pair of ints")
        return int_in(name, v[0], 0, None), int_in(name, v[1], 0, None)
    v = int_in(name, v, 0, None)
    return v, v


def integer_conv2d(q_x: torch.Tensor, z_x, q_w: torch.Tensor, z_w=0, stride=1, padding=0) -> torch.Tensor:
    """The int32 accumulators of a quantized 2-D convolution (groups 1, dilation 1).

    q_x: integer tensor (N, C, H, W) of uint8 values [0, 255], z_x in [0, 255]; q_w: integer
    tensor (M, C, kh, kw) of int8 values [-128, 127], z_w in [-128, 127] (int, or (M,)).
    stride >= 1, padding >= 0 (ints or pairs). The input is padded with **z_x**, the integer that
    stands for 0.0 (padding with 0 would add -z_x * s_x at the border), then unfolded (im2col) and
    summed as in ``integer_linear``; C * kh * kw <= ``ACC_MAX_TERMS``. Returns int32 (N, M, OH, OW).
    """
    q_x = _int_tensor("q_x", q_x, 0, 255, ndim=4)
    q_w = _int_tensor("q_w", q_w, -128, 127, ndim=4)
    if q_x.shape[1] != q_w.shape[1]:
        raise ValueError(f"q_x has {q_x.shape[1]} channels but q_w expects {q_w.shape[1]} (q_w is (M, C, kh, kw))")
    sh, sw = _pair("stride", stride)
    if sh < 1 or sw < 1:
        raise ValueError(f"stride={stride!r} must be >= 1")
    ph, pw = _pair("padding", padding)
    m, c, kh, kw = q_w.shape
    int_in("C * kh * kw (terms per output)", c * kh * kw, 1, ACC_MAX_TERMS)
    z_x = _zero_point("z_x", z_x, 0, 255)
    z_w = _zero_point("z_w", z_w, -128, 127, m)
    x = F.pad(q_x, (pw, pw, ph, ph), value=int(z_x))
    if x.shape[2] < kh or x.shape[3] < kw:
        raise ValueError(f"the padded input {tuple(x.shape[2:])} is smaller than the kernel {(kh, kw)}")
    patches = x.unfold(2, kh, sh).unfold(3, kw, sw)          # (N, C, OH, OW, kh, kw)
    n, _, oh, ow = patches.shape[:4]
    cols = patches.permute(0, 2, 3, 1, 4, 5).reshape(n, oh, ow, c * kh * kw)
    acc = _expanded_sum(cols, q_w.reshape(m, -1), z_x, z_w)   # (N, OH, OW, M)
    return _to_int32(acc.permute(0, 3, 1, 2))


# ---------------------------------------------------------------- 2. bias, 3. requantization
def quantize_bias(bias: torch.Tensor, s_x, s_w) -> torch.Tensor:
    """The bias as int32 at the accumulator's scale: ``round(bias / (s_x * s_w))``.

    bias: float tensor (M,); s_x > 0; s_w > 0, one number or (M,) per output channel. As in
    onnxruntime's quantizer (``quantize_bias_static_impl``): the bias scale s_x * s_w is a float32
    product, the division is done in float64, rounding is half to even. Returns int32 (M,) (raises
    ValueError if a value does not fit int32).
    """
    if not torch.is_tensor(bias) or not bias.is_floating_point() or bias.dim() != 1:
        raise ValueError("bias must be a 1-D floating-point tensor (M,)")
    s = _scale("s_x", s_x) * _scale("s_w", s_w, bias.shape[0])
    q = torch.round(bias.detach().double() / s.double())
    if not bool(torch.isfinite(q).all()) or float(q.abs().max()) > INT32_MAX:
        raise ValueError("bias / (s_x * s_w) does not fit int32: the scales are too small for this bias")
    return q.to(torch.int32)


def output_multiplier(s_x, s_w, s_y) -> torch.Tensor:
    """The requantization multiplier ``M = s_x * s_w / s_y`` in float32, computed as onnxruntime does,
    ``(s_x * s_w) / s_y``. s_x, s_y > 0 (numbers); s_w > 0, a number or a tensor (M,). Returns
    float32, 0-dim or (M,)."""
    s_w = torch.as_tensor(s_w, dtype=torch.float32)
    return (_scale("s_x", s_x) * _scale("s_w", s_w, s_w.numel() if s_w.dim() else None)) / _scale("s_y", s_y)


def _clamp_bounds(z_y: int, qmin: int, qmax: int, relu: bool) -> tuple[int, int]:
    return (max(qmin, z_y) if relu else qmin), qmax


def requantize(acc: torch.Tensor, multiplier, z_y, relu: bool = False) -> torch.Tensor:
    """uint8 outputs from int32 accumulators, exactly as onnxruntime's x86 kernels compute them.

    acc: integer tensor (N, M) or (N, M, H, W) (bias already added); multiplier: float32 M > 0,
    one number or (M,) per output channel (``output_multiplier``); z_y in [0, 255].
    ``q = clamp(round_half_even(float32(acc) * M) + z_y, 0, 255)``; relu=True clamps at z_y instead
    of 0 (the ReLU folded into the clamp). Returns uint8 of acc's shape.
    """
    acc = _int_tensor("acc", acc, -2 ** 31, INT32_MAX)
    if acc.dim() < 2:
        raise ValueError(f"acc must be (N, M) or (N, M, H, W), got shape {tuple(acc.shape)}")
    m = _scale("multiplier", multiplier, acc.shape[1])
    z_y = int_in("z_y", int(z_y) if torch.is_tensor(z_y) else z_y, 0, 255)
    lo, hi = _clamp_bounds(z_y, 0, 255, relu)
    y = torch.round(acc.to(torch.float32) * _per_channel(m, acc.dim())) + z_y
    return torch.clamp(y, lo, hi).to(torch.uint8)


def fixed_point_multiplier(multiplier) -> tuple[torch.Tensor, torch.Tensor]:
    """Write a real multiplier as an integer and a shift: ``M ~ M0 * 2**-n``.

    multiplier: float (or float tensor, e.g. (M,) per channel) in [2**-31, 1). M0 is a 31-bit
    fraction, an int in [2**30, 2**31) (M = m * 2**e with m in [0.5, 1): M0 = round(m * 2**31),
    n = 31 - e, in [31, 62]). The relative error of M0 * 2**-n is at most 2**-31. Returns (M0, n),
    int64 tensors of the multiplier's shape.
    """
    m = torch.as_tensor(multiplier, dtype=torch.float64)
    if not bool(torch.isfinite(m).all()) or not bool(((m >= 2.0 ** -31) & (m < 1)).all()):
        raise ValueError(f"multiplier={m.tolist()!r} must be in [2**-31, 1)")
    mant, exp = torch.frexp(m)                               # m = mant * 2**exp, mant in [0.5, 1)
    m0 = torch.round(mant * 2.0 ** FIXED_POINT_BITS).to(torch.int64)
    carry = m0 == 2 ** FIXED_POINT_BITS                      # mant rounded up to 1.0
    m0 = torch.where(carry, m0 // 2, m0)
    n = FIXED_POINT_BITS - exp.to(torch.int64) - carry.to(torch.int64)
    return m0, n


def requantize_fixed_point(acc: torch.Tensor, m0, n, z_y, relu: bool = False) -> torch.Tensor:
    """uint8 outputs from int32 accumulators with integer arithmetic only: ``(acc * M0 + 2**(n-1)) >> n``.

    acc: integer tensor (N, M) or (N, M, H, W); m0 in [2**30, 2**31) and n in [31, 62] from
    ``fixed_point_multiplier`` (numbers, or (M,) per channel); z_y in [0, 255]. The product
    acc * M0 fits int64 (|acc| < 2**31, M0 < 2**31); adding half of 2**n before the arithmetic right
    shift rounds half up (towards +inf). Then ``+ z_y`` and the clamp as in ``requantize``.
    Returns uint8 of acc's shape.
    """
    acc = _int_tensor("acc", acc, -2 ** 31, INT32_MAX)
    if acc.dim() < 2:
        raise ValueError(f"acc must be (N, M) or (N, M, H, W), got shape {tuple(acc.shape)}")
    m0 = torch.as_tensor(m0, dtype=torch.int64)
    n = torch.as_tensor(n, dtype=torch.int64)
    for name, t, lo, hi in (("m0", m0, 2 ** 30, 2 ** 31 - 1), ("n", n, FIXED_POINT_BITS, 62)):
        if t.dim() not in (0, 1) or (t.dim() == 1 and t.numel() not in (1, acc.shape[1])):
            raise ValueError(f"{name} must be one integer or have shape ({acc.shape[1]},), got {tuple(t.shape)}")
        if int(t.min()) < lo or int(t.max()) > hi:
            raise ValueError(f"{name}={t.tolist()!r} must be in [{lo}, {hi}]")
    z_y = int_in("z_y", int(z_y) if torch.is_tensor(z_y) else z_y, 0, 255)
    m0, n = _per_channel(m0.reshape(-1) if m0.numel() > 1 else m0.reshape(()), acc.dim()), \
        _per_channel(n.reshape(-1) if n.numel() > 1 else n.reshape(()), acc.dim())
    y = ((acc * m0 + (1 << (n - 1))) >> n) + z_y
    lo, hi = _clamp_bounds(z_y, 0, 255, relu)
    return torch.clamp(y, lo, hi).to(torch.uint8)


# ---------------------------------------------------------------- whole layers
def _finish(acc, bias, s_x, s_w, s_y, z_y, relu, fixed_point):
    if bias is not None:
        acc = acc.to(torch.int64) + _per_channel(quantize_bias(bias, s_x, s_w).to(torch.int64), acc.dim())
    mult = output_multiplier(s_x, s_w, s_y)
    if fixed_point:
        return requantize_fixed_point(acc, *fixed_point_multiplier(mult), z_y, relu)
    return requantize(acc, mult, z_y, relu)


def quantized_linear(q_x, z_x, s_x, q_w, z_w, s_w, bias, s_y, z_y, relu: bool = False,
                     fixed_point: bool = False) -> torch.Tensor:
    """A quantized Linear layer in integers: uint8 (N, K) in, uint8 (N, M) out.

    q_x (N, K) uint8 values with (s_x, z_x); q_w (M, K) int8 values with (s_w, z_w), s_w and z_w
    one number or (M,) per output channel; bias float (M,) or None (quantized at s_x * s_w);
    output grid (s_y, z_y). ``integer_linear`` + bias + ``requantize`` (or, with fixed_point=True,
    ``requantize_fixed_point``); relu=True folds a following ReLU into the clamp.
    Matches onnxruntime's QLinearMatMul / QLinearConv bit for bit on x86 (fixed_point=False).
    """
    return _finish(integer_linear(q_x, z_x, q_w, z_w), bias, s_x, s_w, s_y, z_y, relu, fixed_point)


def quantized_conv2d(q_x, z_x, s_x, q_w, z_w, s_w, bias, s_y, z_y, stride=1, padding=0, relu: bool = False,
                     fixed_point: bool = False) -> torch.Tensor:
    """A quantized Conv2d in integers: uint8 (N, C, H, W) in, uint8 (N, M, OH, OW) out.

    Arguments as in ``quantized_linear`` with q_w (M, C, kh, kw); stride, padding as in
    ``integer_conv2d`` (the input is padded with z_x). Matches onnxruntime's QLinearConv bit for
    bit on x86 (fixed_point=False).
    """
    return _finish(integer_conv2d(q_x, z_x, q_w, z_w, stride, padding), bias, s_x, s_w, s_y, z_y, relu,
                   fixed_point)
