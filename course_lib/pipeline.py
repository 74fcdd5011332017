"""Chapter 5: the chapters' techniques combined.

- ``deep_compression``: gradual magnitude pruning -> per-layer k-means weight sharing of the
  non-zeros -> (``codec.save_compressed``) Huffman-coded file. Han et al., 2016.
- ``latency_optimised``: channel pruning -> fine-tuning with distillation from the baseline ->
  (``deploy.export_onnx`` + ``quantization.ort_quantize_static``) int8 in onnxruntime.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from . import pruning
from .distillation import distill
from .quantization import kmeans_quantize
from .training import fit, seed_everything


@torch.no_grad()
def share_weights(model: nn.Module, bits, iters: int = 30) -> dict:
    """k-means weight sharing of the NON-ZERO weights of every Conv2d/Linear layer, IN PLACE.

    Zeros left by pruning stay exactly zero (they are positions, not values); the non-zeros of each
    layer are replaced by the nearest of 2**bits shared values. bits: int in 1..16, or a dict
    {layer name: bits}. Returns {layer name: codebook}.
    """
    books = {}
    for name, mod in model.named_modules():
        if not isinstance(mod, (nn.Conv2d, nn.Linear)):
            continue
        b = bits.get(name) if isinstance(bits, dict) else bits
        if b is None:
            continue
        w = mod.weight
        nz = w != 0
        if int(nz.sum()) == 0:
            continue
        cb, idx = kmeans_quantize(w[nz], b, iters)
        w[nz] = cb[idx]
        books[name] = cb
    return books


def gradual_prune(model: nn.Module, train, val=None, sparsity: float = 0.95, epochs: int = 12,
                  lr: float = 1e-3, ramp: float = 0.7, seed: int = 0, **fit_kw) -> nn.Module:
    """Prune a COPY of ``model`` to global ``sparsity`` on the Zhu & Gupta schedule while fine-tuning.

    The sparsity ramps over the first ``ramp`` fraction (in (0, 1]) of the ``epochs`` (>= 1); the rest
    recovers at the final sparsity. One-cycle AdamW with shift augmentation. Masks are removed at the
    end, so the returned model is a plain model with zeros.
    """
    if not 0 < ramp <= 1:
        raise ValueError(f"ramp={ramp!r} must be in (0, 1]")
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs={epochs!r} must be an integer >= 1")
    seed_everything(seed)
    m = copy.deepcopy(model)
    batch = fit_kw.pop("batch_size", 64)
    steps = epochs * -(-len(train) // batch)
    pruner = pruning.GradualPruner(sparsity, max(1, int(ramp * steps)), frequency=10)
    kw = dict(optimizer="adamw", weight_decay=1e-4, schedule="onecycle", augment=1, desc="prune") | fit_kw
    fit(m, train, val, epochs=epochs, lr=lr, batch_size=batch, after_step=pruner, seed=seed, **kw)
    return pruning.remove_masks(m).eval()


def deep_compression(model: nn.Module, train, val=None, sparsity: float = 0.95, bits=4, epochs: int = 12,
                     lr: float = 1e-3, seed: int = 0) -> nn.Module:
    """Prune gradually to ``sparsity`` then share the non-zero weights with 2**bits values per layer.

    Returns a new model whose weights hold only zeros and each layer's codebook values, ready for
    ``codec.save_compressed``. ``model`` is not changed.
    """
    m = gradual_prune(model, train, val, sparsity, epochs, lr, seed=seed)
    share_weights(m, bits)
    return m


def distill_fit(student: nn.Module, teacher: nn.Module, train, val=None, epochs: int = 10, lr: float = 2e-3,
                temperature: float = 4.0, alpha: float = 0.7, seed: int = 0, **fit_kw):
    """``distillation.distill`` with the baseline's recipe (one-cycle AdamW, shift augmentation):
    trains ``student`` IN PLACE against ``teacher``. Returns the History."""
    kw = dict(optimizer="adamw", weight_decay=1e-4, schedule="onecycle", augment=1, desc="distill") | fit_kw
    return distill(teacher, student, train, val, epochs=epochs, temperature=temperature, alpha=alpha,
                   lr=lr, seed=seed, **kw)


def latency_optimised(teacher: nn.Module, train, val=None, ratio=None, epochs: int = 10, seed: int = 0,
                      **fit_kw) -> nn.Module:
    """Channel-prune a copy of ``teacher`` (L1 filter ranking, physically smaller), then fine-tune it
    by distillation from ``teacher``. ratio: fraction of channels REMOVED per layer (float or dict,
    default {"conv1": 0.6, "conv2": 0.7, "fc1": 0.8}). Returns the small model (eval mode)."""
    ratio = ratio if ratio is not None else {"conv1": 0.6, "conv2": 0.7, "fc1": 0.8}
    seed_everything(seed)
    small = pruning.channel_prune(copy.deepcopy(teacher), ratio)
    distill_fit(small, teacher, train, val, epochs=epochs, seed=seed, **fit_kw)
    return small.eval()


def copy_model(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` (CPU, eval mode)."""
    return copy.deepcopy(model).cpu().eval()


def save_state(model: nn.Module, path) -> int:
    """``torch.save`` the model's effective state dict (pruning masks folded in) to ``path``; return its bytes.

    Load it back with ``torch.load(path, weights_only=True)``.
    """
    import os
    from pathlib import Path

    from .measure import serialize

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    state = model.state_dict() if _has_packed_params(model) else None
    if state is not None:  # torch.ao quantized modules: their packed weights serialise through torch.save
        torch.save(state, path)
    else:
        Path(path).write_bytes(serialize(model))
    return os.path.getsize(path)


def _has_packed_params(model: nn.Module) -> bool:
    return any("_packed_params" in k for k in model.state_dict())


def zlib_file(src, dest) -> "Path":
    """Write ``src``'s bytes zlib-compressed (level 9) to ``dest``; return dest (what 'zipping' a model gives)."""
    import zlib
    from pathlib import Path

    Path(dest).write_bytes(zlib.compress(Path(src).read_bytes(), 9))
    return Path(dest)


def torch_prune_recipe(model: nn.Module, train, val=None, amount: float = 0.9, epochs: int = 3, lr: float = 5e-4,
                       seed: int = 0, **fit_kw) -> nn.Module:
    """The off-the-shelf recipe: ``torch.nn.utils.prune.global_unstructured`` (L1) on every Conv2d/Linear
    weight of a copy of ``model`` at ``amount``, fine-tuned ``epochs`` with masks in place, then made
    permanent with ``prune.remove``. Returns the pruned copy."""
    from torch.nn.utils import prune as tprune

    seed_everything(seed)
    m = copy.deepcopy(model)
    params = [(mod, "weight") for mod in m.modules() if isinstance(mod, (nn.Conv2d, nn.Linear))]
    tprune.global_unstructured(params, pruning_method=tprune.L1Unstructured, amount=amount)
    fit(m, train, val, epochs=epochs, lr=lr, seed=seed, desc="torch-prune", **fit_kw)
    for mod, name in params:
        tprune.remove(mod, name)
    return m.eval()


def lowrank_recipe(model: nn.Module, train, val=None, ranks: dict | None = None, epochs: int = 2,
                   lr: float = 5e-4, seed: int = 0, **fit_kw) -> nn.Module:
    """Chapter 3 in one call: factorize a copy of ``model`` with ``ranks`` and fine-tune it ``epochs``.

    ranks default to chapter 3's main LeNet-5 model: fc1 by truncated SVD at the rank that keeps 10%
    of its parameters, conv2 by Tucker-2 with ranks (16, 12). Fixed ranks (not chosen from the trained
    spectrum) keep the parameter and MAC counts identical on every machine.
    """
    from .lowrank import factorize, linear_params, rank_for_budget

    if ranks is None:
        fc1 = model.fc1
        ranks = {"fc1": rank_for_budget(fc1.in_features, fc1.out_features,
                                        linear_params(fc1.in_features, fc1.out_features) // 10),
                 "conv2": (16, 12)}
    seed_everything(seed)
    m = factorize(model, ranks)
    fit(m, train, val, epochs=epochs, lr=lr, seed=seed, desc="low-rank", **fit_kw)
    return m.eval()


def file_record(name: str, model, file, method: str, test, input_shape: tuple, counts_from: nn.Module | None = None,
                root=None, **extra) -> dict:
    """A results record (DESIGN.md format) for a model saved at ``file``.

    model: what runs (an nn.Module or an onnxruntime ``deploy.OrtModule``); its accuracy on ``test`` and
    single-thread latency (batch 64) are measured. size_bytes is the size of ``file``, recorded
    relative to ``root`` (default: the repository). Parameter, non-zero and MAC counts come from
    ``counts_from`` (default ``model``; give the PyTorch model an ONNX file was exported from).
    """
    import os
    from pathlib import Path

    from . import measure
    from .data import REPO_ROOT
    from .training import evaluate

    src = counts_from if counts_from is not None else model
    root = Path(root) if root is not None else REPO_ROOT
    path = Path(file).resolve()
    r = {"name": name, "accuracy": evaluate(model, test), "size_bytes": os.path.getsize(path),
         "params": measure.count_params(src), "nonzero": measure.count_nonzero(src),
         "macs": measure.macs(src, input_shape), "sparsity": measure.sparsity(src),
         "latency_ms": measure.latency_ms(model, input_shape), "method": method,
         "file": str(path.relative_to(root)) if path.is_relative_to(root) else str(path)}
    r.update(extra)
    return r
