"""The course scripts: executing notebooks headless, HTML handouts (notebooks are built from their sources by
jupytext: tests/test_sources.py)."""
import io
import sys
from pathlib import Path

import jupytext
import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import make_handouts  # noqa: E402
import run_notebooks  # noqa: E402

SRC = '''# %% [markdown]
# # 99 · Demo chapter
# Some *text*.

# %% tags=["parameters"]
N = 3

# %% [markdown]
# ## A figure

# %%
import matplotlib.pyplot as plt
plt.plot(range(N))
plt.show()
print("sum", sum(range(N)))
'''


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    d = tmp_path_factory.mktemp("nb")
    nb = jupytext.reads(SRC, fmt="py:percent")
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    src = d / "99_demo.ipynb"
    nbformat.write(nb, src)
    assert run_notebooks.main(["--out", str(d / "executed"), str(src)]) == 0
    return d / "executed" / "99_demo.ipynb"


def test_run_notebooks_executes(executed):
    nb = nbformat.read(executed, 4)
    outs = nb.cells[3].outputs
    assert any(o.get("text", "").startswith("sum 3") for o in outs)
    assert any("image/png" in o.get("data", {}) for o in outs)


def test_run_notebooks_reports_failure(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("raise RuntimeError('boom')")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    p = tmp_path / "98_fail.ipynb"
    nbformat.write(nb, p)
    assert run_notebooks.main(["--out", str(tmp_path / "out"), str(p)]) == 1


def test_handouts_embed_figures_and_toc(executed, tmp_path):
    assert make_handouts.main([str(executed.parent), str(tmp_path / "handouts")]) == 0
    page = (tmp_path / "handouts" / "99_demo.html").read_text()
    assert "data:image/png;base64," in page
    assert 'class="toc"' in page and "A figure" in page
    assert "Traceback" not in page
    index = (tmp_path / "handouts" / "index.html").read_text()
    assert '<a href="99_demo.html">99 · Demo chapter</a>' in index


def _tiny(tmp_path, sources):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    p = tmp_path / "97_tiny.ipynb"
    nbformat.write(nb, p)
    return p


def test_run_notebooks_progress_moves_and_no_transport_warning(tmp_path, capfd):
    """make run's progress: cells done of cells and elapsed seconds, a line per interval when not a terminal;
    the kernel starts with curve keys, so ipykernel's "running over TCP without encryption" never shows.
    The bars of course_lib.training are off (COURSE_PROGRESS=0) and a widget bar when turned on."""
    src = _tiny(tmp_path, [
        "import time\nfrom course_lib.training import progress_bar\nfor _ in progress_bar(range(3)): time.sleep(0.25)",
        "time.sleep(0.8)",
        "import tqdm.notebook\nprint(isinstance(progress_bar(range(1), progress=True), tqdm.notebook.tqdm))",
    ])
    assert run_notebooks.main(["--out", str(tmp_path / "out"), "--progress-every", "0.2", str(src)]) == 0
    out, err = capfd.readouterr()
    lines = [ln for ln in out.splitlines() if ln.startswith("[1/1] 97_tiny.ipynb:")]
    done = [int(ln.split()[2].split("/")[0]) for ln in lines]
    assert len(lines) >= 3 and done == sorted(done) and done[0] < done[-1], out
    assert all(ln.split()[2].endswith("/3") and ln.endswith(" s") for ln in lines)
    assert "[1/1] 97_tiny.ipynb done in" in out and "(3 cells)" in out
    assert "without encryption" not in out + err and "WARNING" not in err
    cells = nbformat.read(tmp_path / "out" / "97_tiny.ipynb", 4).cells
    assert cells[0].outputs == []  # COURSE_PROGRESS=0: no bar in the stored outputs
    printed = "".join(o.get("text", "") for o in cells[2].outputs)
    widgets = [o for o in cells[2].outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert printed.strip() == "True" and widgets  # with ipywidgets: a widget bar in JupyterLab


def test_progress_on_a_terminal_rewrites_one_line():
    class Term(io.StringIO):
        def isatty(self):
            return True
    term = Term()
    with run_notebooks.Progress("[2/7] x.ipynb:", 2, stream=term) as p:
        p.cell_done()
        p.cell_done()
    text = term.getvalue()
    assert "\n" not in text and text.count("\r") >= 3 and "2/2 cells" in text
    with pytest.raises(ValueError, match="every = 0"):
        run_notebooks.Progress("x", 1, every=0)


@pytest.mark.parametrize("system,curve,want", [("linux", True, {"transport_encryption": "auto"}),
                                                ("win32", True, {"transport_encryption": "auto"}),
                                                ("darwin", False, {"transport": "ipc"}),
                                                ("win32", False, None)])
def test_kernel_config_keeps_the_transport_private(system, curve, want):
    cfg = run_notebooks.kernel_config(system, curve)
    assert (dict(cfg["KernelManager"]) if want else dict(cfg)) == (want or {})


def test_ship_trained_copies_the_cache_as_safetensors_with_checksums_and_drops_stale_models(tmp_path):
    import json

    import torch

    import ship_trained
    from course_lib import training
    from course_lib.models import LeNet5
    cache, out = tmp_path / "cache", tmp_path / "trained"
    cache.mkdir()
    model = LeNet5(c1=2, c2=3, fc=4)
    for stem, info in {"baseline_mnist5k_lenet5_seed0_abc": {"seed": 0, "path": "/somewhere/x.pt"},
                       "recipe_mnist5k_latency_model_def": {"config": model.config, "class": "LeNet5"},
                       "student_mnist5k_kd_0123": {"recipe": {}},
                       "student_cifar10_kd_0123": {"recipe": {}},                   # another dataset: not shipped
                       "baseline_cifar10_lenet5_seed0_abc": {"seed": 0}}.items():   # another dataset: not shipped
        torch.save(model.state_dict(), cache / f"{stem}.pt")
        (cache / f"{stem}.json").write_text(json.dumps(info))
    torch.save(model.state_dict(), cache / "baseline_mnist5k_lenet5_seed1_abc.pt")  # no .json: not shipped
    out.mkdir()
    (out / "baseline_mnist5k_old.json").write_text("{}")                             # stale: removed
    keys = ship_trained.ship(cache, out)
    assert keys == ["baseline_mnist5k_lenet5_seed0_abc", "student_mnist5k_kd_0123", "recipe_mnist5k_latency_model_def"]
    names = sorted(p.name for p in out.iterdir())
    assert names == ["SHA256SUMS", *sorted(f"{k}{s}" for k in keys for s in (".json", ".safetensors"))]
    meta = json.loads((out / f"{keys[0]}.json").read_text())
    assert "path" not in meta and meta["trained_with"]["torch"] == torch.__version__
    loaded, info = training.read_shipped(keys[2], lambda i: LeNet5(**i["config"]), folder=out)
    assert info["shipped"] and all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(),
                                                                      model.state_dict().values()))
    with pytest.raises(SystemExit, match="no baseline_mnist5k"):
        ship_trained.ship(tmp_path / "empty", out)
    # --keep adds a chapter's new models to what ships and lists every file in SHA256SUMS
    more = tmp_path / "more"
    more.mkdir()
    torch.save(model.state_dict(), more / "student_mnist5k_scratch_4567.pt")
    (more / "student_mnist5k_scratch_4567.json").write_text("{}")
    assert ship_trained.ship(more, out, keep=True) == ["student_mnist5k_scratch_4567"]
    listed = sorted((out / "SHA256SUMS").read_text().split()[1::2])
    assert listed == sorted(p.name for p in out.iterdir() if p.name != "SHA256SUMS") and len(listed) == 8
