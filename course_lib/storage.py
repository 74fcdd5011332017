"""Every file the course writes, and the size it reports: state dicts, zlib/lzma, the sparse formats
(``sparse_encode``, "CSP2") and the compact Deep Compression model file (".ccz").

Both course formats share one container::

    magic (4 bytes) | u32 header length | header (UTF-8 JSON) | payloads, in header order |
    SHA-256 of everything before it (32 bytes)

so a truncated or altered file fails the length or SHA-256 check with ``CorruptFileError`` (a
ValueError), and nothing is ever unpickled.

The ".ccz" file. Deep Compression stores a pruned, weight-shared layer as (1) the gaps between
the positions of its non-zero weights, (2) each non-zero weight's index into a small codebook,
(3) the codebook itself, and entropy-codes (1) and (2) (``huffman``). ``save_compressed`` does
exactly that, losslessly: ``load_compressed`` gives back bit-identical tensors, so the loaded model
predicts exactly like the in-memory one. The header names the model and its config; the model is
rebuilt with ``models.build_model(name, **config)`` and filled from arrays.
"""
from __future__ import annotations

import copy
import hashlib
import json
import lzma
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import _validate as V
from . import huffman
from .data import atomic_write
from .measure import effective_state_dict, serialize
from .models import MODELS, build_model

__all__ = ["COMPRESSORS", "compress", "decompress", "size_bytes", "copy_model", "save_state", "zlib_file",
           "CorruptFileError", "sparse_encode", "sparse_decode", "sparse_bytes", "save_compressed",
           "load_compressed", "tensor_streams", "stream_report", "HAN_GAP_BITS", "relative_index",
           "relative_positions", "min_width_bytes"]

# ---------------------------------------------------------------- general-purpose compressors
COMPRESSORS = {  # name: (compress, decompress); the course's presets, strongest settings
    "zlib": (lambda b: zlib.compress(b, 9), zlib.decompress),
    "lzma": (lambda b: lzma.compress(b, preset=9 | lzma.PRESET_EXTREME), lzma.decompress),
}


def _check_compress(compress, allow_none: bool = True):
    choices = ((None,) if allow_none else ()) + tuple(COMPRESSORS)
    return V.one_of("compress", compress, choices)


def compress(data: bytes, method: str) -> bytes:
    """``data`` compressed with ``method`` ("zlib" level 9 or "lzma" preset 9 extreme)."""
    return COMPRESSORS[_check_compress(method, allow_none=False)][0](bytes(data))


def decompress(data: bytes, method: str) -> bytes:
    """Inverse of ``compress``."""
    return COMPRESSORS[_check_compress(method, allow_none=False)][1](bytes(data))


def size_bytes(model, compress: str | None = None) -> int:
    """Bytes of the saved artifact.

    model: an nn.Module (its state dict as ``torch.save`` writes it), a state dict, raw bytes,
    or a path to a file. compress: None, "zlib" or "lzma" (entropy coding of those bytes).
    """
    _check_compress(compress)
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if not path.is_file():
            raise FileNotFoundError(f"size_bytes: no file at {path}")
        return os.path.getsize(path) if compress is None else len(COMPRESSORS[compress][0](path.read_bytes()))
    data = model if isinstance(model, (bytes, bytearray)) else serialize(model)
    return len(data) if compress is None else len(COMPRESSORS[compress][0](bytes(data)))


# ---------------------------------------------------------------- plain files
def copy_model(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` (CPU, eval mode)."""
    return copy.deepcopy(model).cpu().eval()


def save_state(model: nn.Module, path) -> int:
    """``torch.save`` the model's effective state dict (pruning masks folded in) to ``path``; return its bytes.

    Load it back with ``torch.load(path, weights_only=True)``. torch.ao quantized models are saved
    with their own state dict (their packed weights serialise through torch.save).
    """
    atomic_write(path, serialize(model))
    return os.path.getsize(path)


def zlib_file(src, dest) -> Path:
    """Write ``src``'s bytes zlib-compressed (level 9) to ``dest``; return dest (what 'zipping' a model gives)."""
    return atomic_write(dest, compress(Path(src).read_bytes(), "zlib"))


# ---------------------------------------------------------------- the shared container
class CorruptFileError(ValueError):
    """Not a valid course file (wrong magic, truncated, checksum mismatch, bad header)."""


def _write_container(magic: bytes, header, payloads: list[bytes]) -> bytes:
    head = json.dumps(header, separators=(",", ":")).encode()
    body = magic + struct.pack("<I", len(head)) + head + b"".join(payloads)
    return body + hashlib.sha256(body).digest()


def _read_container(data: bytes, magic: bytes, what: str):
    """(header, body, offset of the first payload) of a container; raises CorruptFileError."""
    data = bytes(data)
    if len(data) < len(magic) + 4 + 32 or data[:len(magic)] != magic:
        raise CorruptFileError(f"{what}: not a {magic.decode()} file (bad magic or too short)")
    body, digest = data[:-32], data[-32:]
    if hashlib.sha256(body).digest() != digest:
        raise CorruptFileError(f"{what}: checksum mismatch: the file is truncated or corrupted")
    start = len(magic) + 4
    (hlen,) = struct.unpack_from("<I", body, len(magic))
    try:
        header = json.loads(body[start:start + hlen].decode())
    except (ValueError, UnicodeDecodeError) as e:
        raise CorruptFileError(f"{what}: unreadable header ({e})") from e
    return header, body, start + hlen


# ---------------------------------------------------------------- sparse formats (chapter 1)
_FORMATS = ("dense", "bitmask", "csr")
SPARSE_MAGIC = b"CSP2"


def sparse_encode(model_or_state, fmt: str = "bitmask", compress: str | None = "lzma") -> bytes:
    """Serialise a (pruned) model's weights in a sparse format; return the bytes.

    fmt: "dense" (every float32), "bitmask" (1 bit per weight saying zero/non-zero, then the
    non-zero float32 values) or "csr" (per row of the 2-D view (out, rest): row pointers as int32,
    column indices as uint16/int32, non-zero float32 values). Tensors that are not 2-D or more
    (biases) are stored dense; integer buffers (BatchNorm's num_batches_tracked) are not weights
    and are skipped. compress: None, "zlib" or "lzma" (entropy coding of the tensor table and all
    tensor data as one stream). The container (magic "CSP2", JSON header {"compress": ...}, that one
    payload, SHA-256) is described in the module docstring. ``sparse_decode`` reads it back exactly.
    """
    V.one_of("fmt", fmt, _FORMATS)
    _check_compress(compress)
    state = model_or_state if isinstance(model_or_state, dict) else effective_state_dict(model_or_state)
    tensors, chunks = [], []
    for name, t in state.items():
        if not t.is_floating_point():
            continue
        a = t.detach().cpu().to(torch.float32).numpy()
        kind = fmt if a.ndim >= 2 else "dense"
        if kind == "dense":
            parts = [a.astype("<f4").tobytes()]
        elif kind == "bitmask":
            nz = a.ravel() != 0
            parts = [np.packbits(nz).tobytes(), a.ravel()[nz].astype("<f4").tobytes()]
        else:
            m = a.reshape(a.shape[0], -1)
            rows, cols = np.nonzero(m)
            idx_t = "<u2" if m.shape[1] <= 65536 else "<i4"
            ptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=m.shape[0]))]).astype("<i4")
            parts = [ptr.tobytes(), cols.astype(idx_t).tobytes(), m[rows, cols].astype("<f4").tobytes()]
        tensors.append([name, list(a.shape), kind, [len(p) for p in parts]])
        chunks.extend(parts)
    table = json.dumps(tensors, separators=(",", ":")).encode()
    data = struct.pack("<I", len(table)) + table + b"".join(chunks)  # the tensor table is compressed too
    payload = data if compress is None else COMPRESSORS[compress][0](data)
    return _write_container(SPARSE_MAGIC, {"compress": compress}, [payload])


def sparse_decode(blob: bytes) -> dict[str, torch.Tensor]:
    """Inverse of ``sparse_encode``: the float32 state dict {name: tensor}, bit-exact.

    Raises CorruptFileError (a ValueError) for bytes that are not the output of sparse_encode.
    """
    if not isinstance(blob, (bytes, bytearray)):
        raise CorruptFileError(f"blob must be bytes from sparse_encode, not {type(blob).__name__}")
    header, body, off = _read_container(blob, SPARSE_MAGIC, "blob (the output of sparse_encode)")
    try:
        method = header["compress"]
        data = body[off:] if method is None else COMPRESSORS[method][1](body[off:])
        (tlen,) = struct.unpack_from("<I", data, 0)
        entries = json.loads(data[4:4 + tlen].decode())
    except (KeyError, TypeError, ValueError, struct.error, zlib.error, lzma.LZMAError) as e:
        raise CorruptFileError(f"blob (the output of sparse_encode): bad header or payload ({e})") from e
    pos, out = 4 + tlen, {}
    for name, shape, kind, lens in entries:
        parts = []
        for n in lens:
            parts.append(data[pos:pos + n])
            pos += n
        size = int(np.prod(shape)) if shape else 1
        if kind == "dense":
            a = np.frombuffer(parts[0], "<f4").reshape(shape)
        elif kind == "bitmask":
            nz = np.unpackbits(np.frombuffer(parts[0], np.uint8), count=size).astype(bool)
            a = np.zeros(size, np.float32)
            a[nz] = np.frombuffer(parts[1], "<f4")
            a = a.reshape(shape)
        else:
            rows_n = shape[0]
            ncols = size // rows_n
            ptr = np.frombuffer(parts[0], "<i4")
            idx_t = "<u2" if ncols <= 65536 else "<i4"
            cols = np.frombuffer(parts[1], idx_t).astype(np.int64)
            vals = np.frombuffer(parts[2], "<f4")
            m = np.zeros((rows_n, ncols), np.float32)
            rows = np.repeat(np.arange(rows_n), np.diff(ptr))
            m[rows, cols] = vals
            a = m.reshape(shape)
        out[name] = torch.from_numpy(a.copy())
    if pos != len(data):
        raise CorruptFileError(f"blob (the output of sparse_encode): {len(data) - pos} bytes after the last tensor")
    return out


def sparse_bytes(model_or_state, fmt: str = "bitmask", compress: str | None = "lzma") -> int:
    """Bytes of ``sparse_encode(model_or_state, fmt, compress)``."""
    return len(sparse_encode(model_or_state, fmt, compress))


# ---------------------------------------------------------------- the .ccz model file (chapter 5)
MAGIC = b"CCZ1"
MAX_CODEBOOK = 1 << 16


def _model_name(model: nn.Module) -> str:
    for name, cls in MODELS.items():
        if type(model) is cls:
            return name
    raise ValueError(f"save_compressed supports the course's models {sorted(MODELS)} rebuilt from their "
                     f"config; got {type(model).__name__}")


def tensor_streams(t: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The three streams Deep Compression stores for one weight tensor.

    Returns (gaps, indices, codebook): gaps[i] = zeros skipped before the i-th non-zero (int64, (nnz,)),
    indices[i] = position of its value in the sorted codebook (int64, (nnz,)), codebook (float32, (K,)).
    """
    a = t.detach().cpu().to(torch.float32).contiguous().numpy().ravel()
    nz = np.flatnonzero(a)
    codebook = np.unique(a[nz])
    return np.diff(np.r_[-1, nz]) - 1, np.searchsorted(codebook, a[nz]), codebook.astype(np.float32)


def _encode_tensor(t: torch.Tensor, codebook_bits: int | None = None) -> tuple[dict, bytes]:
    """Choose an encoding for one tensor and return (header entry, payload). ``codebook_bits``: the
    tensor is a shared layer whose non-zeros take at most 2**codebook_bits values (ValueError naming the
    count otherwise); it is stored as a codebook whatever its size, with ``bits`` in its entry."""
    if not t.is_floating_point():  # integer buffers, e.g. BatchNorm's num_batches_tracked
        raw = t.detach().cpu().to(torch.int64).contiguous().numpy().astype("<i8").tobytes()
        return {"enc": "raw_i64", "parts": [len(raw)]}, raw
    n = t.numel()
    gaps, idx, codebook = tensor_streams(t)
    if codebook_bits is not None and codebook.size > 2 ** codebook_bits:
        raise ValueError(f"{codebook.size} distinct non-zero values, but bits={codebook_bits} indexes at most "
                         f"2**{codebook_bits} = {2 ** codebook_bits}: share its weights first")
    if codebook_bits is not None or (n >= 64 and codebook.size <= MAX_CODEBOOK and
                                     (codebook.size <= 256 or idx.size < n // 2)):
        cb = codebook.astype("<f4").tobytes()
        g = huffman.encode(gaps)
        v = huffman.encode(idx)
        entry = {"enc": "sparse_codebook", "nnz": int(idx.size), "codebook": int(codebook.size),
                 "parts": [len(cb), len(g), len(v)]}
        if codebook_bits is not None:
            entry["bits"] = codebook_bits
        return entry, cb + g + v
    raw = t.detach().cpu().to(torch.float32).contiguous().numpy().astype("<f4").tobytes()
    return {"enc": "raw_f32", "parts": [len(raw)]}, raw


def _decode_tensor(entry: dict, payload: bytes, shape: tuple) -> torch.Tensor:
    n = int(np.prod(shape)) if shape else 1
    if entry["enc"] in ("raw_f32", "raw_i64"):
        a = np.frombuffer(payload, dtype="<f4" if entry["enc"] == "raw_f32" else "<i8")
        if a.size != n:
            raise CorruptFileError(f"tensor payload holds {a.size} values, its shape {shape} needs {n}")
        return torch.from_numpy(a.copy()).view(shape)
    if entry["enc"] != "sparse_codebook":
        raise CorruptFileError(f"unknown tensor encoding {entry['enc']!r}")
    lc, lg, _ = entry["parts"]
    cb = np.frombuffer(payload[:lc], dtype="<f4")
    if "bits" in entry and cb.size > 2 ** int(entry["bits"]):
        raise CorruptFileError(f"codebook of {cb.size} values does not fit the header's {entry['bits']} bits")
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


def _layer_bits(model: nn.Module, bits) -> dict:
    """{weight key: bits} from None, an int (every Conv2d/Linear weight) or {layer name: bits}."""
    return {f"{n}.weight": b for n, b in V.layer_bits(model, bits).items()}


def save_compressed(model: nn.Module, path: str | os.PathLike, bits=None) -> int:
    """Write ``model`` (a course model: LeNet5, MLP, ResNet8) to ``path`` in the .ccz format; return bytes written.

    Float tensors whose non-zeros take few distinct values (after pruning and weight sharing) are
    stored as Huffman-coded gaps + codebook indices + a float32 codebook; other float tensors as raw
    float32; integer buffers (BatchNorm's num_batches_tracked) as raw int64. Lossless for float32
    models. bits: the index width of each shared layer (an int in 1..16 or {layer: bits}, e.g.
    ``recipes.DC_BITS``), stored in the header (``"bits"``) and checked: a layer with more distinct
    non-zero values than 2**bits raises ValueError (naming the count), a layer within it is stored as a
    codebook whatever its size, and ``load_compressed`` checks the bound again.
    """
    name = _model_name(model)
    widths = _layer_bits(model, bits)
    entries, payloads = [], []
    for key, t in effective_state_dict(model).items():
        try:
            entry, payload = _encode_tensor(t, widths.get(key))
        except ValueError as e:
            raise ValueError(f"{key}: {e}") from None
        entry.update(name=key, shape=list(t.shape))
        entries.append(entry)
        payloads.append(payload)
    data = _write_container(MAGIC, {"model": name, "config": model.config, "tensors": entries}, payloads)
    atomic_write(path, data)
    return len(data)


def load_compressed(path: str | os.PathLike) -> nn.Module:
    """Read a .ccz file written by ``save_compressed`` and return the model (CPU, eval mode).

    Raises CorruptFileError (a ValueError) if the file is not a .ccz file, is truncated, or was altered.
    """
    header, body, off = _read_container(Path(path).read_bytes(), MAGIC, str(path))
    try:
        name, config, entries = header["model"], header["config"], header["tensors"]
    except (KeyError, TypeError) as e:
        raise CorruptFileError(f"{path}: unreadable header ({e})") from e
    if name not in MODELS:
        raise CorruptFileError(f"{path}: unknown model {name!r}")
    if "hidden" in config:
        config = {**config, "hidden": tuple(config["hidden"])}
    model = build_model(name, **config)
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


# Han et al. (2016) store each gap in a fixed number of bits: 8 for conv layers, 5 for fc layers (LeNet).
HAN_GAP_BITS = {"conv": 8, "fc": 5}


def relative_index(gaps, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Han et al.'s relative index: ``gaps`` (zeros skipped before each non-zero, ints >= 0, shape (nnz,))
    bounded to ``bits`` (1..16) bits. A gap g larger than 2**bits - 1 is split by g // 2**bits filler
    entries (a stored zero weight at gap 2**bits - 1 each), then the real entry at gap g mod 2**bits.

    Returns (entries, filler): the gaps of all stored entries (int64, every one < 2**bits) and a bool
    array, True for the fillers. ``relative_positions`` inverts it."""
    bits = V.int_in("bits", bits, 1, 16)
    g = np.asarray(gaps, dtype=np.int64).ravel()
    if g.size and g.min() < 0:
        raise ValueError("gaps must be >= 0 (zeros skipped before each non-zero)")
    span = 1 << bits
    fillers = g // span
    real_at = np.cumsum(fillers + 1) - 1                     # index of each real entry among all entries
    entries = np.full(int(fillers.sum()) + g.size, span - 1, dtype=np.int64)
    filler = np.ones(entries.size, dtype=bool)
    entries[real_at] = g % span
    filler[real_at] = False
    return entries, filler


def relative_positions(entries, filler) -> np.ndarray:
    """The flat positions of the real (non-filler) entries of a ``relative_index`` stream (int64, (nnz,))."""
    e = np.asarray(entries, dtype=np.int64).ravel()
    f = np.asarray(filler, dtype=bool).ravel()
    if e.shape != f.shape:
        raise ValueError(f"entries and filler must have the same length, got {e.size} and {f.size}")
    return (np.cumsum(e + 1) - 1)[~f]


def min_width_bytes(symbols) -> bytes:
    """Non-negative integer ``symbols`` as little-endian bytes of the narrowest unsigned type that holds
    them (uint8, uint16, uint32): what a general-purpose coder should be fed (not int32 with zero bytes)."""
    s = np.asarray(symbols, dtype=np.int64).ravel()
    if s.size and s.min() < 0:
        raise ValueError(f"symbols must be >= 0, got a minimum of {int(s.min())}")
    top = int(s.max()) if s.size else 0
    if top >= 1 << 32:
        raise ValueError(f"symbols must be < 2**32 (uint32 at most), got a maximum of {top}")
    dtype = "<u1" if top < 1 << 8 else "<u2" if top < 1 << 16 else "<u4"
    return s.astype(dtype).tobytes()


def stream_report(model: nn.Module, gap_bits=None) -> list[dict]:
    """Per Conv2d/Linear weight: bytes of its gap and index streams stored several ways.

    Each row: layer, nnz, codebook (K), and for gaps and indices: "fixed" (every symbol with the same
    number of bits, ceil(log2(max + 1))), "huffman" (``huffman.encode``, table included), "entropy"
    (the Shannon bound, nnz * H / 8), "zlib" and "lzma" (general-purpose coders on the symbols as
    ``min_width_bytes``: uint8 or uint16). Han et al.'s layout: "han_bits" (the gap width, from
    ``gap_bits``: an int, {layer: bits}, or None for ``HAN_GAP_BITS``: 8 for conv, 5 for fc),
    "han_entries" (non-zeros + fillers, ``relative_index``), "gaps_han" and "index_han" (every entry,
    fillers included, with a fixed-width gap and a fixed-width index of ceil(log2 K) bits).
    All sizes in bytes (floats for the bound).
    """
    widths = V.layer_bits(model, gap_bits)   # layers not named in a dict keep Han's width
    rows = []
    for name, mod in model.named_modules():
        if not isinstance(mod, (nn.Conv2d, nn.Linear)):
            continue
        gaps, idx, cb = tensor_streams(mod.weight)
        row = {"layer": name, "nnz": int(idx.size), "codebook": int(cb.size)}
        for key, s in (("gaps", gaps), ("index", idx)):
            width = max(1, int(np.ceil(np.log2(int(s.max()) + 1)))) if s.size else 0
            raw = min_width_bytes(s)
            row[f"{key}_fixed"] = int(np.ceil(s.size * width / 8))
            row[f"{key}_huffman"] = len(huffman.encode(s))
            row[f"{key}_entropy"] = s.size * huffman.entropy_bits(s) / 8 if s.size else 0.0
            row[f"{key}_zlib"] = len(compress(raw, "zlib"))
            row[f"{key}_lzma"] = len(compress(raw, "lzma"))
        hb = widths.get(name) or HAN_GAP_BITS["conv" if isinstance(mod, nn.Conv2d) else "fc"]
        entries, _ = relative_index(gaps, hb)
        index_width = max(1, int(np.ceil(np.log2(max(cb.size, 2)))))
        row.update(han_bits=int(hb), han_entries=int(entries.size),
                   gaps_han=int(np.ceil(entries.size * hb / 8)), index_han=int(np.ceil(entries.size * index_width / 8)))
        rows.append(row)
    return rows
