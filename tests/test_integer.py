"""Tests of course_lib.quantization.integer (integer-only inference) and deploy.ort_qlinear: the integer
layers agree bit for bit with onnxruntime's QLinearConv / QLinearMatMul on random cases (asymmetric
activations, per-channel weight scales, weight zero-points, padding and strides), the zero-point
expansion equals the direct sum, the fixed-point multiplier is accurate, and bad arguments raise."""
from __future__ import annotations

import math

import pytest
import torch

from course_lib import deploy
from course_lib import quantization as Q
from course_lib.env import u8s8_saturates

# onnxruntime's uint8 x int8 kernels saturate int16 pair sums on x86 CPUs without VNNI: there the
# random weights stay within 7 bits (reduce_range), which is exact everywhere.
WMAX = 63 if u8s8_saturates() else 127


def gen(seed):
    return torch.Generator().manual_seed(seed)


def rand_case(seed, n, k, m, per_channel, z_w_max=0):
    g = gen(seed)
    q_x = torch.randint(0, 256, (n, k), generator=g).to(torch.uint8)
    q_w = torch.randint(-WMAX, WMAX + 1, (m, k), generator=g).to(torch.int8)
    z_x = int(torch.randint(0, 256, (1,), generator=g))
    z_w = int(torch.randint(-z_w_max, z_w_max + 1, (1,), generator=g))
    s_x = float(torch.empty(()).uniform_(0.001, 0.1, generator=g))
    s_w = torch.empty(m).uniform_(1e-4, 0.02, generator=g) if per_channel else \
        float(torch.empty(()).uniform_(1e-4, 0.02, generator=g))
    bias = torch.randn(m, generator=g)
    acc = Q.integer_linear(q_x, z_x, q_w, z_w).double()
    span = float((acc * torch.as_tensor(s_w, dtype=torch.float64) * s_x + bias.double()).abs().max())
    s_y = float(torch.tensor(span / 100 + 1e-6, dtype=torch.float32))
    z_y = int(torch.randint(0, 256, (1,), generator=g))
    return q_x, z_x, s_x, q_w, z_w, s_w, bias, s_y, z_y


# ---------------------------------------------------------------- bit-exact against onnxruntime
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("per_channel", [True, False])
def test_quantized_linear_equals_onnxruntime(seed, per_channel):
    q_x, z_x, s_x, q_w, z_w, s_w, bias, s_y, z_y = rand_case(seed, 33, 17 + 29 * seed, 5 + 7 * seed, per_channel,
                                                             z_w_max=20 if seed % 2 else 0)
    ours = Q.quantized_linear(q_x, z_x, s_x, q_w, z_w, s_w, bias, s_y, z_y)
    bias_q = Q.quantize_bias(bias, s_x, s_w)
    theirs = deploy.ort_qlinear("linear", q_x, s_x, z_x, q_w, s_w, z_w, s_y, z_y, bias_q)
    assert ours.dtype == torch.uint8 and ours.shape == (33, 5 + 7 * seed)
    assert torch.equal(ours, theirs)
    # QLinearMatMul (no bias) too
    ours_mm = Q.quantized_linear(q_x, z_x, s_x, q_w, z_w, s_w, None, s_y, z_y)
    assert torch.equal(ours_mm, deploy.ort_qlinear("matmul", q_x, s_x, z_x, q_w, s_w, z_w, s_y, z_y))


@pytest.mark.parametrize("seed, stride, padding, k", [(0, 1, 0, 5), (1, 1, 2, 3), (2, 2, 1, 3), (3, 2, 0, 1),
                                                      (4, 1, 1, 4)])
def test_quantized_conv2d_equals_onnxruntime(seed, stride, padding, k):
    g = gen(100 + seed)
    c, m = 1 + seed, 3 + 2 * seed
    q_x = torch.randint(0, 256, (3, c, 12, 10), generator=g).to(torch.uint8)
    q_w = torch.randint(-WMAX, WMAX + 1, (m, c, k, k), generator=g).to(torch.int8)
    z_x, z_w = 37 * seed % 256, (0 if seed % 2 == 0 else -7)
    s_x, s_w = 0.02, torch.empty(m).uniform_(1e-3, 1e-2, generator=g)
    bias = torch.randn(m, generator=g)
    acc = Q.integer_conv2d(q_x, z_x, q_w, z_w, stride, padding)
    s_y = float(torch.tensor(float(acc.abs().max()) * s_x * float(s_w.max()) / 120, dtype=torch.float32))
    ours = Q.quantized_conv2d(q_x, z_x, s_x, q_w, z_w, s_w, bias, s_y, 100, stride, padding)
    theirs = deploy.ort_qlinear("conv", q_x, s_x, z_x, q_w, s_w, z_w, s_y, 100, Q.quantize_bias(bias, s_x, s_w),
                                stride, padding)
    assert ours.shape == theirs.shape and torch.equal(ours, theirs)


def test_ties_round_half_to_even_like_onnxruntime():
    """Power-of-two scales put many outputs exactly on .5: onnxruntime and requantize round them to even."""
    q_x = torch.arange(0, 256, 4, dtype=torch.int64).to(torch.uint8).reshape(-1, 1)
    q_w = torch.tensor([[1], [3], [-5]], dtype=torch.int8)
    s_x, s_w, s_y = 2.0 ** -3, torch.full((3,), 2.0 ** -4), 2.0 ** -4
    ours = Q.quantized_linear(q_x, 0, s_x, q_w, 0, s_w, None, s_y, 128)
    theirs = deploy.ort_qlinear("linear", q_x, s_x, 0, q_w, s_w, 0, s_y, 128)
    assert torch.equal(ours, theirs)
    v = (q_x.double() @ q_w.double().T) / 8
    assert (v - v.floor() == 0.5).sum() > 10  # the case really has ties
    half_up = torch.clamp(torch.floor(v + 0.5) + 128, 0, 255).to(torch.uint8)
    assert not torch.equal(half_up, theirs)


# ---------------------------------------------------------------- the parts
def test_zero_point_expansion_equals_direct_sum():
    g = gen(3)
    q_x = torch.randint(0, 256, (9, 50), generator=g)
    q_w = torch.randint(-128, 128, (7, 50), generator=g)
    for z_x, z_w in [(0, 0), (128, 0), (3, -9), (255, 127)]:
        direct = (q_x - z_x) @ (q_w - z_w).T
        acc = Q.integer_linear(q_x, z_x, q_w, z_w)
        assert acc.dtype == torch.int32 and torch.equal(acc.long(), direct)
    zw = torch.arange(-3, 4)  # per output channel
    assert torch.equal(Q.integer_linear(q_x, 5, q_w, zw).long(), (q_x - 5) @ (q_w - zw[:, None]).T)


def test_conv_pads_with_the_zero_point():
    """Padding with z_x is padding with real 0: the result equals the float convolution of the real values."""
    g = gen(4)
    q_x = torch.randint(0, 256, (2, 3, 6, 6), generator=g)
    q_w = torch.randint(-128, 128, (4, 3, 3, 3), generator=g)
    acc = Q.integer_conv2d(q_x, 77, q_w, 0, stride=1, padding=1)
    want = torch.nn.functional.conv2d((q_x - 77).double(), q_w.double(), padding=1)
    assert torch.equal(acc.double(), want)


def test_relu_is_the_clamp_at_the_zero_point():
    acc = torch.tensor([[-300, -1, 0, 5, 900]])
    plain = Q.requantize(acc, 0.1, 20)
    relu = Q.requantize(acc, 0.1, 20, relu=True)
    assert plain.tolist() == [[0, 20, 20, 20, 110]] and relu.tolist() == [[20, 20, 20, 20, 110]]
    assert torch.equal(relu, torch.maximum(plain, torch.tensor(20, dtype=torch.uint8)))


def test_bias_quantized_at_the_accumulator_scale():
    b = torch.tensor([0.5, -0.25, 1.0])
    q = Q.quantize_bias(b, 0.5, torch.tensor([0.25, 0.5, 0.125]))
    assert q.dtype == torch.int32 and q.tolist() == [4, -1, 16]
    with pytest.raises(ValueError, match="int32"):
        Q.quantize_bias(torch.tensor([1e6]), 1e-6, 1e-6)


def test_output_multiplier_is_float32_like_onnxruntime():
    m = Q.output_multiplier(0.1, torch.tensor([0.3, 0.7]), 0.05)
    want = (torch.tensor(0.1, dtype=torch.float32) * torch.tensor([0.3, 0.7])) / torch.tensor(0.05)
    assert m.dtype == torch.float32 and torch.equal(m, want)


@pytest.mark.parametrize("mult", [0.75, 1e-3, 0.123456789, 2.0 ** -31, 0.9999999])
def test_fixed_point_multiplier(mult):
    m0, n = Q.fixed_point_multiplier(mult)
    assert 2 ** 30 <= int(m0) < 2 ** 31 and 31 <= int(n) <= 62
    assert abs(int(m0) * 2.0 ** -int(n) - mult) <= mult * 2.0 ** -31


def test_requantize_fixed_point_close_to_float():
    g = gen(5)
    acc = torch.randint(-2 ** 20, 2 ** 20, (64, 16), generator=g)
    mult = torch.empty(16).uniform_(1e-5, 1e-4, generator=g)
    a = Q.requantize(acc, mult, 128).long()
    b = Q.requantize_fixed_point(acc, *Q.fixed_point_multiplier(mult), 128).long()
    assert (a - b).abs().max() <= 1
    assert (a != b).float().mean() < 0.01
    exact = torch.clamp(torch.floor(acc.double() * 2.0 ** -10 + 0.5) + 128, 0, 255).long()  # dyadic: exact
    assert torch.equal(Q.requantize_fixed_point(acc, *Q.fixed_point_multiplier(2.0 ** -10), 128).long(), exact)


def test_fixed_point_layer_differs_from_onnxruntime_by_at_most_one():
    q_x, z_x, s_x, q_w, z_w, s_w, bias, s_y, z_y = rand_case(11, 64, 200, 40, True)
    fp = Q.quantized_linear(q_x, z_x, s_x, q_w, z_w, s_w, bias, s_y, z_y, fixed_point=True).long()
    ref = Q.quantized_linear(q_x, z_x, s_x, q_w, z_w, s_w, bias, s_y, z_y).long()
    assert (fp - ref).abs().max() <= 1


# ---------------------------------------------------------------- argument checks
def test_bad_arguments():
    q_x, q_w = torch.zeros(2, 3, dtype=torch.uint8), torch.zeros(4, 3, dtype=torch.int8)
    with pytest.raises(ValueError, match="q_x must be an integer tensor"):
        Q.integer_linear(q_x.float(), 0, q_w)
    with pytest.raises(ValueError, match="q_w holds values"):
        Q.integer_linear(q_x, 0, torch.full((4, 3), 200))
    with pytest.raises(ValueError, match="z_x=300"):
        Q.integer_linear(q_x, 300, q_w)
    with pytest.raises(ValueError, match="features"):
        Q.integer_linear(q_x, 0, torch.zeros(4, 5, dtype=torch.int8))
    with pytest.raises(ValueError, match="z_w must be one integer or have shape"):
        Q.integer_linear(q_x, 0, q_w, torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="multiplier"):
        Q.fixed_point_multiplier(1.5)
    with pytest.raises(ValueError, match="s_y"):
        Q.output_multiplier(0.1, 0.1, 0.0)
    with pytest.raises(ValueError, match="stride"):
        Q.integer_conv2d(torch.zeros(1, 1, 4, 4, dtype=torch.uint8), 0, torch.zeros(1, 1, 3, 3, dtype=torch.int8),
                         stride=0)
    with pytest.raises(ValueError, match="n="):
        Q.requantize_fixed_point(torch.zeros(1, 2, dtype=torch.int32), 2 ** 30, 5, 0)
    with pytest.raises(ValueError, match="no bias"):
        deploy.ort_qlinear("matmul", q_x, 0.1, 0, q_w, 0.1, 0, 0.1, 0, bias_q=torch.zeros(4, dtype=torch.int32))
    with pytest.raises(ValueError, match="op="):
        deploy.ort_qlinear("gemm", q_x, 0.1, 0, q_w, 0.1, 0, 0.1, 0)
    assert Q.ACC_MAX_TERMS == (2 ** 31 - 1) // (255 * 255) and math.isfinite(Q.ACC_MAX_TERMS)


def test_qlinear_model_is_valid_onnx():
    import onnx
    m = deploy.qlinear_model("conv", torch.zeros(2, 1, 3, 3, dtype=torch.int8), 0.1, 3, torch.tensor([0.1, 0.2]), 0,
                             0.05, 128, bias_q=torch.tensor([1, -1], dtype=torch.int32), padding=1)
    onnx.checker.check_model(m)
    assert [n.op_type for n in m.graph.node] == ["QLinearConv"]


def test_onnx_quant_params_reads_quantize_linear_grids(tmp_path):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    inits = [numpy_helper.from_array(np.array(0.05, np.float32), "s"),
             numpy_helper.from_array(np.array(0, np.uint8), "z"),
             numpy_helper.from_array(np.array([0.1, 0.2], np.float32), "sw"),
             numpy_helper.from_array(np.array([0, 0], np.int8), "zw")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"]),
             helper.make_node("QuantizeLinear", ["y", "sw", "zw"], ["q2"], axis=0)]  # per channel: skipped
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("q2", TensorProto.INT8, [2, 3])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    path = tmp_path / "qdq.onnx"
    onnx.save(model, str(path))
    got = deploy.onnx_quant_params(path)
    assert list(got) == ["x"] and got["x"][1] == 0 and abs(got["x"][0] - 0.05) < 1e-8
