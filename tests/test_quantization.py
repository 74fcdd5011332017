"""Tests of course_lib.quantization (affine, calibration, fakequant, kmeans, packing, torch_ao):
exactness against PyTorch's fake quantization, property tests of the integer grid, calibration,
PTQ/QAT/k-means on tiny_lenet models, bit packing and the packed artifact's round trip. Weight-only
RTN/GPTQ: tests/test_weight_only.py; onnxruntime int8: tests/test_deploy.py."""
from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from course_lib import measure
from course_lib import quantization as Q
from course_lib.models import LeNet5
from course_lib.training import evaluate


def rand(*shape, seed=0, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


# ---------------------------------------------------------------- grids and parameters
def test_qrange():
    assert Q.qrange(8, True) == (-127, 127)
    assert Q.qrange(8, False) == (0, 255)
    assert Q.qrange(2, True) == (-1, 1)
    assert Q.qrange(1, False) == (0, 1)
    assert Q.qrange(16, False) == (0, 65535)


@pytest.mark.parametrize("bits", [0, 17, -1, 2.5, "8", True])
def test_bits_out_of_range(bits):
    with pytest.raises(ValueError, match="bits"):
        Q.quantize(rand(4), bits)
    with pytest.raises(ValueError, match="bits"):
        Q.fake_quantize(rand(4), bits, symmetric=False)


def test_symmetric_one_bit_is_refused_but_asymmetric_works():
    with pytest.raises(ValueError, match="symmetric"):
        Q.qrange(1, True)
    q, s, z = Q.quantize(rand(10), 1, symmetric=False)
    assert set(q.unique().tolist()) <= {0, 1}


def test_compute_qparams_values():
    s, z = Q.compute_qparams(-1.0, 3.0, 8, symmetric=False)
    assert math.isclose(float(s), 4 / 255, rel_tol=1e-6) and int(z) == 64
    s, z = Q.compute_qparams(-1.0, 3.0, 8, symmetric=True)
    assert math.isclose(float(s), 3 / 127, rel_tol=1e-6) and int(z) == 0
    s, z = Q.compute_qparams(0.5, 2.0, 8, symmetric=False)  # widened to contain 0
    assert int(z) == 0 and math.isclose(float(s), 2 / 255, rel_tol=1e-6)
    s, z = Q.compute_qparams(0.0, 0.0, 4, symmetric=False)  # all zeros: a tiny_lenet, finite scale
    assert float(s) > 0 and math.isfinite(1 / float(s))
    s, z = Q.compute_qparams(torch.tensor([-1.0, -2.0]), torch.tensor([1.0, 0.5]), 4, symmetric=True)
    assert s.shape == (2,) and z.dtype == torch.int32
    with pytest.raises(ValueError, match="lo must be <= hi"):
        Q.compute_qparams(1.0, -1.0, 8)
    with pytest.raises(ValueError, match="same shape"):
        Q.compute_qparams(torch.zeros(2), torch.zeros(3), 8)


def test_quantize_dequantize_roundtrip_and_shapes():
    w = rand(6, 3, 5, 5)
    q, s, z = Q.quantize(w, 8, per_channel_axis=0)
    assert q.dtype == torch.int32 and q.shape == w.shape and s.shape == (6,) and z.shape == (6,)
    assert (z == 0).all()
    w_hat = Q.dequantize(q, s, z, per_channel_axis=0)
    assert torch.allclose(w_hat, Q.fake_quantize(w, 8, per_channel_axis=0))
    # per channel: every channel's largest |w| is on the grid
    assert torch.allclose(w_hat.abs().amax((1, 2, 3)), w.abs().amax((1, 2, 3)), rtol=1e-6)
    with pytest.raises(ValueError, match="per_channel_axis"):
        Q.dequantize(q, s, z)


def test_negative_axis_equals_positive_axis():
    x = rand(4, 7)
    a = Q.fake_quantize(x, 4, per_channel_axis=-1)
    b = Q.fake_quantize(x, 4, per_channel_axis=1)
    assert torch.equal(a, b)


@pytest.mark.parametrize("axis", [2, -3, 5, 1.0])
def test_axis_out_of_range(axis):
    with pytest.raises(ValueError, match="per_channel_axis"):
        Q.quantize(rand(3, 4), 8, per_channel_axis=axis)
    with pytest.raises(ValueError, match="per_channel_axis"):
        Q.fake_quantize(rand(3, 4), 8, per_channel_axis=axis)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_inf_refused(bad):
    x = rand(10)
    x[3] = bad
    with pytest.raises(ValueError, match="NaN/inf"):
        Q.quantize(x, 8)
    with pytest.raises(ValueError, match="NaN/inf"):
        Q.fake_quantize(x, 8)
    with pytest.raises(ValueError, match="NaN/inf"):
        Q.calibrate([x])
    with pytest.raises(ValueError, match="NaN/inf"):
        Q.kmeans_quantize(x, 2)


def test_other_bad_inputs():
    with pytest.raises(ValueError, match="floating-point"):
        Q.quantize(torch.arange(4), 8)
    with pytest.raises(ValueError, match="empty"):
        Q.quantize(torch.empty(0), 8)
    with pytest.raises(ValueError, match="expected"):
        Q.quantize(rand(3, 4), 8, per_channel_axis=0, scale=torch.ones(4))
    with pytest.raises(ValueError, match="scale"):
        Q.quantize(rand(3), 8, scale=torch.tensor(0.0))


# ---------------------------------------------------------------- exactly PyTorch's fake quantization
@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("bits,symmetric", [(8, True), (8, False), (4, True), (4, False), (2, True), (16, False)])
def test_fake_quantize_per_tensor_equals_torch(seed, bits, symmetric):
    x = rand(64, 33, seed=seed, scale=3.0)
    _, s, z = Q.quantize(x, bits, symmetric)
    s = s * 0.8  # also clamp some values
    qmin, qmax = Q.qrange(bits, symmetric)
    ours = Q.fake_quantize(x, bits, symmetric, scale=s, zero_point=z)
    ref = torch.fake_quantize_per_tensor_affine(x, float(s), int(z), qmin, qmax)
    assert torch.equal(ours, ref)
    ref_t = torch.fake_quantize_per_tensor_affine(x, s.reshape(1), z.reshape(1), qmin, qmax)
    assert torch.equal(ours, ref_t)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("axis", [0, 1, 3])
@pytest.mark.parametrize("bits,symmetric", [(8, True), (8, False), (3, True), (5, False)])
def test_fake_quantize_per_channel_equals_torch(seed, axis, bits, symmetric):
    x = rand(8, 6, 5, 5, seed=seed)
    _, s, z = Q.quantize(x, bits, symmetric, per_channel_axis=axis)
    s = s * torch.linspace(0.7, 1.1, s.numel())
    qmin, qmax = Q.qrange(bits, symmetric)
    ours = Q.fake_quantize(x, bits, symmetric, per_channel_axis=axis, scale=s, zero_point=z)
    ref = torch.fake_quantize_per_channel_affine(x, s, z, axis, qmin, qmax)
    assert torch.equal(ours, ref)


def test_straight_through_gradient_equals_torch():
    x = rand(200, seed=3, scale=2.0).requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    s, z = torch.tensor(0.01), torch.tensor(100, dtype=torch.int32)
    g = rand(200, seed=4)
    Q.fake_quantize(x, 8, False, scale=s, zero_point=z).backward(g)
    torch.fake_quantize_per_tensor_affine(x2, 0.01, 100, 0, 255).backward(g)
    assert torch.equal(x.grad, x2.grad)
    assert (x.grad == 0).any() and (x.grad == g).any()  # clamped values get no gradient, the rest pass


# ---------------------------------------------------------------- properties (hypothesis)
finite = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False, width=32)
arrays = st.lists(finite, min_size=1, max_size=60)


@settings(max_examples=150, deadline=None)
@given(arrays, st.integers(1, 16), st.booleans())
def test_roundtrip_error_at_most_half_a_step(values, bits, symmetric):
    if symmetric and bits == 1:
        bits = 2
    x = torch.tensor(values, dtype=torch.float32)
    q, s, z = Q.quantize(x, bits, symmetric)
    x_hat = Q.dequantize(q, s, z)
    step = float(s)
    # every value is inside the min-max range, so its error is at most half a step
    # (up to float32 rounding of x / scale, relative 2^-23 of |x| / step steps)
    tol = 0.5 * step + 4 * torch.finfo(torch.float32).eps * (x.abs() + step)
    assert ((x - x_hat).abs() <= tol).all()


@settings(max_examples=150, deadline=None)
@given(arrays, st.integers(2, 16), st.booleans(), st.floats(0.01, 10))
def test_quantized_values_inside_integer_range(values, bits, symmetric, shrink):
    x = torch.tensor(values, dtype=torch.float32)
    _, s, z = Q.quantize(x, bits, symmetric)
    q, _, _ = Q.quantize(x, bits, symmetric, scale=s * shrink, zero_point=z)  # also when values clamp
    qmin, qmax = Q.qrange(bits, symmetric)
    assert int(q.min()) >= qmin and int(q.max()) <= qmax


@settings(max_examples=100, deadline=None)
@given(arrays, st.integers(2, 16), st.booleans())
def test_zero_maps_to_zero(values, bits, symmetric):
    x = torch.tensor(values + [0.0], dtype=torch.float32)
    q, s, z = Q.quantize(x, bits, symmetric)
    if symmetric:
        assert int(q[-1]) == 0 and int(z) == 0
    assert float(Q.dequantize(q, s, z)[-1]) == 0.0  # 0 is exactly on every grid
    assert float(Q.fake_quantize(x, bits, symmetric)[-1]) == 0.0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 2**16 - 1), min_size=1, max_size=50), st.integers(1, 16))
def test_pack_unpack_roundtrip(values, bits):
    v = torch.tensor([x % (2 ** bits) for x in values])
    packed = Q.pack_bits(v, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(len(values) * bits / 8)
    assert torch.equal(Q.unpack_bits(packed, bits, len(values)), v)


def test_pack_bits_signed_and_errors():
    v = torch.tensor([-7, 0, 7, 3])
    assert torch.equal(Q.unpack_bits(Q.pack_bits(v, 4, qmin=-7), 4, 4, qmin=-7), v)
    with pytest.raises(ValueError, match="outside"):
        Q.pack_bits(torch.tensor([16]), 4)
    with pytest.raises(ValueError, match="fewer"):
        Q.unpack_bits(torch.zeros(1, dtype=torch.uint8), 4, 5)


def test_sqnr_about_six_db_per_bit():
    w = rand(20000, seed=1)
    db = [Q.sqnr_db(w, Q.fake_quantize(w, b)) for b in (4, 6, 8)]
    assert 9 < db[1] - db[0] < 15 and 9 < db[2] - db[1] < 15
    assert Q.sqnr_db(w, w) == math.inf
    with pytest.raises(ValueError, match="shape"):
        Q.sqnr_db(w, w[:3])


# ---------------------------------------------------------------- calibration
def test_calibration_methods():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50_000, generator=g).abs()
    x[0] = 100.0  # one outlier
    s_mm, z_mm = Q.calibrate([x], 8, "minmax")
    s_pc, _ = Q.calibrate([x], 8, "percentile", percentile=99.9)
    assert math.isclose(float(s_mm), 100 / 255, rel_tol=1e-5) and int(z_mm) == 0
    assert float(s_pc) < float(s_mm) / 10  # the percentile ignores the outlier

    def mse(x, s, z):
        return float(((Q.fake_quantize(x, 8, False, scale=s, zero_point=z) - x) ** 2).mean())
    # heavy tails: the MSE search clips them and beats min-max on its own criterion
    t = torch.randn(50_000, generator=g) ** 3
    s_mse, z_mse = Q.calibrate(t, 8, "mse")
    s_mm, z_mm = Q.calibrate(t, 8, "minmax")
    assert float(s_mse) < float(s_mm) and mse(t, s_mse, z_mse) < mse(t, s_mm, z_mm)
    # a grid of 1 ratio is min-max itself
    s1, z1 = Q.calibrate(t, 8, "mse", grid=1)
    assert torch.equal(s1, s_mm) and torch.equal(z1, z_mm)


def test_calibration_errors():
    with pytest.raises(ValueError, match="empty"):
        Q.calibrate([])
    with pytest.raises(ValueError, match="empty"):
        Q.calibrate([torch.empty(0)])
    with pytest.raises(ValueError, match="method"):
        Q.calibrate(rand(10), method="kl")
    with pytest.raises(ValueError, match="percentile"):
        Q.calibrate(rand(10), method="percentile", percentile=30)


# ---------------------------------------------------------------- models


def test_ptq_structure_and_accuracy(tiny_lenet):
    model, x, y = tiny_lenet
    q = Q.ptq(model, x[:64], 8, 8, per_channel=True)
    wrappers = [m for m in q.modules() if isinstance(m, Q.QuantWrapper)]
    assert len(wrappers) == 4 and all(w.act_scale is not None for w in wrappers)
    assert not isinstance(model.conv1, Q.QuantWrapper)  # the float model is untouched
    assert measure.count_params(q) == measure.count_params(model)
    assert evaluate(q, (x, y)) >= 0.9  # W8A8 keeps the float model's decisions
    q32 = Q.ptq(model, x[:64], 32, 32)
    assert torch.equal(q32(x), model(x))
    with pytest.raises(ValueError, match="empty"):
        Q.ptq(model, x[:0])
    with pytest.raises(ValueError, match="weight_bits"):
        Q.ptq(model, x, weight_bits=1)
    with pytest.raises(ValueError, match="act_bits"):
        Q.ptq(model, x, act_bits=0)


def test_ptq_weights_on_grid(tiny_lenet):
    model, x, _ = tiny_lenet
    q = Q.ptq(model, x, 4, 8, per_channel=True)
    w = q.conv2.quantized_weight().detach()
    # per output channel at most 2 * 7 + 1 = 15 distinct values
    assert max(len(row.unique()) for row in w.reshape(w.shape[0], -1)) <= 15
    q_pt = Q.ptq(model, x, 4, 8, per_channel=False)
    assert len(q_pt.conv2.quantized_weight().detach().unique()) <= 15


def test_calibrate_model_methods_differ(tiny_lenet):
    model, x, _ = tiny_lenet
    a = Q.ptq(model, x, 32, 4, method="minmax")
    b = Q.ptq(model, x, 32, 4, method="percentile", percentile=99.0)
    assert float(b.fc1.act_scale) < float(a.fc1.act_scale)
    with pytest.raises(ValueError, match="QuantWrapper"):
        Q.calibrate_model(model, x)


def test_qat_trains_and_keeps_structure(tiny_lenet):
    model, x, y = tiny_lenet
    q, hist = Q.qat(model, (x, y), x[:32], weight_bits=4, act_bits=8, epochs=2, lr=1e-3,
                    batch_size=32, progress=False)
    assert len(hist.train_loss) == 2 and not q.training
    assert isinstance(q.fc1, Q.QuantWrapper) and q.fc1.act_scale is not None
    assert not torch.equal(q.fc1.layer.weight, model.fc1.weight)  # the shadow weights moved
    assert q(x).shape == (96, 10)


def test_kmeans_quantize():
    w = rand(40, 30, seed=5)
    c, idx = Q.kmeans_quantize(w, 3)
    assert c.shape == (8,) and idx.shape == w.shape and idx.dtype == torch.int64
    assert torch.all(c[1:] >= c[:-1]) and int(idx.min()) >= 0 and int(idx.max()) <= 7
    err_km = float(((c[idx] - w) ** 2).mean())
    err_lin = float(((Q.fake_quantize(w, 3, symmetric=False) - w) ** 2).mean())
    assert err_km < err_lin  # k-means adapts the grid to the bell-shaped distribution
    # each centroid is the mean of its cluster (Lloyd's fixed point)
    for k in range(8):
        if (idx == k).any():
            assert math.isclose(float(w[idx == k].mean()), float(c[k]), rel_tol=1e-4, abs_tol=1e-5)
    c1, i1 = Q.kmeans_quantize(torch.tensor([1.0, 1.0, 1.0]), 2)  # constant weights
    assert torch.equal(c1[i1], torch.ones(3))
    with pytest.raises(ValueError, match="bits"):
        Q.kmeans_quantize(w, 0)
    with pytest.raises(ValueError, match="empty"):
        Q.kmeans_quantize(torch.empty(0), 2)


def test_kmeans_model_finetunes_centroids_only(tiny_lenet):
    from course_lib.training import fit
    model, x, y = tiny_lenet
    km = Q.kmeans_model(model, 2)
    assert len(km.conv2.quantized_weight().unique()) <= 4
    before = km.conv2.codebook.detach().clone()
    fc_w = km.fc1.layer.weight.detach().clone()
    fit(km, (x, y), epochs=1, lr=1e-2, batch_size=32, progress=False,
        params=[p for n, p in km.named_parameters() if n.endswith("codebook")])
    assert not torch.equal(before, km.conv2.codebook.detach())
    assert torch.equal(fc_w, km.fc1.layer.weight)
    assert len(km.conv2.quantized_weight().unique()) <= 4


def _packed_layers(model):
    return {n: m.weight.numel() for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


@pytest.mark.parametrize("bits", [8, 6, 4, 3, 2])
def test_packed_sizes_are_exact(tiny_lenet, bits):
    model, x, _ = tiny_lenet
    layers = _packed_layers(model)
    sd = Q.packed_state_dict(Q.ptq(model, x, bits, 8))
    for name, n in layers.items():  # ceil(n * bits / 8) bytes per layer, no slack
        assert sd[f"{name}.weight_packed"].numel() == math.ceil(n * bits / 8), name
        assert sd[f"{name}.weight_packed"].dtype == torch.uint8
        assert sd[f"{name}.weight_scale"].shape == (getattr(model, name).weight.shape[0],)
    n_b = sum(m.bias.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    assert sum(v.numel() for k, v in sd.items() if k.endswith("bias")) == n_b
    assert not any(k.endswith(".layer.weight") for k in sd)  # no float copy of a packed weight
    assert Q.packed_size_bytes(Q.ptq(model, x, bits, 8)) == measure.serialized_bytes(sd)
    km = Q.packed_state_dict(Q.kmeans_model(model, min(bits, 4)))
    for name, n in layers.items():
        assert km[f"{name}.codebook"].numel() == 2 ** min(bits, 4)
        assert km[f"{name}.indices_packed"].numel() == math.ceil(n * min(bits, 4) / 8)


def test_packed_size_ordering(tiny_lenet):
    model, x, _ = tiny_lenet
    sizes = {b: Q.packed_size_bytes(Q.ptq(model, x, b, 8)) for b in (8, 4, 2)}
    assert sizes[8] > sizes[4] > sizes[2]


@pytest.mark.parametrize("make", ["ptq4", "ptq8_per_tensor", "ptq_w32", "kmeans"])
def test_packed_artifact_loads_back(tiny_lenet, make):
    """The packed size is the size of something loadable: save, load into a model of the same
    structure (different weights), and the loaded model computes what the original did."""
    import io
    model, x, _ = tiny_lenet
    other = LeNet5(c1=4, c2=6, fc=16).eval()
    torch.nn.init.normal_(other.conv1.weight)  # different weights: everything must come from the file
    build = {"ptq4": lambda m: Q.ptq(m, x[:64], 4, 8),
             "ptq8_per_tensor": lambda m: Q.ptq(m, x[:64], 8, 8, per_channel=False),
             "ptq_w32": lambda m: Q.ptq(m, x[:64], 32, 8),
             "kmeans": lambda m: Q.kmeans_model(m, 3)}[make]
    q = build(model)
    buf = io.BytesIO()
    torch.save(Q.packed_state_dict(q), buf)
    assert len(buf.getvalue()) == Q.packed_size_bytes(q)
    buf.seek(0)
    loaded = Q.load_packed(build(other), torch.load(buf, weights_only=True))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), q(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="no entry"):
        Q.load_packed(build(other), {})
    with pytest.raises(ValueError, match="unexpected|no place"):
        Q.load_packed(build(other), {**Q.packed_state_dict(q), "extra": torch.zeros(1)})


def test_share_weights_in_place_keeps_zeros_and_checks_names(tiny_lenet):
    model, _, _ = tiny_lenet
    m = LeNet5(c1=4, c2=6, fc=16)
    m.load_state_dict(model.state_dict())
    with torch.no_grad():
        m.fc1.weight[:, ::2] = 0
    zeros = m.fc1.weight == 0
    books = Q.share_weights(m, {"fc1": 2, "conv2": 3})
    assert set(books) == {"fc1", "conv2"} and books["fc1"].numel() == 4
    assert torch.equal(m.fc1.weight == 0, zeros)  # pruned positions stay exactly zero
    assert len(m.fc1.weight[~zeros].unique()) <= 4 and len(m.conv2.weight.unique()) <= 8
    assert torch.equal(m.conv1.weight, model.conv1.weight)  # not named: untouched
    with pytest.raises(ValueError, match=r"fc3.*valid names.*conv1"):
        Q.share_weights(m, {"fc3": 4})


def test_macs_of_wrapped_models_equal_the_float_model(tiny_lenet):
    """measure.macs counts the layers inside QuantWrapper / KMeansWrapper (they compute functionally)."""
    model, x, _ = tiny_lenet
    want = measure.macs(model, (1, 28, 28))
    assert measure.macs(Q.ptq(model, x[:32]), (1, 28, 28)) == want
    assert measure.macs(Q.kmeans_model(model, 2), (1, 28, 28)) == want


def test_torch_ao_anchors_capture_deprecation(tiny_lenet):
    model, x, _ = tiny_lenet
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing may escape to the caller
        qd, msgs = Q.torch_ao_dynamic(model)
        qs, msgs2 = Q.torch_ao_static_fx(model, x[:32])
    assert qd.fc1._get_name() == "DynamicQuantizedLinear" and isinstance(qd.conv1, nn.Conv2d)
    assert any("deprecated" in m for m in msgs + msgs2)
    with torch.no_grad():
        assert (qd(x).argmax(1) == model(x).argmax(1)).float().mean() >= 0.9
        assert qs(x).shape == (96, 10)
    with pytest.raises(ValueError, match="empty"):
        Q.torch_ao_static_fx(model, x[:0])


@pytest.mark.parametrize("machine,engine", [("x86_64", "x86"), ("AMD64", "x86"), ("i686", "x86"),
                                            ("arm64", "qnnpack"), ("aarch64", "qnnpack"), ("armv7l", "qnnpack"),
                                            ("ppc64le", "qnnpack")])
def test_quantized_engine_is_chosen_for_the_platform(machine, engine):
    """Apple Silicon (arm64) and other ARM CPUs get qnnpack; x86 gets fbgemm/oneDNN ("x86")."""
    assert Q.quantized_engine(machine) == engine


def test_torch_ao_runs_with_the_arm_engine(tiny_lenet, monkeypatch):
    """What an ARM Mac runs: torch.ao picks qnnpack there (qnnpack also runs on x86, so it is tested here)."""
    model, x, _ = tiny_lenet
    before = torch.backends.quantized.engine
    monkeypatch.setattr("platform.machine", lambda: "arm64")
    try:
        qs, _ = Q.torch_ao_static_fx(model, x[:32])
        assert torch.backends.quantized.engine == "qnnpack"
        qd, _ = Q.torch_ao_dynamic(model)
        q8 = Q.quantize_dynamic_int8(model, full_range=True)
        with torch.no_grad():
            ref = model(x).argmax(1)
            for q in (qs, qd, q8):
                assert (q(x).argmax(1) == ref).float().mean() >= 0.9
    finally:
        torch.backends.quantized.engine = before




def test_observing_float_inputs_records_float_activations(tiny_lenet):
    model, x, _ = tiny_lenet
    q = Q.ptq(model, x[:32], 4, 4)
    with torch.no_grad(), Q.observing_float_inputs(q) as seen:
        out = q(x[:8])
    assert list(seen) == ["conv1", "conv2", "fc1", "fc2"]
    with torch.no_grad():
        torch.testing.assert_close(out, model(x[:8]))  # float path inside the block
        assert torch.equal(seen["conv1"][0], x[:8])
        torch.testing.assert_close(seen["fc2"][0], torch.relu(model.fc1(model.features(x[:8]))))
        assert not torch.allclose(q(x[:8]), model(x[:8]))  # quantized again afterwards
    assert all(not w.calibrating and w.observed == [] for w in q.modules() if isinstance(w, Q.QuantWrapper))


# ---------------------------------------------------------------- weight calibration, level counts
def test_calibrate_weight_methods():
    w = rand(20, 200, seed=8)
    w[:, 0] = 8.0  # one large weight per channel: min-max stretches the step
    s_mm, z_mm = Q.calibrate_weight(w, 2, "minmax")
    assert s_mm.shape == (20,) and z_mm.dtype == torch.int32 and torch.allclose(s_mm, torch.full((20,), 8.0))
    err = {}
    for m in Q.WEIGHT_CALIBRATION_METHODS:
        s, z = Q.calibrate_weight(w, 2, m)
        err[m] = float(((Q.fake_quantize(w, 2, True, 0, scale=s, zero_point=z) - w) ** 2).mean())
    assert err["mse"] < err["minmax"] and err["twn"] < err["minmax"]
    # with min-max on the 3-level grid almost every weight rounds to 0; MSE keeps many
    zeros = lambda s: float((Q.fake_quantize(w, 2, True, 0, scale=s) == 0).float().mean())  # noqa: E731
    assert zeros(s_mm) > 0.9 and zeros(Q.calibrate_weight(w, 2, "mse")[0]) < 0.7
    # TWN: threshold 0.7 E|w| = s / 2
    s_twn, _ = Q.calibrate_weight(w, 2, "twn")
    assert torch.allclose(s_twn, 1.4 * w.abs().mean(1), rtol=1e-5)
    # per tensor and asymmetric
    s, z = Q.calibrate_weight(w, 4, "mse", per_channel_axis=None)
    assert s.dim() == 0 and int(z) == 0
    s, z = Q.calibrate_weight(w, 2, "percentile", symmetric=False, percentile=99.0)
    assert s.shape == (20,) and (z >= 0).all() and (z <= 3).all()
    with pytest.raises(ValueError, match="twn"):
        Q.calibrate_weight(w, 3, "twn")
    with pytest.raises(ValueError, match="method"):
        Q.calibrate_weight(w, 2, "kl")


def test_mse_curve_has_the_mse_minimum():
    x = rand(5000, seed=9)
    ratios, mse = Q.mse_curve(x, 3, symmetric=True, grid=50)
    assert ratios.shape == mse.shape == (50,) and float(ratios[0]) == 1.0
    best = int(mse.argmin())
    assert 0 < best < 49  # clipping some of the tails beats both extremes


def test_ptq_with_calibrated_and_asymmetric_weights(tiny_lenet):
    model, x, _ = tiny_lenet
    q3 = Q.ptq(model, x, 2, 8, weight_method="mse")
    assert q3.fc1.levels == 3 and q3.fc1.weight_scale is not None
    assert set(q3.fc1.quantized_weight().detach().div(q3.fc1.weight_scale[:, None]).round().unique().tolist()) <= \
        {-1.0, 0.0, 1.0}
    q4 = Q.ptq(model, x, 2, 8, weight_symmetric=False)
    assert q4.fc1.levels == 4 and q4.fc1.weight_scale is None
    w_hat = q4.fc1.quantized_weight().detach()
    assert max(len(row.unique()) for row in w_hat) <= 4
    assert q4(x).shape == (96, 10)
    # the calibrated grid stays fixed during QAT, min-max follows the weights
    q, _ = Q.qat(model, (x, x.new_zeros(96).long()), x[:32], weight_bits=2, weight_method="mse", epochs=1,
                 lr=1e-2, batch_size=32, progress=False)
    assert torch.equal(q.fc1.weight_scale, Q.ptq(model, x, 2, 8, weight_method="mse").fc1.weight_scale)


@pytest.mark.parametrize("make", ["mse3", "asym4"])
def test_calibrated_artifact_loads_back(tiny_lenet, make):
    model, x, _ = tiny_lenet
    build = {"mse3": lambda m: Q.ptq(m, x, 2, 8, weight_method="mse"),
             "asym4": lambda m: Q.ptq(m, x, 2, 8, weight_symmetric=False)}[make]
    q = build(model)
    sd = Q.packed_state_dict(q)
    if make == "asym4":
        assert sd["fc1.weight_zero_point"].dtype == torch.int16
    other = copy.deepcopy(model)
    for p in other.parameters():
        p.data.normal_()
    loaded = Q.load_packed(Q.quantize_model(other, 2, 8, weight_symmetric=make == "mse3"), sd)
    assert torch.equal(loaded(x), q(x))


def test_kmeans_levels():
    w = rand(300, seed=10)
    c, idx = Q.kmeans_quantize(w, 2, levels=3)
    assert c.shape == (3,) and int(idx.max()) <= 2
    with pytest.raises(ValueError, match="levels"):
        Q.kmeans_quantize(w, 2, levels=5)
    # Lloyd iterations pull the outer centroids into the bulk: the largest weight is not kept
    c0, _ = Q.kmeans_quantize(w, 2, iters=0, levels=3)
    c30, _ = Q.kmeans_quantize(w, 2, iters=30, levels=3)
    assert float(c0.max()) == float(w.max()) and float(c30.max()) < 0.8 * float(w.max())


def test_quantization_figures():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from course_lib import plots
    fig = plots.quantizer_staircase(0.5, 0, -3, 3)
    assert len(fig.axes) == 2
    plt.close(fig)
    fig = plots.accuracy_by_levels({"a": {3: (0.9, 0.88, 0.92), 4: (0.95, 0.94, 0.96)}, "b": {3: (0.5, 0.45, 0.55)}},
                                   reference=(0.99, 0.98, 0.995))
    assert len(fig.axes[0].lines) >= 2
    plt.close(fig)
    with pytest.raises(ValueError, match="scale"):
        plots.quantizer_staircase(0.0, 0, -1, 1)
    with pytest.raises(ValueError, match="rows"):
        plots.accuracy_by_levels({})


def test_shared_weights_model_trains_centroids_with_summed_gradients_and_keeps_zeros():
    torch.manual_seed(0)
    m = LeNet5(c1=4, c2=8, fc=16).eval()
    with torch.no_grad():
        m.fc1.weight[:, ::2] = 0
    zeros = m.fc1.weight == 0
    q = Q.shared_weights_model(m, {"fc1": 3, "conv2": 2})
    assert isinstance(q.fc1, Q.KMeansWrapper) and isinstance(q.conv1, nn.Conv2d)  # conv1 not named: stays float
    w = q.fc1.quantized_weight()
    assert torch.equal(w == 0, zeros) and len(torch.unique(w[~zeros])) <= 8
    idx = q.fc1.indices
    assert idx[zeros].eq(-1).all() and idx[~zeros].ge(0).all()
    # d loss / d centroid k = the sum of d loss / d w_j over the weights j sharing it: with loss = sum_j a_j w_j
    # (so d loss / d w_j = a_j), the codebook's gradient must be the per-centroid sum of the a_j of non-zeros
    a = torch.arange(w.numel(), dtype=torch.float32).view_as(w)
    g = torch.autograd.grad((q.fc1.quantized_weight() * a).sum(), q.fc1.codebook)[0]
    want = torch.zeros_like(q.fc1.codebook).index_add_(0, idx[~zeros], a[~zeros])
    assert torch.allclose(g, want)
    x = torch.randn(5, 1, 28, 28)
    baked = Q.bake_shared(q)
    assert type(baked.fc1) is nn.Linear and torch.equal(baked.fc1.weight, q.fc1.quantized_weight().detach())
    assert torch.allclose(baked(x), q(x), atol=1e-6)
    with pytest.raises(ValueError, match="fc3"):
        Q.shared_weights_model(m, {"fc3": 4})
    with torch.no_grad():
        m.fc2.weight.zero_()
    with pytest.raises(ValueError, match="all zero"):
        Q.shared_weights_model(m, 4)
