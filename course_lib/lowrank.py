"""Low-rank factorization: truncated SVD for Linear layers, Tucker-2 (and CP) for convolutions.

A weight matrix W (m x n) of rank r can be written W = A B with A (m x r) and B (r x n): a Linear
m <- n becomes two Linears n -> r -> m with r (m + n) instead of m n weights. The best rank-k
approximation in the Frobenius norm is the truncated SVD (Eckart-Young); its error is
sqrt(sum of the discarded squared singular values).

A convolution kernel K (C_out, C_in, kh, kw) is a 4-way tensor. Tucker-2 compresses its two channel
modes: K ~= core x_0 U_out x_1 U_in with U_out (C_out x R_out), U_in (C_in x R_in) and a core
(R_out, R_in, kh, kw); as layers: 1x1 conv C_in -> R_in, kh x kw conv R_in -> R_out (the original
stride, padding, dilation), 1x1 conv R_out -> C_out (the original bias). HOSVD takes U_out, U_in
as the leading left singular vectors of the mode unfoldings; HOOI iterations refine them.
CP writes K as a sum of R rank-one terms: 1x1 conv, two depthwise 1-D convs, 1x1 conv.

Everything here is pure: factorizing returns new modules and leaves the original untouched.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from . import _validate as V
from .models import replace_module

__all__ = [
    "LowRankLinear", "Tucker2Conv", "CPConv",
    "spectrum", "energy_curve", "choose_rank", "rank_for_budget", "truncated_svd", "svd_error",
    "svd_linear", "unfold", "tucker2", "tucker_reconstruct", "tucker_conv", "tucker_ranks_for_energy",
    "cp_als", "cp_conv", "factorize", "factorized_ranks", "linear_params",
    "tucker2_macs", "cp_macs", "dense_weight", "relative_weight_error", "layer_inputs", "input_hessian",
    "relative_output_error", "activation_aware_svd_linear",
]
# Timing moved to measure: compare_latency (no re-export here), module_times -> measure.time_children,
# compare_module_times -> measure.compare_time_children.


def _energy(energy) -> float:
    return V.number_in("energy", energy, 0, 1, lo_open=True)


# ---------------------------------------------------------------- spectra and rank choice
def spectrum(layer: nn.Module, mode: int = 0) -> torch.Tensor:
    """Singular values (descending, float64, shape (min(m, n),)) of a layer's weight.

    Linear: of the weight (out_features, in_features); ``mode`` is ignored.
    Conv2d: of the mode-``mode`` unfolding of the kernel (C_out, C_in/groups, kh, kw):
    mode 0 -> C_out x (C_in kh kw) (the output channels), mode 1 -> C_in x (C_out kh kw).
    """
    if isinstance(layer, nn.Linear):
        w = layer.weight.detach()
    elif isinstance(layer, nn.Conv2d):
        if mode not in (0, 1):
            raise ValueError(f"mode={mode!r} must be 0 (output channels) or 1 (input channels)")
        w = unfold(layer.weight.detach(), mode)
    else:
        raise ValueError(f"layer must be nn.Linear or nn.Conv2d, not {type(layer).__name__}")
    return torch.linalg.svdvals(w.double().cpu())


def energy_curve(singular_values: torch.Tensor) -> torch.Tensor:
    """Retained energy E(k) = sum_{i<k} s_i^2 / sum_i s_i^2 for k = 1..len(s): float64 in [0, 1]."""
    s = torch.as_tensor(singular_values).double().flatten()
    if s.numel() == 0 or (s < 0).any() or not torch.isfinite(s).all():
        raise ValueError("singular_values must be a non-empty 1-D tensor of finite values >= 0")
    total = (s ** 2).sum()
    if total == 0:
        return torch.ones_like(s)
    return torch.cumsum(s ** 2, 0) / total


def choose_rank(singular_values, energy: float) -> int:
    """Smallest rank k (1 <= k <= len(s)) whose leading singular values keep >= ``energy`` of
    sum(s^2). singular_values: 1-D, sorted descending (as returned by SVD). energy in (0, 1]."""
    energy = _energy(energy)
    s = torch.as_tensor(singular_values).double().flatten()
    if s.numel() > 1 and (s[1:] > s[:-1] * (1 + 1e-12) + 1e-300).any():
        raise ValueError("singular_values must be sorted in descending order")
    e = energy_curve(s)
    # a tiny slack so that energy=1.0 is not missed by rounding in the cumulative sum
    k = int((e < energy - 1e-12).sum()) + 1
    return min(k, s.numel())


def linear_params(in_features: int, out_features: int, rank: int | None = None, bias: bool = True) -> int:
    """Parameters of a Linear in -> out (rank=None) or of its rank-``rank`` factorization."""
    b = out_features if bias else 0
    if rank is None:
        return in_features * out_features + b
    return rank * (in_features + out_features) + b


def rank_for_budget(in_features: int, out_features: int, max_params: int, bias: bool = True) -> int:
    """Largest rank k with k (in + out) (+ out bias) <= max_params, capped at min(in, out).

    Raises ValueError if even rank 1 does not fit the budget.
    """
    V.positive_int("in_features", in_features)
    V.positive_int("out_features", out_features)
    V.positive_int("max_params", max_params)
    k = (max_params - (out_features if bias else 0)) // (in_features + out_features)
    if k < 1:
        need = linear_params(in_features, out_features, 1, bias)
        raise ValueError(f"max_params={max_params} is below the {need} parameters of a rank-1 factorization")
    return min(k, in_features, out_features)


# ---------------------------------------------------------------- SVD of a Linear
def truncated_svd(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Factors A (m, rank), B (rank, n) with A @ B the best rank-``rank`` approximation of
    ``weight`` (m, n) in the Frobenius norm. sqrt(S) is split evenly between A and B so both
    factors have the same scale (better for fine-tuning). Computed in float64, returned in
    the weight's dtype. rank in [1, min(m, n)]."""
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D (m, n), got shape {tuple(weight.shape)}")
    m, n = weight.shape
    V.int_in("rank", rank, 1, min(m, n))
    u, s, vh = torch.linalg.svd(weight.detach().double(), full_matrices=False)
    root = s[:rank].sqrt()
    a = u[:, :rank] * root
    b = root[:, None] * vh[:rank]
    return a.to(weight.dtype), b.to(weight.dtype)


def svd_error(singular_values, rank: int) -> float:
    """Eckart-Young: the Frobenius error of the best rank-``rank`` approximation,
    sqrt(sum_{i >= rank} s_i^2). rank in [0, len(s)]."""
    s = torch.as_tensor(singular_values).double().flatten()
    V.int_in("rank", rank, 0, s.numel())
    return float((s[rank:] ** 2).sum().sqrt())


class LowRankLinear(nn.Sequential):
    """A Linear in -> out factorized as Linear(in, rank, bias=False) -> Linear(rank, out, bias)."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True,
                 device=None, dtype=None):
        V.int_in("rank", rank, 1, min(in_features, out_features))
        super().__init__(nn.Linear(in_features, rank, bias=False, device=device, dtype=dtype),
                         nn.Linear(rank, out_features, bias=bias, device=device, dtype=dtype))
        self.rank = rank

    @property
    def ranks(self) -> int:
        return self.rank


def svd_linear(layer: nn.Linear, rank: int) -> LowRankLinear:
    """A new two-layer Sequential (``LowRankLinear``) equal to the rank-``rank`` truncated SVD of
    ``layer``: x -> B x -> A (B x) + bias, with W ~= A B. rank in [1, min(out, in)].
    At full rank it reproduces the layer up to float rounding. Same dtype and device as ``layer``;
    ``layer`` is not modified."""
    if not isinstance(layer, nn.Linear):
        raise ValueError(f"layer must be nn.Linear, not {type(layer).__name__}")
    w = layer.weight
    out_f, in_f = w.shape
    V.int_in("rank", rank, 1, min(in_f, out_f))
    a, b = truncated_svd(w, rank)
    new = LowRankLinear(in_f, out_f, rank, bias=layer.bias is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new[0].weight.copy_(b)
        new[1].weight.copy_(a)
        if layer.bias is not None:
            new[1].bias.copy_(layer.bias)
    return new.train(layer.training)


# ---------------------------------------------------------------- Tucker-2 of a Conv2d
def unfold(tensor: torch.Tensor, mode: int) -> torch.Tensor:
    """Mode-``mode`` unfolding: (shape[mode], product of the other dims), other dims in order."""
    if not 0 <= mode < tensor.dim():
        raise ValueError(f"mode={mode!r} must be in [0, {tensor.dim() - 1}]")
    return torch.movedim(tensor, mode, 0).reshape(tensor.shape[mode], -1)


def _leading_left(mat: torch.Tensor, r: int) -> torch.Tensor:
    u, _, _ = torch.linalg.svd(mat, full_matrices=False)
    return u[:, :r]


def _check_ranks(ranks, c_out: int, c_in: int) -> tuple:
    if not isinstance(ranks, (tuple, list)) or len(ranks) != 2:
        raise ValueError(f"ranks={ranks!r} must be a pair (rank_out, rank_in); "
                         f"rank_out in [1, {c_out}], rank_in in [1, {c_in}], or None to keep a mode whole")
    r_out, r_in = ranks
    if r_out is not None:
        V.int_in("ranks[0] (rank_out)", r_out, 1, c_out)
    if r_in is not None:
        V.int_in("ranks[1] (rank_in)", r_in, 1, c_in)
    return r_out, r_in


def tucker2(kernel: torch.Tensor, ranks: tuple, n_iter: int = 0):
    """Tucker-2 of a kernel (C_out, C_in, kh, kw) over its two channel modes.

    ranks: (rank_out, rank_in), rank_out in [1, C_out], rank_in in [1, C_in]; None keeps that
    mode whole (its factor is the identity). n_iter: HOOI refinement sweeps after the HOSVD
    initialisation (0 = plain HOSVD). Computed in float64.
    Returns (core (R_out, R_in, kh, kw), U_out (C_out, R_out), U_in (C_in, R_in)) with
    kernel ~= tucker_reconstruct(core, U_out, U_in); U_out, U_in have orthonormal columns.
    """
    if kernel.dim() != 4:
        raise ValueError(f"kernel must be 4-D (C_out, C_in, kh, kw), got shape {tuple(kernel.shape)}")
    V.int_in("n_iter", n_iter, 0, None)
    k = kernel.detach().double().cpu()
    c_out, c_in = k.shape[:2]
    r_out, r_in = _check_ranks(ranks, c_out, c_in)
    eye_out, eye_in = torch.eye(c_out, dtype=k.dtype), torch.eye(c_in, dtype=k.dtype)
    u_out = eye_out if r_out is None else _leading_left(unfold(k, 0), r_out)
    u_in = eye_in if r_in is None else _leading_left(unfold(k, 1), r_in)
    for _ in range(n_iter):  # HOOI: best U for one mode with the other fixed, alternately
        if r_out is not None:
            u_out = _leading_left(unfold(torch.einsum("oihw,ir->orhw", k, u_in), 0), r_out)
        if r_in is not None:
            u_in = _leading_left(unfold(torch.einsum("oihw,or->rihw", k, u_out), 1), r_in)
    core = torch.einsum("oihw,or,is->rshw", k, u_out, u_in)
    return core, u_out, u_in


def tucker_reconstruct(core: torch.Tensor, u_out: torch.Tensor, u_in: torch.Tensor) -> torch.Tensor:
    """The kernel (C_out, C_in, kh, kw) = core x_0 U_out x_1 U_in."""
    return torch.einsum("rshw,or,is->oihw", core, u_out, u_in)


def _check_conv(layer) -> None:
    if not isinstance(layer, nn.Conv2d):
        raise ValueError(f"layer must be nn.Conv2d, not {type(layer).__name__}")
    if layer.groups != 1:
        raise ValueError(f"layer.groups={layer.groups} is not supported: only groups=1 convolutions "
                         "can be factorized here (a grouped conv is already a block-diagonal factorization)")


def _core_conv(layer: nn.Conv2d, cin: int, cout: int, bias: bool, groups: int = 1,
               kernel_size=None) -> nn.Conv2d:
    w = layer.weight
    return nn.Conv2d(cin, cout, kernel_size or layer.kernel_size, stride=layer.stride,
                     padding=layer.padding, dilation=layer.dilation, groups=groups, bias=bias,
                     padding_mode=layer.padding_mode, device=w.device, dtype=w.dtype)


class Tucker2Conv(nn.Sequential):
    """Conv2d factorized as [1x1 C_in -> R_in] -> [kh x kw R_in -> R_out, original stride/padding/
    dilation] -> [1x1 R_out -> C_out, original bias]; a 1x1 stage is absent when its mode is kept
    whole. ``ranks`` = (rank_out or None, rank_in or None)."""

    ranks: tuple


def tucker_conv(layer: nn.Conv2d, ranks: tuple, n_iter: int = 0) -> Tucker2Conv:
    """A new ``Tucker2Conv`` (a Sequential of up to three Conv2d) from the Tucker-2 decomposition
    of ``layer``'s kernel, HOSVD-initialised (plus ``n_iter`` HOOI sweeps).

    ranks: (rank_out, rank_in) with rank_out in [1, C_out], rank_in in [1, C_in]; None keeps that
    mode whole and drops its 1x1 conv (e.g. (8, None) for a conv with one input channel).
    Stride, padding (any padding_mode), dilation and bias are preserved; groups != 1 is rejected
    with a ValueError. At full ranks it reproduces the layer up to float rounding. Same dtype and
    device as ``layer``; ``layer`` is not modified.
    """
    _check_conv(layer)
    w = layer.weight
    c_out, c_in = w.shape[:2]
    r_out, r_in = _check_ranks(ranks, c_out, c_in)
    if r_out is None and r_in is None:
        raise ValueError("ranks=(None, None) leaves nothing to factorize: give rank_out and/or rank_in")
    core, u_out, u_in = tucker2(w, (r_out, r_in), n_iter)
    ro, ri = core.shape[:2]
    stages = []
    if r_in is not None:
        first = nn.Conv2d(c_in, ri, 1, bias=False, device=w.device, dtype=w.dtype)
        with torch.no_grad():
            first.weight.copy_(u_in.t()[:, :, None, None])
        stages.append(first)
    has_last = r_out is not None
    mid = _core_conv(layer, ri, ro, bias=(layer.bias is not None and not has_last))
    with torch.no_grad():
        mid.weight.copy_(core)
        if mid.bias is not None:
            mid.bias.copy_(layer.bias)
    stages.append(mid)
    if has_last:
        last = nn.Conv2d(ro, c_out, 1, bias=layer.bias is not None, device=w.device, dtype=w.dtype)
        with torch.no_grad():
            last.weight.copy_(u_out[:, :, None, None])
            if layer.bias is not None:
                last.bias.copy_(layer.bias)
        stages.append(last)
    new = Tucker2Conv(*stages)
    new.ranks = (r_out, r_in)
    return new.train(layer.training)


def tucker_ranks_for_energy(layer: nn.Conv2d, energy: float) -> tuple:
    """(rank_out, rank_in) keeping ``energy`` of each mode unfolding's squared singular values;
    a mode of a single channel is kept whole (None)."""
    _check_conv(layer)
    c_out, c_in = layer.weight.shape[:2]
    r_out = choose_rank(spectrum(layer, 0), energy) if c_out > 1 else None
    r_in = choose_rank(spectrum(layer, 1), energy) if c_in > 1 else None
    return r_out, r_in


# ---------------------------------------------------------------- CP of a Conv2d
def cp_als(tensor: torch.Tensor, rank: int, n_iter: int = 50, seed: int = 0) -> list[torch.Tensor]:
    """CP decomposition by alternating least squares: factors F_d (shape[d], rank), d = 0..3, with
    tensor ~= sum_r F_0[:, r] o F_1[:, r] o F_2[:, r] o F_3[:, r]. 4-D tensors only; float64;
    initialised from the HOSVD (leading singular vectors, random columns where a mode is
    shorter than ``rank``). rank >= 1, n_iter >= 1."""
    if tensor.dim() != 4:
        raise ValueError(f"tensor must be 4-D, got shape {tuple(tensor.shape)}")
    V.positive_int("rank", rank)
    V.positive_int("n_iter", n_iter)
    t = tensor.detach().double().cpu()
    g = torch.Generator().manual_seed(seed)
    factors = []
    for d in range(4):
        u = _leading_left(unfold(t, d), min(rank, t.shape[d]))
        if u.shape[1] < rank:
            u = torch.cat([u, torch.randn(t.shape[d], rank - u.shape[1], generator=g, dtype=t.dtype)], 1)
        factors.append(u)
    letters = "abcd"
    for _ in range(n_iter):
        for d in range(4):
            others = [i for i in range(4) if i != d]
            # MTTKRP: tensor contracted with the other three factors
            rhs = torch.einsum(f"abcd,{letters[others[0]]}r,{letters[others[1]]}r,{letters[others[2]]}r->"
                               f"{letters[d]}r", t, *(factors[i] for i in others))
            gram = torch.ones(rank, rank, dtype=t.dtype)
            for i in others:
                gram = gram * (factors[i].t() @ factors[i])
            factors[d] = torch.linalg.solve(gram + 1e-12 * torch.eye(rank, dtype=t.dtype), rhs.t()).t()
    return factors


class CPConv(nn.Sequential):
    """Conv2d factorized by CP of rank R: 1x1 C_in -> R, depthwise kh x 1, depthwise 1 x kw
    (original stride/padding/dilation split per axis), 1x1 R -> C_out (original bias)."""

    rank: int


def cp_conv(layer: nn.Conv2d, rank: int, n_iter: int = 50, seed: int = 0) -> CPConv:
    """A new ``CPConv`` from a rank-``rank`` CP decomposition (``cp_als``) of ``layer``'s kernel.

    Only zero padding given as integers is supported (``padding_mode="zeros"``); groups must be 1.
    rank >= 1 (at most C_out * C_in * kh * kw is meaningful). ``layer`` is not modified.
    """
    _check_conv(layer)
    if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
        raise ValueError(f"cp_conv supports integer zero padding only, got padding={layer.padding!r}, "
                         f"padding_mode={layer.padding_mode!r}")
    w = layer.weight
    c_out, c_in, kh, kw = w.shape
    V.int_in("rank", rank, 1, c_out * c_in * kh * kw)
    f_out, f_in, f_h, f_w = cp_als(w, rank, n_iter, seed)
    opts = dict(device=w.device, dtype=w.dtype)
    (sh, sw), (ph, pw), (dh, dw) = layer.stride, layer.padding, layer.dilation
    first = nn.Conv2d(c_in, rank, 1, bias=False, **opts)
    vert = nn.Conv2d(rank, rank, (kh, 1), stride=(sh, 1), padding=(ph, 0), dilation=(dh, 1), groups=rank,
                     bias=False, **opts)
    horiz = nn.Conv2d(rank, rank, (1, kw), stride=(1, sw), padding=(0, pw), dilation=(1, dw), groups=rank,
                      bias=False, **opts)
    last = nn.Conv2d(rank, c_out, 1, bias=layer.bias is not None, **opts)
    with torch.no_grad():
        first.weight.copy_(f_in.t()[:, :, None, None])
        vert.weight.copy_(f_h.t()[:, None, :, None])
        horiz.weight.copy_(f_w.t()[:, None, None, :])
        last.weight.copy_(f_out[:, :, None, None])
        if layer.bias is not None:
            last.bias.copy_(layer.bias)
    new = CPConv(first, vert, horiz, last)
    new.rank = rank
    return new.train(layer.training)


# ---------------------------------------------------------------- whole models
def factorize(model: nn.Module, ranks: dict | None = None, energy: float | None = None,
              layers=None, method: str = "tucker", skip_if_larger: bool = True) -> nn.Module:
    """A factorized deep copy of ``model`` (the original is untouched).

    ranks: {layer name: rank} -- an int for an nn.Linear (truncated SVD), a pair
    (rank_out, rank_in) for an nn.Conv2d (Tucker-2; entries may be None), or an int for an
    nn.Conv2d with method="cp". Or energy in (0, 1]: each layer of ``layers`` (default: every
    Linear and every Conv2d with a kernel larger than 1x1) gets the smallest rank(s) keeping that
    energy; with ``skip_if_larger`` a layer whose factorization would not have fewer parameters
    is left as it is. Give exactly one of ranks / energy.
    """
    if (ranks is None) == (energy is None):
        raise ValueError("give exactly one of ranks= (dict of layer name -> rank) or energy= (in (0, 1])")
    V.one_of("method", method, ("tucker", "cp"))
    modules = dict(model.named_modules())
    if ranks is None:
        energy = _energy(energy)
        names = list(layers) if layers is not None else [
            n for n, m in modules.items()
            if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.weight.shape[2:].numel() > 1)]
        ranks = {}
        for n in names:
            m = modules.get(n)
            if isinstance(m, nn.Linear):
                ranks[n] = choose_rank(spectrum(m), energy)
            elif isinstance(m, nn.Conv2d):
                ranks[n] = tucker_ranks_for_energy(m, energy)
                if method == "cp":
                    raise ValueError("energy= chooses Tucker ranks; give CP ranks explicitly with ranks=")
            else:
                raise ValueError(f"layer {n!r} is not an nn.Linear or nn.Conv2d of the model")
    else:
        if not isinstance(ranks, dict) or not ranks:
            raise ValueError(f"ranks={ranks!r} must be a non-empty dict of layer name -> rank")
        skip_if_larger = False
    new = copy.deepcopy(model)
    for name, r in ranks.items():
        old = new.get_submodule(name) if name in modules else None
        if isinstance(old, nn.Linear):
            rep = svd_linear(old, r)
        elif isinstance(old, nn.Conv2d):
            rep = cp_conv(old, r) if method == "cp" else tucker_conv(old, r)
        else:
            raise ValueError(f"layer name {name!r} is not an nn.Linear or nn.Conv2d of the model "
                             f"(layers: {[n for n, m in modules.items() if isinstance(m, (nn.Linear, nn.Conv2d))]})")
        if skip_if_larger and sum(p.numel() for p in rep.parameters()) >= sum(p.numel() for p in old.parameters()):
            continue
        replace_module(new, name, rep)
    return new


def factorized_ranks(model: nn.Module) -> dict:
    """{layer name: rank} of every factorized layer of ``model`` (int for SVD and CP, a
    (rank_out, rank_in) pair for Tucker-2), in module order."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, LowRankLinear):
            out[name] = m.rank
        elif isinstance(m, Tucker2Conv):
            out[name] = tuple(m.ranks)
        elif isinstance(m, CPConv):
            out[name] = m.rank
    return out


# (timing where a forward pass spends its time: measure.time_children / compare_time_children)


# ---------------------------------------------------------------- cost formulas
def _pair(name: str, value) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name}={value!r} must be an int or a pair (height, width) of ints >= 1")
        return V.positive_int(f"{name}[0]", value[0]), V.positive_int(f"{name}[1]", value[1])
    v = V.positive_int(name, value)
    return v, v


def tucker2_macs(c_in: int, c_out: int, kernel_size, ranks: tuple, in_size, out_size) -> int:
    """Multiply-accumulates of a Tucker-2 convolution (``Tucker2Conv``) for one input image.

    c_in, c_out >= 1: channels of the original conv; kernel_size: k or (kh, kw); ranks:
    (rank_out, rank_in) with None for a mode kept whole (that 1x1 stage is absent); in_size,
    out_size: the feature-map side H or (H, W) at the conv's input and output. The three stages:

        R_in C_in H_in W_in  +  R_out R_in kh kw H_out W_out  +  C_out R_out H_out W_out

    The first 1x1 conv runs on the *input* map, so per output pixel it costs R_in C_in
    H_in W_in / (H_out W_out), more than R_in C_in when the conv shrinks the map. Biases are not
    counted (as ``measure.macs``)."""
    c_in, c_out = V.positive_int("c_in", c_in), V.positive_int("c_out", c_out)
    kh, kw = _pair("kernel_size", kernel_size)
    (hi, wi), (ho, wo) = _pair("in_size", in_size), _pair("out_size", out_size)
    r_out, r_in = _check_ranks(ranks, c_out, c_in)
    first = 0 if r_in is None else r_in * c_in * hi * wi
    ri = c_in if r_in is None else r_in
    ro = c_out if r_out is None else r_out
    last = 0 if r_out is None else c_out * r_out * ho * wo
    return first + ro * ri * kh * kw * ho * wo + last


def cp_macs(c_in: int, c_out: int, kernel_size, rank: int, in_size, out_size) -> int:
    """Multiply-accumulates of a rank-``rank`` CP convolution (``CPConv``) for one input image:
    1x1 C_in -> R on the input map, depthwise kh x 1 (output H_out x W_in), depthwise 1 x kw
    (output H_out x W_out), 1x1 R -> C_out:

        R (C_in H_in W_in + kh H_out W_in + kw H_out W_out + C_out H_out W_out)

    Linear in the rank, so a CP rank matching a MAC budget is budget / cp_macs(..., rank=1, ...).
    Arguments as :func:`tucker2_macs`; rank >= 1. Biases are not counted."""
    c_in, c_out = V.positive_int("c_in", c_in), V.positive_int("c_out", c_out)
    kh, kw = _pair("kernel_size", kernel_size)
    (hi, wi), (ho, wo) = _pair("in_size", in_size), _pair("out_size", out_size)
    rank = V.positive_int("rank", rank)
    return rank * (c_in * hi * wi + kh * ho * wi + kw * ho * wo + c_out * ho * wo)


# ---------------------------------------------------------------- weight error vs output error
def dense_weight(module: nn.Module) -> torch.Tensor:
    """The weight a layer applies, as one dense float64 CPU tensor: (out, in) for an nn.Linear or a
    ``LowRankLinear`` (A @ B), (C_out, C_in, kh, kw) for an nn.Conv2d, a ``Tucker2Conv``
    (core x_0 U_out x_1 U_in) or a ``CPConv`` (sum of rank-one terms). Works on fine-tuned factors
    too (it multiplies whatever the factors hold). Biases are not included."""
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        return module.weight.detach().double().cpu()
    if isinstance(module, LowRankLinear):
        return (module[1].weight.detach().double() @ module[0].weight.detach().double()).cpu()
    if isinstance(module, Tucker2Conv):
        r_out, r_in = module.ranks
        stages = list(module)
        first = stages.pop(0).weight.detach().double()[:, :, 0, 0] if r_in is not None else None  # (R_in, C_in)
        core = stages.pop(0).weight.detach().double()                                               # (R_out, R_in, kh, kw)
        last = stages.pop(0).weight.detach().double()[:, :, 0, 0] if r_out is not None else None   # (C_out, R_out)
        if first is not None:
            core = torch.einsum("rshw,si->rihw", core, first)
        if last is not None:
            core = torch.einsum("rihw,or->oihw", core, last)
        return core.cpu()
    if isinstance(module, CPConv):
        first, vert, horiz, last = (m.weight.detach().double() for m in module)
        return torch.einsum("ri,rh,rw,or->oihw", first[:, :, 0, 0], vert[:, 0, :, 0], horiz[:, 0, 0, :],
                            last[:, :, 0, 0]).cpu()
    raise ValueError(f"module must be nn.Linear, nn.Conv2d, LowRankLinear, Tucker2Conv or CPConv, "
                     f"not {type(module).__name__}")


def relative_weight_error(layer: nn.Module, approx: nn.Module) -> float:
    """||W - W_approx||_F / ||W||_F (>= 0) between the dense weights (:func:`dense_weight`) of two
    layers of the same shape, e.g. a Conv2d and its ``Tucker2Conv``."""
    w, w_hat = dense_weight(layer), dense_weight(approx)
    if w.shape != w_hat.shape:
        raise ValueError(f"layer and approx apply weights of different shapes: {tuple(w.shape)} vs "
                         f"{tuple(w_hat.shape)}")
    return float((w - w_hat).norm() / w.norm())


@torch.no_grad()
def layer_inputs(model: nn.Module, name: str, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """What the submodule ``name`` of ``model`` receives when ``model`` runs on the images ``x``
    (N, C, H, W): a tensor (N, ...) on the CPU (e.g. (N, 800) for a LeNet-5's fc1, (N, 20, 12, 12)
    for its conv2), collected by a forward hook in eval mode (the model's mode is restored).
    batch_size >= 1."""
    V.positive_int("batch_size", batch_size)
    try:
        mod = model.get_submodule(name)
    except AttributeError:
        raise ValueError(f"name={name!r} is not a submodule of {type(model).__name__}") from None
    got = []
    h = mod.register_forward_pre_hook(lambda m, inp: got.append(inp[0].detach().cpu()))
    was = model.training
    model.eval()
    try:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        for i in range(0, len(x), batch_size):
            model(x[i:i + batch_size].to(device))
    finally:
        h.remove()
        model.train(was)
    if not got:
        raise ValueError(f"submodule {name!r} was never called in the forward pass")
    return torch.cat(got)


def input_hessian(inputs: torch.Tensor) -> torch.Tensor:
    """H = X^T X / n (in, in), float64, of the n rows of ``inputs`` (n, in), n >= 1: the second
    moment of a Linear layer's inputs. The output error of a weight change dW on these inputs is
    ||X dW^T||_F^2 / n = tr(dW H dW^T)."""
    if not torch.is_tensor(inputs) or inputs.dim() != 2 or inputs.shape[0] < 1:
        raise ValueError(f"inputs must be a 2-D tensor (n, in) with n >= 1, got "
                         f"{tuple(inputs.shape) if torch.is_tensor(inputs) else type(inputs).__name__}")
    x = inputs.detach().double().cpu()
    return x.T @ x / x.shape[0]


@torch.no_grad()
def relative_output_error(layer: nn.Module, approx: nn.Module, inputs: torch.Tensor, batch_size: int = 500) -> float:
    """Relative output error of ``approx`` against ``layer`` on ``inputs`` (what the layer receives,
    e.g. from :func:`layer_inputs`): ||approx(x) - layer(x)||_F / ||layer(x) - bias||_F over all
    of them, computed in float64 on the CPU.

    The bias is left out of the denominator so the number is comparable with
    :func:`relative_weight_error`: for inputs whose second moment is a multiple of the identity
    (white noise) the two agree in expectation; inputs concentrated in a few directions make the
    output error smaller when the discarded directions are the ones the inputs do not excite.
    Neither layer is changed. batch_size >= 1."""
    V.positive_int("batch_size", batch_size)
    a, b = copy.deepcopy(layer).double().cpu().eval(), copy.deepcopy(approx).double().cpu().eval()
    bias = getattr(layer, "bias", None)
    num = den = 0.0
    for i in range(0, len(inputs), batch_size):
        x = inputs[i:i + batch_size].double().cpu()
        y = a(x)
        num += float(((b(x) - y) ** 2).sum())
        if bias is not None:
            shape = (1, -1) + (1,) * (y.dim() - 2)
            y = y - bias.detach().double().cpu().view(shape)
        den += float((y ** 2).sum())
    if den == 0:
        raise ValueError("the layer's outputs (bias removed) are all zero on these inputs: no relative error")
    return (num / den) ** 0.5


# ---------------------------------------------------------------- activation-aware SVD of a Linear
HESSIAN_DAMPING = 1e-4  # fraction of the mean diagonal added to H before its Cholesky factorization


def activation_aware_svd_linear(layer: nn.Linear, rank: int, hessian: torch.Tensor,
                                damping: float = HESSIAN_DAMPING) -> LowRankLinear:
    """Activation-aware (whitened) truncated SVD of a Linear: the rank-``rank`` factorization A B
    that minimises the *output* error ||X (W - A B)^T||_F on calibration inputs X instead of the
    weight error ||W - A B||_F (Eckart-Young's objective).

    hessian: H = X^T X / n, shape (in, in), symmetric positive semi-definite (e.g. from
    :func:`input_hessian` of :func:`layer_inputs`, or ``quantization.collect_hessians``). It is
    damped, H + damping * mean(diag H) * I with damping >= 0 (a dead input feature makes H
    singular), and factorised H = L L^T (Cholesky); then ||X dW^T||_F^2 / n = ||dW L||_F^2, so the
    best A B is the truncated SVD of W L mapped back: SVD(W L) = U S V^T gives
    A = U_r S_r^(1/2), B = S_r^(1/2) V_r^T L^-1 (exactly optimal for the damped H).
    rank in [1, min(out, in)]. The bias is kept as it is. Returns a ``LowRankLinear`` with the
    layer's dtype and device; ``layer`` is not modified. With H = I it equals :func:`svd_linear`.
    """
    if not isinstance(layer, nn.Linear):
        raise ValueError(f"layer must be nn.Linear, not {type(layer).__name__}")
    out_f, in_f = layer.weight.shape
    if not torch.is_tensor(hessian) or hessian.shape != (in_f, in_f):
        got = tuple(hessian.shape) if torch.is_tensor(hessian) else type(hessian).__name__
        raise ValueError(f"hessian has shape {got}, expected ({in_f}, {in_f})")
    V.int_in("rank", rank, 1, min(out_f, in_f))
    damping = V.number_in("damping", damping, 0, None)
    h = hessian.detach().double().cpu()
    if not torch.isfinite(h).all() or not torch.allclose(h, h.T, rtol=1e-4, atol=1e-6 * float(h.abs().max()) + 1e-300):
        raise ValueError("hessian must be a finite symmetric matrix (X^T X / n)")
    h = h + damping * torch.diag(h).mean() * torch.eye(in_f, dtype=torch.float64)
    chol, info = torch.linalg.cholesky_ex(h)
    if int(info) != 0:
        raise ValueError("hessian (+ damping) is not positive definite: give X^T X / n of real inputs, "
                         f"or a damping > {damping}")
    u, s, vh = torch.linalg.svd(layer.weight.detach().double().cpu() @ chol, full_matrices=False)
    root = s[:rank].sqrt()
    a = u[:, :rank] * root
    b = torch.linalg.solve_triangular(chol, root[:, None] * vh[:rank], upper=False, left=False)  # (S V^T) L^-1
    w = layer.weight
    new = LowRankLinear(in_f, out_f, rank, bias=layer.bias is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new[0].weight.copy_(b.to(w.dtype))
        new[1].weight.copy_(a.to(w.dtype))
        if layer.bias is not None:
            new[1].bias.copy_(layer.bias.detach())
    return new.train(layer.training)
