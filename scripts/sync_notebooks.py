"""Bring notebooks/NN_x.ipynb up to date with its jupytext source notebooks/src/NN_x.py (make sync).

    python scripts/sync_notebooks.py            # every chapter
    python scripts/sync_notebooks.py --check    # exit 1 if a notebook or a source would change

Inputs (cell text, cell types, tags and nbgrader metadata) come from the source; the outputs, execution
counts and execution metadata of the committed .ipynb are kept (jupytext's own combine, as a save in
JupyterLab does through notebooks/jupytext.toml). A source without a notebook gets a new one (then run
`make notebooks`). The source is then rewritten exactly as jupytext writes it, so the blank lines a person
typed between cells never turn into `lines_to_next_cell` metadata in the .ipynb, and a later save in
JupyterLab changes nothing. Files are only written when their content changes.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jupytext
import nbformat
from jupytext.combine import combine_inputs_with_outputs
from jupytext.config import load_jupytext_config

ROOT = Path(__file__).resolve().parent.parent
KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}


def synced(src: Path, ipynb: Path) -> tuple[str, str]:
    """The text of the .ipynb and of the .py once in step (src gives the inputs, ipynb the outputs)."""
    config = load_jupytext_config(str(ipynb))
    text_nb = jupytext.read(src, fmt="py:percent", config=config)
    for cell in text_nb.cells:  # blank lines between cells are formatting, not metadata
        cell.metadata.pop("lines_to_next_cell", None)
    if ipynb.exists():
        old = nbformat.read(ipynb, as_version=4)
        nb = combine_inputs_with_outputs(text_nb, old, fmt="py:percent")
        nb.metadata = old.metadata
    else:
        nb = text_nb
        nb.metadata = nbformat.from_dict({"kernelspec": KERNELSPEC, "language_info": {"name": "python"}})
    return nbformat.writes(nb) + "\n", jupytext.writes(nb, fmt="py:percent", config=config)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sources", nargs="*", type=Path, help="default: notebooks/src/[0-9][0-9]_*.py")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if anything would change")
    args = parser.parse_args(argv)
    sources = args.sources or sorted((ROOT / "notebooks" / "src").glob("[0-9][0-9]_*.py"))
    stale = []
    for src in sources:
        ipynb = src.parent.parent / (src.stem + ".ipynb")
        nb_text, py_text = synced(src, ipynb)
        for path, text in ((ipynb, nb_text), (src, py_text)):
            if path.exists() and path.read_text(encoding="utf-8") == text:
                continue
            stale.append(path)
            if not args.check:
                path.write_text(text, encoding="utf-8")
            print(f"{'stale' if args.check else 'updated'}: {path}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
