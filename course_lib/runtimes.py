"""One model, every runtime a learner can deploy to: PyTorch eager (NCHW and channels-last),
``torch.compile``, torchao's PT2E static int8, onnxruntime, OpenVINO (with NNCF for int8) and ExecuTorch
with XNNPACK, each wrapped as a :class:`Deployed` path that the course's one latency protocol
(``deploy.latency_table``) times; the installed size of each runtime; and the diagnosis of a slow int8
model on the learner's CPU (features, oneDNN limited to an older instruction set in a subprocess,
onnxruntime's per-operator profile compared layer by layer)."""
from __future__ import annotations

import copy
import importlib.metadata as md
import json
import os
import platform
import re
import subprocess
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from . import deploy, env
from ._validate import int_in, one_of, positive_int

__all__ = ["SPEED_TARGET", "RUNTIME_DISTRIBUTIONS", "installed_bytes", "runtime_footprint", "Deployed", "padded_predict",
           "agreement", "eager_path", "channels_last_path", "compiled_path", "pt2e_int8", "pt2e_path",
           "pt2e_dynamic_batch_attempt", "ort_path", "openvino_path", "openvino_int8", "executorch_program",
           "executorch_path", "native_stderr_silenced", "every_path", "time_paths", "cpu_report", "format_cpu_report", "int8_speedup_floor",
           "ONEDNN_ISAS", "isa_latencies", "layer_of", "op_speedups", "cached_latency_model", "state_key",
           "inductor_cache"]

# Chapter 8's speed target (issue 19): the fastest int8 path at least this many times faster than the fastest
# fp32 path, batch 64, single thread; printed as met or MISSED by the notebook and by `make bench`
SPEED_TARGET = 2.5
# display name -> the distribution whose files are the runtime (what a learner installs for it)
RUNTIME_DISTRIBUTIONS = {"PyTorch": "torch", "torchao": "torchao", "onnxruntime": "onnxruntime",
                         "OpenVINO": "openvino", "NNCF": "nncf", "ExecuTorch": "executorch"}

env.quiet_torchao()  # every torchao import below: no CUDA-kernel load notices on a CPU-only machine


# ---------------------------------------------------------------- what a runtime weighs
def installed_bytes(distribution: str) -> int:
    """Bytes on disk of an installed distribution: the sum of the sizes of the files its metadata lists
    (``importlib.metadata.files``, i.e. its RECORD), counting only files that exist. Its own dependencies are
    not included. Raises ValueError naming the distribution if it is not installed."""
    if not isinstance(distribution, str) or not distribution:
        raise ValueError(f"distribution={distribution!r} must be a distribution name such as 'onnxruntime'")
    try:
        files = md.files(distribution)
    except md.PackageNotFoundError:
        raise ValueError(f"distribution={distribution!r} is not installed in this environment") from None
    total = 0
    for f in files or []:
        p = Path(f.locate())
        if p.is_file():
            total += p.stat().st_size
    return total


def runtime_footprint(names=None) -> dict:
    """{display name: {"distribution", "version", "bytes"}} for the runtimes in ``names`` (default every key of
    RUNTIME_DISTRIBUTIONS); a runtime that is not installed gets version None and bytes None."""
    names = list(RUNTIME_DISTRIBUTIONS) if names is None else list(names)
    out = {}
    for n in names:
        one_of("names", n, tuple(RUNTIME_DISTRIBUTIONS))
        dist = RUNTIME_DISTRIBUTIONS[n]
        try:
            out[n] = {"distribution": dist, "version": md.version(dist), "bytes": installed_bytes(dist)}
        except (md.PackageNotFoundError, ValueError):
            out[n] = {"distribution": dist, "version": None, "bytes": None}
    return out


# ---------------------------------------------------------------- a deployed model
@dataclass
class Deployed:
    """One model on one runtime.

    fns: {batch size: callable} running one prepared batch of exactly that size (runtimes compiled for static
    shapes hold one callable per size; dynamic ones the same callable under every size) and returning the
    logits (tensor or array). prepare: tensor (N, C, H, W) float32 -> what the callable takes (a numpy array,
    a channels-last tensor); done outside the timed call. file: the artifact the runtime loads (None: the
    PyTorch model itself); build_s: seconds spent exporting, quantizing and compiling it."""
    name: str
    runtime: str
    precision: str
    fns: dict
    prepare: Callable = field(default=lambda x: x)
    file: Path | None = None
    build_s: float = 0.0
    note: str = ""

    def batch_sizes(self) -> list[int]:
        return sorted(self.fns)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, classes) for a batch whose size is one of :meth:`batch_sizes`."""
        n = len(x)
        if n not in self.fns:
            raise ValueError(f"{self.name}: batch of {n}; this path runs batches of {self.batch_sizes()}")
        with torch.inference_mode():
            out = self.fns[n](self.prepare(x))
        if isinstance(out, (list, tuple)):
            out = out[0]
        return torch.as_tensor(np.asarray(out) if not torch.is_tensor(out) else out).float()

    def call(self, batch_size: int, seed: int = 0) -> Callable[[], object]:
        """A zero-argument callable running one fixed random batch of ``batch_size`` (prepared once, outside
        the timing): what ``deploy.latency_table`` times."""
        if batch_size not in self.fns:
            raise ValueError(f"{self.name}: batch_size={batch_size} is not one of {self.batch_sizes()}")
        x = torch.randn((batch_size, 1, 28, 28), generator=torch.Generator().manual_seed(seed))
        prepared, fn = self.prepare(x), self.fns[batch_size]
        return lambda: fn(prepared)


def padded_predict(fn: Callable, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Logits of ``fn`` over all of ``x`` (N, ...), fed in batches of exactly ``batch_size`` rows: the last
    batch is padded with zeros to full size and the padding's outputs are dropped, so a runtime compiled for
    a static batch shape can predict a whole test split. fn: tensor (batch_size, ...) -> logits
    (batch_size, classes). Returns (N, classes) float32."""
    positive_int("batch_size", batch_size)
    if not torch.is_tensor(x) or x.dim() < 1 or len(x) == 0:
        raise ValueError("x must be a non-empty tensor (N, ...)")
    outs = []
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size]
        n = len(xb)
        if n < batch_size:
            xb = torch.cat([xb, xb.new_zeros((batch_size - n, *xb.shape[1:]))])
        y = fn(xb)
        y = y[0] if isinstance(y, (list, tuple)) else y
        outs.append(torch.as_tensor(np.asarray(y) if not torch.is_tensor(y) else y)[:n].float())
    return torch.cat(outs)


def agreement(reference: torch.Tensor, other: torch.Tensor) -> float:
    """Fraction in [0, 1] of positions where two prediction vectors (N,) (or logits (N, classes), compared
    by argmax) agree."""
    a = reference.argmax(1) if reference.dim() == 2 else reference
    b = other.argmax(1) if other.dim() == 2 else other
    if a.shape != b.shape:
        raise ValueError(f"reference has {tuple(a.shape)} predictions, other {tuple(b.shape)}")
    return float((a == b).double().mean())


# ---------------------------------------------------------------- PyTorch
def _example(batch_size: int, shape=(1, 28, 28), channels_last: bool = False) -> torch.Tensor:
    x = torch.randn((batch_size, *shape), generator=torch.Generator().manual_seed(0))
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _cl(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


def eager_path(model: nn.Module, batch_sizes=(1, 64)) -> Deployed:
    """PyTorch eager, NCHW (the default layout), fp32. ``model`` is copied (CPU, eval)."""
    m = copy.deepcopy(model).cpu().eval()
    return Deployed("PyTorch eager NCHW", "PyTorch", "fp32", {b: m for b in batch_sizes})


def channels_last_path(model: nn.Module, batch_sizes=(1, 64)) -> Deployed:
    """PyTorch eager with model and input in channels-last (NHWC) memory layout, fp32."""
    m = copy.deepcopy(model).cpu().eval().to(memory_format=torch.channels_last)
    return Deployed("PyTorch eager channels-last", "PyTorch", "fp32", {b: m for b in batch_sizes}, prepare=_cl)


@contextmanager
def inductor_cache(folder):
    """Point TorchInductor's on-disk compile cache at ``folder`` (e.g. build/cache/inductor) inside the
    block, so a second run of a chapter reuses the compiled kernels; the previous setting is restored."""
    old = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    try:
        yield Path(folder)
    finally:
        if old is None:
            os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
        else:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = old


def _compile_static(module: nn.Module, examples: dict) -> dict:
    """{batch: compiled callable}: ``torch.compile`` with freezing (weights folded as constants, oneDNN
    prepacking) and static shapes, compiled now by one call per batch size under inference mode."""
    import torch._inductor.config as inductor_config
    fns = {}
    for b, x in examples.items():
        c = torch.compile(module, dynamic=False)
        with inductor_config.patch(freezing=True), torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            c(x)
        fns[b] = c
    return fns


def compiled_path(model: nn.Module, batch_sizes=(1, 64), channels_last: bool = True) -> Deployed:
    """``torch.compile`` (Inductor, freezing, static shapes) of the fp32 model, one compiled graph per batch
    size, in channels-last layout by default. build_s counts the compile time."""
    t0 = time.perf_counter()
    m = copy.deepcopy(model).cpu().eval()
    if channels_last:
        m = m.to(memory_format=torch.channels_last)
    fns = _compile_static(m, {b: _example(b, channels_last=channels_last) for b in batch_sizes})
    return Deployed("torch.compile", "PyTorch", "fp32", fns, prepare=_cl if channels_last else (lambda x: x),
                    build_s=time.perf_counter() - t0)


def pt2e_int8(model: nn.Module, calib_images: torch.Tensor, reduce_range: bool | None = None,
              batch_size: int = 64) -> nn.Module:
    """torchao's PT2E static int8 for x86: ``torch.export`` (batch ``batch_size``, channels-last), then
    ``prepare_pt2e`` with ``X86InductorQuantizer`` (per-channel int8 weights, uint8 activations), calibration
    on ``calib_images`` (N, C, H, W) in batches of ``batch_size``, and ``convert_pt2e``. Returns the
    converted GraphModule (quantize/dequantize pairs around float ops: run it through ``torch.compile``,
    :func:`pt2e_path`, for int8 kernels). reduce_range: 7-bit activations for CPUs whose u8 x s8 kernels
    saturate (None: ``env.u8s8_saturates()``)."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq
    if len(calib_images) == 0:
        raise ValueError("calib_images is empty: the calibration set needs at least one image")
    positive_int("batch_size", batch_size)
    rr = env.u8s8_saturates() if reduce_range is None else bool(reduce_range)
    m = copy.deepcopy(model).cpu().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # a dynamic batch dimension here, so that the converted model re-exports at any static batch size
        exported = torch.export.export(m, (_example(batch_size, tuple(calib_images.shape[1:]), True),),
                                       dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},)).module()
        quantizer = xiq.X86InductorQuantizer().set_global(
            xiq.get_default_x86_inductor_quantization_config(reduce_range=rr))
        prepared = prepare_pt2e(exported, quantizer)
        with torch.no_grad():
            n = len(calib_images) // batch_size * batch_size or len(calib_images)
            for i in range(0, n, batch_size):
                xb = calib_images[i:i + batch_size]
                if len(xb) == batch_size:
                    prepared(_cl(xb))
        return convert_pt2e(prepared)


def pt2e_path(model: nn.Module, calib_images: torch.Tensor, batch_sizes=(1, 64),
              reduce_range: bool | None = None, save_to=None) -> Deployed:
    """PT2E int8 (:func:`pt2e_int8`, calibrated once at batch 64) re-exported at each static batch size and
    compiled by Inductor with freezing: the int8 convolutions and linears become oneDNN kernels. One static
    graph per size, as the other runtimes here are compiled (:func:`pt2e_dynamic_batch_attempt` tries one
    dynamic graph instead). build_s counts quantization and compilation.

    save_to: a path for the artifact a deployment would ship, the converted program at the largest batch size
    as ``torch.export.save`` writes it (it becomes ``file``; None: not written). It keeps the float32 weights
    beside their quantization parameters: the int8 weights exist only inside the compiled program."""
    t0 = time.perf_counter()
    converted = pt2e_int8(model, calib_images, reduce_range)
    examples = {b: _example(b, tuple(calib_images.shape[1:]), True) for b in batch_sizes}
    fns, programs = {}, {}
    for b, x in examples.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            programs[b] = torch.export.export(converted, (x,))
        fns.update({b: _compile_static(programs[b].module(), {b: x})[b]})
    if save_to is not None:
        save_to = Path(save_to)
        save_to.parent.mkdir(parents=True, exist_ok=True)
        torch.export.save(programs[max(programs)], save_to)
    return Deployed("torchao PT2E + torch.compile", "torchao", "int8", fns, prepare=_cl, file=save_to,
                    build_s=time.perf_counter() - t0)


def pt2e_dynamic_batch_attempt(model: nn.Module, calib_images: torch.Tensor, batch_sizes=(64, 1)) -> str:
    """Try the PT2E flow with a *dynamic* batch dimension (one graph for every batch size) and run it at each
    of ``batch_sizes``. Returns "works" or "fails: <ErrorType>: <first line of the message>" (with the torch and
    torchao versions), so a notebook can show what happens on this install instead of hiding it."""
    import torchao
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq
    import torch._inductor.config as inductor_config
    m = copy.deepcopy(model).cpu().eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            x = _example(max(batch_sizes), tuple(calib_images.shape[1:]))
            ep = torch.export.export(m, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},))
            prepared = prepare_pt2e(ep.module(), xiq.X86InductorQuantizer().set_global(
                xiq.get_default_x86_inductor_quantization_config()))
            with torch.no_grad():
                prepared(calib_images[:64])
            c = torch.compile(convert_pt2e(prepared))
            with inductor_config.patch(freezing=True), torch.inference_mode():
                for b in batch_sizes:
                    c(_example(b, tuple(calib_images.shape[1:])))
        return "works"
    except Exception as e:  # the point is to report it
        first = (str(e).strip().splitlines() or [""])[0][:200]
        return f"fails (torch {torch.__version__}, torchao {torchao.__version__}): {type(e).__name__}: {first}"


_DYNAMO_GRAPHS_EXPLAINED = 0  # TorchDynamo's graph count after this process's last graph_breaks call


def graph_breaks(module: nn.Module, example: torch.Tensor) -> dict:
    """What ``torch.compile``'s front end (TorchDynamo) makes of ``module`` on ``example``, without compiling:
    ``torch._dynamo.explain``'s count of graphs and of graph breaks, and the first reasons, traced under
    inference mode as :func:`pt2e_path` compiles. A break splits the model into several compiled graphs with
    Python in between (the symptom a side run of this course once saw on a PT2E converted module); 1 graph and 0
    breaks means Inductor sees the whole model at once.
    Returns {"graphs": int, "breaks": int, "reasons": [str, ...] (at most 3)}.

    ``explain`` resets TorchDynamo: every model ``torch.compile``d before it would recompile on its next call
    without the settings it was compiled under (chapter 8's PT2E path, compiled with freezing, ran about 3.6x
    slower after a reset). So this refuses (RuntimeError) once anything has been compiled in the process since
    its last call: call it before compiling what you time, or in a fresh process (restart the kernel)."""
    import torch._dynamo as dynamo
    from torch._dynamo.utils import counters
    global _DYNAMO_GRAPHS_EXPLAINED
    compiled = counters["stats"]["unique_graphs"] - _DYNAMO_GRAPHS_EXPLAINED
    if compiled > 0:
        raise RuntimeError(f"graph_breaks: TorchDynamo has compiled {compiled} graph(s) in this process already, "
                           "and torch._dynamo.explain would reset it: those models would silently recompile without "
                           "their settings. Call it before compiling anything, or restart the kernel first.")
    try:
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")
            e = dynamo.explain(module)(example)
    finally:
        dynamo.reset()
        _DYNAMO_GRAPHS_EXPLAINED = counters["stats"]["unique_graphs"]
    return {"graphs": int(e.graph_count), "breaks": int(e.graph_break_count),
            "reasons": [str(b.reason).splitlines()[0][:200] for b in e.break_reasons][:3]}


# ---------------------------------------------------------------- onnxruntime
def ort_path(onnx_file, name: str, precision: str, batch_sizes=(1, 64), threads: int = 1) -> Deployed:
    """An onnxruntime CPU session (``deploy.ort_session``: ``threads`` intra-op threads, all graph
    optimisations) of an ONNX file with a dynamic batch axis."""
    sess = deploy.ort_session(onnx_file, threads=threads)
    inp = sess.get_inputs()[0].name
    fn = lambda a: sess.run(None, {inp: a})[0]  # noqa: E731
    return Deployed(name, "onnxruntime", precision, {b: fn for b in batch_sizes}, prepare=_np, file=Path(onnx_file))


def _np(x: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)


# ---------------------------------------------------------------- OpenVINO (+ NNCF)
def _ov_config(threads: int) -> dict:
    return {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "f32"}


def openvino_path(model_file, name: str, precision: str, batch_sizes=(1, 64), threads: int = 1) -> Deployed:
    """OpenVINO's CPU plugin on a model file (ONNX, or OpenVINO IR .xml), compiled once per static batch size,
    ``threads`` inference threads, one stream, latency hint, fp32 inference precision (so fp32 stays fp32 on
    CPUs with bf16). build_s counts reading and compiling."""
    import openvino as ov
    positive_int("threads", threads)
    t0 = time.perf_counter()
    core = ov.Core()
    fns = {}
    for b in batch_sizes:
        m = core.read_model(str(model_file))
        m.reshape([b, *list(m.input(0).get_partial_shape())[1:]])
        request = core.compile_model(m, "CPU", _ov_config(threads)).create_infer_request()
        fns[b] = (lambda a, r=request: r.infer({0: a})[0])
    return Deployed(name, "OpenVINO", precision, fns, prepare=_np, file=Path(model_file),
                    build_s=time.perf_counter() - t0)


def openvino_int8(onnx_file, xml_path, calib_images: torch.Tensor, batch_size: int = 64) -> Path:
    """NNCF post-training int8 quantization (its default: per-channel symmetric weights, calibrated activations,
    min-max over ``calib_images`` in batches of ``batch_size``) of the ONNX model read by OpenVINO; saved as
    OpenVINO IR at ``xml_path`` (.xml + .bin). Returns xml_path."""
    import logging

    import nncf
    import openvino as ov
    if len(calib_images) < batch_size:
        raise ValueError(f"calib_images has {len(calib_images)} images, fewer than batch_size={batch_size}")
    nncf.set_log_level(logging.ERROR)
    m = ov.Core().read_model(str(onnx_file))
    m.reshape([batch_size, *list(m.input(0).get_partial_shape())[1:]])
    batches = [_np(calib_images[i:i + batch_size]) for i in range(0, len(calib_images) - batch_size + 1, batch_size)]
    q = nncf.quantize(m, nncf.Dataset(batches), subset_size=len(batches))
    xml_path = Path(xml_path)
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(q, str(xml_path))
    return xml_path


# ---------------------------------------------------------------- ExecuTorch (XNNPACK)
def executorch_program(model: nn.Module, path, batch_size: int, calib_images: torch.Tensor | None = None) -> Path:
    """Lower ``model`` to an ExecuTorch program (.pte) for a static batch of ``batch_size``, delegated to
    XNNPACK. With ``calib_images``: int8 first, through PT2E with ExecuTorch's ``XNNPACKQuantizer``
    (symmetric per-channel weights, calibrated activations). Returns path."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    positive_int("batch_size", batch_size)
    path = Path(path)
    m = copy.deepcopy(model).cpu().eval()
    x = _example(batch_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if calib_images is not None:
            from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
                XNNPACKQuantizer, get_symmetric_quantization_config)
            from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
            dyn = ({0: torch.export.Dim("batch", min=1, max=4096)},)
            prepared = prepare_pt2e(torch.export.export(m, (_example(64),), dynamic_shapes=dyn).module(),
                                    XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True)))
            with torch.no_grad():
                for i in range(0, len(calib_images) - 63, 64):
                    prepared(calib_images[i:i + 64])
            m = convert_pt2e(prepared)
        program = to_edge_transform_and_lower(torch.export.export(m, (x,)),
                                              partitioner=[XnnpackPartitioner()]).to_executorch()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(program.buffer)
    return path


@contextmanager
def native_stderr_silenced():
    """Drop what is written to standard error inside the block, both through file descriptor 2 and through
    Python's ``sys.stderr`` (exceptions still raise). ExecuTorch's C++ runtime logs its CPU probing
    ("Failed to open midr file ...", "Resetting threadpool to 1 threads") there: to fd 2 in a script, through
    ``sys.stderr`` inside Jupyter; it differs from one machine to the next and says nothing about the model."""
    import contextlib
    import io
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null, contextlib.redirect_stderr(io.StringIO()):
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def executorch_path(files: dict, name: str, precision: str, threads: int = 1) -> Deployed:
    """ExecuTorch's runtime on ``files`` ({batch size: .pte path}), its thread pool set to ``threads``."""
    positive_int("threads", threads)
    with native_stderr_silenced():
        from executorch.extension.pybindings import portable_lib
        from executorch.runtime import Runtime
        portable_lib._unsafe_reset_threadpool(threads)
        rt = Runtime.get()
        fns = {}
        for b, f in files.items():
            method = rt.load_program(str(f)).load_method("forward")
            fns[b] = (lambda x, m=method: m.execute([x])[0])
    return Deployed(name, "ExecuTorch", precision, fns, file=Path(files[max(files)]),
                    prepare=lambda x: x.contiguous())


def every_path(model: nn.Module, calib_images: torch.Tensor, folder, cache, batch_sizes=(1, 64),
               compiled: bool = True, executorch: bool = True) -> list[Deployed]:
    """Every runtime's fp32 and int8 path for one ``models.LeNet5``, in a fixed order: PyTorch eager NCHW (the
    reference), eager channels-last, ``torch.compile``, torchao PT2E + ``torch.compile``, onnxruntime fp32 and
    int8 (chapter 2's recipe: conv1 float, the rest static int8), OpenVINO fp32 and int8 (NNCF), ExecuTorch
    XNNPACK fp32 and int8. ``compiled=False`` leaves out the two Inductor paths, ``executorch=False`` the
    ExecuTorch ones (a quick run).

    calib_images (N, C, H, W): calibrate every int8 path (training images, never the test split). folder: the
    ONNX files; cache: the ExecuTorch programs, NNCF's model and Inductor's kernels, keyed by the model's
    weights and the versions, built in a fresh process (:func:`build_in_subprocess`) and reused by later runs.
    The lowering's time is shared between the two ExecuTorch paths' ``build_s``.
    """
    from .recipes import int8_lenet_ort
    folder, cache = Path(folder), Path(cache)
    tag = state_key(model, torch.__version__, *(v for v in map(_version, ("executorch", "openvino")) if v))
    onnx_fp32 = deploy.export_onnx(model, folder / f"fp32_{tag}.onnx", tuple(calib_images.shape[1:]))
    t0 = time.perf_counter()
    ov8 = cache / f"ov_int8_{tag}.xml"
    et = {(prec, b): cache / f"et_{prec}_b{b}_{tag}.pte" for prec in ("fp32", "int8") for b in batch_sizes} \
        if executorch else {}
    jobs = [{"kind": "executorch", "out": f, "batch": b, "int8": prec == "int8"} for (prec, b), f in et.items()]
    jobs.append({"kind": "openvino_int8", "onnx": onnx_fp32, "out": ov8})
    build_in_subprocess(model, [j for j in jobs if not Path(j["out"]).exists()], calib_images, folder / f"build_{tag}")
    lowered_s = time.perf_counter() - t0
    out = [eager_path(model, batch_sizes), channels_last_path(model, batch_sizes)]
    if compiled:
        with inductor_cache(cache / "inductor"):
            out += [compiled_path(model, batch_sizes),
                    pt2e_path(model, calib_images, batch_sizes, save_to=folder / f"pt2e_int8_{tag}.pt2")]
    t1 = time.perf_counter()
    ort8 = int8_lenet_ort(model, folder / f"int8_{tag}.onnx", calib_images)
    out += [ort_path(onnx_fp32, "onnxruntime fp32", "fp32", batch_sizes),
            ort_path(ort8, "onnxruntime int8", "int8", batch_sizes)]
    out[-1].build_s = time.perf_counter() - t1
    out += [openvino_path(onnx_fp32, "OpenVINO fp32", "fp32", batch_sizes),
            openvino_path(ov8, "OpenVINO int8 (NNCF)", "int8", batch_sizes)]
    if executorch:
        for prec in ("fp32", "int8"):
            out.append(executorch_path({b: et[prec, b] for b in batch_sizes}, f"ExecuTorch XNNPACK {prec}", prec))
            out[-1].build_s = lowered_s / 2
    else:
        out[-1].build_s = lowered_s
    return out


def _version(distribution: str) -> str | None:
    """The installed version of ``distribution``, None when it is not installed."""
    try:
        return md.version(distribution)
    except md.PackageNotFoundError:
        return None


# ---------------------------------------------------------------- one interleaved measurement
def time_paths(paths, batch_sizes=(1, 64), rounds: int = 3, repeats: int = 20, warmup: int = 3) -> dict:
    """Every path at every batch size in ONE interleaved measurement (``deploy.latency_table``: ``rounds``
    rounds, each the median of ``repeats`` single-thread calls after ``warmup``). paths: a list of
    :class:`Deployed` (labelled by their names, which must differ) or a dict {label: Deployed}. Returns
    {(label, batch size): {"latency_ms", "spread_ms": (min, max) of the round medians}}."""
    positive_int("rounds", rounds)
    if not isinstance(paths, dict):
        names = [p.name for p in paths]
        if len(set(names)) != len(names):
            raise ValueError(f"paths have repeated names {names}: pass a dict {{label: path}} instead")
        paths = {p.name: p for p in paths}
    if not paths:
        raise ValueError("paths is empty: give at least one Deployed path")
    calls = {(label, b): p.call(b) for label, p in paths.items() for b in batch_sizes}
    keyed = {f"{i}": fn for i, fn in enumerate(calls.values())}
    rows = deploy.latency_table(keyed, (1, 28, 28), reference="0", rounds=rounds, repeats=repeats, warmup=warmup)
    return {key: {"latency_ms": rows[f"{i}"]["latency_ms"], "spread_ms": rows[f"{i}"]["spread_ms"]}
            for i, key in enumerate(calls)}


# ---------------------------------------------------------------- why is yours slower
X86_FEATURES = {"AVX2": ("avx2",), "AVX512": ("avx512f",), "AVX512-VNNI": ("avx512_vnni",),
                "AVX-VNNI": ("avx_vnni",), "AMX-INT8": ("amx_int8",)}
ARM_FEATURES = {"dot product (asimddp)": ("asimddp",), "int8 matrix multiply (i8mm)": ("i8mm",),
                "SME": ("sme",), "SVE": ("sve",)}


def cpu_report(flags: set | None = None, machine: str | None = None, threads: int | None = None,
               cores: int | None = None) -> dict:
    """What this CPU offers int8 code, from ``env.cpu_flags`` (or ``flags``), ``platform.machine()`` (or
    ``machine``), torch's thread count (or ``threads``) and ``os.cpu_count()`` (or ``cores``).

    Returns {"machine", "x86", "features": {name: bool or None when unknown}, "vnni", "u8s8_saturates",
    "threads", "cores", "notes": [sentences saying what each fact means for int8]}."""
    machine = machine or platform.machine()
    x86 = env.is_x86(machine)
    flags = env.cpu_flags() if flags is None else set(flags)
    table = X86_FEATURES if x86 else ARM_FEATURES
    features = {k: (None if flags is None else any(f in flags for f in fs)) for k, fs in table.items()}
    threads = torch.get_num_threads() if threads is None else positive_int("threads", threads)
    cores = (os.cpu_count() or 1) if cores is None else positive_int("cores", cores)
    vnni = env.has_vnni(flags) if flags is not None else None
    sat = env.u8s8_saturates(flags, machine) if flags is not None else (x86 or None)
    notes = []
    if flags is None:
        notes.append("The CPU's flags cannot be read here (no /proc/cpuinfo): the measurements below say what it does.")
    elif x86:
        if vnni:
            notes.append("VNNI present: u8 x s8 products accumulate straight into int32 (one instruction), so int8 "
                         "kernels run up to 4x the multiply-adds of fp32 per instruction and never saturate; "
                         "reduce_range is not needed.")
        else:
            notes.append("No VNNI: x86 int8 kernels pair u8 x s8 products in saturating int16 (vpmaddubsw), "
                         "then widen; int8 gains less over fp32, and large activations times large weights can "
                         "saturate, so quantizers use 7-bit ranges (reduce_range=True), costing a little accuracy.")
        if features.get("AMX-INT8"):
            notes.append("AMX present: tile instructions multiply int8 matrices many times faster than VNNI at large "
                         "batch; oneDNN and PyTorch's compiled int8 use them, onnxruntime's default kernels do not.")
        if not features.get("AVX512"):
            notes.append("No AVX512: vectors are 256 bits wide, half the lanes per instruction of AVX512.")
    else:
        notes.append("ARM: int8 dot products (asimddp, i8mm) accumulate in int32 without saturation; "
                     "XNNPACK and onnxruntime use them; x86-only paths (X86InductorQuantizer, oneDNN's x86 kernels) "
                     "do not apply.")
        if features.get("SME"):
            notes.append("SME present: matrix tiles, ARM's counterpart of AMX, used by recent XNNPACK/KleidiAI builds.")
    notes.append(f"{threads} torch thread(s) of {cores} logical core(s): every latency here is single-thread, "
                 "so the ranking says what one core does; more threads help large batches more than batch 1.")
    return {"machine": machine, "x86": x86, "features": features, "vnni": vnni, "u8s8_saturates": sat,
            "threads": threads, "cores": cores, "notes": notes}


def format_cpu_report(report: dict) -> str:
    """The report of :func:`cpu_report` as a few printable lines."""
    feats = ", ".join(f"{k} {'yes' if v else ('unknown' if v is None else 'no')}" for k, v in report["features"].items())
    return "\n".join([f"machine {report['machine']}: {feats}", *[f"- {n}" for n in report["notes"]]])


def int8_speedup_floor(report: dict) -> float:
    """The least int8-over-fp32 speed-up (batch 64, single thread, best int8 path over best fp32 path) that a
    notebook asserts on a CPU described by ``report``: 1.0 with int8 dot products (VNNI, AMX, ARM dot
    product), where int8 must at least not lose; 0.5 without them (x86 without VNNI: int8 can honestly be
    slower than a well-vectorised fp32 path) or when the CPU is unknown. The chapter's 2.5x target is
    reported separately."""
    if report.get("vnni") or (not report.get("x86") and report["features"].get("dot product (asimddp)")):
        return 1.0
    return 0.5


# oneDNN's documented ONEDNN_MAX_CPU_ISA values, oldest first (a subset: the x86 levels that matter for int8)
ONEDNN_ISAS = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX512_CORE", "AVX512_CORE_VNNI", "AVX512_CORE_BF16",
               "AVX512_CORE_AMX", "ALL")
_ATEN = {"SSE41": "default", "AVX": "default", "AVX2": "avx2", "AVX2_VNNI": "avx2"}

_CHILD = r"""
import json, sys, torch
from course_lib import runtimes as R
from course_lib.models import LeNet5
args = json.loads(sys.argv[1])
torch.set_num_threads(1)
model = LeNet5(**args["config"])
model.load_state_dict(torch.load(args["state"], map_location="cpu", weights_only=True))
calib = torch.load(args["calib"], weights_only=True)
b = args["batch"]
with R.inductor_cache(args["inductor"]):
    paths = [R.channels_last_path(model, (b,)), R.pt2e_path(model, calib, (b,))]
if args.get("ort_int8"):
    paths.append(R.ort_path(args["ort_int8"], "onnxruntime int8", "int8", (b,)))
if args.get("ov_int8"):
    paths.append(R.openvino_path(args["ov_int8"], "OpenVINO int8 (NNCF)", "int8", (b,)))
t = R.time_paths(paths, (b,), rounds=args["rounds"], repeats=args["repeats"])
print("RESULT " + json.dumps({k[0]: v["latency_ms"] for k, v in t.items()}))
"""


def isa_latencies(model: nn.Module, calib_images: torch.Tensor, workdir, isas=("ALL", "AVX2"), batch_size: int = 64,
                  ort_int8=None, ov_int8=None, rounds: int = 3, repeats: int = 10, timeout: int = 300) -> dict:
    """Re-time fp32 channels-last and the int8 paths with oneDNN limited to an older instruction set.

    ``ONEDNN_MAX_CPU_ISA`` (oneDNN's documented switch; also ``ATEN_CPU_CAPABILITY`` for PyTorch's own
    vectorised kernels at AVX2 and below) is read once when the library loads, so each ISA of ``isas`` (from
    ONEDNN_ISAS; "ALL" is the machine's best) runs in a fresh Python subprocess: PyTorch fp32 channels-last,
    torchao PT2E int8 compiled, and, when their files are given, onnxruntime int8 (MLAS: its own dispatch,
    not limited by the variable, a control) and OpenVINO int8 (its own oneDNN build). ``model`` must be a
    ``models.LeNet5``. Returns {isa: {path name: ms at ``batch_size``}}; a failed child raises RuntimeError
    with its last output lines."""
    for isa in isas:
        one_of("isas", isa, ONEDNN_ISAS)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    state, calib = workdir / "isa_model.pt", workdir / "isa_calib.pt"
    torch.save(model.state_dict(), state)
    torch.save(calib_images[:512].clone(), calib)
    args = {"config": model.config, "state": str(state), "calib": str(calib), "batch": batch_size,
            "rounds": rounds, "repeats": repeats, "inductor": str(workdir / "inductor"),
            "ort_int8": str(ort_int8) if ort_int8 else None, "ov_int8": str(ov_int8) if ov_int8 else None}
    out = {}
    for isa in isas:
        child_env = dict(os.environ, ONEDNN_MAX_CPU_ISA=isa, DNNL_MAX_CPU_ISA=isa, OMP_NUM_THREADS="1")
        child_env.pop("ATEN_CPU_CAPABILITY", None)
        if isa in _ATEN:
            child_env["ATEN_CPU_CAPABILITY"] = _ATEN[isa]
        proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(args)], env=child_env, capture_output=True,
                              text=True, timeout=timeout)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not line:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-8:])
            raise RuntimeError(f"the {isa} subprocess failed (exit {proc.returncode}):\n{tail}")
        out[isa] = json.loads(line[-1][len("RESULT "):])
    return out


_LAYERS = ("conv1", "conv2", "fc1", "fc2")
# a LeNet-5 exported to ONNX numbers its activations in order: Relu -> conv1, Relu_1 -> conv2, Relu_2 -> fc1;
# MaxPool -> conv1, MaxPool_1 -> conv2. onnxruntime renames fused nodes after them ("/Relu_output_0_nchwc" is
# conv1 fused with its ReLU), so these names place a fused node in its layer.
_ACT_LAYERS = {("Relu", 0): "conv1", ("Relu", 1): "conv2", ("Relu", 2): "fc1", ("MaxPool", 0): "conv1",
               ("MaxPool", 1): "conv2"}


def layer_of(node_name: str) -> str:
    """The LeNet-5 layer an ONNX node of onnxruntime's profile belongs to: by the layer name in it
    ("/conv2/Conv_token_3" -> "conv2", "model.fc1.weight_DequantizeLinear" -> "fc1"), else by the activation it
    was fused with or follows ("/Relu_1_output_0_nchwc" -> "conv2", "/MaxPool" -> "conv1"); else "other"
    (layout reorders, the input's Quantize and the output's Dequantize, Flatten)."""
    found = [ly for ly in _LAYERS if re.search(rf"(^|[/_.]){ly}([/_.]|$)", node_name)]
    if found:
        return found[-1]
    m = re.search(r"/(Relu|MaxPool)(?:_(\d+))?(?=_|$)", node_name)
    if m:
        return _ACT_LAYERS.get((m.group(1), int(m.group(2) or 0)), "other")
    return "other"


def op_speedups(fp32_times, int8_times) -> list[dict]:
    """Where int8 pays off, layer by layer: ``deploy.ort_op_times`` of the fp32 and of the int8 model (lists of
    (node, operator, ms)) grouped by :func:`layer_of`. Returns rows {"layer", "fp32_ms", "int8_ms",
    "x_faster", "fp32_ops", "int8_ops"} sorted slowest-gaining first (the layer that does not speed up
    heads the list); a layer missing on one side gets 0.0 ms there and x_faster None."""
    def group(times):
        g = {}
        for node, op, ms in times:
            d = g.setdefault(layer_of(node), {"ms": 0.0, "ops": []})
            d["ms"] += ms
            if op not in d["ops"]:
                d["ops"].append(op)
        return g
    a, b = group(fp32_times), group(int8_times)
    rows = []
    for layer in [*_LAYERS, "other"]:
        if layer not in a and layer not in b:
            continue
        fa, fb = a.get(layer, {"ms": 0.0, "ops": []}), b.get(layer, {"ms": 0.0, "ops": []})
        x = fa["ms"] / fb["ms"] if fa["ms"] > 0 and fb["ms"] > 0 else None
        rows.append({"layer": layer, "fp32_ms": fa["ms"], "int8_ms": fb["ms"], "x_faster": x,
                     "fp32_ops": fa["ops"], "int8_ops": fb["ops"]})
    return sorted(rows, key=lambda r: (r["x_faster"] is None, r["x_faster"] if r["x_faster"] is not None else 0))


# ---------------------------------------------------------------- chapter 5's latency model, cached
def state_key(model: nn.Module, *extra) -> str:
    """A short hex digest of a model's state dict (values and names) and ``extra`` strings: a cache key that
    changes when the weights change (``training.fingerprint``, 12 digits)."""
    from .training import fingerprint
    return fingerprint(model, [str(e) for e in extra])[:12]


def cached_latency_model(teacher: nn.Module, train, seed: int = 0, epochs: int | None = None, cache=None,
                         dataset: str = "mnist5k", **fit_kw) -> tuple[nn.Module, dict]:
    """Chapter 5's latency model (``recipes.latency_model``: channel pruning + distillation from ``teacher``),
    trained once and then loaded: ``recipes.cached_recipe`` keys it by the teacher's weights, the training data,
    the seed, the epochs (>= 1, default ``recipes.LATENCY_EPOCHS``) and the recipe's other arguments, and looks
    in ``cache`` (default ``training.cache_dir()``), then in the weights the course ships, before training.
    Chapter 5 trains the same model (seed 0), so chapter 8 loads what chapter 5 cached. Returns (model in eval
    mode, info with "cached", "shipped", "train_seconds", "path" and the recipe's arguments under "recipe")."""
    from . import recipes
    epochs = recipes.LATENCY_EPOCHS if epochs is None else int_in("epochs", epochs, 1, None)
    return recipes.cached_recipe(recipes.latency_model, teacher, train, dataset=dataset, cache=cache, seed=seed,
                                 epochs=epochs, **fit_kw)


def cached_artifact(path, build: Callable) -> tuple[Path, bool]:
    """``path`` if it exists already, else ``build(path)`` (which must write it). Returns (path, cached).
    Put what the artifact depends on (weights: :func:`state_key`, versions, batch size) in its name."""
    path = Path(path)
    if path.exists():
        return path, True
    path.parent.mkdir(parents=True, exist_ok=True)
    build(path)
    if not path.exists():
        raise FileNotFoundError(f"build() did not write {path}")
    return path, False


def file_bytes(path) -> int:
    """Bytes of a model artifact on disk: the file, plus its weights file where the format keeps them apart
    (OpenVINO IR: model.xml + model.bin)."""
    path = Path(path)
    total = path.stat().st_size
    if path.suffix == ".xml" and path.with_suffix(".bin").exists():
        total += path.with_suffix(".bin").stat().st_size
    return total


# ---------------------------------------------------------------- torchao's own API: quantize_ and QAT
def _w4a8_config():
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig
    from torchao.quantization.granularity import PerAxis
    return Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, weight_granularity=PerAxis(0))


def torchao_w4a8(model: nn.Module) -> nn.Module:
    """Post-training quantization with torchao's ``quantize_``: every nn.Linear gets int4 weights (symmetric, one
    scale per output channel) and int8 activations quantized per token on the fly
    (``Int8DynamicActivationIntxWeightConfig``); convolutions stay float. Returns a quantized copy."""
    from torchao.quantization import quantize_
    m = copy.deepcopy(model).cpu().eval()
    quantize_(m, _w4a8_config())
    return m


def torchao_qat(model: nn.Module, train, epochs: int = 1, seed: int = 0, **fit_kw) -> nn.Module:
    """Quantization-aware training with torchao's ``QATConfig`` for the :func:`torchao_w4a8` scheme: ``prepare``
    swaps every nn.Linear for a fake-quantized one, ``training.fit`` trains for ``epochs`` (>= 1) with the
    course's fine-tuning recipe (``recipes.FINETUNE``, overridable by ``fit_kw``), ``convert`` turns the
    fake-quantized layers into real int4-weight ones. Returns the converted copy."""
    from torchao.quantization import quantize_
    from torchao.quantization.qat import QATConfig

    from .recipes import FINETUNE
    from .training import fit
    int_in("epochs", epochs, 1, None)
    m = copy.deepcopy(model).cpu().train()
    quantize_(m, QATConfig(_w4a8_config(), step="prepare"))
    fit(m, train, epochs=epochs, seed=seed, progress=False, **(FINETUNE | {"desc": "torchao QAT"} | fit_kw))
    m.eval()
    quantize_(m, QATConfig(_w4a8_config(), step="convert"))
    return m


def finetune_then_w4a8(model: nn.Module, train, epochs: int = 1, seed: int = 0, **fit_kw) -> nn.Module:
    """The equal-budget control of :func:`torchao_qat`: the same ``epochs`` of fp32 fine-tuning with the same
    recipe, then post-training :func:`torchao_w4a8`."""
    from .recipes import FINETUNE
    from .training import fit
    int_in("epochs", epochs, 1, None)
    m = copy.deepcopy(model).cpu().train()
    fit(m, train, epochs=epochs, seed=seed, progress=False, **(FINETUNE | {"desc": "fine-tune"} | fit_kw))
    return torchao_w4a8(m.eval())


def torchao_int8_linears(model: nn.Module) -> nn.Module:
    """torchao's ``quantize_(model, Int8DynamicActivationInt8WeightConfig())`` on a copy: every nn.Linear gets
    int8 weights (per output channel) and int8 activations quantized per token at run time; run eagerly."""
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    m = copy.deepcopy(model).cpu().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_(m, Int8DynamicActivationInt8WeightConfig())
    return m


def weight_types(model: nn.Module) -> dict:
    """{layer name: type name of its weight} for every module with a weight: shows which layers a torchao
    config replaced (a tensor subclass such as Int8Tensor) and which it left as a plain Parameter."""
    return {n: type(m.weight).__name__ for n, m in model.named_modules() if n and isinstance(getattr(m, "weight", None), torch.Tensor)}


def intx_conv_attempt(model: nn.Module, names) -> dict:
    """Apply torchao's ``IntxWeightOnlyConfig`` (int8 weights, per output channel) to each named layer alone,
    on a copy. Returns {name: "<weight type>, max |logit change| <v>" or "fails: <Error>: <message>"} for a
    fixed input, showing that the config takes 4-D convolution weights too (and where it breaks)."""
    from torchao.quantization import IntxWeightOnlyConfig, quantize_
    x = _example(8)
    ref = model(x).detach()
    out = {}
    for name in names:
        m = copy.deepcopy(model).cpu().eval()
        try:
            quantize_(m, IntxWeightOnlyConfig(weight_dtype=torch.int8), filter_fn=lambda mod, fqn, n=name: fqn == n)
            with torch.no_grad():
                diff = float((m(x) - ref).abs().max())
            out[name] = f"{type(m.get_submodule(name).weight).__name__}, max |logit change| {diff:.4f}"
        except Exception as e:
            out[name] = f"fails: {type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:120]}"
    return out


__all__ += ["graph_breaks", "cached_artifact", "file_bytes", "torchao_w4a8", "torchao_qat", "finetune_then_w4a8",
            "torchao_int8_linears", "weight_types", "intx_conv_attempt"]


# ---------------------------------------------------------------- building artifacts in a fresh process
_BUILD_CHILD = r"""
import json, sys, torch
from course_lib import runtimes as R
from course_lib.models import LeNet5
a = json.loads(sys.argv[1])
model = LeNet5(**a["config"])
model.load_state_dict(torch.load(a["state"], map_location="cpu", weights_only=True))
model.eval()
calib = torch.load(a["calib"], weights_only=True)
for job in a["jobs"]:
    if job["kind"] == "executorch":
        R.executorch_program(model, job["out"], job["batch"], calib if job["int8"] else None)
    else:
        R.openvino_int8(job["onnx"], job["out"], calib)
    print("BUILT " + job["out"], flush=True)
"""
BUILD_KINDS = ("executorch", "openvino_int8")


def build_in_subprocess(model: nn.Module, jobs: list, calib_images: torch.Tensor, workdir, timeout: int = 900) -> list:
    """Build artifacts in a fresh Python process, so that the process that measures stays clean.

    Why: lowering to ExecuTorch (and NNCF's quantization) registers their own operator implementations and
    passes in the process that runs them, which can change the kernels (and so the timings) of the PyTorch
    models run afterwards in that process. jobs: dicts {"kind": "executorch", "out": .pte path,
    "batch": int, "int8": bool} (see :func:`executorch_program`) or {"kind": "openvino_int8", "onnx": path,
    "out": .xml path} (see :func:`openvino_int8`). ``model`` must be a ``models.LeNet5``; ``calib_images``
    (N, C, H, W) calibrate the int8 jobs. Returns the output paths; raises RuntimeError with the child's last
    lines if it fails."""
    for job in jobs:
        one_of("jobs kind", job.get("kind"), BUILD_KINDS)
    if not jobs:
        return []
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    state, calib = workdir / "build_model.pt", workdir / "build_calib.pt"
    torch.save(model.state_dict(), state)
    torch.save(calib_images.clone(), calib)
    args = {"config": model.config, "state": str(state), "calib": str(calib),
            "jobs": [{k: (str(v) if isinstance(v, Path) else v) for k, v in j.items()} for j in jobs]}
    proc = subprocess.run([sys.executable, "-c", _BUILD_CHILD, json.dumps(args)], capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, OMP_NUM_THREADS="1"))
    outs = [Path(j["out"]) for j in jobs]
    if proc.returncode != 0 or not all(p.exists() for p in outs):
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-8:])
        raise RuntimeError(f"building {[j['kind'] for j in jobs]} failed (exit {proc.returncode}):\n{tail}")
    return outs


__all__ += ["BUILD_KINDS", "build_in_subprocess"]
