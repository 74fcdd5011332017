"""Files and their sizes: the .ccz compact model file (exact round trips, real compression, refusal of
corrupt files), the sparse formats, size_bytes and the compressors, the plain-file helpers."""
import json
import os
import struct
import pickle

import numpy as np
import pytest
import torch

from course_lib import huffman, measure, storage
from course_lib import pruning as P
from course_lib.checks.pipeline import reference_positions_to_gaps
from course_lib.models import MLP, LeNet5, ResNet8

SMALL = dict(c1=4, c2=8, fc=16)


def small_lenet(seed=0, **kw):
    torch.manual_seed(seed)
    return LeNet5(**{**SMALL, **kw}).eval()


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


# ---------------------------------------------------------------- .ccz
def test_round_trip_is_exact_and_small(tmp_path):
    m = _pruned_shared()
    path = tmp_path / "m.ccz"
    n = storage.save_compressed(m, path)
    assert n == os.path.getsize(path)
    m2 = storage.load_compressed(path)
    for (k, a), (k2, b) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    x = torch.randn(8, 1, 28, 28)
    assert torch.equal(m(x), m2(x))
    assert n < 4 * 431_080 / 40  # 8% non-zeros, 4-bit codebooks: far below the fp32 size


def test_dense_float_model_round_trips(tmp_path):
    m = MLP(hidden=(20, 10))
    storage.save_compressed(m, tmp_path / "d.ccz")
    m2 = storage.load_compressed(tmp_path / "d.ccz")
    assert m2.config["hidden"] == (20, 10)
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), m2.state_dict().values()))


def test_resnet8_with_batchnorm_round_trips(tmp_path):
    torch.manual_seed(0)
    m = ResNet8(width=4)
    m.train()
    m(torch.randn(4, 3, 32, 32))  # updates the running statistics and num_batches_tracked (int64)
    m.eval()
    storage.save_compressed(m, tmp_path / "r.ccz")
    m2 = storage.load_compressed(tmp_path / "r.ccz")
    for (k, a), (k2, b) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert k == k2 and a.dtype == b.dtype and torch.equal(a, b), k
    assert int(m2.layer1.bn1.num_batches_tracked) == 1
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(m(x), m2(x))


def test_corrupt_and_truncated_files_are_refused(tmp_path):
    path = tmp_path / "m.ccz"
    storage.save_compressed(_pruned_shared(), path)
    data = bytearray(path.read_bytes())
    bad = tmp_path / "bad.ccz"
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(storage.CorruptFileError, match="checksum mismatch"):
        storage.load_compressed(bad)
    bad.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(storage.CorruptFileError, match="truncated or corrupted"):
        storage.load_compressed(bad)
    bad.write_bytes(b"CCZ")
    with pytest.raises(storage.CorruptFileError, match="bad magic"):
        storage.load_compressed(bad)


def test_a_pickle_is_refused_by_its_magic_bytes(tmp_path):
    path = tmp_path / "evil.ccz"
    path.write_bytes(pickle.dumps({"state": [1, 2, 3]}))
    with pytest.raises(storage.CorruptFileError, match="bad magic"):
        storage.load_compressed(path)


def test_only_course_models(tmp_path):
    with pytest.raises(ValueError, match="supports the course's models"):
        storage.save_compressed(torch.nn.Linear(2, 2), tmp_path / "never.ccz")
    assert not (tmp_path / "never.ccz").exists()


# ---------------------------------------------------------------- streams
def test_tensor_streams_match_the_exercise_reference_and_rebuild_the_tensor():
    w = _pruned_shared().fc1.weight.detach()
    gaps, idx, cb = storage.tensor_streams(w)
    flat = w.flatten()
    assert np.array_equal(gaps, reference_positions_to_gaps(flat != 0).numpy())
    assert idx.dtype == np.int64 and cb.dtype == np.float32 and np.all(np.diff(cb) > 0)
    assert cb.size == len(torch.unique(flat[flat != 0]))
    rebuilt = np.zeros(flat.numel(), np.float32)
    rebuilt[np.cumsum(gaps + 1) - 1] = cb[idx]
    assert np.array_equal(rebuilt, flat.numpy())


def test_stream_report_rows():
    m = _pruned_shared()
    rows = storage.stream_report(m)
    assert [r["layer"] for r in rows] == ["conv1", "conv2", "fc1", "fc2"]
    for r, mod in zip(rows, (m.conv1, m.conv2, m.fc1, m.fc2)):
        gaps, idx, cb = storage.tensor_streams(mod.weight)
        assert r["nnz"] == int((mod.weight != 0).sum()) and r["codebook"] == cb.size <= 16
        bits = max(1, int(idx.max()).bit_length())  # fixed width: enough bits for the largest index
        assert r["index_fixed"] == -(-idx.size * bits // 8)
        assert r["gaps_huffman"] == len(huffman.encode(gaps)) and r["index_huffman"] == len(huffman.encode(idx))
        for key in ("gaps", "index"):
            # Huffman's payload lies within one bit per symbol of the entropy bound (plus its header)
            assert r[f"{key}_entropy"] <= r[f"{key}_huffman"]
            assert r[f"{key}_zlib"] > 0 and r[f"{key}_lzma"] > 0


# ---------------------------------------------------------------- sparse formats
@pytest.mark.parametrize("fmt", ["dense", "bitmask", "csr"])
@pytest.mark.parametrize("compress", [None, "zlib", "lzma"])
def test_sparse_encode_roundtrip_exact(fmt, compress):
    model = small_lenet(12)
    P.magnitude_prune(model, 0.8)
    blob = storage.sparse_encode(model, fmt, compress)
    state = storage.sparse_decode(blob)
    ref = measure.effective_state_dict(model)
    assert list(state) == list(ref)
    for k in ref:
        assert torch.equal(state[k], ref[k]), k
    assert storage.sparse_bytes(model, fmt, compress) == len(blob)


def test_sparse_sizes_shrink_with_sparsity():
    model = small_lenet(13, c1=8, c2=16, fc=64)
    dense = storage.sparse_bytes(model, "dense", None)
    n = measure.count_params(model)
    assert n * 4 <= dense < n * 4 + 1024  # float32 values plus a small header
    P.magnitude_prune(model, 0.9)
    bitmask = storage.sparse_bytes(model, "bitmask", None)
    nz = measure.count_nonzero(model)
    w = sum(m.weight.numel() for m in P.prunable_layers(model).values())
    assert bitmask < 4 * nz + w // 8 + 1024
    assert bitmask < dense / 3
    assert storage.sparse_bytes(model, "csr", None) < dense / 2


def test_sparse_blob_is_checksummed():
    blob = bytearray(storage.sparse_encode(small_lenet(), "bitmask", "lzma"))
    blob[len(blob) // 2] ^= 0x01
    with pytest.raises(storage.CorruptFileError, match="checksum mismatch"):
        storage.sparse_decode(bytes(blob))
    with pytest.raises(storage.CorruptFileError, match="checksum mismatch"):
        storage.sparse_decode(storage.sparse_encode(small_lenet(), "csr", None)[:-1])


def test_sparse_encode_errors():
    with pytest.raises(ValueError, match="fmt"):
        storage.sparse_encode(small_lenet(), "coo")
    with pytest.raises(ValueError, match="compress"):
        storage.sparse_encode(small_lenet(), "csr", "gzip")
    with pytest.raises(ValueError, match="sparse_encode"):
        storage.sparse_decode(b"nope")


# ---------------------------------------------------------------- sizes, compressors, plain files
def test_size_bytes(tmp_path):
    m = LeNet5()
    raw = storage.size_bytes(m)
    assert raw == measure.serialized_bytes(m) and 4 * 431_080 < raw < 4 * 431_080 + 10_000
    blob = measure.serialize(m)
    for method in ("zlib", "lzma"):  # the compressed bytes decompress to exactly what torch.save writes
        packed = storage.compress(blob, method)
        assert storage.size_bytes(blob, method) == len(packed) == storage.size_bytes(m, method)
        assert storage.decompress(packed, method) == blob
    with torch.no_grad():
        m.fc1.weight.zero_()
    assert storage.size_bytes(m, "zlib") < raw / 3  # zeros compress well
    p = tmp_path / "m.pt"
    p.write_bytes(blob)
    assert storage.size_bytes(p) == len(blob)
    assert storage.size_bytes(p, "lzma") == storage.size_bytes(blob, "lzma")
    with pytest.raises(ValueError, match="compress='gzip'"):
        storage.size_bytes(m, "gzip")
    with pytest.raises(FileNotFoundError):
        storage.size_bytes(tmp_path / "missing.pt")


def test_save_state_copy_model_and_zlib_file(tmp_path):
    model = MLP(hidden=(8,))
    P.magnitude_prune(model, 0.5)
    copy = storage.copy_model(model)
    assert copy is not model and not copy.training
    f = tmp_path / "sub" / "m.pt"
    n = storage.save_state(model, f)
    assert n == os.path.getsize(f) == measure.serialized_bytes(model)
    loaded = torch.load(f, weights_only=True)
    assert not any(k.endswith("_mask") for k in loaded)
    assert torch.equal(loaded["net.0.weight"], model.net[0].weight)
    z = storage.zlib_file(f, tmp_path / "m.zlib")
    assert storage.decompress(z.read_bytes(), "zlib") == f.read_bytes()


# ---------------------------------------------------------------- Han's relative index, fair coder inputs
@pytest.mark.parametrize("bits", [1, 3, 5, 8])
def test_relative_index_bounds_gaps_and_round_trips(bits):
    rng = np.random.default_rng(bits)
    gaps = np.r_[0, (1 << bits) - 1, 1 << bits, 3 * (1 << bits) + 2, rng.integers(0, 300, 200)]
    entries, filler = storage.relative_index(gaps, bits)
    assert entries.dtype == np.int64 and entries.max() < 2 ** bits and entries.min() >= 0
    assert (~filler).sum() == gaps.size and filler.sum() == int((gaps // 2 ** bits).sum())
    assert np.array_equal(storage.relative_positions(entries, filler), np.cumsum(gaps + 1) - 1)


def test_relative_index_example_and_errors():
    entries, filler = storage.relative_index([0, 3, 9], 3)   # 9 = one filler (8 positions) + gap 1
    assert entries.tolist() == [0, 3, 7, 1] and filler.tolist() == [False, False, True, False]
    with pytest.raises(ValueError, match="bits"):
        storage.relative_index([1], 0)
    with pytest.raises(ValueError, match=">= 0"):
        storage.relative_index([-1], 4)
    with pytest.raises(ValueError, match="same length"):
        storage.relative_positions([0, 1], [False])


def test_min_width_bytes_picks_the_narrowest_unsigned_type():
    assert storage.min_width_bytes([0, 255]) == bytes([0, 255])
    with pytest.raises(ValueError, match="< 2\\*\\*32.*4294967301"):
        storage.min_width_bytes([2 ** 32 + 5])
    assert len(storage.min_width_bytes([0, 256])) == 4 and len(storage.min_width_bytes([70000])) == 4
    assert np.array_equal(np.frombuffer(storage.min_width_bytes([1, 300]), "<u2"), [1, 300])
    with pytest.raises(ValueError, match=">= 0"):
        storage.min_width_bytes([-1])


def test_stream_report_han_columns_and_fair_general_coders():
    m = _pruned_shared()
    rows = storage.stream_report(m)
    for r, mod in zip(rows, (m.conv1, m.conv2, m.fc1, m.fc2)):
        gaps, idx, cb = storage.tensor_streams(mod.weight)
        bits = 8 if isinstance(mod, torch.nn.Conv2d) else 5
        entries, _ = storage.relative_index(gaps, bits)
        assert r["han_bits"] == bits and r["han_entries"] == entries.size >= r["nnz"]
        width = max(1, int(np.ceil(np.log2(max(cb.size, 2)))))
        assert r["gaps_han"] == -(-entries.size * bits // 8) and r["index_han"] == -(-entries.size * width // 8)
        assert r["index_zlib"] == len(storage.compress(idx.astype("<u1").tobytes(), "zlib"))
    assert storage.stream_report(m, gap_bits=3)[2]["han_bits"] == 3
    assert [r["han_bits"] for r in storage.stream_report(m, gap_bits={"fc1": 4})] == [8, 8, 4, 5]
    with pytest.raises(ValueError, match=r"fc9.*valid names"):
        storage.stream_report(m, gap_bits={"fc9": 4})


def test_save_compressed_stores_and_checks_bits(tmp_path):
    m = _pruned_shared(levels=16)
    n = storage.save_compressed(m, tmp_path / "b.ccz", bits={"fc1": 4, "conv2": 4})
    raw = (tmp_path / "b.ccz").read_bytes()
    header = json.loads(raw[8:8 + struct.unpack("<I", raw[4:8])[0]])
    got = {e["name"]: e.get("bits") for e in header["tensors"]}
    assert got["fc1.weight"] == 4 and got["conv2.weight"] == 4 and got["conv1.weight"] is None and n == len(raw)
    assert torch.equal(storage.load_compressed(tmp_path / "b.ccz").fc1.weight, m.fc1.weight)
    with pytest.raises(ValueError, match=r"fc1.weight: \d+ distinct non-zero values, but bits=1 indexes at most"):
        storage.save_compressed(m, tmp_path / "c.ccz", bits={"fc1": 1})  # its values need more than 2
    # a shared layer too small for the automatic choice (fewer than 64 weights) is still stored as a codebook
    tiny = torch.nn.Linear(3, 2, bias=False)
    tiny.weight.data = torch.tensor([[0.5, 0.0, -0.5], [0.5, 0.5, 0.0]])
    assert storage._encode_tensor(tiny.weight)[0]["enc"] == "raw_f32"
    entry, _ = storage._encode_tensor(tiny.weight, codebook_bits=1)
    assert entry["enc"] == "sparse_codebook" and entry["bits"] == 1 and entry["codebook"] == 2
    with pytest.raises(ValueError, match="fc3"):
        storage.save_compressed(m, tmp_path / "c.ccz", bits={"fc3": 4})
