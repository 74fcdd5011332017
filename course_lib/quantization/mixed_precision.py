"""Mixed precision under a budget: a bit width per linear layer, chosen by per-layer sensitivity and a
greedy allocation that meets a stated budget on a validation metric at the fewest bytes (in the spirit
of NNCF's accuracy control: quantize everything, then give precision back to the layers that need it
most, one at a time, until the metric is within the budget).

Everything works on any model with ``nn.Linear`` layers and any score: a callable ``score(model) ->
float`` (higher is better, e.g. recall@1 on validation queries). The quantized weights are computed
once per layer and bit width (``weights``: {name: {bits: tensor (out, in)}}, e.g. from
:func:`~course_lib.quantization.weight_only.quantize_weights`, whose non-sequential layers do not depend
on each other, so they can be mixed freely) and swapped into one working copy of the model. Bit width
``FLOAT_BITS`` (32) means the model's own float weight.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from .._validate import positive_int
from .fakequant import FLOAT_BITS  # 32: the layer keeps its float weight

__all__ = ["apply_bits", "layer_sensitivity", "allocation_bytes", "greedy_allocation"]


def _check_weights(model: nn.Module, weights: dict) -> dict:
    """{name: nn.Linear} of the layers ``weights`` names; every weight must have the layer's shape."""
    if not isinstance(weights, dict) or not weights:
        raise ValueError("weights must be a non-empty dict {layer name: {bits: weight tensor}}")
    layers = {}
    for name, by_bits in weights.items():
        try:
            lin = model.get_submodule(name)
        except AttributeError:
            lin = None
        if not isinstance(lin, nn.Linear):
            raise ValueError(f"weights: {name!r} is not an nn.Linear layer of the model")
        for bits, w in by_bits.items():
            if tuple(w.shape) != tuple(lin.weight.shape):
                raise ValueError(f"weights[{name!r}][{bits}] has shape {tuple(w.shape)}, "
                                 f"the layer's is {tuple(lin.weight.shape)}")
        layers[name] = lin
    return layers


def _check_config(config: dict, weights: dict) -> None:
    for name, bits in config.items():
        if name not in weights:
            raise ValueError(f"config names {name!r}, which weights does not hold")
        if bits != FLOAT_BITS and bits not in weights[name]:
            raise ValueError(f"config[{name!r}]={bits!r}: weights hold {sorted(weights[name])} bits (or {FLOAT_BITS}: float)")


@torch.no_grad()
def apply_bits(model: nn.Module, weights: dict, config: dict) -> nn.Module:
    """A copy of ``model`` (eval mode) whose layer ``name`` computes with ``weights[name][config[name]]``
    (config: {name: bits}; bits ``FLOAT_BITS`` or a layer left out keeps the float weight).
    ``model`` is not modified."""
    _check_weights(model, weights)
    _check_config(config, weights)
    out = copy.deepcopy(model).eval()
    for name, bits in config.items():
        if bits != FLOAT_BITS:
            out.get_submodule(name).weight.copy_(weights[name][bits])
    return out


@torch.no_grad()
def layer_sensitivity(model: nn.Module, weights: dict, score) -> dict:
    """The score with ONE layer quantized at a time, every other layer float: {name: {bits: score}},
    one call of ``score(model_copy)`` per layer and bit width in ``weights``; also
    ``{name: {FLOAT_BITS: score of the float model}}`` (the same value for every layer).
    ``model`` is not modified (one working copy, each weight restored after its calls)."""
    work = copy.deepcopy(model).eval()
    layers = _check_weights(work, weights)
    base = float(score(work))
    out = {}
    for name, by_bits in weights.items():
        w = layers[name].weight
        keep = w.detach().clone()
        out[name] = {}
        for bits in sorted(by_bits):
            w.copy_(by_bits[bits])
            out[name][bits] = float(score(work))
        w.copy_(keep)
        out[name][FLOAT_BITS] = base
    return out


def allocation_bytes(config: dict, sizes: dict) -> int:
    """Total bytes of an allocation: the sum of ``sizes[name][config[name]]`` (sizes: {name: {bits:
    bytes}}, e.g. from :func:`~course_lib.quantization.weight_only.layer_bytes`, with an entry for
    ``FLOAT_BITS``)."""
    missing = [(n, b) for n, b in config.items() if n not in sizes or b not in sizes[n]]
    if missing:
        raise ValueError(f"sizes has no entry for (layer, bits) {missing}")
    return int(sum(sizes[n][b] for n, b in config.items()))


@torch.no_grad()
def greedy_allocation(model: nn.Module, weights: dict, sizes: dict, sensitivity: dict, score, budget: float,
                      ladder=(4, 8, FLOAT_BITS), max_steps: int | None = None) -> list[dict]:
    """Greedy bit allocation under a budget on ``score`` (higher is better).

    Start with every layer of ``weights`` at ``ladder[0]`` bits. While ``score(model)`` is below
    ``budget``, move ONE layer one rung up the ladder (e.g. 4 -> 8 -> float): the move with the largest
    estimated metric gain per extra byte, the gain estimated from ``sensitivity`` (from
    :func:`layer_sensitivity`: sensitivity[name][next] - sensitivity[name][current]; a move with no
    estimated gain still costs bytes, so it comes after every move with one; ties go to the cheaper
    move, then to the layer order). Each move is followed by one call of ``score``.
    sizes: {name: {bits: bytes}} for every rung; ladder: increasing bit widths, each in ``weights``
    (or ``FLOAT_BITS``); max_steps: at most this many moves (None: until the budget is met or every
    layer is at the top rung).

    Returns the path: a list of {"step", "moved" (name, from, to) or None, "config" {name: bits},
    "bytes", "score", "meets" (score >= budget)}; the first entry is the start, the last the result.
    ``model`` is not modified.
    """
    ladder = tuple(ladder)
    if len(ladder) < 2 or any(b >= c for b, c in zip(ladder, ladder[1:])):
        raise ValueError(f"ladder={ladder!r} must list at least two increasing bit widths")
    if max_steps is not None:
        positive_int("max_steps", max_steps)
    work = copy.deepcopy(model).eval()
    layers = _check_weights(work, weights)
    for name in weights:
        for bits in ladder:
            if bits != FLOAT_BITS and bits not in weights[name]:
                raise ValueError(f"weights[{name!r}] has no {bits}-bit weight (ladder={ladder!r})")
            if bits not in sizes.get(name, {}):
                raise ValueError(f"sizes[{name!r}] has no entry for {bits} bits")
            if bits not in sensitivity.get(name, {}):
                raise ValueError(f"sensitivity[{name!r}] has no entry for {bits} bits")
    floats = {n: layers[n].weight.detach().clone() for n in weights}
    config = dict.fromkeys(weights, ladder[0])

    def set_bits(name, bits):
        layers[name].weight.copy_(floats[name] if bits == FLOAT_BITS else weights[name][bits])

    for name in weights:
        set_bits(name, ladder[0])
    value = float(score(work))
    path = [{"step": 0, "moved": None, "config": dict(config), "bytes": allocation_bytes(config, sizes),
             "score": value, "meets": value >= budget}]
    order = {n: i for i, n in enumerate(weights)}
    while value < budget and (max_steps is None or len(path) - 1 < max_steps):
        moves = []
        for name, bits in config.items():
            if bits == ladder[-1]:
                continue
            nxt = ladder[ladder.index(bits) + 1]
            gain = sensitivity[name][nxt] - sensitivity[name][bits]
            cost = sizes[name][nxt] - sizes[name][bits]
            moves.append((gain > 0, gain / max(cost, 1), -cost, -order[name], name, bits, nxt))
        if not moves:
            break
        *_, name, bits, nxt = max(moves)
        config[name] = nxt
        set_bits(name, nxt)
        value = float(score(work))
        path.append({"step": len(path), "moved": (name, bits, nxt), "config": dict(config),
                     "bytes": allocation_bytes(config, sizes), "score": value, "meets": value >= budget})
    return path
