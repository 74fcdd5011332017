"""Execute notebooks headless, one after the other, with progress on the terminal.

    python scripts/run_notebooks.py --out build/executed notebooks/0*.ipynb   # make run
    python scripts/run_notebooks.py --inplace notebooks/0*.ipynb              # make notebooks

Each notebook runs with its own directory as the working directory, in this Python
environment, with COURSE_PROGRESS=0 so no progress bar lands in stored outputs.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError


def execute(path: Path, out: Path, timeout: int = 900) -> float:
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    t0 = time.perf_counter()
    try:
        client.execute()
    finally:
        out.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, out)
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("notebooks", nargs="+", type=Path)
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--out", type=Path, help="write executed copies here")
    g.add_argument("--inplace", action="store_true", help="overwrite the notebooks with their outputs")
    args = ap.parse_args(argv)
    os.environ.setdefault("COURSE_PROGRESS", "0")
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    failed = []
    n = len(args.notebooks)
    for i, nb in enumerate(args.notebooks, 1):
        dest = nb if args.inplace else args.out / nb.name
        print(f"[{i}/{n}] {nb.name} ...", end=" ", flush=True)
        try:
            secs = execute(nb, dest)
            print(f"done in {secs:.0f} s -> {dest}", flush=True)
        except CellExecutionError as e:
            print("FAILED", flush=True)
            print(str(e)[-3000:], file=sys.stderr)
            failed.append(nb.name)
    if failed:
        print(f"{len(failed)} notebook(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
