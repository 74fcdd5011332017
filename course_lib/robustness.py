"""Corruptions of test images and how compressed models behave under them.

Corruptions act in pixel space: x (normalised, shape (N, C, H, W)) is mapped back with the dataset's
mean and std, corrupted, clipped to [0, 1] and normalised again.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import _validate as V
from .stats import accuracy_interval, paired_compare
from .training import predict


def _to_pixels(x, mean, std):
    m, s = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    return x * s + m, m, s


def gaussian_noise(x: torch.Tensor, sigma: float, mean, std, seed: int = 0) -> torch.Tensor:
    """Add N(0, sigma^2) noise in pixel units (sigma in [0, 1]) with a seeded generator."""
    V.number_in("sigma", sigma, 0, 1)
    p, m, s = _to_pixels(x, mean, std)
    noise = torch.randn(p.shape, generator=torch.Generator().manual_seed(seed)) * sigma
    return ((p + noise).clamp(0, 1) - m) / s


def blur(x: torch.Tensor, sigma: float, mean, std) -> torch.Tensor:
    """Gaussian blur with standard deviation ``sigma`` pixels (> 0), kernel 2*ceil(2 sigma)+1, per channel."""
    V.number_in("sigma", sigma, 0, None, lo_open=True)
    p, m, s = _to_pixels(x, mean, std)
    r = int(torch.ceil(torch.tensor(2 * sigma)).item())
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k1 = torch.exp(-t ** 2 / (2 * sigma ** 2))
    k1 = k1 / k1.sum()
    c = p.shape[1]
    kx = k1.view(1, 1, 1, -1).repeat(c, 1, 1, 1)
    ky = k1.view(1, 1, -1, 1).repeat(c, 1, 1, 1)
    out = F.conv2d(F.pad(p, (r, r, 0, 0), mode="replicate"), kx, groups=c)
    out = F.conv2d(F.pad(out, (0, 0, r, r), mode="replicate"), ky, groups=c)
    return (out.clamp(0, 1) - m) / s


def contrast(x: torch.Tensor, factor: float, mean, std) -> torch.Tensor:
    """Scale each image's deviation from its own mean by ``factor`` in [0, 2] (below 1: less contrast)."""
    V.number_in("factor", factor, 0, 2)
    p, m, s = _to_pixels(x, mean, std)
    mu = p.mean(dim=(1, 2, 3), keepdim=True)
    return (((p - mu) * factor + mu).clamp(0, 1) - m) / s


def shift(x: torch.Tensor, pixels: int, mean, std) -> torch.Tensor:
    """Translate every image right and down by ``pixels`` (0 <= pixels < H), filling with black (0)."""
    h = x.shape[-2]
    V.int_in("pixels", pixels, 0, h - 1)
    p, m, s = _to_pixels(x, mean, std)
    out = torch.zeros_like(p)
    out[..., pixels:, pixels:] = p[..., :h - pixels, :p.shape[-1] - pixels]
    return (out - m) / s


CORRUPTIONS = {"noise": gaussian_noise, "blur": blur, "contrast": contrast, "shift": shift}


def corrupt(x: torch.Tensor, kind: str, level, mean, std) -> torch.Tensor:
    """Apply corruption ``kind`` (one of CORRUPTIONS) at ``level`` (its strength argument)."""
    V.one_of("kind", kind, sorted(CORRUPTIONS))
    return CORRUPTIONS[kind](x, level, mean, std)


def robustness_table(models: dict, x: torch.Tensor, y: torch.Tensor, settings: list[tuple], mean, std,
                     reference: str = "baseline") -> list[dict]:
    """Accuracy of every model under every (kind, level) setting, plus agreement with ``reference``.

    models: {name: model or list of models}, a model being a callable mapping a float tensor batch of shape
    (N, C, H, W) to logits (N, classes); a list holds one model per seed of the same method (at least one).
    x: (N, C, H, W) normalised images, y: (N,) labels. ``reference`` must be a key of ``models`` holding one
    model (not a list of several).

    Returns one dict per (model, kind, level), in the order of ``settings`` then ``models``, with "n", "seeds",
    "accuracy" and "agreement" (fraction of predictions equal to the reference's on the same corrupted images),
    each the mean over the seeds in [0, 1] with its 95% Wilson interval on the n images ("accuracy_ci",
    "agreement_ci", ``stats.accuracy_interval``; the reference's own agreement is exactly 1, interval (1.0, 1.0)),
    and "vs_reference": the paired comparison of its per-image correctness with the reference's on the same
    corrupted images (``stats.paired_compare``, seeds averaged per image; None for the reference itself). The
    paired verdict is the one to read: two overlapping Wilson intervals do not mean "no difference".
    """
    if not isinstance(models, dict) or reference not in models:
        raise ValueError(f"reference={reference!r} is not one of the models "
                         f"{sorted(models) if isinstance(models, dict) else models!r}")
    runs = {}
    for name, m in models.items():
        runs[name] = list(m) if isinstance(m, (list, tuple)) else [m]
        if not runs[name] or not all(callable(r) for r in runs[name]):
            raise ValueError(f"models[{name!r}] must be a model or a non-empty list of models (callables), "
                             f"got {m!r}")
    if len(runs[reference]) != 1:  # agreement and the paired verdict both need one reference prediction
        raise ValueError(f"models[{reference!r}] (the reference) must be one model, got a list of "
                         f"{len(runs[reference])}")
    if x.dim() != 4 or y.dim() != 1 or len(y) != x.shape[0]:
        raise ValueError(f"x must be (N, C, H, W) and y (N,) with the same N, got x {tuple(x.shape)} and "
                         f"y {tuple(y.shape)}")
    rows = []
    for kind, level in settings:
        xc = x if kind == "clean" else corrupt(x, kind, level, mean, std)
        preds = {n: torch.stack([predict(r, xc) if isinstance(r, torch.nn.Module) else r(xc).argmax(1) for r in rs])
                 for n, rs in runs.items()}
        ref_pred = preds[reference][0]
        ref_ok = ref_pred == y
        for n, p in preds.items():
            ok = p == y                                     # (seeds, N)
            acc = ok.float().mean().item()
            agr = (p == ref_pred).float().mean().item()
            rows.append({"model": n, "kind": kind, "level": level, "n": len(y), "seeds": p.shape[0],
                         "accuracy": acc, "accuracy_ci": accuracy_interval(acc, len(y)),
                         "agreement": agr,  # the reference agrees with itself by construction: no interval
                         "agreement_ci": (1.0, 1.0) if n == reference else accuracy_interval(agr, len(y)),
                         "vs_reference": None if n == reference else paired_compare(ok, ref_ok)})
    return rows
