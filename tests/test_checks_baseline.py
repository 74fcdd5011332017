"""Chapter 00 checkers accept independent correct solutions and reject typical wrong answers with a useful message."""
import torch

from course_lib import checks
from course_lib.checks.baseline import reference_conv_macs, reference_normalize


def test_normalize_checker(capsys):
    # an independent learner-style solution (not the checker's own reference)
    assert checks.check_normalize(lambda x, m, s: x.to(torch.float32).div(255).sub(m).div(s)[:, None])
    assert "✓ normalize: correct" in capsys.readouterr().out
    assert not checks.check_normalize(lambda x, m, s: ((x.float() - m) / s).unsqueeze(1))
    assert "not scaled" in capsys.readouterr().out
    assert not checks.check_normalize(lambda x, m, s: (x.float() / 255 - m) / s)
    assert "shape" in capsys.readouterr().out
    assert not checks.check_normalize(lambda x, m, s: ((x / 255 - m) / s).unsqueeze(1).double())
    assert "dtype" in capsys.readouterr().out


def _ignores_groups(layer, hw):
    (k, _), (s, _), (p, _), (d, _) = layer.kernel_size, layer.stride, layer.padding, layer.dilation
    ho = (hw[0] + 2 * p - d * (k - 1) - 1) // s + 1
    wo = (hw[1] + 2 * p - d * (k - 1) - 1) // s + 1
    return layer.out_channels * layer.in_channels * k * k * ho * wo


def test_conv_macs_checker(capsys):
    assert checks.check_conv_macs(reference_conv_macs)  # the analytic formula against measure.macs (hooks)
    wrong_input_size = lambda l, hw: l.out_channels * l.in_channels // l.groups * l.kernel_size[0] ** 2 * hw[0] * hw[1]
    assert not checks.check_conv_macs(wrong_input_size)
    assert "OUTPUT positions" in capsys.readouterr().out
    assert not checks.check_conv_macs(_ignores_groups)
    assert "groups" in capsys.readouterr().out
    assert not checks.check_conv_macs(lambda l, hw: float(reference_conv_macs(l, hw)))
    assert "return an int" in capsys.readouterr().out


def test_stub_is_rejected_not_raised(capsys):
    def stub(*a):
        raise NotImplementedError("write it")
    assert not checks.check_conv_macs(stub)
    assert "not implemented yet" in capsys.readouterr().out
    assert not checks.check_normalize(lambda *a: 1 / 0)
    assert "ZeroDivisionError" in capsys.readouterr().out


def test_checkers_leave_the_global_random_state_alone():
    state = torch.get_rng_state()
    checks.check_normalize(lambda x, m, s: x.to(torch.float32).div(255).sub(m).div(s)[:, None])
    checks.check_conv_macs(reference_conv_macs)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.allclose(reference_normalize(torch.tensor([[[0, 255]]], dtype=torch.uint8), 0.5, 0.5),
                          torch.tensor([[[[-1.0, 1.0]]]]))
