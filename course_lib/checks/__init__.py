"""Exercise checkers: one per exercise, grouped by chapter in submodules.

Every checker takes the learner's function, runs it on fresh random inputs and edge cases,
compares with the reference, prints a short friendly verdict and returns True/False.
It never lets a traceback from the learner's code escape: an exception becomes a verdict.

Writing a checker::

    @checker("magnitude mask")
    def check_magnitude_mask(fn):
        w = torch.randn(20, 30)
        got = fn(w, 0.5)
        expect_shape(got, w.shape, "the mask")
        ...

Inside, raise ``Wrong("what is wrong, in words")`` for a wrong answer; helpers below do the common cases.
"""
from __future__ import annotations

import functools

import torch


class Wrong(Exception):
    """A wrong answer; the message is shown to the learner."""


def checker(title: str):
    """Decorator turning a function that raises ``Wrong`` into a checker printing a verdict."""
    def deco(fn):
        @functools.wraps(fn)
        def wrapper(learner_fn, *args, verbose: bool = True, **kwargs) -> bool:
            try:
                fn(learner_fn, *args, **kwargs)
            except Wrong as e:
                msg, ok = f"✗ {title}: not yet. {e}", False
            except NotImplementedError as e:
                msg, ok = f"✗ {title}: not implemented yet ({e or 'replace the stub with your code'}).", False
            except Exception as e:  # learner code crashed: explain instead of a traceback
                msg, ok = f"✗ {title}: your function raised {type(e).__name__}: {e}", False
            else:
                msg, ok = f"✓ {title}: correct.", True
            if verbose:
                print(msg)
            return ok
        wrapper.is_checker = True
        return wrapper
    return deco


def expect_tensor(x, what: str) -> None:
    if not torch.is_tensor(x):
        raise Wrong(f"{what} should be a torch.Tensor, got {type(x).__name__}.")


def expect_shape(x, shape, what: str) -> None:
    expect_tensor(x, what)
    if tuple(x.shape) != tuple(shape):
        raise Wrong(f"{what} has shape {tuple(x.shape)}, expected {tuple(shape)}.")


def expect_dtype(x, dtype, what: str) -> None:
    expect_tensor(x, what)
    if x.dtype != dtype:
        raise Wrong(f"{what} has dtype {x.dtype}, expected {dtype}.")


def expect_close(got, want, what: str, atol: float = 1e-6, rtol: float = 1e-5) -> None:
    expect_shape(got, want.shape, what)
    got, want = got.double(), want.double()
    if not torch.allclose(got, want, atol=atol, rtol=rtol):
        err = (got - want).abs().max().item()
        raise Wrong(f"{what} differs from the reference (largest difference {err:.3g}).")


from .baseline import *  # noqa: E402,F401,F403
from .pipeline import *  # noqa: E402,F401,F403
from .distillation import *  # noqa: E402,F401,F403
from .lowrank import *  # noqa: E402,F401,F403
from .quantization import *  # noqa: E402,F401,F403
from .pruning import *  # noqa: E402,F401,F403
from .transformer import *  # noqa: E402,F401,F403
