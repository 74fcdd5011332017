"""Checkers for chapter 03 (low-rank factorization): splitting a Linear by SVD, choosing a rank by energy."""
from __future__ import annotations

import torch
from torch import nn

from . import Wrong, checker, expect_close
from ..lowrank import choose_rank, svd_linear

__all__ = ["check_svd_split", "check_rank_for_energy", "reference_svd_split", "reference_rank_for_energy"]


def reference_svd_split(layer: nn.Linear, rank: int) -> nn.Sequential:
    """Linear(in, out) -> Sequential(Linear(in, rank, bias=False), Linear(rank, out)) by truncated SVD."""
    return svd_linear(layer, rank)


def reference_rank_for_energy(s: torch.Tensor, energy: float) -> int:
    """Smallest k with sum(s[:k]^2) >= energy * sum(s^2); s sorted descending."""
    return choose_rank(s, energy)


def _random_linear(g: torch.Generator, n_in: int, n_out: int, bias: bool) -> nn.Linear:
    lin = nn.utils.skip_init(nn.Linear, n_in, n_out, bias=bias)  # every value is set below, from ``g``
    with torch.no_grad():
        # a decaying spectrum, like a trained layer, so every singular value counts differently
        u, _ = torch.linalg.qr(torch.randn(n_out, n_out, generator=g))
        v, _ = torch.linalg.qr(torch.randn(n_in, n_in, generator=g))
        k = min(n_in, n_out)
        s = 3.0 * torch.logspace(0, -2, k)
        lin.weight.copy_((u[:, :k] * s) @ v[:, :k].t())
        if bias:
            lin.bias.copy_(torch.randn(n_out, generator=g))
    return lin


@checker("SVD split of a Linear")
def check_svd_split(fn):
    # building nn.Linear layers (ours and the learner's) draws from the global RNG: restore it afterwards
    with torch.random.fork_rng(devices=[]):
        _check_svd_split(fn)


def _check_svd_split(fn):
    g = torch.Generator().manual_seed(201)  # local: the global RNG is never touched
    for n_in, n_out, rank, bias in ((30, 20, 5, True), (12, 40, 12, True), (16, 9, 1, False), (25, 25, 25, True)):
        layer = _random_linear(g, n_in, n_out, bias)
        before = layer.weight.detach().clone()
        got = fn(layer, rank)
        if not torch.equal(layer.weight.detach(), before):
            raise Wrong("your function changed the original layer's weight: build new layers instead.")
        if not isinstance(got, nn.Module):
            raise Wrong(f"return an nn.Sequential of two nn.Linear, got {type(got).__name__}.")
        lins = [m for m in got.modules() if isinstance(m, nn.Linear)]
        if len(lins) != 2:
            raise Wrong(f"expected two nn.Linear layers, found {len(lins)}.")
        first, second = lins
        if (first.in_features, first.out_features, second.in_features, second.out_features) != (n_in, rank, rank, n_out):
            raise Wrong(f"for Linear({n_in}, {n_out}) at rank {rank} the layers should be Linear({n_in}, {rank}) "
                        f"then Linear({rank}, {n_out}); got Linear({first.in_features}, {first.out_features}) then "
                        f"Linear({second.in_features}, {second.out_features}).")
        n_params = sum(p.numel() for p in got.parameters())
        want_params = rank * (n_in + n_out) + (n_out if bias else 0)
        if n_params != want_params:
            raise Wrong(f"the factorized layer has {n_params} parameters, expected {want_params}: the original "
                        "bias belongs to the second layer only (the first has bias=False).")
        x = torch.randn(7, n_in, generator=g)
        with torch.no_grad():
            want = reference_svd_split(layer, rank)(x)
            out = got(x)
            if bias and torch.allclose(out + layer.bias, want, atol=1e-4):
                raise Wrong("the output misses the original bias: copy layer.bias into the second Linear.")
            u, s, vh = torch.linalg.svd(layer.weight.double(), full_matrices=False)
            smallest = ((u[:, -rank:] * s[-rank:]) @ vh[-rank:]).float()
            if rank < min(n_in, n_out) and torch.allclose(out, x @ smallest.t() + (layer.bias if bias else 0), atol=1e-4):
                raise Wrong("you kept the SMALLEST singular values: keep the first `rank` (SVD sorts them descending).")
            no_s = (u[:, :rank] @ vh[:rank]).float()
            if torch.allclose(out, x @ no_s.t() + (layer.bias if bias else 0), atol=1e-4):
                raise Wrong("the singular values are missing: W_k = U_k diag(S_k) V_k^T.")
        expect_close(out, want, f"the output at rank {rank}", atol=1e-4, rtol=1e-4)


@checker("rank for a retained energy")
def check_rank_for_energy(fn):
    g = torch.Generator().manual_seed(202)  # local: the global RNG is never touched
    cases = [(torch.tensor([4.0, 3.0]), 0.6, 1), (torch.tensor([4.0, 3.0]), 0.7, 2),
             (torch.tensor([1.0, 1.0, 1.0, 1.0]), 0.5, 2),
             (torch.tensor([5.0, 0.0, 0.0]), 1.0, 1), (torch.tensor([2.0, 1.0, 0.5]), 1.0, 3)]
    for _ in range(5):
        s = torch.sort(torch.rand(int(torch.randint(2, 40, (1,), generator=g)), generator=g) ** 3,
                       descending=True).values
        e = float(torch.rand(1, generator=g) * 0.98 + 0.01)
        cases.append((s, e, reference_rank_for_energy(s, e)))
    answers = []
    for s, e, want in cases:
        got = fn(s.clone(), e)
        try:
            answers.append(int(got))
        except (TypeError, ValueError, RuntimeError):
            raise Wrong(f"return an int (the rank), got {type(got).__name__}.") from None
    wrong = [(c, a) for c, a in zip(cases, answers) if a != c[2]]
    if not wrong:
        return
    if all(a == c[2] - 1 for c, a in wrong):
        (s, e, want), got = wrong[0]
        raise Wrong(f"for s={_short(s)} and energy={e:.3g} you returned {got}, expected {want}: off by one "
                    "(a rank counts values, an index starts at 0).")
    not_squared = [min(int((torch.cumsum(s.double(), 0) / s.double().sum() < e - 1e-12).sum()) + 1, len(s))
                   for s, e, _ in cases]
    if answers == not_squared:
        raise Wrong("energy is measured with SQUARED singular values: sum(s[:k]**2) / sum(s**2).")
    (s, e, want), got = wrong[0]
    s2 = s.double() ** 2
    raise Wrong(f"for s={_short(s)} and energy={e:.3g} you returned {got}, expected {want} (the smallest k "
                f"whose energy {float(s2[:want].sum() / s2.sum()):.3f} >= {e:.3g}).")


def _short(s: torch.Tensor) -> str:
    vals = [round(v, 4) for v in s.tolist()]
    return f"{vals[:6]}{'...' if len(vals) > 6 else ''}"
