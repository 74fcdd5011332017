# %% [markdown]
# # 07 · LLM-era weight quantization on a laptop CPU
#
# **Learning goals**
# - see where the time of a language model's decoding goes: at batch 1 every weight is read once per
#   token, so **bytes, not FLOPs**, set the speed; measure this machine's memory bandwidth and compute
#   rate, draw the roofline and place real matrix shapes of a 7B-class model on it;
# - run **real 4-bit kernels** (onnxruntime's `MatMulNBits`, PyTorch's int4 CPU kernel) against fp32 in
#   one interleaved measurement, and learn that a format is not a kernel;
# - evaluate a generative model properly: **perplexity** on held-out text with a bootstrap interval;
# - quantize a small language model's weights with **RTN, GPTQ and AWQ** at 8, 4 and 3 bits and groups of
#   128 and 32 (the same code as chapter 6), and reproduce MIT 6.5940 Lab 4's salient-channel ablation;
# - generate text from the fp32 and the 4-bit model, running the 4-bit one in a real 4-bit kernel, and
#   project what the same kernels do for one layer of a 7B-class model on this CPU.
#
# **Run time:** a few minutes on a 2-core laptop CPU (docs/timings.md lists measured times; the kernel
# timings and the quantization sweep take most of it). Nothing is trained here: the language model ships
# trained (`scripts/train_lm.py` rebuilds it).

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
DATASET = "pystdlib"   # the course's corpus (data/pystdlib_*.txt.xz): Python standard-library source
SEED = 0               # calibration chunks and sampling
EPOCHS = 0             # nothing is trained in this chapter (the model ships trained)
DEVICE = None          # everything here runs on the CPU (the point of the chapter)
LAB_MODE = None        # True: fewer evaluation chunks and shorter timings, about a minute and a half (None: $COURSE_LAB_MODE, else False)

# %% [markdown]
# ## 1. Environment check
# The kernels below depend on the CPU's instruction set: int8 dot products (AVX512-VNNI, AVX-VNNI, AMX on
# x86; the dot-product extension on ARM) are what make int8 and 4-bit kernels fast. The report names what
# this machine has, so every number below can be read against it.

# %%
# NBVAL_IGNORE_OUTPUT
import math

import matplotlib.pyplot as plt
import torch

from course_lib import checks, deploy, lm, measure, plots, records, roofline, stats
from course_lib import quantization as Q
from course_lib.env import cpu_flags, lab_mode, lab_note, report_targets, start_chapter

env, device = start_chapter(SEED, DEVICE)  # this chapter measures the CPU whatever the device
LAB_MODE = lab_mode(LAB_MODE)
EVAL_CHUNKS = 32 if LAB_MODE else lm.EVAL_CHUNKS  # held-out chunks of 256 characters scored per model
ROUNDS = 2 if LAB_MODE else 3                  # interleaved rounds of every kernel timing
lab_note(LAB_MODE, cuts=f"{EVAL_CHUNKS} held-out chunks (not {lm.EVAL_CHUNKS}) per perplexity, {ROUNDS} timing rounds (not 3), "
         "fewer kernel shapes", less_reliable="the perplexity intervals (wider), the verdicts between methods, "
         "the kernel timings and the projection")
flags = cpu_flags()  # None where /proc/cpuinfo does not exist (macOS, Windows)
if flags is None:
    print("CPU flags: unknown on this system (no /proc/cpuinfo); the measurements below still say what it does")
else:
    print("int8 dot-product instructions:", sorted(f for f in flags if "vnni" in f or f in ("amx_int8", "asimddp")) or "none found",
          "| AVX512:", "avx512f" in flags, "| AVX2:", "avx2" in flags)

# %% [markdown] tags=["theory"]
# ## 2. Where decoding time goes: bytes, not FLOPs
# A language model generates one token at a time. For each token every linear layer computes
# $y = xW^\top$ with $W \in \mathbb{R}^{N\times K}$ and $x$ a **single row** (batch 1): $2NK$ floating-point
# operations, and every one of the $NK$ weights is read from memory once. With $b$ bits per weight the
# kernel moves about $NKb/8$ bytes, so its **arithmetic intensity** is
# $$I = \frac{\text{FLOPs}}{\text{bytes}} \approx \frac{2 M N K}{N K b / 8} = \frac{16 M}{b}\ \text{FLOP/byte}$$
# at batch $M$: 0.5 FLOP/byte for fp32 at batch 1, 4 for 4-bit weights. A CPU core does several FLOPs in
# the time it reads one byte from DRAM (the ridge point printed below says how many on this machine), so at
# small batch the kernel waits for memory. The **roofline
# model** (Williams, Waterman and Patterson, 2009) says the time is at least
# $$t \;\ge\; \max\!\left(\frac{\text{bytes}}{\text{bandwidth}},\ \frac{\text{FLOPs}}{\text{peak}}\right),$$
# the maximum because a good kernel overlaps loading and computing. Below the **ridge point**
# $I^\ast = \text{peak}/\text{bandwidth}$ a kernel is memory-bound: if it streams its weights at the memory
# bandwidth, fewer bytes per weight make it faster in proportion; above it, only faster arithmetic helps. Batching $M$ rows reuses each weight $M$ times and
# moves the kernel to the right.
#
# First the ceilings of this machine, single thread: STREAM-like read, copy and triad tests on arrays several
# times the last-level cache (a matrix-vector product only *reads* its weights, so the read test is the memory
# roof we use), and a large square matrix product in each arithmetic (fp32, bf16, int8).

# %%
# NBVAL_IGNORE_OUTPUT
bw = roofline.memory_bandwidth_gbs(threads=1, repeats=5 if LAB_MODE else 10)
peak = {d: roofline.peak_gflops(d, threads=1) for d in roofline.PEAK_DTYPES}
llc = roofline.llc_bytes()
BW = bw["read"]
print(f"last-level cache: {llc / 2**20:.0f} MiB" if llc else "last-level cache: unknown")
print(f"memory bandwidth, 1 thread: read {bw['read']:.1f} GB/s, copy {bw['copy']:.1f} GB/s, triad {bw['triad']:.1f} GB/s "
      f"(arrays of {bw['array_mb']:.0f} MiB)")
print("peak, 1 thread: " + ", ".join(f"{d} {v:.1f} G{'OP' if d == 'int8' else 'FLOP'}/s" for d, v in peak.items()))
print(f"ridge point, fp32: {peak['fp32'] / BW:.1f} FLOP/byte: kernels below it are memory-bound")


# %% [markdown]
# ### Exercise 1: predict a kernel's time from the roofline
# Write the roofline prediction: given the bytes a kernel moves, its FLOPs, the bandwidth in GB/s
# (1 GB = $10^9$ bytes) and the peak in GFLOP/s, return the least time in **milliseconds**.

# %% nbgrader={"grade": false, "grade_id": "roofline_ms", "locked": false, "schema_version": 3, "solution": true, "task": false}
def roofline_ms(bytes_, flops, bandwidth_gbs, peak_gflops):
    # Hint: moving the bytes takes bytes / (bandwidth_gbs * 1e9) seconds; computing takes flops / (peak_gflops * 1e9).
    # Hint: a kernel overlaps the two, so which one bounds it? And return milliseconds, not seconds.
    ### BEGIN SOLUTION
    return 1e3 * max(bytes_ / (bandwidth_gbs * 1e9), flops / (peak_gflops * 1e9))
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "check_roofline_ms", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
checks.check_roofline_prediction(roofline_ms)

# %% [markdown]
# ## 3. Matrix products of a 7B-class model, in up to seven formats
# The linear layers of LLaMA-7B have three shapes: $4096\times4096$ (the attention projections),
# $11008\times4096$ (gate and up) and $4096\times11008$ (down). We time $y = xW^\top$ at batch 1, 4, 16 and
# 64 in: PyTorch fp32 and bf16; onnxruntime fp32; onnxruntime **dynamic int8** (weights int8 per row,
# activations quantized per call); onnxruntime **4-bit** `MatMulNBits` (blocks of 128 weights with a
# scale and a zero point; `accuracy_level` 4 quantizes the activations to int8 per block and uses int8
# dot products, level 0 dequantizes the weights to fp32 inside the kernel); and PyTorch's own int4 CPU
# kernel `aten._weight_int4pack_mm_for_cpu`.
#
# Two rules make the measurement honest. **Interleaved:** in each round every format runs in turn, so a
# burst of load hits all alike. **Rotating pool:** a $4096\times4096$ matrix in 4 bits is 8 MB and, timed
# in a loop, stays in the last-level cache, which is far faster than DRAM; a real model reads 32 layers of
# weights per token. Each format cycles through distinct copies of its weights that together exceed
# the cache twice, so every call streams its weights from memory, as decoding does.

# %%
# NBVAL_IGNORE_OUTPUT
SHAPES = roofline.DEFAULT_SHAPES[:1] if LAB_MODE else roofline.DEFAULT_SHAPES
BATCHES = (1, 16) if LAB_MODE else roofline.DEFAULT_BATCHES
# a CPU without fast bfloat16 arithmetic (no AVX512-BF16 or AMX) emulates it slowly: leave those formats out
FORMATS = [f for f in roofline.DEFAULT_FORMATS if roofline.COMPUTE_DTYPE[f] != "bf16" or peak["bf16"] >= peak["fp32"] / 2]
if len(FORMATS) < len(roofline.DEFAULT_FORMATS):
    print("left out (bfloat16 is emulated on this CPU):", sorted(set(roofline.DEFAULT_FORMATS) - set(FORMATS)))
rows = roofline.time_formats(SHAPES, BATCHES, FORMATS, threads=1, rounds=ROUNDS, repeats=3 if LAB_MODE else 5)
print(roofline.format_rows(rows))

# %%
# NBVAL_IGNORE_OUTPUT
# (which kernel comes closest to its roof is a measurement: it can differ between runs and CPUs)
fig = plots.roofline(rows, BW, peak, title="LLaMA-7B's three shapes on this CPU, 1 thread: measured kernels under the roofs")
own = [r["gflops"] / roofline.attainable_gflops(r["intensity"], BW, peak[roofline.COMPUTE_DTYPE[r["format"]]]) for r in rows]
top = max(range(len(rows)), key=own.__getitem__)
print(f"each kernel's share of its own roof (the peak of the arithmetic it uses): median {sorted(own)[len(own) // 2]:.2f}, "
      f"largest {own[top]:.2f} ({rows[top]['format']}, {rows[top]['N']} x {rows[top]['K']}, batch {rows[top]['batch']})")
if own[top] > 1:
    print(f"  above 1: that kernel ran faster than the roof drawn for it, so a ceiling of section 2 was measured too low "
          f"in this run (the bandwidth, or the {roofline.COMPUTE_DTYPE[rows[top]['format']]} peak); read its share as about 1")

# %% [markdown]
# Read the figure from left to right. Each kernel's roof is the memory slope and the flat peak of the
# arithmetic it computes in (fp32, bf16 or int8: `roofline.COMPUTE_DTYPE`); how far below its roof a point
# sits is what the kernel leaves on the table. A share above 1 printed under the figure would mean a ceiling
# was measured too low (the bandwidth test on a disturbed run, say). At batch 1 the intensities are small and
# the sloped memory roof bounds every format: a kernel that streams at bandwidth is separated from the others
# by the bytes it moves, one that does not (it converts, or computes slowly) falls below the slope. As the
# batch grows, the same weights serve more rows, the points move right, and once a kernel passes its ridge
# point fewer bytes no longer buy time. The table's last columns give each format's speed-up against onnxruntime
# fp32 and against the faster of the two fp32 runtimes at the same shape and batch.

# %% [markdown]
# **Predict, then measure.** Your `roofline_ms` from exercise 1 (the library's if your answer is not accepted
# yet) predicts each kernel's least time from its bytes and FLOPs and this machine's ceilings; the ratio
# measured / predicted says how close each kernel comes to what the hardware allows.

# %%
# NBVAL_IGNORE_OUTPUT
predict = checks.mine_or_library(roofline_ms, checks.check_roofline_prediction, roofline.roofline_bound_ms, "roofline_ms")
for r in rows:
    if (r["N"], r["K"]) == (4096, 4096) and r["batch"] in (1, BATCHES[-1]):
        ms = predict(r["bytes"], r["flops"], BW, peak[roofline.COMPUTE_DTYPE[r["format"]]])
        print(f"batch {r['batch']:2d} {r['format']:20s} predicted {ms:7.3f} ms, measured {r['ms']:7.3f} ms "
              f"(measured / predicted {r['ms'] / ms:5.2f})")

# %%
# NBVAL_IGNORE_OUTPUT
by = {(r["N"], r["K"], r["batch"], r["format"]): r for r in rows}
nb = by[4096, 4096, 1, "onnxruntime int4"]
bound = roofline.roofline_bound_ms(nb["bytes"], nb["flops"], BW, peak["int8"])
print(f"MatMulNBits 4096x4096, batch 1: {nb['ms']:.3f} ms, {nb['x_vs_ort_fp32']:.1f}x faster than onnxruntime fp32, "
      f"{nb['x_vs_fastest_fp32']:.1f}x than the fastest fp32; roofline bound {bound:.3f} ms "
      f"({100 * bound / nb['ms']:.0f}% of it reached)")
if "torch int4" in FORMATS:
    ti4 = by[4096, 4096, 1, "torch int4"]
    print(f"PyTorch's int4 kernel at batch 1: {ti4['ms']:.3f} ms = {ti4['x_vs_fastest_fp32']:.2f}x the fastest fp32's speed")
for b in BATCHES:
    r = by[4096, 4096, b, "onnxruntime int4"]
    print(f"batch {b:3d}: MatMulNBits {r['x_vs_ort_fp32']:.2f}x vs onnxruntime fp32, intensity {r['intensity']:.1f} "
          f"FLOP/byte, {r['gflops']:.0f} GFLOP/s")

# %% [markdown]
# ## 4. A format is not a kernel
# Storing weights in 4 bits saves bytes on disk; it saves **time** only if a kernel reads the packed
# weights and computes with them fast enough to keep up with the bytes. Three kernels for the same 4-bit
# format:
# - `MatMulNBits` at `accuracy_level` 0 dequantizes each block to fp32 inside the kernel and multiplies in
#   fp32: few bytes, but a conversion and an fp32 multiply-add per weight;
# - PyTorch's int4 CPU kernel (`aten._weight_int4pack_mm_for_cpu`, behind torchao's int4 weight-only path on
#   CPU) takes bfloat16 activations; with float32 activations it takes a much slower path, so the course
#   feeds it bfloat16 (a CPU without fast bfloat16 arithmetic leaves it out);
# - `MatMulNBits` at level 4 quantizes the activation row to int8 once per block and runs int8 dot
#   products on the unpacked nibbles, in registers.
#
# Which is fastest, and by how much, depends on the CPU's instructions: the lines below say it for yours.
# The price of level 4 is a second, small rounding, of the activations: the `error vs fp32` column includes
# the weight rounding (the same for every 4-bit format) and, in parentheses, the kernel's own.

# %%
# NBVAL_IGNORE_OUTPUT
for f in [f for f in ("onnxruntime fp32", "onnxruntime int8", "onnxruntime int4 L0", "onnxruntime int4", "torch int4")
          if f in FORMATS]:
    r = by[4096, 4096, 1, f]
    print(f"{f:22s} {r['ms']:7.3f} ms  {r['bytes'] / 1e6:6.1f} MB  {r['gbs']:6.1f} GB/s  {r['x_vs_ort_fp32']:5.2f}x vs "
          f"onnxruntime fp32  error vs fp32 {r['err_fp32']:.4f} (kernel alone {r['err_dequant']:.1e})")


# %% [markdown]
# ### Exercise 2: pack 4-bit codes the way `MatMulNBits` reads them
# MIT 6.5940's Lab 5 writes an int4 matrix-vector kernel in C++. The part a kernel author gets wrong most
# often is the layout. `MatMulNBits` stores the codes of each output row in blocks of `block_size`
# consecutive input columns; within a block, byte $j$ holds code $2j$ in its **low** nibble (bits 0 to 3)
# and code $2j+1$ in its **high** nibble. Codes are unsigned, 0 to 15 (the zero point is stored apart).
# Given `codes` (N, K) uint8 and `block_size`, return the uint8 tensor of shape (N, K / block_size,
# block_size / 2).

# %% nbgrader={"grade": false, "grade_id": "pack_nibbles", "locked": false, "schema_version": 3, "solution": true, "task": false}
def pack_nibbles(codes, block_size):
    # Hint: reshape to (N, K / block_size, block_size / 2, 2) so that the last axis holds the pair (2j, 2j + 1).
    # Hint: low | high << 4, computed in a wider integer type, then .to(torch.uint8).
    ### BEGIN SOLUTION
    n, k = codes.shape
    pairs = codes.to(torch.int32).reshape(n, k // block_size, block_size // 2, 2)
    return (pairs[..., 0] | (pairs[..., 1] << 4)).to(torch.uint8)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "check_pack_nibbles", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
checks.check_pack_nibbles(pack_nibbles)


# %% [markdown]
# ### Exercise 3: unpack and dequantize, as the kernel does in registers
# The other half of a 4-bit kernel: read the bytes back into codes and turn them into weights,
# $\hat w = (q - z)\,s$ with one scale $s$ and one zero point $z$ per block of `block_size` input
# columns. Given `packed` (N, K / block_size, block_size / 2) uint8 in the layout above, `scales`
# (N, K / block_size) float and `zeros` (N, K / block_size) integers in [0, 15], return the (N, K) float
# weight. (`MatMulNBits` also packs the zero points two per byte; here they come unpacked.)

# %% nbgrader={"grade": false, "grade_id": "unpack_dequantize", "locked": false, "schema_version": 3, "solution": true, "task": false}
def unpack_dequantize(packed, scales, zeros, block_size):
    # Hint: low = packed & 15 and high = packed >> 4 (in a wider integer type); stack them on a new last axis.
    # Hint: reshape to (N, K), then expand scales and zeros to (N, K) with repeat_interleave(block_size, dim=1).
    ### BEGIN SOLUTION
    b = packed.to(torch.int32)
    codes = torch.stack([b & 15, b >> 4], dim=-1).reshape(packed.shape[0], -1).float()
    z = zeros.float().repeat_interleave(block_size, 1)
    return (codes - z) * scales.float().repeat_interleave(block_size, 1)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "check_unpack_dequantize", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
checks.check_unpack_dequantize(unpack_dequantize)

# %% [markdown]
# The library's `Q.pack_matmulnbits` does the same for the codes and the zero points; the tests check it
# byte for byte against onnxruntime's own packer. Here, the proof that the layout is right: your bytes
# equal the library's for the codes of a round-to-nearest 4-bit weight, your unpacking gives back its
# dequantized weight, and onnxruntime, given those bytes, computes the same product as that weight does in
# float64 (`accuracy_level` 0: no
# activation rounding, so only float32 round-off remains).

# %%
g = torch.Generator().manual_seed(SEED)
w = torch.randn(256, 512, generator=g) / math.sqrt(512)
w_hat, codes, scales, zeros = Q.rtn_quantize(w, bits=4, group_size=128)
_, zp = Q.pack_matmulnbits(codes, zeros, 128)
run = deploy.linear_runner(deploy.matmulnbits_model(codes, scales, zeros, 128, accuracy_level=0))
x = torch.randn(3, 512, generator=g)
y = torch.from_numpy(run(x)).double()
pack = checks.mine_or_library(pack_nibbles, checks.check_pack_nibbles, checks.reference_pack_nibbles, "pack_nibbles")
unpack = checks.mine_or_library(unpack_dequantize, checks.check_unpack_dequantize, checks.reference_unpack_dequantize,
                                "unpack_dequantize")
print("the packing equals the library's:", torch.equal(pack(codes, 128), Q.pack_matmulnbits(codes, zeros, 128)[0]))
print("unpacking gives back the dequantized weight:", torch.allclose(unpack(pack(codes, 128), scales, zeros, 128), w_hat, atol=1e-6))
print(f"onnxruntime's 4-bit output vs float64 x @ w_hat.T: max abs difference {float((y - x.double() @ w_hat.double().T).abs().max()):.1e}")

# %% [markdown]
# ## 5. A language model to quantize
# The course ships a small **character-level causal transformer** that it trained itself
# (`scripts/train_lm.py`, deterministic) on a fixed selection of the Python standard library's own source
# code (PSF licence; `data/README.md` gives the provenance, the Python version and the checksums). Its
# weights ship in `data/tiny_lm.safetensors` in float16, loaded without unpickling and verified against
# their SHA-256; the model computes in float32. The held-out split is made of *other files* of the
# standard library: it is never used for training or calibration.
#
# **What it is and is not.** It has a few million parameters; the models of MIT's Lab 4 have 1.3 billion
# and LLaMA-7B seven billion. Billion-parameter transformers grow a few activation channels with huge
# magnitudes (Dettmers et al. 2022, "LLM.int8()"), and AWQ's and SmoothQuant's gains come from them. A tiny
# model trained briefly may have milder outliers, so read its numbers as a demonstration of the methods
# and of how to evaluate them, not as a forecast of what they do at scale.

# %%
model, tok = lm.load_lm()
cfg = model.cfg
NAMES = [n for n in lm.linear_names(model) if n != "head"]  # the output head stays in float, as in GPTQ and AWQ
print(cfg)
print(f"parameters: {sum(p.numel() for p in model.parameters()):,}; linear layers quantized: {len(NAMES)}; "
      f"their weights: {sum(model.get_submodule(n).weight.numel() for n in NAMES):,}")
print("in_features of the quantized layers:", sorted({model.get_submodule(n).in_features for n in NAMES}))

# %% [markdown]
# ## 6. Perplexity, done properly
# A language model assigns a probability to each next character. On held-out text $x_1, \dots, x_T$ the
# mean negative log-likelihood and the perplexity are
# $$\mathrm{NLL} = -\frac{1}{T}\sum_{t} \log p(x_t \mid x_{<t}),\qquad \mathrm{PPL} = e^{\mathrm{NLL}} .$$
# A perplexity of $k$ means the model is as unsure as a fair choice among $k$ characters; a uniform guess
# over the 96-character vocabulary scores 96. Per character, $\log_2 \mathrm{PPL}$ is the bits per
# character a compressor built on the model would need.
#
# **Its interval.** Characters are not independent draws (a misread identifier costs several in a row),
# and neither are the chunks of one file (one module's names and style). We score chunks of 256 characters,
# each with its own context, spread evenly over the held-out text, and the percentile bootstrap resamples
# **files** (all chunks of a drawn file together: the cluster bootstrap), which gives the interval of the
# mean NLL, hence of the perplexity. Two models scored on the **same** chunks are compared by a paired
# bootstrap of their per-chunk differences, again resampling files: much tighter than two separate
# intervals, because what the two models share cancels.
#
# **Why a tenth can matter.** NLL is a mean log-loss: a perplexity 1% higher means 0.01 nats more per
# character on average, spread over every prediction. For large language models, quantization papers
# report WikiText-2 perplexity to two decimals because differences of a few tenths go with measurable
# losses on downstream tasks.

# %%
heldout_ids = tok.encode(lm.load_corpus("heldout"))
all_chunks = lm.token_chunks(heldout_ids, cfg.context)
eval_chunks = lm.eval_chunks(tok, EVAL_CHUNKS, cfg.context)  # spread evenly over the held-out files
FILES = lm.eval_chunk_files(EVAL_CHUNKS, cfg.context)        # the file each chunk comes from: the bootstrap's unit
calib = lm.calibration_batch(lm.CALIB_CHUNKS, cfg.context, seed=SEED)  # training text only
nll = {"fp32": lm.chunk_nll(model, eval_chunks)}
ppl_fp32 = lm.perplexity_interval(nll["fp32"], groups=FILES)
uni = lm.unigram_nll(lm.load_corpus("train"), eval_chunks)
print(f"held-out text: {len(heldout_ids):,} characters in {len(all_chunks)} chunks; {EVAL_CHUNKS} scored, "
      f"from {FILES.unique().numel()} files")
print(f"calibration: {calib.shape[0]} chunks of {calib.shape[1]} characters from the training split")
print(f"fp32 perplexity {ppl_fp32[0]:.3f} [{ppl_fp32[1]:.3f}, {ppl_fp32[2]:.3f}] "
      f"({math.log2(ppl_fp32[0]):.2f} bits per character); unigram baseline {lm.perplexity(uni):.2f}")

# %% [markdown] tags=["theory"]
# ## 7. RTN, GPTQ and AWQ at 8, 4 and 3 bits
# All three store, for each output row and each **group** of $g$ consecutive input columns, a scale $s$
# and a zero point $z$, and codes $q \in \{0, \dots, 2^b-1\}$ with $\hat w = (q - z)\,s$: the format that
# `MatMulNBits` runs at 4 bits. They differ in how they choose the codes, using calibration text (32
# chunks of the **training** split):
# - **RTN** rounds every weight to the nearest level of its group's min-max grid. No data.
# - **GPTQ** (Frantar et al. 2023; chapter 6) quantizes the columns one at a time and moves each
#   column's rounding error onto the columns not yet quantized, weighted by the inverse Hessian
#   $H = X^\top X$ of the layer's calibration inputs, minimising $\lVert XW^\top - X\hat W^\top\rVert^2$.
# - **AWQ** (Lin et al. 2024) keeps plain rounding but first multiplies each input channel $j$ of $W$
#   by $s_j = m_j^{\alpha}$ (and divides the input by it: a deployment folds that into the previous LayerNorm
#   or linear layer, and where a nonlinearity such as GELU stands in between, AWQ's code inserts a
#   per-channel scaling before the layer), where $m_j$ is the channel's typical activation magnitude. A channel
#   scaled up gets a relatively finer grid; the exponent $\alpha \in [0, 1)$ is searched per layer to
#   minimise the same output error ($\alpha = 0$ is RTN). Then, as AWQ's reference code does, a **clipping**
#   search: for each row and group, shrink the range to $r \cdot \max|w|$ ($r$ in 20 steps from 1 down to just above 0.5) where
#   that lowers the group's share of the output error. A narrower range means finer steps for the many
#   ordinary weights at the price of clipping the few largest.
#
# Both data-driven methods here are the non-sequential variants: every layer's $H$ comes from the fp32
# model's activations. The output head (96 outputs) stays in float, as GPTQ and AWQ leave it. Smaller
# groups cost more bytes: a scale of $a$ bits and a zero point of $c$ bits per group add $(a + c)/g$ bits per
# weight. The course's saved artifact uses float16 scales and uint8 zero points, $24/g$: 0.19 at $g = 128$,
# 0.75 at $g = 32$; `MatMulNBits` keeps float32 scales and 4-bit zero points, $36/g$.

# %%
# NBVAL_IGNORE_OUTPUT
# (the verdicts printed here are checked by the assertion cell; a borderline one may differ on another CPU)
hessians = Q.collect_hessians(model, calib, NAMES)
BITS, GROUPS, METHODS = (8, 4, 3), (128, 32), ("rtn", "gptq", "awq")
qmodels = {}
for bits in BITS:
    for group in GROUPS:
        for method in METHODS:
            qm, packed = Q.quantize_weights(model, method, bits, group, hessians=hessians, names=NAMES)
            nll[f"w{bits}-{method}-g{group}"] = lm.chunk_nll(qm, eval_chunks)
            if group == 128 and bits in (4, 3):
                qmodels[bits, method] = (qm, packed)


def ppl_cell(key):
    p, lo, hi = lm.perplexity_interval(nll[key], groups=FILES)
    return f"{p:6.3f} [{lo:.3f}, {hi:.3f}]"


SAID = {"lower": "better than", "higher": "worse than", "indistinguishable": "indistinguishable from"}


def versus(key, ref):
    """Paired bootstrap over chunks of the NLL difference, as a relative change of perplexity."""
    c = stats.paired_bootstrap_diff(nll[key], nll[ref], groups=FILES)
    return c, f"{100 * math.expm1(c['diff']):+5.1f}% [{100 * math.expm1(c['ci'][0]):+.1f}, {100 * math.expm1(c['ci'][1]):+.1f}]"


print(f"perplexity on {EVAL_CHUNKS} held-out chunks, 95% bootstrap interval over files; fp32 {ppl_cell('fp32')}")
print(f"{'bits':>4s} {'group':>5s} | " + " | ".join(f"{m:^24s}" for m in METHODS) + " | GPTQ vs RTN, AWQ vs RTN (paired)")
verdicts = {}
for bits in BITS:
    for group in GROUPS:
        keys = {m: f"w{bits}-{m}-g{group}" for m in METHODS}
        comp = {m: versus(keys[m], keys["rtn"]) for m in ("gptq", "awq")}
        verdicts.update({(bits, group, m): c for m, (c, _) in comp.items()})
        print(f"{bits:4d} {group:5d} | " + " | ".join(ppl_cell(keys[m]) for m in METHODS) + " | "
              + ", ".join(f"{txt} {c['verdict']}" for c, txt in comp.values()))

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), sharey=True)
for ax, group in zip(axes, GROUPS):
    for i, method in enumerate(METHODS):
        # the change of perplexity against fp32 on the same chunks, with its paired interval (files resampled)
        cs = [stats.paired_bootstrap_diff(nll[f"w{b}-{method}-g{group}"], nll["fp32"], groups=FILES) for b in BITS]
        mid = [100 * math.expm1(c["diff"]) for c in cs]
        ax.errorbar([b + 0.08 * (i - 1) for b in BITS], mid,
                    yerr=[[m - 100 * math.expm1(c["ci"][0]) for m, c in zip(mid, cs)],
                          [100 * math.expm1(c["ci"][1]) - m for m, c in zip(mid, cs)]], marker="o", capsize=3, label=method)
    ax.axhline(0, color="k", ls=":", label="fp32")
    ax.set(xlabel="bits per weight", title=f"groups of {group}", xticks=BITS)
axes[0].set_ylabel("perplexity vs fp32 (%), paired")
axes[0].legend()
fig.suptitle("weight-only quantization of the small language model: the cost in perplexity")
fig.tight_layout()

# %% [markdown]
# Each point is a model's perplexity change against fp32 measured on the same chunks, with its paired
# interval: usually much narrower than the intervals of the perplexities alone in the table, because what
# both models find hard cancels. At 8 bits every method should stay within a fraction of a percent of fp32;
# the methods separate where rounding is coarse.

# %% [markdown]
# ### Does the calibration draw matter?
# GPTQ and AWQ fit their codes to 32 chunks of training text drawn at random; another draw gives other codes.
# The course's protocol asks for at least three draws of the randomness a method adds before a headline
# number: the 4- and 3-bit, group-128 models again with two more calibration seeds (lab mode: one).

# %%
# NBVAL_IGNORE_OUTPUT
CALIB_SEEDS = [SEED] if LAB_MODE else [SEED, SEED + 1, SEED + 2]
seed_nll = {}
for cs in CALIB_SEEDS:
    h = hessians if cs == SEED else Q.collect_hessians(model, lm.calibration_batch(lm.CALIB_CHUNKS, cfg.context, seed=cs), NAMES)
    for bits in (4, 3):
        for method in ("gptq", "awq"):
            key = f"w{bits}-{method}-g128"
            seed_nll[key, cs] = nll[key] if cs == SEED else lm.chunk_nll(
                Q.quantize_weights(model, method, bits, 128, hessians=h, names=NAMES)[0], eval_chunks)
headline = {}
for bits in (4, 3):
    for method in ("gptq", "awq"):
        key = f"w{bits}-{method}-g128"
        rels = [100 * (lm.perplexity(seed_nll[key, cs]) / ppl_fp32[0] - 1) for cs in CALIB_SEEDS]
        vs_rtn = [stats.paired_bootstrap_diff(seed_nll[key, cs], nll[f"w{bits}-rtn-g128"], groups=FILES)["verdict"]
                  for cs in CALIB_SEEDS]
        headline[key] = {"rel": stats.seed_summary(rels), "vs_rtn": vs_rtn}
        print(f"{key}: perplexity vs fp32 per calibration seed " + ", ".join(f"{r:+.2f}%" for r in rels)
              + f" (mean {headline[key]['rel']['mean']:+.2f}%); vs RTN, paired: {', '.join(vs_rtn)}")

# %% [markdown] tags=["theory"]
# ## 8. MIT Lab 4's ablation: which 1% of the weights matter?
# AWQ starts from an observation (Lin et al. 2024, section 2.1): keeping just 1% of the weights in float,
# chosen as the input channels with the largest **activations**, recovers most of the quality lost by
# 3-bit RTN, while 1% chosen at random does little. Mixed precision is awkward for a kernel, so AWQ
# **scales** those channels up instead (the grid gets finer for them), and finally searches the scale.
# We repeat the lab's steps at 3 bits, groups of 128: RTN; the salient 1% kept in float; a random 1% kept
# in float (3 draws); the salient 1% scaled by 2 and by 4; the searched scales alone; the searched scales
# and clipping (AWQ as in section 7). First in perplexity, then layer by layer in output error on the
# held-out text, where smaller effects show.

# %%
# NBVAL_IGNORE_OUTPUT
mag = {n: Q.activation_magnitude(hessians[n]) for n in NAMES}
salient = {n: Q.salient_channels(mag[n], 0.01) for n in NAMES}
print("salient channels per layer:", sorted({int(m.sum()) for m in salient.values()}),
      "| top-1% / median activation magnitude, per layer:",
      " ".join(f"{float(mag[n][salient[n]].mean() / mag[n].median()):.1f}" for n in NAMES))
ablation = {
    "RTN": nll["w3-rtn-g128"],
    "salient 1% kept in float": lm.chunk_nll(Q.replace_weights(
        model, lambda n, w: Q.rtn_keep_channels(w, salient[n], 3, 128), NAMES), eval_chunks),
}
for seed in range(3):
    rnd = {n: Q.salient_channels(mag[n], 0.01, random=True, seed=seed) for n in NAMES}
    ablation[f"random 1% kept in float (draw {seed})"] = lm.chunk_nll(Q.replace_weights(
        model, lambda n, w: Q.rtn_keep_channels(w, rnd[n], 3, 128), NAMES), eval_chunks)
for factor in (2.0, 4.0):
    ablation[f"salient 1% scaled by {factor:g}"] = lm.chunk_nll(Q.replace_weights(
        model, lambda n, w: Q.rtn_scaled_channels(w, salient[n], factor, 3, 128), NAMES), eval_chunks)
ablation["AWQ: scales searched, no clipping"] = lm.chunk_nll(Q.replace_weights(
    model, lambda n, w: Q.awq_quantize(w, hessians[n], 3, 128, clip=False)[0], NAMES), eval_chunks)
ablation["AWQ: scales and clipping searched"] = nll["w3-awq-g128"]
abl_verdict = {}
for name, v in ablation.items():
    nll[f"ablation: {name}"] = v
    c, txt = versus(f"ablation: {name}", "w3-rtn-g128") if name != "RTN" else (None, "")
    abl_verdict[name] = c
    print(f"{name:36s} perplexity {ppl_cell(f'ablation: {name}')}  " + (f"vs RTN {txt} {c['verdict']}" if c else ""))

# %%
# the same variants, one layer at a time: output error relative to RTN's, on the HELD-OUT chunks (AWQ searched
# its scales and clipping on the calibration text; judging it there would flatter it)
held_h = Q.collect_hessians(model, eval_chunks, NAMES)
variants = {
    "salient 1% in float": lambda n, w: Q.rtn_keep_channels(w, salient[n], 3, 128),
    "random 1% in float": lambda n, w: Q.rtn_keep_channels(w, Q.salient_channels(mag[n], 0.01, random=True, seed=0), 3, 128),
    "salient 1% x2": lambda n, w: Q.rtn_scaled_channels(w, salient[n], 2.0, 3, 128),
    "AWQ, no clipping": lambda n, w: Q.awq_quantize(w, hessians[n], 3, 128, clip=False)[0],
    "AWQ": lambda n, w: Q.awq_quantize(w, hessians[n], 3, 128)[0],
}
layer_err = {k: [] for k in variants}
for n in NAMES:
    w = model.get_submodule(n).weight
    base_err = Q.output_error(w, Q.rtn_quantize(w, 3, 128)[0], held_h[n])
    for k, f in variants.items():
        layer_err[k].append(Q.output_error(w, f(n, w), held_h[n]) / base_err)
fig, ax = plt.subplots(figsize=(10, 3.2))
for i, (k, v) in enumerate(layer_err.items()):
    ax.plot(range(len(NAMES)), v, "o-", label=k, color=f"C{i}")
ax.axhline(1.0, color="k", ls=":", label="RTN")
ax.set_xticks(range(len(NAMES)), [n.replace("blocks.", "") for n in NAMES], rotation=60, fontsize=7)
ax.set_ylabel("output error / RTN's")
ax.set_title("3 bits, groups of 128: each layer's output error on held-out text, relative to RTN")
ax.legend(fontsize=7, ncol=3)
fig.tight_layout()
wins = sum(a < b for a, b in zip(layer_err["salient 1% in float"], layer_err["random 1% in float"]))
print(f"salient 1% in float beats random 1% in {wins} of {len(NAMES)} layers; median error vs RTN: "
      + ", ".join(f"{k} {sorted(v)[len(v) // 2]:.2f}" for k, v in layer_err.items()))

# %% [markdown]
# **What this model shows, and why.** Compare the two printed lines above with MIT's Lab 4: there, on
# OPT-1.3B, 3-bit RTN destroys the model and keeping the salient 1% in float restores most of it. Here the
# ordering can be checked layer by layer (salient against random, scaled against kept), and the size of each
# effect in perplexity. The size depends on how extreme the salient channels are: the first line of the
# ablation printed the ratio of the top 1% to the median activation magnitude in each layer. Billion-parameter
# models have channels tens of times larger than the rest; a tiny model trained briefly may have milder ones.
# Then protecting 1% of the channels has little to protect, scaling them up can widen their groups' ranges
# more than it refines their steps, and whatever AWQ gains must come from elsewhere: compare "AWQ, no
# clipping" with "AWQ" above. The verdicts are printed, and summarised in section 11, from this run.

# %% [markdown]
# ## 9. Generation, on a real 4-bit kernel
# So far the quantized models were **simulated**: their weights hold the dequantized values in float32,
# which gives the quality of a 4-bit model but the speed of fp32. Now the 4-bit GPTQ model's own codes,
# scales and zero points go into `MatMulNBits` (section 4), one onnxruntime session per linear layer
# (`deploy.ort_int4_linears`), and the model runs on them. Its perplexity must match the simulated
# model's up to the kernel's int8 rounding of the activations.
#
# Then all three generate from the same prompt with the same seed, one character at a time with a
# key-value cache (each step feeds one new character: batch 1, the decoding regime of section 2),
# timed interleaved on one thread.

# %%
gptq4, gptq4_packed = qmodels[4, "gptq"]
real4 = deploy.ort_int4_linears(model, gptq4_packed, 128, accuracy_level=4)
nll["w4-gptq-g128 on MatMulNBits"] = lm.chunk_nll(real4, eval_chunks)
c_real, txt_real = versus("w4-gptq-g128 on MatMulNBits", "w4-gptq-g128")
print(f"4-bit GPTQ perplexity: simulated {ppl_cell('w4-gptq-g128')}, on MatMulNBits {ppl_cell('w4-gptq-g128 on MatMulNBits')}")
print(f"the kernel's own effect (paired, same chunks): {txt_real}")

# %%
# NBVAL_IGNORE_OUTPUT
PROMPT, N_GEN = "def ", 32 if LAB_MODE else 64
generators = {"fp32": model, "4-bit GPTQ, simulated": gptq4, "4-bit GPTQ on MatMulNBits": real4}
for name, m in generators.items():
    print(f"--- {name}\n{PROMPT}{lm.generate(m, tok, PROMPT, 160, temperature=0.8, seed=SEED)}\n")
timed = {k: m for k, m in generators.items() if k != "4-bit GPTQ, simulated"}  # the simulated model computes as fp32 does
gen_ms = measure.compare_latency({k: (lambda m=m: lm.generate(m, tok, PROMPT, N_GEN, seed=SEED)) for k, m in timed.items()},
                                 None, rounds=ROUNDS, repeats=2)
tok_s = {k: N_GEN / (v / 1e3) for k, v in gen_ms.items()}
print("tokens per second, batch 1, 1 thread: " + ", ".join(f"{k} {v:.0f}" for k, v in tok_s.items()))
fp32_mb = sum(model.get_submodule(n).weight.numel() for n in NAMES) * 4 / 1e6
print(f"the quantized layers' weights: {fp32_mb:.1f} MB in fp32; last-level cache: "
      + (f"{llc / 1e6:.1f} MB" if llc else "unknown"))

# %% [markdown]
# Compare the weights' size with the cache printed above. When a model's weights fit in the last-level
# cache, decoding does not stream them from DRAM, and each step of this tiny model is mostly per-call
# overhead (Python, PyTorch, one onnxruntime call per layer): fewer bytes then buy little or nothing, and the
# 4-bit kernel's extra work per call can even make the 4-bit model slower (compare the printed tokens per second). The
# bytes decide when the weights are far larger than the cache, as for every real language model; the next
# section measures that regime directly.
#
# ## 10. One decoder layer of a 7B-class model on this CPU, and a projection
# LLaMA-7B has 32 decoder layers; each has seven linear layers (q, k, v, o: $4096\times4096$; gate and up:
# $11008\times4096$; down: $4096\times11008$), 202M weights, about 810 MB in fp32. We time the seven matrix-vector
# products of one layer with random weights in each format (batch 1, one thread, interleaved, weights
# streamed from DRAM), and **project** tokens per second for 32 layers as $1/(32\,t_{\text{layer}})$, next
# to the bandwidth bound $\text{bandwidth} / (32 \times \text{bytes per layer})$. A projection, not a
# measurement of a model: attention over the key-value cache, embeddings, norms and sampling are left out.

# %%
# NBVAL_IGNORE_OUTPUT
LAYER_FORMATS = (("onnxruntime fp32", "onnxruntime int4") if LAB_MODE else
                 tuple(f for f in ("torch fp32", "onnxruntime fp32", "onnxruntime int8", "onnxruntime int4",
                                   "onnxruntime int4 L0", "torch int4") if f in FORMATS))
layer = roofline.decoder_layer_ms(LAYER_FORMATS, rounds=ROUNDS, repeats=3 if LAB_MODE else 5)
proj = {f: (roofline.project_tokens_per_s(r["ms"]), roofline.bandwidth_bound_tokens_per_s(r["bytes"], BW))
        for f, r in layer.items()}
for f, r in layer.items():
    print(f"{f:22s} layer {r['ms']:6.1f} ms, {r['bytes'] / 1e6:6.0f} MB, {r['gbs']:5.1f} GB/s -> projected "
          f"{proj[f][0]:5.2f} tokens/s (bandwidth bound {proj[f][1]:5.2f})")

# %%
fig, ax = plt.subplots(figsize=(8, 3))
ys = range(len(proj))
ax.barh(ys, [p[1] for p in proj.values()], color="lightgray", label="bandwidth bound")
ax.barh(ys, [p[0] for p in proj.values()], color="C0", height=0.5, label="projected from the measured layer")
ax.set_yticks(list(ys), list(proj))
ax.set_xlabel("tokens per second, 32 layers, 1 thread (projection)")
ax.legend(loc="lower right")
ax.set_title("LLaMA-7B-shaped decoder layer on this CPU")
fig.tight_layout()

# %% [markdown]
# ## 11. Results
# One record per model (`build/results/07_llm_weight_quantization.json`). Here `accuracy` is the
# **next-character accuracy** on the held-out chunks (the `metric` field says so), with its interval from
# the bootstrap over chunks; `perplexity` and `perplexity_ci` (bootstrap over chunks) are the chapter's main
# measure (the text above quotes the wider intervals over files); `macs` the
# linear-layer multiply-accumulates per generated character; `size_bytes` the saved artifact (the fp32 state
# dict, or the packed 4-bit artifact: two codes per byte, float16 scales, uint8 zero points; 3-bit codes
# stored in 4-bit containers); `latency_ms` the time per generated character at batch 1 (`None` where not
# timed: a simulated model computes exactly as fp32 does). There is no from-scratch control here: a smaller
# language model trained to the same bytes would say whether quantizing this one beats training a smaller
# one; the sizes say only what quantization saves.

# %%
ms_per_token = {k: v / N_GEN for k, v in gen_ms.items()}
R = dict(chunks=eval_chunks)
recs = [lm.record("baseline", model, **R, nll=nll["fp32"], size_bytes=measure.serialized_bytes(model),
                  latency_ms=ms_per_token["fp32"], weight_bits=32, method="fp32 (shipped as float16)")]
for bits in (4, 3):
    for method in METHODS:
        qm, packed = qmodels[bits, method]
        recs.append(lm.record(f"w{bits}-{method}-g128", qm, **R, nll=nll[f"w{bits}-{method}-g128"],
                              size_bytes=Q.int4_bytes(qm, packed), weight_bits=bits,
                              latency_ms=None, method=f"{method}, group 128, simulated"))
recs.append(lm.record("w4-gptq-g128-matmulnbits", real4, **R, nll=nll["w4-gptq-g128 on MatMulNBits"],
                      size_bytes=Q.int4_bytes(gptq4, gptq4_packed), weight_bits=4, macs=lm.linear_macs_per_token(model),
                      latency_ms=ms_per_token["4-bit GPTQ on MatMulNBits"],
                      method="gptq, group 128, onnxruntime MatMulNBits accuracy_level 4"))
print(records.format_table(recs, columns=("name", "accuracy", "perplexity", "size_bytes", "params", "macs",
                                          "latency_ms", "weight_bits", "method")))
path = records.write_results("07_llm_weight_quantization", recs, lab_mode=LAB_MODE)


# %% [markdown]
# **Reading the results**, printed from this run:

# %%
# NBVAL_IGNORE_OUTPUT
def rel(key):
    return 100 * (lm.perplexity(nll[key]) / ppl_fp32[0] - 1)


kern = {b: by[4096, 4096, b, "onnxruntime int4"]["x_vs_ort_fp32"] for b in BATCHES}
fast4 = proj.get("onnxruntime int4", (float("nan"),))[0]
fp32p = max(proj[f][0] for f in ("torch fp32", "onnxruntime fp32") if f in proj)  # the fastest fp32
print(f"- The fp32 model predicts held-out Python at perplexity {ppl_fp32[0]:.2f} per character, against "
      f"{lm.perplexity(uni):.1f} for character frequencies alone.")
print(f"- 4 bits, groups of 128: RTN {rel('w4-rtn-g128'):+.1f}%, GPTQ {rel('w4-gptq-g128'):+.1f}%, "
      f"AWQ {rel('w4-awq-g128'):+.1f}% perplexity against fp32; at 3 bits RTN {rel('w3-rtn-g128'):+.1f}%, "
      f"GPTQ {rel('w3-gptq-g128'):+.1f}% ({SAID[verdicts[3, 128, 'gptq']['verdict']]} RTN, paired), "
      f"AWQ {rel('w3-awq-g128'):+.1f}% ({SAID[verdicts[3, 128, 'awq']['verdict']]} RTN).")
print(f"- Lab 4's ablation at 3 bits, in perplexity: the salient 1% kept in float is "
      f"{SAID[abl_verdict['salient 1% kept in float']['verdict']]} RTN, a random 1% (draw 0) "
      f"{SAID[abl_verdict['random 1% kept in float (draw 0)']['verdict']]} RTN; scaling the salient 1% by 2 is "
      f"{SAID[abl_verdict['salient 1% scaled by 2']['verdict']]} RTN. Layer by layer, salient beats random in {wins} of "
      f"{len(NAMES)} layers (median output error {sorted(layer_err['salient 1% in float'])[len(NAMES) // 2]:.2f}x RTN's); "
      f"AWQ's scales alone {sorted(layer_err['AWQ, no clipping'])[len(NAMES) // 2]:.2f}x, with clipping "
      f"{sorted(layer_err['AWQ'])[len(NAMES) // 2]:.2f}x.")
print(f"- The 4-bit kernel: MatMulNBits at 4096 x 4096 is "
      + ", ".join(f"{x:.1f}x (batch {b})" for b, x in kern.items())
      + " faster than onnxruntime fp32" + (f"; PyTorch's int4 kernel {by[4096, 4096, 1, 'torch int4']['x_vs_fastest_fp32']:.1f}x "
                                          "the fastest fp32 at batch 1." if "torch int4" in FORMATS else "."))
print(f"- Over {len(CALIB_SEEDS)} calibration seed(s), 4-bit GPTQ is {headline['w4-gptq-g128']['rel']['mean']:+.2f}% and "
      f"AWQ {headline['w4-awq-g128']['rel']['mean']:+.2f}% from fp32 on average.")
print(f"- Projected for a 32-layer 7B-class model on one core: {fp32p:.2f} tokens/s in fp32, {fast4:.2f} in 4 bits.")

# %% [markdown] tags=["theory"]
# ## 12. Checks
# Invariants everywhere; the chapter's targets asserted in the full run (reported in lab mode): 4-bit
# group-128 GPTQ and AWQ within 5% of fp32 perplexity (mean over the calibration seeds); at 3 bits both better
# than RTN beyond the paired interval for every calibration seed; 8 bits within 1% of fp32; the model on the
# real 4-bit kernel as good as the simulated one. Speed: the strict target (`MatMulNBits` at least 6x faster than onnxruntime fp32 at batch 1 and at
# least half the bandwidth bound) is printed below and verified by `make bench`; the assertion only checks a
# sanity floor at half the target.

# %%
# NBVAL_IGNORE_OUTPUT
x1 = by[4096, 4096, 1, "onnxruntime int4"]["x_vs_ort_fp32"]
frac = bound / nb["ms"]
print(f"MatMulNBits vs onnxruntime fp32, batch 1: {x1:.2f}x (target 6x: {'met' if x1 >= 6 else 'MISSED'}); "
      f"{100 * frac:.0f}% of the bandwidth bound (target 50%: {'met' if frac >= 0.5 else 'MISSED'})")

# %%
assert all(model.get_submodule(n).in_features % 128 == 0 for n in NAMES)
assert eval_chunks.shape == (EVAL_CHUNKS, cfg.context) and calib.shape == (lm.CALIB_CHUNKS, cfg.context)
assert ppl_fp32[0] < lm.perplexity(uni) / 2, "the model should beat character frequencies by far"
for method in METHODS:
    assert abs(rel(f"w8-{method}-g128")) < 1.0, f"8-bit {method} should stay within 1% of fp32"
assert abs(rel("w4-gptq-g128 on MatMulNBits") - rel("w4-gptq-g128")) < 2.0, "the real kernel should match the simulation"
assert all(r["size_bytes"] < 0.35 * recs[0]["size_bytes"] for r in recs[1:]), "4-bit artifacts should be far smaller"
report_targets({
    "4-bit g128 GPTQ within 5% of fp32 perplexity (mean over calibration seeds)": headline["w4-gptq-g128"]["rel"]["mean"] <= 5.0,
    "4-bit g128 AWQ within 5% of fp32 perplexity (mean over calibration seeds)": headline["w4-awq-g128"]["rel"]["mean"] <= 5.0,
    "3-bit g128 GPTQ better than RTN beyond the paired interval, every seed": set(headline["w3-gptq-g128"]["vs_rtn"]) == {"lower"},
    "3-bit g128 AWQ better than RTN beyond the paired interval, every seed": set(headline["w3-awq-g128"]["vs_rtn"]) == {"lower"},
}, asserted=not LAB_MODE)
lab4 = {"MIT Lab 4's ablation in perplexity: the salient 1% kept in float better than RTN and than a random 1% "
        "(reported, not asserted: section 8 discusses why it may not reproduce on a model this small)":
        abl_verdict["salient 1% kept in float"]["verdict"] == "lower"
        and stats.paired_bootstrap_diff(ablation["salient 1% kept in float"],
                                        torch.stack([ablation[f"random 1% kept in float (draw {i})"] for i in range(3)]).mean(0),
                                        groups=FILES)["verdict"] == "lower"}
report_targets(lab4, asserted=False)
if not LAB_MODE:  # timings from few rounds are too noisy to assert in lab mode
    assert x1 >= 3.0, f"MatMulNBits only {x1:.2f}x faster than onnxruntime fp32 at batch 1 (sanity floor 3x)"
print("all checks passed")
