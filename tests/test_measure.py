"""Measurement toolkit: counts, sparsity, MACs (by hand and against FlopCounterMode, wrapped models
included), bytes, the one timer (latency, interleaved comparison, per-part times, matmul kernels)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune
from torch.utils.flop_counter import FlopCounterMode

from course_lib import lowrank as lr
from course_lib import measure
from course_lib import pruning as P
from course_lib import quantization as Q
from course_lib.models import MLP, LeNet5, ResNet8


def test_counts_and_sparsity():
    m = MLP(in_features=4, hidden=(3,), num_classes=2)
    assert measure.count_params(m) == 4 * 3 + 3 + 3 * 2 + 2
    with torch.no_grad():
        m.net[0].weight[0].zero_()
    assert measure.count_nonzero(m) == measure.count_params(m) - 4
    assert measure.sparsity(m) == pytest.approx(4 / 18)
    with pytest.raises(ValueError, match="no Conv2d or Linear"):
        measure.sparsity(nn.Sequential(nn.ReLU()))


def test_torch_prune_masks_are_measured_by_effective_weights():
    m = MLP(in_features=10, hidden=(10,), num_classes=2)
    prune.l1_unstructured(m.net[0], "weight", amount=50)
    assert measure.count_params(m) == 10 * 10 + 10 + 10 * 2 + 2
    assert measure.sparsity(m) == pytest.approx(50 / 120)
    sd = measure.effective_state_dict(m)
    assert "net.0.weight" in sd and not any(k.endswith(("_orig", "_mask")) for k in sd)


def test_macs_by_hand():
    m = LeNet5()
    per = measure.macs_by_layer(m, (1, 28, 28))
    assert per == {"conv1": 20 * 25 * 24 * 24, "conv2": 50 * 20 * 25 * 8 * 8, "fc1": 800 * 500, "fc2": 5000}
    assert measure.macs(m, (1, 28, 28)) == 2_293_000
    conv = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1, groups=1), nn.Conv2d(8, 8, 3, groups=4))
    assert measure.macs(conv, (3, 16, 16)) == 8 * 3 * 9 * 8 * 8 + 8 * 2 * 9 * 6 * 6
    with torch.no_grad():
        m.fc1.weight[:, :400].zero_()
    assert measure.macs(m, (1, 28, 28), sparse=True) == 2_293_000 - 200_000
    with pytest.raises(ValueError, match="input_shape"):
        measure.macs(m, (1, 0, 28))


def _flop_macs(model, shape):
    """An independent count: FLOPs of convolutions and matrix products seen by PyTorch's dispatcher, / 2."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.eval()(torch.zeros(1, *shape))
    return counter.get_total_flops() // 2


def _lenet(seed=0):
    torch.manual_seed(seed)
    return LeNet5().eval()


def _models():
    m = _lenet()
    x = torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    yield "lenet5", m, (1, 28, 28)
    yield "mlp", MLP(), (1, 28, 28)
    yield "resnet8", ResNet8(width=4), (3, 32, 32)
    yield "svd+tucker", lr.factorize(m, {"conv1": (8, None), "conv2": (12, 6), "fc1": 16}), (1, 28, 28)
    yield "cp", lr.factorize(m, {"conv2": 7}, method="cp"), (1, 28, 28)
    yield "channel-pruned", P.channel_prune(m, 0.5), (1, 28, 28)
    yield "ptq", Q.ptq(m, x, 8, 8), (1, 28, 28)
    yield "kmeans", Q.kmeans_model(m, 3, iters=3), (1, 28, 28)


@pytest.mark.parametrize("name,model,shape", list(_models()), ids=[n for n, *_ in _models()])
def test_macs_agree_with_flop_counter(name, model, shape):
    assert measure.macs(model, shape) == _flop_macs(model, shape) > 0


def test_macs_of_quantized_models_equal_the_float_model():
    m = _lenet()
    x = torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    want = measure.macs_by_layer(m, (1, 28, 28))
    for q in (Q.ptq(m, x, 8, 8), Q.kmeans_model(m, 3, iters=3), Q.torch_ao_dynamic(m)[0]):
        assert measure.macs_by_layer(q, (1, 28, 28)) == want, type(q.fc1).__name__
    with torch.no_grad():
        m.fc1.weight[:, :400].zero_()
    q = Q.ptq(m, x, 8, 8)  # symmetric weights: zero stays zero, so a sparse count sees the same zeros
    assert measure.macs(q, (1, 28, 28), sparse=True) == measure.macs(m, (1, 28, 28), sparse=True) \
        == 2_293_000 - 200_000


class _NumpyRuntime(nn.Module):
    """Like deploy.OrtModule: no PyTorch layers, the work happens outside torch."""

    def forward(self, x):
        return torch.from_numpy(x.numpy().reshape(len(x), -1)[:, :10].copy())


class _FunctionalLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(10, 784))

    def forward(self, x):
        return F.linear(torch.flatten(x, 1), self.w)


class _Unused(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.spare = nn.Linear(784, 10), nn.Linear(10, 10)

    def forward(self, x):
        return self.fc(torch.flatten(x, 1))


def test_macs_raise_for_what_they_cannot_count():
    with pytest.raises(ValueError, match="no layer macs can count"):
        measure.macs(_NumpyRuntime(), (1, 28, 28))
    with pytest.raises(ValueError, match=r"\['spare'\] .*never called"):
        measure.macs(_Unused(), (1, 28, 28))
    with pytest.raises(ValueError, match="F.conv2d/F.linear"):
        measure.macs(nn.Sequential(nn.Flatten(), nn.Linear(784, 784), nn.Unflatten(1, (1, 28, 28)),
                                   _FunctionalLayer()), (1, 28, 28))


def test_macs_restore_the_mode():
    m = LeNet5().train()
    measure.macs(m, (1, 28, 28))
    assert m.training


def test_serialized_bytes():
    m = LeNet5()
    assert measure.serialized_bytes(m) == len(measure.serialize(m))
    assert 4 * 431_080 < measure.serialized_bytes(m) < 4 * 431_080 + 10_000
    assert measure.serialized_bytes(m.state_dict()) == measure.serialized_bytes(m)


def test_latency_restores_threads_and_mode_and_accepts_callables():
    before = torch.get_num_threads()
    m = LeNet5().train()
    t = measure.latency_ms(m, (1, 28, 28), batch_size=2, repeats=3, warmup=1)
    assert t > 0 and torch.get_num_threads() == before
    assert m.training  # timed in eval mode, then put back
    assert measure.latency_ms(lambda x: x.sum(), (4,), repeats=2) > 0
    calls = []
    measure.latency_ms(lambda: calls.append(1), None, repeats=3, warmup=2)  # zero-argument callable
    assert len(calls) == 5
    with pytest.raises(ValueError, match="input_shape=None"):
        measure.latency_ms(m, None)
    with pytest.raises(ValueError, match="batch_size"):
        measure.latency_ms(LeNet5(), (1, 28, 28), batch_size=0)
    with pytest.raises(ValueError, match="threads"):
        measure.latency_ms(LeNet5(), (1, 28, 28), threads=0)
    with pytest.raises(ValueError, match="repeats"):
        measure.time_fn(lambda: None, repeats=0)


def test_time_fn_counts_calls():
    calls = []
    times = measure.time_fn(lambda: calls.append(1), repeats=4, warmup=2)
    assert len(times) == 4 and len(calls) == 6 and all(t >= 0 for t in times)


def test_compare_latency_interleaves_and_keeps_keys():
    calls = []
    models = {("m", "nchw"): lambda x: calls.append("a"), "other": lambda x: calls.append("b")}
    lat = measure.compare_latency(models, (1, 4, 4), rounds=2, batch_size=2, repeats=3)
    assert set(lat) == {("m", "nchw"), "other"} and all(v >= 0 for v in lat.values())
    # every round times every model once (warm-up + repeats), in the dict's order
    per = len(calls) // 4
    assert calls == ["a"] * per + ["b"] * per + ["a"] * per + ["b"] * per
    for bad in (0, 1.5):
        with pytest.raises(ValueError, match="rounds"):
            measure.compare_latency(models, (1, 4, 4), rounds=bad)
    calls.clear()
    zero_arg = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    lat = measure.compare_latency(zero_arg, None, rounds=2, repeats=3)
    assert set(lat) == {"a", "b"} and calls == ["a"] * 8 + ["b"] * 8 + ["a"] * 8 + ["b"] * 8


def test_time_children_parts_and_total():
    m = LeNet5().train()
    x = torch.randn(2, 1, 28, 28)
    parts = measure.time_children(m, x, repeats=3, warmup=1)
    assert list(parts) == ["conv1", "conv2", "fc1", "fc2", "other", "total"]
    assert parts["total"] >= parts["conv2"] > 0 and m.training
    grouped = measure.time_children(m, lambda: m(x), {"convs": ["conv1", "conv2"], "fcs": ["fc1", "fc2"]},
                                    repeats=2)
    assert list(grouped) == ["convs", "fcs", "other", "total"]
    with pytest.raises(ValueError, match="repeats=0"):
        measure.time_children(m, x, repeats=0)
    with pytest.raises(ValueError, match="never called"):
        measure.time_children(_Unused(), torch.randn(2, 1, 28, 28), ["fc", "spare"], repeats=1)
    with pytest.raises(ValueError, match="not a submodule"):
        measure.time_children(m, x, ["conv3"])
    with pytest.raises(ValueError, match="counted twice"):
        measure.time_children(nn.Sequential(nn.Sequential(nn.Linear(2, 2))), torch.randn(1, 2), ["0", "0.0"])


def test_compare_time_children():
    m = _lenet()
    fac = lr.factorize(m, {"fc1": 4})
    out = measure.compare_time_children({"a": m, "b": fac}, torch.randn(2, 1, 28, 28), rounds=2, repeats=2)
    assert set(out) == {"a", "b"} and set(out["b"]) == {"conv1", "conv2", "fc1", "fc2", "other", "total"}
    out = measure.compare_time_children({"a": m}, lambda model: model(torch.randn(2, 1, 28, 28)), ["fc1"],
                                        rounds=1, repeats=1)
    assert set(out["a"]) == {"fc1", "other", "total"}
    with pytest.raises(ValueError, match="rounds"):
        measure.compare_time_children({"a": m}, torch.randn(2, 1, 28, 28), rounds=0)


def test_matmul_sparse_path_computes_the_dense_product():
    w = torch.randn(16, 32) * P.magnitude_mask(torch.randn(16, 32), 0.9)
    dense, x = measure._matmul_call(w, batch_size=4, sparse=False)
    sparse, x2 = measure._matmul_call(w, batch_size=4, sparse=True)
    assert torch.equal(x, x2)
    torch.testing.assert_close(sparse().t(), dense())
    torch.testing.assert_close(dense(), x @ w.t())
    for sp in (False, True):
        assert measure.matmul_latency_ms(w, batch_size=4, sparse=sp, repeats=2) > 0
    with pytest.raises(ValueError, match=r"2-D .*\(2, 3, 4\)"):
        measure.matmul_latency_ms(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="batch_size"):
        measure.matmul_latency_ms(w, batch_size=0)
