"""k-means weight sharing (Deep Compression, Han et al. 2016): each layer's weights take one of
``2**bits`` shared values, a per-layer codebook found by 1-D k-means."""
from __future__ import annotations

import copy

import torch
from torch import nn

from .._validate import finite_tensor, int_in, layer_bits
from .affine import check_bits
from ..models import replace_module
from .fakequant import layer_forward, replace_layers

__all__ = ["kmeans_quantize", "KMeansWrapper", "kmeans_model", "share_weights", "shared_weights_model",
           "bake_shared"]


def _levels(bits: int, levels) -> int:
    """The number of shared values: ``levels`` (2..2**bits) if given, else 2**bits."""
    return 2 ** bits if levels is None else int_in("levels", levels, 2, 2 ** bits)


@torch.no_grad()
def kmeans_quantize(weight: torch.Tensor, bits: int, iters: int = 30,
                    levels: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster the values of ``weight`` into ``2**bits`` (or ``levels``) shared values (Deep Compression, 1-D k-means).

    Centroids start linearly spaced between min and max (Han et al. 2016 compared random, density
    and linear initialisation and found linear best: it is the only one that starts centroids in the
    sparse tails, where the few large weights are), then ``iters`` (>= 0) Lloyd steps (assign to
    the nearest centroid, move each centroid to its cluster's mean; an empty cluster keeps its
    centroid). The Lloyd steps minimise the squared error, so they pull the outer centroids towards
    the bulk: after many iterations the largest weights are no longer represented by a centroid of
    their size (chapter 2 measures it); fine-tuning the centroids then decides where they go.
    bits 1..16 (the index width); levels: 2..2**bits shared values (default 2**bits; e.g. 3 levels
    stored in 2 bits). Returns (codebook float32 of shape (levels,), sorted; indices int64 of
    weight's shape) with ``codebook[indices]`` the shared-value weight.
    """
    bits = check_bits(bits)
    k = _levels(bits, levels)
    finite_tensor("weight", weight)
    if weight.numel() == 0:
        raise ValueError("weight is empty: nothing to cluster")
    int_in("iters", iters, 0, None)
    w = weight.detach().float().reshape(-1).cpu()
    c = torch.linspace(float(w.min()), float(w.max()), k)

    def nearest(c):  # c sorted: the nearest centroid is found by the midpoints between neighbours
        return torch.bucketize(w, (c[1:] + c[:-1]) / 2)

    for _ in range(iters):
        idx = nearest(c)
        sums = torch.zeros(k, dtype=torch.float64).index_add_(0, idx, w.double())
        counts = torch.bincount(idx, minlength=k)
        new = torch.where(counts > 0, (sums / counts.clamp(min=1)).float(), c)
        new, _ = torch.sort(new)
        if torch.equal(new, c):
            break
        c = new
    return c, nearest(c).reshape(weight.shape)


class KMeansWrapper(nn.Module):
    """A Conv2d or Linear whose weight is ``codebook[indices]``: 2**bits (or ``levels``) shared values per layer.

    The codebook is an ``nn.Parameter`` (fine-tuning it sums, per centroid, the gradients of all the
    weights that share it, as in Deep Compression); indices are a fixed buffer; the bias stays float.
    keep_zeros=True (a pruned layer): only the non-zero weights are clustered; the zeros stay exactly
    zero whatever the codebook becomes (their index is -1), so training the centroids keeps the sparsity.
    """

    def __init__(self, layer: nn.Module, bits: int, iters: int = 30, levels: int | None = None,
                 keep_zeros: bool = False):
        super().__init__()
        if not isinstance(layer, (nn.Conv2d, nn.Linear)):
            raise TypeError(f"KMeansWrapper wraps nn.Conv2d or nn.Linear, not {type(layer).__name__}")
        self.layer, self.bits = layer, check_bits(bits)
        self.levels = _levels(self.bits, levels)
        self.keep_zeros = bool(keep_zeros)
        w = layer.weight.detach()
        if self.keep_zeros:
            nz = w != 0
            if not bool(nz.any()):
                raise ValueError("keep_zeros=True on a layer whose weights are all zero: nothing to cluster")
            codebook, idx = kmeans_quantize(w[nz], bits, iters, self.levels)
            indices = torch.full(w.shape, -1, dtype=torch.int64)
            indices[nz] = idx
        else:
            codebook, indices = kmeans_quantize(w, bits, iters, self.levels)
        self.codebook = nn.Parameter(codebook)
        self.register_buffer("indices", indices)
        layer.weight.requires_grad_(False)

    def quantized_weight(self) -> torch.Tensor:
        if self.keep_zeros:
            keep = self.indices >= 0
            return torch.where(keep, self.codebook[self.indices.clamp(min=0)], torch.zeros((), dtype=self.codebook.dtype))
        return self.codebook[self.indices]

    def forward(self, x):
        return layer_forward(self.layer, x, self.quantized_weight())

    def extra_repr(self) -> str:
        return f"bits={self.bits}, codebook of {self.codebook.numel()}"


def kmeans_model(model: nn.Module, bits: int, iters: int = 30, levels: int | None = None) -> nn.Module:
    """A deep copy of ``model`` with every Conv2d/Linear's weights shared through a per-layer codebook
    of 2**bits (or ``levels``, 2..2**bits) values, indices stored in ``bits`` bits.

    Fine-tune the centroids with ``training.fit(q, ..., params=[m.codebook for m in ...])``.
    """
    q = copy.deepcopy(model).cpu().eval()
    return replace_layers(q, lambda m: KMeansWrapper(m, bits, iters, levels))


@torch.no_grad()
def share_weights(model: nn.Module, bits, iters: int = 30) -> dict:
    """k-means weight sharing of the NON-ZERO weights of every Conv2d/Linear layer, IN PLACE.

    Zeros left by pruning stay exactly zero (they are positions, not values); the non-zeros of each
    layer are replaced by the nearest of 2**bits shared values. bits: int in 1..16, or a dict
    {layer name: bits} (layers not named are left alone; a name that is not a Conv2d/Linear of
    ``model`` raises ValueError). Returns {layer name: codebook}.
    """
    books = {}
    for name, b in layer_bits(model, bits).items():
        w = model.get_submodule(name).weight
        nz = w != 0
        if int(nz.sum()) == 0:
            continue
        cb, idx = kmeans_quantize(w[nz], b, iters)
        w[nz] = cb[idx]
        books[name] = cb
    return books


def shared_weights_model(model: nn.Module, bits, iters: int = 30) -> nn.Module:
    """Deep Compression's *trained* quantization, set up: a deep copy of ``model`` whose Conv2d/Linear
    layers share their NON-ZERO weights through a trainable per-layer codebook (``KMeansWrapper`` with
    ``keep_zeros=True``; pruned zeros stay zero). bits: int in 1..16 for every layer, or {layer: bits}
    (e.g. Han et al.'s 8 for conv and 5 for fc; layers not named stay float). Train the centroids with
    ``training.fit(q, ..., params=[p for n, p in q.named_parameters() if n.endswith("codebook")])``
    (autograd sums the gradients of the weights that share a centroid), then ``bake_shared``."""
    q = copy.deepcopy(model).cpu().eval()
    for name, b in layer_bits(q, bits).items():
        replace_module(q, name, KMeansWrapper(q.get_submodule(name), b, iters, keep_zeros=True))
    return q


@torch.no_grad()
def bake_shared(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with every ``KMeansWrapper`` replaced by its plain layer holding the
    shared weights (``codebook[indices]``, zeros kept): an ordinary model again, whose non-zeros take
    at most ``levels`` distinct values per layer, ready for ``storage.save_compressed``."""
    q = copy.deepcopy(model)
    names = [n for n, m in q.named_modules() if isinstance(m, KMeansWrapper)]
    for name in names:
        w = q.get_submodule(name)
        layer = w.layer
        layer.weight.copy_(w.quantized_weight().to(layer.weight.dtype))
        layer.weight.requires_grad_(True)
        replace_module(q, name, layer)
    return q.eval()
