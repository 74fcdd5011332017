"""Chapter 5 building blocks on tiny data: weight sharing keeps zeros, recipes reach their targets
by construction (sparsity, ranks, widths), records describe real files."""
import os

import pytest
import torch

from course_lib import codec, measure, pipeline
from course_lib.data import load_dataset
from course_lib.lowrank import factorized_ranks
from course_lib.models import LeNet5


@pytest.fixture(scope="module")
def tiny():
    return load_dataset("mnist5k", limit=128)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return LeNet5().eval()


def test_share_weights_keeps_zeros_and_k_values(model):
    m = pipeline.copy_model(model)
    with torch.no_grad():
        m.fc1.weight[:, ::2] = 0
    zeros = m.fc1.weight == 0
    books = pipeline.share_weights(m, {"fc1": 3, "conv2": 2})
    assert set(books) == {"fc1", "conv2"}
    assert torch.equal(m.fc1.weight == 0, zeros)
    assert len(torch.unique(m.fc1.weight[~zeros])) <= 8
    assert len(torch.unique(m.conv2.weight)) <= 4
    assert torch.equal(m.conv1.weight, model.conv1.weight)  # not listed: untouched


def test_gradual_prune_and_deep_compression(tiny, model, tmp_path):
    m = pipeline.deep_compression(model, tiny.train, sparsity=0.9, bits=3, epochs=1)
    assert measure.sparsity(m) == pytest.approx(0.9, abs=1e-3)
    assert not any(k.endswith("_mask") for k in m.state_dict())
    n = codec.save_compressed(m, tmp_path / "m.ccz")
    assert n < measure.size_bytes(model) / 20
    assert torch.equal(codec.load_compressed(tmp_path / "m.ccz").fc1.weight, m.fc1.weight)
    with pytest.raises(ValueError, match="ramp"):
        pipeline.gradual_prune(model, tiny.train, ramp=0)
    with pytest.raises(ValueError, match="epochs"):
        pipeline.gradual_prune(model, tiny.train, epochs=0)


def test_recipes_shapes(tiny, model):
    fast = pipeline.latency_optimised(model, tiny.train, epochs=1)
    assert (fast.config["c1"], fast.config["c2"], fast.config["fc"]) == (8, 15, 100)
    tp = pipeline.torch_prune_recipe(model, tiny.train, amount=0.9, epochs=1)
    assert measure.sparsity(tp) == pytest.approx(0.9, abs=1e-3)
    assert not any(k.endswith(("_orig", "_mask")) for k in tp.state_dict())
    lr = pipeline.lowrank_recipe(model, tiny.train, epochs=1)
    assert factorized_ranks(lr) == {"conv2": (16, 12), "fc1": 30}
    assert measure.count_params(lr) < measure.count_params(model) / 3


def test_file_record_and_helpers(tiny, model, tmp_path):
    f = tmp_path / "m.pt"
    n = pipeline.save_state(model, f)
    assert n == os.path.getsize(f)
    state = torch.load(f, weights_only=True)
    assert set(state) == set(model.state_dict())
    z = pipeline.zlib_file(f, tmp_path / "m.zlib")
    assert 0 < os.path.getsize(z) < n
    r = pipeline.file_record("baseline", model, f, "fp32", tiny.test, (1, 28, 28), root=tmp_path)
    assert r["file"] == "m.pt" and r["size_bytes"] == n and r["macs"] == 2_293_000
    assert 0 <= r["accuracy"] <= 1 and r["latency_ms"] > 0
