"""Checkers for the exercises of chapter 01 (pruning)."""
from __future__ import annotations

import torch

from . import Wrong, checker, expect_shape, expect_tensor
from .. import pruning as _ref

__all__ = ["check_magnitude_mask", "check_filters_to_keep", "check_gradual_schedule"]


@checker("magnitude mask")
def check_magnitude_mask(fn):
    """fn(weight, sparsity) -> 0/1 mask of weight's shape zeroing the round(sparsity * n) smallest |w|
    (exactly that many, even when weights tie at the threshold)."""
    g = torch.Generator().manual_seed(1234)
    cases = [(torch.randn(20, 30, generator=g), 0.5), (torch.randn(8, 3, 5, 5, generator=g), 0.9),
             (torch.randn(7, generator=g), 0.3), (torch.randn(7, generator=g), 0.5), (torch.randn(10, 10, generator=g), 0.0),
             (torch.randn(50, 4, generator=g) * 1e-3, 0.95)]
    for w, s in cases:
        w_in = w.clone()
        got = fn(w_in, s)
        expect_shape(got, w.shape, f"the mask for a weight of shape {tuple(w.shape)}")
        if not torch.equal(w_in, w):
            raise Wrong("your function changed the weight tensor; build a new mask instead of editing w in place.")
        if got.dtype == torch.bool:
            got = got.float()
        vals = set(torch.unique(got.detach().float()).tolist())
        if not vals <= {0.0, 1.0}:
            raise Wrong(f"a mask holds only 0 and 1, yours holds {sorted(vals)[:5]}.")
        want = _ref.magnitude_mask(w, s)
        n, k = w.numel(), int(round(s * w.numel()))
        zeros = int((got == 0).sum())
        if k not in (0, n) and torch.equal(got.float(), 1 - want.float()):
            raise Wrong("your mask is inverted: it should be 0 where the weight is pruned and 1 where it is kept.")
        if zeros != k:
            hint = " (off by one: use round(sparsity * n), not int() or ceil)" if abs(zeros - k) == 1 else ""
            raise Wrong(f"at sparsity {s} a tensor of {n} weights needs exactly {k} zeros in the mask, "
                        f"yours has {zeros}{hint}.")
        if not torch.equal(got.float(), want.float()):
            kept_small = (got != 0) & (want == 0)
            if bool(kept_small.any()):
                raise Wrong("the mask keeps some weights that are smaller in magnitude than weights it "
                            "removes: rank by |w| (torch.abs), not by the signed value.")
            raise Wrong("the mask does not zero the smallest-magnitude weights.")
    # ties at the threshold: exactly k zeros still, whichever of the tied weights go (the reference
    # breaks ties by index; any choice among the tied weights is accepted)
    w = torch.tensor([0.3, -0.1, 0.1, 0.2, -0.1, 0.5, 0.1, 0.9, -0.4, 0.1])
    s = 0.3
    k = int(round(s * w.numel()))
    got = fn(w.clone(), s)
    expect_shape(got, w.shape, "the mask for a weight with tied magnitudes")
    got = got.detach().float()
    zeros = int((got == 0).sum())
    tau = float(w.abs().sort().values[k - 1])
    if zeros > k and bool(((got == 0) == (w.abs() <= tau)).all()):
        raise Wrong(f"with several weights tied at the threshold |w| = {tau:.2g} your mask zeroes all of them ({zeros} "
                    f"zeros, {k} wanted): a threshold test |w| > tau cannot split ties; pick exactly k positions "
                    "(e.g. the first k of a stable torch.argsort of |w|).")
    if zeros != k:
        raise Wrong(f"with tied magnitudes a tensor of {w.numel()} weights at sparsity {s} still needs exactly {k} "
                    f"zeros, yours has {zeros}.")
    if bool((w.abs()[got == 0] > tau).any()) or bool((w.abs()[got != 0] < tau).any()):
        raise Wrong("with tied magnitudes the mask must still zero only the smallest |w|.")


@checker("filters to keep")
def check_filters_to_keep(fn):
    """fn(weight (out, in, kh, kw), ratio) -> ascending int64 indices of the filters with the largest L1 norm."""
    g = torch.Generator().manual_seed(4321)
    cases = [(torch.randn(16, 6, 5, 5, generator=g), 0.5), (torch.randn(10, 3, 3, 3, generator=g), 0.3),
             (torch.randn(12, 20, generator=g), 0.25), (torch.randn(5, 2, 3, 3, generator=g), 0.0)]
    # a case where the L1 and the L2 norm disagree, and where the signed sum misleads
    w = torch.zeros(4, 1, 2, 2)
    w[0] = torch.tensor([[1.0, 1.0], [1.0, 1.0]])     # L1 4, L2 2
    w[1] = torch.tensor([[3.0, 0.0], [0.0, 0.0]])     # L1 3, L2 3
    w[2] = torch.tensor([[-2.0, -2.0], [-2.0, 0.0]])  # L1 6, signed sum -6
    w[3] = torch.tensor([[0.5, 0.0], [0.0, 0.0]])     # L1 0.5
    cases.append((w, 0.5))
    for w, r in cases:
        got = fn(w.clone(), r)
        expect_tensor(got, "the result")
        want = _ref.filters_to_keep(w, r)
        if got.dim() != 1:
            raise Wrong(f"return a 1-D tensor of filter indices, yours has shape {tuple(got.shape)}.")
        if got.dtype == torch.bool:
            raise Wrong("return the indices of the kept filters (e.g. torch.nonzero or argsort), not a boolean mask.")
        if got.dtype not in (torch.int64, torch.int32):
            raise Wrong(f"indices should be integers (torch.int64), yours are {got.dtype}.")
        if len(got) != len(want):
            raise Wrong(f"with {w.shape[0]} filters and ratio {r} keep {len(want)} filters "
                        f"(remove round(ratio * out)), you keep {len(got)}.")
        if set(got.tolist()) != set(want.tolist()):
            raise Wrong("you keep the wrong filters: rank each filter by its L1 norm, the sum of |w| over "
                        "its input channels and kernel (not the signed sum, not the L2 norm), and keep the largest.")
        if got.tolist() != sorted(got.tolist()):
            raise Wrong("right filters, but return the indices in ascending order so the channel order is preserved.")


@checker("gradual (polynomial) schedule")
def check_gradual_schedule(fn):
    """fn(step, final_sparsity, total_steps) -> s_f * (1 - (1 - step/total_steps) ** 3), clamped to the ramp."""
    for sf, n in [(0.9, 100), (0.95, 37), (0.5, 1)]:
        for t in sorted({0, 1, n // 3, n // 2, n - 1, n, n + 5, 2 * n}):
            got = fn(t, sf, n)
            want = _ref.gradual_schedule(t, sf, n)
            try:
                got = float(got)
            except (TypeError, ValueError):
                raise Wrong(f"return a float, got {type(got).__name__}.")
            if abs(got - want) > 1e-9:
                if t > n:
                    raise Wrong(f"after total_steps the sparsity must stay at the final value {sf}; "
                                f"step {t} of {n} gives {got:.4f}.")
                if abs(got - sf * t / n) < 1e-9:
                    raise Wrong("your schedule is linear: Zhu & Gupta use the cubic (1 - t/n) ** 3.")
                if abs(got - sf * (1 - t / n) ** 3) < 1e-9:
                    raise Wrong("your schedule runs backwards: it must start at 0 and end at final_sparsity.")
                raise Wrong(f"at step {t} of {n} (final sparsity {sf}) the schedule is {want:.4f}, yours {got:.4f}.")
