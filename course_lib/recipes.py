"""Every named recipe a chapter or the benchmark runs, with its training budget as arguments.

A recipe is a technique plus the training that goes with it (epochs, optimizer, schedule, seed).
The notebooks and ``benchmarks/`` call these same functions with the same defaults, so ``make bench``
measures what the chapters teach. Every recipe leaves its input model unchanged and returns a new one.

| recipe | chapter | what it does |
|---|---|---|
| ``global_prune_finetune`` | 1 | one-shot global magnitude pruning, then fine-tuning with the masks kept |
| ``random_prune_finetune`` | 1 | the random-pruning control: random masks, the same fine-tuning |
| ``torch_prune_finetune`` | 1, 5 | the off-the-shelf anchor: ``torch.nn.utils.prune`` + the tutorials' fine-tuning |
| ``gradual_prune`` | 1, 5 | pruning on the Zhu & Gupta cubic schedule during training |
| ``channel_prune_finetune`` | 1 | L1 filter pruning (a physically smaller model), then fine-tuning |
| ``qat`` | 2 | quantization-aware training from the trained float weights |
| ``kmeans_finetune`` | 2 | k-means weight sharing, then fine-tuning of the centroids only |
| ``int8_lenet_ort`` | 2, 5 | onnxruntime static int8 of a LeNet-5 with conv1 in float |
| ``lowrank_finetune`` | 3, 5 | SVD / Tucker-2 / CP factorization, then fine-tuning |
| ``chapter3_ranks``, ``chapter3_cp_ranks`` | 3 | chapter 3's ranks (Tucker-2 and SVD; CP at the same MACs) |
| ``unfactorized_finetune`` | 3 | the control: the unfactorized baseline fine-tuned with the same budget |
| ``scratch_student``, ``distill_student`` | 4 | a small model trained from scratch or by distillation |
| ``smoothed_student`` | 4 | the control: from scratch with label smoothing, the same recipe |
| ``cached_student`` | 4 | any of the three, trained once and then loaded (build/cache, then the shipped students) |
| ``cached_recipe`` | 5, 8 | a recipe that returns a new model, run once and then loaded the same way |
| ``deep_compression_prune``, ``deep_compression`` | 5 | gradual pruning, then k-means sharing of the non-zeros (Han et al., 2016) |
| ``train_centroids`` | 5 | Han et al.'s trained quantization: fine-tune the shared values, zeros kept |
| ``latency_model`` | 5 | channel pruning, then fine-tuning by distillation from the baseline (``alpha=0``, ``scratch=True``: its controls) |
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from . import deploy, pruning
from . import quantization as Q
from ._validate import int_in, number_in, one_of, positive_int
from .data import dataset_key
from .distillation import TeacherCache, distill
from .lowrank import cp_macs, factorize, linear_params, rank_for_budget, tucker2_macs
from .models import PoolBeforeReLU
from .training import BASELINE_RECIPE, cached_model, cached_training, fingerprint, fit, seed_everything

# The course's fine-tuning recipe: the baseline's own optimizer and augmentation, cosine decay to zero.
FINETUNE = dict(lr=1e-3, optimizer="adamw", schedule="cosine", augment=1, weight_decay=1e-4)
# What most tutorials do after torch.nn.utils.prune: Adam at a constant 1e-3, no augmentation.
TUTORIAL_FINETUNE = dict(lr=1e-3, optimizer="adam", schedule="constant", augment=0)
# Chapter 3's fine-tune of a factorized model: a smaller rate, the factors start close to the optimum.
LOWRANK_FINETUNE = dict(lr=3e-4, optimizer="adamw", weight_decay=1e-4, augment=1)
# Chapter 4's students: the baseline's recipe (one-cycle AdamW, shifts) at a higher peak rate.
STUDENT_FIT = {k: v for k, v in BASELINE_RECIPE.items() if k not in ("model", "epochs")} | {"lr": 1e-2}
KD = dict(temperature=4.0, alpha=0.9)
STUDENT_EPOCHS = 10  # chapter 4's budget for every student (scratch, distilled, controls) outside section 6
# Chapter 4's budget curve, fixed before any run (the chapter's run time caps the longest): scratch and
# distilled students are trained for each, and the budget is chosen on validation (distillation.choose_budget).
CH4_BUDGETS = (10, 20, 40)
CH4_STUDENT = dict(c1=4, c2=8, fc=32)  # the 80x smaller student of chapter 4's headline comparisons
LABEL_SMOOTHING = 0.1  # chapter 4's control (Mueller et al. 2019's usual value), not tuned
# Chapter 5's latency model: the fraction of channels channel pruning removes. conv2 and fc1 are fixed; conv1's
# ratio (its output is the largest activation, and the CPU time follows it) was chosen on validation by
# pick_latency_ratio's rule, written down before any candidate was trained: among LATENCY_CONV1_GRID, the
# fewest conv1 filters whose mean validation accuracy over SEEDS is at most LATENCY_VAL_MARGIN below the
# baseline's. Chapter 5 re-runs the sweep and checks that the rule still picks this ratio.
LATENCY_CONV1_GRID = (0.6, 0.7, 0.75, 0.8)  # 8, 6, 5 and 4 of LeNet-5's 20 filters kept
LATENCY_VAL_MARGIN = 0.005  # half of the target's 1-point allowance: a margin for the validation split's noise
LATENCY_RATIO = {"conv1": 0.8, "conv2": 0.7, "fc1": 0.8}
# Seeds of the randomness a method adds (fine-tuning order, initialisation): every headline result
# is a mean over these (DESIGN.md, measurement protocol).
SEEDS = (0, 1, 2)


def _steps_per_epoch(train, batch_size: int) -> int:
    return -(-len(train) // batch_size)


# ---------------------------------------------------------------- chapter 1: pruning
# Chapter 1's budget: every pruning method gets the same number of training epochs after the baseline
# (one-shot + fine-tuning, gradual, random-pruning control, channel pruning), with the same schedule
# family (FINETUNE: AdamW, cosine decay to zero). Fixed by the chapter's run-time target, not tuned.
PRUNE_EPOCHS = 4
# What chapter 1's targets are measured with (the notebook and ``make bench``): the epochs above, the
# channel-pruning ratio (widths 20/50/500 -> 10/25/250) and the methods whose rows the targets read,
# fixed before the run: one-shot + fine-tuning at 90%, gradual pruning at 95%.
CH1_BUDGET = dict(epochs=PRUNE_EPOCHS, channel_ratio=0.5, target_methods={0.9: "one-shot", 0.95: "gradual"})


def global_prune_finetune(model: nn.Module, train, val=None, sparsity: float = 0.9, epochs: int = PRUNE_EPOCHS,
                          seed: int = 0, **fit_kw) -> nn.Module:
    """A copy of ``model`` pruned one-shot to global ``sparsity`` (in [0, 1)), then fine-tuned ``epochs``
    with the masks re-applied after every step (``FINETUNE`` unless overridden by ``fit_kw``).
    The masks stay on the returned model (``pruning.remove_masks`` makes them permanent)."""
    m = pruning.magnitude_prune(copy.deepcopy(model), sparsity, scope="global")
    seed_everything(seed)
    pruning.fine_tune(m, train, val, epochs=epochs, seed=seed,
                      **(FINETUNE | {"desc": f"one-shot {sparsity}"} | fit_kw))
    return m.eval()


def random_prune_finetune(model: nn.Module, train, val=None, sparsity=0.9, epochs: int = PRUNE_EPOCHS,
                          seed: int = 0, **fit_kw) -> nn.Module:
    """The random-pruning control: a copy of ``model`` with randomly chosen weights pruned, then
    fine-tuned exactly like ``global_prune_finetune`` (``FINETUNE``, masks kept, ``epochs``).

    sparsity: a fraction in [0, 1) (zeros drawn uniformly over all Conv2d/Linear weights) or
    {layer: fraction} (e.g. ``pruning.layer_sparsity`` of the magnitude-pruned model, so that only
    the choice of weights differs). ``seed`` (>= 0) draws the mask and orders the fine-tuning."""
    m = pruning.random_prune(copy.deepcopy(model), sparsity, scope="global", seed=seed)
    seed_everything(seed)
    pruning.fine_tune(m, train, val, epochs=epochs, seed=seed, **(FINETUNE | {"desc": "random"} | fit_kw))
    return m.eval()


def torch_prune_finetune(model: nn.Module, train, val=None, amount: float = 0.9, epochs: int = PRUNE_EPOCHS,
                         seed: int = 0, **fit_kw) -> nn.Module:
    """The off-the-shelf anchor: ``torch.nn.utils.prune.global_unstructured`` (L1) on every Conv2d/Linear
    weight of a copy of ``model`` at ``amount``, fine-tuned ``epochs`` with the tutorials' recipe
    (``TUTORIAL_FINETUNE`` unless overridden), then made permanent with ``prune.remove``."""
    number_in("amount", amount, 0, 1, hi_open=True)
    m = copy.deepcopy(model)
    params = [(mod, "weight") for mod in m.modules() if isinstance(mod, (nn.Conv2d, nn.Linear))]
    torch_prune.global_unstructured(params, pruning_method=torch_prune.L1Unstructured, amount=amount)
    seed_everything(seed)
    fit(m, train, val, epochs=epochs, seed=seed, **(TUTORIAL_FINETUNE | {"desc": "torch-prune"} | fit_kw))
    for mod, name in params:
        torch_prune.remove(mod, name)
    return m.eval()


def gradual_prune(model: nn.Module, train, val=None, sparsity: float = 0.95, epochs: int = PRUNE_EPOCHS,
                  ramp: float = 5 / 8, frequency: int = 10, seed: int = 0, remove: bool = False,
                  sparsity_schedule=None, **fit_kw) -> tuple[nn.Module, pruning.GradualPruner]:
    """Prune a copy of ``model`` to global ``sparsity`` on a gradual schedule while training ``epochs``.

    The sparsity ramps over the first ``ramp`` fraction (in (0, 1]) of the optimizer steps, pruning every
    ``frequency`` steps; the remaining steps recover at the final sparsity. Training uses ``FINETUNE``
    unless ``fit_kw`` overrides it (chapter 5: ``schedule="onecycle"``, 12 epochs, ramp 0.7).
    sparsity_schedule: the ramp's shape, a callable ``(step, final_sparsity, total_steps) -> sparsity``
    (chapter 01's exercise ``gradual`` has this signature); None: the library's cubic schedule
    ``pruning.gradual_schedule`` (Zhu & Gupta, 2017). It is named ``sparsity_schedule`` because
    ``schedule`` is ``fit``'s learning-rate schedule. See ``pruning.GradualPruner``.
    remove=True makes the masks permanent. Returns (model, pruner); ``pruner.history`` holds the
    (step, sparsity) of every pruning event.
    """
    number_in("ramp", ramp, 0, 1, lo_open=True)
    epochs = positive_int("epochs", epochs)
    steps = epochs * _steps_per_epoch(train, fit_kw.get("batch_size", 64))
    m = copy.deepcopy(model)
    pruner = pruning.GradualPruner(sparsity, max(1, int(ramp * steps)), frequency=frequency,
                                   schedule=sparsity_schedule)
    seed_everything(seed)
    pruning.fine_tune(m, train, val, epochs=epochs, seed=seed, after_step=pruner,
                      **(FINETUNE | {"desc": f"gradual {sparsity}"} | fit_kw))
    if remove:
        pruning.remove_masks(m)
    return m.eval(), pruner


def channel_prune_finetune(model: nn.Module, train, val=None, ratio=0.5, epochs: int = PRUNE_EPOCHS, seed: int = 0,
                           **fit_kw) -> nn.Module:
    """``pruning.channel_prune(model, ratio)`` (a new, physically smaller model; ratio = fraction of channels
    removed, a float or {layer: fraction}), then fine-tuned ``epochs`` with ``FINETUNE``."""
    slim = pruning.channel_prune(model, ratio)
    seed_everything(seed)
    fit(slim, train, val, epochs=epochs, seed=seed, **(FINETUNE | {"desc": "channel"} | fit_kw))
    return slim.eval()


# ---------------------------------------------------------------- chapter 2: quantization
# Chapter 2's low-bit fine-tuning: the same budget (LOWBIT_EPOCHS epochs after the baseline) for QAT and
# for k-means centroid fine-tuning, with learning rates per number of weight levels chosen on the
# VALIDATION split (500 images; seed 0, 3 epochs, the baseline of seed 0): QAT from calibrated PTQ
# (3 levels: MSE weight ranges, 4 levels: percentile) among {1e-4, 3e-4, 1e-3}, final validation accuracy
# 3 levels 98.0 / 98.0 / 98.0% (ties broken by the mean over epochs: 1e-4), 4 levels 98.0 / 97.8 / 98.2%;
# centroids among {3e-4, 1e-3, 3e-3}: 3 levels 97.8 / 97.6 / 97.6%, 4 levels 98.0 / 97.8 / 98.0% (tie:
# the smaller rate). Every candidate was within two validation images of the others: the rate hardly matters.
LOWBIT_EPOCHS = 3
QAT_LR = {3: 1e-4, 4: 1e-3}
KMEANS_LR = {3: 3e-4, 4: 3e-4}


def qat(model: nn.Module, train, calib, weight_bits: int = 4, act_bits: int = 8, epochs: int = 3,
        lr: float | None = None, seed: int = 0, **fit_kw):
    """Quantization-aware training of a copy of ``model`` (``Q.qat``) with shift augmentation.

    lr defaults to 1e-4, or 3e-4 below 4 bits (chapter 2 passes ``QAT_LR``, chosen on validation).
    fit_kw go to ``Q.qat`` (e.g. ``weight_method``, ``weight_symmetric``, ``method``) and to
    ``training.fit`` (e.g. ``val``, ``device``). Returns (model, History)."""
    lr = lr if lr is not None else (1e-4 if weight_bits >= 4 else 3e-4)
    seed_everything(seed)
    return Q.qat(model, train, calib, weight_bits=weight_bits, act_bits=act_bits, epochs=epochs, lr=lr,
                 seed=seed, **({"augment": 1} | fit_kw))


def kmeans_finetune(model: nn.Module, train, bits: int, epochs: int = 3, lr: float = 1e-3, seed: int = 0,
                    levels: int | None = None, iters: int = 30, **fit_kw) -> nn.Module:
    """``Q.kmeans_model(model, bits, iters, levels)`` (a copy: 2**bits shared values per layer, or
    ``levels`` of them stored in ``bits`` bits), then ``epochs`` of training of the codebooks only
    (the indices stay fixed; autograd sums the gradients of the weights that share a value)."""
    km = Q.kmeans_model(model, bits, iters=iters, levels=levels)
    codebooks = [p for n, p in km.named_parameters() if n.endswith("codebook")]
    seed_everything(seed)
    fit(km, train, epochs=epochs, lr=lr, params=codebooks, seed=seed,
        **({"augment": 1, "desc": f"centroids {levels or 2 ** bits}"} | fit_kw))
    return km.cpu().eval()


def int8_lenet_ort(model: nn.Module, int8_path, calib_images: torch.Tensor, first_conv_float: bool = True) -> Path:
    """Chapter 2's int8 deployment of a LeNet-5 in one call: returns the path of an onnxruntime int8 model.

    With ``first_conv_float`` (the default) the model is exported as ``models.PoolBeforeReLU(model)`` and
    conv1 stays float32 (``keep_float``), the rest is static int8 (per-channel weights, min-max
    calibration on ``calib_images``, (N, C, H, W), N >= 1); otherwise every layer is int8. The float32
    ONNX export is written next to ``int8_path`` (suffix ``_fp32.onnx``). model: a ``models.LeNet5``.
    """
    if len(calib_images) == 0:
        raise ValueError("calib_images is empty: the calibration set needs at least one image")
    int8_path = Path(int8_path)
    fp32_path = int8_path.with_name(int8_path.stem + "_fp32.onnx")
    deploy.export_onnx(PoolBeforeReLU(model) if first_conv_float else model, fp32_path,
                       tuple(calib_images.shape[1:]))
    keep = deploy.onnx_nodes(fp32_path, "Conv")[:1] if first_conv_float else []
    return deploy.ort_quantize_static(fp32_path, int8_path, calib_images, per_channel=True, keep_float=keep)


# ---------------------------------------------------------------- chapter 3: low rank
def chapter3_ranks(model: nn.Module) -> dict:
    """Chapter 3's main LeNet-5 model: fc1 by truncated SVD at the rank that keeps 10% of its parameters,
    conv2 by Tucker-2 with ranks (16, 12). Fixed ranks keep the counts identical on every machine."""
    fc1 = model.fc1
    return {"fc1": rank_for_budget(fc1.in_features, fc1.out_features,
                                   linear_params(fc1.in_features, fc1.out_features) // 10),
            "conv2": (16, 12)}


def lowrank_finetune(model: nn.Module, train, val=None, ranks: dict | None = None, method: str = "tucker",
                     epochs: int = 2, seed: int = 0, **fit_kw) -> nn.Module:
    """``lowrank.factorize`` a copy of ``model`` with ``ranks`` (default ``chapter3_ranks``) and
    ``method`` ("tucker" or "cp" for convolutions), then fine-tune it ``epochs`` with ``LOWRANK_FINETUNE``."""
    ranks = chapter3_ranks(model) if ranks is None else ranks
    seed_everything(seed)
    m = factorize(model, ranks, method=method)
    fit(m, train, val, epochs=epochs, seed=seed, **(LOWRANK_FINETUNE | {"desc": "low-rank"} | fit_kw))
    return m.cpu().eval()


def conv2_sides(model: nn.Module, input_shape: tuple = (1, 28, 28)) -> tuple[int, int]:
    """(side of conv2's input, side of its output) in a LeNet-5 for square inputs of ``input_shape``
    (C, H, W): conv1 (valid), 2x2 max-pool, then conv2 (valid). (12, 8) for 28x28 MNIST, (14, 10) for 32x32."""
    if len(input_shape) != 3 or input_shape[1] < 16:
        raise ValueError(f"input_shape={input_shape!r} must be (C, H, W) with H >= 16")
    side_in = (input_shape[1] - model.conv1.kernel_size[0] + 1) // 2
    return side_in, side_in - model.conv2.kernel_size[0] + 1


def chapter3_cp_ranks(model: nn.Module, input_shape: tuple = (1, 28, 28)) -> dict:
    """Chapter 3's CP model at equal cost: fc1 as in ``chapter3_ranks`` (same treatment), conv2 by CP at
    the rank whose MACs (``lowrank.cp_macs``) come closest to the Tucker-2 conv2 of ``chapter3_ranks``
    (``lowrank.tucker2_macs``). ``model``: a LeNet-5 for inputs of ``input_shape`` (C, H, W)."""
    ranks = chapter3_ranks(model)
    conv = model.conv2
    side_in, side_out = conv2_sides(model, input_shape)
    c_out, c_in, kh, kw = conv.weight.shape
    budget = tucker2_macs(c_in, c_out, (kh, kw), ranks["conv2"], side_in, side_out)
    per_rank = cp_macs(c_in, c_out, (kh, kw), 1, side_in, side_out)
    return {"fc1": ranks["fc1"], "conv2": max(1, round(budget / per_rank))}


def unfactorized_finetune(model: nn.Module, train, val=None, epochs: int = 2, seed: int = 0, **fit_kw) -> nn.Module:
    """The control of ``lowrank_finetune``: a copy of ``model`` NOT factorized, fine-tuned with the same
    recipe (``LOWRANK_FINETUNE``), epochs and seed, so a factorized model's extra training is matched."""
    seed_everything(seed)
    m = copy.deepcopy(model)
    fit(m, train, val, epochs=epochs, seed=seed, **(LOWRANK_FINETUNE | {"desc": "dense fine-tune"} | fit_kw))
    return m.cpu().eval()


# ---------------------------------------------------------------- chapter 4: distillation
def scratch_student(student: nn.Module, train, val=None, epochs: int = STUDENT_EPOCHS, seed: int = 0,
                    **fit_kw):
    """Train ``student`` IN PLACE from scratch with ``STUDENT_FIT`` for ``epochs``; returns the History."""
    return fit(student, train, val, epochs=epochs, seed=seed, **(STUDENT_FIT | {"desc": "scratch"} | fit_kw))


def smoothed_student(student: nn.Module, train, val=None, epochs: int = STUDENT_EPOCHS, seed: int = 0,
                     smoothing: float = LABEL_SMOOTHING, **fit_kw):
    """Train ``student`` IN PLACE from scratch exactly as ``scratch_student``, but against labels smoothed
    by ``smoothing`` in [0, 1) (Szegedy et al. 2016; Mueller et al. 2019): the target puts 1 - smoothing
    on the label and smoothing / C on every class. Chapter 4's control: the part of distillation's gain
    that any softer target would give. Returns the History."""
    number_in("smoothing", smoothing, 0.0, 1.0, hi_open=True)

    def loss_fn(model, x, y):
        logits = model(x)
        return torch.nn.functional.cross_entropy(logits, y, label_smoothing=smoothing), logits

    return fit(student, train, val, epochs=epochs, seed=seed,
               **(STUDENT_FIT | {"desc": "label smoothing"} | fit_kw | {"loss_fn": loss_fn}))


def distill_student(student: nn.Module, teacher: nn.Module, train, val=None, epochs: int = STUDENT_EPOCHS,
                    seed: int = 0, **kw):
    """Train ``student`` IN PLACE by distillation from ``teacher`` with the same recipe as
    ``scratch_student`` plus ``KD`` (temperature 4, alpha 0.9); returns the History."""
    return distill(teacher, student, train, val, epochs=epochs, seed=seed,
                   **(STUDENT_FIT | KD | {"desc": "distill"} | kw))



STUDENT_METHODS = ("scratch", "kd", "label-smoothing")


def cached_student(method: str, student: nn.Module, train, epochs: int = STUDENT_EPOCHS, seed: int = 0,
                   teacher: nn.Module | None = None, dataset: str = "mnist5k", device=None, **kd_kw) -> dict:
    """Train chapter 4's ``student`` IN PLACE once, by ``method``: "scratch" (``scratch_student``), "kd"
    (``distill_student`` from ``teacher``; ``kd_kw``: temperature, alpha, hint, hint_weight) or
    "label-smoothing" (``smoothed_student``), on ``train`` (a TensorDataset or (x, y) tensors) for ``epochs``
    (>= 1) with ``seed``; later calls with the same inputs load the result (``training.cached_training``:
    build/cache, then the students the course ships in ``data/trained``, else training).

    The key holds everything the result depends on: the method and its recipe (``STUDENT_FIT``, with ``KD``
    and ``kd_kw`` for "kd", ``LABEL_SMOOTHING`` for "label-smoothing"), epochs, seed, fingerprints of the
    training data, of the teacher's weights (a ``TeacherCache`` counts as the teacher it wraps) and of a
    hint's regressor and layers, and the student's initial weights. ``dataset`` names the files only. (A
    ``TeacherCache`` returns the logits of the batch that first held an image, which can differ from a fresh
    forward in the last bit: a student trained beside others that were loaded is equal to the shipped one up to
    that rounding, not bit for bit.)
    Returns ``cached_training``'s info ("cached", "shipped", "history", ...)."""
    one_of("method", method, STUDENT_METHODS)
    int_in("epochs", epochs, 1, None)
    if (teacher is None) != (method != "kd"):
        raise ValueError(f"teacher is {'missing' if teacher is None else 'given'} for method={method!r}: "
                         "give a teacher for 'kd' and only for 'kd'")
    if kd_kw and method != "kd":
        raise ValueError(f"{sorted(kd_kw)} apply to method='kd' only, not {method!r}")
    if unknown := set(kd_kw) - {"temperature", "alpha", "hint", "hint_weight"}:
        raise ValueError(f"unknown distillation argument(s) {sorted(unknown)}: valid are temperature, alpha, "
                         "hint, hint_weight")
    recipe = {"method": method, "fit": STUDENT_FIT, "epochs": epochs, "seed": seed, "data": fingerprint(train)}
    if method == "kd":
        hint = kd_kw.get("hint")
        plain = {k: v for k, v in kd_kw.items() if k != "hint"}
        recipe["kd"] = KD | plain
        recipe["teacher"] = fingerprint(teacher.teacher if isinstance(teacher, TeacherCache) else teacher)
        if hint is not None:
            recipe["hint"] = {"student_layer": hint.student_layer, "teacher_layer": hint.teacher_layer,
                              "regressor": fingerprint(hint.regressor)}
        run = lambda m: distill_student(m, teacher, train, epochs=epochs, seed=seed, device=device, **kd_kw)  # noqa: E731
    elif method == "label-smoothing":
        recipe["smoothing"] = LABEL_SMOOTHING
        run = lambda m: smoothed_student(m, train, epochs=epochs, seed=seed, device=device)  # noqa: E731
    else:
        run = lambda m: scratch_student(m, train, epochs=epochs, seed=seed, device=device)  # noqa: E731
    return cached_training(f"student_{dataset_key(dataset)}_{method}", student, run, recipe)


# arguments that change where or how visibly a recipe runs, never what it trains: not in a cache key
_NOT_IN_KEY = ("device", "progress", "desc")
# the recipes cached_recipe caches, each with the module constants it trains with beyond its own arguments
# (read when called, so a changed constant changes the key)
RECIPE_CONSTANTS = {
    "deep_compression_prune": lambda: {"FINETUNE": FINETUNE},   # gradual_prune fine-tunes with it
    "latency_model": lambda: {},                                # its ratio default (LATENCY_RATIO) is an argument
}


def cached_recipe(fn, model: nn.Module, train, dataset: str = "mnist5k", cache=None, **kw) -> tuple[nn.Module, dict]:
    """``fn(model, train, **kw)`` (a recipe of this module that returns a new model with a ``config``, such as
    ``deep_compression_prune`` or ``latency_model``), run once and then loaded (``training.cached_model``:
    ``cache``, default build/cache, then the models the course ships in ``data/trained``, else run).

    The key holds the recipe's name, every argument it is called with (its defaults filled in, ``device`` and
    ``progress`` left out, ``val`` too: it is only evaluated), the module constants it reads
    (``RECIPE_CONSTANTS``) and fingerprints of ``model``'s weights and of ``train``. ``dataset`` names the files
    only. A recipe that returns more than a model (``gradual_prune``'s pruner) is refused. Returns (model, info)."""
    import inspect

    from . import models
    if not callable(fn) or getattr(fn, "__module__", None) != __name__ or fn.__name__ not in RECIPE_CONSTANTS:
        raise ValueError(f"fn = {fn!r} is not valid: give one of the recipes {sorted(RECIPE_CONSTANTS)} "
                         "(recipes that return one model)")
    sig = inspect.signature(fn)
    args = sig.bind(model, train, **kw)
    args.apply_defaults()
    first_two = list(sig.parameters)[:2]  # the input model and the training data: fingerprinted below
    named = {k: v for k, v in args.arguments.items() if k not in (*first_two, "val", "fit_kw")}
    named = {k: v for k, v in (named | args.arguments.get("fit_kw", {})).items() if k not in _NOT_IN_KEY}
    if fn.__name__ == "latency_model" and named.get("ratio") is None:
        named["ratio"] = LATENCY_RATIO
    key = {"recipe": {"fn": fn.__name__, "args": named, "constants": RECIPE_CONSTANTS[fn.__name__]()},
           "input": fingerprint(model), "data": fingerprint(train)}

    def make():
        out = fn(model, train, **kw)
        if not isinstance(out, nn.Module):
            raise TypeError(f"{fn.__name__} returned a {type(out).__name__}, not a model: cached_recipe caches "
                            "recipes that return one model")
        return out

    def build(info):
        return getattr(models, info["class"])(**info["config"])
    return cached_model(f"recipe_{dataset_key(dataset)}_{fn.__name__}", make, key, build, cache=cache)

# ---------------------------------------------------------------- chapter 5: putting it together
# Chapter 5's budget, fixed before the run (not tuned on the test split): Deep Compression prunes for
# DC_EPOCHS, then trains its shared centroids for CENTROID_EPOCHS (Han et al.'s trained quantization) at
# chapter 2's centroid rate (KMEANS_LR, chosen there on validation for 3 and 4 levels; not re-tuned for
# the 32 and 256 levels here, where chapter 2 found the rate hardly matters). Per-layer bits as Han et al. used
# for LeNet: 8 for conv (256 shared values), 5 for fc (32); the relative-index gaps the same widths.
# Every off-the-shelf peer gets the same number of epochs after the baseline (PEER_EPOCHS) with the
# course's FINETUNE recipe; the latency model and its controls get LATENCY_EPOCHS each.
DC_EPOCHS = 12
CENTROID_EPOCHS = 1
CENTROID_LR = KMEANS_LR[4]
DC_BITS = {"conv1": 8, "conv2": 8, "fc1": 5, "fc2": 5}
PEER_EPOCHS = DC_EPOCHS + CENTROID_EPOCHS
LATENCY_EPOCHS = 10


def deep_compression_prune(model: nn.Module, train, val=None, sparsity: float = 0.95, epochs: int = DC_EPOCHS,
                           seed: int = 0, **fit_kw) -> nn.Module:
    """Stage 1 of Deep Compression: a copy of ``model`` pruned gradually to ``sparsity`` during ``epochs``
    (one-cycle schedule, the sparsity ramps over the first 70% of the steps), masks made permanent."""
    m, _ = gradual_prune(model, train, val, sparsity, epochs=epochs, ramp=0.7, seed=seed, remove=True,
                         **({"schedule": "onecycle", "desc": "prune"} | fit_kw))
    return m


def train_centroids(pruned: nn.Module, train, bits=None, epochs: int = CENTROID_EPOCHS, lr: float = CENTROID_LR,
                    seed: int = 0, **fit_kw) -> nn.Module:
    """Stage 2 of Deep Compression, trained quantization: share the non-zero weights of each layer of a copy of
    ``pruned`` through a codebook of 2**bits values (``Q.shared_weights_model``; bits an int or {layer: bits},
    default ``DC_BITS``), train the codebooks only for ``epochs`` >= 0 (the indices and the zeros stay fixed;
    autograd sums the gradients of the weights sharing a centroid; shifts, AdamW at ``lr``), and return an
    ordinary model holding only zeros and codebook values (``Q.bake_shared``)."""
    epochs = int_in("epochs", epochs, 0, None)
    q = Q.shared_weights_model(pruned, DC_BITS if bits is None else bits)
    if epochs:
        books = [p for n, p in q.named_parameters() if n.endswith("codebook")]
        seed_everything(seed)
        fit(q, train, epochs=epochs, lr=lr, params=books, seed=seed,
            **({"augment": 1, "optimizer": "adamw", "weight_decay": 0.0, "desc": "centroids"} | fit_kw))
    return Q.bake_shared(q.cpu())


def deep_compression(model: nn.Module, train, val=None, sparsity: float = 0.95, bits=None, epochs: int = DC_EPOCHS,
                     seed: int = 0, centroid_epochs: int = CENTROID_EPOCHS, centroid_lr: float = CENTROID_LR,
                     **fit_kw) -> nn.Module:
    """Han et al. (2016), rebuilt: ``deep_compression_prune`` for ``epochs``, then ``train_centroids``
    (bits an int or {layer: bits}, default ``DC_BITS``: 8 for conv, 5 for fc) for ``centroid_epochs``
    (0: plain k-means sharing). Returns a new model holding only zeros and codebook values, ready for
    ``storage.save_compressed``. ``fit_kw`` go to the pruning stage; of them, ``device`` and ``progress``
    to the centroid stage too (its optimiser and schedule are its own)."""
    m = deep_compression_prune(model, train, val, sparsity, epochs, seed, **fit_kw)
    both = {k: fit_kw[k] for k in ("device", "progress") if k in fit_kw}
    return train_centroids(m, train, bits, centroid_epochs, centroid_lr, seed, **both)


def latency_ratio(conv1: float) -> dict:
    """The latency model's pruning ratios with conv1's set to ``conv1`` (in [0, 1)); conv2 and fc1 as in
    ``LATENCY_RATIO``."""
    return LATENCY_RATIO | {"conv1": number_in("conv1", conv1, 0, 1, hi_open=True)}


def pick_latency_ratio(val_acc: dict, baseline_val: float, margin: float = LATENCY_VAL_MARGIN) -> float:
    """Chapter 5's rule for conv1's pruning ratio, fixed before any candidate was trained: the largest ratio
    (the fewest filters kept, the fastest model) whose mean validation accuracy is at most ``margin`` below
    ``baseline_val`` (inclusive, up to float32 rounding); when none is, the smallest ratio offered (the mildest
    pruning).

    val_acc: {conv1 ratio in [0, 1): validation accuracies in [0, 1], one per seed (a non-empty list or tuple,
    or a 1-D array)}, non-empty. baseline_val: the baseline's validation accuracy in [0, 1]; margin in [0, 1].
    Returns a key of ``val_acc``."""
    if not isinstance(val_acc, dict) or not val_acc:
        raise ValueError(f"val_acc={val_acc!r} is not valid: give {{conv1 ratio: [val accuracy per seed]}}")
    number_in("baseline_val", baseline_val, 0, 1)
    number_in("margin", margin, 0, 1)
    means = {}
    for r, accs in val_acc.items():
        number_in("val_acc key (a conv1 ratio)", r, 0, 1, hi_open=True)
        accs = accs.tolist() if hasattr(accs, "tolist") else accs
        if not isinstance(accs, (list, tuple)) or not accs:
            raise ValueError(f"val_acc[{r}]={accs!r} is not valid: give a non-empty list of validation accuracies "
                             "in [0, 1], one per seed")
        means[r] = sum(number_in(f"val_acc[{r}]", a, 0, 1) for a in accs) / len(accs)
    ok = [r for r, m in means.items() if baseline_val - m <= margin + 1e-6]  # 1e-6: accuracies come from float32
    return max(ok) if ok else min(means)


def latency_model(teacher: nn.Module, train, val=None, ratio=None, epochs: int = LATENCY_EPOCHS, seed: int = 0,
                  lr: float = 2e-3, temperature: float = 4.0, alpha: float = 0.7, scratch: bool = False,
                  **fit_kw) -> nn.Module:
    """Channel-prune a copy of ``teacher`` (``ratio``, default ``LATENCY_RATIO``), then fine-tune it
    by distillation from ``teacher`` (one-cycle AdamW with shifts). Returns the small model.

    The controls use the same recipe and budget: ``alpha=0.0`` trains on the labels only (pruning
    without distillation); ``scratch=True`` starts the same architecture from random weights (drawn
    from ``seed``) instead of the pruned teacher's (with ``alpha=0.0``: no distillation either)."""
    number_in("alpha", alpha, 0, 1)
    ratio = LATENCY_RATIO if ratio is None else ratio
    seed_everything(seed)
    small = pruning.channel_prune(copy.deepcopy(teacher), ratio)
    if scratch:
        small = type(small)(**small.config)
    kw = dict(optimizer="adamw", weight_decay=1e-4, schedule="onecycle", augment=1, desc="distill") | fit_kw
    if alpha == 0:  # no distillation: the same recipe on the labels alone, without paying for teacher forwards
        fit(small, train, val, epochs=epochs, lr=lr, seed=seed, **(kw | {"desc": "labels only"}))
    else:
        distill(teacher, small, train, val, epochs=epochs, temperature=temperature, alpha=alpha, lr=lr, seed=seed, **kw)
    return small.eval()
