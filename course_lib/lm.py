"""A tiny character-level language model of Python source, for chapter 07 (LLM-era weight quantization).

Holds everything the chapter needs about the model itself, nothing about quantizing it:

- the vocabulary (:data:`VOCAB`: printable ASCII 32..126 and ``"\\n"``, 96 characters) and
  :class:`CharTokenizer`;
- :class:`LMConfig` and :class:`TinyGPT`, a pre-LayerNorm decoder-only transformer whose every
  ``nn.Linear`` has ``in_features`` a multiple of 128 (so group-wise quantization with groups of
  128 or 32 divides every row);
- :func:`save_lm` / :func:`load_lm`: weights in safetensors (no pickle), float16 on disk, the
  config in the metadata; the shipped ``data/tiny_lm.safetensors`` is checksum verified;
- the corpus (:func:`load_corpus`: Python standard-library source, ``train`` and ``heldout``
  split by file; see ``data/README.md``), :func:`token_chunks` and :func:`calibration_batch`
  (training text only);
- evaluation: :func:`chunk_nll` (nats per character, one value per chunk), :func:`perplexity`,
  :func:`perplexity_interval` (bootstrap over chunks), :func:`unigram_nll`;
- :func:`generate`: seeded sampling that never touches the global random generator, with a
  key-value cache (batch-1 decoding: one character per forward pass);
- chapter 7's evaluation: :func:`eval_chunks` (held-out chunks spread evenly), :func:`chunk_accuracy`,
  :func:`linear_macs_per_token` and :func:`record` (one results record of a language model).
"""
from __future__ import annotations

import json
import lzma
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import _validate as V
from . import stats
from .data import DATA_DIR, verify_checksum

_REBUILD = "see data/README.md to rebuild it"

VOCAB = "\n" + "".join(chr(c) for c in range(32, 127))
WEIGHTS_FILE = "tiny_lm.safetensors"
CORPUS_FILES = {"train": "pystdlib_train.txt.xz", "heldout": "pystdlib_heldout.txt.xz"}
MANIFEST_FILE = "pystdlib_manifest.json"
SPLITS = tuple(CORPUS_FILES)


# ---------------------------------------------------------------------------------------- tokenizer
class CharTokenizer:
    """Characters <-> integer ids over :data:`VOCAB` (id = position in VOCAB; ``"\\n"`` is 0)."""

    def __init__(self, vocab: str = VOCAB):
        if not isinstance(vocab, str) or len(vocab) < 2 or len(set(vocab)) != len(vocab):
            raise ValueError(f"vocab must be a string of at least 2 distinct characters, got {vocab!r}")
        self.vocab = vocab
        self._index = {c: i for i, c in enumerate(vocab)}

    @property
    def vocab_size(self) -> int:
        """Number of characters (96 for :data:`VOCAB`)."""
        return len(self.vocab)

    def encode(self, text: str) -> torch.Tensor:
        """``text`` as a LongTensor of shape (len(text),) with values in [0, vocab_size).

        Raises ValueError naming the first character outside the vocabulary (its repr and position)
        and the valid set."""
        if not isinstance(text, str):
            raise ValueError(f"text must be a str, got {type(text).__name__}")
        try:
            ids = [self._index[c] for c in text]
        except KeyError:
            pos = next(i for i, c in enumerate(text) if c not in self._index)
            raise ValueError(f"text holds character {text[pos]!r} at position {pos}, outside the vocabulary "
                             f"(valid: printable ASCII 32..126 and '\\n', i.e. {self.vocab!r})") from None
        return torch.tensor(ids, dtype=torch.long)

    def decode(self, ids) -> str:
        """The text of ``ids`` (a sequence or 1-D integer tensor with values in [0, vocab_size))."""
        t = torch.as_tensor(ids)
        if t.numel() == 0 and t.dim() == 1:
            return ""
        if t.dim() != 1 or t.is_floating_point() or (t.numel() and (t.min() < 0 or t.max() >= self.vocab_size)):
            raise ValueError(f"ids must be a 1-D sequence of integers in [0, {self.vocab_size}), "
                             f"got shape {tuple(t.shape)}, dtype {t.dtype}")
        return "".join(self.vocab[i] for i in t.tolist())


# ------------------------------------------------------------------------------------------- model
@dataclass(frozen=True)
class LMConfig:
    """Shape of a :class:`TinyGPT`. d_model and d_ff must be multiples of 128 (every Linear's
    in_features is one of them); d_model must be divisible by n_heads."""

    vocab_size: int = len(VOCAB)
    context: int = 256
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int = 512

    def __post_init__(self):
        V.int_in("vocab_size", self.vocab_size, 2, None)
        V.int_in("context", self.context, 1, None)
        V.int_in("n_layers", self.n_layers, 1, None)
        V.int_in("n_heads", self.n_heads, 1, None)
        for name in ("d_model", "d_ff"):
            v = V.int_in(name, getattr(self, name), 128, None)
            if v % 128:
                raise ValueError(f"{name}={v} must be a multiple of 128 (group-wise quantization needs it)")
        if self.d_model % self.n_heads:
            raise ValueError(f"n_heads={self.n_heads} must divide d_model={self.d_model}")


class Attention(nn.Module):
    """Causal multi-head self-attention: ``qkv`` (d_model -> 3 d_model), ``proj`` (d_model -> d_model)."""

    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        """x (B, T, C). cache: None, or a dict this layer fills with the keys and values of every position
        seen so far ("k", "v": (B, heads, T_past, C / heads)); the T new positions then attend to the
        cached ones and causally to each other (T = 1 when decoding one character at a time)."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v))
        past = 0
        if cache is not None:
            if "k" in cache:
                past = cache["k"].shape[2]
                k, v = torch.cat([cache["k"], k], 2), torch.cat([cache["v"], v], 2)
            cache["k"], cache["v"] = k, v
        if past == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # new position i (absolute past + i) sees keys 0 .. past + i
            mask = torch.ones(T, past + T, dtype=torch.bool).tril(past)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    """``fc`` (d_model -> d_ff), GELU, ``proj`` (d_ff -> d_model)."""

    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.d_ff)
        self.proj = nn.Linear(cfg.d_ff, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = Attention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), cache)
        return x + self.mlp(self.ln2(x))


class TinyGPT(nn.Module):
    """Decoder-only character transformer. Linear layers: ``blocks.{i}.attn.qkv``,
    ``blocks.{i}.attn.proj``, ``blocks.{i}.mlp.fc``, ``blocks.{i}.mlp.proj`` and ``head``
    (untied from the token embedding ``tok``); learned positions ``pos``; final LayerNorm ``ln_f``.

    forward(ids, cache=None): ids LongTensor (B, T) with values in [0, vocab_size) and 1 <= T <= context ->
    logits float32 (B, T, vocab_size); position t only sees ids[:, :t + 1]. cache: None, or a list the
    model fills with one key-value cache per block (start with ``[]``); the next call with the same
    list continues the sequence (positions carry on), so decoding feeds one new character per call and
    reads every weight once per character. Past plus new positions must stay within the context."""

    def __init__(self, cfg: LMConfig | None = None):
        super().__init__()
        cfg = cfg or LMConfig()
        if not isinstance(cfg, LMConfig):
            raise ValueError(f"cfg must be an LMConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.tok = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos = nn.Embedding(cfg.context, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size)
        self.apply(self._init)
        for name, p in self.named_parameters():   # GPT-2: scale the residual projections by depth
            if name.endswith("proj.weight"):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * cfg.n_layers))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, ids: torch.Tensor, cache: list | None = None) -> torch.Tensor:
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.is_floating_point():
            raise ValueError(f"ids must be an integer tensor of shape (B, T), got "
                             f"{tuple(ids.shape) if isinstance(ids, torch.Tensor) else type(ids).__name__}")
        T = ids.shape[1]
        if cache is not None and not isinstance(cache, list):
            raise ValueError(f"cache must be None or a list (start with []), got {type(cache).__name__}")
        past = cache[0]["k"].shape[2] if cache else 0
        if not 1 <= T <= self.cfg.context - past:
            raise ValueError(f"ids has T={T} positions after {past} cached ones; past + T must be in "
                             f"[1, {self.cfg.context}] (the context)")
        if cache is not None and not cache:
            cache.extend({} for _ in self.blocks)
        x = self.tok(ids) + self.pos(torch.arange(past, past + T, device=ids.device))
        for i, block in enumerate(self.blocks):
            x = block(x, None if cache is None else cache[i])
        return self.head(self.ln_f(x)).float()


def linear_names(model: nn.Module) -> list[str]:
    """Names of every nn.Linear in ``model``, in module order (what weight-only quantization touches)."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]


# ------------------------------------------------------------------------------------ save and load
def save_lm(model: TinyGPT, path) -> int:
    """Write ``model``'s weights to ``path`` as safetensors, every tensor float16 (no pickle), the
    LMConfig as JSON in the metadata. Returns the file size in bytes."""
    if not isinstance(model, TinyGPT):
        raise ValueError(f"model must be a TinyGPT, got {type(model).__name__}")
    from safetensors.torch import save_file
    state = {k: v.detach().to(torch.float16).contiguous().cpu() for k, v in model.state_dict().items()}
    path = Path(path)
    save_file(state, str(path), metadata={"format": "pt", "course_lib.lm.LMConfig": json.dumps(asdict(model.cfg))})
    return path.stat().st_size


def load_lm(path=None) -> tuple[TinyGPT, CharTokenizer]:
    """Load a TinyGPT saved by :func:`save_lm`; ``path=None`` loads the shipped
    ``data/tiny_lm.safetensors``. Returns (model, tokenizer); the model is float32 (the float16
    weights on disk are upcast, exactly), on the CPU, in eval mode.

    The file's SHA-256 is verified first when a ``SHA256SUMS`` beside it lists it (always the case
    for the shipped file): a mismatch raises ValueError with expected and actual checksums. A file
    without the config metadata, or whose tensors do not match the config, raises ValueError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    path = Path(path) if path is not None else DATA_DIR / WEIGHTS_FILE
    if not path.is_file():
        raise ValueError(f"weights file {path} does not exist"
                         + ("; build it with scripts/train_lm.py" if path.name == WEIGHTS_FILE else ""))
    verify_checksum(path, hint=_REBUILD)
    try:
        from safetensors import safe_open
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path} is not a readable safetensors file: {e}") from None
    if "course_lib.lm.LMConfig" not in meta:
        raise ValueError(f"{path} has no 'course_lib.lm.LMConfig' metadata: not written by save_lm")
    cfg = LMConfig(**json.loads(meta["course_lib.lm.LMConfig"]))
    if cfg.vocab_size > len(VOCAB):
        raise ValueError(f"{path}: vocab_size={cfg.vocab_size} exceeds the course's {len(VOCAB)}-character vocabulary; "
                         "the model could produce ids no character stands for")
    model = TinyGPT(cfg)
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if want != got:
        missing = sorted(set(want) - set(got))
        extra = sorted(set(got) - set(want))
        wrong = sorted(k for k in set(want) & set(got) if want[k] != got[k])
        raise ValueError(f"{path}: tensors do not match the config {cfg}: missing {missing[:5]}, "
                         f"unexpected {extra[:5]}, wrong shape {[(k, got[k], want[k]) for k in wrong[:5]]}")
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.eval(), CharTokenizer(VOCAB[:cfg.vocab_size])


# ------------------------------------------------------------------------------------------- corpus
def load_corpus(split: str) -> str:
    """The text of one corpus split, ``"train"`` (~2.0 M characters, for training and calibration)
    or ``"heldout"`` (~218 k characters, for evaluation only), after verifying the shipped file's
    SHA-256 against data/SHA256SUMS. Every character is in :data:`VOCAB`."""
    V.one_of("split", split, SPLITS)
    path = DATA_DIR / CORPUS_FILES[split]
    verify_checksum(path, hint=_REBUILD)
    return lzma.decompress(path.read_bytes()).decode("ascii")


def corpus_manifest() -> dict:
    """The corpus manifest (data/pystdlib_manifest.json): Python version, rules, and every file
    with its split, character count and SHA-256."""
    path = DATA_DIR / MANIFEST_FILE
    verify_checksum(path, hint=_REBUILD)
    return json.loads(path.read_text())


def token_chunks(ids: torch.Tensor, length: int, stride: int | None = None) -> torch.Tensor:
    """Cut 1-D ``ids`` (n,) into chunks of ``length`` (>= 2) tokens, starting every ``stride``
    (>= 1; default ``length``: non-overlapping) positions; a last partial chunk is dropped.
    Returns LongTensor (n_chunks, length); n_chunks = (n - length) // stride + 1 (at least 1)."""
    length = V.int_in("length", length, 2, None)
    stride = length if stride is None else V.positive_int("stride", stride)
    if not isinstance(ids, torch.Tensor) or ids.dim() != 1 or ids.is_floating_point():
        raise ValueError("ids must be a 1-D integer tensor (n,)")
    if ids.numel() < length:
        raise ValueError(f"length={length} must be at most the number of ids ({ids.numel()})")
    return ids.unfold(0, length, stride).contiguous()


def calibration_batch(n_chunks: int = 32, length: int = 256, seed: int = 0) -> torch.Tensor:
    """``n_chunks`` (>= 1) chunks of ``length`` (in [2, 4096]) tokens taken from the TRAINING split
    at seeded random offsets (local generator), for calibrating quantizers. Never heldout text.
    Returns LongTensor (n_chunks, length)."""
    n_chunks = V.positive_int("n_chunks", n_chunks)
    length = V.int_in("length", length, 2, 4096)
    ids = CharTokenizer().encode(load_corpus("train"))
    g = torch.Generator().manual_seed(int(seed))
    starts = torch.randint(0, ids.numel() - length + 1, (n_chunks,), generator=g)
    return torch.stack([ids[s:s + length] for s in starts.tolist()])


# --------------------------------------------------------------------------------------- evaluation
def _check_chunks(model: TinyGPT, chunks) -> torch.Tensor:
    if not isinstance(chunks, torch.Tensor) or chunks.dim() != 2 or chunks.is_floating_point():
        raise ValueError("chunks must be an integer tensor of shape (n_chunks, length)")
    ctx = getattr(getattr(model, "cfg", None), "context", None)
    if chunks.shape[0] < 1 or chunks.shape[1] < 2 or (ctx is not None and chunks.shape[1] > ctx):
        raise ValueError(f"chunks has shape {tuple(chunks.shape)}; need n_chunks >= 1 and length in "
                         f"[2, {ctx if ctx is not None else 'context'}]")
    return chunks


@torch.no_grad()
def chunk_nll(model: nn.Module, chunks: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """Mean next-token negative log-likelihood of each chunk, in nats per character.

    chunks: LongTensor (n_chunks, L) with 2 <= L <= context; token t (1 <= t < L) is predicted from
    tokens 0..t-1, and the L-1 losses of a chunk are averaged. Returns float64 (n_chunks,).
    Runs without gradients, in eval mode (the model's previous mode is restored afterwards);
    deterministic for a given model and machine. batch_size >= 1."""
    def score(logits, targets):
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
        return nll.view(targets.shape[0], -1).double().mean(1)
    return _per_chunk(model, chunks, batch_size, score)


@torch.no_grad()
def _per_chunk(model: nn.Module, chunks, batch_size: int, score) -> torch.Tensor:
    """score(logits (b, L-1, V) float32, targets (b, L-1)) -> (b,) for every batch of chunks, in eval mode
    (the previous mode restored), concatenated: float64 (n_chunks,)."""
    chunks = _check_chunks(model, chunks)
    batch_size = V.positive_int("batch_size", batch_size)
    was_training = model.training
    model.eval()
    try:
        return torch.cat([score(model(x[:, :-1]).float(), x[:, 1:]) for x in chunks.split(batch_size)])
    finally:
        model.train(was_training)


def perplexity(nll) -> float:
    """exp(mean(nll)): perplexity per character from per-chunk NLLs in nats (a tensor or sequence
    of finite numbers, or one number). 1 is perfect; a uniform guess over 96 characters gives 96."""
    t = torch.as_tensor(nll, dtype=torch.float64).reshape(-1)
    if t.numel() == 0 or not torch.isfinite(t).all():
        raise ValueError("nll must be a non-empty set of finite numbers")
    return float(torch.exp(t.mean()))


def perplexity_interval(nll_per_chunk, level: float = 0.95, resamples: int = 2000,
                        seed: int = 0, groups=None) -> tuple[float, float, float]:
    """(perplexity, lo, hi): exp of the mean per-chunk NLL and exp of its percentile-bootstrap
    interval (:func:`course_lib.stats.bootstrap_mean_interval`): over chunks, or, with ``groups``
    (one label per chunk, e.g. :func:`eval_chunk_files`), over groups of chunks (files), which is
    wider and right when chunks of a group are correlated. level in (0, 1), resamples >= 100. Chunks
    should be equally long so that each carries equal weight."""
    lo, hi = stats.bootstrap_mean_interval(nll_per_chunk, level=level, resamples=resamples, seed=seed, groups=groups)
    return perplexity(nll_per_chunk), math.exp(lo), math.exp(hi)


def unigram_nll(train_text: str, chunks: torch.Tensor) -> torch.Tensor:
    """Per-chunk NLL (nats per character) of the unigram baseline: character frequencies of
    ``train_text`` (add-one smoothed), scored on tokens 1..L-1 of each chunk like :func:`chunk_nll`.
    chunks: LongTensor (n_chunks, L >= 2). Returns float64 (n_chunks,)."""
    if not isinstance(chunks, torch.Tensor) or chunks.dim() != 2 or chunks.shape[1] < 2:
        raise ValueError("chunks must be an integer tensor of shape (n_chunks, length >= 2)")
    counts = torch.bincount(CharTokenizer().encode(train_text), minlength=len(VOCAB)).double() + 1
    logp = torch.log(counts / counts.sum())
    return -logp[chunks[:, 1:]].mean(1)


# --------------------------------------------------------------------------------------- generation
@torch.no_grad()
def generate(model: TinyGPT, tokenizer: CharTokenizer, prompt: str, n_tokens: int,
             temperature: float = 0.8, top_k: int | None = None, seed: int = 0, use_cache: bool = True) -> str:
    """Continue ``prompt`` (non-empty, characters in the vocabulary) by ``n_tokens`` (in
    [0, 100000]) sampled characters; returns only the continuation. temperature in (0, 10];
    top_k None (all characters) or in [1, vocab_size]. Deterministic for a fixed seed: sampling uses
    a local torch.Generator, never the global random state. The input is cropped to the last
    ``context`` characters. use_cache: decode with the key-value cache (the prompt once, then one
    character per forward pass: batch 1 decoding, as a served LLM does); without it every step re-reads
    the whole window. Once the window is full, each step recomputes the last ``context`` characters
    (what the model was trained on: absolute positions 0 .. context - 1). The model's training/eval
    mode is restored afterwards."""
    n_tokens = V.int_in("n_tokens", n_tokens, 0, 100_000)
    temperature = V.number_in("temperature", temperature, 0.0, 10.0, lo_open=True)
    if top_k is not None:
        top_k = V.int_in("top_k", top_k, 1, tokenizer.vocab_size)
    if not isinstance(prompt, str) or not prompt:
        raise ValueError(f"prompt={prompt!r} must be a non-empty string")
    ids = tokenizer.encode(prompt)
    g = torch.Generator().manual_seed(int(seed))
    ctx = model.cfg.context
    was_training = model.training
    model.eval()
    out = []
    cache = [] if use_cache else None
    try:
        for _ in range(n_tokens):
            if cache is not None and cache and ids.numel() <= ctx:   # one new character, the rest cached
                logits = model(ids[-1:].unsqueeze(0), cache)[0, -1]
            elif cache is not None and ids.numel() <= ctx:           # the prompt, once
                logits = model(ids.unsqueeze(0), cache)[0, -1]
            else:                                                     # no cache, or the window is full
                logits = model(ids[-ctx:].unsqueeze(0))[0, -1]
            logits = logits.double() / temperature
            if top_k is not None and top_k < logits.numel():
                kth = torch.topk(logits, top_k).values[-1]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            nxt = torch.multinomial(torch.softmax(logits, -1), 1, generator=g)
            ids = torch.cat([ids, nxt])
            out.append(int(nxt))
    finally:
        model.train(was_training)
    return tokenizer.decode(out)


# --------------------------------------------------------------------------------------- the chapter's evaluation
EVAL_CHUNKS = 128   # held-out chunks scored per model in chapter 7 (and by `make bench`)
CALIB_CHUNKS = 32   # training chunks of calibration for GPTQ and AWQ


def eval_chunks(tokenizer: CharTokenizer, n_chunks: int = EVAL_CHUNKS, length: int = 256) -> torch.Tensor:
    """``n_chunks`` (in [1, all chunks]) non-overlapping chunks of ``length`` characters of the HELD-OUT
    text, spread evenly over it (first and last included), so every held-out file is represented.
    Returns LongTensor (n_chunks, length)."""
    all_chunks = token_chunks(tokenizer.encode(load_corpus("heldout")), length)
    return all_chunks[_eval_pick(all_chunks.shape[0], n_chunks)]


def _eval_pick(n_all: int, n_chunks: int) -> torch.Tensor:
    """Indices of ``n_chunks`` (in [1, n_all]) of ``n_all`` chunks, spread evenly, first and last included."""
    n_chunks = V.int_in("n_chunks", n_chunks, 1, n_all)
    return torch.linspace(0, n_all - 1, n_chunks).round().long()


def eval_chunk_files(n_chunks: int = EVAL_CHUNKS, length: int = 256) -> torch.Tensor:
    """For the chunks :func:`eval_chunks` returns (same ``n_chunks`` and ``length``): the index of the
    held-out FILE each chunk starts in (LongTensor (n_chunks,)), read from the ``# file:`` header lines
    of the held-out text. Chunks of one file are correlated (one module's style and names), so the
    bootstrap resamples files, not chunks (``stats.bootstrap_mean_interval(..., groups=...)``)."""
    text = load_corpus("heldout")
    starts = [i for i in range(len(text)) if text.startswith("# file: ", i) and (i == 0 or text[i - 1] == "\n")]
    pick = _eval_pick((len(text) - length) // length + 1, n_chunks)  # the chunks eval_chunks takes
    bounds = torch.tensor(starts)
    return torch.searchsorted(bounds, pick * length, right=True) - 1


@torch.no_grad()
def chunk_accuracy(model: nn.Module, chunks: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """Next-character top-1 accuracy of each chunk (tokens 1..L-1 predicted from their prefixes, as in
    :func:`chunk_nll`): float64 (n_chunks,) in [0, 1]. Eval mode; the previous mode is restored."""
    return _per_chunk(model, chunks, batch_size, lambda logits, t: (logits.argmax(-1) == t).double().mean(1))


def linear_macs_per_token(model: nn.Module) -> int:
    """Multiply-accumulates of every linear layer for one character: sum of in_features x out_features
    (an nn.Linear, or a layer replaced by one with those attributes, e.g. ``deploy.OrtLinear``)."""
    return sum(m.in_features * m.out_features for m in model.modules()
               if hasattr(m, "in_features") and hasattr(m, "out_features") and not list(m.children()))


def record(name: str, model: nn.Module, chunks: torch.Tensor, nll: torch.Tensor, size_bytes: int,
           latency_ms: float | None, macs: int | None = None, **extra) -> dict:
    """One results record (``records.record``) of a language model on held-out ``chunks``: ``accuracy``
    the mean next-character accuracy (``metric`` says so) with ``accuracy_ci`` its bootstrap interval over
    chunks (characters are not independent, so the binomial interval on all of them would be too narrow);
    ``perplexity`` and ``perplexity_ci`` from ``nll`` (per chunk, :func:`chunk_nll`); ``n_test`` the
    number of characters predicted; ``params`` counts the float parameters plus the weights of layers
    moved to another runtime; ``macs`` the linear-layer MACs per character (:func:`linear_macs_per_token`);
    ``size_bytes`` and ``latency_ms`` (per generated character; None: not timed) as given."""
    from . import records
    acc = chunk_accuracy(model, chunks)
    ppl, lo, hi = perplexity_interval(nll)
    moved = [m for m in model.modules() if hasattr(m, "run") and hasattr(m, "in_features")]  # e.g. deploy.OrtLinear
    n_weights = sum(p.numel() for p in model.parameters()) + sum(
        m.in_features * m.out_features + (m.bias.numel() if getattr(m, "bias", None) is not None else 0) for m in moved)
    macs = linear_macs_per_token(model) if macs is None else macs
    rec = records.record(name, accuracy=float(acc.mean()), n_test=int(chunks.shape[0] * (chunks.shape[1] - 1)),
                         size_bytes=size_bytes, params=n_weights, nonzero=n_weights, macs=macs, latency_ms=latency_ms,
                         metric="next-character accuracy on held-out Python (bootstrap interval over chunks)",
                         perplexity=ppl, perplexity_ci=[lo, hi], **extra)
    rec["accuracy_ci"] = list(stats.bootstrap_mean_interval(acc))
    return rec
