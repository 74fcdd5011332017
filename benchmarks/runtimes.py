"""Chapter 08's target (one model on every runtime), measured the way the chapter measures it.

The baseline LeNet-5 on every runtime that installs beside the course's torch (``runtimes.every_path``: PyTorch
eager NCHW and channels-last, ``torch.compile``, torchao PT2E, onnxruntime, OpenVINO with NNCF, ExecuTorch with
XNNPACK; fp32 and int8), all timed in ONE interleaved measurement, single thread, batch 64: the fastest int8 path
at least 2.5x faster than the fastest fp32 path. Agreement of every path with PyTorch fp32 on the test split is
reported beside it. The CPU's features (``runtimes.cpu_report``) go into the detail, since they decide int8.
"""
from __future__ import annotations

import torch

from course_lib import runtimes as R
from course_lib.training import cache_dir

from .targets import Target

TARGET_X = R.SPEED_TARGET  # issue 19: fastest int8 / fastest fp32, batch 64, single thread


def measure_ch8_targets(splits, base, out, quick: bool = False) -> list:
    """The target of chapter 8 on ``base`` (a ``models.LeNet5``); calibration on 512 training images. quick (the
    smoke test; its numbers mean nothing): no Inductor and no ExecuTorch paths, one timing round."""
    calib = splits.train.tensors[0][:512]
    x_test = splits.test.tensors[0]
    torch.set_num_threads(1)
    paths = R.every_path(base, calib, out / "runtimes", cache_dir() / "runtimes", compiled=not quick,
                         executorch=not quick)
    lat = R.time_paths(paths, (64,), rounds=1 if quick else 3, repeats=3 if quick else 20)
    ms = {p.name: lat[p.name, 64]["latency_ms"] for p in paths}
    ref = R.padded_predict(paths[0], x_test, 64).argmax(1)
    agree = {p.name: R.agreement(ref, R.padded_predict(p, x_test, 64).argmax(1)) for p in paths}
    f32 = min((p for p in paths if p.precision == "fp32"), key=lambda p: ms[p.name])
    i8 = min((p for p in paths if p.precision == "int8"), key=lambda p: ms[p.name])
    x = ms[f32.name] / ms[i8.name]
    cpu = R.cpu_report()
    feats = ", ".join(k for k, v in cpu["features"].items() if v) or "none of the int8 features read"
    worst = min(agree, key=agree.get)
    return [Target("08", "fastest int8 path vs fastest fp32 path (baseline, batch 64, single thread)",
                   f">= {TARGET_X}x", f"{x:.2f}x", f"{i8.name} {ms[i8.name]:.3f} ms vs {f32.name} {ms[f32.name]:.3f} ms",
                   x >= TARGET_X, f"{len(paths)} paths timed together; lowest agreement with fp32 eager "
                   f"{100 * agree[worst]:.2f}% ({worst}); CPU: {feats}")]
