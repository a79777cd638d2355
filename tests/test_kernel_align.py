"""Alignment facts (kernels/align.py, issue 27): the DIV_* constexprs and INDEX_64 a launch passes are facts of its
numbers and pointers, results stay right on views whose pointers are only 2-, 4- or 8-byte aligned, a GEMM whose
offsets pass 2**31 elements takes 64-bit offsets, and the number of compile classes stays bounded.

Results are compared with a float64 reference on poisoned (NaN) outputs, per-dtype rtol and atol growing with K.
"""

from __future__ import annotations

import random

import pytest
import torch

from gpperf_torch.kernels import TileConfig, launch
from gpperf_torch.kernels import facts as F
from gpperf_torch.kernels import matmul as matmul_mod
from gpperf_torch.kernels.align import cap_for, divisors, launch_constexprs, needs_int64, pow2_divisor

from helpers import DEVICES, LaunchRecorder, assert_close_to_reference, randn

CFG = TileConfig(16, 32, 32, num_warps=4, num_stages=2)
DIV_NAMES = ("DIV_K", "DIV_N", "DIV_AM", "DIV_AK", "DIV_BK", "DIV_BN", "DIV_CM", "DIV_CN")


def _misaligned(rows: int, cols: int, *, dtype, device, align_bytes: int, ld: int | None = None) -> torch.Tensor:
    """A (rows, cols) view with leading stride `ld` whose first element sits `align_bytes` past a 16-byte
    boundary (so its pointer is 2-, 4- or 8-byte aligned and no more), filled with random values."""
    ld = ld or cols
    elem = torch.empty((), dtype=dtype).element_size()
    off = align_bytes // elem
    base = torch.full((off + rows * ld + 16,), float("nan"), dtype=dtype, device=device)
    assert base.data_ptr() % 16 == 0
    view = base[off : off + rows * ld].view(rows, ld)[:, :cols]
    view.copy_(randn(rows, cols, dtype=dtype, device=device))
    got = view.data_ptr() % 16
    assert got % align_bytes == 0 and got % (2 * align_bytes) != 0, "view not at the intended alignment"
    return view


# (dtype, pointer alignment in bytes): fp32 elements are 4 bytes, so its weakest pointer is 4-byte aligned.
ALIGNS = [
    (torch.float16, 2),
    (torch.float16, 4),
    (torch.float16, 8),
    (torch.bfloat16, 2),
    (torch.bfloat16, 8),
    (torch.float32, 4),
    (torch.float32, 8),
]
# (M, N, K, leading-stride padding): K % 16 in {8, 4, 2, odd}, N odd / % 16 == 8, K % BLOCK_K == 0.
SHAPES = [(40, 24, 72, 8), (33, 17, 68, 4), (19, 40, 66, 2), (24, 41, 64, 0), (17, 23, 45, 3)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("dtype", "align"), ALIGNS, ids=str)
@pytest.mark.parametrize("operand", ["a", "b", "out"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_weakly_aligned_views_match_reference(device, dtype, align, operand, shape, monkeypatch):
    m, n, k, pad = shape
    rec = LaunchRecorder(matmul_mod._MATMUL)
    monkeypatch.setattr(matmul_mod, "_MATMUL", rec)
    a = randn(m, k, dtype=dtype, device=device)
    b = randn(k, n, dtype=dtype, device=device)
    out = None
    if operand == "a":
        a = _misaligned(m, k, dtype=dtype, device=device, align_bytes=align, ld=k + pad)
    elif operand == "b":
        b = _misaligned(n, k, dtype=dtype, device=device, align_bytes=align, ld=k + pad).t()  # transposed view
    else:
        out = _misaligned(m, n, dtype=dtype, device=device, align_bytes=align, ld=n + pad)
        out.fill_(float("nan"))  # poisoned: an element left unwritten fails
    res = launch(a, b, out=out, cfg=CFG)
    assert out is None or res is out
    assert_close_to_reference(res, a, b)
    (args, kwargs), *_ = rec.calls
    _check_claims(args, kwargs)
    # The operand whose pointer is not 16-byte aligned makes no claim about its strides (a bf16 output under the
    # interpreter is written to an fp32 buffer first, which torch rounds: then the kernel's C is that buffer).
    i, names = {"a": (0, ("DIV_AM", "DIV_AK")), "b": (1, ("DIV_BK", "DIV_BN")), "out": (2, ("DIV_CM", "DIV_CN"))}[
        operand
    ]
    if args[i].data_ptr() % 16:
        assert all(kwargs[d] == 1 for d in names)
    else:
        assert operand == "out" and dtype == torch.bfloat16 and matmul_mod.interpreting()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize(
    "view",
    ["a_transposed_offset", "a_column_slice", "b_row_slice", "both_transposed_sliced", "batched_offset"],
)
def test_sliced_offset_transposed_views(device, dtype, view, monkeypatch):
    """Views whose pointers move by 1-7 elements (2-14 bytes in fp16) and whose strides are not those of a
    fresh tensor: each launch's claims hold and the result matches the float64 reference."""
    rec = LaunchRecorder(matmul_mod._MATMUL)
    monkeypatch.setattr(matmul_mod, "_MATMUL", rec)
    big = randn(80, 96, dtype=dtype, device=device)
    if view == "a_transposed_offset":
        a, b = big[3:75, 5:42].t(), randn(72, 20, dtype=dtype, device=device)  # A (37, 72), stride (1, 96)
    elif view == "a_column_slice":
        a, b = big[:40, 1:67], randn(66, 24, dtype=dtype, device=device)  # pointer +2 B in fp16
    elif view == "b_row_slice":
        a, b = randn(30, 52, dtype=dtype, device=device), big[2:54, 4:37]  # B (52, 33), ld 96, pointer +8 B x 49
    elif view == "both_transposed_sliced":
        a, b = big[1:41, 2:70].t(), big[5:45, 3:29]  # A (68, 40)^T-like, B (40, 26)
        a, b = a[:, :40], b
    else:
        a = big[:, 1:65].reshape(2, 40, 64)  # batched view, offset pointer
        b = randn(2, 64, 24, dtype=dtype, device=device)[:, :, 3:]
    out = torch.full((*a.shape[:-1], b.shape[-1]), float("nan"), dtype=dtype, device=device)
    launch(a, b, out=out, cfg=CFG)
    assert_close_to_reference(out, a, b)
    (args, kwargs), *_ = rec.calls
    _check_claims(args, kwargs)


def _check_claims(args: tuple, kwargs: dict) -> None:
    """Every DIV_* the launch passed divides its value, is a power of two within the vector cap, and an operand
    whose pointer is not 16-byte aligned claims nothing about its strides."""
    a, b, c = args[0], args[1], args[2]
    m, n, k = args[4:7]
    sam, sak, sbk, sbn = args[8], args[9], args[11], args[12]
    scm, scn = args[15], args[16]
    values = {"DIV_K": k, "DIV_N": n, "DIV_AM": sam, "DIV_AK": sak, "DIV_BK": sbk, "DIV_BN": sbn}
    values.update({"DIV_CM": scm, "DIV_CN": scn})
    for name in DIV_NAMES:
        d = kwargs[name]
        assert d in (1, 2, 4, 8) and values[name] % d == 0, f"{name}={d} for {values[name]}"
        tensor = {"A": a, "B": b, "C": c}.get(name[4], a)
        assert d <= cap_for(tensor.element_size())
    for t, names in ((a, ("DIV_AM", "DIV_AK")), (b, ("DIV_BK", "DIV_BN")), (c, ("DIV_CM", "DIV_CN"))):
        if t.data_ptr() % 16:
            assert all(kwargs[x] == 1 for x in names)
    # A vector along a wrapped axis (A transposed: M; B row-major: N) never straddles the wrap.
    if sam == 1 and kwargs["DIV_AK"] > 1:
        assert m % kwargs["DIV_AK"] == 0
    if sbn == 1 and kwargs["DIV_BK"] > 1:
        assert n % kwargs["DIV_BK"] == 0


def test_divisors_are_facts_over_random_launches():
    """The claims for 3000 random (sizes, strides, alignment) combinations: true, powers of two, capped."""
    rng = random.Random(27)
    for _ in range(3000):
        elem = rng.choice([2, 4])
        m, n, k = (rng.choice([1, 2, 3, 8, 16, 24, 100, 4096, 4104, 4100, 4098, 50257]) for _ in range(3))
        strides = [rng.choice([0, 1, 2, 6, 8, 12, 16, 24, 40, 4104, 4097]) for _ in range(6)]
        aligned = [rng.random() < 0.7 for _ in range(3)]
        d = divisors(
            n=n, k=k, m=m, a_strides=tuple(strides[:2]), b_strides=tuple(strides[2:4]),
            c_strides=tuple(strides[4:]), a_aligned=aligned[0], b_aligned=aligned[1], c_aligned=aligned[2],
            elem_size=elem, c_elem_size=elem,
        )  # fmt: skip
        vals = dict(zip(DIV_NAMES, [k, n, *strides], strict=True))
        for name, v in vals.items():
            assert d[name] in (1, 2, 4, 8)[: {2: 4, 4: 3}[elem]] and v % d[name] == 0
        assert launch_constexprs(
            m, n, k, tuple(strides[:2]), tuple(strides[2:4]), tuple(strides[4:]), tuple(aligned), elem, elem,
            (16, 32, 32),
        )[1] == d  # fmt: skip


def test_pow2_divisor():
    assert [pow2_divisor(x, 8) for x in (0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 4104, 4100, 4098, 4097)] == [
        8, 1, 2, 1, 4, 2, 8, 4, 8, 8, 8, 4, 2, 1,
    ]  # fmt: skip
    assert pow2_divisor(4096, 4) == 4 and cap_for(2) == 8 and cap_for(4) == 4


def test_int64_only_past_int32():
    kw = dict(m=4096, n=4096, k=4096, block_m=128, block_n=128, block_k=64)
    assert not needs_int64(**kw, a_strides=(4096, 1), b_strides=(1, 4096), c_strides=(4096, 1))
    # A whose rows sit 2**20 apart: 4095 * 2**20 > 2**31
    assert needs_int64(**kw, a_strides=(2**20, 1), b_strides=(1, 4096), c_strides=(4096, 1))
    # C's masked tile padding counts: 1000 rows of stride s end below 2**31, the padded 1024 rows do not.
    s = 2126221
    assert 999 * s + 15 < 2**31 - 1 < 1023 * s
    small = dict(m=1000, n=16, k=16, block_m=128, block_n=16, block_k=16)
    assert needs_int64(**small, a_strides=(16, 1), b_strides=(16, 1), c_strides=(s, 1))
    assert not needs_int64(**small, a_strides=(16, 1), b_strides=(16, 1), c_strides=(s // 2, 1))


@pytest.mark.parametrize("operand", ["a", "b", "out"])
def test_gemm_past_int32_offsets_on_the_interpreter(operand, tmp_path, monkeypatch):
    """A GEMM whose element offsets pass 2**31: one operand is a strided view over a 4 GiB sparse file (only
    the touched pages exist), so the interpreter reads and writes at offsets past 2**31 elements for real."""
    if not matmul_mod.interpreting():
        pytest.skip("runs on the Triton interpreter (TRITON_INTERPRET=1)")
    rec = LaunchRecorder(matmul_mod._MATMUL)
    monkeypatch.setattr(matmul_mod, "_MATMUL", rec)
    n_el = 2**31 + 2**20
    path = tmp_path / "sparse.bin"
    with open(path, "wb") as f:
        f.truncate(n_el * 2)  # sparse: no disk or memory used until written
    store = torch.from_file(str(path), shared=True, size=n_el, dtype=torch.float16)
    m, n, k = 3, 20, 40
    a = randn(m, k, dtype=torch.float16, device="cpu")
    b = randn(k, n, dtype=torch.float16, device="cpu")
    out = None
    if operand == "a":  # rows 2**30 apart: row 2 starts at element 2**31
        a = store.as_strided((m, k), (2**30, 1)).copy_(a)
    elif operand == "b":  # columns 113025464 apart: column 19 starts past 2**31 (B^T-like layout)
        b = store.as_strided((k, n), (1, 113025464)).copy_(b)
    else:
        out = store.as_strided((m, n), (2**30 + 8, 1)).fill_(float("nan"))
    res = launch(a, b, out=out, cfg=TileConfig(16, 16, 16, num_warps=1, num_stages=1))
    (args, kwargs), *_ = rec.calls
    assert kwargs["INDEX_64"] is True
    assert_close_to_reference(res, a, b)


# ---- compile classes ----------------------------------------------------------------------------------------
def _example_gemms() -> list[tuple[int, int, int]]:
    """(M, N, K) of the GEMMs the decoder and ViT examples run (benchmarks/gpucheck/verify.py sizes): GPT-2-small
    decoder (d 768, ff 3072, vocab 50257) at batch 4 x prompt 128 and decode steps of batch 4; ViT-B/16 block on
    8 x 197 tokens; the odd TIMM-like layers. All nn.Linear: B is a transposed view (nt)."""
    out = []
    for t in (4 * 128, 4):  # prefill, decode
        out += [(t, 2304, 768), (t, 768, 768), (t, 3072, 768), (t, 768, 3072), (t, 50257, 768)]
    t = 8 * 197
    out += [(t, 2304, 768), (t, 768, 768), (t, 3072, 768), (t, 768, 3072)]
    out += [(3136, 384, 96), (25088, 200, 96), (64, 1000, 1280), (3136, 96, 200)]
    return out


def _old_class(m: int, n: int, k: int, cfg: TileConfig) -> str:
    """The class before issue 27: 1 / divisible by 16 / neither per size, K % BLOCK_K (Triton's own flags)."""

    def s(v):
        return "1" if v == 1 else "16" if v % 16 == 0 else "x"

    return f"m{s(m)}n{s(n)}k{'even' if k != 1 and k % cfg.block_k == 0 else s(k)}"


def test_compile_classes_stay_few():
    """At most 5 alignment classes per dimension (divisor 1, 2, 4, 8 or Triton's "divisible by 16"; equal to 1
    and K % BLOCK_K are Triton's own and were there before), and the growth the examples' shapes bring."""
    codes = {
        "m": {F.size_code(v, cap=8) for v in range(2, 5000)},
        "n": {F.size_code(v, cap=8) for v in range(2, 5000)},
    }
    assert all(c == {"16", "8", "4", "2", "x"} for c in codes.values())
    assert {F.size_code(v, cap=4) for v in range(2, 5000)} == {"16", "4", "2", "x"}  # fp32: 4 elements = 16 B
    gemms = _example_gemms()
    grown = []
    from gpperf_torch.kernels.build_facts import model_candidates

    for cfg in model_candidates("h100"):
        old = {_old_class(m, n, k, cfg) for m, n, k in gemms}
        new = {F.align_class(m, n, k, cfg) for m, n, k in gemms}
        # The new classes refine the old ones: a class splits into at most 5 per refined dimension (N, K).
        assert len(new) <= 5 * 5 * len(old)
        grown.append(len(new) - len(old))
    # On these 18 GEMMs each config runs 5-7 binaries before and 6-8 now: N = 1000 and 200 (% 16 == 8) split off
    # from the odd vocabulary N = 50257 (K = 200 only renames its class): one more binary per config.
    assert max(grown) <= 1, grown


def test_class_key_refines_by_divisor():
    """The selector's validity cache keys on the same divisibility the kernel specializes on."""
    args = ("float16", 4096, 4096)
    keys = {F.class_key(*args[:2], 4096, k, False, True, False) for k in (4104, 4100, 4098, 4097, 4112)}
    assert len(keys) == 5
    assert F.class_key("float16", 4096, 4096, 4104, False, True, False) == F.class_key(
        "float16", 4096, 4096, 8200, False, True, False
    )
