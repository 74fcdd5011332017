"""Hosted notebooks (Google Colab, Kaggle): install the course beside the torch they come with.

Each chapter's first code cell runs, only where ``course_lib`` is missing and the notebook is hosted::

    pip install --no-deps "course_lib @ git+<repository>"     # the course alone, touching nothing
    python -c "from course_lib.hosted import install_requirements; install_requirements()"

``install_requirements`` installs the course's own requirements except torch, with the torch that is
already there pinned as a constraint, so no dependency (sentence-transformers, say) can replace it.
The preinstalled torch may be older than the course's tested floor: ``env.check_environment`` then
says so. This module imports nothing heavy (it runs before the course's dependencies exist).
"""
from __future__ import annotations

import importlib.metadata as md
import os
import re
import subprocess
import sys
import tempfile

# environment variables that hosted notebook services set, and the service each names
HOSTED_MARKERS = {"COLAB_RELEASE_TAG": "Colab", "COLAB_GPU": "Colab", "KAGGLE_KERNEL_RUN_TYPE": "Kaggle"}
KEEP = ("torch",)  # what a hosted service brings and the course must not replace


def hosted_service(environ: dict | None = None, modules: dict | None = None) -> str | None:
    """The hosted service this Python runs in ("Colab", "Kaggle"), or None (a laptop, CI, a server)."""
    environ = os.environ if environ is None else environ
    modules = sys.modules if modules is None else modules
    if "google.colab" in modules:
        return "Colab"
    return next((name for var, name in HOSTED_MARKERS.items() if environ.get(var)), None)


def _name(requirement: str) -> str:
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if not m:
        raise ValueError(f"requirement={requirement!r} does not start with a distribution name")
    return re.sub(r"[-_.]+", "-", m.group(1)).lower()


def plan(requires: list[str], installed: dict[str, str]) -> tuple[list[str], list[str]]:
    """(requirements to install, constraint lines) for the course's ``requires`` (as
    ``importlib.metadata.requires`` gives them) where ``installed`` maps distribution names to the
    versions present. Optional extras (``; extra == ...``) are skipped; each of ``KEEP`` that is
    installed is left out and pinned to its version, so nothing can replace it."""
    keep = {k: installed[k] for k in KEEP if k in installed}
    todo = [r for r in requires if "extra ==" not in r.replace("extra==", "extra ==") and _name(r) not in keep]
    return todo, [f"{k}=={v}" for k, v in keep.items()]


def install_requirements(dry_run: bool = False) -> list[str]:
    """Install the installed course's requirements beside the preinstalled torch (see ``plan``).

    Returns the pip command; with ``dry_run`` it is only returned. Raises RuntimeError naming the
    command if pip fails (a requirement that cannot coexist with the pinned torch, say)."""
    requires = md.requires("course_lib") or []
    installed = {}
    for k in KEEP:
        try:
            installed[k] = md.version(k)
        except md.PackageNotFoundError:
            pass
    todo, constraints = plan(requires, installed)
    fd, path = tempfile.mkstemp(suffix=".txt", prefix="course-constraints-")
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(constraints) + "\n")
    cmd = [sys.executable, "-m", "pip", "install", "-q", "-c", path, *todo]
    if not dry_run:
        done = subprocess.run(cmd)
        if done.returncode != 0:
            raise RuntimeError(f"installing the course's requirements failed: {' '.join(cmd)}")
    return cmd
