"""Results records: the one builder, validation, the table, the assembled page."""
import json

import pytest

from course_lib import records as results

REC = {"name": "baseline", "metric": "accuracy", "accuracy": 0.98, "accuracy_std": 0.0,
       "accuracy_ci": [0.9693, 0.9872], "seeds": 1, "n_test": 1000, "size_bytes": 1000, "params": 10, "nonzero": 10,
       "macs": 100, "latency_ms": 2.0}


def test_write_and_assemble(tmp_path):
    recs = [REC, {**REC, "name": "half", "size_bytes": 500, "latency_ms": 1.0, "method": "x"}]
    p = results.write_results("01_demo", recs, root=tmp_path / "results")
    assert json.loads(p.read_text()) == recs
    page = results.assemble(tmp_path / "results", tmp_path / "results.md").read_text()
    assert "## 01_demo" in page and "| half | 98.00% [96.9, 98.7] |" in page and "| 2.0 | 2.00 |" in page


def test_the_page_says_what_a_chapters_accuracy_measures(tmp_path):
    other = {**REC, "metric": "next-character accuracy", "perplexity": 3.25}
    results.write_results("07_demo", [other, {**other, "name": "w4"}], root=tmp_path / "results")
    results.write_results("01_demo", [REC], root=tmp_path / "results")
    page = results.assemble(tmp_path / "results", tmp_path / "results.md").read_text()
    ch7 = page.split("## 07_demo")[1]
    assert "`accuracy` here is: next-character accuracy." in ch7 and "| perplexity |" in ch7 and "3.250" in ch7
    assert "`accuracy` here is" not in page.split("## 07_demo")[0]


def test_lab_mode_results_never_reach_the_results_page(tmp_path):
    root = tmp_path / "results"
    results.write_results("01_demo", [REC], root=root)
    lab = results.write_results("01_demo", [{**REC, "accuracy": 0.5}], root=root, lab_mode=True)
    assert lab == root / "lab" / "01_demo.json" and json.loads((root / "01_demo.json").read_text()) == [REC]
    page = results.assemble(root, tmp_path / "results.md").read_text()
    assert "98.00%" in page and "50.00%" not in page


@pytest.mark.parametrize("bad,match", [
    ([], "empty"),
    ([{**REC, "name": "x"}], "baseline"),
    ([REC, REC], "unique"),
    ([{k: v for k, v in REC.items() if k != "macs"}], "misses field 'macs'"),
    ([{**REC, "accuracy": 98.0}], "accuracy=98.0"),
    ([{**REC, "size_bytes": 1.5}], "size_bytes"),
    ([{**REC, "latency_ms": -1}], "latency_ms"),
    ([{**REC, "accuracy_ci": [0.99, 0.98]}], "accuracy_ci"),
    ([{**REC, "seeds": 0}], "seeds=0"),
    ([{**REC, "n_test": None}], "n_test"),
    ([{**REC, "accuracy_std": -0.1}], "accuracy_std"),
])
def test_validation_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        results.validate_records(bad)


def test_format_table_ratios():
    t = results.format_table([REC, {**REC, "name": "small", "size_bytes": 250, "latency_ms": 0.5}])
    assert t.splitlines()[0].endswith("| x smaller | x faster |")
    assert t.splitlines()[-1].endswith("| 4.0 | 4.00 |")


def _tiny():
    import torch
    from torch.utils.data import TensorDataset

    from course_lib.models import LeNet5
    torch.manual_seed(0)
    m = LeNet5(c1=2, c2=3, fc=8).eval()
    x = torch.randn(32, 1, 28, 28)
    with torch.no_grad():
        y = m(x).argmax(1)
    return m, TensorDataset(x, y)


def test_record_measures_every_field_of_a_model():
    from course_lib import measure
    m, test = _tiny()
    r = results.record("baseline", m, test=test, input_shape=(1, 28, 28), method="dense")
    # labels are the model's own predictions: accuracy is exactly 1
    assert r["accuracy"] == 1.0 and r["metric"] == "accuracy" and r["method"] == "dense"
    assert r["params"] == measure.count_params(m) and r["macs"] == measure.macs(m, (1, 28, 28))
    assert r["size_bytes"] == measure.serialized_bytes(m) and r["latency_ms"] > 0
    results.validate_records([r])


def test_record_takes_sizes_from_the_file_and_counts_from_the_source(tmp_path):
    m, test = _tiny()
    f = tmp_path / "model.bin"
    f.write_bytes(b"x" * 123)
    r = results.record("baseline", m, test=test, input_shape=(1, 28, 28), file=f, root=tmp_path,
                       latency_ms=None, accuracy=0.5)
    assert r["size_bytes"] == 123 and r["file"] == "model.bin" and r["latency_ms"] is None
    assert r["accuracy"] == 0.5


def test_record_without_model_needs_every_count():
    with pytest.raises(ValueError, match="params, nonzero, macs"):
        results.record("x", accuracy=0.5, size_bytes=1, latency_ms=None)
    with pytest.raises(ValueError, match="n_test"):
        results.record("x", accuracy=0.5, size_bytes=1, params=2, nonzero=2, macs=3, latency_ms=1.5)
    r = results.record("x", accuracy=0.5, n_test=40, size_bytes=1, params=2, nonzero=2, macs=3, latency_ms=1.5,
                       metric="retrieval top-1")
    assert r["metric"] == "retrieval top-1" and "sparsity" not in r


def test_record_over_seeds_keeps_mean_spread_interval_and_runs():
    from course_lib import stats
    r = results.record("pruned", accuracy=[0.98, 0.99, 1.0], n_test=1000, size_bytes=1, params=2, nonzero=1,
                       macs=3, latency_ms=None)
    assert r["accuracy"] == pytest.approx(0.99) and r["accuracy_std"] == pytest.approx(0.01)
    assert r["seeds"] == 3 and r["accuracies"] == [0.98, 0.99, 1.0] and r["n_test"] == 1000
    assert r["accuracy_ci"] == pytest.approx(list(stats.accuracy_interval(0.99, 1000)))
    one = results.record("one", accuracy=0.5, n_test=10, size_bytes=1, params=2, nonzero=1, macs=3, latency_ms=None)
    assert one["seeds"] == 1 and one["accuracy_std"] == 0.0 and "accuracies" not in one
    line = results.format_table([{**r, "name": "baseline"}]).splitlines()[-1]
    assert "99.00% ±1.00 [" in line and "(3 seeds)" in line
    with pytest.raises(ValueError, match="accuracy"):
        results.record("x", accuracy=[1.2, 1.3], n_test=10, size_bytes=1, params=2, nonzero=1, macs=3, latency_ms=None)


def test_artifacts_dir_follows_the_environment(tmp_path, monkeypatch):
    from course_lib import records as R
    monkeypatch.setenv("COURSE_ARTIFACTS", str(tmp_path / "art"))
    assert R.artifacts_dir("05_putting_it_together") == tmp_path / "art" / "05_putting_it_together"
    assert (tmp_path / "art" / "05_putting_it_together").is_dir()
    monkeypatch.delenv("COURSE_ARTIFACTS")
    monkeypatch.setenv("COURSE_RESULTS", str(tmp_path / "b" / "results"))
    assert R.artifacts_dir("02_quantization") == tmp_path / "b" / "artifacts" / "02_quantization"
    with pytest.raises(ValueError, match="chapter='../x' must be a plain name"):
        R.artifacts_dir("../x")


def test_controls_sit_right_under_the_model_they_control():
    recs = [{"name": "baseline"}, {"name": "scratch", "control_of": "kd"}, {"name": "other"},
            {"name": "kd"}, {"name": "smooth", "control_of": "kd"}, {"name": "orphan", "control_of": "gone"}]
    out = results.controls_beside(recs)
    assert [r["name"] for r in out] == ["baseline", "other", "kd", "scratch", "smooth", "orphan"]
    assert len(out) == len(recs)
    # a cycle never loses a row
    cyc = [{"name": "a", "control_of": "b"}, {"name": "b", "control_of": "a"}]
    assert sorted(r["name"] for r in results.controls_beside(cyc)) == ["a", "b"]
