"""The course's compact model file (".ccz"): sparse positions + codebook indices, Huffman-coded.

Deep Compression stores a pruned, weight-shared layer as (1) the gaps between the positions of its
non-zero weights, (2) each non-zero weight's index into a small codebook, (3) the codebook itself,
and entropy-codes (1) and (2). This module does exactly that, losslessly: ``load_compressed`` gives
back bit-identical tensors, so the loaded model predicts exactly like the in-memory one.

File layout (little-endian)::

    b"CCZ1" | u32 header length | header (UTF-8 JSON: model name/config, tensor table) |
    tensor payloads, in header order | SHA-256 of everything before it (32 bytes)

Nothing is unpickled: the model is rebuilt with ``models.build_model(name, **config)`` and filled
from arrays. A truncated or altered file fails the length or SHA-256 check with a clear error.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import huffman
from .measure import effective_state_dict
from .models import MODELS, build_model

MAGIC = b"CCZ1"
MAX_CODEBOOK = 1 << 16


class CorruptFileError(ValueError):
    """The file is not a valid .ccz file (wrong magic, truncated, checksum mismatch, bad header)."""


def _model_name(model: nn.Module) -> str:
    for name, cls in MODELS.items():
        if type(model) is cls:
            return name
    raise ValueError(f"save_compressed supports the course's models {sorted(MODELS)} rebuilt from their "
                     f"config; got {type(model).__name__}")


def _encode_tensor(t: torch.Tensor) -> tuple[dict, bytes]:
    """Choose an encoding for one tensor and return (header entry, payload)."""
    a = t.detach().cpu().to(torch.float32).contiguous().numpy().ravel()
    nz = np.flatnonzero(a)
    values = a[nz]
    uniq = np.unique(values)
    if a.size >= 64 and uniq.size <= MAX_CODEBOOK and (uniq.size <= 256 or nz.size < a.size // 2):
        gaps = np.diff(np.r_[-1, nz]) - 1  # zeros skipped before each non-zero
        idx = np.searchsorted(uniq, values)
        cb = uniq.astype("<f4").tobytes()
        g = huffman.encode(gaps)
        v = huffman.encode(idx)
        entry = {"enc": "sparse_codebook", "nnz": int(nz.size), "codebook": int(uniq.size),
                 "parts": [len(cb), len(g), len(v)]}
        return entry, cb + g + v
    raw = a.astype("<f4").tobytes()
    return {"enc": "raw_f32", "parts": [len(raw)]}, raw


def _decode_tensor(entry: dict, payload: bytes, shape: tuple) -> torch.Tensor:
    n = int(np.prod(shape)) if shape else 1
    if entry["enc"] == "raw_f32":
        a = np.frombuffer(payload, dtype="<f4")
        if a.size != n:
            raise CorruptFileError(f"tensor payload holds {a.size} values, its shape {shape} needs {n}")
        return torch.from_numpy(a.copy()).view(shape)
    if entry["enc"] != "sparse_codebook":
        raise CorruptFileError(f"unknown tensor encoding {entry['enc']!r}")
    lc, lg, _ = entry["parts"]
    cb = np.frombuffer(payload[:lc], dtype="<f4")
    gaps = huffman.decode(payload[lc:lc + lg])
    idx = huffman.decode(payload[lc + lg:])
    if gaps.size != entry["nnz"] or idx.size != entry["nnz"] or (idx.size and idx.max() >= cb.size):
        raise CorruptFileError("sparse tensor streams disagree with the header")
    pos = np.cumsum(gaps + 1) - 1
    if pos.size and pos[-1] >= n:
        raise CorruptFileError("sparse positions run past the tensor's end")
    a = np.zeros(n, dtype=np.float32)
    a[pos] = cb[idx]
    return torch.from_numpy(a).view(shape)


def save_compressed(model: nn.Module, path: str | os.PathLike) -> int:
    """Write ``model`` (a course model: LeNet5, MLP, ResNet8) to ``path`` in the .ccz format; return bytes written.

    Tensors whose non-zeros take few distinct values (after pruning and weight sharing) are stored as
    Huffman-coded gaps + codebook indices + a float32 codebook; others as raw float32. Lossless.
    """
    name = _model_name(model)
    state = effective_state_dict(model)
    entries, payloads = [], []
    for key, t in state.items():
        if not torch.is_floating_point(t):
            raise ValueError(f"tensor {key!r} has dtype {t.dtype}; only floating-point state is supported")
        entry, payload = _encode_tensor(t)
        entry.update(name=key, shape=list(t.shape))
        entries.append(entry)
        payloads.append(payload)
    header = json.dumps({"model": name, "config": model.config, "tensors": entries},
                        separators=(",", ":")).encode()
    body = MAGIC + struct.pack("<I", len(header)) + header + b"".join(payloads)
    data = body + hashlib.sha256(body).digest()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(data)
    return len(data)


def load_compressed(path: str | os.PathLike) -> nn.Module:
    """Read a .ccz file written by ``save_compressed`` and return the model (CPU, eval mode).

    Raises CorruptFileError (a ValueError) if the file is not a .ccz file, is truncated, or was altered.
    """
    data = Path(path).read_bytes()
    if len(data) < 4 + 4 + 32 or data[:4] != MAGIC:
        raise CorruptFileError(f"{path}: not a course compressed model (bad magic or too short)")
    body, digest = data[:-32], data[-32:]
    if hashlib.sha256(body).digest() != digest:
        raise CorruptFileError(f"{path}: checksum mismatch: the file is truncated or corrupted")
    (hlen,) = struct.unpack_from("<I", body, 4)
    try:
        header = json.loads(body[8:8 + hlen].decode())
        name, config, entries = header["model"], header["config"], header["tensors"]
    except (ValueError, KeyError, UnicodeDecodeError) as e:
        raise CorruptFileError(f"{path}: unreadable header ({e})") from e
    if name not in MODELS:
        raise CorruptFileError(f"{path}: unknown model {name!r}")
    if "hidden" in config:
        config = {**config, "hidden": tuple(config["hidden"])}
    model = build_model(name, **config)
    off = 8 + hlen
    state = {}
    for e in entries:
        size = sum(e["parts"])
        if off + size > len(body):
            raise CorruptFileError(f"{path}: tensor {e['name']!r} runs past the end of the file")
        state[e["name"]] = _decode_tensor(e, body[off:off + size], tuple(e["shape"]))
        off += size
    if off != len(body):
        raise CorruptFileError(f"{path}: {len(body) - off} unexpected bytes after the last tensor")
    model.load_state_dict(state)
    return model.eval()


def tensor_streams(t: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The three streams Deep Compression stores for one weight tensor.

    Returns (gaps, indices, codebook): gaps[i] = zeros skipped before the i-th non-zero (int64, (nnz,)),
    indices[i] = position of its value in the sorted codebook (int64, (nnz,)), codebook (float32, (K,)).
    """
    a = t.detach().cpu().to(torch.float32).numpy().ravel()
    nz = np.flatnonzero(a)
    codebook = np.unique(a[nz])
    return np.diff(np.r_[-1, nz]) - 1, np.searchsorted(codebook, a[nz]), codebook.astype(np.float32)


def stream_report(model: nn.Module) -> list[dict]:
    """Per Conv2d/Linear weight: bytes of its gap and index streams stored three ways.

    Each row: layer, nnz, codebook (K), and for gaps and indices: "fixed" (every symbol with the same
    number of bits, ceil(log2(max + 1))), "huffman" (``huffman.encode``, table included), "entropy"
    (the Shannon bound, nnz * H / 8), "zlib" and "lzma" (general-purpose coders on int32 symbols).
    All sizes in bytes (floats for the bound).
    """
    import lzma
    import zlib

    rows = []
    for name, mod in model.named_modules():
        if not isinstance(mod, (nn.Conv2d, nn.Linear)):
            continue
        gaps, idx, cb = tensor_streams(mod.weight)
        row = {"layer": name, "nnz": int(idx.size), "codebook": int(cb.size)}
        for key, s in (("gaps", gaps), ("index", idx)):
            width = max(1, int(np.ceil(np.log2(int(s.max()) + 1)))) if s.size else 0
            raw = s.astype("<i4").tobytes()
            row[f"{key}_fixed"] = int(np.ceil(s.size * width / 8))
            row[f"{key}_huffman"] = len(huffman.encode(s))
            row[f"{key}_entropy"] = s.size * huffman.entropy_bits(s) / 8 if s.size else 0.0
            row[f"{key}_zlib"] = len(zlib.compress(raw, 9))
            row[f"{key}_lzma"] = len(lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME))
        rows.append(row)
    return rows
