# %% [markdown]
# # 00 · Setup and baseline: the model every chapter compresses
#
# **Learning goals**
# - check that your environment matches the course's (versions, device, threads);
# - know the data: a 5,000-image MNIST sample that ships with the course, split 3,500 / 500 / 1,000;
# - know the baseline: the LeNet-5 of Han et al.'s pruning and Deep Compression papers (431,080 parameters);
# - train it with a sound recipe and see why a *well-trained* baseline matters before compressing anything;
# - measure what every later chapter measures: accuracy, parameters, MACs, bytes on disk, CPU latency.
#
# **Run time:** about 1 minute on a 2-core laptop CPU (training 20 epochs takes about 15 s; the
# trained baseline is cached in `build/cache/`, so the next chapters load it in well under a second).

# %% tags=["parameters"]
DATASET = "mnist5k"  # "mnist", "fashion_mnist" or "cifar10" once their archives are in place
SEED = 0
EPOCHS = 20          # epochs of the baseline recipe
DEVICE = None        # None: $COURSE_DEVICE, else CUDA if available, else CPU

# %% [markdown]
# ## 1. Environment check
# The first cell of every chapter checks versions and seeds everything. Without a GPU it only
# *warns*: the whole course is designed to run on a laptop CPU.

# %%
# NBVAL_IGNORE_OUTPUT
import warnings

import torch

from course_lib import measure, plots, records, storage
from course_lib.data import DATASETS, load_dataset
from course_lib.env import check_environment
from course_lib.models import LeNet5, build_model
from course_lib.training import (BASELINE_RECIPE, evaluate, fit, get_device, load_baseline,
                                 seed_everything)

env = check_environment()
device = get_device(DEVICE)
seed_everything(SEED)
print("device:", device, "| torch threads:", torch.get_num_threads())

# %% [markdown]
# ## 2. The data
# `load_dataset` returns train / validation / test splits as tensors normalised with the dataset's
# mean and standard deviation, $x' = (x - \mu)/\sigma$. The default `mnist5k` is a stratified sample of MNIST
# (500 images per digit) committed in `data/` with its SHA-256; the file is verified on every load.
# The split is stored in the file, so everybody trains and tests on the same images.

# %%
splits = load_dataset(DATASET)
print(f"dataset {splits.name}: input shape {splits.input_shape}, {splits.num_classes} classes")
for part in ("train", "val", "test"):
    labels = getattr(splits, part).tensors[1]
    print(f"{part:5s} {len(labels):5d} images, per class: {torch.bincount(labels).tolist()}")

# %%
info = DATASETS[DATASET]
fig = plots.show_samples(splits.train, splits.classes, n=20, mean=info.mean, std=info.std)

# %% [markdown]
# ### Exercise 1: normalise a batch of raw images
# The archive stores pixels as `uint8` in $[0, 255]$. Write `normalize(images, mean, std)` that takes a
# `uint8` tensor of shape $(N, H, W)$ and returns `float32` of shape $(N, 1, H, W)$ (one channel) with
# $x' = (x/255 - \mu)/\sigma$. The checker runs it on fresh random images and names what is off.

# %%
def normalize(images, mean, std):
    ### BEGIN SOLUTION
    # Hint: scale to [0, 1] first, then subtract the mean, then divide by std; add the channel axis.
    return ((images.float() / 255.0 - mean) / std).unsqueeze(1)
    ### END SOLUTION

# %%
from course_lib import checks
checks.check_normalize(normalize)

# %% [markdown]
# ## 3. The baseline model
# LeNet-5 as in Han et al. (2015, 2016): two 5x5 convolutions (20 and 50 filters), each followed by
# ReLU and 2x2 max-pooling, then a 500-unit fully connected layer and the 10-way classifier.
#
# A convolution with $C_{in}$ input and $C_{out}$ output channels, a $k\times k$ kernel and an
# $H_{out}\times W_{out}$ output performs $\text{MACs} = C_{out}\,C_{in}\,k^2\,H_{out}W_{out}$
# multiply-accumulates; a linear layer $m \to n$ performs $mn$. Parameters and compute sit in
# different places: the first fully connected layer holds 93% of the weights, the second convolution
# does most of the arithmetic. Keep that in mind: pruning the big layer shrinks the file, pruning the
# convolutions saves time.

# %%
model = build_model("lenet5", splits.input_shape, splits.num_classes)
print(model)
per_layer_macs = measure.macs_by_layer(model, splits.input_shape)
print(f"\n{'layer':6s} {'weights':>9s} {'MACs':>10s}")
for name, w in measure.prunable_weights(model):
    print(f"{name:6s} {w.numel():9,d} {per_layer_macs[name]:10,d}")
print(f"total parameters {measure.count_params(model):,}, MACs per image {measure.macs(model, splits.input_shape):,}")

# %% [markdown]
# ### Exercise 2: count the MACs of a convolution
# Write `conv_macs(layer, input_hw)` for an `nn.Conv2d` and an input of spatial size $(H, W)$. The output
# size is $H_{out} = \lfloor (H + 2p - d(k-1) - 1)/s \rfloor + 1$ (stride $s$, padding $p$, dilation $d$),
# and a grouped convolution connects each output channel to only $C_{in}/g$ input channels:
# $\text{MACs} = C_{out}\,(C_{in}/g)\,k_h k_w\,H_{out} W_{out}$. Return an `int`.

# %%
def conv_macs(layer, input_hw):
    ### BEGIN SOLUTION
    # Hint: compute H_out and W_out from layer.kernel_size, stride, padding and dilation first.
    (kh, kw), (sh, sw) = layer.kernel_size, layer.stride
    (ph, pw), (dh, dw) = layer.padding, layer.dilation
    ho = (input_hw[0] + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (input_hw[1] + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    return layer.out_channels * (layer.in_channels // layer.groups) * kh * kw * ho * wo
    ### END SOLUTION

# %%
checks.check_conv_macs(conv_macs)

# %% [markdown]
# ## 4. The training recipe
# The baseline is trained with
# - **AdamW** (Adam with decoupled weight decay $\lambda = 10^{-4}$: each step also shrinks
#   $w \leftarrow w - \eta\lambda w$, which keeps weights small and, later, easier to prune and quantize);
# - a **one-cycle learning-rate schedule**: warm up to $\eta_{max}=2\cdot10^{-3}$, then anneal to almost 0;
#   the low final rate lets the weights settle in a flat minimum;
# - **augmentation** by random shifts of up to one pixel, so 3,500 images behave like many more;
# - batch 64, 20 epochs, everything seeded.
#
# `load_baseline` trains it once and caches the weights in `build/cache/` (a plain state dict,
# read back with `torch.load(weights_only=True)`); every later chapter calls it and gets the same model.

# %%
print(BASELINE_RECIPE | {"epochs": EPOCHS})
baseline, meta = load_baseline(DATASET, SEED, device=device, splits=splits, epochs=EPOCHS)
base_acc = evaluate(baseline, splits.test)
print(f"baseline test accuracy: {100 * base_acc:.2f}%")

# %%
fig = plots.plot_history({"baseline": meta["history"]}, title="LeNet-5 baseline")

# %% [markdown]
# ## 5. Why a well-trained baseline matters
# Every compression result is a *difference*: "lost 0.3 points", "4x smaller at no loss". Against a
# weak baseline those differences are meaningless: a compressed model can "beat" an under-trained
# original, and any technique looks lossless. To see it, train the same LeNet-5 with a quick recipe
# (3 epochs of plain Adam, constant rate, no augmentation), and a LeNet-5 with 4x fewer channels and
# a 5x smaller hidden layer (about 10x fewer parameters) with the full recipe.

# %%
seed_everything(SEED)
quick = LeNet5(splits.input_shape[0], splits.num_classes, input_size=splits.input_shape[1])
h_quick = fit(quick, splits.train, splits.val, epochs=3, lr=1e-3, optimizer="adam", schedule="constant",
              seed=SEED, device=device, desc="quick")
seed_everything(SEED)
small = LeNet5(splits.input_shape[0], splits.num_classes, c1=5, c2=12, fc=100, input_size=splits.input_shape[1])
recipe = {k: v for k, v in BASELINE_RECIPE.items() if k != "model"} | {"epochs": EPOCHS}
h_small = fit(small, splits.train, splits.val, seed=SEED, device=device, desc="small", **recipe)
comparison = [
    {"name": "LeNet-5, course recipe", "params": measure.count_params(baseline), "acc": base_acc},
    {"name": "LeNet-5, quick recipe", "params": measure.count_params(quick), "acc": evaluate(quick, splits.test)},
    {"name": "small LeNet, course recipe", "params": measure.count_params(small), "acc": evaluate(small, splits.test)},
]
for r in comparison:
    print(f"{r['name']:28s} {r['params']:8,d} params  test accuracy {100 * r['acc']:.2f}%")

# %% [markdown]
# The small model, with about a tenth of the parameters, matches or beats the under-trained big one.
# Had we taken the quick model as "the baseline", the small one would look like a 10x compression at
# no cost. The lesson for the rest of the course: always compress a baseline trained to convergence,
# and compare every compressed model with a *small model trained properly* (chapter 4 does exactly that).

# %% [markdown]
# ## 6. What every chapter measures
# - **accuracy** on the 1,000 test images (each image is 0.1 point, so differences below about
#   0.3 points are noise; chapter 4 shows how to average over seeds);
# - **parameters** and **non-zeros** (non-zeros matter after pruning);
# - **MACs** per image, from hooks on every convolution and linear layer;
# - **bytes on disk** of the saved state dict, raw and entropy-coded (zlib, lzma);
# - **latency**: the median of 30 timed forward passes of a batch of 64 on *one* CPU thread after
#   5 warm-up passes. Single-thread medians are the most repeatable figure on a laptop; ratios against
#   the baseline measured in the same run are what the chapters compare, never absolute times.

# %%
record = records.record("baseline", baseline, test=splits.test, input_shape=splits.input_shape, accuracy=base_acc,
                        method="fp32", weight_bits=32, activation_bits=32)
print(f"raw {record['size_bytes']:,d} bytes on disk (exactly: {measure.count_params(baseline)} float32 "
      f"values = {4 * measure.count_params(baseline):,} bytes, plus the container)")
zlib_b, lzma_b = storage.size_bytes(baseline, "zlib"), storage.size_bytes(baseline, "lzma")
print(f"zlib {zlib_b / 1024:.1f} KiB, lzma {lzma_b / 1024:.1f} KiB: float32 weights barely compress")
print(f"single-thread latency, batch 64: {record['latency_ms']:.2f} ms")

# %% [markdown]
# ## 7. Results
# The table every chapter ends with, and the file `build/results/00_setup_and_baseline.json` that
# `make run` gathers into `build/results.md`.

# %%
recs = [record,
        records.record("small-lenet", small, test=splits.test, input_shape=splits.input_shape, method="scratch",
                       weight_bits=32, activation_bits=32)]
print(records.format_table(recs))
path = records.write_results("00_setup_and_baseline", recs)

# %% [markdown]
# ## 8. Checks
# These assertions fail if the baseline regresses. Accuracies are checked against tolerances, never
# compared digit for digit: another CPU or a GPU trains slightly different weights.

# %%
assert measure.count_params(baseline) == 431_080
assert measure.macs(baseline, (1, 28, 28)) == 2_293_000 or DATASET != "mnist5k"
assert len(splits.train) == 3500 and len(splits.val) == 500 and len(splits.test) == 1000 or DATASET != "mnist5k"
assert base_acc >= 0.98, f"baseline accuracy {base_acc:.4f} is below the 98% target"
assert comparison[2]["params"] * 9 < comparison[0]["params"], "the small LeNet should have ~10x fewer parameters"
assert comparison[1]["acc"] < base_acc, "the quick recipe should not match the course recipe"
assert record["latency_ms"] > 0 and record["size_bytes"] > 4 * 431_080
print("all checks passed")
