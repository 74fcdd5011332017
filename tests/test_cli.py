"""python -m course_lib: the torch-source decision, the commands each target runs, setup's pip commands,
argument errors, and that the package imports (and the CLI runs) without torch. Nothing here installs
or executes a notebook: --dry-run and a recorded subprocess stand in for the real programs."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from course_lib import cli
from course_lib.cli import CPU_INDEX, LOCAL, torch_source

ROOT = Path(__file__).resolve().parent.parent
PY = "/v/bin/python"


# -- the torch decision: every branch ---------------------------------------------------------------
@pytest.mark.parametrize("choice", ["auto", "cpu"])
def test_local_wheel_is_tried_first_and_ends_it(choice):
    assert torch_source(choice, "Linux", False) == LOCAL
    assert torch_source(choice, "Linux", False, local_ok=True) is None


@pytest.mark.parametrize("system,gpu,expected", [
    ("Linux", False, CPU_INDEX),   # PyPI's Linux torch is the CUDA build: a GPU-less machine takes the CPU one
    ("Linux", True, ""),           # a GPU: PyPI's default (CUDA) build
    ("Darwin", False, ""),         # macOS and Windows: PyPI's torch is already CPU (or MPS) only
    ("Windows", False, ""),
    ("Windows", True, ""),
])
def test_auto_without_a_local_wheel(system, gpu, expected):
    assert torch_source("auto", system, gpu, local_ok=False) == expected


@pytest.mark.parametrize("system,gpu", [("Linux", True), ("Darwin", False), ("Windows", False)])
def test_cpu_choice_takes_the_cpu_index_everywhere(system, gpu):
    assert torch_source("cpu", system, gpu, local_ok=False) == CPU_INDEX


@pytest.mark.parametrize("choice", ["cuda", "default"])
@pytest.mark.parametrize("local_ok", [None, False, True])
def test_cuda_and_default_skip_the_local_wheel(choice, local_ok):
    assert torch_source(choice, "Linux", False, local_ok=local_ok) == ""


@pytest.mark.parametrize("choice", ["auto", "cpu", "cuda", "default"])
def test_an_explicit_index_wins(choice):
    url = "https://example.org/whl/cu999"
    assert torch_source(choice, "Linux", False, index_url=url) == url


def test_torch_choice_accepts_case_and_empty_and_names_the_valid_ones():
    assert cli.torch_choice(None) == cli.torch_choice("") == "auto"
    assert cli.torch_choice(" CPU ") == "cpu"
    with pytest.raises(ValueError, match=r"'gpu'.*auto, cpu, cuda, default"):
        cli.torch_choice("gpu")
    with pytest.raises(ValueError, match="valid choices"):
        torch_source("rocm", "Linux", False)


def test_venv_python_per_platform():
    assert cli.venv_python(Path("v"), "Windows") == Path("v/Scripts/python.exe")
    assert cli.venv_python(Path("v"), "Linux") == Path("v/bin/python")
    assert cli.venv_python(Path("v"), "Darwin") == Path("v/bin/python")


# -- the lock and the pip commands ------------------------------------------------------------------
def test_locked_version(tmp_path):
    c = tmp_path / "constraints.txt"
    c.write_text("# lock\nnumpy==2.4.1\nTorch == 2.13.0 ; python_version >= '3.10'\n")
    assert cli.locked_version(c) == "2.13.0"
    c.write_text("numpy==2.4.1\n")
    with pytest.raises(ValueError, match="pins no version of torch"):
        cli.locked_version(c)
    with pytest.raises(FileNotFoundError, match="missing"):
        cli.locked_version(tmp_path / "nope.txt")


def test_torch_install_commands(tmp_path):
    c = tmp_path / "constraints.txt"
    c.write_text("torch==2.13.0\n")
    local = cli.torch_install(PY, c, LOCAL)
    assert local[:6] == [PY, "-m", "pip", "install", "-c", str(c)] and "torch==2.13.0" in local
    assert "--no-index" in local and "--no-deps" in local and "--index-url" not in local
    cpu = cli.torch_install(PY, c, CPU_INDEX)
    assert cpu[-2:] == ["--index-url", CPU_INDEX] and "--no-index" not in cpu
    assert cpu[cpu.index("--timeout") + 1] == "15" and "--retries" in cpu  # never hangs on an unreachable index
    default = cli.torch_install(PY, c, "")
    assert "--index-url" not in default and "--timeout" in default


def _fake_checkout(tmp_path, lock=True):
    for d in ("notebooks", "scripts"):
        (tmp_path / d).mkdir()
    (tmp_path / "notebooks" / "00_a.ipynb").write_text("{}")
    (tmp_path / "notebooks" / "01_b.ipynb").write_text("{}")
    (tmp_path / "pyproject.toml").write_text("")
    if lock:
        (tmp_path / "constraints.txt").write_text("torch==2.13.0\n")
    py = cli.venv_python(tmp_path / ".venv")
    py.parent.mkdir(parents=True)
    py.write_text("")
    return tmp_path


@pytest.mark.parametrize("local_rc,gpu,expect_index", [(0, False, None), (1, False, CPU_INDEX), (1, True, "")])
def test_setup_runs_local_then_the_chosen_index(tmp_path, monkeypatch, local_rc, gpu, expect_index):
    root = _fake_checkout(tmp_path)
    calls = []

    def call(cmd, cwd=None, **kw):
        calls.append(cmd)
        return local_rc if "--no-index" in cmd else 0
    monkeypatch.setattr(cli.subprocess, "call", call)
    monkeypatch.setattr(cli, "has_nvidia_gpu", lambda: gpu)
    monkeypatch.setattr(cli.platform, "system", lambda: "Linux")
    monkeypatch.delenv("COURSE_TORCH", raising=False)
    assert cli.setup(root) == 0
    torch_cmds = [c for c in calls if any(a.startswith("torch==") for a in c)]
    assert "--no-index" in torch_cmds[0]
    if expect_index is None:
        assert len(torch_cmds) == 1
    else:
        assert len(torch_cmds) == 2 and "--no-index" not in torch_cmds[1]
        assert (torch_cmds[1][-1] == expect_index) if expect_index else "--index-url" not in torch_cmds[1]
    assert calls[-1][-2:] == ["-e", ".[dev]"] and "-c" in calls[-1]
    assert (root / ".venv" / ".installed").exists()
    assert not cli.setup_needed(root / ".venv", root)


def test_setup_honours_course_torch(tmp_path, monkeypatch):
    root = _fake_checkout(tmp_path)
    calls = []
    monkeypatch.setattr(cli.subprocess, "call", lambda cmd, **kw: calls.append(cmd) or 0)
    monkeypatch.setenv("COURSE_TORCH", "cuda")
    cli.setup(root)
    torch_cmds = [c for c in calls if any(a.startswith("torch==") for a in c)]
    assert len(torch_cmds) == 1 and "--no-index" not in torch_cmds[0] and "--index-url" not in torch_cmds[0]


def test_setup_needed_follows_the_stamp(tmp_path):
    root = _fake_checkout(tmp_path)
    venv = root / ".venv"
    assert cli.setup_needed(venv, root)  # no stamp
    (venv / ".installed").touch()
    assert not cli.setup_needed(venv, root)
    t = (venv / ".installed").stat().st_mtime
    os.utime(root / "constraints.txt", (t + 10, t + 10))
    assert cli.setup_needed(venv, root)  # the lock changed since the install


# -- the commands each target runs ------------------------------------------------------------------
def test_test_is_every_unit_test_and_every_notebook_longest_first():
    cmds = [c for c, _ in cli.commands("test", PY, ROOT)]
    nbs = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    # every notebook under nbval once, and the unit tests split in three jobs that cover tests/ exactly once
    assert sorted(c[-1] for c in cmds if "--nbval" in c) == nbs
    unit = [c[4:] for c in cmds if "--nbval" not in c]
    assert sorted(map(tuple, unit)) == sorted([("tests/test_nbgrader.py",), ("tests/test_other_datasets.py",),
                                              ("tests", "--ignore=tests/test_nbgrader.py",
                                               "--ignore=tests/test_other_datasets.py")])
    assert all(c[:4] == [PY, "-m", "pytest", "-q"] for c in cmds)
    expected = [cli._expected(ROOT, c) for c in cmds]
    assert expected == sorted(expected, reverse=True) and cmds[0][-1] == "tests/test_nbgrader.py"
    assert [c for c, _ in cli.commands("nbval", PY, ROOT)] == [c for c in cmds if "--nbval" in c]


def test_executed_seconds_reads_the_cells_timestamps(tmp_path):
    nb = {"cells": [{"cell_type": "code", "metadata": {"execution": {
        "iopub.execute_input": "2026-12-07T01:00:00.000Z", "shell.execute_reply": "2026-12-07T01:00:02.500Z"}}},
        {"cell_type": "markdown", "metadata": {}}, {"cell_type": "code", "metadata": {"execution": {
            "iopub.execute_input": "2026-12-07T01:01:00Z", "shell.execute_reply": "2026-12-07T01:01:01Z"}}}]}
    (tmp_path / "a.ipynb").write_text(json.dumps(nb))
    assert cli.executed_seconds(tmp_path / "a.ipynb") == pytest.approx(3.5)
    assert cli.executed_seconds(tmp_path / "missing.ipynb") == 0.0


def test_jobs_wanted():
    assert cli.jobs_wanted({"COURSE_TEST_JOBS": "3"}) == 3 and cli.jobs_wanted({"COURSE_TEST_JOBS": " 1 "}) == 1
    assert cli.jobs_wanted({}) in (1, 2)
    for bad in ("0", "two", "-1"):
        with pytest.raises(ValueError, match=f"COURSE_TEST_JOBS='{bad}'.*integer >= 1"):
            cli.jobs_wanted({"COURSE_TEST_JOBS": bad})


def test_run_parallel_runs_every_job_reports_and_returns_the_first_failure(tmp_path, capsys):
    py = sys.executable
    jobs = [([py, "-c", "print('one')"], {}), ([py, "-c", "import sys; print('two'); sys.exit(4)"], {}),
            ([py, "-c", "import os; print(os.environ['X'], os.environ['OMP_WAIT_POLICY'])"], {"X": "three"})]
    assert cli.run_parallel(jobs, tmp_path, dict(os.environ), 2) == 4
    out = capsys.readouterr().out
    assert "one" in out and "two" in out and "three PASSIVE" in out and "FAILED (exit 4)" in out
    assert "3 jobs, 2 at a time" in out
    assert cli.run_parallel(jobs[:1], tmp_path, dict(os.environ), 2) == 0
    assert cli.commands("unit", PY, ROOT) == [([PY, "-m", "pytest", "-q", "tests"],
                                              {"COURSE_TEST_NBGRADER": "0", "COURSE_TEST_OTHER_DATASETS": "0"})]
    assert cli.commands("lab", PY, ROOT)[0][1] == {"COURSE_PROGRESS": "1"}


def test_lab_gives_kernels_curve_keys_where_pyzmq_can():
    (lab, _), = cli.commands("lab", PY, ROOT, curve=True)
    assert lab == [PY, "-m", "jupyterlab", "--KernelManager.transport_encryption=auto", "notebooks/"]
    assert cli.commands("lab", PY, ROOT, curve=False)[0][0] == [PY, "-m", "jupyterlab", "notebooks/"]


def test_run_executes_every_chapter_then_handouts_and_results(tmp_path):
    root = _fake_checkout(tmp_path)
    (run, _), (handouts, _), (results, _) = cli.commands("run", PY, root)
    assert run == [PY, "scripts/run_notebooks.py", "--out", "build/executed", "notebooks/00_a.ipynb", "notebooks/01_b.ipynb"]
    assert handouts[-2:] == ["build/executed", "build/handouts"] and results[-1] == "course_lib.records"
    assert cli.commands("handouts", PY, root)[0][0][-2] == "notebooks"  # no run yet: the committed notebooks
    assert [c[1] for c, _ in cli.commands("notebooks", PY, root)] == ["scripts/sync_notebooks.py", "scripts/run_notebooks.py"]


def test_every_command_is_known_and_a_bad_one_is_named():
    for name in cli.COMMANDS:
        cli.commands(name, PY, ROOT)
    with pytest.raises(ValueError, match=r"'tests'.*valid choices: setup, run, test"):
        cli.commands("tests", PY, ROOT)


def test_base_env_sets_the_hash_seed_and_keeps_a_chosen_progress():
    env = cli.base_env({"PYTHONHASHSEED": "7"})
    assert env["PYTHONHASHSEED"] == "0" and env["COURSE_PROGRESS"] == "0"
    assert cli.base_env({"COURSE_PROGRESS": "1"})["COURSE_PROGRESS"] == "1"


def test_main_dry_run_prints_and_runs_nothing(capsys, monkeypatch):
    monkeypatch.setattr(cli.subprocess, "call", lambda *a, **k: pytest.fail("dry run ran a program"))
    assert cli.main(["test", "--dry-run", "--no-venv"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("-m pytest -q tests/test_nbgrader.py") and any(o.endswith(".ipynb") for o in out)


def test_a_dry_run_from_a_bare_checkout_shows_the_setup_and_the_rerun(tmp_path, monkeypatch, capsys):
    root = _fake_checkout(tmp_path)
    shutil.rmtree(root / ".venv")
    monkeypatch.setattr(cli, "find_root", lambda: root)
    monkeypatch.setattr(cli, "has_nvidia_gpu", lambda: False)
    monkeypatch.setattr(cli.subprocess, "call", lambda *a, **k: pytest.fail("dry run ran a program"))
    monkeypatch.delenv("COURSE_TORCH", raising=False)
    assert cli.main(["run", "--dry-run"]) == 0
    out = capsys.readouterr().out
    venv_py = str(cli.venv_python(root / ".venv"))
    assert "-m venv" in out and "--no-index --no-deps" in out and out.rstrip().endswith(f"{venv_py} -m course_lib run --dry-run")
    assert not (root / ".venv").exists()


def test_setup_names_the_way_out_when_the_index_fails(tmp_path, monkeypatch):
    root = _fake_checkout(tmp_path)
    monkeypatch.setattr(cli.subprocess, "call", lambda cmd, **kw: 1 if any(a.startswith("torch==") for a in cmd) else 0)
    monkeypatch.setattr(cli, "has_nvidia_gpu", lambda: False)
    monkeypatch.setattr(cli.platform, "system", lambda: "Linux")
    monkeypatch.delenv("COURSE_TORCH", raising=False)
    with pytest.raises(SystemExit, match="download.pytorch.org.*PIP_FIND_LINKS"):
        cli.setup(root)
    assert not (root / ".venv" / ".installed").exists()


def test_main_stops_at_the_first_failure(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(cli.subprocess, "call", lambda cmd, cwd=None, env=None: calls.append(env) or 3)
    assert cli.main(["run", "--no-venv"]) == 3
    assert len(calls) == 1 and calls[0]["PYTHONHASHSEED"] == "0"
    monkeypatch.setenv("COURSE_TEST_JOBS", "1")   # one at a time: test too stops at the first failure
    assert cli.main(["test", "--no-venv"]) == 3 and len(calls) == 2


def test_main_names_bad_arguments(capsys, monkeypatch):
    with pytest.raises(SystemExit):
        cli.main(["bogus"])
    assert "invalid choice: 'bogus'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["run", "--torch", "gpu"])
    assert "invalid choice: 'gpu'" in capsys.readouterr().err
    monkeypatch.setenv("COURSE_TORCH", "gpu")
    assert cli.main(["run", "--dry-run", "--no-venv"]) == 2
    assert "COURSE_TORCH" in capsys.readouterr().err


# -- no torch needed to start -----------------------------------------------------------------------
def test_the_package_and_the_cli_import_without_torch():
    code = ("import sys, course_lib, course_lib.cli; assert 'torch' not in sys.modules, 'torch imported'; "
            "from course_lib import load_dataset, LeNet5; import course_lib as c; "
            "assert c.measure.count_params and 'fit' in dir(c) and 'torch' in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        import course_lib
        course_lib.nonexistent


def test_python_m_course_lib_dry_run():
    out = subprocess.run([sys.executable, "-m", "course_lib", "unit", "--dry-run", "--no-venv"], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("COURSE_TEST_NBGRADER=0 COURSE_TEST_OTHER_DATASETS=0 " + f"{sys.executable} -m pytest -q tests")


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize("target,command", [("test", "test"), ("run", "run"), ("unit", "unit"), ("lab", "lab")])
def test_the_makefile_calls_the_cli(target, command):
    out = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True).stdout
    assert f"-m course_lib {command}" in out


def test_parallel_jobs_share_the_cores_and_a_learners_thread_count_wins(tmp_path, capsys):
    assert [cli.threads_per_job(w, cpus=2) for w in (1, 2, 3)] == [2, 1, 1]
    assert cli.threads_per_job(2, cpus=8) == 4 and cli.threads_per_job(3, cpus=8) == 2
    for bad in (0, -1, 1.5, "2"):
        with pytest.raises(ValueError, match=f"workers = {bad!r} is not valid"):
            cli.threads_per_job(bad, cpus=2)
    show = [sys.executable, "-c", "import os; print('threads', os.environ['OMP_NUM_THREADS'])"]
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    assert cli.run_parallel([(show, {})], tmp_path, env, 2) == 0
    assert f"threads {cli.threads_per_job(2)}" in capsys.readouterr().out
    assert cli.run_parallel([(show, {})], tmp_path, {**env, "OMP_NUM_THREADS": "3"}, 2) == 0
    assert "threads 3" in capsys.readouterr().out
