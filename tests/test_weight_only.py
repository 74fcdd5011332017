"""Tests of course_lib.quantization.weight_only: group-wise RTN against PyTorch's quantizer, GPTQ
against RTN (a strict margin where error feedback matters) and against a slow, obviously correct
reference, the calibration Hessians, and the int4 artifact (exact byte counts, loads back).
Everything runs on plain nn.Linear layers: nothing here is specific to BERT."""
from __future__ import annotations

import io
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from course_lib import measure
from course_lib import quantization as Q


def correlated_inputs(n, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.randn(d, d, generator=g, dtype=torch.float64)


def out_err(x, w, w_hat):
    return float(((x @ (w.detach().double() - w_hat.double()).T) ** 2).sum())


def seeded_linear(i, o, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(i, o)


# ---------------------------------------------------------------- RTN
@pytest.mark.parametrize("bits,group", [(4, 8), (4, 16), (3, 4), (8, 16), (2, 8)])
@pytest.mark.parametrize("seed", range(3))
def test_rtn_codes_equal_torch_fake_quantize_per_channel(bits, group, seed):
    """Differential: our per-group (scale, zero) fed to PyTorch's per-channel fake quantization on the
    (out * groups, group) view give the same integer codes and the same dequantized weights."""
    w = torch.randn(6, 32, generator=torch.Generator().manual_seed(seed))
    w[0, 0] = 3.0  # an outlier in one group
    w_hat, codes, scales, zeros = Q.rtn_quantize(w, bits=bits, group_size=group)
    view = w.reshape(-1, group)
    s, z = scales.reshape(-1), zeros.reshape(-1).to(torch.int32)
    ref = torch.fake_quantize_per_channel_affine(view, s, z, 0, 0, 2 ** bits - 1)
    ref_codes = torch.round(ref.double() / s.double()[:, None]) + z.double()[:, None]
    assert torch.equal(ref_codes.reshape(6, 32).to(torch.uint8), codes)
    torch.testing.assert_close(w_hat, ref.reshape(6, 32), rtol=1e-6, atol=1e-7)
    assert codes.dtype == torch.uint8 and int(codes.max()) <= 2 ** bits - 1
    assert scales.shape == zeros.shape == (6, 32 // group)
    # min-max grid: every value of the group is inside it, so the error is at most half a step
    step = scales.repeat_interleave(group, 1)
    assert ((w_hat - w).abs() <= step / 2 + 1e-6).all()


def test_rtn_eight_bits_nearly_exact():
    w = torch.randn(5, 16, dtype=torch.float64)
    w8 = Q.rtn_quantize(w, bits=8, group_size=16)[0]
    assert float((w8 - w).abs().max()) < 0.02


# ---------------------------------------------------------------- GPTQ
def _minmax_group(w, bits):
    lo, hi = w.amin(1, keepdim=True).clamp(max=0), w.amax(1, keepdim=True).clamp(min=0)
    s = ((hi - lo) / (2 ** bits - 1)).clamp_min(1e-12)
    return s, (-lo / s).round().clamp(0, 2 ** bits - 1)


def reference_gptq(weight, hessian, bits, group, damp=0.01):
    """Slow and obviously correct: quantize column i (grid from the current weights when a group
    starts), then re-solve ALL not-yet-quantized columns by least squares: the V minimising
    ||X (W0 - [Q_done, V])^T||^2 is V = W0_F + (W0_A - Q_A) H_AF H_FF^-1 (H damped as in GPTQ)."""
    w0 = weight.double()
    n = w0.shape[1]
    h = hessian.double() + damp * torch.diag(hessian.double()).mean() * torch.eye(n, dtype=torch.float64)
    cur, done = w0.clone(), torch.zeros_like(w0)
    for i in range(n):
        if i % group == 0:
            s, z = _minmax_group(cur[:, i:i + group], bits)
        q = (torch.round(cur[:, i:i + 1] / s) + z).clamp(0, 2 ** bits - 1)
        done[:, i:i + 1] = (q - z) * s
        a, f = slice(0, i + 1), slice(i + 1, n)
        if i + 1 < n:
            err = w0[:, a] - done[:, a]
            cur[:, f] = w0[:, f] + err @ h[a, f] @ torch.linalg.inv(h[f, f])
    return done


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("group", [8, 16])
def test_gptq_equals_the_exact_sequential_least_squares_reference(seed, group):
    torch.manual_seed(seed)
    w = torch.randn(6, 16, dtype=torch.float64)
    x = correlated_inputs(200, 16, seed=seed)
    h = x.T @ x / len(x)
    w_gptq = Q.gptq_quantize(w, h, 4, group, damp=0.01, block_size=8)[0]
    torch.testing.assert_close(w_gptq.double(), reference_gptq(w, h, 4, group).float().double(),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("group", [8, 16, 32])
def test_gptq_beats_rtn_by_a_margin_on_correlated_inputs(group):
    """With correlated inputs the error feedback matters: GPTQ's output error is well below RTN's.
    (Without the feedback update GPTQ IS RTN: the two errors would be equal and this test fails.)"""
    lin = seeded_linear(32, 12)
    x = correlated_inputs(400, 32)
    h = x.T @ x / len(x)
    w_rtn = Q.rtn_quantize(lin.weight, 4, group)[0]
    w_gptq, codes, scales, zeros = Q.gptq_quantize(lin.weight, h, 4, group, damp=0.01)
    assert out_err(x, lin.weight, w_gptq) < 0.8 * out_err(x, lin.weight, w_rtn)
    assert codes.shape == (12, 32) and scales.shape == (12, 32 // group) and int(codes.max()) <= 15
    deq = (codes.float() - zeros.repeat_interleave(group, 1)) * scales.repeat_interleave(group, 1)
    torch.testing.assert_close(w_gptq, deq, rtol=1e-5, atol=1e-6)


def reference_gptq_act_order(weight, hessian, bits, group, damp=0.01):
    """The same exact least-squares reference, columns taken in order of decreasing H_jj, each with
    the min-max grid of its group of consecutive ORIGINAL columns, fixed before any update."""
    w0 = weight.double()
    n = w0.shape[1]
    h = hessian.double() + damp * torch.diag(hessian.double()).mean() * torch.eye(n, dtype=torch.float64)
    grids = [_minmax_group(w0[:, g:g + group], bits) for g in range(0, n, group)]
    perm = torch.argsort(torch.diag(h), descending=True, stable=True)
    wp, hp = w0[:, perm], h[perm][:, perm]
    cur, done = wp.clone(), torch.zeros_like(wp)
    for i in range(n):
        s, z = grids[int(perm[i]) // group]
        q = (torch.round(cur[:, i:i + 1] / s) + z).clamp(0, 2 ** bits - 1)
        done[:, i:i + 1] = (q - z) * s
        a, f = slice(0, i + 1), slice(i + 1, n)
        if i + 1 < n:
            cur[:, f] = wp[:, f] + (wp[:, a] - done[:, a]) @ hp[a, f] @ torch.linalg.inv(hp[f, f])
    out = torch.zeros_like(done)
    out[:, perm] = done
    return out


@pytest.mark.parametrize("seed", range(3))
def test_gptq_act_order_equals_its_exact_reference_and_keeps_the_format(seed):
    torch.manual_seed(seed)
    w = torch.randn(6, 16, dtype=torch.float64)
    x = correlated_inputs(200, 16, seed=seed) * torch.linspace(0.2, 3.0, 16)[torch.randperm(16)]  # unequal energies
    h = x.T @ x / len(x)
    w_ao, codes, scales, zeros = Q.gptq_quantize(w, h, 3, 8, damp=0.01, block_size=8, act_order=True)
    torch.testing.assert_close(w_ao.double(), reference_gptq_act_order(w, h, 3, 8).float().double(),
                               rtol=1e-5, atol=1e-6)
    # the same storage as without act order: groups of 8 consecutive columns, codes dequantize to w_hat
    deq = (codes.float() - zeros.repeat_interleave(8, 1)) * scales.repeat_interleave(8, 1)
    torch.testing.assert_close(w_ao, deq, rtol=1e-5, atol=1e-6)
    assert int(codes.max()) <= 7 and scales.shape == (6, 2)
    assert not torch.allclose(w_ao, Q.gptq_quantize(w, h, 3, 8, damp=0.01)[0])  # the order matters


def test_gptq_act_order_passes_through_quantize_weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    x = (correlated_inputs(100, 16) * torch.linspace(0.2, 3.0, 16)).float()
    hs = Q.collect_hessians(model, x)
    q, packed = Q.quantize_weights(model, "gptq", 3, 8, hessians=hs, act_order=True)
    want = Q.gptq_quantize(model[0].weight, hs["0"], 3, 8, act_order=True)[0]
    torch.testing.assert_close(q[0].weight, want)


def test_holdout_error_ratio_rtn_is_one_and_gptq_is_measured_out_of_sample():
    torch.manual_seed(0)
    w = {"a": torch.randn(12, 32), "b": torch.randn(6, 32)}
    mix = correlated_inputs(32, 32, seed=1)  # one input distribution, two independent samples of it
    g = torch.Generator().manual_seed(2)
    xa, xb = (torch.randn(300, 32, generator=g, dtype=torch.float64) @ mix for _ in range(2))
    fit, held = ({n: x.T @ x / 300 for n in w} for x in (xa, xb))
    rtn = Q.holdout_error_ratio(w, fit, held, lambda wt, h: Q.rtn_quantize(wt, 3, 16)[0], bits=3, group_size=16)
    torch.testing.assert_close(rtn, torch.ones(2))
    gptq = Q.holdout_error_ratio(w, fit, held, lambda wt, h: Q.gptq_quantize(wt, h, 3, 16)[0], bits=3, group_size=16)
    assert gptq.shape == (2,) and bool((gptq < 0.9).all())  # same input distribution: GPTQ generalises
    # fitted on one part, measured on the other: output_error's ratio there, not the in-sample error
    w_hat = Q.gptq_quantize(w["a"], fit["a"], 3, 16)[0]
    out_sample = Q.output_error(w["a"], w_hat, held["a"])
    assert float(gptq[0]) == pytest.approx(out_sample / Q.output_error(w["a"], Q.rtn_quantize(w["a"], 3, 16)[0], held["a"]),
                                           rel=1e-5)
    assert out_sample != pytest.approx(Q.output_error(w["a"], w_hat, fit["a"]), rel=1e-3)
    # the choice: the lowest mean ratio wins, whatever the order the candidates come in
    cands = {"damp 1": {"damp": 1.0}, "damp 0.01": {"damp": 0.01}}
    best, ratios = Q.choose_gptq_settings(w, fit, held, 3, 16, cands)
    assert set(ratios) == set(cands) and best == min(ratios, key=lambda k: float(ratios[k].mean()))
    assert Q.choose_gptq_settings(w, fit, held, 3, 16, dict(reversed(list(cands.items()))))[0] == best
    torch.testing.assert_close(ratios["damp 0.01"], gptq)
    with pytest.raises(ValueError, match="candidates must name at least one"):
        Q.choose_gptq_settings(w, fit, held, 3, 16, {})


def test_gptq_blocks_do_not_change_result():
    lin = seeded_linear(64, 8, seed=1)
    x = correlated_inputs(300, 64, seed=2)
    h = x.T @ x
    a = Q.gptq_quantize(lin.weight, h, 4, 16, block_size=16)[0]
    b = Q.gptq_quantize(lin.weight, h, 4, 16, block_size=64)[0]
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_gptq_dead_inputs_and_errors():
    w = torch.randn(4, 16)
    h = torch.eye(16, dtype=torch.float64)
    h[3, 3] = 0  # an input that is always zero: its weights do not matter
    w_hat = Q.gptq_quantize(w, h, 4, 8)[0]
    assert torch.isfinite(w_hat).all()
    with pytest.raises(ValueError, match="hessian"):
        Q.gptq_quantize(w, torch.eye(8), 4, 8)
    with pytest.raises(ValueError, match="group_size"):
        Q.gptq_quantize(w, torch.eye(16), 4, 5)
    with pytest.raises(ValueError, match="group_size"):
        Q.rtn_quantize(w, 4, 0)
    with pytest.raises(ValueError, match=r"bits=1 .*\[2, 8\]"):
        Q.rtn_quantize(w, 1, 8)
    with pytest.raises(ValueError, match="bits"):
        Q.gptq_quantize(w, torch.eye(16), 9, 8)
    with pytest.raises(ValueError, match="damp"):
        Q.gptq_quantize(w, torch.eye(16), 4, 8, damp=0)
    with pytest.raises(ValueError, match="2-D"):
        Q.rtn_quantize(torch.randn(16), 4, 8)
    with pytest.raises(ValueError, match="block_size"):
        Q.gptq_quantize(w, torch.eye(16), 4, 8, block_size=0)


def test_output_error():
    x = correlated_inputs(100, 16, seed=3)
    h = x.T @ x
    w = torch.randn(4, 16, dtype=torch.float64)
    w_hat = w + 0.01 * torch.randn(4, 16, dtype=torch.float64)
    want = float(((x @ (w - w_hat).T) ** 2).sum() / ((x @ w.T) ** 2).sum())
    assert Q.output_error(w, w_hat, h) == pytest.approx(want, rel=1e-9)
    assert Q.output_error(w, w, h) == 0.0


# ---------------------------------------------------------------- Hessians on any model
def test_collect_hessians_on_a_plain_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).train()
    x = torch.randn(50, 8)
    h = Q.collect_hessians(model, x)
    assert set(h) == {"0", "2"} and model.training  # mode restored
    torch.testing.assert_close(h["0"], x.double().T @ x.double() / 50)
    hidden = torch.relu(model[0](x)).detach().double()
    torch.testing.assert_close(h["2"], hidden.T @ hidden / 50)
    assert set(Q.collect_hessians(model, x, names=["2"])) == {"2"}


def test_collect_hessians_skips_padding_tokens():
    lin = nn.Linear(3, 2)

    class Tok(nn.Module):  # a "model" taking a tokenized batch, like a Hugging Face encoder
        def __init__(self):
            super().__init__()
            self.lin = lin

        def forward(self, input_ids, attention_mask):
            return self.lin(input_ids.float())

    ids = torch.arange(24).reshape(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    h = Q.collect_hessians(Tok(), {"input_ids": ids, "attention_mask": mask})["lin"]
    real = ids[mask.bool()].double()
    torch.testing.assert_close(h, real.T @ real / 6)


# ---------------------------------------------------------------- the int4 artifact
@settings(max_examples=25, deadline=None)
@given(st.integers(1, 6), st.integers(1, 8), st.integers(0, 2**31 - 1))
def test_pack_int4_roundtrip(rows, half, seed):
    codes = torch.randint(0, 16, (rows, 2 * half), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    packed = Q.pack_int4(codes)
    assert packed.shape == (rows, half) and packed.dtype == torch.uint8
    assert torch.equal(Q.unpack_int4(packed), codes)


def test_pack_int4_errors():
    with pytest.raises(ValueError, match="even"):
        Q.pack_int4(torch.zeros(2, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="uint8"):
        Q.pack_int4(torch.full((2, 2), 16, dtype=torch.uint8))


@pytest.fixture()
def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 16), nn.LayerNorm(16)).eval()


@pytest.mark.parametrize("method", ["rtn", "gptq", "awq"])
def test_int4_artifact_exact_bytes_and_loads_back(mlp, method):
    x = torch.randn(200, 32, generator=torch.Generator().manual_seed(1))
    h = Q.collect_hessians(mlp, x)
    q, packed = Q.quantize_weights(mlp, method, 4, 16, hessians=h)
    assert set(packed) == {"0", "2"}
    state = Q.int4_state(q, packed)
    for name, (o, i) in {"0": (64, 32), "2": (16, 64)}.items():
        assert state[f"{name}.qweight"].shape == (o, i // 2) and state[f"{name}.qweight"].dtype == torch.uint8
        assert state[f"{name}.scales"].shape == (o, i // 16) and state[f"{name}.scales"].dtype == torch.float16
        assert state[f"{name}.zeros"].shape == (o, i // 16) and state[f"{name}.zeros"].dtype == torch.uint8
        assert f"{name}.weight" not in state
    assert all((f"{n}.input_scale" in state) == (method == "awq") for n in packed)
    payload = sum(v.numel() * v.element_size() for k, v in state.items() if k.endswith((".qweight", ".scales", ".zeros")))
    n_w = 64 * 32 + 16 * 64
    assert payload == n_w // 2 + 3 * n_w // 16  # half a byte per weight, 3 bytes per group of 16
    buf = io.BytesIO()
    torch.save(state, buf)
    assert Q.int4_bytes(q, packed) == len(buf.getvalue()) == measure.serialized_bytes(state)
    buf.seek(0)
    other = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 16), nn.LayerNorm(16)).eval()
    loaded = Q.load_int4(other, torch.load(buf, weights_only=True))
    for name in packed:  # equal to the simulated weights up to the float16 rounding of the scales
        torch.testing.assert_close(loaded.get_submodule(name).weight, q.get_submodule(name).weight,
                                   rtol=2e-3, atol=2e-3 * float(q.get_submodule(name).weight.detach().abs().max()))
    torch.testing.assert_close(loaded[3].weight, q[3].weight)
    with pytest.raises(ValueError, match="does not fit"):
        Q.load_int4(other, {**state, "extra": torch.zeros(1)})


def test_quantize_weights_errors(mlp):
    with pytest.raises(ValueError, match="hessians"):
        Q.quantize_weights(mlp, "gptq")
    with pytest.raises(ValueError, match="hessians"):
        Q.quantize_weights(mlp, "awq")
    with pytest.raises(ValueError, match="method"):
        Q.quantize_weights(mlp, "smoothquant")
    with pytest.raises(ValueError, match=r"names=\['1'\]"):
        Q.quantize_weights(mlp, "rtn", 4, 16, names=["1"])
    q, packed = Q.quantize_weights(mlp, "rtn", 4, 16, names=["2"])
    assert set(packed) == {"2"} and torch.equal(q[0].weight, mlp[0].weight)
    assert math.isfinite(Q.output_error(mlp[0].weight, Q.quantize_weights(mlp, "rtn", 4, 16)[0][0].weight,
                                        torch.eye(32)))


# ---------------------------------------------------------------- AWQ and the salient channels
def outlier_inputs(n, d, channels=(3, 17), factor=30.0, seed=0):
    """Inputs with a few channels much larger than the rest: what AWQ is built for."""
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x[:, list(channels)] *= factor
    return x


def test_activation_magnitude_is_the_rms_of_each_channel():
    x = outlier_inputs(300, 32)
    h = x.T @ x / len(x)
    torch.testing.assert_close(Q.activation_magnitude(h), x.pow(2).mean(0).sqrt())
    with pytest.raises(ValueError, match="hessian"):
        Q.activation_magnitude(torch.zeros(3, 4))


def test_salient_channels_top_fraction_and_random_control():
    m = torch.arange(200, dtype=torch.float64)
    top = Q.salient_channels(m, 0.01)
    assert top.sum() == 2 and top[198] and top[199]
    rnd = Q.salient_channels(m, 0.01, random=True, seed=1)
    assert rnd.sum() == 2 and torch.equal(rnd, Q.salient_channels(m, 0.01, random=True, seed=1))
    assert Q.salient_channels(m[:10], 0.01).sum() == 1  # at least one channel
    with pytest.raises(ValueError, match="fraction"):
        Q.salient_channels(m, 0.0)


def test_keeping_or_scaling_the_salient_channels_beats_rtn_and_random():
    """MIT Lab 4's ablation on a layer with outlier input channels: keeping the salient 1% in float
    or scaling them up lowers the output error; the same for random channels does little."""
    lin = seeded_linear(256, 64)
    x = outlier_inputs(500, 256, channels=(5, 100, 200))
    h = x.T @ x / len(x)
    top = Q.salient_channels(Q.activation_magnitude(h), 0.01)
    assert top[[5, 100, 200]].all()
    rnd = Q.salient_channels(Q.activation_magnitude(h), 0.01, random=True, seed=0)
    rtn = out_err(x, lin.weight, Q.rtn_quantize(lin.weight, 3, 128)[0])
    keep = out_err(x, lin.weight, Q.rtn_keep_channels(lin.weight, top, 3, 128))
    keep_rnd = out_err(x, lin.weight, Q.rtn_keep_channels(lin.weight, rnd, 3, 128))
    scaled = out_err(x, lin.weight, Q.rtn_scaled_channels(lin.weight, top, 2.0, 3, 128))
    assert keep < 0.5 * rtn and scaled < 0.8 * rtn
    assert keep_rnd > 0.9 * rtn
    kept = Q.rtn_keep_channels(lin.weight, top, 3, 128)
    assert torch.equal(kept[:, top], lin.weight.detach()[:, top])
    with pytest.raises(ValueError, match="keep"):
        Q.rtn_keep_channels(lin.weight, top[:10], 3, 128)
    with pytest.raises(ValueError, match="scale"):
        Q.rtn_scaled_channels(lin.weight, top, 0.0, 3, 128)


def test_awq_never_worse_than_rtn_and_better_with_outliers():
    lin = seeded_linear(256, 64)
    x = outlier_inputs(500, 256, channels=(5, 100, 200))
    h = x.T @ x / len(x)
    w_rtn = Q.rtn_quantize(lin.weight, 3, 128)[0]
    w_awq, codes, scales, zeros, s, alpha = Q.awq_quantize(lin.weight, h, 3, 128)
    assert out_err(x, lin.weight, w_awq) < 0.7 * out_err(x, lin.weight, w_rtn)
    assert 0 < alpha < 1 and s.shape == (256,) and s[5] > s.median()
    # the codes are those of W diag(s): dequantize and undo the scale
    deq = (codes.double() - zeros.double().repeat_interleave(128, 1)) * scales.double().repeat_interleave(128, 1)
    torch.testing.assert_close(w_awq.double(), deq / s.double()[None, :], rtol=1e-5, atol=1e-6)
    # isotropic inputs: nothing to protect, alpha = 0 (plain RTN) may win; never worse than RTN
    xi = torch.randn(500, 256, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    hi = xi.T @ xi / len(xi)
    w_i = Q.awq_quantize(lin.weight, hi, 4, 128)[0]
    assert out_err(xi, lin.weight, w_i) <= out_err(xi, lin.weight, Q.rtn_quantize(lin.weight, 4, 128)[0]) * (1 + 1e-9)
    with pytest.raises(ValueError, match="grid"):
        Q.awq_quantize(lin.weight, h, 3, 128, grid=0)
    with pytest.raises(ValueError, match="hessian"):
        Q.awq_quantize(lin.weight, h[:10, :10], 3, 128)


def test_replace_weights_copies_and_checks(mlp):
    q = Q.replace_weights(mlp, lambda name, w: torch.zeros_like(w), names=["2"])
    assert torch.equal(q[2].weight, torch.zeros_like(mlp[2].weight)) and torch.equal(q[0].weight, mlp[0].weight)
    assert mlp[2].weight.abs().sum() > 0  # the original is untouched
    with pytest.raises(ValueError, match="names"):
        Q.replace_weights(mlp, lambda name, w: w, names=["1"])
    with pytest.raises(ValueError, match="shape"):
        Q.replace_weights(mlp, lambda name, w: w[:1])


def test_awq_clipping_search_helps_heavy_tailed_weights():
    """A few large weights per group stretch the min-max grid; AWQ's clip search shrinks the range where
    that lowers the group's output error (never raises it: r = 1 is a candidate)."""
    g = torch.Generator().manual_seed(5)
    w = torch.randn(32, 256, generator=g, dtype=torch.float64)
    w[torch.rand(32, 256, generator=g) < 0.01] *= 8  # outlier weights
    x = torch.randn(400, 256, generator=g, dtype=torch.float64)
    h = x.T @ x / len(x)
    no_clip = Q.awq_quantize(w, h, 3, 128, clip=False)[0]
    clipped, codes, scales, zeros, s, _ = Q.awq_quantize(w, h, 3, 128)
    assert out_err(x, w, clipped) < 0.9 * out_err(x, w, no_clip)
    deq = (codes.double() - zeros.double().repeat_interleave(128, 1)) * scales.double().repeat_interleave(128, 1)
    torch.testing.assert_close(clipped.double(), deq / s.double()[None, :], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="max_shrink"):
        Q.awq_quantize(w, h, 3, 128, max_shrink=1.0)


# ---------------------------------------------------------------- GPTQ's sequential variant, bytes per layer
class TinyBlock(nn.Module):
    """A BERT-like block: query, key and value read the same tensor, then the attention output, FFN in, FFN out."""

    def __init__(self, d=16, hidden=32):
        super().__init__()
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.out = nn.Linear(d, d)
        self.up, self.down = nn.Linear(d, hidden), nn.Linear(hidden, d)

    def forward(self, x):
        a = torch.softmax(self.query(x) @ self.key(x).transpose(-1, -2) / 4, -1) @ self.value(x)
        x = x + self.out(a)
        return x + self.down(torch.nn.functional.gelu(self.up(x)))


@pytest.fixture()
def tiny():
    torch.manual_seed(0)
    return nn.Sequential(TinyBlock(), TinyBlock()).eval()


def test_forward_groups_follow_the_forward_pass(tiny):
    x = torch.randn(4, 5, 16, generator=torch.Generator().manual_seed(0))
    block = [["query", "key", "value"], ["out"], ["up"], ["down"]]
    assert Q.forward_groups(tiny, x) == [[f"{b}.{n}" for n in g] for b in ("0", "1") for g in block]
    assert Q.forward_groups(tiny, x, names=["1.down", "0.up"]) == [["0.up"], ["1.down"]]
    mlp = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4), nn.Linear(4, 2)).eval()
    assert Q.forward_groups(mlp, torch.randn(3, 8)) == [["0"], ["2"], ["3"]]
    with pytest.raises(ValueError, match=r"names: \['spare'\] are never called"):
        Q.forward_groups(_Unused(), torch.randn(1, 4))
    # a name that is no submodule: a clear error, and no hook left behind on the model (nor a changed mode)
    mlp.train()
    with pytest.raises(ValueError, match=r"names: \['9'\] are not submodules"):
        Q.forward_groups(mlp, torch.randn(3, 8), names=["0", "9"])
    assert mlp.training and all(not m._forward_hooks for m in mlp.modules())


class _Unused(nn.Module):
    """A model with a layer its forward pass never calls."""

    def __init__(self):
        super().__init__()
        self.used, self.spare = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        return self.used(x)


def test_quantize_sequential_with_one_group_is_the_non_sequential_gptq(tiny):
    x = torch.randn(64, 5, 16, generator=torch.Generator().manual_seed(1))
    names = [n for n, m in tiny.named_modules() if isinstance(m, nn.Linear)]
    for method in ("rtn", "gptq", "awq"):
        h = Q.collect_hessians(tiny, x)
        ref, ref_packed = Q.quantize_weights(tiny, method, 4, 8, hessians=h)
        seq, packed = Q.quantize_sequential(tiny, x, method, 4, 8, groups=[names])
        for n in names:
            assert torch.equal(seq.get_submodule(n).weight, ref.get_submodule(n).weight), (method, n)
            assert all(torch.equal(a, b) for a, b in zip(packed[n], ref_packed[n]))
    assert not torch.equal(seq[0].query.weight, tiny[0].query.weight)  # the copy, not the model, changed


def test_quantize_sequential_differs_from_non_sequential_after_the_first_group(tiny):
    x = torch.randn(64, 5, 16, generator=torch.Generator().manual_seed(2))
    ref, _ = Q.quantize_weights(tiny, "gptq", 3, 8, hessians=Q.collect_hessians(tiny, x))
    seq, packed = Q.quantize_sequential(tiny, x, "gptq", 3, 8)
    assert len(packed) == 12
    for n in ("0.query", "0.key", "0.value"):  # the first group sees the float model: identical
        assert torch.equal(seq.get_submodule(n).weight, ref.get_submodule(n).weight)
    later = ["0.out", "0.up", "0.down", "1.query", "1.down"]
    assert all(not torch.equal(seq.get_submodule(n).weight, ref.get_submodule(n).weight) for n in later)


def test_quantize_sequential_errors(tiny):
    x = torch.randn(8, 5, 16)
    with pytest.raises(ValueError, match="method"):
        Q.quantize_sequential(tiny, x, "smoothquant")
    with pytest.raises(ValueError, match="bits"):
        Q.quantize_sequential(tiny, x, "gptq", bits=9)
    with pytest.raises(ValueError, match="group_size"):
        Q.quantize_sequential(tiny, x, "gptq", 4, group_size=0)
    with pytest.raises(ValueError, match="group_size"):
        Q.quantize_sequential(tiny, x, "gptq", 4, group_size=5)
    with pytest.raises(ValueError, match="damp"):
        Q.quantize_sequential(tiny, x, "gptq", 4, 8, damp=0)
    with pytest.raises(ValueError, match="groups"):
        Q.quantize_sequential(tiny, x, "gptq", 4, 8, groups=[["0.query"], ["0.nope"]])
    with pytest.raises(ValueError, match="groups"):
        Q.quantize_sequential(tiny, x, "gptq", 4, 8, groups=[["0.query"], ["0.query"]])
    with pytest.raises(ValueError, match="groups"):
        Q.quantize_sequential(tiny, x, "gptq", 4, 8, groups=[[]])


def test_layer_bytes_exact_counts(mlp):
    assert Q.layer_bytes(384, 1536, 32) == 4 * 384 * 1536
    assert Q.layer_bytes(384, 1536, 4, 128) == 384 * 1536 // 2 + 3 * 384 * 12
    assert Q.layer_bytes(384, 1536, 3, 128) == Q.layer_bytes(384, 1536, 4, 128)  # 3-bit codes take a nibble
    assert Q.layer_bytes(384, 1536, 8, 128) == 384 * 1536 + 3 * 384 * 12
    for bits in (3, 4, 8):  # equal to the bytes of the stored tensors
        q, packed = Q.quantize_weights(mlp, "rtn", bits, 16)
        for name, (codes, scales, zeros) in packed.items():
            st = Q.weight_only.packed_layer_state(name, codes, scales, zeros, bits)
            lin = mlp.get_submodule(name)
            assert Q.layer_bytes(*lin.weight.shape, bits, 16) == sum(v.numel() * v.element_size() for v in st.values())
    for bad in ({"bits": 1}, {"bits": 16}, {"bits": 4.5}, {"bits": True}):
        with pytest.raises(ValueError, match="bits"):
            Q.layer_bytes(8, 16, group_size=8, **bad)
    with pytest.raises(ValueError, match="group_size"):
        Q.layer_bytes(8, 16, 4, 5)
    with pytest.raises(ValueError, match="in_features"):
        Q.layer_bytes(8, 0, 4, 1)
    with pytest.raises(ValueError, match="in_features"):
        Q.layer_bytes(8, 9, 4, 3)


def test_mixed_bits_artifact_loads_back(mlp):
    q4, p4 = Q.quantize_weights(mlp, "rtn", 4, 16, names=["0"])
    q8, p8 = Q.quantize_weights(mlp, "rtn", 8, 16, names=["2"])
    state = Q.int4_state(mlp, {**p4, **p8}, bits={"0": 4, "2": 8})
    assert state["0.qweight"].shape == (64, 16) and state["2.qweight"].shape == (16, 64)
    payload = sum(v.numel() * v.element_size() for k, v in state.items() if k.endswith((".qweight", ".scales", ".zeros")))
    assert payload == Q.layer_bytes(64, 32, 4, 16) + Q.layer_bytes(16, 64, 8, 16)
    other = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 16), nn.LayerNorm(16)).eval()
    loaded = Q.load_int4(other, state)
    for name, q in (("0", q4), ("2", q8)):
        w = q.get_submodule(name).weight
        torch.testing.assert_close(loaded.get_submodule(name).weight, w, rtol=2e-3, atol=2e-3 * float(w.abs().max()))
    with pytest.raises(ValueError, match="bits"):
        Q.int4_state(mlp, {**p4, **p8}, bits={"0": 4})
