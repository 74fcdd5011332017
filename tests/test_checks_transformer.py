"""Each chapter-06 checker accepts a correct solution (the library's own function, written
independently of the checker's reference) and rejects typical wrong answers."""
import pytest
import torch

from course_lib import bert, checks
from course_lib import quantization as Q
from course_lib.checks import transformer as ct


def library_group_rtn(w, bits, group_size):
    return Q.rtn_quantize(w, bits, group_size)[0]


def test_mean_pool_checker():
    assert checks.check_mean_pool(bert.mean_pool, verbose=False)
    assert not checks.check_mean_pool(lambda h, m: h.mean(1), verbose=False)  # padding counted
    assert not checks.check_mean_pool(lambda h, m: (h * m.unsqueeze(-1)).sum(1), verbose=False)  # no division
    assert not checks.check_mean_pool(lambda h, m: (h * m.unsqueeze(-1)).sum(1) / h.shape[1], verbose=False)
    assert not checks.check_mean_pool(
        lambda h, m: torch.nn.functional.normalize(ct.reference_mean_pool(h, m), dim=-1), verbose=False)


def test_group_rtn_checker(capsys):
    assert checks.check_group_rtn(library_group_rtn, verbose=False)
    per_row = lambda w, bits, gs: ct.reference_group_rtn(w, bits, w.shape[1])  # noqa: E731
    assert not checks.check_group_rtn(per_row)
    assert "one scale per row" in capsys.readouterr().out
    assert not checks.check_group_rtn(lambda w, bits, gs: w.clone(), verbose=False)

    def floor_rtn(w, bits, gs):
        out_f, in_f = w.shape
        g = w.reshape(out_f, in_f // gs, gs)
        lo, hi = g.amin(-1, keepdim=True).clamp(max=0), g.amax(-1, keepdim=True).clamp(min=0)
        s = ((hi - lo) / (2 ** bits - 1)).clamp_min(1e-12)
        z = torch.round(-lo / s)
        return ((torch.floor(g / s) + z).clamp(0, 2 ** bits - 1) - z).mul(s).reshape(out_f, in_f)
    assert not checks.check_group_rtn(floor_rtn, verbose=False)


@pytest.mark.parametrize("kw, named", [(dict(_round_zero=False), "not rounded"),
                                       (dict(_levels="2**bits"), "2**bits - 1"),
                                       (dict(_through_zero=False), "must contain 0")])
def test_group_rtn_checker_names_the_common_mistakes(kw, named, capsys):
    def wrong(w, bits, gs):
        k = {key: (2 ** bits if v == "2**bits" else v) for key, v in kw.items()}
        return ct.reference_group_rtn(w, bits, gs, **k)
    assert not checks.check_group_rtn(wrong)
    assert named in capsys.readouterr().out


def test_group_rtn_checker_catches_values_outside_the_range(capsys):
    def unclamped(w, bits, gs):
        return ct.reference_group_rtn(w, bits, gs) * 3
    assert not checks.check_group_rtn(unclamped)
    assert "outside the group's [min, max] range" in capsys.readouterr().out


def test_retrieval_checker(capsys):
    assert checks.check_retrieval_top1(bert.retrieval_score, verbose=False)

    def with_self(emb, groups):
        e = torch.nn.functional.normalize(emb, dim=-1)
        return float((groups[(e @ e.T).argmax(1)] == groups).double().mean())
    assert not checks.check_retrieval_top1(with_self)
    assert "itself" in capsys.readouterr().out

    def by_dot(emb, groups):
        sim = emb @ emb.T
        sim.fill_diagonal_(-float("inf"))
        return float((groups[sim.argmax(1)] == groups).double().mean())
    assert not checks.check_retrieval_top1(by_dot, verbose=False)
    assert not checks.check_retrieval_top1(lambda e, g: "high", verbose=False)


def test_checker_survives_a_crash(capsys):
    def boom(*a):
        raise NotImplementedError
    assert not checks.check_mean_pool(boom)
    assert "not implemented" in capsys.readouterr().out


def test_checkers_leave_the_global_random_generator_alone():
    torch.manual_seed(123)
    want = torch.rand(3)
    torch.manual_seed(123)
    checks.check_mean_pool(bert.mean_pool, verbose=False)
    checks.check_group_rtn(library_group_rtn, verbose=False)
    checks.check_retrieval_top1(bert.retrieval_score, verbose=False)
    assert torch.equal(torch.rand(3), want)
