"""course_lib: the small, tested library behind the neural-network compression course.

One module per idea (see ../DESIGN.md): data, models, training, measure, results, plots,
and the chapter modules (pruning, quantization, lowrank, distillation, deploy, checks).
"""
__version__ = "0.1.0"

from .data import DATASETS, Splits, load_dataset, make_loaders  # noqa: F401
from .models import LeNet5, MLP, ResNet8, build_model  # noqa: F401
from .training import evaluate, fit, get_device, load_baseline, seed_everything  # noqa: F401
