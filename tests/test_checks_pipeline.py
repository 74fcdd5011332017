"""Chapter 05 checkers accept the reference and reject typical wrong answers."""
import torch

from course_lib import checks
from course_lib.checks.pipeline import reference_entropy_bits, reference_positions_to_gaps


def test_gaps_checker(capsys):
    assert checks.check_positions_to_gaps(reference_positions_to_gaps)
    assert not checks.check_positions_to_gaps(lambda m: torch.diff(torch.nonzero(m).flatten(), prepend=torch.tensor([-1])))
    assert "off by one" in capsys.readouterr().out
    assert not checks.check_positions_to_gaps(lambda m: torch.nonzero(m).flatten())
    assert "absolute positions" in capsys.readouterr().out


def test_entropy_checker(capsys):
    assert checks.check_entropy_bits(reference_entropy_bits)

    def nats(s):
        c = torch.bincount(s).double()
        p = c[c > 0] / c.sum()
        return float(-(p * torch.log(p)).sum())

    def with_zeros(s):
        p = torch.bincount(s).double() / len(s)
        return float(-(p * torch.log2(p)).sum())

    assert not checks.check_entropy_bits(nats)
    assert "nats" in capsys.readouterr().out
    assert not checks.check_entropy_bits(with_zeros)
    assert "NaN" in capsys.readouterr().out
