"""Build the character corpus of chapter 07 from the Python standard library's own source.

Usage (from the repository root)::

    .venv/bin/python scripts/build_corpus.py            # writes data/pystdlib_*.txt.xz and the manifest
    .venv/bin/python scripts/build_corpus.py --out DIR  # somewhere else

What it takes: the pure-Python ``.py`` files of the running interpreter's ``Lib/`` directory
(``sysconfig.get_paths()["stdlib"]``), minus tests (``test/``, ``tests/``, ``test_*.py``), ``idlelib``,
``lib2to3``, ``turtledemo``, ``encodings`` (codec tables, not code), ``site-packages`` and
``__pycache__``. A file is kept only if every character is in the course's vocabulary (printable
ASCII 32..126 plus ``"\\n"``): a file holding a tab, a carriage return or any non-ASCII character is
**excluded whole** (never edited line by line), and so are files over 60,000 characters (so that no
single module dominates a split).

How it splits: BY FILE. The candidates are ordered by the SHA-256 of their path relative to
``Lib/`` (a fixed order that does not depend on the file system), then taken in that order into
``heldout`` until it holds >= 200,000 characters, then into ``train`` until it holds >= 2,000,000
characters; the rest are not used. Inside each split the files are sorted by path and concatenated,
each preceded by a header line ``# file: <path>`` and followed by a blank line.

Outputs: ``pystdlib_train.txt.xz``, ``pystdlib_heldout.txt.xz`` (lzma, preset 9, deterministic) and
``pystdlib_manifest.json`` (Python version, the rules above, and every file with its split, size
and SHA-256). The shipped files were built with Python 3.11.7; another patch version has slightly
different sources and so gives a different corpus: the shipped files are the reference, and
``course_lib.lm.load_corpus`` verifies them against ``data/SHA256SUMS``.

The Python source is Copyright (c) Python Software Foundation, used under the PSF License Agreement.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import sys
import sysconfig
from pathlib import Path

EXCLUDED_DIRS = {"test", "tests", "idlelib", "lib2to3", "turtledemo", "encodings", "site-packages",
                 "__pycache__"}
MAX_FILE_CHARS = 60_000
HELDOUT_CHARS = 200_000
TRAIN_CHARS = 2_000_000
VOCAB = set(chr(c) for c in range(32, 127)) | {"\n"}


def candidates(lib: Path) -> list[tuple[str, str]]:
    """(relative path, text) of every usable file under ``lib``, sorted by path."""
    out = []
    for p in sorted(lib.rglob("*.py")):
        rel = p.relative_to(lib).as_posix()
        parts = rel.split("/")
        if any(d in EXCLUDED_DIRS for d in parts[:-1]) or parts[-1].startswith("test_"):
            continue
        if parts[-1] == "__init__.py" and p.stat().st_size < 200:
            continue  # near-empty package markers carry nothing
        try:
            text = p.read_bytes().decode("ascii")
        except UnicodeDecodeError:
            continue
        if len(text) > MAX_FILE_CHARS or not text.strip() or set(text) - VOCAB:
            continue
        out.append((rel, text))
    return out


def split(files: list[tuple[str, str]]) -> dict[str, list[tuple[str, str]]]:
    """Assign files to heldout then train, in SHA-256-of-path order, until each has its size."""
    order = sorted(files, key=lambda f: hashlib.sha256(f[0].encode()).hexdigest())
    parts = {"heldout": [], "train": []}
    sizes = {"heldout": 0, "train": 0}
    for rel, text in order:
        name = "heldout" if sizes["heldout"] < HELDOUT_CHARS else "train"
        if name == "train" and sizes["train"] >= TRAIN_CHARS:
            break
        parts[name].append((rel, text))
        sizes[name] += len(text)
    return {k: sorted(v) for k, v in parts.items()}


def render(files: list[tuple[str, str]]) -> str:
    """Concatenate files, each behind a '# file: <path>' header and followed by a blank line."""
    return "".join(f"# file: {rel}\n{text.rstrip(chr(10))}\n\n" for rel, text in files)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "data")
    args = ap.parse_args(argv)
    lib = Path(sysconfig.get_paths()["stdlib"])
    files = candidates(lib)
    parts = split(files)
    args.out.mkdir(parents=True, exist_ok=True)
    manifest = {
        "python_version": sys.version,
        "source": "the Python standard library (Lib/) of the interpreter above; "
                  "Copyright (c) Python Software Foundation, PSF License Agreement",
        "rules": {"excluded_dirs": sorted(EXCLUDED_DIRS), "excluded_names": "test_*.py",
                  "vocabulary": "printable ASCII 32..126 and newline; files with any other character "
                                "(tabs included) are excluded whole",
                  "max_file_chars": MAX_FILE_CHARS, "heldout_chars": HELDOUT_CHARS,
                  "train_chars": TRAIN_CHARS,
                  "order": "sha256 of the path relative to Lib/, heldout filled first"},
        "candidates": len(files),
        "files": [],
    }
    for name in ("train", "heldout"):
        text = render(parts[name])
        assert not set(text) - VOCAB
        blob = lzma.compress(text.encode("ascii"), format=lzma.FORMAT_XZ, preset=9)
        (args.out / f"pystdlib_{name}.txt.xz").write_bytes(blob)
        manifest[f"{name}_chars"] = len(text)
        manifest[f"{name}_sha256_text"] = hashlib.sha256(text.encode()).hexdigest()
        for rel, t in parts[name]:
            manifest["files"].append({"split": name, "path": rel, "chars": len(t),
                                      "sha256": hashlib.sha256(t.encode()).hexdigest()})
        print(f"{name}: {len(parts[name])} files, {len(text):,} characters, {len(blob):,} bytes xz")
    (args.out / "pystdlib_manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"{len(files)} candidate files in {lib} (Python {sys.version.split()[0]}); wrote {args.out}")


if __name__ == "__main__":
    main()
