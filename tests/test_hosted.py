"""Hosted notebooks: detecting Colab/Kaggle, installing beside their torch, and every chapter's install cell."""
import re
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path

import nbformat
import pytest

from course_lib import hosted

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
REPO_URL = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Repository"]


@pytest.mark.parametrize("environ, modules, want", [
    ({}, {}, None),
    ({"COLAB_RELEASE_TAG": "release-2026"}, {}, "Colab"),
    ({}, {"google.colab": object()}, "Colab"),
    ({"KAGGLE_KERNEL_RUN_TYPE": "Interactive"}, {}, "Kaggle"),
    ({"COLAB_RELEASE_TAG": ""}, {}, None),
])
def test_hosted_service(environ, modules, want):
    assert hosted.hosted_service(environ, modules) == want


def test_plan_keeps_the_preinstalled_torch_and_skips_extras():
    requires = ["torch<3,>=2.13", "numpy<3,>=2.4", "sentence-transformers<7,>=6.2",
                'pytest<10,>=9.2; extra == "dev"', "Torch_Thing>=1"]
    todo, constraints = hosted.plan(requires, {"torch": "2.9.0+cu126"})
    assert todo == ["numpy<3,>=2.4", "sentence-transformers<7,>=6.2", "Torch_Thing>=1"]
    assert constraints == ["torch==2.9.0+cu126"]
    todo, constraints = hosted.plan(requires, {})  # no torch yet: the course's range installs one
    assert "torch<3,>=2.13" in todo and constraints == []
    with pytest.raises(ValueError, match="requirement=' ;x' does not start"):
        hosted.plan([" ;x"], {})


def test_install_requirements_dry_run_pins_torch_and_names_the_requirements():
    cmd = hosted.install_requirements(dry_run=True)
    assert cmd[:4] == [sys.executable, "-m", "pip", "install"]
    constraints = Path(cmd[cmd.index("-c") + 1]).read_text().split()
    assert constraints == [f"torch=={version('torch')}"]
    assert not any(re.match(r"torch\b", a) for a in cmd[cmd.index("-c") + 2:]) and any(a.startswith("numpy") for a in cmd)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_chapter_installs_itself_on_hosted_notebooks(path):
    """The first code cell is the same install cell everywhere, before the parameters cell, with the
    repository address of pyproject.toml; it does nothing where course_lib is importable (here)."""
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    first = code[0].source
    assert f'COURSE_REPO = "{REPO_URL}"' in first and "install_requirements()" in first
    assert "--no-deps" in first and 'importlib.util.find_spec("course_lib") is None' in first
    assert "parameters" in code[1].metadata.get("tags", []), "the install cell comes right before the parameters"
    reference = nbformat.read(NOTEBOOKS[0], as_version=4)
    assert first == next(c for c in reference.cells if c.cell_type == "code").source
