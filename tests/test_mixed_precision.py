"""Mixed precision under a budget (course_lib.quantization.mixed_precision): sensitivity one layer at a
time, the greedy allocation's moves and stopping rule, exact bytes, argument errors."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from course_lib import quantization as Q

FLOAT = 32


@pytest.fixture()
def setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 8)).eval()
    x = torch.randn(256, 16, generator=torch.Generator().manual_seed(1))
    ref = model(x).detach()
    weights = {n: {b: Q.quantize_weights(model, "rtn", b, 8, names=[n])[0].get_submodule(n).weight.detach().clone()
                   for b in (2, 4, 8)} for n in ("0", "2", "4")}
    sizes = {n: {b: Q.layer_bytes(*model.get_submodule(n).weight.shape, b, 8) for b in (2, 4, 8, FLOAT)} for n in weights}

    @torch.no_grad()
    def score(m):  # higher is better: minus the relative output error
        return -float((m(x) - ref).pow(2).sum() / ref.pow(2).sum())
    return model, weights, sizes, score


def test_apply_bits_and_bytes(setup):
    model, weights, sizes, score = setup
    m = Q.apply_bits(model, weights, {"0": 4, "2": FLOAT})
    assert torch.equal(m[0].weight, weights["0"][4]) and torch.equal(m[2].weight, model[2].weight)
    assert torch.equal(m[4].weight, model[4].weight) and not torch.equal(model[0].weight, weights["0"][4])
    assert Q.allocation_bytes({"0": 4, "2": FLOAT, "4": 8}, sizes) == (16 * 32 // 2 + 3 * 32 * 2) + 4 * 32 * 16 + (8 * 16 + 3 * 8 * 2)
    with pytest.raises(ValueError, match="config"):
        Q.apply_bits(model, weights, {"0": 3})
    with pytest.raises(ValueError, match="config"):
        Q.apply_bits(model, weights, {"1": 4})
    with pytest.raises(ValueError, match="weights"):
        Q.apply_bits(model, {"1": {4: torch.zeros(1)}}, {})
    with pytest.raises(ValueError, match="shape"):
        Q.apply_bits(model, {"0": {4: torch.zeros(3, 3)}}, {})
    with pytest.raises(ValueError, match="sizes"):
        Q.allocation_bytes({"0": 3}, sizes)


def test_layer_sensitivity_is_one_layer_at_a_time(setup):
    model, weights, sizes, score = setup
    before = [p.detach().clone() for p in model.parameters()]
    sens = Q.layer_sensitivity(model, weights, score)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    for n in weights:
        assert sens[n][FLOAT] == score(model) == 0.0
        for b in (2, 4, 8):
            assert sens[n][b] == pytest.approx(score(Q.apply_bits(model, weights, {n: b})), abs=0)
        assert sens[n][2] < sens[n][4] < sens[n][8] < 0  # fewer bits, larger error


def test_greedy_allocation_meets_the_budget_at_each_step_cheapest(setup):
    model, weights, sizes, score = setup
    sens = Q.layer_sensitivity(model, weights, score)
    start = score(Q.apply_bits(model, weights, dict.fromkeys(weights, 2)))
    budget = score(Q.apply_bits(model, weights, dict.fromkeys(weights, 8)))  # as good as all-8-bit
    path = Q.greedy_allocation(model, weights, sizes, sens, score, budget, ladder=(2, 8, FLOAT))
    assert path[0]["moved"] is None and path[0]["score"] == pytest.approx(start) and not path[0]["meets"]
    assert path[-1]["meets"] and not any(p["meets"] for p in path[:-1])  # stops at the first allocation that meets it
    for a, b in zip(path, path[1:]):
        name, frm, to = b["moved"]
        assert a["config"][name] == frm and b["config"][name] == to and to > frm
        assert b["bytes"] - a["bytes"] == sizes[name][to] - sizes[name][frm] > 0
        assert b["score"] == pytest.approx(score(Q.apply_bits(model, weights, b["config"])))
    # the first move is the best estimated gain per byte
    gains = {n: (sens[n][8] - sens[n][2]) / (sizes[n][8] - sizes[n][2]) for n in weights}
    assert path[1]["moved"] == (max(gains, key=gains.get), 2, 8)
    # 2 -> 4 bits costs no byte (both take a nibble): those free moves come first
    free = Q.greedy_allocation(model, weights, sizes, sens, score, budget, ladder=(2, 4, 8, FLOAT))
    assert [p["moved"][1:] for p in free[1:4]] == [(2, 4)] * 3 and free[3]["bytes"] == free[0]["bytes"]
    # a budget met at the start: no move; an impossible budget: every layer ends at the top rung
    assert len(Q.greedy_allocation(model, weights, sizes, sens, score, start - 1)) == 1
    top = Q.greedy_allocation(model, weights, sizes, sens, score, 1.0, ladder=(4, 8, FLOAT))
    assert top[-1]["config"] == dict.fromkeys(weights, FLOAT) and not top[-1]["meets"] and len(top) == 1 + 2 * 3
    assert len(Q.greedy_allocation(model, weights, sizes, sens, score, 1.0, max_steps=2)) == 3


def test_greedy_allocation_errors(setup):
    model, weights, sizes, score = setup
    sens = Q.layer_sensitivity(model, weights, score)
    with pytest.raises(ValueError, match="ladder"):
        Q.greedy_allocation(model, weights, sizes, sens, score, 0.0, ladder=(8, 4))
    with pytest.raises(ValueError, match="ladder"):
        Q.greedy_allocation(model, weights, sizes, sens, score, 0.0, ladder=(4,))
    with pytest.raises(ValueError, match="3-bit"):
        Q.greedy_allocation(model, weights, sizes, sens, score, 0.0, ladder=(3, 8))
    with pytest.raises(ValueError, match="sizes"):
        Q.greedy_allocation(model, weights, {n: {4: 1} for n in weights}, sens, score, 0.0, ladder=(4, 8))
    with pytest.raises(ValueError, match="sensitivity"):
        Q.greedy_allocation(model, weights, sizes, {}, score, 0.0, ladder=(4, 8))
    with pytest.raises(ValueError, match="max_steps"):
        Q.greedy_allocation(model, weights, sizes, sens, score, 0.0, max_steps=0)
