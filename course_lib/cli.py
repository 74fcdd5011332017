"""The course's commands without make: ``python -m course_lib run | test | unit | lab | ...``.

Each command runs the same programs as the Makefile target of the same name (the Makefile calls this
module). From a checkout with any Python >= 3.10 (Windows included), a command first sets up ``.venv``
if it is missing or older than pyproject.toml / constraints.txt (``setup``: a virtual environment, the
locked torch, then the course with its dev extras, all under the pip constraints in constraints.txt)
and re-runs itself with the venv's Python. ``--no-venv`` uses the running Python as it is (conda,
Colab). Needs only the standard library until a command runs, so it works before torch is installed.
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

CPU_INDEX = "https://download.pytorch.org/whl/cpu"
TORCH_CHOICES = ("auto", "cpu", "cuda", "default")
LOCAL = "local"  # torch_source(): try the local wheel first (pip --no-index, pip's configured find-links)
INDEX_FLAGS = ["--timeout", "15", "--retries", "1"]  # an unreachable index fails in seconds, never hangs

COMMANDS = {
    "setup": "create .venv and install the locked torch and the course with its dev extras",
    "run": "execute every notebook, write build/handouts/ and build/results.md",
    "test": "unit tests (nbgrader grading included) and pytest --nbval over notebooks/, two jobs at a time",
    "unit": "the unit tests without the nbgrader grading (quick)",
    "nbval": "pytest --nbval over notebooks/ alone, two notebooks at a time",
    "lab": "open JupyterLab on notebooks/",
    "student": "student copies of the notebooks in build/student/",
    "handouts": "offline HTML handouts in build/handouts/ (from the last run, else the committed notebooks)",
    "results": "gather build/results/*.json into build/results.md",
    "bench": "benchmark table (ratios vs baseline, single thread)",
    "sync": "update notebooks/*.ipynb from notebooks/src/*.py, keeping outputs",
    "notebooks": "maintainers: sync, then re-execute notebooks/ in place",
    "timings": "time every chapter, full and lab mode, and write docs/timings.md",
    "nbgrader": "nbgrader course directory in build/nbgrader/",
    "clean": "remove build/ (and the baseline cache in it)",
}
NEEDS_NO_VENV = ("setup", "clean")
# Commands whose programs are independent: they run side by side, $COURSE_TEST_JOBS at a time (default 2),
# longest first, so both cores of a small machine stay busy (most notebook cells use one thread)
PARALLEL = ("test", "nbval")
# expected seconds of the unit-test jobs on 2 cores (order only; the notebooks' come from their own timings)
UNIT_JOBS = {"tests/test_nbgrader.py": 600, "tests/test_other_datasets.py": 150, "tests": 250}


def find_root(start: Path | None = None) -> Path:
    """The course checkout: the directory above this package if it holds notebooks/ and scripts/,
    else the current directory if it does. Raises FileNotFoundError otherwise (an installed wheel
    has the library but not the notebooks)."""
    for cand in ([start] if start else [Path(__file__).resolve().parent.parent, Path.cwd()]):
        if (cand / "notebooks").is_dir() and (cand / "scripts").is_dir():
            return cand
    raise FileNotFoundError("the course's commands need a checkout of the course (a directory with notebooks/ "
                            "and scripts/): run them from the repository root")


def venv_python(venv: Path, system: str | None = None) -> Path:
    """The Python of virtual environment ``venv``: Scripts\\python.exe on Windows, bin/python elsewhere."""
    system = system or platform.system()
    return venv / ("Scripts/python.exe" if system == "Windows" else "bin/python")


def torch_choice(value: str | None) -> str:
    """Validate a torch choice (``--torch`` or $COURSE_TORCH); None or "" means "auto"."""
    value = (value or "auto").strip().lower()
    if value not in TORCH_CHOICES:
        raise ValueError(f"torch choice (--torch or COURSE_TORCH) = {value!r} is not valid; "
                         f"valid choices: {', '.join(TORCH_CHOICES)}")
    return value


def torch_source(choice: str, system: str, has_gpu: bool, local_ok: bool | None = None,
                 index_url: str | None = None) -> str | None:
    """Where pip installs torch from, decided from injected facts (pure; the setup gathers the facts).

    choice: "auto", "cpu", "cuda" or "default"; system: platform.system() ("Linux", "Darwin",
    "Windows"); has_gpu: an NVIDIA driver is present; local_ok: result of the local-wheel attempt
    (None: not tried yet); index_url: an explicit index (the Makefile's TORCH_INDEX), which wins.

    Returns LOCAL (try ``pip --no-index``: a wheel in pip's configured find-links or a wheelhouse, no
    network), None (done: the local wheel installed), "" (pip's default index) or an index URL.
    "auto" and "cpu" try the local wheel first; then "cpu", and "auto" on Linux without an NVIDIA GPU,
    use PyTorch's CPU-only index (PyPI's Linux torch is the multi-GB CUDA build); "auto" elsewhere
    (macOS, Windows, Linux with a GPU), "cuda" and "default" use pip's default index.
    """
    choice = torch_choice(choice)
    if index_url:
        return index_url
    if choice in ("cuda", "default"):
        return ""
    if local_ok is None:
        return LOCAL
    if local_ok:
        return None
    if choice == "cpu" or (system == "Linux" and not has_gpu):
        return CPU_INDEX
    return ""


def has_nvidia_gpu() -> bool:
    """True if an NVIDIA driver is installed (nvidia-smi on PATH or /proc/driver/nvidia)."""
    return shutil.which("nvidia-smi") is not None or Path("/proc/driver/nvidia").exists()


def locked_version(constraints: Path, name: str = "torch") -> str:
    """The exact version of ``name`` pinned in the pip constraints file (a line ``name==version``)."""
    if not constraints.exists():
        raise FileNotFoundError(f"{constraints} is missing: it pins the exact versions the course installs")
    for line in constraints.read_text().splitlines():
        m = re.match(rf"\s*{re.escape(name)}\s*==\s*([^\s;#]+)", line, re.IGNORECASE)
        if m:
            return m.group(1)
    raise ValueError(f"{constraints} pins no version of {name} (expected a line '{name}==<version>')")


def torch_install(py: str, constraints: Path, source: str) -> list[str]:
    """The pip command that installs the locked torch from ``source`` (LOCAL, "" or an index URL)."""
    cmd = [py, "-m", "pip", "install", "-c", str(constraints), f"torch=={locked_version(constraints)}"]
    if source == LOCAL:  # torch alone: its dependencies come with the course in the next step
        return cmd + ["--no-index", "--no-deps"]
    return cmd + INDEX_FLAGS + (["--index-url", source] if source else [])


def has_curve() -> bool:
    """True if pyzmq can encrypt kernel connections (CurveZMQ); False without pyzmq or curve."""
    try:
        import zmq
    except ImportError:
        return False
    return bool(zmq.has("curve"))


def commands(name: str, py: str, root: Path, curve: bool | None = None) -> list[tuple[list[str], dict[str, str]]]:
    """The programs ``name`` runs, in order: (argv, extra environment) pairs, run in ``root``. ``curve``
    (default: :func:`has_curve`) lets JupyterLab give kernels CurveZMQ keys, as scripts/run_notebooks.py
    does, so ipykernel does not warn that it runs over TCP without encryption."""
    if name not in COMMANDS:
        raise ValueError(f"command = {name!r} is not valid; valid choices: {', '.join(COMMANDS)}")
    curve = (has_curve() if curve is None else curve) and name == "lab"
    nbs = [p.relative_to(root).as_posix() for p in sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb"))]
    executed = sorted((root / "build" / "executed").glob("[0-9][0-9]_*.ipynb"))
    pytest, script = [py, "-m", "pytest", "-q"], lambda s, *a: [py, f"scripts/{s}.py", *a]
    def nbval(paths):  # one job per notebook, the longest (by its last execution) first
        return [pytest + ["--nbval", p] for p in sorted(paths, key=lambda p: -executed_seconds(root / p))]

    heavy = [k for k in UNIT_JOBS if k != "tests"]
    unit = [pytest + [k] if k != "tests" else pytest + ["tests", *(f"--ignore={h}" for h in heavy)] for k in UNIT_JOBS]
    table = {
        "run": [script("run_notebooks", "--out", "build/executed", *nbs),
                script("make_handouts", "build/executed", "build/handouts"), [py, "-m", "course_lib.records"]],
        "test": sorted(unit + nbval(nbs), key=lambda c: -_expected(root, c)),
        "unit": [(pytest + ["tests"], {"COURSE_TEST_NBGRADER": "0", "COURSE_TEST_OTHER_DATASETS": "0"})],
        "nbval": nbval(nbs),
        "lab": [([py, "-m", "jupyterlab", *(["--KernelManager.transport_encryption=auto"] if curve else []),
                  "notebooks/"], {"COURSE_PROGRESS": "1"})],
        "student": [script("make_student", "--out", "build/student", *nbs)],
        "handouts": [script("make_handouts", "build/executed" if executed else "notebooks", "build/handouts")],
        "results": [[py, "-m", "course_lib.records"]],
        "bench": [[py, "-m", "benchmarks"]],
        "sync": [script("sync_notebooks")],
        "notebooks": [script("sync_notebooks"), script("run_notebooks", "--inplace", *nbs)],
        "timings": [script("timings", "--lab", *nbs)],
        "nbgrader": [script("nbgrader_course", "--out", "build/nbgrader", *nbs)],
        "setup": [], "clean": [],
    }
    return [c if isinstance(c, tuple) else (c, {}) for c in table[name]]


def executed_seconds(notebook: Path) -> float:
    """Seconds the cells of ``notebook`` took when it was last executed (from the execution timestamps
    nbclient stores in each code cell's metadata; 0.0 if there are none or the file cannot be read)."""
    import datetime
    import json
    try:
        cells = json.loads(Path(notebook).read_text(encoding="utf-8"))["cells"]
    except (OSError, ValueError, KeyError):
        return 0.0
    total = 0.0
    for c in cells:
        e = c.get("metadata", {}).get("execution", {})
        try:
            a, b = (datetime.datetime.fromisoformat(e[k].replace("Z", "+00:00"))
                    for k in ("iopub.execute_input", "shell.execute_reply"))
        except (KeyError, ValueError, AttributeError):
            continue
        total += max(0.0, (b - a).total_seconds())
    return total


def _expected(root: Path, cmd: list[str]) -> float:
    """Expected seconds of one job of ``test`` (for the order only)."""
    target = next((a for a in cmd[4:] if not a.startswith("-")), "tests")
    return UNIT_JOBS.get(target, executed_seconds(root / target))


def jobs_wanted(environ=None) -> int:
    """How many programs ``test`` and ``nbval`` run at once: $COURSE_TEST_JOBS (an integer >= 1), else 2
    (1 on a one-core machine)."""
    raw = (os.environ if environ is None else environ).get("COURSE_TEST_JOBS", "").strip()
    if not raw:
        return 1 if (os.cpu_count() or 1) < 2 else 2
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"COURSE_TEST_JOBS={raw!r} is not valid: give an integer >= 1 (1 runs the jobs one by one)")
    return int(raw)


def threads_per_job(workers: int, cpus: int | None = None) -> int:
    """Intra-op threads for each of ``workers`` jobs side by side on ``cpus`` cores (default: those this process
    may run on):
    an equal share, at least 1. Two jobs on 2 cores with PyTorch's default of 2 threads each made every
    parallel region wait for a thread the other job had descheduled; with one thread each, a pair of
    chapters ran in 97 s instead of 115 s here (chapters 02 and 03 under nbval). A learner's own
    OMP_NUM_THREADS wins (run_parallel keeps it)."""
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers = {workers!r} is not valid: give an integer >= 1")
    if cpus is None:  # the cores this process may use (taskset, a container's cpuset), else all of them
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cpus) // workers or 1


def run_parallel(jobs: list[tuple[list[str], dict]], root: Path, env: dict, workers: int) -> int:
    """Run the (argv, extra environment) ``jobs`` in ``root``, ``workers`` at a time in the order given;
    each job's output is printed whole when it ends, with its time. Every job runs even after a failure
    (one report of everything that failed); returns the first failing job's exit status, else 0.
    OpenMP threads wait passively (OMP_WAIT_POLICY), so jobs side by side do not spin on each other's cores,
    and each job gets its share of the cores as its thread count (:func:`threads_per_job`)."""
    import tempfile
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor
    lock, t_all = threading.Lock(), time.perf_counter()
    env = {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": str(threads_per_job(workers)), **env}

    def one(job):
        cmd, extra = job
        with lock:
            print("+ start:", _show(cmd, extra), flush=True)
        t0 = time.perf_counter()
        with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as log:
            rc = subprocess.call(cmd, cwd=root, env={**env, **extra}, stdout=log, stderr=subprocess.STDOUT)
            log.seek(0)
            out = log.read()
        took = time.perf_counter() - t0
        with lock:
            print(f"+ {'ok' if rc == 0 else f'FAILED (exit {rc})'} in {took:.0f} s: {_show(cmd, extra)}", flush=True)
            print(out.rstrip(), flush=True)
        return rc, took

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(one, jobs))
    print(f"+ {len(jobs)} jobs, {workers} at a time, in {time.perf_counter() - t_all:.0f} s:", flush=True)
    for (cmd, extra), (rc, took) in zip(jobs, results):
        print(f"  {took:6.0f} s  {'ok' if rc == 0 else f'FAILED (exit {rc})':17s} {_show(cmd[3:], extra)}", flush=True)
    return next((rc for rc, _ in results if rc), 0)


def base_env(environ=None) -> dict[str, str]:
    """The environment every command runs in (as the Makefile exports it): COURSE_PROGRESS=0 unless
    set (no progress bars in compared outputs), PYTHONHASHSEED=0 (set before each Python starts)."""
    env = dict(os.environ if environ is None else environ)
    env.setdefault("COURSE_PROGRESS", "0")
    env["PYTHONHASHSEED"] = "0"
    return env


def setup_needed(venv: Path, root: Path) -> bool:
    """True if .venv lacks its Python or its stamp, or the stamp is older than pyproject.toml or
    constraints.txt (the same rule as the Makefile's $(STAMP))."""
    stamp = venv / ".installed"
    if not venv_python(venv).exists() or not stamp.exists():
        return True
    deps = [p for p in (root / "pyproject.toml", root / "constraints.txt") if p.exists()]
    return any(p.stat().st_mtime > stamp.stat().st_mtime for p in deps)


def _show(cmd, extra=None) -> str:
    env = " ".join(f"{k}={v}" for k, v in (extra or {}).items())
    return (env + " " if env else "") + subprocess.list2cmdline([str(c) for c in cmd])


def setup(root: Path, torch: str | None = None, index_url: str | None = None, dry_run: bool = False,
          base_python: str | None = None) -> int:
    """Create ``root/.venv`` if missing, install the locked torch (source from :func:`torch_source`),
    then the course editable with its dev extras, under constraints.txt; write the stamp. 0 on success."""
    venv, constraints = root / ".venv", root / "constraints.txt"
    py = str(venv_python(venv))
    choice = torch_choice(torch if torch is not None else os.environ.get("COURSE_TORCH"))
    gpu, system = has_nvidia_gpu(), platform.system()

    def sh(cmd, check=True):
        print("+", _show(cmd), flush=True)
        if dry_run:
            return 0
        rc = subprocess.call(cmd, cwd=root)
        if check and rc:
            raise SystemExit(f"setup failed ({rc}): {_show(cmd)}")
        return rc

    if not Path(py).exists():
        sh([base_python or sys.executable, "-m", "venv", str(venv)])
    sh([py, "-m", "pip", "install", "-q", "--upgrade", "pip", *INDEX_FLAGS], check=False)  # offline: keep it
    source = torch_source(choice, system, gpu, None, index_url)
    if source == LOCAL:
        ok = sh(torch_install(py, constraints, LOCAL), check=False) == 0
        source = torch_source(choice, system, gpu, ok, index_url)
        if not ok:
            print(f"no local torch wheel; installing from {source or 'the default index'}", flush=True)
    if source is not None and sh(torch_install(py, constraints, source), check=False):
        raise SystemExit(f"setup could not install torch from {source or 'the default index'}: with no network, "
                         "point PIP_FIND_LINKS at a folder holding the torch wheel; or choose another source "
                         "with --torch cpu|cuda|default (COURSE_TORCH) or --torch-index URL")
    sh([py, "-m", "pip", "install", "-c", str(constraints), "-e", ".[dev]"])
    if not dry_run:
        (venv / ".installed").touch()
    return 0


def parse(argv=None) -> argparse.Namespace:
    """Command-line arguments; an unknown command fails with the valid choices."""
    ap = argparse.ArgumentParser(prog="python -m course_lib", description=__doc__.split("\n\n")[0],
                                 epilog="commands: " + "; ".join(f"{k}: {v}" for k, v in COMMANDS.items()))
    ap.add_argument("command", choices=list(COMMANDS), metavar="command", help=" | ".join(COMMANDS))
    ap.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    ap.add_argument("--torch", choices=TORCH_CHOICES, help="torch build for setup (default: $COURSE_TORCH or auto)")
    ap.add_argument("--torch-index", help="install torch from this index URL (the Makefile's TORCH_INDEX)")
    ap.add_argument("--no-venv", action="store_true", help="use this Python as it is: no .venv, no install")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    """Run one course command; returns the exit status of the first program that failed, else 0
    (2 with a one-line message for a bad argument, a bad $COURSE_TORCH or a missing file)."""
    try:
        return _main(list(sys.argv[1:] if argv is None else argv))
    except (ValueError, FileNotFoundError) as e:
        print(f"python -m course_lib: error: {e}", file=sys.stderr)
        return 2


def _main(argv: list[str]) -> int:
    args = parse(argv)
    if args.torch is None and os.environ.get("COURSE_TORCH"):
        torch_choice(os.environ["COURSE_TORCH"])  # a bad value fails now, with the valid choices
    root = find_root()
    if args.command == "clean":
        print("+ remove build/")
        if not args.dry_run:
            shutil.rmtree(root / "build", ignore_errors=True)
        return 0
    venv = root / ".venv"
    in_venv = Path(sys.prefix).resolve() == venv.resolve()
    if args.command == "setup" or (not args.no_venv and setup_needed(venv, root)):
        setup(root, args.torch, args.torch_index, args.dry_run)
        if args.command == "setup":
            return 0
    if not args.no_venv and not in_venv:  # re-run inside .venv, with the venv's Python (a dry run too)
        cmd = [str(venv_python(venv)), "-m", "course_lib", *argv]
        print("+", _show(cmd), flush=True)
        if args.dry_run and not venv_python(venv).exists():
            return 0
        return subprocess.call(cmd, cwd=root, env=base_env())
    env = base_env()
    if args.command in PARALLEL and not args.dry_run and (workers := jobs_wanted()) > 1:
        return run_parallel(commands(args.command, sys.executable, root), root, env, workers)
    for cmd, extra in commands(args.command, sys.executable, root):
        print("+", _show(cmd, extra), flush=True)
        if not args.dry_run:
            rc = subprocess.call(cmd, cwd=root, env={**env, **extra})
            if rc:
                return rc
    return 0
