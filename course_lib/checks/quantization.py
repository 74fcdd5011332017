"""Checkers for chapter 2 (quantization) exercises. ``check_quantized_linear`` compares the learner's
integer layer bit for bit with onnxruntime's integer kernels (``deploy.ort_qlinear``)."""
from __future__ import annotations

import math
import numbers

import torch

from . import Wrong, checker, expect_close, expect_shape, expect_tensor

__all__ = ["check_scale_zero_point", "check_fake_quant_ste", "check_kmeans_step", "check_quantized_linear"]


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
        if isinstance(zp, bool) or not isinstance(zp, numbers.Real):
            raise Wrong(f"{where}: return the zero-point as a Python number, got {type(zp).__name__}.")
        if not math.isfinite(float(zp)):
            raise Wrong(f"{where}: the zero-point is {zp}.")
        exact = -min(lo, 0.0) / want_s
        if float(zp) != int(float(zp)):
            if abs(float(zp) - exact) < 1e-6 * max(1.0, abs(exact)):
                raise Wrong(f"{where}: the zero-point {zp:.6g} is -lo / scale, unrounded: it must be an integer "
                            "(the integer that stands for 0.0), so round it: round(-lo / scale).")
            raise Wrong(f"{where}: the zero-point must be an integer (round it), got {zp}.")
        if int(zp) == -want_z and want_z != 0:
            raise Wrong(f"{where}: zero_point has the wrong sign: it is the integer that represents 0, "
                        "zero_point = -round(lo / scale).")
        if int(zp) < 0 or int(zp) > 2 ** bits - 1:
            raise Wrong(f"{where}: zero_point {int(zp)} lies outside the grid [0, {2 ** bits - 1}]: clamp it to "
                        "[0, 2**bits - 1] (and widen the range to contain 0 first).")
        near_tie = abs(exact - round(exact)) > 0.5 - 1e-4  # x.5 ties may round either way in float32
        if int(zp) != want_z and int(zp) == math.floor(exact) and not near_tie:
            raise Wrong(f"{where}: zero_point is {int(zp)}, but -lo / scale = {exact:.4f} rounds to {want_z}: int() "
                        "and math.floor drop the fraction; round to the nearest integer with round().")
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
            no_zp = torch.clamp(torch.round(x.detach() / scale) + zp, qmin, qmax) * scale
            if zp and torch.allclose(out.detach(), no_zp, atol=1e-6):
                raise Wrong(f"{where}: subtract the zero-point before scaling back: x_hat = (q - zero_point) * scale.")
            no_round = (torch.clamp(x.detach() / scale + zp, qmin, qmax) - zp) * scale
            if torch.allclose(out.detach(), no_round, atol=1e-6):
                raise Wrong(f"{where}: the values are not rounded: q = round(x / scale) + zero_point must be an "
                            "integer before the clamp (torch.round; the gradient trick handles the backward pass).")
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
        v = x.detach() / scale + zp
        unrounded = (v >= qmin) & (v <= qmax)
        if not torch.equal(unrounded, inside) and torch.allclose(gx, grad * unrounded, atol=1e-6):
            raise Wrong("the gradient mask tests x / scale + zero_point before rounding: a value that rounds onto "
                        "qmin or qmax is not clamped and keeps its gradient; test q = round(x / scale) + zero_point.")
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


# ---------------------------------------------------------------- quantized linear layer, in integers
def _qlinear_case(g: torch.Generator, n: int, k: int, m: int, z_x: int, z_w: int, wmax: int, out_frac: float = 0.5,
                  dyadic: bool = False):
    """Random inputs of a quantized linear layer: uint8 q_x (n, k), int8 q_w (m, k) in [-wmax, wmax],
    float32-exact scales (per-channel s_w), a float bias, and an output grid covering a fraction
    ``out_frac`` of the real outputs' range (small out_frac: many outputs clamp)."""
    q_x = torch.randint(0, 256, (n, k), generator=g).to(torch.uint8)
    q_w = torch.randint(-wmax, wmax + 1, (m, k), generator=g).to(torch.int8)
    if dyadic:  # powers of two: many products land exactly on .5, where the rounding rule matters
        s_x = 2.0 ** -4
        s_w = 2.0 ** -torch.randint(5, 8, (m,), generator=g).float()
    else:
        s_x = float(torch.empty(()).uniform_(0.005, 0.05, generator=g))
        s_w = torch.empty(m).uniform_(0.001, 0.02, generator=g)
    s_acc = (torch.tensor(s_x) * s_w).double()
    acc = ((q_x.double() - z_x) @ (q_w.double() - z_w).T)
    bias = (torch.randn(m, generator=g) * acc.std() * s_acc * 0.5).float()
    if dyadic:
        bias = torch.round(bias.double() / s_acc).float() * s_acc.float()  # exactly k * s_x * s_w
    real = acc * s_acc + bias.double()
    lo, hi = float(real.min()), float(real.max())
    span = max(hi - lo, 1e-6) * out_frac
    s_y = float(torch.tensor(span / 255, dtype=torch.float32))
    if dyadic:
        s_y = 2.0 ** round(math.log2(span / 255))
    z_y = int(min(max(round(-(lo + hi) / 2 / s_y) + 128, 0), 255))
    return q_x, z_x, s_x, q_w, z_w, s_w.float(), bias, s_y, z_y


def _float32_case(g: torch.Generator):
    """A case where the float32 multiplier matters: s_x * s_w is not exact in float32 (it rounds to
    (1 + 2**-11) / 16), so M = (s_x * s_w) / s_y is exactly 2**-7 in float32 and the accumulators,
    multiples of 64, land exactly on .5 half of the time; in float64 they sit just above .5."""
    n, m = 64, 8
    q_x = (torch.randint(0, 16, (n, 1), generator=g) * 16).to(torch.uint8)
    q_w = (torch.randint(-15, 16, (m, 1), generator=g) * 4).to(torch.int8)
    s_x = 1.0 + 2.0 ** -12
    s_w = torch.full((m,), (1.0 + 2.0 ** -12) / 16)
    s_y = 8.0 + 2.0 ** -8
    s_acc = torch.tensor(s_x, dtype=torch.float32) * s_w
    bias = torch.randint(-20, 20, (m,), generator=g).float() * 128 * s_acc                # exactly 128 k s_x s_w
    return q_x, 0, s_x, q_w, 0, s_w, bias, s_y, 128


def _requant_variants(acc, s_x, s_w, s_y, z_y):
    """uint8-valued results (int64) of typical requantization mistakes, by name."""
    s_acc = torch.tensor(s_x, dtype=torch.float32) * s_w
    m32 = s_acc / torch.tensor(s_y, dtype=torch.float32)
    v32 = acc.to(torch.float32) * m32
    v64 = acc.double() * (float(s_x) * s_w.double() / float(s_y))
    s_x32, s_y32 = torch.tensor(s_x, dtype=torch.float32), torch.tensor(s_y, dtype=torch.float32)
    a32 = acc.to(torch.float32)
    orders = [a32 * ((s_x32 / s_y32) * s_w), a32 * (s_x32 * (s_w / s_y32)), a32 * s_acc / s_y32,
              a32 * s_x32 * s_w / s_y32]
    out = {"float64": torch.round(v64) + z_y, "half-up": torch.floor(v32 + 0.5) + z_y,
           "truncate": torch.trunc(v32) + z_y, "unrounded": torch.floor(v32 + z_y)}
    out.update({f"order{i}": torch.round(v) + z_y for i, v in enumerate(orders)})
    return out


@checker("quantized linear layer in integers")
def check_quantized_linear(fn):
    """fn(q_x, z_x, s_x, q_w, z_w, s_w, bias, s_y, z_y) -> uint8 (N, M), bit for bit onnxruntime's result.

    q_x uint8 (N, K), z_x int; s_x float; q_w int8 (M, K), z_w int; s_w float32 (M,) per output
    channel; bias float32 (M,); s_y float; z_y int. The reference is onnxruntime's QLinearConv
    (1x1, with the int32 bias round(bias / (s_x * s_w))) run on the same numbers. On x86 CPUs
    without VNNI the weights stay within 7 bits so that onnxruntime's kernels cannot saturate.
    """
    from .. import deploy
    from ..env import u8s8_saturates
    from ..quantization import integer as I
    wmax = 63 if u8s8_saturates() else 127
    g = _gen(4)
    cases = [("zero-points 0", _qlinear_case(g, 16, 40, 8, 0, 0, wmax)),
             ("asymmetric activations (z_x != 0)", _qlinear_case(g, 32, 100, 12, 97, 0, wmax)),
             ("a weight zero-point (z_w != 0)", _qlinear_case(g, 32, 100, 12, 30, 5, wmax)),
             ("scales that are powers of two (ties)", _qlinear_case(g, 64, 30, 16, 11, 0, wmax, dyadic=True)),
             ("outputs beyond [0, 255]", _qlinear_case(g, 32, 64, 10, 60, 0, wmax, out_frac=0.15)),
             ("a float32 multiplier", _float32_case(_gen(5))),
             ("many outputs", _qlinear_case(_gen(16), 512, 48, 256, 41, 0, 63))]
    for what, (q_x, z_x, s_x, q_w, z_w, s_w, bias, s_y, z_y) in cases:
        bias_q = I.quantize_bias(bias, s_x, s_w)
        ref = deploy.ort_qlinear("linear", q_x, s_x, z_x, q_w, s_w, z_w, s_y, z_y, bias_q).to(torch.int64)
        out = fn(q_x.clone(), z_x, s_x, q_w.clone(), z_w, s_w.clone(), bias.clone(), s_y, z_y)
        expect_shape(out, ref.shape, "the result")
        got = out.detach().cpu()
        if got.is_floating_point() and bool(torch.isfinite(got).all()) and torch.equal(got, torch.round(got)):
            got = got.to(torch.int64)
        elif not got.is_floating_point():
            got = got.to(torch.int64)
        where = f"case '{what}'"
        if torch.equal(got, ref):
            if out.dtype != torch.uint8:
                raise Wrong(f"{where}: the values are right but the dtype is {out.dtype}: the next layer reads "
                            "uint8, so return q_y.to(torch.uint8) (after the clamp).")
            continue
        if got.is_floating_point():
            raise Wrong(f"{where}: the result holds non-integer values: round, clamp and return uint8 integers.")
        _diagnose_qlinear(got, ref, where, q_x, z_x, s_x, q_w, z_w, s_w, bias, s_y, z_y)
    if not torch.is_tensor(out) or out.dtype != torch.uint8:
        raise Wrong(f"return a torch.uint8 tensor, got {out.dtype}.")


def _diagnose_qlinear(got, ref, where, q_x, z_x, s_x, q_w, z_w, s_w, bias, s_y, z_y):
    """Name the typical mistake that reproduces ``got``, else describe the difference; always raises Wrong."""
    from ..quantization import integer as I
    x, w = q_x.to(torch.int64), q_w.to(torch.int64)
    bias_q = I.quantize_bias(bias, s_x, s_w).to(torch.int64)

    def finish(acc, clamp=True):
        s_acc = torch.tensor(s_x, dtype=torch.float32) * s_w
        v = torch.round(acc.to(torch.float32) * (s_acc / torch.tensor(s_y, dtype=torch.float32))) + z_y
        return torch.clamp(v, 0, 255).to(torch.int64) if clamp else v.to(torch.int64)

    exact = (x - z_x) @ (w - z_w).T
    candidates = []
    if z_x:
        candidates.append((x @ (w - z_w).T + bias_q,
                           "the zero-point terms are missing: subtract z_x from q_x (the real value is "
                           "s_x * (q_x - z_x)), i.e. acc = sum (q_w - z_w)(q_x - z_x); in the expansion "
                           "sum q_w q_x - z_x sum q_w - z_w sum q_x + K z_w z_x, the z_x sum q_w term is missing"))
    if z_w:
        candidates.append(((x - z_x) @ w.T + bias_q,
                           "the weight zero-point term is missing: subtract z_w from q_w too (the term "
                           "-z_w sum q_x of the expansion)"))
    if z_x and z_w:
        candidates.append((x @ w.T + bias_q, "the zero-point terms are missing: acc = sum (q_w - z_w)(q_x - z_x)"))
        candidates.append((x @ w.T - z_x * w.sum(1) - z_w * x.sum(1, keepdim=True) + bias_q,
                           "the constant term K * z_w * z_x of the expansion is missing"))
    wrap = (((x - z_x) % 256) @ (((w - z_w + 128) % 256) - 128).T) + bias_q
    candidates.append((wrap, "subtracting a zero-point in uint8/int8 wraps around (10 - 97 becomes 169): "
                             "cast q_x and q_w to torch.int32 before any arithmetic"))
    acc16 = ((exact + 32768) % 65536) - 32768 + bias_q
    candidates.append((acc16, "the sums overflow: accumulate in torch.int32, not in an 8- or 16-bit type"))
    s_acc32 = torch.tensor(s_x, dtype=torch.float32) * s_w
    for b, msg in ((0, "the bias is missing"),
                   (torch.round(bias / torch.tensor(s_y, dtype=torch.float32)).to(torch.int64), "the bias is at the wrong scale"),
                   (torch.round(bias / torch.tensor(s_x, dtype=torch.float32)).to(torch.int64), "the bias is at the wrong scale"),
                   (torch.round(bias / s_w).to(torch.int64), "the bias is at the wrong scale")):
        candidates.append((exact + b, msg + ": quantize it to int32 at the accumulator's scale, "
                                            "round(bias / (s_x * s_w)), and add it to acc before requantizing"))
    for acc, msg in candidates:
        if torch.equal(got, finish(acc)):
            raise Wrong(f"{where}: {msg}.")
    acc = exact + bias_q
    if torch.equal(got, finish(acc, clamp=False)) or torch.equal(got, finish(acc, clamp=False) % 256):
        raise Wrong(f"{where}: clamp q_y to [0, 255] before converting to uint8 (values outside the grid "
                    "wrap around or escape it).")
    int8_range = finish(acc, clamp=False).clamp(-128, 127)
    if torch.equal(got, int8_range) or torch.equal(got, int8_range % 256):
        raise Wrong(f"{where}: the output is uint8, so clamp q_y to [0, 255], not to int8's [-128, 127].")
    s_y32 = torch.tensor(s_y, dtype=torch.float32)
    float_bias = [torch.round(exact.to(torch.float32) * (s_acc32 / s_y32) + bias / s_y32) + z_y,
                  torch.round((exact.to(torch.float32) * s_acc32 + bias) / s_y32) + z_y]
    if any(torch.equal(got, torch.clamp(v, 0, 255).to(torch.int64)) for v in float_bias):
        raise Wrong(f"{where}: the bias is added in float: quantize it to int32, round(bias / (s_x * s_w)), and "
                    "add it to the int32 accumulator (integer-only inference has no float add).")
    for name, v in _requant_variants(acc, s_x, s_w, s_y, z_y).items():
        if torch.equal(got, torch.clamp(v, 0, 255).to(torch.int64)):
            msg = {"half-up": "rounds halves up (floor(v + 0.5)); onnxruntime rounds half to even (torch.round)",
                   **{f"order{i}": "multiplies in another order: float32 rounding depends on it; onnxruntime "
                                   "computes M = (s_x * s_w) / s_y once, then float32(acc) * M"
                      for i in range(4)},
                   "truncate": "truncates (int() or .to(int) drops the fraction); round to the nearest, half to "
                               "even (torch.round), before converting",
                   "unrounded": "is never rounded: .to(torch.uint8) drops the fraction of acc * M + z_y; round "
                                "acc * M to the nearest integer (torch.round) before adding z_y and clamping",
                   "float64": "computes the multiplier in float64; onnxruntime computes M = (s_x * s_w) / s_y "
                              "in float32 and multiplies float32(acc) * M in float32"}[name]
            raise Wrong(f"{where}: the requantization {msg}.")
    diff = (got - ref).abs()
    raise Wrong(f"{where}: {int((diff > 0).sum())} of {diff.numel()} outputs differ from onnxruntime "
                f"(largest difference {int(diff.max())}).")
