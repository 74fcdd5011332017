"""Checkers for chapter 03 (low-rank factorization): splitting a Linear by SVD, choosing a rank by energy,
the HOSVD factors of a Tucker-2 convolution, and the Tucker-2 MAC count."""
from __future__ import annotations

import torch
from torch import nn

from . import Wrong, checker, expect_close
from ..lowrank import choose_rank, svd_linear, tucker2, tucker2_macs, tucker_reconstruct, unfold

__all__ = ["check_svd_split", "check_rank_for_energy", "check_hosvd", "check_tucker2_macs",
           "reference_svd_split", "reference_rank_for_energy", "reference_hosvd", "reference_tucker2_macs"]


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


# ---------------------------------------------------------------- Tucker-2: HOSVD factors
def reference_hosvd(kernel: torch.Tensor, rank_out: int, rank_in: int):
    """(core (R_out, R_in, kh, kw), U_out (C_out, R_out), U_in (C_in, R_in)) of the HOSVD of a kernel
    (C_out, C_in, kh, kw): U_out, U_in = leading left singular vectors of the mode-0 and mode-1
    unfoldings, core = K x_0 U_out^T x_1 U_in^T."""
    return tucker2(kernel, (rank_out, rank_in))


def _projector(u: torch.Tensor) -> torch.Tensor:
    u = u.double()
    return u @ u.T


def _subspace_gap(u: torch.Tensor, ref: torch.Tensor) -> float:
    """Largest difference between the orthogonal projectors on two column spaces (0 = same space;
    insensitive to the signs and the order of the columns)."""
    return float((_projector(u) - _projector(ref)).abs().max())


@checker("HOSVD factors of a Tucker-2 convolution")
def check_hosvd(fn):
    g = torch.Generator().manual_seed(301)  # local: the global RNG is never touched
    # C_out != C_in and a decaying spectrum in both modes, so swapped modes and wrong unfoldings show
    for c_out, c_in, k, r_out, r_in in ((12, 7, 3, 5, 3), (9, 16, 3, 4, 6), (6, 5, 1, 2, 5)):
        kernel = torch.randn(c_out, c_in, k, k, generator=g, dtype=torch.float64)
        kernel = torch.einsum("oihw,o,i->oihw", kernel, torch.logspace(0, -1.5, c_out, dtype=torch.float64),
                              torch.logspace(0, -1, c_in, dtype=torch.float64))
        given = kernel.clone()
        got = fn(given, r_out, r_in)
        if not torch.equal(given, kernel):
            raise Wrong("your function changed the kernel it was given: work on copies.")
        if not isinstance(got, (tuple, list)) or len(got) != 3:
            raise Wrong(f"return a tuple (core, U_out, U_in), got {type(got).__name__}.")
        core, u_out, u_in = got
        for t, what in ((core, "core"), (u_out, "U_out"), (u_in, "U_in")):
            if not torch.is_tensor(t):
                raise Wrong(f"{what} should be a torch.Tensor, got {type(t).__name__}.")
        if tuple(u_out.shape) == (c_in, r_in) and tuple(u_in.shape) == (c_out, r_out) and c_out != c_in:
            raise Wrong("U_out and U_in are swapped: U_out comes from the mode-0 (output-channel) unfolding, "
                        "U_in from the mode-1 (input-channel) unfolding.")
        if (tuple(u_out.shape) == (r_out, c_out) and r_out != c_out) or (tuple(u_in.shape) == (r_in, c_in) and r_in != c_in):
            raise Wrong(f"U_out should have shape (C_out, R_out) = {(c_out, r_out)} and U_in (C_in, R_in) = "
                        f"{(c_in, r_in)}: the factors hold singular vectors as COLUMNS (transpose them).")
        if tuple(u_out.shape) != (c_out, r_out) or tuple(u_in.shape) != (c_in, r_in):
            raise Wrong(f"U_out has shape {tuple(u_out.shape)} and U_in {tuple(u_in.shape)}, expected "
                        f"{(c_out, r_out)} and {(c_in, r_in)}: take the LEFT singular vectors (U of U S V^T) of "
                        "each unfolding, whose rows are the channels.")
        if tuple(core.shape) != (r_out, r_in, k, k):
            raise Wrong(f"the core has shape {tuple(core.shape)}, expected (R_out, R_in, kh, kw) = {(r_out, r_in, k, k)}.")
        u_out, u_in, core = u_out.detach().double(), u_in.detach().double(), core.detach().double()
        eye_out, eye_in = torch.eye(r_out, dtype=torch.float64), torch.eye(r_in, dtype=torch.float64)
        if not (torch.allclose(u_out.T @ u_out, eye_out, atol=1e-6) and torch.allclose(u_in.T @ u_in, eye_in, atol=1e-6)):
            raise Wrong("the columns of U_out and U_in should be orthonormal (U^T U = I): use the singular "
                        "VECTORS themselves, not U scaled by the singular values.")
        ref_core, ref_out, ref_in = reference_hosvd(kernel, r_out, r_in)
        if _subspace_gap(u_out, ref_out) > 1e-6:
            small = torch.linalg.svd(unfold(kernel, 0), full_matrices=False)[0][:, -r_out:]
            if r_out < c_out and _subspace_gap(u_out, small) < 1e-6:
                raise Wrong("you kept the SMALLEST singular vectors of the mode-0 unfolding: keep the first "
                            "R_out columns (SVD sorts the singular values in descending order).")
            raise Wrong("U_out does not span the leading left singular vectors of the mode-0 unfolding "
                        "K.reshape(C_out, -1).")
        if _subspace_gap(u_in, ref_in) > 1e-6:
            plain = torch.linalg.svd(kernel.reshape(c_in, -1), full_matrices=False)[0][:, :r_in]
            if _subspace_gap(u_in, plain) < 1e-6:
                raise Wrong("the mode-1 unfolding is not K.reshape(C_in, -1): that reshape mixes output and input "
                            "channels. Move the input-channel axis first: torch.movedim(K, 1, 0).reshape(C_in, -1).")
            small = torch.linalg.svd(unfold(kernel, 1), full_matrices=False)[0][:, -r_in:]
            if r_in < c_in and _subspace_gap(u_in, small) < 1e-6:
                raise Wrong("you kept the SMALLEST singular vectors of the mode-1 unfolding: keep the first R_in.")
            raise Wrong("U_in does not span the leading left singular vectors of the mode-1 unfolding "
                        "torch.movedim(K, 1, 0).reshape(C_in, -1).")
        rebuilt = tucker_reconstruct(core, u_out, u_in)
        want = tucker_reconstruct(ref_core, ref_out, ref_in)
        if not torch.allclose(rebuilt, want, atol=1e-6):
            if torch.allclose(core, kernel[:r_out, :r_in], atol=1e-9):
                raise Wrong("the core is not a slice of the kernel: project it, "
                            "core = einsum('oihw,or,is->rshw', K, U_out, U_in).")
            raise Wrong("core x_0 U_out x_1 U_in does not give the HOSVD approximation of the kernel: "
                        "core = K x_0 U_out^T x_1 U_in^T, i.e. einsum('oihw,or,is->rshw', K, U_out, U_in).")


# ---------------------------------------------------------------- Tucker-2: MACs
def reference_tucker2_macs(c_in: int, c_out: int, k: int, r_out: int, r_in: int, h_in: int, h_out: int) -> int:
    """MACs of a Tucker-2 conv (1x1 C_in -> R_in, k x k R_in -> R_out, 1x1 R_out -> C_out) on square maps:
    R_in C_in h_in^2 + R_out R_in k^2 h_out^2 + C_out R_out h_out^2."""
    return tucker2_macs(c_in, c_out, k, (r_out, r_in), h_in, h_out)


@checker("MACs of a Tucker-2 convolution")
def check_tucker2_macs(fn):
    cases = [(20, 50, 5, 16, 12, 12, 8), (3, 64, 3, 16, 3, 32, 30), (16, 16, 3, 4, 4, 10, 8), (8, 32, 1, 8, 4, 7, 7),
             (64, 128, 3, 32, 24, 16, 14)]
    for case in cases:
        c_in, c_out, k, r_out, r_in, h_in, h_out = case
        got = fn(*case)
        try:
            got = int(got)
        except (TypeError, ValueError, RuntimeError):
            raise Wrong(f"return the number of MACs as an int, got {type(got).__name__}.") from None
        want = reference_tucker2_macs(*case)
        if got == want:
            continue
        first, core, last = r_in * c_in * h_in ** 2, r_out * r_in * k * k * h_out ** 2, c_out * r_out * h_out ** 2
        call = f"tucker2_macs{case}"
        if got == r_in * c_in * h_out ** 2 + core + last:
            raise Wrong(f"{call} returned {got:,}, expected {want:,}: the first 1x1 conv runs on the INPUT map "
                        f"({h_in}x{h_in}), before the k x k conv shrinks it to {h_out}x{h_out}.")
        if got == core + last or got == first + core:
            raise Wrong(f"{call} returned {got:,}, expected {want:,}: count all three convolutions "
                        "(1x1 C_in -> R_in, k x k R_in -> R_out, 1x1 R_out -> C_out).")
        if got in (first + r_out * r_in * h_out ** 2 + last, first + r_out * r_in * k * h_out ** 2 + last):
            raise Wrong(f"{call} returned {got:,}, expected {want:,}: every output value of the core conv "
                        "uses k x k x R_in weights (k squared, not k once).")
        if got == c_out * c_in * k * k * h_out ** 2:
            raise Wrong(f"{call} returned {got:,}: that is the ORIGINAL conv's count (C_out C_in k^2 H_out W_out); "
                        "count the three factorized stages instead.")
        if got == first + r_out * r_in * k * k * h_in ** 2 + last:
            raise Wrong(f"{call} returned {got:,}, expected {want:,}: the k x k core conv produces the OUTPUT "
                        f"map ({h_out}x{h_out}), not the input map.")
        raise Wrong(f"{call} returned {got:,}, expected {want:,} (stages: {first:,} + {core:,} + {last:,}).")
