"""Notebook sources: every chapter notebooks/NN_x.ipynb is paired by jupytext with its percent-format source
notebooks/src/NN_x.py (notebooks/jupytext.toml), and the two agree cell by cell: type, source, tags and
nbgrader metadata. Cell metadata lives in the source (``# %% tags=["parameters"]``,
``# %% [markdown] tags=["theory"]``, ``# %% nbgrader={...}``); outputs and execution metadata only in the
.ipynb. ``make sync`` updates the .ipynb from the .py and keeps the outputs; editing either side in
JupyterLab (with jupytext installed) saves both.
"""
import shutil
import sys
from pathlib import Path

import jupytext
import nbformat
import pytest
from jupytext.config import load_jupytext_config
from jupytext.formats import long_form_multiple_formats
from jupytext.paired_paths import find_base_path_and_format, paired_paths

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import sync_notebooks  # noqa: E402

NB_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NB_DIR.glob("[0-9][0-9]_*.ipynb"))
SOURCES = sorted((NB_DIR / "src").glob("[0-9][0-9]_*.py"))
CONFIG = load_jupytext_config(str(NB_DIR / "00_any.ipynb"))
SYNC_HINT = "edit the source and run `make sync` (then `make notebooks` if code changed)"


def cells(nb):
    """What must agree between a notebook and its source: type, text, tags and nbgrader metadata."""
    return [(c.cell_type, c.source, c.metadata.get("tags", []), c.metadata.get("nbgrader")) for c in nb.cells]


def test_every_notebook_has_a_source_and_back():
    assert NOTEBOOKS and [p.stem for p in NOTEBOOKS] == [p.stem for p in SOURCES]


def test_pairing_config_pairs_notebooks_with_src():
    assert CONFIG is not None, "notebooks/jupytext.toml is missing"
    for nb in ("01_pruning.ipynb", "src/01_pruning.py"):
        formats = long_form_multiple_formats(CONFIG.default_formats(str(NB_DIR / nb)))
        _, fmt = find_base_path_and_format(str(NB_DIR / nb), formats)
        paths = sorted(Path(p).relative_to(NB_DIR).as_posix() for p, _ in paired_paths(str(NB_DIR / nb), fmt, formats))
        assert paths == ["01_pruning.ipynb", "src/01_pruning.py"]
    # only tags and nbgrader metadata go into the source; no notebook metadata header
    assert CONFIG.cell_metadata_filter == "tags,nbgrader,-all"
    assert CONFIG.notebook_metadata_filter == "-all"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_agrees_with_its_source(path):
    src = NB_DIR / "src" / (path.stem + ".py")
    nb = nbformat.read(path, as_version=4)
    text = jupytext.read(src, fmt="py:percent", config=CONFIG)
    assert cells(nb) == cells(text), f"{path.name} and {src.name} differ: {SYNC_HINT}"
    # the source is what jupytext itself writes from the notebook, so saving in JupyterLab changes nothing
    assert jupytext.writes(nb, fmt="py:percent", config=CONFIG) == src.read_text(encoding="utf-8"), \
        f"{src.name} is not written as jupytext writes it (blank lines between cells): run `make sync`"


def _sync(nb_dir: Path, stem: str):
    """What `make sync` runs for one chapter."""
    assert sync_notebooks.main([str(nb_dir / "src" / f"{stem}.py")]) == 0


@pytest.fixture
def nb_copy(tmp_path):
    """A copy of the notebooks folder (config, two chapters and their sources)."""
    d = tmp_path / "notebooks"
    (d / "src").mkdir(parents=True)
    shutil.copy(NB_DIR / "jupytext.toml", d)
    for p in NOTEBOOKS[:2]:
        shutil.copy(p, d)
        shutil.copy(NB_DIR / "src" / (p.stem + ".py"), d / "src")
    return d


def test_sync_check_passes_on_the_repository():
    assert sync_notebooks.main(["--check"]) == 0


def test_sync_check_reports_a_stale_notebook(nb_copy, capsys):
    src = nb_copy / "src" / (NOTEBOOKS[0].stem + ".py")
    src.write_text(src.read_text(encoding="utf-8") + "\n# %%\nprint('new cell')\n", encoding="utf-8")
    before = (nb_copy / NOTEBOOKS[0].name).read_bytes()
    assert sync_notebooks.main(["--check", str(src)]) == 1
    assert "stale" in capsys.readouterr().out and (nb_copy / NOTEBOOKS[0].name).read_bytes() == before


def test_sync_leaves_committed_notebooks_byte_for_byte(nb_copy):
    for p in NOTEBOOKS[:2]:
        _sync(nb_copy, p.stem)
        assert (nb_copy / p.name).read_bytes() == p.read_bytes(), f"`make sync` would rewrite {p.name}"
        src = NB_DIR / "src" / (p.stem + ".py")
        assert (nb_copy / "src" / src.name).read_bytes() == src.read_bytes()


def test_sync_makes_a_new_notebook_and_writes_the_source_as_jupytext_does(tmp_path):
    (tmp_path / "src").mkdir()
    shutil.copy(NB_DIR / "jupytext.toml", tmp_path)
    # hand-written: one blank line after a function (jupytext writes two) and none before a cell marker
    (tmp_path / "src" / "98_new.py").write_text('# %% [markdown] tags=["theory"]\n# # 98 · New\n\n'
                                                '# %% tags=["parameters"]\ndef f():\n    return 1\n\n'
                                                '# %%\nx = f()\n# %%\nprint(x)\n', encoding="utf-8")
    _sync(tmp_path, "98_new")
    text = (tmp_path / "98_new.ipynb").read_text(encoding="utf-8")
    assert "lines_to_next_cell" not in text  # no formatting noise in the notebook
    nb = nbformat.read(tmp_path / "98_new.ipynb", as_version=4)
    assert [c.source for c in nb.cells] == ["# 98 · New", "def f():\n    return 1", "x = f()", "print(x)"]
    assert nb.metadata["kernelspec"]["name"] == "python3"
    src = (tmp_path / "src" / "98_new.py").read_text(encoding="utf-8")
    assert src == jupytext.writes(nb, fmt="py:percent", config=CONFIG)
    _sync(tmp_path, "98_new")  # a second sync changes nothing
    assert (tmp_path / "98_new.ipynb").read_text(encoding="utf-8") == text
    assert (tmp_path / "src" / "98_new.py").read_text(encoding="utf-8") == src


def test_sync_takes_edits_from_the_source_and_keeps_outputs(nb_copy):
    stem = NOTEBOOKS[0].stem
    src = nb_copy / "src" / f"{stem}.py"
    before = nbformat.read(nb_copy / f"{stem}.ipynb", as_version=4)
    text = src.read_text(encoding="utf-8")
    edited = text.replace("# %% [markdown]\n", "# %% [markdown] tags=[\"theory\"]\n# A new first line.\n", 1)
    assert edited != text
    src.write_text(edited, encoding="utf-8")
    _sync(nb_copy, stem)
    after = nbformat.read(nb_copy / f"{stem}.ipynb", as_version=4)
    assert len(after.cells) == len(before.cells)
    first = next(i for i, c in enumerate(after.cells) if c.cell_type == "markdown")
    assert after.cells[first].source == "A new first line.\n" + before.cells[first].source
    assert after.cells[first].metadata["tags"] == ["theory"]
    for a, b in zip(after.cells, before.cells):
        if b.cell_type == "code":
            assert a.outputs == b.outputs and a.execution_count == b.execution_count
            assert a.metadata == b.metadata  # execution timings stay in the .ipynb
    assert after.metadata == before.metadata


def test_percent_format_reads_tags_on_code_and_markdown_cells():
    nb = jupytext.reads('# %% [markdown] tags=["theory"]\n# Int8 is 4x smaller than fp32.\n\n'
                        '# %% tags=["parameters"]\nN = 3\n\n# %%\nx = 1\n', fmt="py:percent", config=CONFIG)
    assert [c.cell_type for c in nb.cells] == ["markdown", "code", "code"]
    assert nb.cells[0].metadata["tags"] == ["theory"] and nb.cells[0].source == "Int8 is 4x smaller than fp32."
    assert nb.cells[1].metadata["tags"] == ["parameters"] and nb.cells[1].source == "N = 3"
    assert "tags" not in nb.cells[2].metadata


def test_nbgrader_metadata_round_trips_through_the_source():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "def f():\n    raise NotImplementedError",
        metadata={"nbgrader": {"solution": True, "grade": False, "locked": False, "grade_id": "ex1",
                               "schema_version": 3},
                  "execution": {"iopub.status.idle": "2026-01-01T00:00:00Z"}})])
    text = jupytext.writes(nb, fmt="py:percent", config=CONFIG)
    assert "nbgrader=" in text and "execution" not in text
    back = jupytext.reads(text, fmt="py:percent", config=CONFIG)
    assert back.cells[0].metadata == {"nbgrader": nb.cells[0].metadata["nbgrader"]}


def test_jupyterlab_saves_keep_both_sides_in_step(nb_copy):
    """What JupyterLab does with jupytext installed (its contents manager, with notebooks/jupytext.toml):
    saving the notebook rewrites its source; a source edited elsewhere opens with the committed outputs."""
    from jupyter_server.services.contents.largefilemanager import LargeFileManager
    from jupytext.sync_contentsmanager import build_sync_jupytext_contents_manager_class

    cm = build_sync_jupytext_contents_manager_class(LargeFileManager)(root_dir=str(nb_copy))
    stem = NOTEBOOKS[0].stem
    committed = nbformat.read(NOTEBOOKS[0], as_version=4)
    nb = cm.get(f"{stem}.ipynb")["content"]
    assert cells(nb) == cells(committed)
    nb.cells[0].source += "\n\nEdited in JupyterLab."
    cm.save({"type": "notebook", "content": nb}, f"{stem}.ipynb")
    src = nb_copy / "src" / f"{stem}.py"
    assert "# Edited in JupyterLab." in src.read_text(encoding="utf-8")
    saved = nbformat.read(nb_copy / f"{stem}.ipynb", as_version=4)
    assert [c.get("outputs") for c in saved.cells] == [c.get("outputs") for c in committed.cells]

    src.write_text(src.read_text(encoding="utf-8").replace("Edited in JupyterLab.", "Edited in an editor."),
                   encoding="utf-8")
    nb = cm.get(f"{stem}.ipynb")["content"]
    assert nb.cells[0].source.endswith("Edited in an editor.")
    assert [c.get("outputs") for c in nb.cells] == [c.get("outputs") for c in committed.cells]
