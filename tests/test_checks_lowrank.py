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
    from course_lib.checks.lowrank import reference_hosvd, reference_tucker2_macs
    state = torch.get_rng_state()
    checks.check_svd_split(_split, verbose=False)
    checks.check_rank_for_energy(reference_rank_for_energy, verbose=False)
    checks.check_hosvd(reference_hosvd, verbose=False)
    checks.check_tucker2_macs(reference_tucker2_macs, verbose=False)
    assert torch.equal(torch.get_rng_state(), state)


# ---------------------------------------------------------------- HOSVD exercise
def _hosvd(kernel, r_out, r_in, *, swap=False, transpose=False, right=False, scaled=False, smallest=False,
           reshape=False, sliced=False, mutate=False):
    k = kernel.double()
    c_out, c_in = k.shape[:2]
    m0 = k.reshape(c_out, -1)
    m1 = k.reshape(c_in, -1) if reshape else torch.movedim(k, 1, 0).reshape(c_in, -1)
    u0, s0, v0 = torch.linalg.svd(m0, full_matrices=False)
    u1, s1, v1 = torch.linalg.svd(m1, full_matrices=False)
    if right:
        u0, u1 = v0.T, v1.T
    if smallest:
        u_out, u_in = u0[:, -r_out:], u1[:, -r_in:]
    else:
        u_out, u_in = u0[:, :r_out], u1[:, :r_in]
    if scaled:
        u_out = u_out * s0[:r_out]
    if sliced:
        core = k[:r_out, :r_in].clone()
    elif right:  # the learner's own einsum would fail on these shapes; a core of the right shape reaches the checker
        core = torch.zeros(r_out, r_in, *k.shape[2:], dtype=k.dtype)
    else:
        core = torch.einsum("oihw,or,is->rshw", k, u_out, u_in)
    if mutate:
        kernel.mul_(2)
    if swap:
        u_out, u_in = u_in, u_out
    if transpose:
        u_out, u_in = u_out.T, u_in.T
    return core, u_out, u_in


def test_hosvd_accepts_reference_and_a_plain_solution():
    from course_lib.checks.lowrank import reference_hosvd
    assert checks.check_hosvd(reference_hosvd, verbose=False)
    assert checks.check_hosvd(_hosvd, verbose=False)


def test_hosvd_rejects_typical_mistakes(capsys):
    for kw, words in ((dict(swap=True), "swapped"), (dict(transpose=True), "COLUMNS"), (dict(right=True), "LEFT"),
                      (dict(scaled=True), "orthonormal"), (dict(smallest=True), "SMALLEST"),
                      (dict(reshape=True), "movedim"), (dict(sliced=True), "slice"), (dict(mutate=True), "changed")):
        assert not checks.check_hosvd(lambda k, a, b, kw=kw: _hosvd(k, a, b, **kw)), kw
        assert words in capsys.readouterr().out, kw
    assert not checks.check_hosvd(lambda k, a, b: None)
    assert "return a tuple" in capsys.readouterr().out


# ---------------------------------------------------------------- Tucker-2 MACs exercise
def _macs(c_in, c_out, k, r_out, r_in, h_in, h_out, *, first_at_out=False, no_last=False, k_once=False,
          original=False, core_at_in=False):
    if original:
        return c_out * c_in * k * k * h_out ** 2
    first = r_in * c_in * (h_out if first_at_out else h_in) ** 2
    core = r_out * r_in * (k if k_once else k * k) * (h_in if core_at_in else h_out) ** 2
    last = 0 if no_last else c_out * r_out * h_out ** 2
    return first + core + last


def test_tucker2_macs_accepts_reference_and_a_plain_solution():
    from course_lib.checks.lowrank import reference_tucker2_macs
    assert checks.check_tucker2_macs(reference_tucker2_macs, verbose=False)
    assert checks.check_tucker2_macs(_macs, verbose=False)


def test_tucker2_macs_rejects_typical_mistakes(capsys):
    for kw, words in ((dict(first_at_out=True), "INPUT map"), (dict(no_last=True), "all three"),
                      (dict(k_once=True), "k squared"), (dict(original=True), "ORIGINAL"),
                      (dict(core_at_in=True), "OUTPUT")):
        assert not checks.check_tucker2_macs(lambda *a, kw=kw: _macs(*a, **kw)), kw
        assert words in capsys.readouterr().out, kw
    assert not checks.check_tucker2_macs(lambda *a: _macs(*a) + 1)
    assert "expected" in capsys.readouterr().out
    assert not checks.check_tucker2_macs(lambda *a: "many")
    assert "as an int" in capsys.readouterr().out
