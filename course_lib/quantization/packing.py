"""What a quantized model weighs: integers packed at ``bits`` bits each, the saved artifact of a
fake-quantized or k-means model (``packed_state_dict``), its size, and the loader that reads it back
(``load_packed``), so that every size reported belongs to a file that loads; and the 4-bit layout of
onnxruntime's ``MatMulNBits`` kernel (``pack_matmulnbits``), so group-wise codes run on a real int4 kernel."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .. import measure
from .._validate import int_in
from .affine import check_bits, dequantize, qrange, quantize
from .fakequant import FLOAT_BITS, QuantWrapper
from .kmeans import KMeansWrapper

__all__ = ["pack_bits", "unpack_bits", "pack_int4", "unpack_int4", "packed_state_dict", "packed_size_bytes",
           "load_packed", "MATMULNBITS_BLOCK_SIZES", "check_block_size", "pack_matmulnbits", "unpack_matmulnbits"]

INT4_LEVELS = 16  # values of a 4-bit code: 0..15


# ---------------------------------------------------------------- any width, LSB first
def pack_bits(q: torch.Tensor, bits: int, qmin: int = 0) -> torch.Tensor:
    """Pack integers ``q`` in [qmin, qmin + 2**bits - 1] into ``ceil(q.numel() * bits / 8)`` bytes (uint8).

    Values are shifted by ``-qmin`` and written least-significant bit first, in q's flattened order.
    """
    bits = check_bits(bits)
    v = (q.detach().reshape(-1).to(torch.int64) - qmin).cpu().numpy()
    if v.size and (v.min() < 0 or v.max() >= 2 ** bits):
        raise ValueError(f"q holds values outside [{qmin}, {qmin + 2 ** bits - 1}]: cannot pack in {bits} bits")
    bitplanes = ((v[:, None] >> np.arange(bits)) & 1).astype(np.uint8)
    return torch.from_numpy(np.packbits(bitplanes.reshape(-1), bitorder="little").copy())


def unpack_bits(packed: torch.Tensor, bits: int, numel: int, qmin: int = 0) -> torch.Tensor:
    """Inverse of ``pack_bits``: the first ``numel`` (>= 0) integers (int64, flat) of a packed buffer."""
    bits = check_bits(bits)
    numel = int_in("numel", numel, 0, None)
    flat = np.unpackbits(packed.cpu().numpy(), bitorder="little")[: numel * bits]
    if flat.size != numel * bits:
        raise ValueError(f"packed holds {packed.numel()} bytes, fewer than {numel} values of {bits} bits need")
    v = (flat.reshape(numel, bits).astype(np.int64) << np.arange(bits)).sum(1)
    return torch.from_numpy(v) + qmin


# ---------------------------------------------------------------- 4-bit nibbles, row by row
def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """Two 4-bit codes per byte: codes uint8 (..., n) with values in [0, 15], n even ->
    uint8 (..., n/2) with the even column in the low nibble."""
    if codes.dtype != torch.uint8 or (codes.numel() and int(codes.max()) >= INT4_LEVELS):
        raise ValueError("codes must be uint8 in [0, 15]")
    if codes.shape[-1] % 2:
        raise ValueError(f"the last dimension ({codes.shape[-1]}) must be even")
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_int4`: uint8 (..., n/2) -> uint8 codes (..., n) in [0, 15]."""
    return torch.stack([packed & (INT4_LEVELS - 1), packed >> 4], -1).flatten(-2)


# ---------------------------------------------------------------- the artifact of a quantized model
_WRAPPER_KEYS = ("codebook", "indices", "act_scale", "act_zero_point", "weight_scale", "weight_zero_point")  # stored by their wrapper, not as is


def _quant_wrapper_state(m: QuantWrapper, p: str) -> dict:
    out = {}
    if m.weight_bits != FLOAT_BITS:
        s, z = m.weight_qparams()
        q, _, _ = quantize(m.layer.weight.detach().cpu(), m.weight_bits, m.weight_symmetric, m.weight_axis,
                           scale=s.cpu(), zero_point=z.cpu())
        out[p + "weight_packed"] = pack_bits(q, m.weight_bits, qrange(m.weight_bits, m.weight_symmetric)[0])
        out[p + "weight_scale"] = s.detach().cpu()
        if not m.weight_symmetric:
            out[p + "weight_zero_point"] = z.detach().cpu().to(torch.int16)
    if m.act_scale is not None:
        out[p + "act_scale"], out[p + "act_zero_point"] = m.act_scale, m.act_zero_point.to(torch.int16)
    return out


def _kmeans_wrapper_state(m: KMeansWrapper, p: str) -> dict:
    return {p + "indices_packed": pack_bits(m.indices, m.bits), p + "codebook": m.codebook.detach()}


def _wrappers(qmodel: nn.Module):
    """(prefix, wrapper) of every QuantWrapper and KMeansWrapper."""
    for name, m in qmodel.named_modules():
        if isinstance(m, (QuantWrapper, KMeansWrapper)):
            yield (f"{name}." if name else ""), m


def _packed_weight(m) -> bool:
    return isinstance(m, KMeansWrapper) or m.weight_bits != FLOAT_BITS


def _plain_tensors(qmodel: nn.Module, packed_ids: set):
    """(name, tensor) of the parameters and buffers stored as they are (biases, float layers)."""
    for name, t in list(qmodel.named_parameters()) + list(qmodel.named_buffers()):
        if id(t) not in packed_ids and not name.endswith(_WRAPPER_KEYS):
            yield name, t


def packed_state_dict(qmodel: nn.Module) -> dict:
    """The artifact a quantized model is saved as: bit-packed integer weights plus their parameters.

    QuantWrapper: packed weights (weight_bits each, unless 32) and their float32 scales (per channel
    or per tensor; int16 zero-points too for an asymmetric grid), activation scale (float32) /
    zero-point (int16) once calibrated; KMeansWrapper:
    packed indices (bits each) and the float32 codebook. Biases and any other layer stay float32.
    Returns {name: tensor} ready for ``torch.save``; read it back into a model of the same structure
    with :func:`load_packed`.
    """
    out, packed_ids = {}, set()
    for p, m in _wrappers(qmodel):
        out.update(_quant_wrapper_state(m, p) if isinstance(m, QuantWrapper) else _kmeans_wrapper_state(m, p))
        if _packed_weight(m):
            packed_ids.add(id(m.layer.weight))
    for name, t in _plain_tensors(qmodel, packed_ids):
        out[name] = t.detach()
    return out


def packed_size_bytes(qmodel: nn.Module) -> int:
    """Bytes of ``torch.save(packed_state_dict(qmodel))``: what the quantized model weighs on disk."""
    return measure.serialized_bytes(packed_state_dict(qmodel))


def _take(state: dict, key: str, used: set) -> torch.Tensor:
    if key not in state:
        raise ValueError(f"state has no entry {key!r}: it does not come from a model of this structure")
    used.add(key)
    return state[key]


@torch.no_grad()
def load_packed(qmodel: nn.Module, state: dict) -> nn.Module:
    """Load a :func:`packed_state_dict` (e.g. read back with ``torch.load``) into ``qmodel``, IN PLACE.

    qmodel: a model of the same structure and bit widths (``quantize_model`` / ``kmeans_model`` of the
    same architecture, any weights). Quantized weights are unpacked and dequantized, and their stored
    grid (scale, zero-point) is fixed on the wrapper, so re-quantizing them gives the same integers;
    codebooks and indices are restored, activation ranges set. Raises ValueError for a missing or unexpected entry. Returns qmodel.
    """
    used, packed_ids = set(), set()
    for p, m in _wrappers(qmodel):
        w = m.layer.weight
        if isinstance(m, KMeansWrapper):
            packed_ids.add(id(w))
            idx = unpack_bits(_take(state, p + "indices_packed", used), m.bits, m.indices.numel())
            m.indices.copy_(idx.reshape(m.indices.shape))
            m.codebook.copy_(_take(state, p + "codebook", used))
            continue
        if m.weight_bits != FLOAT_BITS:
            packed_ids.add(id(w))
            qmin = qrange(m.weight_bits, m.weight_symmetric)[0]
            q = unpack_bits(_take(state, p + "weight_packed", used), m.weight_bits, w.numel(), qmin).reshape(w.shape)
            scale = _take(state, p + "weight_scale", used).float().clone()
            zp = (_take(state, p + "weight_zero_point", used).to(torch.int32) if not m.weight_symmetric
                  else torch.zeros_like(scale, dtype=torch.int32))
            w.copy_(dequantize(q, scale, zp, m.weight_axis))
            m.weight_scale, m.weight_zero_point = scale.to(w.device), zp.to(w.device)  # the stored grid, exactly
        if p + "act_scale" in state:
            m.act_scale = _take(state, p + "act_scale", used).float().clone()
            m.act_zero_point = _take(state, p + "act_zero_point", used).to(torch.int32)
    for name, t in _plain_tensors(qmodel, packed_ids):
        t.copy_(_take(state, name, used))
    unexpected = sorted(set(state) - used)
    if unexpected:
        raise ValueError(f"state has entries {unexpected} that qmodel has no place for")
    return qmodel


# ---------------------------------------------------------------- onnxruntime's MatMulNBits layout (4 bits)
MATMULNBITS_BLOCK_SIZES = (16, 32, 64, 128, 256)  # powers of two >= 16, as MatMulNBits requires
MATMULNBITS_DEFAULT_ZERO = 8                      # the zero point MatMulNBits assumes when none is given


def check_block_size(block_size) -> int:
    """``block_size`` if it is a power of two in [16, 256] (onnxruntime's MatMulNBits: a power of two
    and at least 16; its CPU kernels and quantizers go up to 256), else ValueError naming it."""
    if block_size not in MATMULNBITS_BLOCK_SIZES or isinstance(block_size, bool):
        raise ValueError(f"block_size={block_size!r} must be a power of two in [16, 256]: one of "
                         f"{list(MATMULNBITS_BLOCK_SIZES)}")
    return int(block_size)


def _nibbles(name: str, x, ndim: int) -> torch.Tensor:
    """``x`` (tensor or array) as an int64 tensor of ``ndim`` dimensions with integer values in [0, 15]."""
    t = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x).detach().cpu()
    if t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")
    if t.is_floating_point() and t.numel() and not bool((t == t.round()).all()):
        raise ValueError(f"{name} must hold integers (4-bit codes in [0, 15])")
    if t.numel() and (t.min() < 0 or t.max() >= INT4_LEVELS):
        raise ValueError(f"{name} holds values in [{t.min().item():g}, {t.max().item():g}], outside [0, 15]: "
                         "4-bit codes are unsigned (code = round(w / scale) + zero)")
    return t.to(torch.int64)


def pack_matmulnbits(codes, zeros, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pack 4-bit group-wise codes into onnxruntime's ``MatMulNBits`` layout (bits=4).

    codes: (N, K) integers in [0, 15] (one row per output feature, as ``nn.Linear.weight`` and
    ``weight_only.rtn_quantize`` store them); zeros: (N, K / block_size) integers in [0, 15], one
    zero point per block of ``block_size`` consecutive input columns (the groups of ``rtn_quantize``);
    block_size: a power of two in [16, 256] dividing K.

    Returns (b, zero_points), both uint8 tensors:
    - b: (N, K / block_size, block_size / 2); byte j of a block holds code 2j in its LOW nibble and
      code 2j + 1 in its HIGH nibble;
    - zero_points: (N * ceil(n_blocks / 2),); per row, the zero points of blocks 2i (low nibble) and
      2i + 1 (high nibble); an odd last block is padded with 8 (as onnxruntime's own packer does).
    The scales travel separately, float32 (N * n_blocks,) in the same row-major (row, block) order.
    Bit for bit what ``onnxruntime.capi._pybind_state.quantize_matmul_4bits`` writes for the same codes.
    """
    block_size = check_block_size(block_size)
    c = _nibbles("codes", codes, 2)
    n, k = c.shape
    if k % block_size:
        raise ValueError(f"block_size={block_size} must divide K={k} (the number of input columns of codes)")
    nb = k // block_size
    z = _nibbles("zeros", zeros, 2)
    if tuple(z.shape) != (n, nb):
        raise ValueError(f"zeros has shape {tuple(z.shape)}, expected (N, K / block_size) = ({n}, {nb})")
    b = (c[:, 0::2] | (c[:, 1::2] << 4)).to(torch.uint8).reshape(n, nb, block_size // 2)
    if nb % 2:
        z = torch.cat([z, torch.full((n, 1), MATMULNBITS_DEFAULT_ZERO, dtype=torch.int64)], 1)
    zp = (z[:, 0::2] | (z[:, 1::2] << 4)).to(torch.uint8).reshape(-1)
    return b.contiguous(), zp.contiguous()


def unpack_matmulnbits(b, zero_points=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`pack_matmulnbits`: b uint8 (N, n_blocks, block_size / 2) and zero_points uint8
    (N * ceil(n_blocks / 2),) -> (codes uint8 (N, K), zeros uint8 (N, n_blocks)), K = n_blocks * block_size.
    zero_points=None: every zero point is 8, as MatMulNBits assumes without that input."""
    b = torch.as_tensor(np.asarray(b) if not torch.is_tensor(b) else b).detach().cpu()
    if b.dtype != torch.uint8 or b.dim() != 3:
        raise ValueError(f"b must be uint8 of shape (N, n_blocks, block_size / 2), got {b.dtype} {tuple(b.shape)}")
    n, nb, half = b.shape
    check_block_size(2 * half)
    codes = torch.stack([b & 15, b >> 4], -1).reshape(n, nb * 2 * half)
    if zero_points is None:
        return codes, torch.full((n, nb), MATMULNBITS_DEFAULT_ZERO, dtype=torch.uint8)
    zp = torch.as_tensor(np.asarray(zero_points) if not torch.is_tensor(zero_points) else zero_points)
    per_row = (nb + 1) // 2
    if zp.dtype != torch.uint8 or zp.numel() != n * per_row:
        raise ValueError(f"zero_points must be uint8 with N * ceil(n_blocks / 2) = {n * per_row} values, "
                         f"got {zp.dtype} {tuple(zp.shape)}")
    zp = zp.reshape(n, per_row)
    zeros = torch.stack([zp & 15, zp >> 4], -1).reshape(n, 2 * per_row)[:, :nb]
    return codes, zeros.contiguous()
