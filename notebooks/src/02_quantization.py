# %% [markdown]
# # 02 · Quantization: from rounding arithmetic to integer-only inference and real int8 speed-ups
#
# **Learning goals**
# - write linear (affine) quantization from scratch: scale, zero-point, symmetric vs asymmetric,
#   per-tensor vs per-channel, and predict its error on the baseline's real weights
#   (SQNR $\approx 6.02\,b + 4.77 - 20\log_{10}(\alpha/\sigma)$);
# - calibrate ranges (min-max, percentile, MSE, TWN) for activations **and weights**, and see why a
#   2-bit grid collapses with min-max weight ranges and not with calibrated ones;
# - compare quantizers fairly: PTQ, quantization-aware training (QAT) and k-means weight sharing at
#   equal numbers of levels and equal bits, with the same fine-tuning budget and three seeds (one in
#   lab mode);
# - run a quantized layer with integers only (zero-point expansion, int32 accumulation, int32 bias,
#   requantization with a fixed-point multiplier, ReLU in the clamp) and match onnxruntime bit for bit;
# - understand why a fake-quantized model is *slower*, get a real int8 speed-up from integer kernels
#   (onnxruntime, torch.ao), and measure it against the fastest float32 baseline.
#
# **Run time:** about 2 minutes on a 2-core laptop CPU (four fine-tunings of `EPOCHS` epochs per seed in
# `SEEDS`, a few dozen post-training quantizations, one latency table); the from-scratch controls load from
# the weights the course ships (`data/trained/`; with `COURSE_SHIPPED_WEIGHTS=0` they are trained once, about
# half a minute, and cached). Lab mode (`LAB_MODE = True`, or
# `COURSE_LAB_MODE=1`) runs one seed, one fine-tuning epoch and fewer timing rounds, in well under a minute.

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
DATASET = "mnist5k"
SEED = 0             # the baseline's seed; fine-tuning runs use recipes.SEEDS
EPOCHS = 3           # the same budget for QAT and for k-means centroid fine-tuning (epochs after the baseline)
DEVICE = None        # None: $COURSE_DEVICE, else CUDA if available, else CPU
CALIB_IMAGES = 512   # calibration images, taken from the training split
LAB_MODE = None      # True: one seed and short budgets, under a minute (None: $COURSE_LAB_MODE, else False)

# %%
# NBVAL_IGNORE_OUTPUT
import math
import platform
import warnings

import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import Markdown, display

from course_lib import checks, deploy, measure, plots, recipes, records, stats, storage
from course_lib import quantization as Q
from course_lib.data import REPO_ROOT, load_dataset
from course_lib.env import (data_note, has_vnni, lab_mode, lab_note, report_targets, start_chapter, targets_asserted,
                            u8s8_saturates)
from course_lib.models import SMALL_LENET, lenet_widths_matching
from course_lib.training import correct, evaluate, load_baseline, predict

env, device = start_chapter(SEED, DEVICE)

# %%
LAB_MODE = lab_mode(LAB_MODE)
SEEDS = recipes.SEEDS[:1] if LAB_MODE else recipes.SEEDS  # fine-tuning seeds, and the controls' seeds
EPOCHS = min(EPOCHS, 1) if LAB_MODE else EPOCHS                      # QAT and centroid fine-tuning epochs
TIMING_ROUNDS, TIMING_REPEATS, PROFILE_RUNS = (2, 10, 5) if LAB_MODE else (5, 20, 20)
lab_note(LAB_MODE, cuts=f"one fine-tuning seed instead of {len(recipes.SEEDS)} (QAT, k-means centroids and the "
                        f"from-scratch controls), {EPOCHS} fine-tuning epoch, {TIMING_ROUNDS} timing rounds of "
                        f"{TIMING_REPEATS} repeats, {PROFILE_RUNS} profiler runs",
         less_reliable="the QAT and k-means fine-tuning accuracies and their comparisons (one seed, one epoch), "
                       "the controls' accuracies, and every latency and speed-up")

# %% [markdown]
# ## 1. The baseline, its noise, and the splits
# The cached LeNet-5 of chapter 0: 431,080 float32 parameters, 4 bytes each. Every model below is
# compared with it on the same 1,000 **test** images, image by image (`stats.paired_compare`: a
# difference, its 95% interval, and a verdict better / worse / indistinguishable). Every *choice*
# (calibration method, learning rate, number of k-means iterations) is made on the 500
# **validation** images; the test split is evaluated once per final model.

# %%
splits = load_dataset(DATASET)
data_note(splits)  # prints only for data other than the course's
shape, test, val = splits.input_shape, splits.test, splits.val
baseline, meta = load_baseline(DATASET, SEED, device=device, splits=splits)
base_correct = correct(baseline, test)
base_acc = base_correct.float().mean().item()
base_val = evaluate(baseline, val)
calib = splits.train.tensors[0][:CALIB_IMAGES]
MACS = measure.macs(baseline, shape)
print(f"baseline: test {stats.format_accuracy(base_acc, len(test))} (95% Wilson interval on {len(test):,} images), "
      f"validation {100 * base_val:.2f}% ({len(val):,} images)")
print(f"{measure.count_params(baseline):,} parameters, {MACS:,} MACs per image, "
      f"{measure.serialized_bytes(baseline) / 1024:.1f} KiB as float32")


def vs_base(c):
    """Paired comparison on the test split of per-image correctness c ((n,) or (seeds, n)) with the baseline."""
    return stats.paired_compare(c, base_correct)


def acc_of(c):
    """Test accuracy of per-image correctness c, averaged over seeds if c is (seeds, n)."""
    return c.float().mean().item()


# %% [markdown]
# ## 2. Linear quantization from scratch
# A $b$-bit integer grid has levels $[q_{min}, q_{max}]$. An **affine** map sends a real $x$ to
# $$q = \operatorname{clamp}\!\Big(\operatorname{round}\big(\tfrac{x}{s}\big) + z,\; q_{min},\; q_{max}\Big),
# \qquad \hat x = s\,(q - z),$$
# with a real **scale** $s$ (the step between levels) and an integer **zero-point** $z$ (the integer that
# stands for $0.0$, so zero padding and ReLU zeros are exact). To cover a range $[\alpha, \beta]$ that
# contains 0:
# - **asymmetric** (activations after ReLU): $q \in [0, 2^b-1]$, $s = \frac{\beta-\alpha}{2^b-1}$,
#   $z = -\operatorname{round}(\alpha/s)$: $2^b$ levels;
# - **symmetric** (weights, centred on 0): $q \in [-(2^{b-1}-1), 2^{b-1}-1]$, $s = \frac{\max(|\alpha|, |\beta|)}{2^{b-1}-1}$,
#   $z = 0$: the "narrow" grid of $2^b - 1$ levels, symmetric about 0 (at 8 bits, -127..127).
#
# Inside the range the error is at most half a step, $|x - \hat x| \le s/2$; outside it the value is
# clipped. Why weights stay symmetric although the asymmetric grid fits them better is a question of
# integer arithmetic, answered in section 11.

# %%
x = torch.tensor([-1.0, -0.26, 0.0, 0.4, 1.7, 3.0])
for symmetric in (False, True):
    q, s, z = Q.quantize(x, bits=4, symmetric=symmetric)
    print(f"{'symmetric ' if symmetric else 'asymmetric'} 4-bit: scale {float(s):.4f}, zero-point {int(z)}, "
          f"q = {q.tolist()}, x_hat = {[round(v, 3) for v in Q.dequantize(q, s, z).tolist()]}")


# %% [markdown]
# ### Exercise 1: scale and zero-point
# Write the asymmetric parameters for a range $[lo, hi]$ and $b$ bits: widen the range to contain 0,
# $s = (hi - lo)/(2^b - 1)$, $z = \operatorname{clamp}(-\operatorname{round}(lo/s), 0, 2^b-1)$, as Python
# numbers. (Zero-width ranges need not be handled.)

# %% nbgrader={"grade": false, "grade_id": "scale_zero_point", "locked": false, "schema_version": 3, "solution": true, "task": false}
def scale_zero_point(lo: float, hi: float, bits: int) -> tuple[float, int]:
    # Hint: lo, hi = min(lo, 0), max(hi, 0); there are 2**bits - 1 steps between 2**bits levels;
    # Hint: the zero-point is an integer: round, then clamp to [0, 2**bits - 1]
    ### BEGIN SOLUTION
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / (2 ** bits - 1)
    zero_point = int(min(max(-round(lo / scale), 0), 2 ** bits - 1))
    return scale, zero_point
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "check_scale_zero_point", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
checks.check_scale_zero_point(scale_zero_point)

# %% [markdown] tags=["theory"]
# ## 3. The error on the baseline's real weights, predicted and measured
# For a uniform grid of $L$ levels spanning $[-\alpha, \alpha]$ the step is $s = 2\alpha/(L-1)$ and, when the
# rounding error is uniform on $[-s/2, s/2]$, its power is $s^2/12$. With $\sigma^2$ the mean square of
# the values,
# $$\mathrm{SQNR} = 10\log_{10}\frac{\sigma^2}{s^2/12} = 4.77 + 20\log_{10}(L-1) - 20\log_{10}\frac{\alpha}{\sigma}
# \;\approx\; 6.02\,b + 4.77 - 20\log_{10}\frac{\alpha}{\sigma} \quad (L = 2^b).$$
# One line explains four things: each bit buys 6.02 dB; outliers hurt (a large $\alpha/\sigma$, the
# "crest factor", wastes levels on empty range); **per-channel** scales help when channels have very
# different ranges (each channel gets its own, smaller $\alpha/\sigma$); and **clipping** (a smaller
# $\alpha$) helps until the clipping error, which the formula ignores, takes over. Measure the SQNR
# $10\log_{10}\frac{\sum w^2}{\sum (w-\hat w)^2}$ of every layer for symmetric per-tensor, asymmetric
# per-tensor and symmetric per-channel (one scale per output channel, `per_channel_axis=0`):

# %%
weights = {n: w.detach() for n, w in measure.prunable_weights(baseline)}
schemes = {"sym/tensor": (True, None), "asym/tensor": (False, None), "sym/channel": (True, 0)}
bit_list = (8, 6, 4, 3, 2)
sqnr = {(layer, name, b): Q.sqnr_db(w, Q.fake_quantize(w, b, sym, axis))
        for layer, w in weights.items() for name, (sym, axis) in schemes.items() for b in bit_list}
print(f"{'layer':6s} {'scheme':12s} " + " ".join(f"{b:>5d}b" for b in bit_list) + "   (SQNR, dB)")
for layer in weights:
    for name in schemes:
        print(f"{layer:6s} {name:12s} " + " ".join(f"{sqnr[layer, name, b]:6.1f}" for b in bit_list))


def predicted_sqnr(w, levels, axis=None):
    """The uniform-noise prediction 4.77 + 20 log10(L - 1) - 20 log10(alpha / sigma), alpha per channel if axis=0."""
    alpha = w.abs().amax(dim=tuple(range(1, w.dim()))) if axis == 0 else w.abs().max()
    noise = (2 * alpha / (levels - 1)) ** 2 / 12  # s^2/12, per channel (channels have equal sizes)
    return 10 * math.log10(float(w.pow(2).mean()) / float(noise.mean()))


print("\nsymmetric, predicted by the formula vs measured (dB); alpha/sigma per tensor")
for layer, w in weights.items():
    ratio = float(w.abs().max() / w.pow(2).mean().sqrt())
    cells = [f"{b}b tensor {predicted_sqnr(w, 2 ** b - 1):5.1f} vs {sqnr[layer, 'sym/tensor', b]:5.1f}, "
             f"channel {predicted_sqnr(w, 2 ** b - 1, 0):5.1f} vs {sqnr[layer, 'sym/channel', b]:5.1f}" for b in (8, 4)]
    print(f"{layer:6s} alpha/sigma {ratio:5.1f} | " + " | ".join(cells))

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.3))
for name in schemes:
    axes[0].plot(bit_list, [np.mean([sqnr[l, name, b] for l in weights]) for b in bit_list], marker="o", label=name)
axes[0].plot(bit_list, [np.mean([predicted_sqnr(w, 2 ** b - 1) for w in weights.values()]) for b in bit_list], "k:",
             label="formula, sym/tensor")
axes[0].set(xlabel="bits", ylabel="mean SQNR over layers (dB)", title="weight quantization error")
axes[0].legend(fontsize=8)
w_fc1 = weights["fc1"]
ch_max = w_fc1.abs().amax(1).sort(descending=True).values
axes[1].plot(ch_max.numpy(), color="C2", label="max |w| of each output channel")
axes[1].axhline(float(w_fc1.abs().max()), color="C0", ls="--", label="per-tensor max |w|")
axes[1].axhline(float(w_fc1.pow(2).mean().sqrt()), color="k", ls=":", label=r"rms $\sigma$ of all weights")
axes[1].set(xlabel="fc1 output channel (sorted)", ylabel="|w|", title="why per-channel scales help fc1")
axes[1].legend(fontsize=8)
fig.tight_layout()

# %% [markdown]
# The formula tracks the measurement at 8 and 4 bits (where the rounding error really is uniform) and
# says where per-channel's gain comes from: a smaller $\alpha/\sigma$ per channel. The right panel shows
# it for fc1: one scale per tensor is set by the largest channel, most channels use a fraction of the
# range. Asymmetric per-tensor has a better SQNR than symmetric per-tensor in this table: it has one more
# level ($2^b$ instead of $2^b - 1$) and fits $[\min, \max]$ instead of $[-\max|w|, \max|w|]$. The gain
# grows as the bits fall, to a few dB at 3 bits in the table; at 2 bits, where symmetric has 3 levels and
# asymmetric 4, every grid is so coarse that the gains scatter (large for conv1, small for the others).
#
# ## 4. Fake quantization, exactly PyTorch's, and the straight-through estimator
# To *simulate* quantization in a float network, replace $x$ by $\hat x$ ("fake quantization": quantize then
# dequantize). `Q.fake_quantize` computes it with the same float32 operations as PyTorch's own kernels
# (`1/s` in float32, multiply, round half to even), so the two agree bit for bit:

# %%
_, s_pc, z_pc = Q.quantize(w_fc1, 8, symmetric=True, per_channel_axis=0)
ours = Q.fake_quantize(w_fc1, 8, True, per_channel_axis=0)
theirs = torch.fake_quantize_per_channel_affine(w_fc1, s_pc, z_pc, 0, -127, 127)
print("per-channel, identical to torch:", torch.equal(ours, theirs))
_, s_t, z_t = Q.quantize(w_fc1, 4, symmetric=False)
print("per-tensor, identical to torch: ",
      torch.equal(Q.fake_quantize(w_fc1, 4, False), torch.fake_quantize_per_tensor_affine(w_fc1, float(s_t), int(z_t), 0, 15)))

# %% [markdown]
# Rounding has zero derivative almost everywhere, so a network with fake quantization cannot learn
# through it. The **straight-through estimator** (Bengio et al. 2013) pretends rounding is the identity
# in the backward pass, but keeps the clamp: $\frac{\partial \hat x}{\partial x} = 1$ if $q_{min} \le
# \operatorname{round}(x/s) + z \le q_{max}$, else 0. A convenient trick in PyTorch is
# `x + (x_hat - x).detach()`: the forward value is `x_hat`, the gradient is that of `x`. The picture:

# %%
fig = plots.quantizer_staircase(0.5, 0, -3, 3)


# %% [markdown]
# ### Exercise 2: fake quantization with a straight-through gradient
# Return $\hat x$ for a given scale, zero-point and integer range, with the clipped straight-through
# gradient (values that were clamped get zero gradient).

# %% nbgrader={"grade": false, "grade_id": "fake_quant_ste", "locked": false, "schema_version": 3, "solution": true, "task": false}
def fake_quant_ste(x: torch.Tensor, scale: float, zero_point: int, qmin: int, qmax: int) -> torch.Tensor:
    # Hint: q = round(x / scale) + zero_point; x_hat = (clamp(q) - zero_point) * scale; forward x_hat,
    # Hint: backward the gradient of x where q was inside [qmin, qmax]: x + (x_hat - x).detach()
    ### BEGIN SOLUTION
    q = torch.round(x / scale) + zero_point
    inside = (q >= qmin) & (q <= qmax)
    x_hat = (torch.clamp(q, qmin, qmax) - zero_point) * scale
    return torch.where(inside, x + (x_hat - x).detach(), x_hat.detach())
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "check_fake_quant_ste", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
checks.check_fake_quant_ste(fake_quant_ste)

# %% [markdown]
# ## 5. Calibrating activations
# Weights are known; activations depend on the input, so their range is **calibrated** on a few hundred
# training images. Three ways to choose $[\alpha, \beta]$ from the observed values:
# - **min-max**: the full observed range; nothing is clipped but one outlier stretches the step for all;
# - **percentile**: clip to the 0.01st and the 99.99th percentiles;
# - **MSE**: try clipping ratios $r \in (0, 1]$ of the min-max range, $(r\min, r\max)$, and keep the one with
#   the smallest $\mathbb E[(x - \hat x)^2]$: the best trade between clipping and rounding error *within that
#   one-parameter family* (not an optimum over every $(\alpha, \beta)$).
#
# Each layer's *input* is quantized (asymmetric, since ReLU outputs are non-negative). The ranges each
# method picks at 4 bits, and the mean squared error they give, on the calibration images:

# %%
probe = Q.quantize_model(baseline, 32, 32)
with torch.no_grad(), Q.observing_float_inputs(probe) as seen:
    probe(calib)
acts = {n: torch.cat(inputs) for n, inputs in seen.items()}
print(f"{'input of':8s} {'method':10s} {'range':>17s} {'MSE x 1e4':>10s}")
for layer, a in acts.items():
    for method in Q.CALIBRATION_METHODS:
        s, z = Q.calibrate(a, 4, method)
        lo, hi = -int(z) * float(s), (15 - int(z)) * float(s)
        err = ((Q.fake_quantize(a, 4, False, scale=s, zero_point=z) - a) ** 2).mean().item()
        print(f"{layer:8s} {method:10s} [{lo:6.2f}, {hi:6.2f}] {1e4 * err:10.2f}")

# %%
a = acts["fc1"].flatten()
fig, axes = plt.subplots(1, 2, figsize=(11, 3.2))
axes[0].hist(a[a > 0].numpy(), bins=150, log=True, color="C0", alpha=0.7)
for i, method in enumerate(Q.CALIBRATION_METHODS):
    s, z = Q.calibrate(a, 4, method)
    axes[0].axvline((15 - int(z)) * float(s), color=f"C{i + 1}", label=f"{method}: upper end", lw=1.5)
axes[0].set(xlabel="fc1 input activation (positive values)", ylabel="count", title="4-bit calibration ranges")
axes[0].legend(fontsize=8)
for b in (3, 4, 6):
    r, mse = Q.mse_curve(a, b, symmetric=False)
    axes[1].semilogy(r.numpy(), mse.numpy(), label=f"{b} bits")
    axes[1].plot(float(r[mse.argmin()]), float(mse.min()), "k.", ms=8)
axes[1].set(xlabel="clipping ratio r (range = r x min-max range)", ylabel="MSE",
            title="clipping error (left) vs rounding error (right)")
axes[1].legend(fontsize=8)
fig.tight_layout()

# %% [markdown]
# Left of each minimum, clipping error dominates; right of it, the step is too coarse. With fewer bits
# the minimum moves left: a coarse grid pays more for range. Which method for the rest of the chapter?
# That is a decision, so it is made on the **validation** split, with float weights and quantized
# activations (ties go to the simplest, min-max, which onnxruntime's quantizer uses too):

# %%
# NBVAL_IGNORE_OUTPUT
act_val = {(m, b): evaluate(Q.ptq(baseline, calib, 32, b, method=m), val)
           for m in Q.CALIBRATION_METHODS for b in (8, 4, 3)}
for m in Q.CALIBRATION_METHODS:
    print(f"{m:10s} validation: " + "  ".join(f"A{b} {100 * act_val[m, b]:.2f}%" for b in (8, 4, 3)))
ACT_METHOD = max(Q.CALIBRATION_METHODS, key=lambda m: act_val[m, 8])  # first (min-max) wins ties
print("activation calibration used below (8-bit activations):", ACT_METHOD)

# %% [markdown]
# One image is 0.2 points of validation accuracy: on this small network with well-behaved ReLU
# activations the methods are hard to tell apart. Calibration matters much more for networks with
# outlier activations (transformers, chapter 6), where min-max can cost whole points at 8 bits.
#
# ## 6. Post-training quantization (PTQ) at 8 and 4 bits
# `Q.ptq` wraps every convolution and linear layer in a `QuantWrapper` that fake-quantizes its weights
# (min-max, per channel or per tensor) and its input activations (calibrated), with no training.
# "WxAy" means x-bit weights, y-bit activations. Size is the real artifact: bit-packed integer weights
# plus float32 scales and biases (`Q.packed_size_bytes`). Test accuracy, paired with the baseline:

# %%
# NBVAL_IGNORE_OUTPUT
ptq_defs = {"ptq-w8a8-per-channel": dict(weight_bits=8, per_channel=True),
            "ptq-w8a8-per-tensor": dict(weight_bits=8, per_channel=False),
            "ptq-w8a8-asym-channel": dict(weight_bits=8, per_channel=True, weight_symmetric=False),
            "ptq-w4a8-per-channel": dict(weight_bits=4, per_channel=True),
            "ptq-w4a8-per-tensor": dict(weight_bits=4, per_channel=False)}
ptq_models = {n: Q.ptq(baseline, calib, act_bits=8, method=ACT_METHOD, **kw) for n, kw in ptq_defs.items()}
ptq_correct = {n: correct(m, test) for n, m in ptq_models.items()}
for n, c in ptq_correct.items():
    print(f"{n:22s} test {100 * acc_of(c):.2f}%, vs baseline {vs_base(c)}; "
          f"{Q.packed_size_bytes(ptq_models[n]) / 1024:.1f} KiB")
cmp_w4 = stats.paired_compare(ptq_correct["ptq-w4a8-per-channel"], ptq_correct["ptq-w4a8-per-tensor"])
cmp_w8_asym = stats.paired_compare(ptq_correct["ptq-w8a8-asym-channel"], ptq_correct["ptq-w8a8-per-channel"])
print("W4 per-channel vs per-tensor:      ", cmp_w4)
print("W8 asymmetric vs symmetric (channel):", cmp_w8_asym)

# %% [markdown]
# 8 bits costs nothing measurable. At 4 bits, per-channel scales have the better SQNR (section 3),
# but whether that shows in accuracy is what the paired verdict says: one image is 0.1 point, and a
# difference inside the interval is not an effect. The same holds for asymmetric weights at 8 bits:
# a dB or so more SQNR, no accuracy to gain, and (section 11) a runtime cost.
#
# ## 7. Two bits: the narrow grid and calibrated weight ranges
# The symmetric 2-bit grid has $2^2 - 1 = 3$ levels: $-s, 0, s$ (ternary weights). With the min-max
# scale, $s = \max|w|$, and every weight with $|w| < s/2$ rounds to 0. In a bell-shaped layer that is
# almost all of it: the layer keeps only its few largest weights. Rounding is not the culprit; the
# **range** is. Three better choices of $s$ per output channel (`Q.calibrate_weight`):
# percentile of $|w|$, the MSE search of section 5 applied to weights, and the rule of Ternary Weight
# Networks (Li et al. 2016): threshold $\Delta = 0.7\,\mathbb E|w|$, i.e. $s = 2\Delta$. Share of each
# layer's weights that the 3-level grid sends to 0:

# %%
print(f"{'layer':6s} " + " ".join(f"{m:>11s}" for m in Q.WEIGHT_CALIBRATION_METHODS) + "   (% of weights -> 0)")
for layer, w in weights.items():
    cells = []
    for m in Q.WEIGHT_CALIBRATION_METHODS:
        s, z = Q.calibrate_weight(w, 2, m)
        cells.append(100 * (Q.fake_quantize(w, 2, True, 0, scale=s, zero_point=z) == 0).float().mean().item())
    print(f"{layer:6s} " + " ".join(f"{c:10.1f}%" for c in cells))

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.2), sharey=True)
for ax, m in zip(axes, ("minmax", "mse")):
    s, _ = Q.calibrate_weight(w_fc1, 2, m)
    ax.hist((w_fc1 / s[:, None]).flatten().numpy(), bins=200, log=True, color="C0", alpha=0.7)
    for v in (-0.5, 0.5):
        ax.axvline(v, color="C3", lw=1.2)
    for v in (-1, 0, 1):
        ax.axvline(v, color="k", ls=":", lw=1)
    ax.set(xlabel="fc1 weight / its channel's scale s", title=f"3 levels, {m} scale: |w/s| < 1/2 rounds to 0")
axes[0].set_ylabel("count")
fig.tight_layout()

# %% [markdown]
# Which method, for which grid? A decision, so on the validation split: every method on four grids,
# 3 levels (2 bits symmetric), 4 levels (2 bits asymmetric, $z \ne 0$ per channel), 7 and 15 levels
# (3 and 4 bits symmetric), 8-bit activations. Ties go to the smaller total weight error.

# %%
# NBVAL_IGNORE_OUTPUT
GRIDS = {3: dict(weight_bits=2, weight_symmetric=True), 4: dict(weight_bits=2, weight_symmetric=False),
         7: dict(weight_bits=3, weight_symmetric=True), 15: dict(weight_bits=4, weight_symmetric=True)}


def grid_methods(levels):
    return [m for m in Q.WEIGHT_CALIBRATION_METHODS if m != "twn" or levels == 3]


def weight_error(qm):
    return sum(float(((m.quantized_weight() - m.layer.weight).detach() ** 2).sum()) for m in qm.modules()
               if isinstance(m, Q.QuantWrapper))


lowbit, lowbit_val = {}, {}
for L, grid in GRIDS.items():
    for m in grid_methods(L):
        lowbit[L, m] = Q.ptq(baseline, calib, act_bits=8, method=ACT_METHOD, weight_method=m, **grid)
        lowbit_val[L, m] = evaluate(lowbit[L, m], val)
    print(f"{L:2d} levels, validation: " + "  ".join(f"{m} {100 * lowbit_val[L, m]:.2f}%" for m in grid_methods(L)))
WEIGHT_METHOD = {L: max(grid_methods(L), key=lambda m: (lowbit_val[L, m], -weight_error(lowbit[L, m])))
                 for L in GRIDS}
print("weight calibration chosen on validation:", WEIGHT_METHOD)

# %% [markdown]
# Now the test split, once per final model: PTQ with min-max weights and with the chosen calibration.

# %%
# NBVAL_IGNORE_OUTPUT
ptq_low = {}
for L in GRIDS:
    for m in dict.fromkeys(("minmax", WEIGHT_METHOD[L])):
        ptq_low[L, m] = correct(lowbit[L, m], test)
        print(f"PTQ {L:2d} levels, {m:10s} weights: test {100 * acc_of(ptq_low[L, m]):6.2f}%, "
              f"vs baseline {vs_base(ptq_low[L, m])}")

# %% [markdown]
# ## 8. Quantization-aware training (QAT)
# Fine-tune the network *with* fake quantization in the forward pass and the straight-through estimator in
# the backward pass: the float "shadow" weights keep receiving small updates, and rounding decides which
# level each weight lands on. QAT starts from the calibrated PTQ model (the weight grid stays fixed while
# the weights move) at 3 and 4 levels, `EPOCHS` epochs, three seeds in the full run (the fine-tuning order and the
# augmentation shifts change with the seed). The learning rates, `recipes.QAT_LR`, were chosen on the
# validation split (see its docstring). Validation accuracy after each epoch, mean over seeds:

# %%
# NBVAL_IGNORE_OUTPUT
qat_models, qat_correct = {}, {}
for L in (3, 4):
    runs = [recipes.qat(baseline, splits.train, calib, act_bits=8, epochs=EPOCHS, lr=recipes.QAT_LR[L], seed=s,
                        val=val, device=device, method=ACT_METHOD, weight_method=WEIGHT_METHOD[L], **GRIDS[L])
            for s in SEEDS]
    qat_models[L] = [m for m, _ in runs]
    qat_correct[L] = torch.stack([correct(m, test) for m in qat_models[L]])
    curve = np.mean([h.val_acc for _, h in runs], axis=0)
    print(f"QAT {L} levels, lr {recipes.QAT_LR[L]:g}: validation per epoch " +
          " ".join(f"{100 * v:.2f}%" for v in curve) + f"; test {100 * acc_of(qat_correct[L]):.2f}% "
          f"(mean of {len(SEEDS)} seeds), vs baseline {vs_base(qat_correct[L])}")


# %% [markdown]
# ## 9. K-means weight sharing (Deep Compression)
# Han et al. (2016) replace each layer's weights by $K$ **shared values** (a codebook) found by 1-D
# k-means, and store only the index of each weight ($\lceil\log_2 K\rceil$ bits) plus the small float
# codebook. The levels follow the weight distribution instead of a uniform grid. Lloyd's algorithm alternates
# $$c(i) = \arg\min_k |w_i - \mu_k|, \qquad \mu_k = \frac{1}{|\{i : c(i)=k\}|}\sum_{i:\,c(i)=k} w_i .$$
# Then the **centroids are fine-tuned**: the gradient of a shared value is the sum of the gradients of all
# the weights that use it, $\frac{\partial L}{\partial \mu_k} = \sum_{i:\,c(i)=k} \frac{\partial L}{\partial w_i}$
# (autograd does exactly this through `codebook[indices]`).
#
# ### Exercise 3: one k-means step
# Given weights `w` (N,) and centroids `c` (K,), return the assignment of each weight to its nearest
# centroid (int64) and the new centroids (a centroid with no weights keeps its value).

# %% nbgrader={"grade": false, "grade_id": "kmeans_step", "locked": false, "schema_version": 3, "solution": true, "task": false}
def kmeans_step(w: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # Hint: distances (N, K) = (w[:, None] - c[None, :]).abs(); argmin over K; then per centroid the
    # Hint: mean of its weights (index_add_ and bincount), keeping the old value where the count is 0
    ### BEGIN SOLUTION
    idx = (w[:, None] - c[None, :]).abs().argmin(1)
    sums = torch.zeros_like(c).index_add_(0, idx, w)
    counts = torch.bincount(idx, minlength=len(c))
    return idx, torch.where(counts > 0, sums / counts.clamp(min=1), c)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "check_kmeans_step", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
checks.check_kmeans_step(kmeans_step)

# %% [markdown]
# Han et al. start the centroids **linearly** between the smallest and the largest weight, arguing that
# this keeps the rare large weights, which matter most. Does it survive Lloyd's iterations? Follow the
# outer centroid of fc1 and the validation accuracy (no fine-tuning) as the iterations proceed:

# %%
# NBVAL_IGNORE_OUTPUT
km_iters, km_val = (0, 1, 3, 30), {}
fig, ax = plt.subplots(figsize=(8, 3))
ax.hist(w_fc1.flatten().numpy(), bins=200, log=True, color="C0", alpha=0.5)
for j, it in enumerate(km_iters):
    c, _ = Q.kmeans_quantize(w_fc1, 2, iters=it, levels=3)
    for v in c.tolist():
        ax.axvline(v, color=f"C{j + 1}", lw=1.2, label=f"{it} iterations" if v == c.max() else None)
    for L in (3, 4):
        km_val[L, it] = evaluate(Q.kmeans_model(baseline, 2, iters=it, levels=L), val)
    print(f"{it:2d} Lloyd iterations: fc1's largest of 3 centroids {float(c.max()):.3f} (largest weight "
          f"{float(w_fc1.max()):.3f}); validation, no fine-tuning: 3 levels {100 * km_val[3, it]:.2f}%, "
          f"4 levels {100 * km_val[4, it]:.2f}%")
ax.set(xlabel="fc1 weight", title="k-means centroids of fc1 (3 levels) after Lloyd iterations")
ax.legend(fontsize=8)
fig.tight_layout()
KM_ITERS = max(km_iters, key=lambda it: (km_val[3, it] + km_val[4, it], it))  # ties: more iterations
print("Lloyd iterations used below (chosen on validation):", KM_ITERS)

# %% [markdown]
# The iterations minimise the squared error, which the bulk of small weights dominates: the outer
# centroids move inwards, and after a few steps the largest weights share a centroid far smaller than
# themselves. Linear initialisation does not "keep" them after convergence; it only starts the
# search from the tails (`Q.kmeans_quantize`'s docstring says so). Fine-tuning the centroids then
# moves them where the *loss*, not the weight error, wants them. K-means at 3, 4, 8 and 16 levels
# without fine-tuning (test), then fine-tuning of the centroids only, at 3 and 4 levels, with the same
# budget as QAT (`EPOCHS` epochs, three seeds in the full run, learning rates `recipes.KMEANS_LR` chosen on validation):

# %%
# NBVAL_IGNORE_OUTPUT
km_plain = {}
for L in (3, 4, 8, 16):
    bits = max(1, math.ceil(math.log2(L)))
    km_plain[L] = Q.kmeans_model(baseline, bits, iters=KM_ITERS, levels=L)
    c = correct(km_plain[L], test)
    km_plain[L, "correct"] = c
    print(f"k-means {L:2d} levels ({bits} bits/index), no fine-tuning: test {100 * acc_of(c):.2f}%, vs baseline {vs_base(c)}")
km_ft, km_ft_correct = {}, {}
for L in (3, 4):
    km_ft[L] = [recipes.kmeans_finetune(baseline, splits.train, 2, epochs=EPOCHS, lr=recipes.KMEANS_LR[L], seed=s,
                                        levels=L, iters=KM_ITERS, device=device) for s in SEEDS]
    km_ft_correct[L] = torch.stack([correct(m, test) for m in km_ft[L]])
    print(f"k-means {L} levels + {EPOCHS} epochs of centroid fine-tuning: test {100 * acc_of(km_ft_correct[L]):.2f}% "
          f"(mean of {len(SEEDS)} seeds), vs no fine-tuning {stats.paired_compare(km_ft_correct[L], km_plain[L, 'correct'])}")


# %% [markdown]
# ## 10. Equal levels, equal bits, equal budgets
# A fair comparison of quantizers fixes what they are allowed: the number of **levels** a weight can
# take (3 or 4 per layer or channel), the **bits** it is stored in (2 bits hold 3 or 4 levels; 3
# levels carry $\log_2 3 \approx 1.58$ bits of information), and the **training budget** (QAT and
# centroid fine-tuning both get `EPOCHS` epochs, three seeds in the full run). The figure puts every method on the
# axis of levels; error bars are 95% Wilson intervals on the test images (for several seeds, around
# their mean).

# %%
def point(c):
    acc = acc_of(c)
    return (acc, *stats.accuracy_interval(acc, c.shape[-1]))


by_levels = {"PTQ, min-max weights": {L: point(ptq_low[L, "minmax"]) for L in GRIDS},
             "PTQ, calibrated weights": {L: point(ptq_low[L, WEIGHT_METHOD[L]]) for L in GRIDS},
             "k-means, no fine-tuning": {L: point(km_plain[L, "correct"]) for L in (3, 4, 8, 16)},
             f"QAT, {EPOCHS} ep ({len(SEEDS)} seeds)": {L: point(qat_correct[L]) for L in (3, 4)},
             f"k-means + centroids, {EPOCHS} ep ({len(SEEDS)} seeds)": {L: point(km_ft_correct[L]) for L in (3, 4)}}
fig = plots.accuracy_by_levels(by_levels, reference=(base_acc, *stats.accuracy_interval(base_acc, len(test))))
_ = fig.axes[0].set_ylim(max(0, 100 * min(p[0] for r in by_levels.values() for p in r.values()) - 3), 100)

# %%
# NBVAL_IGNORE_OUTPUT
cmp_levels = {}
for L in (3, 4):
    cmp_levels[L, "qat-vs-km"] = stats.paired_compare(qat_correct[L], km_ft_correct[L])
    cmp_levels[L, "qat-vs-ptq"] = stats.paired_compare(qat_correct[L], ptq_low[L, WEIGHT_METHOD[L]])
    cmp_levels[L, "ptq-vs-minmax"] = stats.paired_compare(ptq_low[L, WEIGHT_METHOD[L]], ptq_low[L, "minmax"])
    print(f"{L} levels: QAT vs k-means+centroids (same epochs): {cmp_levels[L, 'qat-vs-km']}")
    print(f"          QAT vs calibrated PTQ:                  {cmp_levels[L, 'qat-vs-ptq']}")
    print(f"          calibrated vs min-max PTQ:              {cmp_levels[L, 'ptq-vs-minmax']}")
cmp_bits = stats.paired_compare(qat_correct[3], km_ft_correct[4])
print(f"2 bits per weight: QAT (3 levels) vs k-means+centroids (4 levels): {cmp_bits}")


# %%
# NBVAL_IGNORE_OUTPUT
def verdict_words(cmp, a, b):
    return {"better": f"{a} is better than {b}", "worse": f"{a} is worse than {b}",
            "indistinguishable": f"{a} and {b} are indistinguishable"}[cmp.verdict]


display(Markdown(
    f"**Read from this run (test split).** With min-max weights, PTQ at 3 levels scores "
    f"{100 * acc_of(ptq_low[3, 'minmax']):.1f}%; with {WEIGHT_METHOD[3]}-calibrated weights "
    f"{100 * acc_of(ptq_low[3, WEIGHT_METHOD[3]]):.1f}% ({cmp_levels[3, 'ptq-vs-minmax']}), without any training: "
    f"the 2-bit collapse was the range, not the rounding. On top of calibrated PTQ, QAT adds "
    f"{cmp_levels[3, 'qat-vs-ptq']} at 3 levels and {cmp_levels[4, 'qat-vs-ptq']} at 4 levels. At equal levels "
    f"and equal epochs, {verdict_words(cmp_levels[3, 'qat-vs-km'], 'QAT', 'k-means + centroid fine-tuning')} at 3 "
    f"levels ({cmp_levels[3, 'qat-vs-km']}) and {verdict_words(cmp_levels[4, 'qat-vs-km'], 'QAT', 'k-means')} at 4 "
    f"levels ({cmp_levels[4, 'qat-vs-km']}). At equal storage (2 bits), "
    f"{verdict_words(cmp_bits, 'QAT with 3 levels', 'k-means with 4')} ({cmp_bits}). Differences inside the "
    f"interval are not effects: {len(test):,} test images resolve about "
    f"{50 * (stats.accuracy_interval(base_acc, len(test))[1] - stats.accuracy_interval(base_acc, len(test))[0]):.1f} "
    "points either way at this accuracy."))

# %% [markdown]
# ## 11. Integer-only inference: what an int8 kernel computes
# Fake quantization only *simulates* integers. A real int8 layer never leaves the integers. Write the
# real values of a linear layer's input, weights and output as $x = s_x(q_x - z_x)$, $w = s_w(q_w - z_w)$,
# $y = s_y(q_y - z_y)$. Then, for one output,
# $$s_y(q_y - z_y) = s_w s_x \sum_{k=1}^{K} (q_{w,k} - z_w)(q_{x,k} - z_x) + b .$$
# **1. Zero-point expansion, int32 accumulation.** The sum expands into
# $$\sum_k (q_w - z_w)(q_x - z_x) = \underbrace{\sum_k q_w q_x}_{\text{int8 dot product}}
# - \underbrace{z_x \sum_k q_w}_{\text{weights only: precomputed}}
# - \underbrace{z_w \sum_k q_x}_{\text{per input: a runtime cost}} + \underbrace{K z_w z_x}_{\text{constant}} .$$
# The first term is what VNNI's `vpdpbusd` computes (uint8 x int8 products, added in an **int32**
# accumulator: a uint8 times an int8 needs 16 bits, a sum of $K$ of them more). The second and fourth are
# known before any input arrives and fold into the bias. The third needs a sum over every input row at
# run time, unless $z_w = 0$: **that** is why weights are quantized symmetrically, even though the
# asymmetric grid fits them a little better (section 3).
#
# **2. The bias** joins the accumulator at its scale $s_w s_x$: $q_b = \operatorname{round}(b / (s_w s_x))$,
# stored as int32.
#
# **3. Requantization.** $q_y = z_y + \operatorname{round}\big(M \cdot \text{acc}\big)$ with
# $M = s_w s_x / s_y$, then clamp to $[0, 255]$. onnxruntime's x86 kernels (MLAS `MlasRequantizeOutput`)
# convert the int32 accumulator to float32, multiply by $M$ (float32, computed as $(s_x s_w)/s_y$) and
# round half to even. Hardware without a float unit writes $M = M_0 \cdot 2^{-n}$ with an integer
# $M_0 \in [2^{30}, 2^{31})$ and computes $(\text{acc} \cdot M_0 + 2^{n-1}) \gg n$ in 64-bit integers
# (gemmlowp, TFLite, `Q.fixed_point_multiplier`).
#
# **4. ReLU in the clamp.** A ReLU after the layer is $\max(y, 0)$, and $0.0$ is the integer $z_y$:
# clamp to $[z_y, 255]$ instead of $[0, 255]$. Quantizers give a ReLU's output the range $[0, \max]$, so
# $z_y = 0$ and the ReLU costs nothing at all.
#
# The library writes each step with PyTorch integer ops (`Q.integer_linear`, `Q.integer_conv2d`,
# `Q.quantize_bias`, `Q.requantize`, `Q.requantize_fixed_point`, and whole layers
# `Q.quantized_linear` / `Q.quantized_conv2d`); `deploy.ort_qlinear` builds a one-node ONNX model
# (`QLinearConv` or `QLinearMatMul`, with `onnx.helper`) with the same scales and zero-points and runs it
# in onnxruntime. Take conv1 of the baseline with its calibrated input grid (asymmetric: the normalised
# images have negative pixels, so $z_x \ne 0$), per-channel int8 weights, and an output grid after the
# ReLU:

# %%
w8 = ptq_models["ptq-w8a8-per-channel"]
# On x86 CPUs without VNNI, onnxruntime's uint8 x int8 kernels add pairs of products in int16 and can
# saturate (section 12): there 7-bit weights (reduce_range) keep the comparison exact.
INT_WEIGHT_BITS = 7 if u8s8_saturates() else 8
s_x, z_x = w8.conv1.act_scale, int(w8.conv1.act_zero_point)
q_x, _, _ = Q.quantize(calib[:64], 8, symmetric=False, scale=s_x, zero_point=z_x)
q_w, s_w, _ = Q.quantize(baseline.conv1.weight.detach(), INT_WEIGHT_BITS, symmetric=True, per_channel_axis=0)
with torch.no_grad():
    y_float = torch.relu(baseline.conv1(Q.dequantize(q_x, s_x, z_x)))
s_y, z_y = Q.calibrate(y_float, 8, "minmax")   # the range of a ReLU output starts at 0: z_y = 0
print(f"conv1: input grid s_x = {float(s_x):.5f}, z_x = {z_x}; output grid s_y = {float(s_y):.5f}, z_y = {int(z_y)}; "
      f"{INT_WEIGHT_BITS}-bit weights, {q_w[0].numel()} products per output")
main = Q.integer_conv2d(q_x, 0, q_w, 0).long()                      # sum q_w q_x (conv1 has no padding)
fold = z_x * q_w.long().sum((1, 2, 3))                               # z_x sum q_w, per output channel
acc = Q.integer_conv2d(q_x, z_x, q_w, 0).long()
print("sum (q_w)(q_x - z_x) == sum q_w q_x - z_x sum q_w:", torch.equal(acc, main - fold[None, :, None, None]))
print(f"typical size of the terms: |sum q_w q_x| ~ {main.abs().float().mean():.1f}, "
      f"|z_x sum q_w| ~ {fold.abs().float().mean():.1f}; largest |acc| {float(acc.abs().max()):.3g} "
      f"(int32 holds {2 ** 31 - 1:,})")

# %%
# NBVAL_IGNORE_OUTPUT
bias_q = Q.quantize_bias(baseline.conv1.bias.detach(), s_x, s_w)
q_y = Q.quantized_conv2d(q_x, z_x, s_x, q_w, 0, s_w, baseline.conv1.bias.detach(), s_y, z_y)
q_y_ort = deploy.ort_qlinear("conv", q_x, s_x, z_x, q_w, s_w, 0, s_y, z_y, bias_q)
X86 = platform.machine().lower() in ("x86_64", "amd64")
exact_conv1 = torch.equal(q_y, q_y_ort)
err_steps = ((Q.dequantize(q_y, s_y, z_y) - y_float).abs() / s_y).max().item()
print(f"output {tuple(q_y.shape)} {q_y.dtype}; identical to onnxruntime's QLinearConv: {exact_conv1}")
print(f"largest error against the float layer: {err_steps:.2f} output steps (rounding the output alone costs 0.5)")


# %% [markdown]
# ### Exercise 4: a quantized linear layer, in integers, bit for bit
# Write `quantized_linear(q_x, z_x, s_x, q_w, z_w, s_w, bias, s_y, z_y)`: `q_x` uint8 (N, K), `q_w` int8
# (M, K), `s_w` float32 (M,) (one scale per output channel), `bias` float32 (M,), the other arguments
# numbers. Return uint8 (N, M), computed as onnxruntime does:
# 1. cast to `torch.int32` *before* any arithmetic, and accumulate $\sum_k (q_w - z_w)(q_x - z_x)$;
# 2. add the bias as int32 at the accumulator's scale: `round(bias / (s_x * s_w))`;
# 3. $M = (s_x \cdot s_w) / s_y$ in float32; `round(float32(acc) * M) + z_y` (round half to even, as `torch.round`);
# 4. clamp to $[0, 255]$ and return `torch.uint8`.
#
# The checker runs your function and onnxruntime's `QLinearConv` on the same integers and scales,
# including asymmetric activations, a weight zero-point, ties, and outputs beyond the grid.

# %% nbgrader={"grade": false, "grade_id": "quantized_linear", "locked": false, "schema_version": 3, "solution": true, "task": false}
def quantized_linear(q_x, z_x, s_x, q_w, z_w, s_w, bias, s_y, z_y):
    # Hint: x = q_x.to(torch.int32) - z_x and w likewise; acc = x @ w.T + round(bias / s_acc) with
    # Hint: s_acc = torch.tensor(s_x, dtype=torch.float32) * s_w; M = s_acc / s_y; clamp, then .to(torch.uint8)
    ### BEGIN SOLUTION
    x = q_x.to(torch.int32) - z_x
    w = q_w.to(torch.int32) - z_w
    s_acc = torch.tensor(s_x, dtype=torch.float32) * s_w   # the accumulator's scale, per output channel
    acc = x @ w.T + torch.round(bias / s_acc).to(torch.int32)
    q_y = torch.round(acc.to(torch.float32) * (s_acc / s_y)) + z_y
    return torch.clamp(q_y, 0, 255).to(torch.uint8)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "check_quantized_linear", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
checks.check_quantized_linear(quantized_linear)


# %% [markdown]
# The same layer on real data: fc1 of the baseline on the calibration images (its input follows a
# ReLU and a max-pool, so $z_x = 0$), with the library's `Q.quantized_linear`. Then the fixed-point
# requantization, $M \approx M_0 \cdot 2^{-n}$, against onnxruntime's float32 one: how many outputs
# move by one step?

# %%
# NBVAL_IGNORE_OUTPUT
def layer_case(layer, inputs):
    """(q_x, s_x, z_x, q_w, s_w, s_y, z_y) for a Linear/Conv2d of the baseline on real inputs, ReLU after it."""
    s_in, z_in = Q.calibrate(inputs, 8, "minmax")
    qx, _, _ = Q.quantize(inputs, 8, symmetric=False, scale=s_in, zero_point=z_in)
    qw, sw, _ = Q.quantize(layer.weight.detach(), INT_WEIGHT_BITS, symmetric=True, per_channel_axis=0)
    with torch.no_grad():
        out = torch.relu(layer(Q.dequantize(qx, s_in, z_in)))
    s_out, z_out = Q.calibrate(out, 8, "minmax")
    return qx, s_in, int(z_in), qw, sw, s_out, int(z_out)


fc1_in = acts["fc1"][:256]
qx1, sx1, zx1, qw1, sw1, sy1, zy1 = layer_case(baseline.fc1, fc1_in)
b1 = baseline.fc1.bias.detach()
fc1_int = Q.quantized_linear(qx1, zx1, sx1, qw1, 0, sw1, b1, sy1, zy1)
fc1_ort = deploy.ort_qlinear("linear", qx1, sx1, zx1, qw1, sw1, 0, sy1, zy1, Q.quantize_bias(b1, sx1, sw1))
exact_fc1 = torch.equal(fc1_int, fc1_ort)
m0, n = Q.fixed_point_multiplier(Q.output_multiplier(sx1, sw1, sy1))
print(f"fc1: input z_x = {zx1}, output z_y = {zy1}; identical to onnxruntime: {exact_fc1}")
print(f"fc1 multipliers M = M0 * 2^-n, e.g. channel 0: M = {float(Q.output_multiplier(sx1, sw1, sy1)[0]):.6e} "
      f"= {int(m0[0])} * 2^-{int(n[0])}")

# %%
# NBVAL_IGNORE_OUTPUT
fixed = {"conv1": (Q.quantized_conv2d(q_x, z_x, s_x, q_w, 0, s_w, baseline.conv1.bias.detach(), s_y, z_y,
                                      fixed_point=True), q_y_ort),
         "fc1": (Q.quantized_linear(qx1, zx1, sx1, qw1, 0, sw1, b1, sy1, zy1, fixed_point=True), fc1_ort)}
fixed_diff = {}
for name, (fp, ref) in fixed.items():
    d = (fp.long() - ref.long()).abs()
    fixed_diff[name] = (int((d > 0).sum()), d.numel(), int(d.max()))
    print(f"{name}: fixed-point requantization differs from onnxruntime on {fixed_diff[name][0]} of "
          f"{fixed_diff[name][1]:,} outputs ({100 * fixed_diff[name][0] / fixed_diff[name][1]:.4f}%), "
          f"by at most {fixed_diff[name][2]}")

# %% [markdown]
# The fixed-point version need not be bit-exact with onnxruntime: it rounds $\text{acc} \cdot M_0 / 2^n$ half
# up and uses a 31-bit $M_0$, while onnxruntime rounds $\text{float32}(\text{acc}) \cdot M$ half to even
# with a 24-bit float mantissa; where the exact product sits within a rounding error of a half-step, the
# two can land one step apart (the count above says how often that happened here). Both are legitimate integer kernels; a deployment reproduces the runtime it
# ships on, so its tests pin the rounding rule.
#
# **Before any of this: BatchNorm folding.** LeNet has no BatchNorm, but most CNNs do (the course's
# ResNet-8 does), and every PTQ flow first folds it into the convolution before it (PyTorch's
# `fuse_modules`, onnxruntime's graph optimiser, MIT 6.5940's Lab 2): a BatchNorm with statistics
# $\mu, \sigma^2$ and affine $\gamma, \beta$ after a convolution $(w, b)$ is the convolution
# $$w' = \frac{\gamma}{\sqrt{\sigma^2 + \epsilon}}\, w, \qquad b' = \frac{\gamma\,(b - \mu)}{\sqrt{\sigma^2 + \epsilon}} + \beta$$
# (per output channel), so the integer kernel sees one layer, and the weights are quantized *after*
# the fold (the fold rescales each channel, which per-channel scales absorb).
#
# ## 12. Real integer inference with onnxruntime
# The whole model, now in integer kernels. On x86 CPUs with AVX-512 VNNI one `vpdpbusd` instruction does
# 64 uint8 x int8 multiply-accumulates where an FMA does 16 float32 ones: 4x the arithmetic per
# instruction, and 4x less memory traffic. **Without VNNI** (AVX2, and AVX-512 without VNNI) the
# kernels use `vpmaddubsw`, which adds *pairs* of uint8 x int8 products in a **saturating int16**: two
# products of 255 x 127 overflow it, and the result is silently clipped. onnxruntime's answer is
# `reduce_range` (7-bit weights, "for better accuracy on non-VNNI CPUs"); `deploy.ort_quantize_static`
# turns it on where `env.u8s8_saturates()` is true. PyTorch's torch.ao takes the other side: its
# default x86 configuration observes *activations* with `reduce_range=True` (0..127, 7 bits), on every
# CPU.
#
# **On ARM** (Apple Silicon, Graviton, a Raspberry Pi) the dot-product instructions (`sdot`/`udot`, and
# `smmla` where the CPU has i8mm) add 8-bit products straight into int32, so nothing saturates:
# `env.u8s8_saturates()` is false there and the full 8-bit range is used. torch.ao runs its **qnnpack**
# engine instead of x86's fbgemm/oneDNN (`Q.quantized_engine()` picks it for the CPU), and onnxruntime its
# ARM64 kernels. How much faster int8 is than float32 is a property of the CPU and its kernels, not of
# the format: the latency table of section 14 measures it on your machine, and the speed targets of this
# chapter were set on an x86 CPU with VNNI.
#
# We export the model to ONNX (`deploy.export_onnx`, PyTorch's TorchScript exporter) and let onnxruntime's
# `quantize_static` calibrate the activations (min-max on the same calibration images) and quantize the
# weights per channel, in QDQ format (Quantize/Dequantize pairs that onnxruntime fuses into `QLinearConv`
# and `QGemm` integer kernels).

# %%
# NBVAL_IGNORE_OUTPUT
print(f"this CPU: VNNI {has_vnni()}; uint8 x int8 kernels can saturate (so reduce_range is used): {u8s8_saturates()}")

# %%
# NBVAL_IGNORE_OUTPUT
art = records.artifacts_dir("02_quantization")  # build/artifacts/02_quantization (git-ignored)
fp32_onnx = deploy.export_onnx(baseline, art / "lenet5_fp32.onnx", shape)
int8_onnx = deploy.ort_quantize_static(fp32_onnx, art / "lenet5_int8.onnx", calib, per_channel=True, quant_format="QDQ")
ort_fp32, ort_int8 = deploy.OrtModule(fp32_onnx), deploy.OrtModule(int8_onnx)
ort32_correct, ort8_correct = correct(ort_fp32, test), correct(ort_int8, test)
fq_w8a8 = ptq_models["ptq-w8a8-per-channel"]
agree = (predict(ort_int8, test) == predict(fq_w8a8, test)).float().mean().item()
print(f"onnxruntime fp32 test {100 * acc_of(ort32_correct):.2f}%, int8 {100 * acc_of(ort8_correct):.2f}% "
      f"(vs baseline {vs_base(ort8_correct)}); int8 agrees with our fake-quantized W8A8 on {100 * agree:.1f}% "
      "of test images")
print(f"files: fp32 {storage.size_bytes(fp32_onnx) / 1024:.1f} KiB, int8 {storage.size_bytes(int8_onnx) / 1024:.1f} KiB")
print("activation grids (scale, zero-point) in the int8 file:")
for tensor, (sc, zp) in deploy.onnx_quant_params(int8_onnx).items():
    print(f"   {tensor:28s} s = {sc:.5f}, z = {zp}")

# %% [markdown]
# Every ReLU output got the zero-point 0: the convolution or `Gemm` before it requantizes straight to
# $[0, \max]$, and the ReLU disappears into the clamp (section 11, step 4).
#
# ## 13. "Why is my quantized model slower?" and where the int8 time goes
# A frequent complaint: after quantizing with fake quantization (or QAT), the model runs *slower*. The
# fake-quantized model does *more* work than the float one: every forward pass computes scales, rounds
# and clamps the weights and activations, and then runs the same float32 convolutions. It is a
# training and evaluation tool, not a deployment format; the latency table of section 14 shows it.
# Only a runtime with integer kernels turns the 8-bit numbers into speed. Where does the int8 time go?
# onnxruntime's profiler, per operator:

# %%
# NBVAL_IGNORE_OUTPUT
xb = test.tensors[0][:64]
for label, path in (("fp32", fp32_onnx), ("int8", int8_onnx)):
    print(f"onnxruntime {label}:")
    for node, op, ms in deploy.ort_op_times(path, xb, runs=PROFILE_RUNS)[:6]:
        print(f"   {op:14s} {node[:34]:34s} {ms:6.3f} ms")

# %% [markdown]
# `conv2` and `fc1`, which do most of the multiply-accumulates, run a few times faster in int8. `conv1`
# does not: it has one input channel, so each output is a dot product of only 25 values, and in this
# profile the integer kernel is *slower* than the float one (a plausible cause: packing the input and
# requantizing 20 channels per pixel costs as much as the little arithmetic there is; the profile shows
# the time, not the cause). By Amdahl's law, the whole model then gains well under 4x over
# onnxruntime's float32: the parts that do not speed up bound the total. (Why is onnxruntime's float32
# faster than eager PyTorch in NCHW? Its graph optimiser fuses Conv+ReLU and runs the convolutions in a
# blocked channels-last layout, `NCHWc`: the `_nchwc` node names above. Chapter 3 measures the same
# effect with PyTorch's channels-last.)
#
# ### Mixed precision: the first convolution stays float
# Keeping the first layer in higher precision is standard practice: it holds few weights (conv1: 520 of
# 431,080), sees the raw input, and, as the profile shows, gains nothing from int8 here.
# `deploy.ort_quantize_static(..., keep_float=[...])` leaves named ONNX nodes in float32. Where the
# float/int8 boundary sits matters: after conv1 come ReLU and 2x2 max-pooling, and max-pooling and ReLU
# commute exactly (both are monotone, $\max_i \operatorname{relu}(a_i) = \operatorname{relu}(\max_i a_i)$),
# so `models.PoolBeforeReLU` computes conv1 → pool → ReLU, bit for bit the same function, and the
# float part ends on a tensor 4x smaller. `recipes.int8_lenet_ort` does all of this in one call.

# %%
# NBVAL_IGNORE_OUTPUT
mixed_onnx = recipes.int8_lenet_ort(baseline, art / "lenet5_int8_mixed.onnx", calib)
ort_mixed = deploy.OrtModule(mixed_onnx)
mixed_correct = correct(ort_mixed, test)
agree_mixed = (predict(ort_mixed, test) == predict(fq_w8a8, test)).float().mean().item()
print(f"onnxruntime int8, conv1 float: test {100 * acc_of(mixed_correct):.2f}% (vs baseline {vs_base(mixed_correct)}); "
      f"agrees with our fake-quantized W8A8 on {100 * agree_mixed:.1f}% of test images; "
      f"file {storage.size_bytes(mixed_onnx) / 1024:.1f} KiB")

# %%
# NBVAL_IGNORE_OUTPUT
print("onnxruntime int8, conv1 float:")
for node, op, ms in deploy.ort_op_times(mixed_onnx, xb, runs=PROFILE_RUNS)[:6]:
    print(f"   {op:14s} {node[:34]:34s} {ms:6.3f} ms")

# %% [markdown]
# ## 14. The landscape, and one latency table for everything
# - **`torch.ao.quantization`** (eager and FX graph mode) is deprecated in favour of **torchao**: its
#   warning (captured below) names a removal release that PyTorch 2.13, which this course runs, has
#   already passed, and it still works; removal is pending. Dynamic quantization, the classic one-liner
#   `quantize_dynamic`, replaces `nn.Linear` layers (and, by its default `qconfig_spec`, LSTM/GRU/RNN
#   cells) by int8-weight versions that quantize their input activations to uint8 on the fly, per batch,
#   with `reduce_range` (7 bits); it never touches convolutions, which dominate this network's time.
#   FX static quantization runs fbgemm/oneDNN integer convolutions inside PyTorch.
# - **PT2E** (`prepare_pt2e` / `convert_pt2e`) moved to torchao; its CPU flow (chapter 8 runs it, times it
#   against every other runtime and shows where it breaks):
#   ```python
#   from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e, convert_pt2e
#   from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
#       X86InductorQuantizer, get_default_x86_inductor_quantization_config)
#   exported = torch.export.export(model.eval(), (example,)).module()
#   quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
#   prepared = prepare_pt2e(exported, quantizer)
#   for xb in calib_batches: prepared(xb)            # calibration
#   int8 = torch.compile(convert_pt2e(prepared))      # int8 kernels come from Inductor
#   ```
#   torchao's eager `quantize_` is built mostly for `nn.Linear` (its `Int8DynamicActivationInt8WeightConfig`
#   leaves convolutions as they are), but not only: `IntxWeightOnlyConfig` also quantizes `nn.Conv2d`
#   weights (chapter 8 applies it to this LeNet-5's convolutions and reports which of them it accepts on
#   torchao 0.18.0). On CPU, real int8 kernels come from `torch.compile`.
# - **onnxruntime** static quantization (sections 12 and 13).

# %%
# NBVAL_IGNORE_OUTPUT
ao_dyn, ao_dyn_warn = Q.torch_ao_dynamic(baseline)
ao_fx, ao_fx_warn = Q.torch_ao_static_fx(baseline, calib)
print("torch.ao warned:")
for msg in ao_dyn_warn + [m for m in ao_fx_warn if m not in ao_dyn_warn]:
    print("  ", msg[:110])
print(f"torch {torch.__version__.split('+')[0]} runs it; dynamic: fc1 is now {ao_dyn.fc1._get_name()}, "
      f"conv1 stays {ao_dyn.conv1._get_name()}")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # torch.ao's deprecation warnings, shown above
    ao_dyn_correct, ao_fx_correct = correct(ao_dyn, test), correct(ao_fx, test)
print(f"torch.ao dynamic test {100 * acc_of(ao_dyn_correct):.2f}%, FX static {100 * acc_of(ao_fx_correct):.2f}% "
      f"(vs baseline {vs_base(ao_fx_correct)})")

# %% [markdown]
# Two dense models trained from scratch with the baseline's recipe stand next to the int8 ones as
# **controls**: one with a quarter of the parameters (`models.lenet_widths_matching`: the same bytes as
# int8 weights, in float32), and chapter 0's small LeNet (`models.SMALL_LENET`), three seeds each (one in lab mode)
# (shipped in `data/trained/`, like every control). If a small float model is as accurate and as fast, quantizing the big
# one was not the way to get there.

# %%
# NBVAL_IGNORE_OUTPUT
ctrl_widths = lenet_widths_matching(measure.count_params(baseline) // 4, "params", shape, splits.num_classes)
controls = {"control-quarter-params": ctrl_widths, "control-small-lenet": SMALL_LENET}
ctrl_models, ctrl_correct = {}, {}
for name, widths in controls.items():
    ctrl_models[name] = [load_baseline(DATASET, s, splits=splits, model_kw=widths, device=device)[0] for s in SEEDS]
    ctrl_correct[name] = torch.stack([correct(m, test) for m in ctrl_models[name]])
    print(f"{name:22s} widths {widths}: {measure.count_params(ctrl_models[name][0]):,} parameters, "
          f"{measure.macs(ctrl_models[name][0], shape):,} MACs; test {100 * acc_of(ctrl_correct[name]):.2f}% "
          f"(mean of {len(SEEDS)} seeds), vs baseline {vs_base(ctrl_correct[name])}")

# %% [markdown]
# Now time every deployable model in **one** interleaved measurement (`deploy.latency_table`: single
# thread, batch 64, `TIMING_ROUNDS` rounds, median): the float32 models in each of their configurations (PyTorch
# NCHW, PyTorch channels-last, onnxruntime), the integer ones as they run. Every "x faster" is against
# the baseline's **fastest** float32 configuration on this machine.

# %%
# NBVAL_IGNORE_OUTPUT
x64 = torch.randn((64, *shape), generator=torch.Generator().manual_seed(0))


def ort_runner(module, x=x64):
    """A zero-argument call of ``module``'s onnxruntime session on the fixed batch ``x``."""
    sess, name, arr = module.session, module.input_name, x.numpy()
    return lambda: sess.run(None, {name: arr})


with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    lat = deploy.latency_table({
        "baseline": baseline,
        "ptq-w8a8-per-channel": {"torch fake-quant": lambda: fq_w8a8(x64)},
        "onnxruntime-int8-static": {"onnxruntime int8": ort_runner(ort_int8)},
        "onnxruntime-int8-conv1-float": {"onnxruntime int8": ort_runner(ort_mixed)},
        "torch.ao-fx-static-int8": {"torch.ao int8": lambda: ao_fx(x64)},
        "torch.ao-dynamic-int8": {"torch.ao dynamic": lambda: ao_dyn(x64)},
        "control-quarter-params": ctrl_models["control-quarter-params"][0],
        "control-small-lenet": ctrl_models["control-small-lenet"][0],
    }, shape, workdir=art, rounds=TIMING_ROUNDS, repeats=TIMING_REPEATS)
print(deploy.format_latency_table(lat))
ort32_ms = lat["baseline"]["by_config"]["onnxruntime"]
fastest_ms = lat["baseline"]["latency_ms"]
speed = {k: {"vs_fastest": fastest_ms / lat[k]["latency_ms"], "vs_ort32": ort32_ms / lat[k]["latency_ms"]}
         for k in ("onnxruntime-int8-static", "onnxruntime-int8-conv1-float")}
for k, v in speed.items():
    print(f"{k}: {v['vs_fastest']:.2f}x faster than the baseline's fastest fp32 ({lat['baseline']['config']}), "
          f"{v['vs_ort32']:.2f}x faster than onnxruntime fp32 (the same runtime)")
fx_ms, all_ms, mix_ms = (lat[k]["latency_ms"] for k in ("torch.ao-fx-static-int8", "onnxruntime-int8-static",
                                                          "onnxruntime-int8-conv1-float"))
FX_MATCH = 1.10  # "reached": within 10% of onnxruntime's time for the same layers in int8
print(f"torch.ao FX static int8 {fx_ms:.3f} ms vs onnxruntime int8 (every layer int8, like FX) {all_ms:.3f} ms: "
      f"FX {'reached' if fx_ms <= FX_MATCH * all_ms else 'did NOT reach'} onnxruntime's int8 speed here "
      f"(ratio {fx_ms / all_ms:.2f})")
ceiling = ort32_ms / 4  # the VNNI limit: 4x the arithmetic of float32 per instruction
fraction = (all_ms - mix_ms) / (all_ms - ceiling) if all_ms > ceiling else float("nan")
print(f"keeping conv1 float took the int8 model from {all_ms:.3f} to {mix_ms:.3f} ms, against a 4x ceiling of "
      f"{ceiling:.3f} ms: {100 * fraction:.0f}% of the remaining distance" +
      ("" if 0 <= fraction <= 1 else " (outside [0, 100%]: in this run the ceiling, a quarter of onnxruntime's "
                                     "float32 time, is not a bound; timings on a busy machine)"))

# %% [markdown]
# **Batch 1.** A classifier that answers one request at a time runs at batch 1, the deployment case. The same
# models, one image per call, in one interleaved measurement again (repeats raised, each call being short). A
# call now does 64 times less arithmetic but pays the same fixed costs (Python, the runtime's dispatch, the
# quantize and dequantize steps at the model's edges), so a speed-up that comes from cheaper arithmetic can
# shrink: which of the int8 gains survive is a measurement. Watch the reference too: the fastest fp32
# configuration at batch 1 need not be the one at batch 64 (eager PyTorch pays its per-module dispatch on every
# call, an onnxruntime session runs the whole graph in C++), so the table also gives each model against the
# baseline in eager PyTorch NCHW, the same reference at both batch sizes. Seconds per image follow by dividing by the batch
# size, so the table also says how much batching itself buys.

# %%
# NBVAL_IGNORE_OUTPUT
x1 = x64[:1].contiguous()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    lat1 = deploy.latency_table({
        "baseline": baseline,
        "onnxruntime-int8-static": {"onnxruntime int8": ort_runner(ort_int8, x1)},
        "onnxruntime-int8-conv1-float": {"onnxruntime int8": ort_runner(ort_mixed, x1)},
        "torch.ao-fx-static-int8": {"torch.ao int8": lambda: ao_fx(x1)},
        "torch.ao-dynamic-int8": {"torch.ao dynamic": lambda: ao_dyn(x1)},
        "control-small-lenet": ctrl_models["control-small-lenet"][0],
    }, shape, batch_size=1, workdir=art, rounds=TIMING_ROUNDS, repeats=5 * TIMING_REPEATS)
print(deploy.format_latency_table(lat1))
print("x faster than the baseline's fastest fp32 (its fastest configuration: "
      f"{lat1['baseline']['config']} at batch 1, {lat['baseline']['config']} at batch 64), and than the baseline "
      "in eager PyTorch NCHW (the same reference at both batch sizes):")
for k in ("onnxruntime-int8-static", "onnxruntime-int8-conv1-float", "torch.ao-fx-static-int8",
          "torch.ao-dynamic-int8", "control-small-lenet"):
    print(f"  {k:30s} vs fastest fp32: batch 1 {lat1[k]['x_faster']:5.2f}x, batch 64 {lat[k]['x_faster']:5.2f}x;"
          f"   vs torch NCHW: batch 1 {lat1[k]['x_faster_torch']:5.2f}x, batch 64 {lat[k]['x_faster_torch']:5.2f}x")
us_1, us_64 = 1000 * lat1["baseline"]["latency_ms"], 1000 * lat["baseline"]["latency_ms"] / 64  # per image
print(f"the baseline's fastest fp32 per image: {us_1:.0f} us at batch 1, {us_64:.0f} us at batch 64 "
      f"({us_1 / us_64:.1f}x from batching)")
int8_names = [k for k in lat1 if "int8" in k]
print("int8 faster than the fastest fp32 at batch 1 here: "
      + (", ".join(k for k in int8_names if lat1[k]["x_faster"] > 1) or "none")
      + "; slower: " + (", ".join(k for k in int8_names if lat1[k]["x_faster"] <= 1) or "none"))


# %% [markdown]
# ## 15. Results
# Every quantized model's record carries `weight_bits` (storage bits per weight index), `levels`,
# `activation_bits` (32 where a tensor stays float; dynamic quantization records 8 and says `dynamic`;
# torch.ao's 8-bit activations use 7 bits of range, `reduce_range`) and a `method` that names its
# training budget. Fine-tuned methods are means over three seeds (one in lab mode). Latencies come from the one table
# above (fake-quantized models other than W8A8 are simulations: not timed); sizes are bit-packed
# artifacts, `.onnx` files, or `torch.save` of torch.ao state dicts.

# %%
def fq_record(name, model, c, method, wb, ab, **kw):
    return records.record(name, model, test=test, input_shape=shape, accuracy=[acc_of(r) for r in c.reshape(-1, len(test))],
                          method=method, size_bytes=Q.packed_size_bytes(model), counts_from=baseline,
                          weight_bits=wb, activation_bits=ab, latency_ms=None, **kw)


def lat_fields(name):
    return dict(latency_ms=lat[name]["latency_ms"], latency_config=lat[name]["config"])


base_rec = records.record("baseline", baseline, test=test, input_shape=shape, accuracy=base_acc, method="fp32",
                          weight_bits=32, activation_bits=32, **lat_fields("baseline"))
recs = [base_rec]
recs += [fq_record(n, ptq_models[n], ptq_correct[n], f"PTQ min-max weights, {ACT_METHOD} activations, fake quant",
                   ptq_defs[n]["weight_bits"], 8, levels=ptq_models[n].fc1.levels) for n in ptq_defs]
recs[1].update(lat_fields("ptq-w8a8-per-channel"))
for L in (3, 4):
    for m in dict.fromkeys(("minmax", WEIGHT_METHOD[L])):
        recs.append(fq_record(f"ptq-{L}lv-{m}", lowbit[L, m], ptq_low[L, m], f"PTQ, {m} weight ranges, no training",
                              2, 8, levels=L))
    recs.append(fq_record(f"qat-{L}lv", qat_models[L][0], qat_correct[L],
                          f"QAT from {WEIGHT_METHOD[L]}-calibrated PTQ, {EPOCHS} ep, lr {recipes.QAT_LR[L]:g}",
                          2, 8, levels=L))
    recs.append(fq_record(f"kmeans-{L}lv", km_plain[L], km_plain[L, "correct"],
                          f"k-means ({KM_ITERS} Lloyd iterations), no training", 2, 32, levels=L))
    recs.append(fq_record(f"kmeans-{L}lv-ft", km_ft[L][0], km_ft_correct[L],
                          f"k-means + centroid fine-tuning, {EPOCHS} ep, lr {recipes.KMEANS_LR[L]:g}",
                          2, 32, levels=L))


def ao_record(name, model, c, method, ab, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return records.record(name, model, test=test, input_shape=shape, accuracy=acc_of(c), counts_from=baseline,
                              size_bytes=measure.serialized_bytes(model), method=method, weight_bits=8,
                              activation_bits=ab, **lat_fields(name), **kw)


recs.append(ao_record("torch.ao-dynamic-int8", ao_dyn, ao_dyn_correct,
                      "torch.ao dynamic: Linear int8, activations quantized per batch on the fly (reduce_range, "
                      "7-bit range); convolutions float", 8, dynamic=True, reduce_range=True))
recs.append(ao_record("torch.ao-fx-static-int8", ao_fx, ao_fx_correct,
                      "torch.ao FX static, x86 default qconfig (per-channel weights, activations reduce_range)", 8,
                      reduce_range=True))


def ort_record(name, path, c, method, wb, ab, latency, config, **kw):
    return records.record(name, test=test, accuracy=acc_of(c), file=path, counts_from=baseline, method=method,
                          weight_bits=wb, activation_bits=ab, input_shape=shape, latency_ms=latency,
                          latency_config=config, **kw)


recs.append(ort_record("onnxruntime-fp32", fp32_onnx, ort32_correct, "onnxruntime fp32", 32, 32, ort32_ms, "onnxruntime"))
recs.append(ort_record("onnxruntime-int8-static", int8_onnx, ort8_correct,
                       "onnxruntime quantize_static QDQ, per-channel, min-max calibration", 8, 8,
                       lat["onnxruntime-int8-static"]["latency_ms"], lat["onnxruntime-int8-static"]["config"]))
recs.append(ort_record("onnxruntime-int8-conv1-float", mixed_onnx, mixed_correct,
                       "onnxruntime quantize_static QDQ, per-channel; conv1 (520 weights) float32, pool before ReLU",
                       8, 8, lat["onnxruntime-int8-conv1-float"]["latency_ms"],
                       lat["onnxruntime-int8-conv1-float"]["config"], float_layers=["conv1"]))
for name, widths in controls.items():
    m = ctrl_models[name][0]
    recs.append(records.record(name, m, test=test, input_shape=shape, accuracy=[acc_of(c) for c in ctrl_correct[name]],
                               method=f"dense LeNet-5 {widths} from scratch, baseline recipe (20 ep)", weight_bits=32,
                               activation_bits=32, control_of="onnxruntime-int8-conv1-float",
                               **lat_fields(name)))

# %%
# NBVAL_IGNORE_OUTPUT
print(records.format_table(recs, columns=("name", "accuracy", "size_bytes", "macs", "weight_bits", "levels",
                                          "activation_bits", "latency_ms")))
path = records.write_results("02_quantization", recs, lab_mode=LAB_MODE)

# %%
# NBVAL_IGNORE_OUTPUT
best = speed["onnxruntime-int8-conv1-float"]
cmp_int8 = vs_base(mixed_correct)
cmp_ctrl = stats.paired_compare(mixed_correct, ctrl_correct["control-quarter-params"])
ctrl_faster = lat["control-quarter-params"]["latency_ms"] < lat["onnxruntime-int8-conv1-float"]["latency_ms"]
display(Markdown(
    f"**Read from this run.** The deployed int8 model (onnxruntime, conv1 float) runs in "
    f"{lat['onnxruntime-int8-conv1-float']['latency_ms']:.2f} ms per batch of 64: {best['vs_fastest']:.2f}x faster "
    f"than the baseline's fastest float32 configuration ({lat['baseline']['config']}, {fastest_ms:.2f} ms) and "
    f"{best['vs_ort32']:.2f}x faster than the same runtime in float32; its test accuracy against the baseline: "
    f"{cmp_int8}. The dense control with a quarter of the parameters (the same bytes as int8 weights) runs in "
    f"{lat['control-quarter-params']['latency_ms']:.2f} ms ({lat['control-quarter-params']['config']}) and scores "
    f"{100 * acc_of(ctrl_correct['control-quarter-params']):.2f}% over {len(SEEDS)} seed(s) (int8 vs control: {cmp_ctrl}); "
    f"chapter 0's small LeNet runs in {lat['control-small-lenet']['latency_ms']:.2f} ms and scores "
    f"{100 * acc_of(ctrl_correct['control-small-lenet']):.2f}% (int8 vs it: "
    f"{stats.paired_compare(mixed_correct, ctrl_correct['control-small-lenet'])}). So on this machine the "
    f"quarter-size dense float model trained from scratch is "
    f"{'faster' if ctrl_faster else 'not faster'} than the int8 deployment of the big one, with accuracy "
    f"{cmp_ctrl.verdict} from it: int8 shrinks the bytes and speeds up each multiply-accumulate, a smaller "
    f"model removes multiply-accumulates, and the control is what tells which one a deployment needs. "
    f"torch.ao's FX static int8 ran at {fx_ms:.2f} ms, {fx_ms / all_ms:.2f}x the time of onnxruntime int8 with "
    f"every layer in int8: it {'reached' if fx_ms <= FX_MATCH * all_ms else 'did not reach'} onnxruntime's int8 "
    f"speed here. The fake-quantized W8A8 model ran {lat['ptq-w8a8-per-channel']['latency_ms'] / fastest_ms:.2f}x "
    f"the baseline's time: simulation, not deployment. Keeping conv1 in float covered {100 * fraction:.0f}% of the "
    f"remaining distance to the 4x VNNI ceiling" + ("." if 0 <= fraction <= 1 else
                                                     " (outside [0, 100%]: a noisy run; see the table's spreads).")))

# %% [markdown] tags=["theory"]
# ## 16. Checks
# Accuracy targets go through intervals and paired verdicts on the test split, so that they fail on a
# real regression, not on noise. Speed is asserted only against a sanity floor at half the chapter's
# targets (int8 at least 2.5x faster than the same runtime's float32 and 2.2x faster than the
# fastest float32 baseline, single thread); the strict verdicts are printed below and measured by
# `make bench`. In lab mode (one seed, one epoch, fewer timing rounds) the fine-tuning and speed targets
# are printed as reported, not asserted; exact invariants and post-training results are asserted in both modes.
# On data other than the course's, every target is reported (they were set on mnist5k); invariants stay asserted.

# %%
by = {r["name"]: r for r in recs}
base_lo, base_hi = stats.accuracy_interval(base_acc, len(test))
# chapter 0's baseline: at the target the course states for its dataset (98% on mnist5k), else above chance
assert base_acc >= splits.target_accuracy if splits.target_accuracy else base_acc > splits.chance
# fake quantization is PyTorch's, value for value; the integer layers are onnxruntime's, bit for bit (x86)
assert torch.equal(ours, theirs)
assert torch.equal(acc, main - fold[None, :, None, None])
if X86:
    assert exact_conv1 and exact_fc1, (exact_conv1, exact_fc1)
assert all(d[2] <= 1 for d in fixed_diff.values()), fixed_diff  # fixed point: off by at most one step
# Post-training results, asserted in both modes on the course's data (where they were set), reported on other
# data: W8A8 loses nothing measurable and is about 4x smaller (3.85x for the course's LeNet-5: a smaller LeNet,
# for smaller images, carries relatively more fixed overhead); at 3 levels calibrated weight ranges rescue PTQ
# (a certain gain over min-max, within 3 points of the baseline); deployed int8 keeps the baseline's accuracy
# (inside its 95% interval) and agrees with the simulation.
COURSE_DATA = splits.target_accuracy is not None
post_training = {f"{n} not worse than the baseline": vs_base(ptq_correct[n]).verdict != "worse"
                 and by[n]["accuracy"] >= base_lo for n in ("ptq-w8a8-per-channel", "ptq-w8a8-per-tensor")}
post_training |= {
    "W8A8 artifact at least 3.85x smaller": base_rec["size_bytes"] / by["ptq-w8a8-per-channel"]["size_bytes"] >= 3.85,
    "3 levels: calibrated weight ranges better than min-max": cmp_levels[3, "ptq-vs-minmax"].verdict == "better",
    "3 levels: PTQ within 3 points": acc_of(ptq_low[3, WEIGHT_METHOD[3]]) >= base_acc - 0.03,
    "onnxruntime int8 not worse than the baseline": acc_of(ort8_correct) >= base_lo and vs_base(ort8_correct).verdict != "worse",
    "int8 with conv1 in float not worse": acc_of(mixed_correct) >= base_lo and vs_base(mixed_correct).verdict != "worse",
    "int8 agrees with the simulation on 99% of images": agree >= 0.99 and agree_mixed >= 0.99,
    "int8 model file at least 3.8x smaller": base_rec["size_bytes"] / by["onnxruntime-int8-conv1-float"]["size_bytes"] >= 3.8,
}
report_targets(post_training, asserted=COURSE_DATA)
# QAT (3 seeds) lands within 1.5 points of the baseline at 3 and 4 levels, k-means + centroids (same epochs)
# within 1.5 points at 4 levels and 3 points at 3 levels
finetune_targets = {f"QAT {L} levels within 1.5 points": acc_of(qat_correct[L]) >= base_acc - 0.015
                    and vs_base(qat_correct[L]).ci[1] > -0.015 for L in (3, 4)}
finetune_targets["k-means + centroids 4 levels within 1.5 points"] = acc_of(km_ft_correct[4]) >= base_acc - 0.015
finetune_targets["k-means + centroids 3 levels within 3 points"] = acc_of(km_ft_correct[3]) >= base_acc - 0.03
# speed: sanity floors at half the targets; the fake-quantized model is not faster than float
speed_floors = {"int8 >= 1.25x onnxruntime fp32": speed["onnxruntime-int8-conv1-float"]["vs_ort32"] >= 2.5 / 2,
                "int8 >= 1.1x the fastest fp32": speed["onnxruntime-int8-conv1-float"]["vs_fastest"] >= 2.2 / 2,
                "fake quant not 2x faster than torch fp32":
                    lat["ptq-w8a8-per-channel"]["latency_ms"] >= 0.5 * lat["baseline"]["by_config"]["torch"]}
if not targets_asserted(LAB_MODE, splits):  # lab mode (one seed, one epoch, few timing rounds) or other data
    for what, ok in {**finetune_targets, **speed_floors}.items():
        print(f"reported: {what}: {'met' if ok else 'MISSED'}")
    print("all invariants passed (fine-tuning and speed targets reported above)")
else:
    assert all(finetune_targets.values()), finetune_targets
    assert all(speed_floors.values()), (speed_floors, speed)
    print("all checks passed")

# %%
# NBVAL_IGNORE_OUTPUT
for target, got, need in (("int8 vs the same runtime's fp32 (onnxruntime)", best["vs_ort32"], 2.5),
                          ("int8 vs the baseline's fastest fp32", best["vs_fastest"], 2.2)):
    print(f"{target}: {got:.2f}x (target {need}x: {'met' if got >= need else 'MISSED'}; VNNI: {has_vnni()})")
lo8, hi8 = stats.accuracy_interval(acc_of(mixed_correct), len(test))
print(f"int8 accuracy {100 * acc_of(mixed_correct):.2f}% within the baseline's interval "
      f"[{100 * base_lo:.2f}, {100 * base_hi:.2f}]: {'met' if base_lo <= acc_of(mixed_correct) <= base_hi else 'MISSED'}")
print(f"torch.ao FX static int8 reached onnxruntime int8 speed (within {FX_MATCH}x): "
      f"{'yes' if fx_ms <= FX_MATCH * all_ms else 'no'} ({fx_ms:.3f} vs {all_ms:.3f} ms)")

# %% [markdown]
# ## Further reading
# - Jacob et al., 2018, *Quantization and training of neural networks for efficient integer-arithmetic-only
#   inference* (the affine scheme, the zero point and the integer requantization of section 11);
#   Krishnamoorthi, 2018, *Quantizing deep convolutional networks for efficient inference: a whitepaper*, and
#   Nagel et al., 2021, *A white paper on neural network quantization* (PTQ and QAT in practice).
# - Han et al., 2016, *Deep Compression* (k-means weight sharing with trained centroids, chapter 05).
# - Learned ranges, beyond this chapter's min-max and MSE clipping: Choi et al., 2018, *PACT* (a learned
#   activation clipping level) and Esser et al., 2020, *Learned step size quantization* (LSQ: the step size
#   trained by gradient descent with the weights, the usual QAT baseline for 2-4 bits).
# - Better rounding after training: Nagel et al., 2020, *Up or down? Adaptive rounding for post-training
#   quantization* (AdaRound: round up or down per weight to minimise the layer's output error) and Li et
#   al., 2021, *BRECQ* (the same, block by block); GPTQ (chapter 06) solves a related problem in closed form.
