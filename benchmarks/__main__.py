"""Benchmark: accuracy, bytes on disk, MACs and single-thread latency of every technique of the course
and of the off-the-shelf recipes, side by side, measured in ONE run against the baseline of that run.

    python -m benchmarks [--dataset mnist5k] [--seed 0] [--out build/bench]

Every model comes from the same ``course_lib.recipes`` function, with the same defaults, that its chapter
runs, so the benchmark measures what the chapters teach. Ratios ("x smaller", "x faster") are against the
fp32 torch baseline measured in the same run; latency is the median of 30 single-thread runs of a batch
of 64 (measure.latency_ms). Artifacts go to --out.
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from course_lib import deploy, recipes, records, storage
from course_lib import quantization as Q
from course_lib.data import load_dataset
from course_lib.models import LeNet5
from course_lib.distillation import TeacherCache
from course_lib.training import load_baseline, seed_everything, train_baseline


def channels_last(model):
    """A copy of ``model`` whose weights (and so its convolutions' outputs) are channels-last (NHWC)."""
    return copy.deepcopy(model).to(memory_format=torch.channels_last)


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

    def add(name, model, file, method, **kw):
        recs.append(records.record(name, model, test=s.test, input_shape=shape, file=file, method=method,
                                   root=out, **kw))
        r = recs[-1]
        print(f"  {name:34s} {100 * r['accuracy']:6.2f}%  {r['size_bytes'] / 1024:9.1f} KiB  "
              f"{r['latency_ms']:7.2f} ms   [{time.perf_counter() - t0:5.0f} s]", flush=True)

    def torch_file(model, stem):
        path = out / f"{stem}.pt"
        storage.save_state(model, path)
        return path

    print("measuring (accuracy, file size, single-thread latency of a batch of 64):")
    add("baseline", base, torch_file(base, "baseline"), "fp32")
    base_onnx = deploy.export_onnx(base, out / "baseline.onnx", shape)
    add("onnxruntime fp32 (peer)", deploy.OrtModule(base_onnx), base_onnx, "onnxruntime", counts_from=base)

    # chapter 1: pruning (chapter 1's recipes and budgets: 3 fine-tuning epochs, channel ratio 0.5)
    ours = recipes.global_prune_finetune(base, s.train, sparsity=0.9, epochs=3, seed=args.seed)
    sp = out / "ch1_magnitude90.sparse"
    sp.write_bytes(storage.sparse_encode(ours, "bitmask", "lzma"))
    add("ch1 magnitude 90% + ft (sparse file)", ours, sp, "magnitude-global + 3 ep")
    tp = recipes.torch_prune_finetune(base, s.train, amount=0.9, epochs=3, seed=args.seed)
    add("torch.nn.utils.prune 90% + ft (peer)", tp, torch_file(tp, "torch_prune90"),
        "torch.nn.utils.prune + 3 ep (tutorial recipe)")
    ch = recipes.channel_prune_finetune(base, s.train, ratio=0.5, epochs=3, seed=args.seed)
    add("ch1 channel pruning + ft", ch, torch_file(ch, "channel"), "channel-l1 0.5 + 3 ep")

    # chapter 2: quantization
    w8 = Q.ptq(base, calib, weight_bits=8, act_bits=8, per_channel=True)
    pk = out / "ch2_w8a8.pt"
    torch.save(Q.packed_state_dict(w8), pk)
    add("ch2 PTQ W8A8 per-channel (fake-quant)", w8, pk, "ptq", counts_from=base)
    int8 = deploy.ort_quantize_static(base_onnx, out / "baseline_int8.onnx", calib)
    add("onnxruntime static int8 (peer)", deploy.OrtModule(int8), int8, "onnxruntime int8", counts_from=base)
    mixed = recipes.int8_lenet_ort(base, out / "baseline_int8_conv1_float.onnx", calib)
    add("ch2 ort int8, conv1 float", deploy.OrtModule(mixed), mixed, "onnxruntime int8 mixed", counts_from=base)
    ao, _ = Q.torch_ao_dynamic(base)
    add("torch.ao dynamic int8 (peer)", ao, torch_file(ao, "ao_dynamic"), "torch.ao", counts_from=base)

    # chapter 3: low rank (chapter 3's main model and fine-tuning recipe)
    low = recipes.lowrank_finetune(base, s.train, seed=args.seed)
    add("ch3 low-rank (SVD + Tucker-2) + ft", low, torch_file(low, "lowrank"), "lowrank + 2 ep")
    add("baseline, channels-last", channels_last(base), out / "baseline.pt", "fp32 channels-last")
    add("ch3 low-rank, channels-last", channels_last(low), out / "lowrank.pt", "lowrank channels-last")

    # chapter 4: distillation, the same 80x smaller student trained both ways with chapter 4's patient
    # budget (recipes.PATIENT_EPOCHS); one seed here, the notebook reports three
    cfg = dict(c1=4, c2=8, fc=32, in_channels=shape[0], input_size=shape[1], num_classes=s.num_classes)
    seed_everything(args.seed)
    scratch = LeNet5(**cfg)
    recipes.scratch_student(scratch, s.train, seed=args.seed)
    ep = recipes.PATIENT_EPOCHS
    add(f"ch4 student from scratch, {ep} ep", scratch, torch_file(scratch, "scratch"), "scratch")
    seed_everything(args.seed)
    student = LeNet5(**cfg)
    recipes.distill_student(student, TeacherCache(base), s.train, seed=args.seed)
    add(f"ch4 student distilled, {ep} ep", student, torch_file(student, "kd"), "kd")

    # chapter 5: combinations
    dc = recipes.deep_compression(base, s.train, seed=args.seed)
    dcf = out / "deep_compression.ccz"
    storage.save_compressed(dc, dcf)
    add("ch5 deep compression (.ccz)", storage.load_compressed(dcf), dcf, "prune+kmeans+huffman")
    fast = recipes.latency_model(base, s.train, seed=args.seed)
    f32 = deploy.export_onnx(fast, out / "fast.onnx", shape)
    add("ch5 latency-optimised, onnxruntime", deploy.OrtModule(f32), f32, "channel+kd+ort", counts_from=fast)
    f8 = recipes.int8_lenet_ort(fast, out / "fast_int8.onnx", calib)
    add("ch5 latency-optimised, onnxruntime int8", deploy.OrtModule(f8), f8, "channel+kd+ort-int8", counts_from=fast)
    tp8 = deploy.ort_quantize_static(deploy.export_onnx(tp, out / "tp.onnx", shape), out / "tp_int8.onnx", calib)
    add("torch prune 90% + ort int8 + zlib (peer)", deploy.OrtModule(tp8), storage.zlib_file(tp8, out / "tp_int8.zlib"),
        "torch.nn.utils.prune+ort+zlib", counts_from=tp)

    print()
    print(records.format_table(recs, columns=("name", "accuracy", "size_bytes", "macs", "latency_ms")))
    by = {r["name"]: r for r in recs}

    def ratio(a, b):
        return by[a]["latency_ms"] / by[b]["latency_ms"]
    print("\nchapter targets measured in this run (single thread, batch 64):")
    print(f"  ch2 int8 (conv1 float) vs onnxruntime fp32: {ratio('onnxruntime fp32 (peer)', 'ch2 ort int8, conv1 float'):.2f}x "
          f"faster (target 2.5x); vs torch fp32: {ratio('baseline', 'ch2 ort int8, conv1 float'):.2f}x (target 3.5x)")
    best_base = min(by["baseline"]["latency_ms"], by["baseline, channels-last"]["latency_ms"])
    best_lr = min(by["ch3 low-rank (SVD + Tucker-2) + ft"]["latency_ms"], by["ch3 low-rank, channels-last"]["latency_ms"])
    print(f"  ch3 low rank vs baseline, each in its faster layout: {best_base / best_lr:.2f}x faster (target 1.5x)")
    gain = by[f"ch4 student distilled, {ep} ep"]["accuracy"] - by[f"ch4 student from scratch, {ep} ep"]["accuracy"]
    print(f"  ch4 distillation vs scratch (one seed): {100 * gain:+.2f} points (target +0.5, mean of 3 seeds in the notebook)")
    (out / "bench.json").write_text(json.dumps(recs, indent=1))
    print(f"\n{len(recs)} models in {time.perf_counter() - t0:.0f} s; records in {out / 'bench.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
