"""Results records: the one builder (:func:`record`), the JSON every chapter writes, the tables the
notebooks print and the results page (``build/results.md``).

A record is a dict with at least ``name``, ``metric``, ``accuracy`` (test, in [0, 1]; the mean over
its seeds), ``accuracy_std`` (standard deviation over seeds, 0.0 for one run), ``accuracy_ci`` (95%
Wilson interval of that accuracy on ``n_test`` images), ``seeds`` (how many runs), ``n_test``,
``size_bytes``, ``params``, ``nonzero``, ``macs``, ``latency_ms``; one record per chapter is named
``baseline``.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

from torch import nn

from . import measure, stats
from .data import BUILD_DIR, REPO_ROOT, atomic_write
from .training import evaluate

_MEASURE = object()  # sentinel: "measure this field" (None means "not measured", e.g. latency)


def record(name: str, model=None, *, test=None, input_shape: tuple | None = None, accuracy=None,
           n_test: int | None = None, file=None, counts_from: nn.Module | None = None, size_bytes: int | None = None,
           params: int | None = None, nonzero: int | None = None, macs: int | None = None,
           latency_ms=_MEASURE, metric: str = "accuracy", root=None, **extra) -> dict:
    """The one results record of the course (DESIGN.md format); every chapter and the benchmark use it.

    Fields given are taken as they are; the others are measured:

    - ``accuracy``: ``training.evaluate(model, test)`` (``metric`` says what it is; default top-1 accuracy).
      Give a list of per-seed accuracies to record their mean, ``accuracy_std`` over seeds, ``seeds``
      and ``accuracies`` (the list); one number or a measured one is one run (``accuracy_std`` 0.0).
    - ``n_test``: ``len(test)`` unless given (required when accuracy is given without ``test``);
      ``accuracy_ci`` is the 95% Wilson interval of the accuracy on ``n_test`` images
      (``stats.accuracy_interval``), the test-sampling noise every comparison must beat.
    - ``size_bytes``: the size of ``file`` if given (recorded relative to ``root``, default the
      repository), else ``measure.serialized_bytes`` of the counted model.
    - ``params``, ``nonzero``, ``sparsity``, ``macs`` (for one input of ``input_shape``): counted on
      ``counts_from`` if given (the PyTorch model an ONNX file came from), else on ``model``.
    - ``latency_ms``: ``measure.latency_ms(model, input_shape)`` (single thread, batch 64) unless given;
      pass ``latency_ms=None`` for "not measured" (e.g. a table that times its models together).

    ``extra`` fields (``method``, ``weight_bits``, ...) are added as they are. Nothing is changed in ``model``.
    """
    src = counts_from if counts_from is not None else model
    if src is None and None in (params, nonzero, macs):
        raise ValueError(f"record {name!r}: give model= (or counts_from=) or all of params, nonzero, macs")
    if accuracy is None:
        if model is None or test is None:
            raise ValueError(f"record {name!r}: give accuracy= or both model= and test=")
        accuracy = evaluate(model, test)
    per_seed = [float(a) for a in accuracy] if isinstance(accuracy, (list, tuple)) else [float(accuracy)]
    if n_test is None:
        if test is None:
            raise ValueError(f"record {name!r}: give n_test= (the number of test items) or test=")
        n_test = len(test)
    n_test = int(n_test)
    if n_test < 1:
        raise ValueError(f"record {name!r}: n_test={n_test} must be >= 1")
    summary = stats.seed_summary(per_seed)
    mean = summary["mean"]
    if not 0.0 <= mean <= 1.0:
        raise ValueError(f"record {name!r}: accuracy={mean!r} must be in [0, 1]")
    rec = {"name": name, "metric": metric, "accuracy": mean, "accuracy_std": summary["std"],
           "accuracy_ci": list(stats.accuracy_interval(mean, n_test)), "seeds": len(per_seed), "n_test": n_test}
    if len(per_seed) > 1:
        rec["accuracies"] = per_seed
    if file is not None:
        path = Path(file).resolve()
        base = Path(root).resolve() if root is not None else REPO_ROOT
        rec["size_bytes"] = os.path.getsize(path) if size_bytes is None else int(size_bytes)
        rec["file"] = str(path.relative_to(base)) if path.is_relative_to(base) else str(path)
    else:
        rec["size_bytes"] = int(size_bytes) if size_bytes is not None else measure.serialized_bytes(src)
    rec["params"] = int(params) if params is not None else measure.count_params(src)
    rec["nonzero"] = int(nonzero) if nonzero is not None else measure.count_nonzero(src)
    if macs is None and input_shape is None:
        raise ValueError(f"record {name!r}: give macs= or input_shape= to count them")
    rec["macs"] = int(macs) if macs is not None else measure.macs(src, input_shape)
    if latency_ms is _MEASURE:
        if model is None or input_shape is None:
            raise ValueError(f"record {name!r}: give latency_ms= (or None) or model= and input_shape=")
        latency_ms = measure.latency_ms(model, input_shape)
    rec["latency_ms"] = None if latency_ms is None else float(latency_ms)
    if isinstance(src, nn.Module) and "sparsity" not in extra:
        rec["sparsity"] = measure.sparsity(src)
    rec.update(extra)
    return rec

REQUIRED = ("name", "metric", "accuracy", "accuracy_std", "accuracy_ci", "seeds", "n_test", "size_bytes",
            "params", "nonzero", "macs", "latency_ms")


def results_dir() -> Path:
    """$COURSE_RESULTS, else ``data.BUILD_DIR``/results (<checkout>/build/results, or $COURSE_HOME/results,
    default ~/.cache/course_lib/results, for an installed course)."""
    return Path(os.environ.get("COURSE_RESULTS", BUILD_DIR / "results"))


def validate_records(records: list[dict]) -> None:
    """Raise ValueError naming the record and field if a record misses a field or holds a bad value."""
    if not records:
        raise ValueError("records is empty: a chapter must record at least its baseline")
    names = [r.get("name") for r in records]
    if "baseline" not in names:
        raise ValueError(f"no record is named 'baseline' (names: {names})")
    if len(set(names)) != len(names):
        raise ValueError(f"record names must be unique: {names}")
    for r in records:
        for k in REQUIRED:
            if k not in r:
                raise ValueError(f"record {r.get('name')!r} misses field {k!r} (required: {REQUIRED})")
        if not 0.0 <= float(r["accuracy"]) <= 1.0:
            raise ValueError(f"record {r['name']!r}: accuracy={r['accuracy']!r} must be in [0, 1]")
        lo, hi = r["accuracy_ci"]
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"record {r['name']!r}: accuracy_ci={r['accuracy_ci']!r} must be [low, high] in [0, 1]")
        if not (isinstance(r["accuracy_std"], (int, float)) and r["accuracy_std"] >= 0):
            raise ValueError(f"record {r['name']!r}: accuracy_std={r['accuracy_std']!r} must be a number >= 0")
        for k in ("seeds", "n_test"):
            if not isinstance(r[k], int) or r[k] < 1:
                raise ValueError(f"record {r['name']!r}: {k}={r[k]!r} must be an integer >= 1")
        for k in ("size_bytes", "params", "nonzero", "macs"):
            if not isinstance(r[k], int) or r[k] < 0:
                raise ValueError(f"record {r['name']!r}: {k}={r[k]!r} must be an integer >= 0")
        lat = r["latency_ms"]
        if lat is not None and not (isinstance(lat, (int, float)) and lat > 0 and math.isfinite(lat)):
            raise ValueError(f"record {r['name']!r}: latency_ms={lat!r} must be a positive number or None")


def write_results(stem: str, records: list[dict], root: str | os.PathLike | None = None,
                  lab_mode: bool = False) -> Path:
    """Validate ``records`` and write them to <root or results_dir()>/<stem>.json; return the path.

    A lab-mode run (cut budgets, see ``env.lab_mode``) writes to the ``lab/`` folder below instead, so
    its noisier numbers never replace a full run's on the results page.
    """
    validate_records(records)
    out = Path(root) if root is not None else results_dir()
    if lab_mode:
        out = out / "lab"
    out.mkdir(parents=True, exist_ok=True)
    return atomic_write(out / f"{stem}.json", json.dumps(records, indent=1).encode())


def _fmt(k: str, v) -> str:
    if v is None:
        return "-"
    if k == "accuracy" or k == "accuracy_std" or k == "sparsity":
        return f"{100 * v:.2f}%" if k != "sparsity" else f"{100 * v:.1f}%"
    if k == "size_bytes":
        return f"{v / 1024:.1f} KiB"
    if k == "latency_ms":
        return f"{v:.3f} ms"
    if isinstance(v, float):
        return f"{v:.3f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def format_accuracy(r: dict) -> str:
    """'98.90% ±0.15 [98.06, 99.38] (3 seeds)': mean, sd over seeds, 95% interval on n_test images."""
    acc = f"{100 * r['accuracy']:.2f}%"
    if r.get("seeds", 1) > 1:
        acc += f" ±{100 * r.get('accuracy_std', 0.0):.2f}"
    if r.get("accuracy_ci"):
        lo, hi = r["accuracy_ci"]
        acc += f" [{100 * lo:.1f}, {100 * hi:.1f}]"
    if r.get("seeds", 1) > 1:
        acc += f" ({r['seeds']} seeds)"
    return acc


def format_table(records: list[dict], columns=("name", "accuracy", "size_bytes", "params", "nonzero",
                                                "macs", "latency_ms"), baseline: str | None = "baseline",
                 reference_ms: float | None = None) -> str:
    """A Markdown table of ``records``; with ``baseline`` set, adds size and speed ratios against it.

    The accuracy column shows the mean, ``±`` the standard deviation over seeds (when there are
    several), the 95% interval on the test images and the number of seeds. ``x faster`` divides
    ``reference_ms`` (default: the baseline record's ``latency_ms``, which the course records in the
    baseline's fastest fp32 configuration) by each record's latency.
    """
    base = next((r for r in records if r["name"] == baseline), None) if baseline else None
    ref = reference_ms if reference_ms is not None else (base.get("latency_ms") if base else None)
    cols = list(columns)
    head = cols + (["x smaller", "x faster"] if base else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        cells = [format_accuracy(r) if k == "accuracy" and "accuracy_ci" in r else _fmt(k, r.get(k)) for k in cols]
        if base:
            cells.append(f"{base['size_bytes'] / r['size_bytes']:.1f}" if r.get("size_bytes") else "-")
            cells.append(f"{ref / r['latency_ms']:.2f}" if r.get("latency_ms") and ref else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def controls_beside(records: list) -> list:
    """The records reordered so that each control (a record with ``control_of`` naming another record of
    the list) comes right after the model it controls; everything else keeps its order. A control whose
    model is not in the list stays where it was."""
    names = {r.get("name") for r in records}
    controls = {}
    for r in records:
        if r.get("control_of") in names and r.get("control_of") != r.get("name"):
            controls.setdefault(r["control_of"], []).append(r)
    placed = {id(c) for cs in controls.values() for c in cs}
    out = []

    def emit(r, seen):
        out.append(r)
        for c in controls.get(r.get("name"), []):
            if id(c) not in seen:
                seen.add(id(c))
                emit(c, seen)

    seen = set()
    for r in records:
        if id(r) not in placed:
            emit(r, seen)
    out += [c for cs in controls.values() for c in cs if id(c) not in seen]  # cycles: never lose a row
    return out


SECOND_METRICS = ("cosine", "perplexity")  # fields a chapter reports beside its `accuracy` (chapters 6 and 7)


def assemble(root: str | os.PathLike | None = None, out: str | os.PathLike | None = None) -> Path:
    """Gather every <stem>.json under ``root`` into one Markdown page (build/results.md)."""
    root = Path(root) if root is not None else results_dir()
    out = Path(out) if out is not None else root.parent / "results.md"
    parts = ["# Results of every chapter", "",
             "Generated by `make run` from build/results/*.json. Accuracy on the test split (unless a chapter says "
             "what its `accuracy` measures): the mean over "
             "seeds, ± the standard deviation over seeds when there are several, and the 95% Wilson interval "
             "on the test images. Size is bytes of the saved artifact; latency is the median single-thread "
             "time of a batch of 64, and `x faster` is against the baseline's fastest fp32 configuration "
             "measured in the same table. A control (a model trained from scratch, or another matched "
             "comparison) sits right under the model it controls, named in `control_of`.", ""]
    files = sorted(root.glob("*.json"))
    if not files:
        parts.append("No results yet: run the notebooks (`make run`).")
    for f in files:
        records = controls_beside(json.loads(f.read_text()))
        extra = [k for k in (*SECOND_METRICS, "sparsity", "weight_bits", "activation_bits", "method",
                            "latency_config", "control_of", "file")
                 if any(k in r for r in records)]
        metrics = sorted({r.get("metric", "accuracy") for r in records})
        if metrics != ["accuracy"]:  # say what this chapter's `accuracy` column measures
            parts += [f"## {f.stem}", "", f"`accuracy` here is: {'; '.join(metrics)}.", ""]
            parts += [format_table(records, columns=("name", "accuracy", "size_bytes", "params", "nonzero",
                                                     "macs", "latency_ms", *extra)), ""]
            continue
        parts += [f"## {f.stem}", "",
                  format_table(records, columns=("name", "accuracy", "size_bytes", "params", "nonzero",
                                                 "macs", "latency_ms", *extra)), ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, "\n".join(parts).encode())
    return out


def artifacts_dir(chapter: str) -> Path:
    """Where a chapter writes the files it measures (models, ONNX files): ``$COURSE_ARTIFACTS/<chapter>``,
    else ``artifacts/<chapter>`` beside the results directory (``results_dir()``); created if missing."""
    if not chapter or any(c in chapter for c in "/\\"):
        raise ValueError(f"chapter={chapter!r} must be a plain name such as '05_putting_it_together'")
    base = os.environ.get("COURSE_ARTIFACTS")
    path = (Path(base) if base else results_dir().parent / "artifacts") / chapter
    path.mkdir(parents=True, exist_ok=True)
    return path


if __name__ == "__main__":  # make run / make results
    print(assemble())
