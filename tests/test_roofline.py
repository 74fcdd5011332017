"""Chapter 07's library: the MatMulNBits packing (bit for bit against onnxruntime's own packer), the
one-layer ONNX models of every weight format (against float64 references), the byte counts, the
roofline formulas, the measurements' structure and the roofline figure. Tiny shapes: fast."""
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from course_lib import deploy, plots, roofline  # noqa: E402
from course_lib import quantization as Q  # noqa: E402


def _ort_pack(w: np.ndarray, block_size: int):
    """onnxruntime's reference packer on W (N, K): (b, scales, zero_points)."""
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits
    n, k = w.shape
    nb = k // block_size
    b = np.zeros((n, nb, block_size // 2), np.uint8)
    scales = np.zeros(n * nb, np.float32)
    zp = np.zeros(n * ((nb + 1) // 2), np.uint8)
    quantize_matmul_4bits(b, np.ascontiguousarray(w.T, dtype=np.float32), scales, zp, block_size, n, k, False)
    return b, scales, zp


@pytest.mark.parametrize("n,k,block", [(64, 256, 32), (16, 96, 32), (8, 128, 16), (4, 512, 256), (5, 384, 128)])
def test_pack_matmulnbits_is_bit_for_bit_onnxruntime(n, k, block):
    w = np.random.default_rng(n + k).standard_normal((n, k)).astype(np.float32)
    b_ort, s_ort, zp_ort = _ort_pack(w, block)
    # onnxruntime's codes and zeros, read back, packed by us: the same bytes (odd block counts included)
    codes, zeros = Q.unpack_matmulnbits(torch.from_numpy(b_ort), torch.from_numpy(zp_ort))
    b, zp = Q.pack_matmulnbits(codes, zeros, block)
    assert torch.equal(b, torch.from_numpy(b_ort)) and torch.equal(zp, torch.from_numpy(zp_ort))
    # and our RTN gives onnxruntime's grid on these weights
    _, c2, s2, z2 = Q.rtn_quantize(torch.from_numpy(w), 4, block)
    b2, zp2 = Q.pack_matmulnbits(c2, z2, block)
    assert (b2.numpy() == b_ort).mean() > 0.999 and (zp2.numpy() == zp_ort).mean() > 0.99
    np.testing.assert_allclose(s2.reshape(-1).numpy(), s_ort, rtol=1e-5)


def test_pack_matmulnbits_round_trip_and_layout():
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 16, (3, 64), generator=g, dtype=torch.uint8)
    zeros = torch.randint(0, 16, (3, 2), generator=g, dtype=torch.uint8)
    b, zp = Q.pack_matmulnbits(codes, zeros, 32)
    assert b.shape == (3, 2, 16) and b.dtype == torch.uint8 and zp.shape == (3,)
    assert int(b[0, 0, 0]) == int(codes[0, 0]) + 16 * int(codes[0, 1])  # even code in the low nibble
    assert int(zp[1]) == int(zeros[1, 0]) + 16 * int(zeros[1, 1])
    c2, z2 = Q.unpack_matmulnbits(b, zp)
    assert torch.equal(c2, codes) and torch.equal(z2, zeros)
    assert torch.equal(Q.unpack_matmulnbits(b)[1], torch.full((3, 2), 8, dtype=torch.uint8))


@pytest.mark.parametrize("call,match", [
    (lambda: Q.pack_matmulnbits(torch.full((2, 32), 16), torch.zeros(2, 1), 32), r"codes holds .*outside \[0, 15\]"),
    (lambda: Q.pack_matmulnbits(torch.full((2, 32), -1), torch.zeros(2, 1), 32), r"codes holds .*unsigned"),
    (lambda: Q.pack_matmulnbits(torch.zeros(2, 48), torch.zeros(2, 1), 32), r"block_size=32 must divide K=48"),
    (lambda: Q.pack_matmulnbits(torch.zeros(2, 48), torch.zeros(2, 2), 24), r"block_size=24 must be a power of two"),
    (lambda: Q.pack_matmulnbits(torch.zeros(2, 16), torch.zeros(2, 2), 8), r"block_size=8 must be a power of two"),
    (lambda: Q.pack_matmulnbits(torch.zeros(2, 512), torch.zeros(2, 1), 512), r"block_size=512 .*\[16, 256\]"),
    (lambda: Q.pack_matmulnbits(torch.zeros(2, 64), torch.zeros(2, 3), 32), r"zeros has shape \(2, 3\)"),
    (lambda: Q.pack_matmulnbits(torch.zeros(2, 64), torch.full((2, 2), 0.5), 32), r"zeros must hold integers"),
    (lambda: deploy.matmulnbits_model(torch.zeros(2, 64), torch.ones(2, 2), torch.zeros(2, 2), 32, accuracy_level=5),
     r"accuracy_level=5"),
    (lambda: deploy.matmulnbits_model(torch.zeros(2, 64), torch.ones(2, 3), torch.zeros(2, 2), 32), r"scales must be"),
    (lambda: deploy.int4_model(torch.zeros(4, 64), block_size=48), r"block_size=48"),
    (lambda: deploy.matmul_fp32_model(torch.zeros(4)), r"weight must be a 2-D float tensor"),
    (lambda: roofline.bytes_moved("int3", 8, 8, 1), r"format='int3' must be one of"),
    (lambda: roofline.bytes_moved("torch fp32", 8, 0, 1), r"K=0"),
    (lambda: roofline.time_formats([(32, 32)], [1], ["nope"]), r"format='nope'"),
    (lambda: roofline.time_formats([(32, 96)], [1], ["onnxruntime int4"]), r"K=96 must be a multiple of 128"),
    (lambda: roofline.time_formats([(32, 32)], [0], ["torch fp32"]), r"batches=0"),
    (lambda: roofline.time_formats([(32, 32)], [1], ["torch fp32"], rounds=0), r"rounds=0"),
    (lambda: roofline.peak_gflops("fp8"), r"dtype='fp8' must be one of"),
    (lambda: roofline.memory_bandwidth_gbs(total_mb=0), r"total_mb=0"),
    (lambda: roofline.roofline_bound_ms(1, 1, 0, 1), r"bandwidth_gbs=0"),
    (lambda: roofline.roofline_bound_ms(-1, 1, 1, 1), r"bytes_=-1"),
    (lambda: roofline.attainable_gflops(-1.0, 10, 100), r"intensity=-1.0"),
    (lambda: roofline.decoder_layer_ms("torch fp32", hidden=100), r"hidden=100 must be a multiple of 128"),
    (lambda: roofline.project_tokens_per_s(0), r"layer_ms=0"),
    (lambda: roofline.project_tokens_per_s(1.0, n_layers=0), r"n_layers=0"),
])
def test_argument_errors_name_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def _weight(n=48, k=256, seed=1):
    return torch.randn(n, k, generator=torch.Generator().manual_seed(seed)) / math.sqrt(k)


def test_onnx_linear_models_agree_with_float64_references():
    w = _weight()
    a = torch.randn(5, 256, generator=torch.Generator().manual_seed(2))
    ref = (a.double() @ w.double().T).numpy()
    y = deploy.linear_runner(deploy.matmul_fp32_model(w))(a)
    assert y.shape == (5, 48) and np.abs(y - ref).max() < 1e-5  # float32 accumulation
    model, w8 = deploy.matmul_int8_model(w)
    y8 = deploy.linear_runner(model)(a)
    ref8 = (a.double() @ w8.double().T).numpy()
    # activations rounded to uint8 (one scale per tensor): error ~ scale/2 per term, relative ~1%
    assert np.linalg.norm(y8 - ref8) / np.linalg.norm(ref8) < 0.02
    for level, tol in ((0, 1e-5), (4, 0.02)):  # level 0: float32 exact; level 4: int8 activations per block
        model, w4 = deploy.int4_model(w, block_size=32, accuracy_level=level)
        y4 = deploy.linear_runner(model)(a.numpy())
        ref4 = (a.double() @ w4.double().T).numpy()
        assert np.linalg.norm(y4 - ref4) / np.linalg.norm(ref4) < tol, level
    # the hand-built model equals the one from a float weight
    _, codes, scales, zeros = Q.rtn_quantize(w, 4, 32)
    y5 = deploy.linear_runner(deploy.matmulnbits_model(codes, scales, zeros, 32, 0))(a)
    np.testing.assert_allclose(y5, deploy.linear_runner(deploy.int4_model(w, 32, 0)[0])(a), atol=1e-6)


@pytest.mark.parametrize("name", sorted(roofline.FORMATS))
def test_every_format_agrees_with_its_float64_reference(name):
    fmt = roofline.FORMATS[name]
    w = _weight(64, 256)
    x = torch.randn(3, 256, generator=torch.Generator().manual_seed(3))
    factory, w_hat = fmt.build(w, 1, {})
    run, run2 = factory(), factory()
    y = fmt.to_float(run(fmt.prepare(x)))
    assert torch.equal(y, fmt.to_float(run2(fmt.prepare(x))))
    ref = x.double() @ w_hat.double().T
    tol = {"torch fp32": 1e-6, "onnxruntime fp32": 1e-6, "onnxruntime int4 L0": 1e-6}.get(name, 0.03)
    assert y.shape == (3, 64) and float((y - ref).norm() / ref.norm()) < tol
    err_fp32 = float((y - x.double() @ w.double().T).norm() / ref.norm())
    assert err_fp32 < {"torch fp32": 1e-6, "onnxruntime fp32": 1e-6, "torch bf16": 0.01, "onnxruntime int8": 0.03}.get(name, 0.15)


def test_bytes_moved_exact():
    n = k = 256
    act32 = 4 * (256 + 256)
    assert roofline.bytes_moved("torch fp32", n, k, 1) == 4 * 65536 + act32
    assert roofline.bytes_moved("onnxruntime fp32", n, k, 2) == 4 * 65536 + 2 * act32
    assert roofline.bytes_moved("torch bf16", n, k, 1) == 2 * 65536 + 2 * 512
    assert roofline.bytes_moved("onnxruntime int8", n, k, 1) == 65536 + 4 * 256 + 256 + act32
    # 4 bits: 32768 bytes of codes; block 128: 2 scales per row (float32), 1 byte of zero points per row
    assert roofline.bytes_moved("onnxruntime int4", n, k, 1) == 32768 + 4 * 256 * 2 + 256 + act32
    assert roofline.bytes_moved("onnxruntime int4 L0", n, k, 1) == 32768 + 4 * 256 * 2 + 256 + act32
    assert roofline.bytes_moved("onnxruntime int4 b32", n, k, 1) == 32768 + 4 * 256 * 8 + 256 * 4 + act32
    assert roofline.bytes_moved("torch int4", n, k, 1) == 32768 + 2 * 2 * 256 * 2 + 2 * 512
    assert roofline.bytes_moved("onnxruntime int4", 4096, 4096, 1) == 8388608 + 524288 + 65536 + 32768
    assert roofline.linear_flops(4096, 4096, 16) == 2 * 16 * 4096 * 4096


def test_roofline_formulas_by_hand():
    # 64e6 bytes at 20 GB/s = 3.2 ms; 3e7 FLOP at 100 GFLOP/s = 0.3 ms -> memory-bound, 3.2 ms
    assert roofline.roofline_bound_ms(64e6, 3e7, 20, 100) == pytest.approx(3.2)
    # 1e6 bytes at 10 GB/s = 0.1 ms; 1e9 FLOP at 50 GFLOP/s = 20 ms -> compute-bound
    assert roofline.roofline_bound_ms(1e6, 1e9, 10, 50) == pytest.approx(20.0)
    assert roofline.roofline_bound_ms(0, 0, 1, 1) == 0.0
    assert roofline.attainable_gflops(1.0, 20, 100) == pytest.approx(20.0)
    np.testing.assert_allclose(roofline.attainable_gflops([0.5, 5, 50], 20, 100), [10, 100, 100])
    assert roofline.project_tokens_per_s(1.0, 32) == pytest.approx(31.25)
    assert roofline.bandwidth_bound_tokens_per_s(1e8, 20, 32) == pytest.approx(6.25)


def test_machine_ceilings_are_positive_and_finite():
    bw = roofline.memory_bandwidth_gbs(total_mb=6, repeats=2)
    assert set(bw) == {"read", "copy", "triad", "array_mb"}
    assert all(math.isfinite(bw[k]) and bw[k] > 0 for k in ("read", "copy", "triad"))
    for dtype in roofline.PEAK_DTYPES:
        p = roofline.peak_gflops(dtype, n=128, repeats=2)
        assert math.isfinite(p) and p > 0
    llc = roofline.llc_bytes()
    assert llc is None or llc >= 2 ** 16
    assert 2 <= roofline.pool_size(2 ** 20, max_pool=5) <= 5


KEYS = {"N", "K", "batch", "format", "ms", "spread_ms", "bytes", "flops", "intensity", "gbs", "gflops", "err_fp32",
        "err_dequant", "pool", "pool_mb", "x_vs_ort_fp32", "x_vs_fastest_fp32"}


def test_time_formats_rows():
    fmts = ["torch fp32", "onnxruntime fp32", "onnxruntime int4"]
    rows = roofline.time_formats([(64, 128), (32, 256)], [1, 3], fmts, rounds=2, repeats=2, max_pool=2)
    assert [(r["N"], r["K"], r["batch"], r["format"]) for r in rows] == [
        (n, k, b, f) for n, k in [(64, 128), (32, 256)] for b in [1, 3] for f in fmts]
    for r in rows:
        assert set(r) == KEYS
        assert r["ms"] > 0 and r["spread_ms"][0] <= r["ms"] <= r["spread_ms"][1] and r["pool"] == 2
        assert r["bytes"] == roofline.bytes_moved(r["format"], r["N"], r["K"], r["batch"])
        assert r["gbs"] == pytest.approx(r["bytes"] / r["ms"] / 1e6)
    assert all(r["err_fp32"] < 1e-6 for r in rows if "fp32" in r["format"])
    assert all(0.02 < r["err_fp32"] < 0.2 for r in rows if "int4" in r["format"])
    assert all(r["x_vs_ort_fp32"] == pytest.approx(1.0) for r in rows if r["format"] == "onnxruntime fp32")
    assert "| 64 x 128 | 1 | torch fp32 |" in roofline.format_rows(rows)


def test_decoder_layer_and_projection():
    out = roofline.decoder_layer_ms(["torch fp32", "onnxruntime int4"], hidden=128, ffn=256, rounds=1, repeats=2,
                                    max_pool=3)
    assert set(out) == {"torch fp32", "onnxruntime int4"}
    fp32 = out["torch fp32"]
    assert fp32["bytes"] == 4 * (4 * 128 * 128 + 3 * 256 * 128) + 4 * (8 * 128 + 2 * 256 + 2 * 128 + 256 + 128)
    assert fp32["flops"] == 2 * (4 * 128 * 128 + 3 * 256 * 128) and fp32["ms"] > 0 and 1 <= fp32["copies"] <= 3
    assert roofline.project_tokens_per_s(fp32["ms"]) > 0


def test_roofline_figure():
    rows = [{"format": "a", "batch": 1, "intensity": 0.5, "gflops": 8.0, "N": 8, "K": 8},
            {"format": "b", "batch": 16, "intensity": 4.0, "gflops": 60.0, "N": 8, "K": 8}]
    fig = plots.roofline(rows, 20.0, 100.0)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert len(ax.lines) == 4  # the roof, the ridge, two formats
    with pytest.raises(ValueError, match="rows is empty"):
        plots.roofline([], 1, 1)
    plt.close("all")


def test_no_technique_or_foundation_imports_roofline():
    from test_architecture import FOUNDATIONS, TECHNIQUES, _graph  # the import rules' own reader
    graph = _graph()
    assert {"deploy", "quantization", "measure"} <= graph["roofline"]
    assert not [m for m in TECHNIQUES | FOUNDATIONS if "roofline" in graph.get(m, set())]


def test_every_format_names_its_compute_dtype_and_the_figure_takes_several_roofs():
    assert set(roofline.COMPUTE_DTYPE) == set(roofline.FORMATS)
    assert set(roofline.COMPUTE_DTYPE.values()) <= set(roofline.PEAK_DTYPES)
    rows = [{"intensity": 0.5, "gflops": 5.0, "format": "torch fp32", "batch": 1},
            {"intensity": 4.0, "gflops": 60.0, "format": "onnxruntime int4", "batch": 1}]
    fig = plots.roofline(rows, 20.0, {"fp32": 90.0, "int8": 400.0})
    assert len([l for l in fig.axes[0].get_lines() if l.get_label().startswith("roof")]) == 2
    with pytest.raises(ValueError, match="peak_gflops"):
        plots.roofline(rows, 20.0, {"fp32": 0.0})
