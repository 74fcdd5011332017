"""Argument checks shared by every module: one message format, one place.

Each checker returns the value (converted where that is the point, e.g. to ``int`` or ``float``)
or raises ``ValueError`` naming the argument, the value it got and the valid range::

    >>> int_in("bits", 9, 1, 8)
    Traceback (most recent call last):
    ValueError: bits=9 must be an integer in [1, 8]

Booleans are refused wherever a number is expected (``True`` is an ``int`` in Python, but
``bits=True`` is always a mistake).
"""
from __future__ import annotations

import math
import numbers
from typing import Iterable

import torch


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _bounds(lo, hi, lo_open: bool = False, hi_open: bool = False) -> str:
    left = "(" if lo_open or lo is None else "["
    right = ")" if hi_open or hi is None else "]"
    return f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"


def int_in(name: str, value, lo: int | None = None, hi: int | None = None) -> int:
    """``value`` as an int in [lo, hi] (either bound may be None = unbounded)."""
    if not _is_int(value) or (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ValueError(f"{name}={value!r} must be an integer in {_bounds(lo, hi)}")
    return int(value)


def positive_int(name: str, value) -> int:
    """``value`` as an int >= 1."""
    return int_in(name, value, 1, None)


def number_in(name: str, value, lo: float | None = None, hi: float | None = None, *,
              lo_open: bool = False, hi_open: bool = False) -> float:
    """``value`` as a finite float in the interval from lo to hi (closed unless ``*_open``)."""
    ok = _is_number(value) and math.isfinite(float(value))
    if ok and lo is not None:
        ok = value > lo if lo_open else value >= lo
    if ok and hi is not None:
        ok = value < hi if hi_open else value <= hi
    if not ok:
        raise ValueError(f"{name}={value!r} must be a finite number in {_bounds(lo, hi, lo_open, hi_open)}")
    return float(value)


def one_of(name: str, value, choices: Iterable):
    """``value`` if it is one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name}={value!r} must be one of {list(choices)}")
    return value


def shape(name: str, value, ndim: int | None = None) -> tuple:
    """``value`` as a tuple of positive ints (of length ``ndim`` if given), e.g. (1, 28, 28)."""
    try:
        out = tuple(value)
    except TypeError:
        out = None
    if (out is None or len(out) == 0 or any(not _is_int(s) or s < 1 for s in out)
            or (ndim is not None and len(out) != ndim)):
        what = f"{ndim} positive ints" if ndim is not None else "positive ints"
        raise ValueError(f"{name}={value!r} must be a tuple of {what}, e.g. (1, 28, 28)")
    return tuple(int(s) for s in out)


def finite_tensor(name: str, x) -> torch.Tensor:
    """``x`` if it is a floating-point tensor with no NaN or inf."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        got = f"a {x.dtype} tensor" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a floating-point tensor, got {got}")
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        raise ValueError(f"{name} holds {bad} NaN/inf value(s); it must be finite")
    return x


def layer_bits(model, bits, lo: int = 1, hi: int = 16) -> dict[str, int]:
    """{layer name: bits} for the Conv2d/Linear layers of ``model`` that ``bits`` names: None -> {}; an int
    in [lo, hi] -> every such layer; {layer name: bits} -> those layers (a name that is not a Conv2d/Linear
    layer of ``model`` raises ValueError listing the valid names; a layer mapped to None is left out)."""
    from torch import nn
    layers = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    if bits is None:
        return {}
    if not isinstance(bits, dict):
        return dict.fromkeys(layers, int_in("bits", bits, lo, hi))
    unknown = sorted(set(bits) - set(layers))
    if unknown:
        raise ValueError(f"bits names layers {unknown} that are not Conv2d/Linear layers of the model; "
                         f"valid names: {layers}")
    return {n: int_in(f"bits[{n!r}]", bits[n], lo, hi) for n in layers if bits.get(n) is not None}
