"""papermill runs a chapter with parameters (the README's command): chapter 00 with ``-p LAB_MODE True``,
through papermill's Python API, its outputs written to a temporary folder. The baseline comes from
build/cache/ (trained once, by whichever run needs it first)."""
from pathlib import Path

import nbformat
import pytest

papermill = pytest.importorskip("papermill")

ROOT = Path(__file__).resolve().parent.parent
CHAPTER = ROOT / "notebooks" / "00_setup_and_baseline.ipynb"


def test_papermill_injects_lab_mode_into_chapter_00(tmp_path, monkeypatch):
    monkeypatch.delenv("COURSE_LAB_MODE", raising=False)          # only the injected parameter turns lab mode on
    monkeypatch.setenv("COURSE_RESULTS", str(tmp_path / "results"))  # the chapter's files stay out of build/
    monkeypatch.setenv("COURSE_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.setenv("COURSE_PROGRESS", "0")
    out = tmp_path / "00_lab.ipynb"
    papermill.execute_notebook(str(CHAPTER), str(out), parameters={"LAB_MODE": True}, cwd=str(CHAPTER.parent),
                               kernel_name="python3", progress_bar=False, log_output=False)
    nb = nbformat.read(out, as_version=4)
    tags = [c.metadata.get("tags", []) for c in nb.cells]
    injected = next(i for i, t in enumerate(tags) if "injected-parameters" in t)
    assert "parameters" in tags[injected - 1] and "LAB_MODE = True" in nb.cells[injected].source
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "LAB MODE:" in text  # the chapter's lab-mode banner (env.lab_note): the parameter took effect
    assert (tmp_path / "results" / "lab" / "00_setup_and_baseline.json").exists()
