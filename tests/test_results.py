"""Results records: validation, the table, the assembled page."""
import json

import pytest

from course_lib import results

REC = {"name": "baseline", "accuracy": 0.98, "size_bytes": 1000, "params": 10, "nonzero": 10,
       "macs": 100, "latency_ms": 2.0}


def test_write_and_assemble(tmp_path):
    recs = [REC, {**REC, "name": "half", "size_bytes": 500, "latency_ms": 1.0, "method": "x"}]
    p = results.write_results("01_demo", recs, root=tmp_path / "results")
    assert json.loads(p.read_text()) == recs
    page = results.assemble(tmp_path / "results", tmp_path / "results.md").read_text()
    assert "## 01_demo" in page and "| half | 98.00% |" in page and "| 2.0 | 2.00 |" in page


@pytest.mark.parametrize("bad,match", [
    ([], "empty"),
    ([{**REC, "name": "x"}], "baseline"),
    ([REC, REC], "unique"),
    ([{k: v for k, v in REC.items() if k != "macs"}], "misses field 'macs'"),
    ([{**REC, "accuracy": 98.0}], "accuracy=98.0"),
    ([{**REC, "size_bytes": 1.5}], "size_bytes"),
    ([{**REC, "latency_ms": -1}], "latency_ms"),
])
def test_validation_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        results.validate_records(bad)


def test_format_table_ratios():
    t = results.format_table([REC, {**REC, "name": "small", "size_bytes": 250, "latency_ms": 0.5}])
    assert t.splitlines()[0].endswith("| x smaller | x faster |")
    assert t.splitlines()[-1].endswith("| 4.0 | 4.00 |")
