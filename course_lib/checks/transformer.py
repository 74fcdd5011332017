"""Checkers for chapter 06 (compressing a pretrained transformer, ``course_lib.bert``): masked mean
pooling (``bert.mean_pool``), group-wise round-to-nearest weight quantization
(``quantization.rtn_quantize``), paraphrase retrieval (``bert.retrieval_score``).

The references below are written independently of the library on purpose (the tests cross-check
them against it). Random cases come from a local generator with a fixed seed per checker: the
global random generator is never touched."""
from __future__ import annotations

import torch

from . import Wrong, checker, expect_close, expect_shape

__all__ = ["check_mean_pool", "check_group_rtn", "check_retrieval_top1",
           "reference_mean_pool", "reference_group_rtn", "reference_retrieval_top1"]


def _gen(seed: int) -> torch.Generator:
    """A local generator (fixed seed: the same cases on every machine and every call)."""
    return torch.Generator().manual_seed(seed)


def reference_mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of hidden (N, T, D) over the tokens where mask (N, T) is 1 -> (N, D) (as ``bert.mean_pool``)."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)


def _group_range(g: torch.Tensor, steps: int, through_zero: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(min, scale) per group of g (out, groups, size): min clamped to <= 0 (and max to >= 0) when
    ``through_zero``, scale = (max - min) / steps, at least 1e-12."""
    lo, hi = g.amin(-1, keepdim=True), g.amax(-1, keepdim=True)
    if through_zero:
        lo, hi = lo.clamp(max=0), hi.clamp(min=0)
    return lo, ((hi - lo) / steps).clamp_min(1e-12)


def reference_group_rtn(w: torch.Tensor, bits: int, group_size: int, *, _levels: int | None = None,
                        _through_zero: bool = True, _round_zero: bool = True) -> torch.Tensor:
    """Asymmetric min-max round-to-nearest per group of ``group_size`` columns of each row;
    returns the dequantized weight, same shape as ``w`` (as ``quantization.rtn_quantize``'s w_hat).
    The underscored switches build the common mistakes the checker names (never use them otherwise)."""
    out_f, in_f = w.shape
    g = w.reshape(out_f, in_f // group_size, group_size)
    qmax = 2 ** bits - 1
    lo, scale = _group_range(g, _levels or qmax, _through_zero)
    zero = -lo / scale
    zero = torch.round(zero).clamp(0, qmax) if _round_zero else zero
    q = (torch.round(g / scale) + zero).clamp(0, qmax)
    return ((q - zero) * scale).reshape(out_f, in_f)


def reference_retrieval_top1(emb: torch.Tensor, groups: torch.Tensor) -> float:
    """Fraction of rows whose most cosine-similar OTHER row has the same group id (as ``bert.retrieval_score``)."""
    e = torch.nn.functional.normalize(emb.double(), dim=-1)
    sim = e @ e.T
    sim.fill_diagonal_(-float("inf"))
    return float((groups[sim.argmax(1)] == groups).double().mean())


@checker("masked mean pooling")
def check_mean_pool(fn):
    g = _gen(61)
    for n, t, d in ((4, 7, 5), (1, 3, 2), (6, 9, 16)):
        hidden = torch.randn(n, t, d, generator=g)
        lengths = torch.randint(1, t + 1, (n,), generator=g)
        lengths[0] = 1
        mask = (torch.arange(t)[None, :] < lengths[:, None]).long()
        got = fn(hidden.clone(), mask.clone())
        want = reference_mean_pool(hidden, mask)
        expect_shape(got, want.shape, "the sentence embeddings (N, D)")
        summed = (hidden * mask.unsqueeze(-1)).sum(1)
        wrong = ((hidden.mean(1), "you averaged over ALL positions: padding tokens (mask 0) must not count."),
                 (summed, "you summed the real tokens but did not divide by their number."),
                 (summed / t, "divide by the number of REAL tokens of each sentence (mask.sum), not by T."),
                 (torch.nn.functional.normalize(want, dim=-1),
                  "return the mean itself; the L2 normalisation comes after pooling, in embed()."))
        for alt, msg in wrong:
            if torch.allclose(got, alt, atol=1e-5) and not torch.allclose(want, alt, atol=1e-5):
                raise Wrong(msg)
        expect_close(got, want, "the pooled embeddings", atol=1e-5)


@checker("group-wise round-to-nearest")
def check_group_rtn(fn):
    g = _gen(62)
    for (o, i), bits, gs in (((8, 64), 4, 16), ((5, 32), 4, 32), ((3, 24), 3, 8), ((4, 16), 8, 4)):
        w = torch.randn(o, i, generator=g) * 0.1
        w[0, 0] = 0.9  # one outlier: a per-row scale would spoil its whole row
        got = fn(w.clone(), bits, gs)
        want = reference_group_rtn(w, bits, gs)
        expect_shape(got, want.shape, "the dequantized weight")
        if torch.allclose(got, reference_group_rtn(w, bits, i), atol=1e-6) and gs < i:
            raise Wrong("one scale per row: use one (scale, zero) per group of group_size columns.")
        if torch.allclose(got, w, atol=1e-7):
            raise Wrong("the weight came back unchanged: quantize it (round to the grid) and dequantize.")
        mistakes = (
            (dict(_round_zero=False), "the zero point is not rounded: z = round(-min / s) must be an integer "
                                      "on the grid, so that the weight 0 is stored exactly."),
            (dict(_levels=2 ** bits), f"{bits} bits give 2^{bits} levels but only 2^{bits} - 1 steps between "
                                      f"them: s = (max - min) / (2**bits - 1)."),
            (dict(_through_zero=False), "the range must contain 0: clamp the group's min to <= 0 and its max "
                                        "to >= 0 before computing s and z."),
        )
        for kw, msg in mistakes:
            alt = reference_group_rtn(w, bits, gs, **kw)
            if torch.allclose(got, alt, atol=1e-6) and not torch.allclose(alt, want, atol=1e-6):
                raise Wrong(msg)
        _, step = _group_range(w.reshape(o, i // gs, gs), 2 ** bits - 1)
        if got.abs().max() > w.abs().max() + step.max() + 1e-6:
            raise Wrong("values fall outside the group's [min, max] range by more than one step: q must stay "
                        "in [0, 2**bits - 1] (clamp it) and s must span the whole range.")
        levels = max(len(torch.unique(got[r, c:c + gs])) for r in range(o) for c in range(0, i, gs))
        if levels > 2 ** bits:
            raise Wrong(f"a group holds {levels} distinct values, more than the 2^{bits} levels of {bits} bits.")
        expect_close(got, want, "the dequantized weight", atol=1e-5)


@checker("paraphrase retrieval (top-1)")
def check_retrieval_top1(fn):
    g = _gen(63)
    for n_groups, per, d in ((10, 3, 8), (4, 2, 3), (20, 3, 16)):
        centers = torch.randn(n_groups, d, generator=g)
        groups = torch.arange(n_groups).repeat_interleave(per)
        emb = centers[groups] + 0.9 * torch.randn(n_groups * per, d, generator=g)
        emb = emb * (0.1 + 3 * torch.rand(n_groups * per, 1, generator=g))  # lengths differ: cosine, not dot
        perm = torch.randperm(len(groups), generator=g)
        emb, groups = emb[perm], groups[perm]
        got = fn(emb.clone(), groups.clone())
        want = reference_retrieval_top1(emb, groups)
        if not isinstance(got, (float, int)) and not (torch.is_tensor(got) and got.numel() == 1):
            raise Wrong(f"return one number (a float in [0, 1]), got {type(got).__name__}.")
        got = float(got)
        if abs(got - 1.0) < 1e-9 and want < 1.0:
            raise Wrong("every sentence found itself: exclude the sentence itself (set the diagonal to -inf).")
        dot = emb.double() @ emb.double().T
        dot.fill_diagonal_(-float("inf"))
        by_dot = float((groups[dot.argmax(1)] == groups).double().mean())
        if abs(got - by_dot) < 1e-9 and abs(by_dot - want) > 1e-9:
            raise Wrong("you ranked by the dot product: normalise the embeddings (cosine similarity).")
        if abs(got - want) > 1e-9:
            raise Wrong(f"the score is {got:.4f}, expected {want:.4f}.")
