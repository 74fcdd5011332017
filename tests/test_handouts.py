"""HTML handouts of the committed (executed) notebooks: one page each plus an index, figures embedded,
a table of contents, no error output."""
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import make_handouts  # noqa: E402

NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.fixture(scope="module")
def handouts(tmp_path_factory):
    out = tmp_path_factory.mktemp("handouts")
    assert make_handouts.main([str(ROOT / "notebooks"), str(out)]) == 0
    return out


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_handout_page(handouts, path):
    page = (handouts / f"{path.stem}.html").read_text(encoding="utf-8")
    nb = nbformat.read(path, as_version=4)
    n_images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert n_images >= 1, f"{path.name} has no figure"
    assert page.count("data:image/png;base64,") >= n_images
    assert 'class="toc"' in page
    assert not any(o.get("output_type") == "error" for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "jp-OutputArea-output" in page and "Traceback (most recent call last)" not in page


def test_index_links_every_page(handouts):
    index = (handouts / "index.html").read_text(encoding="utf-8")
    for path in NOTEBOOKS:
        assert f'href="{path.stem}.html"' in index
