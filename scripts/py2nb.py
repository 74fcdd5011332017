"""Build notebooks/NN_*.ipynb from their percent-format sources in notebooks/src/NN_*.py.

Cells start with ``# %%`` (code) or ``# %% [markdown]`` (markdown; every line starts with ``# ``).
A cell whose first line carries ``tags=[...]`` gets those tags: ``# %% tags=["parameters"]`` (papermill),
``# %% [markdown] tags=["theory"]`` (its numbers hold whatever the run; see tests/test_prose.py).
Existing outputs are dropped; run ``make notebooks`` afterwards to execute them.

    python scripts/py2nb.py notebooks/src/00_setup_and_baseline.py
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent


def parse(text: str) -> list:
    cells = []
    for chunk in re.split(r"^(?=# %%)", text, flags=re.MULTILINE):
        if not chunk.startswith("# %%"):
            continue
        header, _, body = chunk.partition("\n")
        body = body.strip("\n")
        if "[markdown]" in header:
            lines = [ln[2:] if ln.startswith("# ") else ln.lstrip("#") for ln in body.splitlines()]
            cell = nbformat.v4.new_markdown_cell("\n".join(lines))
        else:
            cell = nbformat.v4.new_code_cell(body)
        m = re.search(r"tags=(\[.*\])", header)
        if m:
            cell.metadata["tags"] = json.loads(m.group(1))
        cells.append(cell)
    return cells


def build(src: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = parse(src.read_text())
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    out = ROOT / "notebooks" / (src.stem + ".ipynb")
    nbformat.write(nb, out)
    return out


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(build(Path(arg)))
