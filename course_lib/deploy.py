"""Deployment helpers: ONNX export and onnxruntime sessions measured like PyTorch models."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = ["export_onnx", "ort_session", "OrtModule"]


def export_onnx(model: nn.Module, path, input_shape: tuple = (1, 28, 28), opset: int = 17,
                input_name: str = "x", output_name: str = "logits") -> Path:
    """Export ``model`` (CPU, eval mode) to an ONNX file at ``path`` with a dynamic batch axis.

    input_shape: (C, H, W) of one input; opset >= 13. Uses PyTorch's TorchScript-based exporter
    (``dynamo=False``): the newer torch.export-based exporter needs the ``onnxscript`` package,
    which the course does not install. Returns the path. The model is not changed.
    """
    shape = tuple(input_shape)
    if len(shape) == 0 or any(not isinstance(s, int) or s < 1 for s in shape):
        raise ValueError(f"input_shape={input_shape!r} must be a tuple of positive ints, e.g. (1, 28, 28)")
    if not isinstance(opset, int) or opset < 13:
        raise ValueError(f"opset={opset!r} must be an integer >= 13")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.cpu().eval()
    x = torch.zeros((1, *shape))
    with warnings.catch_warnings():
        # torch >= 2.9 warns that the TorchScript exporter is legacy; it is the one that works
        # without onnxscript, and its output is a standard ONNX file.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=opset,
                          input_names=[input_name], output_names=[output_name],
                          dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}})
    return path


def ort_session(path, threads: int = 1, optimize: bool = True):
    """An onnxruntime CPU ``InferenceSession`` for the model at ``path``.

    threads: intra-op threads (>= 1; inter-op threads are 1 and execution is sequential, so 1 means
    truly single-threaded, the course's standard for latency). optimize: all graph optimisations
    (operator fusion, integer-kernel fusion of Quantize/Dequantize pairs, layout changes) or none.
    """
    import onnxruntime as ort
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads={threads!r} must be a positive integer")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ort_session: no ONNX file at {path}")
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3  # errors only: keeps warnings out of notebook outputs
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


class OrtModule(nn.Module):
    """An onnxruntime session that behaves like a PyTorch model: float32 tensor in, logits tensor out.

    So ``training.evaluate``, ``training.predict`` and ``measure.latency_ms`` work on it unchanged
    (it has no PyTorch parameters; its size is the ONNX file's, ``measure.size_bytes(module.path)``).
    """

    def __init__(self, path, threads: int = 1, optimize: bool = True):
        super().__init__()
        self.path = Path(path)
        self.session = ort_session(self.path, threads, optimize)
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        arr = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(self.session.run(None, {self.input_name: arr})[0])

    def extra_repr(self) -> str:
        return f"{self.path.name}, {os.path.getsize(self.path):,} bytes"
