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
