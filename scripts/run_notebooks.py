"""Execute notebooks headless, one after the other, with progress on the terminal.

    python scripts/run_notebooks.py --out build/executed notebooks/0*.ipynb   # make run
    python scripts/run_notebooks.py --inplace notebooks/0*.ipynb              # make notebooks

Each notebook runs with its own directory as the working directory, in this Python
environment, with COURSE_PROGRESS=0 so no progress bar lands in stored outputs. Progress shows
cells done of cells and elapsed seconds: one line rewritten in place on a terminal (every second),
a line every --progress-every seconds (default 30) when the output is a file or a pipe (CI, logs).
The kernel gets CurveZMQ transport keys from its manager (jupyter_client's transport_encryption),
so ipykernel does not warn "Kernel is running over TCP without encryption" at every start.
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from traitlets.config import Config


def kernel_config(system: str | None = None, has_curve: bool | None = None) -> Config:
    """Kernel-manager settings that keep the kernel's transport private, and ipykernel quiet: CurveZMQ
    keys provisioned by the manager where pyzmq has curve (the python3 kernelspec declares it),
    else Unix-socket (ipc) transport on Linux and macOS. Windows without curve keeps plain TCP."""
    if has_curve is None:
        import zmq
        has_curve = bool(zmq.has("curve"))
    system = system or sys.platform
    if has_curve:
        return Config({"KernelManager": {"transport_encryption": "auto"}})
    if not system.startswith("win"):
        return Config({"KernelManager": {"transport": "ipc"}})
    return Config()


def code_cells(nb) -> int:
    """Cells nbclient executes (code cells with source): the total the progress line counts to."""
    return sum(c.cell_type == "code" and bool(c.source.strip()) for c in nb.cells)


class Progress:
    """Progress of one notebook: ``label`` cells done/total, elapsed seconds, written to ``stream``.

    On a terminal one line is rewritten in place at every cell and every ``every`` seconds (default
    1); elsewhere a new line every ``every`` seconds (default 30), so logs show a run is alive.
    Use as a context manager; :meth:`cell_done` is nbclient's on_cell_executed hook."""

    def __init__(self, label: str, total: int, stream=None, every: float | None = None):
        self.label, self.total, self.done = label, total, 0
        self.stream = stream or sys.stdout
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.every = every if every is not None else (1.0 if self.tty else 30.0)
        if self.every <= 0:
            raise ValueError(f"progress every = {self.every} s must be > 0")
        self._stop = threading.Event()
        self._t0 = time.perf_counter()

    def line(self) -> str:
        return f"{self.label} {self.done}/{self.total} cells, {time.perf_counter() - self._t0:.0f} s"

    def show(self) -> None:
        if self.tty:
            self.stream.write("\r" + self.line().ljust(70))
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()

    def cell_done(self, **_) -> None:
        self.done += 1
        if self.tty:
            self.show()

    def _tick(self) -> None:
        while not self._stop.wait(self.every):
            self.show()

    def __enter__(self):
        self._t0 = time.perf_counter()
        if self.tty:
            self.show()
        threading.Thread(target=self._tick, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self.tty:
            self.stream.write("\r" + " " * 70 + "\r")
            self.stream.flush()


def execute(path: Path, out: Path, timeout: int = 900, progress: Progress | None = None) -> float:
    """Execute ``path`` in its own directory and write it, outputs included, to ``out`` (also when
    a cell fails). ``progress.cell_done`` is called after each executed cell. Returns seconds."""
    nb = nbformat.read(path, as_version=4)
    hooks = {"on_cell_executed": progress.cell_done} if progress else {}
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", config=kernel_config(),
                            resources={"metadata": {"path": str(path.parent)}}, **hooks)
    t0 = time.perf_counter()
    try:
        client.execute()
    finally:
        out.parent.mkdir(parents=True, exist_ok=True)
        nb.metadata.pop("widgets", None)  # the state of widgets a headless run created (no one saw them)
        nbformat.write(nb, out)
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("notebooks", nargs="+", type=Path)
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--out", type=Path, help="write executed copies here")
    g.add_argument("--inplace", action="store_true", help="overwrite the notebooks with their outputs")
    ap.add_argument("--progress-every", type=float, default=None, metavar="SECONDS",
                    help="seconds between progress updates (default: 1 on a terminal, 30 otherwise)")
    args = ap.parse_args(argv)
    if args.progress_every is not None and args.progress_every <= 0:
        ap.error(f"--progress-every = {args.progress_every} must be > 0 seconds")
    os.environ.setdefault("COURSE_PROGRESS", "0")
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    failed = []
    n = len(args.notebooks)
    for i, nb in enumerate(args.notebooks, 1):
        dest = nb if args.inplace else args.out / nb.name
        label = f"[{i}/{n}] {nb.name}"
        progress = Progress(f"{label}:", code_cells(nbformat.read(nb, as_version=4)), every=args.progress_every)
        try:
            with progress:
                secs = execute(nb, dest, progress=progress)
            print(f"{label} done in {secs:.0f} s ({progress.done} cells) -> {dest}", flush=True)
        except CellExecutionError as e:
            print(f"{label} FAILED after {progress.done}/{progress.total} cells", flush=True)
            print(str(e)[-3000:], file=sys.stderr)
            failed.append(nb.name)
    if failed:
        print(f"{len(failed)} notebook(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
