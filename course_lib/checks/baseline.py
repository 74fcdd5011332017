"""Checkers for chapter 00 (setup and baseline): normalising images, counting a convolution's MACs."""
from __future__ import annotations

import torch
from torch import nn

from ..measure import macs
from . import Wrong, checker, expect_close, expect_dtype, expect_shape

__all__ = ["check_normalize", "check_conv_macs", "reference_normalize", "reference_conv_macs"]


def reference_normalize(images: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """uint8 images (N, H, W) -> float32 (N, 1, H, W) with x' = (x / 255 - mean) / std."""
    return ((images.float() / 255.0 - mean) / std).unsqueeze(1)


@checker("normalize")
def check_normalize(fn):
    g = torch.Generator().manual_seed(101)  # local: the global RNG is never touched
    for n, h, w in ((5, 28, 28), (1, 7, 3)):
        imgs = torch.randint(0, 256, (n, h, w), dtype=torch.uint8, generator=g)
        mean, std = torch.rand(1, generator=g).item() * 0.5, 0.2 + torch.rand(1, generator=g).item()
        got = fn(imgs.clone(), mean, std)
        want = reference_normalize(imgs, mean, std)
        expect_shape(got, want.shape, "the normalised batch (N, 1, H, W)")
        expect_dtype(got, torch.float32, "the normalised batch")
        if got.max() > 10 and (got - ((imgs.float() - mean) / std).unsqueeze(1)).abs().max() < 1e-3:
            raise Wrong("the pixels were not scaled from [0, 255] to [0, 1] before subtracting the mean.")
        if torch.allclose(got, (imgs.float() / 255.0 / std - mean).unsqueeze(1), atol=1e-5) and mean > 0:
            raise Wrong("divide by std AFTER subtracting the mean: (x - mean) / std.")
        expect_close(got, want, "the normalised batch", atol=1e-5)


def _out_size(size: int, k: int, s: int, p: int, d: int) -> int:
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def reference_conv_macs(layer: nn.Conv2d, input_hw: tuple) -> int:
    """MACs of ``layer`` for ONE input of spatial size input_hw = (H, W)."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = layer.kernel_size, layer.stride, layer.padding, layer.dilation
    ho = _out_size(input_hw[0], kh, sh, ph, dh)
    wo = _out_size(input_hw[1], kw, sw, pw, dw)
    return layer.out_channels * (layer.in_channels // layer.groups) * kh * kw * ho * wo


@checker("conv_macs")
def check_conv_macs(fn):
    g = torch.Generator().manual_seed(102)  # local: the global RNG is never touched
    cases = [dict(in_channels=1, out_channels=20, kernel_size=5),  # LeNet-5 conv1
             dict(in_channels=3, out_channels=8, kernel_size=3, stride=2, padding=1),
             dict(in_channels=4, out_channels=8, kernel_size=3, dilation=2),
             dict(in_channels=8, out_channels=8, kernel_size=3, padding=1, groups=4)]
    for kw in cases:
        layer = nn.utils.skip_init(nn.Conv2d, **kw)  # no default init: it would draw from the global RNG
        with torch.no_grad():
            for p in layer.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
        hw = (int(torch.randint(12, 30, (1,), generator=g)), int(torch.randint(12, 30, (1,), generator=g)))
        want = macs(layer, (kw["in_channels"], *hw))
        got = fn(layer, hw)
        if not isinstance(got, int):
            raise Wrong(f"return an int, not {type(got).__name__}.")
        if got == want:
            continue
        desc = ", ".join(f"{k}={v}" for k, v in kw.items() if k not in ("in_channels", "out_channels"))
        if kw.get("groups", 1) > 1 and got == want * kw["groups"]:
            raise Wrong(f"for a grouped conv ({desc}) each output sees only in_channels / groups inputs.")
        ho_in = layer.out_channels * (layer.in_channels // layer.groups) * layer.kernel_size[0] ** 2 * hw[0] * hw[1]
        if got == ho_in:
            raise Wrong("you used the input size; MACs count OUTPUT positions: H_out = "
                        "floor((H + 2p - d(k - 1) - 1) / s) + 1.")
        raise Wrong(f"for Conv2d({kw['in_channels']}, {kw['out_channels']}, {desc}) on a {hw[0]}x{hw[1]} input "
                    f"you returned {got:,} MACs, expected {want:,} (check the output size: stride, padding, "
                    "dilation).")
