"""Chapter 07's targets (LLM-era weight quantization), measured the way the chapter measures them.

- the 4-bit kernel: onnxruntime's ``MatMulNBits`` at 4096 x 4096, batch 1, single thread, timed
  interleaved with onnxruntime fp32 on rotating weight pools that exceed the last-level cache
  (``roofline.time_formats``): at least 6x faster than the same runtime's fp32, and at least 50% of the
  roofline bound computed from this machine's measured bandwidth;
- the small language model (``lm.load_lm``): held-out perplexity over the chapter's chunks with a
  bootstrap interval over files; 4-bit group-128 GPTQ and AWQ within 5% of fp32 (mean over 3 calibration
  seeds); at 3 bits both better than RTN by more than the paired interval, for every calibration seed;
  MIT Lab 4's ablation (the salient 1% kept in float beats RTN and a random 1%), with its verdicts.
"""
from __future__ import annotations

import math

import torch

from course_lib import lm, roofline, stats
from course_lib import quantization as Q

from .targets import Target


def _ppl_target(name, nlls, ref, files, max_rel=0.05) -> Target:
    """Mean over calibration seeds of the relative perplexity change against fp32 at most max_rel."""
    p0 = lm.perplexity(ref)
    rels = [lm.perplexity(n) / p0 - 1 for n in nlls]
    mean = sum(rels) / len(rels)
    cs = [stats.paired_bootstrap_diff(n, ref, groups=files) for n in nlls]
    return Target("07", name, f"perplexity within {100 * max_rel:.0f}% of fp32 (mean of {len(nlls)} calibration seeds)",
                  f"{100 * mean:+.2f}% vs fp32 {p0:.3f}", "per seed " + ", ".join(f"{100 * r:+.2f}%" for r in rels),
                  mean <= max_rel, "paired vs fp32, per seed: " + ", ".join(
                      f"[{100 * math.expm1(c['ci'][0]):+.2f}, {100 * math.expm1(c['ci'][1]):+.2f}]%" for c in cs))


def _better_target(name, nlls, ref, files) -> Target:
    cs = [stats.paired_bootstrap_diff(n, ref, groups=files) for n in nlls]
    return Target("07", name, "lower perplexity than RTN, paired interval below 0, every calibration seed",
                  ", ".join(f"{100 * math.expm1(c['diff']):+.2f}%" for c in cs),
                  "paired " + ", ".join(f"[{100 * math.expm1(c['ci'][0]):+.2f}, {100 * math.expm1(c['ci'][1]):+.2f}]%"
                                        for c in cs),
                  all(c["verdict"] == "lower" for c in cs), "verdicts: " + ", ".join(c["verdict"] for c in cs))


def measure_llm_targets(quick: bool = False, seed: int = 0) -> list[Target]:
    """Every chapter-07 target. quick=True (the --limit smoke run): small shapes and 8 chunks, so the whole
    path runs in seconds (its numbers mean nothing)."""
    found = []
    shape = (512, 512) if quick else (4096, 4096)
    bw = roofline.memory_bandwidth_gbs(total_mb=48 if quick else None, threads=1, repeats=3 if quick else 10)["read"]
    peak8 = roofline.peak_gflops("int8", threads=1, n=256 if quick else 1024)
    rows = roofline.time_formats([shape], [1], ("onnxruntime fp32", "onnxruntime int4"), threads=1,
                                 rounds=2 if quick else 5, repeats=3 if quick else 10, seed=seed,
                                 max_pool=4 if quick else 16)
    by = {r["format"]: r for r in rows}
    nb, fp = by["onnxruntime int4"], by["onnxruntime fp32"]
    x = fp["ms"] / nb["ms"]
    spread = (fp["spread_ms"][0] / nb["spread_ms"][1], fp["spread_ms"][1] / nb["spread_ms"][0])
    found.append(Target("07", "MatMulNBits 4-bit vs onnxruntime fp32, batch 1", ">= 6.0x faster", f"{x:.2f}x",
                        f"[{spread[0]:.2f}, {spread[1]:.2f}] over rounds", x >= 6.0,
                        f"{shape[0]}x{shape[1]}: int4 {nb['ms']:.3f} ms, fp32 {fp['ms']:.3f} ms, single thread, "
                        f"pools of {nb['pool']} and {fp['pool']} matrices"))
    bound = roofline.roofline_bound_ms(nb["bytes"], nb["flops"], bw, peak8)
    found.append(Target("07", "MatMulNBits vs the roofline bound", ">= 50% of the bound", f"{100 * bound / nb['ms']:.0f}%",
                        f"bound {bound:.3f} ms at {bw:.1f} GB/s (read, 1 thread)", bound / nb["ms"] >= 0.5,
                        f"{nb['bytes'] / 1e6:.1f} MB moved in {nb['ms']:.3f} ms = {nb['gbs']:.1f} GB/s"))

    model, tok = lm.load_lm()
    names = [n for n in lm.linear_names(model) if n != "head"]
    n_chunks = 8 if quick else lm.EVAL_CHUNKS
    chunks, files = lm.eval_chunks(tok, n_chunks), lm.eval_chunk_files(n_chunks)
    seeds = [seed] if quick else [seed, seed + 1, seed + 2]  # calibration draws
    ref = lm.chunk_nll(model, chunks)
    nll, hessians = {}, None
    for s in seeds:
        h = Q.collect_hessians(model, lm.calibration_batch(lm.CALIB_CHUNKS, model.cfg.context, seed=s), names)
        hessians = hessians if hessians is not None else h  # the first seed's, for the ablation
        for bits in (4, 3):
            for method in ("gptq", "awq"):
                qm, _ = Q.quantize_weights(model, method, bits, 128, hessians=h, names=names)
                nll.setdefault((bits, method), []).append(lm.chunk_nll(qm, chunks))
    rtn = {bits: lm.chunk_nll(Q.quantize_weights(model, "rtn", bits, 128, names=names)[0], chunks) for bits in (4, 3)}
    found.append(_ppl_target("4-bit g128 GPTQ", nll[4, "gptq"], ref, files))
    found.append(_ppl_target("4-bit g128 AWQ", nll[4, "awq"], ref, files))
    found.append(_better_target("3-bit g128 GPTQ vs RTN", nll[3, "gptq"], rtn[3], files))
    found.append(_better_target("3-bit g128 AWQ vs RTN", nll[3, "awq"], rtn[3], files))

    mag = {n: Q.activation_magnitude(hessians[n]) for n in names}
    top = {n: Q.salient_channels(mag[n], 0.01) for n in names}
    keep = lm.chunk_nll(Q.replace_weights(model, lambda n, w: Q.rtn_keep_channels(w, top[n], 3, 128), names), chunks)
    rnd = []
    for s in range(3):
        r = {n: Q.salient_channels(mag[n], 0.01, random=True, seed=s) for n in names}
        rnd.append(lm.chunk_nll(Q.replace_weights(model, lambda n, w: Q.rtn_keep_channels(w, r[n], 3, 128), names),
                                chunks))
    a = stats.paired_bootstrap_diff(keep, rtn[3], groups=files)
    b = stats.paired_bootstrap_diff(keep, torch.stack(rnd).mean(0), groups=files)
    ok = a["verdict"] == "lower" and b["verdict"] == "lower"
    found.append(Target("07", "MIT Lab 4 ablation (3-bit g128)", "salient 1% kept in float beats RTN and beats a "
                        "random 1% (paired intervals below 0)",
                        f"{100 * math.expm1(a['diff']):+.2f}% vs RTN, {100 * math.expm1(b['diff']):+.2f}% vs random",
                        f"paired [{100 * math.expm1(a['ci'][0]):+.2f}, {100 * math.expm1(a['ci'][1]):+.2f}]% and "
                        f"[{100 * math.expm1(b['ci'][0]):+.2f}, {100 * math.expm1(b['ci'][1]):+.2f}]%", ok,
                        f"verdicts: {a['verdict']} vs RTN, {b['verdict']} vs random (mean of 3 draws)"))
    return found
