"""Chapter 05 checkers accept the library's own implementations (a cross-check of the duplicated
references) and reject typical wrong answers."""
import torch

from course_lib import checks, huffman, storage


def test_gaps_checker(capsys):
    # the library computes the same gaps as the checker's reference (storage.tensor_streams)
    assert checks.check_positions_to_gaps(lambda m: torch.from_numpy(storage.tensor_streams(m.float())[0]))
    assert not checks.check_positions_to_gaps(lambda m: torch.diff(torch.nonzero(m).flatten(), prepend=torch.tensor([-1])))
    assert "off by one" in capsys.readouterr().out
    assert not checks.check_positions_to_gaps(lambda m: torch.nonzero(m).flatten())
    assert "absolute positions" in capsys.readouterr().out


def test_entropy_checker(capsys):
    assert checks.check_entropy_bits(lambda s: huffman.entropy_bits(s.numpy()))

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


def test_checkers_leave_the_global_random_state_alone():
    state = torch.get_rng_state()
    checks.check_entropy_bits(lambda s: huffman.entropy_bits(s.numpy()))
    checks.check_positions_to_gaps(lambda m: torch.from_numpy(storage.tensor_streams(m.float())[0]))
    assert torch.equal(torch.get_rng_state(), state)


def test_gaps_checker_accepts_a_loop_and_names_a_non_int64_array(capsys):
    def loop(m):  # an independent solution, written as a learner would
        out, last = [], -1
        for i, v in enumerate(m.tolist()):
            if v:
                out.append(i - last - 1)
                last = i
        return torch.tensor(out, dtype=torch.int64)
    assert checks.check_positions_to_gaps(loop, verbose=False)
    for wrong in (lambda m: loop(m).float(), lambda m: loop(m).int()):
        assert not checks.check_positions_to_gaps(wrong)
        assert "expected torch.int64" in capsys.readouterr().out
