"""Datasets: the embedded MNIST sample and loaders for the full datasets.

``load_dataset("mnist5k")`` reads the 5,000-image sample committed in ``data/``
(no network, checksum verified). ``"mnist"``, ``"fashion_mnist"`` and
``"cifar10"`` read the official archives (IDX gzip files, the CIFAR-10 python
tarball) from ``root``; they download them only when ``download=True``.

Every split is a ``torch.utils.data.TensorDataset`` of ``(x, y)`` where ``x`` is
float32 of shape ``(N, C, H, W)``, normalised with the dataset's mean and std,
and ``y`` is int64 in ``[0, num_classes)``.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import struct
import tarfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from . import _validate as V

REPO_ROOT = Path(__file__).resolve().parent.parent
# Running from a git checkout (editable install, make, python -m course_lib) or from an installed wheel?
IN_CHECKOUT = (REPO_ROOT / "pyproject.toml").is_file() and (REPO_ROOT / "course_lib").is_dir()
# The embedded data: course_lib/_data inside a wheel (pyproject.toml maps data/ there), else <checkout>/data
_PACKAGED_DATA = Path(__file__).resolve().parent / "_data"
DATA_DIR = _PACKAGED_DATA if (_PACKAGED_DATA / "mnist5k.npz").is_file() else REPO_ROOT / "data"
# Everything the course writes (cached baselines, results): <checkout>/build, else $COURSE_HOME or
# ~/.cache/course_lib, so an installed course never writes into site-packages
BUILD_DIR = (REPO_ROOT / "build" if IN_CHECKOUT
             else Path(os.environ.get("COURSE_HOME") or Path.home() / ".cache" / "course_lib"))


@dataclass(frozen=True)
class DatasetInfo:
    """Registry entry: how to find, verify and normalise one dataset."""

    name: str
    kind: str  # "npz", "idx" or "cifar"
    files: dict  # file name -> SHA-256 of the file as distributed
    classes: tuple
    input_shape: tuple  # (C, H, W)
    mean: tuple
    std: tuple
    urls: dict = field(default_factory=dict)  # file name -> download URL
    default_root: Path | None = None
    val_size: int = 0  # images held out of the official train split for validation
    target_accuracy: float | None = None  # the baseline's test accuracy the course states for it, if any


MNIST_CLASSES = tuple(str(i) for i in range(10))
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                 "dog", "frog", "horse", "ship", "truck")
_IDX_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
              "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
_MNIST_MIRROR = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_FASHION_MIRROR = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"

DATASETS: dict[str, DatasetInfo] = {
    "mnist5k": DatasetInfo(
        name="mnist5k", kind="npz",
        files={"mnist5k.npz": "97a109536c8b055a462ffb3de1d420133bc500b66d777dd118f8d5ac11a129cd"},
        classes=MNIST_CLASSES, input_shape=(1, 28, 28), mean=(0.1307,), std=(0.3081,),
        default_root=DATA_DIR, target_accuracy=0.98),
    "mnist": DatasetInfo(
        name="mnist", kind="idx",
        files=dict(zip(_IDX_FILES, (
            "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"))),
        urls={f: _MNIST_MIRROR + f for f in _IDX_FILES},
        classes=MNIST_CLASSES, input_shape=(1, 28, 28), mean=(0.1307,), std=(0.3081,),
        val_size=5000),
    "fashion_mnist": DatasetInfo(
        name="fashion_mnist", kind="idx",
        files=dict(zip(_IDX_FILES, (
            "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
            "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
            "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"))),
        urls={f: _FASHION_MIRROR + f for f in _IDX_FILES},
        classes=FASHION_CLASSES, input_shape=(1, 28, 28), mean=(0.2860,), std=(0.3530,),
        val_size=5000),
    "cifar10": DatasetInfo(
        name="cifar10", kind="cifar",
        files={"cifar-10-python.tar.gz":
               "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"},
        urls={"cifar-10-python.tar.gz": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"},
        classes=CIFAR_CLASSES, input_shape=(3, 32, 32),
        mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
        val_size=5000),
}
VAL_SPLIT_SEED = 20261125


@dataclass
class Splits:
    """Train/val/test datasets plus what a model needs to know about them."""

    train: TensorDataset
    val: TensorDataset
    test: TensorDataset
    classes: tuple
    input_shape: tuple  # (C, H, W) of one image
    name: str
    mean: tuple = ()  # per-channel mean and std the images were normalised with (to undo it for display)
    std: tuple = ()
    target_accuracy: float | None = None  # DatasetInfo.target_accuracy: None for every dataset but the course's

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def chance(self) -> float:
        """Accuracy of guessing the most frequent test class: what a model must clearly beat."""
        counts = torch.bincount(self.test.tensors[1], minlength=self.num_classes)
        return counts.max().item() / max(1, counts.sum().item())


def sha256_file(path: Path) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_name(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise ValueError(f"dataset name={name!r} is unknown; valid names: {sorted(DATASETS)}, or the path "
                         "of your own .npz or CIFAR-10-format .tar.gz")
    return DATASETS[name]


def _default_root(info: DatasetInfo) -> Path:
    if info.default_root is not None:
        return info.default_root
    base = Path(os.environ.get("COURSE_DATA", Path.home() / ".cache" / "course_data"))
    return base / info.name


def _download(url: str, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".part")
    print(f"downloading {url} -> {dest}")
    with urllib.request.urlopen(url, timeout=120) as r, open(tmp, "wb") as f:
        while chunk := r.read(1 << 20):
            f.write(chunk)
    tmp.replace(dest)


def fetch_files(name: str, root: str | os.PathLike | None = None, download: bool = False) -> dict:
    """Locate (and, only if ``download=True``, download) the files of dataset ``name``.

    Returns {file name: Path}. Every file is verified against the registry's SHA-256;
    a missing file raises ``FileNotFoundError`` naming the expected path, a wrong
    checksum raises ``ValueError`` naming the file, the expected and the actual digest.
    """
    info = _check_name(name)
    root = Path(root) if root is not None else _default_root(info)
    paths = {}
    for fname, digest in info.files.items():
        path = root / fname
        if not path.exists():
            if download and fname in info.urls:
                _download(info.urls[fname], path)
            else:
                raise FileNotFoundError(
                    f"dataset {name!r}: expected file {path} is missing. "
                    f"Put the official file there or call load_dataset({name!r}, root=..., download=True).")
        actual = sha256_file(path)
        if actual != digest:
            raise ValueError(f"dataset {name!r}: checksum mismatch for {path}: "
                             f"expected sha256 {digest}, got {actual}. The file is corrupt or not the official one.")
        paths[fname] = path
    return paths


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) of unsigned bytes into an array.

    Returns uint8 of shape (N,) for labels (magic 2049) or (N, rows, cols) for images (2051).
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        raise ValueError(f"IDX file {path} is truncated ({len(raw)} bytes)")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08 or ndim not in (1, 3):
        raise ValueError(f"IDX file {path}: bad magic (dtype 0x{dtype_code:02x}, ndim {ndim}); "
                         "expected unsigned-byte data with 1 or 3 dimensions")
    shape = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"IDX file {path}: header says shape {shape} but holds {data.size} values")
    return data.reshape(shape)


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds what a CIFAR-10 batch contains (dicts, lists, bytes, numpy arrays).

    Anything else (a crafted pickle calling os.system, say) raises ``pickle.UnpicklingError``.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store raw bytes
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch")


def _read_cifar_tar(path: Path):
    """Return (train_x, train_y, test_x, test_y), uint8 NCHW and int64, from the python tarball."""
    xs, ys, test = [], [], None
    with tarfile.open(path, "r:gz") as tar:
        members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
        names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        for n in names:
            if n not in members:
                raise ValueError(f"CIFAR archive {path} has no member {n!r}")
            d = _CifarUnpickler(io.BytesIO(tar.extractfile(members[n]).read()), encoding="bytes").load()
            x = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            y = np.asarray(d[b"labels"], dtype=np.int64)
            if n == "test_batch":
                test = (x, y)
            else:
                xs.append(x)
                ys.append(y)
    return np.concatenate(xs), np.concatenate(ys), test[0], test[1]


def _to_dataset(images: np.ndarray, labels: np.ndarray, info: DatasetInfo) -> TensorDataset:
    x = torch.from_numpy(np.array(images, dtype=np.uint8)).float().div_(255.0)
    if x.ndim == 3:
        x = x.unsqueeze(1)
    mean = torch.tensor(info.mean).view(1, -1, 1, 1)
    std = torch.tensor(info.std).view(1, -1, 1, 1)
    return TensorDataset((x - mean) / std, torch.from_numpy(np.asarray(labels, dtype=np.int64)))


def _stratified_holdout(labels: np.ndarray, n_val: int, seed: int) -> np.ndarray:
    """Boolean mask of ``n_val`` validation indices, the same fraction from every class."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), dtype=bool)
    classes = np.unique(labels)
    per_class = max(1, n_val // len(classes))
    for c in classes:
        idx = rng.permutation(np.flatnonzero(labels == c))
        mask[idx[:per_class]] = True
    return mask


# ------------------------------------------------------------------ your own data
USER_SPLIT = (0.7, 0.1, 0.2)  # train / val / test fractions when a user .npz has no ``split`` array
_USER_SUFFIXES = (".npz", ".tar.gz", ".tgz")


def is_user_dataset(name) -> bool:
    """True if ``name`` names a file of your own (a path ending in .npz, .tar.gz or .tgz), not a registry entry."""
    return isinstance(name, (str, os.PathLike)) and str(name).lower().endswith(_USER_SUFFIXES)


def atomic_write(path, payload) -> Path:
    """Write ``payload`` (bytes, or a function that writes to a binary file object, e.g.
    ``lambda f: torch.save(state, f)``) to ``path`` through a temporary name in the same folder and a
    rename, so a reader (another kernel, a test running beside) never sees half a file. Creates the
    folder; returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            payload(f) if callable(payload) else f.write(payload)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def expected_sha256(path) -> str | None:
    """The SHA-256 that the ``SHA256SUMS`` beside ``path`` lists for it (lower-case hex), or None when
    there is no such file or it does not list ``path``. Format as ``sha256sum`` writes it:
    ``<hex digest>  <file name>`` per line (a ``*`` before the name, binary mode, is accepted)."""
    path = Path(path)
    sums = path.parent / "SHA256SUMS"
    if sums.is_file():
        for line in sums.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1].lstrip("*") == path.name:
                return parts[0].lower()
    return None


def verify_checksum(path, required: bool = False, hint: str = "") -> str:
    """SHA-256 of ``path``, checked against the ``SHA256SUMS`` file beside it (the format ``sha256sum``
    writes, so ``sha256sum mydata.npz > SHA256SUMS`` registers a file of your own).

    A mismatch (a corrupted, truncated or replaced file) raises ValueError naming the file, the expected
    and the actual digest, then ``hint`` (how to rebuild it). A file that ``SHA256SUMS`` does not list is
    accepted unless ``required`` (the course's own data files are always listed). Returns the digest."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"file {path} does not exist")
    digest = sha256_file(path)
    expected = expected_sha256(path)
    if expected is None and required:
        raise ValueError(f"{path.parent / 'SHA256SUMS'} does not list {path.name}: its checksum cannot be "
                         f"verified{'; ' + hint if hint else ''}")
    if expected is not None and expected != digest:
        raise ValueError(f"checksum mismatch for {path} with {path.parent / 'SHA256SUMS'}: expected sha256 "
                         f"{expected}, got {digest}. The file is corrupted, truncated or was replaced"
                         f"{'; ' + hint if hint else ''}.")
    return digest


def dataset_key(name) -> str:
    """A short name for ``name`` that is safe in file names and changes when a user file changes.

    Registry names are returned as they are; a user file gives ``<stem>-<first 10 hex digits of its
    SHA-256>`` (so a cached baseline is never reused for different data)."""
    if not is_user_dataset(name):
        return str(name)
    path = Path(name).expanduser()
    stem = path.name.split(".")[0] or "data"
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in stem)
    return f"{safe}-{sha256_file(path)[:10]}"


def _images_to_nchw(images: np.ndarray, path: Path) -> np.ndarray:
    """uint8 (N, C, H, W) from (N, H, W), (N, H, W, C) with C in {1, 3, 4} or (N, C, H, W)."""
    if images.ndim == 3:
        images = images[:, None]
    elif images.ndim == 4:
        if images.shape[-1] in (1, 3, 4) and images.shape[1] not in (1, 3, 4):
            images = images.transpose(0, 3, 1, 2)
    else:
        raise ValueError(f"{path}: array 'images' has shape {images.shape}; expected (N, H, W), "
                         "(N, H, W, C) or (N, C, H, W)")
    n, c, h, w = images.shape
    if c not in (1, 3, 4) or min(h, w) < 16:
        raise ValueError(f"{path}: images of shape {images.shape[1:]} (C, H, W): need 1, 3 or 4 channels "
                         "and H, W >= 16 (the course's LeNet-5 needs 16x16 at least)")
    if np.issubdtype(images.dtype, np.floating):
        if not np.isfinite(images).all() or images.min() < 0 or images.max() > 1:
            raise ValueError(f"{path}: float 'images' must lie in [0, 1] (got [{images.min()}, {images.max()}])")
        images = np.round(images * 255).astype(np.uint8)
    elif images.dtype != np.uint8:
        raise ValueError(f"{path}: 'images' has dtype {images.dtype}; expected uint8 (0..255) or float in [0, 1]")
    return np.ascontiguousarray(images)


def read_user_npz(path: str | os.PathLike) -> tuple[list, tuple]:
    """Read your own dataset from an ``.npz``: ([(images, labels)] for train, val, test; class names).

    Arrays (``np.savez(path, images=..., labels=..., split=..., class_names=...)``):
    - ``images``: uint8 (0..255) or float in [0, 1], shape (N, H, W), (N, H, W, C) or (N, C, H, W),
      C in {1, 3, 4}, H and W >= 16;
    - ``labels``: integers in [0, K), shape (N,), every class present, K >= 2;
    - ``split`` (optional): 0 train, 1 validation, 2 test, shape (N,), none of them empty; without it
      a stratified split seeded with ``VAL_SPLIT_SEED`` keeps ``USER_SPLIT`` (70/10/20) of each class;
    - ``class_names`` (optional): K strings (default "0" .. "K-1").
    Saved without pickles (``allow_pickle=False``): object arrays are refused. Errors name the array,
    what it holds and what is expected.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"dataset file {path} does not exist")
    with np.load(path, allow_pickle=False) as z:
        missing = [k for k in ("images", "labels") if k not in z.files]
        if missing:
            raise ValueError(f"{path}: missing array(s) {missing}; found {sorted(z.files)}. "
                             "Needed: images, labels; optional: split, class_names")
        try:
            images, labels = z["images"], z["labels"]
            split = z["split"] if "split" in z.files else None
            names = z["class_names"] if "class_names" in z.files else None
        except ValueError as e:  # object arrays need pickles, which are never loaded
            raise ValueError(f"{path}: cannot read it without pickles ({e}); save plain arrays with np.savez") from e
    images = _images_to_nchw(images, path)
    if labels.ndim != 1 or len(labels) != len(images) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{path}: 'labels' must be integers of shape ({len(images)},), one per image; "
                         f"got dtype {labels.dtype}, shape {labels.shape}")
    labels = labels.astype(np.int64)
    k = int(labels.max()) + 1 if len(labels) else 0
    if len(labels) == 0 or labels.min() < 0 or k < 2:
        raise ValueError(f"{path}: 'labels' must lie in [0, K) with K >= 2 classes; "
                         f"got range [{labels.min() if len(labels) else None}, {labels.max() if len(labels) else None}]")
    absent = sorted(set(range(k)) - set(np.unique(labels).tolist()))
    if absent:
        raise ValueError(f"{path}: classes {absent[:10]} of [0, {k}) have no image; labels must be 0..K-1 without gaps")
    if names is not None:
        if names.ndim != 1 or len(names) != k or names.dtype.kind not in "US":
            raise ValueError(f"{path}: 'class_names' must be {k} strings (one per class); "
                             f"got dtype {names.dtype}, shape {names.shape}")
        classes = tuple(str(n) for n in names)
    else:
        classes = tuple(str(i) for i in range(k))
    if split is None:
        split = _stratified_split(labels, USER_SPLIT, VAL_SPLIT_SEED)
    elif split.shape != labels.shape or not np.isin(split, (0, 1, 2)).all():
        raise ValueError(f"{path}: 'split' must hold 0 (train), 1 (val) or 2 (test) per image, shape "
                         f"{labels.shape}; got shape {split.shape}, values {np.unique(split)[:5]}")
    parts = [(images[split == s], labels[split == s]) for s in (0, 1, 2)]
    empty = [n for n, (_, y) in zip(("train", "val", "test"), parts) if len(y) == 0]
    if empty:
        raise ValueError(f"{path}: the {', '.join(empty)} split(s) are empty; give every split images")
    return parts, classes


def _stratified_split(labels: np.ndarray, fractions: tuple, seed: int) -> np.ndarray:
    """0/1/2 per label: of every class, ``fractions`` (train, val, test) of its images, seeded; at
    least one image of each class in val and test when the class has 3 or more."""
    rng = np.random.default_rng(seed)
    split = np.zeros(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = max(1, round(fractions[1] * len(idx))) if len(idx) >= 3 else 0
        n_test = max(1, round(fractions[2] * len(idx))) if len(idx) >= 3 else 0
        split[idx[:n_val]] = 1
        split[idx[n_val:n_val + n_test]] = 2
    return split


def _cifar_label_names(path: Path, k: int) -> tuple:
    """label_names of a CIFAR-format archive's batches.meta, else "0" .. "K-1"."""
    with tarfile.open(path, "r:gz") as tar:
        for m in tar.getmembers():
            if m.isfile() and Path(m.name).name == "batches.meta":
                d = _CifarUnpickler(io.BytesIO(tar.extractfile(m).read()), encoding="bytes").load()
                names = [n.decode() if isinstance(n, bytes) else str(n) for n in d.get(b"label_names", [])]
                if len(names) >= k:
                    return tuple(names[:k])
    return tuple(str(i) for i in range(k))


def _user_info(name: str, input_shape: tuple, classes: tuple, train_x: np.ndarray) -> DatasetInfo:
    """A registry entry for a user file: per-channel mean and std measured on its training split."""
    x = train_x.astype(np.float64) / 255.0
    mean = tuple(float(v) for v in x.mean(axis=(0, 2, 3)))
    std = tuple(max(float(v), 1e-3) for v in x.std(axis=(0, 2, 3)))
    return DatasetInfo(name=name, kind="user", files={}, classes=classes, input_shape=input_shape,
                       mean=mean, std=std)


def _load_user(name, limit) -> Splits:
    """``load_dataset`` for a path: an .npz (``read_user_npz``) or a CIFAR-10-format .tar.gz."""
    path = Path(name).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"DATASET={str(name)!r}: no such file. Give a registry name "
                                f"({sorted(DATASETS)}) or the path of an .npz or CIFAR-10-format .tar.gz")
    verify_checksum(path)
    if str(path).lower().endswith(".npz"):
        parts, classes = read_user_npz(path)
    else:
        tx, ty, ex, ey = _read_cifar_tar(path)
        k = int(max(ty.max(), ey.max())) + 1
        classes = _cifar_label_names(path, k)
        val = _stratified_holdout(ty, max(len(classes), len(ty) // 10), VAL_SPLIT_SEED)
        parts = [(tx[~val], ty[~val]), (tx[val], ty[val]), (ex, ey)]
    if limit is not None:
        parts = _subset(parts, limit)
    info = _user_info(dataset_key(path), tuple(parts[0][0].shape[1:]), classes, parts[0][0])
    train, val, test = (_to_dataset(x, y, info) for x, y in parts)
    return Splits(train, val, test, info.classes, info.input_shape, info.name, info.mean, info.std,
                  info.target_accuracy)


def _subset(parts: list, limit: int) -> list:
    """A seeded random subset of ``limit`` images of each split, so every class is represented."""
    picks = [np.sort(np.random.default_rng(VAL_SPLIT_SEED).permutation(len(y))[:limit]) for _, y in parts]
    return [(x[i], y[i]) for (x, y), i in zip(parts, picks)]


def load_dataset(name: str = "mnist5k", root: str | os.PathLike | None = None,
                 download: bool = False, limit: int | None = None) -> Splits:
    """Load a dataset into train/val/test ``Splits``.

    name: one of ``DATASETS`` ("mnist5k" ships with the course; "mnist", "fashion_mnist",
    "cifar10" read their official archives from ``root``, default ``$COURSE_DATA/<name>``
    or ``~/.cache/course_data/<name>``), or the path of your own data: an ``.npz`` (arrays described
    in ``read_user_npz``) or an archive in the CIFAR-10 python format (``.tar.gz``); a ``SHA256SUMS``
    file beside it, if present, is checked; images are normalised with the mean and std of their
    training split. download: fetch missing official files (never implied). limit: keep a seeded random
    subset of ``limit`` images of each split (>= 1), for quick runs.
    """
    if limit is not None:
        V.positive_int("limit", limit)
    if is_user_dataset(name):
        return _load_user(name, limit)
    info = _check_name(name)
    paths = fetch_files(name, root, download)
    if info.kind == "npz":
        with np.load(paths["mnist5k.npz"], allow_pickle=False) as z:
            images, labels, split = z["images"], z["labels"].astype(np.int64), z["split"]
        parts = [(images[split == s], labels[split == s]) for s in (0, 1, 2)]
    else:
        if info.kind == "idx":
            tx, ty = read_idx(paths[_IDX_FILES[0]]), read_idx(paths[_IDX_FILES[1]]).astype(np.int64)
            ex, ey = read_idx(paths[_IDX_FILES[2]]), read_idx(paths[_IDX_FILES[3]]).astype(np.int64)
        else:
            tx, ty, ex, ey = _read_cifar_tar(paths["cifar-10-python.tar.gz"])
        if len(tx) != len(ty) or len(ex) != len(ey):
            raise ValueError(f"dataset {name!r}: images and labels differ in count")
        n_val = min(info.val_size, len(ty) // 10)
        val = _stratified_holdout(ty, n_val, VAL_SPLIT_SEED)
        parts = [(tx[~val], ty[~val]), (tx[val], ty[val]), (ex, ey)]
    if limit is not None:
        parts = _subset(parts, limit)
    train, val, test = (_to_dataset(x, y, info) for x, y in parts)
    return Splits(train, val, test, info.classes, info.input_shape, info.name, info.mean, info.std,
                  info.target_accuracy)


def make_loaders(splits: Splits, batch_size: int = 128, shuffle_train: bool = True,
                 seed: int = 0) -> tuple[DataLoader, DataLoader, DataLoader]:
    """(train, val, test) DataLoaders; the train loader shuffles with its own seeded generator."""
    V.positive_int("batch_size", batch_size)
    g = torch.Generator().manual_seed(seed)
    return (DataLoader(splits.train, batch_size, shuffle=shuffle_train, generator=g),
            DataLoader(splits.val, batch_size),
            DataLoader(splits.test, batch_size))


def tensors(dataset: TensorDataset) -> tuple[torch.Tensor, torch.Tensor]:
    """The (x, y) tensors behind a TensorDataset (or a Subset of one)."""
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[0], dataset.tensors[1]
    if isinstance(dataset, torch.utils.data.Subset):
        x, y = tensors(dataset.dataset)
        idx = torch.as_tensor(dataset.indices)
        return x[idx], y[idx]
    xs, ys = zip(*(dataset[i] for i in range(len(dataset))))
    return torch.stack(xs), torch.as_tensor(ys)
