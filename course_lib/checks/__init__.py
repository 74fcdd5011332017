"""Exercise checkers: one per exercise, grouped by chapter in submodules.

Every checker takes the learner's function, runs it on fresh random inputs and edge cases,
compares with the reference, prints a short friendly verdict and returns True/False.
It never lets a traceback from the learner's code escape: an exception becomes a verdict.

**Under nbgrader** (``nbgrader autograde`` and ``nbgrader validate`` set ``$NBGRADER_EXECUTION``) a
checker that rejects the answer also raises ``AssertionError`` with the same verdict, because nbgrader
scores a test cell 0 only when it raises. In JupyterLab a wrong or missing answer only prints, so
"Run All" goes on to the end of the chapter.

A later cell that needs the learner's function uses :func:`mine_or_library`: the learner's function
where its checker accepts it, else the library's, with a visible note.

No checker touches the global random state: inputs come from private, seeded ``torch.Generator`` objects.

Writing a checker::

    @checker("magnitude mask")
    def check_magnitude_mask(fn):
        w = torch.randn(20, 30, generator=torch.Generator().manual_seed(1))
        got = fn(w, 0.5)
        expect_shape(got, w.shape, "the mask")
        ...

Inside, raise ``Wrong("what is wrong, in words")`` for a wrong answer; helpers below do the common cases.
"""
from __future__ import annotations

import contextlib
import functools
import io
import os
from typing import Callable

import torch

GRADING_MODES = ("autograde", "validate")


class Wrong(Exception):
    """A wrong answer; the message is shown to the learner."""


def grading() -> bool:
    """True while nbgrader executes the notebook ($NBGRADER_EXECUTION is "autograde" or "validate")."""
    return os.environ.get("NBGRADER_EXECUTION", "").lower() in GRADING_MODES


def checker(title: str):
    """Decorator turning a function that raises ``Wrong`` into a checker printing a verdict.

    The checker ``check(learner_fn, *args, verbose=True, strict=None, **kwargs) -> bool`` prints
    "✓ title: correct." or "✗ title: ..." and returns True/False. ``strict`` (None: only while nbgrader
    grades, see :func:`grading`) makes a rejected answer raise ``AssertionError`` with the verdict.
    ``check.verdict(learner_fn, ...) -> (ok, message)`` never prints and never raises: whatever is
    printed while it checks (a checker's note, the learner's own prints) goes into ``message``, before
    the verdict line, so it is shown once, by whoever prints the message (the checker cell), and not
    again when :func:`mine_or_library` asks for the verdict.
    """
    def deco(fn):
        def verdict(learner_fn, *args, **kwargs) -> tuple[bool, str]:
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                ok, line = _judge(learner_fn, *args, **kwargs)
            return ok, printed.getvalue() + line

        def _judge(learner_fn, *args, **kwargs) -> tuple[bool, str]:
            try:
                fn(learner_fn, *args, **kwargs)
            except Wrong as e:
                return False, f"✗ {title}: not yet. {e}"
            except NotImplementedError as e:
                return False, f"✗ {title}: not implemented yet ({e or 'replace the stub with your code'})."
            except Exception as e:  # learner code crashed: explain instead of a traceback
                return False, f"✗ {title}: your function raised {type(e).__name__}: {e}"
            return True, f"✓ {title}: correct."

        @functools.wraps(fn)
        def wrapper(learner_fn, *args, verbose: bool = True, strict: bool | None = None, **kwargs) -> bool:
            ok, msg = verdict(learner_fn, *args, **kwargs)
            if verbose:
                print(msg)
            if not ok and (grading() if strict is None else strict):
                raise AssertionError(msg)
            return ok
        wrapper.is_checker = True
        wrapper.title = title
        wrapper.verdict = verdict
        return wrapper
    return deco


def mine_or_library(learner_fn: Callable, check: Callable, library_fn: Callable, name: str | None = None) -> Callable:
    """The function later cells should use: ``learner_fn`` if ``check`` accepts it, else ``library_fn``.

    ``check`` is the exercise's checker (it must come from :func:`checker`). When the learner's
    function is missing or wrong, prints one line saying the library's function (named by its module
    and name) stands in, so the rest of the chapter still runs; when it is accepted, says so. Nothing
    else: the checker's notes and the learner's own prints were shown by the checker cell already.
    """
    if not callable(learner_fn):
        raise TypeError(f"learner_fn must be a function, got {type(learner_fn).__name__}")
    if not getattr(check, "is_checker", False):
        raise TypeError("check must be an exercise checker from course_lib.checks (decorated with @checker)")
    name = name or getattr(learner_fn, "__name__", "your function")
    lib = f"{library_fn.__module__}.{library_fn.__qualname__}"
    ok, _ = check.verdict(learner_fn)
    if ok:
        print(f"Using your {name} below (its checker accepted it).")
        return learner_fn
    print(f"Note: your {name} is not finished or not correct yet, so the cells below use the library's "
          f"{lib}. Finish the exercise and re-run from here to use your own.")
    return library_fn


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
from .llm import *  # noqa: E402,F401,F403
from .runtimes import *  # noqa: E402,F401,F403
