"""Each chapter-4 checker accepts the library or an independent solution and rejects typical wrong answers."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from course_lib import checks
from course_lib.distillation import kd_loss, soften


# ---------------------------------------------------------------- softened softmax
def test_softened_softmax_accepts_reference(capsys):
    assert checks.check_softened_softmax(soften)
    assert "✓" in capsys.readouterr().out


def test_softened_softmax_accepts_manual_stable_version():
    def manual(z, T):
        z = z / T
        e = torch.exp(z - z.max(dim=1, keepdim=True).values)
        return e / e.sum(dim=1, keepdim=True)
    assert checks.check_softened_softmax(manual, verbose=False)


def test_softened_softmax_rejects_wrong_answers(capsys):
    cases = {
        "divide the logits by T": lambda z, T: torch.softmax(z, -1),
        "multiplied": lambda z, T: torch.softmax(z * T, -1),
        "class dimension": lambda z, T: torch.softmax(z / T, 0),
        "NaN/inf": lambda z, T: torch.exp(z / T) / torch.exp(z / T).sum(1, keepdim=True),
        "not implemented": lambda z, T: (_ for _ in ()).throw(NotImplementedError()),
    }
    for hint, fn in cases.items():
        assert not checks.check_softened_softmax(fn)
        assert hint in capsys.readouterr().out, hint


# ---------------------------------------------------------------- KD loss
def test_kd_loss_checker_accepts_reference():
    assert checks.check_kd_loss(kd_loss, verbose=False)


def _kl(s, t, T):
    return (torch.softmax(t / T, 1) * (F.log_softmax(t / T, 1) - F.log_softmax(s / T, 1))).sum(1)


def test_kd_loss_checker_rejects_wrong_answers(capsys):
    cases = {
        "T^2": lambda s, t, y, T, a: a * _kl(s, t, T).mean() + (1 - a) * F.cross_entropy(s, y),
        "wrong way": lambda s, t, y, T, a: a * T * T * _kl(t, s, T).mean() + (1 - a) * F.cross_entropy(s, y),
        "alpha weighs the wrong term":
            lambda s, t, y, T, a: (1 - a) * T * T * _kl(s, t, T).mean() + a * F.cross_entropy(s, y),
        "batchmean": lambda s, t, y, T, a: a * T * T * _kl(s, t, T).sum() + (1 - a) * F.cross_entropy(s, y),
        "averaged over classes too":
            lambda s, t, y, T, a: a * T * T * _kl(s, t, T).mean() / s.shape[1] + (1 - a) * F.cross_entropy(s, y),
        "temperature 1": lambda s, t, y, T, a: a * T * T * _kl(s, t, T).mean() + (1 - a) * F.cross_entropy(s / T, y),
        "scalar": lambda s, t, y, T, a: a * T * T * _kl(s, t, T) + (1 - a) * F.cross_entropy(s, y, reduction="none"),
        "no gradient": lambda s, t, y, T, a: kd_loss(s.detach(), t, y, T, a),
    }
    for hint, fn in cases.items():
        assert not checks.check_kd_loss(fn)
        assert hint in capsys.readouterr().out, hint


# ---------------------------------------------------------------- pseudo-labels
def _ref_pseudo(t, y, m):
    return torch.where(m, y, t.argmax(1))


def test_pseudo_labels_checker_accepts_an_independent_solution():
    def learner(t, y, m):  # written as a learner would, not the checker's torch.where formula
        out = y.clone()
        for i in range(len(y)):
            if not m[i]:
                out[i] = int(torch.argmax(t[i]))
        return out
    assert checks.check_pseudo_labels(learner, verbose=False)


def test_checkers_leave_the_global_random_state_alone():
    state = torch.get_rng_state()
    checks.check_softened_softmax(soften, verbose=False)
    checks.check_kd_loss(kd_loss, verbose=False)
    checks.check_pseudo_labels(_ref_pseudo, verbose=False)
    assert torch.equal(torch.get_rng_state(), state)


def test_pseudo_labels_checker_rejects_wrong_answers(capsys):
    cases = {
        "teacher's labels everywhere": lambda t, y, m: t.argmax(1),
        "wrong way round": lambda t, y, m: torch.where(m, t.argmax(1), y),
        "argmax, not argmin": lambda t, y, m: torch.where(m, y, t.argmin(1)),
        "int64": lambda t, y, m: torch.where(m, y, t.argmax(1)).float(),
        "shape": lambda t, y, m: torch.where(m, y, t.argmax(1))[:-1],
    }
    for hint, fn in cases.items():
        assert not checks.check_pseudo_labels(fn)
        assert hint in capsys.readouterr().out, hint


def _soft_ce(s, t, T):
    return -(torch.softmax(t / T, 1) * F.log_softmax(s / T, 1)).sum(1)


def test_kd_loss_checker_accepts_the_soft_target_cross_entropy(capsys):
    # -sum p_t log p_s = KL(p_t || p_s) + H(p_t): the teacher's entropy is a constant (same gradients)
    def soft_ce(s, t, y, T, a):
        return a * T * T * _soft_ce(s, t, T).mean() + (1 - a) * F.cross_entropy(s, y)
    assert checks.check_kd_loss(soft_ce)
    out = capsys.readouterr().out
    assert "✓" in out and "teacher's entropy" in out


def test_kd_loss_checker_accepts_f_kl_div_batchmean():
    def kl_div(s, t, y, T, a):
        soft = F.kl_div(F.log_softmax(s / T, 1), F.softmax(t / T, 1), reduction="batchmean")
        return a * T ** 2 * soft + (1 - a) * F.cross_entropy(s, y)
    assert checks.check_kd_loss(kl_div, verbose=False)


def test_kd_loss_checker_names_the_soft_target_cross_entropy_mistakes(capsys):
    cases = {
        "T^2": lambda s, t, y, T, a: a * _soft_ce(s, t, T).mean() + (1 - a) * F.cross_entropy(s, y),
        "temperature 1": lambda s, t, y, T, a: a * T * T * _soft_ce(s, t, T).mean()
        + (1 - a) * F.cross_entropy(s / T, y),
        "no gradient": lambda s, t, y, T, a: (a * T * T * _soft_ce(s, t, T).mean()
                                              + (1 - a) * F.cross_entropy(s, y)).detach(),
        "reduction=\"mean\"": lambda s, t, y, T, a: a * T * T * F.kl_div(
            F.log_softmax(s / T, 1), F.softmax(t / T, 1), reduction="mean") + (1 - a) * F.cross_entropy(s, y),
    }
    for hint, fn in cases.items():
        assert not checks.check_kd_loss(fn)
        assert hint in capsys.readouterr().out, hint


def test_kd_loss_checker_names_kl_div_mean_without_t2(capsys):
    def fn(s, t, y, T, a):
        return a * F.kl_div(F.log_softmax(s / T, 1), F.softmax(t / T, 1), reduction="mean") \
            + (1 - a) * F.cross_entropy(s, y)
    assert not checks.check_kd_loss(fn)
    out = capsys.readouterr().out
    assert "T^2" in out and "batchmean" in out
