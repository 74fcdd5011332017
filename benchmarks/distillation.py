"""Chapter 4's targets, measured as the chapter measures them (``make bench``).

The 80x smaller student (``recipes.CH4_STUDENT``) is trained from scratch and by distillation for every
budget of ``recipes.CH4_BUDGETS`` over ``recipes.SEEDS``; the budget is chosen on the validation split by
``distillation.choose_budget`` (fixed in advance, favours neither method); the test split is read once, at
that budget, for scratch, distilled and the label-smoothing control, as paired differences per seed
(``stats.paired_over_seeds``: intervals over seeds and over test images). The gains are *reported* whatever
their sign (the chapter's target says so); the omitted-digit experiment (Hinton et al. 2015, section 3) is a
target: after a bias raise chosen on validation, the distilled student that never saw a 3 recognises most 3s.
"""
from __future__ import annotations

import torch

from course_lib import recipes, stats
from course_lib.distillation import (TeacherCache, choose_bias_shift, choose_budget, drop_classes, evaluate_runs,
                                     over_seeds, shift_class_bias)
from course_lib.models import LeNet5
from course_lib.training import correct

from .targets import Target


def measure_ch4_targets(s, base, quick: bool = False) -> tuple[list, dict]:
    """(targets, {"scratch", "kd"}: the seed-0 students at the chosen budget) for the splits ``s`` and the
    teacher ``base``. quick: budgets (1, 2), one seed, for the smoke test. Trains on one thread, as the
    chapter does (another thread count rounds differently and gives other students)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _measure(s, base, quick)
    finally:
        torch.set_num_threads(threads)


def _measure(s, base, quick: bool) -> tuple[list, dict]:
    seeds = recipes.SEEDS[:1] if quick else recipes.SEEDS
    budgets = (1, 2) if quick else recipes.CH4_BUDGETS
    student_epochs = 1 if quick else recipes.STUDENT_EPOCHS
    cached = TeacherCache(base)
    of_seeds = f"mean of {len(seeds)} seed{'s' if len(seeds) > 1 else ''}"

    def make():
        return LeNet5(s.input_shape[0], s.num_classes, input_size=s.input_shape[1], **recipes.CH4_STUDENT)

    def trainer(method, epochs, data=s.train):
        """(model, seed) -> the model trained by the chapter's recipe for ``method`` on ``data``."""
        if method == "kd":
            return lambda m, sd: recipes.distill_student(m, cached, data, epochs=epochs, seed=sd)
        if method == "scratch":
            return lambda m, sd: recipes.scratch_student(m, data, epochs=epochs, seed=sd)
        return lambda m, sd: recipes.smoothed_student(m, data, epochs=epochs, seed=sd)

    curve = {(m, e): over_seeds(make, trainer(m, e), seeds, s.val) for m in ("scratch", "kd") for e in budgets}
    chosen = choose_budget({m: {e: curve[m, e]["accs"] for e in budgets} for m in ("scratch", "kd")})
    test = {m: evaluate_runs(curve[m, chosen]["models"], seeds, s.test) for m in ("scratch", "kd")}
    test["label-smoothing"] = over_seeds(make, trainer("label-smoothing", chosen), seeds, s.test)
    students = {"scratch": test["scratch"]["models"][0], "kd": test["kd"]["models"][0], "epochs": chosen}
    found = []
    val_note = "; ".join(f"{m} " + ", ".join(f"{e} ep {100 * sum(curve[m, e]['accs']) / len(seeds):.2f}"
                                              for e in budgets) for m in ("scratch", "kd"))
    for a, b in (("kd", "scratch"), ("kd", "label-smoothing")):
        cmp = stats.paired_over_seeds(test[a]["correct"], test[b]["correct"])
        found.append(Target(
            "04", f"distilled vs {b}, {chosen} ep (chosen on val)", "reported whatever the sign",
            f"{100 * cmp['diff']:+.2f} pt ({of_seeds})",
            f"seeds [{100 * cmp['seed_ci'][0]:+.2f}, {100 * cmp['seed_ci'][1]:+.2f}], images "
            f"[{100 * cmp['image_ci'][0]:+.2f}, {100 * cmp['image_ci'][1]:+.2f}] pt", True,
            f"{cmp['verdict']}; validation accuracy by budget: {val_note}", reported=True))

    omit = 3 if s.num_classes > 3 else 0
    transfer = drop_classes(s.train, [omit])
    r = over_seeds(make, trainer("kd", student_epochs, transfer), seeds, s.test)
    shifts = [choose_bias_shift(m, s.val, omit)[0] for m in r["models"]]
    is_omit = s.test.tensors[1] == omit
    if not bool(is_omit.any()):  # a tiny smoke-test sample may hold none
        return found, students
    before = [float(c[is_omit].float().mean()) for c in r["correct"]]
    after = [float(correct(shift_class_bias(m, omit, d), s.test)[is_omit].float().mean())
             for m, d in zip(r["models"], shifts)]
    summ = stats.seed_summary(after)
    found.append(Target(
        "04", f"omitted digit {omit}: distilled student after the bias raise", f"recognises most test {omit}s (> 50%)",
        f"{100 * summ['mean']:.1f}% of the {int(is_omit.sum())} test {omit}s ({of_seeds})",
        f"seeds [{100 * max(0.0, summ['ci'][0]):.1f}, {100 * min(1.0, summ['ci'][1]):.1f}]%", summ["mean"] > 0.5,
        f"before the raise {', '.join(f'{100 * a:.1f}' for a in before)}%; raises chosen on val "
        f"{', '.join(f'{d:g}' for d in shifts)}"))
    return found, students
