"""Calibration: choosing a range (scale, zero-point) for activations seen on calibration data
(``calibrate``) or for a weight tensor, per output channel (``calibrate_weight``), by min-max,
percentile clipping, a mean-squared-error search over clipping ratios (the best of a one-parameter
family, not an optimum over every (lo, hi)), or, for ternary weights, TWN's rule."""
from __future__ import annotations

import torch

from .._validate import finite_tensor, int_in, number_in, one_of, positive_int
from .affine import _fake_quant, _scale_zero_point, check_bits, compute_qparams, qrange

__all__ = ["CALIBRATION_METHODS", "WEIGHT_CALIBRATION_METHODS", "MSE_SEARCH_MAX_SAMPLES", "TWN_THRESHOLD",
           "calibrate", "calibrate_weight", "mse_curve"]

CALIBRATION_METHODS = ("minmax", "percentile", "mse")
WEIGHT_CALIBRATION_METHODS = ("minmax", "percentile", "mse", "twn")
TWN_THRESHOLD = 0.7  # Li et al. 2016 (TWN): weights with |w| < 0.7 E|w| become 0
MSE_SEARCH_MAX_SAMPLES = 50_000  # the MSE search uses an evenly strided subsample of about this size


def _gather(samples) -> torch.Tensor:
    """All calibration samples (a tensor or a list of tensors) as one flat float32 tensor."""
    if torch.is_tensor(samples):
        samples = [samples]
    samples = list(samples)
    if not samples or all(s.numel() == 0 for s in samples):
        raise ValueError("the calibration set is empty: pass at least one non-empty tensor of activations")
    x = torch.cat([s.detach().float().reshape(-1) for s in samples])
    return finite_tensor("calibration samples", x)


def _value_at_fraction(x: torch.Tensor, frac: float) -> torch.Tensor:
    """The value below which a fraction ``frac`` (in [0, 1]) of x lies (k-th smallest, k >= 1)."""
    k = min(x.numel(), max(1, int(round(frac * x.numel()))))
    return x.kthvalue(k).values


@torch.no_grad()
def _mse_best_range(x: torch.Tensor, bits: int, symmetric: bool, grid: int):
    """The clipped range (lo, hi) = ratio * (min, max) with the lowest fake-quantization MSE,
    over ``grid`` ratios from 1 down to 1/grid (largest first: ties keep the wider range)."""
    qmin, qmax = qrange(bits, symmetric)
    sub = x[:: max(1, x.numel() // MSE_SEARCH_MAX_SAMPLES)]  # fixed, deterministic: keeps the search fast
    lo, hi = x.min(), x.max()
    ratios = torch.linspace(1.0, 1.0 / grid, grid)
    scales, zero_points = _scale_zero_point(lo * ratios, hi * ratios, qmin, qmax, symmetric)
    errors = torch.stack([((_fake_quant(sub, s, z, qmin, qmax, None) - sub) ** 2).mean()
                          for s, z in zip(scales, zero_points)])
    best = int(errors.argmin())
    return lo * ratios[best], hi * ratios[best]


def calibrate(samples, bits: int = 8, method: str = "minmax", symmetric: bool = False,
              percentile: float = 99.99, grid: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """Choose per-tensor (scale, zero_point) for activations from calibration samples.

    samples: a tensor or a list of tensors (any shapes) of activations seen on calibration data.
    method: "minmax" (the observed range: nothing is clipped, outliers stretch the step);
    "percentile" (clip to the ``percentile`` and ``100 - percentile`` percentiles, in (50, 100]);
    "mse" (search ``grid`` (>= 1) clipping ratios r of the min-max range, (r min, r max), for the
    lowest mean squared error after fake quantization: the best of that one-parameter family, not
    a search over every (lo, hi)). Returns ``compute_qparams(lo, hi, bits, symmetric)``.
    """
    bits = check_bits(bits, symmetric)
    one_of("method", method, CALIBRATION_METHODS)
    number_in("percentile", percentile, 50, 100, lo_open=True)
    positive_int("grid", grid)
    x = _gather(samples)
    lo, hi = x.min(), x.max()
    if method == "percentile":
        lo, hi = _value_at_fraction(x, 1 - percentile / 100), _value_at_fraction(x, percentile / 100)
    elif method == "mse":
        lo, hi = _mse_best_range(x, bits, symmetric, grid)
    return compute_qparams(lo, hi, bits, symmetric)


def _ratios(grid: int) -> torch.Tensor:
    return torch.linspace(1.0, 1.0 / grid, grid)


@torch.no_grad()
def mse_curve(x: torch.Tensor, bits: int, symmetric: bool = True, grid: int = 100):
    """The mean squared fake-quantization error of ``x`` (any shape, one tensor) for each clipping ratio.

    The range is (r * min, r * max) for ``grid`` (>= 1) ratios r from 1 down to 1/grid. Small r
    clips more values (clipping error), large r makes the step coarser (rounding error); the MSE
    calibration picks the minimum. Returns (ratios, mse), float32 tensors of shape (grid,).
    """
    bits = check_bits(bits, symmetric)
    positive_int("grid", grid)
    x = _gather(x)
    qmin, qmax = qrange(bits, symmetric)
    ratios = _ratios(grid)
    scales, zps = _scale_zero_point(x.min() * ratios, x.max() * ratios, qmin, qmax, symmetric)
    mse = torch.stack([((_fake_quant(x, s, z, qmin, qmax, None) - x) ** 2).mean() for s, z in zip(scales, zps)])
    return ratios, mse


@torch.no_grad()
def calibrate_weight(weight: torch.Tensor, bits: int, method: str = "mse", symmetric: bool = True,
                     per_channel_axis: int | None = 0, percentile: float = 99.9,
                     grid: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """Choose (scale, zero_point) for a weight tensor, per output channel (axis 0) or per tensor (None).

    weight: float tensor, e.g. (M, C, kh, kw) or (M, K); bits 2..16 symmetric (``qrange``: 2 bits
    symmetric is the 3-level grid -s, 0, s), 1..16 asymmetric. method:

    - "minmax": the full range of each channel; nothing is clipped, but on a narrow grid the rare
      large weights set the step (2 bits symmetric: every |w| < max|w| / 2 rounds to 0);
    - "percentile": clip each channel to its ``percentile`` of |w| (symmetric) or to its
      ``percentile`` / ``100 - percentile`` percentiles (asymmetric), percentile in (50, 100];
    - "mse": per channel, the clipping ratio r (``grid`` ratios from 1 to 1/grid of the min-max
      range) with the lowest mean squared weight error: the best of that 1-D family;
    - "twn": ternary weight networks' rule (Li et al. 2016), only for the symmetric 2-bit grid:
      threshold 0.7 E|w| per channel, i.e. scale s = 2 * 0.7 * E|w| (|w| < s/2 rounds to 0).

    Returns (scale float32, zero_point int32), shape (M,) per channel or 0-dim, for
    ``fake_quantize(weight, bits, symmetric, per_channel_axis, scale=..., zero_point=...)``.
    """
    bits = check_bits(bits, symmetric)
    one_of("method", method, WEIGHT_CALIBRATION_METHODS)
    number_in("percentile", percentile, 50, 100, lo_open=True)
    positive_int("grid", grid)
    finite_tensor("weight", weight)
    if weight.numel() == 0:
        raise ValueError("weight is empty: nothing to calibrate")
    w = weight.detach().float().cpu()
    axis = None if per_channel_axis is None else int_in("per_channel_axis", per_channel_axis, -w.dim(),
                                                        w.dim() - 1) % w.dim()
    flat = w.reshape(1, -1) if axis is None else w.movedim(axis, 0).reshape(w.shape[axis], -1)  # (C, K)
    qmin, qmax = qrange(bits, symmetric)
    lo, hi = flat.min(1).values, flat.max(1).values
    if method == "percentile":
        k = max(1, min(flat.shape[1], int(round(percentile / 100 * flat.shape[1]))))
        if symmetric:
            hi = flat.abs().kthvalue(k, dim=1).values
            lo = -hi
        else:
            hi = flat.kthvalue(k, dim=1).values
            lo = flat.kthvalue(max(1, flat.shape[1] + 1 - k), dim=1).values
    elif method == "twn":
        if not symmetric or bits != 2:
            raise ValueError(f"method='twn' is the rule for the symmetric 2-bit (ternary) grid; got bits={bits}, "
                             f"symmetric={symmetric}")
        hi = 2 * TWN_THRESHOLD * flat.abs().mean(1)
        lo = -hi
    elif method == "mse":
        ratios = _ratios(grid)
        errors = []
        for r in ratios:
            s, z = _scale_zero_point(lo * r, hi * r, qmin, qmax, symmetric)
            xh = (torch.clamp(torch.round(flat * (1.0 / s)[:, None]) + z[:, None], qmin, qmax) - z[:, None]) * s[:, None]
            errors.append(((xh - flat) ** 2).mean(1))
        best = torch.stack(errors).argmin(0)                  # first minimum: ties keep the wider range
        lo, hi = lo * ratios[best], hi * ratios[best]
    scale, zp = _scale_zero_point(lo, hi, qmin, qmax, symmetric)
    if axis is None:
        scale, zp = scale.reshape(()), zp.reshape(())
    return scale, zp
