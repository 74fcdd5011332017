"""The measurement toolkit: parameters, zeros, MACs, bytes and CPU latency.

Models pruned with ``torch.nn.utils.prune`` (``weight_orig`` + ``weight_mask``) are measured
by their effective weights, so both pruning styles count the same way.

Files on disk and their (compressed) sizes live in ``storage``; this module keeps
``serialized_bytes``, the one definition of "bytes torch.save writes".

Timing: every latency figure of the course comes from ``time_fn`` (one timer), through
``latency_ms``, ``compare_latency`` (interleaved rounds), ``time_children`` (where a forward pass
spends its time) and ``matmul_latency_ms`` (one matrix product, dense or sparse).
"""
from __future__ import annotations

import copy
import io
import statistics
import time
import warnings
from contextlib import contextmanager
from typing import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from . import _validate as V

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


# ---------------------------------------------------------------- MACs
def _is_ao_linear(mod: nn.Module) -> bool:
    """torch.ao's quantized Linear (dynamic or static): its weight lives in packed params."""
    return isinstance(mod, torch.ao.nn.quantized.Linear)


def _mac_units(model: nn.Module) -> dict[str, tuple[nn.Module, Callable[[], torch.Tensor]]]:
    """{report name: (module to hook, weight getter)} for every layer ``macs`` can count.

    - nn.Conv2d / nn.Linear (the layers inside LowRankLinear, Tucker2Conv, CPConv included);
    - a wrapper holding such a layer as ``.layer`` and calling it functionally (quantization's
      QuantWrapper and KMeansWrapper): hooked on the wrapper, reported under the wrapper's name,
      and its inner layer is not hooked (it is never called);
    - torch.ao's quantized Linear (``torch_ao_dynamic``), whose weight() is a quantized tensor.
    """
    units, inner = {}, set()
    for name, mod in model.named_modules():
        layer = getattr(mod, "layer", None)
        if not isinstance(mod, PRUNABLE) and isinstance(layer, PRUNABLE):
            units[name] = (mod, lambda layer=layer: layer.weight)
            inner.add(id(layer))
    for name, mod in model.named_modules():
        if isinstance(mod, PRUNABLE) and id(mod) not in inner:
            units[name] = (mod, lambda mod=mod: mod.weight)
        elif _is_ao_linear(mod):
            units[name] = (mod, lambda mod=mod: mod.weight().dequantize())
    return units


def macs_by_layer(model: nn.Module, input_shape: tuple, sparse: bool = False) -> dict:
    """Multiply-accumulates per layer for ONE input of ``input_shape`` (C, H, W), {layer name: int}.

    Counted with forward hooks (a Conv2d weight is used once per output position, a Linear weight
    once per row of its input): every nn.Conv2d and nn.Linear, the course's wrappers that compute
    a wrapped ``.layer`` functionally (quantization's QuantWrapper, KMeansWrapper: reported under
    the wrapper's name, so a quantized model has the same keys as its float original) and torch.ao
    quantized Linear layers. sparse=True counts only the MACs of non-zero weights (what a sparse
    kernel could skip to). The model is run once in eval mode; its mode is restored.

    Raises ValueError when the count would be wrong: the model has no layer it can count (e.g. an
    onnxruntime ``deploy.OrtModule``: count the PyTorch model it was exported from), a countable
    layer was never called, or the forward pass does more convolution/matrix-product work
    (measured with ``torch.utils.flop_counter.FlopCounterMode``) than the counted layers explain
    (a layer that calls ``F.conv2d``/``F.linear`` on weights of its own).
    """
    shape = V.shape("input_shape", input_shape)
    units = _mac_units(model)
    if not units:
        raise ValueError(f"model {type(model).__name__} has no layer macs can count (no Conv2d, Linear, "
                         "wrapped layer or torch.ao quantized Linear); for an onnxruntime OrtModule, "
                         "count the PyTorch model it was exported from")
    counts, dense, hooks = {}, {}, []

    def hook(name, weight):
        def fn(mod, inp, out):
            w = weight()
            # each output value of a conv uses (cin/groups * kh * kw) weights; each weight is used
            # once per output position, i.e. per_weight times.
            per_weight = out.numel() // out.shape[1] if w.dim() == 4 else out.numel() // out.shape[-1]
            n = int((w != 0).sum()) if sparse else w.numel()
            counts[name] = counts.get(name, 0) + n * per_weight
            dense[name] = dense.get(name, 0) + w.numel() * per_weight
        return fn

    for name, (mod, weight) in units.items():
        hooks.append(mod.register_forward_hook(hook(name, weight)))
    was = model.training
    flops = FlopCounterMode(display=False)
    try:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        model.eval()
        with torch.no_grad(), flops:
            model(torch.zeros((1, *shape), device=device))
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    missing = [n for n in units if n not in counts]
    if missing:
        raise ValueError(f"layers {missing} of {type(model).__name__} were never called in the forward pass "
                         "(called functionally or unused), so macs cannot count them")
    seen = flops.get_total_flops() // 2
    if seen > sum(dense.values()):
        raise ValueError(f"the forward pass of {type(model).__name__} does {seen:,} MACs of convolutions and "
                         f"matrix products but its countable layers account for {sum(dense.values()):,}: a "
                         "layer calls F.conv2d/F.linear on its own weights, which macs cannot count")
    return {n: counts[n] for n in units}


def macs(model: nn.Module, input_shape: tuple, sparse: bool = False) -> int:
    """Total multiply-accumulates for one input of shape (C, H, W) (see ``macs_by_layer``, which raises
    for a model it cannot count exactly). FLOPs are about 2x MACs. sparse=True skips zero weights."""
    return sum(macs_by_layer(model, input_shape, sparse).values())


# ---------------------------------------------------------------- bytes
def _has_packed_params(model: nn.Module) -> bool:
    """True for torch.ao quantized models, whose weights live in packed (non-tensor) state."""
    return any("_packed_params" in k for k in model.state_dict())


def serialize(model_or_state) -> bytes:
    """The bytes ``torch.save`` writes for the model's (effective) state dict, or for a state dict.

    Pruning masks are folded into the weights; a torch.ao quantized model is saved with its own state
    dict (its packed int8 weights serialise through ``torch.save``)."""
    buf = io.BytesIO()
    if isinstance(model_or_state, nn.Module):
        packed = _has_packed_params(model_or_state)
        state = model_or_state.state_dict() if packed else effective_state_dict(model_or_state)
    else:
        state = model_or_state
    if all(torch.is_tensor(v) for v in state.values()):
        state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    torch.save(state, buf)  # a torch.ao state dict (dtypes, packed tuples) is saved as it is
    return buf.getvalue()


def serialized_bytes(model_or_state) -> int:
    """Number of bytes ``torch.save`` writes for a model's (effective) state dict or a state dict.

    The one definition of "size of a PyTorch file" in the course: every other size helper calls it.
    """
    return len(serialize(model_or_state))


# ---------------------------------------------------------------- time
@contextmanager
def num_threads(n: int):
    """Temporarily set PyTorch's intra-op thread count (n >= 1)."""
    n = V.positive_int("threads", n)
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def time_fn(fn: Callable[[], object], repeats: int = 30, warmup: int = 5) -> list[float]:
    """Call ``fn()`` ``warmup`` times untimed, then ``repeats`` times; return each call's time in ms.

    The course's one timer: ``time.perf_counter`` around every single call. Why not
    ``torch.utils.benchmark.Timer``: its ``blocked_autorange`` returns means over adaptively sized
    blocks, while the course reports the median and spread of individual calls and interleaves
    models call-site by call-site (``compare_latency``), which matters more on a shared laptop
    than Timer's extras; thread control is ``num_threads`` here, and timing is on the CPU only
    (no accelerator to synchronise). repeats >= 1, warmup >= 0.
    """
    repeats = V.positive_int("repeats", repeats)
    warmup = V.int_in("warmup", warmup, 0, None)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


@contextmanager
def _on_cpu_in_eval(model: nn.Module):
    """``model`` in eval mode on the CPU for the duration, the caller's module left as it was: a CPU
    model is switched to eval and its mode restored afterwards; a model elsewhere is copied."""
    tensors = [*model.parameters(), *model.buffers()]
    if any(t.device.type != "cpu" for t in tensors):
        yield copy.deepcopy(model).cpu().eval()
        return
    was = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was)


def latency_ms(model, input_shape: tuple | None, batch_size: int = 64, threads: int = 1,
               repeats: int = 30, warmup: int = 5) -> float:
    """Median wall time in ms of one forward pass on a batch of ``batch_size`` inputs.

    model: an nn.Module (run on the CPU in eval mode under inference_mode; the caller's model keeps
    its mode and device: a CPU model is put back in its mode afterwards, a model on another device
    is timed as a CPU copy) or any callable taking a float32 tensor of shape
    (batch_size, *input_shape). input_shape=None: ``model`` is a zero-argument callable timed as it
    is (it brings its own input; batch_size is unused). threads: intra-op threads during the
    measurement (1 = the course's standard single-thread figure). repeats >= 1, warmup >= 0.
    """
    batch_size = V.positive_int("batch_size", batch_size)
    V.positive_int("threads", threads)
    if input_shape is None:
        if isinstance(model, nn.Module) or not callable(model):
            raise ValueError("input_shape=None needs a zero-argument callable as model; give an nn.Module "
                             "its input_shape, e.g. (1, 28, 28)")
        with num_threads(threads), torch.inference_mode():
            return statistics.median(time_fn(model, repeats, warmup))
    shape = V.shape("input_shape", input_shape)
    x = torch.randn((batch_size, *shape), generator=torch.Generator().manual_seed(0))
    if isinstance(model, nn.Module):
        with _on_cpu_in_eval(model) as m, num_threads(threads), torch.inference_mode():
            return statistics.median(time_fn(lambda: m(x), repeats, warmup))
    with num_threads(threads), torch.inference_mode():
        return statistics.median(time_fn(lambda: model(x), repeats, warmup))


def compare_latency(models: dict, input_shape: tuple | None, rounds: int = 3, batch_size: int = 64,
                    threads: int = 1, repeats: int = 20) -> dict:
    """{name: latency in ms} for several models measured in interleaved rounds.

    Each round calls ``latency_ms`` (median of ``repeats`` single-thread forward passes of a batch
    of ``batch_size``) on every model in turn; the result is the median over ``rounds``, so a burst
    of load on a shared machine hits all models alike. rounds >= 1. input_shape=None: the values
    of ``models`` are zero-argument callables (see ``latency_ms``).
    """
    rounds = V.positive_int("rounds", rounds)
    times = {k: [] for k in models}
    for _ in range(rounds):
        for k, m in models.items():
            times[k].append(latency_ms(m, input_shape, batch_size=batch_size, threads=threads,
                                       repeats=repeats))
    return {k: statistics.median(v) for k, v in times.items()}


def _parts(model: nn.Module, names) -> dict[str, list[nn.Module]]:
    if names is None:
        return {n: [m] for n, m in model.named_children()}
    groups = dict(names) if isinstance(names, dict) else {n: [n] for n in names}
    if not groups:
        raise ValueError("names is empty: give submodule names (or None for every direct child)")
    out, all_names = {}, []
    for label, members in groups.items():
        if label in ("other", "total"):
            raise ValueError(f"names: the label {label!r} is reserved for the result's own entries")
        members = [members] if isinstance(members, str) else list(members)
        mods = []
        for n in members:
            try:
                mods.append(model.get_submodule(n))
            except AttributeError:
                raise ValueError(f"names: {n!r} is not a submodule of {type(model).__name__}") from None
        out[label] = mods
        all_names += members
    for a in all_names:
        for b in all_names:
            if a != b and b.startswith(a + "."):
                raise ValueError(f"names: {b!r} lies inside {a!r}; its time would be counted twice")
    return out


def time_children(model: nn.Module, run, names=None, repeats: int = 20, warmup: int = 3,
                  threads: int = 1) -> dict:
    """Where a forward pass spends its time: {label: median ms per pass} plus "other" and "total".

    run: a zero-argument callable doing one forward pass of ``model`` (e.g. ``lambda: model(x)``),
    or an input tensor x (then ``model(x)`` is run). names: None (every direct child of ``model``),
    a list of dotted submodule names, or a dict {label: [names]} summing several modules into one
    part (e.g. every layer's attention). Each part is timed with ``time.perf_counter`` in forward
    pre-/post-hooks; "total" is the whole pass and "other" what runs outside the parts (functional
    ops between them: ReLU, pooling, flatten), both per pass before taking medians. ``warmup``
    passes are not counted; ``repeats`` >= 1 are. Runs single-threaded (``threads``) under
    inference_mode with ``model`` in eval mode (its mode is restored). A named part that is never
    called raises ValueError.
    """
    repeats = V.positive_int("repeats", repeats)
    warmup = V.int_in("warmup", warmup, 0, None)
    V.positive_int("threads", threads)
    if torch.is_tensor(run):
        x = run
        run = lambda: model(x)  # noqa: E731
    elif not callable(run):
        raise ValueError(f"run must be a zero-argument callable or an input tensor, not {type(run).__name__}")
    parts = _parts(model, names)
    starts, acc, hooks = {}, {}, []
    for label, mods in parts.items():
        for mod in mods:
            def pre(m, inp):
                starts[id(m)] = time.perf_counter()

            def post(m, inp, out, label=label):
                acc[label] = acc.get(label, 0.0) + (time.perf_counter() - starts[id(m)]) * 1e3
            hooks += [mod.register_forward_pre_hook(pre), mod.register_forward_hook(post)]
    runs = []
    was = model.training
    model.eval()
    try:
        with num_threads(threads), torch.inference_mode():
            for i in range(warmup + repeats):
                acc.clear()
                t0 = time.perf_counter()
                run()
                total = (time.perf_counter() - t0) * 1e3
                if i >= warmup:
                    runs.append({**{k: acc.get(k, 0.0) for k in parts}, "other": total - sum(acc.values()),
                                 "total": total})
                if i == 0:
                    never = [k for k in parts if k not in acc]
                    if never:
                        raise ValueError(f"names: {never} were never called during run()")
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def compare_time_children(models: dict, run, names=None, rounds: int = 3, **kw) -> dict:
    """{model name: ``time_children`` dict} for several models, measured in ``rounds`` interleaved
    rounds (each part is the median over rounds), so a burst of load hits every model alike.

    models: {name: nn.Module}; run: an input tensor x (each model runs ``model(x)``) or a callable
    ``run(model)`` doing one forward pass. Keyword arguments go to ``time_children``
    (repeats, warmup, threads). rounds >= 1.
    """
    rounds = V.positive_int("rounds", rounds)
    runs = {k: [] for k in models}
    for _ in range(rounds):
        for k, m in models.items():
            r = run if torch.is_tensor(run) else (lambda m=m: run(m))
            runs[k].append(time_children(m, r, names, **kw))
    return {k: {part: statistics.median(r[part] for r in v) for part in v[0]} for k, v in runs.items()}


def _matmul_call(weight: torch.Tensor, batch_size: int = 64, sparse: bool = False):
    """(fn, x): fn() computes the product of ``weight`` (out, in) with a fixed random x
    (batch_size, in). Dense: ``x @ weight.T`` (batch_size, out). Sparse: ``weight`` in CSR times
    x.T, (out, batch_size), the same product transposed (the layout the CSR kernel writes)."""
    if not torch.is_tensor(weight) or weight.dim() != 2:
        got = tuple(weight.shape) if torch.is_tensor(weight) else type(weight).__name__
        raise ValueError(f"weight must be a 2-D tensor (out_features, in_features), got {got}")
    batch_size = V.positive_int("batch_size", batch_size)
    x = torch.randn(batch_size, weight.shape[1], generator=torch.Generator().manual_seed(0))
    w = weight.detach().cpu().float()
    if not sparse:
        return (lambda: x @ w.t()), x
    with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta": known, not news
        warnings.simplefilter("ignore", UserWarning)
        w_csr = w.to_sparse_csr()
    xt = x.t().contiguous()
    return (lambda: torch.sparse.mm(w_csr, xt)), x


def matmul_latency_ms(weight: torch.Tensor, batch_size: int = 64, sparse: bool = False, threads: int = 1,
                      repeats: int = 30) -> float:
    """Median ms of ``x @ weight.T`` for x of shape (batch_size, in), single-threaded by default.

    weight: (out, in) float32. sparse=True stores ``weight`` in CSR (``torch.sparse_csr``) and
    multiplies with the sparse kernel, which skips the zeros; False uses the dense kernel, which
    does not. batch_size, threads, repeats >= 1.
    """
    fn, _ = _matmul_call(weight, batch_size, sparse)
    with num_threads(threads), torch.inference_mode():
        return statistics.median(time_fn(fn, repeats))
