"""Weight-only quantization of linear layers, group-wise: round-to-nearest (RTN), GPTQ
(Frantar et al., 2023) and AWQ (Lin et al., 2024), written from scratch; the calibration Hessians
they use; MIT 6.5940 Lab 4's salient-channel ablation (keep or scale the 1% of input channels
with the largest activations); and the saved int4 artifact (packed codes, float16 scales, uint8
zero points) with its loader. One implementation serves chapter 6 (a sentence encoder) and
chapter 7 (a small language model).

Everything here works on any ``nn.Linear`` (weight (out, in)); nothing is specific to one model.
Grid: asymmetric min-max per group of ``group_size`` consecutive input columns of each output row,
codes in [0, 2**bits - 1], ``w_hat = (code - zero) * scale``.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from .. import measure
from .._validate import _is_int, int_in, number_in, one_of, positive_int
from .packing import pack_int4, unpack_int4

__all__ = ["WEIGHT_ONLY_BITS", "WEIGHT_ONLY_METHODS", "rtn_quantize", "gptq_quantize", "awq_quantize",
           "activation_magnitude", "salient_channels", "rtn_keep_channels", "rtn_scaled_channels",
           "collect_hessians", "output_error", "holdout_error_ratio", "GPTQ_SETTINGS", "choose_gptq_settings",
           "quantize_weights", "quantize_sequential", "forward_groups", "layer_bytes", "replace_weights", "int4_state", "int4_bytes", "load_int4"]

WEIGHT_ONLY_BITS = (2, 8)        # valid range of ``bits``
WEIGHT_ONLY_METHODS = ("rtn", "gptq", "awq")
AWQ_GRID = 20                    # AWQ's search: alpha in {0, 1/20, ..., 19/20} as in the reference code
# GPTQ's settings a course run chooses among (by choose_gptq_settings, on calibration data only)
GPTQ_SETTINGS = {"damp 0.01": {"damp": 0.01}, "damp 0.1": {"damp": 0.1},
                 "act order, damp 0.01": {"damp": 0.01, "act_order": True},
                 "act order, damp 0.1": {"damp": 0.1, "act_order": True}}
MIN_SCALE = 1e-12                # floor of a group's scale (an all-zero group)


# ---------------------------------------------------------------- argument checks
def _check_weight(weight) -> None:
    if not torch.is_tensor(weight) or weight.dim() != 2:
        raise ValueError(f"weight must be 2-D (out, in), got shape {tuple(getattr(weight, 'shape', ()))}")


def _check_weight_hessian(weight, hessian) -> tuple[int, int]:
    """(out, in) of a 2-D weight whose calibration Hessian must be (in, in)."""
    _check_weight(weight)
    out_f, in_f = weight.shape
    if hessian.shape != (in_f, in_f):
        raise ValueError(f"hessian has shape {tuple(hessian.shape)}, expected ({in_f}, {in_f}) for weight {tuple(weight.shape)}")
    return out_f, in_f


def _check_bits(bits) -> int:
    return int_in("bits", bits, *WEIGHT_ONLY_BITS)


def _check_group(in_features: int, group_size) -> int:
    group_size = positive_int("group_size", group_size)
    if in_features % group_size:
        raise ValueError(f"group_size={group_size!r} must be a positive integer dividing in_features={in_features}")
    return group_size


# ---------------------------------------------------------------- the grid of one group
def _group_params(w: torch.Tensor, bits: int):
    """Asymmetric min-max parameters of each row of ``w`` (rows, g): scale (rows, 1), zero (rows, 1)."""
    lo = w.amin(1, keepdim=True).clamp(max=0)
    hi = w.amax(1, keepdim=True).clamp(min=0)
    qmax = 2 ** bits - 1
    scale = ((hi - lo) / qmax).clamp_min(MIN_SCALE)
    zero = (-lo / scale).round().clamp(0, qmax)
    return scale, zero


def _codes(w, scale, zero, bits):
    """Integer codes (as floats) of w on the grid (scale, zero): clamp(round(w / scale) + zero)."""
    return (torch.round(w / scale) + zero).clamp(0, 2 ** bits - 1)


# ---------------------------------------------------------------- RTN
def rtn_quantize(weight: torch.Tensor, bits: int = 4, group_size: int = 128):
    """Round-to-nearest weight quantization with one asymmetric (scale, zero) per group of
    ``group_size`` consecutive input columns of each output row.

    weight: (out, in) float; bits in [2, 8]; group_size divides in.
    Returns (w_hat, codes, scales, zeros): w_hat (out, in) float32 dequantized weight, codes (out, in)
    uint8 in [0, 2^bits), scales (out, in/group_size) float32, zeros same shape (integers as float32).
    """
    _check_weight(weight)
    bits = _check_bits(bits)
    group_size = _check_group(weight.shape[1], group_size)
    out_f, in_f = weight.shape
    w = weight.detach().double().reshape(out_f, in_f // group_size, group_size)
    scale, zero = _group_params(w.reshape(-1, group_size), bits)
    scale, zero = scale.reshape(out_f, -1, 1), zero.reshape(out_f, -1, 1)
    codes = _codes(w, scale, zero, bits)
    w_hat = ((codes - zero) * scale).reshape(out_f, in_f)
    return (w_hat.float(), codes.reshape(out_f, in_f).to(torch.uint8),
            scale.reshape(out_f, -1).float(), zero.reshape(out_f, -1).float())


# ---------------------------------------------------------------- GPTQ
def gptq_quantize(weight: torch.Tensor, hessian: torch.Tensor, bits: int = 4, group_size: int = 128,
                  damp: float = 0.01, block_size: int = 128, act_order: bool = False):
    """GPTQ (Frantar et al., 2023): quantize the input columns of ``weight`` one at a time and spread
    each column's rounding error over the columns not yet quantized, weighted by the inverse Hessian
    of the layer's reconstruction loss ||X W^T - X W_hat^T||^2 (H = X^T X of calibration inputs).

    weight: (out, in); hessian: (in, in) symmetric positive semi-definite; bits in [2, 8];
    group_size divides in (one asymmetric scale/zero per group and row, chosen when the group's
    first column is reached, from the error-updated weights); damp in (0, 1]: fraction of the mean
    diagonal added to H. Columns are processed in blocks of ``block_size`` (rounded to a multiple of
    group_size) with lazy updates of the rest. Same returns as :func:`rtn_quantize`.

    act_order (the reference code's ``--act-order``, ``desc_act`` in AutoGPTQ): quantize the columns in
    order of decreasing H_jj (the inputs with the most energy first, while the most columns are left to
    absorb their error). The groups stay groups of consecutive columns, so the stored format is the same;
    their grids are then fixed beforehand from the original weights (AutoGPTQ's ``static_groups``), since a
    group's columns are no longer reached together.
    """
    out_f, in_f = _check_weight_hessian(weight, hessian)
    bits = _check_bits(bits)
    group_size = _check_group(in_f, group_size)
    number_in("damp", damp, 0, 1, lo_open=True)
    block_size = positive_int("block_size", block_size)
    block = group_size * max(1, -(-block_size // group_size))
    W = weight.detach().double().clone()
    H = hessian.detach().double().clone()
    dead = torch.diag(H) == 0  # inputs that are always zero: their weights do not matter
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H += damp * torch.diag(H).mean() * torch.eye(in_f, dtype=H.dtype)
    n_groups = in_f // group_size
    scales = torch.zeros(out_f, n_groups, dtype=W.dtype)
    zeros = torch.zeros_like(scales)
    perm = torch.arange(in_f)
    if act_order:
        for g in range(n_groups):
            s, z = _group_params(W[:, g * group_size:(g + 1) * group_size], bits)
            scales[:, g], zeros[:, g] = s[:, 0], z[:, 0]
        perm = torch.argsort(torch.diag(H), descending=True, stable=True)
        W, H = W[:, perm], H[perm][:, perm]
    # upper Cholesky factor of H^-1: row i holds the update coefficients for column i (GPTQ eq. 4)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    codes = torch.zeros_like(W)  # in the order the columns are quantized (perm), put back at the end
    group_of = [c // group_size for c in perm.tolist()]
    for i1 in range(0, in_f, block):
        i2 = min(i1 + block, in_f)
        W1, Hinv1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2]
        Err1 = torch.zeros_like(W1)
        for i in range(i2 - i1):
            col = i1 + i
            g = group_of[col]
            if not act_order and col % group_size == 0:  # a new group: its grid comes from the error-updated weights
                s, z = _group_params(W1[:, i:i + group_size], bits)
                scales[:, g], zeros[:, g] = s[:, 0], z[:, 0]
            s, z = scales[:, g], zeros[:, g]
            w = W1[:, i]
            q = _codes(w, s, z, bits)
            codes[:, col] = q
            err = (w - (q - z) * s) / Hinv1[i, i]
            W1[:, i:] -= err[:, None] * Hinv1[i, i:][None, :]  # error feedback inside the block
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]  # lazy error feedback to the columns after the block
    if act_order:
        codes = codes[:, torch.argsort(perm)]
    w_hat = (codes - zeros.repeat_interleave(group_size, 1)) * scales.repeat_interleave(group_size, 1)
    return w_hat.float(), codes.to(torch.uint8), scales.float(), zeros.float()


# ---------------------------------------------------------------- activation-aware: the salient channels
def activation_magnitude(hessian: torch.Tensor) -> torch.Tensor:
    """Typical magnitude of each input channel of a layer: sqrt(diag(H)) = the root mean square of
    x_j over the calibration rows (H = X^T X / n from :func:`collect_hessians`), shape (in,).
    AWQ's reference code uses the mean |x_j|; the RMS ranks channels the same way in practice and
    comes free with the Hessian."""
    if not torch.is_tensor(hessian) or hessian.dim() != 2 or hessian.shape[0] != hessian.shape[1]:
        raise ValueError(f"hessian must be square (in, in), got shape {tuple(getattr(hessian, 'shape', ()))}")
    return torch.diagonal(hessian.double()).clamp_min(0).sqrt()


def salient_channels(magnitude: torch.Tensor, fraction: float = 0.01, random: bool = False, seed: int = 0):
    """Boolean mask (in,) of the ``fraction`` of input channels with the largest activation
    ``magnitude`` (at least one channel), or, with ``random=True``, of as many channels drawn at
    random (the control; a local generator seeded by ``seed``). fraction in (0, 1]."""
    fraction = number_in("fraction", fraction, 0, 1, lo_open=True)
    n = magnitude.numel()
    k = max(1, round(fraction * n))
    if random:
        idx = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))[:k]
    else:
        idx = torch.topk(magnitude.double(), k).indices
    mask = torch.zeros(n, dtype=torch.bool)
    mask[idx] = True
    return mask


def rtn_keep_channels(weight: torch.Tensor, keep: torch.Tensor, bits: int = 4, group_size: int = 128):
    """RTN with the input channels in ``keep`` (bool (in,)) left in float: MIT Lab 4's first
    experiment (mixed precision; awkward for a kernel, which is why AWQ scales instead).
    The kept columns still take part in their group's min-max range (as in the lab).
    Returns w_hat (out, in) float32."""
    _check_weight(weight)
    if keep.shape != (weight.shape[1],) or keep.dtype != torch.bool:
        raise ValueError(f"keep must be a bool mask of shape ({weight.shape[1]},), got {keep.dtype} {tuple(keep.shape)}")
    w_hat = rtn_quantize(weight, bits, group_size)[0]
    w_hat[:, keep] = weight.detach().float()[:, keep]
    return w_hat


def _scaled_rtn(weight: torch.Tensor, s: torch.Tensor, bits: int, group_size: int):
    """Quantize W diag(s) with RTN and undo the scale: w_hat = Q(W diag(s)) diag(s)^-1 (float64)."""
    w_hat, codes, scales, zeros = rtn_quantize(weight.detach().double() * s[None, :], bits, group_size)
    return w_hat.double() / s[None, :], codes, scales, zeros


def rtn_scaled_channels(weight: torch.Tensor, channels: torch.Tensor, scale: float = 2.0, bits: int = 4,
                        group_size: int = 128) -> torch.Tensor:
    """RTN after multiplying the input channels in ``channels`` (bool (in,)) by ``scale`` (and
    dividing their inputs by it, which a deployment folds into the previous operation): MIT Lab 4's
    second experiment. A channel scaled up by s > 1 gets a relative rounding error about s times
    smaller, as long as it does not widen its group's range much. scale in (0, 100].
    Returns w_hat (out, in) float32 = Q(W diag(s)) diag(s)^-1."""
    _check_weight(weight)
    if channels.shape != (weight.shape[1],) or channels.dtype != torch.bool:
        raise ValueError(f"channels must be a bool mask of shape ({weight.shape[1]},), got {channels.dtype} {tuple(channels.shape)}")
    scale = number_in("scale", scale, 0, 100, lo_open=True)
    s = torch.ones(weight.shape[1], dtype=torch.float64)
    s[channels] = scale
    return _scaled_rtn(weight, s, bits, group_size)[0].float()


def _clip_search(w: torch.Tensor, h: torch.Tensor, bits: int, group_size: int, grid: int, max_shrink: float):
    """AWQ's clipping search: for every output row and group, shrink the range to
    [-r * max|w|, r * max|w|] with r in {1, 1 - max_shrink/grid, ...} (grid values), quantize the clamped
    group with RTN, and keep the r with the least error of that group's share of the output,
    d H_gg d^T (H_gg: the group's diagonal block of H, as the reference code's per-group error).
    w (out, in) float64. Returns (w_hat, codes, scales, zeros) like :func:`rtn_quantize` (float64)."""
    out_f, in_f = w.shape
    n_g = in_f // group_size
    wg = w.reshape(out_f, n_g, group_size)
    hb = torch.stack([h[i * group_size:(i + 1) * group_size, i * group_size:(i + 1) * group_size] for i in range(n_g)])
    amax = wg.abs().amax(-1, keepdim=True)
    best_err = torch.full((out_f, n_g), float("inf"), dtype=w.dtype)
    best = [torch.zeros_like(wg), torch.zeros_like(wg), torch.zeros(out_f, n_g, 1, dtype=w.dtype),
            torch.zeros(out_f, n_g, 1, dtype=w.dtype)]
    for i in range(grid):
        r = 1 - max_shrink * i / grid
        c = torch.maximum(torch.minimum(wg, r * amax), -r * amax)
        scale, zero = _group_params(c.reshape(-1, group_size), bits)
        scale, zero = scale.reshape(out_f, n_g, 1), zero.reshape(out_f, n_g, 1)
        codes = _codes(c, scale, zero, bits)
        q = (codes - zero) * scale
        d = wg - q
        err = torch.einsum("ogi,gij,ogj->og", d, hb, d)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        m = better[..., None]
        for k, v in enumerate((q, codes, scale, zero)):
            best[k] = torch.where(m, v, best[k])
    q, codes, scale, zero = best
    return q.reshape(out_f, in_f), codes.reshape(out_f, in_f), scale.reshape(out_f, n_g), zero.reshape(out_f, n_g)


def awq_quantize(weight: torch.Tensor, hessian: torch.Tensor, bits: int = 4, group_size: int = 128,
                 grid: int = AWQ_GRID, clip: bool = True, max_shrink: float = 0.5):
    """AWQ (Lin et al., 2024): activation-aware scaling, then clipping, both searched on calibration data.

    1. Scale search: per input channel s_j = m_j^alpha / sqrt(max m * min m) with m =
       :func:`activation_magnitude` (H); for alpha in {0, 1/grid, ..., (grid-1)/grid} quantize
       W diag(s) with group-wise RTN, undo the scale, and keep the alpha with the smallest output error
       tr(dW H dW^T) on the calibration inputs (alpha = 0 is plain RTN).
    2. Clip search (``clip=True``, as the reference code's ``auto_clip``): for each output row and group
       of W diag(s), shrink the range to r x max|w| for r in {1, 1 - max_shrink/grid, ...} and keep the r
       whose rounding costs that group's share of the output least (d H_gg d^T).

    weight: (out, in); hessian: (in, in) = X^T X / n; bits in [2, 8]; group_size divides in;
    grid >= 1; max_shrink in [0, 1). Returns (w_hat, codes, scales, zeros, s, alpha): as
    :func:`rtn_quantize` (codes are those of W diag(s)), plus s (in,) float32, the per-channel factor a
    deployment folds into the previous operation (inputs divided by s), and the chosen alpha.
    """
    out_f, in_f = _check_weight_hessian(weight, hessian)
    bits = _check_bits(bits)
    group_size = _check_group(in_f, group_size)
    grid = positive_int("grid", grid)
    max_shrink = number_in("max_shrink", max_shrink, 0, 1, hi_open=True)
    m = activation_magnitude(hessian).clamp_min(1e-8)
    w = weight.detach().double()
    h = hessian.double()
    best = None
    for i in range(grid):
        alpha = i / grid
        s = m ** alpha
        s = (s / (s.max() * s.min()).sqrt()).half().double()  # float16, as the artifact stores it
        w_hat = _scaled_rtn(w, s, bits, group_size)[0]
        d = w - w_hat
        err = float(((d @ h) * d).sum())  # tr(d H d^T), without the (out, out) product
        if best is None or err < best[0]:
            best = (err, s, alpha)
    _, s, alpha = best
    ws = w * s[None, :]
    if clip:  # the scaled layer's inputs are X diag(s)^-1: their Hessian is diag(1/s) H diag(1/s)
        hs = h / s[:, None] / s[None, :]
        q, codes, scales, zeros = _clip_search(ws, hs, bits, group_size, grid, max_shrink)
    else:
        q, codes, scales, zeros = (t.double() for t in rtn_quantize(ws, bits, group_size))
    w_hat = q / s[None, :]
    return (w_hat.float(), codes.to(torch.uint8), scales.float(), zeros.float(), s.float(), alpha)


# ---------------------------------------------------------------- calibration Hessians
def _linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def each_linear_input(model: nn.Module, inputs, names, fn) -> None:
    """Run ``model`` once on ``inputs`` (no gradients, eval mode; the mode is restored) and call
    ``fn(name, x)`` with the float64 inputs x (rows, in_features) of each linear layer in ``names``.

    inputs: a tensor (``model(inputs)``; every position of every sample is a row) or a dict of
    tensors (``model(**inputs)``, e.g. a tokenized batch); with an "attention_mask" (N, T) in the
    dict, only the rows of real tokens count (padding removed).
    """
    mask = inputs.get("attention_mask") if isinstance(inputs, dict) else None
    mask = None if mask is None else mask.bool()

    def rows(x):
        if mask is not None and x.dim() == 3:
            return x[mask[:, :x.shape[1]]]
        return x.reshape(-1, x.shape[-1])

    _forward_with_hooks(model, inputs, {n: lambda m, inp, out, n=n: fn(n, rows(inp[0]).detach().double())
                                        for n in names})


def _forward_with_hooks(model: nn.Module, inputs, hooks: dict) -> None:
    """One forward pass of ``model`` on ``inputs`` (a tensor or a dict of tensors) without gradients, in eval
    mode, with ``hooks`` {submodule name: forward hook (module, inputs, output)} registered for that pass only;
    the hooks are removed and the model's mode restored whatever happens."""
    modules = dict(model.named_modules())
    unknown = [n for n in hooks if n not in modules]
    if unknown:
        raise ValueError(f"names: {unknown!r} are not submodules of the model (e.g. {list(modules)[1:4]!r})")
    handles, was = [], model.training
    try:
        for n, h in hooks.items():
            handles.append(modules[n].register_forward_hook(h))
        model.eval()
        with torch.no_grad():
            model(**inputs) if isinstance(inputs, dict) else model(inputs)
    finally:
        model.train(was)
        for h in handles:
            h.remove()


def collect_hessians(model: nn.Module, inputs, names=None) -> dict:
    """{linear layer name: H (in, in) float64} with H = X^T X / n over the n input rows of the
    layer on ``inputs`` (see :func:`each_linear_input`: a tensor, or a tokenized batch whose padding
    tokens are left out). names: the nn.Linear layers (default: all of them)."""
    names = [n for n, _ in _linears(model)] if names is None else list(names)
    acc, count, last = {}, {}, {}

    def fn(name, x):
        # layers reading the same input (a transformer's query, key, value): compute X^T X once
        same = "x" in last and last["x"].shape == x.shape and torch.equal(last["x"], x)
        xtx = last["xtx"] if same else x.T @ x
        last.update(x=x, xtx=xtx)
        acc[name] = acc.get(name, 0) + xtx
        count[name] = count.get(name, 0) + x.shape[0]
    each_linear_input(model, inputs, names, fn)
    return {n: acc[n] / count[n] for n in names}


def output_error(weight: torch.Tensor, w_hat: torch.Tensor, hessian: torch.Tensor) -> float:
    """Relative output error of a quantized weight on the calibration inputs:
    tr(dW H dW^T) / tr(W H W^T) = ||X (W - W_hat)^T||^2 / ||X W^T||^2, with H = X^T X (in, in)."""
    w = weight.detach().double()
    d = w - w_hat.detach().double()
    h = hessian.double()
    return float(torch.trace(d @ h @ d.T) / torch.trace(w @ h @ w.T))


# ---------------------------------------------------------------- whole model
def quantize_weights(model: nn.Module, method: str = "gptq", bits: int = 4, group_size: int = 128,
                     hessians: dict | None = None, damp: float = 0.01, names=None,
                     act_order: bool = False) -> tuple[nn.Module, dict]:
    """Weight-only quantization of the nn.Linear layers of a copy of ``model``.

    method: "rtn", "gptq" or "awq" (the last two need ``hessians`` from :func:`collect_hessians`).
    names: the layers to quantize (default: every nn.Linear); the others stay in float.
    damp and act_order are GPTQ's (see :func:`gptq_quantize`); the other methods ignore them.
    This is the non-sequential variant: every layer's Hessian comes from the float model's
    activations, not from the activations of the already-quantized earlier layers (GPTQ's paper
    quantizes sequentially; AWQ's code searches per block of the already-scaled model).
    The copy computes with the dequantized float weights (simulated quantization: the accuracy of a
    real int4 kernel); the second return value {name: (codes, scales, zeros)} (AWQ adds the
    per-channel factor s) is what a deployment would store (see :func:`int4_state`).
    ``model`` is not modified.
    """
    one_of("method", method, WEIGHT_ONLY_METHODS)
    if method in ("gptq", "awq") and hessians is None:
        raise ValueError(f"method={method!r} needs hessians (collect_hessians(model, calibration_batch))")
    out = copy.deepcopy(model).eval()
    layers = _linears(out)
    if names is not None:
        names = list(names)
        known = {n for n, _ in layers}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f"names={unknown!r} are not nn.Linear layers of the model; valid: {sorted(known)}")
        layers = [(n, m) for n, m in layers if n in names]
    packed = {name: _quantize_layer(lin, method, bits, group_size, None if hessians is None else hessians[name], damp,
                                    act_order) for name, lin in layers}
    return out, packed


def _quantize_layer(lin: nn.Linear, method: str, bits: int, group_size: int, hessian, damp: float,
                    act_order: bool = False) -> tuple:
    """Quantize one layer's weight IN PLACE (w_hat copied into it); returns what is stored:
    (codes, scales, zeros) and for AWQ the per-channel factor s."""
    if method == "rtn":
        w_hat, *rest = rtn_quantize(lin.weight, bits, group_size)
    elif method == "gptq":
        w_hat, *rest = gptq_quantize(lin.weight, hessian, bits, group_size, damp=damp, act_order=act_order)
    else:
        w_hat, *rest, _alpha = awq_quantize(lin.weight, hessian, bits, group_size)
    with torch.no_grad():
        lin.weight.copy_(w_hat)
    return tuple(rest)


def _heldout_errors(weights: dict, fit: dict, held: dict, quantize) -> torch.Tensor:
    """||X_held (W - W_hat)^T||^2 = tr(d H_held d^T) of each layer, W_hat = quantize(W, H_fit): a (layers,)
    float64 tensor (unnormalised: only a ratio of two of them means something)."""
    errs = []
    for name, w in weights.items():
        d = w.detach().double() - quantize(w, fit[name]).detach().double()
        errs.append(float(((d @ held[name].double()) * d).sum()))
    return torch.tensor(errs, dtype=torch.float64)


def holdout_error_ratio(weights: dict, fit_hessians: dict, held_hessians: dict, quantize, bits: int = 3,
                        group_size: int = 128) -> torch.Tensor:
    """Output error of a quantizer on calibration data it was not fitted to, relative to RTN's: for choosing
    a quantizer's settings on calibration data alone (never on the task's evaluation data).

    weights: {name: (out, in) weight}; fit_hessians, held_hessians: {name: (in, in)} from
    :func:`collect_hessians` on two disjoint parts of the calibration set; quantize(weight, hessian) -> w_hat,
    fitted to the hessian it is given (the fit part's). Returns a (layers,) float tensor of each layer's
    :func:`output_error` on the held-out part divided by RTN's (``bits``, ``group_size``) there: below 1 means
    better than RTN on inputs the quantizer was not fitted to.
    """
    rtn = _heldout_errors(weights, fit_hessians, held_hessians, lambda w, h: rtn_quantize(w, bits, group_size)[0])
    return (_heldout_errors(weights, fit_hessians, held_hessians, quantize) / rtn.clamp_min(1e-30)).float()


def choose_gptq_settings(weights: dict, fit_hessians: dict, held_hessians: dict, bits: int = 3,
                         group_size: int = 128, candidates: dict | None = None) -> tuple[str, dict]:
    """Choose GPTQ's settings (damping, act order) by :func:`holdout_error_ratio`: fitted on one part of the
    calibration set, judged on the other; the candidate with the lowest mean ratio to RTN wins (ties: the first
    listed). candidates: {label: keyword arguments of :func:`gptq_quantize`} (default :data:`GPTQ_SETTINGS`).
    Returns (the winner's label, {label: its (layers,) ratios})."""
    candidates = GPTQ_SETTINGS if candidates is None else candidates
    if not candidates:
        raise ValueError("candidates must name at least one setting, e.g. {'damp 0.01': {'damp': 0.01}}")
    ratios = {label: holdout_error_ratio(weights, fit_hessians, held_hessians,
                                         lambda w, h, kw=kw: gptq_quantize(w, h, bits, group_size, **kw)[0],
                                         bits, group_size)
              for label, kw in candidates.items()}
    return min(ratios, key=lambda k: float(ratios[k].mean())), ratios


def forward_groups(model: nn.Module, inputs, names=None) -> list[list[str]]:
    """The nn.Linear layers in ``names`` (default: all) in the order the forward pass on ``inputs``
    calls them, layers that read the very same input tensor grouped together: for a BERT block
    [[query, key, value], [attention output], [FFN in], [FFN out]], block after block (GPTQ's order).
    A layer the forward pass never calls raises ValueError."""
    names = [n for n, _ in _linears(model)] if names is None else list(names)
    order, seen = [], {}

    def hook(m, inp, out, name):
        if name in seen:  # a layer called twice keeps its first place
            return
        seen[name] = True
        if order and order[-1][0] is inp[0]:  # the same tensor object (held here, so never reused)
            order[-1][1].append(name)
        else:
            order.append((inp[0], [name]))
    _forward_with_hooks(model, inputs, {n: lambda m, i, o, n=n: hook(m, i, o, n) for n in names})
    missing = [n for n in names if n not in seen]
    if missing:
        raise ValueError(f"names: {missing!r} are never called by the forward pass")
    return [g for _, g in order]


def quantize_sequential(model: nn.Module, inputs, method: str = "gptq", bits: int = 4, group_size: int = 128,
                        damp: float = 0.01, groups=None) -> tuple[nn.Module, dict]:
    """The sequential variant of :func:`quantize_weights` (GPTQ's paper): the layers are quantized group by
    group, and each group's Hessians come from the calibration ``inputs`` run through the copy whose earlier
    groups are ALREADY quantized, so every layer compensates the error of the layers before it.

    inputs: the calibration batch (as :func:`collect_hessians`); groups: lists of nn.Linear names, in
    order (default :func:`forward_groups`: for a BERT block, query/key/value, then the attention output,
    then FFN in, then FFN out, block after block). One forward pass per group (24 for a 6-block BERT).
    With one group holding every layer this is exactly :func:`quantize_weights`. Returns (copy, packed)
    as :func:`quantize_weights`; ``model`` is not modified.
    """
    one_of("method", method, WEIGHT_ONLY_METHODS)
    bits = _check_bits(bits)
    positive_int("group_size", group_size)
    number_in("damp", damp, 0, 1, lo_open=True)
    out = copy.deepcopy(model).eval()
    groups = forward_groups(out, inputs) if groups is None else [list(g) for g in groups]
    known = {n for n, _ in _linears(out)}
    unknown = [n for g in groups for n in g if n not in known]
    if unknown:
        raise ValueError(f"groups: {unknown!r} are not nn.Linear layers of the model; valid: {sorted(known)}")
    flat = [n for g in groups for n in g]
    twice = sorted({n for n in flat if flat.count(n) > 1})
    if twice or not all(groups):
        raise ValueError(f"groups must be non-empty lists naming each layer once; got {groups!r}")
    packed = {}
    for group in groups:
        h = collect_hessians(out, inputs, group) if method != "rtn" else {}
        for name in group:
            packed[name] = _quantize_layer(out.get_submodule(name), method, bits, group_size, h.get(name), damp)
    return out, packed


def layer_bytes(out_features: int, in_features: int, bits: int, group_size: int = 128) -> int:
    """Exact payload bytes of one stored (out, in) weight: float32 (bits=32: 4 per weight) or, as
    :func:`packed_layer_state` stores it, codes (two per byte at bits <= 4, one per byte up to 8) plus a
    float16 scale and a uint8 zero point per group of ``group_size`` columns of each row (3 bytes).
    bits in [2, 8] or 32; group_size divides in_features (even at bits <= 4). Biases are not counted.
    3 bits cost as much as 4 here: the artifact packs every code of at most 4 bits into a nibble."""
    n = positive_int("out_features", out_features) * positive_int("in_features", in_features)
    if _is_int(bits) and bits == 32:
        return 4 * n
    if not _is_int(bits) or not WEIGHT_ONLY_BITS[0] <= bits <= WEIGHT_ONLY_BITS[1]:
        raise ValueError(f"bits={bits!r} must be 32 (float) or an integer in [{WEIGHT_ONLY_BITS[0]}, {WEIGHT_ONLY_BITS[1]}]")
    group_size = _check_group(in_features, group_size)
    if bits <= 4 and in_features % 2:
        raise ValueError(f"in_features={in_features} must be even at bits={bits} (two codes per byte)")
    return (n // 2 if bits <= 4 else n) + 3 * n // group_size


@torch.no_grad()
def replace_weights(model: nn.Module, fn, names=None) -> nn.Module:
    """A copy of ``model`` (eval mode) in which the weight W (out, in) of every nn.Linear in ``names``
    (default: all) is replaced by ``fn(name, W)`` (a tensor of the same shape, e.g. one of the
    ablations above); ``model`` is not modified. For experiments that are not a ``quantize_weights``
    method."""
    out = copy.deepcopy(model).eval()
    layers = dict(_linears(out))
    for name in (list(layers) if names is None else names):
        if name not in layers:
            raise ValueError(f"names: {name!r} is not an nn.Linear layer of the model; valid: {sorted(layers)}")
        w = layers[name].weight
        new = fn(name, w.detach().clone())
        if tuple(new.shape) != tuple(w.shape):
            raise ValueError(f"fn returned shape {tuple(new.shape)} for {name!r}, expected {tuple(w.shape)}")
        w.copy_(new)
    return out


# ---------------------------------------------------------------- the saved int4 artifact
_INT4_SUFFIXES = (".qweight", ".scales", ".zeros", ".input_scale")


def packed_layer_state(name: str, codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                       bits: int = 4) -> dict:
    """The stored entries of one quantized weight ``name``: ``<name>.qweight`` (uint8; at ``bits`` <= 4
    two codes per byte, (out, in/2), else one per byte, (out, in)), ``<name>.scales`` float16 and
    ``<name>.zeros`` uint8 (out, in/group_size). bits in [1, 8]; codes in [0, 2**bits)."""
    bits = int_in("bits", bits, 1, 8)
    return {f"{name}.qweight": pack_int4(codes) if bits <= 4 else codes.to(torch.uint8),
            f"{name}.scales": scales.half(), f"{name}.zeros": zeros.to(torch.uint8)}


def int4_state(model: nn.Module, packed: dict, bits=4) -> dict:
    """The saved artifact of a 4-bit weight-only model: for every layer of ``packed`` (from
    :func:`quantize_weights`, bits <= 4) ``<name>.qweight`` (two codes per byte, (out, in/2) uint8),
    ``<name>.scales`` float16 and ``<name>.zeros`` uint8 (out, in/group_size), and for AWQ
    ``<name>.input_scale`` float16 (in,); everything else (embeddings, LayerNorms, biases) as in
    ``model``'s float state dict. Load it with :func:`load_int4`.
    bits: the bit width of the codes, one int for every layer or {name: bits} (a mixed-precision model:
    layers above 4 bits store one code per byte, see :func:`packed_layer_state`)."""
    state = {k: v for k, v in model.state_dict().items() if not any(k == f"{n}.weight" for n in packed)}
    if isinstance(bits, dict):
        missing = sorted(set(packed) - set(bits))
        if missing:
            raise ValueError(f"bits names no width for the packed layers {missing}")
    for name, (codes, scales, zeros, *awq) in packed.items():
        state.update(packed_layer_state(name, codes, scales, zeros, bits[name] if isinstance(bits, dict) else bits))
        if awq:
            state[f"{name}.input_scale"] = awq[0].half()
    return state


def int4_bytes(model: nn.Module, packed: dict, bits=4) -> int:
    """Bytes that ``torch.save`` writes for :func:`int4_state` (``measure.serialized_bytes``); bits as there."""
    return measure.serialized_bytes(int4_state(model, packed, bits))


@torch.no_grad()
def load_int4(model: nn.Module, state: dict) -> nn.Module:
    """Load an :func:`int4_state` into ``model`` (same architecture, float), IN PLACE.

    A ``qweight`` half as wide as the model's weight holds 4-bit codes two per byte; one as wide holds
    one code per byte (8 bits, e.g. the embedding table of ``bert.with_quantized_embeddings``).
    Each quantized weight becomes ``(code - zero) * scale`` with the stored float16 scales (so it
    equals the simulated ``w_hat`` up to float16 rounding of the scales); the other entries are
    loaded as a state dict. Raises ValueError for missing or unexpected entries. Returns model.
    """
    names = [k[: -len(".qweight")] for k in state if k.endswith(".qweight")]
    for name in names:
        lin = model.get_submodule(name)
        q, cols = state[f"{name}.qweight"], lin.weight.shape[1]
        codes = (unpack_int4(q) if 2 * q.shape[-1] == cols else q).double()
        scales, zeros = state[f"{name}.scales"].double(), state[f"{name}.zeros"].double()
        group = codes.shape[1] // scales.shape[1]
        w = (codes - zeros.repeat_interleave(group, 1)) * scales.repeat_interleave(group, 1)
        if f"{name}.input_scale" in state:  # AWQ: the codes are those of W diag(s)
            w = w / state[f"{name}.input_scale"].double()[None, :]
        if w.shape != lin.weight.shape:
            raise ValueError(f"{name}: stored weight has shape {tuple(w.shape)}, the model's {tuple(lin.weight.shape)}")
        lin.weight.copy_(w)
    rest = {k: v for k, v in state.items() if not k.endswith(_INT4_SUFFIXES)}
    result = model.load_state_dict(rest, strict=False)
    missing = [k for k in result.missing_keys if k not in {f"{n}.weight" for n in names}]
    if missing or result.unexpected_keys:
        raise ValueError(f"state does not fit the model: missing {missing}, unexpected {result.unexpected_keys}")
    return model
