"""Student copies (make student, scripts/make_student.py): solutions stubbed with their hints, outputs and
execution metadata cleared, no run-specific phrasing, and the same notebook as nbgrader's own release
but for the wording of the stub.

That the copies run top to bottom (in lab mode, with the exercises unanswered, later cells falling back
to the library) and that every checker rejects the stub and accepts the solution is
tests/test_nbgrader.py's job: it grades nbgrader's release of every chapter as is and solved.
"""
import re
import sys
from pathlib import Path

import nbformat
import pytest
from nbgrader.preprocessors import ClearSolutions

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import make_student  # noqa: E402

NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
CHECK_CELL = re.compile(r"^(from course_lib import checks\n)?checks\.check_\w+\([\w, =]+\)\s*;?$")
RUN_SPECIFIC = re.compile(r"stored here|in the run (stored|shown|saved)|this notebook's stored", re.IGNORECASE)


def test_stub_source_replaces_solution_and_hidden_tests():
    src = "def f(x):\n    # Hint: add one\n    ### BEGIN SOLUTION\n    return x + 1\n    ### END SOLUTION\n" \
          "### BEGIN HIDDEN TESTS\nassert f(1) == 2\n### END HIDDEN TESTS\nprint('ok')"
    out = make_student.stub_source(src)
    assert "return x + 1" not in out and "HIDDEN" not in out and "assert f(1)" not in out
    assert out.count("# Hint: add one") == 1
    assert "    raise NotImplementedError('add one')" in out and out.endswith("print('ok')")
    inside = make_student.stub_source("def f(x):\n    ### BEGIN SOLUTION\n    # Hint: two\n    return 2\n    ### END SOLUTION")
    assert "# Hint: two" in inside and "raise NotImplementedError('two')" in inside
    with pytest.raises(make_student.MarkerError, match="without"):
        make_student.stub_source("### BEGIN SOLUTION\nx = 1")
    with pytest.raises(make_student.MarkerError, match="Hint"):
        make_student.stub_source("def f():\n    ### BEGIN SOLUTION\n    return 1\n    ### END SOLUTION")


def _outside_solution(source: str) -> list[str]:
    """The lines of a cell that are neither a stub nor a solution line."""
    out, inside = [], False
    for line in source.splitlines():
        s = line.strip()
        if s == make_student.BEGIN:
            inside = True
        elif s == make_student.END:
            inside = False
        elif not inside and "NotImplementedError" not in s and not s.startswith("# YOUR CODE HERE"):
            out.append(line)
    return out


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_student_notebook(path, tmp_path):
    dest = tmp_path / path.name
    n = make_student.make_student(path, dest)
    assert 2 <= n <= 4, f"{path.name} has {n} exercises; a chapter carries 2 to 4"
    solution = nbformat.read(path, as_version=4)
    student = nbformat.read(dest, as_version=4)
    assert len(student.cells) == len(solution.cells)
    ex = [i for i, c in enumerate(solution.cells) if c.cell_type == "code" and make_student.BEGIN in c.source]
    assert len(ex) == n
    for i in ex:
        check = solution.cells[i + 1]
        assert check.cell_type == "code" and CHECK_CELL.match(check.source.strip()), \
            f"{path.name}: the cell after exercise cell {i} must only call its checker, got {check.source!r}"
        stub = student.cells[i].source
        assert "raise NotImplementedError(" in stub and make_student.BEGIN not in stub
        hint = re.search(r"NotImplementedError\((['\"])(.+)\1\)", stub)
        assert hint and len(hint.group(2)) > 20, f"{path.name} cell {i}: the stub has no specific hint"
    for c in student.cells:
        assert "execution" not in c.metadata
        if c.cell_type == "code":
            assert not c.outputs and c.execution_count is None
        else:
            assert not RUN_SPECIFIC.search(c.source), f"{path.name}: run-specific phrasing in a student copy: " \
                f"{RUN_SPECIFIC.search(c.source).group(0)!r}"

    # the same notebook as nbgrader's release, but for the stub's wording
    release = nbformat.read(path, as_version=4)
    ClearSolutions().preprocess(release, {})
    for k, (a, b) in enumerate(zip(student.cells, release.cells)):
        assert a.cell_type == b.cell_type
        assert _outside_solution(a.source) == _outside_solution(b.source), f"{path.name} cell {k} differs from nbgrader's"
        assert a.metadata.get("nbgrader") == b.metadata.get("nbgrader")
