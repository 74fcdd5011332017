"""Pruning: magnitude masks (unstructured), the random-pruning control, sensitivity scans and the
allocation of a total sparsity budget from them, gradual schedules, and channel pruning that returns a
physically smaller model.

Masks. ``magnitude_prune`` stores a 0/1 buffer ``<param>_mask`` (same shape as the weight) on each
pruned Conv2d/Linear layer and multiplies the weight by it in place. The weight stays a plain
``nn.Parameter`` (no ``weight_orig``), so the model saves, loads, measures and runs exactly like a
dense one. An optimizer step can move masked weights away from zero; ``apply_masks`` (pass it as
``training.fit(..., after_step=apply_masks)``, or use ``fine_tune``) puts them back after every step,
so masks stay applied through fine-tuning. ``remove_masks`` drops the buffers (and also folds
``torch.nn.utils.prune``'s ``weight_orig``/``weight_mask`` pairs), leaving zeros in place.

Sparsity is always the fraction of *prunable* weights (Conv2d/Linear weights, biases excluded)
that are zero, the same definition as ``measure.sparsity``.
"""
from __future__ import annotations

import copy
from typing import Callable, Iterable

import torch
from torch import nn
from torch.nn.utils import prune as tprune

from . import _validate as V
from .measure import PRUNABLE

__all__ = [
    "prunable_layers", "magnitude_mask", "magnitude_prune", "random_mask", "random_prune", "layer_sparsity",
    "apply_masks", "remove_masks", "masks", "mask_sparsity", "fine_tune", "sensitivity_scan",
    "choose_sparsities", "allocate_sparsities", "gradual_schedule",
    "GradualPruner", "filter_l1_norms", "filters_to_keep", "channel_prune",
]
# Moved out (see storage, measure, plots): sparse_encode/sparse_decode/sparse_bytes -> storage,
# linear_latency_ms -> measure.matmul_latency_ms, plot_sensitivity/plot_sparsity_curves -> plots.


# ---------------------------------------------------------------- helpers
def _fraction(name: str, value) -> float:
    """A sparsity or ratio: a number in [0, 1)."""
    return V.number_in(name, value, 0, 1, hi_open=True)


def prunable_layers(model: nn.Module, layers: Iterable[str] | None = None) -> dict[str, nn.Module]:
    """{name: module} of the Conv2d and Linear layers of ``model``, in module order.

    layers: restrict to these names (each must be a Conv2d/Linear of the model).
    Raises ValueError when the model has no prunable layer or a name is not one.
    """
    found = {name: mod for name, mod in model.named_modules() if isinstance(mod, PRUNABLE)}
    if not found:
        raise ValueError(f"model {type(model).__name__} has no prunable layer (no Conv2d or Linear)")
    if layers is None:
        return found
    layers = list(layers)
    bad = [n for n in layers if n not in found]
    if bad:
        raise ValueError(f"layers={bad!r} are not Conv2d/Linear layers of the model; valid: {list(found)}")
    if not layers:
        raise ValueError("layers=[] selects no layer to prune")
    return {n: found[n] for n in layers}


def _n_prune(sparsity: float, n: int) -> int:
    # same rounding as torch.nn.utils.prune (_compute_nparams_toprune: round(amount * n))
    return int(round(sparsity * n))


def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """0/1 mask (same shape and dtype as ``weight``) that zeroes the ``round(sparsity * n)``
    entries of smallest absolute value. sparsity in [0, 1). Pure function.

    Exactly k = round(sparsity * n) zeros, even when several weights tie at the threshold: ties are
    broken by index (a stable sort of |w|: among equal magnitudes the lower flat index goes first).
    The threshold form ``|w| > tau`` would zero every tied weight, i.e. more than k. Without ties
    the mask equals ``torch.nn.utils.prune.l1_unstructured``'s (same rounding, same k smallest);
    torch selects with ``torch.topk``, whose order among ties is unspecified.
    """
    sparsity = _fraction("sparsity", sparsity)
    if not torch.is_tensor(weight) or weight.numel() == 0:
        raise ValueError("weight must be a non-empty tensor")
    k = _n_prune(sparsity, weight.numel())
    mask = torch.ones_like(weight, memory_format=torch.contiguous_format)  # view(-1) is in logical order
    if k > 0:
        idx = torch.argsort(weight.detach().abs().flatten(), stable=True)[:k]
        mask.view(-1)[idx] = 0
    return mask


def random_mask(weight: torch.Tensor, sparsity: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """0/1 mask (same shape and dtype as ``weight``) zeroing ``round(sparsity * n)`` entries chosen
    uniformly at random, whatever their magnitude: the control that shows what the magnitude
    criterion is worth. sparsity in [0, 1); generator: a ``torch.Generator`` (the global random
    state is never touched: None means a generator seeded with 0). Pure function.
    """
    sparsity = _fraction("sparsity", sparsity)
    if not torch.is_tensor(weight) or weight.numel() == 0:
        raise ValueError("weight must be a non-empty tensor")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    k = _n_prune(sparsity, weight.numel())
    mask = torch.ones_like(weight, memory_format=torch.contiguous_format)  # view(-1) is in logical order
    if k > 0:
        idx = torch.randperm(weight.numel(), generator=g)[:k].to(weight.device)
        mask.view(-1)[idx] = 0
    return mask


def _set_mask(mod: nn.Module, mask: torch.Tensor, pname: str = "weight") -> None:
    buf = f"{pname}_mask"
    mask = mask.to(device=getattr(mod, pname).device, dtype=getattr(mod, pname).dtype)
    if buf in mod._buffers:
        mod._buffers[buf] = mask
    else:
        mod.register_buffer(buf, mask)
    with torch.no_grad():
        getattr(mod, pname).mul_(mask)


def magnitude_prune(model: nn.Module, sparsity, scope: str = "global",
                    layers: Iterable[str] | None = None) -> nn.Module:
    """Prune the smallest-magnitude weights of ``model`` IN PLACE; return the model.

    sparsity: target fraction in [0, 1) of the selected layers' weights set to zero (the total,
    not an increment: pruning again at the same sparsity changes nothing), or a dict
    {layer name: sparsity} for per-layer targets (then ``scope`` is ignored).
    scope: "global" ranks all selected weights together (one threshold for the whole model,
    as ``torch.nn.utils.prune.global_unstructured``); "layer" prunes each layer to ``sparsity``
    (as ``l1_unstructured`` on each layer).
    layers: names of the Conv2d/Linear layers to prune (default: all of them).
    Existing masks are respected: masked weights are zero, so they are ranked first.
    Stores each mask as a buffer ``weight_mask``; see ``apply_masks`` and ``remove_masks``.
    """
    return _prune(model, sparsity, scope, layers, magnitude_mask)


def _prune(model: nn.Module, sparsity, scope: str, layers, mask_fn) -> nn.Module:
    """Set ``weight_mask`` buffers from ``mask_fn(weights, fraction)``: per layer for a dict or
    scope="layer", or once over all selected weights concatenated for scope="global"."""
    if isinstance(sparsity, dict):
        mods = prunable_layers(model, list(sparsity))
        for name, mod in mods.items():
            _set_mask(mod, mask_fn(mod.weight, _fraction(f"sparsity[{name!r}]", sparsity[name])))
        return model
    sparsity = _fraction("sparsity", sparsity)
    V.one_of("scope", scope, ("global", "layer"))
    mods = prunable_layers(model, layers)
    if scope == "layer":
        for mod in mods.values():
            _set_mask(mod, mask_fn(mod.weight, sparsity))
        return model
    flat = torch.cat([m.weight.detach().flatten() for m in mods.values()])
    mask = mask_fn(flat, sparsity)
    start = 0
    for mod in mods.values():
        n = mod.weight.numel()
        _set_mask(mod, mask[start:start + n].view_as(mod.weight))
        start += n
    return model


def random_prune(model: nn.Module, sparsity, scope: str = "global", layers: Iterable[str] | None = None,
                 seed: int = 0) -> nn.Module:
    """Prune randomly chosen weights of ``model`` IN PLACE (the random-pruning control); return the model.

    sparsity: fraction in [0, 1) of the selected layers' weights set to zero, or a dict {layer name:
    sparsity} (then ``scope`` is ignored), e.g. ``layer_sparsity(magnitude_pruned_model)`` to copy a
    magnitude-pruned model's per-layer allocation so that only the choice of weights differs.
    scope: "global" draws the zeros uniformly among all selected weights (every layer ends near
    ``sparsity``); "layer" draws exactly ``round(sparsity * n)`` in each layer. seed: integer >= 0 of a
    private generator (the global random state is untouched). Existing masks are replaced. Masks
    are stored as ``weight_mask`` buffers, exactly like ``magnitude_prune``'s.
    """
    seed = V.int_in("seed", seed, 0, None)
    g = torch.Generator().manual_seed(seed)
    return _prune(model, sparsity, scope, layers, lambda w, f: random_mask(w, f, g))


def layer_sparsity(model: nn.Module, layers: Iterable[str] | None = None) -> dict[str, float]:
    """{layer name: fraction in [0, 1] of its weight entries that are exactly zero} for every
    Conv2d/Linear layer (or the named ``layers``), in module order. Biases are not counted; masked
    weights are zero, so a pruned model's allocation reads back from its weights."""
    return {name: float((mod.weight == 0).float().mean()) for name, mod in prunable_layers(model, layers).items()}


def masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """{layer name: weight mask} of the layers that carry a ``weight_mask`` buffer."""
    return {name: mod.weight_mask for name, mod in model.named_modules()
            if "weight_mask" in getattr(mod, "_buffers", {})}


def mask_sparsity(model: nn.Module) -> float:
    """Fraction in [0, 1] of masked-out entries over all masked layers (0.0 if none is masked)."""
    ms = list(masks(model).values())
    total = sum(m.numel() for m in ms)
    return 0.0 if total == 0 else sum(int((m == 0).sum()) for m in ms) / total


@torch.no_grad()
def apply_masks(model: nn.Module) -> nn.Module:
    """Multiply every masked weight by its mask, IN PLACE; return the model.

    Use as ``training.fit(model, ..., after_step=apply_masks)`` so masks survive optimizer steps.
    """
    for mod in model.modules():
        for buf_name, mask in mod._buffers.items():
            if buf_name.endswith("_mask") and mask is not None:
                pname = buf_name[:-5]
                p = mod._parameters.get(pname)
                if p is not None:
                    p.mul_(mask)
    return model


def remove_masks(model: nn.Module) -> nn.Module:
    """Make pruning permanent, IN PLACE: zeros stay in the weights, the mask buffers go.

    Also folds ``torch.nn.utils.prune`` reparametrisations (``weight_orig`` * ``weight_mask``) into
    a plain ``weight``. Returns the model, which then has the state-dict keys of a dense model.
    """
    for mod in model.modules():
        for hook in list(mod._forward_pre_hooks.values()):
            if isinstance(hook, tprune.BasePruningMethod):
                tprune.remove(mod, hook._tensor_name)
    apply_masks(model)
    for mod in model.modules():
        for buf_name in [b for b in mod._buffers if b.endswith("_mask")]:
            del mod._buffers[buf_name]
    return model


def fine_tune(model: nn.Module, train, val=None, epochs: int = 3, lr: float = 1e-3, **fit_kw):
    """``training.fit`` with masks re-applied after every optimizer step (model changed IN PLACE).

    Any ``after_step`` in ``fit_kw`` runs after the masks are re-applied. Returns the History.
    """
    from .training import fit

    extra = fit_kw.pop("after_step", None)

    def after_step(m):
        apply_masks(m)
        if extra is not None:
            extra(m)

    hist = fit(model, train, val, epochs=epochs, lr=lr, after_step=after_step, **fit_kw)
    apply_masks(model)
    return hist


# ---------------------------------------------------------------- sensitivity
def sensitivity_scan(model: nn.Module, data, sparsities=(0.5, 0.7, 0.8, 0.9, 0.95, 0.98),
                     layers: Iterable[str] | None = None, device=None) -> dict[str, list[float]]:
    """Accuracy (in [0, 1], on ``data``) with each layer pruned ALONE to each sparsity, no fine-tuning.

    model is not changed (each trial prunes a copy). sparsities: values in [0, 1).
    Returns {layer name: [accuracy per sparsity]}, in the order of ``sparsities``.
    """
    from .training import evaluate

    sparsities = [_fraction(f"sparsities[{i}]", s) for i, s in enumerate(sparsities)]
    if not sparsities:
        raise ValueError("sparsities is empty: give at least one value in [0, 1)")
    names = list(prunable_layers(model, layers))
    out = {}
    for name in names:
        accs = []
        for s in sparsities:
            trial = copy.deepcopy(model)
            magnitude_prune(trial, {name: s})
            accs.append(float(evaluate(trial, data, device=device)))
        out[name] = accs
    return out


def choose_sparsities(scan: dict[str, list[float]], sparsities, reference: float,
                      max_drop: float = 0.01) -> dict[str, float]:
    """Per layer, the highest scanned sparsity whose accuracy stays >= reference - max_drop.

    scan: output of ``sensitivity_scan`` with the same ``sparsities``; reference: the unpruned
    accuracy in [0, 1] (a fraction, not a percentage); max_drop >= 0 in accuracy units (0.01 = 1
    point). A layer for which no sparsity qualifies gets 0.0.
    """
    reference = V.number_in("reference", reference, 0, 1)
    max_drop = V.number_in("max_drop", max_drop, 0, None)
    out = {}
    for name, accs in scan.items():
        if len(accs) != len(sparsities):
            raise ValueError(f"scan[{name!r}] has {len(accs)} values but sparsities has {len(sparsities)}")
        ok = [s for s, a in zip(sparsities, accs) if a >= reference - max_drop]
        out[name] = float(max(ok)) if ok else 0.0
    return out


def _sparsity_at_drop(points: list[tuple[float, float]], floor: float) -> float:
    """The largest sparsity on the piecewise-linear curve (sparsity, accuracy), starting at (0, ref),
    before the accuracy first falls below ``floor`` (linear interpolation of the crossing)."""
    s_prev, a_prev = points[0]
    for s, a in points[1:]:
        if a < floor:
            if a_prev <= floor:
                return s_prev
            return s_prev + (s - s_prev) * (a_prev - floor) / (a_prev - a)
        s_prev, a_prev = s, a
    return s_prev


def allocate_sparsities(scan: dict[str, list[float]], sparsities, reference: float, sizes: dict[str, int],
                        target: float, tol: float = 1e-6) -> dict[str, float]:
    """Per-layer sparsities from a sensitivity scan that reach a TOTAL sparsity ``target``.

    Every layer may lose the same accuracy d when pruned alone: its sparsity is where its scanned
    curve (linear between the points (0, reference), (s_i, acc_i)) first drops below reference - d,
    capped at the largest scanned sparsity. d is found by bisection so that
    sum_l sizes[l] * s_l / sum_l sizes[l] = target (within ``tol``). This allocates a fixed budget
    the way a sensitivity scan is meant to be used, so it can be compared fairly with a global
    threshold at the same total sparsity.

    scan, sparsities, reference: as in ``choose_sparsities`` (reference in [0, 1]); sizes: {layer:
    number of weights} for every layer of ``scan`` (e.g. ``{n: m.weight.numel() for n, m in
    prunable_layers(model).items()}``); target in [0, 1). Returns {layer: sparsity in [0, 1)}.
    Raises ValueError if the scanned sparsities cannot reach ``target``.
    """
    reference = V.number_in("reference", reference, 0, 1)
    target = _fraction("target", target)
    sparsities = [_fraction(f"sparsities[{i}]", s) for i, s in enumerate(sparsities)]
    missing = [k for k in scan if k not in sizes]
    if missing:
        raise ValueError(f"sizes has no entry for layers {missing}; give the weight count of every scanned layer")
    curves = {}
    for name, accs in scan.items():
        if len(accs) != len(sparsities):
            raise ValueError(f"scan[{name!r}] has {len(accs)} values but sparsities has {len(sparsities)}")
        V.positive_int(f"sizes[{name!r}]", sizes[name])
        curves[name] = [(0.0, reference)] + sorted(zip(sparsities, accs))
    total = sum(sizes[k] for k in curves)

    def alloc(d):
        return {k: _sparsity_at_drop(pts, reference - d) for k, pts in curves.items()}

    def total_sparsity(a):
        return sum(sizes[k] * s for k, s in a.items()) / total

    reachable = total_sparsity(alloc(1.0 + reference))
    if reachable < target - tol:
        raise ValueError(f"target={target!r} is not reachable: the scanned sparsities allow at most "
                         f"{reachable:.4f} in total; scan higher sparsities")
    lo, hi = 0.0, 1.0 + reference
    for _ in range(100):
        mid = (lo + hi) / 2
        if total_sparsity(alloc(mid)) < target:
            lo = mid
        else:
            hi = mid
    a = alloc(hi)
    # the curve is continuous in d except where a scanned accuracy is flat; close any residual
    # gap by scaling the allocation (tiny in practice) so the total is exact
    got = total_sparsity(a)
    if got > 0 and abs(got - target) > tol:
        a = {k: min(s * target / got, max(sparsities)) for k, s in a.items()}
    return {k: float(s) for k, s in a.items()}


# ---------------------------------------------------------------- gradual pruning
def gradual_schedule(step: int, final_sparsity: float, total_steps: int, initial_sparsity: float = 0.0,
                     begin_step: int = 0, power: int = 3) -> float:
    """Sparsity at ``step`` of the polynomial schedule of Zhu & Gupta (2017):

        s_t = s_f + (s_i - s_f) * (1 - (t - t_0) / n) ** power,   t_0 <= t <= t_0 + n,

    s_i before ``begin_step`` (t_0), s_f after ``begin_step + total_steps``. Fast pruning at
    first while redundant weights abound, slower near the end. Sparsities in [0, 1),
    total_steps >= 1, power >= 1.
    """
    final_sparsity = _fraction("final_sparsity", final_sparsity)
    initial_sparsity = _fraction("initial_sparsity", initial_sparsity)
    total_steps = V.positive_int("total_steps", total_steps)
    power = V.positive_int("power", power)
    frac = min(max((step - begin_step) / total_steps, 0.0), 1.0)
    return final_sparsity + (initial_sparsity - final_sparsity) * (1.0 - frac) ** power


class GradualPruner:
    """An ``after_step`` callable for ``training.fit`` that prunes on a gradual schedule.

    Every ``frequency`` optimizer steps it raises the sparsity to ``schedule(t, final_sparsity,
    total_steps)`` with ``magnitude_prune(model, s, scope)``; after every step it re-applies the masks.
    total_steps: steps over which sparsity ramps (e.g. 75% of the fine-tuning steps, so the last
    epochs recover at the final sparsity). ``step`` counts the calls.

    schedule: a callable ``schedule(t, final_sparsity, total_steps) -> float``, the sparsity in
    [0, 1) at ``t = step - begin_step`` steps into the ramp (the signature of chapter 01's exercise
    ``gradual``): it should start at 0, reach ``final_sparsity`` at ``t = total_steps`` and stay there.
    Default: the library's cubic schedule ``gradual_schedule`` (Zhu & Gupta, 2017), which also
    honours ``initial_sparsity``; a schedule of your own starts from its own value, so it requires
    ``initial_sparsity=0``. The model is pruned to exactly the value the schedule returns, so two
    schedules returning the same floats prune the same weights.
    """

    def __init__(self, final_sparsity: float, total_steps: int, frequency: int = 10,
                 initial_sparsity: float = 0.0, begin_step: int = 0, scope: str = "global",
                 layers: Iterable[str] | None = None, schedule: Callable[[int, float, int], float] | None = None):
        gradual_schedule(0, final_sparsity, total_steps, initial_sparsity, begin_step)  # validates
        V.positive_int("frequency", frequency)
        V.one_of("scope", scope, ("global", "layer"))
        if schedule is None:
            schedule = gradual_schedule
        if not callable(schedule):
            raise TypeError(f"schedule={schedule!r} is not callable: pass a function "
                            "schedule(step, final_sparsity, total_steps) -> sparsity in [0, 1), "
                            "e.g. pruning.gradual_schedule (the default)")
        if schedule is not gradual_schedule and initial_sparsity != 0:
            raise ValueError(f"initial_sparsity={initial_sparsity!r} needs the default schedule: a schedule "
                             "of your own, schedule(step, final_sparsity, total_steps), sets its own start "
                             "(use initial_sparsity=0)")
        self.final_sparsity, self.total_steps, self.frequency = final_sparsity, total_steps, frequency
        self.initial_sparsity, self.begin_step, self.scope = initial_sparsity, begin_step, scope
        self.schedule = schedule
        self.layers = None if layers is None else list(layers)
        self.step = 0
        self.history: list[tuple[int, float]] = []  # (step, sparsity) at each pruning event

    def sparsity_at(self, step: int) -> float:
        """The scheduled sparsity at optimizer step ``step`` (counted like ``self.step``, from 1)."""
        t = step - self.begin_step
        if self.schedule is gradual_schedule:
            s = gradual_schedule(t, self.final_sparsity, self.total_steps, self.initial_sparsity)
        else:
            s = self.schedule(t, self.final_sparsity, self.total_steps)
        try:
            s = float(s)
        except (TypeError, ValueError):
            raise TypeError(f"schedule({t}, {self.final_sparsity}, {self.total_steps}) returned "
                            f"{type(s).__name__}, not a number (a sparsity in [0, 1))") from None
        if not 0 <= s < 1:
            raise ValueError(f"schedule({t}, {self.final_sparsity}, {self.total_steps}) returned {s!r}: "
                             "a sparsity must be in [0, 1)")
        return s

    def __call__(self, model: nn.Module) -> None:
        self.step += 1
        end = self.begin_step + self.total_steps
        if self.step >= self.begin_step and (self.step % self.frequency == 0 or self.step == end) \
                and self.step <= end:
            s = self.sparsity_at(self.step)
            magnitude_prune(model, s, self.scope, self.layers)
            self.history.append((self.step, s))
        apply_masks(model)


# ---------------------------------------------------------------- structured (channel) pruning
def filter_l1_norms(weight: torch.Tensor) -> torch.Tensor:
    """L1 norm of each output filter/unit: weight (out, ...) -> (out,), sum of |w| over the rest."""
    if not torch.is_tensor(weight) or weight.dim() < 2:
        raise ValueError("weight must be a tensor of shape (out_channels, ...) with at least 2 dims")
    return weight.detach().abs().flatten(1).sum(1)


def filters_to_keep(weight: torch.Tensor, ratio: float) -> torch.Tensor:
    """Indices (int64, ascending) of the filters kept when the fraction ``ratio`` in [0, 1) of
    filters with the smallest L1 norm is removed (Li et al., 2017).

    Removes ``round(ratio * out)`` filters; raises ValueError if that would remove all of them.
    Ties are broken by lower index first (stable sort).
    """
    ratio = _fraction("ratio", ratio)
    norms = filter_l1_norms(weight)
    n = norms.numel()
    n_keep = n - int(round(ratio * n))
    if n_keep < 1:
        raise ValueError(f"ratio={ratio!r} would remove every one of the {n} channels; use a smaller ratio")
    order = torch.sort(norms, descending=True, stable=True).indices
    return torch.sort(order[:n_keep]).values


def _slice_linear(lin: nn.Linear, out_idx=None, in_idx=None) -> nn.Linear:
    w = lin.weight.detach()
    b = lin.bias.detach() if lin.bias is not None else None
    if out_idx is not None:
        w = w[out_idx]
        b = b[out_idx] if b is not None else None
    if in_idx is not None:
        w = w[:, in_idx]
    new = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
    with torch.no_grad():
        new.weight.copy_(w)
        if b is not None:
            new.bias.copy_(b)
    return new


def _resolve_ratios(ratio, names: list[str]) -> dict[str, float]:
    if isinstance(ratio, dict):
        bad = [k for k in ratio if k not in names]
        if bad:
            raise ValueError(f"ratio has layers {bad!r} that cannot be channel-pruned; valid: {names}")
        return {k: _fraction(f"ratio[{k!r}]", ratio.get(k, 0.0)) for k in names}
    r = _fraction("ratio", ratio)
    return {k: r for k in names}


def channel_prune(model: nn.Module, ratio) -> nn.Module:
    """A NEW, physically smaller model with the weakest filters (L1 norm) removed; ``model`` is unchanged.

    ratio: fraction in [0, 1) of channels to remove in every prunable hidden layer, or a dict
    {layer name: ratio} (missing layers keep all channels). Output layers are never pruned.
    - LeNet5: prunable layers "conv1", "conv2", "fc1". Removing filter j of conv1 removes input
      channel j of conv2; removing filter j of conv2 removes the ``side*side`` columns of fc1 that
      the flatten maps from channel j; removing unit j of fc1 removes column j of fc2. Returns a
      LeNet5 with smaller ``c1``, ``c2``, ``fc`` (its ``config`` says so) and the kept weights.
    - MLP: every hidden Linear layer; returns an MLP with smaller ``hidden``.
    Pruned biases go with their filters, so the kept channels compute exactly what they did before
    (the pruned model differs only by the removed channels' contributions). Masks are removed first.
    """
    from .models import MLP, LeNet5

    prunable_layers(model)  # raises for a model with no Conv2d/Linear
    src = remove_masks(copy.deepcopy(model)).cpu()
    if isinstance(src, LeNet5):
        r = _resolve_ratios(ratio, ["conv1", "conv2", "fc1"])
        k1 = filters_to_keep(src.conv1.weight, r["conv1"])
        k2 = filters_to_keep(src.conv2.weight, r["conv2"])
        k3 = filters_to_keep(src.fc1.weight, r["fc1"])
        cfg = dict(src.config, c1=len(k1), c2=len(k2), fc=len(k3))
        new = LeNet5(**cfg)
        side2 = src.fc1.in_features // src.conv2.out_channels  # side * side positions per channel
        cols = (k2.view(-1, 1) * side2 + torch.arange(side2).view(1, -1)).flatten()
        with torch.no_grad():
            new.conv1.weight.copy_(src.conv1.weight[k1])
            new.conv1.bias.copy_(src.conv1.bias[k1])
            new.conv2.weight.copy_(src.conv2.weight[k2][:, k1])
            new.conv2.bias.copy_(src.conv2.bias[k2])
            new.fc1.weight.copy_(src.fc1.weight[k3][:, cols])
            new.fc1.bias.copy_(src.fc1.bias[k3])
            new.fc2.weight.copy_(src.fc2.weight[:, k3])
            new.fc2.bias.copy_(src.fc2.bias)
        return new.eval()
    if isinstance(src, MLP):
        lins = [m for m in src.net if isinstance(m, nn.Linear)]
        names = [f"net.{i}" for i, m in enumerate(src.net) if isinstance(m, nn.Linear)][:-1]
        r = _resolve_ratios(ratio, names)
        keeps = [filters_to_keep(lin.weight, r[n]) for lin, n in zip(lins[:-1], names)]
        new = MLP(src.config["in_features"], tuple(len(k) for k in keeps), src.config["num_classes"])
        new_lins = [m for m in new.net if isinstance(m, nn.Linear)]
        prev = None
        for i, lin in enumerate(lins):
            out_idx = keeps[i] if i < len(keeps) else None
            sliced = _slice_linear(lin, out_idx, prev)
            with torch.no_grad():
                new_lins[i].weight.copy_(sliced.weight)
                new_lins[i].bias.copy_(sliced.bias)
            prev = out_idx
        return new.eval()
    raise TypeError(f"channel_prune supports LeNet5 and MLP, not {type(model).__name__}")


# ---------------------------------------------------------------- attention heads (BERT encoders, chapter 6)
def heads_per_layer(model: nn.Module) -> list[int]:
    """Number of attention heads left in each layer of a BERT encoder (``transformers.BertModel``)."""
    from .models import check_bert
    check_bert(model)
    return [layer.attention.self.num_attention_heads for layer in model.encoder.layer]


def _head_mask_hooks(model: nn.Module, mask: torch.Tensor) -> list:
    """Hooks multiplying each head's context vectors by mask[layer, head] (the input of each layer's
    attention.output.dense); remove them with ``h.remove()``. mask: (layers, heads), read at call time."""
    hooks = []
    for i, layer in enumerate(model.encoder.layer):
        d = layer.attention.self.attention_head_size

        def pre(mod, args, i=i, d=d):
            x = args[0]
            return (x * mask[i].to(x.dtype).repeat_interleave(d),)
        hooks.append(layer.attention.output.dense.register_forward_pre_hook(pre))
    return hooks


def head_importance(model: nn.Module, loss) -> torch.Tensor:
    """Importance of every attention head of a BERT encoder, (layers, heads) float64: ``loss(model)``
    (a float, higher is worse) while that single head is switched off (its context vectors zeroed).

    loss: e.g. ``bert.cosine_loss(batch, ref)``, 1 - the mean cosine similarity of the embeddings to
    the unpruned model's. One call of ``loss`` per head; ``model`` is unchanged afterwards. Every
    layer must have the same number of heads (score before pruning).
    """
    heads = heads_per_layer(model)
    if len(set(heads)) != 1:
        raise ValueError("head_importance needs the same number of heads in every layer (prune after scoring)")
    n_layers, n_heads = len(heads), heads[0]
    mask = torch.ones(n_layers, n_heads)
    hooks = _head_mask_hooks(model, mask)
    scores = torch.zeros(n_layers, n_heads, dtype=torch.float64)
    try:
        for i in range(n_layers):
            for h in range(n_heads):
                mask[i, h] = 0
                scores[i, h] = float(loss(model))
                mask[i, h] = 1
    finally:
        for hk in hooks:
            hk.remove()
    return scores


def heads_to_prune(importance: torch.Tensor, n: int) -> dict:
    """{layer: [heads]}: the ``n`` least important heads overall, keeping at least one head per layer.
    importance: (layers, heads); n in [0, layers * (heads - 1)]."""
    n_layers, n_heads = importance.shape
    n = V.int_in("n", n, 0, n_layers * (n_heads - 1))
    left = [n_heads] * n_layers
    out: dict = {}
    for idx in importance.flatten().argsort().tolist():
        if sum(len(v) for v in out.values()) == n:
            break
        layer, head = divmod(idx, n_heads)
        if left[layer] > 1:
            out.setdefault(layer, []).append(head)
            left[layer] -= 1
    return {k: sorted(v) for k, v in sorted(out.items())}


def prune_heads(model: nn.Module, heads: dict) -> nn.Module:
    """A copy of a BERT encoder with the attention heads {layer: [head indices]} physically removed:
    the query/key/value output rows and the attention-output input columns of those heads are cut,
    so the model is smaller and faster. At least one head must stay in every layer."""
    n_layers = len(heads_per_layer(model))
    out = copy.deepcopy(model)
    for layer_idx, hs in heads.items():
        V.int_in("layer", layer_idx, 0, n_layers - 1)
        att = out.encoder.layer[layer_idx].attention
        n_heads, d = att.self.num_attention_heads, att.self.attention_head_size
        hs = sorted(set(hs))
        if any(not 0 <= h < n_heads for h in hs):
            raise ValueError(f"layer {layer_idx}: heads {hs} must be in [0, {n_heads})")
        if len(hs) >= n_heads:
            raise ValueError(f"layer {layer_idx}: cannot remove all {n_heads} heads")
        keep = torch.tensor([h for h in range(n_heads) if h not in hs])
        idx = (keep[:, None] * d + torch.arange(d)).flatten()
        for nm in ("query", "key", "value"):
            setattr(att.self, nm, _slice_linear(getattr(att.self, nm), out_idx=idx))
        att.output.dense = _slice_linear(att.output.dense, in_idx=idx)
        att.self.num_attention_heads = len(keep)
        att.self.all_head_size = len(keep) * d
    return out.eval()


