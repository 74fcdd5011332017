"""Tests of course_lib.retrieval: chapter 6's retrieval set with hard negatives and its scores."""
import pytest
import torch

from course_lib import bert, retrieval as R


@pytest.fixture(scope="module")
def rs():
    return R.load_retrieval()


def test_set_shape(rs):
    q = len(rs.queries)
    assert q >= 150 and len(rs.swaps) == q
    assert len(rs.pool) == 4 * q == len(rs.pool_kind) == len(rs.pool_query)
    assert [rs.pool_kind[int(i)] for i in rs.positive] == ["paraphrase"] * q
    assert torch.equal(rs.pool_query[rs.positive], torch.arange(q))
    assert sorted(set(rs.pool_kind)) == ["negation", "paraphrase", "person", "time", "verb"]
    assert len(set(rs.texts)) == len(rs.texts), "every sentence appears once"


def test_no_overlap_with_calibration(rs):
    s = bert.load_sentences()
    norm = {t.lower().strip() for t in rs.texts}
    assert not norm & {t.lower().strip() for t in s.train_texts}, "calibration sentences must not be evaluated"
    assert not norm & {t.lower().strip() for t in s.eval_texts}


def test_checksum(monkeypatch, tmp_path):
    (tmp_path / R.RETRIEVAL_FILE).write_text("query\trole\tkind\tgrade\ttext\n")
    (tmp_path / "SHA256SUMS").write_text("0" * 64 + "  " + R.RETRIEVAL_FILE + "\n")
    monkeypatch.setattr(R, "DATA_DIR", tmp_path)
    with pytest.raises(ValueError, match="checksum mismatch.*build_retrieval.py"):
        R.load_retrieval()
    (tmp_path / "SHA256SUMS").write_text("")       # not listed: refused, with a message that says so
    with pytest.raises(ValueError, match="does not list retrieval.tsv"):
        R.load_retrieval()


def test_ranks_and_scores():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    pool = torch.tensor([[1.0, 0.1], [0.0, 1.0], [1.0, -1.0], [1.0, 0.0]])
    positive = torch.tensor([0, 1, 2])
    r = R.ranks(q, pool, positive)
    # query 0: pool 3 is exactly on it, pool 0 second -> rank 2; query 1: exact -> 1; query 2: orthogonal -> last
    assert r.tolist() == [2, 1, 4]
    s = R.scores(r)
    assert s["recall_at_1"] == pytest.approx(1 / 3)
    assert s["mrr"] == pytest.approx((0.5 + 1 + 0.25) / 3)
    assert s["recall_ci"][0] <= s["recall_at_1"] <= s["recall_ci"][1]
    with pytest.raises(ValueError, match="positive"):
        R.ranks(q, pool, torch.tensor([0, 1, 9]))


def test_ties_count_against_positive():
    q = torch.tensor([[1.0, 0.0]])
    pool = torch.tensor([[2.0, 0.0], [1.0, 0.0]])
    assert R.ranks(q, pool, torch.tensor([1])).tolist() == [2]


def test_spearman_matches_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 5, (200,), generator=g).double()  # ties, like grades
    b = a + torch.randn(200, generator=g, dtype=torch.float64)
    assert R.spearman(a, b) == pytest.approx(scipy_stats.spearmanr(a.numpy(), b.numpy())[0], abs=1e-12)
    assert R.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    with pytest.raises(ValueError):
        R.spearman([1, 2], [1, 2, 3])


def test_graded_pairs_and_swap(rs):
    left, right, grade = R.graded_pairs(rs, unrelated=2)
    nq = len(rs.queries)
    assert len(left) == len(rs.pool) + 3 * nq
    assert set(grade.tolist()) == {0.0, 1.0, 2.0, 3.0, 5.0}
    assert int(left.max()) < nq <= int(right.min())
    emb = torch.nn.functional.one_hot(torch.arange(len(rs.texts)) % 7, 7).double()
    assert R.pair_cosines(emb, left, right).shape == grade.shape
    qe, pe, se = rs.split(torch.randn(len(rs.texts), 4, generator=torch.Generator().manual_seed(0)))
    assert 0 <= R.swap_accuracy(qe, pe, se, rs.positive) <= 1
    assert R.swap_accuracy(pe[rs.positive], pe, -pe[rs.positive], rs.positive) == 1.0


def test_evaluate_perfect_and_reference(rs):
    # an "encoder" that puts each event's query and paraphrase on one axis: recall 1, swap accuracy 1
    n, q = len(rs.texts), len(rs.queries)
    emb = torch.randn(n, q + 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.01
    emb[torch.arange(q), torch.arange(q)] = 1.0
    emb[q + rs.positive, torch.arange(q)] = 1.0
    out = R.evaluate(emb, rs, ref=emb)
    assert out["recall_at_1"] == 1.0 and out["mrr"] == 1.0 and out["swap"] == 1.0
    assert out["fp32_spearman"] == pytest.approx(1.0)
    assert -1 <= out["graded"] <= 1
    with pytest.raises(ValueError, match="texts"):
        R.evaluate(emb[:-1], rs)


def test_subset(rs):
    sub = R.load_retrieval(n_queries=20)
    assert sub.queries == rs.queries[:20] and len(sub.pool) == 80
    assert torch.equal(sub.positive, rs.positive[:20])
    with pytest.raises(ValueError, match="n_queries"):
        R.load_retrieval(n_queries=5)
    with pytest.raises(ValueError, match="n_queries"):
        R.load_retrieval(n_queries=10_000)


def test_events_subset_and_the_val_eval_split(rs):
    first = R.load_retrieval(n_queries=20)
    sub, index = R.subset(rs, range(20))
    assert (sub.queries, sub.pool, sub.pool_kind, sub.swaps) == (first.queries, first.pool, first.pool_kind, first.swaps)
    assert torch.equal(sub.positive, first.positive) and torch.equal(sub.pool_query, first.pool_query)
    assert torch.equal(sub.pool_grade, first.pool_grade)
    assert [rs.texts[i] for i in index] == list(sub.texts)
    (val, vi), (ev, ei) = R.val_eval_split(rs)
    n = len(rs.queries)
    assert val.queries == tuple(q for i, q in enumerate(rs.queries) if i % 4 < 2)
    assert ev.queries == tuple(q for i, q in enumerate(rs.queries) if i % 4 >= 2)
    assert abs(len(val.queries) - len(ev.queries)) <= 2
    assert len(val.pool) == 4 * len(val.queries) and len(ev.pool) == 4 * len(ev.queries)
    assert not set(vi.tolist()) & set(ei.tolist()) and len(vi) + len(ei) == len(rs.texts)
    assert [val.pool_kind[int(i)] for i in val.positive] == ["paraphrase"] * len(val.queries)
    assert torch.equal(val.pool_query[val.positive], torch.arange(len(val.queries)))
    emb = torch.randn(len(rs.texts), 8, generator=torch.Generator().manual_seed(0))
    full = R.ranks(*rs.split(emb)[:2], rs.positive)
    own = R.ranks(*ev.split(emb[ei])[:2], ev.positive)
    assert bool((own <= full[[i for i in range(n) if i % 4 >= 2]]).all())  # fewer distractors: never a worse rank
    for bad in ([], [0, 0], [n], [-1]):
        with pytest.raises(ValueError, match="ids"):
            R.subset(rs, bad)
