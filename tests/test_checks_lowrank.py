"""The chapter 03 checkers accept the reference solutions and reject typical wrong answers."""
from __future__ import annotations

import torch
from torch import nn

from course_lib import checks
from course_lib.checks.lowrank import reference_rank_for_energy, reference_svd_split


def _split(layer, rank, *, bias=True, smallest=False, no_s=False, bias_first=False):
    u, s, vh = torch.linalg.svd(layer.weight.detach().double(), full_matrices=False)
    idx = slice(len(s) - rank, len(s)) if smallest else slice(0, rank)
    root = torch.ones(rank, dtype=torch.float64) if no_s else s[idx].sqrt()
    first = nn.Linear(layer.in_features, rank, bias=bias_first)
    second = nn.Linear(rank, layer.out_features, bias=bias and layer.bias is not None)
    with torch.no_grad():
        first.weight.copy_(root[:, None] * vh[idx])
        second.weight.copy_(u[:, idx] * root)
        if bias_first:
            first.bias.zero_()
        if second.bias is not None:
            second.bias.copy_(layer.bias)
    return nn.Sequential(first, second)


def test_svd_split_accepts_reference_and_a_plain_solution():
    assert checks.check_svd_split(reference_svd_split, verbose=False)
    assert checks.check_svd_split(_split, verbose=False)


def test_svd_split_rejects_typical_mistakes(capsys):
    assert not checks.check_svd_split(lambda l, r: _split(l, r, bias=False))
    assert "bias" in capsys.readouterr().out
    assert not checks.check_svd_split(lambda l, r: _split(l, r, smallest=True))
    assert "SMALLEST" in capsys.readouterr().out
    assert not checks.check_svd_split(lambda l, r: _split(l, r, no_s=True))
    assert "singular values are missing" in capsys.readouterr().out
    assert not checks.check_svd_split(lambda l, r: _split(l, r, bias_first=True))
    assert "parameters" in capsys.readouterr().out
    assert not checks.check_svd_split(lambda l, r: nn.Sequential(nn.Linear(l.in_features, l.out_features)))
    assert "two nn.Linear" in capsys.readouterr().out


def test_svd_split_rejects_in_place_changes_and_crashes(capsys):
    def mutate(layer, rank):
        out = _split(layer, rank)
        with torch.no_grad():
            layer.weight.zero_()
        return out
    assert not checks.check_svd_split(mutate)
    assert "changed the original" in capsys.readouterr().out

    def stub(layer, rank):
        raise NotImplementedError
    assert not checks.check_svd_split(stub)
    assert "not implemented" in capsys.readouterr().out


def test_rank_for_energy_accepts_reference():
    assert checks.check_rank_for_energy(reference_rank_for_energy, verbose=False)

    def plain(s, energy):
        total = float((s.double() ** 2).sum())
        acc = 0.0
        for i, v in enumerate(s.double().tolist(), 1):
            acc += v * v
            if acc >= energy * total - 1e-12:
                return i
        return len(s)
    assert checks.check_rank_for_energy(plain, verbose=False)


def test_rank_for_energy_rejects_typical_mistakes(capsys):
    def off_by_one(s, energy):
        e = torch.cumsum(s.double() ** 2, 0) / (s.double() ** 2).sum()
        return int((e < energy - 1e-12).sum())
    assert not checks.check_rank_for_energy(off_by_one)
    assert "off by one" in capsys.readouterr().out

    def not_squared(s, energy):
        e = torch.cumsum(s.double(), 0) / s.double().sum()
        return min(int((e < energy - 1e-12).sum()) + 1, len(s))
    assert not checks.check_rank_for_energy(not_squared)
    assert "SQUARED" in capsys.readouterr().out

    assert not checks.check_rank_for_energy(lambda s, e: len(s))
    assert "expected" in capsys.readouterr().out
    assert not checks.check_rank_for_energy(lambda s, e: "three")
    assert "return an int" in capsys.readouterr().out


def test_checkers_leave_the_global_random_state_alone():
    state = torch.get_rng_state()
    checks.check_svd_split(_split, verbose=False)
    checks.check_rank_for_energy(reference_rank_for_energy, verbose=False)
    assert torch.equal(torch.get_rng_state(), state)
