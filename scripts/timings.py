"""Measure how long every chapter takes, and write the table the instructor guide shows (make timings).

    python scripts/timings.py [--lab] [--out docs/timings.md] [notebooks/0*.ipynb]
    python scripts/timings.py --update --lab notebooks/04_*.ipynb   # re-time some chapters, keep the others

Each chapter is executed headless exactly as `make run` does (scripts/run_notebooks.py: same kernel,
working directory and environment), one after the other, in full mode (COURSE_LAB_MODE=0) and, with
--lab, again in lab mode (COURSE_LAB_MODE=1). Wall-clock time is measured per chapter and per cell
(nbclient's execution timestamps). The result is generated, never typed:

- docs/timings.md: the machine (CPU model, cores, torch threads, date) and one table row per chapter:
  full-mode seconds, lab-mode seconds, the slowest cell and its seconds;
- build/timings/timings.json: every cell's time, for whoever wants more than the table;
- build/timings/{full,lab}/: the executed copies (the chapters' results go to build/results/ as usual).

With --update, only the chapters named are re-timed; the other rows come from the previous run's
build/timings/timings.json, which must come from the same CPU and core count (else it refuses), and the
page says when each row was measured.

A chapter that fails is reported in its row ("FAILED at cell N: error") and the exit status is 1.
Run it on an otherwise idle machine: other work on the cores makes every number an upper bound.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
from pathlib import Path

import nbformat
from nbclient.exceptions import CellExecutionError

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run_notebooks  # noqa: E402  (the same execution as make run)

from course_lib.env import cpu_model  # noqa: E402  (what every chapter's first cell prints)

ROOT = Path(__file__).resolve().parent.parent
MODES = {"full": "0", "lab": "1"}


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def torch_threads() -> str:
    try:
        import torch
    except ImportError:
        return "torch not installed"
    return str(torch.get_num_threads())


def machine(now: dt.datetime | None = None) -> dict:
    now = now or dt.datetime.now(dt.timezone.utc)
    return {"date": now.strftime("%Y-%m-%d %H:%M UTC"), "cpu": cpu_model(), "cores": usable_cores(),
            "torch_threads": torch_threads(), "python": platform.python_version(),
            "os": f"{platform.system()} {platform.release()}",
            "env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "COURSE_DEVICE")
                    if k in os.environ}}


def machine_line(m: dict) -> str:
    env = "".join(f", {k}={v}" for k, v in m.get("env", {}).items())
    return (f"Measured on {m['date']}: {m['cpu']}, {m['cores']} cores, torch threads {m['torch_threads']}, "
            f"Python {m['python']}, {m['os']}{env}.")


def _stamp(s: str) -> dt.datetime:
    return dt.datetime.fromisoformat(s.replace("Z", "+00:00"))


def cell_times(nb) -> list[dict]:
    """Seconds of every executed code cell, from nbclient's timestamps (index = position in the notebook)."""
    out = []
    for i, cell in enumerate(nb.cells):
        ex = cell.get("metadata", {}).get("execution", {})
        start, end = ex.get("iopub.execute_input"), ex.get("shell.execute_reply")
        if cell.cell_type != "code" or not (start and end):
            continue
        first = next((ln.strip() for ln in cell.source.splitlines() if ln.strip() and not ln.startswith("#")), "")
        out.append({"cell": i, "seconds": round((_stamp(end) - _stamp(start)).total_seconds(), 2),
                    "source": first[:60]})
    return out


def time_notebook(path: Path, out: Path, lab: bool, timeout: int = 900) -> dict:
    """Execute one notebook (run_notebooks.execute) in full or lab mode; return its times or its failure."""
    old = os.environ.get("COURSE_LAB_MODE")
    os.environ["COURSE_LAB_MODE"] = MODES["lab" if lab else "full"]
    result = {"seconds": None, "cells": [], "error": None}
    try:
        result["seconds"] = round(run_notebooks.execute(path, out, timeout=timeout), 1)
    except CellExecutionError as e:
        result["error"] = _failure(out, e)
    except Exception as e:  # a kernel that died, a timeout: still a row in the table
        result["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    finally:
        if old is None:
            os.environ.pop("COURSE_LAB_MODE", None)
        else:
            os.environ["COURSE_LAB_MODE"] = old
    if out.exists():
        result["cells"] = cell_times(nbformat.read(out, as_version=4))
    return result


def _failure(executed: Path, e: CellExecutionError) -> str:
    ename = getattr(e, "ename", None) or "error"
    where = ""
    if executed.exists():
        nb = nbformat.read(executed, as_version=4)
        for i, cell in enumerate(nb.cells):
            if any(o.get("output_type") == "error" for o in cell.get("outputs", [])):
                where = f" at cell {i}"
                break
    return f"FAILED{where}: {ename}"


def _slowest(cells: list[dict]) -> dict | None:
    return max(cells, key=lambda c: c["seconds"]) if cells else None


def _md(s: str) -> str:
    return s.replace("|", "\\|").replace("`", "'")


def table(rows: dict[str, dict], m: dict, lab_run: bool) -> str:
    """The Markdown page: machine line and one row per chapter (rows: {stem: {"full": result, "lab": result}})."""
    lines = ["# Measured run times", "",
             "<!-- Generated by `make timings` (scripts/timings.py) from a real run: do not edit by hand. -->", "",
             machine_line(m), "",
             "Each chapter ran headless as in `make run`, one after the other, in full mode"
             + (" and then in lab mode (`COURSE_LAB_MODE=1`)" if lab_run else " (lab mode not run: `--lab`)")
             + ". The slowest cell is the full run's (the lab run's where only that ran); cell numbers count "
               "every cell of the notebook from 0. Per-cell times of every cell: `build/timings/timings.json`.", "",
             "| chapter | full mode (s) | lab mode (s) | slowest cell | its seconds |",
             "|---|---:|---:|---|---:|"]

    def secs(r):
        if r is None:
            return "not run"
        return r["error"] if r["error"] else f"{r['seconds']:.0f}"

    total = {"full": 0.0, "lab": 0.0}
    complete = {"full": True, "lab": lab_run}
    for stem, r in rows.items():
        for mode in total:
            if r.get(mode) and not r[mode]["error"]:
                total[mode] += r[mode]["seconds"]
            else:
                complete[mode] = False
        src = r.get("full") or r.get("lab")
        slow = _slowest(src["cells"]) if src else None
        cell = f"cell {slow['cell']}: `{_md(slow['source'])}`" if slow else "n/a"
        slow_s = f"{slow['seconds']:.1f}" if slow else ""
        lines.append(f"| {stem} | {secs(r.get('full'))} | {secs(r.get('lab'))} | {cell} | {slow_s} |")
    tot = [f"{total[m]:.0f} ({total[m] / 60:.1f} min)" if complete[m] else "incomplete" for m in ("full", "lab")]
    lines.append(f"| **all chapters** | {tot[0]} | {tot[1]} | | |")
    dates = {r.get("date") for r in rows.values() if r.get("date")}
    if len(dates) > 1:  # an --update run: say when each row was measured
        lines += ["", "Rows measured at different times on this machine (`--update`): " + "; ".join(
            f"{stem} {r['date']}" for stem, r in rows.items() if r.get("date")) + "."]
    return "\n".join(lines) + "\n"


def previous_rows(work: Path, m: dict) -> dict:
    """The rows of the last run (``work``/timings.json) for ``--update``, each with its date; refused when
    that run was on another CPU or core count (its numbers would not compare)."""
    path = work / "timings.json"
    if not path.exists():
        raise SystemExit(f"--update needs a previous run's {path}: run `make timings` first")
    old = json.loads(path.read_text())
    om = old.get("machine", {})
    if (om.get("cpu"), om.get("cores")) != (m["cpu"], m["cores"]):
        raise SystemExit(f"--update: the previous run was on {om.get('cpu')} with {om.get('cores')} cores, this "
                         f"machine is {m['cpu']} with {m['cores']}: re-time every chapter instead")
    rows = old.get("chapters", {})
    for r in rows.values():
        r.setdefault("date", om.get("date"))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("notebooks", nargs="*", type=Path, help="default: every chapter in notebooks/")
    ap.add_argument("--lab", action="store_true", help="also run every chapter in lab mode")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "timings.md", help="the Markdown table")
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "timings",
                    help="executed copies and timings.json go here")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per cell before a chapter fails")
    ap.add_argument("--update", action="store_true",
                    help="re-time only the chapters named; keep the other rows of the previous run (same machine)")
    args = ap.parse_args(argv)
    if args.update and not args.notebooks:
        ap.error("--update needs the chapters to re-time, e.g. notebooks/04_distillation.ipynb")
    notebooks = args.notebooks or sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    os.environ.setdefault("COURSE_PROGRESS", "0")       # as scripts/run_notebooks.py
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    m = machine()
    modes = ["full", "lab"] if args.lab else ["full"]
    rows: dict[str, dict] = {nb.stem: {} for nb in notebooks}
    if args.update:  # a re-timed chapter keeps its previous result of a mode not run now (lab without --lab)
        prev = previous_rows(args.work, m)
        rows = dict(sorted({**prev, **{k: dict(prev.get(k, {})) for k in rows}}.items()))
    for nb in notebooks:
        rows[nb.stem]["date"] = m["date"]
    failed = []
    for mode in modes:
        for i, nb in enumerate(notebooks, 1):
            print(f"[{mode} {i}/{len(notebooks)}] {nb.name} ...", end=" ", flush=True)
            r = time_notebook(nb, args.work / mode / nb.name, lab=(mode == "lab"), timeout=args.timeout)
            rows[nb.stem][mode] = r
            print(r["error"] or f"{r['seconds']:.0f} s", flush=True)
            if r["error"]:
                failed.append(f"{nb.stem} ({mode})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table(rows, m, args.lab or any("lab" in r for r in rows.values())))
    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / "timings.json").write_text(json.dumps({"machine": m, "chapters": rows}, indent=1))
    print(f"wrote {args.out} and {args.work / 'timings.json'}")
    if failed:
        print(f"{len(failed)} run(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
