"""Weight-only quantization of linear layers, group-wise: round-to-nearest (RTN) and GPTQ
(Frantar et al., 2023), written from scratch; the calibration Hessians they use; and the saved
int4 artifact (packed codes, float16 scales, uint8 zero points) with its loader.

Everything here works on any ``nn.Linear`` (weight (out, in)); nothing is specific to one model.
Grid: asymmetric min-max per group of ``group_size`` consecutive input columns of each output row,
codes in [0, 2**bits - 1], ``w_hat = (code - zero) * scale``.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from .. import measure
from .._validate import int_in, number_in, one_of, positive_int
from .packing import pack_int4, unpack_int4

__all__ = ["WEIGHT_ONLY_BITS", "WEIGHT_ONLY_METHODS", "rtn_quantize", "gptq_quantize", "collect_hessians",
           "output_error", "quantize_weights", "int4_state", "int4_bytes", "load_int4"]

WEIGHT_ONLY_BITS = (2, 8)        # valid range of ``bits``
WEIGHT_ONLY_METHODS = ("rtn", "gptq")
MIN_SCALE = 1e-12                # floor of a group's scale (an all-zero group)


# ---------------------------------------------------------------- argument checks
def _check_weight(weight) -> None:
    if not torch.is_tensor(weight) or weight.dim() != 2:
        raise ValueError(f"weight must be 2-D (out, in), got shape {tuple(getattr(weight, 'shape', ()))}")


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
                  damp: float = 0.01, block_size: int = 128):
    """GPTQ (Frantar et al., 2023): quantize the input columns of ``weight`` one at a time and spread
    each column's rounding error over the columns not yet quantized, weighted by the inverse Hessian
    of the layer's reconstruction loss ||X W^T - X W_hat^T||^2 (H = X^T X of calibration inputs).

    weight: (out, in); hessian: (in, in) symmetric positive semi-definite; bits in [2, 8];
    group_size divides in (one asymmetric scale/zero per group and row, chosen when the group's
    first column is reached, from the error-updated weights); damp in (0, 1]: fraction of the mean
    diagonal added to H. Columns are processed in blocks of ``block_size`` (rounded to a multiple of
    group_size) with lazy updates of the rest. Same returns as :func:`rtn_quantize`.
    """
    _check_weight(weight)
    out_f, in_f = weight.shape
    if hessian.shape != (in_f, in_f):
        raise ValueError(f"hessian has shape {tuple(hessian.shape)}, expected ({in_f}, {in_f}) for weight {tuple(weight.shape)}")
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
    # upper Cholesky factor of H^-1: row i holds the update coefficients for column i (GPTQ eq. 4)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    codes = torch.zeros_like(W)
    n_groups = in_f // group_size
    scales = torch.zeros(out_f, n_groups, dtype=W.dtype)
    zeros = torch.zeros_like(scales)
    for i1 in range(0, in_f, block):
        i2 = min(i1 + block, in_f)
        W1, Hinv1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2]
        Err1 = torch.zeros_like(W1)
        for i in range(i2 - i1):
            col = i1 + i
            g = col // group_size
            if col % group_size == 0:  # a new group: its grid comes from the error-updated weights
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
    w_hat = (codes - zeros.repeat_interleave(group_size, 1)) * scales.repeat_interleave(group_size, 1)
    return w_hat.float(), codes.to(torch.uint8), scales.float(), zeros.float()


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

    hooks = []
    for name in names:
        def hook(m, inp, out, name=name):
            fn(name, rows(inp[0]).detach().double())
        hooks.append(model.get_submodule(name).register_forward_hook(hook))
    was = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(**inputs) if isinstance(inputs, dict) else model(inputs)
    finally:
        model.train(was)
        for h in hooks:
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
                     hessians: dict | None = None, damp: float = 0.01) -> tuple[nn.Module, dict]:
    """Weight-only quantization of every nn.Linear of a copy of ``model``.

    method: "rtn" or "gptq" (needs ``hessians`` from :func:`collect_hessians`). This is the
    non-sequential GPTQ: every layer's Hessian comes from the float model's activations, not from
    the activations of the already-quantized earlier layers (the paper's sequential variant).
    The copy computes with the dequantized float weights (simulated quantization: the accuracy of a
    real int4 kernel); the second return value {name: (codes, scales, zeros)} is what a deployment
    would store (see :func:`int4_state`). ``model`` is not modified.
    """
    one_of("method", method, WEIGHT_ONLY_METHODS)
    if method == "gptq" and hessians is None:
        raise ValueError("method='gptq' needs hessians (collect_hessians(model, calibration_batch))")
    out = copy.deepcopy(model).eval()
    packed = {}
    for name, lin in _linears(out):
        if method == "rtn":
            w_hat, *rest = rtn_quantize(lin.weight, bits, group_size)
        else:
            w_hat, *rest = gptq_quantize(lin.weight, hessians[name], bits, group_size, damp=damp)
        with torch.no_grad():
            lin.weight.copy_(w_hat)
        packed[name] = tuple(rest)
    return out, packed


# ---------------------------------------------------------------- the saved int4 artifact
_INT4_SUFFIXES = (".qweight", ".scales", ".zeros")


def int4_state(model: nn.Module, packed: dict) -> dict:
    """The saved artifact of a 4-bit weight-only model: for every layer of ``packed`` (from
    :func:`quantize_weights`, bits <= 4) ``<name>.qweight`` (two codes per byte, (out, in/2) uint8),
    ``<name>.scales`` float16 and ``<name>.zeros`` uint8 (out, in/group_size); everything else
    (embeddings, LayerNorms, biases) as in ``model``'s float state dict. Load it with :func:`load_int4`."""
    state = {k: v for k, v in model.state_dict().items() if not any(k == f"{n}.weight" for n in packed)}
    for name, (codes, scales, zeros) in packed.items():
        state[f"{name}.qweight"] = pack_int4(codes)
        state[f"{name}.scales"] = scales.half()
        state[f"{name}.zeros"] = zeros.to(torch.uint8)
    return state


def int4_bytes(model: nn.Module, packed: dict) -> int:
    """Bytes that ``torch.save`` writes for :func:`int4_state` (``measure.serialized_bytes``)."""
    return measure.serialized_bytes(int4_state(model, packed))


@torch.no_grad()
def load_int4(model: nn.Module, state: dict) -> nn.Module:
    """Load an :func:`int4_state` into ``model`` (same architecture, float), IN PLACE.

    Each quantized weight becomes ``(code - zero) * scale`` with the stored float16 scales (so it
    equals the simulated ``w_hat`` up to float16 rounding of the scales); the other entries are
    loaded as a state dict. Raises ValueError for missing or unexpected entries. Returns model.
    """
    names = [k[: -len(".qweight")] for k in state if k.endswith(".qweight")]
    for name in names:
        lin = model.get_submodule(name)
        codes = unpack_int4(state[f"{name}.qweight"]).double()
        scales, zeros = state[f"{name}.scales"].double(), state[f"{name}.zeros"].double()
        group = codes.shape[1] // scales.shape[1]
        w = (codes - zeros.repeat_interleave(group, 1)) * scales.repeat_interleave(group, 1)
        if w.shape != lin.weight.shape:
            raise ValueError(f"{name}: stored weight has shape {tuple(w.shape)}, the model's {tuple(lin.weight.shape)}")
        lin.weight.copy_(w)
    rest = {k: v for k, v in state.items() if not k.endswith(_INT4_SUFFIXES)}
    result = model.load_state_dict(rest, strict=False)
    missing = [k for k in result.missing_keys if k not in {f"{n}.weight" for n in names}]
    if missing or result.unexpected_keys:
        raise ValueError(f"state does not fit the model: missing {missing}, unexpected {result.unexpected_keys}")
    return model
