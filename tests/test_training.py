"""Training: seeding, device choice, fit/evaluate/predict, augmentation, the cached baseline."""

import dataclasses
import json

import pytest
import torch

from course_lib import training
from course_lib.data import load_dataset
from course_lib.models import LeNet5, MLP
from course_lib.training import (evaluate, fit, get_device, load_baseline, predict, predict_probs, random_shift,
                                 seed_everything)


@pytest.fixture(scope="module")
def tiny():
    return load_dataset("mnist5k", limit=256)


def test_seed_everything_reproducible():
    seed_everything(3)
    a = torch.randn(5)
    seed_everything(3)
    assert torch.equal(a, torch.randn(5))
    with pytest.raises(ValueError, match="seed=-1"):
        seed_everything(-1)


def test_get_device(monkeypatch):
    assert get_device("cpu") == torch.device("cpu")
    monkeypatch.setenv("COURSE_DEVICE", "cpu")
    assert get_device() == torch.device("cpu")
    monkeypatch.delenv("COURSE_DEVICE")
    assert get_device().type in ("cpu", "cuda")
    with pytest.raises(ValueError, match="device='gpu'"):
        get_device("gpu")
    if not torch.cuda.is_available():
        with pytest.warns(UserWarning, match="CUDA is not available"):
            assert get_device("cuda") == torch.device("cpu")


def test_fit_is_deterministic_and_learns(tiny):
    def run():
        seed_everything(0)
        m = MLP(hidden=(32,))
        h = fit(m, tiny.train, tiny.val, epochs=3, lr=3e-3, batch_size=32, progress=False)
        return m, h
    m1, h1 = run()
    m2, h2 = run()
    assert h1.train_loss == h2.train_loss
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))
    assert h1.train_loss[-1] < h1.train_loss[0]
    assert len(h1.val_acc) == 3 and h1.val_acc[-1] == pytest.approx(evaluate(m1, tiny.val))
    assert evaluate(m1, tiny.test) > 0.5


def test_fit_hooks(tiny):
    seed_everything(0)
    m = MLP(hidden=(16,))
    calls = []
    fit(m, tiny.train, epochs=1, batch_size=64, after_step=lambda model: calls.append(1), progress=False,
        loss_fn=lambda model, x, y: torch.nn.functional.cross_entropy(model(x), y) * 0.5)
    assert len(calls) == 4  # 256 / 64 steps


@pytest.mark.parametrize("kw,match", [(dict(epochs=-1), "epochs"), (dict(lr=0), "lr"),
                                      (dict(optimizer="rmsprop"), "optimizer"), (dict(schedule="step"), "schedule"),
                                      (dict(augment=-1), r"augment=-1 .*\[0, inf\)"),
                                      (dict(augment=1.5), "augment=1.5"), (dict(batch_size=0), "batch_size=0"),
                                      (dict(weight_decay=-1e-4), "weight_decay")])
def test_fit_rejects_bad_arguments(tiny, kw, match):
    with pytest.raises(ValueError, match=match):
        fit(MLP(), tiny.train, **kw)


def test_evaluate_and_predict(tiny):
    m = MLP()
    x, y = tiny.test.tensors
    p = predict(m, x)
    assert p.shape == (256,) and p.dtype == torch.int64
    assert evaluate(m, (x, y)) == pytest.approx((p == y).float().mean().item())
    with pytest.raises(ValueError, match="empty"):
        evaluate(m, (x[:0], y[:0]))
    m.train()
    probs = predict_probs(m, x, batch_size=100)  # three batches, the last one short
    assert probs.shape == (256, 10) and probs.dtype == torch.float32 and m.training  # mode restored
    torch.testing.assert_close(probs.sum(1), torch.ones(256))
    assert torch.equal(probs.argmax(1), p)
    m.eval()
    with torch.no_grad():
        torch.testing.assert_close(probs, torch.softmax(m(x), 1))
    with pytest.raises(ValueError, match="empty"):
        predict_probs(m, x[:0])

    class Fails(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("broken forward")
    broken = Fails().train()
    with pytest.raises(RuntimeError, match="broken forward"):
        predict_probs(broken, x)
    assert broken.training  # the mode is restored even when the forward pass raises


def test_random_shift_moves_pixels_within_range():
    x = torch.zeros(50, 1, 9, 9)
    x[:, :, 4, 4] = 1.0
    out = random_shift(x, 2, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    pos = out.view(50, -1).argmax(1)
    rows, cols = pos // 9, pos % 9
    assert rows.min() >= 2 and rows.max() <= 6 and cols.min() >= 2 and cols.max() <= 6
    assert len(set(pos.tolist())) > 5
    assert torch.equal(random_shift(x, 0), x)


def test_load_baseline_caches(tmp_path, monkeypatch, tiny):
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    monkeypatch.setitem(training.BASELINE_RECIPE, "epochs", 1)
    m1, info1 = load_baseline("mnist5k", seed=0, splits=tiny, progress=False)
    assert info1["cached"] is False and isinstance(m1, LeNet5)
    files = sorted(p.suffix for p in tmp_path.iterdir())
    assert files == [".json", ".lock", ".pt"]
    m2, info2 = load_baseline("mnist5k", seed=0, splits=tiny)
    assert info2["cached"] is True
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))
    assert len(info2["history"]["train_loss"]) == 1
    # other splits of the same dataset (here: fewer training images) never reuse that model
    x, y = tiny.train.tensors
    fewer = dataclasses.replace(tiny, train=torch.utils.data.TensorDataset(x[:-8], y[:-8]))
    _, info3 = load_baseline("mnist5k", seed=0, splits=fewer, progress=False)
    assert info3["cached"] is False and info3["path"] != info1["path"]
    assert load_baseline("mnist5k", seed=0, splits=fewer)[1]["path"] == info3["path"]


_WAITER = """
import json, sys, time
from course_lib import training
from course_lib.data import load_dataset
training.BASELINE_RECIPE["epochs"] = 1
splits = load_dataset("mnist5k", limit=256)
print("ready", flush=True)
t0 = time.perf_counter()
m, info = training.load_baseline("mnist5k", seed=0, splits=splits, progress=False)
print(json.dumps({"cached": info["cached"], "waited": time.perf_counter() - t0}), flush=True)
"""


def test_load_baseline_waits_for_a_concurrent_training_and_loads_its_result(tmp_path, monkeypatch, tiny):
    """While one process trains a model (it holds the lock), a second process asking for the same model
    waits, then loads the cached files instead of training the model a second time."""
    import json
    import shutil
    import subprocess
    import sys
    import time
    first, shared = tmp_path / "first", tmp_path / "shared"
    monkeypatch.setenv("COURSE_CACHE", str(first))
    monkeypatch.setitem(training.BASELINE_RECIPE, "epochs", 1)
    m1, _ = load_baseline("mnist5k", seed=0, splits=tiny, progress=False)
    pt = next(first.glob("*.pt"))
    lock = shared / pt.with_suffix(".lock").name
    with training._file_lock(lock):  # "training" in progress: the lock is held, no cache file yet
        child = subprocess.Popen([sys.executable, "-c", _WAITER], stdout=subprocess.PIPE, text=True,
                                 env={**__import__("os").environ, "COURSE_CACHE": str(shared)})
        assert child.stdout.readline().strip() == "ready"  # the child is about to ask for the model
        time.sleep(1.5)
        assert child.poll() is None, "the second process did not wait for the lock"
        for f in (pt, pt.with_suffix(".json")):
            shutil.copy(f, shared / f.name)
    out, _ = child.communicate(timeout=120)
    assert child.returncode == 0
    result = json.loads(out.strip().splitlines()[-1])
    assert result["cached"] is True and result["waited"] >= 1.0, result
    assert not list(shared.glob(".*.tmp"))


def test_load_baseline_trains_and_caches_a_narrower_control(tmp_path, monkeypatch, tiny):
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    monkeypatch.setitem(training.BASELINE_RECIPE, "epochs", 1)
    m, info = load_baseline("mnist5k", seed=1, splits=tiny, progress=False, model_kw=dict(c1=3, c2=4, fc=8))
    assert info["cached"] is False and (m.conv1.out_channels, m.conv2.out_channels, m.fc1.out_features) == (3, 4, 8)
    m2, info2 = load_baseline("mnist5k", seed=1, splits=tiny, model_kw=dict(fc=8, c2=4, c1=3))
    assert info2["cached"] is True and torch.equal(m.fc1.weight, m2.fc1.weight)
    assert len(list(tmp_path.glob("*.pt"))) == 1


def test_correct_is_per_image_and_its_mean_is_evaluate(tiny):
    torch.manual_seed(0)
    m = LeNet5(c1=2, c2=3, fc=8)
    c = training.correct(m, tiny.test)
    assert c.dtype == torch.bool and c.shape == (len(tiny.test),)
    assert c.float().mean().item() == pytest.approx(evaluate(m, tiny.test))


def test_fit_trains_in_channels_last_and_returns_the_usual_layout(tiny):
    """The NHWC training path is taken (seen from inside the loop), ends near the NCHW path's model, keeps
    the Parameter objects (an optimiser or a caller's `params` list stays valid) and hands the model back
    in NCHW."""
    models, params = {}, {}
    for fmt in ("channels_last", "contiguous"):
        seed_everything(0)
        m = LeNet5(c1=4, c2=6, fc=16)
        params[fmt] = [id(p) for p in m.parameters()]
        seen = []
        fit(m, tiny.train, epochs=1, seed=0, progress=False, memory_format=fmt,
            after_step=lambda mod: seen.append(mod.conv2.weight.is_contiguous(memory_format=torch.channels_last)))
        assert seen and all(seen) == (fmt == "channels_last")
        assert [id(p) for p in m.parameters()] == params[fmt]
        assert all(p.is_contiguous() for p in m.parameters())
        models[fmt] = m
    for a, b in zip(models["channels_last"].parameters(), models["contiguous"].parameters()):
        assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()
    with pytest.raises(ValueError, match="memory_format='nhwc'"):
        fit(LeNet5(), tiny.train, epochs=1, memory_format="nhwc")


def test_fit_returns_nchw_after_an_error_and_for_torch_pruned_layers(tiny):
    """An exception inside training leaves the model in NCHW; a layer pruned with torch.nn.utils.prune
    (whose `weight` is recomputed by a hook) also reads back in NCHW; layer-wise pruning inside the loop
    works on NHWC weights."""
    from torch.nn.utils import prune as tprune

    from course_lib import pruning
    m = LeNet5(c1=4, c2=6, fc=16)

    def boom(mod):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(m, tiny.train, epochs=1, progress=False, after_step=boom)
    assert all(p.is_contiguous() for p in m.parameters())
    tprune.l1_unstructured(m.conv2, "weight", amount=0.5)
    fit(m, tiny.train, epochs=1, progress=False)
    assert m.conv2.weight.is_contiguous() and m.conv2.weight.view(6, -1).shape == (6, 4 * 25)
    m2 = LeNet5(c1=4, c2=6, fc=16)
    gp = pruning.GradualPruner(0.5, 4, frequency=1, scope="layer")
    fit(m2, tiny.train, epochs=1, progress=False, after_step=gp)
    assert abs(float((m2.conv2.weight == 0).float().mean()) - 0.5) < 0.01


def test_progress_bar_is_text_in_a_terminal_and_off_under_test(monkeypatch, capsys):
    """tqdm.auto: a text bar outside Jupyter (the widget case is run in a kernel by tests/test_scripts.py)."""
    import tqdm.notebook
    from course_lib.training import progress_bar
    monkeypatch.setenv("COURSE_PROGRESS", "0")
    assert progress_bar(range(2)).disable
    bar = progress_bar(range(2), desc="epochs", progress=True)
    assert not bar.disable and not isinstance(bar, tqdm.notebook.tqdm)
    list(bar)
    assert "epochs" in capsys.readouterr().err


def test_load_baseline_on_a_subset_trains_on_those_rows_only_and_caches_them_apart(tmp_path, monkeypatch, tiny):
    """Chapter 4's teacher that never saw half B: trained on half A only, cached under its own key."""
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    monkeypatch.setitem(training.BASELINE_RECIPE, "epochs", 1)
    half = torch.arange(0, len(tiny.train), 2)
    m, info = load_baseline("mnist5k", seed=0, splits=tiny, progress=False, train_indices=half)
    assert info["cached"] is False and "train_subset" in info["recipe"]
    # the same as training the baseline recipe by hand on those rows
    x, y = tiny.train.tensors
    sub = dataclasses.replace(tiny, train=torch.utils.data.TensorDataset(x[half], y[half]))
    ref, _ = training.train_baseline(sub, seed=0, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), ref.state_dict().values()))
    full, info_full = load_baseline("mnist5k", seed=0, splits=tiny, progress=False)
    assert info_full["cached"] is False and len(list(tmp_path.glob("*.pt"))) == 2
    _, again = load_baseline("mnist5k", seed=0, splits=tiny, train_indices=half)
    assert again["cached"] is True
    for bad in (torch.tensor([0, 0]), torch.tensor([len(tiny.train)]), torch.tensor([], dtype=torch.long)):
        with pytest.raises(ValueError, match="train_indices"):
            load_baseline("mnist5k", seed=0, splits=tiny, train_indices=bad)


# ---------------------------------------------------------------- the trained weights the course ships
def _shipped_infos():
    return {p.stem: json.loads(p.read_text()) for p in sorted(training.SHIPPED_DIR.glob("*.json"))}


def test_every_shipped_model_is_checksummed_loads_strictly_and_is_keyed_by_the_current_recipe():
    infos = _shipped_infos()
    assert len(infos) >= 10, f"data/trained ships {len(infos)} models; run scripts/ship_trained.py"
    listed = (training.SHIPPED_DIR / "SHA256SUMS").read_text().split()[1::2]
    assert sorted(listed) == sorted([f"{k}.json" for k in infos] + [f"{k}.safetensors" for k in infos])
    for key, info in infos.items():
        if key.startswith("recipe_"):
            # chapter 5's prunings and latency models: the key is the hash of the recorded call (recipe, its
            # arguments, fingerprints of input and data), and the recipe constants it read are today's
            from course_lib import recipes
            r = info["recipe"]
            assert key == f"{info['name']}_{training.fingerprint({k: info[k] for k in ('recipe', 'input', 'data')})[:12]}"
            assert info["name"] == f"recipe_mnist5k_{r['fn']}" and r["fn"] in ("deep_compression_prune", "latency_model")
            if r["fn"] == "latency_model":
                # the distilled candidates of chapter 5's validation sweep at every width of its grid; the
                # controls (labels only, or from scratch) only at the chosen width
                control = r["args"]["alpha"] == 0.0 or r["args"]["scratch"]
                widths = [recipes.LATENCY_RATIO] if control else \
                    [recipes.latency_ratio(c) for c in recipes.LATENCY_CONV1_GRID]
                assert r["args"]["ratio"] in widths, key
            assert r["constants"] == recipes.RECIPE_CONSTANTS[r["fn"]](), key
            assert info["input"] == training.fingerprint(load_baseline("mnist5k", 0)[0]), key  # the seed-0 baseline
            build = lambda i: LeNet5(**i["config"])  # noqa: E731
        elif key.startswith("student_"):
            # chapter 4's students: the key is the hash of the recorded recipe and initial weights, and the
            # recipe is today's (STUDENT_FIT; KD, whose temperature and alpha section 7 sweeps, or label smoothing)
            from course_lib import recipes
            r = info["recipe"]
            assert key == f"{info['name']}_{training.fingerprint({'recipe': r, 'init': info['init']})[:12]}"
            assert info["name"] == f"student_mnist5k_{r['method']}" and r["fit"] == recipes.STUDENT_FIT, key
            if r["method"] == "kd":
                assert set(r["kd"]) <= {"temperature", "alpha", "hint_weight"} and \
                    ("hint" in r) == ("hint_weight" in r["kd"]), key
            elif r["method"] == "label-smoothing":
                assert r["smoothing"] == recipes.LABEL_SMOOTHING, key
            build = lambda i: LeNet5(**i["config"])  # noqa: E731
        else:
            recipe = info["recipe"]
            # the key is the cache's hash of the recipe it was trained with, and that recipe is today's
            # BASELINE_RECIPE with only the overrides load_baseline allows: a changed recipe is never loaded
            assert training._recipe_key(info["dataset"], info["seed"], recipe) == key
            assert {k: v for k, v in recipe.items() if k in training.BASELINE_RECIPE and k != "epochs"} == \
                {k: v for k, v in training.BASELINE_RECIPE.items() if k != "epochs"}, key
            assert set(recipe) - set(training.BASELINE_RECIPE) <= {"model_kw", "splits", "train_subset"}, key
            build = lambda i: training.build_model(i["recipe"]["model"], (1, 28, 28), 10,  # noqa: E731
                                                   **i["recipe"].get("model_kw", {}))
        model, got = training.read_shipped(key, build)  # checksums verified, strict load
        assert got["shipped"] is True and got["cached"] is True
        assert all(torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point())
    # the course's own baseline (seed 0, today's recipe) is among them: a recipe change fails here until
    # the weights are shipped again
    assert training._recipe_key("mnist5k", 0, dict(training.BASELINE_RECIPE)) in infos


def test_load_baseline_loads_a_shipped_model_without_training_or_writing(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    model, info = load_baseline("mnist5k", seed=0)
    assert info["shipped"] is True and info["cached"] is True and isinstance(model, LeNet5)
    assert list(tmp_path.iterdir()) == []
    assert len(info["history"]["train_loss"]) == training.BASELINE_RECIPE["epochs"]
    monkeypatch.setenv("COURSE_SHIPPED_WEIGHTS", "0")
    key = training._recipe_key("mnist5k", 0, dict(training.BASELINE_RECIPE))
    assert training.read_shipped(key, lambda i: model) is None
    monkeypatch.setenv("COURSE_SHIPPED_WEIGHTS", "maybe")
    with pytest.raises(ValueError, match=r"COURSE_SHIPPED_WEIGHTS='maybe' is not valid"):
        load_baseline("mnist5k", seed=0)


def test_a_changed_shipped_file_is_refused_with_its_name(tmp_path):
    key = training._recipe_key("mnist5k", 0, dict(training.BASELINE_RECIPE))
    for suffix in (".safetensors", ".json"):
        (tmp_path / f"{key}{suffix}").write_bytes((training.SHIPPED_DIR / f"{key}{suffix}").read_bytes())
    sums = [line for line in (training.SHIPPED_DIR / "SHA256SUMS").read_text().splitlines() if key in line]
    (tmp_path / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    build = lambda i: LeNet5()  # noqa: E731
    assert training.read_shipped(key, build, folder=tmp_path)[1]["shipped"] is True
    data = bytearray((tmp_path / f"{key}.safetensors").read_bytes())
    data[-1] ^= 1
    (tmp_path / f"{key}.safetensors").write_bytes(bytes(data))
    with pytest.raises(ValueError, match=rf"checksum mismatch for .*{key}\.safetensors"):
        training.read_shipped(key, build, folder=tmp_path)
    (tmp_path / "SHA256SUMS").write_text("")
    with pytest.raises(ValueError, match="does not list"):
        training.read_shipped(key, build, folder=tmp_path)


def test_a_shipped_control_is_what_its_recipe_trains_here():
    """Retrain the cheapest shipped model on the whole dataset from its recipe and seed: on the machine that
    shipped it the weights come out the same bit for bit; on another CPU floats may differ, so the check is
    on behaviour: validation accuracy within 1 point and the same test prediction for >= 97% of images."""
    infos = {k: i for k, i in _shipped_infos().items()
             if k.startswith("baseline_mnist5k_") and not {"splits", "train_subset"} & set(i["recipe"])}
    key = min(infos, key=lambda k: (training.SHIPPED_DIR / f"{k}.safetensors").stat().st_size)
    info = infos[key]
    splits = load_dataset("mnist5k")
    shipped, _ = training.read_shipped(key, lambda i: training.build_model(
        i["recipe"]["model"], splits.input_shape, splits.num_classes, **i["recipe"].get("model_kw", {})))
    retrained, _ = training.train_baseline(splits, info["seed"], info["recipe"], progress=False)
    assert abs(evaluate(retrained, splits.val) - evaluate(shipped, splits.val)) <= 0.01
    agree = (predict(retrained, splits.test) == predict(shipped, splits.test)).float().mean().item()
    assert agree >= 0.97, f"{key}: retrained and shipped agree on {agree:.1%} of the test images"


def test_a_first_run_that_trains_and_a_later_one_that_loads_leave_the_same_random_state(tmp_path, monkeypatch, tiny):
    import random

    import numpy as np
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    monkeypatch.setitem(training.BASELINE_RECIPE, "epochs", 1)

    def draws():
        return random.random(), float(np.random.rand()), torch.rand(3).tolist()

    seed_everything(123)
    untouched = draws()
    for expect_cached in (False, True):  # trained (first run), then loaded (a later run): neither moves it
        seed_everything(123)
        _, info = load_baseline("mnist5k", seed=0, splits=tiny, progress=False)
        assert info["cached"] is expect_cached and draws() == untouched


def test_fingerprint_sees_values_shapes_and_dtypes():
    from course_lib.training import fingerprint
    t = torch.arange(6.0)
    assert fingerprint(t) == fingerprint(t.clone()) != fingerprint(t.reshape(2, 3))
    assert fingerprint(t) != fingerprint(t.double()) and fingerprint(t) != fingerprint(t + 1e-6)
    ds = torch.utils.data.TensorDataset(t.reshape(3, 2), torch.arange(3))
    assert fingerprint(ds) == fingerprint((t.reshape(3, 2), torch.arange(3)))
    m = LeNet5(c1=2, c2=3, fc=8)
    m2 = LeNet5(c1=2, c2=3, fc=8)
    m2.load_state_dict(m.state_dict())
    assert fingerprint(m) == fingerprint(m2)
    with torch.no_grad():
        m2.fc2.bias[0] += 1
    assert fingerprint(m) != fingerprint(m2)
    assert fingerprint({"a": 1, "b": [2, 3]}) == fingerprint({"b": [2, 3], "a": 1}) != fingerprint({"a": 1})
    with pytest.raises(TypeError, match="cannot fingerprint a object"):
        fingerprint(object())
    import numpy as np
    with pytest.raises(TypeError, match=r"cannot fingerprint a int64 \(7\)"):  # named, inside a dict
        fingerprint({"seed": np.int64(7)})


def test_cached_training_checks_its_name_and_caches_under_it(tmp_path):
    from course_lib.training import cached_training
    calls = []

    def train(m):
        calls.append(1)
        with torch.no_grad():
            m.fc2.bias.fill_(0.5)

    for bad in ("", "a b", "../x", 3):
        with pytest.raises(ValueError, match="name = .* is not valid"):
            cached_training(bad, LeNet5(c1=2, c2=3, fc=8), train, {}, cache=tmp_path)
    torch.manual_seed(0)
    m = LeNet5(c1=2, c2=3, fc=8)
    init = {k: v.clone() for k, v in m.state_dict().items()}
    info = cached_training("toy", m, train, {"lr": 1}, cache=tmp_path)
    assert calls == [1] and info["cached"] is False and info["history"] is None
    again = LeNet5(c1=2, c2=3, fc=8)
    again.load_state_dict(init)
    got = cached_training("toy", again, train, {"lr": 1}, cache=tmp_path)
    assert calls == [1] and got["cached"] is True and torch.equal(again.fc2.bias, torch.full((10,), 0.5))
    other = LeNet5(c1=2, c2=3, fc=8)
    other.load_state_dict(init)
    cached_training("toy", other, train, {"lr": 2}, cache=tmp_path)  # another recipe: trained again
    assert calls == [1, 1]
    with pytest.raises(TypeError, match="cannot fingerprint"):
        cached_training("toy", other, train, {"lr": object()}, cache=tmp_path)


def test_a_shipped_student_is_what_its_call_trains_here(tmp_path, monkeypatch):
    """Chapter 4's cheapest shipped scratch student, trained again by the same call: the notebook's
    construction gives the recorded initial weights, the call gives the shipped key, and the result behaves
    like the shipped one (bit for bit on the machine that shipped it; another CPU rounds differently, so the
    check is on behaviour: validation accuracy within 1 point, the same prediction on >= 95% of test images)."""
    from course_lib import recipes
    splits = load_dataset("mnist5k")
    data = training.fingerprint(splits.train)
    infos = {k: i for k, i in _shipped_infos().items()
             if k.startswith("student_mnist5k_scratch_") and i["recipe"]["data"] == data}
    assert infos, "data/trained ships no scratch student of chapter 4: run scripts/ship_trained.py"
    key = min(infos, key=lambda k: infos[k]["recipe"]["epochs"])
    info, r = infos[key], infos[key]["recipe"]
    training.seed_everything(r["seed"])
    student = LeNet5(**info["config"])
    assert training.fingerprint(student) == info["init"]
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    monkeypatch.setenv("COURSE_SHIPPED_WEIGHTS", "0")
    got = recipes.cached_student("scratch", student, splits.train, epochs=r["epochs"], seed=r["seed"])
    assert got["key"] == key and got["cached"] is False
    monkeypatch.setenv("COURSE_SHIPPED_WEIGHTS", "1")
    shipped, _ = training.read_shipped(key, lambda i: LeNet5(**i["config"]))
    assert abs(evaluate(student, splits.val) - evaluate(shipped, splits.val)) <= 0.01
    agree = (predict(student, splits.test) == predict(shipped, splits.test)).float().mean().item()
    assert agree >= 0.95, f"{key}: retrained and shipped agree on {agree:.1%} of the test images"
