"""Download every wheel the course needs into one folder, for installs with no network (`make wheelhouse`).

    python scripts/wheelhouse.py --out build/wheelhouse [--torch-index https://download.pytorch.org/whl/cpu]
                                 [--python-version 3.11.2]

An instructor runs this once, on a machine with the operating system and Python version the students
have (run it again with another ``--python-version`` to add that version's wheels to the same folder), and hands
the folder out on a USB stick or a shared drive. The folder holds:

- torch at the version the lock (constraints.txt) pins, from ``--torch-index`` when given (PyTorch's CPU-only wheels
  for classrooms without GPUs) or else from pip's configured index, with its dependencies;
- the project's runtime and dev dependencies (``.[dev]``), resolved against that torch;
- pip, setuptools and wheel: pip for upgrading the students' pip, setuptools to build the project itself
  (an editable or regular install of the checkout).

Students then install with no network (``make install-offline WHEELHOUSE=<folder>``, or by hand):

    python3 -m venv .venv
    .venv/bin/pip install --no-index --find-links <folder> --upgrade pip
    .venv/bin/pip install --no-index --find-links <folder> "torch==<pin>" -e ".[dev]"

The wheels are for this machine's platform and, unless ``--python-version`` names another (the oldest
the students have, e.g. Debian 12's ``3.11.2``), this interpreter's Python version, micro version included:
a wheel chosen on Python 3.11.7 may require ``>=3.11.5`` and then fails to install on 3.11.2.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
URL_SCHEMES = ("http://", "https://", "file://")
BUILD_TOOLS = ["pip", "setuptools>=68", "wheel"]   # setuptools>=68: pyproject.toml's build-system


def torch_requirement(project: Path) -> str:
    """The exact torch requirement of ``project``'s lock (constraints.txt), e.g. ``"torch==2.13.0"``."""
    lock = project / "constraints.txt"
    match = re.search(r"^(torch==\S+)", lock.read_text() if lock.exists() else "", re.MULTILINE)
    if match is None:
        raise ValueError(f"{lock} pins no torch version (expected a line \"torch==X.Y.Z\"; scripts/lock.py writes it)")
    return match.group(1)


def download_commands(out: Path, project: Path, torch_index: str = "", python_version: str = ""
                      ) -> list[list[str]]:
    """The ``pip download`` commands that fill ``out``, in order.

    torch first (from ``torch_index`` if not empty), then the project's extras and the build tools with
    ``out`` as an extra wheel source and the lock as constraints, so the second resolution reuses the torch wheel already there (a
    local version such as ``2.13.0+cpu`` also sorts above PyPI's ``2.13.0``). A ``python_version``
    ("3.11" or "3.11.2") makes pip choose wheels for that Python; pip then needs wheels only.
    """
    pip = [sys.executable, "-m", "pip", "download", "--dest", str(out)]
    if python_version:
        pip += ["--python-version", python_version, "--only-binary=:all:"]
    torch = pip + [torch_requirement(project)] + (["--index-url", torch_index] if torch_index else [])
    lock = project / "constraints.txt"
    rest = pip + (["-c", str(lock)] if lock.exists() else []) + ["--find-links", str(out), f"{project}[dev]", *BUILD_TOOLS]
    return [torch, rest]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and check the arguments; a bad one exits with status 2, naming it and its valid values."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "build" / "wheelhouse",
                   help="folder for the wheels (created; existing wheels are kept)")
    p.add_argument("--torch-index", default="",
                   help="index URL for torch, e.g. https://download.pytorch.org/whl/cpu; empty: pip's own")
    p.add_argument("--python-version", default="",
                   help="the students' Python, e.g. 3.11.2 (the oldest they have); empty: this interpreter's")
    p.add_argument("--project", type=Path, default=ROOT, help="the course checkout (holds pyproject.toml)")
    args = p.parse_args(argv)
    if args.out.exists() and not args.out.is_dir():
        p.error(f"--out: {str(args.out)!r} is a file; valid values: a folder, existing or not")
    if args.torch_index and not args.torch_index.startswith(URL_SCHEMES):
        p.error(f"--torch-index: {args.torch_index!r} is not a URL; valid values: empty (pip's configured "
                f"index) or a URL starting with {', '.join(URL_SCHEMES)}")
    if args.python_version and not re.fullmatch(r"3\.\d+(\.\d+)?", args.python_version):
        p.error(f"--python-version: {args.python_version!r} is not a Python 3 version; valid values: empty "
                "(this interpreter's) or 3.X or 3.X.Y, e.g. 3.11.2")
    if not (args.project / "pyproject.toml").is_file():
        p.error(f"--project: {str(args.project)!r} has no pyproject.toml; valid values: the course checkout")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for cmd in download_commands(args.out.resolve(), args.project.resolve(), args.torch_index,
                                 args.python_version):
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    wheels = sorted(args.out.iterdir())
    size = sum(f.stat().st_size for f in wheels) / 2**20
    print(f"{args.out}: {len(wheels)} files, {size:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
