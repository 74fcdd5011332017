"""The measurement toolkit: parameters, zeros, MACs, bytes on disk and CPU latency.

Models pruned with ``torch.nn.utils.prune`` (``weight_orig`` + ``weight_mask``) are measured
by their effective weights, so both pruning styles count the same way.
"""
from __future__ import annotations

import io
import lzma
import os
import statistics
import time
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import torch
from torch import nn

PRUNABLE = (nn.Conv2d, nn.Linear)


def effective_state_dict(model: nn.Module) -> dict:
    """State dict with ``torch.nn.utils.prune``'s ``*_orig``/``*_mask`` pairs folded into the weight."""
    out = {}
    for k, v in model.state_dict().items():
        if k.endswith("_mask"):
            continue
        if k.endswith("_orig"):
            mod_name, _, pname = k[:-5].rpartition(".")
            mod = model.get_submodule(mod_name) if mod_name else model
            out[k[:-5]] = getattr(mod, pname).detach()
        else:
            out[k] = v
    return out


def _effective_params(model: nn.Module):
    for mod_name, mod in model.named_modules():
        for pname, p in mod.named_parameters(recurse=False):
            if pname.endswith("_orig"):
                yield f"{mod_name}.{pname[:-5]}", getattr(mod, pname[:-5])
            else:
                yield f"{mod_name}.{pname}", p


def count_params(model: nn.Module) -> int:
    """Number of parameter values (weights and biases; buffers such as masks excluded)."""
    return sum(p.numel() for _, p in _effective_params(model))


def count_nonzero(model: nn.Module) -> int:
    """Number of parameter values that are not exactly zero (after masks are applied)."""
    return sum(int((p != 0).sum()) for _, p in _effective_params(model))


def prunable_weights(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(name, effective weight) of every Conv2d and Linear layer, in module order."""
    out = []
    for name, mod in model.named_modules():
        if isinstance(mod, PRUNABLE):
            out.append((name, mod.weight))
    return out


def sparsity(model: nn.Module) -> float:
    """Fraction in [0, 1] of Conv2d/Linear weights that are exactly zero (biases not counted)."""
    ws = prunable_weights(model)
    if not ws:
        raise ValueError("model has no Conv2d or Linear layer: sparsity is undefined")
    total = sum(w.numel() for _, w in ws)
    zeros = sum(int((w == 0).sum()) for _, w in ws)
    return zeros / total


def _check_shape(input_shape) -> tuple:
    shape = tuple(input_shape)
    if len(shape) == 0 or any((not isinstance(s, int)) or s < 1 for s in shape):
        raise ValueError(f"input_shape={input_shape!r} must be a tuple of positive ints, e.g. (1, 28, 28)")
    return shape


def macs_by_layer(model: nn.Module, input_shape: tuple, sparse: bool = False) -> dict:
    """Multiply-accumulates per Conv2d/Linear layer for ONE input of ``input_shape`` (C, H, W).

    sparse=True counts only the MACs of non-zero weights (what a sparse kernel could skip to).
    Returns {layer name: int}.
    """
    shape = _check_shape(input_shape)
    counts, hooks = {}, []

    def hook(name):
        def fn(mod, inp, out):
            w = mod.weight
            per_weight = out.numel() // out.shape[1] if isinstance(mod, nn.Conv2d) else out.numel() // out.shape[-1]
            # each output value of a conv uses (cin/groups * kh * kw) weights; each weight is used
            # once per output position, i.e. per_weight times.
            n = int((w != 0).sum()) if sparse else w.numel()
            counts[name] = counts.get(name, 0) + n * per_weight
        return fn

    for name, mod in model.named_modules():
        if isinstance(mod, PRUNABLE):
            hooks.append(mod.register_forward_hook(hook(name)))
    try:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        was = model.training
        model.eval()
        with torch.no_grad():
            model(torch.zeros((1, *shape), device=device))
        model.train(was)
    finally:
        for h in hooks:
            h.remove()
    return counts


def macs(model: nn.Module, input_shape: tuple, sparse: bool = False) -> int:
    """Total multiply-accumulates of Conv2d and Linear layers for one input of shape (C, H, W).

    FLOPs are about 2x MACs. sparse=True skips zero weights.
    """
    return sum(macs_by_layer(model, input_shape, sparse).values())


def serialize(model_or_state) -> bytes:
    """The bytes ``torch.save`` writes for the model's (effective) state dict."""
    state = model_or_state if isinstance(model_or_state, dict) else effective_state_dict(model_or_state)
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu().contiguous() for k, v in state.items()}, buf)
    return buf.getvalue()


COMPRESSORS = {
    "zlib": lambda b: zlib.compress(b, 9),
    "lzma": lambda b: lzma.compress(b, preset=9 | lzma.PRESET_EXTREME),
}


def size_bytes(model, compress: str | None = None) -> int:
    """Bytes of the saved artifact.

    model: an nn.Module (its state dict as ``torch.save`` writes it), a state dict, raw bytes,
    or a path to a file. compress: None, "zlib" or "lzma" (entropy coding of those bytes).
    """
    if compress is not None and compress not in COMPRESSORS:
        raise ValueError(f"compress={compress!r} must be None, 'zlib' or 'lzma'")
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if not path.is_file():
            raise FileNotFoundError(f"size_bytes: no file at {path}")
        data = path.read_bytes() if compress else None
        return os.path.getsize(path) if compress is None else len(COMPRESSORS[compress](data))
    data = model if isinstance(model, (bytes, bytearray)) else serialize(model)
    return len(data) if compress is None else len(COMPRESSORS[compress](bytes(data)))


@contextmanager
def num_threads(n: int):
    """Temporarily set PyTorch's intra-op thread count (n >= 1)."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"threads={n!r} must be a positive integer")
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def time_fn(fn: Callable[[], object], repeats: int = 30, warmup: int = 5) -> list[float]:
    """Call ``fn()`` ``warmup`` times untimed, then ``repeats`` times; return each time in ms."""
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats={repeats!r} must be a positive integer")
    if not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup={warmup!r} must be an integer >= 0")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def latency_ms(model, input_shape: tuple, batch_size: int = 64, threads: int = 1,
               repeats: int = 30, warmup: int = 5) -> float:
    """Median wall time in ms of one forward pass on a batch of ``batch_size`` inputs.

    model: an nn.Module (run on the CPU under inference_mode) or any callable taking a float32
    tensor of shape (batch_size, *input_shape). threads: intra-op threads during the measurement
    (1 = the course's standard single-thread figure).
    """
    shape = _check_shape(input_shape)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive integer")
    x = torch.randn((batch_size, *shape), generator=torch.Generator().manual_seed(0))
    if isinstance(model, nn.Module):
        model = model.cpu().eval()
    with num_threads(threads), torch.inference_mode():
        times = time_fn(lambda: model(x), repeats, warmup)
    return statistics.median(times)


def compare_latency(models: dict, input_shape: tuple, rounds: int = 3, batch_size: int = 64,
                    threads: int = 1, repeats: int = 20) -> dict:
    """{name: latency in ms} for several models measured in interleaved rounds.

    Each round calls ``measure.latency_ms`` (median of ``repeats`` single-thread forward passes of
    a batch of ``batch_size``) on every model in turn; the result is the median over ``rounds``, so
    a burst of load on a shared machine hits all models alike. rounds >= 1.
    """
    if not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds={rounds!r} must be a positive integer")
    times = {k: [] for k in models}
    for _ in range(rounds):
        for k, m in models.items():
            times[k].append(latency_ms(m, input_shape, batch_size=batch_size, threads=threads,
                                       repeats=repeats))
    return {k: statistics.median(v) for k, v in times.items()}


def summarize(model: nn.Module, name: str, test, input_shape: tuple, accuracy: float | None = None,
              latency: bool = True, **extra) -> dict:
    """One results record (DESIGN.md format) for ``model``: accuracy on ``test``, size_bytes,
    params, nonzero, macs, latency_ms (single thread, batch 64), sparsity, plus ``extra`` fields."""
    from .training import evaluate
    rec = {"name": name,
           "accuracy": float(evaluate(model, test)) if accuracy is None else float(accuracy),
           "size_bytes": size_bytes(model),
           "params": count_params(model),
           "nonzero": count_nonzero(model),
           "macs": macs(model, input_shape),
           "latency_ms": latency_ms(model, input_shape) if latency else None,
           "sparsity": sparsity(model)}
    rec.update(extra)
    return rec
