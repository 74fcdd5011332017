"""Deployment: ONNX export, onnxruntime sessions measured like PyTorch models, and real int8 with
onnxruntime static quantization (calibration reader, per-node mixed precision, per-operator profile).

Deployment depends on the techniques and models, never the reverse.
"""
from __future__ import annotations

import copy
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ._validate import int_in, one_of, positive_int, shape as check_shape
from .env import u8s8_saturates

__all__ = ["export_onnx", "ort_session", "OrtModule", "ImageCalibrationReader", "onnx_nodes",
           "ort_quantize_static", "ort_op_times", "FP32_CONFIGS", "fp32_runners", "latency_table",
           "format_latency_table"]

MIN_OPSET = 13
QUANT_FORMATS = ("QDQ", "QOperator")


def export_onnx(model: nn.Module, path, input_shape: tuple = (1, 28, 28), opset: int = 17,
                input_name: str = "x", output_name: str = "logits") -> Path:
    """Export ``model`` (CPU, eval mode) to an ONNX file at ``path`` with a dynamic batch axis.

    input_shape: (C, H, W) of one input; opset >= 13. Uses PyTorch's TorchScript-based exporter
    (``dynamo=False``): the newer torch.export-based exporter needs the ``onnxscript`` package,
    which the course does not install. Returns the path. The model is not changed: a CPU copy in
    eval mode is exported (the caller's model keeps its device and mode).
    """
    shape = check_shape("input_shape", input_shape)
    int_in("opset", opset, MIN_OPSET, None)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(model).cpu().eval()
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
    positive_int("threads", threads)
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


# ---------------------------------------------------------------- real int8: onnxruntime static quantization
class ImageCalibrationReader:
    """onnxruntime ``CalibrationDataReader`` feeding batches of calibration images to ``input_name``.

    images: float32 tensor (N, C, H, W), N >= 1; batch_size >= 1. (onnxruntime's reader base class
    accepts any object with ``get_next``, so this class does not need to import onnxruntime.)
    """

    def __init__(self, images: torch.Tensor, input_name: str = "x", batch_size: int = 64):
        if len(images) == 0:
            raise ValueError("images is empty: the calibration set needs at least one image")
        positive_int("batch_size", batch_size)
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


def onnx_nodes(path, op_type: str | None = None) -> list[str]:
    """Names of the nodes of the ONNX graph at ``path``, in graph order (only ``op_type`` ones if given,
    e.g. "Conv"): what ``ort_quantize_static(..., keep_float=...)`` expects."""
    import onnx
    nodes = onnx.load(str(path), load_external_data=False).graph.node
    return [n.name for n in nodes if op_type is None or n.op_type == op_type]


def ort_quantize_static(fp32_path, int8_path, calib_images: torch.Tensor, per_channel: bool = True,
                        quant_format: str = "QDQ", input_name: str = "x", batch_size: int = 64,
                        keep_float=(), reduce_range: bool | None = None) -> Path:
    """Static int8 quantization of an ONNX model with onnxruntime (min-max calibration).

    Weights int8 symmetric (per output channel if ``per_channel``), activations uint8 asymmetric
    (the u8 x s8 pairing is what x86 VNNI kernels run fastest). quant_format: "QDQ" (Quantize/
    Dequantize pairs that onnxruntime fuses into integer kernels) or "QOperator" (QLinearConv,
    QGemm nodes). keep_float: names of nodes to leave in float32 (mixed precision, e.g. a first
    convolution with one input channel, where int8 saves little; see ``onnx_nodes``); the
    tensors between a float node and an int8 one get a Quantize (or Dequantize) step.
    reduce_range: quantize weights to 7 bits, which avoids the int16 saturation of u8 x s8 kernels on x86
    CPUs without VNNI; None (default) decides by this CPU (``env.u8s8_saturates``). The model is
    pre-processed (shape inference) first. Returns int8_path.
    """
    from onnxruntime import quantization as oq
    one_of("quant_format", quant_format, QUANT_FORMATS)
    fp32_path, int8_path = Path(fp32_path), Path(int8_path)
    keep_float = [keep_float] if isinstance(keep_float, str) else list(keep_float)
    unknown = sorted(set(keep_float) - set(onnx_nodes(fp32_path)))
    if unknown:
        raise ValueError(f"keep_float={unknown!r}: no such node in {fp32_path.name}; "
                         f"valid names: {onnx_nodes(fp32_path)}")
    reader = ImageCalibrationReader(calib_images, input_name, batch_size)
    pre = int8_path.with_name(int8_path.stem + "_pre.onnx")
    oq.quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
    logger = logging.getLogger()  # quantize_static logs to the root logger; keep stored outputs clean
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        oq.quantize_static(str(pre), str(int8_path), reader,
                           quant_format=getattr(oq.QuantFormat, quant_format), per_channel=per_channel,
                           activation_type=oq.QuantType.QUInt8, weight_type=oq.QuantType.QInt8,
                           calibrate_method=oq.CalibrationMethod.MinMax, nodes_to_exclude=keep_float,
                           reduce_range=u8s8_saturates() if reduce_range is None else bool(reduce_range))
    finally:
        logger.setLevel(level)
        pre.unlink(missing_ok=True)
    return int8_path


def ort_op_times(path, x: torch.Tensor, runs: int = 20, threads: int = 1) -> list[tuple[str, str, float]]:
    """Where an onnxruntime model spends its time: [(node name, operator, mean ms per run)], slowest first.

    Runs the model ``runs`` (>= 1) times on the batch ``x`` (N, C, H, W) with onnxruntime's profiler,
    on ``threads`` (>= 1) intra-op threads, after the graph optimisations (so fused integer kernels
    show as such). One untimed warm-up run comes first.
    """
    import onnxruntime as ort
    positive_int("runs", runs)
    positive_int("threads", threads)
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



# ---------------------------------------------------------------- the course's one latency protocol
FP32_CONFIGS = ("torch", "torch-channels-last", "onnxruntime")


def fp32_runners(model: nn.Module, input_shape: tuple, batch_size: int = 64, configs=FP32_CONFIGS,
                 workdir=None) -> dict:
    """Zero-argument callables running ``model`` (fp32) on one fixed random batch, one per configuration:

    - ``torch``: eager PyTorch, NCHW (the default memory layout);
    - ``torch-channels-last``: eager PyTorch with model and input in channels-last (NHWC) layout,
      which lets oneDNN pick its fastest convolution kernels (only for 4-D inputs);
    - ``onnxruntime``: the model exported to ONNX (in ``workdir``, default a temporary folder) and run
      by a single-threaded onnxruntime session with all graph optimisations.

    input_shape: (C, H, W) or (features,) of one input; batch_size >= 1; configs: a subset of
    FP32_CONFIGS. The caller's model is not changed (CPU copies in eval mode are used).
    """
    shape = check_shape("input_shape", input_shape)
    positive_int("batch_size", batch_size)
    for c in configs:
        one_of("configs", c, FP32_CONFIGS)
    x = torch.randn((batch_size, *shape), generator=torch.Generator().manual_seed(0))
    base = copy.deepcopy(model).cpu().eval()
    runners = {}
    if "torch" in configs:
        runners["torch"] = lambda m=base: m(x)
    if "torch-channels-last" in configs and x.dim() == 4:
        m_cl = copy.deepcopy(base).to(memory_format=torch.channels_last)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        runners["torch-channels-last"] = lambda: m_cl(x_cl)
    if "onnxruntime" in configs:
        folder = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="course_fp32_"))
        path = export_onnx(base, folder / f"fp32_{id(base)}.onnx", input_shape=shape)
        sess = ort_session(path, threads=1)
        name = sess.get_inputs()[0].name
        arr = np.ascontiguousarray(x.numpy(), dtype=np.float32)
        runners["onnxruntime"] = lambda: sess.run(None, {name: arr})
    return runners


def latency_table(models: dict, input_shape: tuple, reference: str = "baseline", batch_size: int = 64,
                  rounds: int = 5, repeats: int = 20, configs=FP32_CONFIGS, workdir=None, warmup: int = 5) -> dict:
    """Time every model of a table together, the course's one latency protocol; return per-model rows.

    models: {name: value} where value is an fp32 ``nn.Module`` (timed in every configuration of
    ``configs``, see :func:`fp32_runners`; its fastest counts), a ``{config: zero-arg callable}`` dict
    (e.g. an int8 onnxruntime session), or one zero-arg callable (config ``"as given"``). Callables
    must run one batch of ``batch_size`` inputs of ``input_shape`` themselves.

    Every callable of every model is timed in each of ``rounds`` >= 1 interleaved rounds (median of
    ``repeats`` single-thread calls per round, after ``warmup`` >= 0 untimed calls), so a burst of load
    on the machine hits all alike.
    Returns {name: {"latency_ms": fastest configuration's median over rounds, "config": its name,
    "spread_ms": (min, max) of that configuration's round medians, "by_config": {config: ms},
    "x_faster": reference's fastest / this, "x_faster_torch": reference's eager NCHW / this (None
    if the reference has no "torch" configuration)}. ``reference`` must be a key of ``models``.
    """
    import statistics

    from .measure import latency_ms
    if reference not in models:
        raise ValueError(f"reference={reference!r} must be one of the models: {list(models)}")
    positive_int("rounds", rounds)
    runners = {}
    for name, value in models.items():
        if isinstance(value, nn.Module):
            runners[name] = fp32_runners(value, input_shape, batch_size, configs, workdir)
        elif isinstance(value, dict):
            runners[name] = dict(value)
        elif callable(value):
            runners[name] = {"as given": value}
        else:
            raise ValueError(f"models[{name!r}] must be an nn.Module, a dict of callables or a callable, "
                             f"got {type(value).__name__}")
    times = {(n, c): [] for n, rs in runners.items() for c in rs}
    for _ in range(rounds):
        for (n, c) in times:
            times[n, c].append(latency_ms(runners[n][c], None, repeats=repeats, warmup=warmup))
    rows = {}
    for n, rs in runners.items():
        by = {c: statistics.median(times[n, c]) for c in rs}
        best = min(by, key=by.get)
        rows[n] = {"latency_ms": by[best], "config": best, "by_config": by,
                   "spread_ms": (min(times[n, best]), max(times[n, best]))}
    ref = rows[reference]
    for row in rows.values():
        row["x_faster"] = ref["latency_ms"] / row["latency_ms"]
        torch_ref = ref["by_config"].get("torch")
        row["x_faster_torch"] = torch_ref / row["latency_ms"] if torch_ref else None
    return rows


def format_latency_table(rows: dict) -> str:
    """A Markdown table of :func:`latency_table` rows: every configuration's median, the fastest, its
    spread over rounds, and the speed-ups against the reference's fastest fp32 and eager NCHW."""
    configs = list(dict.fromkeys(c for r in rows.values() for c in r["by_config"]))
    head = ["model", *configs, "fastest", "ms (min-max over rounds)", "x faster", "x vs torch NCHW"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for n, r in rows.items():
        cells = [n, *[f"{r['by_config'][c]:.3f}" if c in r["by_config"] else "-" for c in configs], r["config"],
                 f"{r['latency_ms']:.3f} ({r['spread_ms'][0]:.3f}-{r['spread_ms'][1]:.3f})", f"{r['x_faster']:.2f}",
                 f"{r['x_faster_torch']:.2f}" if r["x_faster_torch"] else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---- integer-only reference: onnxruntime QLinear ops
QLINEAR_OPS = ("conv", "matmul")


def _np(t, dtype):
    return np.ascontiguousarray(torch.as_tensor(t).detach().cpu().numpy().astype(dtype))


def qlinear_model(op: str, q_w: torch.Tensor, s_x, z_x, s_w, z_w, s_y, z_y, bias_q=None, stride=1, padding=0):
    """A one-node ONNX model (opset 13) of onnxruntime's integer kernels with the given scales and zero-points.

    op: "conv" (``QLinearConv``: input uint8 (N, C, H, W), q_w int8 (M, C, kh, kw), optional int32
    ``bias_q`` (M,) at scale s_x * s_w, stride/padding ints) or "matmul" (``QLinearMatMul``: input
    uint8 (N, K), q_w int8 (M, K) as a Linear stores it, transposed into the (K, M) right operand;
    no bias). s_x, s_y > 0 and z_x, z_y in [0, 255] are per tensor; s_w > 0 is a number or (M,) per
    output channel, z_w in [-128, 127] one number (the same for every channel, as QLinearConv
    requires). Weights, scales and zero-points are initializers (constants), as in a quantized
    model file. Returns an ``onnx.ModelProto`` with input "x" and output "y" (uint8).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    one_of("op", op, QLINEAR_OPS)
    q_w = torch.as_tensor(q_w)
    m = q_w.shape[0]
    s_w = np.atleast_1d(_np(s_w, np.float32))
    if s_w.size not in (1, m) or not np.all(s_w > 0):
        raise ValueError(f"s_w must be > 0, one number or ({m},) per output channel; got shape {s_w.shape}")
    for name, v in (("s_x", s_x), ("s_y", s_y)):
        if not float(v) > 0:
            raise ValueError(f"{name}={v!r} must be > 0")
    z_w = int_in("z_w", int(z_w), -128, 127)
    inits = [numpy_helper.from_array(np.array(float(s_x), np.float32), "x_scale"),
             numpy_helper.from_array(np.array(int_in("z_x", int(z_x), 0, 255), np.uint8), "x_zero_point"),
             numpy_helper.from_array(np.array(float(s_y), np.float32), "y_scale"),
             numpy_helper.from_array(np.array(int_in("z_y", int(z_y), 0, 255), np.uint8), "y_zero_point")]
    if op == "conv":
        if q_w.dim() != 4:
            raise ValueError(f"q_w must be (M, C, kh, kw) for op='conv', got shape {tuple(q_w.shape)}")
        inits += [numpy_helper.from_array(_np(q_w, np.int8), "w"),
                  numpy_helper.from_array(s_w if s_w.size > 1 else s_w.reshape(()), "w_scale"),
                  numpy_helper.from_array(np.full(s_w.shape, z_w, np.int8) if s_w.size > 1
                                          else np.array(z_w, np.int8), "w_zero_point")]
        inputs = ["x", "x_scale", "x_zero_point", "w", "w_scale", "w_zero_point", "y_scale", "y_zero_point"]
        if bias_q is not None:
            inits.append(numpy_helper.from_array(_np(bias_q, np.int32).reshape(m), "bias"))
            inputs.append("bias")
        sh, sw = (stride, stride) if isinstance(stride, int) else stride
        ph, pw = (padding, padding) if isinstance(padding, int) else padding
        node = helper.make_node("QLinearConv", inputs, ["y"], kernel_shape=list(q_w.shape[2:]),
                                strides=[sh, sw], pads=[ph, pw, ph, pw])
        x_info = helper.make_tensor_value_info("x", TensorProto.UINT8, ["N", q_w.shape[1], "H", "W"])
        y_info = helper.make_tensor_value_info("y", TensorProto.UINT8, ["N", m, "OH", "OW"])
    else:
        if q_w.dim() != 2:
            raise ValueError(f"q_w must be (M, K) for op='matmul', got shape {tuple(q_w.shape)}")
        if bias_q is not None:
            raise ValueError("QLinearMatMul has no bias input: use op='conv' (a 1x1 convolution) for a Linear with bias")
        inits += [numpy_helper.from_array(_np(q_w.T, np.int8), "w"),
                  numpy_helper.from_array(s_w.reshape(1, -1) if s_w.size > 1 else s_w.reshape(()), "w_scale"),
                  numpy_helper.from_array(np.full((1, s_w.size), z_w, np.int8) if s_w.size > 1
                                          else np.array(z_w, np.int8), "w_zero_point")]
        inputs = ["x", "x_scale", "x_zero_point", "w", "w_scale", "w_zero_point", "y_scale", "y_zero_point"]
        node = helper.make_node("QLinearMatMul", inputs, ["y"])
        x_info = helper.make_tensor_value_info("x", TensorProto.UINT8, ["N", q_w.shape[1]])
        y_info = helper.make_tensor_value_info("y", TensorProto.UINT8, ["N", m])
    graph = helper.make_graph([node], f"qlinear_{op}", [x_info], [y_info], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = min(model.ir_version, 8)
    onnx.checker.check_model(model)
    return model


def ort_qlinear(op: str, q_x: torch.Tensor, s_x, z_x, q_w: torch.Tensor, s_w, z_w, s_y, z_y, bias_q=None,
                stride=1, padding=0) -> torch.Tensor:
    """Run one quantized layer in onnxruntime's integer kernels: the bit-exact reference for integer code.

    op "conv": q_x uint8 values (N, C, H, W), q_w int8 values (M, C, kh, kw) -> uint8 (N, M, OH, OW);
    op "matmul": q_x (N, K), q_w (M, K) -> uint8 (N, M) (no bias); op "linear": a Linear with an
    optional bias, run as a 1x1 ``QLinearConv`` on (N, K, 1, 1) -> uint8 (N, M). Scales, zero-points
    and bias_q (int32 (M,), at scale s_x * s_w) as in :func:`qlinear_model`. The model is built with
    ``onnx.helper`` and run by a single-threaded session with all graph optimisations (as
    :func:`ort_session`). On x86 CPUs without VNNI, onnxruntime's uint8 x int8 kernels add pairs of
    products in saturating int16 arithmetic: there results can differ from exact integer arithmetic
    unless the weights stay within 7 bits (|q_w| <= 63, ``env.u8s8_saturates``).
    """
    one_of("op", op, QLINEAR_OPS + ("linear",))
    x = torch.as_tensor(q_x)
    if x.is_floating_point() or int(x.min()) < 0 or int(x.max()) > 255:
        raise ValueError("q_x must be an integer tensor with values in [0, 255] (uint8)")
    w = torch.as_tensor(q_w)
    if w.is_floating_point() or int(w.min()) < -128 or int(w.max()) > 127:
        raise ValueError("q_w must be an integer tensor with values in [-128, 127] (int8)")
    if op == "linear":
        if x.dim() != 2 or w.dim() != 2:
            raise ValueError(f"op='linear' takes q_x (N, K) and q_w (M, K), got {tuple(x.shape)} and {tuple(w.shape)}")
        y = ort_qlinear("conv", x[:, :, None, None], s_x, z_x, w[:, :, None, None], s_w, z_w, s_y, z_y, bias_q)
        return y[:, :, 0, 0]
    model = qlinear_model(op, w, s_x, z_x, s_w, z_w, s_y, z_y, bias_q, stride, padding)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"qlinear_{op}.onnx"
        path.write_bytes(model.SerializeToString())
        sess = ort_session(path, threads=1)
        y = sess.run(None, {"x": _np(x, np.uint8)})[0]
    return torch.from_numpy(y)


def onnx_quant_params(path) -> dict:
    """The activation grids of a QDQ-quantized ONNX model: {tensor name: (scale, zero_point)}, one per
    ``QuantizeLinear`` node (per-tensor float scale, integer zero-point), in graph order. Shows, e.g.,
    that onnxruntime's quantizer gives every ReLU output the zero-point 0: the ReLU is then the clamp
    at 0 of the integer kernel before it."""
    import onnx
    from onnx import numpy_helper
    model = onnx.load(str(path), load_external_data=False)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    out = {}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[1] in inits and len(node.input) > 2 \
                and node.input[2] in inits:
            scale, zp = inits[node.input[1]], inits[node.input[2]]
            if scale.size == 1:
                out[node.input[0]] = (float(scale.reshape(())), int(zp.reshape(())))
    return out


__all__ += ["QLINEAR_OPS", "qlinear_model", "ort_qlinear", "onnx_quant_params"]


# ---------------------------------------------------------------- one linear layer y = a @ W^T, weight formats
INT4_ACCURACY_LEVELS = (0, 1, 2, 3, 4)  # MatMulNBits accuracy_level: 0 = unset (fp32), 4 = int8 activations


def _linear_model(nodes, inits, k: int, n: int, name: str, ms_domain: bool = False):
    """A one-layer ONNX model with float32 input "a" (M, K), M dynamic, and output "y" (M, N)."""
    import onnx
    from onnx import TensorProto, helper
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["M", k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", n])], initializer=inits)
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid("com.microsoft", 1)] if ms_domain else [])
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = min(model.ir_version, 8)
    if not ms_domain and k * n <= 2 ** 20:  # the checker does not know onnxruntime's contrib operators and
        onnx.checker.check_model(model)     # takes seconds on a 7B-size weight: small models only
    return model


def _weight_2d(weight) -> torch.Tensor:
    w = torch.as_tensor(weight).detach().cpu()
    if w.dim() != 2 or not w.is_floating_point():
        raise ValueError(f"weight must be a 2-D float tensor (N, K) as nn.Linear stores it, got "
                         f"{w.dtype} {tuple(w.shape)}")
    return w.float()


def matmul_fp32_model(weight):
    """ONNX model of y = a @ weight^T in float32: one ``MatMul`` with the (K, N) transpose of
    ``weight`` (N, K) as an initializer. Input "a" (M, K) float32, M dynamic; output "y" (M, N)."""
    from onnx import helper, numpy_helper
    w = _weight_2d(weight)
    n, k = w.shape
    init = numpy_helper.from_array(np.ascontiguousarray(w.T.numpy()), "w_t")
    return _linear_model([helper.make_node("MatMul", ["a", "w_t"], ["y"])], [init], k, n, "matmul_fp32")


def int8_rowwise(weight) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per output row: (q int8 (N, K) in [-127, 127], scales float32 (N,)), w ~ q * scale."""
    w = _weight_2d(weight)
    scale = (w.abs().amax(1) / 127).clamp_min(1e-12)
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def matmul_int8_model(weight):
    """ONNX model of y = a @ weight^T with dynamic int8 quantization, run by onnxruntime's
    ``DynamicQuantizeMatMul`` (com.microsoft): the weight is stored int8, symmetric, one scale per
    output row (:func:`int8_rowwise`); each call quantizes the activations ``a`` to uint8 with one
    scale and zero point per tensor (computed from a's min and max) and multiplies in integers
    (VNNI dot products where the CPU has them), then rescales to float32. This fused operator is what
    ``onnxruntime.quantization.quantize_dynamic`` produces for MatMul, and faster at batch 1 than the
    unfused DynamicQuantizeLinear + MatMulInteger pair. Returns (model, w_hat): w_hat (N, K) float32
    the dequantized weight the kernel effectively uses."""
    from onnx import helper, numpy_helper
    w = _weight_2d(weight)
    n, k = w.shape
    q, scale = int8_rowwise(w)
    inits = [numpy_helper.from_array(np.ascontiguousarray(q.T.numpy()), "w_q"),
             numpy_helper.from_array(scale.numpy().astype(np.float32), "w_scale"),
             numpy_helper.from_array(np.zeros(n, np.int8), "w_zero_point")]
    node = helper.make_node("DynamicQuantizeMatMul", ["a", "w_q", "w_scale", "w_zero_point"], ["y"],
                            domain="com.microsoft")
    model = _linear_model([node], inits, k, n, "matmul_int8_dynamic", ms_domain=True)
    return model, q.float() * scale[:, None]


def matmulnbits_model(codes, scales, zeros, block_size: int = 128, accuracy_level: int = 4):
    """ONNX model of y = a @ W_hat^T on onnxruntime's 4-bit kernel ``MatMulNBits`` (com.microsoft, bits=4).

    codes: (N, K) integers in [0, 15]; scales: (N, K / block_size) float; zeros: (N, K / block_size)
    integers in [0, 15]: the group-wise grid of ``quantization.rtn_quantize(weight, 4, block_size)``
    (or GPTQ's), W_hat = (codes - zero) * scale per block of ``block_size`` input columns.
    block_size: a power of two in [16, 256]. accuracy_level: 0 dequantizes the weights to float32 inside
    the kernel and multiplies in float32; 4 quantizes the activations to int8 per block of a's row
    (symmetric) and multiplies with int8 dot products (faster, a little less exact); 1-3 are fp32,
    fp16 and bf16 compute where the CPU has them (else they fall back). Packing:
    ``quantization.pack_matmulnbits``. Input "a" (M, K) float32, M dynamic; output "y" (M, N)."""
    from onnx import helper, numpy_helper

    from .quantization.packing import check_block_size, pack_matmulnbits
    block_size = check_block_size(block_size)
    one_of("accuracy_level", accuracy_level, INT4_ACCURACY_LEVELS)
    b, zp = pack_matmulnbits(codes, zeros, block_size)
    n, nb, _ = b.shape
    k = nb * block_size
    s = torch.as_tensor(scales).detach().cpu()
    if tuple(s.shape) != (n, nb) or not s.is_floating_point():
        raise ValueError(f"scales must be float (N, K / block_size) = ({n}, {nb}), got {s.dtype} {tuple(s.shape)}")
    inits = [numpy_helper.from_array(b.numpy(), "w_q4"),
             numpy_helper.from_array(s.float().reshape(-1).numpy(), "w_scales"),
             numpy_helper.from_array(zp.numpy(), "w_zero_points")]
    node = helper.make_node("MatMulNBits", ["a", "w_q4", "w_scales", "w_zero_points"], ["y"], domain="com.microsoft",
                            K=k, N=n, bits=4, block_size=block_size, accuracy_level=accuracy_level)
    return _linear_model([node], inits, k, n, "matmul_nbits4", ms_domain=True)


def int4_model(weight, block_size: int = 128, accuracy_level: int = 4):
    """:func:`matmulnbits_model` of ``weight`` (N, K) quantized with ``quantization.rtn_quantize(weight, 4,
    block_size)`` (asymmetric min-max per block). Returns (model, w_hat): w_hat (N, K) float32 the
    dequantized weight (what a float64 reference should multiply by)."""
    from .quantization.packing import check_block_size
    from .quantization.weight_only import rtn_quantize
    w = _weight_2d(weight)
    w_hat, codes, scales, zeros = rtn_quantize(w, 4, check_block_size(block_size))
    return matmulnbits_model(codes, scales, zeros, block_size, accuracy_level), w_hat


def model_session(model, threads: int = 1):
    """A CPU onnxruntime session for an in-memory ``onnx.ModelProto`` or its serialized bytes (no file), with the settings of
    :func:`ort_session`: ``threads`` (>= 1) intra-op threads, sequential execution, all optimisations."""
    import onnxruntime as ort
    positive_int("threads", threads)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    data = model if isinstance(model, (bytes, bytearray)) else model.SerializeToString()
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def linear_runner(model, threads: int = 1):
    """A callable ``f(a) -> y`` running a one-layer model of this section (:func:`matmul_fp32_model`,
    :func:`matmul_int8_model`, :func:`matmulnbits_model`) in onnxruntime: a float32 array or tensor (M, K)
    in, a float32 numpy array (M, N) out."""
    sess = model_session(model, threads)

    def run(a):
        a = a.numpy() if torch.is_tensor(a) else a
        return sess.run(None, {"a": np.ascontiguousarray(a, dtype=np.float32)})[0]
    return run


__all__ += ["INT4_ACCURACY_LEVELS", "matmul_fp32_model", "int8_rowwise", "matmul_int8_model", "matmulnbits_model",
            "int4_model", "model_session", "linear_runner"]


# ---------------------------------------------------------------- a model's linear layers on the 4-bit kernel
class OrtLinear(nn.Module):
    """An ``nn.Linear`` computed by a one-layer onnxruntime model (e.g. :func:`matmulnbits_model`):
    forward(x (..., K) float) -> (..., N) float32 = (x / input_scale) W_hat^T + bias. The bias (and AWQ's
    per-channel ``input_scale``, which a deployment folds into the previous operation) are applied in
    PyTorch. No gradients; the weights live in the onnxruntime session."""

    def __init__(self, onnx_model, in_features: int, out_features: int, bias=None, input_scale=None,
                 threads: int = 1):
        super().__init__()
        self.in_features, self.out_features = positive_int("in_features", in_features), positive_int("out_features", out_features)
        self.run = linear_runner(onnx_model, threads)
        self.nbytes = len(onnx_model.SerializeToString())
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        self.register_buffer("input_scale", None if input_scale is None else input_scale.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"x has {x.shape[-1]} features in its last dimension, the layer takes {self.in_features}")
        a = x.detach().reshape(-1, self.in_features).float()
        if self.input_scale is not None:
            a = a / self.input_scale
        y = torch.from_numpy(self.run(a.contiguous()))
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, onnx bytes={self.nbytes:,}"


def ort_int4_linears(model: nn.Module, packed: dict, block_size: int, accuracy_level: int = 4,
                     threads: int = 1) -> nn.Module:
    """A copy of ``model`` (eval mode) whose linear layers in ``packed`` run on onnxruntime's 4-bit kernel.

    packed: {layer name: (codes, scales, zeros)} as ``quantization.quantize_weights`` returns it (AWQ adds
    the per-channel factor s: the layer then divides its input by s), codes in [0, 15] (bits <= 4; 3-bit
    codes run in the 4-bit kernel), groups of ``block_size`` = the quantizer's group_size (a power of two in
    [16, 256]). accuracy_level: 0 (float32 compute: equals the simulated model up to float32 round-off)
    or 4 (int8 activations per block, int8 dot products: faster, a second small rounding); threads >= 1.
    ``model`` is not modified."""
    out = copy.deepcopy(model).eval()
    for name, (codes, scales, zeros, *awq) in packed.items():
        lin = out.get_submodule(name)
        if not isinstance(lin, nn.Linear):
            raise ValueError(f"packed: {name!r} is not an nn.Linear of the model")
        if int(codes.max()) > 15:
            raise ValueError(f"packed[{name!r}]: codes up to {int(codes.max())}; the 4-bit kernel takes bits <= 4")
        onnx_model = matmulnbits_model(codes, scales, zeros, block_size, accuracy_level)
        new = OrtLinear(onnx_model, lin.in_features, lin.out_features, lin.bias, awq[0] if awq else None, threads)
        parent, _, attr = name.rpartition(".")
        setattr(out.get_submodule(parent) if parent else out, attr, new)
    return out


__all__ += ["OrtLinear", "ort_int4_linears"]
