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
