"""Chapter 08 checkers accept the library's own implementations and independent solutions, and reject the
typical wrong answers with a message that names the mistake."""
from importlib import metadata

import torch

from course_lib import checks, runtimes as R


def test_installed_size_checker(capsys):
    assert checks.check_installed_size(R.installed_bytes)

    def declared(name):  # RECORD's declared sizes miss the .pyc files compiled after the install
        return sum(f.size or 0 for f in metadata.files(name))
    assert not checks.check_installed_size(declared)
    assert "f.locate().stat().st_size" in capsys.readouterr().out
    assert not checks.check_installed_size(lambda n: len(metadata.files(n)))
    assert "number of files" in capsys.readouterr().out
    assert not checks.check_installed_size(lambda n: R.installed_bytes(n) / 2**20)
    assert "megabytes" in capsys.readouterr().out
    assert not checks.check_installed_size(lambda n: sum(f.locate().stat().st_size for f in metadata.files(n)
                                                         if str(f).endswith(".py")))
    assert "every file" in capsys.readouterr().out
    assert not checks.check_installed_size(lambda n: "big")
    assert "return a number" in capsys.readouterr().out


def test_padded_predict_checker(capsys):
    assert checks.check_padded_predict(R.padded_predict)

    def unpadded(fn, x, b):
        return torch.cat([fn(x[i:i + b]) for i in range(0, len(x), b)])
    assert not checks.check_padded_predict(unpadded)
    assert "pad the last batch" in capsys.readouterr().out

    def untrimmed(fn, x, b):
        out = []
        for i in range(0, len(x), b):
            xb = x[i:i + b]
            out.append(fn(torch.cat([xb, xb.new_zeros((b - len(xb), *xb.shape[1:]))])))
        return torch.cat(out)
    assert not checks.check_padded_predict(untrimmed)
    assert "drop the outputs of the padding" in capsys.readouterr().out

    def repeat_pad(fn, x, b):
        out = []
        for i in range(0, len(x), b):
            xb = x[i:i + b]
            n = len(xb)
            if n < b:
                xb = torch.cat([xb, xb[:1].repeat(b - n, *[1] * (xb.dim() - 1))])
            out.append(fn(xb)[:n])
        return torch.cat(out)
    assert checks.check_padded_predict(repeat_pad, verbose=False)  # rows are independent: padding values do not matter

    def reversed_rows(fn, x, b):
        return R.padded_predict(fn, x, b).flip(0)
    assert not checks.check_padded_predict(reversed_rows)
    assert "keep the rows in order" in capsys.readouterr().out


def test_checkers_leave_the_global_random_state_alone():
    state = torch.get_rng_state()
    checks.check_padded_predict(R.padded_predict, verbose=False)
    checks.check_installed_size(R.installed_bytes, verbose=False)
    assert torch.equal(torch.get_rng_state(), state)
