# %% [markdown]
# # 01 · Pruning: from magnitude masks to physically smaller, faster models
#
# **Learning goals**
# - see in the weight histograms why most weights of a trained network can be removed, and why one
#   global threshold spares the first layer;
# - prune by magnitude, layer by layer and globally, with masks that stay applied through fine-tuning,
#   written from scratch and checked against `torch.nn.utils.prune` (and learn its three gotchas);
# - allocate per-layer sparsities from a sensitivity scan, and compare that fairly with a global threshold;
# - compare one-shot pruning with gradual pruning (Zhu & Gupta, 2017) **at an equal training budget**,
#   over several fine-tuning seeds, against the two controls every pruning result needs: random pruning
#   at the same sparsity, and a dense model of the same size trained from scratch (Blalock et al., 2020;
#   Liu et al., 2019);
# - measure why 90% zeros do **not** make a dense model faster (Amdahl's law), and what sparse storage saves;
# - remove whole filters (structured pruning), derive why MACs fall by about $(1-r)^2$, see why latency
#   need not follow the MACs, and compare with the same small widths trained from scratch.
#
# **Run time:** about 2 minutes on a 2-core laptop CPU (21 pruning runs of 4 epochs; the twelve small
# from-scratch controls of 20 epochs load from the weights the course ships in `data/trained/`, or, with
# `COURSE_SHIPPED_WEIGHTS=0`, are trained once, about 3 more minutes, and cached).
# The baseline comes from the cache of chapter 00, or is retrained in about 20 seconds. Lab mode
# (`LAB_MODE`) runs every cell on smaller budgets (one seed, shorter training, fewer timing rounds); its
# first cell prints what it cuts and which numbers are then less reliable.

# %%
# Hosted notebooks (Colab, Kaggle) start without the course: this cell installs it there, beside their own
# torch (course_lib/hosted.py says how). Anywhere else it does nothing: `make` or `python -m course_lib` installed it.
import importlib.util, os, subprocess, sys  # noqa: E401
COURSE_REPO = "https://github.com/compression-course/compression-course"
if importlib.util.find_spec("course_lib") is None and ("google.colab" in sys.modules or "KAGGLE_KERNEL_RUN_TYPE" in os.environ):
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", f"course_lib @ git+{COURSE_REPO}"], check=True)
    from course_lib.hosted import install_requirements
    install_requirements()

# %% tags=["parameters"]
DATASET = "mnist5k"     # "mnist", "fashion_mnist" or "cifar10" once their archives are in place
SEED = 0                # the baseline's seed (chapter 00's cached model)
SEEDS = (0, 1, 2)       # recipes.SEEDS: every headline number is a mean over these fine-tuning seeds
EPOCHS = 4              # recipes.PRUNE_EPOCHS: training epochs after the baseline for EVERY pruning method
SPARSITIES = (0.9, 0.95)  # the targets' sparsities, each run with every seed
CHANNEL_RATIO = 0.5     # fraction of channels removed by structured pruning (widths 20/50/500 -> 10/25/250)
DEVICE = None           # None: $COURSE_DEVICE, else CUDA if available, else CPU
LAB_MODE = None  # True: one seed and short budgets, under half a minute (None: $COURSE_LAB_MODE, else False)

# %% [markdown]
# ## 1. Environment check

# %%
# NBVAL_IGNORE_OUTPUT
import copy

import torch
from IPython.display import Markdown, display
from torch.nn.utils import prune as tprune

from course_lib import checks, deploy, measure, models, plots, pruning, recipes, records, stats, storage
from course_lib.data import load_dataset
from course_lib.env import data_note, lab_mode, lab_note, start_chapter, targets_asserted
from course_lib.training import correct, evaluate, load_baseline

env, device = start_chapter(SEED, DEVICE)
LAB_MODE = lab_mode(LAB_MODE)
SCAN = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)  # section 5: sparsities of the sensitivity scan
CURVE = (0.5, 0.8, 0.9, 0.95, 0.98)            # section 8: one-shot pruning without fine-tuning
LATENCY_ROUNDS, TIMING_ROUNDS, REPEATS = 5, 3, 20  # results table; sections 9 and 11; calls per round
full = dict(seeds=len(SEEDS), epochs=EPOCHS, scan=len(SCAN), curve=len(CURVE), rounds=LATENCY_ROUNDS,
            timing=TIMING_ROUNDS, repeats=REPEATS)
if LAB_MODE:  # every cell still runs, on smaller budgets: one seed (the baseline's), a quarter of the epochs
    SEEDS, EPOCHS = (SEED,), max(1, EPOCHS // 4)
    SCAN, CURVE = (0.5, 0.8, 0.95, 0.99), (0.5, 0.9, 0.98)
    LATENCY_ROUNDS, TIMING_ROUNDS, REPEATS = 1, 1, 10
lab_note(LAB_MODE, cuts=f"seeds {len(SEEDS)} instead of {full['seeds']}; training epochs per pruning method "
         f"{EPOCHS} instead of {full['epochs']}; sparsities in the sensitivity scan {len(SCAN)} instead of "
         f"{full['scan']}, on the one-shot curve {len(CURVE)} instead of {full['curve']}; latency rounds "
         f"{LATENCY_ROUNDS} of {REPEATS} calls instead of {full['rounds']} of {full['repeats']} (per-layer timings "
         f"{TIMING_ROUNDS} instead of {full['timing']})",
         less_reliable="every accuracy after fine-tuning (a budget too short to recover, gradual pruning most of all, "
         "whose recovery phase shrinks to a few dozen steps; no spread over seeds), the one-shot-against-gradual and "
         "pruned-against-control verdicts, the scan-guided allocation (a coarser scan), every latency ratio and "
         "time share")

# %% [markdown]
# ## 2. The baseline, and how this chapter measures
# The LeNet-5 of chapter 00 (cached). Every number below is measured against it, in the same run of this notebook.
#
# **Splits.** Every decision (which layers to spare, how to allocate sparsity, which method to report
# against a target) is made on the **validation** split (500 images). The **test** split (1,000
# images) is used once per final model, for the results. Each printed number says its split.
#
# **Noise.** On 1,000 test images one image is 0.1 point, and an accuracy near 99% carries a 95%
# interval of roughly -0.9 / +0.5 points (chapter 00's Wilson interval, lopsided near 100%). Two models are compared *image by image* on the same
# test images (`stats.paired_compare`: the difference, its 95% paired-bootstrap interval and a verdict:
# better, worse or indistinguishable). Every pruning method is run with each fine-tuning seed of `SEEDS`
# (three in the full run, one in lab mode; the run prints how many): the randomness it adds is the order
# of the training batches and the augmentation (the random-pruning control also draws its mask from the seed).

# %%
splits = load_dataset(DATASET)
data_note(splits)  # prints only for data other than the course's
shape = splits.input_shape
n_test = len(splits.test)
baseline, meta = load_baseline(DATASET, SEED, device=device, splits=splits)
base_correct = correct(baseline, splits.test)     # (n_test,) bool: the baseline's one test evaluation
base_acc = base_correct.float().mean().item()
base_val = evaluate(baseline, splits.val)
base_params, base_macs = measure.count_params(baseline), measure.macs(baseline, shape)
print(f"splits: {len(splits.train):,} train, {len(splits.val):,} validation, {n_test:,} test images")
print(f"baseline: {base_params:,} parameters, {base_macs:,} MACs per image")
print(f"baseline accuracy: validation {100 * base_val:.2f}%, test {stats.format_accuracy(base_acc, n_test)}")

# %% [markdown]
# Every trained model of the chapter goes through one helper: it trains one model per seed, evaluates
# each once on the test split (per-image correctness, what `paired_compare` needs) and on validation
# (for decisions).

# %%
runs = {}  # name -> {"models": [one per seed], "correct": (seeds, n_test) bool, "val": [accuracy per seed]}


def over_seeds(name, make):
    """Train make(seed) for every seed of SEEDS; store and return the run (test evaluated once per model)."""
    ms = [make(s) for s in SEEDS]
    runs[name] = {"models": ms, "correct": torch.stack([correct(m, splits.test) for m in ms]),
                  "val": [evaluate(m, splits.val) for m in ms]}
    return runs[name]


def test_accs(name):
    """Per-seed test accuracies of a run, as a list of floats."""
    return runs[name]["correct"].float().mean(1).tolist()


def summary(name):
    s = stats.seed_summary(test_accs(name))
    return (f"{name:20s} test {100 * s['mean']:.2f}% ± {100 * s['std']:.2f} (sd over {s['n']} seeds), "
            f"validation {100 * sum(runs[name]['val']) / len(SEEDS):.2f}%")


# %% [markdown]
# ## 3. Why weights can be removed
# A trained layer holds many weights that are small compared with its largest ones. If a weight $w$ is
# small, its contribution $w\,x$ to the next layer is small too, so setting it to zero changes the output
# little. The histograms (log scale) show where the mass is; the printout gives, per layer, the share of
# weights below 10% of the layer's largest magnitude, and the mean magnitude next to the fan-in (the
# number of inputs each output sums).

# %%
fig = plots.weight_histograms(baseline)
global90 = pruning.layer_sparsity(pruning.magnitude_prune(copy.deepcopy(baseline), 0.9, scope="global"))
print(f"{'layer':6s} {'weights':>8s} {'<10% of max':>12s} {'fan-in':>7s} {'mean |w|':>9s} "
      f"{'mean|w|*sqrt(fan-in)':>21s} {'pruned by a global 90%':>23s}")
for name, w in measure.prunable_weights(baseline):
    fan_in = w[0].numel()
    small = (w.abs() < 0.1 * w.abs().max()).float().mean().item()
    mean_abs = w.abs().mean().item()
    print(f"{name:6s} {w.numel():8,d} {100 * small:11.1f}% {fan_in:7d} {mean_abs:9.4f} "
          f"{mean_abs * fan_in ** 0.5:21.3f} {100 * global90[name]:22.1f}%")


# %% [markdown] tags=["theory"]
# **Two layers, two shapes.** `fc1` (400,000 weights) is sharply peaked at zero: most of its weights are
# tiny and can go. `conv1` is different: its 500 weights are 20 stroke and edge detectors of 5×5 pixels,
# and its histogram is flat and spread out, with few weights near zero. Almost every `conv1` weight
# carries signal, which is why `conv1` is the fragile layer in the sensitivity scan of section 5.
#
# **Why one global threshold spares `conv1`: fan-in scaling.** PyTorch initialises a layer with
# weights of scale about $1/\sqrt{\text{fan-in}}$ so that every layer's outputs start with a similar
# variance; training keeps the layers roughly in that ratio. `conv1` sums 25 inputs per output, `fc1` sums
# 800, so by this rule `conv1`'s weights are about $\sqrt{800/25} \approx 5.7$ times larger (compare the printed mean
# $|w|$; the column $\overline{|w|}\sqrt{\text{fan-in}}$ varies much less than $\overline{|w|}$ does).
# One threshold for the whole model therefore prunes *by fan-in* as much as by importance: it takes
# nearly all its zeros from the wide layers and almost none from `conv1`. That happens to suit LeNet, but
# it is also why global magnitude pruning misleads when layer scales are arbitrary (e.g. weights
# followed by BatchNorm, which rescales them freely): a weight's magnitude only means something relative
# to its layer's scale.
#
# ## 4. Magnitude pruning from scratch
# For a weight tensor $W$ with $n$ entries and a target sparsity $s \in [0, 1)$, remove the
# $k = \mathrm{round}(s\,n)$ entries of smallest magnitude: sort $|w|$ and zero the first $k$, with
# **ties broken by index** (a stable sort: among equal magnitudes the lower flat index is pruned first),
# so that there are exactly $k$ zeros. The threshold form $M = \mathbb{1}[\,|W| > \tau\,]$, with $\tau$
# the $k$-th smallest $|w|$, is the same mask only when no other weight ties with $\tau$; with ties it
# zeroes more than $k$ weights. The pruned weight is $W \odot M$.
#
# **Exercise 1.** Write `magnitude_mask(w, sparsity)`: a 0/1 tensor of the shape of `w` with exactly
# `round(sparsity * w.numel())` zeros, at the smallest $|w|$. Do not change `w`.

# %% nbgrader={"grade": false, "grade_id": "magnitude_mask", "locked": false, "schema_version": 3, "solution": true, "task": false}
def magnitude_mask(w: torch.Tensor, sparsity: float) -> torch.Tensor:
    # Hint: first work out how many zeros you need (how do you round?); rank positions by magnitude, not by signed value, and break ties so the count stays exact.
    ### BEGIN SOLUTION
    k = round(sparsity * w.numel())
    mask = torch.ones_like(w)
    if k > 0:
        idx = torch.argsort(w.abs().flatten(), stable=True)[:k]
        mask.view(-1)[idx] = 0
    return mask
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "check_magnitude_mask", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
checks.check_magnitude_mask(magnitude_mask)

# %% [markdown]
# ### Layer-wise or global?
# *Layer-wise*: every layer gets sparsity $s$. *Global*: one threshold for all layers together, so the
# layers with many small weights give up more (section 3). `course_lib.pruning.magnitude_prune` does
# both; it stores each mask as a buffer `weight_mask` and zeroes the weights in place. Next to it, the
# production tool, `torch.nn.utils.prune`, which reparametrises `weight = weight_orig * weight_mask`.
# These pruned-but-not-fine-tuned models are intermediate steps, not results, so they are scored on
# **validation**.

# %%
ours = pruning.magnitude_prune(copy.deepcopy(baseline), 0.9, scope="global")
theirs = copy.deepcopy(baseline)
params = [(mod, "weight") for mod in pruning.prunable_layers(theirs).values()]
tprune.global_unstructured(params, pruning_method=tprune.L1Unstructured, amount=0.9)
layerwise = pruning.magnitude_prune(copy.deepcopy(baseline), 0.9, scope="layer")
same_as_torch = {}
print(f"{'layer':6s} {'global':>8s} {'layer-wise':>11s}  same mask as torch.nn.utils.prune")
for name, mask in pruning.masks(ours).items():
    same_as_torch[name] = torch.equal(mask, theirs.get_submodule(name).weight_mask)
    print(f"{name:6s} {100 * global90[name]:7.1f}% {100 * pruning.layer_sparsity(layerwise)[name]:10.1f}%  "
          f"{same_as_torch[name]}")
val_global, val_layer, val_torch = (evaluate(m, splits.val) for m in (ours, layerwise, theirs))
print(f"one-shot 90%, no fine-tuning (validation): global {100 * val_global:.2f}%, "
      f"layer-wise {100 * val_layer:.2f}%, torch global {100 * val_torch:.2f}%")

# %% [markdown]
# Both implementations choose exactly the same weights (the unit tests check it on random models in
# float64). Layer-wise pruning leaves `conv1` only 50 weights to see the image with.
#
# ### Three `torch.nn.utils.prune` gotchas
# 1. **Repeated calls prune a fraction of what remains.** `amount` counts the *currently unpruned*
#    weights (the pruning container combines the masks), so `l1_unstructured(amount=0.5)` twice leaves
#    $0.5 \times 0.5 = 25\%$ of the weights: 75% sparsity, not 50%. `course_lib.pruning.magnitude_prune`
#    treats the sparsity as a total instead: pruning again at 0.5 changes nothing.
# 2. **The state dict holds `weight_orig` and `weight_mask`,** both full size, so a pruned model saved
#    as it is takes about twice the dense file. `prune.remove` folds the mask into a plain `weight`.
# 3. **`ln_structured` zeroes whole filters but does not remove them**: the tensor keeps its shape and a
#    dense kernel does exactly the same work. Section 10 builds the physically smaller model instead.

# %%
gotcha = copy.deepcopy(baseline)
tprune.l1_unstructured(gotcha.fc1, "weight", amount=0.5)
tprune.l1_unstructured(gotcha.fc1, "weight", amount=0.5)
twice = (gotcha.fc1.weight == 0).float().mean().item()
print(f"fc1 after l1_unstructured(amount=0.5) twice: {100 * twice:.1f}% zeros")
print("fc1 state dict entries:", [k for k in gotcha.state_dict() if k.startswith("fc1.")])
kib = {"dense baseline": measure.serialized_bytes(baseline.state_dict()) / 1024,
       "pruned, saved as it is": measure.serialized_bytes(gotcha.state_dict()) / 1024}
tprune.remove(gotcha.fc1, "weight")
kib["after prune.remove"] = measure.serialized_bytes(gotcha.state_dict()) / 1024
print("fc1 state dict entries after prune.remove:", [k for k in gotcha.state_dict() if k.startswith("fc1.")])
print("torch.save file:", ", ".join(f"{k} {v:.1f} KiB" for k, v in kib.items()))

zeroed = copy.deepcopy(baseline)
tprune.ln_structured(zeroed.conv2, "weight", amount=CHANNEL_RATIO, n=1, dim=0)
dead = zeroed.conv2.weight.flatten(1).abs().sum(1) == 0
print(f"conv2 after ln_structured(amount={CHANNEL_RATIO}, n=1, dim=0): weight shape {tuple(zeroed.conv2.weight.shape)}, "
      f"{int(dead.sum())} of {len(dead)} filters all zero; MACs a dense kernel runs: {measure.macs(zeroed, shape):,}")
same_filters = torch.equal(torch.nonzero(~dead).flatten(), pruning.filters_to_keep(baseline.conv2.weight, CHANNEL_RATIO))
print("it keeps the same filters as channel pruning's L1 criterion (section 10):", same_filters)

# %% [markdown]
# ## 5. Sensitivity scan, and a fair comparison of allocations
# How much does each layer tolerate on its own? Prune one layer at a time to increasing sparsity,
# without fine-tuning, and measure **validation** accuracy. Flat curves mark redundant layers; steep
# ones mark layers to spare.

# %%
scan = pruning.sensitivity_scan(baseline, splits.val, SCAN, device=device)
fig = plots.sensitivity(scan, SCAN, reference=base_val)

# %% [markdown]
# A scan is used to *allocate* a budget: given a total sparsity, which layer gives up how much?
# `pruning.allocate_sparsities` lets every layer lose the same validation accuracy $d$ when pruned alone
# (read off its scanned curve, interpolated linearly), and finds $d$ by bisection so that the layers'
# zeros add up to exactly the total:
# $$\sum_l n_l\, s_l(d) = s_{\text{total}} \sum_l n_l .$$
# Against it, the global threshold at the same total, 90%. Both without fine-tuning, both on
# validation (this is a decision, not a result), compared image by image.

# %%
# NBVAL_IGNORE_OUTPUT
sizes = {name: mod.weight.numel() for name, mod in pruning.prunable_layers(baseline).items()}
allocation = pruning.allocate_sparsities(scan, SCAN, base_val, sizes, target=0.9)
guided = pruning.magnitude_prune(copy.deepcopy(baseline), allocation)
print("per-layer sparsity, scan-guided:", {k: f"{100 * v:.1f}%" for k, v in allocation.items()})
print("per-layer sparsity, global:     ", {k: f"{100 * v:.1f}%" for k, v in global90.items()})
print(f"total sparsity: scan-guided {100 * measure.sparsity(guided):.2f}%, global {100 * measure.sparsity(ours):.2f}%")
guided_vs_global = stats.paired_compare(correct(guided, splits.val), correct(ours, splits.val))
print(f"validation accuracy, no fine-tuning: scan-guided {100 * evaluate(guided, splits.val):.2f}%, "
      f"global {100 * val_global:.2f}%; scan-guided - global: {guided_vs_global}")

# %% [markdown]
# Two allocations of the same budget, one comparison, no fine-tuning, 500 validation images: the verdict
# above is about that setting only. Fine-tuning may repair much of either allocation's damage, and this
# chapter does not test which of the two is better after it (MIT 6.5940's Lab 1 hand-tunes a scan-guided
# allocation; the global threshold needs no scan). What the scan shows robustly is *which* layers to
# spare (`conv1`, whose flat histogram has few small weights) and which can go (`fc1`). From here on the
# chapter prunes with the global threshold.
#
# ## 6. Fine-tuning with masks that stay applied
# One-shot pruning costs accuracy; a few epochs of training on the surviving weights win it back. An
# optimizer step would move pruned weights away from zero, so after every step the masks are re-applied,
# $W \leftarrow W \odot M$ (`fit(..., after_step=pruning.apply_masks)`; `pruning.fine_tune` wraps it).
# `torch.nn.utils.prune` gets the same effect because $\partial L/\partial W_{orig} = M \odot \partial L/\partial W$.
#
# **The budget.** Every pruning method of this chapter trains for `EPOCHS` epochs after the baseline
# (one-shot + fine-tuning, gradual pruning, the random-pruning control, channel pruning) with the same
# learning-rate schedule family (AdamW, cosine decay to zero, shift augmentation: `recipes.FINETUNE`).
# The number was fixed by the chapter's run-time target before any result was seen; it is not tuned.
#
# **The off-the-shelf anchor**: `torch.nn.utils.prune` at 90% plus the same number of epochs with the
# recipe of most tutorials (Adam, constant $\eta = 10^{-3}$, no augmentation). It differs from the course
# recipe in three things at once (optimizer, schedule, augmentation), so any gap between them is not
# attributed to one of them.

# %%
print("tutorial recipe:", recipes.TUTORIAL_FINETUNE)
print("course recipe:  ", recipes.FINETUNE)
over_seeds("torch-prune-90-ft", lambda s: recipes.torch_prune_finetune(
    baseline, splits.train, amount=0.9, epochs=EPOCHS, seed=s, device=device))
for sp in SPARSITIES:
    over_seeds(f"global-{round(100 * sp)}-ft", lambda s, sp=sp: recipes.global_prune_finetune(
        baseline, splits.train, sparsity=sp, epochs=EPOCHS, seed=s, device=device))
for name in runs:
    print(summary(name), f"sparsity after fine-tuning {100 * measure.sparsity(runs[name]['models'][0]):.2f}% (seed 0)")


# %% [markdown]
# The sparsity is still exactly the target after fine-tuning: the masks survived every optimizer step.
#
# ## 7. Gradual pruning (Zhu & Gupta, 2017)
# Instead of removing everything at once, raise the sparsity during training, fast at first (many
# redundant weights) and slowly near the end, so the network adapts as it loses weights:
# $$s_t = s_f + (s_i - s_f)\left(1 - \frac{t - t_0}{n}\right)^3, \qquad t_0 \le t \le t_0 + n,$$
# from $s_i$ at step $t_0$ to $s_f$ at step $t_0+n$, pruning every few steps; after the ramp the
# network trains at the final sparsity while the learning rate decays.
#
# **Exercise 2.** Write the schedule for $s_i = 0$, $t_0 = 0$: `gradual(step, final_sparsity, total_steps)`,
# equal to `final_sparsity` for every step after `total_steps`.

# %% nbgrader={"grade": false, "grade_id": "gradual", "locked": false, "schema_version": 3, "solution": true, "task": false}
def gradual(step: int, final_sparsity: float, total_steps: int) -> float:
    # Hint: use the fraction of the ramp done so far (t0 = 0, s_i = 0 in the formula); what must it be for a step past total_steps?
    ### BEGIN SOLUTION
    frac = min(max(step / total_steps, 0.0), 1.0)
    return final_sparsity * (1.0 - (1.0 - frac) ** 3)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "check_gradual", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
checks.check_gradual_schedule(gradual)

# %%
# the gradual-pruning runs below use your gradual if its checker accepts it, else the library's schedule
schedule = checks.mine_or_library(gradual, checks.check_gradual_schedule, pruning.gradual_schedule, "gradual")

# %% [markdown]
# `pruning.GradualPruner` is an `after_step` hook for `fit`: every 10 steps it prunes to the sparsity
# your schedule gives (`schedule=`, here `gradual` from Exercise 2) with `magnitude_prune` (global), and
# after every step it re-applies the masks. Here it ramps over the first 5/8 of the same `EPOCHS` epochs
# the one-shot models were fine-tuned for, with the same recipe; the remaining 3/8 recover at the final
# sparsity. The figure shows the seed-0 run to 95%.

# %%
pruners = {}  # name -> the seed-0 run's GradualPruner (its history holds every pruning step)


# No cache can mix up your schedule's runs with the library's: recipes.gradual_prune trains afresh on every
# call (only load_baseline caches, and the baselines and controls it caches do not depend on the schedule).
# The checker accepts a schedule only if it matches the library's to 1e-9 at the start, middle, end and past
# the end of three ramps, so an accepted schedule is the cubic formula and gives the library's models (a
# difference in the last bit of a float does not change how many weights are pruned).
def gradual_run(name, sp, seed):
    model, pruner = recipes.gradual_prune(baseline, splits.train, sparsity=sp, epochs=EPOCHS, seed=seed,
                                          sparsity_schedule=schedule, device=device)
    pruners.setdefault(name, pruner)
    return model


for sp in SPARSITIES:
    name = f"gradual-{round(100 * sp)}"
    over_seeds(name, lambda s, name=name, sp=sp: gradual_run(name, sp, s))
    print(summary(name), f"sparsity {100 * measure.sparsity(runs[name]['models'][0]):.2f}% (seed 0)")
steps_total = EPOCHS * -(-len(splits.train) // 64)
fig = plots.pruning_schedule(pruners[f"gradual-{round(100 * SPARSITIES[-1])}"].history, steps_total)

# %% [markdown]
# ## 8. Equal budgets, the same seeds, and the controls
# One-shot + fine-tuning and gradual pruning now had the same `EPOCHS` epochs with the same schedule, from
# the same baseline, with the same seeds (`SEEDS`): a comparison in which one method trains longer than the
# other would measure the extra epochs, not the method. Two controls make the comparison mean something:
# - **random pruning** at the same sparsity, with the same fine-tuning: a random mask with the *same
#   per-layer sparsities* as the global magnitude mask, so that only the choice of weights differs. If
#   magnitude pruning is no better than this, the criterion is not what makes pruning work.
# - **a dense LeNet-5 trained from scratch with as many parameters as the pruned model has non-zeros**
#   (`models.lenet_widths_matching(nonzeros, by="params")`), and the course's standing small LeNet
#   (chapter 00, `models.SMALL_LENET`). If a small dense model of the same size does as well, pruning
#   bought nothing but the trouble of storing a sparse model (Liu et al., 2019). The controls are trained
#   with the baseline recipe (20 epochs) by `load_baseline(..., model_kw=...)` and cached; the pruned
#   models had those 20 epochs plus `EPOCHS`, so the budget, if anything, favours pruning.

# %%
for sp in SPARSITIES:  # the per-layer sparsities of the global magnitude mask at each sparsity
    layers = pruning.layer_sparsity(pruning.magnitude_prune(copy.deepcopy(baseline), sp, scope="global"))
    over_seeds(f"random-{round(100 * sp)}-ft", lambda s, ls=layers: recipes.random_prune_finetune(
        baseline, splits.train, sparsity=ls, epochs=EPOCHS, seed=s, device=device))
    print(summary(f"random-{round(100 * sp)}-ft"),
          f"(random masks, the per-layer sparsities of the global {round(100 * sp)}% mask)")

# %%
matched = {sp: models.lenet_widths_matching(measure.count_nonzero(runs[f"global-{round(100 * sp)}-ft"]["models"][0]))
           for sp in SPARSITIES}
controls = {f"scratch-matched-{round(100 * sp)}": w for sp, w in matched.items()} | {"small-lenet": models.SMALL_LENET}
for name, widths in controls.items():
    over_seeds(name, lambda s, w=widths: load_baseline(DATASET, s, splits=splits, device=device, model_kw=w)[0])
    m = runs[name]["models"][0]
    print(summary(name), f"widths {widths}, {measure.count_params(m):,} parameters")
for sp in SPARSITIES:
    nz = measure.count_nonzero(runs[f"global-{round(100 * sp)}-ft"]["models"][0])
    print(f"{round(100 * sp)}% models: {nz:,} non-zeros")

# %% [markdown]
# Every run against the accuracy-vs-sparsity axis. The x axis counts what a model keeps:
# $1 - \text{non-zeros}/\text{baseline parameters}$, so the dense controls sit where their size puts them.
# Bars are the 95% interval of each mean on the 1,000 test images (the test-sampling noise), dots the
# individual seeds, the grey band the baseline's interval. One-shot pruning *without* fine-tuning is
# shown too (one run per sparsity, each a final model evaluated once): where it drops below the
# chart's range it leaves the chart (all its accuracies are printed above the figure).

# %%
oneshot = {}  # CURVE: the sparsities (first cell)
for sp in CURVE:
    m = pruning.magnitude_prune(copy.deepcopy(baseline), sp, scope="global")
    oneshot[sp] = (1 - measure.count_nonzero(m) / base_params, evaluate(m, splits.test))


def x_of(name):
    return 1 - measure.count_nonzero(runs[name]["models"][0]) / base_params


def curve(names):
    return [x_of(n) for n in names], [test_accs(n) for n in names]


pct = [round(100 * sp) for sp in SPARSITIES]
series = {"one-shot, no fine-tuning": ([x for x, _ in oneshot.values()], [a for _, a in oneshot.values()]),
          f"one-shot + {EPOCHS} ep fine-tuning": curve([f"global-{p}-ft" for p in pct]),
          f"gradual, {EPOCHS} ep": curve([f"gradual-{p}" for p in pct]),
          f"random pruning + {EPOCHS} ep (control)": curve([f"random-{p}-ft" for p in pct]),
          "dense from scratch, matched non-zeros (control)": curve([f"scratch-matched-{p}" for p in pct]),
          "small LeNet from scratch (control)": curve(["small-lenet"])}
means = [sum(a) / len(a) for label, (_, accs) in series.items() if "no fine-tuning" not in label for a in accs]
fig = plots.accuracy_vs_sparsity(series, n_test, reference=base_acc, ylim=(100 * min(means) - 1.5, 100))
print("one-shot, no fine-tuning (test):", "  ".join(f"{100 * sp:.0f}%: {100 * a:.2f}" for sp, (_, a) in oneshot.items()))


# %% [markdown]
# ### Which differences are real?
# Each line compares two methods on the same 1,000 test images, each image's score averaged over the
# seeds: the difference in points, its 95% paired interval and the verdict.

# %%
# NBVAL_IGNORE_OUTPUT
def cmp(a, b):
    """Paired comparison of run a with run b (or the baseline) on the test images."""
    ca = runs[a]["correct"]
    cb = base_correct if b == "baseline" else runs[b]["correct"]
    return stats.paired_compare(ca, cb)


verdicts = {}
for p in pct:
    for a, b in ((f"global-{p}-ft", "baseline"), (f"gradual-{p}", "baseline"), (f"gradual-{p}", f"global-{p}-ft"),
                 (f"global-{p}-ft", f"scratch-matched-{p}"), (f"gradual-{p}", f"scratch-matched-{p}"),
                 (f"global-{p}-ft", "small-lenet"), (f"gradual-{p}", "small-lenet")):
        verdicts[a, b] = cmp(a, b)
for a, b in (("global-90-ft", "random-90-ft"), ("gradual-90", "random-90-ft"), ("global-95-ft", "random-95-ft"),
             ("gradual-95", "random-95-ft"), ("global-90-ft", "torch-prune-90-ft")):
    verdicts[a, b] = cmp(a, b)
for (a, b), c in verdicts.items():
    print(f"{a:18s} vs {b:18s} {c}")

# %% [markdown]
# **Which rows do the targets read?** They were fixed before this protocol's first run (`recipes.CH1_BUDGET`,
# the same as `make bench`): one-shot + fine-tuning at 90%, gradual pruning at 95%. Picking the better-looking
# method after seeing its test score would bias the result upwards; a choice made from data is made on
# validation. In the open: when the rows were fixed, the chapter's earlier single-seed results on the test split
# (before the protocol) were known, one-shot at 90% among them, so this choice is not free of the test split.
# The validation means are printed below, and section 13 reports each target on the row validation prefers too.

# %%
chosen = {round(100 * sp): (f"global-{round(100 * sp)}-ft" if how == "one-shot" else f"gradual-{round(100 * sp)}")
          for sp, how in recipes.CH1_BUDGET["target_methods"].items()}
for p in pct:
    print(f"{p}%: target row {chosen[p]}; validation means: "
          + ", ".join(f"{n} {100 * sum(runs[n]['val']) / len(SEEDS):.2f}%" for n in (f"global-{p}-ft", f"gradual-{p}")))


# %%
# NBVAL_IGNORE_OUTPUT
def said(c: stats.Comparison, a: str, b: str) -> str:
    """A sentence for a comparison: within noise is said as such, whatever the sign of the mean."""
    if c.verdict == "indistinguishable":
        return (f"{a} and {b} are indistinguishable ({c}): the {abs(100 * c.diff):.2f}-point difference of the means "
                f"is inside the noise, so it is neither a gain nor a loss")
    return f"{a} is {c.verdict} than {b} ({c})"


lines = []
for p in pct:
    g, o = f"gradual-{p}", f"global-{p}-ft"
    lines.append(f"- **{p}%, equal budgets ({EPOCHS} epochs each):** "
                 f"{said(verdicts[g, o], 'gradual', 'one-shot + fine-tuning')}.")
    lines.append(f"- **{p}% against the baseline:** {said(verdicts[chosen[p], 'baseline'], chosen[p], 'the baseline')}.")
    lines.append(f"- **{p}% against the dense model of the same size trained from scratch:** "
                 f"{said(verdicts[chosen[p], f'scratch-matched-{p}'], chosen[p], f'scratch-matched-{p}')}.")
for p in pct:
    lines.append(f"- **Magnitude against random pruning at {p}%:** "
                 f"{said(verdicts[f'global-{p}-ft', f'random-{p}-ft'], f'global-{p}-ft', f'random-{p}-ft')}.")
lines.append(f"- **Course recipe against the tutorial recipe at 90%:** "
             f"{said(verdicts['global-90-ft', 'torch-prune-90-ft'], 'global-90-ft', 'torch-prune-90-ft')}.")
display(Markdown("\n".join(lines)))

# %% [markdown]
# Read the verdicts, not the means: a mean above the baseline's with an interval that includes zero is
# *not* an improvement, and a non-monotone curve (a higher sparsity scoring a little more) is noise of the
# same kind. Below, the weights of the seed-0 **gradual 90%** model (masks made permanent): the gap around
# zero is the pruned mass.

# %%
fig = plots.weight_histograms(pruning.remove_masks(copy.deepcopy(runs["gradual-90"]["models"][0])))

# %% [markdown]
# ## 9. Zeros are not speed: latency of a 90%-sparse dense model
# A dense kernel multiplies every entry, zero or not: same MACs executed, same time. Only a *sparse*
# kernel can skip zeros, and it pays for index look-ups, so it wins only at high sparsity and only on the
# layers that hold the zeros. Below: the whole model, dense against 90%-sparse (the gradual 90% model),
# both as torch eager NCHW (same configuration for both, interleaved, single thread, batch 64); then
# `fc1` alone with a dense and a CSR kernel. `torch.sparse.mm(W_csr, x.T)` returns $(x W^\top)^\top$,
# the transpose of what `nn.Linear` returns (the CSR kernel's natural layout); the timing keeps that
# layout and does not count a transpose back.

# %%
# NBVAL_IGNORE_OUTPUT
sparse90 = runs["gradual-90"]["models"][0]
lat = measure.compare_latency({"dense": baseline, "90%-sparse": sparse90}, shape, rounds=TIMING_ROUNDS, repeats=REPEATS)
print(f"whole model, torch NCHW, batch 64, 1 thread: dense {lat['dense']:.2f} ms, 90%-sparse {lat['90%-sparse']:.2f} ms "
      f"(ratio {lat['dense'] / lat['90%-sparse']:.2f})")
w_fc1 = sparse90.fc1.weight
fc1_dense, fc1_csr = measure.matmul_latency_ms(w_fc1), measure.matmul_latency_ms(w_fc1, sparse=True)
print(f"fc1 alone ({100 * (w_fc1 == 0).float().mean().item():.1f}% zeros): dense kernel {fc1_dense:.3f} ms, "
      f"CSR kernel {fc1_csr:.3f} ms: on fc1 the sparse kernel's speed-up S = dense / CSR = {fc1_dense / fc1_csr:.2f}")

# %% [markdown]
# So a sparse kernel *can* pay, on one layer. How much can it give the whole model? Only what that layer
# takes. If `fc1` is a share $p$ of the model's time and becomes $S$ times faster, **Amdahl's law** gives
# the whole model's speed-up
# $$\text{speed-up} = \frac{1}{(1-p) + p/S} \;<\; \frac{1}{1-p},$$
# and even an infinitely fast `fc1` cannot beat $1/(1-p)$. `measure.time_children` times each layer
# inside a real forward pass (forward hooks): the share of `fc1`, in both torch layouts.

# %%
# NBVAL_IGNORE_OUTPUT
LAYERS = ["conv1", "conv2", "fc1", "fc2"]
x64 = torch.randn(64, *shape, generator=torch.Generator().manual_seed(0))
base_cl = copy.deepcopy(baseline).to(memory_format=torch.channels_last)
parts_base = measure.compare_time_children({"torch NCHW": baseline, "torch channels-last": base_cl}, x64, names=LAYERS,
                                          rounds=TIMING_ROUNDS, repeats=REPEATS)
speed_csr = fc1_dense / fc1_csr
for cfg, t in parts_base.items():
    p = t["fc1"] / t["total"]
    print(f"{cfg:20s} fc1 {t['fc1']:.3f} of {t['total']:.2f} ms = share p {p:.3f}: Amdahl's bound on the whole model's "
          f"speed-up in this configuration with the CSR fc1 {1 / ((1 - p) + p / speed_csr):.3f}, "
          f"with an infinitely fast fc1 {1 / (1 - p):.3f}")
sparse_exec = measure.macs(sparse90, shape, sparse=True) / base_macs
print(f"MACs a sparse kernel would still execute in the whole 90%-sparse model: {sparse_exec:.2f} of the dense count "
      f"(it could skip {1 - sparse_exec:.2f}): conv2 holds most of the MACs and is pruned less than fc1")

# %% [markdown]
# ## 10. What zeros do save: bytes on disk
# A sparse model stores only its non-zeros plus where they are:
# - **bitmask**: one bit per weight ($n/8$ bytes), then the $nnz$ non-zero values: $n/8 + 4\,nnz$ bytes;
# - **CSR**: per row a pointer, per non-zero a column index (2 bytes here) and a value: $\approx 6\,nnz$ bytes;
# - then **entropy coding** (lzma) squeezes the mask and indices, which are far from random.
#
# `storage.sparse_encode` writes these formats (biases stay dense) and `sparse_decode` reads them back
# bit-exactly. Sizes in KiB of the gradual 90% model (lzma's output varies by a few bytes with the weights):

# %%
sizes_kib = {}
base_bytes = measure.serialized_bytes(baseline)
for fmt in ("dense", "bitmask", "csr"):
    for comp in (None, "lzma"):
        sizes_kib[(fmt, comp)] = storage.sparse_bytes(sparse90, fmt, comp)
        print(f"{fmt:8s} {str(comp):5s} {sizes_kib[(fmt, comp)] / 1024:8.1f} KiB  "
              f"({base_bytes / sizes_kib[(fmt, comp)]:.1f}x smaller than the baseline's torch.save file)")
blob = storage.sparse_encode(sparse90, "bitmask", "lzma")
restored = storage.sparse_decode(blob)
print("round trip exact:", all(torch.equal(restored[k], v) for k, v in measure.effective_state_dict(sparse90).items()))

# %% [markdown]
# The bitmask costs one bit per weight whatever the sparsity, and each surviving value still takes 32
# bits, so at 90% sparsity the weights' file cannot fall below about $1/32 + 0.1 \approx 0.13$ of the dense one
# (at most about $7.6\times$ smaller) before entropy coding. Even the dense file shrinks under lzma, because runs of zero bytes compress, but
# a bitmask says the same thing more compactly. Chapter 02 quantizes the surviving values to shrink them
# further.
#
# ## 11. Structured pruning: remove whole filters
# To be faster with dense kernels the model must be *smaller*: fewer filters, fewer channels. Rank the
# filters of a layer by their L1 norm $\|F_j\|_1 = \sum_{c,u,v} |W_{j,c,u,v}|$ (Li et al., 2017) and keep
# the strongest $(1-r)$ fraction. Here are `conv2`'s 50 filters, sorted, with the cut at $r = 0.5$:

# %%
norms2 = pruning.filter_l1_norms(baseline.conv2.weight)
fig = plots.filter_norms(norms2, len(pruning.filters_to_keep(baseline.conv2.weight, CHANNEL_RATIO)),
                         title="conv2: L1 norm of each filter, sorted")
print(f"conv2 filter L1 norms: from {norms2.min():.1f} to {norms2.max():.1f}; the weakest filter has "
      f"{norms2.min() / norms2.max():.2f} of the strongest one's norm")


# %% [markdown]
# When the norms are close to one another, the criterion says little about which filters matter: the
# from-scratch control later in this section tests whether the kept weights matter at all.

# %% [markdown] tags=["theory"]
# Removing filter $j$ of a layer removes output channel $j$, so the next layer loses input channel $j$.
# After the last convolution and pooling the feature map is 4×4 (28 → 24 → 12 → 8 → 4), and the flatten
# maps channel $j$ of `conv2` to the $4 \times 4 = 16$ consecutive inputs $16j, \dots, 16j+15$ of `fc1`
# (800 = 50 × 16): those 16 columns of `fc1` go with it.
#
# **Exercise 3.** Write `keep_filters(w, ratio)`: the ascending indices of the filters to keep, i.e. all
# but the `round(ratio * out)` filters of smallest L1 norm. `w` has shape (out, in, kh, kw) or (out, in).

# %% nbgrader={"grade": false, "grade_id": "keep_filters", "locked": false, "schema_version": 3, "solution": true, "task": false}
def keep_filters(w: torch.Tensor, ratio: float) -> torch.Tensor:
    # Hint: reduce each filter (dim 0) to one number, its L1 norm over all its other axes; the strongest are kept, and the order of the returned indices matters.
    ### BEGIN SOLUTION
    n = w.shape[0]
    norms = w.abs().flatten(1).sum(1)
    keep = torch.argsort(norms, descending=True, stable=True)[: n - round(ratio * n)]
    return torch.sort(keep).values
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "check_keep_filters", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
checks.check_filters_to_keep(keep_filters)

# %% [markdown]
# The same mapping, drawn on the baseline: `fc1`'s weight matrix (magnitudes, its first 64 rows), its columns in
# blocks, one block per `conv2` channel (16 columns on the course's 28×28 digits; another image size gives
# another count, printed below). The strip above marks the channels that filter ranking keeps at
# $r = 0.5$; every red block leaves with its channel, so channel pruning at $r$ removes a fraction $r$ of
# `fc1`'s columns on top of the fraction $r$ of its rows that ranking `fc1`'s own units removes.

# %%
kept2 = pruning.filters_to_keep(baseline.conv2.weight, CHANNEL_RATIO)
per_ch = baseline.fc1.in_features // baseline.conv2.out_channels  # positions of conv2's pooled map per channel
fig = plots.flatten_columns(baseline.fc1.weight, kept2, per_channel=per_ch,
                            title=f"fc1's weights, {per_ch} columns per conv2 channel")
print(f"conv2 keeps {len(kept2)} of {baseline.conv2.out_channels} channels, so fc1 keeps "
      f"{per_ch * len(kept2)} of its {baseline.fc1.in_features} input columns ({per_ch} per channel)")

# %% [markdown] tags=["theory"]
# `pruning.channel_prune(model, ratio)` applies it to `conv1`, `conv2` and the hidden layer `fc1`, and
# returns a new, smaller `LeNet5` holding the kept weights.
#
# **How many MACs does that remove?** A layer's MACs are (inputs it reads per output) × (outputs). With
# a fraction $r$ of the channels removed everywhere:
# - `conv1`: $c_1 \cdot 1 \cdot 25 \cdot 24^2$, proportional to $c_1$ alone (its input, the image, keeps its
#   one channel): it falls to $(1-r)$;
# - `conv2`: $c_2 \cdot c_1 \cdot 25 \cdot 8^2$: both its inputs and its outputs shrink, $(1-r)^2$;
# - `fc1`: $(16\, c_2) \cdot f$: both sides shrink, $(1-r)^2$;
# - `fc2`: $f \cdot 10$: only its inputs shrink (the ten classes stay), $(1-r)$.
#
# The two middle layers hold most of the MACs (1,600,000 and 400,000 of 2,293,000), so the total falls by
# nearly $(1-r)^2$: at $r = 0.5$ a quarter of their MACs are left, and a half of the two others'. The
# printout checks the rule layer by layer with `measure.macs_by_layer`.

# %%
slim_oneshot = pruning.channel_prune(baseline, CHANNEL_RATIO)
widths = {k: slim_oneshot.config[k] for k in ("c1", "c2", "fc")}
print("widths:", widths, "(baseline:", {k: baseline.config[k] for k in ("c1", "c2", "fc")}, ")")
keep = {k: widths[k] / baseline.config[k] for k in widths}
predicted = {"conv1": keep["c1"], "conv2": keep["c1"] * keep["c2"], "fc1": keep["c2"] * keep["fc"], "fc2": keep["fc"]}
by_layer_base, by_layer_slim = measure.macs_by_layer(baseline, shape), measure.macs_by_layer(slim_oneshot, shape)
mac_law_holds = True
for name in LAYERS:
    got = by_layer_slim[name] / by_layer_base[name]
    mac_law_holds &= abs(got - predicted[name]) < 1e-12
    print(f"{name:6s} {by_layer_base[name]:9,d} -> {by_layer_slim[name]:9,d} MACs: kept {got:.4f}, predicted {predicted[name]:.4f}")
slim_macs = measure.macs(slim_oneshot, shape)
print(f"whole model: {base_macs:,} -> {slim_macs:,} MACs ({base_macs / slim_macs:.2f}x fewer); "
      f"parameters {base_params:,} -> {measure.count_params(slim_oneshot):,}")
print(f"right after pruning, before fine-tuning (validation): {100 * evaluate(slim_oneshot, splits.val):.2f}%")

# %% [markdown]
# Then the same `EPOCHS` of fine-tuning as every other method, with the same seeds; and its control: the
# **same widths trained from scratch** with the baseline recipe (Liu et al., 2019, found that such a
# control often matches the pruned model; if it does here, what channel pruning contributes is the
# choice of widths, not the inherited weights).

# %%
over_seeds("channel-50-ft", lambda s: recipes.channel_prune_finetune(
    baseline, splits.train, ratio=CHANNEL_RATIO, epochs=EPOCHS, seed=s, device=device))
over_seeds("channel-50-scratch", lambda s: load_baseline(DATASET, s, splits=splits, device=device, model_kw=widths)[0])
for name in ("channel-50-ft", "channel-50-scratch"):
    print(summary(name))

# %%
# NBVAL_IGNORE_OUTPUT
for a, b in (("channel-50-ft", "baseline"), ("channel-50-ft", "channel-50-scratch"), ("channel-50-scratch", "baseline")):
    verdicts[a, b] = cmp(a, b)
    print(f"{a:18s} vs {b:18s} {verdicts[a, b]}")

# %% [markdown]
# ### Why latency does not simply follow MACs
# Time each layer inside the forward pass, for the baseline and the channel-pruned model, in both torch
# layouts. Three things pull the time ratio below the MAC ratio. What is not a layer ("other": ReLU,
# max-pooling, flatten and the per-call overheads between layers) scales with the *activations*, which
# shrink only by $(1-r)$, not $(1-r)^2$; fixed per-call costs do not shrink at all; and small matrix
# products run at a lower fraction of the CPU's peak than large ones. One thing can push it above: a
# smaller model's weights and activations fit better in the caches. Which wins depends on the runtime
# and the CPU, so the printout shows both torch layouts, and the results table (section 12) the runtime
# that is fastest here.

# %%
# NBVAL_IGNORE_OUTPUT
slim = runs["channel-50-ft"]["models"][0]
slim_cl = copy.deepcopy(slim).to(memory_format=torch.channels_last)
parts = measure.compare_time_children({"baseline NCHW": baseline, "channel-50 NCHW": slim,
                                       "baseline channels-last": base_cl, "channel-50 channels-last": slim_cl},
                                      x64, names=LAYERS, rounds=TIMING_ROUNDS, repeats=REPEATS)
fig = plots.time_breakdown(parts, order=LAYERS + ["other"])
mac_ratio = {n: by_layer_base[n] / by_layer_slim[n] for n in LAYERS} | {"total": base_macs / slim_macs}
print(f"{'part':6s} {'MACs ratio':>10s} {'time ratio NCHW':>16s} {'time ratio channels-last':>25s}")
for part in LAYERS + ["other", "total"]:
    mr = f"{mac_ratio[part]:.2f}" if part in mac_ratio else "-"
    print(f"{part:6s} {mr:>10s} {parts['baseline NCHW'][part] / parts['channel-50 NCHW'][part]:16.2f} "
          f"{parts['baseline channels-last'][part] / parts['channel-50 channels-last'][part]:25.2f}")
for cfg in ("baseline NCHW", "baseline channels-last"):
    print(f"{cfg}: 'other' (ReLU, max-pool, flatten, overheads) is {parts[cfg]['other'] / parts[cfg]['total']:.2f} of the time")

# %% [markdown]
# ## 12. Results
# **Latency: one table.** Every model of the results is timed in one interleaved measurement
# (`deploy.latency_table`: single thread, batch 64; each model as torch NCHW, torch channels-last and
# onnxruntime fp32, its fastest configuration counts). Every "x faster" is against **the baseline in its
# fastest fp32 configuration** on this machine. For models with several seeds, the seed-0 model is timed
# (the seeds share an architecture, hence a speed).
#
# **Sizes.** The dense models: their `torch.save` file. The unstructured-sparse models: bitmask + lzma
# (`storage.sparse_encode`), the format section 10 measured. The containers differ (lzma alone saves a
# little on a dense float32 file), so "x smaller" mixes a format gain into the sparse rows.

# %%
# NBVAL_IGNORE_OUTPUT
to_time = {"baseline": baseline} | {name: pruning.remove_masks(copy.deepcopy(r["models"][0])) for name, r in runs.items()}
lat_rows = deploy.latency_table(to_time, shape, reference="baseline", rounds=LATENCY_ROUNDS, repeats=REPEATS)
print(deploy.format_latency_table(lat_rows))

# %%
METHODS = {
    "torch-prune-90-ft": f"torch.nn.utils.prune global one-shot + {EPOCHS} ep fine-tune (tutorial recipe)",
    "global-90-ft": f"global magnitude one-shot + {EPOCHS} ep fine-tune (AdamW, cosine)",
    "global-95-ft": f"global magnitude one-shot + {EPOCHS} ep fine-tune (AdamW, cosine)",
    "gradual-90": f"global magnitude gradual, cubic ramp over 5/8 of {EPOCHS} ep (AdamW, cosine)",
    "gradual-95": f"global magnitude gradual, cubic ramp over 5/8 of {EPOCHS} ep (AdamW, cosine)",
    "random-90-ft": f"random masks, per-layer sparsities of global-90 + {EPOCHS} ep fine-tune (AdamW, cosine)",
    "random-95-ft": f"random masks, per-layer sparsities of global-95 + {EPOCHS} ep fine-tune (AdamW, cosine)",
    "scratch-matched-90": "dense LeNet-5 {w}, from scratch, baseline recipe (20 ep)",
    "scratch-matched-95": "dense LeNet-5 {w}, from scratch, baseline recipe (20 ep)",
    "small-lenet": "dense LeNet-5 {w} (models.SMALL_LENET), from scratch, baseline recipe (20 ep)",
    "channel-50-ft": f"L1 filter pruning, ratio {CHANNEL_RATIO} + {EPOCHS} ep fine-tune (AdamW, cosine)",
    "channel-50-scratch": "dense LeNet-5 {w}, from scratch, baseline recipe (20 ep)",
}
CONTROL_OF = {"random-90-ft": "global-90-ft", "random-95-ft": "global-95-ft", "scratch-matched-90": "global-90-ft", "scratch-matched-95": "global-95-ft",
              "small-lenet": "gradual-95", "channel-50-scratch": "channel-50-ft"}
ROW_ORDER = ["torch-prune-90-ft", "global-90-ft", "gradual-90", "random-90-ft", "scratch-matched-90",
             "global-95-ft", "gradual-95", "random-95-ft", "scratch-matched-95", "small-lenet", "channel-50-ft", "channel-50-scratch"]


def latency_fields(name):
    return {"latency_ms": lat_rows[name]["latency_ms"], "latency_config": lat_rows[name]["config"]}


recs = [records.record("baseline", baseline, test=splits.test, input_shape=shape, accuracy=base_acc,
                       method="dense LeNet-5, baseline recipe (20 ep)", **latency_fields("baseline"))]
for name in ROW_ORDER:
    m = runs[name]["models"][0]
    sparse = measure.sparsity(m) > 0.5
    extra = {"control_of": CONTROL_OF[name]} if name in CONTROL_OF else {}
    w = {k: m.config[k] for k in ("c1", "c2", "fc")}
    recs.append(records.record(
        name, m, test=splits.test, input_shape=shape, accuracy=test_accs(name),
        size_bytes=storage.sparse_bytes(m, "bitmask", "lzma") if sparse else None,
        method=METHODS[name].format(w="/".join(str(v) for v in w.values())), **latency_fields(name), **extra))
path = records.write_results("01_pruning", recs, lab_mode=LAB_MODE)
print(f"{len(recs)} records written to build/results/{path.name}")

# %%
# NBVAL_IGNORE_OUTPUT
print(records.format_table(recs, columns=("name", "accuracy", "sparsity", "size_bytes", "params", "nonzero", "macs",
                                          "latency_ms", "latency_config")))

# %% [markdown]
# Every row on two axes: accuracy against what each model keeps (section 8's figure, now with channel
# pruning and its control), then accuracy against speed (the latency table above, against the baseline's
# fastest fp32 configuration). No Pareto front is drawn through the means: where the intervals overlap,
# a front would present noise as a frontier.

# %%
# NBVAL_IGNORE_OUTPUT
series_all = series | {f"channel pruning + {EPOCHS} ep": curve(["channel-50-ft"]),
                       "same widths from scratch (control)": curve(["channel-50-scratch"])}
fig = plots.accuracy_vs_sparsity(series_all, n_test, reference=base_acc, ylim=(100 * min(means) - 1.5, 100),
                                 title="every model of the chapter: accuracy vs parameters kept")
fig = plots.accuracy_vs_speed(recs, title="accuracy vs speed (each model in its fastest fp32 configuration)")

# %% [markdown] tags=["theory"]
# ## 13. What the run says
# The targets of this chapter, each read on the test split, on the rows fixed before the run:
# - 90% global sparsity: mean over the seeds within 0.3 points of the baseline, and the paired
#   interval includes zero or lies above it; 95%: mean loss at most 1 point. Each also against the dense
#   model of the same size trained from scratch, whatever the verdict.
# - Channel pruning: at least 2x fewer MACs and at least 1.6x lower latency than the baseline's fastest
#   fp32 configuration, at most 1 point lost (mean over the seeds); verdict against the same widths
#   trained from scratch.

# %%
# NBVAL_IGNORE_OUTPUT
by_name = {r["name"]: r for r in recs}


def sparsity_target(p, n, max_loss):
    """(met?, text) for the p% sparsity target read on row n: mean loss <= max_loss, and at 90% the paired
    interval against the baseline reaching zero or above."""
    loss, c = base_acc - by_name[n]["accuracy"], verdicts[n, "baseline"]
    ok = loss <= max_loss + 1e-9 and (p != 90 or c.ci[1] >= 0)
    return ok, (f"loses {100 * loss:+.2f} points (target <= {100 * max_loss:.1f})"
                + (f", paired interval [{100 * c.ci[0]:+.2f}, {100 * c.ci[1]:+.2f}]" if p == 90 else ""))


targets = {f"{p}% sparsity ({chosen[p]})": sparsity_target(p, chosen[p], max_loss)
           for p, max_loss in zip(pct, (0.003, 0.010))}
ch = by_name["channel-50-ft"]
ch_loss = base_acc - ch["accuracy"]
ch_speed = lat_rows["channel-50-ft"]["x_faster"]
targets["channel pruning, MACs"] = (base_macs / ch["macs"] >= 2, f"{base_macs / ch['macs']:.2f}x fewer (target >= 2x)")
targets["channel pruning, latency"] = (ch_speed >= 1.6, f"{ch_speed:.2f}x faster than the baseline's fastest fp32 "
                                       f"({lat_rows['baseline']['config']}) (target >= 1.6x)")
targets["channel pruning, accuracy"] = (ch_loss <= 0.010, f"loses {100 * ch_loss:+.2f} points (target <= 1.0)")
for k, (ok, text) in targets.items():
    print(f"{'met   ' if ok else 'MISSED'} {k}: {text}")
for p, max_loss in zip(pct, (0.003, 0.010)):  # the same targets on the row with the higher validation mean
    n = max((f"global-{p}-ft", f"gradual-{p}"), key=lambda m: (sum(runs[m]["val"]), m == chosen[p]))
    ok, text = sparsity_target(p, n, max_loss)
    print(f"{'met   ' if ok else 'MISSED'} {p}% sparsity on the row validation prefers ({n}"
          f"{', the same row' if n == chosen[p] else ''}): {text}")

# %%
# NBVAL_IGNORE_OUTPUT
small = by_name["small-lenet"]
g95 = by_name[chosen[95]]
display(Markdown("\n".join([
    f"**Sparsity targets.** At 90% the target row ({chosen[90]}) scores {100 * by_name[chosen[90]]['accuracy']:.2f}% "
    f"against the baseline's {100 * base_acc:.2f}%: {said(verdicts[chosen[90], 'baseline'], chosen[90], 'the baseline')}. "
    f"At 95% the target row ({chosen[95]}) scores {100 * by_name[chosen[95]]['accuracy']:.2f}%: "
    f"{said(verdicts[chosen[95], 'baseline'], chosen[95], 'the baseline')}. The strict verdicts of the targets "
    "are printed above.",
    "",
    f"**One-shot or gradual?** With the same {EPOCHS} epochs: at 90%, "
    f"{said(verdicts['gradual-90', 'global-90-ft'], 'gradual', 'one-shot + fine-tuning')}; at 95%, "
    f"{said(verdicts['gradual-95', 'global-95-ft'], 'gradual', 'one-shot + fine-tuning')}.",
    "",
    f"**Against the controls.** Magnitude against random pruning at 90%: "
    f"{said(verdicts['global-90-ft', 'random-90-ft'], 'global-90-ft', 'random-90-ft')}; at 95%: "
    f"{said(verdicts['global-95-ft', 'random-95-ft'], 'global-95-ft', 'random-95-ft')}. "
    f"Against dense models of the same size trained from scratch: at 90%, "
    f"{said(verdicts[chosen[90], 'scratch-matched-90'], chosen[90], 'scratch-matched-90')}; at 95%, "
    f"{said(verdicts[chosen[95], 'scratch-matched-95'], chosen[95], 'scratch-matched-95')}. "
    f"The standing small LeNet ({small['params']:,} parameters, dense) scores {100 * small['accuracy']:.2f}% and runs "
    f"{lat_rows['small-lenet']['x_faster']:.2f}x faster than the baseline's fastest fp32 configuration, while the "
    f"{g95['nonzero']:,}-non-zero {chosen[95]} model runs at {lat_rows[chosen[95]]['x_faster']:.2f}x: "
    f"{said(verdicts[chosen[95], 'small-lenet'], chosen[95], 'the small LeNet')}. Unstructured sparsity buys a "
    "smaller file (section 10), not speed; a small dense model buys both.",
    "",
    f"**Channel pruning** executes {base_macs / ch['macs']:.2f}x fewer MACs and runs {ch_speed:.2f}x faster than the "
    f"baseline's fastest fp32 configuration ({lat_rows['baseline']['config']})"
    + (", less than the MAC ratio: ReLU, pooling and per-call overheads shrink only with the activations (section 11)"
       if ch_speed < base_macs / ch["macs"] else
       ", as much as the MAC ratio or more in this runtime, although in eager torch the time fell less than the MACs "
       "(section 11): how far latency follows MACs depends on the runtime and the CPU") + ". It "
    f"{'loses' if ch_loss >= 0 else 'gains'} {abs(100 * ch_loss):.2f} points on average; "
    f"{said(verdicts['channel-50-ft', 'channel-50-scratch'], 'channel-50-ft', 'the same widths trained from scratch')}.",
])))

# %% [markdown] tags=["theory"]
# ## 14. Checks
# Correctness is checked exactly; accuracy targets through the paired intervals, so that a run fails on
# a real regression and not on noise: the interval of (pruned − baseline) must reach above −0.3 points at
# 90% and above −1 point at 95% and for channel pruning (the strict verdicts are printed above). Speed
# is checked only against a sanity floor at half the target (0.8x for channel pruning): `make bench`
# records the strict speed verdict, and a busy or slower laptop must not fail the chapter.

# %%
for p, sp in zip(pct, SPARSITIES):
    for name in (f"global-{p}-ft", f"gradual-{p}"):
        assert all(abs(measure.sparsity(m) - sp) < 1e-4 for m in runs[name]["models"]), f"{name}: sparsity drifted"
for p, sp in zip(pct, SPARSITIES):
    assert all(abs(measure.sparsity(m) - sp) < 1e-3 for m in runs[f"random-{p}-ft"]["models"]), f"random-{p}-ft"
assert all(same_as_torch.values()), "magnitude_prune should pick the weights torch.nn.utils.prune picks"
assert abs(twice - 0.75) < 1e-6 and same_filters and mac_law_holds
assert base_macs / by_name["channel-50-ft"]["macs"] >= 2.0
if targets_asserted(LAB_MODE, splits):  # accuracy and speed targets: the full run on the course's data (else printed above)
    assert verdicts[chosen[90], "baseline"].ci[1] >= -0.003, f"90%: {verdicts[chosen[90], 'baseline']}"
    assert verdicts[chosen[95], "baseline"].ci[1] >= -0.010, f"95%: {verdicts[chosen[95], 'baseline']}"
    assert verdicts["channel-50-ft", "baseline"].ci[1] >= -0.010, f"channel: {verdicts['channel-50-ft', 'baseline']}"
    assert lat_rows["channel-50-ft"]["x_faster"] >= 1.6 / 2, "channel pruning should be faster (sanity floor)"
    assert 0.5 < lat["dense"] / lat["90%-sparse"] < 2.0, "a masked dense model should run at the dense model's speed"
assert base_bytes / sizes_kib[("bitmask", "lzma")] >= 5
print("all checks passed")

# %% [markdown]
# ## Further reading
# - Han et al., 2015, *Learning both weights and connections for efficient neural networks* (magnitude
#   pruning and fine-tuning on this LeNet-5); Zhu & Gupta, 2017, *To prune, or not to prune* (the gradual schedule);
#   Li et al., 2017, *Pruning filters for efficient ConvNets* (L1 filter pruning).
# - Blalock et al., 2020, *What is the state of neural network pruning?* and Liu et al., 2019,
#   *Rethinking the value of network pruning*: why controls, equal budgets and seeds are needed.
# - Not covered here: lottery tickets and weight rewinding (Frankle & Carbin, 2019); second-order
#   pruning (Optimal Brain Damage / Surgeon, OBC); movement pruning for fine-tuned transformers;
#   N:M (2:4) semi-structured sparsity, which GPUs accelerate (`torch.sparse.to_sparse_semi_structured`).
