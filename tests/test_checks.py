"""The checker machinery (course_lib/checks/__init__.py): a friendly verdict in JupyterLab, an error under
nbgrader, the fallback to the library for later cells, and the global random state left alone."""
import pytest
import torch

from course_lib import checks
from course_lib.checks import Wrong, checker


@checker("double")
def check_double(fn):
    if fn(torch.tensor([1.0, 2.0])).tolist() != [2.0, 4.0]:
        raise Wrong("double each element.")


def right(x):
    return 2 * x


def library_double(x):
    return x + x


def stub(x):
    raise NotImplementedError("your code here")


def test_verdicts_print_and_return(capsys, monkeypatch):
    monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)
    assert check_double(right) is True and capsys.readouterr().out == "✓ double: correct.\n"
    assert check_double(lambda x: x) is False and "✗ double: not yet. double each element." in capsys.readouterr().out
    assert check_double(stub) is False and "not implemented yet (your code here)" in capsys.readouterr().out
    assert check_double(lambda x: x.foo) is False and "raised AttributeError" in capsys.readouterr().out
    assert check_double.verdict(right) == (True, "✓ double: correct.")


@pytest.mark.parametrize("mode", ["autograde", "validate"])
def test_under_nbgrader_a_rejected_answer_raises(monkeypatch, capsys, mode):
    monkeypatch.setenv("NBGRADER_EXECUTION", mode)
    assert checks.grading()
    assert check_double(right) is True
    with pytest.raises(AssertionError, match="not implemented yet"):
        check_double(stub)
    assert "✗ double" in capsys.readouterr().out  # the learner still sees the verdict in the graded copy


def test_strict_overrides_the_environment(monkeypatch):
    monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)
    assert not checks.grading()
    with pytest.raises(AssertionError, match="double each element"):
        check_double(lambda x: x, strict=True, verbose=False)
    monkeypatch.setenv("NBGRADER_EXECUTION", "autograde")
    assert check_double(stub, strict=False, verbose=False) is False


def test_mine_or_library(capsys, monkeypatch):
    monkeypatch.setenv("NBGRADER_EXECUTION", "autograde")  # never raises, even while grading
    assert checks.mine_or_library(right, check_double, library_double, "right") is right
    assert "Using your right" in capsys.readouterr().out
    assert checks.mine_or_library(stub, check_double, library_double) is library_double
    out = capsys.readouterr().out
    assert "your stub is not finished" in out and "test_checks.library_double" in out
    with pytest.raises(TypeError, match="checker"):
        checks.mine_or_library(right, lambda f: True, right)
    with pytest.raises(TypeError, match="learner_fn"):
        checks.mine_or_library(None, check_double, right)


def test_no_checker_touches_the_global_random_state(capsys):
    # every exercise checker, run on a stub and on a wrong answer, leaves torch's global RNG as it was
    names = [n for n in dir(checks) if n.startswith("check_") and getattr(getattr(checks, n), "is_checker", False)]
    assert len(names) >= 20
    torch.manual_seed(123)
    state = torch.get_rng_state()
    for name in names:
        getattr(checks, name)(stub, verbose=False, strict=False)
        getattr(checks, name)(lambda *a, **k: torch.zeros(3), verbose=False, strict=False)
    assert torch.equal(torch.get_rng_state(), state)


@checker("noted double")
def check_noted_double(fn):
    if fn(torch.tensor([1.0, 2.0])).tolist() != [2.0, 4.0]:
        raise Wrong("double each element.")
    print("Note: x + x is fine too.")


def test_a_note_is_printed_once_by_the_checker_and_not_again_by_mine_or_library(capsys, monkeypatch):
    # a checker's print used to escape from verdict(): the checker cell printed the note, and
    # mine_or_library, which asks verdict() again, printed it a second time
    monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)
    ok, msg = check_noted_double.verdict(right)
    assert ok and msg == "Note: x + x is fine too.\n✓ noted double: correct."
    assert capsys.readouterr().out == ""  # verdict never prints
    assert check_noted_double(right)
    assert capsys.readouterr().out == "Note: x + x is fine too.\n✓ noted double: correct.\n"
    assert checks.mine_or_library(right, check_noted_double, library_double, "right") is right
    assert capsys.readouterr().out == "Using your right below (its checker accepted it).\n"


def test_learner_prints_show_in_the_checker_cell_only(capsys, monkeypatch):
    monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)

    def chatty(x):
        print("debug: doubling")
        return 2 * x
    assert check_double(chatty)
    assert capsys.readouterr().out == "debug: doubling\n✓ double: correct.\n"
    checks.mine_or_library(chatty, check_double, library_double, "chatty")
    assert "debug" not in capsys.readouterr().out


def test_kd_note_once_in_chapter_4(capsys, monkeypatch):
    # chapter 04: check_kd_loss accepts the soft-target cross-entropy form with a note, then
    # mine_or_library picks the learner's loss; the note must appear once in all
    import torch.nn.functional as F
    from course_lib.distillation import kd_loss
    monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)

    def soft_ce_kd(s, t, y, T, alpha):
        soft = -(torch.softmax(t / T, 1) * F.log_softmax(s / T, 1)).sum(1).mean()
        return alpha * T * T * soft + (1 - alpha) * F.cross_entropy(s, y)
    assert checks.check_kd_loss(soft_ce_kd)
    assert checks.mine_or_library(soft_ce_kd, checks.check_kd_loss, kd_loss, "my_kd_loss") is soft_ce_kd
    out = capsys.readouterr().out
    assert out.count("soft-target cross-entropy") == 1 and out.count("✓ KD loss") == 1
    assert out.index("Note: you wrote") < out.index("✓ KD loss") < out.index("Using your my_kd_loss")
