"""The .ccz compact model file: exact round trips, real compression, refusal of corrupt and malicious files."""
import io
import os
import pickle

import pytest
import torch

from course_lib import codec
from course_lib.models import LeNet5, MLP


def _pruned_shared(seed=0, keep=0.08, levels=16):
    torch.manual_seed(seed)
    m = LeNet5()
    with torch.no_grad():
        for mod in (m.conv1, m.conv2, m.fc1, m.fc2):
            w = mod.weight
            thr = w.abs().flatten().kthvalue(int((1 - keep) * w.numel())).values
            w.mul_(w.abs() > thr)
            nz = w != 0
            lo, hi = w[nz].min(), w[nz].max()
            centroids = torch.linspace(lo.item(), hi.item(), levels)
            w[nz] = centroids[(w[nz].unsqueeze(1) - centroids).abs().argmin(1)]
    return m.eval()


def test_round_trip_is_exact_and_small(tmp_path):
    m = _pruned_shared()
    path = tmp_path / "m.ccz"
    n = codec.save_compressed(m, path)
    assert n == os.path.getsize(path)
    m2 = codec.load_compressed(path)
    for (k, a), (k2, b) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    x = torch.randn(8, 1, 28, 28)
    assert torch.equal(m(x), m2(x))
    assert n < 4 * 431_080 / 40  # 8% non-zeros, 4-bit codebooks: far below the fp32 size


def test_dense_float_model_round_trips(tmp_path):
    m = MLP(hidden=(20, 10))
    codec.save_compressed(m, tmp_path / "d.ccz")
    m2 = codec.load_compressed(tmp_path / "d.ccz")
    assert m2.config["hidden"] == (20, 10)
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), m2.state_dict().values()))


def test_corrupt_and_truncated_files_are_refused(tmp_path):
    path = tmp_path / "m.ccz"
    codec.save_compressed(_pruned_shared(), path)
    data = bytearray(path.read_bytes())
    bad = tmp_path / "bad.ccz"
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(codec.CorruptFileError, match="checksum mismatch"):
        codec.load_compressed(bad)
    bad.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(codec.CorruptFileError, match="truncated or corrupted"):
        codec.load_compressed(bad)
    bad.write_bytes(b"CCZ")
    with pytest.raises(codec.CorruptFileError, match="bad magic"):
        codec.load_compressed(bad)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/course_pwned",))


def test_malicious_pickle_is_refused_without_running(tmp_path):
    path = tmp_path / "evil.ccz"
    path.write_bytes(pickle.dumps({"state": _Evil()}))
    with pytest.raises(codec.CorruptFileError, match="bad magic"):
        codec.load_compressed(path)
    assert not os.path.exists("/tmp/course_pwned")
    # torch's own loader with weights_only=True (how the course reads cached baselines) refuses it too
    buf = io.BytesIO()
    torch.save({"x": _Evil()}, buf)
    buf.seek(0)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(buf, weights_only=True)
    assert not os.path.exists("/tmp/course_pwned")


def test_only_course_models():
    with pytest.raises(ValueError, match="supports the course's models"):
        codec.save_compressed(torch.nn.Linear(2, 2), "/tmp/never.ccz")
