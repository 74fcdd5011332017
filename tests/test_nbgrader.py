"""nbgrader end to end, with the real nbgrader (issue 16).

For every chapter with exercises: ``scripts/nbgrader_course.py`` writes the course directory,
``nbgrader generate_assignment`` makes the release, and ``nbgrader autograde`` grades two submissions:

- **untouched**: the release exactly as a student receives it. Every exercise must score 0, and the
  graded run is a full top-to-bottom run of the student copy in lab mode (``classroom/nbgrader_config.py``):
  it must reach the end of the chapter with errors only in its graded checker cells (the exercises say
  "not implemented yet"; later cells that need the learner's function fall back to the library's).
- **solved**: the release with every solution cell filled in with the instructor's solution, keeping the
  cells the exercises need (the parameters cell, the set-up cell after it, every exercise and its graded
  checker) and dropping the chapter's experiments: nbgrader grades the cells it is given, so this proves
  full marks for every exercise in seconds instead of a second full run. That the complete solved
  notebook runs without an error is nbval's job (``make test`` executes every committed notebook).

All submissions are graded by a pool of worker processes, one core each, so the whole check costs about
one lab-mode run of the course on the machine's cores. ``COURSE_TEST_NBGRADER=0`` skips it (``make unit``);
``COURSE_NBGRADER_FULL_SOLVED=1`` (``make test-classroom``) grades the whole solved copies instead of the cut ones,
a second top-to-bottom lab-mode run of every chapter, this time with the learner's functions in use.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
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


GRADED = [p for p in NOTEBOOKS if nbgrader_course.graded_cells(nbformat.read(p, as_version=4))]
SKIP = os.environ.get("COURSE_TEST_NBGRADER") == "0"


FULL_SOLVED = os.environ.get("COURSE_NBGRADER_FULL_SOLVED") == "1"  # make test-classroom: grade whole solved copies


def solved_submission(release, source, cut: bool = True) -> nbformat.NotebookNode:
    """The release with the instructor's solutions typed in, cut (``cut=True``) to the cells its exercises
    need: the parameters cell, the first code cell after it (imports, environment, lab-mode note), and
    every nbgrader cell (solutions and graded checkers). The BEGIN/END markers stay: they are comments."""
    solutions = _solution_cells(source)
    nb = copy.deepcopy(release)
    params = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    setup = next(i for i, c in enumerate(nb.cells) if i > params and c.cell_type == "code")
    keep = []
    for i, c in enumerate(nb.cells):
        meta = c.metadata.get("nbgrader", {})
        if meta.get("solution"):
            c.source = solutions[meta["grade_id"]].source
        if not cut or i in (params, setup) or meta.get("solution") or meta.get("grade"):
            keep.append(c)
    nb.cells = keep
    return nb


def _grade(job: tuple[Path, str]) -> str | Exception:
    where, chapter = job
    try:
        return _wait(_start(where, "autograde", chapter, "--force", threads=1))
    except Exception as exc:  # reported by the chapter's test, not by the fixture
        return exc


@pytest.fixture(scope="module")
def graded(tmp_path_factory, request):
    """Generate the releases, write both submissions of every chapter, grade them all.

    Returns {chapter: {"untouched"|"solved": course directory, "log": ...}}. Every (chapter, student) is
    graded in its own copy of the course directory (one gradebook each, no locking between workers). Only the
    chapters whose test was selected are graded (``pytest -k 04_distillation`` grades chapter 4 alone)."""
    wanted = {item.callspec.params["path"].stem for item in request.session.items
              if getattr(item, "originalname", "") == "test_generate_assignment_and_autograde"}
    chapters = [p for p in GRADED if p.stem in wanted] or GRADED
    base = tmp_path_factory.mktemp("nbgrader")
    course = base / "course"
    made = nbgrader_course.make_course(chapters, course)
    assert list(made) == [p.stem for p in chapters]
    # one call for every chapter ("*"): the same releases as one call per chapter, without paying nbgrader's
    # start-up seven times (about 30 s on 2 cores)
    _nbgrader(course, "generate_assignment", "*", "--force")
    assert sorted(p.name for p in (course / "release").iterdir()) == sorted(made)
    out, jobs = {}, []
    for student in ("untouched", "solved"):  # the long runs first, so the pool ends together
        for path in chapters:
            chapter = path.stem
            where = base / f"{chapter}-{student}"
            shutil.copytree(course, where)
            release = nbformat.read(course / "release" / chapter / path.name, as_version=4)
            if student == "solved":
                release = solved_submission(release, nbformat.read(path, as_version=4), cut=not FULL_SOLVED)
            dest = where / "submitted" / student / chapter
            dest.mkdir(parents=True)
            nbformat.write(release, dest / path.name)
            out.setdefault(chapter, {"course": course})[student] = where
            jobs.append((where, chapter))
    workers = max(1, min(len(jobs), os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        logs = dict(zip(jobs, pool.map(_grade, jobs)))
    for (where, chapter), log in logs.items():
        out[chapter].setdefault("logs", {})[where.name] = log
    return out


def test_solved_submission_keeps_the_set_up_and_every_exercise():
    path = next(p for p in GRADED if p.stem.startswith("04"))
    source = nbformat.read(path, as_version=4)
    nb = solved_submission(source, source)
    ids = [c.metadata.get("nbgrader", {}).get("grade_id") for c in nb.cells]
    assert [i for i in ids if i] == [c.metadata["nbgrader"]["grade_id"] for c in source.cells
                                     if c.metadata.get("nbgrader")]
    assert "parameters" in nb.cells[0].metadata["tags"] and "import" in nb.cells[1].source
    assert len(nb.cells) == len([i for i in ids if i]) + 2
    whole = solved_submission(source, source, cut=False)
    assert len(whole.cells) == len(source.cells)


@pytest.mark.skipif(SKIP, reason="COURSE_TEST_NBGRADER=0 (make unit): end-to-end grading skipped")
@pytest.mark.parametrize("path", GRADED, ids=lambda p: p.stem)
def test_generate_assignment_and_autograde(path, graded):
    chapter = path.stem
    runs = graded[chapter]
    for name, log in runs["logs"].items():
        if isinstance(log, Exception):
            raise AssertionError(f"{name}: {log}")
    release = runs["course"] / "release" / chapter / path.name
    source = nbformat.read(path, as_version=4)
    released = nbformat.read(release, as_version=4)

    # the release: solutions stubbed, hints kept, nothing of the answer left
    solved_cells = _solution_cells(source)
    for gid, cell in _solution_cells(released).items():
        assert "NotImplementedError" in cell.source and "BEGIN SOLUTION" not in cell.source
        hints = [ln.strip() for ln in solved_cells[gid].source.splitlines() if ln.strip().startswith("# Hint:")]
        assert hints and all(h in cell.source for h in hints), f"{chapter}/{gid}: the release lost its hint"
    assert all(not c.get("outputs") for c in released.cells if c.cell_type == "code")

    graded_ids = set(nbgrader_course.graded_cells(source))
    untouched = _scores(runs["untouched"], chapter, "untouched")
    solved = _scores(runs["solved"], chapter, "solved")
    assert set(untouched) == set(solved) == graded_ids
    assert all(score == 0 for score, _ in untouched.values()), f"{chapter}: the untouched release scored {untouched}"
    assert all(score == top > 0 for score, top in solved.values()), f"{chapter}: the solved copy scored {solved}"

    # the untouched run is a full top-to-bottom run: errors only where an unanswered exercise is graded
    ran = nbformat.read(runs["untouched"] / "autograded" / "untouched" / chapter / path.name, as_version=4)
    assert len(ran.cells) == len(released.cells)
    checker_cells = {i for i, c in enumerate(ran.cells) if c.metadata.get("nbgrader", {}).get("grade")}
    errors = _errors(ran)
    assert set(errors) == checker_cells, f"{chapter}: errors outside the graded cells: " \
        f"{ {i: e for i, e in errors.items() if i not in checker_cells} }"
    assert all("not implemented yet" in e for e in errors.values()), errors
    assert all(c.execution_count for c in ran.cells if c.cell_type == "code"), f"{chapter}: the run stopped early"
    text = json.dumps([c.get("outputs", []) for c in ran.cells])
    assert "LAB MODE" in text, f"{chapter}: graded without the lab-mode banner"
    if "mine_or_library" in json.dumps([c.source for c in source.cells]):
        assert "the cells below use the library's" in text, f"{chapter}: no visible fallback note"
    ran = nbformat.read(runs["solved"] / "autograded" / "solved" / chapter / path.name, as_version=4)
    assert not _errors(ran), f"{chapter}: the solved copy raised: {_errors(ran)}"
    assert all(c.execution_count for c in ran.cells if c.cell_type == "code"), f"{chapter}: solved run stopped early"
    if FULL_SOLVED:
        assert len(ran.cells) == len(released.cells), f"{chapter}: the solved copy was cut"
