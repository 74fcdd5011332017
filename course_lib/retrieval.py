"""Chapter 6's task metric: retrieval with hard negatives and graded similarity (data/retrieval.tsv).

The set (written for the course, ``data/retrieval_README.md``): 180 queries "the A <verb> the B <when>".
For each query the *pool* holds its paraphrase (the positive) and three hard negatives that share
almost every word with it: the verb negated and two one-word changes (another person, verb or time).
The 720 pool sentences of all queries are searched together. A role-swapped probe ("the B <verb> the
A <when>") per query is kept out of the pool and scored on its own (:func:`swap_accuracy`): a
mean-pooled encoder hardly sees word order, so it would decide retrieval by itself.

Scores, each per query so that intervals resample queries (``stats.bootstrap_mean_interval``):
recall@1 (is the positive the most similar pool sentence?) and the reciprocal rank of the positive
(mean: MRR), from :func:`ranks`; the Spearman correlation of a model's cosine similarities with the
graded pairs (:func:`graded_pairs`, grades by construction rule 0..5) and with the fp32 model's
similarities (:func:`spearman`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import stats
from ._validate import int_in
from .data import DATA_DIR, verify_checksum

RETRIEVAL_FILE = "retrieval.tsv"
METRIC = "recall@1, retrieval with hard negatives (data/retrieval.tsv)"

__all__ = ["RETRIEVAL_FILE", "METRIC", "RetrievalSet", "load_retrieval", "ranks", "scores", "swap_accuracy",
           "graded_pairs", "spearman", "pair_cosines"]


@dataclass(frozen=True)
class RetrievalSet:
    """queries: Q texts; pool: P texts (positives and negatives of all queries); pool_query: int64 (P,)
    the query each pool sentence belongs to; pool_kind: P labels ("paraphrase", "negation", "person",
    "verb", "time"); pool_grade: int64 (P,) grade 0..5 against its own query; positive: int64 (Q,)
    index into pool of each query's paraphrase; swaps: Q role-swapped probes (not in the pool)."""

    queries: tuple
    pool: tuple
    pool_query: torch.Tensor
    pool_kind: tuple
    pool_grade: torch.Tensor
    positive: torch.Tensor
    swaps: tuple

    @property
    def texts(self) -> tuple:
        """Every sentence, queries then pool then swaps: encode once, split with :meth:`split`."""
        return self.queries + self.pool + self.swaps

    def split(self, emb: torch.Tensor):
        """(query, pool, swap) embeddings from the (len(texts), D) embeddings of :attr:`texts`."""
        q, p = len(self.queries), len(self.pool)
        if emb.dim() != 2 or emb.shape[0] != len(self.texts):
            raise ValueError(f"emb must be ({len(self.texts)}, D), the embeddings of .texts; got {tuple(emb.shape)}")
        return emb[:q], emb[q:q + p], emb[q + p:]


def load_retrieval(n_queries: int | None = None) -> RetrievalSet:
    """Read ``data/retrieval.tsv`` after checking its SHA-256 against ``data/SHA256SUMS``.
    n_queries: None (all 180) or the first n in [10, 180] events only (their pool sentences alone:
    quicker, wider intervals; lab mode)."""
    if n_queries is not None:
        int_in("n_queries", n_queries, 10, None)
    path = DATA_DIR / RETRIEVAL_FILE
    verify_checksum(path, required=True, hint="rebuild it with data/build_retrieval.py")
    raw = path.read_bytes()
    queries, pool, pq, kind, grade, swaps = {}, [], [], [], [], {}
    pos = {}
    for line in raw.decode("utf-8").splitlines()[1:]:
        q, role, k, g, text = line.split("\t")
        q = int(q)
        if n_queries is not None and q >= n_queries:
            continue
        if role == "query":
            queries[q] = text
        elif role == "probe":
            swaps[q] = text
        else:
            if role == "positive":
                pos[q] = len(pool)
            pool.append(text)
            pq.append(q)
            kind.append(k)
            grade.append(int(g))
    ids = sorted(queries)
    if n_queries is not None and n_queries > len(ids):
        raise ValueError(f"n_queries={n_queries} must be in [10, {len(ids)}]")
    return RetrievalSet(tuple(queries[i] for i in ids), tuple(pool), torch.tensor(pq), tuple(kind),
                        torch.tensor(grade), torch.tensor([pos[i] for i in ids]), tuple(swaps[i] for i in ids))


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = torch.nn.functional.normalize(a.double(), dim=-1), torch.nn.functional.normalize(b.double(), dim=-1)
    return a @ b.T


def ranks(query_emb: torch.Tensor, pool_emb: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Rank (1 = most similar) of each query's positive among all pool sentences by cosine similarity:
    int64 (Q,). query_emb (Q, D), pool_emb (P, D), positive int (Q,) in [0, P). Ties count against the
    positive (a pool sentence as similar as the positive ranks before it)."""
    if query_emb.dim() != 2 or pool_emb.dim() != 2 or query_emb.shape[1] != pool_emb.shape[1]:
        raise ValueError(f"query_emb (Q, D) and pool_emb (P, D) must share D; got {tuple(query_emb.shape)}, "
                         f"{tuple(pool_emb.shape)}")
    if positive.shape != (query_emb.shape[0],) or int(positive.min()) < 0 or int(positive.max()) >= pool_emb.shape[0]:
        raise ValueError(f"positive must be ({query_emb.shape[0]},) indices in [0, {pool_emb.shape[0]})")
    sim = _cos(query_emb, pool_emb)
    target = sim.gather(1, positive[:, None])
    others = sim >= target
    others[torch.arange(len(positive)), positive] = False
    return others.sum(1) + 1


def scores(rank: torch.Tensor, level: float = 0.95, seed: int = 0) -> dict:
    """recall@1 and MRR of ranks (Q,) from :func:`ranks`, each with a bootstrap interval over queries:
    {"recall_at_1", "recall_ci", "mrr", "mrr_ci", "hits" (Q,) float 0/1, "rr" (Q,) 1/rank, "n"}."""
    hits, rr = (rank == 1).double(), 1.0 / rank.double()
    return {"recall_at_1": float(hits.mean()), "recall_ci": stats.bootstrap_mean_interval(hits, level, seed=seed),
            "mrr": float(rr.mean()), "mrr_ci": stats.bootstrap_mean_interval(rr, level, seed=seed),
            "hits": hits, "rr": rr, "n": len(rank)}


def swap_accuracy(query_emb: torch.Tensor, pool_emb: torch.Tensor, swap_emb: torch.Tensor,
                  positive: torch.Tensor) -> float:
    """Fraction in [0, 1] of queries whose paraphrase is more similar to the query than the role-swapped
    probe (0.5 = chance). Shapes as in :func:`ranks`; swap_emb (Q, D)."""
    if swap_emb.shape != query_emb.shape:
        raise ValueError(f"swap_emb {tuple(swap_emb.shape)} must match query_emb {tuple(query_emb.shape)}")
    qn = torch.nn.functional.normalize(query_emb.double(), dim=-1)
    p = torch.nn.functional.normalize(pool_emb[positive].double(), dim=-1)
    s = torch.nn.functional.normalize(swap_emb.double(), dim=-1)
    return float(((qn * p).sum(1) > (qn * s).sum(1)).double().mean())


def graded_pairs(rs: RetrievalSet, unrelated: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Graded sentence pairs as indices into ``rs.texts``: (left (M,), right (M,), grade (M,) float64).
    Each query is paired with every pool sentence of its own event (the grade in the file: paraphrase 5,
    another time 3, another person or verb 2, negated 1), with its role swap (grade 1), and with the
    paraphrases of the next ``unrelated`` (in [0, 10]) queries (grade 0, another event)."""
    int_in("unrelated", unrelated, 0, 10)
    nq, npool = len(rs.queries), len(rs.pool)
    left, right, grade = [], [], []
    for j in range(npool):
        left.append(int(rs.pool_query[j]))
        right.append(nq + j)
        grade.append(float(rs.pool_grade[j]))
    for i in range(nq):
        left.append(i)
        right.append(nq + npool + i)
        grade.append(1.0)
        for k in range(1, unrelated + 1):
            left.append(i)
            right.append(nq + int(rs.positive[(i + k) % nq]))
            grade.append(0.0)
    return torch.tensor(left), torch.tensor(right), torch.tensor(grade, dtype=torch.float64)


def pair_cosines(emb: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Cosine similarity (M,) float64 of the rows ``left`` and ``right`` (int (M,)) of emb (N, D)."""
    e = torch.nn.functional.normalize(emb.double(), dim=-1)
    return (e[left] * e[right]).sum(1)


def _average_ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks 1..n of x (1-D), tied values sharing the mean of their ranks."""
    values, inverse, counts = torch.unique(x, sorted=True, return_inverse=True, return_counts=True)
    last = torch.cumsum(counts, 0).double()
    return (last - (counts.double() - 1) / 2)[inverse]


def spearman(a, b) -> float:
    """Spearman rank correlation in [-1, 1] of two equally long 1-D sequences (n >= 2, ties get average
    ranks, as scipy.stats.spearmanr). NaN if either is constant."""
    a, b = torch.as_tensor(a, dtype=torch.float64).flatten(), torch.as_tensor(b, dtype=torch.float64).flatten()
    if a.shape != b.shape or a.numel() < 2:
        raise ValueError(f"a and b must have the same length >= 2, got {a.numel()} and {b.numel()}")
    ra, rb = _average_ranks(a), _average_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = float(ra.norm() * rb.norm())
    return float((ra * rb).sum()) / den if den > 0 else float("nan")


def evaluate(emb: torch.Tensor, rs: RetrievalSet, ref: torch.Tensor | None = None, seed: int = 0) -> dict:
    """Every score of one model: emb (len(rs.texts), D) its embeddings of ``rs.texts``; ref the same for
    the fp32 model (optional). Returns :func:`scores`' dict plus "swap" (:func:`swap_accuracy`),
    "graded" (Spearman with the graded pairs) and, with ``ref``, "fp32_spearman": Spearman of the
    model's query-pool cosine similarities (Q x P values) with the fp32 model's."""
    q, p, s = rs.split(emb)
    out = scores(ranks(q, p, rs.positive), seed=seed)
    out["swap"] = swap_accuracy(q, p, s, rs.positive)
    left, right, grade = graded_pairs(rs)
    out["graded"] = spearman(pair_cosines(emb, left, right), grade)
    if ref is not None:
        rq, rp, _ = rs.split(ref)
        out["fp32_spearman"] = spearman(_cos(q, p), _cos(rq, rp))
    return out


def subset(rs: RetrievalSet, ids) -> tuple[RetrievalSet, torch.Tensor]:
    """The events ``ids`` of ``rs`` alone (each query with its own pool sentences and swap; the other
    events' sentences leave the pool): (sub, index), with ``index`` int64 (len(sub.texts),) such that
    ``emb[index]`` are the embeddings of ``sub.texts`` from the embeddings ``emb`` of ``rs.texts``.
    ids: distinct query indices in [0, len(rs.queries)), in the order wanted."""
    ids = [int(i) for i in ids]
    nq, npool = len(rs.queries), len(rs.pool)
    if not ids or len(set(ids)) != len(ids) or min(ids) < 0 or max(ids) >= nq:
        raise ValueError(f"ids must be distinct query indices in [0, {nq}), got {len(ids)} ids")
    new = {q: i for i, q in enumerate(ids)}
    pool_idx = [j for j in range(npool) if int(rs.pool_query[j]) in new]
    where = {j: k for k, j in enumerate(pool_idx)}
    sub = RetrievalSet(tuple(rs.queries[i] for i in ids), tuple(rs.pool[j] for j in pool_idx),
                       torch.tensor([new[int(rs.pool_query[j])] for j in pool_idx]),
                       tuple(rs.pool_kind[j] for j in pool_idx), rs.pool_grade[pool_idx].clone(),
                       torch.tensor([where[int(rs.positive[i])] for i in ids]), tuple(rs.swaps[i] for i in ids))
    index = torch.tensor(ids + [nq + j for j in pool_idx] + [nq + npool + i for i in ids])
    return sub, index


def val_eval_split(rs: RetrievalSet) -> tuple[tuple[RetrievalSet, torch.Tensor], tuple[RetrievalSet, torch.Tensor]]:
    """The deterministic validation/evaluation split of chapter 6's decisions: events 0, 1, 4, 5, 8, 9, ...
    validate, events 2, 3, 6, 7, ... evaluate, each half with only its own pool sentences (no sentence in
    both). Not even/odd: the file alternates the kind of paraphrase (the passive voice for even events, a
    synonym with the time phrase moved for odd ones, ``data/build_retrieval.py``), so each half gets as many
    of each. Returns (val, eval), each a :func:`subset` result (sub, index)."""
    n = len(rs.queries)
    return subset(rs, [i for i in range(n) if i % 4 < 2]), subset(rs, [i for i in range(n) if i % 4 >= 2])


__all__ += ["evaluate", "subset", "val_eval_split"]
