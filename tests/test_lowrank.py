"""Tests of course_lib.lowrank: SVD of Linear layers, Tucker-2 and CP of convolutions, rank choice.

Tolerances: in float64 a full-rank factorization reproduces the original to 1e-10 (absolute, on
outputs of order 1); in float32 to 1e-4 (a few ulps of accumulated rounding through two or three
layers instead of one).
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from course_lib import lowrank as lr
from course_lib import measure
from course_lib.models import LeNet5

F64 = dict(atol=1e-10, rtol=1e-10)
F32 = dict(atol=1e-4, rtol=1e-4)


def _linear(n_in, n_out, bias=True, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(n_in, n_out, bias=bias, dtype=dtype)


def _conv(cin, cout, k=3, seed=0, dtype=torch.float64, **kw):
    torch.manual_seed(seed)
    return nn.Conv2d(cin, cout, k, dtype=dtype, **kw)


# ---------------------------------------------------------------- spectra and ranks
def test_spectrum_linear_matches_svdvals():
    lin = _linear(7, 5)
    s = lr.spectrum(lin)
    assert s.dtype == torch.float64 and s.shape == (5,)
    assert torch.allclose(s, torch.linalg.svdvals(lin.weight.detach()), **F64)


def test_spectrum_conv_modes():
    conv = _conv(4, 6, 3)
    w = conv.weight.detach()
    assert torch.allclose(lr.spectrum(conv, 0), torch.linalg.svdvals(w.reshape(6, -1)), **F64)
    assert torch.allclose(lr.spectrum(conv, 1), torch.linalg.svdvals(w.transpose(0, 1).reshape(4, -1)), **F64)
    with pytest.raises(ValueError, match="mode"):
        lr.spectrum(conv, 2)
    with pytest.raises(ValueError, match="nn.Linear or nn.Conv2d"):
        lr.spectrum(nn.ReLU())


def test_energy_curve_and_choose_rank():
    s = torch.tensor([4.0, 3.0])
    assert torch.allclose(lr.energy_curve(s), torch.tensor([0.64, 1.0], dtype=torch.float64))
    assert lr.choose_rank(s, 0.6) == 1
    assert lr.choose_rank(s, 0.7) == 2
    assert lr.choose_rank(s, 1.0) == 2
    assert lr.choose_rank(torch.tensor([5.0, 0.0, 0.0]), 1.0) == 1
    assert lr.choose_rank(torch.tensor([1.0, 1.0, 1.0, 1.0]), 0.5) == 2
    assert torch.equal(lr.energy_curve(torch.zeros(3)), torch.ones(3, dtype=torch.float64))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0.0, 100.0), min_size=1, max_size=30), st.floats(0.01, 1.0))
def test_choose_rank_is_the_smallest_rank_reaching_the_energy(values, energy):
    s = torch.tensor(sorted(values, reverse=True), dtype=torch.float64)
    k = lr.choose_rank(s, energy)
    assert 1 <= k <= len(s)
    e = lr.energy_curve(s)
    assert e[k - 1] >= energy - 1e-9
    assert k == 1 or e[k - 2] < energy


@pytest.mark.parametrize("energy", [0, -0.1, 1.01, float("nan"), "0.9", True])
def test_choose_rank_rejects_bad_energy(energy):
    with pytest.raises(ValueError, match="energy"):
        lr.choose_rank(torch.tensor([2.0, 1.0]), energy)


def test_choose_rank_rejects_unsorted_or_bad_values():
    with pytest.raises(ValueError, match="descending"):
        lr.choose_rank(torch.tensor([1.0, 2.0]), 0.5)
    with pytest.raises(ValueError, match="singular_values"):
        lr.choose_rank(torch.tensor([]), 0.5)
    with pytest.raises(ValueError, match="singular_values"):
        lr.choose_rank(torch.tensor([1.0, -1.0]), 0.5)


def test_linear_params_and_budget():
    assert lr.linear_params(800, 500) == 400_500
    assert lr.linear_params(800, 500, 30) == 30 * 1300 + 500
    assert lr.linear_params(800, 500, 30, bias=False) == 30 * 1300
    assert lr.rank_for_budget(800, 500, 40_050) == 30
    assert lr.linear_params(800, 500, lr.rank_for_budget(800, 500, 40_050)) <= 40_050
    assert lr.linear_params(800, 500, 31) > 40_050
    assert lr.rank_for_budget(10, 5, 10**9) == 5  # capped at min(in, out)
    with pytest.raises(ValueError, match="max_params"):
        lr.rank_for_budget(800, 500, 100)
    with pytest.raises(ValueError, match="max_params"):
        lr.rank_for_budget(800, 500, 0)
    with pytest.raises(ValueError, match="in_features"):
        lr.rank_for_budget(0, 500, 1000)


# ---------------------------------------------------------------- SVD of a Linear
@pytest.mark.parametrize("shape", [(8, 5), (5, 8), (6, 6)])
def test_truncated_svd_shapes_and_full_rank(shape):
    w = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    a, b = lr.truncated_svd(w, 3)
    assert a.shape == (shape[0], 3) and b.shape == (3, shape[1]) and a.dtype == w.dtype
    a, b = lr.truncated_svd(w, min(shape))
    assert torch.allclose(a @ b, w, **F64)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 12), st.integers(1, 12), st.data())
def test_eckart_young_error_equals_discarded_energy(m, n, data):
    k = data.draw(st.integers(1, min(m, n)))
    w = torch.randn(m, n, dtype=torch.float64, generator=torch.Generator().manual_seed(m * 100 + n))
    a, b = lr.truncated_svd(w, k)
    s = torch.linalg.svdvals(w)
    err = torch.linalg.matrix_norm(w - a @ b).item()
    assert math.isclose(err, math.sqrt(float((s[k:] ** 2).sum())), rel_tol=1e-9, abs_tol=1e-12)
    assert math.isclose(err, lr.svd_error(s, k), rel_tol=1e-9, abs_tol=1e-12)
    # optimality: nudging either factor of the optimum (a nearby rank-k matrix) raises the error
    g = torch.Generator().manual_seed(m + n + k)
    da, db = 1e-3 * torch.randn(a.shape, generator=g, dtype=torch.float64), \
        1e-3 * torch.randn(b.shape, generator=g, dtype=torch.float64)
    for near in ((a + da) @ b, a @ (b + db)):
        assert torch.linalg.matrix_norm(w - near).item() >= err - 1e-12


def test_svd_error_edges():
    s = torch.tensor([3.0, 4.0 / 3.0, 0.0])
    assert lr.svd_error(s, 0) == pytest.approx(math.sqrt(9 + 16 / 9))
    assert lr.svd_error(s, 3) == 0.0
    with pytest.raises(ValueError, match="rank"):
        lr.svd_error(s, 4)


@pytest.mark.parametrize("bias", [True, False])
def test_svd_linear_full_rank_reproduces_layer_float64(bias):
    lin = _linear(12, 7, bias=bias)
    fac = lr.svd_linear(lin, 7)
    x = torch.randn(5, 12, dtype=torch.float64)
    assert isinstance(fac, nn.Sequential) and len(fac) == 2
    assert fac[0].bias is None and (fac[1].bias is not None) == bias
    assert torch.allclose(fac(x), lin(x), **F64)


def test_svd_linear_float32_and_structure():
    lin = _linear(40, 30, dtype=torch.float32)
    fac = lr.svd_linear(lin, 30)
    x = torch.randn(9, 40)
    assert fac[0].weight.dtype == torch.float32
    assert torch.allclose(fac(x), lin(x), **F32)
    low = lr.svd_linear(lin, 4)
    assert (low[0].in_features, low[0].out_features, low[1].out_features) == (40, 4, 30)
    assert measure.count_params(low) == lr.linear_params(40, 30, 4)
    assert low.rank == 4 and low.ranks == 4


def test_svd_linear_keeps_original_and_training_mode():
    lin = _linear(6, 4)
    before = lin.weight.detach().clone()
    lin.eval()
    fac = lr.svd_linear(lin, 2)
    assert torch.equal(lin.weight, before) and not fac.training


@pytest.mark.parametrize("rank", [0, -1, 6, 2.0, None, True])
def test_svd_linear_rejects_bad_rank(rank):
    with pytest.raises(ValueError, match=r"rank=.*\[1, 5\]"):
        lr.svd_linear(_linear(8, 5), rank)


def test_svd_linear_rejects_non_linear():
    with pytest.raises(ValueError, match="nn.Linear"):
        lr.svd_linear(_conv(2, 2), 1)
    with pytest.raises(ValueError, match="2-D"):
        lr.truncated_svd(torch.zeros(2, 2, 2), 1)


# ---------------------------------------------------------------- Tucker-2
def test_unfold():
    t = torch.arange(24.0).reshape(2, 3, 4)
    assert lr.unfold(t, 0).shape == (2, 12)
    assert torch.equal(lr.unfold(t, 1)[1], t[:, 1, :].reshape(-1))
    with pytest.raises(ValueError, match="mode"):
        lr.unfold(t, 3)


@pytest.mark.parametrize("n_iter", [0, 3])
def test_tucker2_full_ranks_reconstruct_kernel(n_iter):
    k = _conv(5, 7, 3).weight.detach()
    core, uo, ui = lr.tucker2(k, (7, 5), n_iter=n_iter)
    assert core.shape == (7, 5, 3, 3) and uo.shape == (7, 7) and ui.shape == (5, 5)
    assert torch.allclose(lr.tucker_reconstruct(core, uo, ui), k, **F64)
    assert torch.allclose(uo.T @ uo, torch.eye(7, dtype=torch.float64), **F64)


def test_tucker2_none_keeps_mode_and_hooi_improves_on_hosvd():
    k = _conv(6, 8, 3).weight.detach()
    core, uo, ui = lr.tucker2(k, (3, None))
    assert core.shape == (3, 6, 3, 3) and torch.equal(ui, torch.eye(6, dtype=torch.float64))
    # A random kernel truncated in BOTH channel modes: HOSVD picks each mode's subspace ignoring the
    # other's truncation, so it is not optimal and HOOI sweeps must strictly lower the error (by
    # about 1.4% here); each sweep never increases it. A no-op HOOI loop fails the strict margin.
    k = torch.randn(6, 8, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    err = [(lr.tucker_reconstruct(*lr.tucker2(k, (3, 2), n_iter=i)) - k).norm().item() for i in (0, 1, 5)]
    assert err[2] <= err[1] + 1e-12 <= err[0] + 2e-12
    assert err[2] < 0.995 * err[0]


CONV_CASES = [dict(), dict(stride=2), dict(padding=1), dict(padding=(2, 1), dilation=(2, 1)),
              dict(stride=(1, 2), padding=1, bias=False), dict(padding=1, padding_mode="reflect"),
              dict(padding=1, padding_mode="circular"), dict(padding="same")]


@pytest.mark.parametrize("kw", CONV_CASES)
def test_tucker_conv_full_ranks_reproduce_output(kw):
    conv = _conv(4, 6, 3, **kw)
    x = torch.randn(2, 4, 9, 10, dtype=torch.float64)
    for ranks in ((6, 4), (6, None), (None, 4)):
        fac = lr.tucker_conv(conv, ranks)
        assert torch.allclose(fac(x), conv(x), **F64), (kw, ranks)
        core = [m for m in fac if m.kernel_size == conv.kernel_size][0]
        assert (core.stride, core.padding, core.dilation, core.padding_mode) == \
            (conv.stride, conv.padding, conv.dilation, conv.padding_mode)
        assert sum(m.bias is not None for m in fac) == (conv.bias is not None)
        assert fac.ranks == ranks


def test_tucker_conv_structure_params_and_float32():
    torch.manual_seed(0)
    conv = nn.Conv2d(20, 50, 5)
    fac = lr.tucker_conv(conv, (16, 12))
    assert [(m.in_channels, m.out_channels, m.kernel_size) for m in fac] == \
        [(20, 12, (1, 1)), (12, 16, (5, 5)), (16, 50, (1, 1))]
    assert measure.count_params(fac) == 20 * 12 + 16 * 12 * 25 + 16 * 50 + 50
    full = lr.tucker_conv(conv, (50, 20))
    x = torch.randn(2, 20, 12, 12)
    assert full[0].weight.dtype == torch.float32
    assert torch.allclose(full(x), conv(x), **F32)


def test_tucker_conv_rejects_groups_and_bad_ranks():
    with pytest.raises(ValueError, match="groups=2"):
        lr.tucker_conv(_conv(4, 6, 3, groups=2), (3, 2))
    conv = _conv(4, 6, 3)
    for ranks, msg in (((0, 2), r"rank_out.*\[1, 6\]"), ((7, 2), r"rank_out.*\[1, 6\]"),
                       ((3, 5), r"rank_in.*\[1, 4\]"), ((3, 0), r"rank_in"), (3, "pair"),
                       ((1, 2, 3), "pair"), ((None, None), "nothing to factorize"), ((2.5, 2), "rank_out")):
        with pytest.raises(ValueError, match=msg):
            lr.tucker_conv(conv, ranks)
    with pytest.raises(ValueError, match="nn.Conv2d"):
        lr.tucker_conv(_linear(3, 3), (1, 1))
    with pytest.raises(ValueError, match="4-D"):
        lr.tucker2(torch.zeros(3, 3), (1, 1))
    with pytest.raises(ValueError, match="n_iter"):
        lr.tucker2(conv.weight, (1, 1), n_iter=-1)


def test_tucker_ranks_for_energy():
    conv = _conv(1, 8, 3)
    r_out, r_in = lr.tucker_ranks_for_energy(conv, 1.0)
    assert r_in is None and r_out == 8
    assert lr.tucker_ranks_for_energy(_conv(4, 6, 3), 1.0) == (6, 4)


# ---------------------------------------------------------------- CP
def test_cp_als_recovers_an_exact_low_rank_tensor():
    g = torch.Generator().manual_seed(0)
    fs = [torch.randn(d, 3, generator=g, dtype=torch.float64) for d in (6, 5, 3, 3)]
    t = torch.einsum("ar,br,cr,dr->abcd", *fs)
    got = lr.cp_als(t, 3, n_iter=200)
    rec = torch.einsum("ar,br,cr,dr->abcd", *got)
    assert (rec - t).norm() / t.norm() < 1e-6


@pytest.mark.parametrize("kw", [dict(), dict(stride=2, padding=1), dict(padding=(1, 2), dilation=(1, 2), bias=False)])
def test_cp_conv_matches_its_own_decomposition(kw):
    conv = _conv(3, 4, 3, **kw)
    fac = lr.cp_conv(conv, 5, n_iter=30)
    x = torch.randn(2, 3, 9, 11, dtype=torch.float64)
    # the layers compute exactly the convolution with the CP-reconstructed kernel
    f = lr.cp_als(conv.weight, 5, n_iter=30)
    approx = nn.Conv2d(3, 4, 3, dtype=torch.float64, **kw)
    with torch.no_grad():
        approx.weight.copy_(torch.einsum("or,ir,hr,wr->oihw", f[0], f[1], f[2], f[3]))
        if conv.bias is not None:
            approx.bias.copy_(conv.bias)
    assert torch.allclose(fac(x), approx(x), **F64)
    assert fac.rank == 5 and len(fac) == 4 and fac[1].groups == 5


def test_cp_conv_high_rank_is_close_and_rejections():
    conv = _conv(3, 4, 3)
    fac = lr.cp_conv(conv, 36, n_iter=100)
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    assert (fac(x) - conv(x)).norm() / conv(x).norm() < 1e-3
    with pytest.raises(ValueError, match="padding"):
        lr.cp_conv(_conv(3, 4, 3, padding=1, padding_mode="reflect"), 2)
    with pytest.raises(ValueError, match="groups"):
        lr.cp_conv(_conv(4, 4, 3, groups=2), 2)
    with pytest.raises(ValueError, match="rank"):
        lr.cp_conv(conv, 0)


# ---------------------------------------------------------------- whole models
def _lenet():
    torch.manual_seed(0)
    return LeNet5(c1=4, c2=6, fc=16).double().eval()


def test_factorize_full_ranks_reproduce_model_and_leave_original():
    model = _lenet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fac = lr.factorize(model, {"conv1": (4, None), "conv2": (6, 4), "fc1": 16, "fc2": 10})
    x = torch.randn(3, 1, 28, 28, dtype=torch.float64)
    assert torch.allclose(fac(x), model(x), **F64)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert lr.factorized_ranks(fac) == {"conv1": (4, None), "conv2": (6, 4), "fc1": 16, "fc2": 10}
    assert lr.factorized_ranks(model) == {}


def test_factorize_reduces_params_and_macs():
    torch.manual_seed(0)
    model = LeNet5().eval()
    fac = lr.factorize(model, {"conv2": (16, 12), "fc1": 30})
    assert measure.count_params(fac) == 431_080 - 400_500 + lr.linear_params(800, 500, 30) \
        - 25_050 + (20 * 12 + 16 * 12 * 25 + 16 * 50 + 50)
    assert measure.macs(fac, (1, 28, 28)) == 288_000 + 20 * 12 * 144 + 16 * 12 * 25 * 64 + 16 * 50 * 64 \
        + 30 * 1300 + 5000


def test_factorize_cp_and_energy():
    model = _lenet()
    fac = lr.factorize(model, {"conv2": 3}, method="cp")
    assert isinstance(fac.conv2, lr.CPConv) and lr.factorized_ranks(fac) == {"conv2": 3}
    full = lr.factorize(model, energy=1.0)  # nothing gets smaller at full energy: all skipped
    assert lr.factorized_ranks(full) == {}
    low = lr.factorize(model, energy=0.5, layers=["fc1"])
    assert set(lr.factorized_ranks(low)) == {"fc1"}
    assert low.fc1.rank == lr.choose_rank(lr.spectrum(model.fc1), 0.5)


def test_factorize_rejects_bad_arguments():
    model = _lenet()
    with pytest.raises(ValueError, match="exactly one"):
        lr.factorize(model)
    with pytest.raises(ValueError, match="exactly one"):
        lr.factorize(model, {"fc1": 2}, energy=0.9)
    with pytest.raises(ValueError, match="not an nn.Linear or nn.Conv2d"):
        lr.factorize(model, {"fc3": 2})
    with pytest.raises(ValueError, match="method"):
        lr.factorize(model, {"fc1": 2}, method="svd")
    with pytest.raises(ValueError, match=r"rank=.*\[1, 10\]"):
        lr.factorize(model, {"fc2": 11})
    with pytest.raises(ValueError, match="non-empty dict"):
        lr.factorize(model, {})
    with pytest.raises(ValueError, match="energy"):
        lr.factorize(model, energy=1.5)
    with pytest.raises(ValueError, match="CP ranks"):
        lr.factorize(model, energy=0.9, method="cp")


# (timing: measure.compare_latency and measure.time_children are tested in test_measure.py)
def test_plots_spectra_figure():
    import matplotlib
    matplotlib.use("Agg")
    from course_lib import plots
    fig = plots.spectra({"a": torch.tensor([3.0, 2.0, 1.0]), "b": torch.tensor([1.0, 0.5])})
    left, right = fig.axes
    assert len(left.lines) == 2 and len(right.lines) == 2 + 2  # two curves + two energy levels
    assert right.lines[0].get_ydata()[-1] == pytest.approx(1.0)





# ---------------------------------------------------------------- cost formulas
@pytest.mark.parametrize("ranks", [(16, 12), (8, None), (None, 4), (50, 20)])
def test_tucker2_macs_matches_measure(ranks):
    model = LeNet5().eval()
    m = lr.factorize(model, {"conv2": ranks}) if ranks != (50, 20) else model
    got = lr.tucker2_macs(20, 50, 5, ranks, 12, 8) if ranks != (50, 20) else None
    if got is not None:
        conv2 = sum(v for k, v in measure.macs_by_layer(m, (1, 28, 28)).items() if k.startswith("conv2"))
        assert got == conv2
    assert lr.tucker2_macs(20, 50, 5, (16, 12), 12, 8) == 392_960  # the chapter's conv2 (review, appendix A)
    assert lr.tucker2_macs(20, 50, (5, 5), (16, 12), (12, 12), (8, 8)) == 392_960


def test_cp_macs_matches_measure_and_is_linear_in_rank():
    model = LeNet5().eval()
    m = lr.factorize(model, {"conv2": 7}, method="cp")
    conv2 = sum(v for k, v in measure.macs_by_layer(m, (1, 28, 28)).items() if k.startswith("conv2"))
    assert lr.cp_macs(20, 50, 5, 7, 12, 8) == conv2 == 7 * lr.cp_macs(20, 50, 5, 1, 12, 8)
    with pytest.raises(ValueError, match="rank=0"):
        lr.cp_macs(20, 50, 5, 0, 12, 8)
    with pytest.raises(ValueError, match="in_size"):
        lr.tucker2_macs(20, 50, 5, (4, 4), (12, 12, 3), 8)
    with pytest.raises(ValueError, match="rank_in"):
        lr.tucker2_macs(20, 50, 5, (4, 40), 12, 8)


# ---------------------------------------------------------------- weight error vs output error
def test_dense_weight_of_every_factorized_layer():
    lin, conv = _linear(12, 9), _conv(6, 8, 3, padding=1)
    assert torch.equal(lr.dense_weight(lin), lin.weight.detach())
    torch.testing.assert_close(lr.dense_weight(lr.svd_linear(lin, 9)), lin.weight.detach(), **F64)
    for ranks in ((8, 6), (3, None), (None, 2), (4, 5)):
        t = lr.tucker_conv(conv, ranks)
        x = torch.randn(2, 6, 7, 7, dtype=torch.float64)
        want = t(x) - (conv.bias.view(1, -1, 1, 1))
        torch.testing.assert_close(torch.nn.functional.conv2d(x, lr.dense_weight(t), padding=1), want, **F64)
    cp = lr.cp_conv(conv, 5, n_iter=5)
    x = torch.randn(2, 6, 7, 7, dtype=torch.float64)
    torch.testing.assert_close(torch.nn.functional.conv2d(x, lr.dense_weight(cp), padding=1),
                               cp(x) - conv.bias.view(1, -1, 1, 1), **F64)
    with pytest.raises(ValueError, match="module must be"):
        lr.dense_weight(nn.ReLU())


def test_relative_weight_error_is_the_eckart_young_error():
    lin = _linear(30, 20)
    s = lr.spectrum(lin)
    err = lr.relative_weight_error(lin, lr.svd_linear(lin, 5))
    assert err == pytest.approx(lr.svd_error(s, 5) / float(s.norm()), rel=1e-9)
    assert lr.relative_weight_error(lin, lin) == 0.0
    with pytest.raises(ValueError, match="different shapes"):
        lr.relative_weight_error(lin, _linear(20, 30))


def test_layer_inputs_and_hessian():
    model = LeNet5().eval()
    x = torch.randn(5, 1, 28, 28)
    feats = lr.layer_inputs(model, "fc1", x, batch_size=2)
    torch.testing.assert_close(feats, model.features(x))
    assert lr.layer_inputs(model, "conv2", x).shape == (5, 20, 12, 12)
    assert not model.training
    h = lr.input_hessian(feats)
    assert h.shape == (800, 800) and h.dtype == torch.float64
    torch.testing.assert_close(h, feats.double().T @ feats.double() / 5)
    with pytest.raises(ValueError, match="not a submodule"):
        lr.layer_inputs(model, "fc9", x)
    with pytest.raises(ValueError, match="2-D"):
        lr.input_hessian(torch.zeros(3))


def test_relative_output_error_white_noise_matches_weight_error_and_skewed_inputs_do_not():
    lin = _linear(40, 30)
    approx = lr.svd_linear(lin, 8)
    g = torch.Generator().manual_seed(0)
    white = torch.randn(20000, 40, generator=g, dtype=torch.float64)
    w_err = lr.relative_weight_error(lin, approx)
    assert lr.relative_output_error(lin, approx, white) == pytest.approx(w_err, rel=0.03)
    assert lr.relative_output_error(lin, lin, white) == 0.0
    # inputs living in the span of the kept right singular vectors: no output error at all
    _, _, vh = torch.linalg.svd(lin.weight.detach(), full_matrices=False)
    inside = torch.randn(100, 8, generator=g, dtype=torch.float64) @ vh[:8]
    assert lr.relative_output_error(lin, approx, inside) < 1e-10 < w_err
    conv = _conv(4, 6, 3)
    t = lr.tucker_conv(conv, (6, 4))
    assert lr.relative_output_error(conv, t, torch.randn(3, 4, 6, 6, dtype=torch.float64)) < 1e-10


def test_activation_aware_svd_is_optimal_on_its_inputs_and_plain_for_white_inputs():
    lin = _linear(30, 20)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(500, 30, generator=g, dtype=torch.float64) @ torch.diag(torch.logspace(-2, 1, 30, dtype=torch.float64))
    h = lr.input_hessian(x)
    aware = lr.activation_aware_svd_linear(lin, 5, h, damping=0.0)
    plain = lr.svd_linear(lin, 5)
    assert isinstance(aware, lr.LowRankLinear) and aware[0].weight.dtype == torch.float64
    e_aware, e_plain = lr.relative_output_error(lin, aware, x), lr.relative_output_error(lin, plain, x)
    assert e_aware < e_plain
    # optimal: no rank-5 matrix does better, e.g. small random perturbations of the factors
    for seed in range(3):
        p = lr.activation_aware_svd_linear(lin, 5, h, damping=0.0)
        with torch.no_grad():
            p[0].weight.add_(1e-3 * torch.randn(p[0].weight.shape, generator=torch.Generator().manual_seed(seed),
                                                dtype=torch.float64))
        assert lr.relative_output_error(lin, p, x) >= e_aware - 1e-12
    # with H = I it is the plain truncated SVD
    torch.testing.assert_close(lr.dense_weight(lr.activation_aware_svd_linear(lin, 5, torch.eye(30, dtype=torch.float64), 0.0)),
                               lr.dense_weight(plain), **F64)
    assert lr.relative_weight_error(lin, aware) > lr.relative_weight_error(lin, plain)


def test_activation_aware_svd_rejects_bad_hessians():
    lin = _linear(6, 4)
    with pytest.raises(ValueError, match="symmetric"):
        lr.activation_aware_svd_linear(lin, 2, torch.triu(torch.ones(6, 6)))
    with pytest.raises(ValueError, match="damping=-1"):
        lr.activation_aware_svd_linear(lin, 2, torch.eye(6), damping=-1)
    with pytest.raises(ValueError, match="positive definite"):
        lr.activation_aware_svd_linear(lin, 2, -torch.eye(6, dtype=torch.float64), damping=0.0)
    with pytest.raises(ValueError, match="hessian has shape"):
        lr.activation_aware_svd_linear(lin, 2, [[1.0]])


# ---------------------------------------------------------------- chapter 3 recipes and figures
def test_chapter3_cp_ranks_match_the_tucker_macs():
    from course_lib import recipes
    model = LeNet5().eval()
    r = recipes.chapter3_cp_ranks(model)
    assert r == {"fc1": 30, "conv2": 57}
    tucker = measure.macs(lr.factorize(model, recipes.chapter3_ranks(model)), (1, 28, 28))
    cp = lr.tucker2_macs(20, 50, 5, (16, 12), 12, 8) - lr.cp_macs(20, 50, 5, 57, 12, 8)
    assert abs(cp) < lr.cp_macs(20, 50, 5, 1, 12, 8) and tucker == 724_960


def test_unfactorized_finetune_keeps_the_architecture_and_the_original():
    from course_lib import recipes
    torch.manual_seed(0)
    model = LeNet5(c1=2, c2=3, fc=8).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = (torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,)))
    out = recipes.unfactorized_finetune(model, data, epochs=1, progress=False)
    assert type(out) is LeNet5 and out.config == model.config and not out.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert any(not torch.equal(v, out.state_dict()[k]) for k, v in before.items())


def test_plots_pareto_seeds_and_rank_curves():
    import matplotlib
    matplotlib.use("Agg")
    from course_lib import plots
    recs = [dict(name="baseline", macs=100, accuracy=0.99, accuracy_std=0.0, accuracy_ci=[0.982, 0.995], seeds=1,
                 n_test=1000),
            dict(name="a", macs=30, accuracy=0.988, accuracy_std=0.001, seeds=3),
            dict(name="ctl", macs=30, accuracy=0.987, accuracy_std=0.002, seeds=3, control_of="a")]
    fig = plots.pareto_seeds(recs, x="macs")
    ax = fig.axes[0]
    lo, hi = ax.get_ylim()
    assert hi - lo >= 2.0 - 1e-9
    labels = ax.get_legend_handles_labels()[1]
    assert "a (3 seeds)" in labels and any("95% interval" in t for t in labels)
    with pytest.raises(ValueError, match="min_span"):
        plots.pareto_seeds(recs, min_span=0)
    # 14 records (chapter 5's table): no two share both colour and marker
    many = [dict(name=f"m{i}", macs=10 + i, accuracy=0.98, seeds=1, **({"control_of": "m0"} if i % 4 == 3 else {}))
            for i in range(14)]
    ax = plots.pareto_seeds(many, x="macs", baseline=None).axes[0]
    looks = [(tuple(line.get_color()) if not isinstance(line.get_color(), str) else line.get_color(),
              line.get_marker(), line.get_markerfacecolor() == "white")
             for line in ax.lines if line.get_marker() not in (None, "None", "")]
    assert len(looks) == 14 and len(set(looks)) == 14, looks
    fig = plots.rank_curves({"weight": ([1, 2, 4], [0.9, 0.5, 0.1])}, {"val": ([1, 2, 4], [0.5, 0.9, 0.99])},
                            reference=0.99)
    assert len(fig.axes) == 2 and len(fig.axes[1].lines) == 2
