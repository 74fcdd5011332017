"""The chapters' targets, measured the way the course measures (DESIGN.md, measurement protocol).

For every target: the chapter's own recipe (``course_lib.recipes``, the chapter's budget) over the
chapter's seeds (``recipes.SEEDS``), accuracy as the mean over seeds with the paired interval against
the baseline on the same test images (``stats.paired_compare``), and latency from ONE interleaved
``deploy.latency_table`` per chapter against the baseline's fastest fp32 configuration. Each target
gets the measured value, its interval, the target and a verdict: ``met`` or ``MISSED`` (a missed
target is reported, never hidden). Comparisons with the matched controls (dense models of the same
non-zeros or MACs, the same widths trained from scratch) are shown with the verdict ``reported``:
they inform, whatever they say, and are not counted as targets.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from course_lib import deploy, measure, recipes, stats
from course_lib.models import lenet_widths_matching
from course_lib.training import correct, load_baseline, train_baseline


@dataclass
class Target:
    chapter: str
    name: str
    target: str
    value: str
    interval: str
    met: bool
    detail: str = ""
    reported: bool = False  # a comparison shown whatever it says (controls), not a pass/fail target

    @property
    def verdict(self) -> str:
        return "reported" if self.reported else "met" if self.met else "MISSED"


def _acc(c: torch.Tensor) -> float:
    return float(c.float().mean())


def _accuracy_over_seeds(make, test) -> tuple[list, torch.Tensor]:
    """(models, per-image correctness (seeds, n)) of ``make(seed)`` for every seed of recipes.SEEDS."""
    models = [make(seed) for seed in recipes.SEEDS]
    return models, torch.stack([correct(m, test) for m in models])


def _control(s, widths: dict, seed: int, quick: bool):
    """A from-scratch control: the baseline recipe at ``widths`` (cached like the baseline); quick: one epoch,
    not cached (the smoke run)."""
    if quick:
        return train_baseline(s, seed, {"model_kw": widths, "epochs": 1}, progress=False)[0]
    return load_baseline(s.name, seed, splits=s, model_kw=widths, progress=False)[0]


def _loss_target(chapter, name, max_loss, cs, base_c, must_include_zero=False) -> Target:
    """Mean loss over seeds at most ``max_loss`` (a fraction); with must_include_zero the paired interval
    must also include zero or lie above it."""
    cmp = stats.paired_compare(cs, base_c)
    accs = [_acc(c) for c in cs]
    summ = stats.seed_summary(accs)
    loss = _acc(base_c) - summ["mean"]
    ok = loss <= max_loss + 1e-12 and (not must_include_zero or cmp.ci[1] >= 0)
    goal = f"mean loss <= {100 * max_loss:.1f} pt" + (", paired interval includes 0 or above" if must_include_zero else "")
    return Target(chapter, name, goal, f"{100 * -loss:+.2f} pt (mean of {len(accs)} seeds, {100 * summ['mean']:.2f}%)",
                  f"paired [{100 * cmp.ci[0]:+.2f}, {100 * cmp.ci[1]:+.2f}] pt", ok,
                  f"per seed {', '.join(f'{100 * a:.2f}' for a in accs)}; verdict vs baseline: {cmp.verdict}")


def _ratio(rows, model, reference) -> tuple[float, float, float]:
    """How many times faster ``model`` runs than ``reference`` (medians), with the range over rounds."""
    r, ref = rows[model], rows[reference]
    return (ref["latency_ms"] / r["latency_ms"], ref["spread_ms"][0] / r["spread_ms"][1],
            ref["spread_ms"][1] / r["spread_ms"][0])


def _speed_target(chapter, name, rows, model, minimum, reference="baseline", label="fastest fp32 baseline") -> Target:
    r, ref = rows[model], rows[reference]
    x, lo, hi = _ratio(rows, model, reference)
    return Target(chapter, name, f">= {minimum:.1f}x faster than {label}", f"{x:.2f}x",
                  f"[{lo:.2f}, {hi:.2f}] over rounds", x >= minimum,
                  f"{model}: {r['latency_ms']:.3f} ms ({r['config']}); {reference}: {ref['latency_ms']:.3f} ms "
                  f"({ref['config']})")


def _control_speed(chapter, model, control, rows) -> Target:
    """Not a pass/fail target: the compressed model's speed relative to its matched control, with the
    range over rounds; "indistinguishable" when that range includes 1."""
    r, c = rows[model], rows[control]
    x, lo, hi = _ratio(rows, model, control)
    said = "indistinguishable" if lo <= 1 <= hi else "faster than the control" if lo > 1 else "slower than the control"
    return Target(chapter, f"{model} latency vs {control}", "reported whatever it is", f"{x:.2f}x the control's speed",
                  f"[{lo:.2f}, {hi:.2f}] over rounds", True,
                  f"{said}; {model} {r['latency_ms']:.3f} ms ({r['config']}), control {c['latency_ms']:.3f} ms "
                  f"({c['config']})", reported=True)


def _control_verdict(chapter, name, cs, control_cs) -> Target:
    """Not a pass/fail target: the verdict against the matched control, whatever it is."""
    cmp = stats.paired_compare(cs, control_cs)
    return Target(chapter, name, "reported whatever the verdict", f"{100 * cmp.diff:+.2f} pt",
                  f"paired [{100 * cmp.ci[0]:+.2f}, {100 * cmp.ci[1]:+.2f}] pt", True, f"verdict: {cmp.verdict}",
                  reported=True)


def measure_targets(s, base, out, quick: bool = False) -> tuple[list[Target], dict]:
    """Every chapter-1-to-3 target of the course on splits ``s`` against the trained ``base``; returns
    (targets, the latency table's rows).

    quick=True (the ``--limit`` smoke run): the controls are trained for one epoch instead of the
    baseline recipe's 20, so the whole path runs in seconds (its numbers mean nothing).
    """
    shape, test = s.input_shape, s.test
    base_c = correct(base, test)
    found: list[Target] = []

    def control(widths, seed):
        return _control(s, widths, seed, quick)

    # ---- chapter 1: pruning
    b = recipes.CH1_BUDGET
    p90, c90 = _accuracy_over_seeds(
        lambda seed: recipes.global_prune_finetune(base, s.train, sparsity=0.9, epochs=b["epochs"], seed=seed), test)
    found.append(_loss_target("01", "90% global sparsity", 0.003, c90, base_c, must_include_zero=True))

    def same_nonzeros(label, pruned, cs):  # the dense control with as many parameters as the pruned model's non-zeros
        widths = lenet_widths_matching(measure.count_nonzero(pruned), "params", shape, s.num_classes)
        _, ctrl = _accuracy_over_seeds(lambda seed: control(widths, seed), test)
        return _control_verdict("01", f"{label} sparse vs dense control with the same non-zeros {widths}", cs, ctrl)

    found.append(same_nonzeros("90%", p90[0], c90))
    p95, c95 = _accuracy_over_seeds(
        lambda seed: recipes.gradual_prune(base, s.train, sparsity=0.95, epochs=b["epochs"], seed=seed)[0], test)
    found.append(_loss_target("01", "95% global sparsity (gradual)", 0.01, c95, base_c))
    found.append(same_nonzeros("95%", p95[0], c95))
    ch, cch = _accuracy_over_seeds(
        lambda seed: recipes.channel_prune_finetune(base, s.train, ratio=b["channel_ratio"], epochs=b["epochs"],
                                                    seed=seed), test)
    found.append(_loss_target("01", "channel pruning accuracy", 0.01, cch, base_c))
    mac_x = measure.macs(base, shape) / measure.macs(ch[0], shape)
    found.append(Target("01", "channel pruning MACs", ">= 2.0x fewer MACs", f"{mac_x:.2f}x", "exact", mac_x >= 2.0))
    widths = {k: getattr(ch[0], n).out_channels if n.startswith("conv") else ch[0].fc1.out_features
              for k, n in (("c1", "conv1"), ("c2", "conv2"), ("fc", "fc1"))}
    scr, cscr = _accuracy_over_seeds(lambda seed: control(widths, seed), test)
    found.append(_control_verdict("01", f"channel-pruned vs the same widths {widths} from scratch", cch, cscr))

    # ---- chapter 3: low rank
    lr_models, clr = _accuracy_over_seeds(
        lambda seed: recipes.lowrank_finetune(base, s.train, seed=seed), test)
    found.append(_loss_target("03", "low rank accuracy", 0.005, clr, base_c))
    lr_macs = measure.macs(lr_models[0], shape)
    mac_lr = measure.macs(base, shape) / lr_macs
    found.append(Target("03", "low rank MACs", ">= 2.0x fewer MACs", f"{mac_lr:.2f}x", "exact", mac_lr >= 2.0))
    w_lr = lenet_widths_matching(lr_macs, "macs", shape, s.num_classes)
    lr_ctrl, clr_ctrl = _accuracy_over_seeds(lambda seed: control(w_lr, seed), test)
    found.append(_control_verdict("03", f"low rank vs dense control with the same MACs {w_lr}", clr, clr_ctrl))

    # ---- chapter 2: int8 (deterministic: calibration on fixed images, no seed to vary)
    calib = s.train.tensors[0][:512]
    int8_path = recipes.int8_lenet_ort(base, out / "targets_int8.onnx", calib)
    int8 = deploy.OrtModule(int8_path)
    c8 = correct(int8, test)
    lo, hi = stats.accuracy_interval(_acc(base_c), len(test))
    found.append(Target("02", "int8 accuracy", "within the baseline's 95% interval", f"{100 * _acc(c8):.2f}%",
                        f"baseline [{100 * lo:.2f}, {100 * hi:.2f}]", lo <= _acc(c8),
                        f"paired vs baseline: {stats.paired_compare(c8, base_c)}"))

    # ---- one interleaved latency table for every speed target
    x = torch.randn((64, *shape), generator=torch.Generator().manual_seed(0)).numpy()
    fp32_ort = deploy.ort_session(deploy.export_onnx(base, out / "targets_fp32.onnx", shape))
    int8_sess = int8.session
    rows = deploy.latency_table({
        "baseline": base,
        "channel-pruned": ch[0],
        "low rank": lr_models[0],
        "same widths from scratch (control)": scr[0],
        "dense, same MACs as low rank (control)": lr_ctrl[0],
        "int8 onnxruntime": {"onnxruntime int8": lambda: int8_sess.run(None, {int8.input_name: x})},
        "onnxruntime fp32": {"onnxruntime": lambda: fp32_ort.run(None, {"x": x})},
    }, shape, rounds=2 if quick else 5, repeats=5 if quick else 20, workdir=out)
    found.append(_speed_target("01", "channel pruning latency", rows, "channel-pruned", 1.6))
    found.append(_speed_target("02", "int8 vs the same runtime's fp32", rows, "int8 onnxruntime", 2.5,
                               reference="onnxruntime fp32", label="onnxruntime fp32"))
    found.append(_speed_target("02", "int8 vs the fastest fp32 baseline", rows, "int8 onnxruntime", 2.2))
    found.append(_speed_target("03", "low rank latency", rows, "low rank", 1.5))
    for model, control_row, chapter in (("channel-pruned", "same widths from scratch (control)", "01"),
                                        ("low rank", "dense, same MACs as low rank (control)", "03")):
        found.append(_control_speed(chapter, model, control_row, rows))
    found.sort(key=lambda t: t.chapter)
    return found, rows


def format_targets(found: list[Target]) -> str:
    """The Markdown table of targets: chapter, target, measured value, interval, verdict, detail."""
    lines = ["| ch. | target | goal | measured | interval | verdict | detail |", "|---|---|---|---|---|---|---|"]
    for t in found:
        lines.append(f"| {t.chapter} | {t.name} | {t.target} | {t.value} | {t.interval} | {t.verdict} | {t.detail} |")
    return "\n".join(lines)


def as_json(found: list[Target]) -> list[dict]:
    return [asdict(t) | {"verdict": t.verdict} for t in found]



# ---------------------------------------------------------------- chapter 5: putting it together
def measure_ch5_targets(s, base, out, quick: bool = False) -> tuple[list[Target], dict, dict]:
    """Chapter 5's targets with the chapter's recipes and seeds (``recipes.SEEDS``); returns (targets, the
    chapter's latency rows, the first seed's models: {"deep_compression": (model loaded back, its .ccz path),
    "latency": the fp32 latency model}, for the overview table). Deep Compression (``recipes.deep_compression``: gradual pruning to 95%, trained
    centroids at ``recipes.DC_BITS``) from ``.ccz`` files that load back: at least 50x smaller than the
    baseline's state dict (the largest file of the seeds), mean loss at most 0.5 point; reported against the
    dense LeNet with as many parameters as its non-zeros, from scratch, int8 in onnxruntime (about the same
    bytes). The latency model (``recipes.latency_model``, fp32 or int8 in onnxruntime, whichever is faster):
    at least 6x faster than the baseline's fastest fp32 configuration, mean loss at most 1 point; reported
    against its architecture trained from scratch. quick=True: one-epoch budgets (numbers mean nothing)."""
    from course_lib import storage
    from course_lib.training import predict
    shape, test, calib = s.input_shape, s.test, s.train.tensors[0][:512]
    base_c = correct(base, test)
    found: list[Target] = []

    def control(widths, seed):
        return _control(s, widths, seed, quick)

    base_bytes = storage.save_state(base, out / "ch5_baseline.pt")
    dc_bytes, dcs = [], []
    for seed in recipes.SEEDS:
        m = recipes.deep_compression(base, s.train, seed=seed, epochs=1 if quick else recipes.DC_EPOCHS)
        f = out / f"ch5_deep_compression_seed{seed}.ccz"
        dc_bytes.append(storage.save_compressed(m, f, bits=recipes.DC_BITS))
        loaded = storage.load_compressed(f)
        if not torch.equal(predict(loaded, test), predict(m, test)):
            raise AssertionError(f"{f} does not load back to the same predictions")
        dcs.append(loaded)
    cdc = torch.stack([correct(m, test) for m in dcs])
    x = base_bytes / max(dc_bytes)
    found.append(Target("05", "Deep Compression size", ">= 50x smaller than the state dict", f"{x:.1f}x",
                        f"{base_bytes / max(dc_bytes):.1f}-{base_bytes / min(dc_bytes):.1f}x over seeds", x >= 50,
                        f"largest .ccz {max(dc_bytes):,} bytes, state dict {base_bytes:,} bytes"))
    found.append(_loss_target("05", "Deep Compression accuracy", 0.005, cdc, base_c))
    small_w = lenet_widths_matching(measure.count_nonzero(dcs[0]), "params", shape, s.num_classes)
    small8 = [deploy.OrtModule(recipes.int8_lenet_ort(control(small_w, seed), out / f"ch5_small_int8_{seed}.onnx",
                                                      calib)) for seed in recipes.SEEDS]
    found.append(_control_verdict("05", f"Deep Compression vs dense {small_w} from scratch + int8 (about the same bytes)",
                                  cdc, torch.stack([correct(m, test) for m in small8])))

    fast = [recipes.latency_model(base, s.train, seed=seed, epochs=1 if quick else recipes.LATENCY_EPOCHS)
            for seed in recipes.SEEDS]
    fast8 = [deploy.OrtModule(recipes.int8_lenet_ort(m, out / f"ch5_latency_int8_{seed}.onnx", calib))
             for seed, m in zip(recipes.SEEDS, fast)]
    c32 = torch.stack([correct(m, test) for m in fast])
    c8 = torch.stack([correct(m, test) for m in fast8])
    xb = torch.randn((64, *shape), generator=torch.Generator().manual_seed(0)).numpy()
    s8 = fast8[0].session
    rows = deploy.latency_table({
        "baseline": base, "latency model fp32": fast[0],
        "latency model int8": {"onnxruntime int8": lambda: s8.run(None, {fast8[0].input_name: xb})},
    }, shape, rounds=2 if quick else 5, repeats=5 if quick else 20, workdir=out)
    best = min(("latency model fp32", "latency model int8"), key=lambda n: rows[n]["latency_ms"])
    found.append(_speed_target("05", "latency model speed", rows, best, 6.0))
    found.append(_loss_target("05", f"latency model accuracy ({best})", 0.01, c8 if best.endswith("int8") else c32,
                              base_c))
    widths = {k: fast[0].config[k] for k in ("c1", "c2", "fc")}
    scr = torch.stack([correct(control(widths, seed), test) for seed in recipes.SEEDS])
    found.append(_control_verdict("05", f"latency model (fp32) vs its architecture {widths} from scratch", c32, scr))
    first = out / f"ch5_deep_compression_seed{recipes.SEEDS[0]}.ccz"
    return found, rows, {"deep_compression": (dcs[0], first), "latency": fast[0]}
