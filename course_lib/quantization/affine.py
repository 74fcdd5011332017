"""Affine integer grids: the integer range of ``bits`` bits, (scale, zero-point), quantize,
dequantize, fake quantization with the straight-through estimator, and the SQNR.

Conventions (the same as ``torch.fake_quantize_per_tensor_affine``):

- an integer grid of ``bits`` bits is ``[qmin, qmax]``: ``[0, 2**bits - 1]`` for asymmetric
  quantization, ``[-(2**(bits-1) - 1), 2**(bits-1) - 1]`` for symmetric ("narrow range", so that
  ``-qmax`` is on the grid too and 0 maps to 0 exactly; needs ``bits >= 2``);
- ``q = clamp(round(x / scale) + zero_point, qmin, qmax)`` (round half to even, ``1/scale`` computed
  in float32 and multiplied, exactly as PyTorch's kernels do), ``x_hat = (q - zero_point) * scale``;
- ``scale`` is float32, ``zero_point`` int32: 0-dim tensors per tensor, shape ``(C,)`` per channel.

All tensors are float32 on the CPU unless stated; functions never modify their inputs.
The public functions check their arguments; the private ``_scale_zero_point`` and ``_fake_quant``
are the same computations without the checks, for use inside models (called on every forward pass).
"""
from __future__ import annotations

import math

import torch

from .._validate import finite_tensor, int_in

__all__ = ["EPS", "MAX_BITS", "qrange", "compute_qparams", "quantize", "dequantize", "fake_quantize", "sqnr_db"]

EPS = torch.finfo(torch.float32).eps  # smallest scale: keeps 1/scale finite for all-zero tensors
MAX_BITS = 16                         # widest grid the course quantizes to


# ---------------------------------------------------------------- argument checks
def check_bits(bits, symmetric: bool = False, name: str = "bits") -> int:
    """``bits`` as an int in [1, MAX_BITS] (symmetric grids need at least 2 bits)."""
    bits = int_in(name, bits, 1, MAX_BITS)
    if symmetric and bits < 2:
        raise ValueError(f"{name}={bits!r}: symmetric quantization needs bits in [2, {MAX_BITS}] "
                         "(a grid symmetric about 0 with 0 on it); use symmetric=False for 1 bit")
    return bits


def check_axis(axis, ndim: int) -> int | None:
    """``axis`` (None, or in [-ndim, ndim - 1]) as a non-negative axis or None."""
    if axis is None:
        return None
    return int_in("per_channel_axis", axis, -ndim, ndim - 1) % ndim


def _along_axis(t: torch.Tensor, ndim: int, axis: int | None) -> torch.Tensor:
    """Reshape per-channel parameters (C,) so they broadcast along ``axis`` of an ndim tensor."""
    if axis is None or t.dim() == 0:
        return t
    shape = [1] * ndim
    shape[axis] = -1
    return t.reshape(shape)


# ---------------------------------------------------------------- grid and parameters
def qrange(bits: int, symmetric: bool = True) -> tuple[int, int]:
    """The integer grid ``(qmin, qmax)`` of ``bits`` bits (1..16; symmetric needs >= 2).

    symmetric: ``(-(2**(bits-1) - 1), 2**(bits-1) - 1)``, e.g. (-127, 127) for 8 bits;
    asymmetric: ``(0, 2**bits - 1)``, e.g. (0, 255).
    """
    bits = check_bits(bits, symmetric)
    if symmetric:
        m = 2 ** (bits - 1) - 1
        return -m, m
    return 0, 2 ** bits - 1


def compute_qparams(lo, hi, bits: int, symmetric: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero-point mapping the real range ``[lo, hi]`` onto the ``bits``-bit grid.

    lo, hi: floats or tensors of the same shape (one value per channel), lo <= hi. The range is
    first widened to contain 0 (so that 0 is exactly representable: zero padding, ReLU zeros).
    symmetric: ``scale = max(|lo|, |hi|) / qmax``, ``zero_point = 0``;
    asymmetric: ``scale = (hi - lo) / (qmax - qmin)``, ``zero_point = qmin - round(lo / scale)``.
    Returns (scale float32 >= EPS, zero_point int32 in [qmin, qmax]), shaped like lo.
    """
    qmin, qmax = qrange(bits, symmetric)
    lo = torch.as_tensor(lo, dtype=torch.float32)
    hi = torch.as_tensor(hi, dtype=torch.float32)
    if lo.shape != hi.shape:
        raise ValueError(f"lo and hi must have the same shape, got {tuple(lo.shape)} and {tuple(hi.shape)}")
    finite_tensor("lo", lo)
    finite_tensor("hi", hi)
    if bool((lo > hi).any()):
        raise ValueError("lo must be <= hi for every channel")
    return _scale_zero_point(lo, hi, qmin, qmax, symmetric)


def _scale_zero_point(lo, hi, qmin: int, qmax: int, symmetric: bool):
    """compute_qparams without argument checks (used on every forward pass of a quantized model)."""
    lo, hi = torch.clamp(lo, max=0.0), torch.clamp(hi, min=0.0)
    if symmetric:
        scale = torch.clamp(torch.maximum(-lo, hi) / qmax, min=EPS)
        zp = torch.zeros_like(scale, dtype=torch.int32)
    else:
        scale = torch.clamp((hi - lo) / (qmax - qmin), min=EPS)
        zp = torch.clamp(qmin - torch.round(lo / scale), qmin, qmax).to(torch.int32)
    return scale.float(), zp


def minmax(x: torch.Tensor, axis: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(min, max) of x: 0-dim tensors, or (C,) per channel along ``axis``."""
    if x.numel() == 0:
        raise ValueError("x is empty: cannot compute a range")
    if axis is None:
        return x.min(), x.max()
    flat = x.detach().movedim(axis, 0).reshape(x.shape[axis], -1)
    return flat.min(1).values, flat.max(1).values


def _given_or_minmax_qparams(x, bits, symmetric, axis, scale, zero_point):
    """Use the given (scale, zero_point) or compute min-max ones from x; check their shapes."""
    if scale is None:
        lo, hi = minmax(x.detach(), axis)
        return compute_qparams(lo, hi, bits, symmetric)
    scale = torch.as_tensor(scale, dtype=torch.float32)
    if zero_point is None:
        zero_point = torch.zeros_like(scale, dtype=torch.int32)
    zero_point = torch.as_tensor(zero_point).to(torch.int32)
    want = () if axis is None else (x.shape[axis],)
    if tuple(scale.shape) != want or tuple(zero_point.shape) != want:
        raise ValueError(f"scale/zero_point have shapes {tuple(scale.shape)}/{tuple(zero_point.shape)}; "
                         f"expected {want} for per_channel_axis={axis}")
    if not bool((scale > 0).all()) or not bool(torch.isfinite(scale).all()):
        raise ValueError("scale must be finite and > 0")
    return scale, zero_point


# ---------------------------------------------------------------- quantize / dequantize
def quantize(x: torch.Tensor, bits: int, symmetric: bool = True, per_channel_axis: int | None = None,
             scale=None, zero_point=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize ``x`` (any shape, finite floats) to ``bits``-bit integers.

    per_channel_axis: None (one scale for the tensor) or the axis holding channels (0 for the output
    channels of a Conv2d/Linear weight). scale, zero_point: use these (e.g. from ``calibrate``)
    instead of the min-max ones of x. Returns ``(q, scale, zero_point)``: q int32 of x's shape in
    ``qrange(bits, symmetric)``, scale float32 and zero_point int32 (0-dim, or (C,) per channel).
    """
    bits = check_bits(bits, symmetric)
    finite_tensor("x", x)
    axis = check_axis(per_channel_axis, x.dim())
    scale, zp = _given_or_minmax_qparams(x, bits, symmetric, axis, scale, zero_point)
    qmin, qmax = qrange(bits, symmetric)
    inv = _along_axis(1.0 / scale, x.dim(), axis)
    q = torch.round(x.detach().float() * inv) + _along_axis(zp, x.dim(), axis)
    return torch.clamp(q, qmin, qmax).to(torch.int32), scale, zp


def dequantize(q: torch.Tensor, scale, zero_point, per_channel_axis: int | None = None) -> torch.Tensor:
    """Real values ``(q - zero_point) * scale`` (float32, q's shape) of integers ``q``.

    scale, zero_point: 0-dim, or shape (C,) with ``per_channel_axis`` naming q's channel axis.
    """
    axis = check_axis(per_channel_axis, q.dim())
    scale = torch.as_tensor(scale, dtype=torch.float32)
    zp = torch.as_tensor(zero_point)
    if axis is None and scale.dim() != 0:
        raise ValueError(f"scale has shape {tuple(scale.shape)}: pass per_channel_axis for per-channel parameters")
    return (q.float() - _along_axis(zp, q.dim(), axis).float()) * _along_axis(scale, q.dim(), axis)


# ---------------------------------------------------------------- fake quantization (STE)
class _FakeQuant(torch.autograd.Function):
    """round/clamp in the forward pass; straight-through gradient (masked to the grid) backward."""

    @staticmethod
    def forward(ctx, x, inv, scale, zp, qmin, qmax):
        q = torch.round(x * inv) + zp
        ctx.save_for_backward((q >= qmin) & (q <= qmax))
        return (torch.clamp(q, qmin, qmax) - zp) * scale

    @staticmethod
    def backward(ctx, grad):
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None, None, None


def fake_quantize(x: torch.Tensor, bits: int, symmetric: bool = True, per_channel_axis: int | None = None,
                  scale=None, zero_point=None) -> torch.Tensor:
    """Quantize then dequantize ``x``: float32 values on the ``bits``-bit grid, shape of x.

    Identical, value for value, to ``torch.fake_quantize_per_tensor_affine`` /
    ``torch.fake_quantize_per_channel_affine`` with the same scale, zero-point and (qmin, qmax).
    Gradient: straight-through estimator, d x_hat / d x = 1 where x falls inside the grid's range
    and 0 where it was clamped (what QAT trains with). scale/zero_point are treated as constants.
    """
    bits = check_bits(bits, symmetric)
    finite_tensor("x", x)
    axis = check_axis(per_channel_axis, x.dim())
    scale, zp = _given_or_minmax_qparams(x, bits, symmetric, axis, scale, zero_point)
    return _fake_quant(x, scale, zp, *qrange(bits, symmetric), axis)


def _fake_quant(x, scale, zp, qmin: int, qmax: int, axis: int | None):
    """fake_quantize without argument checks (used on every forward pass of a quantized model)."""
    scale, zp = scale.to(x.device), zp.to(x.device)
    inv = _along_axis(1.0 / scale, x.dim(), axis)
    return _FakeQuant.apply(x, inv, _along_axis(scale, x.dim(), axis), _along_axis(zp.float(), x.dim(), axis),
                            qmin, qmax)


def sqnr_db(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio ``10 log10(sum x^2 / sum (x - x_hat)^2)`` in dB.

    About 6 dB per bit for a uniform grid; ``inf`` when x_hat equals x.
    """
    if x.shape != x_hat.shape:
        raise ValueError(f"x and x_hat must have the same shape, got {tuple(x.shape)} and {tuple(x_hat.shape)}")
    x, x_hat = x.detach().double(), x_hat.detach().double()
    noise = float(((x - x_hat) ** 2).sum())
    signal = float((x ** 2).sum())
    return math.inf if noise == 0 else 10 * math.log10(signal / noise)
