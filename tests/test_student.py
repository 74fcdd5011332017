"""Student notebooks (make student): generated from the committed notebooks, they run without error up
to the first exercise; every checker rejects the stub and accepts the solution.

Exercise convention (checked here): a code cell holding ``### BEGIN SOLUTION`` is immediately followed
by a code cell that only calls its checker, e.g. ``checks.check_conv_macs(conv_macs)``.
"""
import re
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import make_student  # noqa: E402

NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
CHECK_CELL = re.compile(r"^(from course_lib import checks\n)?checks\.check_\w+\([\w, =]+\)\s*;?$")


def _exercises(nb):
    out = []
    for i, c in enumerate(nb.cells):
        if c.cell_type == "code" and make_student.BEGIN in c.source:
            out.append(i)
    return out


def test_stub_source_replaces_solution_and_hidden_tests():
    src = "def f(x):\n    ### BEGIN SOLUTION\n    # Hint: add one\n    return x + 1\n    ### END SOLUTION\n" \
          "### BEGIN HIDDEN TESTS\nassert f(1) == 2\n### END HIDDEN TESTS\nprint('ok')"
    out = make_student.stub_source(src)
    assert "return x + 1" not in out and "HIDDEN" not in out and "assert f(1)" not in out
    assert "    raise NotImplementedError('add one')" in out and out.endswith("print('ok')")
    with pytest.raises(make_student.MarkerError, match="without"):
        make_student.stub_source("### BEGIN SOLUTION\nx = 1")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_student_notebook(path, tmp_path):
    dest = tmp_path / path.name
    n = make_student.make_student(path, dest)
    assert 2 <= n <= 4, f"{path.name} has {n} exercises; a chapter carries 2 to 4"
    solution = nbformat.read(path, as_version=4)
    student = nbformat.read(dest, as_version=4)
    ex = _exercises(solution)
    for i in ex:
        check = solution.cells[i + 1]
        assert check.cell_type == "code" and CHECK_CELL.match(check.source.strip()), \
            f"{path.name}: the cell after exercise cell {i} must only call its checker, got {check.source!r}"
        assert "NotImplementedError" in student.cells[i].source
        assert make_student.BEGIN not in student.cells[i].source
    assert all(not c.get("outputs") for c in student.cells if c.cell_type == "code")

    # run the student version up to its first exercise, then every stub with its checker,
    # then every solution with its checker, in one kernel
    first = ex[0]
    nb = nbformat.v4.new_notebook(metadata=student.metadata)
    nb.cells = [c for c in student.cells[:first]]
    nb.cells.append(nbformat.v4.new_code_cell("from course_lib import checks"))
    marks = []
    for i in ex:
        nb.cells += [student.cells[i], student.cells[i + 1]]
        marks.append(("stub", len(nb.cells) - 1))
    for i in ex:
        nb.cells += [solution.cells[i], solution.cells[i + 1]]
        marks.append(("solution", len(nb.cells) - 1))
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    for kind, k in marks:
        text = "".join(o.get("text", "") for o in nb.cells[k].outputs)
        if kind == "stub":
            assert "✗" in text and "not implemented" in text, f"{path.name}: a checker accepted the stub: {text!r}"
        else:
            assert "✓" in text, f"{path.name}: a checker rejected the solution: {text!r}"
