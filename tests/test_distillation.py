"""Tests of course_lib.distillation: the KD loss against its formula, hints, the training loop."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from course_lib.distillation import (FeatureHint, TeacherCache, choose_bias_shift, choose_budget, distill,
                                     drop_classes, evaluate_runs, hint_loss, kd_loss, labelled_subset,
                                     over_seeds, pseudo_label_dataset, shift_class_bias, soften,
                                     stratified_halves, teacher_probabilities)
from course_lib.models import LeNet5, MLP
from course_lib.training import evaluate, fit, seed_everything


def _np_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def reference_kd(s, t, y, T, alpha):
    """The formula written out in NumPy float64, one example at a time."""
    s, t, y = s.numpy(), t.numpy(), y.numpy()
    p_s, p_t, p_1 = _np_softmax(s / T), _np_softmax(t / T), _np_softmax(s)
    kl = [sum(p_t[i, c] * math.log(p_t[i, c] / p_s[i, c]) for c in range(s.shape[1])) for i in range(len(s))]
    ce = [-math.log(p_1[i, y[i]]) for i in range(len(s))]
    return alpha * T * T * np.mean(kl) + (1 - alpha) * np.mean(ce)


def _logits(n=16, c=10, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, c, generator=g, dtype=torch.float64) * scale
    t = torch.randn(n, c, generator=g, dtype=torch.float64) * scale
    y = torch.randint(0, c, (n,), generator=g)
    return s, t, y


# ---------------------------------------------------------------- soften
def test_soften_is_softmax_of_scaled_logits():
    s, _, _ = _logits()
    for T in (0.5, 1.0, 4.0):
        torch.testing.assert_close(soften(s, T), torch.softmax(s / T, dim=1))
    torch.testing.assert_close(soften(s, 4.0).sum(1), torch.ones(len(s), dtype=torch.float64))


def test_soften_flattens_with_temperature():
    s, _, _ = _logits()
    ent = [-(soften(s, T) * soften(s, T).log()).sum(1).mean().item() for T in (1, 2, 4, 8, 1e6)]
    assert all(a < b for a, b in zip(ent, ent[1:]))
    assert ent[-1] == pytest.approx(math.log(10), rel=1e-6)


@pytest.mark.parametrize("T", [0, -1.0, float("nan"), float("inf"), True])
def test_soften_rejects_bad_temperature(T):
    with pytest.raises(ValueError, match="temperature"):
        soften(torch.zeros(2, 3), T)


# ---------------------------------------------------------------- kd_loss
@pytest.mark.parametrize("T,alpha", [(1.0, 0.5), (4.0, 0.9), (2.5, 0.0), (8.0, 1.0), (0.5, 0.3)])
def test_kd_loss_matches_formula(T, alpha):
    s, t, y = _logits(seed=int(T * 10))
    got = kd_loss(s, t, y, T, alpha)
    assert got.dtype == torch.float64 and got.shape == ()
    assert got.item() == pytest.approx(reference_kd(s, t, y, T, alpha), rel=1e-10, abs=1e-12)


def test_kd_loss_matches_torch_kl_div():
    s, t, y = _logits(seed=3)
    T, alpha = 3.0, 0.7
    ref = alpha * T * T * F.kl_div(F.log_softmax(s / T, 1), F.log_softmax(t / T, 1), reduction="batchmean",
                                   log_target=True) + (1 - alpha) * F.cross_entropy(s, y)
    torch.testing.assert_close(kd_loss(s, t, y, T, alpha), ref)


def test_kd_loss_zero_for_identical_logits_alpha_one():
    s, _, y = _logits()
    for T in (0.5, 1.0, 4.0, 20.0):
        assert kd_loss(s, s.clone(), y, T, 1.0).item() == pytest.approx(0.0, abs=1e-12)
        assert kd_loss(s, s.clone(), None, T, 1.0).item() == pytest.approx(0.0, abs=1e-12)


def test_kd_loss_alpha_zero_is_cross_entropy():
    s, t, y = _logits()
    torch.testing.assert_close(kd_loss(s, t, y, 4.0, 0.0), F.cross_entropy(s, y))


def test_kd_loss_gradient_is_T_times_probability_difference():
    """d/ds of alpha T^2 KL + (1-alpha) CE = alpha T (q_T - p_T)/N + (1-alpha)(q_1 - onehot)/N."""
    s, t, y = _logits(seed=5)
    for T, alpha in ((1.0, 1.0), (4.0, 0.9), (10.0, 0.5)):
        s_ = s.clone().requires_grad_(True)
        kd_loss(s_, t, y, T, alpha).backward()
        n = len(s)
        want = alpha * T * (torch.softmax(s / T, 1) - torch.softmax(t / T, 1)) / n \
            + (1 - alpha) * (torch.softmax(s, 1) - F.one_hot(y, 10).double()) / n
        torch.testing.assert_close(s_.grad, want)


def test_kd_loss_gradient_does_not_vanish_at_high_temperature():
    """Thanks to T^2, for large T the soft gradient tends to ((s - mean s) - (t - mean t)) / (C N)."""
    s, t, _ = _logits(seed=6, scale=1.0)
    n, c = s.shape
    limit = ((s - s.mean(1, keepdim=True)) - (t - t.mean(1, keepdim=True))) / (c * n)
    norms = []
    for T in (10.0, 100.0, 1000.0):
        s_ = s.clone().requires_grad_(True)
        kd_loss(s_, t, None, T, 1.0).backward()
        norms.append(s_.grad.norm().item())
        if T == 1000.0:
            torch.testing.assert_close(s_.grad, limit, rtol=1e-2, atol=1e-6)
    assert norms[1] / norms[0] == pytest.approx(1.0, rel=0.1)
    assert norms[2] / norms[1] == pytest.approx(1.0, rel=0.01)
    # without the T^2 factor the gradient would shrink 100x from T=10 to T=100
    s_ = s.clone().requires_grad_(True)
    (kd_loss(s_, t, None, 100.0, 1.0) / 100.0 ** 2).backward()
    assert s_.grad.norm().item() < norms[0] / 50


def test_kd_loss_teacher_gets_no_gradient():
    s, t, y = _logits()
    t_ = t.clone().requires_grad_(True)
    s_ = s.clone().requires_grad_(True)
    kd_loss(s_, t_, y, 4.0, 0.9).backward()
    assert t_.grad is None and s_.grad is not None


def test_kd_loss_ignores_unlabelled_examples_in_ce():
    s, t, y = _logits()
    y2 = y.clone()
    y2[::2] = -100
    T, alpha = 2.0, 0.6
    want = alpha * kd_loss(s, t, None, T, 1.0) + (1 - alpha) * F.cross_entropy(s[1::2], y[1::2])
    torch.testing.assert_close(kd_loss(s, t, y2, T, alpha), want)
    y2[:] = -100  # no label at all: soft term only
    torch.testing.assert_close(kd_loss(s, t, y2, T, alpha), alpha * kd_loss(s, t, None, T, 1.0))


@settings(max_examples=40, deadline=None)
@given(T=st.floats(0.2, 50.0), alpha=st.floats(0.0, 1.0), shift=st.floats(-20, 20), seed=st.integers(0, 10_000))
def test_kd_loss_properties(T, alpha, shift, seed):
    s, t, y = _logits(n=8, c=5, seed=seed)
    loss = kd_loss(s, t, y, T, alpha).item()
    assert loss >= -1e-12  # KL >= 0 and CE >= 0
    # softmax is invariant to adding a constant to all logits of an example
    assert kd_loss(s + shift, t - shift, y, T, alpha).item() == pytest.approx(loss, rel=1e-9, abs=1e-9)
    assert kd_loss(s, t, y, T, 1.0).item() >= -1e-12


@pytest.mark.parametrize("T", [0, 0.0, -2.0, float("nan"), "4"])
def test_kd_loss_rejects_bad_temperature(T):
    s, t, y = _logits()
    with pytest.raises(ValueError, match=r"temperature=.* \(0, inf\)"):
        kd_loss(s, t, y, T, 0.5)


@pytest.mark.parametrize("alpha", [-0.1, 1.01, 2, float("nan")])
def test_kd_loss_rejects_bad_alpha(alpha):
    s, t, y = _logits()
    with pytest.raises(ValueError, match=r"alpha=.*\[0, 1\]"):
        kd_loss(s, t, y, 4.0, alpha)


def test_kd_loss_rejects_mismatched_shapes():
    s, t, y = _logits()
    with pytest.raises(ValueError, match="must be equal"):
        kd_loss(s, t[:, :9], y, 4.0, 0.5)
    with pytest.raises(ValueError, match="must be equal"):
        kd_loss(s, t[:8], y, 4.0, 0.5)
    with pytest.raises(ValueError, match="2-D"):
        kd_loss(s[0], t[0], y, 4.0, 0.5)
    with pytest.raises(ValueError, match="labels must be a tensor of shape"):
        kd_loss(s, t, y[:5], 4.0, 0.5)
    with pytest.raises(ValueError, match="labels=None"):
        kd_loss(s, t, None, 4.0, 0.5)


# ---------------------------------------------------------------- hints
def test_hint_loss_is_mse_and_checks_shapes():
    a, b = torch.randn(4, 3, 5, 5), torch.randn(4, 3, 5, 5)
    torch.testing.assert_close(hint_loss(a, b), ((a - b) ** 2).mean())
    with pytest.raises(ValueError, match="same shape"):
        hint_loss(a, b[:, :2])


def test_feature_hint_conv_and_linear():
    seed_everything(0)
    teacher, student = LeNet5(c1=6, c2=8, fc=12), LeNet5(c1=2, c2=3, fc=4)
    hint = FeatureHint(student, teacher, "conv2", "conv2", (1, 28, 28))
    assert isinstance(hint.regressor, torch.nn.Conv2d)
    assert hint.regressor.in_channels == 3 and hint.regressor.out_channels == 8
    with pytest.raises(RuntimeError, match="forward"):
        hint.loss()
    x = torch.randn(5, 1, 28, 28)
    student(x), teacher(x)
    loss = hint.loss()
    # the regressed student conv2 output against the teacher's conv2 output, by MSE
    want = F.mse_loss(hint.regressor(student.conv2(F.max_pool2d(F.relu(student.conv1(x)), 2))),
                      teacher.conv2(F.max_pool2d(F.relu(teacher.conv1(x)), 2)))
    assert loss.shape == () and torch.allclose(loss, want)
    loss.backward()
    assert student.conv2.weight.grad is not None and hint.regressor.weight.grad is not None
    hint.remove()
    student(x)
    assert hint._feats == {}
    h2 = FeatureHint(student, teacher, "fc1", "fc1", (1, 28, 28))
    assert isinstance(h2.regressor, torch.nn.Linear) and h2.regressor.weight.shape == (12, 4)
    h2.remove()


def test_feature_hint_rejects_bad_layers():
    teacher, student = LeNet5(c1=6, c2=8, fc=12), LeNet5(c1=2, c2=3, fc=4)
    with pytest.raises(ValueError, match="student_layer='nope'"):
        FeatureHint(student, teacher, "nope", "conv2", (1, 28, 28))
    with pytest.raises(ValueError, match="teacher_layer='nope'"):
        FeatureHint(student, teacher, "conv2", "nope", (1, 28, 28))
    with pytest.raises(ValueError, match="cannot hint"):
        FeatureHint(student, teacher, "conv1", "conv2", (1, 28, 28))  # 24x24 vs 8x8


# ---------------------------------------------------------------- distill
def _tiny_data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return x, y


def _twin_students(seed):
    """Two MLP students with identical initial weights."""
    seed_everything(seed)
    a, b = MLP(hidden=(8,)), MLP(hidden=(8,))
    b.load_state_dict(a.state_dict())
    return a, b


def test_distill_alpha_zero_equals_fit():
    x, y = _tiny_data()
    teacher = LeNet5(c1=4, c2=6, fc=16)
    a, b = _twin_students(1)
    fit(a, (x, y), epochs=2, batch_size=16, seed=3, progress=False, augment=1)
    distill(teacher, b, (x, y), epochs=2, alpha=0.0, batch_size=16, seed=3, progress=False, augment=1)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q)


def test_distill_moves_student_towards_teacher_and_leaves_teacher_alone():
    x, y = _tiny_data(128)
    seed_everything(0)
    teacher = LeNet5(c1=4, c2=6, fc=16)
    teacher.train()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = MLP(hidden=(16,))
    with torch.no_grad():
        t_logits = teacher.eval()(x)
    teacher.train()
    gap0 = kd_loss(student(x), t_logits, None, 2.0, 1.0).item()
    hist = distill(teacher, student, (x, y), (x, y), epochs=5, temperature=2.0, alpha=1.0, lr=5e-3,
                   batch_size=32, progress=False)
    assert len(hist.train_loss) == 5 and len(hist.val_acc) == 5
    with torch.no_grad():
        gap1 = kd_loss(student(x), t_logits, None, 2.0, 1.0).item()
    assert gap1 < 0.5 * gap0
    assert teacher.training  # mode restored
    for k, v in teacher.state_dict().items():
        torch.testing.assert_close(v, before[k])


def test_distill_with_hint_trains_regressor():
    x, y = _tiny_data()
    seed_everything(0)
    teacher, student = LeNet5(c1=4, c2=6, fc=16), LeNet5(c1=2, c2=3, fc=8)
    hint = FeatureHint(student, teacher, "conv2", "conv2", (1, 28, 28))
    w0 = hint.regressor.weight.clone()
    distill(teacher, student, (x, y), epochs=1, hint=hint, hint_weight=0.5, batch_size=32, progress=False)
    assert not torch.equal(w0, hint.regressor.weight)
    hint.remove()


def test_distill_rejects_bad_arguments():
    x, y = _tiny_data(8)
    t, s = MLP(hidden=(4,)), MLP(hidden=(4,))
    with pytest.raises(ValueError, match="temperature"):
        distill(t, s, (x, y), epochs=1, temperature=0)
    with pytest.raises(ValueError, match="alpha"):
        distill(t, s, (x, y), epochs=1, alpha=1.5)
    with pytest.raises(ValueError, match="hint_weight"):
        distill(t, s, (x, y), epochs=1, hint_weight=-1.0)


# ---------------------------------------------------------------- helpers
def test_teacher_probabilities():
    x, _ = _tiny_data(6)
    teacher = LeNet5(c1=4, c2=6, fc=16).train()
    probs = teacher_probabilities(teacher, x, temperatures=(1, 4))
    assert set(probs) == {1, 4} and probs[1].shape == (6, 10)
    torch.testing.assert_close(probs[4].sum(1), torch.ones(6))
    assert teacher.training
    assert probs[4].max(1).values.mean() <= probs[1].max(1).values.mean()


def test_labelled_subset():
    y = torch.arange(10).repeat(30)
    idx = labelled_subset(y, 7, seed=2)
    assert len(idx) == 70 and torch.equal(idx, torch.sort(idx).values)
    assert torch.bincount(y[idx]).tolist() == [7] * 10
    assert torch.equal(idx, labelled_subset(y, 7, seed=2))
    assert not torch.equal(idx, labelled_subset(y, 7, seed=3))
    with pytest.raises(ValueError, match="per_class"):
        labelled_subset(y, 0)
    with pytest.raises(ValueError, match="only 30"):
        labelled_subset(y, 31)


def test_pseudo_label_dataset():
    x, y = _tiny_data(20)
    idx = torch.tensor([0, 3, 7])
    ds = pseudo_label_dataset(x, y, idx)
    new_y = ds.tensors[1]
    assert torch.equal(new_y[idx], y[idx])
    mask = torch.ones(20, dtype=torch.bool)
    mask[idx] = False
    assert (new_y[mask] == -100).all()
    teacher = LeNet5(c1=4, c2=6, fc=16)
    ds2 = pseudo_label_dataset(x, y, idx, teacher=teacher)
    with torch.no_grad():
        pred = teacher.eval()(x).argmax(1)
    assert torch.equal(ds2.tensors[1][mask], pred[mask]) and torch.equal(ds2.tensors[1][idx], y[idx])
    with pytest.raises(ValueError, match="labelled indices"):
        pseudo_label_dataset(x, y, torch.tensor([25]))
    with pytest.raises(ValueError, match="examples"):
        pseudo_label_dataset(x, y[:5], idx)


def test_teacher_cache_returns_teacher_logits_and_counts_hits():
    x, _ = _tiny_data(10)
    teacher = LeNet5(c1=4, c2=6, fc=16).eval()
    cache = TeacherCache(teacher)
    with torch.no_grad():
        want = teacher(x)
    torch.testing.assert_close(cache(x[:6]), want[:6])
    assert (cache.hits, cache.misses, len(cache)) == (0, 6, 6)
    got = cache(x[3:])
    torch.testing.assert_close(got, want[3:])
    assert (cache.hits, cache.misses, len(cache)) == (3, 10, 10)
    assert not got.requires_grad


def test_distill_with_cache_equals_plain_teacher():
    x, y = _tiny_data()
    teacher = LeNet5(c1=4, c2=6, fc=16)
    a, b = _twin_students(2)
    kw = dict(epochs=2, batch_size=16, seed=1, progress=False, augment=1, temperature=3.0, alpha=0.7)
    distill(teacher, a, (x, y), **kw)
    distill(TeacherCache(teacher), b, (x, y), **kw)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)


def test_over_seeds_mean_std_and_reproducible():
    x, y = _tiny_data(32)

    def train(m, s):
        fit(m, (x, y), epochs=1, batch_size=16, seed=s, progress=False)

    r = over_seeds(lambda: MLP(hidden=(4,)), train, [0, 1, 2], (x, y))
    assert r["seeds"] == [0, 1, 2] and len(r["accs"]) == 3
    assert r["mean"] == pytest.approx(np.mean(r["accs"]))
    assert r["std"] == pytest.approx(np.std(r["accs"], ddof=1))
    assert over_seeds(lambda: MLP(hidden=(4,)), train, [0, 1, 2], (x, y))["accs"] == r["accs"]
    assert over_seeds(lambda: MLP(hidden=(4,)), train, [5], (x, y))["std"] == 0.0
    assert len(r["models"]) == 3 and r["model"] is r["models"][-1]
    # each kept model is the one its seed trained: re-evaluating it gives that seed's accuracy
    assert [float(evaluate(m, (x, y))) for m in r["models"]] == r["accs"]
    with pytest.raises(ValueError, match="seeds"):
        over_seeds(lambda: MLP(hidden=(4,)), train, [], (x, y))


# (plots.soft_targets, formerly plot_soft_targets, is tested in test_plots.py)


# ---------------------------------------------------------------- chapter 4: protocol, controls, omitted class
def test_evaluate_runs_is_over_seeds_on_another_split():
    x, y = _tiny_data(48)
    xv, yv = _tiny_data(40, seed=3)

    def train(m, s):
        fit(m, (x, y), epochs=1, batch_size=16, seed=s, progress=False)

    r = over_seeds(lambda: MLP(hidden=(4,)), train, [0, 1], (x, y))
    v = evaluate_runs(r["models"], r["seeds"], (xv, yv))
    assert v["accs"] == [float(evaluate(m, (xv, yv))) for m in r["models"]]
    assert v["correct"].shape == (2, 40) and v["correct"].dtype == torch.bool
    assert v["correct"].float().mean(1).tolist() == pytest.approx(v["accs"])
    assert r["correct"].shape == (2, 48) and r["correct"].float().mean(1).tolist() == pytest.approx(r["accs"])
    with pytest.raises(ValueError, match="one trained model per seed"):
        evaluate_runs(r["models"], [0], (xv, yv))


def test_choose_budget_favours_no_method_and_breaks_ties_to_the_shorter():
    # kd's best is 40, scratch's best is 10; the rule averages both methods
    curves = {"scratch": {10: [0.97, 0.97], 20: [0.96, 0.96], 40: [0.95, 0.95]},
              "kd": {10: [0.95, 0.95], 20: [0.965, 0.965], 40: [0.98, 0.98]}}
    # means over methods: 10 -> 0.96, 20 -> 0.9625, 40 -> 0.965
    assert choose_budget(curves) == 40
    tie = {"a": {5: [0.9], 10: [0.9]}, "b": {5: [0.8], 10: [0.8]}}
    assert choose_budget(tie) == 5
    assert choose_budget({"a": {3: [0.5, 0.7], 6: [0.6, 0.59]}}) == 3  # mean 0.6 vs 0.595
    with pytest.raises(ValueError, match="same budgets"):
        choose_budget({"a": {5: [0.9]}, "b": {10: [0.9]}})
    with pytest.raises(ValueError, match="empty"):
        choose_budget({})
    with pytest.raises(ValueError, match="epochs"):
        choose_budget({"a": {0: [0.9]}})


def test_stratified_halves_are_disjoint_balanced_and_seeded():
    y = torch.tensor([0] * 10 + [1] * 7 + [2] * 4)
    a, b = stratified_halves(y, seed=0)
    assert set(a.tolist()).isdisjoint(b.tolist()) and sorted(a.tolist() + b.tolist()) == list(range(len(y)))
    for c, n in ((0, 10), (1, 7), (2, 4)):
        na, nb = int((y[a] == c).sum()), int((y[b] == c).sum())
        assert na + nb == n and abs(na - nb) <= 1
    a2, _ = stratified_halves(y, seed=0)
    a3, _ = stratified_halves(y, seed=1)
    assert torch.equal(a, a2) and not torch.equal(a, a3)
    with pytest.raises(ValueError, match="labels"):
        stratified_halves([0, 1, 1])


def test_drop_classes_removes_only_those_labels():
    x = torch.arange(8.0).reshape(8, 1)
    y = torch.tensor([0, 3, 1, 3, 2, 0, 3, 1])
    d = drop_classes(torch.utils.data.TensorDataset(x, y), [3])
    assert d.tensors[1].tolist() == [0, 1, 2, 0, 1] and d.tensors[0].flatten().tolist() == [0, 2, 4, 5, 7]
    with pytest.raises(ValueError, match="classes"):
        drop_classes(torch.utils.data.TensorDataset(x, y), [9])


def test_bias_shift_raises_one_logit_and_is_chosen_on_the_given_split():
    torch.manual_seed(0)
    m = MLP(hidden=(8,)).eval()
    x, _ = _tiny_data(64)
    with torch.no_grad():
        z = m(x)
    shifted = shift_class_bias(m, 3, 2.5)
    with torch.no_grad():
        z2 = shifted(x)
    assert torch.allclose(z2[:, 3], z[:, 3] + 2.5) and torch.equal(torch.cat([z2[:, :3], z2[:, 4:]], 1),
                                                                  torch.cat([z[:, :3], z[:, 4:]], 1))
    assert torch.equal(m(x), z)  # the original is untouched
    # labels that say "3" wherever raising the 3 logit by about 1.5 would make it the argmax:
    # the chosen raise is the smallest grid value that makes all of them right
    gap = z.max(1).values - z[:, 3]
    y = torch.where(gap < 1.4, torch.full_like(gap, 3, dtype=torch.long), z.argmax(1))
    best, accs = choose_bias_shift(m, (x, y), 3, shifts=[0, 0.5, 1.0, 1.5, 2.0, 5.0])
    assert accs[best] == max(accs.values())
    assert accs[0] < 1.0 or (gap < 1.4).sum() == 0
    assert best == min(s for s in accs if accs[s] == max(accs.values()))
    with pytest.raises(ValueError, match="cls"):
        shift_class_bias(m, 10, 1.0)


def test_smoothed_student_is_scratch_with_soft_labels():
    from course_lib import recipes
    from course_lib.data import load_dataset
    tiny = load_dataset("mnist5k", limit=128)
    a, b, c = (LeNet5(c1=2, c2=3, fc=8) for _ in range(3))
    b.load_state_dict(a.state_dict())
    c.load_state_dict(a.state_dict())
    ha = recipes.scratch_student(a, tiny.train, epochs=1, progress=False)
    hb = recipes.smoothed_student(b, tiny.train, epochs=1, smoothing=0.0, progress=False)
    assert ha.lr == hb.lr and all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    recipes.smoothed_student(c, tiny.train, epochs=1, smoothing=0.1, progress=False)
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))
    with pytest.raises(ValueError, match="smoothing"):
        recipes.smoothed_student(c, tiny.train, epochs=1, smoothing=1.0)


def test_chapter4_notebook_uses_the_recipes_budgets():
    """`make bench` measures chapter 4's targets with recipes.CH4_BUDGETS, STUDENT_EPOCHS and CH4_STUDENT:
    the notebook's parameters must be the same numbers, or the benchmark measures another experiment."""
    import ast
    from pathlib import Path

    from course_lib import recipes
    src = (Path(__file__).resolve().parents[1] / "notebooks" / "src" / "04_distillation.py").read_text()
    values = {}
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                values.setdefault(node.targets[0].id, ast.literal_eval(node.value))
            except ValueError:
                pass
    assert values["BUDGETS"] == recipes.CH4_BUDGETS and values["EPOCHS"] == recipes.STUDENT_EPOCHS
    assert values["SEEDS"] == recipes.SEEDS
    students = next(n for n in ast.walk(ast.parse(src)) if isinstance(n, ast.Assign)
                    and getattr(n.targets[0], "id", None) == "STUDENTS")
    assert ast.unparse(students.value).startswith("{'lenet-4-8-32': dict(c1=4, c2=8, fc=32)")
    assert recipes.CH4_STUDENT == dict(c1=4, c2=8, fc=32)
