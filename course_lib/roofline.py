"""Where decoding time goes: bytes, not FLOPs.

Generating one token with a large language model multiplies a handful of activation rows (batch 1 to
a few dozen) by every weight matrix of the model. Each weight is read from memory once per token and
used for only ``2 * batch`` floating-point operations, so at small batch the time is the time to
stream the weights from DRAM: halve the bytes per weight (fp32 -> bf16 -> int8 -> int4) and the time
halves, whatever the arithmetic costs. This module measures that, on the learner's CPU:

- the two ceilings of the roofline model: memory bandwidth (:func:`memory_bandwidth_gbs`, STREAM-like
  copy and triad) and arithmetic peak (:func:`peak_gflops`, a large square matrix product), and the
  last-level cache (:func:`llc_bytes`) that a honest measurement must defeat;
- the prediction :func:`roofline_bound_ms` = max(bytes / bandwidth, FLOPs / peak) and
  :func:`attainable_gflops` (the roofline itself);
- a registry of weight formats for one linear layer y = x W^T, W (N, K) (:data:`FORMATS`: torch fp32 and
  bf16, onnxruntime fp32, dynamic int8 and 4-bit ``MatMulNBits``, torch's int4 kernel), each with the
  bytes one call moves and a runner;
- :func:`time_formats`: every format timed INTERLEAVED within each round, on a ROTATING POOL of
  distinct weight matrices whose total size exceeds the last-level cache. Why the pool: a 4096 x 4096
  int4 matrix is 8 MB and, called in a loop, stays in a 32 MB L3 cache, so a loop over one matrix
  measures cache bandwidth; a real 7B model streams ~32 layers x 7 matrices from DRAM per token.
  Rotating through matrices that together hold at least ``pool_factor`` x the cache's bytes makes
  every call read its weights from DRAM, as decoding does;
- :func:`decoder_layer_ms` and :func:`project_tokens_per_s`: the seven linear layers of one LLaMA-7B
  decoder layer and a PROJECTION of tokens per second from them (attention over the KV cache,
  embeddings, norms and sampling are left out).

All timings go through ``measure.time_fn`` (the course's one timer), single thread by default.
"""
from __future__ import annotations

import glob
import itertools
import math
import os
import statistics
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from . import _validate as V
from . import deploy
from .measure import num_threads, time_fn
from .quantization.weight_only import rtn_quantize

__all__ = ["llc_bytes", "memory_bandwidth_gbs", "PEAK_DTYPES", "peak_gflops", "roofline_bound_ms",
           "attainable_gflops", "linear_flops", "WeightFormat", "FORMATS", "COMPUTE_DTYPE", "DEFAULT_FORMATS", "bytes_moved",
           "DEFAULT_SHAPES", "DEFAULT_BATCHES", "DEFAULT_POOL_BYTES", "pool_size", "time_formats",
           "format_rows", "LLAMA7B_LINEARS", "decoder_layer_ms", "project_tokens_per_s",
           "bandwidth_bound_tokens_per_s"]

DEFAULT_POOL_BYTES = 256 * 2 ** 20  # rotating-pool size when the cache size cannot be read
DEFAULT_SHAPES = ((4096, 4096), (11008, 4096), (4096, 11008))  # (N, K): LLaMA-7B q/k/v/o, gate/up, down
DEFAULT_BATCHES = (1, 4, 16, 64)
PEAK_DTYPES = ("fp32", "bf16", "int8")


# ---------------------------------------------------------------- the machine's two ceilings
def _parse_size(text: str) -> int | None:
    text = text.strip().upper()
    units = {"K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30}
    try:
        if text and text[-1] in units:
            return int(float(text[:-1]) * units[text[-1]])
        return int(text)
    except ValueError:
        return None


def llc_bytes() -> int | None:
    """Size in bytes of the last-level CPU cache (the highest-level data or unified cache of cpu0),
    read from Linux's /sys/devices/system/cpu/cpu0/cache; None where that is not available (macOS,
    Windows, some containers). Shared by all cores of a socket on most x86 CPUs."""
    best = None
    for index in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*"):
        try:
            with open(os.path.join(index, "level")) as f:
                level = int(f.read())
            with open(os.path.join(index, "type")) as f:
                kind = f.read().strip()
            with open(os.path.join(index, "size")) as f:
                size = _parse_size(f.read())
        except (OSError, ValueError):
            continue
        if kind == "Instruction" or size is None:
            continue
        if best is None or level > best[0] or (level == best[0] and size > best[1]):
            best = (level, size)
    return None if best is None else best[1]


def _pool_target_bytes(pool_factor: float) -> int:
    llc = llc_bytes()
    return int(pool_factor * llc) if llc else DEFAULT_POOL_BYTES


def memory_bandwidth_gbs(total_mb: float | None = None, threads: int = 1, repeats: int = 10) -> dict:
    """Sustained memory bandwidth in GB/s (1 GB = 1e9 bytes), STREAM-like, with PyTorch kernels.

    - read: ``a.sum()``, counted as 4 x n bytes (read only: what a matrix-vector product does to its
      weights, so the roof for streaming weights);
    - copy: ``b.copy_(a)``, counted as 2 x 4 x n bytes (a read, b written);
    - triad: ``torch.add(b, c, alpha=3.0, out=a)`` (a = b + 3 c in one pass), counted as 3 x 4 x n bytes.
    STREAM's convention: the extra read that a CPU's write-allocate caches do before writing is NOT
    counted, so the bus really moves a bit more than these figures.

    total_mb: size of the three float32 arrays together, in MiB (default: 3 x 4 x the last-level cache,
    at least 96 MiB, so each array is 4x the cache and every pass goes to DRAM; smaller values measure
    a cache). threads >= 1 (one core rarely saturates DRAM; more threads get closer). repeats >= 1: the
    three tests are interleaved and the best call of each is reported (STREAM's convention: the least
    disturbed run). Returns {"read": GB/s, "copy": GB/s, "triad": GB/s, "array_mb": MiB per array}.
    """
    threads = V.positive_int("threads", threads)
    repeats = V.positive_int("repeats", repeats)
    if total_mb is None:
        total_mb = max(96.0, 3 * 4 * (llc_bytes() or DEFAULT_POOL_BYTES // 4) / 2 ** 20)
    total_mb = V.number_in("total_mb", total_mb, 0, None, lo_open=True)
    n = max(1024, int(total_mb * 2 ** 20 / 3 / 4))
    a, b, c = torch.zeros(n), torch.ones(n), torch.full((n,), 2.0)
    t_read, t_copy, t_triad = [], [], []
    with num_threads(threads), torch.inference_mode():
        for _ in range(repeats):  # interleaved, so a burst of load hits all alike
            t_read += time_fn(lambda: c.sum(), 1, warmup=1)
            t_copy += time_fn(lambda: b.copy_(a), 1, warmup=1)
            t_triad += time_fn(lambda: torch.add(b, c, alpha=3.0, out=a), 1, warmup=1)
    return {"read": 4 * n / (min(t_read) * 1e6), "copy": 2 * 4 * n / (min(t_copy) * 1e6),
            "triad": 3 * 4 * n / (min(t_triad) * 1e6), "array_mb": 4 * n / 2 ** 20}


def peak_gflops(dtype: str = "fp32", threads: int = 1, n: int = 1024, repeats: int = 5) -> float:
    """Arithmetic peak in GFLOP/s (for int8, GOP/s) measured as the best (fastest) of ``repeats`` products
    of two n x n matrices (2 n^3 operations each), where the CPU's best kernels run near their peak
    (the best call, as for bandwidth: a ceiling, which background load can only lower).

    dtype: "fp32" (torch float32 matmul: MKL or oneDNN), "bf16" (torch bfloat16 matmul: AMX or
    AVX512-BF16 where the CPU has them, a slow emulation otherwise), "int8" (``torch._int_mm``:
    int8 x int8 -> int32, VNNI dot products where the CPU has them). n >= 64; threads, repeats >= 1.
    """
    V.one_of("dtype", dtype, PEAK_DTYPES)
    threads = V.positive_int("threads", threads)
    n = V.int_in("n", n, 64, None)
    repeats = V.positive_int("repeats", repeats)
    g = torch.Generator().manual_seed(0)
    if dtype == "int8":
        a = torch.randint(-127, 128, (n, n), generator=g, dtype=torch.int8)
        b = torch.randint(-127, 128, (n, n), generator=g, dtype=torch.int8)
        fn = lambda: torch._int_mm(a, b)  # noqa: E731
    else:
        dt = torch.float32 if dtype == "fp32" else torch.bfloat16
        a, b = torch.randn(n, n, generator=g).to(dt), torch.randn(n, n, generator=g).to(dt)
        fn = lambda: a @ b  # noqa: E731
    with num_threads(threads), torch.inference_mode():
        ms = min(time_fn(fn, repeats, warmup=1))
    return 2 * n ** 3 / (ms * 1e6)


# ---------------------------------------------------------------- the roofline model
def roofline_bound_ms(bytes_: float, flops: float, bandwidth_gbs: float, peak_gflops: float) -> float:
    """Least time in ms the roofline model allows: max(bytes / bandwidth, flops / peak).

    bytes_ >= 0 (moved to or from memory), flops >= 0, bandwidth_gbs > 0 (1 GB/s = 1e9 bytes/s),
    peak_gflops > 0 (1e9 FLOP/s). E.g. 64 MB at 20 GB/s is 3.2 ms; 0.03 GFLOP at 100 GFLOP/s is
    0.3 ms; the bound is 3.2 ms: memory-bound. The maximum, not the sum: a kernel overlaps loads with
    arithmetic, so the slower of the two is the floor."""
    bytes_ = V.number_in("bytes_", bytes_, 0, None)
    flops = V.number_in("flops", flops, 0, None)
    bw = V.number_in("bandwidth_gbs", bandwidth_gbs, 0, None, lo_open=True)
    peak = V.number_in("peak_gflops", peak_gflops, 0, None, lo_open=True)
    return max(bytes_ / (bw * 1e9), flops / (peak * 1e9)) * 1e3


def attainable_gflops(intensity, bandwidth_gbs: float, peak_gflops: float):
    """The roofline: min(peak, intensity x bandwidth) in GFLOP/s, for arithmetic intensity in FLOP/byte
    (a number >= 0 or an array of them; returns the same kind). The ridge point, where the two meet,
    is at peak / bandwidth FLOP/byte: a kernel with less intensity is memory-bound."""
    bw = V.number_in("bandwidth_gbs", bandwidth_gbs, 0, None, lo_open=True)
    peak = V.number_in("peak_gflops", peak_gflops, 0, None, lo_open=True)
    arr = np.asarray(intensity, dtype=float)
    if arr.size and (not np.all(np.isfinite(arr)) or arr.min() < 0):
        raise ValueError(f"intensity={intensity!r} must be finite and >= 0 (FLOP per byte)")
    out = np.minimum(peak, arr * bw)
    return float(out) if np.ndim(intensity) == 0 else out


def linear_flops(n: int, k: int, batch: int) -> int:
    """FLOPs of y = x W^T with x (batch, K), W (N, K): 2 x batch x N x K (one multiply, one add each)."""
    return 2 * V.positive_int("batch", batch) * V.positive_int("N", n) * V.positive_int("K", k)


# ---------------------------------------------------------------- weight formats of one linear layer
@dataclass(frozen=True)
class WeightFormat:
    """One way to store W (N, K) and run y = x W^T.

    weight_bytes(N, K): bytes of the stored weight with its scales and zero points; act_bytes: bytes
    per activation value in and out (4 for float32, 2 for bfloat16); build(weight, threads, cache) ->
    (factory, w_hat): each ``factory()`` call returns a runner over its OWN copy of the stored weight
    (``run(x_native)`` computes y: the rotating pools need distinct copies), ``w_hat`` (N, K) float the
    weight it effectively uses
    (the dequantized one); prepare(x float32 (M, K) tensor) -> x_native, the input ``run`` takes (built
    outside the timed call, as the previous layer would hand it over); to_float(y) -> float64 tensor."""
    name: str
    description: str
    weight_bytes: Callable[[int, int], int]
    act_bytes: int
    build: Callable
    prepare: Callable
    to_float: Callable

    def bytes_moved(self, n: int, k: int, batch: int) -> int:
        """Bytes one call moves: the weight (with scales and zeros) read once, batch x K activations read
        and batch x N outputs written, at ``act_bytes`` each."""
        n, k = V.positive_int("N", n), V.positive_int("K", k)
        batch = V.positive_int("batch", batch)
        return int(self.weight_bytes(n, k)) + self.act_bytes * batch * (k + n)


def _float_input(x):
    return np.ascontiguousarray(x.numpy(), dtype=np.float32)


def _np_to_float(y):
    return torch.from_numpy(np.asarray(y)).double()


def _bf16_input(x):
    return x.to(torch.bfloat16).contiguous()


def _t_to_float(y):
    return y.double()


def _rtn(weight, group, cache):
    """rtn_quantize(weight, 4, group), computed once per weight and group within one ``cache`` dict."""
    key = (id(weight), group)
    if cache is None:
        return rtn_quantize(weight, 4, group)
    if key not in cache:
        cache[key] = rtn_quantize(weight, 4, group)
    return cache[key]


def _build_torch(dtype):
    def build(weight, threads=1, cache=None):
        w = weight.detach().to(dtype).contiguous()

        def factory():
            wc = w.clone()
            return lambda x: torch.nn.functional.linear(x, wc)
        return factory, w.float()
    return build


def _ort_factory(model, threads):
    """A factory of runners, each an onnxruntime session of its own (its own copy of the weights)."""
    data = model.SerializeToString()

    def factory():
        sess = deploy.model_session(data, threads)
        return lambda x: sess.run(None, {"a": x})[0]
    return factory


def _build_ort_fp32(weight, threads=1, cache=None):
    return _ort_factory(deploy.matmul_fp32_model(weight), threads), weight.detach().float()


def _build_ort_int8(weight, threads=1, cache=None):
    model, w_hat = deploy.matmul_int8_model(weight)
    return _ort_factory(model, threads), w_hat


def _build_ort_int4(block_size, accuracy_level):
    def build(weight, threads=1, cache=None):
        w_hat, codes, scales, zeros = _rtn(weight, block_size, cache)
        model = deploy.matmulnbits_model(codes, scales, zeros, block_size, accuracy_level)
        return _ort_factory(model, threads), w_hat
    return build


def _build_torch_int4(group):
    def build(weight, threads=1, cache=None):
        w_hat, codes, scales, zeros = _rtn(weight, group, cache)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32).contiguous(), 1)
        # torch's grid: w = (q - 8) * scale + offset, so offset = (8 - zero) * scale; layout (K/group, N, 2)
        sz = torch.stack([scales.T, ((8 - zeros) * scales).T], -1).to(torch.bfloat16).contiguous()
        s32 = sz.float()
        w_eff = ((codes.float() - 8).reshape(codes.shape[0], -1, group) * s32[..., 0].T[..., None]
                 + s32[..., 1].T[..., None]).reshape(codes.shape)

        def factory():
            p, s = packed.clone(), sz.clone()
            return lambda x: torch.ops.aten._weight_int4pack_mm_for_cpu(x, p, group, s)
        return factory, w_eff
    return build


def _int4_bytes(block):
    # codes 4 bits each; float32 scales and packed 4-bit zero points (MatMulNBits) per block
    return lambda n, k: n * k // 2 + 4 * n * (k // block) + n * ((k // block + 1) // 2)


FORMATS: dict[str, WeightFormat] = {f.name: f for f in (
    WeightFormat("torch fp32", "PyTorch float32 F.linear (MKL/oneDNN sgemm)", lambda n, k: 4 * n * k, 4,
                 _build_torch(torch.float32), lambda x: x.contiguous(), _t_to_float),
    WeightFormat("torch bf16", "PyTorch bfloat16 F.linear, bfloat16 activations", lambda n, k: 2 * n * k, 2,
                 _build_torch(torch.bfloat16), _bf16_input, _t_to_float),
    WeightFormat("onnxruntime fp32", "onnxruntime MatMul, float32", lambda n, k: 4 * n * k, 4,
                 _build_ort_fp32, _float_input, _np_to_float),
    WeightFormat("onnxruntime int8", "onnxruntime DynamicQuantizeMatMul: int8 weights (per row, symmetric), "
                 "activations quantized to uint8 per call", lambda n, k: n * k + 4 * n + n, 4,
                 _build_ort_int8, _float_input, _np_to_float),
    WeightFormat("onnxruntime int4", "onnxruntime MatMulNBits, 4 bits, block 128, accuracy_level 4 (int8 "
                 "activations, int8 dot products)", _int4_bytes(128), 4,
                 _build_ort_int4(128, 4), _float_input, _np_to_float),
    WeightFormat("onnxruntime int4 b32", "onnxruntime MatMulNBits, 4 bits, block 32, accuracy_level 4",
                 _int4_bytes(32), 4, _build_ort_int4(32, 4), _float_input, _np_to_float),
    WeightFormat("onnxruntime int4 L0", "onnxruntime MatMulNBits, 4 bits, block 128, accuracy_level 0 "
                 "(weights dequantized to float32 inside the kernel)", _int4_bytes(128), 4,
                 _build_ort_int4(128, 0), _float_input, _np_to_float),
    WeightFormat("torch int4", "PyTorch _weight_int4pack_mm_for_cpu, group 128, bfloat16 activations, scales "
                 "and offsets (its float32-activation path is 10-70x slower)",
                 lambda n, k: n * k // 2 + 2 * 2 * n * (k // 128), 2,
                 _build_torch_int4(128), _bf16_input, _t_to_float),
)}
# the arithmetic each format computes in (its compute roof): MatMulNBits at accuracy_level 4 quantizes the
# activations and multiplies in int8; at level 0 it dequantizes to float32; torch's int4 kernel takes bfloat16
COMPUTE_DTYPE = {"torch fp32": "fp32", "torch bf16": "bf16", "onnxruntime fp32": "fp32", "onnxruntime int8": "int8",
                 "onnxruntime int4": "int8", "onnxruntime int4 b32": "int8", "onnxruntime int4 L0": "fp32",
                 "torch int4": "bf16"}
_BLOCKS = {"onnxruntime int4": 128, "onnxruntime int4 b32": 32, "onnxruntime int4 L0": 128, "torch int4": 128}
DEFAULT_FORMATS = ("torch fp32", "torch bf16", "onnxruntime fp32", "onnxruntime int8", "onnxruntime int4",
                   "onnxruntime int4 L0", "torch int4")


def _format(name: str) -> WeightFormat:
    return FORMATS[V.one_of("format", name, FORMATS)]


def bytes_moved(fmt: str, n: int, k: int, batch: int) -> int:
    """Bytes one call of y = x W^T moves in format ``fmt`` (a key of :data:`FORMATS`) for W (N, K) and
    x (batch, K): weights with scales and zeros, activations in, outputs out (see ``WeightFormat``)."""
    return _format(fmt).bytes_moved(n, k, batch)


def pool_size(weight_bytes: int, pool_factor: float = 2.0, max_pool: int = 16) -> int:
    """How many distinct weight matrices of ``weight_bytes`` each to rotate through so that together they
    hold at least pool_factor x the last-level cache (``DEFAULT_POOL_BYTES`` when unknown): at least 2,
    at most ``max_pool``."""
    V.positive_int("weight_bytes", weight_bytes)
    V.number_in("pool_factor", pool_factor, 0, None, lo_open=True)
    V.int_in("max_pool", max_pool, 2, None)
    return int(min(max_pool, max(2, math.ceil(_pool_target_bytes(pool_factor) / weight_bytes))))


def _check_formats(formats) -> list[str]:
    formats = [formats] if isinstance(formats, str) else list(formats)
    if not formats:
        raise ValueError("formats is empty: give names from FORMATS")
    for f in formats:
        V.one_of("format", f, FORMATS)
    return formats


def _rel_err(y, ref) -> float:
    return float((y - ref).norm() / ref.norm().clamp_min(1e-300))


def _build_pool(fmt: WeightFormat, weight, n_pool: int, threads: int, cache: dict):
    """n_pool runners of fmt over DISTINCT copies of the weight in memory (same values: the caches care
    about addresses, not values) and the dequantized weight."""
    factory, w_hat = fmt.build(weight, threads, cache)
    pool = [factory() for _ in range(n_pool)]
    x = fmt.prepare(torch.zeros(1, weight.shape[1]))
    for run in pool:  # first calls (lazy initialisation, weight prepacking) stay out of the timing
        run(x)
    return pool, w_hat


def _time_rotating(pool, x, rounds_out: list, repeats: int) -> None:
    it = itertools.cycle(pool)
    rounds_out.append(statistics.median(time_fn(lambda: next(it)(x), repeats, warmup=1)))


def time_formats(shapes=DEFAULT_SHAPES, batches=DEFAULT_BATCHES, formats=DEFAULT_FORMATS, threads: int = 1,
                 rounds: int = 3, repeats: int = 4, pool_factor: float = 2.0, max_pool: int = 16,
                 seed: int = 0) -> list[dict]:
    """Time y = x W^T in several weight formats, interleaved, on a rotating pool that defeats the cache.

    shapes: (N, K) pairs (default LLaMA-7B's 4096x4096, 11008x4096, 4096x11008); batches: rows of x
    (default 1, 4, 16, 64); formats: keys of :data:`FORMATS`; threads >= 1 (intra-op, torch and
    onnxruntime); rounds >= 1; repeats >= 1 calls per round and format; pool_factor > 0, max_pool >= 2:
    see :func:`pool_size` (each format rotates through its own distinct copies); seed: the local
    generator of the weights (normal, std 1/sqrt(K)) and inputs.

    For each shape the weights are built once (about 1 s per 4096 x 11008 matrix for the 4-bit formats,
    whose RTN quantization runs in float64) and every batch is timed: in each round every format in turn
    makes ``repeats`` calls (plus one warm-up), cycling through its pool; its round's figure is the
    median call. Cost: rounds x (repeats + 1) calls per (shape, batch, format), about half of the total
    on 7B shapes (mostly batch 64 in fp32), the rest is building the weights and sessions; the defaults
    (3 shapes, 4 batches, the 7 formats of DEFAULT_FORMATS, 3 rounds, 4 repeats) took 55-60 s on one
    core of a 2-core AMD EPYC (about 2 GB of memory at its peak). For a quick look: shapes=[(4096, 4096)],
    batches=(1, 16) takes about 10 s.

    Returns one dict per (shape, batch, format), in that order: N, K, batch, format, ms (median over
    rounds), spread_ms ((min, max) of the round medians), bytes (:func:`bytes_moved`), flops, intensity
    (FLOP/byte), gbs (achieved GB/s = bytes / time), gflops, err_fp32 (relative Frobenius error of y
    against float64 x W^T: quantization and kernel together), err_dequant (against float64 x W_hat^T:
    the kernel's own error, e.g. activation rounding), pool (matrices rotated), pool_mb (their MiB),
    x_vs_ort_fp32 / x_vs_fastest_fp32 (speed-up against onnxruntime fp32 / the faster of torch and
    onnxruntime fp32 at the same shape and batch; None when those were not timed).
    """
    formats = _check_formats(formats)
    threads = V.positive_int("threads", threads)
    rounds = V.positive_int("rounds", rounds)
    repeats = V.positive_int("repeats", repeats)
    shapes = [V.shape("shapes", s, 2) for s in shapes]
    batches = [V.positive_int("batches", b) for b in batches]
    for n, k in shapes:
        for f in formats:
            if k % _BLOCKS.get(f, 1):
                raise ValueError(f"shapes: K={k} must be a multiple of {_BLOCKS[f]}, the block size of {f!r}")
    g = torch.Generator().manual_seed(seed)
    rows = []
    with num_threads(threads), torch.inference_mode():
        for n, k in shapes:
            weight = torch.randn(n, k, generator=g) / math.sqrt(k)
            cache: dict = {}
            pools = {}
            for name in formats:
                fmt = FORMATS[name]
                wb = int(fmt.weight_bytes(n, k))
                n_pool = pool_size(wb, pool_factor, max_pool)
                pools[name] = (*_build_pool(fmt, weight, n_pool, threads, cache), n_pool, wb)
            cache.clear()
            for batch in batches:
                x = torch.randn(batch, k, generator=g)
                ref = x.double() @ weight.double().T
                native, errs, times = {}, {}, {name: [] for name in formats}
                for name in formats:
                    fmt, (pool, w_hat, *_) = FORMATS[name], pools[name]
                    native[name] = fmt.prepare(x)
                    y = fmt.to_float(pool[0](native[name]))
                    errs[name] = (_rel_err(y, ref), _rel_err(y, x.double() @ w_hat.double().T))
                for _ in range(rounds):
                    for name in formats:
                        _time_rotating(pools[name][0], native[name], times[name], repeats)
                block = []
                for name in formats:
                    ms = statistics.median(times[name])
                    b = FORMATS[name].bytes_moved(n, k, batch)
                    fl = linear_flops(n, k, batch)
                    n_pool, wb = pools[name][2], pools[name][3]
                    block.append({"N": n, "K": k, "batch": batch, "format": name, "ms": ms,
                                  "spread_ms": (min(times[name]), max(times[name])), "bytes": b, "flops": fl,
                                  "intensity": fl / b, "gbs": b / (ms * 1e6), "gflops": fl / (ms * 1e6),
                                  "err_fp32": errs[name][0], "err_dequant": errs[name][1],
                                  "pool": n_pool, "pool_mb": n_pool * wb / 2 ** 20})
                by = {r["format"]: r["ms"] for r in block}
                fp32 = [by[f] for f in ("torch fp32", "onnxruntime fp32") if f in by]
                for r in block:
                    r["x_vs_ort_fp32"] = by["onnxruntime fp32"] / r["ms"] if "onnxruntime fp32" in by else None
                    r["x_vs_fastest_fp32"] = min(fp32) / r["ms"] if fp32 else None
                rows += block
            del pools
    return rows


def format_rows(rows: list[dict]) -> str:
    """A Markdown table of :func:`time_formats` rows (one line each)."""
    head = ["N x K", "batch", "format", "ms (min-max)", "MB moved", "GB/s", "GFLOP/s", "x vs ORT fp32",
            "x vs fastest fp32", "error vs fp32"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        x1 = "-" if r.get("x_vs_ort_fp32") is None else f"{r['x_vs_ort_fp32']:.2f}"
        x2 = "-" if r.get("x_vs_fastest_fp32") is None else f"{r['x_vs_fastest_fp32']:.2f}"
        lines.append(f"| {r['N']} x {r['K']} | {r['batch']} | {r['format']} | {r['ms']:.3f} "
                     f"({r['spread_ms'][0]:.3f}-{r['spread_ms'][1]:.3f}) | {r['bytes'] / 1e6:.1f} | {r['gbs']:.1f} | "
                     f"{r['gflops']:.1f} | {x1} | {x2} | {r['err_fp32']:.2e} |")
    return "\n".join(lines)


# ---------------------------------------------------------------- one decoder layer, and tokens per second
LLAMA7B_LINEARS = ("q", "k", "v", "o", "gate", "up", "down")


def _layer_shapes(hidden: int, ffn: int) -> list[tuple[str, int, int]]:
    """(name, N, K) of the seven linear layers of a LLaMA decoder layer."""
    return [("q", hidden, hidden), ("k", hidden, hidden), ("v", hidden, hidden), ("o", hidden, hidden),
            ("gate", ffn, hidden), ("up", ffn, hidden), ("down", hidden, ffn)]


def decoder_layer_ms(formats=DEFAULT_FORMATS, hidden: int = 4096, ffn: int = 11008, batch: int = 1,
                     threads: int = 1, rounds: int = 3, repeats: int = 5, pool_factor: float = 2.0,
                     max_pool: int = 16, seed: int = 0) -> dict:
    """Time the seven linear layers of one LLaMA-class decoder layer (q, k, v, o: hidden x hidden; gate,
    up: ffn x hidden; down: hidden x ffn; default LLaMA-7B's 4096 / 11008) run one after the other, in
    each format (a name or a list of names from :data:`FORMATS`), interleaved over ``rounds``.

    Random weights (normal, std 1/sqrt(K), local generator ``seed``); the input of each layer is a fixed
    random (batch, K) activation in the format's input type (the nonlinearity and attention between them
    are left out). When one layer's weights are smaller than pool_factor x the last-level cache, several
    copies of the layer (at most ``max_pool``) are rotated, so the weights come from DRAM as they do in a 32-layer model.
    hidden, ffn: multiples of 128; batch, threads, rounds, repeats >= 1. Cost with the 7B shapes and the
    7 default formats: about 40 s on a 2-core AMD EPYC, mostly building (the 4-bit formats share one
    RTN quantization of the seven matrices, ~8 s; the fp32 sessions copy 800 MB), and up to ~3 GB of
    memory; pass fewer formats to go faster.

    Returns {format: {"ms": median over rounds, "spread_ms": (min, max) of round medians, "bytes": bytes
    moved by the seven calls, "flops", "gbs": achieved GB/s, "copies": layer copies rotated}}.
    """
    formats = _check_formats(formats)
    hidden, ffn = V.positive_int("hidden", hidden), V.positive_int("ffn", ffn)
    for name, v in (("hidden", hidden), ("ffn", ffn)):
        if v % 128:
            raise ValueError(f"{name}={v} must be a multiple of 128 (the 4-bit formats' block size)")
    batch = V.positive_int("batch", batch)
    V.number_in("pool_factor", pool_factor, 0, None, lo_open=True)
    max_pool = V.positive_int("max_pool", max_pool)
    threads, rounds = V.positive_int("threads", threads), V.positive_int("rounds", rounds)
    repeats = V.positive_int("repeats", repeats)
    g = torch.Generator().manual_seed(seed)
    shapes = _layer_shapes(hidden, ffn)
    out = {}
    with num_threads(threads), torch.inference_mode():
        weights = [torch.randn(n, k, generator=g) / math.sqrt(k) for _, n, k in shapes]
        xs = [torch.randn(batch, k, generator=g) for _, _, k in shapes]
        cache: dict = {}
        layers, times = {}, {f: [] for f in formats}
        for name in formats:
            fmt = FORMATS[name]
            layer_bytes = sum(int(fmt.weight_bytes(n, k)) for _, n, k in shapes)
            copies = min(max_pool, max(1, math.ceil(_pool_target_bytes(pool_factor) / layer_bytes)))
            factories = [fmt.build(w, threads, cache)[0] for w in weights]
            runs = [[f() for f in factories] for _ in range(copies)]
            inputs = [fmt.prepare(x) for x in xs]
            pairs = [list(zip(r, inputs)) for r in runs]
            for p in pairs:
                for run, x in p:
                    run(x)
            layers[name] = (pairs, copies)
        cache.clear()

        def layer_call(it):
            for run, x in next(it):
                run(x)
        for _ in range(rounds):
            for name in formats:
                it = itertools.cycle(layers[name][0])
                times[name].append(statistics.median(time_fn(lambda: layer_call(it), repeats, warmup=1)))
        for name in formats:
            fmt = FORMATS[name]
            b = sum(fmt.bytes_moved(n, k, batch) for _, n, k in shapes)
            fl = sum(linear_flops(n, k, batch) for _, n, k in shapes)
            ms = statistics.median(times[name])
            out[name] = {"ms": ms, "spread_ms": (min(times[name]), max(times[name])), "bytes": b, "flops": fl,
                         "gbs": b / (ms * 1e6), "copies": layers[name][1]}
        del layers
    return out


def project_tokens_per_s(layer_ms: float, n_layers: int = 32) -> float:
    """A PROJECTION, not a measurement of a model: tokens per second if one token cost n_layers x the
    time of one decoder layer's linear layers (``decoder_layer_ms``). Attention over the KV cache,
    embeddings, norms, the output head and sampling are left out, so a real model is slower.
    layer_ms > 0; n_layers >= 1 (32 for LLaMA-7B)."""
    layer_ms = V.number_in("layer_ms", layer_ms, 0, None, lo_open=True)
    n_layers = V.positive_int("n_layers", n_layers)
    return 1e3 / (n_layers * layer_ms)


def bandwidth_bound_tokens_per_s(layer_bytes: float, bandwidth_gbs: float, n_layers: int = 32) -> float:
    """The memory-bound ceiling of the same projection: tokens per second if every byte of n_layers
    layers (``layer_bytes`` each, e.g. ``decoder_layer_ms(...)[fmt]["bytes"]``) streamed at
    ``bandwidth_gbs`` and nothing else took time. layer_bytes > 0, bandwidth_gbs > 0, n_layers >= 1."""
    layer_bytes = V.number_in("layer_bytes", layer_bytes, 0, None, lo_open=True)
    bw = V.number_in("bandwidth_gbs", bandwidth_gbs, 0, None, lo_open=True)
    n_layers = V.positive_int("n_layers", n_layers)
    return bw * 1e9 / (n_layers * layer_bytes)
