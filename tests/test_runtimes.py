"""course_lib.runtimes: installed sizes, the Deployed wrapper and static-batch prediction, the interleaved
timing of paths, the CPU report and its int8 floor, onnxruntime's profile grouped by layer, the cached latency
model, and each runtime's path on a tiny LeNet-5 (onnxruntime, OpenVINO, PT2E conversion, ExecuTorch). The
compiled paths (torch.compile, PT2E + Inductor) run in the chapter's notebook, not here: they take tens of
seconds to compile."""
import os

import numpy as np
import pytest
import torch

from course_lib import deploy, runtimes as R
from course_lib.models import LeNet5


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return LeNet5(c1=4, c2=8, fc=16).eval()


def test_installed_bytes_adds_up_the_listed_files():
    from importlib import metadata
    n = R.installed_bytes("tqdm")
    listed = sum(f.locate().stat().st_size for f in metadata.files("tqdm") if f.locate().is_file())
    assert n == listed > 10_000
    with pytest.raises(ValueError, match="distribution='no-such-dist-here' is not installed"):
        R.installed_bytes("no-such-dist-here")
    with pytest.raises(ValueError, match="distribution=''"):
        R.installed_bytes("")


def test_runtime_footprint_names_every_runtime():
    fp = R.runtime_footprint()
    assert set(fp) == set(R.RUNTIME_DISTRIBUTIONS)
    assert fp["PyTorch"]["bytes"] > 50 * 2**20 and fp["PyTorch"]["version"].startswith("2.")
    with pytest.raises(ValueError, match="names"):
        R.runtime_footprint(["TensorRT"])


def test_padded_predict_pads_the_last_batch_and_drops_the_padding():
    calls = []

    def static(xb):
        calls.append(len(xb))
        if len(xb) != 4:
            raise RuntimeError("static shape")
        return xb.reshape(len(xb), -1).sum(1, keepdim=True).repeat(1, 3)
    x = torch.arange(10, dtype=torch.float32).reshape(10, 1, 1, 1)
    y = R.padded_predict(static, x, 4)
    assert y.shape == (10, 3) and calls == [4, 4, 4]
    assert torch.equal(y[:, 0], torch.arange(10, dtype=torch.float32))
    assert R.padded_predict(lambda xb: xb.numpy().reshape(len(xb), 1), x, 5).shape == (10, 1)  # numpy out
    with pytest.raises(ValueError, match="batch_size"):
        R.padded_predict(static, x, 0)
    with pytest.raises(ValueError, match="non-empty"):
        R.padded_predict(static, torch.zeros(0, 1), 4)


def test_agreement_of_labels_and_logits():
    a = torch.tensor([0, 1, 2, 3])
    assert R.agreement(a, a) == 1.0 and R.agreement(a, torch.tensor([0, 1, 0, 0])) == 0.5
    logits = torch.nn.functional.one_hot(a, 4).float()
    assert R.agreement(logits, a) == 1.0
    with pytest.raises(ValueError, match="predictions"):
        R.agreement(a, a[:2])


def test_deployed_paths_run_static_batches_and_time_together(tiny):
    eager, cl = R.eager_path(tiny, (1, 3)), R.channels_last_path(tiny, (1, 3))
    x = torch.randn(3, 1, 28, 28)
    assert torch.allclose(eager(x), tiny(x).detach(), atol=1e-5) and torch.allclose(cl(x), eager(x), atol=1e-5)
    with pytest.raises(ValueError, match=r"batch of 2; this path runs batches of \[1, 3\]"):
        eager(x[:2])
    with pytest.raises(ValueError, match="batch_size=2"):
        eager.call(2)
    t = R.time_paths([eager, cl], (1, 3), rounds=1, repeats=2, warmup=0)
    assert set(t) == {(p.name, b) for p in (eager, cl) for b in (1, 3)}
    assert all(v["latency_ms"] > 0 and v["spread_ms"][0] <= v["spread_ms"][1] for v in t.values())
    with pytest.raises(ValueError, match="repeated names"):
        R.time_paths([eager, eager], (1,), rounds=1, repeats=1)
    labelled = R.time_paths({("a", "x"): eager}, (1,), rounds=1, repeats=1, warmup=0)
    assert list(labelled) == [(("a", "x"), 1)]


def test_onnxruntime_and_openvino_paths_agree_with_pytorch(tiny, tmp_path):
    onnx = deploy.export_onnx(tiny, tmp_path / "tiny.onnx")
    x = torch.randn(4, 1, 28, 28)
    ref = tiny(x).detach()
    ort = R.ort_path(onnx, "onnxruntime fp32", "fp32", (4,))
    ov = R.openvino_path(onnx, "OpenVINO fp32", "fp32", (1, 4))
    assert torch.allclose(ort(x), ref, atol=1e-4) and torch.allclose(ov(x), ref, atol=1e-4)
    assert torch.allclose(ov(x[:1]), ref[:1], atol=1e-4)
    calib = torch.randn(128, 1, 28, 28)
    xml = R.openvino_int8(onnx, tmp_path / "ov" / "tiny_int8.xml", calib)
    assert R.file_bytes(xml) > xml.stat().st_size  # the .bin counts too
    q = R.openvino_path(xml, "OpenVINO int8", "int8", (4,))
    assert q(x).shape == (4, 10)
    with pytest.raises(ValueError, match="fewer than batch_size=64"):
        R.openvino_int8(onnx, tmp_path / "x.xml", calib[:10])


def test_pt2e_int8_converts_with_quantize_dequantize_pairs(tiny):
    calib = torch.randn(128, 1, 28, 28)
    q = R.pt2e_int8(tiny, calib, reduce_range=False)
    targets = {str(n.target) for n in q.graph.nodes if n.op == "call_function"}
    assert any("quantize_per_tensor" in t for t in targets) and any("dequantize_per_channel" in t for t in targets)
    x = torch.randn(5, 1, 28, 28)  # the batch stays dynamic until the static re-export
    assert (q(x).argmax(1) == tiny(x).argmax(1)).float().mean() >= 0.6
    with pytest.raises(ValueError, match="calib_images is empty"):
        R.pt2e_int8(tiny, calib[:0])


def test_pt2e_path_ships_the_converted_program_it_compiles(tiny, tmp_path, monkeypatch):
    # torch.compile left out (minutes): the compiled callables are the re-exported graphs themselves
    monkeypatch.setattr(R, "_compile_static", lambda gm, examples: {b: gm for b in examples})
    calib = torch.randn(128, 1, 28, 28)
    p = R.pt2e_path(tiny, calib, (1, 4), reduce_range=False, save_to=tmp_path / "art" / "pt2e.pt2")
    assert p.file == tmp_path / "art" / "pt2e.pt2" and p.file.is_file() and p.precision == "int8"
    program = torch.export.load(p.file)  # the archive holds the batch-4 program
    x = torch.randn(4, 1, 28, 28)
    torch.testing.assert_close(program.module()(p.prepare(x)), p.fns[4](p.prepare(x)))
    # float32 weights plus their quantization: larger than the float model's state dict
    assert R.file_bytes(p.file) > sum(t.numel() * 4 for t in tiny.state_dict().values())
    assert R.pt2e_path(tiny, calib, (1,), reduce_range=False).file is None


def test_executorch_program_runs_in_its_runtime(tiny, tmp_path):
    f = R.executorch_program(tiny, tmp_path / "tiny.pte", 2)
    p = R.executorch_path({2: f}, "ExecuTorch fp32", "fp32")
    x = torch.randn(2, 1, 28, 28)
    assert torch.allclose(p(x), tiny(x).detach(), atol=1e-4)


def test_cached_artifact_builds_once(tmp_path):
    built = []

    def build(p):
        built.append(p)
        p.write_text("x")
    path, cached = R.cached_artifact(tmp_path / "a" / "f.txt", build)
    assert not cached and path.read_text() == "x"
    assert R.cached_artifact(path, build) == (path, True) and len(built) == 1
    with pytest.raises(FileNotFoundError, match="did not write"):
        R.cached_artifact(tmp_path / "g.txt", lambda p: None)


def test_state_key_follows_the_weights(tiny):
    other = LeNet5(c1=4, c2=8, fc=16)
    assert R.state_key(tiny) == R.state_key(tiny) != R.state_key(other)
    assert R.state_key(tiny, 1) != R.state_key(tiny, 2)


def test_cpu_report_and_its_int8_floor(monkeypatch):
    vnni = R.cpu_report({"avx2", "avx512f", "avx512_vnni"}, "x86_64", threads=1, cores=2)
    assert vnni["vnni"] and not vnni["u8s8_saturates"] and vnni["features"]["AVX512-VNNI"]
    assert R.int8_speedup_floor(vnni) == 1.0 and "VNNI present" in R.format_cpu_report(vnni)
    old = R.cpu_report({"avx2"}, "x86_64", threads=1, cores=4)
    assert old["u8s8_saturates"] and R.int8_speedup_floor(old) == 0.5
    assert "No VNNI" in " ".join(old["notes"]) and "No AVX512" in " ".join(old["notes"])
    arm = R.cpu_report({"asimddp", "sme"}, "aarch64", threads=2, cores=8)
    assert not arm["x86"] and arm["features"]["SME"] and R.int8_speedup_floor(arm) == 1.0
    bare = R.cpu_report(set(), "x86_64", threads=1, cores=1)  # an empty set: an x86 CPU with none of the flags
    assert bare["vnni"] is False and bare["u8s8_saturates"] and R.int8_speedup_floor(bare) == 0.5
    monkeypatch.setattr(R.env, "cpu_flags", lambda *a, **k: None)  # macOS, Windows: no /proc/cpuinfo to read
    mac = R.cpu_report(None, "arm64", threads=1, cores=1)
    assert mac["vnni"] is None and set(mac["features"].values()) == {None} and "cannot be read" in mac["notes"][0]
    assert R.int8_speedup_floor(mac) == 0.5  # unknown: the cautious floor
    with pytest.raises(ValueError, match="threads"):
        R.cpu_report({"avx2"}, "x86_64", threads=0)
    amx = R.cpu_report({"avx512f", "avx512_vnni", "amx_int8"}, "x86_64", threads=1, cores=1)
    assert "AMX present" in R.format_cpu_report(amx)


def test_isa_latencies_rejects_unknown_settings(tiny, tmp_path):
    with pytest.raises(ValueError, match="isas"):
        R.isa_latencies(tiny, torch.randn(8, 1, 28, 28), tmp_path, isas=("AVX9000",))


@pytest.mark.parametrize("name, layer", [("/conv2/Conv_quant", "conv2"), ("/model/fc1/Gemm", "fc1"),
                                         ("x_QuantizeLinear", "other"), ("/conv1/Conv", "conv1"), ("/Relu_output_0_nchwc", "conv1"),
                                         ("/Relu_1_output_0_nchwc", "conv2"), ("/MaxPool_1_token_5", "conv2"), ("ReorderOutput", "other"),
                                         ("fc2.weight_DequantizeLinear", "fc2"), ("/Relu_3", "other"), ("/MaxPool", "conv1")])
def test_layer_of(name, layer):
    assert R.layer_of(name) == layer


def test_op_speedups_puts_the_layer_that_gains_least_first():
    fp32 = [("/conv1/Conv", "Conv", 1.0), ("/conv2/Conv", "Conv", 4.0), ("/fc1/Gemm", "Gemm", 2.0)]
    int8 = [("/conv1/Conv", "Conv", 1.1), ("/conv2/Conv_quant", "QLinearConv", 1.0),
            ("/fc1/Gemm_quant", "QGemm", 0.5), ("x_QuantizeLinear", "QuantizeLinear", 0.2)]
    rows = R.op_speedups(fp32, int8)
    assert [r["layer"] for r in rows] == ["conv1", "conv2", "fc1", "other"]
    assert rows[0]["x_faster"] == pytest.approx(1 / 1.1) and rows[-1]["x_faster"] is None
    assert rows[1]["int8_ops"] == ["QLinearConv"]


def test_onnxruntime_profile_feeds_op_speedups(tiny, tmp_path):
    onnx = deploy.export_onnx(tiny, tmp_path / "tiny.onnx")
    times = deploy.ort_op_times(onnx, torch.randn(4, 1, 28, 28), runs=2)
    rows = R.op_speedups(times, times)
    assert {"conv1", "conv2", "fc1", "fc2"} <= {r["layer"] for r in rows}


def test_cached_latency_model_trains_once(tiny, tmp_path):
    from course_lib.data import load_dataset
    data = load_dataset("mnist5k", limit=64).train
    m, info = R.cached_latency_model(tiny, data, seed=0, epochs=1, cache=tmp_path)
    assert not info["cached"] and info["recipe"]["args"]["epochs"] == 1 and info["class"] == "LeNet5"
    m2, info2 = R.cached_latency_model(tiny, data, seed=0, epochs=1, cache=tmp_path, device="cpu")  # device: same key
    assert info2["cached"] and info2["key"] == info["key"] and m2.config == m.config
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), m2.state_dict().values()))
    # what changes the result changes the key: seed, epochs, the controls' arguments, the data
    keys = {info["key"]}
    for kw in (dict(seed=1), dict(epochs=2), dict(alpha=0.0), dict(scratch=True, alpha=0.0)):
        keys.add(R.cached_latency_model(tiny, data, **{"seed": 0, "epochs": 1, **kw}, cache=tmp_path)[1]["key"])
    keys.add(R.cached_latency_model(tiny, load_dataset("mnist5k", limit=32).train, epochs=1, cache=tmp_path)[1]["key"])
    assert len(keys) == 6
    with pytest.raises(ValueError, match="epochs"):
        R.cached_latency_model(tiny, data, epochs=0, cache=tmp_path)
    from course_lib import recipes
    for bad in (lambda m, t: m, recipes.gradual_prune):  # not a recipe; a recipe that returns (model, pruner)
        with pytest.raises(ValueError, match="fn = .* is not valid"):
            recipes.cached_recipe(bad, tiny, data, cache=tmp_path)
    with pytest.raises(TypeError, match=r"cannot fingerprint a int64 \(3\)"):
        recipes.cached_recipe(recipes.latency_model, tiny, data, cache=tmp_path, seed=np.int64(3))


def test_cached_recipe_keeps_the_random_state_and_keys_the_constants_it_reads(tiny, tmp_path, monkeypatch):
    from course_lib import recipes
    from course_lib.data import load_dataset
    from course_lib.training import seed_everything
    data = load_dataset("mnist5k", limit=64).train
    draws = []
    for _ in range(2):  # trained (latency_model re-seeds the global generators), then loaded
        seed_everything(5)
        _, info = R.cached_latency_model(tiny, data, seed=0, epochs=1, cache=tmp_path)
        draws.append(torch.rand(3))
    assert info["cached"] and torch.equal(*draws) and torch.equal(draws[0], (seed_everything(5), torch.rand(3))[1])
    _, a = recipes.cached_recipe(recipes.deep_compression_prune, tiny, data, cache=tmp_path, epochs=1)
    assert a["recipe"]["constants"] == {"FINETUNE": recipes.FINETUNE}
    monkeypatch.setattr(recipes, "FINETUNE", {**recipes.FINETUNE, "lr": 0.5})  # gradual_prune's fine-tuning
    _, b = recipes.cached_recipe(recipes.deep_compression_prune, tiny, data, cache=tmp_path, epochs=1)
    assert not b["cached"] and b["key"] != a["key"]


def test_chapter_8s_latency_model_loads_from_the_shipped_weights(tmp_path, monkeypatch):
    from course_lib import recipes
    from course_lib.data import load_dataset
    from course_lib.training import load_baseline
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    teacher, _ = load_baseline("mnist5k", 0)  # chapter 8's call: the seed-0 baseline, seed 0, default epochs
    model, info = R.cached_latency_model(teacher, load_dataset("mnist5k").train, seed=0)
    assert info["shipped"] is True and info["recipe"]["args"]["epochs"] == recipes.LATENCY_EPOCHS
    assert model.config["c1"] < teacher.config["c1"] and list(tmp_path.iterdir()) == []


def test_torchao_configs_touch_what_they_say(tiny):
    types = R.weight_types(R.torchao_int8_linears(tiny))
    assert types["conv1"] == "Parameter" and types["fc1"] != "Parameter"
    w4 = R.weight_types(R.torchao_w4a8(tiny))
    assert w4["conv2"] == "Parameter" and w4["fc2"] != "Parameter"
    # what the pinned torchao (0.18) does, as chapter 8 prints it: a 4-D weight with several input channels is
    # quantized (and changes the logits only a little); conv1's single input channel makes it fail. A torchao
    # that changes either outcome fails this test, and the chapter's text must then be read again.
    out = R.intx_conv_attempt(tiny, ["conv1", "conv2"])
    assert out["conv2"].startswith("IntxUnpackedToInt8Tensor, max |logit change| ")
    assert 0 < float(out["conv2"].rsplit(" ", 1)[1]) < 0.05
    assert out["conv1"].startswith("fails: RuntimeError: shape '[4, 1, 5, 5]' is invalid"), out["conv1"]


def test_torchao_qat_and_its_control_have_the_same_budget(tiny):
    g = torch.Generator().manual_seed(0)
    data = (torch.randn(64, 1, 28, 28, generator=g), torch.randint(0, 10, (64,), generator=g))
    q = R.torchao_qat(tiny, data, epochs=1)
    c = R.finetune_then_w4a8(tiny, data, epochs=1)
    assert R.weight_types(q)["fc1"] == R.weight_types(c)["fc1"] != "Parameter"
    with pytest.raises(ValueError, match="epochs"):
        R.torchao_qat(tiny, data, epochs=0)
    assert np.isfinite(q(data[0][:2]).detach().numpy()).all()


def test_build_in_subprocess_writes_the_artifacts(tiny, tmp_path):
    onnx = deploy.export_onnx(tiny, tmp_path / "tiny.onnx")
    calib = torch.randn(128, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    jobs = [{"kind": "openvino_int8", "onnx": onnx, "out": tmp_path / "q.xml"},
            {"kind": "executorch", "out": tmp_path / "q8.pte", "batch": 4, "int8": True}]
    out = R.build_in_subprocess(tiny, jobs, calib, tmp_path / "w")
    assert out == [tmp_path / "q.xml", tmp_path / "q8.pte"] and all(p.exists() for p in out)
    assert R.build_in_subprocess(tiny, [], None, tmp_path) == []
    # the int8 ExecuTorch program (XNNPACKQuantizer, lowered in the child) runs and stays close to fp32
    q8 = R.executorch_path({4: out[1]}, "ExecuTorch XNNPACK int8", "int8")
    x = calib[:4]
    ref = tiny(x).detach()
    y = torch.as_tensor(q8(x))
    assert y.shape == (4, 10) and float((y - ref).abs().max()) < 0.1 * float(ref.abs().max())
    with pytest.raises(ValueError, match="jobs kind"):
        R.build_in_subprocess(tiny, [{"kind": "tflite", "out": tmp_path / "x"}], torch.randn(1, 1, 28, 28), tmp_path)
    with pytest.raises(RuntimeError, match="failed"):
        R.build_in_subprocess(tiny, [{"kind": "openvino_int8", "onnx": tmp_path / "missing.onnx",
                                      "out": tmp_path / "r.xml"}], torch.randn(64, 1, 28, 28), tmp_path / "w")


def test_native_stderr_silenced_drops_only_what_is_written_inside(capfd):
    os.write(2, b"before ")
    with R.native_stderr_silenced():
        os.write(2, b"native log line\n")
    os.write(2, b"after")
    assert capfd.readouterr().err == "before after"


def test_native_stderr_silenced_drops_python_stderr_too(capsys):
    import sys
    with R.native_stderr_silenced():
        sys.stderr.write("through sys.stderr\n")
    sys.stderr.write("kept")
    assert capsys.readouterr().err == "kept"


def test_every_path_builds_each_runtime_once_and_agrees(tiny, tmp_path):
    calib = torch.rand(64, 1, 28, 28)
    paths = R.every_path(tiny, calib, tmp_path / "onnx", tmp_path / "cache", batch_sizes=(2,), compiled=False,
                         executorch=False)
    assert [p.name for p in paths] == ["PyTorch eager NCHW", "PyTorch eager channels-last", "onnxruntime fp32",
                                       "onnxruntime int8", "OpenVINO fp32", "OpenVINO int8 (NNCF)"]
    assert [p.precision for p in paths] == ["fp32", "fp32", "fp32", "int8", "fp32", "int8"]
    x = torch.rand(2, 1, 28, 28)
    ref = tiny(x).detach()
    for p in paths:
        tol = 1e-4 if p.precision == "fp32" else 0.5   # int8: close, not equal
        assert p.batch_sizes() == [2] and torch.allclose(p(x), ref, atol=tol), p.name
    ov8 = next(tmp_path.joinpath("cache").glob("ov_int8_*.xml"))
    stamp = ov8.stat().st_mtime_ns
    again = R.every_path(tiny, calib, tmp_path / "onnx", tmp_path / "cache", batch_sizes=(2,), compiled=False,
                         executorch=False)
    assert ov8.stat().st_mtime_ns == stamp and len(again) == 6   # NNCF's model came from the cache


def test_torchao_int8_on_minilm_quantizes_every_linear_and_keeps_the_embeddings():
    """Chapter 8's MiniLM comparison: torchao's Int8DynamicActivationInt8WeightConfig swaps every linear weight of
    the encoder for an int8 tensor subclass, leaves the embedding table alone, and changes the sentence embeddings
    little (the chapter measures its speed against torch.ao's quantize_dynamic)."""
    from course_lib import bert
    model, tokenizer = bert.load_pretrained()
    q = R.torchao_int8_linears(model)
    types = R.weight_types(q)
    linears = [n for n, _ in bert.linear_layers(model)]
    assert len(linears) == 36 and all(types[n] != "Parameter" for n in linears)
    assert types["embeddings.word_embeddings"] == "Parameter"
    assert R.weight_types(model)[linears[0]] == "Parameter"  # the original is untouched
    batch = bert.tokenize(tokenizer, bert.load_sentences().eval_texts[:16])
    assert bert.mean_cosine(bert.encode(q, batch), bert.encode(model, batch)) > 0.99



def test_graph_breaks_counts_what_dynamo_splits(tiny, monkeypatch):
    from torch._dynamo.utils import counters
    monkeypatch.setattr(R, "_DYNAMO_GRAPHS_EXPLAINED", counters["stats"]["unique_graphs"])  # whatever ran before
    calib = torch.randn(128, 1, 28, 28)
    converted = R.pt2e_int8(tiny, calib, reduce_range=False)
    x = calib[:8].contiguous(memory_format=torch.channels_last)
    program = torch.export.export(converted, (x,)).module()  # what pt2e_path compiles
    # the pinned torch and torchao: one graph (chapter 8 prints the same for its model); a second call is allowed
    assert R.graph_breaks(program, x) == {"graphs": 1, "breaks": 0, "reasons": []}
    assert R.graph_breaks(converted, x)["breaks"] == 0

    class Breaks(torch.nn.Module):
        def forward(self, x):
            y = x * 2
            print("", end="")  # a Python side effect: TorchDynamo must break the graph here
            return y + 1
    out = R.graph_breaks(Breaks(), torch.ones(2))
    assert out["breaks"] >= 1 and out["graphs"] >= 2 and out["reasons"]
    # once a model has been compiled, the reset explain does would slow it down: refused, with the reason
    torch.compile(lambda t: t * 3, backend="eager")(torch.ones(2))
    with pytest.raises(RuntimeError, match="compiled 1 graph"):
        R.graph_breaks(Breaks(), torch.ones(2))
