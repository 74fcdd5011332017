"""Ship the models that the notebooks train for the course's own dataset, so that a fresh clone loads them
instead of training them: ``data/trained/<key>.safetensors`` (the float32 weights, no pickle) and
``<key>.json`` (recipe, seed, training history), with ``data/trained/SHA256SUMS``.

What ships is exactly what the notebooks ask for: run them with an empty cache and the shipped weights off
(so every model they need is trained from its recipe on this machine), in full and in lab mode, then copy
that cache here:

    export COURSE_CACHE=/tmp/fresh-cache COURSE_SHIPPED_WEIGHTS=0
    python scripts/run_notebooks.py --out /tmp/executed notebooks/0[0-5]_*.ipynb notebooks/08_*.ipynb
    COURSE_LAB_MODE=1 python scripts/run_notebooks.py --out /tmp/executed-lab notebooks/0[0-5]_*.ipynb notebooks/08_*.ipynb
    python scripts/ship_trained.py --cache /tmp/fresh-cache

Copied: every ``baseline_<dataset>_*`` (baselines, from-scratch controls, chapter 4's teachers),
``student_<dataset>_*`` (chapter 4's students, ``recipes.cached_student``) and ``recipe_<dataset>_*`` (chapter 5's
prunings and latency models with their controls, ``recipes.cached_recipe``; chapter 8 loads the seed-0 latency
model) with both its ``.pt`` and ``.json``; the folder is rewritten, so models the notebooks no longer
ask for disappear. ``--keep`` adds to what ships instead (after re-running one chapter alone into an empty cache
with the shipped weights on: its new models are added and SHA256SUMS is rewritten over everything). The keys are the cache's (a hash of the
recipe), so a changed recipe never loads an old model: ``tests/test_training.py`` checks every shipped key
against the current recipe and the checksums.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from course_lib.data import sha256_file  # noqa: E402
from course_lib.training import write_shipped  # noqa: E402

OUT = ROOT / "data" / "trained"


def shippable(cache: Path, dataset: str = "mnist5k") -> list[Path]:
    """The .pt files in ``cache`` to ship: ``baseline_<dataset>_*``, ``student_<dataset>_*`` and
    ``recipe_<dataset>_*`` with a .json."""
    found = [p for kind in ("baseline", "student", "recipe") for p in sorted(cache.glob(f"{kind}_{dataset}_*.pt"))]
    return [p for p in found if p.with_suffix(".json").is_file()]


def ship(cache: Path, out: Path = OUT, dataset: str = "mnist5k", keep: bool = False) -> list[str]:
    """Rewrite ``out`` from ``cache`` (``keep``: add to what ``out`` holds); returns the keys copied."""
    files = shippable(cache, dataset)
    if not files:
        raise SystemExit(f"no baseline_{dataset}_*.pt, student_{dataset}_*.pt or recipe_{dataset}_*.pt with its "
                         f".json in {cache}")
    out.mkdir(parents=True, exist_ok=True)
    for old in [] if keep else [*out.glob("*.safetensors"), *out.glob("*.json")]:
        old.unlink()
    provenance = {"torch": torch.__version__, "python": platform.python_version(),
                  "machine": platform.machine(), "system": platform.system()}
    for pt in files:
        state = torch.load(pt, map_location="cpu", weights_only=True)
        info = json.loads(pt.with_suffix(".json").read_text())
        write_shipped(state, {**info, "trained_with": provenance}, pt.stem, out)
    lines = [f"{sha256_file(f)}  {f.name}" for f in sorted([*out.glob("*.safetensors"), *out.glob("*.json")])]
    (out / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    return [p.stem for p in files]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", type=Path, required=True, help="the cache the notebooks filled (COURSE_CACHE)")
    ap.add_argument("--out", type=Path, default=OUT, help="where to write (default: data/trained)")
    ap.add_argument("--dataset", default="mnist5k", help="the dataset whose models ship (default: mnist5k)")
    ap.add_argument("--keep", action="store_true", help="add to what the folder ships instead of rewriting it")
    a = ap.parse_args(argv)
    keys = ship(a.cache, a.out, a.dataset, a.keep)
    size = sum(f.stat().st_size for f in a.out.iterdir())
    print(f"shipped {len(keys)} models, {size / 2**20:.2f} MiB, to {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
