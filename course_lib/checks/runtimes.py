"""Checkers for chapter 08 (runtimes): the installed size of a distribution, predictions through a runtime
compiled for a static batch size."""
from __future__ import annotations

import torch

from .. import runtimes as R
from . import Wrong, checker, expect_shape

__all__ = ["check_installed_size", "check_padded_predict"]

SIZE_CASES = ("tqdm", "numpy")  # always installed with the course: a small and a large distribution


@checker("installed_size")
def check_installed_size(fn):
    from importlib import metadata
    for name in SIZE_CASES:
        want = R.installed_bytes(name)
        got = fn(name)
        if isinstance(got, bool) or not isinstance(got, (int, float)):
            raise Wrong(f"installed_size({name!r}) returned {type(got).__name__}; return a number of bytes.")
        if got == len(metadata.files(name) or []):
            raise Wrong(f"installed_size({name!r}) = {got} is the number of files; add up their sizes in bytes.")
        if want and got > 0 and abs(got * 1024 - want) <= 0.02 * want or abs(got * 2**20 - want) <= 0.02 * want:
            raise Wrong(f"installed_size({name!r}) = {got} looks like kilobytes or megabytes; return bytes.")
        if got == sum(f.size or 0 for f in metadata.files(name) or []) and got != want:
            raise Wrong(f"installed_size({name!r}) = {got:,} adds up the sizes pip recorded (f.size); files compiled "
                        "after the install (.pyc) have none. Measure each file on disk: f.locate().stat().st_size.")
        if abs(got - want) > 0.001 * want:
            hint = (" Count every file the metadata lists (not only .py files), each once." if got < want else
                    " Count each listed file once, and only files that exist.")
            raise Wrong(f"installed_size({name!r}) = {got:,} bytes, expected about {want:,}.{hint}")


class _StaticFn:
    """A 'compiled' model that accepts only batches of exactly ``batch_size`` rows: logits = row sums * (1..k)."""

    def __init__(self, batch_size: int, k: int = 3):
        self.batch_size, self.k, self.calls = batch_size, k, 0

    def __call__(self, xb):
        self.calls += 1
        if not torch.is_tensor(xb) or xb.shape[0] != self.batch_size:
            got = tuple(xb.shape) if torch.is_tensor(xb) else type(xb).__name__
            raise Wrong(f"the runtime was called with a batch of shape {got}; it only takes batches of exactly "
                        f"{self.batch_size} rows: pad the last batch with zeros.")
        s = xb.reshape(len(xb), -1).sum(1, keepdim=True).double()
        return s * torch.arange(1, self.k + 1, dtype=torch.float64)


@checker("padded_predict")
def check_padded_predict(fn):
    g = torch.Generator().manual_seed(801)  # local: the global RNG is never touched
    for n, b in ((10, 4), (8, 4), (3, 8), (1, 1), (65, 64)):
        x = torch.randn(n, 1, 2, 2, generator=g, dtype=torch.float64)
        static = _StaticFn(b)
        want = R.padded_predict(_StaticFn(b), x, b)
        got = fn(static, x.clone(), b)
        if torch.is_tensor(got) and got.shape[0] == -(-n // b) * b and n % b:
            raise Wrong(f"for {n} rows in batches of {b} you returned {got.shape[0]} rows: drop the outputs of "
                        "the padding rows.")
        expect_shape(got, want.shape, f"the logits of {n} rows in batches of {b}")
        if not torch.allclose(torch.as_tensor(got).double(), want.double()):  # the library returns float32
            raise Wrong(f"for {n} rows in batches of {b} the logits differ from the reference: keep the rows in "
                        "order and pad with zeros (not copies of real rows).")
        if static.calls != -(-n // b):
            raise Wrong(f"{static.calls} calls of the runtime for {n} rows in batches of {b}; expected {-(-n // b)}.")
