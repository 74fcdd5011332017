"""Checkers for chapter 4 (knowledge distillation): softened softmax, KD loss, pseudo-labels."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import Wrong, checker, expect_close, expect_shape, expect_tensor

__all__ = ["check_softened_softmax", "check_kd_loss", "check_pseudo_labels"]


def _ref_soften(logits, T):
    return torch.softmax(logits / T, dim=-1)


def _ref_kd(s, t, y, T, alpha):
    kl = (_ref_soften(t, T) * (F.log_softmax(t / T, 1) - F.log_softmax(s / T, 1))).sum(1).mean()
    return alpha * T * T * kl + (1 - alpha) * F.cross_entropy(s, y)


@checker("softened softmax")
def check_softened_softmax(fn):
    """fn(logits (N, C), T) -> softmax(logits / T) over the classes, shape (N, C)."""
    g = torch.Generator().manual_seed(11)
    for n, c, T in ((5, 10, 1.0), (7, 10, 4.0), (3, 4, 0.5), (6, 7, 20.0)):
        z = torch.randn(n, c, generator=g) * 5
        got = fn(z.clone(), T)
        expect_shape(got, (n, c), f"the output for logits of shape {(n, c)}")
        if not torch.isfinite(got).all():
            raise Wrong("the output has NaN or inf values.")
        sums = got.double().sum(1)
        if not torch.allclose(sums, torch.ones_like(sums), atol=1e-5):
            if torch.allclose(got.double().sum(0), torch.ones(c, dtype=torch.float64), atol=1e-5):
                raise Wrong("each column sums to 1, not each row: take the softmax over the class "
                            "dimension (dim=-1 or dim=1), not over the batch.")
            raise Wrong("the probabilities of an example should sum to 1: did you normalise?")
        want = _ref_soften(z, T)
        if T != 1.0 and torch.allclose(got.double(), torch.softmax(z, -1).double(), atol=1e-5):
            raise Wrong(f"at T={T} you returned the ordinary softmax: divide the logits by T first.")
        if T != 1.0 and torch.allclose(got.double(), torch.softmax(z * T, -1).double(), atol=1e-5):
            raise Wrong("you multiplied the logits by T: divide them by T (a higher T must give a flatter "
                        "distribution).")
        expect_close(got, want, f"softmax(logits / T) at T={T}", atol=1e-5)
    # a huge logit must not overflow (subtract the max, or use torch.softmax)
    z = torch.tensor([[1000.0, 0.0, -1000.0]])
    got = fn(z, 1.0)
    if not torch.isfinite(got).all():
        raise Wrong("logits of size 1000 give NaN/inf: subtract each row's maximum before exp "
                    "(or use torch.softmax).")
    expect_close(got, _ref_soften(z, 1.0), "the output for logits [1000, 0, -1000]", atol=1e-5)


@checker("KD loss (Hinton)")
def check_kd_loss(fn):
    """fn(student_logits, teacher_logits, labels, T, alpha) -> scalar
    alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, labels), batch-averaged."""
    g = torch.Generator().manual_seed(23)
    soft_ce = False
    for n, c, T, alpha in ((8, 10, 4.0, 0.9), (5, 10, 2.0, 0.5), (6, 3, 1.0, 0.3), (4, 10, 8.0, 1.0),
                           (7, 10, 3.0, 0.0)):
        s = torch.randn(n, c, generator=g) * 3
        t = torch.randn(n, c, generator=g) * 3
        y = torch.randint(0, c, (n,), generator=g)
        s_ = s.clone().requires_grad_(True)
        got = fn(s_, t.clone(), y.clone(), T, alpha)
        expect_tensor(got, "the loss")
        if got.numel() != 1:
            raise Wrong(f"the loss should be a single number (a scalar), got shape {tuple(got.shape)}: "
                        "average over the batch.")
        got_v, want = got.double().reshape(()).item(), _ref_kd(s, t, y, T, alpha).item()
        # soft-target cross-entropy -sum p_t log p_s = KL(p_t || p_s) + H(p_t): the teacher's entropy
        # H(p_t) does not depend on the student, so the gradients are the same. Accepted.
        p_t = _ref_soften(t, T)
        h_t = -(p_t * F.log_softmax(t / T, 1)).sum(1).mean().item()
        want_ce = want + alpha * T * T * h_t
        if math.isclose(got_v, want, rel_tol=1e-4, abs_tol=1e-5) or \
                math.isclose(got_v, want_ce, rel_tol=1e-4, abs_tol=1e-5):
            if not got.requires_grad:
                raise Wrong("the loss has no gradient: the student's logits were detached (.detach(), "
                            ".item(), .numpy() or torch.no_grad()), so backward() cannot train the student.")
            if not math.isclose(got_v, want, rel_tol=1e-4, abs_tol=1e-5):
                soft_ce = True
            continue
        kl = _ref_kd(s, t, y, T, 1.0).item() / (T * T)
        ce = F.cross_entropy(s, y).item()
        kl_rev = (_ref_soften(s, T) * (F.log_softmax(s / T, 1) - F.log_softmax(t / T, 1))).sum(1).mean().item()
        guesses = {
            "the soft term misses the factor T^2 (without it the soft gradients shrink like 1/T^2)":
                alpha * kl + (1 - alpha) * ce,
            "the KL divergence points the wrong way: it is KL(teacher || student), "
            "sum over classes of p_teacher * log(p_teacher / p_student)":
                alpha * T * T * kl_rev + (1 - alpha) * ce,
            "alpha weighs the wrong term: alpha multiplies the soft (teacher) term, 1 - alpha the "
            "cross-entropy": (1 - alpha) * T * T * kl + alpha * ce,
            "the KL divergence is summed over the batch: average it over the examples (batchmean)":
                alpha * T * T * kl * n + (1 - alpha) * ce,
            "the KL divergence is averaged over classes too (F.kl_div with reduction=\"mean\" divides by "
            "N * C): sum over classes, average over examples (reduction=\"batchmean\")":
                alpha * T * T * kl / c + (1 - alpha) * ce,
            "the soft term misses the factor T^2, and the KL is averaged over classes too (F.kl_div with "
            "reduction=\"mean\"): use reduction=\"batchmean\" and multiply by T^2":
                alpha * kl / c + (1 - alpha) * ce,
            "the cross-entropy uses the softened student logits: the hard term is at temperature 1":
                alpha * T * T * kl + (1 - alpha) * F.cross_entropy(s / T, y).item(),
            "the cross-entropy uses the softened student logits (the hard term is at temperature 1)":
                want_ce - (1 - alpha) * ce + (1 - alpha) * F.cross_entropy(s / T, y).item(),
            "the soft term (a soft-target cross-entropy) misses the factor T^2 (without it the soft "
            "gradients shrink like 1/T^2)":
                alpha * (kl + h_t) + (1 - alpha) * ce,
        }
        for msg, v in guesses.items():
            if math.isclose(got_v, v, rel_tol=1e-4, abs_tol=1e-5):
                raise Wrong(f"{msg} (T={T}, alpha={alpha}).")
        raise Wrong(f"at T={T}, alpha={alpha} the loss is {got_v:.5f}, expected {want:.5f}.")
    # identical logits and alpha = 1: exactly zero
    s = torch.randn(4, 10, generator=g)
    z = fn(s.clone(), s.clone(), torch.zeros(4, dtype=torch.long), 4.0, 1.0)
    if soft_ce:
        h = -(_ref_soften(s, 4.0) * F.log_softmax(s / 4.0, 1)).sum(1).mean().item() * 16.0
        if abs(float(z) - h) > 1e-4:
            raise Wrong(f"with identical logits and alpha=1 the soft-target cross-entropy should be "
                        f"T^2 times the teacher's entropy, {h:.4g}; got {float(z):.4g}.")
        print("Note: you wrote the soft term as the soft-target cross-entropy -sum p_t log p_s. It "
              "equals the KL divergence plus the teacher's entropy, a constant that does not "
              "depend on the student: same gradients, same training; the loss value is just "
              "shifted (and is not 0 when the student matches the teacher).")
        return
    if abs(float(z)) > 1e-5:
        raise Wrong(f"with identical logits and alpha=1 the loss should be 0, got {float(z):.3g}.")


@checker("pseudo-labels")
def check_pseudo_labels(fn):
    """fn(teacher_logits (N, C), labels (N,), labelled (N,) bool) -> int64 (N,) labels: the true
    label where labelled is True, the teacher's most likely class elsewhere."""
    g = torch.Generator().manual_seed(5)
    for n, c in ((20, 10), (9, 3)):
        t = torch.randn(n, c, generator=g)
        y = torch.randint(0, c, (n,), generator=g)
        m = torch.rand(n, generator=g) < 0.3
        m[0], m[1] = True, False
        got = fn(t.clone(), y.clone(), m.clone())
        expect_shape(got, (n,), "the labels")
        if got.dtype != torch.long:
            raise Wrong(f"the labels have dtype {got.dtype}: cross-entropy needs int64 class indices "
                        "(use .argmax, which returns int64).")
        want = torch.where(m, y, t.argmax(1))
        if torch.equal(got, want):
            continue
        if torch.equal(got, t.argmax(1)):
            raise Wrong("you returned the teacher's labels everywhere: keep the true label where "
                        "`labelled` is True.")
        if torch.equal(got, torch.where(m, t.argmax(1), y)):
            raise Wrong("the mask is the wrong way round: the true label goes where `labelled` is True.")
        if torch.equal(got, torch.where(m, y, t.argmin(1))):
            raise Wrong("the teacher's label is its most likely class: argmax, not argmin.")
        if got.shape == want.shape and torch.equal(got[m], y[m]) and not torch.equal(got[~m], want[~m]):
            raise Wrong("the unlabelled examples should get the teacher's most likely class "
                        "(argmax over the classes, dim=1).")
        bad = int((got != want).sum())
        raise Wrong(f"{bad} of {n} labels differ from the expected ones.")
