"""Models: parameter counts of the published LeNet-5, shapes, errors."""
import pytest
import torch

from course_lib.models import MLP, LeNet5, ResNet8, build_model


def test_lenet5_matches_han_et_al():
    m = LeNet5()
    assert sum(p.numel() for p in m.parameters()) == 431_080
    assert [m.conv1.out_channels, m.conv2.out_channels, m.fc1.out_features] == [20, 50, 500]
    assert m(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


def test_lenet5_widths_and_cifar_shape():
    m = LeNet5(in_channels=3, c1=6, c2=16, fc=120, input_size=32)
    assert m.fc1.in_features == 16 * 5 * 5
    assert m(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert m.features(torch.zeros(2, 3, 32, 32)).shape == (2, 400)


def test_mlp_and_resnet8_shapes():
    assert MLP()(torch.zeros(4, 1, 28, 28)).shape == (4, 10)
    assert sum(p.numel() for p in MLP().parameters()) == 266_610  # LeNet-300-100
    r = ResNet8()
    assert r(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_build_model_uses_input_shape():
    assert build_model("lenet5", (3, 32, 32)).conv1.in_channels == 3
    assert build_model("mlp", (1, 28, 28), hidden=(10,)).net[0].in_features == 784
    assert build_model("resnet8", (3, 32, 32), num_classes=5).fc.out_features == 5


@pytest.mark.parametrize("bad", [dict(c1=0), dict(fc=-1), dict(input_size=8), dict(num_classes=1.5)])
def test_lenet5_rejects_bad_sizes(bad):
    with pytest.raises(ValueError, match=list(bad)[0]):
        LeNet5(**bad)


def test_build_model_errors():
    with pytest.raises(ValueError, match="name='vgg'"):
        build_model("vgg")
    with pytest.raises(ValueError, match="input_shape"):
        build_model("lenet5", (28, 28))
    with pytest.raises(ValueError, match=r"hidden\[1\]"):
        MLP(hidden=(10, 0))


@pytest.mark.parametrize("target, by", [(21_952, "params"), (43_108, "params"), (725_000, "macs"), (188_200, "macs")])
def test_lenet_widths_matching_closed_forms_agree_with_measure(target, by):
    from course_lib import measure
    from course_lib.models import LeNet5, lenet_widths_matching
    w = lenet_widths_matching(target, by)
    m = LeNet5(**w)
    got = measure.count_params(m) if by == "params" else measure.macs(m, (1, 28, 28))
    assert abs(got - target) / target < 0.03       # integer widths: within 3%
    assert w == lenet_widths_matching(target, by)


def test_lenet_widths_matching_rejects_bad_arguments():
    from course_lib.models import lenet_widths_matching
    with pytest.raises(ValueError, match="by="):
        lenet_widths_matching(1000, by="flops")
    with pytest.raises(ValueError, match="target"):
        lenet_widths_matching(0)
    with pytest.raises(ValueError, match="input_shape"):
        lenet_widths_matching(1000, input_shape=(1, 28, 20))
