"""Checkers for chapter 03 (low-rank factorization): splitting a Linear by SVD, choosing a rank by energy,
the HOSVD factors of a Tucker-2 convolution, and the Tucker-2 MAC count."""
from __future__ import annotations

import math
import numbers

import torch
from torch import nn

from . import Wrong, checker, expect_close, expect_tensor
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


_SHAPE_HINT = ("nn.Linear(in, out).weight has shape (out, in), so the first layer's weight is "
               "diag(sqrt(S_k)) Vh_k, shape (rank, in), and the second's U_k diag(sqrt(S_k)), shape (out, rank)")


@checker("SVD split of a Linear")
def check_svd_split(fn):
    # building nn.Linear layers (ours and the learner's) draws from the global RNG: restore it afterwards
    with torch.random.fork_rng(devices=[]):
        _check_svd_split(fn)


def _svd_split_mistakes(layer: nn.Linear, rank: int, second_bias):
    """(effective weight, bias, what is wrong) of typical wrong splits of ``layer`` at ``rank``."""
    u, s, vh = torch.linalg.svd(layer.weight.detach().double(), full_matrices=False)
    n_out, n_in = layer.weight.shape
    b = layer.bias.detach().double() if layer.bias is not None else torch.zeros(n_out, dtype=torch.float64)
    uk, sk, vk = u[:, :rank], s[:rank], vh[:rank]
    w_k = (uk * sk) @ vk
    out = []
    if layer.bias is not None:
        out.append((w_k, torch.zeros_like(b), "the output misses the original bias: copy layer.bias into the "
                    "second Linear (the first has bias=False)."))
        if second_bias is not None:
            out.append((w_k, second_bias.detach().double(), "the second Linear keeps its random initial bias: "
                        "copy layer.bias into it (under torch.no_grad())."))
    if rank < len(s):
        out.append((((u[:, -rank:] * s[-rank:]) @ vh[-rank:]), b, "you kept the SMALLEST singular values: keep "
                    "the first `rank` (SVD sorts them in descending order)."))
    out.append((uk @ vk, b, "the singular values are missing: W_k = U_k diag(S_k) Vh_k, so put sqrt(S_k) into "
                "each factor (or all of S_k into one)."))
    out.append(((uk * sk ** 2) @ vk, b, "S_k is in both factors: split it, sqrt(S_k) into each factor "
                "(or all of S_k into one of them)."))
    out.append(((uk * sk.sqrt()) @ vk, b, "only sqrt(S_k) made it into the product: each factor takes "
                "sqrt(S_k), so that together they give S_k."))
    if n_in == n_out:
        out.append((w_k.T, b, "the factors are transposed: you built W_k^T. " + _SHAPE_HINT + "."))
    if rank <= n_in <= len(s):  # V's rows in place of its columns (torch.svd returns V, not Vh)
        out.append(((uk * sk) @ vh.T[:rank], b, "the right factor takes rows of V instead of rows of Vh: "
                    "torch.linalg.svd returns Vh = V^T, whose first `rank` ROWS are the right singular vectors "
                    "(torch.svd returns V: take V[:, :rank].T)."))
    return out


def _check_svd_split(fn):
    g = torch.Generator().manual_seed(201)  # local: the global RNG is never touched
    for n_in, n_out, rank, bias in ((30, 20, 5, True), (12, 40, 12, True), (16, 9, 1, False), (25, 25, 25, True),
                                    (24, 24, 6, True)):
        layer = _random_linear(g, n_in, n_out, bias)
        before = layer.weight.detach().clone()
        try:
            got = fn(layer, rank)
        except NotImplementedError:  # a RuntimeError too: the stub, reported as not implemented yet
            raise
        except RuntimeError as e:
            if any(w in str(e) for w in ("size", "shape", "match")):
                raise Wrong(f"for Linear({n_in}, {n_out}) at rank {rank} your function raised RuntimeError: {str(e).rstrip('.')}. "
                            f"Shapes: {_SHAPE_HINT}; torch.linalg.svd returns Vh, whose ROWS are the right singular "
                            "vectors (torch.svd returns V, with them as columns).") from None
            raise
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
        shapes = (tuple(first.weight.shape), tuple(second.weight.shape))
        if shapes != ((rank, n_in), (n_out, rank)):
            flipped = [name for name, got_s, want_s in (("first", shapes[0], (rank, n_in)),
                                                        ("second", shapes[1], (n_out, rank)))
                       if got_s != want_s and got_s == want_s[::-1]]
            which = (f"the {' and the '.join(flipped)} layer's weight {'is' if len(flipped) == 1 else 'are'} "
                     "transposed" if flipped else "the weights have the wrong shapes")
            raise Wrong(f"{which}: shapes {shapes[0]} and {shapes[1]}, expected {(rank, n_in)} and "
                        f"{(n_out, rank)}. {_SHAPE_HINT}.")
        if first.weight.dtype != layer.weight.dtype or second.weight.dtype != layer.weight.dtype:
            raise Wrong(f"the new layers are {first.weight.dtype}/{second.weight.dtype}, the original is "
                        f"{layer.weight.dtype}: convert the factors back (e.g. .to(layer.weight.dtype)), or copy "
                        "them into new nn.Linear layers with .copy_.")
        n_params = sum(p.numel() for p in got.parameters())
        want_params = rank * (n_in + n_out) + (n_out if bias else 0)
        if bias and n_params == want_params - n_out:
            raise Wrong(f"the factorized layer has {n_params} parameters, expected {want_params}: the original bias "
                        f"({n_out} values) is missing; the second Linear takes it (bias=True, then copy layer.bias).")
        if n_params != want_params:
            raise Wrong(f"the factorized layer has {n_params} parameters, expected {want_params}: the original "
                        "bias belongs to the second layer only (the first has bias=False).")
        x = torch.randn(7, n_in, generator=g)
        with torch.no_grad():
            want = reference_svd_split(layer, rank)(x)
            out = got(x)
            expect_tensor(out, "the output of your layers")
            if tuple(out.shape) == tuple(want.shape) and torch.allclose(out.double(), want.double(), atol=1e-4,
                                                                        rtol=1e-4):
                continue
            if tuple(out.shape) == tuple(want.shape):
                for w_eff, b_eff, msg in _svd_split_mistakes(layer, rank, second.bias):
                    if torch.allclose(out.double(), x.double() @ w_eff.T + b_eff, atol=1e-4, rtol=1e-4):
                        raise Wrong(f"Linear({n_in}, {n_out}) at rank {rank}: {msg}")
        expect_close(out, want, f"the output for Linear({n_in}, {n_out}) at rank {rank}", atol=1e-4, rtol=1e-4)


def _as_count(got, what: str) -> int:
    """``got`` as an int: ints, integer-valued floats and one-element tensors are accepted."""
    if torch.is_tensor(got):
        if got.numel() != 1:
            raise Wrong(f"return {what} as one number, got a tensor of shape {tuple(got.shape)}.")
        got = got.item()
    if isinstance(got, bool) or not isinstance(got, numbers.Real):
        raise Wrong(f"return {what} as an int, got {type(got).__name__}.")
    if not math.isfinite(float(got)) or float(got) != int(float(got)):
        raise Wrong(f"return {what} as a whole number (an int), got {got!r}.")
    return int(float(got))


@checker("rank for a retained energy")
def check_rank_for_energy(fn):
    g = torch.Generator().manual_seed(202)  # local: the global RNG is never touched
    cases = [(torch.tensor([4.0, 3.0]), 0.6, 1), (torch.tensor([4.0, 3.0]), 0.7, 2),
             (torch.tensor([1.0, 1.0, 1.0, 1.0]), 0.5, 2), (torch.tensor([2.0, 1.0, 1.0, 1.0, 1.0]), 0.5, 1),
             (torch.tensor([5.0, 0.0, 0.0]), 1.0, 1), (torch.tensor([2.0, 1.0, 0.5]), 1.0, 3),
             (torch.tensor([3.0]), 0.5, 1)]
    for _ in range(5):
        s = torch.sort(torch.rand(int(torch.randint(2, 40, (1,), generator=g)), generator=g) ** 3,
                       descending=True).values
        e = float(torch.rand(1, generator=g) * 0.98 + 0.01)
        cases.append((s, e, reference_rank_for_energy(s, e)))
    s = torch.sort(torch.rand(37, generator=g) + 0.1, descending=True).values  # energy 1.0: every value counts
    cases.append((s, 1.0, reference_rank_for_energy(s, 1.0)))
    answers = []
    for s, e, want in cases:
        got = fn(s.clone(), e)
        answers.append(_as_count(got, "the rank"))
    wrong = [(c, a) for c, a in zip(cases, answers) if a != c[2]]
    if not wrong:
        return
    if all(a == c[2] - 1 for c, a in wrong):
        (s, e, want), got = wrong[0]
        raise Wrong(f"for s={_short(s)} and energy={e:.3g} you returned {got}, expected {want}: off by one. A rank "
                    "counts the kept values (1-based); the index of the first value that reaches the energy "
                    "starts at 0, so add 1.")
    out_of_range = [(c, a) for c, a in wrong if not 1 <= a <= len(c[0])]
    if out_of_range:
        (s, e, want), got = out_of_range[0]
        hint = (" At energy 1.0 the cumulative energy can end a hair below 1.0 by rounding: cap the rank at "
                "len(s) (min(k, len(s))).") if got > len(s) else ""
        raise Wrong(f"for {len(s)} singular values s={_short(s)} and energy={e:.3g} you returned {got}: a rank "
                    f"counts kept values, from 1 to len(s) = {len(s)}; expected {want}.{hint}")

    def variant(square: bool, strict: bool):
        ranks = []
        for s, e, _ in cases:
            v = s.double() ** 2 if square else s.double()
            cum = torch.cumsum(v, 0) / v.sum()
            below = (cum <= e + 1e-12) if strict else (cum < e - 1e-12)
            ranks.append(min(int(below.sum()) + 1, len(s)))
        return ranks

    for strict in (False, True):
        if all(a == v for (c, a), v in zip(zip(cases, answers), variant(False, strict))):
            raise Wrong("energy is measured with SQUARED singular values: sum(s[:k]**2) / sum(s**2), not "
                        "sum(s[:k]) / sum(s).")
    if all(a == v for a, v in zip(answers, variant(True, True))):
        (s, e, want), got = wrong[0]
        raise Wrong(f"for s={_short(s)} and energy={e:.3g} you returned {got}, expected {want}: there the first "
                    f"{want} values keep exactly {e:.3g} of the energy, which is enough (energy >= threshold, "
                    "not >).")
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
        if u_in.dim() == 2 and u_in.shape[0] == c_out and c_out != c_in:
            raise Wrong(f"U_in has {c_out} = C_out rows: it was taken from the mode-0 (output-channel) unfolding. "
                        "U_in comes from the mode-1 unfolding, whose rows are the C_in input channels: "
                        "torch.movedim(K, 1, 0).reshape(C_in, -1).")
        if u_out.dim() == 2 and u_out.shape[0] == c_in and c_out != c_in:
            raise Wrong(f"U_out has {c_in} = C_in rows: it was taken from the mode-1 (input-channel) unfolding. "
                        "U_out comes from the mode-0 unfolding, whose rows are the C_out output channels: "
                        "K.reshape(C_out, -1).")
        if (tuple(u_out.shape) == (r_out, c_out) and r_out != c_out) or (tuple(u_in.shape) == (r_in, c_in) and r_in != c_in):
            raise Wrong(f"U_out should have shape (C_out, R_out) = {(c_out, r_out)} and U_in (C_in, R_in) = "
                        f"{(c_in, r_in)}: the factors hold singular vectors as COLUMNS (transpose them).")
        if tuple(u_out.shape) != (c_out, r_out) or tuple(u_in.shape) != (c_in, r_in):
            raise Wrong(f"U_out has shape {tuple(u_out.shape)} and U_in {tuple(u_in.shape)}, expected "
                        f"{(c_out, r_out)} and {(c_in, r_in)}: unfold so that the channels of the mode are the "
                        "rows (K.reshape(C_out, -1) for mode 0, torch.movedim(K, 1, 0).reshape(C_in, -1) for mode "
                        "1) and take the LEFT singular vectors (U of U S Vh), first R columns.")
        if tuple(core.shape) != (r_out, r_in, k, k):
            raise Wrong(f"the core has shape {tuple(core.shape)}, expected (R_out, R_in, kh, kw) = {(r_out, r_in, k, k)}.")
        # float32 factors (an SVD computed in float32) are accepted, with float32's precision
        tol = 1e-6 if all(t.dtype == torch.float64 for t in (core, u_out, u_in)) else 2e-4
        u_out, u_in, core = u_out.detach().double(), u_in.detach().double(), core.detach().double()
        eye_out, eye_in = torch.eye(r_out, dtype=torch.float64), torch.eye(r_in, dtype=torch.float64)
        if not (torch.allclose(u_out.T @ u_out, eye_out, atol=tol) and torch.allclose(u_in.T @ u_in, eye_in, atol=tol)):
            raise Wrong("the columns of U_out and U_in should be orthonormal (U^T U = I): use the singular "
                        "VECTORS themselves, not U scaled by the singular values.")
        ref_core, ref_out, ref_in = reference_hosvd(kernel, r_out, r_in)
        if _subspace_gap(u_out, ref_out) > tol:
            small = torch.linalg.svd(unfold(kernel, 0), full_matrices=False)[0][:, -r_out:]
            if r_out < c_out and _subspace_gap(u_out, small) < tol:
                raise Wrong("you kept the SMALLEST singular vectors of the mode-0 unfolding: keep the first "
                            "R_out columns (SVD sorts the singular values in descending order).")
            raise Wrong("U_out does not span the leading left singular vectors of the mode-0 unfolding "
                        "K.reshape(C_out, -1).")
        if _subspace_gap(u_in, ref_in) > tol:
            plain = torch.linalg.svd(kernel.reshape(c_in, -1), full_matrices=False)[0][:, :r_in]
            if _subspace_gap(u_in, plain) < tol:
                raise Wrong("the mode-1 unfolding is not K.reshape(C_in, -1): that reshape mixes output and input "
                            "channels. Move the input-channel axis first: torch.movedim(K, 1, 0).reshape(C_in, -1).")
            small = torch.linalg.svd(unfold(kernel, 1), full_matrices=False)[0][:, -r_in:]
            if r_in < c_in and _subspace_gap(u_in, small) < tol:
                raise Wrong("you kept the SMALLEST singular vectors of the mode-1 unfolding: keep the first R_in.")
            raise Wrong("U_in does not span the leading left singular vectors of the mode-1 unfolding "
                        "torch.movedim(K, 1, 0).reshape(C_in, -1).")
        rebuilt = tucker_reconstruct(core, u_out, u_in)
        want = tucker_reconstruct(ref_core, ref_out, ref_in)
        if not torch.allclose(rebuilt, want, atol=tol):
            if torch.allclose(core, kernel[:r_out, :r_in], atol=tol):
                raise Wrong("the core is not a slice of the kernel: project it, "
                            "core = einsum('oihw,or,is->rshw', K, U_out, U_in).")
            raise Wrong("core x_0 U_out x_1 U_in does not give the HOSVD approximation of the kernel: "
                        "core = K x_0 U_out^T x_1 U_in^T, i.e. einsum('oihw,or,is->rshw', K, U_out, U_in).")


# ---------------------------------------------------------------- Tucker-2: MACs
def reference_tucker2_macs(c_in: int, c_out: int, k: int, r_out: int, r_in: int, h_in: int, h_out: int) -> int:
    """MACs of a Tucker-2 conv (1x1 C_in -> R_in, k x k R_in -> R_out, 1x1 R_out -> C_out) on square maps:
    R_in C_in h_in^2 + R_out R_in k^2 h_out^2 + C_out R_out h_out^2."""
    return tucker2_macs(c_in, c_out, k, (r_out, r_in), h_in, h_out)


def _tucker2_macs_mistakes(c_in, c_out, k, r_out, r_in, h_in, h_out):
    """(MAC count, what is wrong) of typical wrong counts, the more specific first."""
    first, core, last = r_in * c_in * h_in ** 2, r_out * r_in * k * k * h_out ** 2, c_out * r_out * h_out ** 2
    maps = f"({h_in}x{h_in} in, {h_out}x{h_out} out)"
    out = [
        (c_out * c_in * k * k * h_out ** 2, "that is the ORIGINAL conv's count (C_out C_in k^2 H_out W_out); count "
         "the three factorized stages instead."),
        (r_in * c_in + r_out * r_in * k * k + c_out * r_out, "that is the number of WEIGHTS of the three stages: "
         "multiply each stage by the number of output positions of its map (H x W)."),
        (r_in * c_in * h_in + r_out * r_in * k * k * h_out + c_out * r_out * h_out, "the maps are square: each "
         "stage runs at H x W = h^2 positions, not h."),
        (r_out * c_in * h_in ** 2 + core + c_out * r_in * h_out ** 2, "R_in and R_out are swapped: the first 1x1 "
         "conv maps C_in -> R_in, the last R_out -> C_out."),
        (first + r_out * r_in * h_out ** 2 + last, "every output value of the core conv uses k x k x R_in weights "
         "(k squared, not once)."),
        (first + r_out * r_in * k * h_out ** 2 + last, "every output value of the core conv uses k x k x R_in "
         "weights (k squared, not k once)."),
        (r_in * c_in * h_out ** 2 + core + last, f"the first 1x1 conv runs on the INPUT map {maps}, before the "
         "k x k conv shrinks it."),
        (first + r_out * r_in * k * k * h_in ** 2 + last, f"the k x k core conv produces the OUTPUT map {maps}, "
         "not the input map."),
        (first + core + c_out * r_out * h_in ** 2, f"the last 1x1 conv runs on the OUTPUT map {maps}, after the "
         "k x k conv."),
        (r_in * c_in * h_in ** 2 + r_out * r_in * k * k * h_in ** 2 + c_out * r_out * h_in ** 2,
         f"you counted every stage at the INPUT size {maps}: only the first 1x1 conv runs on the input map; the "
         "core conv and the last 1x1 conv produce the output map."),
        (core + last, "the first 1x1 conv (C_in -> R_in, on the input map) is missing: count all three stages."),
        (first + last, "the k x k core conv (R_in -> R_out) is missing: count all three stages."),
        (first + core, "the last 1x1 conv (R_out -> C_out) is missing: count all three stages."),
    ]
    return first, core, last, out


@checker("MACs of a Tucker-2 convolution")
def check_tucker2_macs(fn):
    cases = [(20, 50, 5, 16, 12, 12, 8), (3, 64, 3, 16, 3, 32, 30), (16, 16, 3, 4, 4, 10, 8), (8, 32, 1, 8, 4, 7, 7),
             (64, 128, 3, 32, 24, 16, 14), (1, 1, 3, 1, 1, 5, 3)]
    for case in cases:
        got = _as_count(fn(*case), "the number of MACs")
        want = reference_tucker2_macs(*case)
        if got == want:
            continue
        call = f"tucker2_macs{case}"
        first, core, last, mistakes = _tucker2_macs_mistakes(*case)
        for value, msg in mistakes:
            if got == value:
                raise Wrong(f"{call} returned {got:,}, expected {want:,}: {msg}")
        raise Wrong(f"{call} returned {got:,}, expected {want:,} (stages: {first:,} + {core:,} + {last:,}).")
