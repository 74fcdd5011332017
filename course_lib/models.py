"""The course's models: LeNet-5 (the baseline), an MLP, and a small ResNet for CIFAR-10.

All take NCHW float input and return logits of shape (N, num_classes).
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from ._validate import one_of, positive_int, shape as check_shape


def _check_positive(**kw):
    for k, v in kw.items():
        positive_int(k, v)


def replace_module(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put ``new`` in place of the submodule called ``name`` (dotted path, e.g. "encoder.layer.0.fc").

    Changes ``model`` in place and returns it. Raises ValueError if ``name`` names no submodule.
    """
    parent, _, attr = name.rpartition(".")
    try:
        owner = model.get_submodule(parent) if parent else model
        getattr(owner, attr)
    except AttributeError:
        raise ValueError(f"name={name!r} is not a submodule of {type(model).__name__}") from None
    setattr(owner, attr, new)
    return model


class LeNet5(nn.Module):
    """LeNet-5 as in Han et al.'s pruning and Deep Compression papers.

    conv1 (c1 filters 5x5) -> ReLU -> maxpool 2 -> conv2 (c2 filters 5x5) -> ReLU -> maxpool 2
    -> flatten -> fc1 (fc units) -> ReLU -> fc2 (num_classes).
    Defaults (c1=20, c2=50, fc=500) on 1x28x28 input: 431,080 parameters.
    Smaller widths give the students of chapter 4 and the channel-pruned models of chapter 1.
    input_shape: (C, H, W) with H, W >= 12 (two 5x5 convs and two 2x2 pools must leave >= 1 pixel).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, c1: int = 20, c2: int = 50,
                 fc: int = 500, input_size: int = 28):
        super().__init__()
        _check_positive(in_channels=in_channels, num_classes=num_classes, c1=c1, c2=c2, fc=fc)
        if not isinstance(input_size, int) or input_size < 12:
            raise ValueError(f"input_size={input_size!r} must be an integer >= 12")
        self.conv1 = nn.Conv2d(in_channels, c1, 5)
        self.conv2 = nn.Conv2d(c1, c2, 5)
        side = ((input_size - 4) // 2 - 4) // 2
        self.fc1 = nn.Linear(c2 * side * side, fc)
        self.fc2 = nn.Linear(fc, num_classes)
        self.config = dict(in_channels=in_channels, num_classes=num_classes, c1=c1, c2=c2, fc=fc,
                           input_size=input_size)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, c2 * side * side): the flattened conv features fed to fc1."""
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return torch.flatten(x, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(self.features(x))))


class MLP(nn.Module):
    """Fully connected net (LeNet-300-100 by default): flatten -> [Linear -> ReLU]* -> Linear."""

    def __init__(self, in_features: int = 784, hidden: tuple = (300, 100), num_classes: int = 10):
        super().__init__()
        _check_positive(in_features=in_features, num_classes=num_classes)
        for i, h in enumerate(hidden):
            _check_positive(**{f"hidden[{i}]": h})
        dims = [in_features, *hidden]
        layers = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(dims[-1], num_classes))
        self.net = nn.Sequential(*layers)
        self.config = dict(in_features=in_features, hidden=tuple(hidden), num_classes=num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(torch.flatten(x, 1))


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet8(nn.Module):
    """ResNet-8 for 32x32 images: stem conv, three basic blocks (width, 2w, 4w), global pool, linear."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 16):
        super().__init__()
        _check_positive(in_channels=in_channels, num_classes=num_classes, width=width)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU())
        self.layer1 = _BasicBlock(width, width, 1)
        self.layer2 = _BasicBlock(width, 2 * width, 2)
        self.layer3 = _BasicBlock(2 * width, 4 * width, 2)
        self.fc = nn.Linear(4 * width, num_classes)
        self.config = dict(in_channels=in_channels, num_classes=num_classes, width=width)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


MODELS = {"lenet5": LeNet5, "mlp": MLP, "resnet8": ResNet8}


# The course's standing control (chapter 0): a LeNet-5 with 4x fewer channels and a 5x smaller hidden layer,
# trained from scratch with the baseline recipe (training.load_baseline(..., model_kw=SMALL_LENET), cached).
SMALL_LENET = dict(c1=5, c2=12, fc=100)


def lenet_widths_matching(target: int, by: str = "params", input_shape: tuple = (1, 28, 28),
                          num_classes: int = 10, base: tuple = (20, 50, 500)) -> dict:
    """LeNet-5 widths {c1, c2, fc} in the baseline's proportions ``base`` whose count is closest to
    ``target``: ``by="params"`` (parameters, e.g. the non-zeros of a pruned model) or ``by="macs"``
    (multiply-accumulates per input). The course's from-scratch dense controls are built from these.

    target >= 1; input_shape (C, H, W) with H = W >= 12. Widths are at least 1; the scale factor is
    searched on a fine grid, so the match is as close as integer widths allow.
    """
    positive_int("target", target)
    one_of("by", by, ("params", "macs"))
    c, h, w = check_shape("input_shape", input_shape, ndim=3)
    if h != w or h < 12:
        raise ValueError(f"input_shape={input_shape!r} must be square with H = W >= 12")
    h1 = h - 4                      # conv1 output side
    h2 = h1 // 2 - 4                # conv2 output side
    side = h2 // 2                  # after the second pool

    def count(c1, c2, fc):          # the closed forms; tests check them against measure.*
        if by == "params":
            return c1 * (c * 25 + 1) + c2 * (c1 * 25 + 1) + fc * (c2 * side * side + 1) + num_classes * (fc + 1)
        return c1 * c * 25 * h1 * h1 + c2 * c1 * 25 * h2 * h2 + c2 * side * side * fc + fc * num_classes

    best = None
    for i in range(1, 4001):
        a = i / 2000                               # scale 0.0005 .. 2.0 of the base widths
        widths = (max(1, round(base[0] * a)), max(1, round(base[1] * a)), max(1, round(base[2] * a)))
        gap = abs(count(*widths) - target)
        if best is None or gap < best[0]:
            best = (gap, widths)
    return dict(zip(("c1", "c2", "fc"), best[1]))


def build_model(name: str, input_shape: tuple | None = None, num_classes: int = 10, **kw) -> nn.Module:
    """Build a model by name ("lenet5", "mlp", "resnet8") for inputs of ``input_shape`` (C, H, W).

    Extra keyword arguments go to the model's constructor (e.g. c1, c2, fc for LeNet5).
    """
    if name not in MODELS:
        raise ValueError(f"model name={name!r} is unknown; valid names: {sorted(MODELS)}")
    if input_shape is not None:
        if len(input_shape) != 3:
            raise ValueError(f"input_shape={input_shape!r} must be (C, H, W)")
        c, h, w = input_shape
        if name == "lenet5":
            kw.setdefault("in_channels", c)
            kw.setdefault("input_size", h)
        elif name == "mlp":
            kw.setdefault("in_features", c * h * w)
        else:
            kw.setdefault("in_channels", c)
    return MODELS[name](num_classes=num_classes, **kw)


class PoolBeforeReLU(nn.Module):
    """A LeNet-5 that computes its first block as relu(maxpool(conv1(x))) instead of maxpool(relu(conv1(x))).

    Max-pooling and ReLU commute exactly (both are monotone: max_i relu(a_i) = relu(max_i a_i)), so
    outputs are bit-identical to ``model``'s (the parameters are shared, not copied). Why it matters for
    deployment: when conv1 stays in float and the rest runs in int8, the float part then ends with the
    pooled tensor, 4x smaller than conv1's output, so the Quantize step at the float/int8 boundary
    touches 4x fewer values, and onnxruntime pools in its fast blocked float layout right after the
    convolution. model: a ``LeNet5`` (TypeError otherwise). Input (N, C, H, W) -> logits (N, classes).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        if not isinstance(model, LeNet5):
            raise TypeError(f"model must be a course_lib.models.LeNet5, got {type(model).__name__}")
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        x = F.relu(F.max_pool2d(m.conv1(x), 2))
        x = F.max_pool2d(F.relu(m.conv2(x)), 2)
        return m.fc2(F.relu(m.fc1(torch.flatten(x, 1))))


# ---------------------------------------------------------------- sentence encoders (BERT, chapter 6)
def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` (N, T, D) over the tokens where ``mask`` (N, T) is 1: (N, D). The pooling
    layer of a sentence-transformers encoder (padding tokens do not count)."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)


def check_bert(model) -> None:
    """Raise ValueError unless ``model`` is a BERT encoder (``transformers.BertModel``: ``model.encoder.layer``)."""
    if not (hasattr(model, "encoder") and hasattr(model.encoder, "layer")):
        raise ValueError("model must be a BERT encoder (transformers BertModel) with model.encoder.layer")
