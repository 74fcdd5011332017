"""The production anchors in PyTorch itself: torch.ao dynamic and FX static int8 quantization
(deprecated in favour of torchao, still working in torch 2.13), and a dynamic int8 Linear that uses
the full 8-bit activation range. torch.ao warns about its deprecation; ``captured_warnings`` keeps
those warnings out of notebook outputs and hands them back for display."""
from __future__ import annotations

import copy
import warnings
from contextlib import contextmanager

import torch
from torch import nn

from ..env import is_x86
from ..models import replace_module

__all__ = ["captured_warnings", "torch_ao_dynamic", "torch_ao_static_fx", "Int8DynamicLinear",
           "quantize_dynamic_int8", "quantized_engine", "set_quantized_engine"]


def quantized_engine(machine: str | None = None) -> str:
    """The torch.ao quantized engine for a CPU: "x86" (fbgemm and oneDNN kernels) on x86, "qnnpack"
    (ARM's kernels) on ARM (Apple Silicon, Graviton, Raspberry Pi) and any other CPU. ``machine`` is
    platform.machine()'s name ("x86_64", "AMD64", "arm64", "aarch64"); None: this machine."""
    return "x86" if is_x86(machine) else "qnnpack"


def set_quantized_engine(machine: str | None = None) -> str:
    """Make :func:`quantized_engine` torch's quantized engine (if this torch build has it) and return
    the engine in use. Every torch.ao function here calls it, so int8 models run on ARM Macs too."""
    engine = quantized_engine(machine)
    if engine in torch.backends.quantized.supported_engines and torch.backends.quantized.engine != engine:
        torch.backends.quantized.engine = engine
    return torch.backends.quantized.engine


@contextmanager
def captured_warnings():
    """Catch every warning raised inside the block (none reaches the caller). Yields a list that,
    after the block, holds each distinct warning once as "Category: first line of the message"."""
    messages: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield messages
    for w in caught:
        msg = f"{w.category.__name__}: {str(w.message).strip().splitlines()[0]}"
        if msg not in messages:
            messages.append(msg)


def torch_ao_dynamic(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """torch.ao dynamic int8 quantization of the Linear layers (weights int8, activations quantized
    on the fly); convolutions stay float. Returns (quantized copy, the warnings torch emitted).

    torch 2.13 still runs it but warns that torch.ao.quantization is deprecated in favour of torchao;
    the warnings are captured and returned so a notebook can show them instead of printing to stderr.
    """
    set_quantized_engine()
    with captured_warnings() as messages:
        from torch.ao.quantization import quantize_dynamic
        q = quantize_dynamic(copy.deepcopy(model).cpu().eval(), {nn.Linear}, dtype=torch.qint8)
    return q, messages


def torch_ao_static_fx(model: nn.Module, calib_images: torch.Tensor, backend: str | None = None,
                       batch_size: int = 64) -> tuple[nn.Module, list[str]]:
    """torch.ao FX-mode static int8 quantization (deprecated; torchao's PT2E flow replaces it).

    Conv and Linear run int8 kernels of ``backend`` (None: the platform's, :func:`set_quantized_engine`:
    "x86" fbgemm/oneDNN, "qnnpack" on ARM); calibration runs ``calib_images`` (N, C, H, W).
    Returns (quantized GraphModule, the warnings torch emitted).
    """
    if len(calib_images) == 0:
        raise ValueError("calib_images is empty: the calibration set needs at least one image")
    backend = backend or set_quantized_engine()
    with captured_warnings() as messages:
        from torch.ao.quantization import get_default_qconfig_mapping
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx
        prepared = prepare_fx(copy.deepcopy(model).cpu().eval(), get_default_qconfig_mapping(backend),
                              (calib_images[:1],))
        with torch.no_grad():
            for i in range(0, len(calib_images), batch_size):
                prepared(calib_images[i:i + batch_size])
        q = convert_fx(prepared)
    return q, messages


class Int8DynamicLinear(nn.Module):
    """A torch.ao dynamic int8 Linear that quantizes its input over the full 8-bit range.

    torch.ao's ``DynamicQuantizedLinear`` calls the fbgemm kernel with ``reduce_range=True``: the
    activations get only 7 bits (0..127) so that the AVX2 instruction VPMADDUBSW cannot saturate its
    16-bit sums. This wrapper calls the same kernel with ``reduce_range=False`` (all 256 levels);
    on CPUs with AVX512-VNNI (or AVX512) there is no saturation. Same packed weights.
    """

    def __init__(self, qlinear: nn.Module):
        super().__init__()
        self.qlinear = qlinear

    def weight(self):
        return self.qlinear.weight()

    def forward(self, x):
        y = torch.ops.quantized.linear_dynamic(x, self.qlinear._packed_params._packed_params, False)
        return y.to(x.dtype)


def quantize_dynamic_int8(model: nn.Module, per_channel: bool = False, full_range: bool = False,
                          skip=()) -> nn.Module:
    """A copy of ``model`` with every nn.Linear (except names in ``skip``) replaced by a dynamic int8
    Linear of torch.ao: int8 weights (per tensor, or per output channel if ``per_channel``), float
    activations quantized to uint8 on the fly per tensor from each batch's min/max, int32 accumulation.
    full_range=True uses all 8 bits for the activations (:class:`Int8DynamicLinear`) instead of
    torch.ao's default 7 bits (reduce_range). torch.ao's deprecation warnings are caught.
    ``model`` is not modified."""
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

    names = {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    unknown = set(skip) - names
    if unknown:
        raise ValueError(f"skip={sorted(unknown)} are not linear layers of the model; valid names: {sorted(names)}")
    qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
    out = copy.deepcopy(model).eval()
    set_quantized_engine()
    with captured_warnings():
        for name in sorted(names - set(skip)):
            lin = out.get_submodule(name)
            q = quantize_dynamic(nn.Sequential(lin), {nn.Linear: qconfig}, dtype=torch.qint8)[0]
            replace_module(out, name, Int8DynamicLinear(q) if full_range else q)
    return out
