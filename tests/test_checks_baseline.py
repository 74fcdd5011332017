"""Chapter 00 checkers accept independent correct solutions and reject typical wrong answers with a useful message."""
import math

import torch

from course_lib import checks, stats
from course_lib.checks.baseline import reference_conv_macs, reference_normalize, reference_wilson_interval


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
    checks.check_wilson_interval(reference_wilson_interval)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.allclose(reference_normalize(torch.tensor([[[0, 255]]], dtype=torch.uint8), 0.5, 0.5),
                          torch.tensor([[[[-1.0, 1.0]]]]))


def _wilson_learner(p, n, z=1.96):
    """An independent learner-style solution: the score-test bounds as the roots of a quadratic."""
    # (p - q)^2 = z^2 q (1 - q) / n  <=>  (1 + z^2/n) q^2 - (2p + z^2/n) q + p^2 = 0
    a, b, c = 1 + z * z / n, -(2 * p + z * z / n), p * p
    r = math.sqrt(b * b - 4 * a * c)
    return ((-b - r) / (2 * a), (-b + r) / (2 * a))


def _wald(p, n, z=1.96):
    h = z * math.sqrt(p * (1 - p) / n)
    return p - h, p + h


def test_wilson_reference_matches_the_library_and_known_values():
    z = stats.normal_quantile(0.975)
    for p, n in ((0.989, 1000), (0.0, 20), (1.0, 50), (0.3, 7)):
        lo, hi = reference_wilson_interval(p, n, z)
        assert math.isclose(lo, stats.accuracy_interval(p, n)[0], abs_tol=1e-12)
        assert math.isclose(hi, stats.accuracy_interval(p, n)[1], abs_tol=1e-12)
    # hand-computed: p = 1/2, n = 10, z = 1.96 -> 0.5 +- 1.96/1.38416 * sqrt(0.025 + 0.0096040) = (0.2366, 0.7634)
    lo, hi = reference_wilson_interval(0.5, 10, 1.96)
    assert round(lo, 4) == 0.2366 and round(hi, 4) == 0.7634


def test_wilson_checker_accepts_independent_solutions(capsys):
    assert checks.check_wilson_interval(_wilson_learner)
    assert checks.check_wilson_interval(lambda p, n, z: torch.tensor(reference_wilson_interval(p, n, z),
                                                                     dtype=torch.float64))
    # clipping a correct Wilson interval is harmless
    assert checks.check_wilson_interval(lambda p, n, z: tuple(min(1.0, max(0.0, v)) for v in _wilson_learner(p, n, z)))
    assert "✓ wilson_interval: correct" in capsys.readouterr().out


def test_wilson_checker_names_typical_mistakes(capsys):
    def centre_on_p(p, n, z):
        lo, hi = reference_wilson_interval(p, n, z)
        return p - (hi - lo) / 2, p + (hi - lo) / 2

    def no_denominator(p, n, z):
        h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        return p + z * z / (2 * n) - h, p + z * z / (2 * n) + h

    def no_z2_in_root(p, n, z):
        d = 1 + z * z / n
        c, h = (p + z * z / (2 * n)) / d, z / d * math.sqrt(p * (1 - p) / n)
        return c - h, c + h

    def z_not_squared(p, n, z):
        c = (p + z / (2 * n)) / (1 + z / n)
        h = z / (1 + z / n) * math.sqrt(p * (1 - p) / n + z / (4 * n * n))
        return c - h, c + h

    cases = [
        (_wald, "Wald interval p"),
        (lambda p, n, z: tuple(min(1.0, max(0.0, v)) for v in _wald(p, n, z)), "clipped to [0, 1]"),
        (lambda p, n, z: tuple(100 * v for v in reference_wilson_interval(p, n, z)), "percent"),
        (lambda p, n, z: reference_wilson_interval(p, n, z)[::-1], "(high, low)"),
        (lambda p, n, z: reference_wilson_interval(p, n, 1.96), "whatever the argument"),
        (centre_on_p, "centred on p"),
        (no_denominator, "denominator"),
        (no_z2_in_root, "inside the square root"),
        (z_not_squared, "need z squared"),
        (lambda p, n, z: (p, p + 0.01), "expected"),
        (lambda p, n, z: p, "pair (low, high)"),
        (lambda p, n, z: (float("nan"), 1.0), "finite"),
    ]
    for fn, message in cases:
        assert not checks.check_wilson_interval(fn)
        out = capsys.readouterr().out
        assert message in out, (message, out)
    # right in the middle, crashes at p = 1: the checker tries the edges and reports the crash
    def crashes_at_one(p, n, z):
        return reference_wilson_interval(p, n, z) if p < 1 else 1 / (1 - p)
    assert not checks.check_wilson_interval(crashes_at_one)
    assert "ZeroDivisionError" in capsys.readouterr().out
