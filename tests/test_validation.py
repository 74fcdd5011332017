"""One table of bad inputs across the public API: every row must raise ValueError whose message
names the argument (and, where it has one, the valid range).

Each row: (id, callable, kwargs or args, regex the message must match). Rows are grouped by module;
add a row whenever a public function gains an argument.
"""
from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from course_lib import _validate as V

CASES: list = []

# ---- _validate itself
CASES += [
    ("int_in-float", lambda: V.int_in("bits", 2.5, 1, 8), r"bits=2\.5 must be an integer in \[1, 8\]"),
    ("int_in-bool", lambda: V.int_in("bits", True, 1, 8), r"bits=True must be an integer"),
    ("int_in-high", lambda: V.int_in("bits", 9, 1, 8), r"bits=9 .*\[1, 8\]"),
    ("positive_int-0", lambda: V.positive_int("epochs", 0), r"epochs=0 must be an integer in \[1, inf\)"),
    ("number_in-open", lambda: V.number_in("sparsity", 1.0, 0, 1, hi_open=True), r"sparsity=1\.0 .*\[0, 1\)"),
    ("number_in-nan", lambda: V.number_in("lr", float("nan"), 0, None, lo_open=True), r"lr=nan must be a finite"),
    ("number_in-str", lambda: V.number_in("lr", "0.1", 0, None), r"lr='0\.1'"),
    ("one_of", lambda: V.one_of("method", "mse2", ("minmax", "mse")), r"method='mse2' must be one of \['minmax', 'mse'\]"),
    ("shape-neg", lambda: V.shape("input_shape", (1, -28, 28)), r"input_shape=\(1, -28, 28\)"),
    ("shape-ndim", lambda: V.shape("input_shape", (28, 28), ndim=3), r"3 positive ints"),
    ("finite_tensor-nan", lambda: V.finite_tensor("x", torch.tensor([1.0, float("nan")])), r"x holds 1 NaN/inf"),
    ("finite_tensor-int", lambda: V.finite_tensor("x", torch.tensor([1, 2])), r"x must be a floating-point tensor"),
]

# ---- data, models, training, measure, storage, records, pruning, lowrank, distillation (core)
from course_lib import data as D  # noqa: E402
from course_lib import distillation as KD  # noqa: E402
from course_lib import huffman, measure, storage  # noqa: E402
from course_lib import lowrank as LR  # noqa: E402
from course_lib import pruning as P  # noqa: E402
from course_lib import robustness as RB  # noqa: E402
from course_lib import training as TR  # noqa: E402
from course_lib.models import LeNet5, MLP  # noqa: E402

_XY = (torch.zeros(4, 1, 28, 28), torch.zeros(4, dtype=torch.long))


class _NoLayers(nn.Module):  # like deploy.OrtModule: nothing macs can count
    def forward(self, x):
        return x.flatten(1)[:, :10]


class _SpareLayer(nn.Module):  # a Linear that the forward pass never calls
    def __init__(self):
        super().__init__()
        self.fc, self.spare = nn.Linear(784, 10), nn.Linear(10, 10)

    def forward(self, x):
        return self.fc(x.flatten(1))


CASES += [
    ("data.load_dataset-name", lambda: D.load_dataset("imagenet"), r"name='imagenet' is unknown; valid names"),
    ("data.load_dataset-limit", lambda: D.load_dataset("mnist5k", limit=0), r"limit=0 must be an integer in \[1, inf\)"),
    ("data.make_loaders-batch_size", lambda: D.make_loaders(None, batch_size=0), r"batch_size=0 .*\[1, inf\)"),
    ("training.fit-augment", lambda: TR.fit(MLP(), _XY, augment=-1), r"augment=-1 must be an integer in \[0, inf\)"),
    ("training.fit-augment-float", lambda: TR.fit(MLP(), _XY, augment=0.5), r"augment=0\.5 must be an integer"),
    ("training.fit-batch_size", lambda: TR.fit(MLP(), _XY, batch_size=0), r"batch_size=0 .*\[1, inf\)"),
    ("training.fit-weight_decay", lambda: TR.fit(MLP(), _XY, weight_decay=-1), r"weight_decay=-1 .*\[0, inf\)"),
    ("training.fit-lr", lambda: TR.fit(MLP(), _XY, lr=0), r"lr=0 .*\(0, inf\)"),
    ("training.random_shift", lambda: TR.random_shift(_XY[0], -1), r"max_shift=-1 .*\[0, inf\)"),
    ("measure.macs-uncountable", lambda: measure.macs(_NoLayers(), (1, 28, 28)), r"no layer macs can count"),
    ("measure.macs-never-called", lambda: measure.macs(_SpareLayer(), (1, 28, 28)), r"\['spare'\] .*never called"),
    ("measure.macs-shape", lambda: measure.macs(LeNet5(), (1, 0, 28)), r"input_shape=\(1, 0, 28\)"),
    ("measure.latency_ms-shape", lambda: measure.latency_ms(LeNet5(), (1, -28, 28)), r"input_shape=\(1, -28, 28\)"),
    ("measure.latency_ms-batch_size", lambda: measure.latency_ms(LeNet5(), (1, 28, 28), batch_size=0),
     r"batch_size=0 .*\[1, inf\)"),
    ("measure.latency_ms-none", lambda: measure.latency_ms(LeNet5(), None), r"input_shape=None"),
    ("measure.time_fn-warmup", lambda: measure.time_fn(lambda: None, warmup=-1), r"warmup=-1 .*\[0, inf\)"),
    ("measure.compare_latency-rounds", lambda: measure.compare_latency({}, (1,), rounds=0), r"rounds=0 .*\[1, inf\)"),
    ("measure.time_children-repeats", lambda: measure.time_children(LeNet5(), torch.zeros(1, 1, 28, 28), repeats=0),
     r"repeats=0 must be an integer in \[1, inf\)"),
    ("measure.time_children-names", lambda: measure.time_children(LeNet5(), torch.zeros(1, 1, 28, 28), ["conv9"]),
     r"'conv9' is not a submodule"),
    ("measure.matmul_latency_ms-weight", lambda: measure.matmul_latency_ms(torch.zeros(3)), r"weight must be a 2-D"),
    ("measure.matmul_latency_ms-batch_size", lambda: measure.matmul_latency_ms(torch.zeros(3, 3), batch_size=0),
     r"batch_size=0"),
    ("measure.num_threads", lambda: measure.num_threads(0).__enter__(), r"threads=0"),
    ("storage.size_bytes-compress", lambda: storage.size_bytes(b"x", "gzip"), r"compress='gzip' must be one of"),
    ("storage.sparse_encode-fmt", lambda: storage.sparse_encode({}, "coo"), r"fmt='coo' must be one of"),
    ("storage.sparse_decode-magic", lambda: storage.sparse_decode(b"not a blob at all, really not one"),
     r"bad magic"),
    ("huffman.encode-float", lambda: huffman.encode([1.5, 2]), r"symbols must be integers in \[0, 2\*\*32\); got 1\.5"),
    ("huffman.encode-negative", lambda: huffman.encode([-1]), r"symbols must be non-negative integers in \[0, 2\*\*32\)"),
    ("pruning.magnitude_mask-sparsity", lambda: P.magnitude_mask(torch.ones(4), 1.0), r"sparsity=1\.0 .*\[0, 1\)"),
    ("pruning.magnitude_prune-scope", lambda: P.magnitude_prune(MLP(), 0.5, scope="net"), r"scope='net' must be one of"),
    ("pruning.choose_sparsities-percentage", lambda: P.choose_sparsities({"a": [0.9]}, [0.5], reference=99.0),
     r"reference=99\.0 must be a finite number in \[0, 1\]"),
    ("pruning.choose_sparsities-max_drop", lambda: P.choose_sparsities({"a": [0.9]}, [0.5], 0.9, max_drop=-0.1),
     r"max_drop=-0\.1 .*\[0, inf\)"),
    ("pruning.sensitivity_scan-index", lambda: P.sensitivity_scan(MLP(), _XY, sparsities=(0.5, 0.7, 1.5)),
     r"sparsities\[2\]=1\.5 .*\[0, 1\)"),
    ("pruning.gradual_schedule-total_steps", lambda: P.gradual_schedule(0, 0.9, 0), r"total_steps=0 .*\[1, inf\)"),
    ("pruning.GradualPruner-frequency", lambda: P.GradualPruner(0.9, 10, frequency=0), r"frequency=0"),
    ("pruning.filters_to_keep-ratio", lambda: P.filters_to_keep(torch.ones(4, 2), -0.1), r"ratio=-0\.1 .*\[0, 1\)"),
    ("lowrank.tucker_conv-ranks", lambda: LR.tucker_conv(nn.Conv2d(4, 6, 3), (7, 2)),
     r"ranks\[0\] \(rank_out\)=7 must be an integer in \[1, 6\]"),
    ("lowrank.svd_linear-rank", lambda: LR.svd_linear(nn.Linear(5, 3), 4), r"rank=4 must be an integer in \[1, 3\]"),
    ("lowrank.choose_rank-energy", lambda: LR.choose_rank(torch.tensor([2.0, 1.0]), 1.5), r"energy=1\.5 .*\(0, 1\]"),
    ("lowrank.cp_als-n_iter", lambda: LR.cp_als(torch.ones(2, 2, 2, 2), 1, n_iter=0), r"n_iter=0 .*\[1, inf\)"),
    ("lowrank.tucker2-n_iter", lambda: LR.tucker2(torch.ones(2, 2, 2, 2), (1, 1), n_iter=-1), r"n_iter=-1 .*\[0, inf\)"),
    ("lowrank.rank_for_budget-max_params", lambda: LR.rank_for_budget(4, 4, 0), r"max_params=0 .*\[1, inf\)"),
    ("lowrank.factorize-method", lambda: LR.factorize(MLP(), {"net.0": 2}, method="svd"), r"method='svd' must be one of"),
    ("distillation.soften-temperature", lambda: KD.soften(torch.zeros(2, 3), 0), r"temperature=0 .*\(0, inf\)"),
    ("distillation.kd_loss-alpha", lambda: KD.kd_loss(torch.zeros(2, 3), torch.zeros(2, 3), None, 2.0, 1.5),
     r"alpha=1\.5 .*\[0, 1\]"),
    ("distillation.labelled_subset-per_class", lambda: KD.labelled_subset(torch.zeros(4, dtype=torch.long), 0),
     r"per_class=0 .*\[1, inf\)"),
    ("robustness.shift-pixels", lambda: RB.shift(_XY[0], 28, (0.1,), (0.3,)), r"pixels=28 must be an integer in \[0, 27\]"),
    ("robustness.corrupt-kind", lambda: RB.corrupt(_XY[0], "fog", 1, (0.1,), (0.3,)), r"kind='fog' must be one of"),
]

# ---- quantization, bert, deploy (and the parts moved from transformer)
from course_lib import bert as BERT  # noqa: E402
from course_lib import deploy  # noqa: E402
from course_lib import quantization as Q  # noqa: E402


class _FakeEncoder(nn.Module):
    """Just enough of a BERT (``encoder.layer``) for argument checks that come before any forward pass."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList()
        self.embeddings = nn.Embedding(4, 2)


_W = torch.randn(4, 16, generator=torch.Generator().manual_seed(0))
_TOK = {"input_ids": torch.ones(2, 3, dtype=torch.long), "attention_mask": torch.ones(2, 3, dtype=torch.long)}
CASES += [
    ("quantize-bits-17", lambda: Q.quantize(torch.ones(3), 17), r"bits=17 must be an integer in \[1, 16\]"),
    ("quantize-bits-float", lambda: Q.quantize(torch.ones(3), 4.0), r"bits=4\.0 must be an integer in \[1, 16\]"),
    ("quantize-symmetric-1bit", lambda: Q.quantize(torch.ones(3), 1, symmetric=True), r"bits=1: symmetric .*\[2, 16\]"),
    ("quantize-axis", lambda: Q.quantize(torch.ones(3, 4), 8, per_channel_axis=2), r"per_channel_axis=2 .*\[-2, 1\]"),
    ("fake_quantize-axis", lambda: Q.fake_quantize(torch.ones(3), 8, per_channel_axis=-2), r"per_channel_axis=-2 .*\[-1, 0\]"),
    ("dequantize-axis", lambda: Q.dequantize(torch.ones(3, dtype=torch.int32), 1.0, 0, per_channel_axis=1),
     r"per_channel_axis=1 .*\[-1, 0\]"),
    ("quantize-nan", lambda: Q.quantize(torch.tensor([1.0, float("nan")]), 8), r"x holds 1 NaN/inf"),
    ("calibrate-method", lambda: Q.calibrate(torch.ones(4), method="kl"), r"method='kl' must be one of \['minmax', 'percentile', 'mse'\]"),
    ("calibrate-percentile", lambda: Q.calibrate(torch.ones(4), method="percentile", percentile=40),
     r"percentile=40 .*\(50, 100\]"),
    ("calibrate-grid", lambda: Q.calibrate(torch.ones(4), method="mse", grid=0), r"grid=0 must be an integer in \[1, inf\)"),
    ("quant_wrapper-weight_bits", lambda: Q.QuantWrapper(nn.Linear(2, 2), weight_bits=1), r"weight_bits=1: symmetric"),
    ("ptq-act_bits", lambda: Q.ptq(LeNet5(c1=2, c2=2, fc=4), torch.zeros(2, 1, 28, 28), act_bits=0), r"act_bits=0 .*\[1, 16\]"),
    ("kmeans-bits", lambda: Q.kmeans_quantize(torch.ones(4), 0), r"bits=0 .*\[1, 16\]"),
    ("kmeans-iters", lambda: Q.kmeans_quantize(torch.ones(4), 2, iters=-1), r"iters=-1 must be an integer in \[0, inf\)"),
    ("share_weights-misspelt-layer", lambda: Q.share_weights(LeNet5(), {"fc3": 4}),
     r"fc3.*valid names: \['conv1', 'conv2', 'fc1', 'fc2'\]"),
    ("pack_bits-bits", lambda: Q.pack_bits(torch.zeros(3), 0), r"bits=0 .*\[1, 16\]"),
    ("unpack_bits-numel", lambda: Q.unpack_bits(torch.zeros(2, dtype=torch.uint8), 4, -5), r"numel=-5 .*\[0, inf\)"),
    ("rtn-bits", lambda: Q.rtn_quantize(_W, bits=1, group_size=8), r"bits=1 must be an integer in \[2, 8\]"),
    ("rtn-group_size-0", lambda: Q.rtn_quantize(_W, 4, group_size=0), r"group_size=0 must be an integer in \[1, inf\)"),
    ("rtn-group_size-divides", lambda: Q.rtn_quantize(_W, 4, group_size=5), r"group_size=5 .*dividing in_features=16"),
    ("gptq-bits", lambda: Q.gptq_quantize(_W, torch.eye(16), bits=9, group_size=8), r"bits=9 .*\[2, 8\]"),
    ("gptq-group_size", lambda: Q.gptq_quantize(_W, torch.eye(16), 4, group_size=3), r"group_size=3 .*dividing"),
    ("gptq-damp", lambda: Q.gptq_quantize(_W, torch.eye(16), 4, 8, damp=0), r"damp=0 .*\(0, 1\]"),
    ("gptq-block_size", lambda: Q.gptq_quantize(_W, torch.eye(16), 4, 8, block_size=0), r"block_size=0 .*\[1, inf\)"),
    ("quantize_weights-method", lambda: Q.quantize_weights(nn.Linear(16, 4), "smoothquant"),
     r"method='smoothquant' must be one of \['rtn', 'gptq', 'awq'\]"),
    ("quantize_dynamic_int8-skip", lambda: Q.quantize_dynamic_int8(nn.Sequential(nn.Linear(2, 2)), skip=["1"]),
     r"skip=\['1'\].*valid names: \['0'\]"),
    ("export_onnx-input_shape", lambda: deploy.export_onnx(LeNet5(), "unused.onnx", (1, 0, 28)),
     r"input_shape=\(1, 0, 28\) must be a tuple of positive ints"),
    ("export_onnx-opset", lambda: deploy.export_onnx(LeNet5(), "unused.onnx", (1, 28, 28), opset=11),
     r"opset=11 must be an integer in \[13, inf\)"),
    ("ort_session-threads", lambda: deploy.ort_session("unused.onnx", threads=0), r"threads=0 .*\[1, inf\)"),
    ("ort_quantize_static-format", lambda: deploy.ort_quantize_static("a.onnx", "b.onnx", torch.zeros(1, 1, 2, 2),
                                                                       quant_format="int8"),
     r"quant_format='int8' must be one of \['QDQ', 'QOperator'\]"),
    ("calibration_reader-batch_size", lambda: deploy.ImageCalibrationReader(torch.zeros(2, 1, 2, 2), batch_size=0),
     r"batch_size=0 .*\[1, inf\)"),
    ("ort_op_times-runs", lambda: deploy.ort_op_times("unused.onnx", torch.zeros(1, 1, 2, 2), runs=0), r"runs=0 .*\[1, inf\)"),
    ("tokenize-max_length", lambda: BERT.tokenize(None, ["a"], max_length=4), r"max_length=4 must be an integer in \[8, 512\]"),
    ("encode-batch_size", lambda: BERT.encode(nn.Identity(), _TOK, batch_size=0), r"batch_size=0 .*\[1, inf\)"),
    ("drop_layers-keep", lambda: BERT.drop_layers(_FakeEncoder(), [0]), r"keep=\[0\] must be increasing"),
    ("svd_ffn-model", lambda: BERT.svd_ffn(nn.Linear(2, 2), 4), r"model must be a BERT encoder"),
    ("activation_aware_svd-rank", lambda: LR.activation_aware_svd_linear(nn.Linear(8, 4), 5, torch.eye(8)),
     r"rank=5 must be an integer in \[1, 4\]"),
    ("activation_aware_svd-hessian", lambda: LR.activation_aware_svd_linear(nn.Linear(8, 4), 2, torch.eye(5)),
     r"hessian has shape \(5, 5\), expected \(8, 8\)"),
    ("heads_to_prune-n", lambda: P.heads_to_prune(torch.zeros(2, 4), 7), r"n=7 must be an integer in \[0, 6\]"),
    ("prune_heads-model", lambda: P.prune_heads(nn.Linear(2, 2), {0: [0]}), r"model must be a BERT encoder"),
    ("distill_embeddings-batch_size", lambda: KD.distill_embeddings(_FakeEncoder(), _FakeEncoder(), _TOK, batch_size=0),
     r"batch_size=0 must be an integer in \[1, inf\)"),
    ("distill_embeddings-epochs", lambda: KD.distill_embeddings(_FakeEncoder(), _FakeEncoder(), _TOK, epochs=-1),
     r"epochs=-1 .*\[0, inf\)"),
    ("distill_embeddings-lr", lambda: KD.distill_embeddings(_FakeEncoder(), _FakeEncoder(), _TOK, lr=0),
     r"lr=0 .*\(0, inf\)"),
    ("distill_embeddings-seed", lambda: KD.distill_embeddings(_FakeEncoder(), _FakeEncoder(), _TOK, seed=-1),
     r"seed=-1 .*\[0, inf\)"),
    ("distill_embeddings-token_weight", lambda: KD.distill_embeddings(_FakeEncoder(), _FakeEncoder(), _TOK,
                                                                      token_weight=-0.5),
     r"token_weight=-0\.5 .*\[0, inf\)"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_raises_value_error_naming_the_argument(case):
    _, call, pattern = case
    with pytest.raises(ValueError) as info:
        call()
    assert re.search(pattern, str(info.value)), f"message {str(info.value)!r} does not match {pattern!r}"


def test_checkers_return_converted_values():
    assert V.int_in("n", 3, 1, 5) == 3 and isinstance(V.number_in("x", 1, 0, 2), float)
    assert V.shape("s", [1, 28, 28]) == (1, 28, 28)
    assert V.one_of("m", "a", "ab") == "a"
    t = torch.ones(2)
    assert V.finite_tensor("x", t) is t


def test_layer_bits_one_rule_for_every_per_layer_width():
    from course_lib.models import LeNet5
    m = LeNet5()
    assert V.layer_bits(m, None) == {}
    assert V.layer_bits(m, 4) == {"conv1": 4, "conv2": 4, "fc1": 4, "fc2": 4}
    assert V.layer_bits(m, {"fc1": 5, "conv1": 8, "fc2": None}) == {"conv1": 8, "fc1": 5}   # model order
    with pytest.raises(ValueError, match=r"bits\['fc1'\]=17 must be an integer in \[1, 16\]"):
        V.layer_bits(m, {"fc1": 17})
    with pytest.raises(ValueError, match=r"bits=0 must be an integer in \[1, 16\]"):
        V.layer_bits(m, 0)
    with pytest.raises(ValueError, match=r"\['fc9'\].*valid names: \['conv1', 'conv2', 'fc1', 'fc2'\]"):
        V.layer_bits(m, {"fc9": 4})
