"""Checkers for chapter 07 (LLM-era weight quantization on a laptop CPU, ``course_lib.roofline``):
packing 4-bit codes two per byte in onnxruntime's ``MatMulNBits`` layout
(``quantization.pack_matmulnbits``), unpacking and dequantizing them with group scales and zero points
(what a 4-bit kernel does in registers, ``quantization.unpack_matmulnbits``), and the roofline
prediction of a kernel's time (``roofline.roofline_bound_ms``).

The references below are written independently of the library on purpose (the tests cross-check
them against it). Random cases come from a local generator with a fixed seed per checker: the
global random generator is never touched."""
from __future__ import annotations

import math

import torch

from . import Wrong, checker, expect_dtype, expect_shape

__all__ = ["check_pack_nibbles", "check_unpack_dequantize", "check_roofline_prediction", "reference_pack_nibbles",
           "reference_unpack_dequantize", "reference_roofline_ms"]


def _gen(seed: int) -> torch.Generator:
    """A local generator (fixed seed: the same cases on every machine and every call)."""
    return torch.Generator().manual_seed(seed)


def reference_pack_nibbles(codes: torch.Tensor, block_size: int) -> torch.Tensor:
    """codes (N, K) in [0, 15] -> uint8 (N, K / block_size, block_size / 2): byte j of a block holds the
    block's code 2j in its low nibble (bits 0-3) and code 2j + 1 in its high nibble (bits 4-7)."""
    n, k = codes.shape
    pairs = codes.to(torch.int32).reshape(n, k // block_size, block_size // 2, 2)
    return (pairs[..., 0] + 16 * pairs[..., 1]).to(torch.uint8)


def reference_roofline_ms(bytes_: float, flops: float, bandwidth_gbs: float, peak_gflops: float) -> float:
    """max(bytes / bandwidth, flops / peak) in ms, with 1 GB/s = 1e9 bytes/s and 1 GFLOP/s = 1e9 FLOP/s."""
    return 1e3 * max(bytes_ / (bandwidth_gbs * 1e9), flops / (peak_gflops * 1e9))


def _pack_mistakes(codes: torch.Tensor, block_size: int, want: torch.Tensor):
    """(wrong answer, what went wrong) pairs for the common packing mistakes, on the same codes."""
    n, k = codes.shape
    c = codes.to(torch.int32)
    pairs = c.reshape(n, k // block_size, block_size // 2, 2)
    halves = c.reshape(n, k // block_size, 2, block_size // 2)
    rows = c[0::2] + 16 * c[1::2] if n % 2 == 0 else None
    out = [
        ((pairs[..., 1] + 16 * pairs[..., 0]).to(torch.uint8),
         "the nibbles are swapped: the EVEN-indexed code (2j) goes in the LOW nibble, code 2j + 1 in the high "
         "nibble (byte = codes[2j] | codes[2j + 1] << 4)."),
        (want ^ 0x88,
         "you stored signed codes (code - 8): MatMulNBits codes are unsigned, 0 to 15, exactly as "
         "round(w / scale) + zero gives them; the zero point travels separately."),
        (pairs[..., 0].to(torch.uint8),
         "the high nibble is lost: shift the odd code left by 4 bits (x 16), not by 8, so both fit in one byte."),
        ((halves[..., 0, :] + 16 * halves[..., 1, :]).to(torch.uint8),
         "you paired code j with code j + block_size/2: MatMulNBits pairs NEIGHBOURS, codes 2j and 2j + 1 "
         "of the same block."),
    ]
    if rows is not None:
        out.append((rows.to(torch.uint8),
                    "you packed along the wrong axis: pair neighbouring INPUT columns (codes[:, 2j], codes[:, 2j+1]) "
                    "of the same row, not two rows."))
    return out


def _same_bytes(got: torch.Tensor, alt: torch.Tensor) -> bool:
    return got.numel() == alt.numel() and torch.equal(got.reshape(-1).to(torch.int64), alt.reshape(-1).to(torch.int64))


@checker("packing 4-bit codes for MatMulNBits")
def check_pack_nibbles(fn):
    g = _gen(71)
    for n, k, bs in ((4, 64, 32), (6, 128, 16), (2, 256, 128), (3, 64, 64)):
        codes = torch.randint(0, 16, (n, k), generator=g, dtype=torch.uint8)
        codes[0, :4] = torch.tensor([15, 0, 0, 15], dtype=torch.uint8)  # both extremes in both nibbles
        got = fn(codes.clone(), bs)
        want = reference_pack_nibbles(codes, bs)
        if not torch.is_tensor(got):
            raise Wrong(f"return a torch.Tensor of uint8 bytes, got {type(got).__name__}.")
        if not got.is_floating_point() and got.numel() and int(got.max()) > 255:
            raise Wrong(f"a byte holds 0 to 255 but your result holds {int(got.max())}: shift the odd code by "
                        "4 bits (x 16), not more, and return uint8.")
        expect_dtype(got, torch.uint8, "the packed bytes")
        for alt, msg in _pack_mistakes(codes, bs, want):
            if _same_bytes(got, alt) and not _same_bytes(alt, want):
                raise Wrong(msg)
        if tuple(got.shape) != tuple(want.shape):
            if _same_bytes(got, want):
                raise Wrong(f"the bytes are right but the shape is {tuple(got.shape)}: MatMulNBits wants "
                            f"(N, K / block_size, block_size / 2) = {tuple(want.shape)} (reshape it).")
            expect_shape(got, want.shape, "the packed bytes (N, K / block_size, block_size / 2)")
        if not torch.equal(got, want):
            bad = int((got != want).sum())
            raise Wrong(f"{bad} of {want.numel()} bytes differ from the MatMulNBits layout.")


@checker("roofline prediction")
def check_roofline_prediction(fn):
    cases = (
        (4096 * 4096 * 0.5, 2 * 4096 * 4096, 20.0, 100.0),       # int4 weight at batch 1: memory-bound
        (4 * 4096 * 4096, 2 * 64 * 4096 * 4096, 25.0, 90.0),     # fp32 at batch 64: compute-bound
        (3.0e8, 3.5e10, 30.0, 100.0),                            # compute-bound: memory 10 ms, arithmetic 350 ms
        (1.0e6, 0.0, 12.5, 50.0),                                # no arithmetic at all
    )
    def ms(x):
        return 1e3 * x
    mistakes = (  # each as a function of one case; named when it explains EVERY case
        (lambda b, f, bw, p: reference_roofline_ms(b, f, bw, p) / 1e3,
         "you returned seconds: multiply by 1000 for milliseconds."),
        (lambda b, f, bw, p: reference_roofline_ms(b, f, bw, p) * 1e3,
         "you returned microseconds (or divided by 1e6 instead of 1e9): 1 GB/s is 1e9 bytes/s, and 1 s is "
         "1000 ms."),
        (lambda b, f, bw, p: ms(max(b / (bw * 2 ** 30), f / (p * 2 ** 30))),
         "you used GiB (2**30 bytes): bandwidths in GB/s and peaks in GFLOP/s use 1e9."),
        (lambda b, f, bw, p: ms(max(b / (bw * 2 ** 30), f / (p * 1e9))),
         "you used GiB (2**30 bytes) for the bandwidth: 1 GB/s is 1e9 bytes per second."),
        (lambda b, f, bw, p: ms(b / (bw * 1e9) + f / (p * 1e9)),
         "you added the two times: a kernel overlaps loading and computing, so the bound is the LARGER of "
         "bytes / bandwidth and flops / peak (max, not sum)."),
        (lambda b, f, bw, p: ms(min(b / (bw * 1e9), f / (p * 1e9))),
         "you took the smaller time: the slower of the two (memory or arithmetic) is the floor, so use max."),
        (lambda b, f, bw, p: ms(b / (bw * 1e9)),
         "you left out the arithmetic: when flops / peak is larger, it is the bound (max of both)."),
        (lambda b, f, bw, p: ms(f / (p * 1e9)),
         "you left out the memory traffic: bytes / bandwidth is usually the bound at small batch."),
    )
    gots = []
    for b, f, bw, peak in cases:
        got = fn(b, f, bw, peak)
        if torch.is_tensor(got) and got.numel() == 1:
            got = got.item()
        if not isinstance(got, (int, float)) or isinstance(got, bool):
            raise Wrong(f"return one number (milliseconds), got {type(got).__name__}.")
        gots.append(float(got))

    def close(x, y):
        return math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-12)
    wants = [reference_roofline_ms(*c) for c in cases]
    if all(close(g, w) for g, w in zip(gots, wants)):
        return
    for alt, msg in mistakes:
        if all(close(g, alt(*c)) for g, c in zip(gots, cases)):
            raise Wrong(msg)
    (b, f, bw, peak), got, want = next((c, g, w) for c, g, w in zip(cases, gots, wants) if not close(g, w))
    raise Wrong(f"for {b:.3g} bytes, {f:.3g} FLOPs, {bw} GB/s and {peak} GFLOP/s the bound is {want:.4g} ms, "
                f"you returned {got:.4g}.")


def reference_unpack_dequantize(packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                                block_size: int) -> torch.Tensor:
    """packed uint8 (N, K / bs, bs / 2) in the MatMulNBits layout, scales float (N, K / bs), zeros integers in
    [0, 15] (N, K / bs) -> W_hat float32 (N, K) = (code - zero) * scale, per block of bs input columns."""
    b = packed.to(torch.int32)
    codes = torch.stack([b & 15, b >> 4], dim=-1).reshape(packed.shape[0], -1)
    z = zeros.to(torch.float64).repeat_interleave(block_size, 1)
    s = scales.to(torch.float64).repeat_interleave(block_size, 1)
    return ((codes.to(torch.float64) - z) * s).float()


def _unpack_cases():
    g = _gen(73)
    for n, k, bs in ((3, 64, 32), (4, 128, 16), (2, 256, 128)):
        codes = torch.randint(0, 16, (n, k), generator=g, dtype=torch.uint8)
        codes[0, :2] = torch.tensor([15, 0], dtype=torch.uint8)
        zeros = torch.randint(0, 16, (n, k // bs), generator=g, dtype=torch.uint8)
        scales = torch.rand(n, k // bs, generator=g) * 0.1 + 0.01
        scales[0, 0] = 0.5  # groups of very different scales: a per-row scale cannot pass
        yield reference_pack_nibbles(codes, bs), scales, zeros, bs, codes


def _unpack_mistakes(packed, scales, zeros, bs, codes):
    """(wrong answer, what went wrong) pairs for the common unpacking mistakes, on the same case."""
    n, k = codes.shape
    c = codes.to(torch.float64)
    z = zeros.to(torch.float64).repeat_interleave(bs, 1)
    s = scales.to(torch.float64).repeat_interleave(bs, 1)
    swapped = c.reshape(n, k // 2, 2).flip(-1).reshape(n, k)
    signed = torch.where(c > 7, c - 16, c)
    return [
        ((swapped - z) * s, "the nibbles are swapped: code 2j is in the LOW nibble (byte & 15), code 2j + 1 in the "
                            "HIGH nibble (byte >> 4)."),
        ((signed - z) * s, "you read the codes as signed (values above 7 made negative): MatMulNBits codes are "
                           "unsigned, 0 to 15; the zero point does the centring."),
        (c * s, "you forgot the zero point: w_hat = (code - zero) * scale."),
        ((c - 8) * s, "you subtracted 8 instead of each group's zero point: use zeros, one per block."),
        ((c - z) * scales.to(torch.float64)[:, :1], "one scale per row: every block of block_size input columns has "
                                                     "its own scale (scales[:, j // block_size])."),
        ((c - zeros.to(torch.float64).repeat(1, bs)) * scales.to(torch.float64).repeat(1, bs),
         "the scales and zeros are expanded in the wrong order: block b covers columns b * block_size to "
         "(b + 1) * block_size - 1, so repeat each one block_size times in place (repeat_interleave), not tile."),
    ]


@checker("unpacking and dequantizing 4-bit weights")
def check_unpack_dequantize(fn):
    for packed, scales, zeros, bs, codes in _unpack_cases():
        got = fn(packed.clone(), scales.clone(), zeros.clone(), bs)
        want = reference_unpack_dequantize(packed, scales, zeros, bs)
        if not torch.is_tensor(got):
            raise Wrong(f"return a torch.Tensor of floats, got {type(got).__name__}.")
        if tuple(got.shape) != tuple(want.shape):
            if got.numel() == want.numel():
                raise Wrong(f"the result has shape {tuple(got.shape)}: return (N, K) = {tuple(want.shape)}, "
                            "one row per output feature (reshape the two nibbles of each byte into neighbouring columns).")
            expect_shape(got, want.shape, "the dequantized weight (N, K)")
        if not got.is_floating_point():
            raise Wrong(f"the result is {got.dtype}: dequantized weights are floats (convert the codes before "
                        "subtracting the zero point, or uint8 arithmetic wraps around).")
        g64 = got.detach().to(torch.float64)
        if torch.allclose(g64, want.to(torch.float64), rtol=1e-5, atol=1e-6):
            continue
        for alt, msg in _unpack_mistakes(packed, scales, zeros, bs, codes):
            if torch.allclose(g64, alt, rtol=1e-5, atol=1e-6):
                raise Wrong(msg)
        bad = int((~torch.isclose(g64, want.to(torch.float64), rtol=1e-5, atol=1e-6)).sum())
        raise Wrong(f"{bad} of {want.numel()} weights differ from (code - zero) * scale (N={codes.shape[0]}, "
                    f"K={codes.shape[1]}, block_size={bs}).")
