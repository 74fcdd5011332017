"""Is this difference real? Intervals, paired comparisons and summaries over seeds.

The course's test split has 1,000 images, so one accuracy is a binomial estimate: at 98.9% its
standard error is sqrt(p(1-p)/n) = 0.33 points and a 95% interval is about +-0.65 points. Two
models evaluated on the *same* images are compared image by image (paired), which is much more
sensitive than comparing two intervals: only the images on which they disagree carry information.

- :func:`accuracy_interval`: Wilson score interval of an accuracy measured on n images;
- :func:`paired_compare`: difference of two models on the same images, a paired-bootstrap
  interval, the exact McNemar test and a verdict (``better`` / ``worse`` / ``indistinguishable``);
- :func:`seed_summary`: mean, standard deviation and Student-t interval over seeds (:func:`t_quantile`);
- :func:`paired_over_seeds`, :func:`format_paired`: two methods run with the same seeds on the same images,
  an interval over seeds and one over images, and a verdict that needs both.
- :func:`bootstrap_mean_interval`, :func:`paired_bootstrap_diff`: percentile-bootstrap interval of a mean,
  and of the mean paired difference of continuous per-item values (e.g. per-chunk NLL of two language
  models on the same chunks) with a verdict (``lower`` / ``higher`` / ``indistinguishable``).
- :func:`calibration_bins`, :func:`expected_calibration_error`, :func:`paired_ece_over_seeds`: whether a
  classifier's confidences are honest (the reliability diagram and its ECE), and two methods' ECE compared
  over seeds and images.

Everything is deterministic (the bootstrap uses its own seeded generator, never the global one).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import _validate as V

VERDICTS = ("better", "worse", "indistinguishable")


def _verdict(lo: float, hi: float, words: tuple[str, str, str] = VERDICTS) -> str:
    """words[0] if the interval (lo, hi) lies above 0, words[1] if below, else words[2]."""
    return words[0] if lo > 0 else words[1] if hi < 0 else words[2]

def normal_quantile(p: float) -> float:
    """The standard normal quantile z with P(Z <= z) = p, for p in (0, 1) (Acklam's rational
    approximation refined by one Newton step; error below 1e-9)."""
    p = V.number_in("p", p, 0.0, 1.0, lo_open=True, hi_open=True)
    a = (-3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02, 1.383577518672690e+02,
         -3.066479806614716e+01, 2.506628277459239e+00)
    b = (-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02, 6.680131188771972e+01,
         -1.328068155288572e+01)
    c = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00, -2.549732539343734e+00,
         4.374664141464968e+00, 2.938163982698783e+00)
    d = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00, 3.754408661907416e+00)
    if p < 0.02425:
        q = math.sqrt(-2 * math.log(p))
        z = (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / \
            ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1)
    elif p > 1 - 0.02425:
        return -normal_quantile(1 - p)
    else:
        q = p - 0.5
        r = q * q
        z = (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q / \
            (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1)
    e = 0.5 * math.erfc(-z / math.sqrt(2)) - p           # one Newton step on the normal CDF
    return z - e * math.sqrt(2 * math.pi) * math.exp(z * z / 2)


def t_cdf(t: float, df: int) -> float:
    """P(T <= t) for Student's t with ``df`` >= 1 degrees of freedom, exactly (Abramowitz & Stegun
    26.7.3-4: with theta = atan(t / sqrt(df)), P(|T| <= |t|) is a finite series in cos(theta))."""
    df = V.positive_int("df", df)
    t = float(t)
    theta = math.atan(abs(t) / math.sqrt(df))
    c2 = math.cos(theta) ** 2
    if df % 2:   # odd: (2/pi) [theta + sin cos (1 + 2/3 cos^2 + 2*4/(3*5) cos^4 + ...)]
        term, series = 1.0, 1.0 if df > 1 else 0.0
        for k in range(1, (df - 1) // 2):
            term *= (2 * k) / (2 * k + 1) * c2
            series += term
        inside = 2 / math.pi * (theta + math.sin(theta) * math.cos(theta) * series)
    else:        # even: sin (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ...)
        term, series = 1.0, 1.0
        for k in range(1, df // 2):
            term *= (2 * k - 1) / (2 * k) * c2
            series += term
        inside = math.sin(theta) * series
    return 0.5 + math.copysign(inside / 2, t)


def t_quantile(p: float, df: int) -> float:
    """The quantile t with P(T <= t) = p of Student's t with ``df`` >= 1 degrees of freedom, p in (0, 1)
    (bisection on :func:`t_cdf` to 1e-10; a 95% interval uses p = 0.975)."""
    p = V.number_in("p", p, 0.0, 1.0, lo_open=True, hi_open=True)
    df = V.positive_int("df", df)
    if p < 0.5:
        return -t_quantile(1 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, 2 * hi
    while hi - lo > 1e-10 * max(1.0, hi):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
    return (lo + hi) / 2


def t_quantile_975(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` >= 1 degrees of freedom (for 95% intervals)."""
    return t_quantile(0.975, df)


def _z(level: float) -> float:
    level = V.number_in("level", level, 0.0, 1.0, lo_open=True, hi_open=True)
    return normal_quantile(0.5 + level / 2)


def accuracy_interval(accuracy: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for an accuracy measured on ``n`` >= 1 independent images.

    accuracy in [0, 1] (k/n for k correct images); level in (0, 1). Returns (low, high) in [0, 1].
    Unlike the textbook p +- z sqrt(p(1-p)/n), Wilson's interval stays inside [0, 1] and keeps its
    coverage near 100% accuracy, where compressed models live.
    """
    p = V.number_in("accuracy", accuracy, 0.0, 1.0)
    n = V.positive_int("n", n)
    z = _z(level)
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # the interval contains p, exactly (at p = 0 or 1 the bounds would otherwise miss it by a rounding error)
    return min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half))


def mcnemar_p(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value for b images only model A gets right and c only B gets right:
    P(a split at least as lopsided as min(b, c) : max(b, c)) under Binomial(b + c, 1/2). b, c >= 0."""
    b = V.int_in("b", b, 0, None)
    c = V.int_in("c", c, 0, None)
    n, k = b + c, min(b, c)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


@dataclass(frozen=True)
class Comparison:
    """Model A against model B on the same n images. ``diff`` = acc(A) - acc(B) in [−1, 1];
    ``ci`` its paired-bootstrap interval; ``a_only`` / ``b_only``: images only A / only B gets right
    (fractional when averaged over seeds); ``p_value``: exact McNemar (single runs only, else None)."""
    diff: float
    ci: tuple[float, float]
    a_only: float
    b_only: float
    n: int
    p_value: float | None
    verdict: str

    def __str__(self) -> str:
        lo, hi = self.ci
        return (f"{100 * self.diff:+.2f} points [{100 * lo:+.2f}, {100 * hi:+.2f}], {self.verdict}")


def _correct_matrix(name: str, correct) -> torch.Tensor:
    t = torch.as_tensor(correct)
    if t.dim() == 1:
        t = t.unsqueeze(0)
    if t.dim() != 2 or t.numel() == 0:
        raise ValueError(f"{name} must be per-image correctness of shape (n,) or (seeds, n), got shape "
                         f"{tuple(t.shape)}")
    t = t.to(torch.float64)
    if ((t != 0) & (t != 1)).any():
        raise ValueError(f"{name} must hold 0/1 (or bool) per image, got values outside {{0, 1}}")
    return t


def paired_compare(correct_a, correct_b, level: float = 0.95, resamples: int = 4000,
                   seed: int = 0) -> Comparison:
    """Compare two models on the same images: is A better than B, worse, or indistinguishable?

    correct_a, correct_b: per-image correctness (bool or 0/1) of shape (n,) for one run or (seeds, n)
    for several runs of the same method; the two may have different numbers of seeds but must
    cover the same n images in the same order. Each image's score is its mean over seeds; the
    interval of the mean difference comes from resampling images (paired bootstrap, ``resamples`` >=
    100, percentile method, a private generator seeded with ``seed``). Verdict: ``better`` if the
    whole interval is above 0, ``worse`` if below, else ``indistinguishable``. level in (0, 1).
    """
    a = _correct_matrix("correct_a", correct_a)
    b = _correct_matrix("correct_b", correct_b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"correct_a and correct_b must cover the same images: n={a.shape[1]} vs n={b.shape[1]}")
    resamples = V.int_in("resamples", resamples, 100, None)
    level = V.number_in("level", level, 0.0, 1.0, lo_open=True, hi_open=True)
    n = a.shape[1]
    d = a.mean(0) - b.mean(0)                       # per-image difference in [-1, 1]
    g = torch.Generator().manual_seed(int(seed))
    idx = torch.randint(0, n, (resamples, n), generator=g)
    boot = d[idx].mean(1)
    lo_q, hi_q = (1 - level) / 2, (1 + level) / 2
    lo = float(torch.quantile(boot, lo_q))
    hi = float(torch.quantile(boot, hi_q))
    diff = float(d.mean())
    a_only = float(d.clamp(min=0).sum())
    b_only = float((-d).clamp(min=0).sum())
    p = None
    if a.shape[0] == 1 and b.shape[0] == 1:
        p = mcnemar_p(int(round(a_only)), int(round(b_only)))
    return Comparison(diff, (lo, hi), a_only, b_only, n, p, _verdict(lo, hi))


def seed_summary(values, level: float = 0.95) -> dict:
    """Mean, sample standard deviation and Student-t interval of the mean over seeds.

    values: one number per seed (at least 1). Returns {"mean", "std", "ci", "n"}; with one value
    std is 0.0 and ci is (mean, mean) (nothing to estimate the spread from). level in (0, 1).
    """
    vals = [float(v) for v in values]
    if not vals or not all(math.isfinite(v) for v in vals):
        raise ValueError(f"values must be a non-empty sequence of finite numbers, got {values!r}")
    k = len(vals)
    mean = sum(vals) / k
    if k == 1:
        return {"mean": mean, "std": 0.0, "ci": (mean, mean), "n": 1}
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (k - 1))
    level = V.number_in("level", level, 0.0, 1.0, lo_open=True, hi_open=True)
    q = t_quantile(0.5 + level / 2, k - 1)
    half = q * std / math.sqrt(k)
    return {"mean": mean, "std": std, "ci": (mean - half, mean + half), "n": k}


def format_accuracy(accuracy: float, n: int, std: float | None = None, seeds: int = 1) -> str:
    """'98.90% [98.06, 99.38]' (Wilson 95% on n images), with '± sd over k seeds' when seeds > 1."""
    lo, hi = accuracy_interval(accuracy, n)
    s = f"{100 * accuracy:.2f}% [{100 * lo:.2f}, {100 * hi:.2f}]"
    if seeds > 1 and std is not None:
        s += f" ± {100 * std:.2f} sd over {seeds} seeds"
    return s


def _values_1d(name: str, values) -> torch.Tensor:
    t = torch.as_tensor(values, dtype=torch.float64).reshape(-1) if not isinstance(values, torch.Tensor) \
        else values.detach().to(torch.float64).reshape(-1)
    if t.numel() == 0 or not torch.isfinite(t).all():
        raise ValueError(f"{name} must be a non-empty set of finite numbers, got {t.numel()} value(s)"
                         + ("" if t.numel() == 0 else " with NaN/inf"))
    return t


def _group_index(name: str, groups, n: int) -> list[torch.Tensor]:
    """Item indices of each group (groups: n labels, any hashable values or a tensor)."""
    labels = groups.tolist() if isinstance(groups, torch.Tensor) else list(groups)
    if len(labels) != n:
        raise ValueError(f"{name} must hold one label per item: {len(labels)} labels for {n} items")
    order = {}
    for i, g in enumerate(labels):
        order.setdefault(g, []).append(i)
    return [torch.tensor(ix) for ix in order.values()]


def bootstrap_mean_interval(values, level: float = 0.95, resamples: int = 2000,
                            seed: int = 0, groups=None) -> tuple[float, float]:
    """Percentile-bootstrap interval (lo, hi) of the mean of ``values`` (n >= 1 finite numbers,
    a tensor or sequence, any shape: flattened). Items are resampled with replacement
    ``resamples`` (>= 100) times with a private generator seeded with ``seed`` (deterministic, the
    global generator is untouched). level in (0, 1). Constant values give a zero-width interval.

    groups: None (items independent), or one label per item: then whole groups are resampled (the
    cluster bootstrap) and each resample's mean is over all items of the drawn groups. Use it when
    items of a group are correlated (chunks of one file), or the interval comes out too narrow."""
    t = _values_1d("values", values)
    resamples = V.int_in("resamples", resamples, 100, None)
    level = V.number_in("level", level, 0.0, 1.0, lo_open=True, hi_open=True)
    g = torch.Generator().manual_seed(int(seed))
    if groups is None:
        idx = torch.randint(0, t.numel(), (resamples, t.numel()), generator=g)
        boot = t[idx].mean(1)
    else:
        parts = _group_index("groups", groups, t.numel())
        sums = torch.stack([t[ix].sum() for ix in parts])
        counts = torch.tensor([float(len(ix)) for ix in parts], dtype=torch.float64)
        pick = torch.randint(0, len(parts), (resamples, len(parts)), generator=g)
        boot = sums[pick].sum(1) / counts[pick].sum(1)
    lo = float(torch.quantile(boot, (1 - level) / 2))
    hi = float(torch.quantile(boot, (1 + level) / 2))
    m = float(t.mean())
    return min(lo, m), max(hi, m)


def paired_bootstrap_diff(a, b, level: float = 0.95, resamples: int = 2000, seed: int = 0, groups=None) -> dict:
    """Paired comparison of continuous per-item values (e.g. per-chunk NLL of two models on the
    same chunks): a and b of equal length n >= 1, item i of a paired with item i of b.

    Returns {"diff": mean(a - b), "ci": (lo, hi) percentile-bootstrap interval of that mean
    (items resampled, ``resamples`` >= 100, private generator seeded with ``seed``), "n": n,
    "verdict"}: ``"higher"`` if the whole interval is above 0 (a's values are larger),
    ``"lower"`` if below 0, else ``"indistinguishable"``. level in (0, 1). For NLL, ``"lower"``
    means a is the better model. groups: as in :func:`bootstrap_mean_interval` (resample whole groups
    of paired items, e.g. the files the chunks come from)."""
    ta = _values_1d("a", a)
    tb = _values_1d("b", b)
    if ta.numel() != tb.numel():
        raise ValueError(f"a and b must hold the same items: n={ta.numel()} vs n={tb.numel()}")
    d = ta - tb
    lo, hi = bootstrap_mean_interval(d, level=level, resamples=resamples, seed=seed, groups=groups)
    return {"diff": float(d.mean()), "ci": (lo, hi), "n": int(d.numel()),
            "verdict": _verdict(lo, hi, ("higher", "lower", "indistinguishable"))}


def paired_over_seeds(correct_a, correct_b, level: float = 0.95, resamples: int = 4000,
                      seed: int = 0) -> dict:
    """Method A against method B when both ran with the same seeds (seed s of A paired with seed s of B:
    same initialisation and data order) on the same n images. Two sources of noise, two intervals:

    - over seeds: the per-seed differences acc(A_s) - acc(B_s), their mean and Student-t interval
      (``seed_summary``): how much the method's own randomness moves the gain;
    - over images: ``paired_compare`` of the seed-averaged correctness (paired bootstrap over images):
      how much a different test sample of the same size would move it.

    correct_a, correct_b: bool or 0/1 of shape (seeds, n), the same seeds in the same order (k >= 1).
    Returns {"diffs": per-seed differences, "diff": their mean, "seed_ci", "image_ci", "verdict"}: the
    verdict is ``better`` / ``worse`` only if BOTH intervals lie above / below zero, else
    ``indistinguishable`` (with one seed the seed interval is a point and only the image interval counts).
    """
    a = _correct_matrix("correct_a", correct_a)
    b = _correct_matrix("correct_b", correct_b)
    if a.shape != b.shape:
        raise ValueError(f"correct_a and correct_b must hold the same seeds and images: shapes "
                         f"{tuple(a.shape)} vs {tuple(b.shape)}")
    diffs = (a.mean(1) - b.mean(1)).tolist()
    summ = seed_summary(diffs, level)
    img = paired_compare(a, b, level=level, resamples=resamples, seed=seed)
    lo = min(summ["ci"][0], img.ci[0]) if len(diffs) > 1 else img.ci[0]
    hi = max(summ["ci"][1], img.ci[1]) if len(diffs) > 1 else img.ci[1]
    return {"diffs": diffs, "diff": summ["mean"], "seed_ci": summ["ci"], "image_ci": img.ci,
            "verdict": _verdict(lo, hi), "seeds": len(diffs), "n": img.n, "level": level}


def format_paired(cmp: dict) -> str:
    """A :func:`paired_over_seeds` result in one line: '+0.40 pt (per seed +0.3, +0.5, +0.4; 95% interval over
    seeds [+0.15, +0.65], over images [-0.10, +0.90]): indistinguishable'."""
    lo_s, hi_s = cmp["seed_ci"]
    lo_i, hi_i = cmp["image_ci"]
    per = ", ".join(f"{100 * d:+.1f}" for d in cmp["diffs"])
    level = f"{100 * cmp.get('level', 0.95):g}%"
    return (f"{100 * cmp['diff']:+.2f} pt (per seed {per}; {level} interval over seeds [{100 * lo_s:+.2f}, "
            f"{100 * hi_s:+.2f}], over images [{100 * lo_i:+.2f}, {100 * hi_i:+.2f}]): {cmp['verdict']}")


# ---------------------------------------------------------------- calibration: are the confidences honest?
def _probs_and_labels(probs, labels, name: str = "probs") -> tuple[torch.Tensor, torch.Tensor]:
    """Check ``probs`` (..., n, classes) (rows of non-negative numbers summing to 1 within 1e-4) and ``labels``
    (n,) integer classes in [0, classes); return them as float64 and int64. ``name``: the argument, for errors."""
    p = torch.as_tensor(probs).detach().to(torch.float64)
    if p.dim() < 2 or p.shape[-1] < 2 or p.shape[-2] == 0:
        raise ValueError(f"{name} must be (n, classes) with n >= 1 and classes >= 2 (or (seeds, n, classes)), "
                         f"got shape {tuple(p.shape)}")
    if not torch.isfinite(p).all() or (p < 0).any():
        raise ValueError(f"{name} must hold probabilities: finite and non-negative (apply a softmax to logits first)")
    off = (p.sum(-1) - 1).abs()
    if (off > 1e-4).any():
        worst = tuple(int(i) for i in torch.unravel_index(off.argmax(), off.shape))
        raise ValueError(f"{name} must hold probabilities, each row summing to 1 (within 1e-4): row {worst} sums to "
                         f"{float(p.sum(-1)[worst]):.6f} (apply a softmax to logits first)")
    y = torch.as_tensor(labels)
    if y.dim() != 1 or len(y) != p.shape[-2] or y.is_floating_point():
        raise ValueError(f"labels must be (n,) = ({p.shape[-2]},) integer classes, got {y.dtype} {tuple(y.shape)}")
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= p.shape[-1]):
        raise ValueError(f"labels must lie in [0, {p.shape[-1] - 1}] (classes={p.shape[-1]}), "
                         f"got [{int(y.min())}, {int(y.max())}]")
    return p, y.long()


def _confidence_bins(p: torch.Tensor, y: torch.Tensor, bins: int):
    """Per image: its confidence (largest probability), whether that class is right (0/1), its bin in [0, bins)."""
    conf, pred = p.max(-1)
    hit = (pred == y).to(torch.float64)
    return conf, hit, (conf * bins).ceil().long().clamp(1, bins) - 1   # bin b holds (b/B, (b+1)/B]


def calibration_bins(probs, labels, bins: int = 15) -> dict:
    """The reliability diagram of a classifier: its predictions grouped by confidence.

    probs: (n, classes) probabilities (a softmax of the logits: non-negative rows summing to 1), n >= 1;
    labels: (n,) true classes in [0, classes); bins >= 1 equal-width bins of confidence, bin b holding
    (b/B, (b+1)/B] (Guo et al. 2017). An image's confidence is its largest probability and its prediction
    that class. Returns float64 tensors of shape (bins,): "count" (images in the bin), "confidence" (their
    mean confidence) and "accuracy" (the fraction of them predicted right), both 0 for an empty bin; and
    "edges" (bins + 1,). A calibrated model has accuracy = confidence in every bin."""
    bins = V.positive_int("bins", bins)
    p, y = _probs_and_labels(probs, labels)
    if p.dim() != 2:
        raise ValueError(f"probs must be (n, classes) here, got shape {tuple(p.shape)}")
    conf, hit, b = _confidence_bins(p, y, bins)
    count = torch.bincount(b, minlength=bins).to(torch.float64)
    per = count.clamp_min(1)
    return {"count": count, "confidence": torch.bincount(b, weights=conf, minlength=bins) / per,
            "accuracy": torch.bincount(b, weights=hit, minlength=bins) / per,
            "edges": torch.linspace(0, 1, bins + 1, dtype=torch.float64)}


def expected_calibration_error(probs, labels, bins: int = 15) -> float:
    """ECE (Naeini et al. 2015; Guo et al. 2017): the gap between confidence and accuracy, bin by bin,
    weighted by the bins' shares of the images,

        ECE = sum_b (n_b / n) |accuracy_b - confidence_b|,   in [0, 1] (0: calibrated).

    probs, labels, bins as in :func:`calibration_bins`. Note the number depends on ``bins`` (15 is the
    common choice) and, on small test sets, has a positive bias (a few images per bin look miscalibrated by
    chance): compare models on the same images with the same bins (:func:`paired_ece_over_seeds`)."""
    c = calibration_bins(probs, labels, bins)
    return float((c["count"] / c["count"].sum() * (c["accuracy"] - c["confidence"]).abs()).sum())


def _ece_resampled(p: torch.Tensor, y: torch.Tensor, bins: int, idx: torch.Tensor) -> torch.Tensor:
    """ECE of (n, classes) ``p`` on each row of ``idx`` (R, n) of resampled image indices, shape (R,).
    Uses ECE = (1/n) sum_b |sum_{i in b} (hit_i - conf_i)|, one weighted bincount for all R resamples."""
    conf, hit, b = _confidence_bins(p, y, bins)
    r, n = idx.shape
    flat = (b[idx] + bins * torch.arange(r)[:, None]).reshape(-1)
    gap = torch.bincount(flat, weights=(hit - conf)[idx].reshape(-1), minlength=r * bins).reshape(r, bins)
    return gap.abs().sum(1) / n


def paired_ece_over_seeds(probs_a, probs_b, labels, bins: int = 15, level: float = 0.95, resamples: int = 2000,
                          seed: int = 0) -> dict:
    """ECE of method A minus ECE of method B, both run with the same seeds on the same n images, judged like
    :func:`paired_over_seeds` (whose keys it returns, so :func:`format_paired` prints it): an interval over
    seeds (Student t on the per-seed differences) and one over images (percentile bootstrap: the images are
    resampled once per draw for both methods and every seed, the seed-averaged difference recomputed). The
    verdict is ``lower`` (A better calibrated) / ``higher`` only if both intervals lie below / above zero,
    else ``indistinguishable``. The image interval is the percentile interval, widened where needed to contain
    the difference measured on all images (as :func:`bootstrap_mean_interval` does): ECE is not a mean, and on
    resampled images it is biased upwards, most for the better-calibrated model, which can shift the whole
    resampled distribution of a small difference to one side of it.

    probs_a, probs_b: (seeds, n, classes) probabilities (or (n, classes) for one seed), the same seeds in the
    same order; labels (n,); bins >= 1; level in (0, 1); resamples >= 100; seed: the bootstrap's private
    generator (deterministic; the global one is untouched)."""
    bins = V.positive_int("bins", bins)
    resamples = V.int_in("resamples", resamples, 100, None)
    level = V.number_in("level", level, 0.0, 1.0, lo_open=True, hi_open=True)
    a, y = _probs_and_labels(probs_a, labels, "probs_a")
    b, _ = _probs_and_labels(probs_b, labels, "probs_b")
    a, b = (t.unsqueeze(0) if t.dim() == 2 else t for t in (a, b))
    if a.dim() != 3 or a.shape != b.shape:
        raise ValueError(f"probs_a and probs_b must be (seeds, n, classes) of the same shape, got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    n = a.shape[1]
    whole = torch.arange(n)[None, :]
    diffs = [float(_ece_resampled(a[s], y, bins, whole)[0] - _ece_resampled(b[s], y, bins, whole)[0])
             for s in range(a.shape[0])]
    summ = seed_summary(diffs, level)
    idx = torch.randint(0, n, (resamples, n), generator=torch.Generator().manual_seed(int(seed)))
    boot = sum(_ece_resampled(a[s], y, bins, idx) - _ece_resampled(b[s], y, bins, idx)
               for s in range(a.shape[0])) / a.shape[0]
    img = (float(torch.quantile(boot, (1 - level) / 2)), float(torch.quantile(boot, (1 + level) / 2)))
    img = (min(img[0], summ["mean"]), max(img[1], summ["mean"]))
    lo = min(summ["ci"][0], img[0]) if len(diffs) > 1 else img[0]
    hi = max(summ["ci"][1], img[1]) if len(diffs) > 1 else img[1]
    return {"diffs": diffs, "diff": summ["mean"], "seed_ci": summ["ci"], "image_ci": img,
            "verdict": _verdict(lo, hi, ("higher", "lower", "indistinguishable")), "seeds": len(diffs), "n": n,
            "level": level}


def temperature_scale(probs, temperature: float) -> torch.Tensor:
    """Probabilities softened (T > 1) or sharpened (T < 1) as if the logits had been divided by T:
    softmax(log p / T) = p^(1/T) / sum_c p_c^(1/T), shape and dtype of ``probs`` (..., classes) float64.
    The arg max never changes, so accuracy does not either (Guo et al. 2017's post-hoc calibration).
    temperature > 0."""
    t = V.number_in("temperature", temperature, 0.0, None, lo_open=True)
    p = torch.as_tensor(probs).detach().to(torch.float64)
    return torch.softmax(torch.log(p.clamp_min(1e-300)) / t, dim=-1)


TEMPERATURES = tuple(float(v) for v in torch.logspace(-2, 2, 81, base=2, dtype=torch.float64))  # 1/4 .. 4


def fit_temperature(probs, labels, grid=TEMPERATURES) -> float:
    """The temperature T of ``grid`` (positive numbers; default 81 values from 1/4 to 4, evenly spaced in log)
    that minimises the mean negative log-likelihood of ``labels`` (n,) under :func:`temperature_scale` of
    ``probs`` (n, classes): fit it on a validation split, never on the images it will be judged on. A grid
    instead of an optimiser: deterministic, and the NLL of one parameter has no local minima to trap it."""
    p, y = _probs_and_labels(probs, labels)
    grid = [V.number_in("grid", g, 0.0, None, lo_open=True) for g in grid]
    if not grid:
        raise ValueError("grid is empty: give at least one temperature > 0")
    nll = [float(-torch.log(temperature_scale(p, g)[torch.arange(len(y)), y].clamp_min(1e-300)).mean()) for g in grid]
    return grid[min(range(len(grid)), key=nll.__getitem__)]
