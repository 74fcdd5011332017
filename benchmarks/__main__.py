"""Benchmark: accuracy, bytes on disk, MACs and single-thread latency of every technique of the course
and of the off-the-shelf recipes, side by side, measured in ONE run against the baseline of that run.

    python -m benchmarks [--dataset mnist5k] [--seed 0] [--out build/bench]

Two parts. First the chapters' TARGETS (``benchmarks/targets.py``; chapter 04's budget curve, controls and
omitted digit in ``benchmarks/distillation.py``; chapter 06's sentence-encoder targets in
``benchmarks/encoder.py``; chapter 07's language-model and
4-bit-kernel targets in ``benchmarks/llm.py``; chapter 08's runtimes in ``benchmarks/runtimes.py``): each measured with the chapter's
recipe over the chapter's seeds, with its interval and a verdict, latency against the baseline's
fastest fp32 configuration; written to ``<out>/../bench.md`` and ``<out>/../bench.json`` (by default
``build/bench.md`` and ``build/bench.json``). Then the overview TABLE of every technique, one seed.

Every model comes from the same ``course_lib.recipes`` function, with the same defaults, that its chapter
runs, so the benchmark measures what the chapters teach. Ratios ("x smaller", "x faster") are against the
baseline; latency is ``deploy.latency_table``: every model of the table timed together in interleaved
rounds, single thread, batch 64, each fp32 model in its fastest configuration (torch NCHW,
channels-last, onnxruntime), so "x faster" is against the baseline's fastest fp32. Artifacts go to --out.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from course_lib import deploy, recipes, records, storage

from .distillation import measure_ch4_targets
from .llm import measure_llm_targets
from .encoder import measure_ch6_targets
from .runtimes import measure_ch8_targets
from .targets import as_json, format_targets, measure_ch5_targets, measure_targets
from course_lib import quantization as Q
from course_lib.data import load_dataset
from course_lib.training import load_baseline, train_baseline


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dataset", default="mnist5k")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("build/bench"))
    ap.add_argument("--limit", type=int, default=None,
                    help="images per split, for a quick smoke run of the whole benchmark (the baseline is then "
                         "trained afresh, not cached, and the numbers mean nothing)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    s = load_dataset(args.dataset, limit=args.limit)
    shape, calib = s.input_shape, s.train.tensors[0][:512]
    base = load_baseline(args.dataset, args.seed, splits=s)[0] if args.limit is None else train_baseline(s, args.seed)[0]
    recs = []

    print("chapter targets (the chapters' recipes and seeds, single thread, batch 64):", flush=True)
    found, rows = measure_targets(s, base, out, quick=args.limit is not None)
    found4, students4 = measure_ch4_targets(s, base, quick=args.limit is not None)  # chapter 04: over seeds
    found += found4
    found5, rows5, models5 = measure_ch5_targets(s, base, out, quick=args.limit is not None)  # chapter 05: its own table
    found += found5
    found += measure_ch6_targets(quick=args.limit is not None)  # chapter 06: MiniLM on its retrieval set
    found += measure_llm_targets(quick=args.limit is not None, seed=args.seed)  # chapter 07: its own model and data
    found += measure_ch8_targets(s, base, out, quick=args.limit is not None)  # chapter 08: every runtime
    table = format_targets(found)
    print(table)
    print(deploy.format_latency_table(rows))
    print(deploy.format_latency_table(rows5))
    targets = [t for t in found if not t.reported]  # the control comparisons are shown, not counted
    missed = [t.name for t in targets if not t.met]
    print(f"{len(targets) - len(missed)} of {len(targets)} targets met" + (f"; MISSED: {missed}" if missed else "")
          + f"; {len(found) - len(targets)} comparisons with controls reported")
    (out.parent / "bench.md").write_text(
        "# Benchmark: the chapters' targets\n\nMeasured by `make bench` (`python -m benchmarks`) on this machine; "
        "accuracy is the mean over the chapters' seeds with the paired interval against the baseline on the same "
        "test images; latency against the baseline's fastest fp32 configuration, every model timed together."
        f"\n\n{table}\n\n## Latency (ms, single thread, batch 64)\n\n{deploy.format_latency_table(rows)}\n"
        f"\n## Chapter 5 latency (ms, single thread, batch 64)\n\n{deploy.format_latency_table(rows5)}\n")
    (out.parent / "bench.json").write_text(json.dumps({"targets": as_json(found), "latency": rows, "latency_ch5": rows5},
                                                      indent=1))
    print(f"[{time.perf_counter() - t0:.0f} s] targets written to {out.parent / 'bench.md'}\n", flush=True)

    timed = {}  # name -> what deploy.latency_table times: every model of the table together, at the end
    xb = torch.randn((64, *shape), generator=torch.Generator().manual_seed(0))

    def add(name, model, file, method, runs="fp32", **kw):
        """runs: "fp32" (timed as torch NCHW, channels-last and onnxruntime; the fastest counts), "torch"
        (fake-quant and torch.ao models: eager only) or "onnxruntime" (an OrtModule)."""
        recs.append(records.record(name, model, test=s.test, input_shape=shape, file=file, method=method,
                                   root=out, latency_ms=None, **kw))
        timed[name] = model if runs == "fp32" else {runs: lambda m=model: m(xb)}
        r = recs[-1]
        print(f"  {name:40s} {100 * r['accuracy']:6.2f}%  {r['size_bytes'] / 1024:9.1f} KiB"
              f"   [{time.perf_counter() - t0:5.0f} s]", flush=True)

    def torch_file(model, stem):
        path = out / f"{stem}.pt"
        storage.save_state(model, path)
        return path

    print("overview, one seed (accuracy, file size; latency at the end, every model timed together):")
    add("baseline", base, torch_file(base, "baseline"), "fp32")
    base_onnx = deploy.export_onnx(base, out / "baseline.onnx", shape)
    add("onnxruntime fp32 (peer)", deploy.OrtModule(base_onnx), base_onnx, "onnxruntime", runs="onnxruntime",
        counts_from=base)

    # chapter 1: pruning (chapter 1's recipes and budgets: recipes.PRUNE_EPOCHS, CH1_BUDGET's channel ratio)
    ep1 = recipes.PRUNE_EPOCHS
    ours = recipes.global_prune_finetune(base, s.train, sparsity=0.9, seed=args.seed)
    sp = out / "ch1_magnitude90.sparse"
    sp.write_bytes(storage.sparse_encode(ours, "bitmask", "lzma"))
    add("ch1 magnitude 90% + ft (sparse file)", ours, sp, f"magnitude-global + {ep1} ep")
    tp = recipes.torch_prune_finetune(base, s.train, amount=0.9, seed=args.seed)
    add("torch.nn.utils.prune 90% + ft (peer)", tp, torch_file(tp, "torch_prune90"),
        f"torch.nn.utils.prune + {ep1} ep (tutorial recipe)")
    ch = recipes.channel_prune_finetune(base, s.train, ratio=recipes.CH1_BUDGET["channel_ratio"], seed=args.seed)
    add("ch1 channel pruning + ft", ch, torch_file(ch, "channel"), f"channel-l1 {recipes.CH1_BUDGET['channel_ratio']} + {ep1} ep")

    # chapter 2: quantization
    w8 = Q.ptq(base, calib, weight_bits=8, act_bits=8, per_channel=True)
    pk = out / "ch2_w8a8.pt"
    torch.save(Q.packed_state_dict(w8), pk)
    add("ch2 PTQ W8A8 per-channel (fake-quant)", w8, pk, "ptq", runs="torch", counts_from=base)
    int8 = deploy.ort_quantize_static(base_onnx, out / "baseline_int8.onnx", calib)
    add("onnxruntime static int8 (peer)", deploy.OrtModule(int8), int8, "onnxruntime int8", runs="onnxruntime",
        counts_from=base)
    mixed = recipes.int8_lenet_ort(base, out / "baseline_int8_conv1_float.onnx", calib)
    add("ch2 ort int8, conv1 float", deploy.OrtModule(mixed), mixed, "onnxruntime int8 mixed", runs="onnxruntime",
        counts_from=base)
    ao, _ = Q.torch_ao_dynamic(base)
    add("torch.ao dynamic int8 (peer)", ao, torch_file(ao, "ao_dynamic"), "torch.ao", runs="torch", counts_from=base)

    # chapter 3: low rank (chapter 3's main model and fine-tuning recipe)
    low = recipes.lowrank_finetune(base, s.train, seed=args.seed)
    add("ch3 low-rank (SVD + Tucker-2) + ft", low, torch_file(low, "lowrank"), "lowrank + 2 ep")

    # chapter 4: distillation, the 80x smaller student of chapter 4's targets (seed 0) at the budget chosen
    # there on validation, both ways; the targets above report all seeds
    ep = students4["epochs"]
    add(f"ch4 student from scratch, {ep} ep", students4["scratch"], torch_file(students4["scratch"], "scratch"), "scratch")
    add(f"ch4 student distilled, {ep} ep", students4["kd"], torch_file(students4["kd"], "kd"), "kd")

    # chapter 5: combinations, the first seed's models of chapter 5's targets above (not trained again)
    dc, dcf = models5["deep_compression"]
    add("ch5 deep compression (.ccz)", dc, dcf, "prune+kmeans+huffman")
    fast = models5["latency"]
    f32 = deploy.export_onnx(fast, out / "fast.onnx", shape)
    add("ch5 latency-optimised, onnxruntime", deploy.OrtModule(f32), f32, "channel+kd+ort", runs="onnxruntime",
        counts_from=fast)
    f8 = recipes.int8_lenet_ort(fast, out / "fast_int8.onnx", calib)
    add("ch5 latency-optimised, onnxruntime int8", deploy.OrtModule(f8), f8, "channel+kd+ort-int8", runs="onnxruntime",
        counts_from=fast)
    tp8 = deploy.ort_quantize_static(deploy.export_onnx(tp, out / "tp.onnx", shape), out / "tp_int8.onnx", calib)
    add("torch prune 90% + ort int8 + zlib (peer)", deploy.OrtModule(tp8), storage.zlib_file(tp8, out / "tp_int8.zlib"),
        "torch.nn.utils.prune+ort+zlib", runs="onnxruntime", counts_from=tp)

    lat = deploy.latency_table(timed, shape, rounds=2 if args.limit else 3, repeats=5 if args.limit else 20,
                               workdir=out)
    for r in recs:
        r["latency_ms"], r["latency_config"] = lat[r["name"]]["latency_ms"], lat[r["name"]]["config"]

    print()
    print(records.format_table(recs, columns=("name", "accuracy", "size_bytes", "macs", "latency_ms",
                                              "latency_config")))
    (out / "table.json").write_text(json.dumps(recs, indent=1))
    print(f"\n{len(recs)} models in {time.perf_counter() - t0:.0f} s; records in {out / 'table.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
