"""Write student versions of the notebooks: solutions stubbed, hidden tests removed, outputs cleared.

    python scripts/make_student.py notebooks/0*.ipynb --out build/student     # make student

Uses nbgrader's markers without needing nbgrader:
- the lines between ``### BEGIN SOLUTION`` and ``### END SOLUTION`` become
  ``raise NotImplementedError("...hint...")`` at the same indentation; the ``# Hint:`` comment lines
  just above the block (where nbgrader's own release keeps them too) or inside it are kept, and their
  text goes into the error message; a solution without a hint is an error;
- blocks between ``### BEGIN HIDDEN TESTS`` and ``### END HIDDEN TESTS`` are removed;
- every output, execution count and execution timestamp is cleared (nbgrader metadata and tags stay).

For graded classes use nbgrader instead (``nbgrader_config.py``, docs/instructor.md): the cells carry
its metadata, and its release differs from this copy only in the stub's wording.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import nbformat

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
HBEGIN, HEND = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"


class MarkerError(ValueError):
    pass


def stub_source(source: str, cell_label: str = "cell") -> str:
    """Return ``source`` with every solution block replaced by a stub and hidden tests removed."""
    out, i = [], 0
    lines = source.splitlines()
    while i < len(lines):
        line = lines[i]
        s = line.strip()
        if s == HBEGIN:
            j = next((k for k in range(i + 1, len(lines)) if lines[k].strip() == HEND), None)
            if j is None:
                raise MarkerError(f"{cell_label}: {HBEGIN} without {HEND}")
            i = j + 1
            continue
        if s == BEGIN:
            j = next((k for k in range(i + 1, len(lines)) if lines[k].strip() == END), None)
            if j is None:
                raise MarkerError(f"{cell_label}: {BEGIN} without {END}")
            indent = line[: len(line) - len(line.lstrip())]
            above = []
            for prev in reversed(out):
                if not prev.strip().lower().startswith("# hint:"):
                    break
                above.insert(0, prev)
            hints = above + [ln for ln in lines[i + 1:j] if ln.strip().lower().startswith("# hint:")]
            if not hints:
                raise MarkerError(f"{cell_label}: the solution has no '# Hint:' line above it; every exercise needs one")
            text = " ".join(h.strip()[len("# hint:"):].strip() for h in hints)
            out += [indent + h.strip() for h in hints[len(above):]]
            out.append(f"{indent}raise NotImplementedError({text!r})")
            i = j + 1
            continue
        if s in (END, HEND):
            raise MarkerError(f"{cell_label}: {s} without its BEGIN marker")
        out.append(line)
        i += 1
    return "\n".join(out)


def make_student(src: Path, dest: Path) -> int:
    """Write the student version of notebook ``src`` to ``dest``; return the number of exercises stubbed."""
    nb = nbformat.read(src, as_version=4)
    n = 0
    for k, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            n += cell.source.count(BEGIN)
            cell.source = stub_source(cell.source, f"{src.name} cell {k}")
            cell.outputs = []
            cell.execution_count = None
        cell.metadata.pop("execution", None)
    dest.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, dest)
    return n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("notebooks", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=Path("build/student"))
    args = ap.parse_args(argv)
    for nb in args.notebooks:
        n = make_student(nb, args.out / nb.name)
        print(f"{nb.name}: {n} exercise(s) -> {args.out / nb.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
