"""Figures the notebooks share (matplotlib only). Each function returns the Figure."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch


def show_samples(dataset, classes, n: int = 20, cols: int = 10, mean=None, std=None):
    """Grid of the first ``n`` images of ``dataset`` with their labels; un-normalises with mean/std."""
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.1, rows * 1.3))
    for i, ax in enumerate(np.ravel(axes)):
        ax.axis("off")
        if i >= n or i >= len(dataset):
            continue
        x, y = dataset[i]
        img = x.clone()
        if mean is not None:
            img = img * torch.tensor(std).view(-1, 1, 1) + torch.tensor(mean).view(-1, 1, 1)
        img = img.clamp(0, 1).permute(1, 2, 0).squeeze(-1).numpy()
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
        ax.set_title(str(classes[int(y)]), fontsize=8)
    fig.tight_layout()
    return fig


def plot_history(histories: dict, title: str = "training"):
    """Train loss and validation accuracy per epoch for {label: History}."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    for label, h in histories.items():
        h = h if isinstance(h, dict) else h.to_dict()
        ep = np.arange(1, len(h["train_loss"]) + 1)
        a.plot(ep, h["train_loss"], marker=".", label=label)
        if h["val_acc"]:
            b.plot(ep, 100 * np.array(h["val_acc"]), marker=".", label=label)
    a.set(xlabel="epoch", ylabel="train loss", yscale="log", title=title)
    b.set(xlabel="epoch", ylabel="val accuracy (%)", title="validation")
    b.legend()
    fig.tight_layout()
    return fig


def weight_histograms(model, bins: int = 80, log: bool = True):
    """One histogram per Conv2d/Linear weight tensor of ``model``."""
    from .measure import prunable_weights
    ws = prunable_weights(model)
    fig, axes = plt.subplots(1, len(ws), figsize=(3 * len(ws), 2.8))
    for ax, (name, w) in zip(np.atleast_1d(axes), ws):
        v = w.detach().flatten().cpu().numpy()
        ax.hist(v, bins=bins, log=log, color="C0")
        ax.set_title(f"{name} ({v.size:,})", fontsize=9)
        ax.set_xlabel("weight")
    fig.tight_layout()
    return fig


def pareto(records: list[dict], x: str = "size_bytes", y: str = "accuracy", logx: bool = True, ax=None,
           title: str | None = None):
    """Scatter of ``y`` against ``x`` for records, labelled by name, with the Pareto front drawn."""
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 4))
    else:
        fig = ax.figure
    pts = [(r[x], r[y], r["name"]) for r in records if r.get(x) is not None]
    for i, (px, py, name) in enumerate(pts):
        ax.scatter(px, 100 * py, color=f"C{i % 10}")
        ax.annotate(name, (px, 100 * py), fontsize=7, xytext=(3, 3), textcoords="offset points")
    front, best = [], -1.0
    for px, py, _ in sorted(pts):
        if py > best:
            front.append((px, 100 * py))
            best = py
    if front:
        ax.step(*zip(*front), where="post", color="k", alpha=0.4, lw=1)
    ax.set(xlabel=x, ylabel=f"{y} (%)", xscale="log" if logx else "linear", title=title)
    fig.tight_layout()
    return fig


def spectra(curves: dict, normalize: bool = True, energy_levels=(0.9, 0.99), title: str = "singular values"):
    """Singular-value spectra {label: 1-D descending values}: left s_i / s_1 (log scale) against
    i / len(s), right the retained energy sum_{j<=i} s_j^2 / sum s^2 with dotted ``energy_levels``."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.4))
    for i, (label, s) in enumerate(curves.items()):
        s = np.asarray(torch.as_tensor(s).double().cpu(), dtype=float)
        x = np.arange(1, len(s) + 1) / len(s)
        a.plot(x, s / s[0] if normalize else s, label=f"{label} ({len(s)})", color=f"C{i % 10}")
        b.plot(x, np.cumsum(s ** 2) / np.sum(s ** 2), color=f"C{i % 10}")
    for e in energy_levels:
        b.axhline(e, ls=":", color="k", lw=0.8)
    a.set(xlabel="rank / full rank", ylabel="s_i / s_1" if normalize else "s_i", yscale="log", title=title)
    b.set(xlabel="rank / full rank", ylabel="retained energy", title="energy of the leading values")
    a.legend(fontsize=8)
    fig.tight_layout()
    return fig


def sparsity_curves(curves: dict[str, tuple], reference: float | None = None, ylim=None,
                    reference_label: str = "dense baseline", xlabel: str = "global sparsity (%)",
                    ylabel: str = "test accuracy (%)", title: str = "accuracy vs sparsity", figsize=(6, 3.8)):
    """Accuracy (%) against sparsity (%) for {label: (sparsities, accuracies)}, both as fractions in
    [0, 1]; a dashed line at ``reference`` (an accuracy fraction, labelled ``reference_label``);
    ``ylim`` in percent."""
    fig, ax = plt.subplots(figsize=figsize)
    for label, (sps, accs) in curves.items():
        ax.plot([100 * s for s in sps], [100 * a for a in accs], marker="o", label=label)
    if reference is not None:
        ax.axhline(100 * reference, color="k", ls="--", lw=1, label=reference_label)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def sensitivity(scan: dict[str, list[float]], sparsities, reference: float | None = None):
    """Accuracy (%) against sparsity, one line per layer pruned alone (output of
    ``pruning.sensitivity_scan`` with the same ``sparsities``); dashed line at the unpruned
    ``reference`` accuracy. The same figure as ``sparsity_curves``, labelled for a scan."""
    return sparsity_curves({name: (sparsities, accs) for name, accs in scan.items()}, reference,
                           reference_label="unpruned", xlabel="sparsity of that layer (%)", ylabel="accuracy (%)",
                           title="sensitivity scan (no fine-tuning)", figsize=(6, 3.6))


def soft_targets(images: torch.Tensor, probs: dict, classes, labels=None):
    """One row per image: the image, then its class probabilities at each temperature.

    images: (K, C, H, W); probs: {T: (K, num_classes)} as from ``distillation.teacher_probabilities``.
    The probability axis is logarithmic so the small "dark knowledge" probabilities show.
    Returns the matplotlib Figure.
    """
    k = len(images)
    fig, axes = plt.subplots(k, 2, figsize=(8, 1.7 * k), gridspec_kw={"width_ratios": [1, 5]}, squeeze=False)
    xs = np.arange(len(classes))
    temps = list(probs)
    width = 0.8 / len(temps)
    for i in range(k):
        img = images[i].detach().cpu()
        axes[i, 0].imshow(img.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray" if img.shape[0] == 1 else None)
        axes[i, 0].axis("off")
        if labels is not None:
            axes[i, 0].set_title(f"label {classes[int(labels[i])]}", fontsize=8)
        ax = axes[i, 1]
        for j, t in enumerate(temps):
            ax.bar(xs + (j - (len(temps) - 1) / 2) * width, probs[t][i].numpy(), width, label=f"T={t}")
        ax.set_yscale("log")
        ax.set_ylim(1e-6, 1.5)
        ax.set_xticks(xs, [str(c) for c in classes], fontsize=8)
        ax.set_ylabel("p", fontsize=8)
    axes[0, 1].legend(ncol=len(temps), fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def layer_shares(model, input_shape: tuple) -> dict:
    """Each counted layer's share of the model's parameters and of its MACs, as fractions in [0, 1].

    model: an ``nn.Module`` whose Conv2d/Linear layers ``measure.macs_by_layer`` can count;
    input_shape: (C, H, W) of ONE input (e.g. (1, 28, 28)). Returns {layer name: {"params": share,
    "macs": share, "param_count": int, "mac_count": int}} in module order; parameter shares are of
    ``measure.count_params(model)`` (weights and biases), MAC shares of ``measure.macs``. Parameters
    outside the counted layers (e.g. BatchNorm) appear under "other" (MAC share 0) when there are any.
    Raises ValueError for a bad ``input_shape`` or a model with no countable layer.
    """
    from torch import nn

    from .measure import count_params, macs_by_layer
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
    per_macs = macs_by_layer(model, input_shape)
    total_params, total_macs = count_params(model), sum(per_macs.values())
    if total_params == 0 or total_macs == 0:
        raise ValueError(f"model has {total_params} parameters and {total_macs} MACs: shares are undefined")
    out = {}
    for name, m in per_macs.items():
        p = sum(t.numel() for t in model.get_submodule(name).parameters())
        out[name] = {"params": p / total_params, "macs": m / total_macs, "param_count": p, "mac_count": m}
    rest = total_params - sum(v["param_count"] for v in out.values())
    if rest > 0:
        out["other"] = {"params": rest / total_params, "macs": 0.0, "param_count": rest, "mac_count": 0}
    return out


def params_vs_macs(model, input_shape: tuple, title: str = "where the parameters and the arithmetic are"):
    """Grouped bar chart: each layer's share (%) of the parameters next to its share (%) of the MACs.

    model and input_shape (C, H, W) as in :func:`layer_shares`. Bars are labelled with their share;
    the two series each sum to 100%. Returns the Figure (one Axes, two bar containers:
    parameters first, MACs second)."""
    shares = layer_shares(model, input_shape)
    names = list(shares)
    xs = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(1.4 * len(names) + 2.5, 3.4))
    for j, (key, label) in enumerate((("params", "share of parameters"), ("macs", "share of MACs"))):
        vals = [100 * shares[n][key] for n in names]
        bars = ax.bar(xs + (j - 0.5) * 0.4, vals, 0.4, label=label, color=f"C{j}")
        ax.bar_label(bars, [f"{v:.0f}%" if v >= 0.5 else f"{v:.1f}%" for v in vals], fontsize=8, padding=1)
    ax.set_xticks(xs, names)
    ax.set(ylabel="share of the model (%)", ylim=(0, 110), title=title)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


# pareto_seeds: ten colours, then the next shape (filled for models, hollow for controls)
MODEL_MARKERS = ("o", "D", "^")
CONTROL_MARKERS = ("s", "p", "v")


def pareto_seeds(records: list[dict], x: str = "macs", y: str = "accuracy", logx: bool = True, min_span: float = 2.0,
                 baseline: str | None = "baseline", title: str | None = None, ax=None):
    """Accuracy against cost for results records, with the noise drawn so it cannot pass for a frontier.

    records: course records (``records.record``); ``x`` a numeric field (e.g. "macs", "params",
    "latency_ms"), ``y`` a fraction in [0, 1] (plotted in %). Each record is one point at its mean with
    an error bar of +- ``accuracy_std`` over its seeds (records with ``seeds`` > 1); controls (records
    with ``control_of``) are hollow squares, the others filled circles; from the 11th record on, when the ten
    colours repeat, the shapes change (``MODEL_MARKERS``, ``CONTROL_MARKERS``), so no two of up to 30 points look alike. The ``baseline`` record's 95%
    interval on the test images (``accuracy_ci``) is a grey band: points inside it are within the test
    split's noise of the baseline. Names go to a legend beside the axes (labels never overlap). The y
    range spans at least ``min_span`` > 0 points. The dotted step line is the Pareto front of the means.
    Returns the Figure."""
    if min_span <= 0:
        raise ValueError(f"min_span={min_span!r} must be a number of points > 0")
    pts = [r for r in records if r.get(x) is not None and r.get(y) is not None]
    if not pts:
        raise ValueError(f"no record has both {x!r} and {y!r}")
    if ax is None:
        fig, ax = plt.subplots(figsize=(8, 4))
    else:
        fig = ax.figure
    ys = []
    for i, r in enumerate(pts):
        mean = 100 * r[y]
        err = 100 * r.get("accuracy_std", 0.0) if r.get("seeds", 1) > 1 and y == "accuracy" else 0.0
        control = r.get("control_of") is not None
        label = r["name"] + (f" ({r['seeds']} seeds)" if r.get("seeds", 1) > 1 else "")
        shape = (CONTROL_MARKERS if control else MODEL_MARKERS)[(i // 10) % len(MODEL_MARKERS)]
        ax.errorbar(r[x], mean, yerr=err if err else None, fmt=shape, ms=7, capsize=3,
                    color=f"C{i % 10}", mfc="white" if control else f"C{i % 10}", label=label)
        ys += [mean - err, mean + err]
    base = next((r for r in pts if r["name"] == baseline), None) if baseline else None
    if base is not None and base.get("accuracy_ci") and y == "accuracy":
        lo, hi = (100 * v for v in base["accuracy_ci"])
        ax.axhspan(lo, hi, color="0.85", zorder=0, label=f"{baseline}: 95% interval on {base.get('n_test', '?')} images")
        ys += [lo, hi]
    front, best = [], -1.0
    for r in sorted(pts, key=lambda r: r[x]):
        if r[y] > best:
            front.append((r[x], 100 * r[y]))
            best = r[y]
    if len(front) > 1:
        ax.step(*zip(*front), where="post", color="k", alpha=0.4, lw=1, ls=":")
    low, high = min(ys), max(ys)
    pad = max(0.0, min_span - (high - low)) / 2 + 0.1 * (high - low)
    top = min(100.5, high + pad)
    ax.set_ylim(min(low - pad, top - min_span), top)
    ax.set(xlabel=x, ylabel=f"{y} (%)", xscale="log" if logx else "linear", title=title)
    if logx:
        from matplotlib.ticker import NullFormatter
        ax.xaxis.set_minor_formatter(NullFormatter())   # minor labels like "3x10^5" would collide
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    return fig


def rank_curves(errors: dict, accuracy: dict, reference: float | None = None, xlabel: str = "rank",
                title: str = "error and accuracy against the rank"):
    """Two panels sharing the x axis (log scale): left the relative errors {label: (xs, errors)} (fractions,
    plotted as they are), right the accuracies {label: (xs, accuracies)} (fractions in [0, 1], plotted
    in %) with a dashed ``reference`` accuracy. Every xs > 0. Returns the Figure."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.4))
    for i, (label, (xs, vals)) in enumerate(errors.items()):
        a.plot(xs, vals, marker="o", color=f"C{i % 10}", label=label)
    for i, (label, (xs, accs)) in enumerate(accuracy.items()):
        b.plot(xs, [100 * v for v in accs], marker="s", color=f"C{(i + len(errors)) % 10}", label=label)
    if reference is not None:
        b.axhline(100 * reference, color="k", ls="--", lw=1, label="unfactorized")
    a.set(xscale="log", xlabel=xlabel, ylabel="relative error", title=title, ylim=(0, None))
    b.set(xscale="log", xlabel=xlabel, ylabel="accuracy (%)", title="accuracy")
    from matplotlib.ticker import NullFormatter, ScalarFormatter
    ticks = sorted({v for xs, _ in [*errors.values(), *accuracy.values()] for v in xs})
    for ax in (a, b):                                  # label the ranks themselves, not powers of ten
        ax.set_xticks(ticks)
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
    a.legend(fontsize=8)
    b.legend(fontsize=8)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- chapter 1: pruning
def _mean_and_seeds(acc) -> tuple[float, list[float]]:
    vals = [float(a) for a in acc] if isinstance(acc, (list, tuple)) else [float(acc)]
    if not vals:
        raise ValueError("an accuracy entry is empty: give a number or a list of per-seed numbers")
    return sum(vals) / len(vals), vals


def accuracy_vs_sparsity(series: dict, n_test: int, reference: float | None = None, ylim=None,
                         reference_label: str = "dense baseline",
                         xlabel: str = "parameters removed, % of the baseline's (1 - non-zeros / baseline params)",
                         ylabel: str = "test accuracy (%)", title: str = "accuracy vs sparsity", figsize=(7, 4.2)):
    """Accuracy (%) against sparsity (%) with seeds and intervals: one series per method or control.

    series: {label: (xs, accs)}: xs fractions in [0, 1]; each acc is a number (one run) or a list of
    per-seed numbers in [0, 1]. A series with several points is drawn as a line through the means;
    one point (a control) as a large marker. Error bars: the 95% Wilson interval of the mean on
    ``n_test`` (>= 1) test images (``stats.accuracy_interval``, the test-sampling noise); small dots:
    the individual seeds. reference: an accuracy fraction drawn as a dashed line with its Wilson band
    (shaded). ylim in percent. Returns the Figure.
    """
    from .stats import accuracy_interval
    if not isinstance(n_test, int) or n_test < 1:
        raise ValueError(f"n_test={n_test!r} must be an integer >= 1")
    fig, ax = plt.subplots(figsize=figsize)
    markers = "osD^vP*Xh<>"
    for i, (label, (xs, accs)) in enumerate(series.items()):
        if len(xs) != len(accs) or not len(xs):
            raise ValueError(f"series[{label!r}]: xs and accs must be non-empty and of equal length")
        means, lo, hi = [], [], []
        color = f"C{i % 10}"
        for x, acc in zip(xs, accs):
            m, vals = _mean_and_seeds(acc)
            a, b = accuracy_interval(min(max(m, 0.0), 1.0), n_test)
            means.append(100 * m)
            lo.append(100 * max(0.0, m - a))  # a mean over seeds can sit outside the interval of its
            hi.append(100 * max(0.0, b - m))  # clipped value only by rounding
            if len(vals) > 1:
                ax.plot([100 * x] * len(vals), [100 * v for v in vals], ".", color=color, ms=3, alpha=0.6)
        px = [100 * x for x in xs]
        single = len(xs) == 1
        ax.errorbar(px, means, yerr=[lo, hi], color=color, marker=markers[i % len(markers)],
                    ms=8 if single else 5, ls="none" if single else "-", capsize=3, lw=1.2, label=label)
    if reference is not None:
        a, b = accuracy_interval(reference, n_test)
        ax.axhline(100 * reference, color="k", ls="--", lw=1, label=reference_label)
        ax.axhspan(100 * a, 100 * b, color="k", alpha=0.08, lw=0)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return fig


def filter_norms(norms, n_keep: int, title: str = "L1 norm of each filter, sorted"):
    """Bar chart of a layer's filter norms (a 1-D tensor or sequence, e.g. ``pruning.filter_l1_norms``)
    sorted from largest to smallest; the ``n_keep`` (in [0, len]) largest in blue (kept), the rest in
    red (removed), with the cut line between them. Returns the Figure."""
    vals = sorted((float(v) for v in (norms.tolist() if torch.is_tensor(norms) else norms)), reverse=True)
    if not isinstance(n_keep, int) or not 0 <= n_keep <= len(vals):
        raise ValueError(f"n_keep={n_keep!r} must be an integer in [0, {len(vals)}]")
    fig, ax = plt.subplots(figsize=(7, 2.8))
    xs = np.arange(len(vals))
    ax.bar(xs[:n_keep], vals[:n_keep], color="C0", label=f"kept ({n_keep})")
    ax.bar(xs[n_keep:], vals[n_keep:], color="C3", label=f"removed ({len(vals) - n_keep})")
    ax.axvline(n_keep - 0.5, color="k", ls="--", lw=1)
    ax.set(xlabel="filter rank (by L1 norm)", ylabel="L1 norm", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def flatten_columns(weight, kept, per_channel: int, rows: int = 64,
                    title: str = "columns grouped by channel"):
    """How a flatten ties a convolution's output channels to the next linear layer's columns.

    weight: the linear layer's weight, shape (out, in) with ``in`` = channels x ``per_channel`` (>= 1), e.g.
    ``fc1.weight`` of LeNet-5 with 50 channels of 4 x 4 = 16 positions; kept: indices (in [0, channels)) of the
    channels that stay. Draws |weight| for the first ``rows`` (>= 1) rows, the columns of each removed channel
    shaded red (they leave with their channel), and a strip above marking each channel's block of columns.
    Returns the Figure."""
    w = torch.as_tensor(weight).detach().float()
    if w.dim() != 2:
        raise ValueError(f"weight must be 2-D (out, in), got shape {tuple(w.shape)}")
    if not isinstance(per_channel, int) or per_channel < 1 or w.shape[1] % per_channel:
        raise ValueError(f"per_channel={per_channel!r} must be a positive integer dividing in={w.shape[1]}")
    if not isinstance(rows, int) or rows < 1:
        raise ValueError(f"rows={rows!r} must be an integer >= 1")
    channels = w.shape[1] // per_channel
    kept = {int(k) for k in (kept.tolist() if torch.is_tensor(kept) else kept)}
    if any(not 0 <= k < channels for k in kept):
        raise ValueError(f"kept must hold channel indices in [0, {channels}), got {sorted(kept)}")
    fig, (top, ax) = plt.subplots(2, 1, figsize=(9, 3.6), sharex=True, gridspec_kw={"height_ratios": [1, 8]})
    strip = np.repeat(np.isin(np.arange(channels), sorted(kept)), per_channel)[None].astype(float)
    top.imshow(strip, aspect="auto", cmap="RdYlBu", vmin=-0.2, vmax=1.2, interpolation="nearest")
    top.set_yticks([])
    top.set_title(f"{title}: {len(kept)} of {channels} channels kept (blue), {channels - len(kept)} removed (red)",
                  fontsize=9)
    ax.imshow(w[:rows].abs().numpy(), aspect="auto", cmap="Greys", interpolation="nearest")
    for c in range(channels):
        if c not in kept:
            ax.axvspan(c * per_channel - 0.5, (c + 1) * per_channel - 0.5, color="C3", alpha=0.35, lw=0)
    step = max(1, channels // 10)
    ax.set_xticks([c * per_channel + per_channel / 2 - 0.5 for c in range(0, channels, step)],
                  [str(c) for c in range(0, channels, step)])
    ax.set(xlabel=f"input column, labelled by its channel (columns {per_channel}j ... {per_channel}j+{per_channel - 1})",
           ylabel=f"output unit (first {min(rows, w.shape[0])})")
    fig.tight_layout()
    return fig


def pruning_schedule(history, total_steps: int, title: str = "cubic schedule, as applied"):
    """Sparsity against optimizer step for a ``pruning.GradualPruner``'s ``history`` [(step, sparsity)],
    drawn over the whole run of ``total_steps`` (>= 1) steps: the ramp, then the recovery phase at the
    final sparsity (shaded). Returns the Figure."""
    if not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps={total_steps!r} must be an integer >= 1")
    steps = [0] + [int(t) for t, _ in history]
    sps = [0.0] + [100 * float(s) for _, s in history]
    fig, ax = plt.subplots(figsize=(6, 2.6))
    ax.step(steps + [total_steps], sps + [sps[-1]], where="post", marker=".", ms=4)
    if history:
        ax.axvspan(steps[-1], total_steps, color="C2", alpha=0.15, lw=0, label="recovery at the final sparsity")
        ax.legend(fontsize=8, loc="lower right")
    ax.set(xlabel="optimizer step", ylabel="sparsity (%)", xlim=(0, total_steps), title=title)
    fig.tight_layout()
    return fig


def time_breakdown(parts: dict, order=None, title: str = "where a forward pass spends its time"):
    """Stacked horizontal bars: for each model (key), its time per part in ms, as returned by
    ``measure.time_children`` / ``compare_time_children`` ({part: ms} with "other" and "total"; "total"
    is not drawn, it is the bar's length). order: the parts to stack, in order (default: every part
    but "total"). Returns the Figure."""
    if not parts:
        raise ValueError("parts is empty: give {model label: {part: ms}}")
    first = next(iter(parts.values()))
    order = list(order) if order is not None else [k for k in first if k != "total"]
    fig, ax = plt.subplots(figsize=(7, 0.55 * len(parts) + 1.4))
    labels = list(parts)
    left = np.zeros(len(labels))
    for j, part in enumerate(order):
        vals = np.array([max(float(parts[m].get(part, 0.0)), 0.0) for m in labels])
        ax.barh(labels, vals, left=left, color=f"C{j % 10}", label=part)
        left += vals
    ax.invert_yaxis()
    ax.set(xlabel="ms per batch of 64 (single thread)", title=title)
    ax.legend(fontsize=7, ncol=len(order), loc="upper center", bbox_to_anchor=(0.5, -0.3 if len(parts) < 4 else -0.18))
    fig.tight_layout()
    return fig


def quantizer_staircase(scale: float, zero_point: int, qmin: int, qmax: int, lo: float | None = None,
                        hi: float | None = None, title: str = "the quantizer and its straight-through gradient"):
    """Left: x -> x_hat of an affine quantizer (``scale`` > 0, integer grid [qmin, qmax] with
    ``zero_point``) against the identity; right: the clipped straight-through gradient d x_hat / d x
    (1 inside the grid's range, 0 where x is clamped) used by QAT. lo, hi: the x range drawn
    (default: the grid's range widened by 30%). Returns the Figure."""
    if not scale > 0 or qmin >= qmax:
        raise ValueError(f"scale={scale!r} must be > 0 and qmin={qmin} < qmax={qmax}")
    rlo, rhi = (qmin - zero_point) * scale, (qmax - zero_point) * scale
    pad = 0.3 * (rhi - rlo)
    lo = rlo - pad if lo is None else lo
    hi = rhi + pad if hi is None else hi
    x = torch.linspace(lo, hi, 2001)
    q = torch.round(x / scale) + zero_point
    x_hat = (torch.clamp(q, qmin, qmax) - zero_point) * scale
    grad = ((q >= qmin) & (q <= qmax)).float()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    axes[0].plot(x, x, "k:", lw=1, label="identity")
    axes[0].plot(x, x_hat, color="C0", label=r"$\hat x$ (forward)")
    axes[0].set(xlabel="x", ylabel=r"$\hat x$", title=f"{qmax - qmin + 1} levels, step s = {scale:.3g}")
    axes[0].legend(fontsize=8)
    axes[1].plot(x, grad, color="C3", label="straight-through (backward)")
    axes[1].plot(x, torch.zeros_like(x), color="C7", ls="--", label="true derivative (0 almost everywhere)")
    axes[1].set(xlabel="x", ylabel=r"$\partial \hat x / \partial x$", ylim=(-0.1, 1.2), title="gradient used by QAT")
    axes[1].legend(fontsize=8, loc="center right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def accuracy_by_levels(rows: dict, reference: tuple | None = None, title: str = "accuracy at equal numbers of levels"):
    """Accuracy (%) against the number of weight levels, one line per method.

    rows: {method: {levels: (accuracy, low, high)}} with accuracies in [0, 1] and (low, high) the
    interval drawn as an error bar (e.g. the spread over seeds or a 95% interval); reference:
    (accuracy, low, high) of the float baseline, drawn as a band. Returns the Figure."""
    if not rows:
        raise ValueError("rows is empty: give {method: {levels: (accuracy, low, high)}}")
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    all_levels = sorted({lv for r in rows.values() for lv in r})
    for i, (method, pts) in enumerate(rows.items()):
        lv = sorted(pts)
        acc = np.array([100 * pts[k][0] for k in lv])
        err = np.array([[100 * (pts[k][0] - pts[k][1]) for k in lv], [100 * (pts[k][2] - pts[k][0]) for k in lv]])
        off = (i - (len(rows) - 1) / 2) * 0.06
        ax.errorbar(np.array(lv, float) * (1 + off), acc, yerr=np.clip(err, 0, None), marker="o", capsize=3,
                    label=method, color=f"C{i % 10}")
    if reference is not None:
        ax.axhspan(100 * reference[1], 100 * reference[2], color="k", alpha=0.1, label="float baseline (95% interval)")
        ax.axhline(100 * reference[0], color="k", lw=1)
    ax.set_xscale("log", base=2)
    ax.set_xticks(all_levels, [str(v) for v in all_levels])
    ax.set(xlabel="weight levels per layer or channel", ylabel="test accuracy (%)", title=title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- chapter 1: pruning (continued)
def accuracy_vs_speed(records: list[dict], reference: str = "baseline", title: str = "accuracy vs speed",
                      figsize=(7, 4.2)):
    """Accuracy (%) against speed-up for results records (``records.record`` dicts with ``latency_ms``,
    ``accuracy``, ``accuracy_ci`` and, for several seeds, ``accuracies``): x is the ``reference`` record's
    latency divided by each record's (log scale; 1 = as fast as the reference), error bars the 95%
    interval of each accuracy on the test images, small dots the seeds, the grey band the reference's
    interval. No Pareto front is drawn: a front through means that differ by less than their intervals
    would present noise as a frontier. Records without a latency are skipped. Returns the Figure."""
    ref = next((r for r in records if r["name"] == reference), None)
    if ref is None or not ref.get("latency_ms"):
        raise ValueError(f"reference={reference!r} must name a record with a latency_ms")
    fig, ax = plt.subplots(figsize=figsize)
    lo, hi = ref["accuracy_ci"]
    ax.axhspan(100 * lo, 100 * hi, color="k", alpha=0.08, lw=0)
    ax.axhline(100 * ref["accuracy"], color="k", ls="--", lw=1)
    for i, r in enumerate(r for r in records if r.get("latency_ms")):
        x = ref["latency_ms"] / r["latency_ms"]
        y = 100 * r["accuracy"]
        a, b = r["accuracy_ci"]
        color = f"C{i % 10}"
        ax.errorbar([x], [y], yerr=[[y - 100 * a], [100 * b - y]], color=color, marker="o", capsize=3, ms=5)
        for v in r.get("accuracies", []):
            ax.plot([x], [100 * v], ".", color=color, ms=3, alpha=0.6)
        ax.annotate(r["name"], (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.set(xlabel=f"speed-up against {reference} (its latency / the model's, log scale)",
           ylabel="test accuracy (%)", title=title)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- chapter 7: the roofline
def roofline(rows: list[dict], bandwidth_gbs: float, peak_gflops,
             title: str = "roofline: attainable GFLOP/s vs arithmetic intensity", figsize=(7.5, 4.8)):
    """The roofline model with measured kernels on it, log-log.

    rows: dicts with ``intensity`` (FLOP/byte), ``gflops`` (achieved GFLOP/s), ``format`` and ``batch``
    (e.g. ``roofline.time_formats`` rows, of one or several shapes: each format's points are labelled
    once per batch). peak_gflops: one compute peak (GFLOP/s), or {label: peak} for several (e.g. fp32,
    bf16 and int8: a kernel's roof is the peak of the arithmetic it uses). Each roof is
    min(peak, intensity x bandwidth): a sloped memory roof at ``bandwidth_gbs`` (GB/s), a flat compute roof
    at the peak, meeting at the ridge point peak / bandwidth FLOP/byte. Each point is coloured by format
    and labelled with its batch. Returns the Figure."""
    if not rows:
        raise ValueError("rows is empty: give measured points (e.g. roofline.time_formats(...))")
    peaks = dict(peak_gflops) if isinstance(peak_gflops, dict) else {"": peak_gflops}
    if not peaks or not bandwidth_gbs > 0 or not all(isinstance(v, (int, float)) and v > 0 for v in peaks.values()):
        raise ValueError(f"bandwidth_gbs={bandwidth_gbs!r} and peak_gflops={peak_gflops!r} must be > 0")
    xs = np.array([r["intensity"] for r in rows], float)
    ridges = [p / bandwidth_gbs for p in peaks.values()]
    lo, hi = min(xs.min(), *ridges) / 3, max(xs.max(), *ridges) * 3
    grid = np.geomspace(lo, hi, 200)
    fig, ax = plt.subplots(figsize=figsize)
    for j, (name, peak) in enumerate(sorted(peaks.items(), key=lambda kv: kv[1])):
        ax.plot(grid, np.minimum(peak, grid * bandwidth_gbs), "k-", lw=1.5 - 0.4 * j, alpha=1 - 0.25 * j,
                label=f"roof{' ' + name if name else ''} ({bandwidth_gbs:.0f} GB/s, {peak:.0f} GFLOP/s)")
        ax.axvline(peak / bandwidth_gbs, color="k", ls=":", lw=0.6)
    formats = list(dict.fromkeys(r["format"] for r in rows))
    for i, fmt in enumerate(formats):
        pts = [r for r in rows if r["format"] == fmt]
        ax.plot([r["intensity"] for r in pts], [r["gflops"] for r in pts], "o", color=f"C{i % 10}", ms=5,
                label=fmt)
        labelled = set()
        for r in pts:  # one batch label per format (the shapes of one batch sit close together)
            if r["batch"] in labelled:
                continue
            labelled.add(r["batch"])
            ax.annotate(f"b{r['batch']}", (r["intensity"], r["gflops"]), fontsize=6, xytext=(3, 2),
                        textcoords="offset points", color=f"C{i % 10}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set(xlabel="arithmetic intensity (FLOP per byte moved)", ylabel="GFLOP/s", title=title)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def reliability_diagram(bins_by_name: dict, title: str = "reliability diagram (test split)", ax=None):
    """Accuracy against confidence, one curve per model: ``bins_by_name`` {name: ``stats.calibration_bins(...)``
    result} (each a dict of "count", "confidence", "accuracy" tensors of the same number of bins). Empty bins
    are left out; a marker's area grows with its bin's share of the images; the diagonal is a calibrated
    model (below it: overconfident). Returns the Figure."""
    if not bins_by_name:
        raise ValueError("bins_by_name is empty: give {name: stats.calibration_bins(probs, labels)}")
    if ax is None:
        fig, ax = plt.subplots(figsize=(5, 4.5))
    else:
        fig = ax.figure
    ax.plot([0, 1], [0, 1], ls=":", c="k", lw=1, label="calibrated")
    for i, (name, c) in enumerate(bins_by_name.items()):
        keep = c["count"] > 0
        share = c["count"][keep] / c["count"].sum()
        ax.plot(c["confidence"][keep], c["accuracy"][keep], "-", c=f"C{i}", lw=1, alpha=0.7)
        ax.scatter(c["confidence"][keep], c["accuracy"][keep], s=20 + 400 * share, c=f"C{i}", label=name, alpha=0.8)
    ax.set_xlabel("confidence (mean of the bin)")
    ax.set_ylabel("accuracy (fraction right in the bin)")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig
