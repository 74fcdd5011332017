"""stats: intervals, paired comparisons and seed summaries against hand-computed values and
synthetic predictions with a known answer."""
import math

import pytest
import torch

from course_lib import stats


def _wilson_by_bisection(p_hat, n, z=1.959963984540054):
    """Independent check: the Wilson bounds are the p with |p_hat - p| = z sqrt(p(1-p)/n)."""
    def f(p):
        return (p_hat - p) ** 2 - z * z * p * (1 - p) / n
    def root(lo, hi):
        for _ in range(200):
            mid = (lo + hi) / 2
            if (f(lo) > 0) == (f(mid) > 0):
                lo = mid
            else:
                hi = mid
        return (lo + hi) / 2
    return (root(0.0, p_hat) if p_hat > 0 else 0.0, root(p_hat, 1.0) if p_hat < 1 else 1.0)


@pytest.mark.parametrize("k, n", [(989, 1000), (500, 1000), (1000, 1000), (0, 50), (7, 9)])
def test_wilson_interval_matches_its_definition(k, n):
    lo, hi = stats.accuracy_interval(k / n, n)
    ref_lo, ref_hi = _wilson_by_bisection(k / n, n)
    assert lo == pytest.approx(ref_lo, abs=1e-9) and hi == pytest.approx(ref_hi, abs=1e-9)
    assert 0.0 <= lo <= k / n <= hi <= 1.0


def test_interval_on_the_course_test_split_is_about_0_65_points():
    lo, hi = stats.accuracy_interval(0.989, 1000)
    assert 1.1 < 100 * (hi - lo) < 1.5      # roughly ±0.65 points, asymmetric near 100%


@pytest.mark.parametrize("p, z", [(0.975, 1.959963984540054), (0.5, 0.0), (0.001, -3.090232306167813),
                                  (0.9, 1.2815515655446004), (1e-6, -4.753424308822899)])
def test_normal_quantile_reference_values(p, z):
    assert stats.normal_quantile(p) == pytest.approx(z, abs=1e-8)


@pytest.mark.parametrize("df, t", [(1, 12.7062), (2, 4.3027), (10, 2.2281), (30, 2.0423), (40, 2.0211),
                                   (60, 2.0003), (120, 1.9799)])
def test_t_quantile_reference_values(df, t):
    assert stats.t_quantile_975(df) == pytest.approx(t, abs=5e-4)


# other levels, from the standard t table (scipy.stats.t.ppf gives the same to 1e-6)
@pytest.mark.parametrize("p, df, t", [(0.95, 2, 2.919986), (0.995, 5, 4.032143), (0.9, 1, 3.077684),
                                      (0.6, 7, 0.263167), (0.05, 3, -2.353363), (0.9995, 120, 3.373454)])
def test_t_quantile_other_levels(p, df, t):
    assert stats.t_quantile(p, df) == pytest.approx(t, abs=1e-5)


def test_t_cdf_closed_forms():
    # df = 1 is the Cauchy distribution, df = 2 has P(T <= t) = 1/2 + t / (2 sqrt(t^2 + 2))
    for t in (-5.0, -0.3, 0.0, 1.7, 30.0):
        assert stats.t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-14)
        assert stats.t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(t * t + 2)), abs=1e-14)
    assert stats.t_cdf(0.0, 9) == 0.5 and stats.t_cdf(2.0, 9) == pytest.approx(1 - stats.t_cdf(-2.0, 9))
    with pytest.raises(ValueError, match="p"):
        stats.t_quantile(1.0, 3)


def test_seed_summary_uses_t_at_every_level():
    # 3 seeds at level 0.90: half-width t_{0.95,2} * sd / sqrt(3), not the normal z_{0.95}
    s = stats.seed_summary([0.98, 0.99, 1.0], level=0.9)
    half = 2.919986 * 0.01 / 3 ** 0.5
    assert s["ci"] == pytest.approx((0.99 - half, 0.99 + half), abs=1e-6)


@pytest.mark.parametrize("b, c, p", [(0, 5, 2 / 32), (1, 9, 2 * 11 / 1024), (5, 5, 1.0), (0, 0, 1.0),
                                     (3, 0, 2 / 8)])
def test_mcnemar_exact_hand_computed(b, c, p):
    assert stats.mcnemar_p(b, c) == pytest.approx(p)
    assert stats.mcnemar_p(c, b) == pytest.approx(p)


def test_paired_compare_identical_models_are_indistinguishable():
    correct = torch.rand(1000, generator=torch.Generator().manual_seed(1)) < 0.98
    cmp = stats.paired_compare(correct, correct)
    assert cmp.diff == 0 and cmp.ci == (0.0, 0.0) and cmp.verdict == "indistinguishable" and cmp.p_value == 1.0


def test_paired_compare_detects_a_real_gap_and_its_sign():
    b = torch.ones(1000, dtype=torch.bool)
    b[:30] = False                         # B misses 30 images A gets right
    cmp = stats.paired_compare(torch.ones(1000, dtype=torch.bool), b)
    assert cmp.verdict == "better" and cmp.diff == pytest.approx(0.03)
    assert cmp.a_only == 30 and cmp.b_only == 0 and cmp.p_value < 1e-8
    assert 0.015 < cmp.ci[0] < 0.03 < cmp.ci[1] < 0.045
    assert stats.paired_compare(b, torch.ones(1000, dtype=torch.bool)).verdict == "worse"


def test_paired_compare_swapped_errors_are_noise():
    a = torch.ones(1000, dtype=torch.bool)
    b = torch.ones(1000, dtype=torch.bool)
    a[:3] = False
    b[3:6] = False                          # each model misses 3 different images
    cmp = stats.paired_compare(a, b)
    assert cmp.diff == 0 and cmp.verdict == "indistinguishable" and cmp.ci[0] < 0 < cmp.ci[1]
    a[6:9] = False                          # now A misses 6, B 3: still inside the noise
    assert stats.paired_compare(a, b).verdict == "indistinguishable"


def test_paired_compare_over_seeds_averages_per_image():
    base = torch.ones(1000, dtype=torch.bool)
    base[:10] = False
    seeds = torch.ones(3, 1000, dtype=torch.bool)
    seeds[0, :40] = False
    seeds[1, 20:60] = False
    seeds[2, 40:80] = False                 # 40 errors per seed, 4% mean
    cmp = stats.paired_compare(seeds, base)
    assert cmp.diff == pytest.approx(-0.03) and cmp.verdict == "worse" and cmp.p_value is None


def test_paired_compare_is_deterministic():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(500, generator=g) < 0.9, torch.rand(500, generator=g) < 0.9
    assert stats.paired_compare(a, b) == stats.paired_compare(a, b)


@pytest.mark.parametrize("kw, match", [
    (dict(correct_a=torch.ones(10), correct_b=torch.ones(11)), "same images"),
    (dict(correct_a=torch.full((10,), 0.5), correct_b=torch.ones(10)), "0/1"),
    (dict(correct_a=torch.ones(2, 2, 2), correct_b=torch.ones(2)), "shape"),
    (dict(correct_a=torch.ones(10), correct_b=torch.ones(10), resamples=5), "resamples"),
    (dict(correct_a=torch.ones(10), correct_b=torch.ones(10), level=1.0), "level"),
])
def test_paired_compare_rejects_bad_input(kw, match):
    with pytest.raises(ValueError, match=match):
        stats.paired_compare(**kw)


def test_seed_summary_hand_computed():
    s = stats.seed_summary([0.98, 0.99, 1.0])
    assert s["mean"] == pytest.approx(0.99) and s["std"] == pytest.approx(0.01) and s["n"] == 3
    half = 4.3027 * 0.01 / math.sqrt(3)
    assert s["ci"][0] == pytest.approx(0.99 - half, abs=1e-6) and s["ci"][1] == pytest.approx(0.99 + half, abs=1e-6)
    one = stats.seed_summary([0.5])
    assert one == {"mean": 0.5, "std": 0.0, "ci": (0.5, 0.5), "n": 1}
    with pytest.raises(ValueError, match="values"):
        stats.seed_summary([])
    with pytest.raises(ValueError, match="values"):
        stats.seed_summary([float("nan")])


@pytest.mark.parametrize("fn, args, match", [
    (stats.accuracy_interval, (1.2, 100), "accuracy"),
    (stats.accuracy_interval, (0.5, 0), "n"),
    (stats.mcnemar_p, (-1, 2), "b"),
    (stats.normal_quantile, (0.0,), "p"),
    (stats.t_quantile_975, (0,), "df"),
])
def test_argument_errors_name_the_argument(fn, args, match):
    with pytest.raises(ValueError, match=match):
        fn(*args)


@pytest.mark.parametrize("n", [1, 3, 7, 13, 70, 140, 200, 1000, 10_000])
def test_wilson_interval_contains_the_accuracy_at_the_edges(n):
    """At 0% and 100% the bounds equal the accuracy exactly, not up to a rounding error (figures draw
    error bars as accuracy - low and high - accuracy, which must not be negative)."""
    lo, hi = stats.accuracy_interval(1.0, n)
    assert hi == 1.0 and lo < 1.0
    lo, hi = stats.accuracy_interval(0.0, n)
    assert lo == 0.0 and hi > 0.0


# ------------------------------------------------------------- bootstrap of continuous per-item values
def test_bootstrap_mean_interval_of_constant_values_has_zero_width():
    assert stats.bootstrap_mean_interval([2.5] * 50) == (2.5, 2.5)


def test_bootstrap_mean_interval_is_deterministic_and_leaves_the_global_generator_alone():
    x = torch.randn(200, generator=torch.Generator().manual_seed(0))
    state = torch.get_rng_state()
    a = stats.bootstrap_mean_interval(x, seed=4)
    assert torch.equal(state, torch.get_rng_state())
    assert a == stats.bootstrap_mean_interval(x, seed=4)
    assert a != stats.bootstrap_mean_interval(x, seed=5)


def test_bootstrap_mean_interval_agrees_with_normal_theory_on_a_large_sample():
    x = torch.randn(5000, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2 + 3
    lo, hi = stats.bootstrap_mean_interval(x, resamples=4000)
    m, se = float(x.mean()), float(x.std()) / math.sqrt(x.numel())
    assert lo < m < hi
    assert lo == pytest.approx(m - 1.959964 * se, abs=0.15 * se)
    assert hi == pytest.approx(m + 1.959964 * se, abs=0.15 * se)
    lo90, hi90 = stats.bootstrap_mean_interval(x, level=0.9, resamples=4000)
    assert lo < lo90 < hi90 < hi


def test_paired_bootstrap_diff_shift_of_one():
    a = torch.randn(300, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    r = stats.paired_bootstrap_diff(a + 1, a)
    assert r["diff"] == pytest.approx(1.0, abs=1e-12)
    assert r["ci"] == pytest.approx((1.0, 1.0), abs=1e-12) and r["n"] == 300
    assert r["verdict"] == "higher"
    assert stats.paired_bootstrap_diff(a, a + 1)["verdict"] == "lower"


def test_paired_bootstrap_diff_symmetric_noise_is_indistinguishable():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(400, generator=g, dtype=torch.float64)
    noise = torch.randn(200, generator=g, dtype=torch.float64) * 0.1
    b = a + torch.cat([noise, -noise])            # differences exactly symmetric about 0
    r = stats.paired_bootstrap_diff(a, b)
    assert abs(r["diff"]) < 1e-12 and r["ci"][0] < 0 < r["ci"][1]
    assert r["verdict"] == "indistinguishable"


@pytest.mark.parametrize("call, match", [
    (lambda: stats.bootstrap_mean_interval([]), "values must be a non-empty"),
    (lambda: stats.bootstrap_mean_interval([1.0, float("nan")]), "NaN/inf"),
    (lambda: stats.bootstrap_mean_interval([1.0], level=1.0), r"level=1.0 must be a finite number in \(0.0, 1.0\)"),
    (lambda: stats.bootstrap_mean_interval([1.0], resamples=10), r"resamples=10 must be an integer in \[100, inf\)"),
    (lambda: stats.paired_bootstrap_diff([1.0, 2.0], [1.0]), "same items: n=2 vs n=1"),
])
def test_bootstrap_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_cluster_bootstrap_resamples_whole_groups():
    # two groups with very different means: item-level resampling sees 200 items and a narrow interval;
    # resampling the 2 groups sees how little 2 independent units say
    values = torch.cat([torch.zeros(100), torch.ones(100)]).double()
    groups = [0] * 100 + [1] * 100
    lo_i, hi_i = stats.bootstrap_mean_interval(values)
    lo_g, hi_g = stats.bootstrap_mean_interval(values, groups=groups)
    assert hi_i - lo_i < 0.2 and lo_g == 0.0 and hi_g == 1.0
    # one group per item is the ordinary bootstrap (same resampling draws)
    x = torch.randn(50, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert stats.bootstrap_mean_interval(x, groups=range(50)) == stats.bootstrap_mean_interval(x)
    with pytest.raises(ValueError, match="one label per item"):
        stats.bootstrap_mean_interval(x, groups=[0, 1])
    d = stats.paired_bootstrap_diff(values + 1, values, groups=groups)
    assert d["diff"] == 1.0 and d["ci"] == (1.0, 1.0) and d["verdict"] == "higher"


def test_paired_over_seeds_hand_computed_and_verdicts():
    n = 200
    base = torch.zeros(3, n, dtype=torch.bool)
    base[:, :150] = True                     # 75% for every seed
    better = base.clone()
    better[0, 150:170] = True                # +10 points
    better[1, 150:166] = True                # +8
    better[2, 150:174] = True                # +12
    r = stats.paired_over_seeds(better, base)
    assert r["diffs"] == pytest.approx([0.10, 0.08, 0.12])
    assert r["diff"] == pytest.approx(0.10)
    half = 4.302653 * 0.02 / 3 ** 0.5        # t_{0.975,2} * sd / sqrt(k): hand-computed
    assert r["seed_ci"] == pytest.approx((0.10 - half, 0.10 + half), abs=1e-5)
    assert r["image_ci"][0] > 0 and r["verdict"] == "better" and r["seeds"] == 3 and r["n"] == n
    assert stats.paired_over_seeds(base, better)["verdict"] == "worse"
    # consistent on the images but not over seeds: one seed far worse -> the seed interval spans 0
    noisy = base.clone()
    noisy[0, 150:190] = True                 # +20
    noisy[1, 150:154] = True                 # +2
    noisy[2, :30] = False                    # -15
    r2 = stats.paired_over_seeds(noisy, base)
    assert r2["seed_ci"][0] < 0 < r2["seed_ci"][1] and r2["verdict"] == "indistinguishable"
    # one seed: only the image interval counts
    assert stats.paired_over_seeds(better[:1], base[:1])["verdict"] == "better"
    s = stats.format_paired(r)
    assert s.startswith("+10.00 pt (per seed +10.0, +8.0, +12.0; 95% interval") and s.endswith("better")
    assert "90% interval" in stats.format_paired(stats.paired_over_seeds(better, base, level=0.9))
    with pytest.raises(ValueError, match="same seeds and images"):
        stats.paired_over_seeds(better[:2], base)



# ---------------------------------------------------------------- calibration
def _reference_ece(probs, labels, bins):
    """Guo et al. (2017), eq. 3, written out in float64 loops: bins ((m-1)/M, m/M], m = 1..M."""
    n = len(labels)
    total = 0.0
    for m in range(1, bins + 1):
        lo, hi = (m - 1) / bins, m / bins
        members = [i for i in range(n) if lo < max(probs[i]) <= hi or (m == 1 and max(probs[i]) == 0)]
        if not members:
            continue
        acc = sum(int(max(range(len(probs[i])), key=lambda c: probs[i][c]) == labels[i]) for i in members) / len(members)
        conf = sum(max(probs[i]) for i in members) / len(members)
        total += len(members) / n * abs(acc - conf)
    return total


@pytest.mark.parametrize("bins", [1, 5, 15])
def test_ece_matches_the_definition_written_out(bins):
    g = torch.Generator().manual_seed(bins)
    probs = torch.softmax(torch.randn(300, 4, generator=g, dtype=torch.float64) * 2, 1)
    labels = torch.randint(0, 4, (300,), generator=g)
    ref = _reference_ece(probs.tolist(), labels.tolist(), bins)
    assert stats.expected_calibration_error(probs, labels, bins) == pytest.approx(ref, abs=1e-12)
    c = stats.calibration_bins(probs, labels, bins)
    assert c["count"].sum() == 300 and c["edges"][0] == 0 and c["edges"][-1] == 1 and len(c["edges"]) == bins + 1


def test_ece_of_calibrated_and_of_overconfident_models():
    labels = torch.tensor([0] * 8 + [1] * 2)
    # every image at confidence 0.8 for class 0, 8 of 10 right: calibrated
    calibrated = torch.tensor([[0.8, 0.2]] * 10, dtype=torch.float64)
    assert stats.expected_calibration_error(calibrated, labels) == pytest.approx(0.0, abs=1e-12)
    # certain of class 0 everywhere, 8 of 10 right: 20 points overconfident
    certain = torch.tensor([[1.0, 0.0]] * 10)
    assert stats.expected_calibration_error(certain, labels) == pytest.approx(0.2)
    c = stats.calibration_bins(certain, labels, bins=10)
    assert c["count"][-1] == 10 and c["accuracy"][-1] == pytest.approx(0.8) and c["confidence"][-1] == 1.0
    # a confidence on a bin edge belongs to the bin below: 0.6 with 5 bins is in (0.4, 0.6], bin 2
    edge = stats.calibration_bins(torch.tensor([[0.6, 0.4]], dtype=torch.float64), torch.tensor([0]), bins=5)
    assert edge["count"].tolist() == [0, 0, 1, 0, 0]


def test_paired_ece_over_seeds():
    g = torch.Generator().manual_seed(0)
    n = 400
    labels = torch.randint(0, 3, (n,), generator=g)
    logits = torch.randn(3, n, 3, generator=g, dtype=torch.float64)
    logits[torch.arange(3)[:, None], torch.arange(n)[None, :], labels] += 1.0  # a fair model: about 60% right
    fair = torch.softmax(logits, -1)
    sharp = torch.softmax(logits * 6, -1)  # the same predictions, far more confident: overconfident
    same = stats.paired_ece_over_seeds(fair, fair, labels)
    assert same["diff"] == 0 and same["verdict"] == "indistinguishable" and same["image_ci"] == (0.0, 0.0)
    worse = stats.paired_ece_over_seeds(sharp, fair, labels)
    eces = [stats.expected_calibration_error(sharp[s], labels) - stats.expected_calibration_error(fair[s], labels)
            for s in range(3)]
    assert worse["diffs"] == pytest.approx(eces) and worse["diff"] == pytest.approx(sum(eces) / 3)
    assert worse["verdict"] == "higher" and worse["image_ci"][0] > 0 and worse["seed_ci"][0] > 0
    assert stats.paired_ece_over_seeds(fair, sharp, labels)["verdict"] == "lower"
    assert stats.paired_ece_over_seeds(sharp, fair, labels) == worse  # deterministic
    assert "higher" in stats.format_paired(worse)
    one = stats.paired_ece_over_seeds(sharp[0], fair[0], labels)  # one seed: the image interval decides
    assert one["seeds"] == 1 and one["seed_ci"] == (one["diff"], one["diff"])
    # the bootstrap's one-bincount ECE of every resample equals the ECE of the resampled images themselves
    idx = torch.randint(0, n, (5, n), generator=g)
    rows = stats._ece_resampled(fair[0], labels, 15, idx)
    assert rows.shape == (5,)
    for r in range(5):
        assert float(rows[r]) == pytest.approx(stats.expected_calibration_error(fair[0][idx[r]], labels[idx[r]]),
                                              abs=1e-12)


@pytest.mark.parametrize("probs, labels, kw, match", [
    (torch.tensor([[0.5, 0.5], [0.5, 0.6]]), torch.tensor([0, 1]), {}, r"row \(1,\) sums to 1.100000"),
    (torch.tensor([[1.5, -0.5]]), torch.tensor([0]), {}, "non-negative"),
    (torch.tensor([0.5, 0.5]), torch.tensor([0]), {}, r"\(n, classes\)"),
    (torch.tensor([[0.5, 0.5]]), torch.tensor([2]), {}, r"labels must lie in \[0, 1\]"),
    (torch.tensor([[0.5, 0.5]]), torch.tensor([0, 1]), {}, r"labels must be \(n,\) = \(1,\)"),
    (torch.tensor([[0.5, 0.5]]), torch.tensor([0.0]), {}, "integer classes"),
    (torch.tensor([[0.5, 0.5]]), torch.tensor([0]), {"bins": 0}, "bins"),
])
def test_calibration_rejects_bad_input(probs, labels, kw, match):
    with pytest.raises(ValueError, match=match):
        stats.expected_calibration_error(probs, labels, **kw)


def test_paired_ece_rejects_mismatched_runs():
    p = torch.full((2, 5, 2), 0.5)
    with pytest.raises(ValueError, match="same shape"):
        stats.paired_ece_over_seeds(p, p[:1], torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="probs_b must hold probabilities"):
        stats.paired_ece_over_seeds(p, p * 2, torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="resamples"):
        stats.paired_ece_over_seeds(p, p, torch.zeros(5, dtype=torch.long), resamples=10)


def test_temperature_scaling_recovers_a_known_temperature_and_keeps_the_argmax():
    g = torch.Generator().manual_seed(3)
    n = 4000
    logits = torch.randn(n, 5, generator=g, dtype=torch.float64) * 2
    labels = torch.multinomial(torch.softmax(logits, 1), 1, generator=g).squeeze(1)  # drawn from softmax(logits)
    overconfident = torch.softmax(logits * 2.0, 1)  # the same model, its logits doubled: T = 2 undoes it
    t = stats.fit_temperature(overconfident, labels)
    assert t == pytest.approx(2.0, rel=0.1)
    fixed = stats.temperature_scale(overconfident, t)
    assert torch.equal(fixed.argmax(1), overconfident.argmax(1))
    assert stats.expected_calibration_error(fixed, labels) < stats.expected_calibration_error(overconfident, labels) / 2
    torch.testing.assert_close(stats.temperature_scale(overconfident, 1.0), overconfident)
    torch.testing.assert_close(stats.temperature_scale(torch.softmax(logits, 1), 0.5), torch.softmax(logits * 2, 1))
    with pytest.raises(ValueError, match="temperature"):
        stats.temperature_scale(overconfident, 0)
    with pytest.raises(ValueError, match="grid is empty"):
        stats.fit_temperature(overconfident, labels, grid=())
