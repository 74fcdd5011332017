"""Checkers for chapter 00 (setup and baseline): normalising images, counting a convolution's MACs,
the Wilson interval of an accuracy."""
from __future__ import annotations

import math

import torch
from torch import nn

from .. import stats
from ..measure import macs
from . import Wrong, checker, expect_close, expect_dtype, expect_shape

__all__ = ["check_normalize", "check_conv_macs", "check_wilson_interval", "reference_normalize",
           "reference_conv_macs", "reference_wilson_interval"]


def reference_normalize(images: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """uint8 images (N, H, W) -> float32 (N, 1, H, W) with x' = (x / 255 - mean) / std."""
    return ((images.float() / 255.0 - mean) / std).unsqueeze(1)


@checker("normalize")
def check_normalize(fn):
    g = torch.Generator().manual_seed(101)  # local: the global RNG is never touched
    for n, h, w in ((5, 28, 28), (1, 7, 3)):
        imgs = torch.randint(0, 256, (n, h, w), dtype=torch.uint8, generator=g)
        mean, std = torch.rand(1, generator=g).item() * 0.5, 0.2 + torch.rand(1, generator=g).item()
        got = fn(imgs.clone(), mean, std)
        want = reference_normalize(imgs, mean, std)
        expect_shape(got, want.shape, "the normalised batch (N, 1, H, W)")
        expect_dtype(got, torch.float32, "the normalised batch")
        if got.max() > 10 and (got - ((imgs.float() - mean) / std).unsqueeze(1)).abs().max() < 1e-3:
            raise Wrong("the pixels were not scaled from [0, 255] to [0, 1] before subtracting the mean.")
        if torch.allclose(got, (imgs.float() / 255.0 / std - mean).unsqueeze(1), atol=1e-5) and mean > 0:
            raise Wrong("divide by std AFTER subtracting the mean: (x - mean) / std.")
        expect_close(got, want, "the normalised batch", atol=1e-5)


def _out_size(size: int, k: int, s: int, p: int, d: int) -> int:
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def reference_conv_macs(layer: nn.Conv2d, input_hw: tuple) -> int:
    """MACs of ``layer`` for ONE input of spatial size input_hw = (H, W)."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = layer.kernel_size, layer.stride, layer.padding, layer.dilation
    ho = _out_size(input_hw[0], kh, sh, ph, dh)
    wo = _out_size(input_hw[1], kw, sw, pw, dw)
    return layer.out_channels * (layer.in_channels // layer.groups) * kh * kw * ho * wo


@checker("conv_macs")
def check_conv_macs(fn):
    g = torch.Generator().manual_seed(102)  # local: the global RNG is never touched
    cases = [dict(in_channels=1, out_channels=20, kernel_size=5),  # LeNet-5 conv1
             dict(in_channels=3, out_channels=8, kernel_size=3, stride=2, padding=1),
             dict(in_channels=4, out_channels=8, kernel_size=3, dilation=2),
             dict(in_channels=8, out_channels=8, kernel_size=3, padding=1, groups=4)]
    for kw in cases:
        layer = nn.utils.skip_init(nn.Conv2d, **kw)  # no default init: it would draw from the global RNG
        with torch.no_grad():
            for p in layer.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
        hw = (int(torch.randint(12, 30, (1,), generator=g)), int(torch.randint(12, 30, (1,), generator=g)))
        want = macs(layer, (kw["in_channels"], *hw))
        got = fn(layer, hw)
        if not isinstance(got, int):
            raise Wrong(f"return an int, not {type(got).__name__}.")
        if got == want:
            continue
        desc = ", ".join(f"{k}={v}" for k, v in kw.items() if k not in ("in_channels", "out_channels"))
        if kw.get("groups", 1) > 1 and got == want * kw["groups"]:
            raise Wrong(f"for a grouped conv ({desc}) each output sees only in_channels / groups inputs.")
        ho_in = layer.out_channels * (layer.in_channels // layer.groups) * layer.kernel_size[0] ** 2 * hw[0] * hw[1]
        if got == ho_in:
            raise Wrong("you used the input size; MACs count OUTPUT positions: H_out = "
                        "floor((H + 2p - d(k - 1) - 1) / s) + 1.")
        raise Wrong(f"for Conv2d({kw['in_channels']}, {kw['out_channels']}, {desc}) on a {hw[0]}x{hw[1]} input "
                    f"you returned {got:,} MACs, expected {want:,} (check the output size: stride, padding, "
                    "dilation).")


def reference_wilson_interval(accuracy: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval (low, high), fractions in [0, 1], of an accuracy in [0, 1] measured on n >= 1
    images, z > 0 the normal quantile (1.96 for 95%): centre (p + z^2/2n) / (1 + z^2/n), half-width
    z / (1 + z^2/n) * sqrt(p(1 - p)/n + z^2/4n^2)."""
    p, zz = float(accuracy), float(z) ** 2
    centre = (p + zz / (2 * n)) / (1 + zz / n)
    half = z / (1 + zz / n) * math.sqrt(p * (1 - p) / n + zz / (4 * n * n))
    return centre - half, centre + half


def _wilson_variants(p: float, n: int, z: float) -> dict:
    """Typical wrong answers, each with the message that names the mistake."""
    zz = z * z
    se = math.sqrt(p * (1 - p) / n)
    wald = (p - z * se, p + z * se)
    d = 1 + zz / n
    centre = (p + zz / (2 * n)) / d
    half = z / d * math.sqrt(p * (1 - p) / n + zz / (4 * n * n))
    c1 = (p + z / (2 * n)) / (1 + z / n)                      # z where z² belongs
    h1 = z / (1 + z / n) * math.sqrt(se * se + z / (4 * n * n))
    return {
        "wald": (wald, "that is the Wald interval p ± z·sqrt(p(1-p)/n). Near 100% accuracy it is too narrow "
                       "(at p = 1 it has zero width); Wilson's interval adds the z² terms."),
        "wald_clipped": ((max(0.0, wald[0]), min(1.0, wald[1])),
                         "that is the Wald interval clipped to [0, 1]. Clipping hides the overflow but the "
                         "interval is still too narrow near 0 and 1 (at p = 1 it has zero width); use "
                         "Wilson's centre and half-width with their z² terms, which never need clipping."),
        "no_centre_shift": ((p - half, p + half),
                            "the half-width is right but the interval is centred on p; Wilson's centre is "
                            "pulled toward 1/2: (p + z²/(2n)) / (1 + z²/n)."),
        "no_denominator": ((p + zz / (2 * n) - z * math.sqrt(p * (1 - p) / n + zz / (4 * n * n)),
                            p + zz / (2 * n) + z * math.sqrt(p * (1 - p) / n + zz / (4 * n * n))),
                           "both the centre and the half-width are divided by 1 + z²/n; you left that "
                           "denominator out."),
        "no_z2_in_root": ((centre - z / d * se, centre + z / d * se),
                          "inside the square root Wilson adds z²/(4n²) to p(1-p)/n; without it the "
                          "interval collapses at p = 0 or 1."),
        "z_not_squared": ((c1 - h1, c1 + h1), "the z² terms need z squared (z² is about 3.84 for 95%), not z."),
    }


def _as_pair(got, what: str) -> tuple[float, float]:
    if torch.is_tensor(got):
        got = got.flatten().tolist()
    try:
        lo, hi = got
        lo, hi = float(lo), float(hi)
    except (TypeError, ValueError):
        raise Wrong(f"{what}: return a pair (low, high) of two numbers, got {got!r}.") from None
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise Wrong(f"{what}: returned ({lo}, {hi}); the interval must be finite.")
    return lo, hi


@checker("wilson_interval")
def check_wilson_interval(fn, atol: float = 1e-6):
    """Runs ``fn(accuracy, n, z)`` on accuracies from 0 to 1 and several n and z, compares the result
    with :func:`reference_wilson_interval` and with ``stats.accuracy_interval`` (95%), and names the
    typical mistakes: the Wald interval (plain or clipped), a missing z² term, percent instead of a
    fraction, a swapped pair, an ignored ``z``."""
    z95 = stats.normal_quantile(0.975)
    cases = [(0.95, 20, 1.96), (0.989, 1000, 1.96), (1.0, 50, 1.96), (0.0, 20, 1.96), (0.5, 10, 2.576),
             (0.9, 200, 1.645), (0.7, 37, z95)]
    for p, n, z in cases:
        what = f"wilson_interval({p}, {n}, z={z:.3f})"
        got = fn(p, n, z)
        lo, hi = _as_pair(got, what)
        want = reference_wilson_interval(p, n, z)
        close = lambda a, b: abs(a[0] - b[0]) <= atol and abs(a[1] - b[1]) <= atol  # noqa: E731
        if close((lo, hi), want):
            continue
        if close((hi, lo), want):
            raise Wrong(f"{what} returned (high, low); return (low, high).")
        if close((lo / 100, hi / 100), want):
            raise Wrong(f"{what} returned percent ({lo:.2f}, {hi:.2f}); return fractions in [0, 1] "
                        "(the accuracy comes in as a fraction too).")
        if close((lo, hi), reference_wilson_interval(p, n, 1.96)) and abs(z - 1.96) > 1e-3:
            raise Wrong(f"{what}: you used z = 1.96 whatever the argument; use the z you are given "
                        "(1.645 for 90%, 2.576 for 99%).")
        for (v, msg) in _wilson_variants(p, n, z).values():
            if close((lo, hi), v):
                raise Wrong(f"{what} returned ({lo:.6f}, {hi:.6f}): {msg}")
        raise Wrong(f"{what} returned ({lo:.6f}, {hi:.6f}), expected ({want[0]:.6f}, {want[1]:.6f}). Centre: "
                    "(p + z²/(2n)) / (1 + z²/n); half-width: z / (1 + z²/n) · sqrt(p(1-p)/n + z²/(4n²)).")
    lib = stats.accuracy_interval(0.7, 37)
    got = _as_pair(fn(0.7, 37, z95), "wilson_interval(0.7, 37, z)")
    if abs(got[0] - lib[0]) > atol or abs(got[1] - lib[1]) > atol:
        raise Wrong(f"at the 95% level you disagree with course_lib.stats.accuracy_interval: {got} vs {lib}.")
