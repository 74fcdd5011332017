"""Chapter 6's targets, measured as the chapter measures them (``make bench``).

all-MiniLM-L6-v2 (shipped, offline) on the course's retrieval set (``data/retrieval.tsv``: recall@1 among hard
negatives, bootstrap interval over queries, paired verdicts query by query): fp32 below the ceiling; int8
(torch.ao dynamic, per-channel, full range) inside fp32's interval and faster; 3-bit GPTQ and AWQ (group 128,
calibrated on chapter 6's unlabelled sentences, evaluated out of sample) against round-to-nearest; MIT Lab 4's
salient-1% ablation on held-out activations; 4-bit GPTQ's linear layers on onnxruntime ``MatMulNBits`` at
batch 1; the file with 4-bit linear layers and a 4-bit embedding table. Latency: ``deploy.latency_table``,
single thread, interleaved rounds, every model of a table together.
"""
from __future__ import annotations

import torch

from course_lib import bert, deploy, measure, retrieval, stats
from course_lib import quantization as Q

from .targets import Target

GROUP = 128  # chapter 6's group size


def measure_ch6_targets(quick: bool = False) -> list:
    """The targets of chapter 6. quick (the smoke test; its numbers mean nothing): 40 queries, 16 calibration
    sentences, no AWQ, only the first block's 6 linear layers quantized, the ablation and GPTQ's settings chosen
    on 4 layers (2 candidates), one timing round."""
    model, tokenizer = bert.load_pretrained()
    sent = bert.load_sentences()
    rs = retrieval.load_retrieval(40 if quick else None)
    calib = bert.tokenize(tokenizer, sent.train_texts[:16] if quick else sent.train_texts)
    held = bert.tokenize(tokenizer, sent.eval_texts)
    task = bert.tokenize(tokenizer, rs.texts)
    ref = bert.encode(model, task)
    scores = {"fp32": retrieval.evaluate(ref, rs, ref)}
    found = []
    n = len(rs.queries)
    r1 = scores["fp32"]["recall_at_1"]
    lo, hi = stats.accuracy_interval(r1, n)   # Wilson over the queries, as the chapter's record has it
    found.append(Target("06", "fp32 recall@1 on the hard-negative retrieval set", "< 95% (below the ceiling)",
                        f"{100 * r1:.1f}% of {n} queries", f"[{100 * lo:.1f}, {100 * hi:.1f}]%", r1 < 0.95))

    int8 = Q.quantize_dynamic_int8(model, per_channel=True, full_range=True)
    scores["int8"] = retrieval.evaluate(bert.encode(int8, task), rs, ref)
    cmp = stats.paired_compare(scores["int8"]["hits"], scores["fp32"]["hits"])
    r8 = scores["int8"]["recall_at_1"]
    found.append(Target("06", "int8 recall@1 inside fp32's interval", "inside fp32's 95% interval",
                        f"{100 * r8:.1f}%", f"paired vs fp32 {cmp}", lo <= r8 <= hi))

    hessians = Q.collect_hessians(model, calib)
    methods = ("rtn", "gptq") if quick else ("rtn", "gptq", "awq")
    layers = [nm for nm, _ in bert.linear_layers(model)][:6] if quick else None  # None: every linear layer
    w3 = {m: Q.quantize_weights(model, m, bits=3, group_size=GROUP, hessians=hessians, names=layers)[0]
          for m in methods}
    for m in methods:
        scores[f"w3-{m}"] = retrieval.evaluate(bert.encode(w3[m], task), rs, ref)
    for m in methods[1:]:
        c = stats.paired_compare(scores[f"w3-{m}"]["hits"], scores["w3-rtn"]["hits"])
        found.append(Target("06", f"3-bit {m.upper()} vs RTN (g{GROUP}), recall@1", "better (interval above 0)",
                            f"{100 * c.diff:+.2f} pt", f"[{100 * c.ci[0]:+.2f}, {100 * c.ci[1]:+.2f}] pt",
                            c.verdict == "better", f"{c.verdict}; {m} {100 * scores[f'w3-{m}']['recall_at_1']:.1f}%"
                            f" vs RTN {100 * scores['w3-rtn']['recall_at_1']:.1f}%"))

    # GPTQ's settings chosen on two halves of the calibration sentences, as chapter 6 chooses them
    texts = sent.train_texts[:16] if quick else sent.train_texts
    fit_h, other_h = (Q.collect_hessians(model, bert.tokenize(tokenizer, h)) for h in (texts[0::2], texts[1::2]))
    weights = {nm: model.get_submodule(nm).weight.detach() for nm, _ in bert.linear_layers(model)[:4 if quick else None]}
    cands = {k: Q.GPTQ_SETTINGS[k] for k in ("damp 0.01", "act order, damp 0.1")} if quick else None
    chosen, _ = Q.choose_gptq_settings(weights, fit_h, other_h, bits=3, group_size=GROUP, candidates=cands)
    tuned = Q.quantize_weights(model, "gptq", bits=3, group_size=GROUP, hessians=hessians, names=layers,
                               **Q.GPTQ_SETTINGS[chosen])[0]
    scores["w3-gptq-tuned"] = retrieval.evaluate(bert.encode(tuned, task), rs, ref)
    c = stats.paired_compare(scores["w3-gptq-tuned"]["hits"], scores["w3-rtn"]["hits"])
    found.append(Target("06", f"3-bit GPTQ ({chosen}, chosen on calibration halves) vs RTN, recall@1",
                        "better (interval above 0)", f"{100 * c.diff:+.2f} pt",
                        f"[{100 * c.ci[0]:+.2f}, {100 * c.ci[1]:+.2f}] pt", c.verdict == "better",
                        f"{c.verdict}; {100 * scores['w3-gptq-tuned']['recall_at_1']:.1f}% vs RTN "
                        f"{100 * scores['w3-rtn']['recall_at_1']:.1f}%"))

    held_h = Q.collect_hessians(model, held)  # held-out activations: never used to quantize
    names = [nm for nm, _ in bert.linear_layers(model)][:4 if quick else None]
    ratio = {}
    for label, random in (("salient", False), ("random", True)):
        r = []
        for nm in names:
            w = model.get_submodule(nm).weight.detach()
            keep = Q.salient_channels(Q.activation_magnitude(hessians[nm]), 0.01, random=random)
            r.append(Q.output_error(w, Q.rtn_keep_channels(w, keep, 3, GROUP), held_h[nm])
                     / Q.output_error(w, Q.rtn_quantize(w, 3, GROUP)[0], held_h[nm]))
        ratio[label] = float(torch.tensor(r).median())
    found.append(Target("06", "MIT Lab 4 ablation (3-bit g128, held-out layer error / RTN's)",
                        "keeping the salient 1% in float clearly beats a random 1% (ratios differ by > 0.05)",
                        f"salient {ratio['salient']:.3f}, random {ratio['random']:.3f}", f"median over {len(names)} layers",
                        ratio["salient"] < ratio["random"] - 0.05))

    gptq4, packed = Q.quantize_weights(model, "gptq", bits=4, group_size=GROUP, hessians=hessians, names=layers)
    ort4 = deploy.ort_int4_linears(gptq4, packed, GROUP)
    one = next(bert._chunks(held, 1))
    batch = next(bert._chunks(held, 64))
    models = {"baseline": model, "int8": int8, "MatMulNBits": ort4}
    rounds, repeats = (1, 1) if quick else (4, 3)
    lat64 = deploy.latency_table({k: (lambda m=m: bert.embed(m, batch)) for k, m in models.items()},
                                 tuple(batch["input_ids"].shape[1:]), rounds=rounds, repeats=repeats, warmup=1)
    lat1 = deploy.latency_table({k: (lambda m=m: bert.embed(m, one)) for k, m in models.items()},
                                tuple(one["input_ids"].shape[1:]), rounds=rounds, repeats=5 * repeats, warmup=2)
    x8 = lat64["int8"]["x_faster"]
    found.append(Target("06", "int8 encoder vs fp32 (batch 64, single thread)", ">= 1.5x faster", f"{x8:.2f}x",
                        f"rounds {lat64['int8']['spread_ms'][0]:.1f}-{lat64['int8']['spread_ms'][1]:.1f} ms", x8 >= 1.5,
                        f"batch 1: {lat1['int8']['x_faster']:.2f}x"))
    x4 = lat1["MatMulNBits"]["x_faster"]
    found.append(Target("06", "4-bit linear layers on MatMulNBits vs fp32 (batch 1)", "faster (> 1.0x)", f"{x4:.2f}x",
                        f"rounds {lat1['MatMulNBits']['spread_ms'][0]:.2f}-{lat1['MatMulNBits']['spread_ms'][1]:.2f} ms",
                        x4 > 1.0, f"batch 64: {lat64['MatMulNBits']['x_faster']:.2f}x"))

    table4 = bert.quantize_embeddings(gptq4, 4)[1]
    small = bert.with_quantized_embeddings(Q.int4_state(gptq4, packed), table4, 4)
    x = measure.serialized_bytes(model.state_dict()) / measure.serialized_bytes(small)
    found.append(Target("06", "file with 4-bit linear layers and a 4-bit embedding table", ">= 6x smaller than fp32",
                        f"{x:.1f}x", "exact (bytes)", x >= 6))
    return found
