"""Knowledge distillation: Hinton et al.'s loss, a training loop for students, FitNets hints.

Convention (Hinton, Vinyals & Dean, 2015), for logits ``s`` (student) and ``t`` (teacher),
temperature ``T > 0`` and mixing weight ``alpha`` in [0, 1]::

    kd_loss = alpha * T**2 * KL( softmax(t / T) || softmax(s / T) ) + (1 - alpha) * CE(s, y)

The KL term is summed over classes and averaged over the batch ("batchmean"), the
cross-entropy is the usual mean over the batch at temperature 1. ``alpha`` weighs the
*soft* (teacher) term: ``alpha=1`` is pure distillation, ``alpha=0`` is plain training.
The factor ``T**2`` keeps the soft term's gradient the same order of magnitude when
``T`` changes: the gradient of the KL term with respect to ``s`` is
``(softmax(s/T) - softmax(t/T)) / T``, which shrinks like ``1/T**2`` for large T.
"""
from __future__ import annotations

import hashlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from . import _validate as V
from .stats import seed_summary
from .training import History, fit, get_device

__all__ = ["soften", "kd_loss", "hint_loss", "FeatureHint", "TeacherCache", "distill", "teacher_probabilities",
           "pseudo_label_dataset", "labelled_subset", "over_seeds", "stratified_halves", "drop_classes",
           "shift_class_bias", "choose_bias_shift", "choose_budget", "evaluate_runs"]
# plot_soft_targets moved to plots.soft_targets.


def soften(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Softened probabilities softmax(logits / T) over the last dimension.

    logits: (..., C) float tensor. temperature: T > 0 (1 = the ordinary softmax; larger T
    spreads the mass over the classes, T -> infinity gives the uniform distribution).
    Returns a tensor of logits' shape and dtype whose last dimension sums to 1.
    """
    t = V.number_in("temperature", temperature, 0, None, lo_open=True)
    if not torch.is_tensor(logits) or logits.dim() < 1:
        raise ValueError(f"logits must be a tensor with a class dimension, got {type(logits).__name__}")
    return torch.softmax(logits / t, dim=-1)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None,
            temperature: float = 4.0, alpha: float = 0.9, ignore_index: int = -100) -> torch.Tensor:
    """Hinton's distillation loss: alpha * T^2 * KL(p_t^T || p_s^T) + (1 - alpha) * CE(s, labels).

    student_logits, teacher_logits: (N, C) float tensors of the same shape (the teacher's are
    treated as constants: they are detached). labels: int64 (N,) in [0, C), or ``ignore_index``
    for examples without a label (they then get only the soft term); may be None only when
    alpha == 1. temperature: T > 0. alpha in [0, 1] weighs the soft term (1 = pure distillation).
    KL is summed over classes and averaged over the N examples; CE is averaged over the labelled
    examples (0 if there are none). Returns a scalar tensor.
    """
    t = V.number_in("temperature", temperature, 0, None, lo_open=True)
    a = V.number_in("alpha", alpha, 0, 1)
    for name, v in (("student_logits", student_logits), ("teacher_logits", teacher_logits)):
        if not torch.is_tensor(v) or v.dim() != 2:
            shape = tuple(v.shape) if torch.is_tensor(v) else type(v).__name__
            raise ValueError(f"{name} must be a 2-D tensor (N, C), got {shape}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student_logits shape {tuple(student_logits.shape)} and teacher_logits shape "
                         f"{tuple(teacher_logits.shape)} must be equal (N, C)")
    n = student_logits.shape[0]
    log_p_s = F.log_softmax(student_logits / t, dim=1)
    log_p_t = F.log_softmax(teacher_logits.detach().to(student_logits.dtype) / t, dim=1)
    soft = (log_p_t.exp() * (log_p_t - log_p_s)).sum(1).mean() * (t * t)
    if a == 1.0 and labels is None:
        return soft
    if labels is None:
        raise ValueError(f"labels=None is only allowed with alpha=1 (got alpha={alpha!r})")
    if not torch.is_tensor(labels) or labels.shape != (n,):
        shape = tuple(labels.shape) if torch.is_tensor(labels) else type(labels).__name__
        raise ValueError(f"labels must be a tensor of shape ({n},) to match the logits, got {shape}")
    has = labels != ignore_index
    if has.any():
        hard = F.cross_entropy(student_logits[has], labels[has])
    else:
        hard = student_logits.sum() * 0.0
    return a * soft + (1.0 - a) * hard


def hint_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor) -> torch.Tensor:
    """FitNets hint loss: mean squared error between (regressed) student and teacher features.

    Both tensors of the same shape, e.g. (N, C, H, W) or (N, D). The teacher side is detached.
    """
    if student_feat.shape != teacher_feat.shape:
        raise ValueError(f"student features {tuple(student_feat.shape)} and teacher features "
                         f"{tuple(teacher_feat.shape)} must have the same shape (add a regressor)")
    return F.mse_loss(student_feat, teacher_feat.detach())


class FeatureHint(nn.Module):
    """A FitNets-style hint: match a student layer's output to a teacher layer's output.

    Forward hooks record the outputs of ``student_layer`` and ``teacher_layer`` (module names,
    e.g. "conv2" of a LeNet5) at every forward pass. A trainable regressor maps the student's
    features to the teacher's width: a 1x1 convolution for (N, C, H, W) outputs, a linear layer
    for (N, D) outputs (Romero et al., 2015). Spatial sizes must agree. The regressor is only
    a training aid: it is discarded with the hint, so it adds nothing to the deployed student.
    Call ``remove()`` to detach the hooks when training is done.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, student_layer: str, teacher_layer: str,
                 input_shape: tuple):
        super().__init__()
        self._feats = {}
        self.student_layer, self.teacher_layer = student_layer, teacher_layer
        names = dict(student.named_modules())
        if student_layer not in names:
            raise ValueError(f"student_layer={student_layer!r} is not a module of the student "
                             f"(modules: {[n for n in names if n]})")
        tnames = dict(teacher.named_modules())
        if teacher_layer not in tnames:
            raise ValueError(f"teacher_layer={teacher_layer!r} is not a module of the teacher "
                             f"(modules: {[n for n in tnames if n]})")
        self._hooks = [names[student_layer].register_forward_hook(self._save("student")),
                       tnames[teacher_layer].register_forward_hook(self._save("teacher"))]
        dev_s = next(student.parameters()).device
        dev_t = next(teacher.parameters()).device
        with torch.no_grad():
            was_s, was_t = student.training, teacher.training
            student.eval(), teacher.eval()
            student(torch.zeros((1, *input_shape), device=dev_s))
            teacher(torch.zeros((1, *input_shape), device=dev_t))
            student.train(was_s), teacher.train(was_t)
        fs, ft = self._feats["student"].shape, self._feats["teacher"].shape
        if len(fs) != len(ft) or fs[2:] != ft[2:] or len(fs) not in (2, 4):
            self.remove()
            raise ValueError(f"cannot hint {student_layer} {tuple(fs)} with {teacher_layer} {tuple(ft)}: "
                             "need (N, C, H, W) outputs with equal H, W or (N, D) outputs")
        self.regressor = nn.Conv2d(fs[1], ft[1], 1) if len(fs) == 4 else nn.Linear(fs[1], ft[1])
        self._feats.clear()

    def _save(self, key):
        def hook(mod, inp, out):
            self._feats[key] = out
        return hook

    def loss(self) -> torch.Tensor:
        """Hint loss of the last forward passes of student and teacher (call after both)."""
        if "student" not in self._feats or "teacher" not in self._feats:
            raise RuntimeError("run the student and the teacher forward before FeatureHint.loss()")
        return hint_loss(self.regressor(self._feats["student"]), self._feats["teacher"])

    def remove(self) -> None:
        """Remove the forward hooks (the student is then an ordinary model again)."""
        for h in self._hooks:
            h.remove()
        self._hooks = []
        self._feats.clear()


class TeacherCache(nn.Module):
    """A frozen teacher that remembers its logits for every distinct input image it has seen.

    ``fit``'s random shifts of at most ``augment`` pixels produce only (2 * augment + 1)^2
    distinct versions of each training image, so across epochs, seeds and students the same
    images come back again and again: computing the teacher's logits once per distinct image
    (keyed by a 128-bit BLAKE2 digest of its float32 bytes) removes most teacher forwards.
    Returns exactly what the teacher returned the first time it saw the image. Use it only
    for logits (a ``FeatureHint`` needs real teacher forwards). ``hits`` / ``misses`` count images.
    """

    def __init__(self, teacher: nn.Module):
        super().__init__()
        self.teacher = teacher
        self._store: dict[bytes, torch.Tensor] = {}
        self.hits = 0
        self.misses = 0

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.detach().to("cpu", torch.float32).contiguous().reshape(len(x), -1).numpy()
        keys = [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in flat]
        miss = [i for i, k in enumerate(keys) if k not in self._store]
        if miss:
            was = self.teacher.training
            self.teacher.eval()
            out = self.teacher(x[miss]).detach().cpu()
            self.teacher.train(was)
            for i, row in zip(miss, out):
                self._store.setdefault(keys[i], row.clone())
        self.misses += len(miss)
        self.hits += len(keys) - len(miss)
        return torch.stack([self._store[k] for k in keys]).to(x.device)

    def __len__(self) -> int:
        return len(self._store)


def distill(teacher: nn.Module, student: nn.Module, train, val=None, epochs: int = 10,
            temperature: float = 4.0, alpha: float = 0.9, hint: FeatureHint | None = None,
            hint_weight: float = 1.0, ignore_index: int = -100, device=None, **fit_kwargs) -> History:
    """Train ``student`` in place to imitate ``teacher`` with ``kd_loss``; return the History.

    teacher: a trained model, kept frozen in eval mode (never modified). train / val: as for
    ``training.fit``; labels equal to ``ignore_index`` mark unlabelled examples (soft term only).
    temperature > 0 and alpha in [0, 1] as in ``kd_loss``. hint: an optional ``FeatureHint``
    whose loss, times ``hint_weight >= 0``, is added (its regressor is trained with the student).
    fit_kwargs go to ``training.fit`` (lr, batch_size, optimizer, schedule, augment, seed, ...).

    The teacher's logits are computed inside the loss, on the batch as the student sees it:
    ``fit`` applies its random-shift augmentation to x *before* calling the loss, so precomputed
    logits of the un-shifted images would be the wrong targets. One teacher forward per batch,
    without gradients, costs about as much as a forward of the baseline over the train set per epoch.
    """
    V.number_in("temperature", temperature, 0, None, lo_open=True)
    V.number_in("alpha", alpha, 0, 1)
    V.number_in("hint_weight", hint_weight, 0, None)
    device = get_device(device) if not isinstance(device, torch.device) else device
    was_training = teacher.training
    teacher.to(device).eval()
    params = list(student.parameters())
    if hint is not None:
        hint.to(device)
        params += list(hint.regressor.parameters())

    def loss_fn(model, x, y):
        with torch.no_grad():
            t_logits = teacher(x)
        s_logits = model(x)
        loss = kd_loss(s_logits, t_logits, y, temperature, alpha, ignore_index=ignore_index)
        if hint is not None and hint_weight > 0:
            loss = loss + hint_weight * hint.loss()
        return loss, s_logits

    try:
        hist = fit(student, train, val, epochs=epochs, loss_fn=loss_fn, params=params, device=device,
                   **fit_kwargs)
    finally:
        teacher.train(was_training)
    return hist


@torch.no_grad()
def teacher_probabilities(teacher: nn.Module, x: torch.Tensor, temperatures=(1, 2, 4, 8)) -> dict:
    """{T: softmax(teacher(x) / T)} for each temperature: (N, C) float tensors on the CPU.

    x: (N, C, H, W) images (a handful: this is for looking at dark knowledge, not for training).
    """
    was = teacher.training
    teacher.eval()
    dev = next(teacher.parameters()).device
    logits = teacher(x.to(dev)).cpu()
    teacher.train(was)
    return {t: soften(logits, t) for t in temperatures}


def over_seeds(build, train, seeds, test) -> dict:
    """Train one fresh model per seed and evaluate it: results as mean and standard deviation.

    build(): a new untrained model. train(model, seed): trains it in place. seeds: a non-empty
    sequence of ints (each run starts with ``seed_everything(seed)``, so it is reproducible).
    test: the evaluation data. Returns {"accs": [accuracy per seed in [0, 1]], "mean", "std"
    (sample standard deviation, ddof=1; 0 for one seed), "seeds": list, "models": the trained
    model of each seed, "model": the last one, "correct": per-image correctness on ``test``, bool
    (seeds, n), what ``stats.paired_over_seeds`` compares}.
    """
    from .training import seed_everything
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds is empty: give at least one seed")
    models = []
    for s in seeds:
        seed_everything(s)
        model = build()
        train(model, s)
        models.append(model)
    return evaluate_runs(models, seeds, test)


def evaluate_runs(models, seeds, test) -> dict:
    """``over_seeds``' result for models already trained (one per seed, in the order of ``seeds``),
    evaluated on ``test``: how a model trained once is read on another split (validation first, then
    the test split once, for the chosen configuration only)."""
    from .training import correct
    models, seeds = list(models), list(seeds)
    if not models or len(models) != len(seeds):
        raise ValueError(f"give one trained model per seed: {len(models)} model(s) for {len(seeds)} seed(s)")
    rows = [correct(m, test) for m in models]
    accs = [float(r.float().mean()) for r in rows]
    summ = seed_summary(accs)
    return {"accs": accs, "mean": summ["mean"], "std": summ["std"], "seeds": seeds, "models": models, "model": models[-1],
            "correct": torch.stack(rows)}


def choose_budget(val_curves: dict) -> int:
    """Chapter 4's rule, fixed before any run: the training budget (epochs) with the highest validation
    accuracy averaged over the methods compared and their seeds, so the rule favours no method; a tie
    goes to the shorter budget.

    val_curves: {method: {epochs: [validation accuracy per seed]}}, every method with the same budgets
    (positive ints) and at least one accuracy each. Returns the chosen number of epochs.
    """
    if not val_curves:
        raise ValueError("val_curves is empty: give {method: {epochs: [val accuracy per seed]}}")
    budgets = None
    for method, curve in val_curves.items():
        b = sorted(curve)
        if budgets is None:
            budgets = b
        if b != budgets or not b:
            raise ValueError(f"every method needs the same budgets: {method!r} has {b}, expected {budgets}")
        for e, accs in curve.items():
            V.positive_int(f"val_curves[{method!r}] epochs", e)
            if not len(accs):
                raise ValueError(f"val_curves[{method!r}][{e}] holds no accuracy")
    score = {e: sum(sum(c[e]) / len(c[e]) for c in val_curves.values()) / len(val_curves) for e in budgets}
    return max(budgets, key=lambda e: (score[e], -e))


def labelled_subset(labels: torch.Tensor, per_class: int, seed: int = 0) -> torch.Tensor:
    """Indices (sorted, int64) of ``per_class`` randomly chosen examples of every class.

    labels: int64 (N,). per_class >= 1 and at most the size of the smallest class.
    """
    V.positive_int("per_class", per_class)
    g = torch.Generator().manual_seed(seed)
    out = []
    for c in torch.unique(labels):
        idx = torch.nonzero(labels == c).flatten()
        if len(idx) < per_class:
            raise ValueError(f"per_class={per_class} but class {int(c)} has only {len(idx)} examples")
        out.append(idx[torch.randperm(len(idx), generator=g)[:per_class]])
    return torch.sort(torch.cat(out)).values


def pseudo_label_dataset(x: torch.Tensor, y: torch.Tensor, labelled: torch.Tensor,
                         teacher: nn.Module | None = None, ignore_index: int = -100,
                         batch_size: int = 512) -> torch.utils.data.TensorDataset:
    """A dataset over all of ``x`` keeping the true labels only at the indices ``labelled``.

    The other examples get the teacher's predicted class (hard pseudo-labels) when ``teacher``
    is given, else ``ignore_index`` (for ``distill``, which then uses only the teacher's soft
    targets on them). x: (N, C, H, W); y: int64 (N,); labelled: int64 indices into [0, N).
    """
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} examples but y has {len(y)}")
    if len(labelled) and (labelled.min() < 0 or labelled.max() >= len(y)):
        raise ValueError(f"labelled indices must be in [0, {len(y)})")
    new_y = torch.full_like(y, ignore_index)
    if teacher is not None:
        from .training import predict
        new_y = predict(teacher, x, batch_size=batch_size).to(y.dtype)
    new_y[labelled] = y[labelled]
    return torch.utils.data.TensorDataset(x, new_y)


def stratified_halves(labels: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Split example indices into two disjoint halves with the same class proportions.

    labels: int64 (N,) with N >= 2. Each class's examples are shuffled (a private generator seeded
    with ``seed``) and dealt alternately, so the halves differ in size by at most one per class.
    Returns (idx_a, idx_b): sorted int64 indices, disjoint, together all of range(N). Chapter 4 trains
    a teacher on one half and lets it label the other, so it never saw the images it labels.
    """
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1:
        raise ValueError(f"labels must be a 1-D int64 tensor of class labels, got "
                         f"{type(labels).__name__} of shape {tuple(getattr(labels, 'shape', ()))}")
    if len(labels) < 2:
        raise ValueError(f"labels must hold at least 2 examples to split in halves, got {len(labels)}")
    g = torch.Generator().manual_seed(int(seed))
    a, b = [], []
    for c in torch.unique(labels):
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        a.append(idx[0::2])
        b.append(idx[1::2])
    return torch.sort(torch.cat(a)).values, torch.sort(torch.cat(b)).values


def drop_classes(data: torch.utils.data.TensorDataset, classes) -> torch.utils.data.TensorDataset:
    """A copy of (x, y) ``data`` without the examples whose label is in ``classes`` (ints, at least one
    present in the labels): the transfer set of Hinton et al.'s omitted-digit experiment."""
    x, y = data.tensors
    classes = [int(c) for c in classes]
    present = set(torch.unique(y).tolist())
    if not classes or not set(classes) & present:
        raise ValueError(f"classes must name at least one label present in the data ({sorted(present)}), "
                         f"got {classes}")
    keep = ~torch.isin(y, torch.tensor(classes, dtype=y.dtype))
    return torch.utils.data.TensorDataset(x[keep], y[keep])


def _output_layer(model: nn.Module) -> nn.Linear:
    last = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not last or last[-1].bias is None:
        raise ValueError("the model needs a final nn.Linear layer with a bias (its logits' biases)")
    return last[-1]


def shift_class_bias(model: nn.Module, cls: int, delta: float) -> nn.Module:
    """A copy of ``model`` whose logit for class ``cls`` is raised by ``delta`` on every input (the bias of
    its last ``nn.Linear`` layer, which must produce the logits). cls in [0, classes); delta finite."""
    import copy
    layer = _output_layer(model)
    V.int_in("cls", cls, 0, layer.out_features - 1)
    V.number_in("delta", delta)
    m = copy.deepcopy(model)
    with torch.no_grad():
        _output_layer(m).bias[cls] += float(delta)
    return m.eval()


@torch.no_grad()
def choose_bias_shift(model: nn.Module, val, cls: int, shifts=None) -> tuple[float, dict]:
    """The raise of class ``cls``'s logit that maximises accuracy on ``val`` (the validation split: the
    choice is a decision, so never the test split). Hinton et al. (2015, section 3) raised the omitted 3's
    bias by 3.5 after distillation without any 3 in the transfer set.

    shifts: candidate raises (default 0 to 10 in steps of 0.25); ties go to the smallest in absolute value. Returns
    (best shift, {shift: validation accuracy}).
    """
    from .training import _as_loader, _labels
    layer = _output_layer(model)
    V.int_in("cls", cls, 0, layer.out_features - 1)
    shifts = [0.25 * i for i in range(41)] if shifts is None else [float(s) for s in shifts]
    if not shifts:
        raise ValueError("shifts must hold at least one candidate raise")
    loader = _as_loader(val, 512)
    labels = _labels(loader)
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    logits = torch.cat([model(x.to(dev)).cpu() for x, _ in loader])
    model.train(was)
    accs = {}
    for s in shifts:
        z = logits.clone()
        z[:, cls] += s
        accs[s] = (z.argmax(1) == labels).float().mean().item()
    best = max(shifts, key=lambda s: (accs[s], -abs(s)))
    return best, accs


# ---------------------------------------------------------------- sentence encoders (chapter 6)
def distill_embeddings(student: nn.Module, teacher: nn.Module, batch: dict, epochs: int = 10,
                       batch_size: int = 16, lr: float = 1e-4, seed: int = 0, token_weight: float = 1.0,
                       freeze_embeddings: bool = True) -> list[float]:
    """Distil a sentence encoder ``teacher`` into ``student`` (in place) on the unlabelled sentences of
    ``batch`` (a tokenized batch: "input_ids", "attention_mask" (N, T); both models are Hugging Face
    encoders returning ``last_hidden_state``, e.g. a BERT and a copy with fewer layers).

    Loss per mini-batch: (1 - cosine) between the student's and the teacher's mean-pooled sentence
    embeddings, plus ``token_weight`` (>= 0) x the mean squared error between their last hidden states
    on the real tokens. AdamW with learning rate ``lr`` (> 0), ``epochs`` (>= 0) passes in a random
    order drawn from ``seed`` (>= 0), mini-batches of ``batch_size`` (>= 1) sentences; the embedding
    layer is frozen unless ``freeze_embeddings=False``; dropout stays off.
    Returns the mean loss of each epoch."""
    from .models import mean_pool
    V.int_in("epochs", epochs, 0, None)
    V.positive_int("batch_size", batch_size)
    V.number_in("lr", lr, 0, None, lo_open=True)
    V.int_in("seed", seed, 0, None)
    V.number_in("token_weight", token_weight, 0, None)
    teacher.eval()
    n = batch["input_ids"].shape[0]
    with torch.no_grad():
        t_out = teacher(**batch).last_hidden_state
    g = torch.Generator().manual_seed(seed)
    if freeze_embeddings:  # the token table (11.7M values in MiniLM): frozen, it needs no optimizer state
        student.embeddings.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    history = []
    student.eval()  # dropout off: with a few hundred sentences it only adds noise to the targets
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g)
        total = 0.0
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            mb = {k: v[idx] for k, v in batch.items()}
            t = int(mb["attention_mask"].sum(1).max())  # drop columns that are padding for the whole mini-batch
            mb = {k: v[:, :t] for k, v in mb.items()}
            th = t_out[idx, :t]
            sh = student(**mb).last_hidden_state
            mask = mb["attention_mask"]
            s_emb = F.normalize(mean_pool(sh, mask), dim=-1)
            t_emb = F.normalize(mean_pool(th, mask), dim=-1)
            loss = (1 - (s_emb * t_emb).sum(-1)).mean()
            if token_weight:
                m = mask.bool()
                loss = loss + token_weight * F.mse_loss(sh[m], th[m])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        history.append(total / n)
    student.eval()
    return history
