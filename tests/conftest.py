"""Fixtures shared by several test files."""
import pytest
import torch

from course_lib.models import LeNet5


@pytest.fixture(scope="module")
def tiny_lenet():
    """(model, x, y): a small random LeNet-5 (4/6/16 channels), 96 random images and the model's own labels."""
    torch.manual_seed(0)
    model = LeNet5(c1=4, c2=6, fc=16).eval()
    x = torch.randn(96, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y
