"""nbgrader end to end, with the real nbgrader (issue 16).

For every chapter with exercises: ``scripts/nbgrader_course.py`` writes the course directory,
``nbgrader generate_assignment`` makes the release, and ``nbgrader autograde`` grades two submissions:
the release exactly as a student receives it (every exercise must score 0) and the release with every
solution cell filled in with the instructor's solution (full marks).

Both are graded in lab mode (``classroom/nbgrader_config.py``), so each run is also a top-to-bottom run
of the student copy: the released copy must reach the end of the chapter with errors only in its graded
checker cells (the exercises themselves say "not implemented yet"; cells that need the learner's
function fall back to the library's), and the solved copy must run without a single error.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import nbgrader_course  # noqa: E402

NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
BIN = Path(sys.executable).parent


def _env(tmp: Path) -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # nbgrader runs `alembic` from the environment
    env["COURSE_RESULTS"] = str(tmp / "results")  # lab-mode records stay out of build/results
    env["COURSE_PROGRESS"] = "0"
    env.pop("COURSE_LAB_MODE", None)               # the course configuration turns lab mode on
    env.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    return env


def _start(course: Path, *args: str, threads: int | None = None) -> subprocess.Popen:
    env = _env(course)
    if threads:  # two graders side by side, one core each (OMP's busy-waiting would make them crawl)
        env.update(OMP_NUM_THREADS=str(threads), OMP_WAIT_POLICY="PASSIVE")
    return subprocess.Popen([str(BIN / "nbgrader"), *args], cwd=course, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _wait(proc: subprocess.Popen, timeout: int = 1800) -> str:
    log, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"nbgrader {' '.join(proc.args[1:])} failed:\n{log[-4000:]}"
    return log


def _nbgrader(course: Path, *args: str) -> str:
    return _wait(_start(course, *args))


def _solution_cells(nb) -> dict[str, nbformat.NotebookNode]:
    return {c.metadata["nbgrader"]["grade_id"]: c for c in nb.cells
            if c.metadata.get("nbgrader", {}).get("solution")}


def _errors(nb) -> dict[int, str]:
    return {i: f"{o.ename}: {o.evalue}" for i, c in enumerate(nb.cells) if c.cell_type == "code"
            for o in c.get("outputs", []) if o.output_type == "error"}


def _scores(course: Path, chapter: str, student: str) -> dict[str, tuple[float, float]]:
    from nbgrader.api import Gradebook
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        nb = gb.find_submission_notebook(chapter, chapter, student)
        return {g.name: (g.score, g.max_score) for g in nb.grades}


def test_config_raises_nbgraders_cell_timeout_and_grades_in_lab_mode():
    text = (ROOT / "classroom" / "nbgrader_config.py").read_text()
    assert "c.Execute.timeout = 900" in text          # nbgrader's default is 30 s; full-mode cells take ~100 s
    assert 'os.environ.setdefault("COURSE_LAB_MODE", "1")' in text


def test_every_exercise_is_a_solution_cell_followed_by_its_graded_checker():
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        ids = []
        for i, c in enumerate(nb.cells):
            meta = c.metadata.get("nbgrader")
            if "### BEGIN SOLUTION" in c.source:
                assert meta and meta["solution"] and not meta["grade"], f"{path.name} cell {i}: no solution metadata"
                nxt = nb.cells[i + 1].metadata.get("nbgrader", {})
                assert nxt.get("grade") and nxt.get("locked") and nxt.get("points", 0) > 0, \
                    f"{path.name} cell {i + 1}: the checker after an exercise must be a locked, graded cell"
            if meta:
                assert meta["schema_version"] == 3
                ids.append(meta["grade_id"])
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate grade_id in {ids}"


@pytest.mark.skipif(os.environ.get("COURSE_TEST_NBGRADER") != "1",
                    reason="end-to-end grading of every chapter (several minutes): `make test-classroom` runs it; "
                           "not yet part of make test, whose time budget it would exceed (issue 16 stays open)")
@pytest.mark.parametrize("path", [p for p in NOTEBOOKS
                                  if nbgrader_course.graded_cells(nbformat.read(p, as_version=4))],
                         ids=lambda p: p.stem)
def test_generate_assignment_and_autograde(path, tmp_path):
    chapter = path.stem
    course = tmp_path / "course"
    made = nbgrader_course.make_course([path], course)
    assert list(made) == [chapter]
    _nbgrader(course, "generate_assignment", chapter, "--force")
    release = course / "release" / chapter / path.name
    source = nbformat.read(path, as_version=4)
    released = nbformat.read(release, as_version=4)

    # the release: solutions stubbed, hints kept, nothing of the answer left
    solved_cells = _solution_cells(source)
    for gid, cell in _solution_cells(released).items():
        assert "NotImplementedError" in cell.source and "BEGIN SOLUTION" not in cell.source
        hints = [ln.strip() for ln in solved_cells[gid].source.splitlines() if ln.strip().startswith("# Hint:")]
        assert hints and all(h in cell.source for h in hints), f"{chapter}/{gid}: the release lost its hint"
    assert all(not c.get("outputs") for c in released.cells if c.cell_type == "code")

    # two submissions: the release as is, and the release with the instructor's solutions typed in;
    # graded at the same time in two copies of the course directory (one gradebook each)
    courses = {"untouched": course, "solved": tmp_path / "course-solved"}
    shutil.copytree(course, courses["solved"])
    for student, where in courses.items():
        dest = where / "submitted" / student / chapter
        dest.mkdir(parents=True)
        nb = nbformat.read(release, as_version=4)
        if student == "solved":
            for gid, cell in _solution_cells(nb).items():
                cell.source = solved_cells[gid].source  # the markers are comments: harmless in a submission
        nbformat.write(nb, dest / path.name)
    procs = [_start(where, "autograde", chapter, "--force", threads=1) for where in courses.values()]
    try:
        for proc in procs:
            _wait(proc)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()

    graded = set(nbgrader_course.graded_cells(source))
    untouched, solved = (_scores(where, chapter, s) for s, where in courses.items())
    assert set(untouched) == set(solved) == graded
    assert all(score == 0 for score, _ in untouched.values()), f"{chapter}: the untouched release scored {untouched}"
    assert all(score == top > 0 for score, top in solved.values()), f"{chapter}: the solved copy scored {solved}"

    # the graded runs are full top-to-bottom runs: errors only where an unanswered exercise is graded
    ran = nbformat.read(course / "autograded" / "untouched" / chapter / path.name, as_version=4)
    checker_cells = {i for i, c in enumerate(ran.cells) if c.metadata.get("nbgrader", {}).get("grade")}
    errors = _errors(ran)
    assert set(errors) == checker_cells, f"{chapter}: errors outside the graded cells: " \
        f"{ {i: e for i, e in errors.items() if i not in checker_cells} }"
    assert all("not implemented yet" in e for e in errors.values()), errors
    last = next(c for c in reversed(ran.cells) if c.cell_type == "code")
    assert last.get("outputs") is not None and last.execution_count, f"{chapter}: the run did not reach the end"
    ran = nbformat.read(courses["solved"] / "autograded" / "solved" / chapter / path.name, as_version=4)
    assert not _errors(ran), f"{chapter}: the solved copy raised: {_errors(ran)}"
    text = json.dumps([c.get("outputs", []) for c in ran.cells])
    assert "LAB MODE" in text, f"{chapter}: graded without the lab-mode banner"
