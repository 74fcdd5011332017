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

from .data import DATASETS, Splits, load_dataset, make_loaders  # noqa: F401
from .models import LeNet5, MLP, ResNet8, build_model  # noqa: F401
from .training import evaluate, fit, get_device, load_baseline, seed_everything  # noqa: F401
