"""Each chapter-07 checker accepts a correct solution (the library's own function, written
independently of the checker's reference) and rejects typical wrong answers with the right message."""
import torch

from course_lib import quantization as Q
from course_lib import roofline
from course_lib.checks import llm


def library_pack(codes, block_size):
    zeros = torch.zeros(codes.shape[0], codes.shape[1] // block_size, dtype=torch.uint8)
    return Q.pack_matmulnbits(codes, zeros, block_size)[0]


def _says(check, fn, text):
    ok, msg = check.verdict(fn)
    assert not ok and text in msg, msg


def test_references_match_the_library():
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 16, (4, 64), generator=g, dtype=torch.uint8)
    assert torch.equal(llm.reference_pack_nibbles(codes, 32), library_pack(codes, 32))
    for case in ((1e8, 1e9, 20.0, 100.0), (1e6, 1e11, 30.0, 90.0)):
        assert abs(llm.reference_roofline_ms(*case) - roofline.roofline_bound_ms(*case)) < 1e-12


def test_pack_nibbles_checker(capsys):
    assert llm.check_pack_nibbles(library_pack, verbose=False)
    assert llm.check_pack_nibbles(llm.reference_pack_nibbles, verbose=False)

    def pairs(c, bs):
        n, k = c.shape
        return c.to(torch.int32).reshape(n, k // bs, bs // 2, 2)
    _says(llm.check_pack_nibbles, lambda c, bs: (pairs(c, bs)[..., 1] + 16 * pairs(c, bs)[..., 0]).to(torch.uint8),
          "nibbles are swapped")
    _says(llm.check_pack_nibbles, lambda c, bs: llm.reference_pack_nibbles(c, bs) ^ 0x88, "signed codes")
    _says(llm.check_pack_nibbles, lambda c, bs: (pairs(c, bs)[..., 0] + 256 * pairs(c, bs)[..., 1]),
          "a byte holds 0 to 255")
    _says(llm.check_pack_nibbles, lambda c, bs: (pairs(c, bs)[..., 0] | (pairs(c, bs)[..., 1] << 8)).to(torch.uint8),
          "high nibble is lost")
    _says(llm.check_pack_nibbles, lambda c, bs: llm.reference_pack_nibbles(c, bs).reshape(c.shape[0], -1),
          "the bytes are right but the shape")
    _says(llm.check_pack_nibbles, lambda c, bs: (c[0::2] | (c[1::2] << 4)), "wrong axis")
    _says(llm.check_pack_nibbles, lambda c, bs: llm.reference_pack_nibbles(c, bs).to(torch.int64), "dtype")

    def halves(c, bs):
        n, k = c.shape
        h = c.reshape(n, k // bs, 2, bs // 2)
        return h[..., 0, :] | (h[..., 1, :] << 4)
    _says(llm.check_pack_nibbles, halves, "NEIGHBOURS")
    _says(llm.check_pack_nibbles, lambda c, bs: (_ for _ in ()).throw(NotImplementedError()), "not implemented")
    assert not llm.check_pack_nibbles(lambda c, bs: torch.zeros(1, dtype=torch.uint8))
    assert "✗" in capsys.readouterr().out


def test_roofline_prediction_checker():
    assert llm.check_roofline_prediction(roofline.roofline_bound_ms, verbose=False)
    ok = llm.reference_roofline_ms
    assert llm.check_roofline_prediction(lambda b, f, bw, p: torch.tensor(ok(b, f, bw, p)), verbose=False)
    chk = llm.check_roofline_prediction
    _says(chk, lambda b, f, bw, p: ok(b, f, bw, p) / 1e3, "seconds")
    _says(chk, lambda b, f, bw, p: 1e6 * max(b / (bw * 1e9), f / (p * 1e9)), "microseconds")
    _says(chk, lambda b, f, bw, p: 1e3 * max(b / (bw * 2 ** 30), f / (p * 2 ** 30)), "GiB")
    _says(chk, lambda b, f, bw, p: 1e3 * max(b / (bw * 2 ** 30), f / (p * 1e9)), "GiB")
    _says(chk, lambda b, f, bw, p: 1e3 * (b / (bw * 1e9) + f / (p * 1e9)), "max, not sum")
    _says(chk, lambda b, f, bw, p: 1e3 * min(b / (bw * 1e9), f / (p * 1e9)), "smaller time")
    _says(chk, lambda b, f, bw, p: 1e3 * b / (bw * 1e9), "left out the arithmetic")
    _says(chk, lambda b, f, bw, p: 1e3 * f / (p * 1e9), "left out the memory traffic")
    _says(chk, lambda b, f, bw, p: "3 ms", "return one number")
    _says(chk, lambda b, f, bw, p: 2 * ok(b, f, bw, p), "the bound is")


def test_checkers_leave_the_global_random_state_alone():
    state = torch.get_rng_state()
    llm.check_pack_nibbles(lambda c, bs: c, verbose=False)
    llm.check_roofline_prediction(lambda *a: 0.0, verbose=False)
    assert torch.equal(state, torch.get_rng_state())


def library_unpack(packed, scales, zeros, block_size):
    """The library's unpacker (written for MatMulNBits' own layout) and the dequantization of weight_only."""
    codes, _ = Q.unpack_matmulnbits(packed)
    z = zeros.double().repeat_interleave(block_size, 1)
    return ((codes.double() - z) * scales.double().repeat_interleave(block_size, 1)).float()


def test_unpack_dequantize_checker():
    assert llm.check_unpack_dequantize(library_unpack, verbose=False)
    assert llm.check_unpack_dequantize(llm.reference_unpack_dequantize, verbose=False)

    def codes_of(p):
        b = p.to(torch.int32)
        return torch.stack([b & 15, b >> 4], -1).reshape(p.shape[0], -1).double()

    def expand(t, bs):
        return t.double().repeat_interleave(bs, 1)
    _says(llm.check_unpack_dequantize,
          lambda p, s, z, bs: ((torch.stack([p.to(torch.int32) >> 4, p.to(torch.int32) & 15], -1).reshape(p.shape[0], -1)
                                - expand(z, bs)) * expand(s, bs)).float(), "nibbles are swapped")
    _says(llm.check_unpack_dequantize, lambda p, s, z, bs: (codes_of(p) * expand(s, bs)).float(), "zero point")
    _says(llm.check_unpack_dequantize, lambda p, s, z, bs: ((codes_of(p) - 8) * expand(s, bs)).float(), "instead of")
    _says(llm.check_unpack_dequantize,
          lambda p, s, z, bs: ((codes_of(p) - expand(z, bs)) * s.double()[:, :1]).float(), "one scale per row")
    _says(llm.check_unpack_dequantize,
          lambda p, s, z, bs: ((codes_of(p) - z.double().repeat(1, bs)) * s.double().repeat(1, bs)).float(),
          "repeat_interleave")
    _says(llm.check_unpack_dequantize,
          lambda p, s, z, bs: (torch.where(codes_of(p) > 7, codes_of(p) - 16, codes_of(p)) - expand(z, bs)) * expand(s, bs),
          "signed")
    _says(llm.check_unpack_dequantize, lambda p, s, z, bs: codes_of(p).to(torch.uint8), "floats")
    _says(llm.check_unpack_dequantize,
          lambda p, s, z, bs: library_unpack(p, s, z, bs).reshape(-1), "shape")
