"""The chapter 03 checkers accept the reference solutions and reject typical wrong answers."""
from __future__ import annotations

import torch
from torch import nn

from course_lib import checks
from course_lib.checks.lowrank import reference_rank_for_energy, reference_svd_split


def _split(layer, rank, *, bias=True, smallest=False, no_s=False, bias_first=False, s_twice=False, flip=False,
           s_left=None, copy_bias=True, transpose=False, rows_of_v=False, assign=False, float32_svd=False):
    w = layer.weight.detach() if float32_svd else layer.weight.detach().double()
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    if flip:  # the signs of singular vector pairs are arbitrary: flip every other pair
        sign = torch.tensor([(-1.0) ** i for i in range(len(s))], dtype=u.dtype)
        u, vh = u * sign, vh * sign[:, None]
    if rows_of_v:  # torch.svd's V taken row-wise
        vh = vh.T[:len(s)]
    idx = slice(len(s) - rank, len(s)) if smallest else slice(0, rank)
    if no_s:
        left = right = torch.ones(rank, dtype=s.dtype)
    elif s_twice:
        left = right = s[idx]
    elif s_left is not None:  # all of S in one factor
        left, right = (s[idx], torch.ones(rank, dtype=s.dtype)) if s_left else (torch.ones(rank, dtype=s.dtype), s[idx])
    else:
        left = right = s[idx].sqrt()
    a, b = u[:, idx] * left, right[:, None] * vh[idx]
    if transpose:  # V's factor first and U's second, as if W were W^T
        a, b = vh[idx].T * right, left[:, None] * u[:, idx].T
    first = nn.Linear(layer.in_features, rank, bias=bias_first)
    second = nn.Linear(rank, layer.out_features, bias=bias and layer.bias is not None)
    with torch.no_grad():
        if assign:  # a factor assigned as a new Parameter: no shape check from copy_
            first.weight = nn.Parameter(b.T.float().contiguous())
        else:
            first.weight.copy_(b)
        second.weight.copy_(a)
        if bias_first:
            first.bias.zero_()
        if second.bias is not None and copy_bias:
            second.bias.copy_(layer.bias)
    return nn.Sequential(first, second)


def test_svd_split_accepts_reference_and_a_plain_solution():
    assert checks.check_svd_split(reference_svd_split, verbose=False)
    assert checks.check_svd_split(_split, verbose=False)


def test_svd_split_accepts_correct_alternatives():
    # sign flips of singular vector pairs, all of S in either factor, an SVD in float32
    for kw in (dict(flip=True), dict(s_left=True), dict(s_left=False), dict(float32_svd=True)):
        assert checks.check_svd_split(lambda l, r, kw=kw: _split(l, r, **kw), verbose=False), kw

    class Factorized(nn.Module):  # not an nn.Sequential, but two Linear layers applied in order
        def __init__(self, seq):
            super().__init__()
            self.a, self.b = seq[0], seq[1]

        def forward(self, x):
            return self.b(self.a(x))
    assert checks.check_svd_split(lambda l, r: Factorized(_split(l, r)), verbose=False)


def test_svd_split_rejects_typical_mistakes(capsys):
    assert not checks.check_svd_split(lambda l, r: _split(l, r, bias=False))
    assert "the original bias (20 values) is missing" in capsys.readouterr().out
    assert not checks.check_svd_split(lambda l, r: _split(l, r, smallest=True))
    assert "SMALLEST" in capsys.readouterr().out
    assert not checks.check_svd_split(lambda l, r: _split(l, r, no_s=True))
    assert "singular values are missing" in capsys.readouterr().out
    assert not checks.check_svd_split(lambda l, r: _split(l, r, bias_first=True))
    assert "parameters" in capsys.readouterr().out
    assert not checks.check_svd_split(lambda l, r: nn.Sequential(nn.Linear(l.in_features, l.out_features)))
    assert "two nn.Linear" in capsys.readouterr().out
    for kw, words in ((dict(copy_bias=False), "random initial bias"), (dict(s_twice=True), "S_k is in both"),
                      (dict(transpose=True), "(out, in)"), (dict(assign=True), "transposed"),
                      (dict(rows_of_v=True), "ROWS are the right singular vectors")):
        assert not checks.check_svd_split(lambda l, r, kw=kw: _split(l, r, **kw)), kw
        assert words in capsys.readouterr().out, kw
    # V's rows for Vh's crash where in > out (above); where in <= out the layers build and the output names it
    assert not checks.check_svd_split(lambda l, r: _split(l, r, rows_of_v=l.in_features <= l.out_features))
    assert "rows of V instead of rows of Vh" in capsys.readouterr().out
    # transposed factors build without error only for a square layer: there the output names them
    assert not checks.check_svd_split(lambda l, r: _split(l, r, transpose=l.in_features == l.out_features))
    assert "you built W_k^T" in capsys.readouterr().out
    assert not checks.check_svd_split(lambda l, r: _split(l, r).double())
    assert "convert the factors back" in capsys.readouterr().out


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

    def stub_with_words(layer, rank):  # NotImplementedError is a RuntimeError: not taken for a shape mismatch
        raise NotImplementedError("match the shapes of the factors")
    assert not checks.check_svd_split(stub_with_words)
    assert "not implemented yet (match the shapes" in capsys.readouterr().out


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
    assert "as an int" in capsys.readouterr().out

    def strict(s, energy):  # > instead of >=: one too many where the threshold is met exactly
        e = torch.cumsum(s.double() ** 2, 0) / (s.double() ** 2).sum()
        return min(int((e <= energy + 1e-12).sum()) + 1, len(s))
    assert not checks.check_rank_for_energy(strict)
    assert "not >" in capsys.readouterr().out

    def uncapped(s, energy):  # float32 and no cap: at energy 1.0 the rank can exceed len(s)
        e = torch.cumsum(s.float() ** 2, 0) / (s.float() ** 2).sum()
        return int((e < energy).sum()) + 1 + (1 if energy == 1.0 else 0)
    assert not checks.check_rank_for_energy(uncapped)
    assert "cap the rank at len(s)" in capsys.readouterr().out

    assert not checks.check_rank_for_energy(lambda s, e: reference_rank_for_energy(s, e) + 0.5)
    assert "whole number" in capsys.readouterr().out


def test_rank_for_energy_accepts_other_return_types():
    # an integer-valued float, a one-element tensor, a numpy integer: harmless, accepted
    import numpy as np
    for conv in (float, lambda k: torch.tensor(k), lambda k: torch.tensor([k]), np.int64):
        assert checks.check_rank_for_energy(lambda s, e, conv=conv: conv(reference_rank_for_energy(s, e)),
                                            verbose=False)

    def searchsorted(s, energy):  # another correct formulation
        e = torch.cumsum(s.double() ** 2, 0) / (s.double() ** 2).sum()
        return min(int(torch.searchsorted(e, torch.tensor([energy - 1e-12], dtype=e.dtype))) + 1, len(s))
    assert checks.check_rank_for_energy(searchsorted, verbose=False)


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
           reshape=False, sliced=False, mutate=False, in_from_mode0=False, flip=False, permute=False,
           float32=False):
    k = kernel.float() if float32 else kernel.double()
    c_out, c_in = k.shape[:2]
    m0 = k.reshape(c_out, -1)
    if permute:  # another column order of the mode-1 unfolding: the same left singular vectors
        m1 = k.permute(1, 2, 3, 0).reshape(c_in, -1)
    else:
        m1 = k.reshape(c_in, -1) if reshape else torch.movedim(k, 1, 0).reshape(c_in, -1)
    if in_from_mode0:
        m1 = m0
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
    if flip:  # singular vectors are defined up to sign
        u_out, u_in = -u_out, u_in * torch.tensor([(-1.0) ** i for i in range(u_in.shape[1])], dtype=u_in.dtype)
    if sliced:
        core = k[:r_out, :r_in].clone()
    elif in_from_mode0:
        core = torch.zeros(r_out, r_in, *k.shape[2:], dtype=k.dtype)
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


def test_hosvd_accepts_correct_alternatives():
    # sign flips, another column order of the unfolding, an SVD in float32
    for kw in (dict(flip=True), dict(permute=True), dict(float32=True)):
        assert checks.check_hosvd(lambda k, a, b, kw=kw: _hosvd(k, a, b, **kw), verbose=False), kw


def test_hosvd_rejects_typical_mistakes(capsys):
    for kw, words in ((dict(swap=True), "swapped"), (dict(transpose=True), "COLUMNS"), (dict(right=True), "LEFT"),
                      (dict(scaled=True), "orthonormal"), (dict(smallest=True), "SMALLEST"),
                      (dict(reshape=True), "movedim"), (dict(sliced=True), "slice"), (dict(mutate=True), "changed"),
                      (dict(in_from_mode0=True), "taken from the mode-0")):
        assert not checks.check_hosvd(lambda k, a, b, kw=kw: _hosvd(k, a, b, **kw)), kw
        assert words in capsys.readouterr().out, kw
    assert not checks.check_hosvd(lambda k, a, b: None)
    assert "return a tuple" in capsys.readouterr().out


# ---------------------------------------------------------------- Tucker-2 MACs exercise
def _macs(c_in, c_out, k, r_out, r_in, h_in, h_out, *, first_at_out=False, no_last=False, no_core=False,
          k_once=False, original=False, core_at_in=False, all_at_in=False, params=False, swap_ranks=False,
          as_float=False):
    if original:
        return c_out * c_in * k * k * h_out ** 2
    if params:
        h_in = h_out = 1
    if all_at_in:
        h_out = h_in
    if swap_ranks:
        r_in, r_out = r_out, r_in
    first = r_in * c_in * (h_out if first_at_out else h_in) ** 2
    core = 0 if no_core else r_out * r_in * (k if k_once else k * k) * (h_in if core_at_in else h_out) ** 2
    last = 0 if no_last else c_out * r_out * h_out ** 2
    return float(first + core + last) if as_float else first + core + last


def test_tucker2_macs_accepts_reference_and_a_plain_solution():
    from course_lib.checks.lowrank import reference_tucker2_macs
    assert checks.check_tucker2_macs(reference_tucker2_macs, verbose=False)
    assert checks.check_tucker2_macs(_macs, verbose=False)
    # a float with a whole value (e.g. from h_in ** 2.0) is harmless
    assert checks.check_tucker2_macs(lambda *a: _macs(*a, as_float=True), verbose=False)


def test_tucker2_macs_rejects_typical_mistakes(capsys):
    for kw, words in ((dict(first_at_out=True), "runs on the INPUT map"), (dict(no_last=True), "last 1x1 conv"),
                      (dict(no_core=True), "core conv (R_in -> R_out) is missing"),
                      (dict(k_once=True), "k squared"), (dict(original=True), "ORIGINAL"),
                      (dict(core_at_in=True), "produces the OUTPUT map"), (dict(all_at_in=True), "INPUT size"),
                      (dict(params=True), "WEIGHTS"), (dict(swap_ranks=True), "swapped")):
        assert not checks.check_tucker2_macs(lambda *a, kw=kw: _macs(*a, **kw)), kw
        assert words in capsys.readouterr().out, kw
    assert not checks.check_tucker2_macs(lambda *a: _macs(*a) + 1)
    assert "expected" in capsys.readouterr().out
    assert not checks.check_tucker2_macs(lambda *a: "many")
    assert "as an int" in capsys.readouterr().out
    assert not checks.check_tucker2_macs(lambda *a: _macs(*a) / 2)
    assert "expected" in capsys.readouterr().out
