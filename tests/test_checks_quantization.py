"""Each chapter-2 checker accepts the reference solution and rejects typical wrong answers."""
from __future__ import annotations

import torch

from course_lib import checks
from course_lib import quantization as Q


# ---------------------------------------------------------------- scale and zero-point
def sz_ref(lo, hi, bits):
    s, z = Q.compute_qparams(lo, hi, bits, symmetric=False)
    return float(s), int(z)


def sz_no_widen(lo, hi, bits):
    s = (hi - lo) / (2 ** bits - 1)
    return s, int(min(max(-round(lo / s), 0), 2 ** bits - 1))


def sz_pow2(lo, hi, bits):
    lo, hi = min(lo, 0), max(hi, 0)
    s = (hi - lo) / 2 ** bits
    return s, int(-round(lo / s))


def sz_sign(lo, hi, bits):
    lo, hi = min(lo, 0), max(hi, 0)
    s = (hi - lo) / (2 ** bits - 1)
    return s, int(round(lo / s))


def sz_float_zp(lo, hi, bits):
    lo, hi = min(lo, 0), max(hi, 0)
    s = (hi - lo) / (2 ** bits - 1)
    return s, -lo / s + 0.3


def test_scale_zero_point_checker(capsys):
    assert checks.check_scale_zero_point(sz_ref)
    assert "✓" in capsys.readouterr().out
    for wrong, words in [(sz_no_widen, "contain 0"), (sz_pow2, "2**bits - 1"), (sz_sign, "sign"),
                         (sz_float_zp, "integer")]:
        assert not checks.check_scale_zero_point(wrong)
        assert words in capsys.readouterr().out


def test_scale_zero_point_checker_stub(capsys):
    def stub(lo, hi, bits):
        raise NotImplementedError
    assert not checks.check_scale_zero_point(stub)
    assert "not implemented" in capsys.readouterr().out


# ---------------------------------------------------------------- fake quant with STE
def fq_ref(x, scale, zp, qmin, qmax):
    return Q.fake_quantize(x, 8, False, scale=torch.tensor(scale), zero_point=torch.tensor(zp)) \
        if (qmin, qmax) == (0, 255) else torch.fake_quantize_per_tensor_affine(x, scale, zp, qmin, qmax)


def fq_learner(x, scale, zp, qmin, qmax):  # the solution a learner writes
    q = torch.round(x / scale) + zp
    inside = (q >= qmin) & (q <= qmax)
    x_hat = (torch.clamp(q, qmin, qmax) - zp) * scale
    return torch.where(inside, x + (x_hat - x).detach(), x_hat.detach())


def fq_no_ste(x, scale, zp, qmin, qmax):
    return (torch.clamp(torch.round(x / scale) + zp, qmin, qmax) - zp) * scale


def fq_unmasked(x, scale, zp, qmin, qmax):
    x_hat = (torch.clamp(torch.round(x / scale) + zp, qmin, qmax) - zp) * scale
    return x + (x_hat - x).detach()


def fq_floor(x, scale, zp, qmin, qmax):
    x_hat = (torch.clamp(torch.floor(x / scale) + zp, qmin, qmax) - zp) * scale
    return x + (x_hat - x).detach()


def fq_noclamp(x, scale, zp, qmin, qmax):
    x_hat = (torch.round(x / scale) + zp - zp) * scale
    return x + (x_hat - x).detach()


def fq_detached(x, scale, zp, qmin, qmax):
    return fq_no_ste(x.detach(), scale, zp, qmin, qmax)


def test_fake_quant_ste_checker(capsys):
    assert checks.check_fake_quant_ste(fq_ref)
    assert checks.check_fake_quant_ste(fq_learner)
    capsys.readouterr()
    for wrong, words in [(fq_no_ste, "zero everywhere"), (fq_unmasked, "clamped"), (fq_floor, "nearest"),
                         (fq_noclamp, "clamp the integers"), (fq_detached, "no gradient")]:
        assert not checks.check_fake_quant_ste(wrong)
        assert words in capsys.readouterr().out


# ---------------------------------------------------------------- one k-means step
def km_ref(w, c):
    idx = (w[:, None] - c[None, :]).abs().argmin(1)
    sums = torch.zeros_like(c).index_add_(0, idx, w)
    counts = torch.bincount(idx, minlength=len(c))
    return idx, torch.where(counts > 0, sums / counts.clamp(min=1), c)


def km_nan_empty(w, c):
    idx = (w[:, None] - c[None, :]).abs().argmin(1)
    return idx, torch.stack([w[idx == k].mean() for k in range(len(c))])


def km_no_move(w, c):
    return (w[:, None] - c[None, :]).abs().argmin(1), c


def km_sq_wrong_axis(w, c):
    idx = (w[:, None] - c[None, :]).abs().argmax(1)
    return idx, km_ref(w, c)[1]


def test_kmeans_step_checker(capsys):
    assert checks.check_kmeans_step(km_ref)
    capsys.readouterr()
    for wrong, words in [(km_nan_empty, "NaN"), (km_no_move, "did not move"), (km_sq_wrong_axis, "assignments")]:
        assert not checks.check_kmeans_step(wrong)
        assert words in capsys.readouterr().out


def test_checkers_leave_the_global_random_generator_alone():
    from course_lib import checks as C

    def scale_zp(lo, hi, bits):
        s, z = Q.compute_qparams(lo, hi, bits, symmetric=False)
        return float(s), int(z)
    torch.manual_seed(7)
    want = torch.rand(3)
    torch.manual_seed(7)
    assert C.check_scale_zero_point(scale_zp, verbose=False)
    assert C.check_fake_quant_ste(lambda x, s, z, lo, hi: torch.fake_quantize_per_tensor_affine(x, s, z, lo, hi),
                                  verbose=False)
    assert torch.equal(torch.rand(3), want)


# ---------------------------------------------------------------- quantized linear layer in integers
def _acc_bias(q_x, z_x, s_x, q_w, z_w, s_w, bias, dtype=torch.int32):
    s_acc = torch.tensor(s_x, dtype=torch.float32) * s_w
    acc = (q_x.to(dtype) - z_x) @ (q_w.to(dtype) - z_w).T + torch.round(bias / s_acc).to(dtype)
    return acc, s_acc


def ql_ref(q_x, z_x, s_x, q_w, z_w, s_w, bias, s_y, z_y):
    acc, s_acc = _acc_bias(q_x, z_x, s_x, q_w, z_w, s_w, bias)
    return (torch.round(acc.to(torch.float32) * (s_acc / s_y)) + z_y).clamp(0, 255).to(torch.uint8)


def ql_library(q_x, z_x, s_x, q_w, z_w, s_w, bias, s_y, z_y):
    return Q.quantized_linear(q_x, z_x, s_x, q_w, z_w, s_w, bias, s_y, z_y)


def ql_no_zx(q_x, z_x, s_x, q_w, z_w, s_w, bias, s_y, z_y):
    return ql_ref(q_x, 0, s_x, q_w, z_w, s_w, bias, s_y, z_y)


def ql_no_zw(q_x, z_x, s_x, q_w, z_w, s_w, bias, s_y, z_y):
    return ql_ref(q_x, z_x, s_x, q_w, 0, s_w, bias, s_y, z_y)


def ql_no_bias(q_x, z_x, s_x, q_w, z_w, s_w, bias, s_y, z_y):
    return ql_ref(q_x, z_x, s_x, q_w, z_w, s_w, bias * 0, s_y, z_y)


def ql_bias_at_s_y(q_x, z_x, s_x, q_w, z_w, s_w, bias, s_y, z_y):
    acc = (q_x.to(torch.int32) - z_x) @ (q_w.to(torch.int32) - z_w).T + torch.round(bias / s_y).to(torch.int32)
    m = torch.tensor(s_x, dtype=torch.float32) * s_w / s_y
    return (torch.round(acc.float() * m) + z_y).clamp(0, 255).to(torch.uint8)


def ql_float_bias(q_x, z_x, s_x, q_w, z_w, s_w, bias, s_y, z_y):
    acc = (q_x.to(torch.int32) - z_x) @ (q_w.to(torch.int32) - z_w).T
    s_acc = torch.tensor(s_x, dtype=torch.float32) * s_w
    return (torch.round((acc.float() * s_acc + bias) / s_y) + z_y).clamp(0, 255).to(torch.uint8)


def ql_half_up(q_x, z_x, s_x, q_w, z_w, s_w, bias, s_y, z_y):
    acc, s_acc = _acc_bias(q_x, z_x, s_x, q_w, z_w, s_w, bias)
    return (torch.floor(acc.float() * (s_acc / s_y) + 0.5) + z_y).clamp(0, 255).to(torch.uint8)


def ql_float64(q_x, z_x, s_x, q_w, z_w, s_w, bias, s_y, z_y):
    acc, _ = _acc_bias(q_x, z_x, s_x, q_w, z_w, s_w, bias, torch.int64)
    return (torch.round(acc.double() * s_x * s_w.double() / s_y) + z_y).clamp(0, 255).to(torch.uint8)


def ql_no_clamp(q_x, z_x, s_x, q_w, z_w, s_w, bias, s_y, z_y):
    acc, s_acc = _acc_bias(q_x, z_x, s_x, q_w, z_w, s_w, bias)
    return (torch.round(acc.float() * (s_acc / s_y)) + z_y).to(torch.uint8)


def ql_int32(*args):
    return ql_ref(*args).to(torch.int32)


def ql_wraps(q_x, z_x, s_x, q_w, z_w, s_w, bias, s_y, z_y):
    return ql_ref((q_x - z_x).to(torch.int32) + z_x * 0, 0, s_x, (q_w - z_w).to(torch.int32), 0, s_w, bias, s_y, z_y)


def test_quantized_linear_checker(capsys):
    assert checks.check_quantized_linear(ql_ref)
    assert checks.check_quantized_linear(ql_library)
    capsys.readouterr()
    for wrong, words in [(ql_no_zx, "zero-point terms are missing"), (ql_no_zw, "weight zero-point term"),
                         (ql_no_bias, "bias is missing"), (ql_bias_at_s_y, "wrong scale"),
                         (ql_float_bias, "added in float"), (ql_half_up, "half to even"),
                         (ql_float64, "float32"), (ql_no_clamp, "clamp"), (ql_int32, "dtype"),
                         (ql_wraps, "wraps around")]:
        assert not checks.check_quantized_linear(wrong), wrong.__name__
        assert words in capsys.readouterr().out, wrong.__name__


def test_quantized_linear_checker_stub(capsys):
    def stub(*args):
        raise NotImplementedError
    assert not checks.check_quantized_linear(stub)
    assert "not implemented" in capsys.readouterr().out


def ql_order(q_x, z_x, s_x, q_w, z_w, s_w, bias, s_y, z_y):
    acc, s_acc = _acc_bias(q_x, z_x, s_x, q_w, z_w, s_w, bias)
    return (torch.round(acc.float() * s_x * s_w / s_y) + z_y).clamp(0, 255).to(torch.uint8)


def test_quantized_linear_checker_names_the_multiplication_order(capsys):
    assert not checks.check_quantized_linear(ql_order)
    assert "order" in capsys.readouterr().out


# ---------------------------------------------------------------- named mistakes and accepted alternatives (issue)
def sz_unrounded(lo, hi, bits):
    lo, hi = min(lo, 0), max(hi, 0)
    s = (hi - lo) / (2 ** bits - 1)
    return s, -lo / s


def sz_truncated(lo, hi, bits):
    lo, hi = min(lo, 0), max(hi, 0)
    s = (hi - lo) / (2 ** bits - 1)
    return s, int(-lo / s)


def sz_no_clamp(lo, hi, bits):  # the scale from the widened range, the zero-point from the original lo
    s = (max(hi, 0) - min(lo, 0)) / (2 ** bits - 1)
    return s, -round(lo / s)


def sz_half_up_numpy(lo, hi, bits):  # numpy numbers, round half up: a correct alternative
    import numpy as np
    lo, hi = np.float64(min(lo, 0)), np.float64(max(hi, 0))
    s = (hi - lo) / (2 ** bits - 1)
    return s, np.int64(np.clip(np.floor(-lo / s + 0.5), 0, 2 ** bits - 1))


def sz_torch(lo, hi, bits):  # tensors and a float-valued integer zero-point: a correct alternative
    t = torch.tensor([min(lo, 0.0), max(hi, 0.0)], dtype=torch.float64)
    s = (t[1] - t[0]) / (2 ** bits - 1)
    return s, torch.clamp(torch.round(-t[0] / s), 0, 2 ** bits - 1)


def test_scale_zero_point_names_unrounded_truncated_and_unclamped_zero_points(capsys):
    for right in (sz_half_up_numpy, sz_torch):
        assert checks.check_scale_zero_point(right), right.__name__
    capsys.readouterr()
    for wrong, words in [(sz_unrounded, "unrounded"), (sz_truncated, "int()"), (sz_no_clamp, "clamp it")]:
        assert not checks.check_scale_zero_point(wrong), wrong.__name__
        assert words in capsys.readouterr().out, wrong.__name__


class _STE(torch.autograd.Function):
    """A custom autograd function: another correct way to write the clipped straight-through estimator."""
    @staticmethod
    def forward(ctx, x, scale, zp, qmin, qmax):
        q = torch.round(x / scale) + zp
        ctx.save_for_backward((q >= qmin) & (q <= qmax))
        return (torch.clamp(q, qmin, qmax) - zp) * scale

    @staticmethod
    def backward(ctx, g):
        (inside,) = ctx.saved_tensors
        return g * inside, None, None, None, None


def fq_autograd_function(x, scale, zp, qmin, qmax):
    return _STE.apply(x, scale, zp, qmin, qmax)


def fq_mask_multiply(x, scale, zp, qmin, qmax):  # x_hat forward, gradient x masked: also correct
    q = torch.round(x / scale) + zp
    inside = ((q >= qmin) & (q <= qmax)).to(x.dtype)
    x_hat = (torch.clamp(q, qmin, qmax) - zp) * scale
    return x_hat.detach() + (x - x.detach()) * inside


def fq_unrounded_mask(x, scale, zp, qmin, qmax):
    v = x / scale + zp
    inside = (v >= qmin) & (v <= qmax)
    x_hat = (torch.clamp(torch.round(v), qmin, qmax) - zp) * scale
    return torch.where(inside, x + (x_hat - x).detach(), x_hat.detach())


def fq_no_round(x, scale, zp, qmin, qmax):
    q = x / scale + zp
    x_hat = (torch.clamp(q, qmin, qmax) - zp) * scale
    return torch.where((q >= qmin) & (q <= qmax), x + (x_hat - x).detach(), x_hat.detach())


def fq_forgot_zp(x, scale, zp, qmin, qmax):
    q = torch.round(x / scale) + zp
    x_hat = torch.clamp(q, qmin, qmax) * scale
    return torch.where((q >= qmin) & (q <= qmax), x + (x_hat - x).detach(), x_hat.detach())


def test_fake_quant_ste_alternatives_and_named_mistakes(capsys):
    for right in (fq_autograd_function, fq_mask_multiply):
        assert checks.check_fake_quant_ste(right), right.__name__
    capsys.readouterr()
    for wrong, words in [(fq_unrounded_mask, "before rounding"), (fq_no_round, "not rounded"),
                         (fq_forgot_zp, "subtract the zero-point"), (fq_noclamp, "clamp the integers")]:
        assert not checks.check_fake_quant_ste(wrong), wrong.__name__
        assert words in capsys.readouterr().out, wrong.__name__


def ql_int64_acc(q_x, z_x, s_x, q_w, z_w, s_w, bias, s_y, z_y):  # int64 accumulation: exact too, accepted
    s_acc = torch.tensor(s_x, dtype=torch.float32) * s_w
    acc = (q_x.long() - z_x) @ (q_w.long() - z_w).T + torch.round(bias / s_acc).long()
    m = s_acc / torch.tensor(s_y, dtype=torch.float32)
    return torch.clamp(torch.round(acc.to(torch.float32) * m) + z_y, 0, 255).to(torch.uint8)


def ql_unrounded(q_x, z_x, s_x, q_w, z_w, s_w, bias, s_y, z_y):
    acc, s_acc = _acc_bias(q_x, z_x, s_x, q_w, z_w, s_w, bias)
    return (acc.float() * (s_acc / s_y) + z_y).clamp(0, 255).to(torch.uint8)


def ql_int8_clamp(q_x, z_x, s_x, q_w, z_w, s_w, bias, s_y, z_y):
    acc, s_acc = _acc_bias(q_x, z_x, s_x, q_w, z_w, s_w, bias)
    return (torch.round(acc.float() * (s_acc / s_y)) + z_y).clamp(-128, 127).to(torch.int64)


def ql_no_clamp_int64(q_x, z_x, s_x, q_w, z_w, s_w, bias, s_y, z_y):
    acc, s_acc = _acc_bias(q_x, z_x, s_x, q_w, z_w, s_w, bias)
    return (torch.round(acc.float() * (s_acc / s_y)) + z_y).to(torch.int64)


def test_quantized_linear_alternatives_and_named_mistakes(capsys):
    assert checks.check_quantized_linear(ql_int64_acc)
    capsys.readouterr()
    for wrong, words in [(ql_unrounded, "never rounded"), (ql_int8_clamp, "not to int8"),
                         (ql_no_clamp_int64, "clamp q_y to [0, 255]")]:
        assert not checks.check_quantized_linear(wrong), wrong.__name__
        assert words in capsys.readouterr().out, wrong.__name__
