"""The course scripts: executing notebooks headless, HTML handouts (notebooks are built from their sources by
jupytext: tests/test_sources.py)."""
import sys
from pathlib import Path

import jupytext
import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import make_handouts  # noqa: E402
import run_notebooks  # noqa: E402

SRC = '''# %% [markdown]
# # 99 · Demo chapter
# Some *text*.

# %% tags=["parameters"]
N = 3

# %% [markdown]
# ## A figure

# %%
import matplotlib.pyplot as plt
plt.plot(range(N))
plt.show()
print("sum", sum(range(N)))
'''


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    d = tmp_path_factory.mktemp("nb")
    nb = jupytext.reads(SRC, fmt="py:percent")
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    src = d / "99_demo.ipynb"
    nbformat.write(nb, src)
    assert run_notebooks.main(["--out", str(d / "executed"), str(src)]) == 0
    return d / "executed" / "99_demo.ipynb"


def test_run_notebooks_executes(executed):
    nb = nbformat.read(executed, 4)
    outs = nb.cells[3].outputs
    assert any(o.get("text", "").startswith("sum 3") for o in outs)
    assert any("image/png" in o.get("data", {}) for o in outs)


def test_run_notebooks_reports_failure(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("raise RuntimeError('boom')")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    p = tmp_path / "98_fail.ipynb"
    nbformat.write(nb, p)
    assert run_notebooks.main(["--out", str(tmp_path / "out"), str(p)]) == 1


def test_handouts_embed_figures_and_toc(executed, tmp_path):
    assert make_handouts.main([str(executed.parent), str(tmp_path / "handouts")]) == 0
    page = (tmp_path / "handouts" / "99_demo.html").read_text()
    assert "data:image/png;base64," in page
    assert 'class="toc"' in page and "A figure" in page
    assert "Traceback" not in page
    index = (tmp_path / "handouts" / "index.html").read_text()
    assert '<a href="99_demo.html">99 · Demo chapter</a>' in index
