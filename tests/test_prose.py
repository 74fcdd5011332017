"""Prose that cannot drift: a Markdown cell may not quote a measured-looking number.

A sentence quoting a measurement ("2.4x faster", "98.40%") must be printed by code from the run,
so it is right on every machine. Plain Markdown states what holds whatever the run (definitions,
maths, design). A Markdown cell whose numbers are theory or exact facts (the LeNet's 431,080
parameters, "a 4x smaller file" from 32 -> 8 bits) says so with the tag ``theory`` (jupytext:
``# %% [markdown] tags=["theory"]``) or an HTML comment ``<!-- theory -->`` in the cell.
"""
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))

# a decimal ratio ("2.4x", "1.9 ×", "15.6-fold") or a percentage with decimals ("98.40%", "0.3 %"),
# outside LaTeX maths ($...$) and code spans (`...`)
MEASURED = re.compile(r"(?<![\w.])\d+\.\d+\s?(?:x|×|-fold)(?![\w])|(?<![\w.])\d+\.\d+\s?%")
STRIP = re.compile(r"\$\$.*?\$\$|\$[^$]*\$|`[^`]*`", re.S)


def measured_numbers(markdown: str) -> list[str]:
    """The measured-looking numbers in a Markdown text (maths and code spans excluded)."""
    return MEASURED.findall(STRIP.sub(" ", markdown))


def is_theory(cell: dict) -> bool:
    return "theory" in cell.get("metadata", {}).get("tags", []) or "<!-- theory -->" in "".join(cell["source"])


@pytest.mark.parametrize("text, hits", [
    ("int8 is 2.4x faster", ["2.4x"]),
    ("98.40% on test", ["98.40%"]),
    ("a 1.9 × gain and 15.6-fold", ["1.9 ×", "15.6-fold"]),
    ("4x smaller, 93% of the weights, 20 epochs", []),
    ("maths $s = 0.5x$ and code `lr=2.5e-3` and `1.5x`", []),
    ("version 2.13.0 and step 0.5", []),
])
def test_measured_numbers_detects_ratios_and_decimal_percentages(text, hits):
    assert measured_numbers(text) == hits


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_markdown_quotes_no_measured_number(nb):
    cells = json.loads(nb.read_text())["cells"]
    bad = [(i, measured_numbers("".join(c["source"]))) for i, c in enumerate(cells)
           if c["cell_type"] == "markdown" and not is_theory(c)]
    bad = [(i, h) for i, h in bad if h]
    assert not bad, (f"{nb.name}: Markdown cells quote measured-looking numbers {bad} (cell index, numbers); "
                     "print them from the run, or tag the cell 'theory' if they hold whatever the run")
