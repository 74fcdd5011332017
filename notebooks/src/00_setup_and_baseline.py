# %% [markdown]
# # 00 · Setup and baseline: the model every chapter compresses
#
# **Learning goals**
# - check that your environment matches the course's (versions, device, threads);
# - know the data: a 5,000-image MNIST sample that ships with the course, split 3,500 / 500 / 1,000;
# - know the baseline: the LeNet-5 of Han et al.'s pruning and Deep Compression papers (431,080 parameters),
#   and where its parameters and its arithmetic sit;
# - train it with a sound recipe and see why a *well-trained* baseline matters before compressing anything;
# - decide whether a difference between two models is real: the interval of an accuracy, the spread
#   over seeds, a paired test on the same images;
# - meet the course's standing control, a small LeNet trained from scratch, that every later chapter must beat;
# - measure what every later chapter measures: accuracy, parameters, MACs, bytes on disk, CPU latency.
#
# **Run time:** about 15 s on a 2-core laptop CPU (docs/timings.md). The baseline and the small LeNet of each seed of
# `SEEDS` (three in the full run, two in lab mode) load from the weights the course ships (`data/trained/`,
# trained by this recipe); with `COURSE_SHIPPED_WEIGHTS=0` this notebook trains them itself (about 20 s
# per model here) and caches them in `build/cache/` for every later chapter.

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
DATASET = "mnist5k"  # "mnist", "fashion_mnist" or "cifar10" once their archives are in place
SEED = 0
EPOCHS = 20          # epochs of the baseline recipe
DEVICE = None        # None: $COURSE_DEVICE, else CUDA if available, else CPU
LAB_MODE = None  # True: two seeds and short budgets, about 10 s (None: $COURSE_LAB_MODE, else False)

# %% [markdown]
# ## 1. Environment check
# The first cell of every chapter checks versions and seeds everything. Without a GPU it only
# *warns*: the whole course is designed to run on a laptop CPU.

# %%
# NBVAL_IGNORE_OUTPUT
import math
import time
import warnings

import torch
from IPython.display import Markdown, display

from course_lib import deploy, measure, plots, records, stats, storage
from course_lib.data import DATASETS, load_dataset
from course_lib.env import check_environment, cpu_model, data_note, lab_mode, lab_note, report_targets, targets_asserted
from course_lib.models import SMALL_LENET, LeNet5, build_model
from course_lib.recipes import SEEDS
from course_lib.training import (BASELINE_RECIPE, correct, evaluate, fit, get_device, load_baseline,
                                 seed_everything)

t_start = time.perf_counter()
env = check_environment()
device = get_device(DEVICE)
seed_everything(SEED)
print("device:", device, "| torch threads:", torch.get_num_threads(), "| CPU:", cpu_model())
LAB_MODE = lab_mode(LAB_MODE)
if LAB_MODE:  # the baseline recipe and its cache key stay the same: every chapter reuses this model
    SEEDS = SEEDS[:2]  # two seeds (not three): section 5 still compares seed 0 with seed 1
LATENCY_ROUNDS = 2 if LAB_MODE else 5
lab_note(LAB_MODE, cuts=f"baseline and small LeNet over {len(SEEDS)} seeds instead of 3, "
         f"{LATENCY_ROUNDS} latency rounds instead of 5",
         less_reliable="the means and spreads over seeds, the paired verdicts over seeds, the latency ratios")

# %% [markdown]
# ## 2. The data
# `load_dataset` returns train / validation / test splits as tensors normalised with the dataset's
# mean and standard deviation, $x' = (x - \mu)/\sigma$. The default `mnist5k` is a stratified sample of MNIST
# (500 images per digit) committed in `data/` with its SHA-256; the file is verified on every load.
# The split is stored in the file, so everybody trains and tests on the same images. The course uses
# the splits for different jobs: **train** to fit weights, **validation** for every decision (epochs,
# sparsities, ranks, calibration), **test** once per final model, for reporting.

# %%
splits = load_dataset(DATASET)
n_test = len(splits.test)
print(f"dataset {splits.name}: input shape {splits.input_shape}, {splits.num_classes} classes")
data_note(splits)  # prints only for data other than the course's
for part in ("train", "val", "test"):
    labels = getattr(splits, part).tensors[1]
    print(f"{part:5s} {len(labels):5d} images, per class: {torch.bincount(labels).tolist()}")

# %%
fig = plots.show_samples(splits.train, splits.classes, n=20, mean=splits.mean, std=splits.std)


# %% [markdown]
# ### Exercise 1: normalise a batch of raw images
# The archive stores pixels as `uint8` in $[0, 255]$. Write `normalize(images, mean, std)` that takes a
# `uint8` tensor of shape $(N, H, W)$ and returns `float32` of shape $(N, 1, H, W)$ (one channel) with
# $x' = (x/255 - \mu)/\sigma$. The checker runs it on fresh random images and names what is off.

# %% nbgrader={"grade": false, "grade_id": "normalize", "locked": false, "schema_version": 3, "solution": true, "task": false}
def normalize(images, mean, std):
    # Hint: the raw pixels are in [0, 255], not [0, 1]; compute in float32 and follow the formula's order; the channel axis of size 1 goes at dim 1 (torch.unsqueeze).
    ### BEGIN SOLUTION
    return ((images.float() / 255.0 - mean) / std).unsqueeze(1)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "check_normalize", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
from course_lib import checks
checks.check_normalize(normalize)

# %% [markdown] tags=["theory"]
# ## 3. The baseline model
# LeNet-5 as in Han et al. (2015, 2016): two 5x5 convolutions (20 and 50 filters), each followed by
# ReLU and 2x2 max-pooling, then a 500-unit fully connected layer and the 10-way classifier.
#
# A convolution with $C_{in}$ input and $C_{out}$ output channels, a $k\times k$ kernel and an
# $H_{out}\times W_{out}$ output performs $\text{MACs} = C_{out}\,C_{in}\,k^2\,H_{out}W_{out}$
# multiply-accumulates; a linear layer $m \to n$ performs $mn$. A convolution reuses each weight at
# every output position ($H_{out}W_{out}$ times), a linear layer uses it once per input. So parameters
# and compute sit in different places: the first fully connected layer holds 93% of the weights, the
# second convolution does 70% of the arithmetic. Keep that in mind for the next chapters: shrinking fc1
# shrinks the file; removing whole filters or channels of the convolutions (structured pruning,
# factorization) is what saves time, whereas zeroing scattered weights (unstructured pruning) saves
# neither MACs nor time on a dense kernel (chapter 1 measures it).

# %%
model = build_model("lenet5", splits.input_shape, splits.num_classes)
print(model)
shares = plots.layer_shares(model, splits.input_shape)
print(f"\n{'layer':6s} {'params':>9s} {'share':>7s} {'MACs':>10s} {'share':>7s}")
for name, s in shares.items():
    print(f"{name:6s} {s['param_count']:9,d} {100 * s['params']:6.1f}% {s['mac_count']:10,d} {100 * s['macs']:6.1f}%")
print(f"total parameters {measure.count_params(model):,}, MACs per image {measure.macs(model, splits.input_shape):,}")

# %% [markdown]
# The same table as a picture: for each layer, its share of the parameters (what pruning a layer saves in
# bytes) next to its share of the multiply-accumulates (what it can save in time).

# %%
fig = plots.params_vs_macs(model, splits.input_shape, title="LeNet-5: share of parameters vs share of MACs")


# %% [markdown]
# ### Exercise 2: count the MACs of a convolution
# Write `conv_macs(layer, input_hw)` for an `nn.Conv2d` and an input of spatial size $(H, W)$. The output
# size is $H_{out} = \lfloor (H + 2p - d(k-1) - 1)/s \rfloor + 1$ (stride $s$, padding $p$, dilation $d$),
# and a grouped convolution connects each output channel to only $C_{in}/g$ input channels:
# $\text{MACs} = C_{out}\,(C_{in}/g)\,k_h k_w\,H_{out} W_{out}$. Return an `int`. (Padding is given as
# numbers here; `padding="same"`, a string, is not tested.)

# %% nbgrader={"grade": false, "grade_id": "conv_macs", "locked": false, "schema_version": 3, "solution": true, "task": false}
def conv_macs(layer, input_hw):
    # Hint: the layer stores kernel_size, stride, padding and dilation as (height, width) pairs; mind the floor in the output size and layer.groups.
    ### BEGIN SOLUTION
    (kh, kw), (sh, sw) = layer.kernel_size, layer.stride
    (ph, pw), (dh, dw) = layer.padding, layer.dilation
    ho = (input_hw[0] + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (input_hw[1] + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    return layer.out_channels * (layer.in_channels // layer.groups) * kh * kw * ho * wo
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "check_conv_macs", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
checks.check_conv_macs(conv_macs)

# %% [markdown] tags=["theory"]
# ## 4. The training recipe
# The baseline is trained with
# - **AdamW** (Loshchilov & Hutter, 2019): Adam with *decoupled* weight decay. Each step is the Adam step
#   plus a shrink of every weight, $w \leftarrow w - \eta_t\,\hat m_t/(\sqrt{\hat v_t}+\epsilon) - \eta_t\lambda w$,
#   here with $\lambda = 10^{-4}$;
# - a **one-cycle learning-rate schedule** (Smith & Topin, 2019): warm up to $\eta_{max}=2\cdot10^{-3}$ over
#   the first 30% of the steps, then anneal to almost 0; the large rates explore, the low final rates let the
#   weights converge;
# - **augmentation** by random shifts of up to one pixel, so 3,500 images behave like many more;
# - batch 64, 20 epochs (55 steps each), everything seeded;
# - on the CPU, the **channels-last** (NHWC) memory layout for training (`memory_format` in the recipe):
#   PyTorch's CPU convolutions, forward and backward, are faster in it. It changes the order in which sums
#   are taken: the rounding differs, and over a whole run an NHWC and an NCHW training drift apart the way
#   two seeds do, ending level within the noise rather than bit for bit equal.
#
# `load_baseline` returns the model this recipe trains from `SEED`, and every later chapter calls it and
# gets the same model. It looks first in `build/cache/` (models trained on your machine: a plain state dict,
# read back with `torch.load(weights_only=True)`), then in `data/trained/`, the weights the course ships
# (safetensors, no pickle, each checked against its SHA-256; the key is a hash of the recipe, so a changed
# recipe never loads an old model), and trains only when neither has it (about 20 seconds here). To train
# it yourself: `load_baseline(..., retrain=True)`, or `COURSE_SHIPPED_WEIGHTS=0` for every model of the course.
# `meta["shipped"]` says where this one came from; the training history below is the one recorded when it was
# trained.

# %%
print(BASELINE_RECIPE | {"epochs": EPOCHS})
baseline, meta = load_baseline(DATASET, SEED, device=device, splits=splits, epochs=EPOCHS)
base_correct = correct(baseline, splits.test)
base_acc = base_correct.double().mean().item()
print(f"baseline (seed {SEED}) test accuracy: {100 * base_acc:.2f}%")

# %% [markdown] tags=["theory"]
# **Does the weight decay do anything here?** Leave the gradient aside: the decay term alone multiplies every
# weight by $(1-\eta_t\lambda)$ at step $t$, so over the whole run by
# $$\prod_t (1-\eta_t\lambda) \approx e^{-\lambda \sum_t \eta_t}.$$
# The factor depends only on the schedule, so we can compute it: rebuild the run's `OneCycleLR` with the
# recipe's settings and its number of steps, check it against the learning rates the run logged at the end of
# each epoch, and multiply. PyTorch's default decay for AdamW is $\lambda = 10^{-2}$, a hundred times larger.

# %%
steps_per_epoch = math.ceil(len(splits.train) / BASELINE_RECIPE["batch_size"])
n_steps = EPOCHS * steps_per_epoch
opt = torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=BASELINE_RECIPE["lr"])
sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=BASELINE_RECIPE["lr"], total_steps=n_steps)
lrs = []
for _ in range(n_steps):          # the learning rate of each of the run's optimizer steps
    lrs.append(opt.param_groups[0]["lr"])
    opt.step()
    sched.step()
logged = meta["history"]["lr"][:-1]  # lr after each epoch = lr of the first step of the next one
gap = max(abs(lrs[(e + 1) * steps_per_epoch] - lr) for e, lr in enumerate(logged))
print(f"{n_steps} steps; rebuilt schedule vs the run's logged rates: largest difference {gap:.1e}")
print(f"sum of the learning rates over the run: {sum(lrs):.3f}")
for lam in (BASELINE_RECIPE["weight_decay"], 1e-2):
    shrink = math.prod(1 - lr * lam for lr in lrs)
    print(f"lambda = {lam:.0e}: the decay alone shrinks the weights by a factor {shrink:.5f} over the run "
          f"({100 * (1 - shrink):.3f}% smaller)")

# %%
# NBVAL_IGNORE_OUTPUT
shrink_course = math.prod(1 - lr * BASELINE_RECIPE["weight_decay"] for lr in lrs)
shrink_default = math.prod(1 - lr * 1e-2 for lr in lrs)
display(Markdown(
    f"With this recipe's $\\lambda$ the decay shrinks the weights by {100 * (1 - shrink_course):.3f}% over the "
    f"whole run: it does nothing measurable. The size and shape of the trained weights come from the "
    f"initialisation and the gradient steps, not from the decay. Even PyTorch's default would take off only "
    f"{100 * (1 - shrink_default):.1f}% in this short run. The recipe keeps its small $\\lambda$ (every chapter "
    f"loads this cached baseline), but do not credit it with regularising the model; chapter 1 looks at what "
    f"the weights really look like."))

# %%
fig = plots.plot_history({"baseline": meta["history"]}, title="LeNet-5 baseline")

# %% [markdown]
# Reading the learning curves: the training loss (left, logarithmic) and the validation accuracy (right,
# 500 images, so one image is 0.2 points). The numbers behind the picture:

# %%
# NBVAL_IGNORE_OUTPUT
h = meta["history"]
va, ta = [100 * v for v in h["val_acc"]], [100 * v for v in h["train_acc"]]
final = va[-1]
plateau = next(e for e in range(len(va)) if all(abs(v - final) <= 0.4 for v in va[e:]))  # within 2 images
best = max(range(len(va)), key=va.__getitem__)
warm = round(0.3 * len(va))  # OneCycleLR warms up over the first 30% of the steps (its default pct_start)
for e in sorted({0, 4, 9, plateau, len(va) - 1}):
    print(f"epoch {e + 1:2d}: train loss {h['train_loss'][e]:.4f}, train acc {ta[e]:.2f}%, val acc {va[e]:.2f}%, "
          f"lr after the epoch {h['lr'][e]:.1e}")
display(Markdown(
    f"Validation accuracy climbs fast during the warm-up ({va[warm - 1]:.2f}% after epoch {warm}, when the rate "
    f"peaks), reaches {va[best]:.2f}% at epoch {best + 1}, and "
    f"from epoch {plateau + 1} on stays within two validation images of its final {final:.2f}%: it has "
    f"plateaued, while the training loss keeps falling by {h['train_loss'][plateau] / h['train_loss'][-1]:.0f}x "
    f"as the rate anneals. At the end the model gets {ta[-1]:.2f}% of the (shifted) training images right "
    f"against {final:.2f}% of the validation images: a gap of {ta[-1] - final:.1f} points. "
    + ("The last epochs no longer move the validation accuracy: the baseline is trained to convergence."
       if plateau < len(va) - 3 else
       "The validation accuracy was still moving in the last epochs: this run may not have converged.")))


# %% [markdown] tags=["theory"]
# ## 5. Is this difference real?
# Every result of the course is an accuracy on the same $n = 1{,}000$ test images, and every claim is a
# difference: "lost 0.3 points", "4x smaller at no loss". Before comparing anything, know how much an
# accuracy moves by chance.
#
# **One accuracy on n images.** If a model gets each test image right with probability $p$, the number it
# gets right is binomial, and the measured accuracy $\hat p = k/n$ has standard error
# $$\mathrm{SE} = \sqrt{p(1-p)/n}.$$
# At $p = 0.989$ and $n = 1000$ that is 0.33 points. The textbook (Wald) 95% interval
# $\hat p \pm z\,\mathrm{SE}$ with $z = 1.96$ fails exactly where compressed models live: near 100% it is too
# narrow, and at $\hat p = 1$ it has zero width. The **Wilson score interval** (Wilson, 1927; compared with
# the others by Brown, Cai & DasGupta, 2001) keeps the unknown $p$ inside the standard error and solves for it:
# $$\frac{\hat p + \frac{z^2}{2n}}{1+\frac{z^2}{n}} \;\pm\; \frac{z}{1+\frac{z^2}{n}}
#   \sqrt{\frac{\hat p(1-\hat p)}{n} + \frac{z^2}{4n^2}}.$$
# Its centre is pulled toward 1/2, it never leaves $[0, 1]$, and at $\hat p = 1$ it still has a width.

# %% [markdown]
# ### Exercise 3: the Wilson interval
# Write `wilson_interval(accuracy, n, z=1.96)`: `accuracy` is a fraction in $[0, 1]$ measured on `n` images,
# `z` the normal quantile (1.96 for 95%). Return `(low, high)` as fractions. The checker tries accuracies from
# 0 to 1, small and large $n$, other levels, and names the usual slips (the Wald interval, clipped or not,
# a missing $z^2$ term, percent instead of fractions).

# %% nbgrader={"grade": false, "grade_id": "wilson_interval", "locked": false, "schema_version": 3, "solution": true, "task": false}
def wilson_interval(accuracy, n, z=1.96):
    # Hint: the formula is in the text above: compute its centre and its half-width separately, both as fractions; test p = 0 and p = 1.
    ### BEGIN SOLUTION
    p = float(accuracy)
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "check_wilson_interval", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
checks.check_wilson_interval(wilson_interval)


# %% [markdown]
# The library version, `stats.accuracy_interval(accuracy, n)`, is what every chapter and the results table use.
# Next to the Wald interval, for our baseline and for a perfect model tested on only 50 images:

# %%
def wald(p, n, z=1.96):
    return p - z * math.sqrt(p * (1 - p) / n), p + z * math.sqrt(p * (1 - p) / n)

for label, p, n in ((f"baseline seed {SEED}", base_acc, n_test), ("perfect, 50 images", 1.0, 50)):
    (wl, wh), (ql, qh) = stats.accuracy_interval(p, n), wald(p, n)
    print(f"{label:20s} accuracy {100 * p:6.2f}%  Wilson [{100 * wl:.2f}, {100 * wh:.2f}]  "
          f"Wald [{100 * ql:.2f}, {100 * qh:.2f}]")
print(f"binomial standard error at the baseline's accuracy: {100 * math.sqrt(base_acc * (1 - base_acc) / n_test):.2f} "
      f"points on {n_test} test images")

# %% [markdown] tags=["theory"]
# **The spread over seeds.** The test images are not the only source of chance: the same recipe from another
# seed (another initialisation and batch order) trains another model. The course trains every headline model
# from several seeds (`recipes.SEEDS`, three; lab mode uses fewer) and reports the mean, the standard
# deviation $s$ over seeds, and the 95% interval of the mean, $\bar a \pm t_{0.975,\,k-1}\, s/\sqrt{k}$
# ($t_{0.975,2} = 4.30$ for $k = 3$ seeds).
# The seeds other than seed 0 are trained here once and cached like seed 0.

# %%
base_models = {SEED: baseline}
for s in SEEDS:
    if s not in base_models:
        base_models[s] = load_baseline(DATASET, s, device=device, splits=splits, epochs=EPOCHS)[0]
base_models = {s: base_models[s] for s in SEEDS}
base_correct_seeds = torch.stack([correct(m, splits.test) for m in base_models.values()])   # (seeds, n)
base_accs = base_correct_seeds.double().mean(1).tolist()
base_summary = stats.seed_summary(base_accs)
for s, a in zip(SEEDS, base_accs):
    print(f"baseline seed {s}: test accuracy {100 * a:.2f}%")
lo, hi = base_summary["ci"]
print(f"mean {100 * base_summary['mean']:.2f}%, sd over seeds {100 * base_summary['std']:.2f} points, "
      f"95% interval of the mean [{100 * lo:.2f}, {100 * hi:.2f}] (t over {len(SEEDS)} seeds)")

# %% [markdown] tags=["theory"]
# **A paired test.** Two models tested on the *same* images are compared image by image. Most images both get
# right (or both wrong); only the discordant ones carry information: $b$ images that model A gets right and B
# wrong, $c$ the reverse. The difference of accuracies is $(b - c)/n$. If the two models were equally good,
# each discordant image would be a fair coin, $b \sim \mathrm{Binomial}(b + c, 1/2)$, and McNemar's exact
# test (McNemar, 1947) gives the two-sided p-value
# $$p = \min\Big(1,\; 2 \sum_{i=0}^{\min(b,c)} \binom{b+c}{i} 2^{-(b+c)}\Big).$$
# `stats.paired_compare(correct_a, correct_b)` returns the difference, a 95% interval for it by a paired
# bootstrap (resample the 1,000 images with replacement, 4,000 times, recompute the difference), McNemar's p
# for single runs, and a **verdict**: *better* if the whole interval is above zero, *worse* if below,
# *indistinguishable* otherwise. With several seeds per model each image's score is first averaged over the
# seeds. Pairing is much sharper than comparing two separate intervals: two independent accuracies differ
# with standard error $\sqrt{2p(1-p)/n}$ (0.47 points at $p = 0.989$, $n = 1000$), whatever the models have in common.
#
# Here: seed 0 against seed 1 of the *same* recipe. Any difference is chance by construction.

# %%
# NBVAL_IGNORE_OUTPUT
right_a, right_b = base_correct_seeds[0], base_correct_seeds[1]
b = int((right_a & ~right_b).sum())   # first seed right, second wrong
c = int((~right_a & right_b).sum())   # first seed wrong, second right
print(f"discordant images: b = {b}, c = {c}; difference (b - c)/n = {100 * (b - c) / n_test:+.2f} points; "
      f"McNemar p = {stats.mcnemar_p(b, c):.3f}")
cmp_seeds = stats.paired_compare(right_a, right_b)
print(f"paired_compare(seed {SEEDS[0]}, seed {SEEDS[1]}): {cmp_seeds} (McNemar p = {cmp_seeds.p_value:.3f})")
p_pool = (base_accs[0] + base_accs[1]) / 2
unpaired = 1.96 * math.sqrt(2 * p_pool * (1 - p_pool) / n_test)   # half-width if the images were not shared
display(Markdown(
    f"The two seeds disagree on {b + c} of the {n_test} test images and differ by "
    f"{100 * abs(cmp_seeds.diff):.2f} points; the paired interval [{100 * cmp_seeds.ci[0]:+.2f}, "
    f"{100 * cmp_seeds.ci[1]:+.2f}] says **{cmp_seeds.verdict}**"
    + (": two runs of the same recipe differ by that much by chance, so a difference of that size between two "
       "compressed models is no result at all. " if cmp_seeds.verdict == "indistinguishable" else
       ", although the two runs share their recipe: with many comparisons a few land outside a 95% interval "
       "by chance, which is one more reason to average over seeds. ")
    + f"Two unpaired accuracies would need a difference beyond ±{100 * unpaired:.2f} points; pairing narrows that "
    f"to a half-width of {50 * (cmp_seeds.ci[1] - cmp_seeds.ci[0]):.2f} points. In this course a difference counts "
    f"only when the paired verdict says *better* or *worse*, and headline numbers are means over {len(SEEDS)} seeds."))

# %% [markdown] tags=["theory"]
# ## 6. The standing control, and why a well-trained baseline matters
# Every compression result is a *difference* against a reference, so the reference must be honest in two ways.
#
# **A control of the same family, trained properly.** "N× fewer parameters at no loss" means little if a
# dense model N× smaller, trained from scratch, does as well: then the task never needed the big model
# (Liu et al., 2019, "Rethinking the value of network pruning"; Blalock et al., 2020, "What is the state of
# neural network pruning?"). The course's control is the **small LeNet** `models.SMALL_LENET`: about a quarter
# of the channels in each convolution (5 instead of 20, 12 instead of 50) and a fifth of the hidden layer (100
# instead of 500), trained from scratch with the
# full recipe (20 epochs) from the same seeds (`SEEDS`). It is a **standing row** in the results tables of chapters 1 to 3:
# a compressed model earns its "N× smaller" only if it beats this point, not just the baseline.
#
# **A baseline trained to convergence.** Against an under-trained original any technique looks lossless and a
# compressed model can even "beat" it. To see it, we also train the full LeNet-5 with a quick recipe: 3 epochs
# of plain Adam at a constant rate, no augmentation (one seed: it is an illustration, not a result).

# %%
small_models = {s: load_baseline(DATASET, s, device=device, splits=splits, epochs=EPOCHS, model_kw=SMALL_LENET)[0]
                for s in SEEDS}
small = small_models[SEED] if SEED in small_models else small_models[SEEDS[0]]
small_correct_seeds = torch.stack([correct(m, splits.test) for m in small_models.values()])
small_accs = small_correct_seeds.double().mean(1).tolist()
p_base, p_small = measure.count_params(baseline), measure.count_params(small)
m_base, m_small = measure.macs(baseline, splits.input_shape), measure.macs(small, splits.input_shape)
print(f"small LeNet {SMALL_LENET}: {p_small:,} parameters, {m_small:,} MACs per image")
print(f"{p_base / p_small:.1f}x fewer parameters and {m_base / m_small:.1f}x fewer MACs than the baseline")
for s, acc in zip(SEEDS, small_accs):
    print(f"small LeNet seed {s}: test accuracy {100 * acc:.2f}%")

# %%
seed_everything(SEED)
quick = LeNet5(splits.input_shape[0], splits.num_classes, input_size=splits.input_shape[1])
h_quick = fit(quick, splits.train, splits.val, epochs=3, lr=1e-3, optimizer="adam", schedule="constant",
              seed=SEED, device=device, desc="quick")
quick_correct = correct(quick, splits.test)
quick_acc = quick_correct.double().mean().item()
print(f"LeNet-5, quick recipe (3 epochs, seed {SEED}): test accuracy {100 * quick_acc:.2f}%")

# %%
# NBVAL_IGNORE_OUTPUT
cmp_small = stats.paired_compare(base_correct_seeds, small_correct_seeds)   # baseline (SEEDS) vs small (SEEDS)
cmp_quick = stats.paired_compare(quick_correct, base_correct_seeds)         # quick (1 seed) vs baseline (SEEDS)
cmp_quick_small = stats.paired_compare(small_correct_seeds, quick_correct)  # small (SEEDS) vs quick (1 seed)
print(f"baseline vs small LeNet:       {cmp_small}")
print(f"quick recipe vs baseline:      {cmp_quick}")
print(f"small LeNet vs quick recipe:   {cmp_quick_small}")
small_sum = stats.seed_summary(small_accs)
display(Markdown(
    f"The small LeNet scores {100 * small_sum['mean']:.2f}% (mean of {len(SEEDS)} seeds, sd "
    f"{100 * small_sum['std']:.2f}) with {p_base / p_small:.1f}x fewer parameters and {m_base / m_small:.1f}x "
    f"fewer MACs than the baseline ({100 * base_summary['mean']:.2f}%). Paired over the test images the baseline "
    f"is **{cmp_small.verdict}** ({100 * cmp_small.diff:+.2f} points [{100 * cmp_small.ci[0]:+.2f}, "
    f"{100 * cmp_small.ci[1]:+.2f}]). "
    + ("So the big model's extra capacity buys measurable accuracy, but little: every later \"N× smaller\" "
       "must land between the two, close to the small LeNet's size and above its accuracy, to be worth anything."
       if cmp_small.verdict == "better" else
       "So this task does not need the big model's capacity at all: a compressed model that claims to be "
       "N× smaller must beat the small LeNet, not just match the baseline.")
    + f"\n\nThe quick recipe reaches {100 * quick_acc:.2f}%: against the baseline it is **{cmp_quick.verdict}** "
    f"({100 * cmp_quick.diff:+.2f} points [{100 * cmp_quick.ci[0]:+.2f}, {100 * cmp_quick.ci[1]:+.2f}]), and "
    f"the small LeNet against it is **{cmp_quick_small.verdict}**. "
    + ("Had we taken the quick model as the baseline, the small LeNet would look like a "
       f"{p_base / p_small:.0f}x compression at no cost. "
       if cmp_quick_small.verdict != "worse" else "")
    + "The lesson for the rest of the course: compress a baseline trained to convergence, and compare every "
    "compressed model with the small LeNet as well."))

# %% [markdown]
# ## 7. What every chapter measures
# - **accuracy** on the 1,000 test images (test split, evaluated once per final model), with its Wilson
#   interval. Headline numbers are means over the seeds `SEEDS` (three in the full run) with their spread.
#   A difference between two models is reported as an effect only when the paired test on the same images
#   says *better* or *worse*; otherwise
#   it is *indistinguishable*, however many points it looks like. Decisions (epochs, sparsities, ranks,
#   calibration) use the validation split only;
# - **parameters** and **non-zeros** (non-zeros matter after pruning);
# - **MACs** per image, from hooks on every convolution and linear layer;
# - **bytes on disk** of the saved state dict, raw and entropy-coded (zlib, lzma);
# - **latency**, with one protocol for the whole course (`deploy.latency_table`): all models of a table are
#   timed together, in interleaved rounds (so a burst of load on the machine hits all of them alike), on
#   *one* CPU thread, with a batch of 64; each round takes the median of 20 calls, and the table reports the
#   median over `LATENCY_ROUNDS` rounds (5 in the full run) and the spread (min to max) of the round
#   medians. A float model is timed in three fp32 configurations: eager PyTorch in the default NCHW layout,
#   eager PyTorch in channels-last (NHWC)
#   layout, and onnxruntime; its fastest counts. Every "x faster" of the course divides by the **baseline in
#   its fastest fp32 configuration** on your machine, so a speed-up is never inflated by a slow reference; a
#   second column against eager NCHW stays for context. Only ratios measured in the same table are compared,
#   never absolute times.

# %%
size_raw = measure.serialized_bytes(baseline)
print(f"raw {size_raw:,d} bytes on disk (exactly: {p_base} float32 values = {4 * p_base:,} bytes, "
      "plus the container)")
zlib_b, lzma_b = storage.size_bytes(baseline, "zlib"), storage.size_bytes(baseline, "lzma")
print(f"zlib {zlib_b / 1024:.1f} KiB, lzma {lzma_b / 1024:.1f} KiB: float32 weights barely compress")

# %%
# NBVAL_IGNORE_OUTPUT
rows = deploy.latency_table({"baseline": baseline, "small-lenet": small}, splits.input_shape, rounds=LATENCY_ROUNDS)
print(deploy.format_latency_table(rows))
print(f"\nfastest fp32 configuration of the baseline on this machine: {rows['baseline']['config']} "
      f"({rows['baseline']['latency_ms']:.3f} ms per batch of 64; eager NCHW: "
      f"{rows['baseline']['by_config']['torch']:.3f} ms)")
print(f"small LeNet: {rows['small-lenet']['x_faster']:.2f}x faster than that, in its own fastest configuration "
      f"({rows['small-lenet']['config']})")

# %% [markdown]
# ## 8. Results
# The table every chapter ends with, and the file `build/results/00_setup_and_baseline.json` that
# `make run` gathers into `build/results.md`. Accuracy is the test-split mean over the `SEEDS` seeds, ± the standard
# deviation over seeds, with the 95% Wilson interval on the 1,000 test images. Size, MACs and latency are
# those of the `SEED` model; "x faster" is against the baseline's fastest fp32 configuration, and "x smaller"
# compares bytes on disk (the file's fixed container overhead makes it a little less than the parameter ratio).

# %%
recs = [
    records.record("baseline", baseline, test=splits.test, input_shape=splits.input_shape, accuracy=base_accs,
                   latency_ms=rows["baseline"]["latency_ms"], latency_config=rows["baseline"]["config"],
                   method=f"AdamW + one-cycle, {EPOCHS} ep", weight_bits=32, activation_bits=32),
    records.record("small-lenet", small, test=splits.test, input_shape=splits.input_shape, accuracy=small_accs,
                   latency_ms=rows["small-lenet"]["latency_ms"], latency_config=rows["small-lenet"]["config"],
                   method=f"scratch, {EPOCHS} ep (standing control)", widths=dict(SMALL_LENET),
                   weight_bits=32, activation_bits=32),
]
print(records.format_table(recs))
path = records.write_results("00_setup_and_baseline", recs, lab_mode=LAB_MODE)

# %%
# NBVAL_IGNORE_OUTPUT
base_rec, small_rec = recs
display(Markdown(
    f"**Interpretation.** The baseline scores {records.format_accuracy(base_rec)} on the test split: its "
    f"{len(SEEDS)} seeds spread by {100 * base_rec['accuracy_std']:.2f} points (sd), and the Wilson interval on "
    f"{n_test} test images spans {100 * (base_rec['accuracy_ci'][1] - base_rec['accuracy_ci'][0]):.1f} points. "
    f"The small LeNet, the course's standing control, scores "
    f"{records.format_accuracy(small_rec)} with {p_base / p_small:.1f}x fewer parameters, "
    f"{m_base / m_small:.1f}x fewer MACs and {rows['small-lenet']['x_faster']:.1f}x lower latency "
    f"({rows['small-lenet']['config']} vs the baseline's {rows['baseline']['config']}); the paired test of the "
    f"baseline against it says **{cmp_small.verdict}** ({100 * cmp_small.diff:+.2f} points). From chapter 1 on, "
    "every compressed model is shown next to both rows: it should keep the baseline's accuracy (paired verdict "
    "not *worse*) and beat the small LeNet at equal size or speed."))

# %% [markdown]
# ## 9. Checks
# These assertions fail if the baseline regresses, not on noise: accuracies are checked through their
# intervals, never digit for digit (another CPU or a GPU trains slightly different weights). Counts are exact.
# Speed is only sanity-checked here; speed targets live in `make bench`.

# %%
# NBVAL_IGNORE_OUTPUT
print(f"run time of this notebook: {time.perf_counter() - t_start:.0f} s")

# %%
mnist5k = DATASET == "mnist5k"  # the exact counts below are the course's; other data checks the same invariants
assert (p_base == 431_080 and m_base == 2_293_000) or not mnist5k
assert len(splits.train) == 3500 and len(splits.val) == 500 and n_test == 1000 or not mnist5k
assert (p_small == 21_952 and m_small == 188_200) or not mnist5k
assert round(p_base / p_small, 1) == 19.6 or not mnist5k, "the small LeNet has 19.6x fewer parameters"
assert len(base_accs) == len(small_accs) == len(SEEDS) >= (2 if LAB_MODE else 3)
lo, hi = base_rec["accuracy_ci"]
# The baseline's target: the accuracy the course states for its dataset (98% on mnist5k); on other data,
# clearly above chance (the lower end of its interval above the most frequent class's share). Every later
# chapter states its targets relative to this baseline.
target = splits.target_accuracy
targets_00 = {
    (f"baseline at the {100 * target:.0f}% target" if target else f"baseline clearly above chance ({100 * splits.chance:.0f}%)"):
        (hi >= target and base_rec["accuracy"] >= target - 0.005) if target else lo > splits.chance,
    ("small LeNet control did not regress" if target else "small LeNet control clearly above chance"):
        small_rec["accuracy_ci"][1] >= target - 0.005 if target else small_rec["accuracy_ci"][0] > splits.chance,
    "quick recipe not better than the course recipe": cmp_quick.verdict != "better",
    "small LeNet faster than the baseline": rows["small-lenet"]["x_faster"] > 1,
}
# asserted in the full run on the course's dataset; reported (met or MISSED) in lab mode and on other data
report_targets(targets_00, asserted=targets_asserted(LAB_MODE, splits))
assert all(r["latency_ms"] > 0 for r in recs) and base_rec["size_bytes"] > 4 * p_base
print("all checks passed")
