"""Calibration: choosing an activation range (scale, zero-point) from activations seen on
calibration data, by min-max, percentile clipping or a mean-squared-error search."""
from __future__ import annotations

import torch

from .._validate import finite_tensor, number_in, one_of, positive_int
from .affine import _fake_quant, _scale_zero_point, check_bits, compute_qparams, qrange

__all__ = ["CALIBRATION_METHODS", "MSE_SEARCH_MAX_SAMPLES", "calibrate"]

CALIBRATION_METHODS = ("minmax", "percentile", "mse")
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
    "mse" (search ``grid`` (>= 1) clipping ratios of the min-max range for the lowest mean squared
    error after fake quantization). Returns ``compute_qparams(lo, hi, bits, symmetric)``.
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
