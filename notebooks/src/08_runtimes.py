# %% [markdown]
# # 08 · One model, every runtime: the PyTorch stack of today and why yours may be slower
#
# **Learning goals**
# - run the quantization path PyTorch now recommends, **torchao's PT2E**: `torch.export`, `prepare_pt2e` with
#   `X86InductorQuantizer`, calibration, `convert_pt2e`, then `torch.compile` with freezing, and see where it
#   breaks on this install;
# - deploy **one model to every runtime** that installs beside the course's torch (PyTorch eager and
#   channels-last, `torch.compile`, torchao PT2E, onnxruntime, OpenVINO with NNCF, ExecuTorch with XNNPACK),
#   fp32 and int8, and compare them in **one interleaved measurement**: latency at batch 1 and 64, agreement
#   with PyTorch fp32, file size, and how much each runtime weighs once installed;
# - diagnose **why int8 is slow on a given CPU**: its instruction set (VNNI, AMX, ARM dot product), oneDNN
#   limited to an older instruction set in a subprocess, and onnxruntime's per-operator profile;
# - use torchao's own API: `quantize_` on linear layers (MiniLM) against `torch.ao`'s `quantize_dynamic`,
#   quantization-aware training with `QATConfig`, and a config that takes convolutions.
#
# **Run time:** about three minutes on a 2-core laptop CPU the first time (compiling and lowering take most
# of it; compiled kernels and lowered programs are cached in `build/cache/`, so later runs take under two minutes);
# lab mode about half (docs/timings.md lists measured times). Nothing here needs a GPU.

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
SEED = 0
EPOCHS = 2           # epochs of torchao QAT and of its fine-tuning control (section 9)
DEVICE = None        # everything is measured on the CPU (the point of the chapter)
LAB_MODE = None      # True: the baseline only, one seed, fewer rounds (None: $COURSE_LAB_MODE, else False)

# %% [markdown]
# ## 1. Set-up: the environment and the runtimes' versions
# Every latency in this chapter is single-thread (the course's protocol), so the ranking says what one
# core of this CPU does with each runtime.

# %%
# NBVAL_IGNORE_OUTPUT
import time
import warnings
from importlib import metadata

import matplotlib.pyplot as plt
import torch
from IPython.display import Markdown, display

from course_lib import bert, checks, deploy, measure, recipes, records, runtimes as R, stats
from course_lib import quantization as Q
from course_lib.data import load_dataset
from course_lib.env import data_note, lab_mode, lab_note, report_targets, start_chapter, targets_asserted
from course_lib.training import cache_dir, evaluate, load_baseline

env, device = start_chapter(SEED, DEVICE, cpu_threads=1)
T_START = time.perf_counter()
LAB_MODE = lab_mode(LAB_MODE)
SEEDS = recipes.SEEDS[:1] if LAB_MODE else recipes.SEEDS
EPOCHS = min(EPOCHS, 1) if LAB_MODE else EPOCHS
ROUNDS, REPEATS = (2, 5) if LAB_MODE else (3, 10)
lab_note(LAB_MODE, cuts=f"the baseline only (not chapter 5's latency model), {ROUNDS} timing rounds, one seed and "
         f"{EPOCHS} epoch for QAT, no instruction-set re-timing", less_reliable="the latencies and the QAT comparison")
ART = records.artifacts_dir("08_runtimes")
CACHE = cache_dir() / "runtimes"   # compiled kernels and lowered programs, reused by the next run
for name, v in R.runtime_footprint().items():
    print(f"{name:12s} {v['version'] or 'not installed'}")


# %% [markdown]
# ## 2. What a runtime weighs, and what it asks of your torch
# A runtime is a set of files on disk. Each installed distribution lists its files in its metadata (the
# `RECORD` that pip writes), so their sizes can be added up: that is the **installed size of the runtime**
# below, measured, not copied from a web page. Dependencies are not included (torchao, for example, needs
# torch, which every row already has).
#
# ### Exercise 1: the installed size of a distribution
# Return the total size in bytes of the files that `importlib.metadata.files(name)` lists for the installed
# distribution `name`, counting only files that exist on disk.

# %% nbgrader={"grade": false, "grade_id": "installed_size", "locked": false, "schema_version": 3, "solution": true, "task": false}
def installed_size(name):
    # Hint: metadata.files(name) gives paths relative to site-packages; f.locate() is the real path on disk.
    ### BEGIN SOLUTION
    total = 0
    for f in metadata.files(name) or []:
        p = f.locate()
        if p.is_file():
            total += p.stat().st_size
    return total
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "check_installed_size", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
checks.check_installed_size(installed_size)

# %% [markdown]
# The footprint of every runtime, with the function you wrote (or the library's if it is not finished),
# and what each declares about torch. A package that pins another torch than yours would make pip replace
# it (possibly with a multi-gigabyte CUDA build); none of these does.

# %%
# NBVAL_IGNORE_OUTPUT
size_of = checks.mine_or_library(installed_size, checks.check_installed_size, R.installed_bytes)
FOOTPRINT = R.runtime_footprint()
for name, v in FOOTPRINT.items():
    if v["version"] is None:
        print(f"{name:12s} not installed")
        continue
    mb = size_of(v["distribution"]) / 2**20
    torch_req = [r.split(";")[0] for r in (metadata.requires(v["distribution"]) or [])
                 if r.split(";")[0].strip().lower().startswith(("torch ", "torch>", "torch<", "torch=", "torchao"))
                 and "extra ==" not in r]
    print(f"{name:12s} {v['version']:28s} {mb:8.1f} MB installed; torch requirement: {torch_req or 'none declared'}")

# %% [markdown]
# ## 3. Two models: the baseline and chapter 5's latency model
# The baseline LeNet-5 of every chapter, and chapter 5's **latency model** (channel pruning plus
# distillation, `recipes.latency_model` with chapter 5's budget), trained once and cached. Calibration of
# every int8 model uses the same 512 **training** images; the test split is used only to report.

# %%
# NBVAL_IGNORE_OUTPUT
splits = load_dataset(DATASET)
data_note(splits)
SHAPE = splits.input_shape
baseline, _ = load_baseline(DATASET, SEED, splits=splits, device=device)
calib = splits.train.tensors[0][:512]
x_test, y_test = splits.test.tensors
MODELS = {"baseline": baseline}
if not LAB_MODE:
    fast, info = R.cached_latency_model(baseline, splits.train, seed=SEED, dataset=DATASET, device=device)
    MODELS["latency model"] = fast
    how = (("loaded from the weights the course ships" if info.get("shipped") else "loaded from the cache")
           if info["cached"] else f"trained in {info['train_seconds']:.0f} s")
    print(f"latency model: widths {fast.config['c1']}/{fast.config['c2']}/{fast.config['fc']}, {how}")
for k, m in MODELS.items():
    print(f"{k}: {measure.count_params(m):,} parameters, {measure.macs(m, SHAPE):,} MACs per image, "
          f"validation accuracy {100 * evaluate(m, splits.val):.1f}%")

# %% [markdown] tags=["theory"]
# ## 4. The paths
# **fp32.** PyTorch eager runs one kernel per operation. In **channels-last** (NHWC) layout the channels of a
# pixel sit next to each other in memory, which is what oneDNN's convolution kernels vectorise over.
# **`torch.compile`** traces the model into a graph and Inductor generates fused code; with **freezing**
# the weights become constants, so oneDNN can pre-pack them once. onnxruntime, OpenVINO and ExecuTorch
# (with its XNNPACK backend) each take an exported graph and run their own kernels.
#
# **int8.** Every int8 path here is static quantization as in chapter 2: a real value $x$ is stored as
# $q = \mathrm{clamp}(\mathrm{round}(x/s) + z, q_{\min}, q_{\max})$, weights int8 symmetric per output channel
# ($z = 0$), activations uint8 with a scale $s$ and zero point $z$ fixed by calibration. A layer then computes
# $\sum_k q_{x,k}\,q_{w,k}$ in int32 and rescales once: $y \approx s_x s_w \sum_k (q_{x,k} - z_x)\,q_{w,k}$.
# A runtime is fast in int8 only if it *fuses* this (quantize, integer kernel, requantize) instead of
# running quantize/dequantize steps around float kernels. In torchao's **PT2E** flow, `convert_pt2e` leaves
# exactly such quantize/dequantize pairs in the graph, and `torch.compile` with freezing pattern-matches them
# into oneDNN's int8 kernels: without the compile step there is no int8 arithmetic at all.
#
# **Static shapes.** A compiled graph is specialised to its input shape. Each path below is built for batch
# 1 and batch 64; OpenVINO and ExecuTorch programs are compiled for each size too, which is how they are
# usually deployed.
#
# **A clean process for measuring.** Lowering a model to ExecuTorch runs ExecuTorch's quantizer and passes, which
# register their own operator implementations in the Python process, which can change the kernels PyTorch's other
# models run afterwards in that process (and so their timings). So the ExecuTorch programs and NNCF's int8
# model are built in a fresh process (`R.build_in_subprocess`) and only *loaded* here; all are cached in
# `build/cache/runtimes`, keyed by the model's weights and the versions. `R.every_path` builds every path of one
# model this way (`make bench` measures the chapter's target with the same call).
#
# **One graph or several?** A side run while this course was planned met a *graph break* when compiling the
# converted module: TorchDynamo, `torch.compile`'s front end, split it into several graphs with Python in between,
# and Inductor cannot fuse across a break. `R.graph_breaks` asks TorchDynamo how it sees the converted module on
# this install (`torch._dynamo.explain`, no compilation). It resets TorchDynamo, so every model compiled before it
# would silently recompile later without its settings: it runs here, before anything is compiled, and refuses to
# run again once something has been (restart the kernel to re-run it).

# %%
x64 = calib[:64].contiguous(memory_format=torch.channels_last)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    program = torch.export.export(R.pt2e_int8(baseline, calib), (x64,)).module()  # what the PT2E path compiles
print("TorchDynamo on the converted PT2E program, batch 64:", R.graph_breaks(program, x64))

# %%
# NBVAL_IGNORE_OUTPUT
t0 = time.perf_counter()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    PATHS = {k: R.every_path(m, calib, ART / k.replace(" ", "_"), CACHE) for k, m in MODELS.items()}
BUILD_S = time.perf_counter() - t0
for k, ps in PATHS.items():
    print(f"{k}: " + ", ".join(f"{p.name} {p.build_s:.1f} s" for p in ps if p.build_s >= 0.05))
print(f"building every path: {BUILD_S:.0f} s")

# %% [markdown]
# The PT2E paths above are exported with a **static** batch size after calibration. The same flow with a
# **dynamic** batch dimension (one graph for every batch size, what a server would want) is tried below on
# this install; its outcome is printed, whatever it is.

# %%
# NBVAL_IGNORE_OUTPUT
with R.inductor_cache(CACHE / "inductor"):
    DYNAMIC = R.pt2e_dynamic_batch_attempt(baseline, calib)
print("PT2E with a dynamic batch dimension:", DYNAMIC)


# %% [markdown]
# ## 5. Do they compute the same thing? Agreement on the test split
# A runtime compiled for batch 64 cannot take the last, shorter batch of a test split: the batch must be
# padded to full size and the padding's outputs thrown away.
#
# ### Exercise 2: predict with a static batch size
# Write `padded_predict(fn, x, batch_size)`: call `fn` only on batches of exactly `batch_size` rows of `x`
# (N, C, H, W), zero-padding the last one, and return the logits (N, classes) for the real rows only.

# %% nbgrader={"grade": false, "grade_id": "padded_predict", "locked": false, "schema_version": 3, "solution": true, "task": false}
def padded_predict(fn, x, batch_size):
    # Hint: torch.cat the last batch with torch.zeros of the missing rows, then keep only the first n outputs.
    ### BEGIN SOLUTION
    outs = []
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size]
        n = len(xb)
        if n < batch_size:
            xb = torch.cat([xb, xb.new_zeros((batch_size - n, *xb.shape[1:]))])
        outs.append(torch.as_tensor(fn(xb))[:n])
    return torch.cat(outs)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "check_padded_predict", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
checks.check_padded_predict(padded_predict)

# %% [markdown]
# Every path's predictions on all test images, against PyTorch fp32 eager (the reference). The test split
# has one image count for every path, so agreements are compared on the same images.

# %%
predict_padded = checks.mine_or_library(padded_predict, checks.check_padded_predict, R.padded_predict)
PRED, AGREE = {}, {}
for k, ps in PATHS.items():
    ref = predict_padded(ps[0], x_test, 64).argmax(1)
    for p in ps:
        PRED[k, p.name] = predict_padded(p, x_test, 64).argmax(1)
        AGREE[k, p.name] = R.agreement(ref, PRED[k, p.name])
print(f"test images: {len(x_test)}")
for (k, name), a in AGREE.items():
    print(f"  {k:14s} {name:30s} agreement with fp32 eager {100 * a:6.2f}%")

# %% [markdown]
# ## 6. One interleaved measurement
# All paths of both models at batch 1 and batch 64 are timed together (`deploy.latency_table` through
# `R.time_paths`): in each round every path runs `REPEATS` single-thread calls and keeps the median, and the
# rounds are interleaved so that a burst of load on the machine hits all alike. A path's latency is the
# median over rounds; the spread is the range of its round medians.

# %%
# NBVAL_IGNORE_OUTPUT
t0 = time.perf_counter()
TIMED = {(k, p.name): p for k, ps in PATHS.items() for p in ps}
LAT = {(k, n, b): r for ((k, n), b), r in R.time_paths(TIMED, (1, 64), rounds=ROUNDS, repeats=REPEATS).items()}
print(f"one interleaved measurement of {len(TIMED)} paths x 2 batch sizes: {time.perf_counter() - t0:.0f} s")


# %% [markdown]
# ## 7. Results: every runtime in one table
# Sizes are the files each runtime loads (the ONNX file, the OpenVINO IR's .xml plus .bin, the ExecuTorch
# program; the PyTorch paths' state dict; for PT2E the `torch.export` archive of the converted program, which
# keeps the float32 weights beside their quantization parameters, so it is *larger* than the float model: its
# int8 weights exist only inside the program `torch.compile` builds on the learner's machine); "x" is the speed-up over the **fastest fp32 path of the same model
# at the same batch size** (the course's reference).

# %%
# NBVAL_IGNORE_OUTPUT
def size_of_path(p, model):
    return R.file_bytes(p.file) if p.file is not None else measure.serialized_bytes(model)


ROWS = []
for k, ps in PATHS.items():
    for b in (1, 64):
        best32 = min(LAT[k, p.name, b]["latency_ms"] for p in ps if p.precision == "fp32")
        for p in ps:
            r = LAT[k, p.name, b]
            ROWS.append(dict(model=k, path=p.name, runtime=p.runtime, precision=p.precision, batch=b,
                             ms=r["latency_ms"], lo=r["spread_ms"][0], hi=r["spread_ms"][1], x=best32 / r["latency_ms"],
                             agree=AGREE[k, p.name], bytes=size_of_path(p, MODELS[k]),
                             runtime_mb=(FOOTPRINT[p.runtime]["bytes"] or 0) / 2**20))
lines = ["| model | path | bits | batch | ms (min-max over rounds) | x vs fastest fp32 | agreement | file KB | runtime MB |",
         "|---|---|---|---|---|---|---|---|---|"]
for r in ROWS:
    lines.append(f"| {r['model']} | {r['path']} | {r['precision']} | {r['batch']} | {r['ms']:.3f} ({r['lo']:.3f}-{r['hi']:.3f}) "
                 f"| {r['x']:.2f} | {100 * r['agree']:.2f}% | {r['bytes'] / 1024:.1f} | {r['runtime_mb']:.0f} |")
display(Markdown("\n".join(lines)))

# %%
# NBVAL_IGNORE_OUTPUT
fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
base_rows = [r for r in ROWS if r["model"] == "baseline"]
names = list(dict.fromkeys(r["path"] for r in base_rows))
for ax, b in zip(axes, (1, 64)):
    rs = {r["path"]: r for r in base_rows if r["batch"] == b}
    ax.barh(range(len(names)), [rs[n]["x"] for n in names],
            color=["C1" if rs[n]["precision"] == "int8" else "C0" for n in names])
    ax.axvline(1.0, color="k", lw=0.8)
    if b == 64:  # the chapter's speed target is stated at batch 64
        ax.axvline(R.SPEED_TARGET, color="C3", ls="--", lw=1, label=f"target {R.SPEED_TARGET}x")
        ax.set_xlim(0, 1.1 * max(R.SPEED_TARGET, *(rs[n]["x"] for n in names)))
    ax.set_xlabel(f"x faster than the fastest fp32 path, batch {b}")
    ax.set_yticks(range(len(names)), names)
axes[0].invert_yaxis()
axes[1].legend(handles=[plt.Rectangle((0, 0), 1, 1, color="C0"), plt.Rectangle((0, 0), 1, 1, color="C1"),
                        plt.Line2D([], [], color="C3", ls="--")],
               labels=["fp32", "int8", f"target {R.SPEED_TARGET}x"], loc="upper right")
fig.suptitle("Baseline LeNet-5, one thread: longer bar = faster (1.0 = fastest fp32)")
fig.tight_layout()


# %% [markdown]
# **Reading the table**, printed from this run:

# %%
# NBVAL_IGNORE_OUTPUT
def best(k, prec, b):
    return min((r for r in ROWS if r["model"] == k and r["precision"] == prec and r["batch"] == b), key=lambda r: r["ms"])


SUMMARY = {}
for k in PATHS:
    f32, i8 = best(k, "fp32", 64), best(k, "int8", 64)
    f32_1, i8_1 = best(k, "fp32", 1), best(k, "int8", 1)
    SUMMARY[k] = i8["x"]
    display(Markdown(
        f"- **{k}**, batch 64: the fastest fp32 path is *{f32['path']}* ({f32['ms']:.2f} ms), the fastest int8 path "
        f"*{i8['path']}* ({i8['ms']:.2f} ms), **{i8['x']:.2f}x** faster; at batch 1 *{f32_1['path']}* and "
        f"*{i8_1['path']}* ({i8_1['x']:.2f}x). Eager NCHW, the default, is "
        f"{next(r['ms'] for r in ROWS if r['model'] == k and r['batch'] == 64 and r['path'] == 'PyTorch eager NCHW') / f32['ms']:.1f}x "
        f"slower than the fastest fp32 path at batch 64. Lowest agreement with fp32 eager: "
        f"{100 * min(AGREE[k, p.name] for p in PATHS[k]):.2f}%."))
pt2e = next(r for r in ROWS if r["model"] == "baseline" and r["batch"] == 64 and r["path"].startswith("torchao"))
display(Markdown(f"- torchao PT2E (compiled int8) runs at {pt2e['x']:.2f}x the fastest fp32 path on this CPU at batch 64; "
                 "section 8 looks for the reason."))

# %% [markdown]
# ## 8. Why is yours slower? A diagnosis on this CPU
# Int8 pays off only where the CPU has instructions that multiply bytes and add the products in 32 bits in one
# step: **VNNI** on x86 (`vpdpbusd`, AVX512-VNNI or AVX-VNNI), **AMX** tiles on recent Xeons, the **dot-product**
# extension on ARM. Without them an x86 kernel multiplies pairs of u8 x s8 products into a *saturating* 16-bit
# sum (`vpmaddubsw`, then widens), which is slower and can clip: quantizers then keep weights or activations to
# 7 bits (`reduce_range`). The report below reads this CPU; the assertion floors at the end of the chapter
# come from it, so a CPU without VNNI gets an explanation instead of a failed cell.

# %%
# NBVAL_IGNORE_OUTPUT
CPU = R.cpu_report()
print(R.format_cpu_report(CPU))
FLOOR = R.int8_speedup_floor(CPU)
print(f"int8 speed-up floor asserted on this CPU (best int8 vs best fp32, batch 64): {FLOOR:.1f}x")

# %% [markdown]
# **The same machine with an older instruction set.** oneDNN (PyTorch's and the compiled int8 kernels' library)
# reads the documented environment variable `ONEDNN_MAX_CPU_ISA` once, when it loads; PyTorch's own vectorised
# kernels read `ATEN_CPU_CAPABILITY`. So each setting runs in a fresh Python process: `ALL` (this CPU's best)
# and `AVX2` (a laptop CPU of a few years ago, without AVX512 and VNNI). onnxruntime (MLAS) has its own
# dispatch, which the variable does not limit: it is the control.

# %%
# NBVAL_IGNORE_OUTPUT
t0 = time.perf_counter()
ISAS = ("ALL", "AVX2")
base_paths = {p.name: p for p in PATHS["baseline"]}
ISA = None
if LAB_MODE:
    print("lab mode: the re-timing in two fresh processes is skipped; set LAB_MODE = False to run it (its time is printed then)")
else:
    try:
        ISA = R.isa_latencies(baseline, calib, CACHE / "isa", isas=ISAS, ort_int8=base_paths["onnxruntime int8"].file,
                              ov_int8=base_paths["OpenVINO int8 (NNCF)"].file, rounds=3, repeats=5)
    except RuntimeError as e:  # e.g. a CPU where a setting does not exist: shown, not fatal
        print(e)
if ISA:
    names_isa = list(ISA[ISAS[0]])
    CONTROL = "onnxruntime int8"  # not limited by the variable: divides out a change of load between the two processes
    slow = {n: (ISA["AVX2"][n] / ISA["AVX2"][CONTROL]) / (ISA["ALL"][n] / ISA["ALL"][CONTROL]) for n in names_isa}
    print(f"{'path (batch 64, ms)':34s}" + "".join(f"{i:>10s}" for i in ISAS) + "   slow-down vs the control")
    for n in names_isa:
        print(f"{n:34s}" + "".join(f"{ISA[i][n]:10.3f}" for i in ISAS) + f"   {slow[n]:8.2f}x")
    fp32_avx2 = ISA["AVX2"]["PyTorch eager channels-last"]
    best8 = min((n for n in names_isa if n != "PyTorch eager channels-last"), key=ISA["AVX2"].get)
    display(Markdown(
        f"Limited to AVX2 (no AVX512, no VNNI), and measured against onnxruntime in the same process (its MLAS kernels "
        f"ignore the variable, so it is the control for the load of the machine), the compiled PT2E int8 model is "
        f"{slow['torchao PT2E + torch.compile']:.2f}x slower, OpenVINO's int8 {slow['OpenVINO int8 (NNCF)']:.2f}x and PyTorch "
        f"fp32 channels-last {slow['PyTorch eager channels-last']:.2f}x. On AVX2 the fastest int8 path here is *{best8}*, "
        f"{fp32_avx2 / ISA['AVX2'][best8]:.2f}x PyTorch fp32 channels-last in the same process: roughly what a laptop "
        "without VNNI would see."))
print(f"({time.perf_counter() - t0:.0f} s, two fresh processes)")

# %% [markdown]
# **Which layer does not speed up?** onnxruntime's profiler (`SessionOptions.enable_profiling`,
# `deploy.ort_op_times`) times every operator of a run. Grouped by layer, fp32 against int8 (batch 64), the
# layer with the smallest gain heads the table: in chapter 2's recipe (which chapter 5 reuses) conv1 stays in float on purpose (one input
# channel: 25 multiply-adds per output, little to gain), and the Quantize/Dequantize steps at the borders are
# pure overhead.

# %%
# NBVAL_IGNORE_OUTPUT
x64 = x_test[:64]
PROFILE = R.op_speedups(deploy.ort_op_times(base_paths["onnxruntime fp32"].file, x64, runs=10 if LAB_MODE else 20),
                        deploy.ort_op_times(base_paths["onnxruntime int8"].file, x64, runs=10 if LAB_MODE else 20))
print(f"{'layer':7s} {'fp32 ms':>8s} {'int8 ms':>8s} {'x faster':>9s}  int8 operators")
for r in PROFILE:
    x = f"{r['x_faster']:.2f}" if r["x_faster"] is not None else "-"
    print(f"{r['layer']:7s} {r['fp32_ms']:8.3f} {r['int8_ms']:8.3f} {x:>9s}  {', '.join(r['int8_ops'])}")
slowest = next(r for r in PROFILE if r["x_faster"] is not None)
display(Markdown(f"On this CPU the layer that gains least from int8 in onnxruntime is **{slowest['layer']}** "
                 f"({slowest['x_faster']:.2f}x, operators {', '.join(slowest['int8_ops'])})."))

# %% [markdown]
# ## 9. torchao's own API: `quantize_`, QAT, and what it touches
# `torchao.quantization.quantize_(model, config)` swaps the weights of the layers a config handles for tensor
# subclasses that carry the quantized values. Most configs handle `nn.Linear` only; `IntxWeightOnlyConfig`
# also takes the 4-D weights of `nn.Conv2d` (tried below on each convolution alone).

# %%
# NBVAL_IGNORE_OUTPUT
for name, outcome in R.intx_conv_attempt(baseline, ["conv1", "conv2"]).items():
    print(f"IntxWeightOnlyConfig(int8) on {name}: {outcome}")
print("Int8DynamicActivationInt8WeightConfig on the LeNet-5:", R.weight_types(R.torchao_int8_linears(baseline)))

# %% [markdown]
# **Quantization-aware training with `QATConfig`.** The scheme: int4 weights (one scale per output channel)
# and int8 activations quantized per token at run time, on the linear layers (`fc1` holds most of the
# weights). `QATConfig(base, step="prepare")` inserts fake quantization, training runs as usual, and
# `step="convert"` produces the real quantized layers. The control has the **same budget**: the same epochs of
# fp32 fine-tuning with the same recipe, then post-training quantization. Both are compared with paired
# intervals on the test split, over the seeds.

# %%
# NBVAL_IGNORE_OUTPUT
t0 = time.perf_counter()
QAT = {"post-training only": [R.torchao_w4a8(baseline)]}
QAT["fine-tune, then post-training"] = [R.finetune_then_w4a8(baseline, splits.train, EPOCHS, seed=s) for s in SEEDS]
QAT["QATConfig"] = [R.torchao_qat(baseline, splits.train, EPOCHS, seed=s) for s in SEEDS]
CORRECT = {k: torch.stack([(m(x_test).argmax(1) == y_test) for m in ms]) for k, ms in QAT.items()}
with torch.no_grad():
    CORRECT["baseline fp32"] = (baseline(x_test).argmax(1) == y_test)[None]
for k, c in CORRECT.items():
    print(f"{k:32s} test accuracy {100 * c.float().mean():.2f}% ({c.shape[0]} run(s))")
QAT_CMP = stats.paired_compare(CORRECT["QATConfig"], CORRECT["fine-tune, then post-training"])
print(f"QATConfig vs its equal-budget control: {100 * QAT_CMP.diff:+.2f} pt, 95% interval "
      f"[{100 * QAT_CMP.ci[0]:+.2f}, {100 * QAT_CMP.ci[1]:+.2f}]: {QAT_CMP.verdict}  ({time.perf_counter() - t0:.0f} s)")

# %% [markdown]
# **MiniLM's linear layers: torchao against `torch.ao`.** The sentence encoder of chapter 6 (all-MiniLM-L6-v2,
# loaded offline) quantized two ways, both int8 weights with int8 activations quantized on the fly:
# `torch.ao.quantization.quantize_dynamic` (fbgemm's packed kernels) and torchao's
# `quantize_(model, Int8DynamicActivationInt8WeightConfig())` run eagerly, without `torch.compile`. Timed
# together, single thread, on the same batch of sentences; agreement is the mean cosine similarity of the
# embeddings with fp32's.

# %%
# NBVAL_IGNORE_OUTPUT
lm_model, tok = bert.load_pretrained()
sent = bert.load_sentences()
lm_batch = bert.tokenize(tok, sent.eval_texts[:8 if LAB_MODE else 16], max_length=64)
LM = {"fp32": lm_model, "torch.ao quantize_dynamic": Q.torch_ao_dynamic(lm_model)[0],
      "torchao Int8DynamicActivationInt8WeightConfig": R.torchao_int8_linears(lm_model)}
with torch.inference_mode():
    ref_emb = bert.embed(lm_model, lm_batch)
    LM_COS = {k: bert.mean_cosine(bert.embed(m, lm_batch), ref_emb) for k, m in LM.items()}
LM_LAT = deploy.latency_table({k: (lambda m=m: bert.embed(m, lm_batch)) for k, m in LM.items()}, (1,),
                              reference="fp32", rounds=2 if LAB_MODE else 3, repeats=3, warmup=1)
for k in LM:
    r = LM_LAT[k]
    print(f"{k:46s} {r['latency_ms']:8.1f} ms ({r['spread_ms'][0]:.1f}-{r['spread_ms'][1]:.1f}), "
          f"{r['x_faster']:.2f}x vs fp32, mean cosine to fp32 {LM_COS[k]:.4f}")

# %% [markdown]
# ## 10. Results file
# One record per path of the baseline (batch-64 latency; accuracy on the test split; size the artifact the
# runtime loads), plus the QAT models (size: their state dict as `torch.save` writes it, torchao's int4 codes
# one per byte; not timed here: section 9 times torchao's eager kernels on MiniLM). Records are named
# `baseline` (PyTorch eager NCHW fp32) and `baseline <path>` for the others.

# %%
# NBVAL_IGNORE_OUTPUT
N_TEST = len(y_test)
recs = []
for p in PATHS["baseline"]:
    acc = float((PRED["baseline", p.name] == y_test).float().mean())
    name = "baseline" if p.name == "PyTorch eager NCHW" else f"baseline {p.name}"
    recs.append(records.record(name, counts_from=baseline, accuracy=acc, n_test=N_TEST, input_shape=SHAPE,
                               size_bytes=size_of_path(p, baseline), latency_ms=LAT["baseline", p.name, 64]["latency_ms"],
                               method=f"{p.runtime} {p.precision}", runtime=p.runtime,
                               weight_bits=8 if p.precision == "int8" else 32, agreement=AGREE["baseline", p.name],
                               latency_ms_batch1=LAT["baseline", p.name, 1]["latency_ms"]))
for k in ("fine-tune, then post-training", "QATConfig"):
    extra = {} if k == "QATConfig" else {"control_of": "torchao w4a8 linears: QATConfig"}
    recs.append(records.record(f"torchao w4a8 linears: {k}", counts_from=baseline, input_shape=SHAPE,
                               accuracy=[float(c.float().mean()) for c in CORRECT[k]], n_test=N_TEST,
                               size_bytes=measure.serialized_bytes(QAT[k][0]), latency_ms=None, weight_bits=4,
                               method=f"{EPOCHS} epoch(s) after the baseline, torchao Int8DynamicActivationIntxWeightConfig(int4)",
                               **extra))
path = records.write_results("08_runtimes", recs, lab_mode=LAB_MODE)
print(records.format_table(recs, columns=("name", "accuracy", "size_bytes", "latency_ms", "method")))

# %% [markdown] tags=["theory"]
# ## 11. Checks
# Asserted everywhere: every path agrees with PyTorch fp32 on at least 99% of the test images (fp32 paths on
# at least 99.9%), and every path's file loads in its runtime (it ran). The speed target of the issue (the
# fastest int8 path at least 2.5x faster than the fastest fp32 path, single thread, batch 64) is printed as met
# or MISSED, and verified by `make bench`; the assertion only checks the floor that this CPU's report sets
# (section 8).

# %%
# NBVAL_IGNORE_OUTPUT
print(f"(run time: {time.perf_counter() - T_START:.0f} s)")
report_targets({f"fastest int8 path >= {R.SPEED_TARGET}x the fastest fp32 path, batch 64, single thread ({k})":
                x >= R.SPEED_TARGET for k, x in SUMMARY.items()}, asserted=False)
C1 = next(r for r in PROFILE if r["layer"] == "conv1")
INT8_MS = sum(r["int8_ms"] for r in PROFILE)
display(Markdown(f"The baseline's fastest int8 path runs at {SUMMARY['baseline']:.2f}x its fastest fp32 path "
                 f"({'met' if SUMMARY['baseline'] >= R.SPEED_TARGET else 'MISSED'} against {R.SPEED_TARGET}x). Where the int8 time goes (section 8's "
                 f"profile of onnxruntime): conv1, kept in float by chapter 2's recipe, takes "
                 f"{100 * C1['int8_ms'] / INT8_MS:.0f}% of the int8 model's time and runs {C1['x_faster']:.2f}x as fast as in "
                 "fp32; while one layer does not speed up, it caps the gain of the whole model (Amdahl's law). Chapter 2 "
                 "(section 13) measured why it stays float: in onnxruntime an int8 conv1 with one input channel is slower."))
if "latency model" in SUMMARY:
    display(Markdown(f"The latency model does {measure.macs(MODELS['latency model'], SHAPE) / measure.macs(baseline, SHAPE):.2f}x as many "
                     "multiply-adds per image as the baseline: there the fixed costs of a call (quantizing the input, "
                     "layout changes, the runtime's dispatch) weigh as much as the arithmetic int8 speeds up, so its int8 "
                     f"gain is {SUMMARY['latency model']:.2f}x."))

# %%
ASSERTED = targets_asserted(LAB_MODE, splits)
assert all(a >= 0.999 for (k, n), a in AGREE.items() if next(p for p in PATHS[k] if p.name == n).precision == "fp32")
assert all(a >= 0.99 for a in AGREE.values()), {k: a for k, a in AGREE.items() if a < 0.99}
assert all(len(ps) == 10 for ps in PATHS.values())
assert all(r["size_bytes"] > 0 for r in recs)
if ASSERTED:
    assert SUMMARY["baseline"] >= FLOOR, f"int8 only {SUMMARY['baseline']:.2f}x the fastest fp32 (floor {FLOOR} on this CPU)"
print("all checks passed")
