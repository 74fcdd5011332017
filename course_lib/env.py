"""Environment check for the first cell of every notebook: versions, device, threads, and the CPU
features that decide how int8 kernels behave (VNNI)."""
from __future__ import annotations

import importlib
import os
import platform
import sys
import warnings
from pathlib import Path

from . import _validate as V

# (package, oldest version the course is tested with): the floors of pyproject.toml's ranges
# (tests/test_environment.py checks they agree); the exact tested versions are in constraints.txt
REQUIRED = {"torch": "2.6", "numpy": "2.4", "matplotlib": "3.11", "tqdm": "4.70"}


def _version_tuple(v: str) -> tuple:
    out = []
    for part in v.split("+")[0].split("."):
        digits = "".join(c for c in part if c.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out)


def check_environment(require_gpu: bool = False, verbose: bool = True) -> dict:
    """Check Python and package versions and report the device.

    Raises RuntimeError if Python < 3.10 or a required package is missing; a package older than the
    version the course is tested with only warns (a hosted notebook keeps its own torch, and the
    chapters mostly run on it; numbers may differ).
    Without a GPU it warns (or raises only if ``require_gpu``); the course runs on the CPU.
    Returns {"python", "packages": {name: version}, "device", "cuda"}.
    """
    if sys.version_info < (3, 10):
        raise RuntimeError(f"Python {platform.python_version()} is too old: the course needs >= 3.10")
    versions = {}
    for name, minimum in REQUIRED.items():
        try:
            mod = importlib.import_module(name)
        except ImportError as e:
            raise RuntimeError(f"package {name!r} is missing: run `make run` or `pip install -e .`") from e
        versions[name] = mod.__version__
        if _version_tuple(mod.__version__) < _version_tuple(minimum):
            warnings.warn(f"{name} {mod.__version__} is older than {minimum}, the oldest version the course is "
                          "tested with: chapters may still run, but numbers can differ and an API may be missing",
                          stacklevel=2)
    import torch

    from .training import get_device

    device = get_device()
    cuda = torch.cuda.is_available()
    if not cuda:
        if require_gpu:
            raise RuntimeError("a GPU was required (require_gpu=True) but CUDA is not available")
        warnings.warn("No GPU found: everything runs on the CPU (this course is built for that).",
                      stacklevel=2)
    if verbose:
        print(f"Python {platform.python_version()}; " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    return {"python": platform.python_version(), "packages": versions, "device": str(device), "cuda": cuda}


def start_chapter(seed: int, device=None, cpu_threads: int | None = None):
    """The first code cell of chapters 01 to 06, in one call (chapter 00 shows its steps one by one).

    Checks the environment (``check_environment``: versions, a warning without a GPU), picks the
    device (``training.get_device(device)``: None means $COURSE_DEVICE, else CUDA if available, else
    CPU), seeds every generator (``training.seed_everything(seed)``) and, when the device is the CPU
    and ``cpu_threads`` (>= 1) is given, sets PyTorch's intra-op threads to it. Prints the device and
    thread count and the CPU's model (``cpu_model``: which machine made the numbers below); returns
    (environment dict, torch.device).
    """
    import torch

    from .training import get_device, seed_everything
    if cpu_threads is not None:
        V.positive_int("cpu_threads", cpu_threads)
    env = check_environment()
    dev = get_device(device)
    seed_everything(seed)
    if cpu_threads is not None and dev.type == "cpu":
        torch.set_num_threads(cpu_threads)
    print("device:", dev, "| torch threads:", torch.get_num_threads(), "| CPU:", cpu_model())
    return env, dev


VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def quiet_torchao() -> None:
    """Silence the two warnings torchao 0.18 logs when it is imported on a CPU-only machine.

    transformers imports torchao whenever it is installed (chapter 8 installs it), so without this chapter
    6's first cell would print them: "Failed to load ..._C_mxfp8 / _C_cutlass_90a" (torchao's CUDA-only
    kernels, which cannot load without a GPU; its CPU operators are unaffected) and torch 2.13's notice
    that calling ``register_constant`` on an Enum class is deprecated (torchao still does). Neither changes
    a result. Only these two loggers are raised to ERROR; every other warning still shows.
    """
    import logging
    logging.getLogger("torchao").setLevel(logging.ERROR)
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)


def cpu_model(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what the platform module says."""
    try:
        for line in Path(cpuinfo).read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return " ".join(line.split(":", 1)[1].split())
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str] | None:
    """The instruction-set flags of this CPU as Linux reports them, or None where they cannot be read
    (macOS, Windows, a container without /proc)."""
    path = Path(cpuinfo)
    try:
        text = path.read_text()
    except OSError:
        return None
    flags = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags |= set(value.split())
    return flags


def has_vnni(flags: set[str] | None = None) -> bool:
    """True if the CPU has VNNI (x86 integer dot-product instructions, AVX512-VNNI or AVX-VNNI)."""
    flags = cpu_flags() if flags is None else flags
    return bool(flags) and any(f in flags for f in VNNI_FLAGS)


def u8s8_saturates(flags: set[str] | None = None, machine: str | None = None) -> bool:
    """True where onnxruntime's uint8 x int8 kernels can saturate: x86 CPUs without VNNI.

    There (AVX2, and AVX512 without VNNI) the kernels add pairs of u8*s8 products in int16
    (``vpmaddubsw``), which overflows for large activations and weights; onnxruntime's advice is to
    quantize weights to 7 bits (``reduce_range``). VNNI and ARM's dot-product instructions
    accumulate in int32 and are exact. An x86 CPU whose flags cannot be read counts as saturating
    (7-bit weights cost a little accuracy; saturation can cost a lot)."""
    if not is_x86(machine):
        return False
    return not has_vnni(flags)


X86_MACHINES = ("x86_64", "amd64", "i386", "i686", "x86")


def is_x86(machine: str | None = None) -> bool:
    """True if ``machine`` (platform.machine() when None: "x86_64", "AMD64", "arm64", "aarch64", ...)
    is an x86 CPU; False for ARM (Apple Silicon, Raspberry Pi, Graviton) and everything else."""
    return (machine or platform.machine()).lower() in X86_MACHINES


LAB_MODE_ENV = "COURSE_LAB_MODE"
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")


def lab_mode(value: bool | None = None) -> bool:
    """Resolve a chapter's ``LAB_MODE`` parameter.

    True/False are returned as given; None reads ``$COURSE_LAB_MODE`` ("1", "true", "yes", "on": True;
    unset, "", "0", "false", "no", "off": False). Lab mode cuts a chapter's budgets (one seed, fewer
    epochs, fewer timing rounds) so it runs in about a minute on a slow laptop; its numbers are then
    noisier, and a chapter's targets are reported but not asserted. papermill sets it with
    ``-p LAB_MODE True``; nbgrader's course configuration (``nbgrader_config.py``) sets the variable.
    """
    if value is None:
        raw = os.environ.get(LAB_MODE_ENV, "").strip().lower()
        if raw in _TRUE:
            return True
        if raw in _FALSE:
            return False
        raise ValueError(f"${LAB_MODE_ENV}={raw!r} is not a yes/no value: use one of {_TRUE + _FALSE[1:]}")
    if not isinstance(value, bool):
        raise TypeError(f"LAB_MODE={value!r} must be True, False or None (None reads ${LAB_MODE_ENV})")
    return value


def lab_note(lab: bool, cuts: str, less_reliable: str) -> None:
    """Print, in lab mode only, what the chapter cut and which of its numbers are less reliable."""
    if lab:
        print(f"LAB MODE: {cuts}. Less reliable than in the full run: {less_reliable}. "
              f"Targets are reported, not asserted. Set LAB_MODE = False for the full run.")


def targets_asserted(lab: bool, splits) -> bool:
    """Whether a chapter asserts its targets (its claims about accuracy, size and speed), or only prints
    each as met or MISSED.

    Asserted in the full run on the course's own dataset, the one they were set and checked on (it has a
    stated baseline accuracy, ``splits.target_accuracy``; ``mnist5k``). Reported in lab mode (cut budgets)
    and on any other dataset: a claim checked on MNIST may honestly not carry over to other data, and a
    chapter must still run top to bottom there. Invariants (exact counts, bit-exact kernels, formulas) are
    asserted everywhere. ``splits``: a ``data.Splits``."""
    lab = lab_mode(lab)
    return not lab and getattr(splits, "target_accuracy", None) is not None


def report_targets(targets: dict, asserted: bool) -> None:
    """Print every target as met or MISSED; then, if ``asserted``, fail naming the missed ones."""
    for what, ok in targets.items():
        print(f"{'met   ' if ok else 'MISSED'} {what}")
    if asserted:
        missed = [what for what, ok in targets.items() if not ok]
        assert not missed, f"targets missed: {missed}"


def data_note(splits) -> None:
    """Print, when ``splits`` is not the course's own dataset, that its targets are reported, not asserted."""
    if getattr(splits, "target_accuracy", None) is None:
        print(f"DATASET {splits.name}: not the course's dataset. Every target is stated relative to this "
              f"dataset's own baseline and reported as met or MISSED, not asserted (they were set on mnist5k); "
              f"invariants are still asserted.")
