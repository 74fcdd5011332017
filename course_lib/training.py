"""Seeding, device choice, the training loop, evaluation and the cached baseline."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import re
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from . import _validate as V
from .data import BUILD_DIR, DATA_DIR, Splits, atomic_write, dataset_key, load_dataset, verify_checksum
from .models import build_model


def seed_everything(seed: int = 0) -> torch.Generator:
    """Seed Python, NumPy and PyTorch (CPU and CUDA); return a torch.Generator seeded the same.

    seed: integer in [0, 2**32 - 1].
    """
    if not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2**32:
        raise ValueError(f"seed={seed!r} must be an integer in [0, 2**32 - 1]")
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    return torch.Generator().manual_seed(seed)


@contextmanager
def rng_preserved():
    """Run the block (or, as ``@rng_preserved()``, the function) without changing the global random state of
    Python, NumPy and PyTorch (CPU, and CUDA when present): the states are saved on entry and restored on exit.
    Functions that train only when a model is not cached use it, so the cells after them draw the same random
    numbers on a first run (trained) and on a later one (loaded)."""
    py, npy = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)


_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")


def get_device(name: str | None = None) -> torch.device:
    """The device to compute on.

    name: "auto" (CUDA if available, else CPU), "cpu", "cuda", "cuda:N" or "mps"; when None,
    the ``COURSE_DEVICE`` environment variable, else "auto". Asking for an accelerator that is
    not there warns and falls back to the CPU, so notebooks never fail for want of a GPU.
    """
    if name is None:
        name = os.environ.get("COURSE_DEVICE", "auto") or "auto"
    if not isinstance(name, str) or not _DEVICE_RE.match(name.strip().lower()):
        raise ValueError(f"device={name!r} is not valid; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
    name = name.strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        warnings.warn(f"device {name!r} requested but CUDA is not available; using the CPU", stacklevel=2)
        return torch.device("cpu")
    if name == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        warnings.warn("device 'mps' requested but not available; using the CPU", stacklevel=2)
        return torch.device("cpu")
    return torch.device(name)


def progress_enabled(progress: bool | None = None) -> bool:
    """Progress bars are on unless ``progress=False`` or the env var COURSE_PROGRESS=0."""
    if progress is not None:
        return bool(progress)
    return os.environ.get("COURSE_PROGRESS", "1") not in ("0", "false", "no")


def progress_bar(iterable, desc: str | None = None, progress: bool | None = None):
    """A tqdm.auto bar over ``iterable``: a widget in JupyterLab (with ipywidgets), text in a terminal;
    off when :func:`progress_enabled` is False (COURSE_PROGRESS=0 under test, so nothing lands in nbval's
    outputs). tqdm's "IProgress not found" warning (a notebook without ipywidgets) is silenced: text bars then."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*IProgress.*")
        from tqdm.auto import tqdm
    return tqdm(iterable, desc=desc, disable=not progress_enabled(progress), leave=False)


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator | None = None,
                 flip: bool = False) -> torch.Tensor:
    """Translate each image of x (N, C, H, W) by a random integer offset in [-max_shift, max_shift].

    Vacated pixels take the image's border value; ``flip`` also mirrors half the images
    horizontally (for CIFAR-10, not for digits).
    """
    V.int_in("max_shift", max_shift, 0, None)
    n, _, h, w = x.shape
    p = max_shift
    padded = F.pad(x, (p, p, p, p), mode="replicate")
    dx = torch.randint(0, 2 * p + 1, (n,), generator=generator)
    dy = torch.randint(0, 2 * p + 1, (n,), generator=generator)
    rows = (dy.view(n, 1) + torch.arange(h).view(1, h)).to(x.device)  # (n, h)
    cols = (dx.view(n, 1) + torch.arange(w).view(1, w)).to(x.device)  # (n, w)
    idx_n = torch.arange(n, device=x.device).view(n, 1, 1)
    out = padded.permute(0, 2, 3, 1)[idx_n, rows.view(n, h, 1), cols.view(n, 1, w)].permute(0, 3, 1, 2)
    if flip:
        m = (torch.rand(n, generator=generator) < 0.5).to(x.device)
        out[m] = out[m].flip(-1)
    return out.contiguous()


@dataclass
class History:
    """Per-epoch record of a ``fit`` run. Accuracies in [0, 1]; seconds is wall time."""

    train_loss: list = field(default_factory=list)
    train_acc: list = field(default_factory=list)
    val_acc: list = field(default_factory=list)
    lr: list = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def _as_loader(data, batch_size: int, shuffle: bool = False, generator=None) -> DataLoader:
    if isinstance(data, DataLoader):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2 and torch.is_tensor(data[0]):
        data = torch.utils.data.TensorDataset(*data)
    if not isinstance(data, Dataset):
        raise TypeError(f"data must be a Dataset, a DataLoader or an (x, y) tuple, not {type(data).__name__}")
    return DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=generator)


def fit(model: nn.Module, train, val=None, epochs: int = 10, lr: float = 1e-3, batch_size: int = 64,
        weight_decay: float = 0.0, optimizer: str = "adam", schedule: str = "cosine",
        augment: int = 0, flip: bool = False, seed: int = 0, device=None,
        loss_fn: Callable | None = None, after_step: Callable | None = None,
        params=None, progress: bool | None = None, desc: str = "train",
        memory_format: str = "channels_last") -> History:
    """Train ``model`` in place and return its ``History``.

    train / val: Dataset, DataLoader or (x, y) tensors. epochs >= 0 (0 only evaluates).
    lr > 0. optimizer: "adam", "adamw" or "sgd" (momentum 0.9, Nesterov). schedule: "cosine"
    (per step, to 0), "onecycle" or "constant". augment: max random shift in pixels, an integer
    >= 0 (0 = off). batch_size >= 1; weight_decay >= 0. ``model`` is moved to ``device``.
    loss_fn(model, x, y) -> scalar overrides cross-entropy (distillation uses it).
    after_step(model) runs after every optimizer step (pruning uses it to re-apply masks).
    params: the parameters to optimise (default: all that require grad).
    memory_format: "channels_last" (default) trains a convolutional model on the CPU in the NHWC layout,
    where PyTorch's CPU convolutions (forward and backward) run faster for the course's LeNets, then
    returns it in NCHW (also after an error); "contiguous" trains in NCHW. The two take sums in another
    order, so their rounding differs; over a whole run the two drift apart like two seeds do and end
    level within the noise, not bit for bit equal.
    """
    V.int_in("epochs", epochs, 0, None)
    V.number_in("lr", lr, 0, None, lo_open=True)
    V.positive_int("batch_size", batch_size)
    V.number_in("weight_decay", weight_decay, 0, None)
    V.one_of("optimizer", optimizer, ("adam", "adamw", "sgd"))
    V.one_of("schedule", schedule, ("cosine", "onecycle", "constant"))
    V.int_in("augment", augment, 0, None)
    V.one_of("memory_format", memory_format, ("channels_last", "contiguous"))
    device = get_device(device) if not isinstance(device, torch.device) else device
    model.to(device)
    nhwc = (memory_format == "channels_last" and device.type == "cpu"
            and any(p.dim() == 4 for p in model.parameters()))
    if nhwc:  # swaps each parameter's storage in place: Parameter objects (and `params`) stay the same
        model.to(memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(seed)
    loader = _as_loader(train, batch_size, shuffle=True, generator=g)
    params = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
    if optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    elif optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    else:
        opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    total = max(1, epochs * len(loader))
    if schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    elif schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total)
    else:
        sched = None
    hist = History()
    t0 = time.perf_counter()
    bar = progress_bar(range(epochs), desc=desc, progress=progress)
    try:
        for _ in bar:
            model.train()
            tot_loss, correct, count = 0.0, 0, 0
            for x, y in loader:
                x, y = x.to(device), y.to(device)
                if augment:
                    x = random_shift(x, augment, g, flip)
                if nhwc and x.dim() == 4:
                    x = x.contiguous(memory_format=torch.channels_last)
                if loss_fn is None:
                    logits = model(x)
                    loss = F.cross_entropy(logits, y)
                else:
                    out = loss_fn(model, x, y)
                    loss, logits = out if isinstance(out, tuple) else (out, None)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if sched is not None:
                    sched.step()
                if after_step is not None:
                    after_step(model)
                tot_loss += loss.item() * len(y)
                if logits is not None:
                    correct += (logits.argmax(1) == y).sum().item()
                count += len(y)
            hist.train_loss.append(tot_loss / count)
            hist.train_acc.append(correct / count)
            hist.lr.append(opt.param_groups[0]["lr"])
            if val is not None:
                hist.val_acc.append(evaluate(model, val, device=device))
                bar.set_postfix(loss=f"{hist.train_loss[-1]:.3f}", val=f"{hist.val_acc[-1]:.4f}")
    finally:  # also after an error or an interrupt: the model never stays in NHWC
        if nhwc:
            _back_to_nchw(model)
    hist.seconds = time.perf_counter() - t0
    model.eval()
    return hist


def _back_to_nchw(model: nn.Module) -> None:
    """Convert ``model``'s 4-D parameters and buffers back to NCHW, IN PLACE (the Parameter objects stay).

    A layer pruned with ``torch.nn.utils.prune`` holds its ``weight`` as a plain attribute that the
    pruning hook recomputes (``weight_orig * weight_mask``) at every forward; it is recomputed here, so
    the weight a caller reads after ``fit`` is in NCHW as well.
    """
    from torch.nn.utils import prune as tprune
    model.to(memory_format=torch.contiguous_format)
    for mod in model.modules():
        for hook in list(mod._forward_pre_hooks.values()):
            if isinstance(hook, tprune.BasePruningMethod):
                hook(mod, None)


@torch.no_grad()
def predict(model: nn.Module, data, batch_size: int = 512, device=None) -> torch.Tensor:
    """Predicted class indices, int64 of shape (N,), for a Dataset/DataLoader/(x, y)/tensor x.

    Runs in eval mode (the model's mode is restored) on ``device``: the model is moved there in place."""
    out = _each_batch(model, data, batch_size, device, lambda logits: logits.argmax(1))
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def _each_batch(model: nn.Module, data, batch_size: int, device, head) -> list[torch.Tensor]:
    """``head(model(x))`` for every batch x of ``data`` (a tensor of inputs counts as unlabelled data), computed
    on ``device`` and returned on the CPU, in eval mode without gradients; the model is moved to ``device`` in
    place and its mode restored, also when the forward pass raises."""
    if torch.is_tensor(data):
        data = (data, torch.zeros(len(data), dtype=torch.long))
    device = get_device(device) if not isinstance(device, torch.device) else device
    was_training = model.training
    model.eval()
    model.to(device)
    try:
        with torch.no_grad():
            return [head(model(x.to(device))).cpu() for x, _ in _as_loader(data, batch_size)]
    finally:
        model.train(was_training)


def predict_probs(model: nn.Module, data, batch_size: int = 512, device=None) -> torch.Tensor:
    """Class probabilities (the softmax of the logits), float32 of shape (N, classes), on the CPU, for the
    same inputs as :func:`predict` (eval mode, the model's mode restored, moved to ``device`` in place)."""
    out = _each_batch(model, data, batch_size, device, lambda logits: torch.softmax(logits.float(), 1))
    if not out:
        raise ValueError("data is empty: no images to predict")
    return torch.cat(out)


def _labels(loader) -> torch.Tensor:
    """Every label of ``loader``; ValueError if it holds no image (before torch 2.13, torch.cat of no
    batches raised a RuntimeError instead)."""
    ys = [y for _, y in loader]
    if sum(len(y) for y in ys) == 0:
        raise ValueError("data is empty: cannot compute an accuracy")
    return torch.cat(ys)


@torch.no_grad()
def correct(model: nn.Module, data, batch_size: int = 512, device=None) -> torch.Tensor:
    """Per-image correctness, bool of shape (N,), of ``model`` on ``data`` (Dataset, DataLoader or
    (x, y) tensors): what ``stats.paired_compare`` compares; ``evaluate`` is its mean."""
    loader = _as_loader(data, batch_size)
    labels = _labels(loader)
    return predict(model, loader, batch_size, device) == labels


@torch.no_grad()
def evaluate(model: nn.Module, data, batch_size: int = 512, device=None) -> float:
    """Top-1 accuracy in [0, 1] of ``model`` on ``data`` (Dataset, DataLoader or (x, y) tensors)."""
    loader = _as_loader(data, batch_size)
    labels = _labels(loader)
    return (predict(model, loader, batch_size, device) == labels).float().mean().item()


# ---------------------------------------------------------------- the cached baseline
BASELINE_RECIPE = dict(model="lenet5", epochs=20, lr=2e-3, batch_size=64, weight_decay=1e-4,
                       optimizer="adamw", schedule="onecycle", augment=1, memory_format="channels_last")


def cache_dir() -> Path:
    """Where trained baselines are cached: $COURSE_CACHE, else ``data.BUILD_DIR``/cache (<checkout>/build/cache,
    or $COURSE_HOME/cache, default ~/.cache/course_lib/cache, for an installed course)."""
    return Path(os.environ.get("COURSE_CACHE", BUILD_DIR / "cache"))


def _recipe_key(dataset: str, seed: int, recipe: dict) -> str:
    h = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:10]
    return f"baseline_{dataset}_{recipe['model']}_seed{seed}_{h}"


def train_baseline(splits: Splits, seed: int = 0, recipe: dict | None = None, device=None,
                   progress: bool | None = None) -> tuple[nn.Module, History]:
    """Train the course baseline (``BASELINE_RECIPE`` unless ``recipe`` overrides keys) from ``seed``."""
    r = {**BASELINE_RECIPE, **(recipe or {})}
    seed_everything(seed)
    model = build_model(r["model"], splits.input_shape, splits.num_classes, **r.get("model_kw", {}))
    kw = {k: v for k, v in r.items() if k not in ("model", "model_kw", "train_subset", "splits")}
    hist = fit(model, splits.train, splits.val, seed=seed, device=device, progress=progress,
               flip=splits.input_shape[0] == 3, desc="baseline", **kw)
    return model.cpu().eval(), hist


@rng_preserved()  # loaded or trained, the caller's random state is the same afterwards
def load_baseline(dataset: str = "mnist5k", seed: int = 0, retrain: bool = False, device=None,
                  splits: Splits | None = None, progress: bool | None = None,
                  epochs: int | None = None, model_kw: dict | None = None,
                  train_indices: torch.Tensor | None = None) -> tuple[nn.Module, dict]:
    """The trained baseline for ``dataset``: loaded from the cache, or trained and cached.

    Returns (model on the CPU in eval mode, info) where info has "history" (per-epoch),
    "train_seconds", "cached" (True if loaded) and "path". Looked up in the cache,
    $COURSE_CACHE (default build/cache; state dicts read with weights_only=True), then in the weights the
    course ships (``data/trained``, safetensors, checksum verified; "shipped": True in info, off with
    $COURSE_SHIPPED_WEIGHTS=0), and trained only when neither has it. retrain=True always trains.
    epochs: override the recipe's epoch count (a different recipe is cached under its own key).
    model_kw: constructor arguments of the model (e.g. ``dict(c1=10, c2=25, fc=250)`` for a narrower
    LeNet-5): the course's from-scratch *controls* are trained with the baseline recipe this way and
    cached under their own key.
    train_indices: train on these rows of the training split only (int64 indices; chapter 4's teacher
    that never saw the images it labels); cached under a key that includes the indices.
    splits: the dataset already loaded (saves loading it again). Splits that differ from
    ``load_dataset(dataset)``'s (a subset, another validation seed) are cached under a key that includes
    a fingerprint of their training and validation tensors, so they never share a model with the dataset's
    own splits. The key does not include ``device``.
    """
    recipe = dict(BASELINE_RECIPE) if epochs is None else {**BASELINE_RECIPE, "epochs": epochs}
    if model_kw:
        recipe["model_kw"] = dict(sorted(model_kw.items()))
    if splits is None:
        splits = load_dataset(dataset)
    elif (fp := _splits_fingerprint(splits)) != _splits_fingerprint(load_dataset(dataset)):
        recipe["splits"] = fp
    if train_indices is not None:
        idx = torch.as_tensor(train_indices, dtype=torch.int64).reshape(-1)
        n = len(splits.train)
        if idx.numel() == 0:
            raise ValueError(f"train_indices is empty: give at least one index in [0, {n}) of the training split")
        if int(idx.min()) < 0 or int(idx.max()) >= n:
            raise ValueError(f"train_indices must lie in [0, {n}) (the training split's rows), got values from "
                             f"{int(idx.min())} to {int(idx.max())}")
        if (dup := idx.numel() - len(torch.unique(idx))) > 0:
            raise ValueError(f"train_indices must be distinct, got {dup} duplicate(s) among {idx.numel()} indices")
        recipe["train_subset"] = hashlib.sha256(idx.numpy().tobytes()).hexdigest()[:16]
        x, y = splits.train.tensors
        splits = dataclasses.replace(splits, train=torch.utils.data.TensorDataset(x[idx], y[idx]))
    key = _recipe_key(dataset_key(dataset), seed, recipe)
    path = cache_dir() / f"{key}.pt"
    meta_path = path.with_suffix(".json")
    model = build_model(recipe["model"], splits.input_shape, splits.num_classes, **recipe.get("model_kw", {}))
    if not retrain and (cached := _read_cached(model, path, meta_path)) is not None:
        return cached
    if not retrain and (shipped := read_shipped(key, lambda info: model)) is not None:
        return shipped
    # Two notebooks open side by side (two JupyterLab kernels) may ask for the same model:
    # the first trains it under a lock, the second waits and then loads what the first cached.
    with _file_lock(path.with_suffix(".lock")):
        if not retrain and (cached := _read_cached(model, path, meta_path)) is not None:
            return cached
        model, hist = train_baseline(splits, seed, recipe, device=device, progress=progress)
        info = {"history": hist.to_dict(), "train_seconds": hist.seconds, "recipe": recipe,
                "dataset": dataset, "seed": seed, "path": str(path)}
        atomic_write(path, lambda f: torch.save(model.state_dict(), f))
        atomic_write(meta_path, lambda f: f.write(json.dumps(info, indent=1).encode()))
    info["cached"] = False
    return model, info


# ---------------------------------------------------------------- any trained model, cached by what made it
def fingerprint(*objs) -> str:
    """SHA-256 (16 hex digits) of ``objs``: tensors (shape, dtype, values), modules (their state dict),
    datasets and (x, y) tuples of tensors (their tensors), and JSON-able values (sorted keys). Two objects
    with the same fingerprint hold the same numbers."""
    h = hashlib.sha256()

    def add(o):
        if torch.is_tensor(o):
            t = o.detach().cpu().contiguous()
            h.update(str((tuple(t.shape), t.dtype)).encode())
            h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
        elif isinstance(o, nn.Module):
            for k, v in o.state_dict().items():
                h.update(k.encode())
                add(v)
        elif isinstance(o, torch.utils.data.TensorDataset):
            for t in o.tensors:
                add(t)
        elif isinstance(o, (tuple, list)) and o and all(torch.is_tensor(t) for t in o):
            for t in o:
                add(t)
        else:
            h.update(json.dumps(o, sort_keys=True, default=refuse).encode())

    def refuse(x):
        raise TypeError(f"cannot fingerprint a {type(x).__name__} ({str(x)[:60]}): give tensors, modules, "
                        "TensorDatasets or JSON-able values (int, float, str, bool, None, lists and dicts of them)")
    for o in objs:
        add(o)
    return h.hexdigest()[:16]


@rng_preserved()  # loaded or trained, the caller's random state is the same afterwards
def cached_model(name: str, make: Callable[[], object], key: dict, build: Callable[[dict], nn.Module],
                 cache=None) -> tuple[nn.Module, dict]:
    """The model ``make()`` trains (it returns the model, or (model, History)), or the same model loaded: cached
    under ``<name>_<hash of key>``. ``key`` (JSON-able: put ``fingerprint``s of data, teachers and input weights
    in it) must hold everything the result depends on; ``build(info)`` returns a model of the result's
    architecture to load the weights into (strictly; ``info`` is the JSON written beside them, which holds
    ``key``'s entries, "config" and "class"). Looked up in ``cache`` (default ``cache_dir()``; state dicts read
    with weights_only=True), then, with the default cache, in the weights the course ships (``data/trained``,
    checksum verified; off with $COURSE_SHIPPED_WEIGHTS=0); made only when neither has it. ``name``: letters,
    digits, ``-`` and ``_``. Returns (model in eval mode on the CPU, info with "key", "history" (a dict, or
    None), "train_seconds", "config" and "class" (the model's ``config`` attribute and class name), "cached"
    (True if loaded), "shipped" (True if from ``data/trained``), "path")."""
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise ValueError(f"name = {name!r} is not valid: use letters, digits, '-' and '_' only")
    file_key = f"{name}_{fingerprint(key)[:12]}"  # raises on a key that is not JSON-able
    folder = Path(cache) if cache is not None else cache_dir()
    path, meta_path = folder / f"{file_key}.pt", folder / f"{file_key}.json"

    def cached():
        if not (path.exists() and meta_path.exists()):
            return None
        info = json.loads(meta_path.read_text())
        return _read_cached(build(info), path, meta_path)
    if (hit := cached()) is not None:
        return hit[0].cpu().eval(), {**hit[1], "shipped": False, "path": str(path)}
    if cache is None and (shipped := read_shipped(file_key, build)) is not None:
        return shipped[0].cpu().eval(), shipped[1]
    with _file_lock(path.with_suffix(".lock")):
        if (hit := cached()) is not None:
            return hit[0].cpu().eval(), {**hit[1], "shipped": False, "path": str(path)}
        t0 = time.perf_counter()
        out = make()
        model, hist = out if isinstance(out, tuple) else (out, None)
        seconds = time.perf_counter() - t0
        model = model.cpu().eval()
        info = {"key": file_key, "name": name, **key, "history": hist.to_dict() if isinstance(hist, History) else None,
                "train_seconds": seconds, "config": getattr(model, "config", None), "class": type(model).__name__}
        atomic_write(path, lambda f: torch.save(model.state_dict(), f))
        atomic_write(meta_path, json.dumps(info, indent=1, sort_keys=True).encode())
    return model, {**info, "cached": False, "shipped": False, "path": str(path)}


def cached_training(name: str, model: nn.Module, train: Callable[[nn.Module], object], recipe: dict,
                    cache=None) -> dict:
    """Train ``model`` IN PLACE with ``train(model)`` (which returns a ``History`` or None), or load what the
    same training gave before (``cached_model``): the key is ``recipe`` (JSON-able, with ``fingerprint``s of
    the data and of a teacher: everything the training depends on) and a fingerprint of ``model``'s initial
    weights (so its architecture and its seeded initialisation are in the key). Returns ``cached_model``'s info
    ("cached", "shipped", "history", ...); the model ends in eval mode on the CPU either way."""
    key = {"recipe": recipe, "init": fingerprint(model)}
    return cached_model(name, lambda: (model, train(model)), key, lambda info: model, cache=cache)[1]


# ---------------------------------------------------------------- the trained weights the course ships
# Every model that load_baseline trains for the course's own dataset (the baselines, the from-scratch controls,
# chapter 4's teachers) and the latency model (chapter 5's recipe) that chapter 8 loads, trained once by the notebooks
# on the maintainers' machine and shipped as safetensors (no pickle) with a SHA-256 each, so a fresh clone runs
# without training them.
# scripts/ship_trained.py writes them from a cache; $COURSE_SHIPPED_WEIGHTS=0 trains everything instead.
SHIPPED_DIR = DATA_DIR / "trained"
_SHIP_HINT = ("restore it (git checkout data/trained), or set COURSE_SHIPPED_WEIGHTS=0 to train the model "
              "instead of loading it")


def shipped_weights_enabled(environ=None) -> bool:
    """Whether models load from the shipped weights in ``data/trained``: $COURSE_SHIPPED_WEIGHTS, one of
    1/true/yes/on (the default when unset or empty) or 0/false/no/off (train every model on this machine)."""
    raw = (os.environ if environ is None else environ).get("COURSE_SHIPPED_WEIGHTS", "").strip().lower()
    if raw in ("", "1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"COURSE_SHIPPED_WEIGHTS={raw!r} is not valid: use 1 (load the shipped weights, the default) "
                     "or 0 (train every model on this machine)")


def read_shipped(key: str, build: Callable[[dict], nn.Module], folder=None):
    """(model, info) from the shipped weights ``<folder>/<key>.safetensors`` and ``<key>.json`` (default
    ``SHIPPED_DIR``), or None when the course does not ship that key or $COURSE_SHIPPED_WEIGHTS is 0.

    build(info) returns the model to load into (info is the JSON: recipe, history, ...); the weights must
    match its state dict exactly (strict). Both files are checked against ``SHA256SUMS`` beside them (a
    mismatch raises ValueError naming the file). info gets "cached": True, "shipped": True and "path"."""
    if not shipped_weights_enabled():
        return None
    folder = SHIPPED_DIR if folder is None else Path(folder)
    path, meta = folder / f"{key}.safetensors", folder / f"{key}.json"
    if not (path.is_file() and meta.is_file()):
        return None
    from safetensors.torch import load_file
    verify_checksum(meta, required=True, hint=_SHIP_HINT)
    verify_checksum(path, required=True, hint=_SHIP_HINT)
    info = json.loads(meta.read_text())
    model = build(info)
    model.load_state_dict(load_file(str(path), device="cpu"))
    return model.eval(), {**info, "cached": True, "shipped": True, "path": str(path)}


def write_shipped(state: dict, info: dict, key: str, folder) -> list[Path]:
    """Write one shipped model: ``<key>.safetensors`` (the float tensors of ``state``, unchanged) and
    ``<key>.json`` (``info`` without machine-specific paths). Returns the two paths; the caller writes
    ``SHA256SUMS`` (``scripts/ship_trained.py``)."""
    from safetensors.torch import save_file
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path, meta = folder / f"{key}.safetensors", folder / f"{key}.json"
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(path))
    info = {k: v for k, v in info.items() if k not in ("path", "cached", "shipped")}
    atomic_write(meta, json.dumps(info, indent=1, sort_keys=True).encode())
    return [path, meta]


def _splits_fingerprint(splits: Splits) -> str:
    """``fingerprint`` (16 hex digits) of the training and validation tensors of ``splits``."""
    return fingerprint(splits.train, splits.val)


def _read_cached(model: nn.Module, path: Path, meta_path: Path):
    """(model with the cached weights, info) if both cache files exist, else None."""
    if not (path.exists() and meta_path.exists()):
        return None
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    info = json.loads(meta_path.read_text())
    info["cached"] = True
    return model.eval(), info


@contextmanager
def _file_lock(path: Path):
    """An exclusive lock between processes on ``path`` (created if missing), held for the block.

    fcntl.flock on Linux and macOS, msvcrt.locking on Windows; the operating system releases it if
    the process dies, so a crashed run never leaves the cache locked.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        if os.name == "nt":  # pragma: no cover - Windows only
            import msvcrt
            while True:
                try:
                    f.seek(0)
                    msvcrt.locking(f.fileno(), msvcrt.LK_LOCK, 1)
                    break
                except OSError:  # LK_LOCK gives up after about 10 s; keep waiting
                    continue
            try:
                yield
            finally:
                f.seek(0)
                msvcrt.locking(f.fileno(), msvcrt.LK_UNLCK, 1)
        else:
            import fcntl
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                print(f"waiting for another process that is training the same model ({path.stem}) ...", flush=True)
                fcntl.flock(f, fcntl.LOCK_EX)
            except OSError as e:  # a file system without locks (some network or FUSE mounts)
                warnings.warn(f"cannot lock {path} ({e}); training without a lock", stacklevel=3)
                yield
                return
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
