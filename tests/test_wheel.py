"""The course as a wheel (issue 20): what `pip install course_lib` or Colab's install cell gets.

A wheel is built from a copy of the checkout, installed with its dependencies into a fresh virtual
environment outside the checkout (the lock, constraints.txt, as pip constraints; torch from the local
wheel the way ``python -m course_lib`` installs it, never a multi-GB download), and a short script run from
a temporary folder loads the embedded dataset, trains a LeNet-5 for one epoch, prunes, quantizes and
measures it, writes its results and reads chapter 6's sentences: chapter 01 and 02's core with nothing
but the wheel. Without a local torch wheel (pip's find-links, e.g. a ``make wheelhouse`` folder in
$PIP_FIND_LINKS) the install test is skipped: it would download torch. COURSE_TEST_WHEEL=0 skips it too.
COURSE_TEST_TORCH=2.6.0 tests the floor of pyproject's torch range instead: that torch from pip's index
(on Linux PyPI's CUDA build, about 5 GB installed), the course's other requirements from the lock.
Measured on 2 busy cores: about 60 s with pip's cache warm, about 120 s with an empty pip cache.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# pip's messages when an index cannot be reached: the test is skipped then, not failed (no network is no bug)
NETWORK_ERRORS = (r"NewConnectionError|ConnectTimeout|ReadTimeout|Max retries exceeded|Name or service not known|"
                  r"Temporary failure in name resolution|Network is unreachable|ProxyError")
PIP_FLAGS = ["--timeout", "15", "--retries", "1", "--disable-pip-version-check"]   # an index never hangs it

SCRIPT = r'''
import json, os, sys
from pathlib import Path
import torch
import course_lib
from course_lib import data, measure, pruning, records, training
from course_lib.bert import load_sentences
from course_lib.models import build_model
from course_lib.quantization import fakequant

torch.set_num_threads(1)
splits = data.load_dataset("mnist5k")
model = build_model("lenet5", splits.input_shape, splits.num_classes)
training.fit(model, splits.train, splits.val, epochs=1, lr=2e-3, seed=0, progress=False)
out = {"torch": torch.__version__, "file": course_lib.__file__, "data_dir": str(data.DATA_DIR), "chance": splits.chance,
       "n_train": len(splits.train), "accuracy": training.evaluate(model, splits.test),
       "dense_bytes": measure.serialized_bytes(model), "params": measure.count_params(model)}
pruning.magnitude_prune(model, 0.8)
out["sparsity"] = measure.sparsity(model)
out["pruned_accuracy"] = training.evaluate(model, splits.test)
x_calib = splits.train.tensors[0][:256]
q = fakequant.ptq(model, x_calib, weight_bits=8, act_bits=8)
out["int8_accuracy"] = training.evaluate(q, splits.test)
rec = records.record("baseline", model, test=splits.test, input_shape=splits.input_shape, latency_ms=None)
out["results"] = str(records.write_results("wheel_smoke", [rec]))
out["cache_dir"] = str(training.cache_dir())
out["shipped"] = training.load_baseline("mnist5k", 0)[1].get("shipped", False)
s = load_sentences()
out["sentences"] = [len(s.eval_texts), len(s.train_texts)]
print("RESULT " + json.dumps(out))
'''


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    """Run ``cmd``; on failure, fail the test with the end of its output."""
    proc = subprocess.run(cmd, text=True, capture_output=True, **kw)
    assert proc.returncode == 0, f"{cmd[:6]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _smoke_files() -> list[str]:
    """Files named like the script's results (wheel_smoke*) anywhere in the checkout but .git and .venv.
    (Not a snapshot of the whole checkout: other people may be editing it while the test runs.)"""
    found = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if not (Path(dirpath) == ROOT and d in (".git", ".venv"))]
        found += [os.path.join(dirpath, f) for f in filenames if f.startswith("wheel_smoke")]
    return found


def _lock_without_torch(py: str, lock: Path, out: Path) -> Path:
    """``lock`` less torch and the distributions the torch installed in ``py`` requires (another torch pins
    its own, e.g. torch 2.6 needs sympy 1.13.1); written to ``out``."""
    code = ("import importlib.metadata as m, re; print(' '.join(re.split(r'[^A-Za-z0-9._-]', r)[0].lower() "
            "for r in m.requires('torch') or [] if 'extra ==' not in r))")
    names = {re.sub(r"[-_.]+", "-", n) for n in _run([py, "-c", code]).stdout.split()} | {"torch"}
    out.write_text("".join(line + "\n" for line in lock.read_text().splitlines()
                           if re.sub(r"[-_.]+", "-", line.split("==")[0].lower()) not in names))
    return out


def build_wheel(dest: Path) -> Path:
    """Build the course's wheel from a copy of the checkout (setuptools writes build/ and *.egg-info
    beside the sources); return its path."""
    src = dest / "src"
    src.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src)
    for name in ("course_lib", "data"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    _run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q",
          "-w", str(dest / "dist"), *PIP_FLAGS])
    (wheel,) = (dest / "dist").glob("course_lib-*.whl")
    return wheel


def test_wheel_holds_every_subpackage_and_the_data(tmp_path):
    names = set(zipfile.ZipFile(build_wheel(tmp_path)).namelist())
    packages = {str(p.parent.relative_to(ROOT).as_posix()) for p in (ROOT / "course_lib").rglob("__init__.py")}
    assert {f"{p}/__init__.py" for p in packages} <= names, "a subpackage is missing from [tool.setuptools] packages"
    shipped = [line.split()[1] for line in (ROOT / "data" / "SHA256SUMS").read_text().splitlines() if line.strip()]
    data = {f"course_lib/_data/{n}" for n in ("SHA256SUMS", *shipped)}
    assert data <= names, f"missing from the wheel: {sorted(data - names)}"
    trained = (ROOT / "data" / "trained" / "SHA256SUMS").read_text().split()[1::2]
    weights = {f"course_lib/_data/trained/{n}" for n in ("SHA256SUMS", *trained)}
    assert len(trained) >= 20 and weights <= names, f"missing from the wheel: {sorted(weights - names)}"
    assert "course_lib/_data/pystdlib_manifest.json" in names
    read = re.findall(r'DATA_DIR / "?([\w.]+)"?', "".join(p.read_text() for p in (ROOT / "course_lib").rglob("*.py")))
    assert all(f"course_lib/_data/{n}" in names for n in read if "." in n), read


@pytest.mark.skipif(os.environ.get("COURSE_TEST_WHEEL") == "0", reason="COURSE_TEST_WHEEL=0")
def test_fresh_venv_with_only_the_wheel_runs_a_chapter_core(tmp_path):
    lock = ROOT / "constraints.txt"
    wheel = build_wheel(tmp_path / "wheel")
    venv, work, home = tmp_path / "venv", tmp_path / "work", tmp_path / "home"
    work.mkdir()
    _run([sys.executable, "-m", "venv", str(venv)])
    py = str(venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python"))
    floor = os.environ.get("COURSE_TEST_TORCH")
    torch_version = re.search(r"^torch==(\S+)", lock.read_text(), re.MULTILINE).group(1)
    if floor:   # another torch (the range's floor): from pip's index, its own dependencies left free
        _run([py, "-m", "pip", "install", "-q", f"torch=={floor}", "--no-compile", *PIP_FLAGS])
        lock = _lock_without_torch(py, lock, tmp_path / "constraints.txt")
    else:       # torch from a local wheel only (python -m course_lib setup's first choice): never a download
        local = subprocess.run([py, "-m", "pip", "install", "-q", "-c", str(lock), f"torch=={torch_version}",
                                "--no-index", "--no-deps", "--no-compile", *PIP_FLAGS], text=True, capture_output=True)
        if local.returncode != 0:
            pytest.skip(f"no local wheel of torch=={torch_version} in pip's find-links: {local.stderr.strip()[-300:]}")
    # the wheel and its requirements; with COURSE_TEST_TORCH, that torch is kept (pip refuses one outside the range)
    deps = subprocess.run([py, "-m", "pip", "install", "-q", "-c", str(lock), str(wheel), "--no-compile", *PIP_FLAGS]
                          + ([f"torch=={floor}"] if floor else []), text=True, capture_output=True)
    if deps.returncode != 0 and re.search(NETWORK_ERRORS, deps.stdout + deps.stderr):
        pytest.skip(f"pip could not reach its index for the course's dependencies: {deps.stderr.strip()[-300:]}")
    assert deps.returncode == 0, deps.stdout[-3000:] + deps.stderr[-3000:]

    assert _smoke_files() == [], "remove these leftovers first"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COURSE_", "PYTHON"))}
    env.update(COURSE_HOME=str(home), COURSE_PROGRESS="0", HOME=str(home))
    proc = _run([py, "-c", SCRIPT], cwd=work, env=env)
    out = json.loads(proc.stdout.split("RESULT ", 1)[1])

    assert out["torch"].split("+")[0] == (floor or torch_version)
    site = Path(out["file"]).resolve()
    assert venv.resolve() in site.parents and ROOT not in site.parents
    assert Path(out["data_dir"]).resolve() == site.parent / "_data"
    assert out["n_train"] > 1000 and out["accuracy"] > out["chance"] + 0.5, out
    assert out["sparsity"] == pytest.approx(0.8, abs=0.02) and out["pruned_accuracy"] > out["chance"] + 0.3, out
    assert out["int8_accuracy"] > out["pruned_accuracy"] - 0.05, out
    assert out["params"] > 400_000 and out["dense_bytes"] > 4 * out["params"], out
    assert Path(out["results"]).is_relative_to(home) and Path(out["results"]).is_file()
    assert out["shipped"] is True, "the installed course trains its baseline instead of loading the shipped one"
    assert Path(out["cache_dir"]) == home / "cache"
    assert out["sentences"] == [192, 129]
    assert _smoke_files() == [], "the installed course wrote its results into the checkout"


def test_build_dir_outside_a_checkout(monkeypatch, tmp_path):
    """data.BUILD_DIR: <checkout>/build here; the constants block resolves $COURSE_HOME outside one."""
    from course_lib import data, records, training
    assert data.IN_CHECKOUT and data.BUILD_DIR == ROOT / "build" and data.DATA_DIR == ROOT / "data"
    monkeypatch.delenv("COURSE_CACHE", raising=False)
    monkeypatch.delenv("COURSE_RESULTS", raising=False)
    assert training.cache_dir() == ROOT / "build" / "cache"
    assert records.results_dir() == ROOT / "build" / "results"
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))          # the overrides still win
    assert training.cache_dir() == tmp_path


def test_readme_opens_every_notebook_in_colab_from_the_one_repository_url():
    url = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Repository"]
    owner_repo = re.fullmatch(r"https://github\.com/([\w.-]+/[\w.-]+)", url).group(1)
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"https://colab\.research\.google\.com/github/([\w.-]+/[\w.-]+)/blob/main/notebooks/([\w.-]+)",
                       readme)
    assert {repo for repo, _ in links} == {owner_repo}, "a Colab link points at another repository than pyproject's"
    names = [nb for _, nb in links]
    for nb in sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb")):
        assert names.count(nb) == 1, f"README has {names.count(nb)} Colab links to notebooks/{nb}, expected 1"
    assert set(names) <= {p.name for p in (ROOT / "notebooks").glob("*.ipynb")}, "a Colab link to a missing notebook"
    github = set(re.findall(r"https://github\.com/[\w.-]+/[\w.-]+", readme))
    assert github <= {url}, f"README names other repository URLs than pyproject's {url}: {github - {url}}"
