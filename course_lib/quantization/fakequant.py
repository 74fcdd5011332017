"""Fake-quantized models: ``QuantWrapper`` around each Conv2d/Linear, post-training quantization
(``ptq``: wrap, then calibrate the activation ranges) and quantization-aware training (``qat``)."""
from __future__ import annotations

import copy
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from ..data import tensors
from ..models import replace_module
from ..training import fit
from .affine import _fake_quant, _scale_zero_point, check_bits, minmax, qrange
from .calibration import calibrate, calibrate_weight

__all__ = ["FLOAT_BITS", "QuantWrapper", "quantize_model", "observing_float_inputs", "calibrate_model", "ptq", "qat"]

FLOAT_BITS = 32  # weight_bits / act_bits value meaning "stays float32"


def layer_forward(layer: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Run a Conv2d or Linear ``layer`` on ``x`` with ``weight`` in place of its own (bias kept)."""
    if isinstance(layer, nn.Conv2d):
        return layer._conv_forward(x, weight, layer.bias)
    return F.linear(x, weight, layer.bias)


def replace_layers(model: nn.Module, make) -> nn.Module:
    """Replace every Conv2d/Linear of ``model`` (in place) by ``make(layer)``; returns model."""
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    for name in names:
        replace_module(model, name, make(model.get_submodule(name)))
    return model


class QuantWrapper(nn.Module):
    """A Conv2d or Linear whose weights and input activations are fake-quantized.

    weight_bits / act_bits: 1..16, or 32 for "stays float". Weights: per output channel (axis 0)
    when ``per_channel`` else per tensor; symmetric (``weight_symmetric``: the narrow grid
    ``[-(2**(b-1) - 1), 2**(b-1) - 1]``, 3 levels at 2 bits, zero-point 0) or asymmetric (``2**b``
    levels with a zero-point per channel). Until ``calibrate_weights`` fixes a (scale, zero_point),
    the weight range is the min-max of the *current* weights at every call (so QAT can train them
    through the straight-through estimator); after it, the calibrated range stays fixed (QAT then
    trains the weights on that grid). Input activations: asymmetric with the (scale, zero_point)
    set by ``calibrate_model``; until then they pass through unchanged. The wrapped layer stays
    reachable as ``.layer`` (its parameters are this module's parameters). Inside
    ``observing_float_inputs`` the wrapper computes in float and records its inputs.
    """

    def __init__(self, layer: nn.Module, weight_bits: int = 8, act_bits: int = 8, per_channel: bool = True,
                 weight_symmetric: bool = True):
        super().__init__()
        if not isinstance(layer, (nn.Conv2d, nn.Linear)):
            raise TypeError(f"QuantWrapper wraps nn.Conv2d or nn.Linear, not {type(layer).__name__}")
        if weight_bits != FLOAT_BITS:
            check_bits(weight_bits, weight_symmetric, "weight_bits")
        if act_bits != FLOAT_BITS:
            check_bits(act_bits, False, "act_bits")
        self.layer, self.weight_bits, self.act_bits, self.per_channel = layer, weight_bits, act_bits, per_channel
        self.weight_symmetric = bool(weight_symmetric)
        self.register_buffer("act_scale", None)
        self.register_buffer("act_zero_point", None)
        self.register_buffer("weight_scale", None)
        self.register_buffer("weight_zero_point", None)
        self.calibrating = False
        self.observed: list = []

    @property
    def weight_axis(self) -> int | None:
        return 0 if self.per_channel else None

    @property
    def levels(self) -> int | None:
        """Number of weight levels (``qmax - qmin + 1``), None for float weights."""
        if self.weight_bits == FLOAT_BITS:
            return None
        qmin, qmax = qrange(self.weight_bits, self.weight_symmetric)
        return qmax - qmin + 1

    def weight_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, zero_point) of the weight grid: the calibrated ones, else min-max of the current weights."""
        if self.weight_scale is not None:
            return self.weight_scale, self.weight_zero_point
        qmin, qmax = qrange(self.weight_bits, self.weight_symmetric)
        lo, hi = minmax(self.layer.weight.detach(), self.weight_axis)
        return _scale_zero_point(lo, hi, qmin, qmax, self.weight_symmetric)

    @torch.no_grad()
    def calibrate_weights(self, method: str = "mse", **kw) -> "QuantWrapper":
        """Fix the weight (scale, zero_point) with ``calibrate_weight(weight, ..., method)`` (in place);
        method "minmax" fixes the current min-max range. kw: percentile, grid. Returns self."""
        if self.weight_bits == FLOAT_BITS:
            return self
        s, z = calibrate_weight(self.layer.weight, self.weight_bits, method, self.weight_symmetric,
                                self.weight_axis, **kw)
        self.weight_scale, self.weight_zero_point = s.to(self.layer.weight.device), z.to(self.layer.weight.device)
        return self

    def quantized_weight(self) -> torch.Tensor:
        """The fake-quantized weight the layer computes with (float32, the weight's shape)."""
        w = self.layer.weight
        if self.weight_bits == FLOAT_BITS or self.calibrating:
            return w
        qmin, qmax = qrange(self.weight_bits, self.weight_symmetric)
        return _fake_quant(w, *self.weight_qparams(), qmin, qmax, self.weight_axis)

    def forward(self, x):
        if self.calibrating:
            self.observed.append(x.detach().cpu())
        elif self.act_bits != FLOAT_BITS and self.act_scale is not None:
            x = _fake_quant(x, self.act_scale, self.act_zero_point, *qrange(self.act_bits, False), None)
        return layer_forward(self.layer, x, self.quantized_weight())

    def extra_repr(self) -> str:
        kind = "sym" if self.weight_symmetric else "asym"
        return f"W{self.weight_bits}A{self.act_bits}, per_channel={self.per_channel}, weights {kind}"


def quantize_model(model: nn.Module, weight_bits: int = 8, act_bits: int = 8, per_channel: bool = True,
                   weight_symmetric: bool = True) -> nn.Module:
    """A deep copy of ``model`` with every Conv2d/Linear wrapped in a ``QuantWrapper`` (not calibrated)."""
    q = copy.deepcopy(model).cpu().eval()
    return replace_layers(q, lambda m: QuantWrapper(m, weight_bits, act_bits, per_channel, weight_symmetric))


def _as_images(data) -> torch.Tensor:
    if torch.is_tensor(data):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2 and torch.is_tensor(data[0]):
        return data[0]
    return tensors(data)[0]


@contextmanager
def observing_float_inputs(qmodel: nn.Module):
    """Inside the block every ``QuantWrapper`` of ``qmodel`` computes in float32 (no weight or
    activation quantization) and records its inputs. Yields {wrapper name: [input tensors]}, filled
    by the forward passes run in the block (detached, on the CPU); the wrappers keep nothing after it::

        with torch.no_grad(), Q.observing_float_inputs(qmodel) as seen:
            qmodel(x)
        acts = {name: torch.cat(inputs) for name, inputs in seen.items()}
    """
    wrappers = {n: m for n, m in qmodel.named_modules() if isinstance(m, QuantWrapper)}
    for w in wrappers.values():
        w.calibrating, w.observed = True, []
    seen = {n: w.observed for n, w in wrappers.items()}
    try:
        yield seen
    finally:
        for w in wrappers.values():
            w.calibrating, w.observed = False, []


@torch.no_grad()
def calibrate_model(qmodel: nn.Module, calib_data, method: str = "minmax", percentile: float = 99.99,
                    batch_size: int = 256) -> nn.Module:
    """Set the activation (scale, zero_point) of every ``QuantWrapper`` in ``qmodel``, in place.

    calib_data: images (N, C, H, W), an (x, y) pair or a Dataset; N >= 1. Each wrapper's inputs on
    the float path of the earlier layers are recorded, then ``calibrate(..., method)`` picks its
    range. Returns qmodel (unchanged if calibration raises).
    """
    x = _as_images(calib_data)
    if len(x) == 0:
        raise ValueError("calib_data is empty: calibration needs at least one image")
    wrappers = {n: m for n, m in qmodel.named_modules() if isinstance(m, QuantWrapper)}
    if not wrappers:
        raise ValueError("qmodel has no QuantWrapper: build it with quantize_model first")
    was = qmodel.training
    qmodel.eval()
    try:
        with observing_float_inputs(qmodel) as seen:
            for i in range(0, len(x), batch_size):
                qmodel(x[i:i + batch_size])
        ranges = {n: calibrate(seen[n], w.act_bits, method, False, percentile) if w.act_bits != FLOAT_BITS
                  else (None, None) for n, w in wrappers.items()}
    finally:
        qmodel.train(was)
    for n, w in wrappers.items():
        w.act_scale, w.act_zero_point = ranges[n]
    return qmodel


def ptq(model: nn.Module, calib_data, weight_bits: int = 8, act_bits: int = 8, per_channel: bool = True,
        method: str = "minmax", percentile: float = 99.99, weight_method: str | None = None,
        weight_symmetric: bool = True) -> nn.Module:
    """Post-training quantization: a fake-quantized copy of ``model`` (WxAy), calibrated on ``calib_data``.

    weight_bits 2..16 symmetric (1..16 asymmetric) or 32; act_bits 1..16 or 32; method: the
    activation calibration (``calibrate``). weight_method: None (weight ranges follow the min-max
    of the current weights, recomputed at every call) or one of ``WEIGHT_CALIBRATION_METHODS``
    (the weight ranges are chosen once by ``calibrate_weight`` and stay fixed). weight_symmetric:
    the narrow symmetric grid (zero-point 0) or an asymmetric one (2**bits levels).
    The float model is not changed. Returns the copy in eval mode.
    """
    q = quantize_model(model, weight_bits, act_bits, per_channel, weight_symmetric)
    if weight_method is not None:
        for m in q.modules():
            if isinstance(m, QuantWrapper):
                m.calibrate_weights(weight_method)
    return calibrate_model(q, calib_data, method, percentile).eval()


def qat(model: nn.Module, train, calib_data, weight_bits: int = 4, act_bits: int = 8, per_channel: bool = True,
        epochs: int = 3, lr: float = 2e-4, method: str = "minmax", weight_method: str | None = None,
        weight_symmetric: bool = True, **fit_kw):
    """Quantization-aware training: ``ptq`` then fine-tune through the straight-through estimator.

    The forward pass sees quantized weights and activations; the backward pass treats rounding as
    the identity (inside the grid), so the float "shadow" weights learn to sit where rounding hurts
    least. weight_method / weight_symmetric as in ``ptq`` (a calibrated weight grid stays fixed
    during training). Activation ranges are re-calibrated after training. fit_kw go to
    ``training.fit`` (e.g. val, seed, batch_size, device). Returns (qmodel, History).
    """
    q = ptq(model, calib_data, weight_bits, act_bits, per_channel, method, weight_method=weight_method,
            weight_symmetric=weight_symmetric)
    hist = fit(q, train, epochs=epochs, lr=lr, desc=fit_kw.pop("desc", "qat"), **fit_kw)
    q.cpu()
    calibrate_model(q, calib_data, method)
    return q.eval(), hist
