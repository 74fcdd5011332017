# %% [markdown]
# # 02 · Quantization: from rounding arithmetic to real int8 speed-ups
#
# **Learning goals**
# - write linear (affine) quantization from scratch: scale, zero-point, symmetric vs asymmetric,
#   per-tensor vs per-channel, and measure its error on the baseline's real weights at 8, 4 and 2 bits;
# - calibrate activation ranges (min-max, percentile, MSE-optimal) and see what each one clips;
# - quantize the whole model after training (PTQ) and recover low-bit accuracy with quantization-aware
#   training (QAT) and its straight-through estimator;
# - share weights with k-means (Deep Compression) and fine-tune the centroids;
# - understand why a fake-quantized model is *slower* than the float one, and get a real int8 speed-up
#   from integer kernels (onnxruntime), with an honest map of PyTorch's quantization tools in 2026.
#
# **Run time:** about 2 minutes on a 2-core laptop CPU (two short QAT runs and one centroid fine-tuning
# of a few epochs each; everything else is inference).

# %% tags=["parameters"]
DATASET = "mnist5k"
SEED = 0
EPOCHS = 3           # epochs of QAT and of centroid fine-tuning
DEVICE = None        # None: $COURSE_DEVICE, else CUDA if available, else CPU
CALIB_IMAGES = 512   # calibration images, taken from the training split

# %%
# NBVAL_IGNORE_OUTPUT
import warnings

import matplotlib.pyplot as plt
import numpy as np
import torch

from course_lib import checks, deploy, measure, plots, recipes, records, storage
from course_lib import quantization as Q
from course_lib.data import REPO_ROOT, load_dataset
from course_lib.env import has_vnni as cpu_has_vnni, start_chapter
from course_lib.models import PoolBeforeReLU
from course_lib.training import evaluate, load_baseline, predict

env, device = start_chapter(SEED, DEVICE)

# %% [markdown]
# ## 1. The baseline and what it weighs
# The cached LeNet-5 of chapter 0: 431,080 float32 parameters, 4 bytes each. Every record below is
# compared with it: accuracy on the 1,000 test images, bytes of the saved artifact, and the median
# single-thread latency of a batch of 64.

# %%
splits = load_dataset(DATASET)
shape = splits.input_shape
baseline, meta = load_baseline(DATASET, SEED, device=device, splits=splits)
base_acc = evaluate(baseline, splits.test)
calib = splits.train.tensors[0][:CALIB_IMAGES]
MACS = measure.macs(baseline, shape)
base_rec = records.record("baseline", baseline, test=splits.test, input_shape=shape, accuracy=base_acc,
                          method="fp32", weight_bits=32, activation_bits=32)
print(f"baseline: {100 * base_acc:.2f}% test accuracy, {base_rec['size_bytes'] / 1024:.1f} KiB, "
      f"{measure.count_params(baseline):,} parameters, {MACS:,} MACs per image")

# %% [markdown]
# ## 2. Linear quantization from scratch
# A $b$-bit integer grid has $2^b$ levels $[q_{min}, q_{max}]$. An **affine** map sends a real $x$ to
# $$q = \operatorname{clamp}\!\Big(\operatorname{round}\big(\tfrac{x}{s}\big) + z,\; q_{min},\; q_{max}\Big),
# \qquad \hat x = s\,(q - z),$$
# with a real **scale** $s$ (the step between levels) and an integer **zero-point** $z$ (the integer that
# stands for $0.0$, so zero padding and ReLU zeros are exact). To cover a range $[\alpha, \beta]$ that
# contains 0:
# - **asymmetric** (activations after ReLU): $q \in [0, 2^b-1]$, $s = \frac{\beta-\alpha}{2^b-1}$,
#   $z = -\operatorname{round}(\alpha/s)$;
# - **symmetric** (weights, centred on 0): $q \in [-(2^{b-1}-1), 2^{b-1}-1]$, $s = \frac{\max(|\alpha|, |\beta|)}{2^{b-1}-1}$,
#   $z = 0$. Integer kernels love $z=0$: $\sum_k s_w q_{w,k}\, s_x (q_{x,k} - z_x)$ needs no correction
#   term for the weights.
#
# Inside the range the error is at most half a step, $|x - \hat x| \le s/2$; outside it the value is
# clipped. The uniform rounding noise has variance $s^2/12$, so every extra bit halves $s$ and buys
# $20\log_{10}2 \approx 6$ dB of signal-to-quantization-noise ratio (SQNR).

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

# %%
def scale_zero_point(lo: float, hi: float, bits: int) -> tuple[float, int]:
    ### BEGIN SOLUTION
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / (2 ** bits - 1)
    zero_point = int(min(max(-round(lo / scale), 0), 2 ** bits - 1))
    return scale, zero_point
    ### END SOLUTION


# %%
checks.check_scale_zero_point(scale_zero_point)

# %% [markdown]
# ## 3. The error on the baseline's real weights
# Which scheme should weights use? Measure the SQNR $10\log_{10}\frac{\sum w^2}{\sum (w-\hat w)^2}$ of every
# layer for symmetric per-tensor, asymmetric per-tensor and symmetric **per-channel** (one scale per output
# channel, `per_channel_axis=0`). Per-channel matters when channels have very different ranges: one
# channel with large weights would otherwise force a coarse step on all the others.

# %%
weights = dict(measure.prunable_weights(baseline))
schemes = {"sym/tensor": (True, None), "asym/tensor": (False, None), "sym/channel": (True, 0)}
bit_list = (8, 6, 4, 3, 2)
sqnr = {(layer, name, b): Q.sqnr_db(w, Q.fake_quantize(w.detach(), b, sym, axis))
        for layer, w in weights.items() for name, (sym, axis) in schemes.items() for b in bit_list}
print(f"{'layer':6s} {'scheme':12s} " + " ".join(f"{b:>5d}b" for b in bit_list) + "   (SQNR, dB)")
for layer in weights:
    for name in schemes:
        print(f"{layer:6s} {name:12s} " + " ".join(f"{sqnr[layer, name, b]:6.1f}" for b in bit_list))

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.3))
for name in schemes:
    axes[0].plot(bit_list, [np.mean([sqnr[l, name, b] for l in weights]) for b in bit_list], marker="o", label=name)
axes[0].plot(bit_list, [6.02 * b - 10 for b in bit_list], "k:", label="6 dB per bit")
axes[0].set(xlabel="bits", ylabel="mean SQNR over layers (dB)", title="weight quantization error")
axes[0].legend()
w2 = weights["conv2"].detach().flatten()
axes[1].hist(w2.numpy(), bins=120, color="C0", alpha=0.7)
levels = Q.fake_quantize(w2, 3, True).unique()
for v in levels.tolist():
    axes[1].axvline(v, color="C3", lw=0.8)
axes[1].set(xlabel="conv2 weight", title=f"conv2 weights and the {len(levels)} levels of symmetric 3-bit")
fig.tight_layout()

# %% [markdown]
# The lines confirm about 6 dB per bit. Asymmetric per-tensor wastes nothing on weight tensors whose
# range is lopsided, and per-channel wins clearly on the layers whose channels differ in range. Note the
# histogram: a bell-shaped distribution with rare large weights; a uniform grid spends most levels where
# there are few weights. K-means (section 8) puts the levels where the weights are.
#
# ## 4. Fake quantization, exactly PyTorch's
# To *simulate* quantization in a float network, replace $x$ by $\hat x$ ("fake quantization": quantize then
# dequantize). `Q.fake_quantize` computes it with the same float32 operations as PyTorch's own kernels
# (`1/s` in float32, multiply, round half to even), so the two agree bit for bit:

# %%
w = weights["fc1"].detach()
_, s_pc, z_pc = Q.quantize(w, 8, symmetric=True, per_channel_axis=0)
ours = Q.fake_quantize(w, 8, True, per_channel_axis=0)
theirs = torch.fake_quantize_per_channel_affine(w, s_pc, z_pc, 0, -127, 127)
print("per-channel, identical to torch:", torch.equal(ours, theirs))
_, s_t, z_t = Q.quantize(w, 4, symmetric=False)
print("per-tensor, identical to torch: ",
      torch.equal(Q.fake_quantize(w, 4, False), torch.fake_quantize_per_tensor_affine(w, float(s_t), int(z_t), 0, 15)))

# %% [markdown]
# ### The straight-through estimator
# Rounding has zero derivative almost everywhere, so a network with fake quantization cannot learn
# through it. The **straight-through estimator** (Bengio et al. 2013) pretends rounding is the identity
# in the backward pass, but keeps the clamp: $\frac{\partial \hat x}{\partial x} = 1$ if $q_{min} \le
# \operatorname{round}(x/s) + z \le q_{max}$, else 0. A convenient trick in PyTorch is
# `x + (x_hat - x).detach()`: the forward value is `x_hat`, the gradient is that of `x`.
#
# ### Exercise 2: fake quantization with a straight-through gradient
# Return $\hat x$ for a given scale, zero-point and integer range, with the clipped straight-through
# gradient (values that were clamped get zero gradient).

# %%
def fake_quant_ste(x: torch.Tensor, scale: float, zero_point: int, qmin: int, qmax: int) -> torch.Tensor:
    ### BEGIN SOLUTION
    q = torch.round(x / scale) + zero_point
    inside = (q >= qmin) & (q <= qmax)
    x_hat = (torch.clamp(q, qmin, qmax) - zero_point) * scale
    return torch.where(inside, x + (x_hat - x).detach(), x_hat.detach())
    ### END SOLUTION


# %%
checks.check_fake_quant_ste(fake_quant_ste)

# %% [markdown]
# ## 5. Calibrating activations
# Weights are known; activations depend on the input, so their range is **calibrated** on a few hundred
# training images. Three ways to choose $[\alpha, \beta]$ from the observed values:
# - **min-max**: the full observed range; nothing is clipped but one outlier stretches the step for all;
# - **percentile**: clip to the 0.01% / 99.99% percentiles;
# - **MSE**: search clipping ratios $r \in (0, 1]$ of the min-max range for the smallest
#   $\mathbb E[(x - \hat x)^2]$: the best trade between clipping error and rounding error.
#
# Each layer's *input* is quantized (asymmetric, since ReLU outputs are non-negative). Here are the
# ranges each method picks at 4 bits, and the mean squared error they give on the calibration data.

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
fig, ax = plt.subplots(figsize=(7, 3))
ax.hist(a[a > 0].numpy(), bins=150, log=True, color="C0", alpha=0.7)
for i, method in enumerate(Q.CALIBRATION_METHODS):
    s, z = Q.calibrate(a, 4, method)
    ax.axvline((15 - int(z)) * float(s), color=f"C{i + 1}", label=f"{method}: upper end", lw=1.5)
ax.set(xlabel="fc1 input activation (positive values)", ylabel="count", title="4-bit calibration ranges")
ax.legend()
fig.tight_layout()

# %% [markdown]
# With float weights, quantize only the activations and compare the methods' accuracy at 8, 4 and 3 bits:

# %%
calib_acc = {}
for method in Q.CALIBRATION_METHODS:
    for bits in (8, 4, 3):
        calib_acc[method, bits] = evaluate(Q.ptq(baseline, calib, 32, bits, method=method), splits.test)
    print(f"{method:10s} " + "  ".join(f"A{b}: {100 * calib_acc[method, b]:.2f}%" for b in (8, 4, 3)))

# %% [markdown]
# At 8 bits the range hardly matters. At 3 and 4 bits the MSE and percentile ranges give lower error per
# layer (the table above), but on this small network with well-behaved ReLU activations the accuracies
# stay within test noise (0.1 point = one image). Calibration matters much more for networks with outlier
# activations (transformers): there min-max can cost whole points at 8 bits.
#
# ## 6. Post-training quantization (PTQ) of the whole model
# `Q.ptq` wraps every convolution and linear layer in a `QuantWrapper` that fake-quantizes its weights
# (symmetric, per channel or per tensor) and its input activations (calibrated min-max), with no
# training. "WxAy" means x-bit weights, y-bit activations. Size is the real artifact: bit-packed integer
# weights plus float32 scales and biases (`Q.packed_size_bytes`).

# %%
ptq_models, ptq_rows = {}, []
for wb in (8, 4, 2):
    for pc in (True, False):
        qm = Q.ptq(baseline, calib, wb, 8, per_channel=pc)
        acc = evaluate(qm, splits.test)
        ptq_models[wb, pc] = qm
        ptq_rows.append((wb, pc, acc))
        print(f"W{wb}A8 {'per-channel' if pc else 'per-tensor ':11s}: {100 * acc:6.2f}%  "
              f"({100 * (acc - base_acc):.2f} points), {Q.packed_size_bytes(qm) / 1024:.1f} KiB")

# %% [markdown]
# 8 bits is free; 4 bits nearly so with per-channel scales; at 2 bits (three levels per channel:
# $-s, 0, s$) plain rounding destroys the network, and per-tensor even more so. That is what QAT fixes.
#
# ## 7. Quantization-aware training (QAT)
# Fine-tune the network *with* fake quantization in the forward pass and the straight-through estimator in
# the backward pass: the float "shadow" weights keep receiving small updates, and rounding decides which
# level each weight lands on. A few epochs at a small learning rate are enough, starting from the trained
# float weights; 2-bit weights have further to move, so they get a 3x larger rate than 4-bit ones.

# %%
qat_w4, h4 = recipes.qat(baseline, splits.train, calib, weight_bits=4, act_bits=8, epochs=EPOCHS, lr=1e-4,
                         seed=SEED, device=device)
qat_w2, h2 = recipes.qat(baseline, splits.train, calib, weight_bits=2, act_bits=8, epochs=EPOCHS, lr=3e-4,
                         seed=SEED, device=device)
acc_qat4, acc_qat2 = evaluate(qat_w4, splits.test), evaluate(qat_w2, splits.test)
acc_ptq4 = dict(((w, p), a) for w, p, a in ptq_rows)[4, True]
acc_ptq2 = dict(((w, p), a) for w, p, a in ptq_rows)[2, True]
print(f"W4A8: PTQ {100 * acc_ptq4:.2f}% -> QAT {100 * acc_qat4:.2f}%")
print(f"W2A8: PTQ {100 * acc_ptq2:.2f}% -> QAT {100 * acc_qat2:.2f}%")

# %% [markdown]
# ## 8. K-means weight sharing (Deep Compression)
# Han et al. (2016) replace each layer's weights by $2^b$ **shared values** (a codebook) found by 1-D
# k-means, and store only the $b$-bit index of each weight plus the small float codebook. The levels follow
# the weight distribution instead of a uniform grid. Lloyd's algorithm alternates
# $$c(i) = \arg\min_k |w_i - \mu_k|, \qquad \mu_k = \frac{1}{|\{i : c(i)=k\}|}\sum_{i:\,c(i)=k} w_i .$$
# Then the **centroids are fine-tuned**: the gradient of a shared value is the sum of the gradients of all
# the weights that use it, $\frac{\partial L}{\partial \mu_k} = \sum_{i:\,c(i)=k} \frac{\partial L}{\partial w_i}$
# (autograd does exactly this through `codebook[indices]`).
#
# ### Exercise 3: one k-means step
# Given weights `w` (N,) and centroids `c` (K,), return the assignment of each weight to its nearest
# centroid (int64) and the new centroids (a centroid with no weights keeps its value).

# %%
def kmeans_step(w: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    ### BEGIN SOLUTION
    idx = (w[:, None] - c[None, :]).abs().argmin(1)
    sums = torch.zeros_like(c).index_add_(0, idx, w)
    counts = torch.bincount(idx, minlength=len(c))
    return idx, torch.where(counts > 0, sums / counts.clamp(min=1), c)
    ### END SOLUTION


# %%
checks.check_kmeans_step(kmeans_step)

# %% [markdown]
# `Q.kmeans_model` clusters every layer (linear initialisation between min and max, Han et al.'s best),
# then `fit` trains only the codebooks (`params=`), keeping the indices fixed.

# %%
km_acc = {}
for bits in (4, 3, 2):
    km_acc[bits, "before"] = evaluate(Q.kmeans_model(baseline, bits), splits.test)
    km = recipes.kmeans_finetune(baseline, splits.train, bits, epochs=EPOCHS, lr=1e-3, seed=SEED, device=device)
    km_acc[bits, "after"] = evaluate(km, splits.test)
    print(f"{bits}-bit k-means: {100 * km_acc[bits, 'before']:.2f}% -> fine-tuned {100 * km_acc[bits, 'after']:.2f}%"
          f", {Q.packed_size_bytes(km) / 1024:.1f} KiB")
km2 = km

# %%
fig, ax = plt.subplots(figsize=(7, 3))
w_fc1 = weights["fc1"].detach().flatten()
ax.hist(w_fc1.numpy(), bins=150, log=True, color="C0", alpha=0.6)
for v in km2.fc1.codebook.detach().tolist():
    ax.axvline(v, color="C3", lw=1.5)
for v in Q.fake_quantize(w_fc1, 2, True).unique().tolist():
    ax.axvline(v, color="k", ls=":", lw=1.2)
ax.set(xlabel="fc1 weight", title="2 bits: k-means centroids (red) vs the uniform symmetric grid (dotted)")
fig.tight_layout()

# %% [markdown]
# ## 9. Real integer inference with onnxruntime
# Fake quantization only *simulates* integers: the arithmetic stays float32. A real speed-up needs
# integer kernels: int8 operands, int32 accumulators, then requantization to the next layer's scale:
# $$y_j = s_y\,(q_{y,j} - z_y) \approx s_x s_{w,j} \sum_k q_{w,jk}\,(q_{x,k} - z_x) + b_j .$$
# On x86 CPUs with AVX-512 VNNI one `vpdpbusd` instruction does 64 uint8 x int8 multiply-accumulates
# where an FMA does 16 float32 ones: 4x the arithmetic per instruction, and 4x less memory traffic.
#
# We export the model to ONNX (`deploy.export_onnx`, PyTorch's TorchScript exporter: the newer `dynamo`
# exporter needs the `onnxscript` package, which the course does not install) and let onnxruntime's
# `quantize_static` calibrate the activations (min-max on the same calibration images) and quantize the
# weights per channel, in QDQ format (Quantize/Dequantize pairs that onnxruntime fuses into `QLinearConv`
# and `QGemm` integer kernels).

# %%
art = REPO_ROOT / "build" / "artifacts" / "02_quantization"
fp32_onnx = deploy.export_onnx(baseline, art / "lenet5_fp32.onnx", shape)
int8_onnx = deploy.ort_quantize_static(fp32_onnx, art / "lenet5_int8.onnx", calib, per_channel=True, quant_format="QDQ")
ort_fp32, ort_int8 = deploy.OrtModule(fp32_onnx), deploy.OrtModule(int8_onnx)
acc_ort32, acc_ort8 = evaluate(ort_fp32, splits.test), evaluate(ort_int8, splits.test)
fq_w8a8 = ptq_models[8, True]
agree = (predict(ort_int8, splits.test) == predict(fq_w8a8, splits.test)).float().mean().item()
print(f"onnxruntime fp32 {100 * acc_ort32:.2f}%, int8 {100 * acc_ort8:.2f}%; "
      f"int8 agrees with our fake-quantized W8A8 on {100 * agree:.1f}% of test images")
print(f"files: fp32 {storage.size_bytes(fp32_onnx) / 1024:.1f} KiB, int8 {storage.size_bytes(int8_onnx) / 1024:.1f} KiB")

# %% [markdown]
# ## 10. "Why is my quantized model slower?"
# A frequent complaint: after quantizing with fake quantization (or QAT), the model runs *slower*.
# Time the same batch of 64, single thread, four ways.

# %%
# NBVAL_IGNORE_OUTPUT
lat = {"torch fp32 (eager)": measure.latency_ms(baseline, shape),  # re-timed here, next to the others
       "torch fake-quant W8A8": measure.latency_ms(fq_w8a8, shape),
       "onnxruntime fp32": measure.latency_ms(ort_fp32, shape),
       "onnxruntime int8": measure.latency_ms(ort_int8, shape)}
for k, v in lat.items():
    print(f"{k:24s} {v:7.2f} ms   {lat['torch fp32 (eager)'] / v:4.2f}x vs torch fp32")
base_rec["latency_ms"] = lat["torch fp32 (eager)"]
has_vnni = cpu_has_vnni()  # Linux's CPU flags; elsewhere unknown and treated as absent
print("this CPU has VNNI (integer dot-product instructions):", has_vnni)

# %% [markdown]
# The fake-quantized model does *more* work than the float one: every forward pass computes scales,
# rounds and clamps the weights and activations, and then runs the same float32 convolutions. It is a
# training and evaluation tool, not a deployment format. Only a runtime with integer kernels turns the
# 8-bit numbers into speed. Where does the int8 time go? onnxruntime's profiler, per operator:

# %%
# NBVAL_IGNORE_OUTPUT
xb = splits.test.tensors[0][:64]
for label, path in (("fp32", fp32_onnx), ("int8", int8_onnx)):
    print(f"onnxruntime {label}:")
    for node, op, ms in deploy.ort_op_times(path, xb, runs=20)[:6]:
        print(f"   {op:14s} {node[:34]:34s} {ms:6.3f} ms")

# %% [markdown]
# `conv2` and `fc1`, which do most of the multiply-accumulates, run about 4x faster in int8, close to the
# VNNI limit. `conv1` does not: it has one input channel, so each output is a dot product of only 25
# values; the integer kernel pays for im2col packing and requantization of 20 output channels per pixel
# with little arithmetic to amortise them, and is *slower* than the float kernel (Amdahl's law).
# That is why the whole model gains well under 4x over onnxruntime's float32.
#
# ## 11. Mixed precision: the first convolution stays float
# Keeping the first (and sometimes the last) layer in higher precision is standard practice: it holds
# few weights (conv1: 520 of 431,080), sees the raw input, and, as the profile shows, gains nothing from
# int8 here. `deploy.ort_quantize_static(..., keep_float=[...])` leaves the named ONNX nodes in float32
# (`nodes_to_exclude` of onnxruntime's `quantize_static`) and puts the Quantize step after them.
#
# Where that boundary sits matters. After conv1 come ReLU and 2x2 max-pooling; quantizing right after
# the ReLU converts the full 20 x 24 x 24 map, and the pooling then runs on uint8 in the NCHW layout,
# for which onnxruntime has only a slow generic kernel (try it: the profile shows a max-pooling of over
# a millisecond). But max-pooling and ReLU commute exactly, because both are monotone:
# $$\max_i \operatorname{relu}(a_i) = \operatorname{relu}(\max_i a_i),$$
# so `PoolBeforeReLU(model)` computes conv1 → pool → ReLU, bit for bit the same function. Exported that
# way, the float part (conv1 and its pooling, in onnxruntime's fast blocked layout) ends on a tensor 4x
# smaller, and only that is quantized.

# %%
mixed_onnx_fp32 = deploy.export_onnx(PoolBeforeReLU(baseline), art / "lenet5_fp32_pool_first.onnx", shape)
first_conv = deploy.onnx_nodes(mixed_onnx_fp32, "Conv")[0]
mixed_onnx = deploy.ort_quantize_static(mixed_onnx_fp32, art / "lenet5_int8_mixed.onnx", calib, per_channel=True,
                                   quant_format="QDQ", keep_float=[first_conv])
ort_mixed = deploy.OrtModule(mixed_onnx)
acc_mixed = evaluate(ort_mixed, splits.test)
agree_mixed = (predict(ort_mixed, splits.test) == predict(fq_w8a8, splits.test)).float().mean().item()
print(f"kept in float32: {first_conv}; graph order: {deploy.onnx_nodes(mixed_onnx_fp32)[:3]}")
print(f"onnxruntime int8 (conv1 float) {100 * acc_mixed:.2f}%; agrees with our fake-quantized W8A8 on "
      f"{100 * agree_mixed:.1f}% of test images; file {storage.size_bytes(mixed_onnx) / 1024:.1f} KiB")

# %%
# NBVAL_IGNORE_OUTPUT
print("onnxruntime int8, conv1 float:")
for node, op, ms in deploy.ort_op_times(mixed_onnx, xb, runs=20)[:6]:
    print(f"   {op:14s} {node[:34]:34s} {ms:6.3f} ms")

# %% [markdown]
# Now time all the deployable versions together, in interleaved rounds (`measure.compare_latency`: each
# round times every model once, and the median over rounds is kept), so a burst of load on the machine
# hits them alike. Single thread, the same batch of 64.

# %%
# NBVAL_IGNORE_OUTPUT
lat_deploy = measure.compare_latency({"torch fp32 (eager)": baseline, "onnxruntime fp32": ort_fp32,
                                      "onnxruntime int8 (all layers)": ort_int8,
                                      "onnxruntime int8 (conv1 float)": ort_mixed}, shape, rounds=5)
for k, v in lat_deploy.items():
    print(f"{k:32s} {v:6.2f} ms  {lat_deploy['onnxruntime fp32'] / v:4.2f}x vs onnxruntime fp32, "
          f"{lat_deploy['torch fp32 (eager)'] / v:4.2f}x vs torch fp32")

# %% [markdown]
# Keeping 0.1% of the weights in float buys most of the remaining distance to the VNNI limit: the int8
# model now spends its time in `conv2`, the layer that does the arithmetic, and the float `conv1`.
#
# ## 12. The landscape: torch.ao, torchao, onnxruntime
# - **`torch.ao.quantization`** (eager and FX graph mode) still runs in PyTorch 2.13 but warns that it
#   is deprecated in favour of torchao (captured below rather than printed). Dynamic quantization, the
#   classic one-liner, quantizes only `nn.Linear` weights (activations are quantized on the fly), so here
#   the fc layers shrink 4x while the convolutions, which dominate the time, stay float: no speed-up.
#   FX static quantization runs fbgemm/oneDNN integer convolutions inside PyTorch: compare its latency
#   with onnxruntime's in the results table; it works today, but it is the deprecated path.
# - **PT2E** (`prepare_pt2e` / `convert_pt2e`) moved to **torchao** (`torchao.quantization.pt2e`).
#   torchao's eager `quantize_` only touches `nn.Linear`, and on CPU it needs `torch.compile` to get real
#   int8 kernels. torchao is not part of this course's environment, so it is described, not run.
# - **onnxruntime** static quantization (above) is the path that gives a real CPU speed-up for this
#   convolutional network.

# %%
ao_dyn, ao_dyn_warn = Q.torch_ao_dynamic(baseline)
ao_fx, ao_fx_warn = Q.torch_ao_static_fx(baseline, calib)
print("torch.ao warned:")
for msg in ao_dyn_warn + [m for m in ao_fx_warn if m not in ao_dyn_warn]:
    print("  ", msg[:110])
print("dynamic:", "fc1 is now", ao_dyn.fc1._get_name(), "| conv1 stays", ao_dyn.conv1._get_name())

# %%
def ao_record(model, name, method, wb, ab, **kw):
    """A results record for a torch.ao model: its size is the bytes torch.save writes for its state dict,
    its counts are those of the float model it came from."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation warnings, shown above
        return records.record(name, model, test=splits.test, input_shape=shape, counts_from=baseline,
                              size_bytes=measure.serialized_bytes(model), method=method,
                              weight_bits=wb, activation_bits=ab, **kw)


rec_ao_dyn = ao_record(ao_dyn, "torch.ao-dynamic-int8", "torch.ao dynamic (Linear only)", 8, 32)
rec_ao_fx = ao_record(ao_fx, "torch.ao-fx-static-int8", "torch.ao FX static, per-channel", 8, 8)
for r in (rec_ao_dyn, rec_ao_fx):
    print(f"{r['name']:24s} {100 * r['accuracy']:.2f}%  {base_rec['size_bytes'] / r['size_bytes']:.1f}x smaller")

# %% [markdown]
# ## 13. Results
# Every quantized model's record carries `weight_bits`, `activation_bits` (32 where a tensor stays
# float) and `method`. The fake-quantized models are timed as they run (fake quantization in float32);
# their size is the bit-packed artifact. The int8 records' latencies are measured in onnxruntime, which runs
# them (section 11's interleaved timing), and their size is the `.onnx` file's. The last record keeps
# conv1 in float32: its `weight_bits` is that of 99.9% of the weights, and `float_layers` names the rest.

# %%
# NBVAL_IGNORE_OUTPUT
def fq_record(model, name, method, wb, ab, acc=None):
    return records.record(name, model, test=splits.test, input_shape=shape, accuracy=acc, method=method,
                          size_bytes=Q.packed_size_bytes(model), weight_bits=wb, activation_bits=ab)


def ort_record(name, path, acc, latency, method, wb, ab, **kw):
    return records.record(name, test=splits.test, accuracy=acc, file=path, counts_from=baseline,
                          latency_ms=latency, method=method, weight_bits=wb, activation_bits=ab, input_shape=shape, **kw)


recs = [
    base_rec,
    fq_record(ptq_models[8, True], "ptq-w8a8-per-channel", "PTQ min-max, fake quant", 8, 8),
    fq_record(ptq_models[8, False], "ptq-w8a8-per-tensor", "PTQ min-max, fake quant", 8, 8),
    fq_record(ptq_models[4, True], "ptq-w4a8-per-channel", "PTQ min-max, fake quant", 4, 8),
    fq_record(ptq_models[2, True], "ptq-w2a8-per-channel", "PTQ min-max, fake quant", 2, 8),
    fq_record(qat_w4, "qat-w4a8", "QAT (STE), fake quant", 4, 8, acc_qat4),
    fq_record(qat_w2, "qat-w2a8", "QAT (STE), fake quant", 2, 8, acc_qat2),
    fq_record(km2, "kmeans-2bit-finetuned", "k-means codebook per layer + centroid fine-tuning", 2, 32,
              km_acc[2, "after"]),
    rec_ao_dyn,
    rec_ao_fx,
    ort_record("onnxruntime-fp32", fp32_onnx, acc_ort32, lat_deploy["onnxruntime fp32"], "onnxruntime fp32", 32, 32),
    ort_record("onnxruntime-int8-static", int8_onnx, acc_ort8, lat_deploy["onnxruntime int8 (all layers)"],
               "onnxruntime quantize_static QDQ, per-channel", 8, 8),
    ort_record("onnxruntime-int8-conv1-float", mixed_onnx, acc_mixed, lat_deploy["onnxruntime int8 (conv1 float)"],
               "onnxruntime quantize_static QDQ, per-channel; conv1 (520 weights) kept float32, pool before ReLU",
               8, 8, float_layers=["conv1"]),
]
print(records.format_table(recs, columns=("name", "accuracy", "size_bytes", "weight_bits",
                                          "activation_bits", "latency_ms")))
path = records.write_results("02_quantization", recs)

# %% [markdown]
# ## 14. Checks
# The chapter's targets, with tolerances a real regression would break. Accuracy differences are in
# points of test accuracy (one image is 0.1 point). Speed is a ratio measured in the same run.

# %%
by = {r["name"]: r for r in recs}
drop = {k: 100 * (base_acc - by[k]["accuracy"]) for k in by}
assert base_acc >= 0.98
# fake quantization is PyTorch's, value for value
assert torch.equal(ours, theirs)
# W8A8 per-channel: at most 0.2 points lost, about 4x smaller (biases and scales stay float32)
assert drop["ptq-w8a8-per-channel"] <= 0.2 + 1e-6, drop["ptq-w8a8-per-channel"]
assert base_rec["size_bytes"] / by["ptq-w8a8-per-channel"]["size_bytes"] >= 3.85
assert base_rec["size_bytes"] / by["onnxruntime-int8-static"]["size_bytes"] >= 3.8
# 4-bit weights with QAT: at most 0.5 points lost; QAT rescues 2-bit weights that PTQ breaks
assert drop["qat-w4a8"] <= 0.5 + 1e-6, drop["qat-w4a8"]
assert acc_qat2 > acc_ptq2 + 0.1 and acc_qat2 >= base_acc - 0.03
# 2-bit k-means with centroid fine-tuning: at most 1 point lost, and fine-tuning does not hurt
assert drop["kmeans-2bit-finetuned"] <= 1.0 + 1e-6, drop["kmeans-2bit-finetuned"]
assert km_acc[2, "after"] >= km_acc[2, "before"] - 0.002
# the deployed int8 models keep accuracy and agree with the fake-quantized one
assert agree >= 0.99 and agree_mixed >= 0.99, (agree, agree_mixed)
assert acc_ort8 >= base_acc - 0.002 and acc_mixed >= base_acc - 0.002
assert base_rec["size_bytes"] / by["onnxruntime-int8-conv1-float"]["size_bytes"] >= 3.8
# real int8 is faster; fake quantization is not. The targets (3.5x over torch fp32 eager, 2.5x over
# onnxruntime fp32) assume integer dot-product instructions (VNNI): without them int8 has at most 2x the
# arithmetic rate of fp32 (targets 2.0x and 1.3x). Speed is asserted only against a sanity floor at half
# the target, so a busy laptop does not fail the chapter; the cell below prints the strict verdicts.
speed_torch = lat_deploy["torch fp32 (eager)"] / lat_deploy["onnxruntime int8 (conv1 float)"]
speed_ort = lat_deploy["onnxruntime fp32"] / lat_deploy["onnxruntime int8 (conv1 float)"]
need_torch, need_ort = (3.5, 2.5) if has_vnni else (2.0, 1.3)
assert speed_torch >= need_torch / 2, speed_torch
assert speed_ort >= need_ort / 2, speed_ort
assert lat_deploy["onnxruntime int8 (conv1 float)"] < 2 * lat_deploy["onnxruntime int8 (all layers)"]
assert lat["torch fake-quant W8A8"] >= 0.5 * lat["torch fp32 (eager)"]  # no faster, within timing noise
print("all checks passed")

# %%
# NBVAL_IGNORE_OUTPUT
for target, got, need in (("int8 vs torch fp32 eager", speed_torch, need_torch),
                          ("int8 vs onnxruntime fp32", speed_ort, need_ort)):
    print(f"{target}: {got:.2f}x (target {need}x: {'met' if got >= need else 'MISSED'}; VNNI: {has_vnni})")
print("int8 with conv1 float vs all layers int8:", "faster" if lat_deploy["onnxruntime int8 (conv1 float)"]
      < lat_deploy["onnxruntime int8 (all layers)"] else "NOT faster")
