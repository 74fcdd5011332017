"""Measurement toolkit: counts, sparsity, MACs (checked by hand), sizes, latency, prune compatibility."""
import lzma
import zlib

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from course_lib import measure
from course_lib.models import LeNet5, MLP


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


def test_size_bytes(tmp_path):
    m = LeNet5()
    raw = measure.size_bytes(m)
    assert 4 * 431_080 < raw < 4 * 431_080 + 10_000
    blob = measure.serialize(m)
    assert measure.size_bytes(m, "zlib") == len(zlib.compress(blob, 9))
    assert measure.size_bytes(blob, "lzma") == len(lzma.compress(blob, preset=9 | lzma.PRESET_EXTREME))
    with torch.no_grad():
        m.fc1.weight.zero_()
    assert measure.size_bytes(m, "zlib") < raw / 3
    p = tmp_path / "m.pt"
    p.write_bytes(blob)
    assert measure.size_bytes(p) == len(blob)
    with pytest.raises(ValueError, match="compress='gzip'"):
        measure.size_bytes(m, "gzip")
    with pytest.raises(FileNotFoundError):
        measure.size_bytes(tmp_path / "missing.pt")


def test_latency_restores_threads_and_accepts_callables():
    before = torch.get_num_threads()
    t = measure.latency_ms(LeNet5(), (1, 28, 28), batch_size=2, repeats=3, warmup=1)
    assert t > 0 and torch.get_num_threads() == before
    assert measure.latency_ms(lambda x: x.sum(), (4,), repeats=2) > 0
    with pytest.raises(ValueError, match="batch_size"):
        measure.latency_ms(LeNet5(), (1, 28, 28), batch_size=0)
    with pytest.raises(ValueError, match="threads"):
        measure.latency_ms(LeNet5(), (1, 28, 28), threads=0)
    with pytest.raises(ValueError, match="repeats"):
        measure.time_fn(lambda: None, repeats=0)


def test_summarize_record_fields():
    from course_lib.data import load_dataset
    s = load_dataset("mnist5k", limit=64)
    rec = measure.summarize(MLP(), "baseline", s.test, (1, 28, 28), latency=False, method="fp32")
    assert set(rec) >= {"name", "accuracy", "size_bytes", "params", "nonzero", "macs", "latency_ms", "method"}
    assert rec["macs"] == 784 * 300 + 300 * 100 + 100 * 10


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
