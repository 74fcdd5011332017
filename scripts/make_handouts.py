"""Turn executed notebooks into offline HTML handouts plus an index page.

    python scripts/make_handouts.py build/executed build/handouts

Figures are embedded as base64 images, so each page reads offline; a table of contents
built from the notebook's headings opens each page.
"""
from __future__ import annotations

import html
import re
import sys
from pathlib import Path

import nbformat
from nbconvert import HTMLExporter


def toc(nb) -> str:
    items = []
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            continue
        for m in re.finditer(r"^(#{1,3})\s+(.+)$", cell.source, flags=re.MULTILINE):
            level, title = len(m.group(1)), m.group(2).strip()
            anchor = re.sub(r"[^\w\- ]", "", title).strip().replace(" ", "-")
            items.append(f'<li style="margin-left:{(level - 1)}em"><a href="#{html.escape(anchor)}">'
                         f"{html.escape(title)}</a></li>")
    return '<nav class="toc"><b>Contents</b><ul>' + "".join(items) + "</ul></nav>"


def convert(src: Path, dest_dir: Path) -> Path:
    nb = nbformat.read(src, as_version=4)
    body, _ = HTMLExporter(template_name="lab").from_notebook_node(nb)
    body = body.replace("<body", "<body", 1)
    body = re.sub(r"(<body[^>]*>)", r"\1" + toc(nb).replace("\\", "\\\\"), body, count=1)
    out = dest_dir / (src.stem + ".html")
    out.write_text(body, encoding="utf-8")
    return out


def main(argv=None) -> int:
    argv = argv if argv is not None else sys.argv[1:]
    if len(argv) != 2:
        print("usage: make_handouts.py EXECUTED_DIR OUT_DIR", file=sys.stderr)
        return 2
    src_dir, dest_dir = Path(argv[0]), Path(argv[1])
    dest_dir.mkdir(parents=True, exist_ok=True)
    notebooks = sorted(src_dir.glob("[0-9][0-9]_*.ipynb"))
    if not notebooks:
        print(f"no executed notebooks in {src_dir}: run `make run` first", file=sys.stderr)
        return 1
    links = []
    for nb in notebooks:
        out = convert(nb, dest_dir)
        title = next((c.source.splitlines()[0].lstrip("# ") for c in nbformat.read(nb, 4).cells
                      if c.cell_type == "markdown" and c.source.strip()), nb.stem)
        links.append(f'<li><a href="{out.name}">{html.escape(title)}</a></li>')
        print(f"handout: {out}")
    index = dest_dir / "index.html"
    index.write_text("<!doctype html><html><head><meta charset='utf-8'><title>Neural-network compression: "
                     "handouts</title></head><body><h1>Neural-network compression: handouts</h1><ol>"
                     + "".join(links) + "</ol><p>Results of every chapter: <code>build/results.md</code>.</p>"
                     "</body></html>", encoding="utf-8")
    print(f"index: {index}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
