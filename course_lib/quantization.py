"""Quantization from scratch: affine integer grids, calibration, PTQ, QAT, k-means weight sharing,
and a real int8 deployment path (onnxruntime static quantization).

Conventions (the same as ``torch.fake_quantize_per_tensor_affine``):

- an integer grid of ``bits`` bits is ``[qmin, qmax]``: ``[0, 2**bits - 1]`` for asymmetric
  quantization, ``[-(2**(bits-1) - 1), 2**(bits-1) - 1]`` for symmetric ("narrow range", so that
  ``-qmax`` is on the grid too and 0 maps to 0 exactly; needs ``bits >= 2``);
- ``q = clamp(round(x / scale) + zero_point, qmin, qmax)`` (round half to even, ``1/scale`` computed
  in float32 and multiplied, exactly as PyTorch's kernels do), ``x_hat = (q - zero_point) * scale``;
- ``scale`` is float32, ``zero_point`` int32: 0-dim tensors per tensor, shape ``(C,)`` per channel.

All tensors are float32 on the CPU unless stated; functions never modify their inputs unless their
docstring says "in place".
"""
from __future__ import annotations

import copy
import io
import logging
import math
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "qrange", "compute_qparams", "quantize", "dequantize", "fake_quantize", "sqnr_db",
    "calibrate", "CALIBRATION_METHODS", "QuantWrapper", "quantize_model", "calibrate_model", "ptq", "qat",
    "kmeans_quantize", "KMeansWrapper", "kmeans_model", "pack_bits", "unpack_bits",
    "packed_state_dict", "packed_size_bytes", "ImageCalibrationReader", "ort_quantize_static", "ort_op_times",
    "onnx_nodes", "PoolBeforeReLU", "ort_int8_lenet",
    "torch_ao_dynamic", "torch_ao_static_fx",
]

EPS = torch.finfo(torch.float32).eps  # smallest scale: keeps 1/scale finite for all-zero tensors


# ---------------------------------------------------------------- argument checks
def _check_bits(bits, symmetric: bool = False, name: str = "bits") -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= int(bits) <= 16:
        raise ValueError(f"{name}={bits!r} must be an integer in [1, 16]")
    if symmetric and bits < 2:
        raise ValueError(f"{name}={bits!r}: symmetric quantization needs bits in [2, 16] "
                         "(a grid symmetric about 0 with 0 on it); use symmetric=False for 1 bit")
    return int(bits)


def _check_finite(x: torch.Tensor, name: str = "x") -> None:
    if not torch.is_tensor(x):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name} has dtype {x.dtype}; a floating-point tensor is required")
    if x.numel() and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} holds {bad} NaN/inf value(s); quantization needs finite values")


def _check_axis(axis, ndim: int) -> int | None:
    if axis is None:
        return None
    if isinstance(axis, bool) or not isinstance(axis, int) or not -ndim <= axis < ndim:
        raise ValueError(f"per_channel_axis={axis!r} is out of range for a tensor with {ndim} "
                         f"dimension(s); valid range [{-ndim}, {ndim - 1}] or None")
    return axis % ndim


def _bshape(t: torch.Tensor, ndim: int, axis: int | None) -> torch.Tensor:
    """Reshape per-channel parameters (C,) so they broadcast along ``axis`` of an ndim tensor."""
    if axis is None or t.dim() == 0:
        return t
    shape = [1] * ndim
    shape[axis] = -1
    return t.reshape(shape)


def qrange(bits: int, symmetric: bool = True) -> tuple[int, int]:
    """The integer grid ``(qmin, qmax)`` of ``bits`` bits (1..16; symmetric needs >= 2).

    symmetric: ``(-(2**(bits-1) - 1), 2**(bits-1) - 1)``, e.g. (-127, 127) for 8 bits;
    asymmetric: ``(0, 2**bits - 1)``, e.g. (0, 255).
    """
    bits = _check_bits(bits, symmetric)
    if symmetric:
        m = 2 ** (bits - 1) - 1
        return -m, m
    return 0, 2 ** bits - 1


def compute_qparams(lo, hi, bits: int, symmetric: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero-point mapping the real range ``[lo, hi]`` onto the ``bits``-bit grid.

    lo, hi: floats or tensors of the same shape (one value per channel), lo <= hi. The range is
    first widened to contain 0 (so that 0 is exactly representable: zero padding, ReLU zeros).
    symmetric: ``scale = max(|lo|, |hi|) / qmax``, ``zero_point = 0``;
    asymmetric: ``scale = (hi - lo) / (qmax - qmin)``, ``zero_point = qmin - round(lo / scale)``.
    Returns (scale float32 >= EPS, zero_point int32 in [qmin, qmax]), shaped like lo.
    """
    qmin, qmax = qrange(bits, symmetric)
    lo = torch.as_tensor(lo, dtype=torch.float32)
    hi = torch.as_tensor(hi, dtype=torch.float32)
    if lo.shape != hi.shape:
        raise ValueError(f"lo and hi must have the same shape, got {tuple(lo.shape)} and {tuple(hi.shape)}")
    _check_finite(lo, "lo")
    _check_finite(hi, "hi")
    if bool((lo > hi).any()):
        raise ValueError("lo must be <= hi for every channel")
    return _qparams(lo, hi, qmin, qmax, symmetric)


def _qparams(lo, hi, qmin: int, qmax: int, symmetric: bool):
    """compute_qparams without argument checks (internal fast path)."""
    lo, hi = torch.clamp(lo, max=0.0), torch.clamp(hi, min=0.0)
    if symmetric:
        scale = torch.clamp(torch.maximum(-lo, hi) / qmax, min=EPS)
        zp = torch.zeros_like(scale, dtype=torch.int32)
    else:
        scale = torch.clamp((hi - lo) / (qmax - qmin), min=EPS)
        zp = torch.clamp(qmin - torch.round(lo / scale), qmin, qmax).to(torch.int32)
    return scale.float(), zp


def _minmax(x: torch.Tensor, axis: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    if x.numel() == 0:
        raise ValueError("x is empty: cannot compute a range")
    if axis is None:
        return x.min(), x.max()
    flat = x.detach().movedim(axis, 0).reshape(x.shape[axis], -1)
    return flat.min(1).values, flat.max(1).values


def _qparams_for(x, bits, symmetric, axis, scale, zero_point):
    """Use the given (scale, zero_point) or compute min-max ones from x; check their shapes."""
    if scale is None:
        lo, hi = _minmax(x.detach(), axis)
        return compute_qparams(lo, hi, bits, symmetric)
    scale = torch.as_tensor(scale, dtype=torch.float32)
    if zero_point is None:
        zero_point = torch.zeros_like(scale, dtype=torch.int32)
    zero_point = torch.as_tensor(zero_point).to(torch.int32)
    want = () if axis is None else (x.shape[axis],)
    if tuple(scale.shape) != want or tuple(zero_point.shape) != want:
        raise ValueError(f"scale/zero_point have shapes {tuple(scale.shape)}/{tuple(zero_point.shape)}; "
                         f"expected {want} for per_channel_axis={axis}")
    if not bool((scale > 0).all()) or not bool(torch.isfinite(scale).all()):
        raise ValueError("scale must be finite and > 0")
    return scale, zero_point


def quantize(x: torch.Tensor, bits: int, symmetric: bool = True, per_channel_axis: int | None = None,
             scale=None, zero_point=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize ``x`` (any shape, finite floats) to ``bits``-bit integers.

    per_channel_axis: None (one scale for the tensor) or the axis holding channels (0 for the output
    channels of a Conv2d/Linear weight). scale, zero_point: use these (e.g. from ``calibrate``)
    instead of the min-max ones of x. Returns ``(q, scale, zero_point)``: q int32 of x's shape in
    ``qrange(bits, symmetric)``, scale float32 and zero_point int32 (0-dim, or (C,) per channel).
    """
    bits = _check_bits(bits, symmetric)
    _check_finite(x)
    axis = _check_axis(per_channel_axis, x.dim())
    scale, zp = _qparams_for(x, bits, symmetric, axis, scale, zero_point)
    qmin, qmax = qrange(bits, symmetric)
    inv = _bshape(1.0 / scale, x.dim(), axis)
    q = torch.round(x.detach().float() * inv) + _bshape(zp, x.dim(), axis)
    return torch.clamp(q, qmin, qmax).to(torch.int32), scale, zp


def dequantize(q: torch.Tensor, scale, zero_point, per_channel_axis: int | None = None) -> torch.Tensor:
    """Real values ``(q - zero_point) * scale`` (float32, q's shape) of integers ``q``.

    scale, zero_point: 0-dim, or shape (C,) with ``per_channel_axis`` naming q's channel axis.
    """
    axis = _check_axis(per_channel_axis, q.dim())
    scale = torch.as_tensor(scale, dtype=torch.float32)
    zp = torch.as_tensor(zero_point)
    if axis is None and scale.dim() != 0:
        raise ValueError(f"scale has shape {tuple(scale.shape)}: pass per_channel_axis for per-channel parameters")
    return (q.float() - _bshape(zp, q.dim(), axis).float()) * _bshape(scale, q.dim(), axis)


def _layer_forward(layer: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Run a Conv2d or Linear ``layer`` on ``x`` with ``weight`` in place of its own (bias kept)."""
    if isinstance(layer, nn.Conv2d):
        return layer._conv_forward(x, weight, layer.bias)
    return F.linear(x, weight, layer.bias)


class _FakeQuant(torch.autograd.Function):
    """round/clamp in the forward pass; straight-through gradient (masked to the grid) backward."""

    @staticmethod
    def forward(ctx, x, inv, scale, zp, qmin, qmax):
        q = torch.round(x * inv) + zp
        ctx.save_for_backward((q >= qmin) & (q <= qmax))
        return (torch.clamp(q, qmin, qmax) - zp) * scale

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return grad * mask, None, None, None, None, None


def fake_quantize(x: torch.Tensor, bits: int, symmetric: bool = True, per_channel_axis: int | None = None,
                  scale=None, zero_point=None) -> torch.Tensor:
    """Quantize then dequantize ``x``: float32 values on the ``bits``-bit grid, shape of x.

    Identical, value for value, to ``torch.fake_quantize_per_tensor_affine`` /
    ``torch.fake_quantize_per_channel_affine`` with the same scale, zero-point and (qmin, qmax).
    Gradient: straight-through estimator, d x_hat / d x = 1 where x falls inside the grid's range
    and 0 where it was clamped (what QAT trains with). scale/zero_point are treated as constants.
    """
    bits = _check_bits(bits, symmetric)
    _check_finite(x)
    axis = _check_axis(per_channel_axis, x.dim())
    scale, zp = _qparams_for(x, bits, symmetric, axis, scale, zero_point)
    return _fq(x, scale, zp, *qrange(bits, symmetric), axis)


def _fq(x, scale, zp, qmin: int, qmax: int, axis: int | None):
    """fake_quantize without argument checks (internal fast path used inside models)."""
    scale, zp = scale.to(x.device), zp.to(x.device)
    inv = _bshape(1.0 / scale, x.dim(), axis)
    return _FakeQuant.apply(x, inv, _bshape(scale, x.dim(), axis), _bshape(zp.float(), x.dim(), axis),
                            qmin, qmax)


def sqnr_db(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio ``10 log10(sum x^2 / sum (x - x_hat)^2)`` in dB.

    About 6 dB per bit for a uniform grid; ``inf`` when x_hat equals x.
    """
    if x.shape != x_hat.shape:
        raise ValueError(f"x and x_hat must have the same shape, got {tuple(x.shape)} and {tuple(x_hat.shape)}")
    x, x_hat = x.detach().double(), x_hat.detach().double()
    noise = float(((x - x_hat) ** 2).sum())
    signal = float((x ** 2).sum())
    return math.inf if noise == 0 else 10 * math.log10(signal / noise)


# ---------------------------------------------------------------- calibration
CALIBRATION_METHODS = ("minmax", "percentile", "mse")


def _gather(samples) -> torch.Tensor:
    if torch.is_tensor(samples):
        samples = [samples]
    samples = [s for s in samples]
    if not samples or all(s.numel() == 0 for s in samples):
        raise ValueError("the calibration set is empty: pass at least one non-empty tensor of activations")
    x = torch.cat([s.detach().float().reshape(-1) for s in samples])
    _check_finite(x, "calibration samples")
    return x


def _kth(x: torch.Tensor, frac: float) -> torch.Tensor:
    k = min(x.numel(), max(1, int(round(frac * x.numel()))))
    return x.kthvalue(k).values


def calibrate(samples, bits: int = 8, method: str = "minmax", symmetric: bool = False,
              percentile: float = 99.99, grid: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """Choose per-tensor (scale, zero_point) for activations from calibration samples.

    samples: a tensor or a list of tensors (any shapes) of activations seen on calibration data.
    method: "minmax" (the observed range: nothing is clipped, outliers stretch the step);
    "percentile" (clip to the ``percentile`` and ``100 - percentile`` percentiles, in (50, 100]);
    "mse" (search ``grid`` clipping ratios of the min-max range for the lowest mean squared
    error after fake quantization). Returns ``compute_qparams(lo, hi, bits, symmetric)``.
    """
    bits = _check_bits(bits, symmetric)
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"method={method!r} must be one of {CALIBRATION_METHODS}")
    if not 50 < percentile <= 100:
        raise ValueError(f"percentile={percentile!r} must be in (50, 100]")
    if not isinstance(grid, int) or grid < 1:
        raise ValueError(f"grid={grid!r} must be a positive integer")
    x = _gather(samples)
    lo, hi = x.min(), x.max()
    if method == "percentile":
        lo, hi = _kth(x, 1 - percentile / 100), _kth(x, percentile / 100)
    elif method == "mse":
        sub = x[:: max(1, x.numel() // 50_000)]  # a fixed, deterministic subsample keeps the search fast
        ratios = torch.linspace(1.0, 1.0 / grid, grid)  # largest first: ties keep the wider range
        s, z = _qparams(lo * ratios, hi * ratios, *qrange(bits, symmetric), symmetric)
        s, z = s[:, None], z[:, None].float()
        x_hat = (torch.clamp(torch.round(sub[None, :] * (1.0 / s)) + z, *qrange(bits, symmetric)) - z) * s
        best = int(((x_hat - sub[None, :]) ** 2).mean(1).argmin())
        lo, hi = lo * ratios[best], hi * ratios[best]
    return compute_qparams(lo, hi, bits, symmetric)


# ---------------------------------------------------------------- fake-quantized models
class QuantWrapper(nn.Module):
    """A Conv2d or Linear whose weights and input activations are fake-quantized.

    weight_bits / act_bits: 1..16, or 32 for "stays float". Weights: symmetric, per output channel
    (axis 0) when ``per_channel`` else per tensor, min-max of the *current* weights at every call
    (so QAT can train them through the straight-through estimator). Input activations: asymmetric
    with the (scale, zero_point) set by ``calibrate_model``; until then they pass through unchanged.
    The wrapped layer stays reachable as ``.layer`` (its parameters are this module's parameters).
    """

    def __init__(self, layer: nn.Module, weight_bits: int = 8, act_bits: int = 8, per_channel: bool = True):
        super().__init__()
        if not isinstance(layer, (nn.Conv2d, nn.Linear)):
            raise TypeError(f"QuantWrapper wraps nn.Conv2d or nn.Linear, not {type(layer).__name__}")
        if weight_bits != 32:
            _check_bits(weight_bits, True, "weight_bits")
        if act_bits != 32:
            _check_bits(act_bits, False, "act_bits")
        self.layer, self.weight_bits, self.act_bits, self.per_channel = layer, weight_bits, act_bits, per_channel
        self.register_buffer("act_scale", None)
        self.register_buffer("act_zero_point", None)
        self.observed: list | None = None  # set to [] to record inputs (calibration)

    def quantized_weight(self) -> torch.Tensor:
        """The fake-quantized weight the layer computes with (float32, the weight's shape)."""
        w = self.layer.weight
        if self.weight_bits == 32:
            return w
        axis = 0 if self.per_channel else None
        qmin, qmax = qrange(self.weight_bits, True)
        lo, hi = _minmax(w.detach(), axis)
        return _fq(w, *_qparams(lo, hi, qmin, qmax, True), qmin, qmax, axis)

    def forward(self, x):
        if self.observed is not None:
            self.observed.append(x.detach().cpu())
        if self.act_bits != 32 and self.act_scale is not None:
            x = _fq(x, self.act_scale, self.act_zero_point, *qrange(self.act_bits, False), None)
        return _layer_forward(self.layer, x, self.quantized_weight())

    def extra_repr(self) -> str:
        return f"W{self.weight_bits}A{self.act_bits}, per_channel={self.per_channel}"


def _replace_layers(model: nn.Module, make) -> nn.Module:
    """Replace every Conv2d/Linear child (recursively, in place) by ``make(layer)``."""
    for name, child in model.named_children():
        if isinstance(child, (nn.Conv2d, nn.Linear)):
            setattr(model, name, make(child))
        else:
            _replace_layers(child, make)
    return model


def quantize_model(model: nn.Module, weight_bits: int = 8, act_bits: int = 8, per_channel: bool = True) -> nn.Module:
    """A deep copy of ``model`` with every Conv2d/Linear wrapped in a ``QuantWrapper`` (not calibrated)."""
    q = copy.deepcopy(model).cpu().eval()
    return _replace_layers(q, lambda m: QuantWrapper(m, weight_bits, act_bits, per_channel))


def _as_images(data) -> torch.Tensor:
    from .data import tensors
    if torch.is_tensor(data):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2 and torch.is_tensor(data[0]):
        return data[0]
    return tensors(data)[0]


@torch.no_grad()
def calibrate_model(qmodel: nn.Module, calib_data, method: str = "minmax", percentile: float = 99.99,
                    batch_size: int = 256) -> nn.Module:
    """Set the activation (scale, zero_point) of every ``QuantWrapper`` in ``qmodel``, in place.

    calib_data: images (N, C, H, W), an (x, y) pair or a Dataset; N >= 1. Each wrapper's inputs on
    the float path of the earlier layers are recorded, then ``calibrate(..., method)`` picks its
    range. Returns qmodel.
    """
    x = _as_images(calib_data)
    if len(x) == 0:
        raise ValueError("calib_data is empty: calibration needs at least one image")
    wrappers = [m for m in qmodel.modules() if isinstance(m, QuantWrapper)]
    if not wrappers:
        raise ValueError("qmodel has no QuantWrapper: build it with quantize_model first")
    was = qmodel.training
    qmodel.eval()
    saved = [(w.act_scale, w.act_zero_point) for w in wrappers]
    for w in wrappers:  # observe float activations of a float network
        w.observed, w.act_scale, w.act_zero_point = [], None, None
    saved_bits = [w.weight_bits for w in wrappers]
    try:
        for w in wrappers:
            w.weight_bits = 32
        for i in range(0, len(x), batch_size):
            qmodel(x[i:i + batch_size])
        for w in wrappers:
            if w.act_bits != 32:
                w.act_scale, w.act_zero_point = calibrate(w.observed, w.act_bits, method, False, percentile)
    except Exception:
        for w, (s, z) in zip(wrappers, saved):
            w.act_scale, w.act_zero_point = s, z
        raise
    finally:
        for w, b in zip(wrappers, saved_bits):
            w.observed, w.weight_bits = None, b
    qmodel.train(was)
    return qmodel


def ptq(model: nn.Module, calib_data, weight_bits: int = 8, act_bits: int = 8, per_channel: bool = True,
        method: str = "minmax", percentile: float = 99.99) -> nn.Module:
    """Post-training quantization: a fake-quantized copy of ``model`` (WxAy), calibrated on ``calib_data``.

    weight_bits 2..16 (symmetric) or 32; act_bits 1..16 or 32; method as in ``calibrate``.
    The float model is not changed. Returns the copy in eval mode.
    """
    q = quantize_model(model, weight_bits, act_bits, per_channel)
    return calibrate_model(q, calib_data, method, percentile).eval()


def qat(model: nn.Module, train, calib_data, weight_bits: int = 4, act_bits: int = 8, per_channel: bool = True,
        epochs: int = 3, lr: float = 2e-4, method: str = "minmax", **fit_kw):
    """Quantization-aware training: ``ptq`` then fine-tune through the straight-through estimator.

    The forward pass sees quantized weights and activations; the backward pass treats rounding as
    the identity (inside the grid), so the float "shadow" weights learn to sit where rounding hurts
    least. Activation ranges are re-calibrated after training. fit_kw go to ``training.fit``
    (e.g. val, seed, batch_size, device). Returns (qmodel, History).
    """
    from .training import fit
    q = ptq(model, calib_data, weight_bits, act_bits, per_channel, method)
    hist = fit(q, train, epochs=epochs, lr=lr, desc=fit_kw.pop("desc", "qat"), **fit_kw)
    q.cpu()
    calibrate_model(q, calib_data, method)
    return q.eval(), hist


# ---------------------------------------------------------------- k-means weight sharing
@torch.no_grad()
def kmeans_quantize(weight: torch.Tensor, bits: int, iters: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster the values of ``weight`` into ``2**bits`` shared values (Deep Compression, 1-D k-means).

    Centroids start linearly spaced between min and max (Han et al.'s best initialisation: it keeps
    the rare large weights), then ``iters`` Lloyd steps (assign to the nearest centroid, move each
    centroid to its cluster's mean; an empty cluster keeps its centroid). bits 1..16.
    Returns (codebook float32 of shape (2**bits,), sorted; indices int64 of weight's shape) with
    ``codebook[indices]`` the shared-value weight.
    """
    bits = _check_bits(bits)
    _check_finite(weight, "weight")
    if weight.numel() == 0:
        raise ValueError("weight is empty: nothing to cluster")
    if not isinstance(iters, int) or iters < 0:
        raise ValueError(f"iters={iters!r} must be an integer >= 0")
    w = weight.detach().float().reshape(-1).cpu()
    k = 2 ** bits
    c = torch.linspace(float(w.min()), float(w.max()), k)

    def assign(c):
        return torch.bucketize(w, (c[1:] + c[:-1]) / 2)

    for _ in range(iters):
        idx = assign(c)
        sums = torch.zeros(k, dtype=torch.float64).index_add_(0, idx, w.double())
        counts = torch.bincount(idx, minlength=k)
        new = torch.where(counts > 0, (sums / counts.clamp(min=1)).float(), c)
        new, _ = torch.sort(new)
        if torch.equal(new, c):
            break
        c = new
    return c, assign(c).reshape(weight.shape)


class KMeansWrapper(nn.Module):
    """A Conv2d or Linear whose weight is ``codebook[indices]``: 2**bits shared values per layer.

    The codebook is an ``nn.Parameter`` (fine-tuning it sums, per centroid, the gradients of all the
    weights that share it, as in Deep Compression); indices are a fixed buffer; the bias stays float.
    """

    def __init__(self, layer: nn.Module, bits: int, iters: int = 30):
        super().__init__()
        if not isinstance(layer, (nn.Conv2d, nn.Linear)):
            raise TypeError(f"KMeansWrapper wraps nn.Conv2d or nn.Linear, not {type(layer).__name__}")
        self.layer, self.bits = layer, _check_bits(bits)
        codebook, indices = kmeans_quantize(layer.weight, bits, iters)
        self.codebook = nn.Parameter(codebook)
        self.register_buffer("indices", indices)
        layer.weight.requires_grad_(False)

    def quantized_weight(self) -> torch.Tensor:
        return self.codebook[self.indices]

    def forward(self, x):
        return _layer_forward(self.layer, x, self.quantized_weight())

    def extra_repr(self) -> str:
        return f"bits={self.bits}, codebook of {self.codebook.numel()}"


def kmeans_model(model: nn.Module, bits: int, iters: int = 30) -> nn.Module:
    """A deep copy of ``model`` with every Conv2d/Linear's weights shared through a per-layer codebook.

    Fine-tune the centroids with ``training.fit(q, ..., params=[m.codebook for m in ...])``.
    """
    q = copy.deepcopy(model).cpu().eval()
    return _replace_layers(q, lambda m: KMeansWrapper(m, bits, iters))


# ---------------------------------------------------------------- what a quantized model weighs
def pack_bits(q: torch.Tensor, bits: int, qmin: int = 0) -> torch.Tensor:
    """Pack integers ``q`` in [qmin, qmin + 2**bits - 1] into ``ceil(q.numel() * bits / 8)`` bytes (uint8).

    Values are shifted by ``-qmin`` and written least-significant bit first, in q's flattened order.
    """
    bits = _check_bits(bits)
    v = (q.detach().reshape(-1).to(torch.int64) - qmin).cpu().numpy()
    if v.size and (v.min() < 0 or v.max() >= 2 ** bits):
        raise ValueError(f"q holds values outside [{qmin}, {qmin + 2 ** bits - 1}]: cannot pack in {bits} bits")
    bitplanes = ((v[:, None] >> np.arange(bits)) & 1).astype(np.uint8)
    return torch.from_numpy(np.packbits(bitplanes.reshape(-1), bitorder="little").copy())


def unpack_bits(packed: torch.Tensor, bits: int, numel: int, qmin: int = 0) -> torch.Tensor:
    """Inverse of ``pack_bits``: the first ``numel`` integers (int64, flat) of a packed buffer."""
    bits = _check_bits(bits)
    flat = np.unpackbits(packed.cpu().numpy(), bitorder="little")[: numel * bits]
    if flat.size != numel * bits:
        raise ValueError(f"packed holds {packed.numel()} bytes, fewer than {numel} values of {bits} bits need")
    v = (flat.reshape(numel, bits).astype(np.int64) << np.arange(bits)).sum(1)
    return torch.from_numpy(v) + qmin


def packed_state_dict(qmodel: nn.Module) -> dict:
    """The artifact a quantized model is saved as: bit-packed integer weights plus their parameters.

    QuantWrapper: packed weights (weight_bits each), per-channel float32 scales, activation
    scale/zero-point; KMeansWrapper: packed indices (bits each) and the float32 codebook. Biases and
    any other layer stay float32. Returns {name: tensor} ready for ``torch.save``.
    """
    out, done = {}, set()
    for name, m in qmodel.named_modules():
        p = f"{name}." if name else ""
        if isinstance(m, QuantWrapper) and m.weight_bits != 32:
            w = m.layer.weight.detach()
            q, s, _ = quantize(w, m.weight_bits, True, 0 if m.per_channel else None)
            qmin, _ = qrange(m.weight_bits, True)
            out[p + "weight_packed"] = pack_bits(q, m.weight_bits, qmin)
            out[p + "weight_scale"] = s
            if m.act_scale is not None:
                out[p + "act_scale"], out[p + "act_zero_point"] = m.act_scale, m.act_zero_point.to(torch.int16)
            done.add(id(m.layer.weight))
        elif isinstance(m, KMeansWrapper):
            out[p + "indices_packed"] = pack_bits(m.indices, m.bits)
            out[p + "codebook"] = m.codebook.detach()
            done.add(id(m.layer.weight))
    for name, t in list(qmodel.named_parameters()) + list(qmodel.named_buffers()):
        if id(t) in done or name.endswith(("codebook", "indices", "act_scale", "act_zero_point")):
            continue
        out[name] = t.detach()
    return out


def packed_size_bytes(qmodel: nn.Module) -> int:
    """Bytes of ``torch.save(packed_state_dict(qmodel))``: what the quantized model weighs on disk."""
    buf = io.BytesIO()
    torch.save({k: v.contiguous() for k, v in packed_state_dict(qmodel).items()}, buf)
    return len(buf.getvalue())


# ---------------------------------------------------------------- real int8: onnxruntime
def _ort_quant():
    from onnxruntime import quantization as oq
    return oq


class ImageCalibrationReader:
    """onnxruntime ``CalibrationDataReader`` feeding batches of calibration images to ``input_name``.

    images: float32 tensor (N, C, H, W), N >= 1; batch_size >= 1. (onnxruntime's reader base class
    accepts any object with ``get_next``, so this class does not need to import onnxruntime.)
    """

    def __init__(self, images: torch.Tensor, input_name: str = "x", batch_size: int = 64):
        if len(images) == 0:
            raise ValueError("images is empty: the calibration set needs at least one image")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} must be a positive integer")
        x = images.detach().float().cpu().numpy()
        self.batches = [{input_name: x[i:i + batch_size]} for i in range(0, len(x), batch_size)]
        self.pos = 0

    def get_next(self):
        if self.pos >= len(self.batches):
            return None
        self.pos += 1
        return self.batches[self.pos - 1]

    def rewind(self):
        self.pos = 0

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


def onnx_nodes(path, op_type: str | None = None) -> list[str]:
    """Names of the nodes of the ONNX graph at ``path``, in graph order (only ``op_type`` ones if given,
    e.g. "Conv"): what ``ort_quantize_static(..., keep_float=...)`` expects."""
    import onnx
    nodes = onnx.load(str(path), load_external_data=False).graph.node
    return [n.name for n in nodes if op_type is None or n.op_type == op_type]


def ort_quantize_static(fp32_path, int8_path, calib_images: torch.Tensor, per_channel: bool = True,
                        quant_format: str = "QDQ", input_name: str = "x", batch_size: int = 64,
                        keep_float=()) -> Path:
    """Static int8 quantization of an ONNX model with onnxruntime (min-max calibration).

    Weights int8 symmetric (per output channel if ``per_channel``), activations uint8 asymmetric
    (the u8 x s8 pairing is what x86 VNNI kernels run fastest). quant_format: "QDQ" (Quantize/
    Dequantize pairs that onnxruntime fuses into integer kernels) or "QOperator" (QLinearConv,
    QGemm nodes). keep_float: names of nodes to leave in float32 (mixed precision, e.g. a first
    convolution with one input channel, where int8 saves little; see ``onnx_nodes``); the
    tensors between a float node and an int8 one get a Quantize (or Dequantize) step.
    The model is pre-processed (shape inference) first. Returns int8_path.
    """
    oq = _ort_quant()
    if quant_format not in ("QDQ", "QOperator"):
        raise ValueError(f"quant_format={quant_format!r} must be 'QDQ' or 'QOperator'")
    fp32_path, int8_path = Path(fp32_path), Path(int8_path)
    keep_float = [keep_float] if isinstance(keep_float, str) else list(keep_float)
    unknown = sorted(set(keep_float) - set(onnx_nodes(fp32_path)))
    if unknown:
        raise ValueError(f"keep_float={unknown!r}: no such node in {fp32_path.name}; "
                         f"valid names: {onnx_nodes(fp32_path)}")
    pre = int8_path.with_name(int8_path.stem + "_pre.onnx")
    oq.quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
    logger = logging.getLogger()  # quantize_static logs to the root logger; keep stored outputs clean
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        oq.quantize_static(str(pre), str(int8_path), ImageCalibrationReader(calib_images, input_name, batch_size),
                           quant_format=getattr(oq.QuantFormat, quant_format), per_channel=per_channel,
                           activation_type=oq.QuantType.QUInt8, weight_type=oq.QuantType.QInt8,
                           calibrate_method=oq.CalibrationMethod.MinMax, nodes_to_exclude=keep_float)
    finally:
        logger.setLevel(level)
        pre.unlink(missing_ok=True)
    return int8_path


class PoolBeforeReLU(nn.Module):
    """A LeNet-5 that computes its first block as relu(maxpool(conv1(x))) instead of maxpool(relu(conv1(x))).

    Max-pooling and ReLU commute exactly (both are monotone: max_i relu(a_i) = relu(max_i a_i)), so
    outputs are bit-identical to ``model``'s (the parameters are shared, not copied). Why it matters for
    deployment: when conv1 stays in float and the rest runs in int8, the float part then ends with the
    pooled tensor, 4x smaller than conv1's output, so the Quantize step at the float/int8 boundary
    touches 4x fewer values, and onnxruntime pools in its fast blocked float layout right after the
    convolution. model: a ``models.LeNet5`` (TypeError otherwise). Input (N, C, H, W) -> logits (N, classes).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        from .models import LeNet5
        if not isinstance(model, LeNet5):
            raise TypeError(f"model must be a course_lib.models.LeNet5, got {type(model).__name__}")
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        x = F.relu(F.max_pool2d(m.conv1(x), 2))
        x = F.max_pool2d(F.relu(m.conv2(x)), 2)
        return m.fc2(F.relu(m.fc1(torch.flatten(x, 1))))


def ort_int8_lenet(model: nn.Module, int8_path, calib_images: torch.Tensor, first_conv_float: bool = True) -> Path:
    """Chapter 2's int8 deployment of a LeNet-5 in one call: returns the path of an onnxruntime int8 model.

    With ``first_conv_float`` (the default) the model is exported as ``PoolBeforeReLU(model)`` and
    conv1 stays float32 (``keep_float``), the rest is static int8 (per-channel weights, min-max
    calibration on ``calib_images``, (N, C, H, W), N >= 1); otherwise every layer is int8. The float32
    ONNX export is written next to ``int8_path`` (suffix ``_fp32.onnx``). model: a ``models.LeNet5``.
    """
    from .deploy import export_onnx
    if len(calib_images) == 0:
        raise ValueError("calib_images is empty: the calibration set needs at least one image")
    int8_path = Path(int8_path)
    fp32_path = int8_path.with_name(int8_path.stem + "_fp32.onnx")
    export_onnx(PoolBeforeReLU(model) if first_conv_float else model, fp32_path, tuple(calib_images.shape[1:]))
    keep = onnx_nodes(fp32_path, "Conv")[:1] if first_conv_float else []
    return ort_quantize_static(fp32_path, int8_path, calib_images, per_channel=True, keep_float=keep)


def ort_op_times(path, x: torch.Tensor, runs: int = 20, threads: int = 1) -> list[tuple[str, str, float]]:
    """Where an onnxruntime model spends its time: [(node name, operator, mean ms per run)], slowest first.

    Runs the model ``runs`` times on the batch ``x`` (N, C, H, W) with onnxruntime's profiler, single
    thread by default, after the graph optimisations (so fused integer kernels show as such).
    """
    import json
    import tempfile

    import onnxruntime as ort
    if not isinstance(runs, int) or runs < 1:
        raise ValueError(f"runs={runs!r} must be a positive integer")
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.log_severity_level = 3
    with tempfile.TemporaryDirectory() as tmp:
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "ort")
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        feed = {sess.get_inputs()[0].name: x.detach().float().cpu().numpy()}
        sess.run(None, feed)  # warm-up, not counted below
        for _ in range(runs):
            sess.run(None, feed)
        events = json.loads(Path(sess.end_profiling()).read_text())
    totals: dict = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            key = (e["name"][: -len("_kernel_time")], e["args"].get("op_name", "?"))
            totals.setdefault(key, []).append(e["dur"] / 1000)
    out = [(n, op, sum(v[-runs:]) / runs) for (n, op), v in totals.items()]
    return sorted(out, key=lambda t: -t[2])


# ---------------------------------------------------------------- torch.ao (deprecated) anchors
def torch_ao_dynamic(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """torch.ao dynamic int8 quantization of the Linear layers (weights int8, activations quantized
    on the fly); convolutions stay float. Returns (quantized copy, the warnings torch emitted).

    torch 2.13 still runs it but warns that torch.ao.quantization is deprecated in favour of torchao;
    the warnings are captured and returned so a notebook can show them instead of printing to stderr.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from torch.ao.quantization import quantize_dynamic
        q = quantize_dynamic(copy.deepcopy(model).cpu().eval(), {nn.Linear}, dtype=torch.qint8)
    return q, _unique_messages(caught)


def torch_ao_static_fx(model: nn.Module, calib_images: torch.Tensor, backend: str = "x86",
                       batch_size: int = 64) -> tuple[nn.Module, list[str]]:
    """torch.ao FX-mode static int8 quantization (deprecated; torchao's PT2E flow replaces it).

    Conv and Linear run fbgemm/oneDNN int8 kernels; calibration runs ``calib_images`` (N, C, H, W).
    Returns (quantized GraphModule, the warnings torch emitted).
    """
    if len(calib_images) == 0:
        raise ValueError("calib_images is empty: the calibration set needs at least one image")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from torch.ao.quantization import get_default_qconfig_mapping
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx
        prepared = prepare_fx(copy.deepcopy(model).cpu().eval(), get_default_qconfig_mapping(backend),
                              (calib_images[:1],))
        with torch.no_grad():
            for i in range(0, len(calib_images), batch_size):
                prepared(calib_images[i:i + batch_size])
        q = convert_fx(prepared)
    return q, _unique_messages(caught)


def _unique_messages(caught) -> list[str]:
    out = []
    for w in caught:
        msg = f"{w.category.__name__}: {str(w.message).strip().splitlines()[0]}"
        if msg not in out:
            out.append(msg)
    return out
