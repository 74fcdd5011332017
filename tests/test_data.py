"""Data: the embedded sample, the full-dataset loaders (on small archives built here), errors."""
import gzip
import hashlib
import io
import pickle
import struct
import tarfile

import numpy as np
import pytest
import torch

from course_lib import data
from course_lib.data import DATASETS, Splits, load_dataset, make_loaders, read_idx


def test_embedded_dataset_split_and_checksum():
    s = load_dataset("mnist5k")
    assert isinstance(s, Splits)
    assert (len(s.train), len(s.val), len(s.test)) == (3500, 500, 1000)
    assert s.input_shape == (1, 28, 28) and s.num_classes == 10
    for part, n in ((s.train, 350), (s.val, 50), (s.test, 100)):
        x, y = part.tensors
        assert x.dtype == torch.float32 and x.shape[1:] == (1, 28, 28)
        assert torch.bincount(y, minlength=10).tolist() == [n] * 10
    # normalised: background pixels map to -mean/std
    assert s.train.tensors[0].min().item() == pytest.approx(-0.1307 / 0.3081, abs=1e-5)


def test_embedded_split_is_disjoint():
    with np.load(data.DATA_DIR / "mnist5k.npz") as z:
        split = z["split"]
    assert sorted(np.bincount(split).tolist()) == [500, 1000, 3500]
    assert data.sha256_file(data.DATA_DIR / "mnist5k.npz") == DATASETS["mnist5k"].files["mnist5k.npz"]


def test_manifest_matches_registry():
    line = (data.DATA_DIR / "SHA256SUMS").read_text().split()
    assert line[1] == "mnist5k.npz" and line[0] == DATASETS["mnist5k"].files["mnist5k.npz"]


def test_limit_and_loaders():
    s = load_dataset("mnist5k", limit=10)
    assert len(s.train) == len(s.val) == len(s.test) == 10
    tr, va, te = make_loaders(s, batch_size=4)
    assert [len(l) for l in (tr, va, te)] == [3, 3, 3]
    with pytest.raises(ValueError, match="batch_size"):
        make_loaders(s, batch_size=0)
    with pytest.raises(ValueError, match="limit"):
        load_dataset("mnist5k", limit=0)


def test_unknown_name():
    with pytest.raises(ValueError, match="name='imagenet'.*valid names"):
        load_dataset("imagenet")


def test_wrong_checksum(tmp_path):
    (tmp_path / "mnist5k.npz").write_bytes(b"not the file")
    with pytest.raises(ValueError, match="checksum mismatch.*expected sha256"):
        load_dataset("mnist5k", root=tmp_path)


def test_missing_files_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "train-images-idx3-ubyte.gz")):
        load_dataset("mnist", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="download=True"):
        load_dataset("cifar10", root=tmp_path)


def test_no_download_without_asking(tmp_path, monkeypatch):
    called = []
    monkeypatch.setattr(data, "_download", lambda url, dest: called.append(url))
    with pytest.raises(FileNotFoundError):
        load_dataset("fashion_mnist", root=tmp_path)
    assert called == []


# ------------------------------------------------------------------ small official-format archives
def _idx_bytes(arr: np.ndarray) -> bytes:
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def _write_idx_set(root, n_train=40, n_test=20, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte.gz": np.arange(n_train) % 10,
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte.gz": np.arange(n_test) % 10,
    }
    sums = {}
    for name, arr in arrays.items():
        raw = gzip.compress(_idx_bytes(arr), mtime=0)
        (root / name).write_bytes(raw)
        sums[name] = hashlib.sha256(raw).hexdigest()
    return arrays, sums


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_idx_loader_on_small_archive(tmp_path, monkeypatch, name):
    arrays, sums = _write_idx_set(tmp_path)
    monkeypatch.setitem(DATASETS, name, data.DatasetInfo(**{**DATASETS[name].__dict__, "files": sums}))
    s = load_dataset(name, root=tmp_path)
    assert len(s.train) + len(s.val) == 40 and len(s.test) == 20
    assert len(s.val) == 10  # stratified hold-out: at least one image per class
    assert torch.bincount(s.val.tensors[1]).tolist() == [1] * 10
    info = DATASETS[name]
    x0 = (arrays["t10k-images-idx3-ubyte.gz"][0] / 255.0 - info.mean[0]) / info.std[0]
    assert torch.allclose(s.test.tensors[0][0, 0].double(), torch.from_numpy(x0), atol=1e-6)
    assert s.test.tensors[1].tolist() == list(arrays["t10k-labels-idx1-ubyte.gz"])


def test_idx_corrupt_header(tmp_path):
    p = tmp_path / "bad.gz"
    p.write_bytes(gzip.compress(struct.pack(">HBB", 0, 0x0D, 3) + b"\0" * 12))
    with pytest.raises(ValueError, match="bad magic"):
        read_idx(p)
    q = tmp_path / "short.gz"
    q.write_bytes(gzip.compress(_idx_bytes(np.zeros((5, 28, 28)))[:-10]))
    with pytest.raises(ValueError, match="header says shape"):
        read_idx(q)


def _cifar_tar(path, n_per_batch=20, seed=0, extra_member=None):
    rng = np.random.default_rng(seed)
    batches = {}
    with tarfile.open(path, "w:gz") as tar:
        for bname in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            d = {b"batch_label": bname.encode(), b"labels": [int(v) for v in rng.integers(0, 10, n_per_batch)],
                 b"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
                 b"filenames": [b"x.png"] * n_per_batch}
            raw = extra_member if (extra_member is not None and bname == "data_batch_1") else pickle.dumps(d, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{bname}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
            batches[bname] = d
    return batches


def _register_cifar(monkeypatch, path):
    sums = {"cifar-10-python.tar.gz": data.sha256_file(path)}
    monkeypatch.setitem(DATASETS, "cifar10", data.DatasetInfo(**{**DATASETS["cifar10"].__dict__, "files": sums}))


def test_cifar_loader_on_small_archive(tmp_path, monkeypatch):
    p = tmp_path / "cifar-10-python.tar.gz"
    batches = _cifar_tar(p)
    _register_cifar(monkeypatch, p)
    s = load_dataset("cifar10", root=tmp_path)
    assert s.input_shape == (3, 32, 32)
    assert len(s.train) + len(s.val) == 100 and len(s.test) == 20
    tb = batches["test_batch"]
    img = tb[b"data"][3].reshape(3, 32, 32) / 255.0
    mean, std = np.array(DATASETS["cifar10"].mean), np.array(DATASETS["cifar10"].std)
    want = (img - mean[:, None, None]) / std[:, None, None]
    assert torch.allclose(s.test.tensors[0][3].double(), torch.from_numpy(want), atol=1e-5)
    assert s.test.tensors[1].tolist() == tb[b"labels"]


class _Evil:
    def __reduce__(self):
        import os
        return (os.system, ("echo pwned",))


def test_cifar_loader_refuses_malicious_pickle(tmp_path, monkeypatch):
    p = tmp_path / "cifar-10-python.tar.gz"
    _cifar_tar(p, extra_member=pickle.dumps({b"data": _Evil()}, protocol=2))
    _register_cifar(monkeypatch, p)
    with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
        load_dataset("cifar10", root=tmp_path)


def test_tensors_helper():
    s = load_dataset("mnist5k", limit=8)
    x, y = data.tensors(torch.utils.data.Subset(s.train, [1, 3]))
    assert x.shape == (2, 1, 28, 28) and torch.equal(y, s.train.tensors[1][[1, 3]])


def test_download_only_when_asked_then_verified(tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    _, sums = _write_idx_set(src)
    monkeypatch.setitem(DATASETS, "mnist", data.DatasetInfo(**{**DATASETS["mnist"].__dict__, "files": sums}))
    fetched = []

    def fake_download(url, dest):
        fetched.append(url)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes((src / dest.name).read_bytes())

    monkeypatch.setattr(data, "_download", fake_download)
    root = tmp_path / "root"
    s = load_dataset("mnist", root=root, download=True)
    assert len(s.test) == 20 and len(fetched) == 4
    assert all(u.startswith("https://") and u.endswith(".gz") for u in fetched)
    load_dataset("mnist", root=root, download=True)  # files present: nothing fetched again
    assert len(fetched) == 4


# ------------------------------------------------------------------ your own data: .npz and CIFAR-format paths
def _user_npz(path, n=60, shape=(20, 20, 3), k=3, seed=0, **extra):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % k
    images = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    np.savez(path, images=images, labels=labels, **extra)
    return images, labels


def test_user_npz_channels_last_default_split(tmp_path):
    p = tmp_path / "mine.npz"
    images, labels = _user_npz(p, class_names=np.array(["cat", "dog", "owl"]))
    s = load_dataset(str(p))
    assert s.input_shape == (3, 20, 20) and s.classes == ("cat", "dog", "owl")
    assert (len(s.train), len(s.val), len(s.test)) == (42, 6, 12)  # 70/10/20 of each class of 20
    for part in (s.train, s.val, s.test):
        assert torch.bincount(part.tensors[1], minlength=3).min() >= 1
    # normalised with the training split's own per-channel mean and std
    x = s.train.tensors[0]
    assert x.mean(dim=(0, 2, 3)).abs().max() < 1e-4 and (x.std(dim=(0, 2, 3)) - 1).abs().max() < 1e-2
    assert s.name == data.dataset_key(str(p)) and s.name.startswith("mine-") and len(s.mean) == 3
    assert load_dataset(str(p), limit=5).train.tensors[0].shape == (5, 3, 20, 20)


def test_user_npz_given_split_and_grayscale(tmp_path):
    p = tmp_path / "gray.npz"
    split = np.array([0] * 30 + [1] * 10 + [2] * 20)
    images, labels = _user_npz(p, shape=(16, 24), k=4, split=split)
    s = load_dataset(p)
    assert s.input_shape == (1, 16, 24) and s.num_classes == 4
    assert (len(s.train), len(s.val), len(s.test)) == (30, 10, 20)
    assert s.test.tensors[1].tolist() == labels[40:].tolist()


@pytest.mark.parametrize("arrays, message", [
    (dict(labels=np.zeros(4, int)), r"missing array\(s\) \['images'\]"),
    (dict(images=np.zeros((4, 20, 20), np.uint8)), r"missing array\(s\) \['labels'\]"),
    (dict(images=np.zeros((4, 20, 20), np.int32), labels=np.array([0, 1, 0, 1])), "dtype int32; expected uint8"),
    (dict(images=np.full((4, 20, 20), 2.0), labels=np.array([0, 1, 0, 1])), r"must lie in \[0, 1\]"),
    (dict(images=np.zeros((4, 8, 8), np.uint8), labels=np.array([0, 1, 0, 1])), "H, W >= 16"),
    (dict(images=np.zeros((4, 20), np.uint8), labels=np.array([0, 1, 0, 1])), "has shape"),
    (dict(images=np.zeros((4, 20, 20), np.uint8), labels=np.array([0, 1, 0])), "one per image"),
    (dict(images=np.zeros((4, 20, 20), np.uint8), labels=np.array([0, 2, 0, 2])), r"classes \[1\]"),
    (dict(images=np.zeros((4, 20, 20), np.uint8), labels=np.array([0, -1, 0, 1])), r"lie in \[0, K\)"),
    (dict(images=np.zeros((4, 20, 20), np.uint8), labels=np.array([0, 1, 0, 1]), split=np.array([0, 0, 0, 3])),
     "'split' must hold"),
    (dict(images=np.zeros((4, 20, 20), np.uint8), labels=np.array([0, 1, 0, 1]), split=np.array([0, 0, 2, 2])),
     r"the val split\(s\) are empty"),
    (dict(images=np.zeros((4, 20, 20), np.uint8), labels=np.array([0, 1, 0, 1]), class_names=np.array(["a"])),
     "'class_names' must be 2 strings"),
])
def test_user_npz_errors_name_the_array(tmp_path, arrays, message):
    p = tmp_path / "bad.npz"
    np.savez(p, **arrays)
    with pytest.raises(ValueError, match=message):
        load_dataset(str(p))


def test_user_npz_refuses_pickles_and_missing_files(tmp_path):
    p = tmp_path / "obj.npz"
    np.savez(p, images=np.array([object()] * 4, dtype=object), labels=np.array([0, 1, 0, 1]))
    with pytest.raises(ValueError, match="without pickles"):
        load_dataset(str(p))
    with pytest.raises(FileNotFoundError, match="DATASET=.*nope.npz.*no such file"):
        load_dataset(str(tmp_path / "nope.npz"))


def test_user_file_checksum_registered_beside_it(tmp_path):
    p = tmp_path / "cifar-10-python.tar.gz"
    batches = _cifar_tar(p)
    (tmp_path / "SHA256SUMS").write_text(f"{data.sha256_file(p)}  {p.name}\n")
    s = load_dataset(str(p))  # the official format under a path: no official checksum needed
    assert s.input_shape == (3, 32, 32) and s.num_classes == 10
    assert len(s.train) + len(s.val) == 100 and s.test.tensors[1].tolist() == batches["test_batch"][b"labels"]
    (tmp_path / "SHA256SUMS").write_text("0" * 64 + f"  {p.name}\n")
    with pytest.raises(ValueError, match="checksum mismatch for .* with .*SHA256SUMS"):
        load_dataset(str(p))


def test_verify_checksum_unlisted_file(tmp_path):
    p = tmp_path / "x.bin"
    p.write_bytes(b"abc")
    assert data.verify_checksum(p) == data.sha256_file(p)          # not listed: accepted unless required
    with pytest.raises(ValueError, match="SHA256SUMS does not list x.bin.*rebuild"):
        data.verify_checksum(p, required=True, hint="rebuild it")
    with pytest.raises(ValueError, match="does not exist"):
        data.verify_checksum(tmp_path / "missing.bin")


def test_dataset_key_changes_with_content(tmp_path):
    p = tmp_path / "my data.npz"
    _user_npz(p, seed=0)
    k0 = data.dataset_key(str(p))
    _user_npz(p, seed=1)
    assert data.dataset_key(str(p)) != k0 and " " not in k0
    assert data.dataset_key("mnist5k") == "mnist5k"


def test_splits_carry_normalisation_target_and_chance(tmp_path):
    s = load_dataset("mnist5k", limit=50)
    assert s.mean == (0.1307,) and s.std == (0.3081,) and s.target_accuracy == 0.98
    assert 0.1 <= s.chance <= 0.5  # 50 of 1,000 test images, 10 classes
    p = tmp_path / "u.npz"
    _user_npz(p, n=60, k=3)
    u = load_dataset(str(p))
    assert u.target_accuracy is None and u.chance == pytest.approx(1 / 3)


def test_atomic_write(tmp_path):
    p = tmp_path / "sub" / "f.bin"
    assert data.atomic_write(p, b"abc") == p and p.read_bytes() == b"abc"
    data.atomic_write(p, lambda f: f.write(b"xyz"))
    assert p.read_bytes() == b"xyz"

    def broken(f):
        f.write(b"half")
        raise RuntimeError("disk full")
    with pytest.raises(RuntimeError, match="disk full"):
        data.atomic_write(p, broken)
    assert p.read_bytes() == b"xyz" and sorted(x.name for x in p.parent.iterdir()) == ["f.bin"]  # no half file, no temp
