"""course_lib: the small, tested library behind the neural-network compression course.

One module per idea; the notebooks import it and copy nothing from it.

- foundations: ``data`` (datasets, loaders), ``models`` (LeNet-5, MLP, ResNet-8, deployment variants),
  ``training`` (seeding, ``fit``, ``evaluate``, the cached baseline), ``env`` (environment report);
- measurement: ``measure`` (counts, exact MACs, serialized bytes, the one timer), ``records`` (the one
  results record, results files and page), ``storage`` (every file the course writes and its size,
  the ``.ccz`` format), ``huffman`` (the lesson's entropy coder);
- techniques: ``pruning``, ``quantization`` (a package: affine, calibration, fakequant, kmeans, packing,
  weight_only, torch_ao), ``lowrank``, ``distillation``;
- applications: ``recipes`` (every named recipe the chapters and the benchmark run), ``deploy`` (ONNX
  and onnxruntime), ``bert`` (the pretrained sentence encoder of chapter 6), ``robustness``;
- teaching: ``plots`` (shared figures), ``checks`` (one checker per exercise).

Imports point one way: techniques never import ``deploy``, ``plots``, ``checks``, ``recipes`` or a
notebook, and ``data``, ``models`` and ``measure`` import no technique.
"""
__version__ = "0.1.0"

import importlib
import importlib.util

# Re-exported names, imported on first use (PEP 562) so that ``python -m course_lib`` (the course's
# commands, which set up torch) runs on a bare Python. ``from course_lib import load_dataset`` works as before.
_EXPORTS = {
    "data": ("DATASETS", "Splits", "load_dataset", "make_loaders"),
    "models": ("LeNet5", "MLP", "ResNet8", "build_model"),
    "training": ("evaluate", "fit", "get_device", "load_baseline", "seed_everything"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    """Import a re-exported name, or a submodule (``course_lib.measure``), on first access."""
    if name.startswith("_"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name in _WHERE:
        value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    elif importlib.util.find_spec(f"{__name__}.{name}") is not None:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_WHERE))
