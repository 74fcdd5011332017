"""The environment: pyproject.toml's ranges, the lock (constraints.txt), environment.yml and the
installed .venv agree; the notebook environment check works; committed notebooks are executed and carry
the conventions."""
import re
import sys
import tomllib
from pathlib import Path

import nbformat
import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import lock  # noqa: E402


def _requirements() -> dict[str, Requirement]:
    """pyproject.toml's runtime and dev requirements, by normalized name."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    reqs = data["project"]["dependencies"] + data["project"]["optional-dependencies"]["dev"]
    return {lock.normalize(r.name): r for r in map(Requirement, reqs)}


def _environment_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "environment.yml").read_text().splitlines():
        m = re.match(r"\s+- ([A-Za-z0-9_.\-]+)==(\S+)", line)
        if m:
            pins[lock.normalize(m.group(1))] = m.group(2)
    return pins


def test_pyproject_states_ranges_the_lock_satisfies():
    pins = lock.read_lock()
    for name, req in _requirements().items():
        assert name in pins, f"{name} is required by pyproject.toml but not in constraints.txt: run scripts/lock.py"
        assert not any(s.operator in ("==", "===") for s in req.specifier), f"{req}: a range, not a pin"
        assert any(s.operator == "<" for s in req.specifier), f"{req}: needs an upper bound (the next major)"
        assert req.specifier.contains(pins[name], prereleases=True), f"lock {name}=={pins[name]} is outside {req}"


def test_environment_yml_lists_the_lock_versions_of_the_direct_dependencies():
    pins, env = lock.read_lock(), _environment_pins()
    assert set(env) == set(_requirements())
    assert {n: v for n, v in env.items() if pins.get(n) != v} == {}, "environment.yml differs from constraints.txt"


def test_installed_environment_matches_the_lock():
    if Path(sys.prefix).resolve() != (ROOT / ".venv").resolve():
        pytest.skip(f"tests run from {sys.prefix}, not the checkout's .venv")
    pins, have = lock.read_lock(), lock.installed()
    assert {n: (pins.get(n), v) for n, v in have.items() if pins.get(n) != v} == {}, \
        "(lock, installed) differ: reinstall with -c constraints.txt or regenerate it with scripts/lock.py"
    assert set(pins) - set(have) == set(), "locked but not installed"


def test_lock_file_parses_and_rejects_bad_lines(tmp_path):
    f = tmp_path / "c.txt"
    f.write_text("# comment\nFoo_Bar==1.0  # why\n\n")
    assert lock.read_lock(f) == {"foo-bar": "1.0"}
    f.write_text("foo>=1\n")
    with pytest.raises(ValueError, match=r"c.txt:1: 'foo>=1' is not 'name==version'"):
        lock.read_lock(f)
    assert lock.public("2.13.0+cpu") == "2.13.0"


def test_env_required_minimums_are_the_range_floors():
    from course_lib.env import REQUIRED
    reqs = _requirements()
    for name, minimum in REQUIRED.items():
        floors = [s.version for s in reqs[name].specifier if s.operator == ">="]
        assert floors and Version(floors[0]) == Version(minimum), f"{name}: env.REQUIRED {minimum} vs {reqs[name]}"


def test_torch_range_locked_version_and_no_torchvision():
    reqs, pins = _requirements(), lock.read_lock()
    assert "torchvision" not in reqs and "torchvision" not in pins
    assert not reqs["torch"].specifier.contains("3.0") and reqs["torch"].specifier.contains(pins["torch"])
    assert "+" not in pins["torch"]   # no local label: torch==X matches X+cpu and the CUDA build


def test_check_environment_reports_versions():
    from course_lib.env import check_environment
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        env = check_environment(verbose=False)
    assert env["packages"]["torch"].split("+")[0] == lock.read_lock()["torch"]
    assert env["device"] in ("cpu", "cuda")


def test_check_environment_require_gpu():
    import torch
    from course_lib.env import check_environment
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="require_gpu"):
        check_environment(require_gpu=True, verbose=False)


def test_start_chapter_seeds_sets_threads_and_reports(capsys, monkeypatch):
    import warnings

    import torch
    from course_lib.env import cpu_model, start_chapter
    monkeypatch.setenv("COURSE_DEVICE", "cpu")
    before = torch.get_num_threads()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            env, dev = start_chapter(7, cpu_threads=1)
            a = torch.rand(3)
            start_chapter(7)
            b = torch.rand(3)
        assert dev.type == "cpu" and torch.get_num_threads() == 1
        assert torch.equal(a, b)  # seeded the same way both times
        assert env["packages"]["torch"].split("+")[0] == lock.read_lock()["torch"]
        assert f"device: cpu | torch threads: 1 | CPU: {cpu_model()}" in capsys.readouterr().out
        for bad in (0, 1.5):
            with pytest.raises(ValueError, match="cpu_threads"):
                start_chapter(7, cpu_threads=bad)
    finally:
        torch.set_num_threads(before)


NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_executed_and_carries_the_conventions(path):
    # that it agrees with its source notebooks/src/NN_x.py is tests/test_sources.py's job
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.get("outputs") is not None for c in code)
    assert all(c.execution_count is not None for c in code), f"{path.name} is not fully executed"
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and all(k in params[0].source for k in ("DATASET", "SEED", "EPOCHS", "DEVICE", "LAB_MODE"))
    assert "write_results" in "".join(c.source for c in code)
    # a chapter ends with its assertion cell (at most one informational cell, e.g. timings, after it)
    assert any(re.search(r"^assert ", c.source, re.MULTILINE) for c in code[-2:]), \
        "a chapter ends with its assertion cell"
    assert not any(o.get("output_type") == "error" for c in code for o in c.outputs)


def test_cpu_flags_and_u8s8_saturation(tmp_path):
    from course_lib import env
    f = tmp_path / "cpuinfo"
    f.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\n\nprocessor\t: 1\nflags\t\t: fpu avx2 avx512f\n")
    flags = env.cpu_flags(f)
    assert {"avx2", "avx512f"} <= flags and not env.has_vnni(flags)
    # plain AVX512 saturates like AVX2; VNNI (or ARM) accumulates in int32
    assert env.u8s8_saturates(flags, machine="x86_64")
    assert not env.u8s8_saturates(flags | {"avx512_vnni"}, machine="x86_64")
    assert not env.u8s8_saturates(flags | {"avx_vnni"}, machine="AMD64")
    assert not env.u8s8_saturates(set(), machine="aarch64")
    assert env.cpu_flags(tmp_path / "missing") is None
    assert env.u8s8_saturates(None, machine="x86_64") == (not env.has_vnni())


def test_lab_mode_resolves_the_parameter_and_the_environment(monkeypatch, capsys):
    from course_lib.env import lab_mode, lab_note
    monkeypatch.delenv("COURSE_LAB_MODE", raising=False)
    assert lab_mode(None) is False and lab_mode(True) is True and lab_mode(False) is False
    for raw, want in (("1", True), ("Yes", True), ("on", True), ("0", False), ("false", False), ("", False)):
        monkeypatch.setenv("COURSE_LAB_MODE", raw)
        assert lab_mode(None) is want, raw
    monkeypatch.setenv("COURSE_LAB_MODE", "1")
    assert lab_mode(False) is False  # an explicit parameter wins over the environment
    monkeypatch.setenv("COURSE_LAB_MODE", "maybe")
    with pytest.raises(ValueError, match="COURSE_LAB_MODE='maybe'"):
        lab_mode(None)
    with pytest.raises(TypeError, match="LAB_MODE='yes'"):
        lab_mode("yes")
    lab_note(False, "one seed", "intervals")
    assert capsys.readouterr().out == ""
    lab_note(True, "one seed", "the intervals")
    out = capsys.readouterr().out
    assert out.startswith("LAB MODE: one seed.") and "the intervals" in out and "not asserted" in out


def test_targets_asserted_only_in_the_full_run_on_the_course_dataset(tmp_path, capsys):
    import numpy as np

    from course_lib import env
    from course_lib.data import load_dataset
    course = load_dataset("mnist5k", limit=20)
    p = tmp_path / "mine.npz"
    np.savez(p, images=np.zeros((30, 20, 20), np.uint8), labels=np.arange(30) % 3)
    other = load_dataset(str(p))
    assert env.targets_asserted(False, course) and not env.targets_asserted(True, course)
    assert not env.targets_asserted(False, other) and not env.targets_asserted(True, other)
    env.data_note(course)
    assert capsys.readouterr().out == ""
    env.data_note(other)
    assert "not the course's dataset" in capsys.readouterr().out
    env.report_targets({"a": True, "b": False}, asserted=False)
    assert capsys.readouterr().out.splitlines() == ["met    a", "MISSED b"]
    with pytest.raises(AssertionError, match=r"targets missed: \['b'\]"):
        env.report_targets({"a": True, "b": False}, asserted=True)


def test_check_environment_warns_on_an_older_package(monkeypatch):
    """A hosted notebook's own torch may be older than the tested floor: a warning, not a failure."""
    from course_lib import env
    monkeypatch.setattr(env, "REQUIRED", {**env.REQUIRED, "tqdm": "999.0"})
    with pytest.warns(UserWarning, match=r"tqdm .* is older than 999.0, the oldest version the course is tested with"):
        env.check_environment(verbose=False)
    monkeypatch.setattr(env, "REQUIRED", {"no_such_package_here": "1.0"})
    with pytest.raises(RuntimeError, match="package 'no_such_package_here' is missing"):
        env.check_environment(verbose=False)


def test_installed_ignores_vendored_metadata_on_sys_path(monkeypatch):
    """setuptools puts its vendored packages (jaraco.*, platformdirs, ...) on sys.path once imported; the
    lock check must count installed distributions only (CI failed on this: a test had imported setuptools)."""
    import setuptools
    before = lock.installed()
    vendor = Path(setuptools.__file__).parent / "_vendor"
    if not vendor.is_dir():
        pytest.skip("this setuptools vendors nothing")
    monkeypatch.syspath_prepend(str(vendor))
    assert lock.installed() == before


def test_quiet_torchao_leaves_no_import_notices_on_stderr():
    """transformers imports torchao when it is installed: chapter 6's first cell must stay free of stderr."""
    import subprocess
    pytest.importorskip("torchao")
    code = "from course_lib import env; env.quiet_torchao(); import torchao.quantization; print('imported')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "imported", proc.stderr[-2000:]
    assert "Failed to load" not in proc.stderr and "register_constant" not in proc.stderr, proc.stderr[-2000:]


def test_cpu_model_from_proc(tmp_path):
    from course_lib.env import cpu_model
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R)  Xeon(R)   Test CPU\n")
    assert cpu_model(info) == "Intel(R) Xeon(R) Test CPU"
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nBogoMIPS\t: 48.00\nHardware\t: BCM2835\n")
    assert cpu_model(arm) == "BCM2835"
    assert cpu_model(tmp_path / "missing")      # no /proc/cpuinfo (macOS, Windows): the platform module's answer


def test_landscape_note_is_dated_versioned_and_sourced():
    """docs/landscape.md (issue 19's migration note): dated, its versions those of constraints.txt, and every
    claim (a bullet of its sections) followed by a source a reader can open."""
    text = (ROOT / "docs" / "landscape.md").read_text()
    assert re.search(r"\*\*Dated \d{4}-\d\d-\d\d\.\*\*", text)
    locked = lock.read_lock()
    for name in ("torch", "torchao", "onnxruntime", "openvino", "nncf", "executorch"):
        assert f"{name} {locked[name].split('+')[0]}" in text, f"{name}: the note names another version than the lock"
    claims = [c for section in re.split(r"^## ", text, flags=re.M)[1:4] for c in re.split(r"^- ", section, flags=re.M)[1:]]
    assert len(claims) >= 15
    unsourced = [c.splitlines()[0][:80] for c in claims if not re.search(r"https://\S+", c)]
    assert not unsourced, f"claims without a source: {unsourced}"


def test_the_lock_pulls_no_gpu_stack():
    """Issue 19: no dependency may pull another torch or a CUDA build. The lock (what `make` installs) pins one
    torch and holds none of the packages a CUDA torch or a GPU runtime brings in."""
    pinned = [ln.split("==")[0].strip().lower() for ln in (ROOT / "constraints.txt").read_text().splitlines()
              if "==" in ln and not ln.lstrip().startswith("#")]
    assert pinned.count("torch") == 1 and len(pinned) > 100
    gpu = [p for p in pinned if p.startswith(("nvidia-", "triton", "cuda-", "cupy", "onnxruntime-gpu", "tensorrt"))]
    assert not gpu, f"the lock pulls GPU packages: {gpu}"
