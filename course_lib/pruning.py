"""Pruning: magnitude masks (unstructured), sensitivity scans, gradual schedules, and channel
pruning that returns a physically smaller model.

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
import json
import lzma
import struct
import warnings
import zlib
from typing import Iterable

import numpy as np
import torch
from torch import nn

from .measure import PRUNABLE

__all__ = [
    "prunable_layers", "magnitude_mask", "magnitude_prune", "apply_masks", "remove_masks", "masks",
    "mask_sparsity", "fine_tune", "sensitivity_scan", "choose_sparsities", "gradual_schedule",
    "GradualPruner", "filter_l1_norms", "filters_to_keep", "channel_prune", "sparse_encode",
    "sparse_decode", "sparse_bytes", "linear_latency_ms", "plot_sensitivity", "plot_sparsity_curves",
]


# ---------------------------------------------------------------- helpers
def _check_sparsity(sparsity, name: str = "sparsity") -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 <= float(sparsity) < 1.0:
        raise ValueError(f"{name}={sparsity!r} must be a number in [0, 1)")
    return float(sparsity)


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

    Picks exactly the entries ``torch.nn.utils.prune.l1_unstructured`` picks (same rounding,
    same ``torch.topk`` selection, so even ties are broken the same way).
    """
    sparsity = _check_sparsity(sparsity)
    if not torch.is_tensor(weight) or weight.numel() == 0:
        raise ValueError("weight must be a non-empty tensor")
    k = _n_prune(sparsity, weight.numel())
    mask = torch.ones_like(weight)
    if k > 0:
        idx = torch.topk(weight.detach().abs().flatten(), k, largest=False).indices
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
    if isinstance(sparsity, dict):
        mods = prunable_layers(model, list(sparsity))
        for name, mod in mods.items():
            _set_mask(mod, magnitude_mask(mod.weight, _check_sparsity(sparsity[name], f"sparsity[{name!r}]")))
        return model
    sparsity = _check_sparsity(sparsity)
    if scope not in ("global", "layer"):
        raise ValueError(f"scope={scope!r} must be 'global' or 'layer'")
    mods = prunable_layers(model, layers)
    if scope == "layer":
        for mod in mods.values():
            _set_mask(mod, magnitude_mask(mod.weight, sparsity))
        return model
    flat = torch.cat([m.weight.detach().flatten() for m in mods.values()])
    mask = magnitude_mask(flat, sparsity)
    start = 0
    for mod in mods.values():
        n = mod.weight.numel()
        _set_mask(mod, mask[start:start + n].view_as(mod.weight))
        start += n
    return model


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
    from torch.nn.utils import prune as tprune

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

    sparsities = [_check_sparsity(s, "sparsities[i]") for s in sparsities]
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
    accuracy in [0, 1]; max_drop >= 0 in accuracy units (0.01 = 1 point). A layer for which no
    sparsity qualifies gets 0.0.
    """
    if not max_drop >= 0:
        raise ValueError(f"max_drop={max_drop!r} must be >= 0")
    out = {}
    for name, accs in scan.items():
        if len(accs) != len(sparsities):
            raise ValueError(f"scan[{name!r}] has {len(accs)} values but sparsities has {len(sparsities)}")
        ok = [s for s, a in zip(sparsities, accs) if a >= reference - max_drop]
        out[name] = float(max(ok)) if ok else 0.0
    return out


# ---------------------------------------------------------------- gradual pruning
def gradual_schedule(step: int, final_sparsity: float, total_steps: int, initial_sparsity: float = 0.0,
                     begin_step: int = 0, power: int = 3) -> float:
    """Sparsity at ``step`` of the polynomial schedule of Zhu & Gupta (2017):

        s_t = s_f + (s_i - s_f) * (1 - (t - t_0) / n) ** power,   t_0 <= t <= t_0 + n,

    s_i before ``begin_step`` (t_0), s_f after ``begin_step + total_steps``. Fast pruning at
    first while redundant weights abound, slower near the end. Sparsities in [0, 1),
    total_steps >= 1, power >= 1.
    """
    final_sparsity = _check_sparsity(final_sparsity, "final_sparsity")
    initial_sparsity = _check_sparsity(initial_sparsity, "initial_sparsity")
    if not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps={total_steps!r} must be an integer >= 1")
    if not isinstance(power, int) or power < 1:
        raise ValueError(f"power={power!r} must be an integer >= 1")
    frac = min(max((step - begin_step) / total_steps, 0.0), 1.0)
    return final_sparsity + (initial_sparsity - final_sparsity) * (1.0 - frac) ** power


class GradualPruner:
    """An ``after_step`` callable for ``training.fit`` that prunes on the Zhu & Gupta schedule.

    Every ``frequency`` optimizer steps it raises the sparsity to ``gradual_schedule(step, ...)``
    with ``magnitude_prune(model, s, scope)``; after every step it re-applies the masks.
    total_steps: steps over which sparsity ramps (e.g. 75% of the fine-tuning steps, so the last
    epochs recover at the final sparsity). ``step`` counts the calls.
    """

    def __init__(self, final_sparsity: float, total_steps: int, frequency: int = 10,
                 initial_sparsity: float = 0.0, begin_step: int = 0, scope: str = "global",
                 layers: Iterable[str] | None = None):
        gradual_schedule(0, final_sparsity, total_steps, initial_sparsity, begin_step)  # validates
        if not isinstance(frequency, int) or frequency < 1:
            raise ValueError(f"frequency={frequency!r} must be an integer >= 1")
        if scope not in ("global", "layer"):
            raise ValueError(f"scope={scope!r} must be 'global' or 'layer'")
        self.final_sparsity, self.total_steps, self.frequency = final_sparsity, total_steps, frequency
        self.initial_sparsity, self.begin_step, self.scope = initial_sparsity, begin_step, scope
        self.layers = None if layers is None else list(layers)
        self.step = 0
        self.history: list[tuple[int, float]] = []  # (step, sparsity) at each pruning event

    def __call__(self, model: nn.Module) -> None:
        self.step += 1
        end = self.begin_step + self.total_steps
        if self.step >= self.begin_step and (self.step % self.frequency == 0 or self.step == end) \
                and self.step <= end:
            s = gradual_schedule(self.step, self.final_sparsity, self.total_steps, self.initial_sparsity,
                                 self.begin_step)
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
    ratio = _check_sparsity(ratio, "ratio")
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
        return {k: _check_sparsity(ratio.get(k, 0.0), f"ratio[{k!r}]") for k in names}
    r = _check_sparsity(ratio, "ratio")
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


# ---------------------------------------------------------------- sparse storage
_FORMATS = ("dense", "bitmask", "csr")
_MAGIC = b"CSP1"


def sparse_encode(model_or_state, fmt: str = "bitmask", compress: str | None = "lzma") -> bytes:
    """Serialise a (pruned) model's weights in a sparse format; return the bytes.

    fmt: "dense" (every float32), "bitmask" (1 bit per weight saying zero/non-zero, then the
    non-zero float32 values) or "csr" (per row of the 2-D view (out, rest): row pointers as int32,
    column indices as uint16/int32, non-zero float32 values). Tensors that are not 2-D or more
    (biases) are stored dense. compress: None, "zlib" or "lzma" (entropy coding of the whole blob).
    ``sparse_decode`` reads it back exactly.
    """
    from .measure import effective_state_dict

    if fmt not in _FORMATS:
        raise ValueError(f"fmt={fmt!r} must be one of {_FORMATS}")
    if compress not in (None, "zlib", "lzma"):
        raise ValueError(f"compress={compress!r} must be None, 'zlib' or 'lzma'")
    state = model_or_state if isinstance(model_or_state, dict) else effective_state_dict(model_or_state)
    header, chunks = [], []
    for name, t in state.items():
        a = t.detach().cpu().to(torch.float32).numpy() if t.is_floating_point() else None
        if a is None:
            continue  # integer buffers (e.g. BatchNorm's num_batches_tracked) are not weights
        kind = fmt if a.ndim >= 2 else "dense"
        if kind == "dense":
            parts = [a.astype("<f4").tobytes()]
        elif kind == "bitmask":
            nz = a.ravel() != 0
            parts = [np.packbits(nz).tobytes(), a.ravel()[nz].astype("<f4").tobytes()]
        else:
            m = a.reshape(a.shape[0], -1)
            rows, cols = np.nonzero(m)
            idx_t = "<u2" if m.shape[1] <= 65536 else "<i4"
            ptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=m.shape[0]))]).astype("<i4")
            parts = [ptr.tobytes(), cols.astype(idx_t).tobytes(), m[rows, cols].astype("<f4").tobytes()]
        header.append([name, list(a.shape), kind, [len(p) for p in parts]])
        chunks.extend(parts)
    head = json.dumps(header, separators=(",", ":")).encode()
    blob = struct.pack("<I", len(head)) + head + b"".join(chunks)
    tag = {None: b"N", "zlib": b"Z", "lzma": b"L"}[compress]
    if compress == "zlib":
        blob = zlib.compress(blob, 9)
    elif compress == "lzma":
        blob = lzma.compress(blob, preset=9 | lzma.PRESET_EXTREME)
    return _MAGIC + tag + blob


def sparse_decode(blob: bytes) -> dict[str, torch.Tensor]:
    """Inverse of ``sparse_encode``: the float32 state dict {name: tensor}, bit-exact."""
    if not isinstance(blob, (bytes, bytearray)) or bytes(blob[:4]) != _MAGIC:
        raise ValueError("blob is not the output of sparse_encode (bad magic bytes)")
    tag, body = bytes(blob[4:5]), bytes(blob[5:])
    if tag == b"Z":
        body = zlib.decompress(body)
    elif tag == b"L":
        body = lzma.decompress(body)
    (hlen,) = struct.unpack("<I", body[:4])
    header = json.loads(body[4:4 + hlen])
    pos, out = 4 + hlen, {}
    for name, shape, kind, lens in header:
        parts = []
        for n in lens:
            parts.append(body[pos:pos + n])
            pos += n
        size = int(np.prod(shape)) if shape else 1
        if kind == "dense":
            a = np.frombuffer(parts[0], "<f4").reshape(shape)
        elif kind == "bitmask":
            nz = np.unpackbits(np.frombuffer(parts[0], np.uint8), count=size).astype(bool)
            a = np.zeros(size, np.float32)
            a[nz] = np.frombuffer(parts[1], "<f4")
            a = a.reshape(shape)
        else:
            rows_n = shape[0]
            ncols = size // rows_n
            ptr = np.frombuffer(parts[0], "<i4")
            idx_t = "<u2" if ncols <= 65536 else "<i4"
            cols = np.frombuffer(parts[1], idx_t).astype(np.int64)
            vals = np.frombuffer(parts[2], "<f4")
            m = np.zeros((rows_n, ncols), np.float32)
            rows = np.repeat(np.arange(rows_n), np.diff(ptr))
            m[rows, cols] = vals
            a = m.reshape(shape)
        out[name] = torch.from_numpy(a.copy())
    return out


def sparse_bytes(model_or_state, fmt: str = "bitmask", compress: str | None = "lzma") -> int:
    """Bytes of ``sparse_encode(model_or_state, fmt, compress)``."""
    return len(sparse_encode(model_or_state, fmt, compress))


# ---------------------------------------------------------------- sparse kernels and figures
def linear_latency_ms(weight: torch.Tensor, batch_size: int = 64, sparse: bool = False, threads: int = 1,
                      repeats: int = 30) -> float:
    """Median ms of ``x @ weight.T`` for x of shape (batch_size, in), single-threaded by default.

    weight: (out, in) float32. sparse=True stores ``weight`` in CSR (``torch.sparse_csr``) and
    multiplies with the sparse kernel, which skips the zeros; False uses the dense kernel, which does not.
    """
    from .measure import num_threads, time_fn
    import statistics

    if not torch.is_tensor(weight) or weight.dim() != 2:
        raise ValueError("weight must be a 2-D tensor (out_features, in_features)")
    x = torch.randn(batch_size, weight.shape[1], generator=torch.Generator().manual_seed(0))
    w = weight.detach().cpu().float()
    with num_threads(threads), torch.inference_mode():
        if sparse:
            with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta": known, not news
                warnings.simplefilter("ignore", UserWarning)
                w_csr = w.to_sparse_csr()
            xt = x.t().contiguous()
            times = time_fn(lambda: torch.sparse.mm(w_csr, xt), repeats)
        else:
            times = time_fn(lambda: x @ w.t(), repeats)
    return statistics.median(times)


def plot_sensitivity(scan: dict[str, list[float]], sparsities, reference: float | None = None):
    """Accuracy (%) against sparsity, one line per layer pruned alone (output of ``sensitivity_scan``)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, accs in scan.items():
        ax.plot([100 * s for s in sparsities], [100 * a for a in accs], marker="o", label=name)
    if reference is not None:
        ax.axhline(100 * reference, color="k", ls="--", lw=1, label="unpruned")
    ax.set(xlabel="sparsity of that layer (%)", ylabel="accuracy (%)", title="sensitivity scan (no fine-tuning)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_sparsity_curves(curves: dict[str, tuple], reference: float | None = None, ylim=None):
    """Accuracy (%) against sparsity (%) for {label: (sparsities, accuracies)}; dashed line at ``reference``."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    for label, (sps, accs) in curves.items():
        ax.plot([100 * s for s in sps], [100 * a for a in accs], marker="o", label=label)
    if reference is not None:
        ax.axhline(100 * reference, color="k", ls="--", lw=1, label="dense baseline")
    ax.set(xlabel="global sparsity (%)", ylabel="test accuracy (%)", title="accuracy vs sparsity")
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
