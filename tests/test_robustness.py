"""Corruptions: identities at zero strength, ranges, determinism, the table."""
import pytest
import torch

from course_lib import robustness as rb
from course_lib.data import load_dataset
from course_lib.models import MLP

MEAN, STD = (0.1307,), (0.3081,)


@pytest.fixture(scope="module")
def xy():
    return load_dataset("mnist5k", limit=32).test.tensors


def test_zero_strength_is_identity(xy):
    x, _ = xy
    assert torch.allclose(rb.gaussian_noise(x, 0.0, MEAN, STD), x, atol=1e-5)
    assert torch.allclose(rb.contrast(x, 1.0, MEAN, STD), x, atol=1e-5)
    assert torch.allclose(rb.shift(x, 0, MEAN, STD), x, atol=1e-5)
    assert torch.allclose(rb.blur(x, 0.01, MEAN, STD), x, atol=1e-4)


def test_corruptions_stay_in_pixel_range_and_change_images(xy):
    x, _ = xy
    lo, hi = (0 - MEAN[0]) / STD[0], (1 - MEAN[0]) / STD[0]
    for kind, level in [("noise", 0.5), ("blur", 1.5), ("contrast", 0.3), ("shift", 3)]:
        xc = rb.corrupt(x, kind, level, MEAN, STD)
        assert xc.shape == x.shape
        assert xc.min() >= lo - 1e-5 and xc.max() <= hi + 1e-5
        assert not torch.allclose(xc, x)
    assert torch.equal(rb.gaussian_noise(x, 0.3, MEAN, STD, seed=1), rb.gaussian_noise(x, 0.3, MEAN, STD, seed=1))
    # shift moves the ink by exactly the offset
    assert rb.shift(x, 2, MEAN, STD)[..., 2:, 2:].sub(x[..., :-2, :-2]).abs().max() < 1e-5


@pytest.mark.parametrize("call,match", [
    (lambda x: rb.gaussian_noise(x, 2.0, MEAN, STD), "sigma"),
    (lambda x: rb.blur(x, 0, MEAN, STD), "sigma"),
    (lambda x: rb.contrast(x, 3, MEAN, STD), "factor"),
    (lambda x: rb.shift(x, 28, MEAN, STD), "pixels"),
    (lambda x: rb.corrupt(x, "fog", 1, MEAN, STD), "kind"),
])
def test_errors(xy, call, match):
    with pytest.raises(ValueError, match=match):
        call(xy[0])


def test_blur_keeps_the_total_ink(xy):
    # MNIST digits stay clear of the border by more than the kernel radius (2 for sigma=1), and a
    # normalised kernel of non-negative weights only redistributes ink: the per-image sum is kept
    x, _ = xy
    p = x * STD[0] + MEAN[0]
    band = p.clone()
    band[..., 2:-2, 2:-2] = 0
    clear = band.abs().flatten(1).amax(1) < 1e-5  # images with no ink within 2 pixels of the border
    assert clear.sum() >= 10
    blurred = rb.blur(x, 1.0, MEAN, STD)[clear] * STD[0] + MEAN[0]
    torch.testing.assert_close(blurred.sum(dim=(1, 2, 3)), p[clear].sum(dim=(1, 2, 3)), rtol=1e-4, atol=1e-3)
    assert not torch.allclose(blurred, p[clear], atol=1e-2)


def test_table(xy):
    x, y = xy
    torch.manual_seed(0)
    m, other = MLP(hidden=(8,)), MLP(hidden=(8,))
    settings = [("clean", 0), ("noise", 0.2)]
    rows = rb.robustness_table({"baseline": m, "other": other}, x, y, settings, MEAN, STD)
    assert [(r["model"], r["kind"]) for r in rows] == [("baseline", "clean"), ("other", "clean"),
                                                       ("baseline", "noise"), ("other", "noise")]
    for r, (kind, level) in zip(rows[1::2], settings):
        xc = x if kind == "clean" else rb.corrupt(x, kind, level, MEAN, STD)
        p_ref, p = m(xc).argmax(1), other(xc).argmax(1)
        assert r["agreement"] == pytest.approx((p == p_ref).float().mean().item())
        assert r["accuracy"] == pytest.approx((p == y).float().mean().item())
    assert all(r["agreement"] == 1.0 for r in rows[::2])  # the reference agrees with itself
    assert any(r["agreement"] < 1.0 for r in rows[1::2])  # two different random nets disagree somewhere
    with pytest.raises(ValueError, match="reference"):
        rb.robustness_table({"a": m}, x, y, [("clean", 0)], MEAN, STD)


def test_robustness_table_intervals():
    from course_lib import stats
    torch.manual_seed(0)
    x, y = torch.randn(40, 1, 28, 28), torch.randint(0, 10, (40,))
    m, other = MLP(hidden=(8,)), MLP(hidden=(8,))
    rows = rb.robustness_table({"baseline": m, "other": other}, x, y, [("clean", 0)], MEAN, STD)
    for r in rows:
        assert r["n"] == 40
        assert r["accuracy_ci"] == stats.accuracy_interval(r["accuracy"], 40)
        if r["model"] == "baseline":   # the reference against itself: exactly 1, no interval to estimate
            assert r["agreement"] == 1.0 and r["agreement_ci"] == (1.0, 1.0)
        else:
            assert r["agreement_ci"] == stats.accuracy_interval(r["agreement"], 40)
        assert r["accuracy_ci"][0] <= r["accuracy"] <= r["accuracy_ci"][1]


def test_robustness_table_over_seeds_gives_mean_and_paired_verdict():
    """Several seeds per model: the mean over seeds, and a paired verdict against the reference that a
    hand-made case decides (a perfect reference against runs that miss 30% of the images is worse)."""
    from course_lib import stats
    n = 200
    y = torch.arange(n) % 10
    x = torch.zeros(n, 1, 28, 28)
    onehot = torch.nn.functional.one_hot(y, 10).float()

    def wrong_on(frac, shift):  # a fixed predictor: wrong on a block of images, right elsewhere
        out = onehot.clone()
        k = int(frac * n)
        idx = (torch.arange(k) + shift) % n
        out[idx] = torch.roll(onehot[idx], 1, dims=1)
        return lambda xc: out

    perfect = lambda xc: onehot  # noqa: E731
    runs = [wrong_on(0.3, 0), wrong_on(0.3, 50), wrong_on(0.2, 100)]
    rows = rb.robustness_table({"ref": perfect, "seeds": runs, "same": [perfect, perfect]}, x, y, [("clean", 0)],
                               MEAN, STD, reference="ref")
    ref, r, same = rows
    assert ref["seeds"] == 1 and ref["vs_reference"] is None and ref["agreement"] == 1.0
    assert r["seeds"] == 3 and r["accuracy"] == pytest.approx((0.7 + 0.7 + 0.8) / 3)
    assert r["agreement"] == pytest.approx(r["accuracy"])  # the reference is always right
    ok = torch.stack([(f(x).argmax(1) == y) for f in runs])
    expect = stats.paired_compare(ok, torch.ones(n, dtype=torch.bool))
    assert r["vs_reference"] == expect and r["vs_reference"].verdict == "worse"
    assert r["vs_reference"].diff == pytest.approx(r["accuracy"] - 1.0)
    assert same["vs_reference"].verdict == "indistinguishable" and same["vs_reference"].diff == 0.0
    for bad in ([], [perfect, "not a model"]):
        with pytest.raises(ValueError, match="models\\['seeds'\\]"):
            rb.robustness_table({"ref": perfect, "seeds": bad}, x, y, [("clean", 0)], MEAN, STD, reference="ref")


def test_robustness_table_refuses_bad_input_by_name():
    m = MLP(hidden=(8,))
    x, y = torch.randn(6, 1, 28, 28), torch.randint(0, 10, (6,))
    with pytest.raises(ValueError, match="the reference"):  # agreement needs one reference prediction
        rb.robustness_table({"baseline": [m, m], "other": m}, x, y, [("clean", 0)], MEAN, STD)
    with pytest.raises(ValueError, match="reference='baseline'"):
        rb.robustness_table([m], x, y, [("clean", 0)], MEAN, STD)
    with pytest.raises(ValueError, match="same N"):
        rb.robustness_table({"baseline": m}, x, y[:5], [("clean", 0)], MEAN, STD)
