"""Unit and property tests of course_lib.pruning (tiny models, CPU, no timing assertions)."""
import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import prune as tprune

from course_lib import measure
from course_lib import pruning as P
from course_lib.models import MLP, LeNet5, ResNet8
from course_lib.training import fit

SMALL = dict(c1=4, c2=6, fc=16)


def small_lenet(seed=0, **kw):
    torch.manual_seed(seed)
    return LeNet5(**{**SMALL, **kw}).eval()


def random_mlp(seed=0, hidden=(12, 8)):
    torch.manual_seed(seed)
    return MLP(in_features=20, hidden=hidden, num_classes=5).eval()


def toy_data(n=64, shape=(1, 28, 28), classes=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((n, *shape), generator=g), torch.randint(0, classes, (n,), generator=g)


class NoPrunable(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm1d(4)

    def forward(self, x):
        return self.bn(x)


# ---------------------------------------------------------------- magnitude masks
def test_magnitude_mask_zeroes_smallest():
    w = torch.tensor([[0.5, -0.1, 2.0], [-3.0, 0.05, 0.2]])
    m = P.magnitude_mask(w, 0.5)
    assert m.dtype == w.dtype and m.shape == w.shape
    assert m.tolist() == [[1, 0, 1], [1, 0, 0]]
    assert P.magnitude_mask(w, 0.0).eq(1).all()


def test_magnitude_mask_breaks_ties_by_index_with_exactly_k_zeros():
    w = torch.tensor([0.3, -0.1, 0.1, 0.2, -0.1, 0.5, 0.1, 0.9])  # four weights tie at |w| = 0.1
    m = P.magnitude_mask(w, 0.25)                                # k = 2: the two lowest indices of the tie
    assert m.tolist() == [1, 0, 0, 1, 1, 1, 1, 1]
    tau = 0.1
    assert int((w.abs() > tau).logical_not().sum()) == 4         # the threshold form would zero four
    # existing zeros tie at 0 and are pruned first, so re-pruning at the same sparsity is a no-op
    z = torch.tensor([0.0, 0.5, 0.0, -0.2, 0.0, 0.7])
    assert P.magnitude_mask(z, 0.5).tolist() == [0, 1, 0, 1, 0, 1]


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("amount", [0.0, 0.3, 0.5, 0.9, 0.97])
def test_layer_scope_matches_torch_l1_unstructured(seed, amount):
    ours = small_lenet(seed)
    ref = copy.deepcopy(ours)
    P.magnitude_prune(ours, amount, scope="layer")
    for name, mod in ref.named_modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            tprune.l1_unstructured(mod, "weight", amount=amount)
    for name, mask in P.masks(ours).items():
        assert torch.equal(mask, ref.get_submodule(name).weight_mask), name
        assert torch.equal(ours.get_submodule(name).weight, ref.get_submodule(name).weight), name


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("amount", [0.2, 0.6, 0.9, 0.95])
def test_global_scope_matches_torch_global_unstructured(seed, amount):
    ours = random_mlp(seed, hidden=(30, 20)) if seed % 2 else small_lenet(seed)
    ref = copy.deepcopy(ours)
    P.magnitude_prune(ours, amount, scope="global")
    params = [(m, "weight") for m in ref.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    tprune.global_unstructured(params, pruning_method=tprune.L1Unstructured, amount=amount)
    for name, mask in P.masks(ours).items():
        assert torch.equal(mask, ref.get_submodule(name).weight_mask), name
    # the same weights, the same outputs (float64 so summation order cannot hide a difference)
    x = toy_data(8, (20,) if isinstance(ours, MLP) else (1, 28, 28))[0].double()
    assert torch.equal(ours.double()(x), ref.double()(x))
    assert measure.sparsity(ours) == pytest.approx(measure.sparsity(ref))


def test_global_vs_layer_differ_and_per_layer_dict():
    model = small_lenet(1)
    with torch.no_grad():
        model.conv1.weight.mul_(10)  # conv1 weights now dominate a global ranking
    g = P.magnitude_prune(copy.deepcopy(model), 0.5, scope="global")
    assert (g.conv1.weight == 0).float().mean() < 0.1
    lay = P.magnitude_prune(copy.deepcopy(model), 0.5, scope="layer")
    assert (lay.conv1.weight == 0).float().mean() == pytest.approx(0.5, abs=0.02)
    d = P.magnitude_prune(copy.deepcopy(model), {"fc1": 0.8, "conv2": 0.5})
    assert set(P.masks(d)) == {"fc1", "conv2"}
    assert (d.fc1.weight == 0).float().mean() == pytest.approx(0.8, abs=1e-3)
    only = P.magnitude_prune(copy.deepcopy(model), 0.7, layers=["fc1"])
    assert set(P.masks(only)) == {"fc1"}


@settings(max_examples=25, deadline=None)
@given(sparsity=st.floats(0.0, 0.999, allow_nan=False), seed=st.integers(0, 10_000),
       scope=st.sampled_from(["global", "layer"]))
def test_property_exact_sparsity_and_idempotence(sparsity, seed, scope):
    model = random_mlp(seed)
    P.magnitude_prune(model, sparsity, scope=scope)
    layers = P.prunable_layers(model)
    if scope == "global":
        total = sum(m.weight.numel() for m in layers.values())
        zeros = sum(int((m.weight == 0).sum()) for m in layers.values())
        assert zeros == round(sparsity * total)
    else:
        for m in layers.values():
            assert int((m.weight == 0).sum()) == round(sparsity * m.weight.numel())
    before = {k: v.clone() for k, v in P.masks(model).items()}
    weights = [m.weight.detach().clone() for m in layers.values()]
    P.magnitude_prune(model, sparsity, scope=scope)  # idempotent: same masks, same weights
    for k, v in P.masks(model).items():
        assert torch.equal(v, before[k])
    for w, m in zip(weights, layers.values()):
        assert torch.equal(w, m.weight)


@settings(max_examples=15, deadline=None)
@given(sparsity=st.floats(0.05, 0.95), seed=st.integers(0, 10_000),
       opt=st.sampled_from(["sgd", "adam", "adamw"]))
def test_property_masks_survive_optimizer_steps(sparsity, seed, opt):
    model = random_mlp(seed)
    P.magnitude_prune(model, sparsity)
    zero_before = {k: (model.get_submodule(k).weight == 0) for k in P.masks(model)}
    x, y = toy_data(32, (20,), 5, seed)
    hist = P.fine_tune(model, (x, y), epochs=2, lr=1e-2, optimizer=opt, weight_decay=1e-3,
                       batch_size=16, progress=False)
    assert len(hist.train_loss) == 2
    for k, z in zero_before.items():
        w = model.get_submodule(k).weight
        assert bool((w[z] == 0).all()), k  # every pruned weight is still exactly zero


def test_masks_survive_plain_fit_with_after_step_and_weights_move():
    model = small_lenet(2)
    P.magnitude_prune(model, 0.8)
    kept_before = model.fc1.weight.detach().clone()
    x, y = toy_data(32)
    fit(model, (x, y), epochs=1, lr=1e-2, batch_size=16, after_step=P.apply_masks, progress=False)
    assert (model.fc1.weight[model.fc1.weight_mask == 0] == 0).all()
    assert not torch.equal(model.fc1.weight, kept_before)  # the kept weights were trained
    assert P.mask_sparsity(model) == pytest.approx(0.8, abs=1e-4)


def test_fine_tune_chains_extra_after_step():
    model = random_mlp(3)
    P.magnitude_prune(model, 0.5)
    calls = []
    P.fine_tune(model, toy_data(16, (20,), 5), epochs=1, batch_size=8, progress=False,
                after_step=lambda m: calls.append(1))
    assert len(calls) == 2


def test_apply_and_remove_masks_and_state_dict():
    model = small_lenet(4)
    P.magnitude_prune(model, 0.6)
    assert any(k.endswith("weight_mask") for k in model.state_dict())
    with torch.no_grad():
        model.fc1.weight.add_(1.0)  # e.g. an optimizer step without the hook
    P.apply_masks(model)
    assert measure.sparsity(model) == pytest.approx(0.6, abs=1e-3)
    out = P.remove_masks(model)
    assert out is model and P.masks(model) == {}
    assert set(model.state_dict()) == set(LeNet5(**SMALL).state_dict())
    assert measure.sparsity(model) == pytest.approx(0.6, abs=1e-3)
    LeNet5(**SMALL).load_state_dict(model.state_dict())  # loads as a plain dense model


def test_remove_masks_folds_torch_prune():
    model = small_lenet(5)
    tprune.l1_unstructured(model.fc1, "weight", amount=0.5)
    w = model.fc1.weight.detach().clone()
    P.remove_masks(model)
    assert "weight_orig" not in dict(model.fc1.named_parameters())
    assert torch.equal(model.fc1.weight, w)
    assert set(model.state_dict()) == set(LeNet5(**SMALL).state_dict())


def test_mask_sparsity_without_masks_is_zero():
    assert P.mask_sparsity(small_lenet()) == 0.0


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan"), "0.5", None, True])
def test_bad_sparsity_raises(bad):
    with pytest.raises(ValueError, match="sparsity"):
        P.magnitude_prune(small_lenet(), bad)
    with pytest.raises(ValueError, match="sparsity"):
        P.magnitude_mask(torch.randn(4, 4), bad)


def test_bad_scope_layers_and_no_prunable_layer():
    with pytest.raises(ValueError, match="scope"):
        P.magnitude_prune(small_lenet(), 0.5, scope="model")
    with pytest.raises(ValueError, match="layers"):
        P.magnitude_prune(small_lenet(), 0.5, layers=["conv3"])
    with pytest.raises(ValueError, match="no layer"):
        P.magnitude_prune(small_lenet(), 0.5, layers=[])
    with pytest.raises(ValueError, match="sparsity\\['fc1'\\]"):
        P.magnitude_prune(small_lenet(), {"fc1": 1.0})
    with pytest.raises(ValueError, match="no prunable layer"):
        P.magnitude_prune(NoPrunable(), 0.5)
    with pytest.raises(ValueError, match="no prunable layer"):
        P.channel_prune(NoPrunable(), 0.5)
    with pytest.raises(ValueError, match="no prunable layer"):
        P.sensitivity_scan(NoPrunable(), toy_data(8, (4,)))
    with pytest.raises(ValueError, match="weight"):
        P.magnitude_mask(torch.empty(0), 0.5)


# ---------------------------------------------------------------- sensitivity
def test_sensitivity_scan_shapes_and_no_side_effect():
    model = small_lenet(6)
    state = copy.deepcopy(model.state_dict())
    data = toy_data(40)
    scan = P.sensitivity_scan(model, data, sparsities=(0.0, 0.5, 0.99))
    assert list(scan) == ["conv1", "conv2", "fc1", "fc2"]
    assert all(len(v) == 3 for v in scan.values())
    from course_lib.training import evaluate
    acc = evaluate(model, data)
    assert all(v[0] == pytest.approx(acc) for v in scan.values())  # sparsity 0 = the model itself
    # each entry is the accuracy of the model with that one layer pruned alone
    alone = P.magnitude_prune(copy.deepcopy(model), {"fc1": 0.99})
    assert scan["fc1"][2] == pytest.approx(evaluate(alone, data))
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k])
    assert P.masks(model) == {}
    assert list(P.sensitivity_scan(model, data, (0.5,), layers=["fc2"])) == ["fc2"]
    with pytest.raises(ValueError, match="sparsities"):
        P.sensitivity_scan(model, data, sparsities=())
    with pytest.raises(ValueError, match=r"sparsities\[1\]=1\.0 .*\[0, 1\)"):
        P.sensitivity_scan(model, data, sparsities=(0.5, 1.0))


def test_choose_sparsities():
    scan = {"a": [0.99, 0.985, 0.95], "b": [0.99, 0.99, 0.989], "c": [0.90, 0.8, 0.7]}
    got = P.choose_sparsities(scan, [0.5, 0.8, 0.9], reference=0.99, max_drop=0.005)
    assert got == {"a": 0.8, "b": 0.9, "c": 0.0}
    with pytest.raises(ValueError, match="max_drop"):
        P.choose_sparsities(scan, [0.5, 0.8, 0.9], 0.99, max_drop=-1)
    with pytest.raises(ValueError, match=r"reference=99\.0 .*\[0, 1\]"):  # a percentage, not a fraction
        P.choose_sparsities(scan, [0.5, 0.8, 0.9], 99.0)
    with pytest.raises(ValueError, match="sparsities"):
        P.choose_sparsities(scan, [0.5], 0.99)


# ---------------------------------------------------------------- gradual
def test_gradual_schedule_values():
    f = lambda t: P.gradual_schedule(t, 0.9, 100, initial_sparsity=0.1, begin_step=10)  # noqa: E731
    assert f(0) == pytest.approx(0.1) and f(10) == pytest.approx(0.1)
    assert f(110) == pytest.approx(0.9) and f(500) == pytest.approx(0.9)
    assert f(60) == pytest.approx(0.9 + (0.1 - 0.9) * 0.5 ** 3)
    vals = [f(t) for t in range(0, 120)]
    assert all(b >= a for a, b in zip(vals, vals[1:]))  # monotone
    assert P.gradual_schedule(5, 0.5, 10, power=1) == pytest.approx(0.25)


@pytest.mark.parametrize("kw,match", [
    (dict(final_sparsity=1.0), "final_sparsity"), (dict(initial_sparsity=-0.1), "initial_sparsity"),
    (dict(total_steps=0), "total_steps"), (dict(power=0), "power")])
def test_gradual_schedule_errors(kw, match):
    args = dict(step=0, final_sparsity=0.9, total_steps=10) | kw
    with pytest.raises(ValueError, match=match):
        P.gradual_schedule(**args)


def test_gradual_pruner_reaches_final_sparsity_during_fit():
    model = random_mlp(7)
    x, y = toy_data(64, (20,), 5)
    pruner = P.GradualPruner(0.8, total_steps=6, frequency=2)
    fit(model, (x, y), epochs=2, batch_size=8, lr=1e-2, after_step=pruner, progress=False)  # 16 steps
    steps = [s for s, _ in pruner.history]
    assert steps == [2, 4, 6]
    sp = [s for _, s in pruner.history]
    assert sp[-1] == pytest.approx(0.8) and sp == sorted(sp)
    assert measure.sparsity(model) == pytest.approx(0.8, abs=2e-3)
    with pytest.raises(ValueError, match="frequency"):
        P.GradualPruner(0.8, 10, frequency=0)
    with pytest.raises(ValueError, match="scope"):
        P.GradualPruner(0.8, 10, scope="x")
    with pytest.raises(ValueError, match="final_sparsity"):
        P.GradualPruner(1.2, 10)


def test_gradual_pruner_uses_the_schedule_it_is_given():
    calls = []

    def linear(t, sf, n):
        calls.append((t, sf, n))
        return sf * min(max(t / n, 0.0), 1.0)

    model = random_mlp(7)
    x, y = toy_data(64, (20,), 5)
    pruner = P.GradualPruner(0.8, total_steps=8, frequency=2, begin_step=2, schedule=linear)
    fit(model, (x, y), epochs=2, batch_size=8, lr=1e-2, after_step=pruner, progress=False)  # 16 steps
    assert [s for s, _ in pruner.history] == [2, 4, 6, 8, 10]
    assert calls == [(t, 0.8, 8) for t in (0, 2, 4, 6, 8)]  # steps counted from begin_step
    assert [s for _, s in pruner.history] == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8])
    assert measure.sparsity(model) == pytest.approx(0.8, abs=2e-3)


def test_gradual_pruner_default_schedule_is_the_library_cubic():
    default = P.GradualPruner(0.9, 100, initial_sparsity=0.1, begin_step=10)
    explicit = P.GradualPruner(0.9, 100, schedule=P.gradual_schedule)
    assert default.schedule is P.gradual_schedule
    for step in (10, 35, 60, 110):
        assert default.sparsity_at(step) == P.gradual_schedule(step, 0.9, 100, 0.1, 10)
        assert explicit.sparsity_at(step) == P.gradual_schedule(step, 0.9, 100)


def test_gradual_pruner_rejects_a_bad_schedule():
    with pytest.raises(TypeError, match="schedule=0.5 is not callable"):
        P.GradualPruner(0.8, 10, schedule=0.5)
    with pytest.raises(TypeError, match="not callable"):
        P.GradualPruner(0.8, 10, schedule="cubic")
    with pytest.raises(ValueError, match="initial_sparsity"):
        P.GradualPruner(0.8, 10, initial_sparsity=0.2, schedule=lambda t, sf, n: sf)
    with pytest.raises(ValueError, match=r"returned 1\.5: a sparsity must be in \[0, 1\)"):
        P.GradualPruner(0.8, 10, schedule=lambda t, sf, n: 1.5).sparsity_at(3)
    with pytest.raises(TypeError, match="not a number"):
        P.GradualPruner(0.8, 10, schedule=lambda t, sf, n: None).sparsity_at(3)


# ---------------------------------------------------------------- channel pruning
def test_filter_norms_and_filters_to_keep():
    w = torch.zeros(5, 2, 3, 3)
    for i, v in enumerate([3.0, 0.1, 2.0, 0.5, 4.0]):
        w[i] = v / 18
    assert torch.allclose(P.filter_l1_norms(w), torch.tensor([3.0, 0.1, 2.0, 0.5, 4.0]))
    keep = P.filters_to_keep(w, 0.4)
    assert keep.tolist() == [0, 2, 4] and keep.dtype == torch.int64
    assert P.filters_to_keep(w, 0.0).tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="every one"):
        P.filters_to_keep(w, 0.95)
    with pytest.raises(ValueError, match="ratio"):
        P.filters_to_keep(w, 1.0)
    with pytest.raises(ValueError, match="weight"):
        P.filter_l1_norms(torch.ones(3))


def _ref_masked_lenet(model, k1, k2, k3):
    """The dense model with the removed channels zeroed: must compute what the small one computes."""
    ref = copy.deepcopy(model).double()
    with torch.no_grad():
        for mod, keep in ((ref.conv1, k1), (ref.conv2, k2), (ref.fc1, k3)):
            drop = torch.ones(mod.out_features if isinstance(mod, nn.Linear) else mod.out_channels, dtype=bool)
            drop[keep] = False
            mod.weight[drop] = 0
            mod.bias[drop] = 0
    return ref


@pytest.mark.parametrize("ratio", [0.5, {"conv1": 0.25, "conv2": 0.5, "fc1": 0.75}, {"conv2": 0.5}])
def test_channel_prune_lenet_is_smaller_and_exact(ratio):
    model = small_lenet(8, c1=8, c2=12, fc=20)
    small = P.channel_prune(model, ratio)
    r = ratio if isinstance(ratio, dict) else {"conv1": ratio, "conv2": ratio, "fc1": ratio}
    k1 = P.filters_to_keep(model.conv1.weight, r.get("conv1", 0.0))
    k2 = P.filters_to_keep(model.conv2.weight, r.get("conv2", 0.0))
    k3 = P.filters_to_keep(model.fc1.weight, r.get("fc1", 0.0))
    assert isinstance(small, LeNet5)
    assert (small.config["c1"], small.config["c2"], small.config["fc"]) == (len(k1), len(k2), len(k3))
    assert measure.count_params(small) < measure.count_params(model)
    assert measure.macs(small, (1, 28, 28)) < measure.macs(model, (1, 28, 28))
    x = toy_data(6)[0].double()
    ref = _ref_masked_lenet(model, k1, k2, k3)
    # ReLU(0)=0 and max-pool of an all-zero channel is 0, so zeroed channels contribute nothing
    assert torch.allclose(small.double()(x), ref(x), atol=1e-10)
    assert measure.count_params(LeNet5(**model.config)) == measure.count_params(model)  # model untouched
    assert small.state_dict().keys() == model.state_dict().keys()


def test_channel_prune_unchanged_at_zero_ratio_and_removes_masks():
    model = small_lenet(9)
    P.magnitude_prune(model, 0.3)
    same = P.channel_prune(model, 0.0)
    x = toy_data(4)[0]
    assert torch.allclose(same(x), model(x), atol=1e-6)
    assert P.masks(same) == {} and P.masks(model) != {}


def test_channel_prune_mlp():
    model = random_mlp(10, hidden=(12, 8))
    small = P.channel_prune(model, 0.5)
    assert isinstance(small, MLP) and small.config["hidden"] == (6, 4)
    l0, l1 = model.net[0], model.net[2]
    k0 = P.filters_to_keep(l0.weight, 0.5)
    k1 = P.filters_to_keep(l1.weight, 0.5)
    assert torch.equal(small.net[0].weight, l0.weight[k0])
    assert torch.equal(small.net[2].weight, l1.weight[k1][:, k0])
    assert torch.equal(small.net[4].weight, model.net[4].weight[:, k1])
    assert small(torch.randn(3, 20)).shape == (3, 5)


def test_channel_prune_errors():
    model = small_lenet(11)
    with pytest.raises(ValueError, match="every one"):
        P.channel_prune(model, 0.9)  # removes all 4 conv1 filters
    with pytest.raises(ValueError, match="ratio"):
        P.channel_prune(model, 1.0)
    with pytest.raises(ValueError, match="ratio"):
        P.channel_prune(model, -0.2)
    with pytest.raises(ValueError, match="fc2"):
        P.channel_prune(model, {"fc2": 0.5})
    with pytest.raises(TypeError, match="ResNet8"):
        P.channel_prune(ResNet8(width=4), 0.5)


# (the sparse storage formats are tested in test_storage.py)
def test_prunable_layers_order():
    assert list(P.prunable_layers(small_lenet())) == ["conv1", "conv2", "fc1", "fc2"]
    assert list(P.prunable_layers(random_mlp())) == ["net.0", "net.2", "net.4"]


# (matmul_latency_ms is tested in test_measure.py, the pruning figures in test_plots.py)


# ---------------------------------------------------------------- random pruning (the control)
def test_random_mask_exact_count_private_generator_and_ignores_magnitude():
    w = torch.arange(1.0, 1001.0)                      # magnitude grows with the index
    state = torch.random.get_rng_state()
    m1 = P.random_mask(w, 0.9, torch.Generator().manual_seed(3))
    assert torch.equal(torch.random.get_rng_state(), state)  # the global generator is untouched
    assert int((m1 == 0).sum()) == 900 and m1.shape == w.shape and m1.dtype == w.dtype
    assert torch.equal(m1, P.random_mask(w, 0.9, torch.Generator().manual_seed(3)))  # reproducible
    assert not torch.equal(m1, P.random_mask(w, 0.9, torch.Generator().manual_seed(4)))
    kept = w[m1 == 1]
    assert kept.min() < 500 < kept.max()               # not the largest weights: random, not magnitude
    assert P.random_mask(w, 0.0).eq(1).all()
    with pytest.raises(ValueError, match="sparsity"):
        P.random_mask(w, 1.0)


def test_random_prune_scopes_dict_and_masks_survive_fine_tuning():
    model = small_lenet(2)
    g = P.random_prune(copy.deepcopy(model), 0.8, seed=1)
    assert measure.sparsity(g) == pytest.approx(0.8, abs=1e-3)
    assert set(P.masks(g)) == {"conv1", "conv2", "fc1", "fc2"}
    lay = P.random_prune(copy.deepcopy(model), 0.5, scope="layer", seed=1)
    for name, mod in P.prunable_layers(lay).items():
        assert int((mod.weight == 0).sum()) == round(0.5 * mod.weight.numel()), name
    # copying a magnitude-pruned model's allocation: same per-layer sparsities, different weights
    mag = P.magnitude_prune(copy.deepcopy(model), 0.7, scope="global")
    alloc = P.layer_sparsity(mag)
    rnd = P.random_prune(copy.deepcopy(model), alloc, seed=5)
    for name in alloc:
        assert P.layer_sparsity(rnd)[name] == pytest.approx(alloc[name], abs=1e-6)
    assert not torch.equal(P.masks(rnd)["fc1"], P.masks(mag)["fc1"])
    x, y = toy_data(32)
    P.fine_tune(rnd, (x, y), epochs=1, batch_size=8, progress=False)
    assert P.layer_sparsity(rnd)["fc1"] == pytest.approx(alloc["fc1"], abs=1e-6)
    with pytest.raises(ValueError, match="seed"):
        P.random_prune(copy.deepcopy(model), 0.5, seed=-1)
    with pytest.raises(ValueError, match="scope"):
        P.random_prune(copy.deepcopy(model), 0.5, scope="net")


def test_layer_sparsity_reads_zeros_per_layer():
    model = small_lenet(3)
    assert set(P.layer_sparsity(model).values()) == {0.0}
    with torch.no_grad():
        model.fc2.weight[:, :8] = 0
    assert P.layer_sparsity(model, ["fc2"]) == {"fc2": pytest.approx(0.5)}


# ---------------------------------------------------------------- allocating a total budget from a scan
def test_allocate_sparsities_hits_the_total_with_equal_drops():
    sps = [0.5, 0.9, 0.98]
    scan = {"a": [0.99, 0.95, 0.50], "b": [0.99, 0.98, 0.90], "c": [0.99, 0.99, 0.98]}
    sizes = {"a": 100, "b": 1000, "c": 10000}
    got = P.allocate_sparsities(scan, sps, 0.99, sizes, target=0.9)
    total = sum(sizes[k] * v for k, v in got.items()) / sum(sizes.values())
    assert total == pytest.approx(0.9, abs=1e-6)
    assert got["c"] > got["b"] > got["a"]                  # the robust layer gives up the most
    # every layer sits where its curve crosses the same floor (linear interpolation), unless capped
    floor_a = 0.99 + (0.95 - 0.99) * (got["a"] - 0.5) / (0.9 - 0.5)
    floor_b = 0.99 + (0.98 - 0.99) * (got["b"] - 0.5) / (0.9 - 0.5) if got["b"] <= 0.9 else \
        0.98 + (0.90 - 0.98) * (got["b"] - 0.9) / (0.98 - 0.9)
    assert floor_a == pytest.approx(floor_b, abs=1e-6)
    # a low target is met exactly too
    low = P.allocate_sparsities(scan, sps, 0.99, sizes, target=0.3)
    assert sum(sizes[k] * v for k, v in low.items()) / sum(sizes.values()) == pytest.approx(0.3, abs=1e-6)
    with pytest.raises(ValueError, match="not reachable"):
        P.allocate_sparsities(scan, sps, 0.99, sizes, target=0.99)
    with pytest.raises(ValueError, match="sizes"):
        P.allocate_sparsities(scan, sps, 0.99, {"a": 1}, target=0.5)
    with pytest.raises(ValueError, match="target"):
        P.allocate_sparsities(scan, sps, 0.99, sizes, target=1.0)
    with pytest.raises(ValueError, match="reference"):
        P.allocate_sparsities(scan, sps, 99.0, sizes, target=0.5)
    # the result prunes a real model to the total
    model = small_lenet(4)
    lsizes = {n: m.weight.numel() for n, m in P.prunable_layers(model).items()}
    lscan = {n: [0.99, 0.97, 0.9] for n in lsizes}
    alloc = P.allocate_sparsities(lscan, sps, 0.99, lsizes, target=0.6)
    assert measure.sparsity(P.magnitude_prune(model, alloc)) == pytest.approx(0.6, abs=5e-3)


# ---------------------------------------------------------------- chapter 1's figures (plots.py additions)
def test_chapter1_figures_draw_and_validate():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from course_lib import plots
    fig = plots.accuracy_vs_sparsity({"method": ([0.9, 0.95], [[0.98, 0.99, 0.985], [0.97, 0.975, 0.96]]),
                                      "control": ([0.9], [0.97])}, n_test=1000, reference=0.989, ylim=(95, 100))
    ax = fig.axes[0]
    assert ax.get_ylim() == (95, 100) and len(ax.get_legend().get_texts()) == 3
    plt.close(fig)
    with pytest.raises(ValueError, match="n_test"):
        plots.accuracy_vs_sparsity({"a": ([0.5], [0.9])}, n_test=0)
    with pytest.raises(ValueError, match="equal length"):
        plots.accuracy_vs_sparsity({"a": ([0.5, 0.6], [0.9])}, n_test=10)
    fig = plots.filter_norms(torch.tensor([3.0, 1.0, 2.0, 0.5]), 2)
    heights = [p.get_height() for p in fig.axes[0].patches]
    assert heights == [3.0, 2.0, 1.0, 0.5]                       # sorted, largest first
    plt.close(fig)
    with pytest.raises(ValueError, match="n_keep"):
        plots.filter_norms([1.0, 2.0], 3)
    fig = plots.pruning_schedule([(10, 0.3), (20, 0.6), (30, 0.9)], total_steps=50)
    assert fig.axes[0].get_xlim() == (0, 50)
    plt.close(fig)
    with pytest.raises(ValueError, match="total_steps"):
        plots.pruning_schedule([], 0)
    parts = {"a": {"conv1": 1.0, "fc1": 2.0, "other": 0.5, "total": 3.5}, "b": {"conv1": 0.5, "fc1": 1.0, "other": 0.4,
                                                                               "total": 1.9}}
    fig = plots.time_breakdown(parts)
    widths = [p.get_width() for p in fig.axes[0].patches]
    assert widths == pytest.approx([1.0, 0.5, 2.0, 1.0, 0.5, 0.4])  # conv1, fc1, other stacked; no total
    plt.close(fig)
    with pytest.raises(ValueError, match="parts"):
        plots.time_breakdown({})


def test_accuracy_vs_speed_plots_every_timed_record():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from course_lib import plots
    recs = [{"name": "baseline", "accuracy": 0.989, "accuracy_ci": [0.98, 0.994], "latency_ms": 6.0},
            {"name": "small", "accuracy": 0.982, "accuracy_ci": [0.973, 0.989], "latency_ms": 0.75,
             "accuracies": [0.98, 0.985, 0.981]},
            {"name": "untimed", "accuracy": 0.97, "accuracy_ci": [0.96, 0.98], "latency_ms": None}]
    fig = plots.accuracy_vs_speed(recs)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    assert [t.get_text() for t in ax.texts] == ["baseline", "small"]          # the untimed record is skipped
    assert ax.texts[1].xy == pytest.approx((8.0, 98.2))                       # 6.0 / 0.75 faster
    plt.close(fig)
    with pytest.raises(ValueError, match="reference"):
        plots.accuracy_vs_speed(recs, reference="nope")
