"""Checkers for chapter 05 (putting it together): gap encoding of sparse positions, entropy in bits."""
from __future__ import annotations

import math

import torch

from . import Wrong, checker, expect_shape

__all__ = ["check_positions_to_gaps", "check_entropy_bits", "reference_positions_to_gaps",
           "reference_entropy_bits"]


def reference_positions_to_gaps(mask: torch.Tensor) -> torch.Tensor:
    """1-D bool mask -> int64 (nnz,): zeros skipped before each non-zero (first one counted from the start)."""
    nz = torch.nonzero(mask, as_tuple=False).flatten()
    return torch.diff(nz, prepend=torch.tensor([-1])) - 1


def reference_entropy_bits(symbols: torch.Tensor) -> float:
    """Shannon entropy in bits per symbol of the empirical distribution of a 1-D int64 tensor."""
    counts = torch.bincount(symbols.flatten()).double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * torch.log2(p)).sum())


@checker("positions_to_gaps")
def check_positions_to_gaps(fn):
    g = torch.Generator().manual_seed(301)  # local: the global RNG is never touched
    cases = [torch.rand(200, generator=g) < 0.1, torch.tensor([True, False, False, True, True]),
             torch.tensor([False, False, True]), torch.zeros(7, dtype=torch.bool)]
    for mask in cases:
        want = reference_positions_to_gaps(mask)
        got = fn(mask.clone())
        expect_shape(got, want.shape, f"the gaps of a mask with {int(mask.sum())} non-zeros")
        if got.dtype != torch.int64:
            hint = (" (torch.diff of float positions, or a float prepend value, gives floats)"
                    if got.dtype.is_floating_point else "")
            raise Wrong(f"the gaps have dtype {got.dtype}, expected torch.int64{hint}: the gaps are "
                        "counts, and the encoder that stores them needs int64 integers.")
        if torch.equal(got.long(), want):
            continue
        if torch.equal(got.long(), want + 1):
            raise Wrong("off by one: a gap counts the ZEROS skipped, i.e. the difference of positions minus 1.")
        if torch.equal(got.long(), torch.nonzero(mask).flatten()):
            raise Wrong("you returned absolute positions; store the gaps between consecutive non-zeros.")
        raise Wrong(f"for mask {mask.int().tolist()[:12]}... expected {want.tolist()[:8]}, got {got.tolist()[:8]}.")


@checker("entropy_bits")
def check_entropy_bits(fn):
    g = torch.Generator().manual_seed(302)  # local: the global RNG is never touched
    cases = [torch.zeros(10, dtype=torch.long), torch.tensor([0, 1] * 8), torch.tensor([0, 5, 5, 9]),
             torch.multinomial(torch.tensor([0.7, 0.2, 0.05, 0.05]), 500, True, generator=g)]
    for s in cases:
        want = reference_entropy_bits(s)
        got = fn(s.clone())
        got = float(got) if not isinstance(got, float) else got
        if math.isnan(got):
            raise Wrong("got NaN: symbols that never occur have p = 0 and must be left out (0 log 0 = 0).")
        if abs(got - want) <= 1e-6:
            continue
        if want > 0 and abs(got - want * math.log(2)) <= 1e-6:
            raise Wrong("that is in nats: use log base 2 for bits.")
        raise Wrong(f"for symbols {s.tolist()[:10]}... expected {want:.4f} bits per symbol, got {got:.4f}.")
