"""Checkers for chapter 2 (quantization) exercises."""
from __future__ import annotations

import torch

from . import Wrong, checker, expect_close, expect_shape, expect_tensor

__all__ = ["check_scale_zero_point", "check_fake_quant_ste", "check_kmeans_step"]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _ref_scale_zero_point(lo: float, hi: float, bits: int):
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    qmax = 2 ** bits - 1
    scale = max((hi - lo) / qmax, torch.finfo(torch.float32).eps)
    zp = int(min(max(0 - round(lo / scale), 0), qmax))
    return scale, zp


@checker("scale and zero-point")
def check_scale_zero_point(fn):
    """fn(lo, hi, bits) -> (scale: float, zero_point: int) for the asymmetric grid [0, 2**bits - 1]."""
    cases = [(-1.0, 3.0, 8), (-0.4, 0.6, 4), (-2.0, 0.1, 2)]
    g = _gen(1)
    for _ in range(5):
        lo, hi = sorted((torch.randn(2, generator=g) * 3).tolist())
        cases.append((min(lo, -0.01), max(hi, 0.01), int(torch.randint(2, 9, (1,), generator=g))))
    cases += [(0.5, 2.0, 8), (-3.0, -1.0, 8)]  # ranges that exclude 0 must be widened to contain it
    for lo, hi, bits in cases:
        out = fn(lo, hi, bits)
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            raise Wrong(f"return a pair (scale, zero_point); got {type(out).__name__}.")
        scale, zp = out
        scale = float(scale) if not torch.is_tensor(scale) else float(scale.item())
        if torch.is_tensor(zp):
            zp = zp.item()
        want_s, want_z = _ref_scale_zero_point(lo, hi, bits)
        where = f"for lo={lo:.3f}, hi={hi:.3f}, bits={bits}"
        if lo > 0 or hi < 0:
            if abs(scale - want_s) > 1e-6 * want_s:
                raise Wrong(f"{where}: widen the range to contain 0 first (lo = min(lo, 0), hi = max(hi, 0)), "
                            "so that 0 stays exactly representable.")
        if abs(scale - (hi - lo) / (2 ** bits)) < 1e-9 * abs(hi - lo) and abs(scale - want_s) > 1e-9:
            raise Wrong(f"{where}: the grid has 2**bits - 1 steps between its {2 ** bits} levels, "
                        "so divide by 2**bits - 1, not 2**bits.")
        if abs(scale - want_s) > 1e-6 * want_s:
            raise Wrong(f"{where}: scale is {scale:.6g}, expected {want_s:.6g} = (hi - lo) / (2**bits - 1).")
        if float(zp) != int(float(zp)):
            raise Wrong(f"{where}: the zero-point must be an integer (round it), got {zp}.")
        if int(zp) == -want_z and want_z != 0:
            raise Wrong(f"{where}: zero_point has the wrong sign: it is the integer that represents 0, "
                        "zero_point = -round(lo / scale).")
        exact = -min(lo, 0.0) / want_s
        near_tie = abs(exact - round(exact)) > 0.5 - 1e-4  # x.5 ties may round either way in float32
        if int(zp) != want_z and not (near_tie and abs(int(zp) - exact) <= 0.5 + 1e-4):
            raise Wrong(f"{where}: zero_point is {zp}, expected {want_z} = clamp(-round(lo / scale), 0, 2**bits - 1).")


@checker("fake quantization with a straight-through gradient")
def check_fake_quant_ste(fn):
    """fn(x, scale, zero_point, qmin, qmax) -> fake-quantized x, with the clipped straight-through gradient."""
    g = _gen(2)
    for scale, zp, qmin, qmax in [(0.05, 128, 0, 255), (0.1, 0, -7, 7), (0.02, 3, 0, 15), (0.3, 0, -1, 1)]:
        x = (torch.randn(300, generator=g) * 2).requires_grad_()
        out = fn(x, scale, zp, qmin, qmax)
        expect_tensor(out, "the result")
        expect_shape(out, x.shape, "the result")
        ref = torch.fake_quantize_per_tensor_affine(x.detach(), scale, zp, qmin, qmax)
        where = f"(scale={scale}, zero_point={zp}, range [{qmin}, {qmax}])"
        if not torch.allclose(out.detach(), ref, atol=1e-5 * scale + 1e-7):
            floor = ((torch.clamp(torch.floor(x.detach() / scale) + zp, qmin, qmax) - zp) * scale)
            nocl = (torch.round(x.detach() / scale) + zp - zp) * scale
            if torch.allclose(out.detach(), floor, atol=1e-6):
                raise Wrong(f"{where}: round to the nearest integer (torch.round), not down (floor/int()).")
            if torch.allclose(out.detach(), nocl, atol=1e-6):
                raise Wrong(f"{where}: clamp the integers to [qmin, qmax] before dequantizing.")
            if torch.allclose(out.detach(), torch.clamp(torch.round(x.detach() / scale) + zp, qmin, qmax),
                              atol=1e-6):
                raise Wrong(f"{where}: you returned the integers q; fake quantization returns (q - zero_point) * scale.")
            expect_close(out.detach(), ref, f"the values {where}", atol=1e-5 * scale + 1e-7)
        if not out.requires_grad:
            raise Wrong("the result has no gradient: torch.round has zero gradient everywhere, so use the "
                        "straight-through trick, e.g. x + (x_hat - x).detach(), masked where values are clamped.")
        grad = torch.randn(300, generator=g)
        (gx,) = torch.autograd.grad(out, x, grad)
        q = torch.round(x.detach() / scale) + zp
        inside = (q >= qmin) & (q <= qmax)
        if torch.allclose(gx, torch.zeros_like(gx)):
            raise Wrong("the gradient is zero everywhere: rounding must be skipped in the backward pass "
                        "(straight-through estimator).")
        if torch.allclose(gx, grad) and not inside.all():
            raise Wrong("the gradient passes through clamped values too: values outside [qmin, qmax] after "
                        "rounding should get zero gradient (they do not move the output).")
        expect_close(gx, grad * inside, "the gradient", atol=1e-6)


def _ref_kmeans_step(w: torch.Tensor, c: torch.Tensor):
    idx = (w.reshape(-1, 1) - c.reshape(1, -1)).abs().argmin(1)
    new = c.clone()
    for k in range(len(c)):
        if (idx == k).any():
            new[k] = w[idx == k].mean()
    return idx, new


@checker("one k-means step")
def check_kmeans_step(fn):
    """fn(w, centroids) -> (assignments int64 (N,), new centroids (K,)): one Lloyd iteration in 1-D."""
    g = _gen(3)
    for n, k in [(200, 4), (1000, 8), (50, 2)]:
        w = torch.randn(n, generator=g)
        c = torch.linspace(float(w.min()), float(w.max()), k)
        idx, new = fn(w.clone(), c.clone())
        want_idx, want_new = _ref_kmeans_step(w, c)
        expect_shape(idx, (n,), "the assignments")
        if idx.dtype not in (torch.int64, torch.int32):
            raise Wrong(f"the assignments should be integer indices, got dtype {idx.dtype}.")
        if not torch.equal(idx.long(), want_idx):
            raise Wrong("the assignments differ: each weight goes to the centroid with the smallest |w - c|.")
        expect_shape(new, (k,), "the new centroids")
        if torch.allclose(new.float(), c):
            raise Wrong("the centroids did not move: set each one to the mean of the weights assigned to it.")
        expect_close(new.float(), want_new, "the new centroids", atol=1e-5)
    # an empty cluster keeps its centroid instead of becoming NaN
    w = torch.tensor([0.0, 0.1, 0.2, 5.0])
    c = torch.tensor([0.0, 2.5, 5.0])
    _, new = fn(w, c)
    if torch.isnan(torch.as_tensor(new)).any():
        raise Wrong("an empty cluster produced NaN (mean of nothing): keep its old centroid.")
    expect_close(torch.as_tensor(new).float(), torch.tensor([0.1, 2.5, 5.0]), "the centroids with an empty cluster",
                 atol=1e-6)
