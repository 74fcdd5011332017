"""Chapter 01 checkers accept independent correct solutions and reject typical wrong answers with a useful message."""
import math

import torch
from torch.nn.utils import prune as tprune

from course_lib import checks
from course_lib import pruning as P


def _learner_mask(w, s):  # an independent solution, as a learner would write it
    k = round(s * w.numel())
    m = torch.ones_like(w)
    if k:
        m.view(-1)[torch.topk(w.abs().flatten(), k, largest=False).indices] = 0
    return m


def test_magnitude_mask_checker(capsys):
    assert checks.check_magnitude_mask(_learner_mask)
    assert "✓ magnitude mask: correct" in capsys.readouterr().out
    # PyTorch's own L1 pruning (the production anchor) is accepted too, and so is the library
    assert checks.check_magnitude_mask(lambda w, s: tprune.L1Unstructured(s).compute_mask(w, torch.ones_like(w)))
    assert checks.check_magnitude_mask(P.magnitude_mask)
    # a boolean mask is accepted too
    assert checks.check_magnitude_mask(lambda w, s: P.magnitude_mask(w, s).bool())

    def signed(w, s):  # ranks by signed value instead of magnitude
        k = round(s * w.numel())
        m = torch.ones_like(w)
        m.view(-1)[torch.argsort(w.flatten())[:k]] = 0
        return m
    assert not checks.check_magnitude_mask(signed)
    assert "|w|" in capsys.readouterr().out

    def floor_k(w, s):  # int() instead of round()
        k = int(s * w.numel())
        m = torch.ones_like(w)
        m.view(-1)[torch.argsort(w.abs().flatten())[:k]] = 0
        return m
    assert not checks.check_magnitude_mask(floor_k)
    assert "off by one" in capsys.readouterr().out

    assert not checks.check_magnitude_mask(lambda w, s: 1 - P.magnitude_mask(w, s))
    assert "inverted" in capsys.readouterr().out
    assert not checks.check_magnitude_mask(lambda w, s: P.magnitude_mask(w, s).flatten())
    assert "shape" in capsys.readouterr().out

    def in_place(w, s):
        w.mul_(P.magnitude_mask(w, s))
        return (w != 0).float()
    assert not checks.check_magnitude_mask(in_place)
    assert "in place" in capsys.readouterr().out

    def threshold(w, s):  # |w| > tau with tau the k-th smallest |w|: right without ties, too many zeros with them
        k = round(s * w.numel())
        if k == 0:
            return torch.ones_like(w)
        tau = w.abs().flatten().kthvalue(k).values
        return (w.abs() > tau).to(w.dtype)
    assert not checks.check_magnitude_mask(threshold)
    assert "tied" in capsys.readouterr().out

    def ties_to_largest(w, s):  # exactly k zeros with ties, but one of them at a larger |w|
        m = P.magnitude_mask(w, s)
        if w.numel() == 10 and abs(w[1].item() + 0.1) < 1e-6:   # the tie case: swap a tied zero for the largest weight
            m = m.clone()
            m[torch.nonzero(m == 0)[0]] = 1
            m[w.abs().argmax()] = 0
        return m
    assert not checks.check_magnitude_mask(ties_to_largest)
    assert "smallest |w|" in capsys.readouterr().out


def test_filters_to_keep_checker(capsys):
    def learner(w, r):
        n = w.shape[0]
        norms = w.abs().flatten(1).sum(1)
        return torch.sort(torch.argsort(norms, descending=True, stable=True)[:n - round(r * n)]).values
    assert checks.check_filters_to_keep(learner)
    assert "✓ filters to keep: correct" in capsys.readouterr().out

    def l2(w, r):
        n = w.shape[0]
        keep = n - round(r * n)
        return torch.sort(torch.argsort(w.flatten(1).norm(dim=1), descending=True)[:keep]).values
    assert not checks.check_filters_to_keep(l2)
    assert "L1 norm" in capsys.readouterr().out

    def signed(w, r):
        n = w.shape[0]
        keep = n - round(r * n)
        return torch.sort(torch.argsort(w.flatten(1).sum(1), descending=True)[:keep]).values
    assert not checks.check_filters_to_keep(signed)
    assert "signed sum" in capsys.readouterr().out

    def unsorted(w, r):
        n = w.shape[0]
        return torch.argsort(w.abs().flatten(1).sum(1), descending=True)[:n - round(r * n)]
    assert not checks.check_filters_to_keep(unsorted)
    assert "ascending" in capsys.readouterr().out

    def keeps_ratio(w, r):  # keeps `ratio` of the filters instead of removing it
        n = w.shape[0]
        return torch.sort(torch.argsort(w.abs().flatten(1).sum(1), descending=True)[:max(1, round(r * n))]).values
    assert not checks.check_filters_to_keep(keeps_ratio)
    assert "keep" in capsys.readouterr().out

    def bool_mask(w, r):
        m = torch.zeros(w.shape[0], dtype=torch.bool)
        m[P.filters_to_keep(w, r)] = True
        return m
    assert not checks.check_filters_to_keep(bool_mask)
    assert "boolean mask" in capsys.readouterr().out


def test_gradual_schedule_checker(capsys):
    assert checks.check_gradual_schedule(lambda t, sf, n: sf * (1 - (1 - min(max(t / n, 0.0), 1.0)) ** 3))
    assert "correct" in capsys.readouterr().out
    assert not checks.check_gradual_schedule(lambda t, sf, n: sf * min(t / n, 1.0))
    assert "linear" in capsys.readouterr().out
    assert not checks.check_gradual_schedule(lambda t, sf, n: sf * (1 - t / n) ** 3)
    assert "backwards" in capsys.readouterr().out
    assert not checks.check_gradual_schedule(lambda t, sf, n: sf * (1 - (1 - t / n) ** 3))
    assert "stay at the final value" in capsys.readouterr().out
    assert not checks.check_gradual_schedule(lambda t, sf, n: sf * (1 - (1 - min(t / n, 1)) ** 2))
    assert "schedule is" in capsys.readouterr().out


def test_stub_and_crash_are_verdicts(capsys):
    def stub(*a):
        raise NotImplementedError
    assert not checks.check_magnitude_mask(stub)
    assert "not implemented" in capsys.readouterr().out
    assert not checks.check_filters_to_keep(lambda w, r: math.sqrt(-1))
    assert "raised ValueError" in capsys.readouterr().out
