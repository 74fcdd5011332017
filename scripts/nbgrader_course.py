"""Set up an nbgrader course directory from the committed notebooks (make nbgrader).

    python scripts/nbgrader_course.py --out build/nbgrader [notebooks/0*.ipynb]

Writes <out>/nbgrader_config.py (a copy of classroom/nbgrader_config.py) and, for every chapter
with exercises, <out>/source/<stem>/<stem>.ipynb: the instructor version, with outputs and execution
metadata cleared. nbgrader itself then makes the student release (``nbgrader generate_assignment``).
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "classroom" / "nbgrader_config.py"


def graded_cells(nb) -> list[str]:
    """The grade_ids of the graded (checker) cells of a notebook."""
    return [c.metadata["nbgrader"]["grade_id"] for c in nb.cells
            if c.metadata.get("nbgrader", {}).get("grade")]


def make_course(notebooks: list[Path], out: Path) -> dict[str, int]:
    """Write the course directory; return {assignment: number of graded cells} (chapters without
    exercises are skipped)."""
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(CONFIG, out / "nbgrader_config.py")
    made = {}
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        graded = graded_cells(nb)
        if not graded:
            continue
        for cell in nb.cells:
            cell.metadata.pop("execution", None)
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
        dest = out / "source" / path.stem / path.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, dest)
        made[path.stem] = len(graded)
    return made


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("notebooks", nargs="*", type=Path)
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "nbgrader")
    args = ap.parse_args(argv)
    notebooks = args.notebooks or sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    for name, n in make_course(notebooks, args.out).items():
        print(f"{args.out}/source/{name}: {n} graded exercise(s)")
    print(f"next: cd {args.out} && nbgrader generate_assignment <chapter>")
    return 0


if __name__ == "__main__":
    sys.exit(main())
