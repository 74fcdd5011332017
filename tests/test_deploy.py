"""Tests of course_lib.deploy: ONNX export (which leaves the caller's model alone), onnxruntime
sessions, static int8 with onnxruntime (agreement with the fake-quantized model, mixed precision,
per-operator profile) and the pool-before-ReLU LeNet-5 variant of models."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from course_lib import deploy, measure, recipes
from course_lib import quantization as Q
from course_lib.models import PoolBeforeReLU
from course_lib.training import predict




def test_export_onnx_does_not_change_the_model(tiny_lenet, tmp_path):
    model, x, _ = tiny_lenet
    m = copy.deepcopy(model).train().double()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    deploy.export_onnx(m.float(), tmp_path / "a.onnx", (1, 28, 28))
    assert m.training, "export_onnx must not switch the caller's model to eval mode"
    assert all(torch.equal(v, before[k].float()) for k, v in m.state_dict().items())
    assert next(m.parameters()).device.type == "cpu"
    with pytest.raises(ValueError, match="opset"):
        deploy.export_onnx(model, tmp_path / "b.onnx", (1, 28, 28), opset=12)


def test_ort_op_times(tiny_lenet, tmp_path):
    model, x, _ = tiny_lenet
    path = deploy.export_onnx(model, tmp_path / "m.onnx", (1, 28, 28))
    times = deploy.ort_op_times(path, x[:8], runs=2)
    ops = {op for _, op, _ in times}
    assert {"Conv", "Gemm"} <= ops or {"Conv", "MatMul"} <= ops or "FusedConv" in ops
    assert all(ms >= 0 for _, _, ms in times) and [t[2] for t in times] == sorted((t[2] for t in times), reverse=True)
    with pytest.raises(ValueError, match="runs"):
        deploy.ort_op_times(path, x[:8], runs=0)


def test_export_onnx_and_session(tiny_lenet, tmp_path):
    model, x, _ = tiny_lenet
    path = deploy.export_onnx(model, tmp_path / "m.onnx", (1, 28, 28))
    assert path.is_file()
    ort_model = deploy.OrtModule(path)
    assert torch.allclose(ort_model(x), model(x), atol=1e-4)
    assert torch.equal(predict(ort_model, x), predict(model, x))
    assert measure.latency_ms(ort_model, (1, 28, 28), repeats=2, warmup=1) > 0
    with pytest.raises(ValueError, match="input_shape"):
        deploy.export_onnx(model, tmp_path / "bad.onnx", (1, 0, 28))
    with pytest.raises(ValueError, match="threads"):
        deploy.ort_session(path, threads=0)
    with pytest.raises(FileNotFoundError):
        deploy.ort_session(tmp_path / "missing.onnx")


@pytest.mark.parametrize("fmt", ["QDQ", "QOperator"])
def test_ort_int8_agrees_with_fake_quant(tiny_lenet, tmp_path, fmt):
    model, x, _ = tiny_lenet
    fp32 = deploy.export_onnx(model, tmp_path / "fp32.onnx")
    int8 = deploy.ort_quantize_static(fp32, tmp_path / "int8.onnx", x[:64], per_channel=True, quant_format=fmt)
    import onnx
    inits = {i.name: i.data_type for i in onnx.load(str(int8)).graph.initializer}
    weights = [n for n in inits if "weight" in n and "scale" not in n and "zero_point" not in n]
    assert weights and all(inits[n] == onnx.TensorProto.INT8 for n in weights)
    fq = Q.ptq(model, x[:64], 8, 8, per_channel=True)
    agree = (predict(deploy.OrtModule(int8), x) == predict(fq, x)).float().mean().item()
    assert agree >= 0.95
    with pytest.raises(ValueError, match="quant_format"):
        deploy.ort_quantize_static(fp32, tmp_path / "x.onnx", x, quant_format="int8")
    with pytest.raises(ValueError, match="empty"):
        deploy.ImageCalibrationReader(x[:0])


def test_calibration_reader():
    r = deploy.ImageCalibrationReader(torch.zeros(10, 1, 4, 4), "inp", batch_size=4)
    batches = []
    while (b := r.get_next()) is not None:
        batches.append(b)
    assert [len(b["inp"]) for b in batches] == [4, 4, 2] and batches[0]["inp"].dtype == np.float32
    r.rewind()
    assert r.get_next() is not None


def test_pool_before_relu_is_the_same_function(tiny_lenet):
    model, x, _ = tiny_lenet
    pf = PoolBeforeReLU(model)
    with torch.no_grad():
        assert torch.equal(pf(x), model(x))  # max and ReLU commute exactly: bit-identical logits
    assert sum(p.numel() for p in pf.parameters()) == sum(p.numel() for p in model.parameters())
    with pytest.raises(TypeError, match="LeNet5"):
        PoolBeforeReLU(nn.Linear(4, 2))


def test_ort_keep_float_leaves_first_conv_in_float(tiny_lenet, tmp_path):
    import onnx
    model, x, _ = tiny_lenet
    fp32 = deploy.export_onnx(PoolBeforeReLU(model), tmp_path / "fp32.onnx")
    names = deploy.onnx_nodes(fp32)
    convs = deploy.onnx_nodes(fp32, "Conv")
    assert len(convs) == 2 and set(convs) <= set(names)
    # the exported order is conv1 -> pool -> relu (the point of PoolBeforeReLU)
    ops = [n.op_type for n in onnx.load(str(fp32)).graph.node]
    assert ops[:3] == ["Conv", "MaxPool", "Relu"]
    mixed = deploy.ort_quantize_static(fp32, tmp_path / "mixed.onnx", x[:64], keep_float=[convs[0]])
    graph = onnx.load(str(mixed)).graph
    inits = {i.name: i.data_type for i in graph.initializer}
    conv1 = next(n for n in graph.node if n.name == convs[0])
    # conv1 reads the float input and float32 weights directly; conv2's weights are int8
    assert conv1.input[0] == "x" and inits[conv1.input[1]] == onnx.TensorProto.FLOAT
    assert any(n.endswith("quantized") and t == onnx.TensorProto.INT8 for n, t in inits.items() if "conv2" in n)
    fq = Q.ptq(model, x[:64], 8, 8, per_channel=True)
    agree = (predict(deploy.OrtModule(mixed), x) == predict(fq, x)).float().mean().item()
    assert agree >= 0.95
    with pytest.raises(ValueError, match="keep_float"):
        deploy.ort_quantize_static(fp32, tmp_path / "bad.onnx", x[:64], keep_float=["/conv9/Conv"])


@pytest.mark.parametrize("first_conv_float", [True, False])
def test_ort_int8_lenet_one_call(tiny_lenet, tmp_path, first_conv_float):
    import onnx
    model, x, _ = tiny_lenet
    path = recipes.int8_lenet_ort(model, tmp_path / "m_int8.onnx", x[:64], first_conv_float=first_conv_float)
    assert path.is_file() and (tmp_path / "m_int8_fp32.onnx").is_file()
    graph = onnx.load(str(path)).graph
    conv1 = next(n for n in graph.node if n.op_type == "Conv")
    assert (conv1.input[0] == "x") == first_conv_float  # float conv1 reads the input directly
    ort_model = deploy.OrtModule(path)
    fq = Q.ptq(model, x[:64], 8, 8, per_channel=True)
    assert (predict(ort_model, x) == predict(fq, x)).float().mean().item() >= 0.95
    with pytest.raises(ValueError, match="empty"):
        recipes.int8_lenet_ort(model, tmp_path / "e.onnx", x[:0])
    if first_conv_float:  # the pool-before-ReLU export exists only for LeNet-5
        with pytest.raises(TypeError, match="LeNet5"):
            recipes.int8_lenet_ort(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), tmp_path / "l.onnx", x[:8])


def test_latency_table_times_every_configuration_and_picks_the_fastest(tmp_path):
    from course_lib import deploy
    from course_lib.models import LeNet5
    torch.manual_seed(0)
    big, small = LeNet5(c1=4, c2=8, fc=32).eval(), LeNet5(c1=2, c2=3, fc=8).eval()
    calls = []
    rows = deploy.latency_table({"baseline": big, "small": small, "given": lambda: calls.append(1)},
                                (1, 28, 28), batch_size=4, rounds=2, repeats=3, workdir=tmp_path)
    assert set(rows["baseline"]["by_config"]) == set(deploy.FP32_CONFIGS)
    assert rows["given"]["config"] == "as given" and len(calls) == 2 * (3 + 5)   # rounds x (repeats + warmup)
    for r in rows.values():
        assert r["latency_ms"] == min(r["by_config"].values())
        assert r["spread_ms"][0] <= r["latency_ms"] <= r["spread_ms"][1]
    assert rows["baseline"]["x_faster"] == 1.0
    assert rows["small"]["x_faster"] == pytest.approx(rows["baseline"]["latency_ms"] / rows["small"]["latency_ms"])
    table = deploy.format_latency_table(rows)
    assert table.count("\n") == 4 and "torch-channels-last" in table
    # the runners compute what the model computes
    x_model = deploy.fp32_runners(small, (1, 28, 28), batch_size=2, workdir=tmp_path)
    outs = {k: torch.as_tensor(f()[0] if k == "onnxruntime" else f()) for k, f in x_model.items()}
    assert torch.allclose(outs["torch"], outs["torch-channels-last"], atol=1e-5)
    assert torch.allclose(outs["torch"], outs["onnxruntime"], atol=1e-4)


def test_latency_table_rejects_unknown_reference_and_values():
    from course_lib import deploy
    with pytest.raises(ValueError, match="reference"):
        deploy.latency_table({"a": lambda: None}, (1, 28, 28))
    with pytest.raises(ValueError, match="models\\['baseline'\\]"):
        deploy.latency_table({"baseline": 3}, (1, 28, 28))
    with pytest.raises(ValueError, match="configs"):
        deploy.fp32_runners(torch.nn.Linear(2, 2), (2,), configs=("tensorrt",))


@pytest.mark.parametrize("method", ["rtn", "gptq", "awq"])
def test_ort_int4_linears_match_the_simulated_model(method):
    """A model's linear layers on MatMulNBits (accuracy_level 0) compute what the simulated 4-bit model
    computes, for RTN, GPTQ and AWQ (whose input scale is applied before the kernel)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 96), nn.GELU(), nn.Linear(96, 32)).eval()
    x = torch.randn(50, 64, generator=torch.Generator().manual_seed(1))
    h = Q.collect_hessians(net, x)
    sim, packed = Q.quantize_weights(net, method, 4, 32, hessians=h)
    real = deploy.ort_int4_linears(net, packed, 32, accuracy_level=0)
    assert isinstance(real[0], deploy.OrtLinear) and isinstance(net[0], nn.Linear)
    xs = torch.randn(2, 7, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = sim(xs)
        torch.testing.assert_close(real(xs), want, rtol=1e-4, atol=1e-4)
        fast = deploy.ort_int4_linears(net, packed, 32, accuracy_level=4)
        assert float((fast(xs) - want).abs().max()) < 0.05 * float(want.abs().max())
    with pytest.raises(ValueError, match="features"):
        real(torch.randn(3, 10))


def test_ort_int4_linears_refuses_wide_codes():
    net = nn.Sequential(nn.Linear(64, 8)).eval()
    _, packed = Q.quantize_weights(net, "rtn", 8, 32)
    with pytest.raises(ValueError, match="bits <= 4"):
        deploy.ort_int4_linears(net, packed, 32)
