"""Figures: each plotting function returns a Figure with the expected axes and data."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

import torch  # noqa: E402

from course_lib import plots  # noqa: E402
from course_lib.data import load_dataset  # noqa: E402
from course_lib.models import LeNet5  # noqa: E402
from course_lib.training import History  # noqa: E402


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def test_show_samples_grid():
    s = load_dataset("mnist5k", limit=12)
    fig = plots.show_samples(s.train, s.classes, n=12, cols=6, mean=(0.1307,), std=(0.3081,))
    assert len(fig.axes) == 12 and len(fig.axes[0].images) == 1


def test_plot_history_and_weight_histograms():
    h = History(train_loss=[1.0, 0.5], train_acc=[0.5, 0.8], val_acc=[0.6, 0.9], lr=[1, 1])
    fig = plots.plot_history({"a": h, "b": h.to_dict()})
    assert len(fig.axes[1].lines) == 2
    fig = plots.weight_histograms(LeNet5())
    assert [ax.get_title().split()[0] for ax in fig.axes] == ["conv1", "conv2", "fc1", "fc2"]


def test_pareto_front():
    recs = [{"name": "a", "size_bytes": 10, "accuracy": 0.9}, {"name": "b", "size_bytes": 100, "accuracy": 0.95},
            {"name": "c", "size_bytes": 50, "accuracy": 0.8}]
    fig = plots.pareto(recs)
    front = fig.axes[0].lines[0]
    assert list(front.get_xdata()) == [10, 100]  # c is dominated


def test_sensitivity_and_sparsity_curves():
    fig = plots.sensitivity({"a": [0.9, 0.8], "b": [0.95, 0.5]}, (0.5, 0.9), reference=0.97)
    lines = fig.axes[0].lines
    assert len(lines) == 3 and list(lines[1].get_ydata()) == [95.0, 50.0]
    assert list(lines[0].get_xdata()) == [50.0, 90.0] and list(lines[2].get_ydata()) == [97.0, 97.0]
    fig2 = plots.sparsity_curves({"x": ((0.5, 0.9), (0.98, 0.9))}, reference=0.99, ylim=(80, 100))
    assert fig2.axes[0].get_ylim() == (80, 100)


def test_soft_targets():
    import torch
    from course_lib.distillation import teacher_probabilities
    torch.manual_seed(0)
    x, y = torch.randn(3, 1, 28, 28), torch.tensor([0, 1, 2])
    probs = teacher_probabilities(LeNet5(c1=2, c2=2, fc=4), x, (1, 4))
    fig = plots.soft_targets(x, probs, [str(i) for i in range(10)], labels=y)
    assert len(fig.axes) == 6
    assert len(fig.axes[1].patches) == 2 * 10  # one bar per class per temperature


def test_layer_shares_and_params_vs_macs():
    from torch import nn
    shares = plots.layer_shares(LeNet5(), (1, 28, 28))
    assert list(shares) == ["conv1", "conv2", "fc1", "fc2"]
    assert shares["fc1"]["param_count"] == 400_500 and shares["conv2"]["mac_count"] == 1_600_000
    assert shares["fc1"]["params"] == pytest.approx(400_500 / 431_080)
    assert shares["conv2"]["macs"] == pytest.approx(1_600_000 / 2_293_000)
    assert sum(v["params"] for v in shares.values()) == pytest.approx(1.0)
    fig = plots.params_vs_macs(LeNet5(), (1, 28, 28))
    params_bars, macs_bars = fig.axes[0].containers
    assert [b.get_height() for b in macs_bars] == pytest.approx([100 * v["macs"] for v in shares.values()])
    assert sum(b.get_height() for b in params_bars) == pytest.approx(100.0)
    bn = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2 * 6 * 6, 3))
    s = plots.layer_shares(bn, (1, 8, 8))
    assert s["other"] == {"params": 4 / 243, "macs": 0.0, "param_count": 4, "mac_count": 0}
    with pytest.raises(ValueError, match="input_shape"):
        plots.layer_shares(LeNet5(), (1, 0, 28))
    with pytest.raises(ValueError, match="model"):
        plots.params_vs_macs("lenet", (1, 28, 28))


def test_reliability_diagram_draws_each_model_without_its_empty_bins():
    from course_lib import stats
    labels = torch.tensor([0] * 8 + [1] * 2)
    certain = stats.calibration_bins(torch.tensor([[1.0, 0.0]] * 10), labels, bins=10)
    spread = stats.calibration_bins(torch.softmax(torch.randn(10, 2, generator=torch.Generator().manual_seed(0)), 1),
                                    labels, bins=10)
    fig = plots.reliability_diagram({"certain": certain, "spread": spread})
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["calibrated", "certain", "spread"]
    dots = ax.collections
    assert len(dots) == 2 and len(dots[0].get_offsets()) == 1  # one non-empty bin for the certain model
    assert len(dots[1].get_offsets()) == int((spread["count"] > 0).sum())
    with pytest.raises(ValueError, match="bins_by_name"):
        plots.reliability_diagram({})


def test_flatten_columns_shades_the_removed_channels_columns():
    torch.manual_seed(0)
    w = torch.randn(20, 5 * 16)
    fig = plots.flatten_columns(w, torch.tensor([0, 2, 4]), per_channel=16, rows=8)
    top, ax = fig.axes
    strip = top.images[0].get_array()
    assert strip.shape == (1, 80)
    assert strip[0, :16].min() == 1 and strip[0, 16:32].max() == 0 and strip[0, 32:48].min() == 1
    assert ax.images[0].get_array().shape == (8, 80)  # the first `rows` rows, every column
    assert torch.allclose(torch.as_tensor(ax.images[0].get_array()), w[:8].abs())
    shaded = sorted((round(p.get_x() + 0.5), round(p.get_x() + p.get_width() + 0.5)) for p in ax.patches)
    assert shaded == [(16, 32), (48, 64)]  # channels 1 and 3: their 16 columns each
    assert "3 of 5 channels kept" in top.get_title()
    for bad, kw, msg in ((torch.randn(4, 81), {}, "per_channel"), (torch.randn(4, 80, 1), {}, "2-D"),
                         (w, {"kept": [5]}, "kept"), (w, {"rows": 0}, "rows")):
        with pytest.raises(ValueError, match=msg):
            plots.flatten_columns(bad, kw.get("kept", [0]), per_channel=16, rows=kw.get("rows", 4))
