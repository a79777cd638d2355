"""Cross-compile Inductor's mm template for one shape on the CPU (no GPU), for comparison with our kernel.

Inductor renders ``torch/_inductor/kernel/templates/triton_mm.py.jinja`` with the sizes and strides written in as
constants and 16-byte aligned pointers (``tt.divisibility = 16``). Rendering it through Inductor needs a CUDA
device, so this script writes out what the template renders to for a plain ``mm`` (no epilogue): the jinja body of
torch 2.13 with ``load_input`` / ``store_output`` expanded as Inductor expands them (``xindex = idx_n + K*idx_m``
for a row-major A, ``tl.load(A + xindex, mask, other=0.0)``, the store ``out_ptr0 + xindex`` under the mask),
INDEX_DTYPE = tl.int32 and EVEN_K = K % BLOCK_K == 0. Then the same ptxas/cuobjdump readings as
``gpperf-torch inspect``.

    nice -n 15 python benchmarks/template_facts.py --out results/kernel-facts/template.jsonl
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.kernel_unaligned import CASES, CONFIGS, emit  # noqa: E402
from gpperf_torch.kernels import TileConfig  # noqa: E402

_SRC = """
import triton
import triton.language as tl


@triton.jit
def triton_tem_mm(arg_A, arg_B, out_ptr0):
    EVEN_K : tl.constexpr = {even_k}
    ALLOW_TF32 : tl.constexpr = False
    ACC_TYPE : tl.constexpr = tl.float32
    BLOCK_M : tl.constexpr = {bm}
    BLOCK_N : tl.constexpr = {bn}
    BLOCK_K : tl.constexpr = {bk}
    GROUP_M : tl.constexpr = {gm}
    INDEX_DTYPE : tl.constexpr = tl.int32
    A = arg_A
    B = arg_B

    M = {m}
    N = {n}
    K = {k}
    if M * N == 0:
        return
    stride_am = {sam}
    stride_ak = {sak}
    stride_bk = {sbk}
    stride_bn = {sbn}

    pid = tl.program_id(0).to(INDEX_DTYPE)
    grid_m = (M + BLOCK_M - 1) // BLOCK_M
    grid_n = (N + BLOCK_N - 1) // BLOCK_N
    width = GROUP_M * grid_n
    group_id = pid // width
    group_size = min(grid_m - group_id * GROUP_M, GROUP_M)
    pid_m = group_id * GROUP_M + (pid % group_size)
    pid_n = (pid % width) // (group_size)
    tl.assume(pid_m >= 0)
    tl.assume(pid_n >= 0)

    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M).to(INDEX_DTYPE)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N).to(INDEX_DTYPE)
    if ((stride_am == 1 and stride_ak == M) or (stride_am == K and stride_ak == 1)) and (M >= BLOCK_M and K > 1):
        offs_a_m = tl.max_contiguous(tl.multiple_of(rm % M, BLOCK_M), BLOCK_M)
    else:
        offs_a_m = rm % M
    if ((stride_bk == 1 and stride_bn == K) or (stride_bk == N and stride_bn == 1)) and (N >= BLOCK_N and K > 1):
        offs_b_n = tl.max_contiguous(tl.multiple_of(rn % N, BLOCK_N), BLOCK_N)
    else:
        offs_b_n = rn % N
    offs_k = tl.arange(0, BLOCK_K).to(INDEX_DTYPE)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_TYPE)

    for k_idx in range(0, tl.cdiv(K, BLOCK_K)):
        a_k_idx_vals = offs_k[None, :] + (k_idx * BLOCK_K)
        b_k_idx_vals = offs_k[:, None] + (k_idx * BLOCK_K)

        idx_m = offs_a_m[:, None]
        idx_n = a_k_idx_vals
        xindex = {a_index}
        {a_load}

        idx_m = b_k_idx_vals
        idx_n = offs_b_n[None, :]
        xindex = {b_index}
        {b_load}

        acc += tl.dot(a, b, allow_tf32=ALLOW_TF32, out_dtype=ACC_TYPE)

    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M).to(INDEX_DTYPE)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N).to(INDEX_DTYPE)
    idx_m = rm[:, None]
    idx_n = rn[None, :]
    mask = (idx_m < M) & (idx_n < N)

    xindex = idx_n + {n}*idx_m
    tl.store(out_ptr0 + (tl.broadcast_to(xindex, acc.shape)), acc, mask)
"""


def _index(s_row: int, s_col: int) -> str:
    """Inductor's index expression for a 2-D access with these strides (sympy prints the unit stride bare)."""
    terms = []
    for var, s in (("idx_n", s_col), ("idx_m", s_row)):
        terms.append(var if s == 1 else f"{s}*{var}")
    return " + ".join(terms)


def source(cfg: TileConfig, m: int, n: int, k: int, a_trans: bool, b_trans: bool) -> str:
    sam, sak = (1, m) if a_trans else (k, 1)
    sbk, sbn = (1, k) if b_trans else (n, 1)
    even_k = k % cfg.block_k == 0
    a_mask = "" if even_k else "a_mask = offs_k[None, :] < (K - k_idx * BLOCK_K)\n        "
    b_mask = "" if even_k else "b_mask = offs_k[:, None] < (K - k_idx * BLOCK_K)\n        "
    a_load = a_mask + ("a = tl.load(A + (xindex))" if even_k else "a = tl.load(A + (xindex), a_mask, other=0.0)")
    b_load = b_mask + ("b = tl.load(B + (xindex))" if even_k else "b = tl.load(B + (xindex), b_mask, other=0.0)")
    return _SRC.format(
        even_k=even_k, bm=cfg.block_m, bn=cfg.block_n, bk=cfg.block_k, gm=cfg.group_m, m=m, n=n, k=k,
        sam=sam, sak=sak, sbk=sbk, sbn=sbn, a_index=_index(sam, sak), b_index=_index(sbk, sbn),
        a_load=a_load, b_load=b_load,
    )  # fmt: skip


def facts(cfg: TileConfig, m: int, n: int, k: int, a_trans: bool, b_trans: bool, arch: int = 90) -> dict:
    import io
    from contextlib import redirect_stdout

    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from gpperf_torch.kernels.crosscompile import _PTXAS_LINE, load_widths, sass

    with tempfile.TemporaryDirectory(prefix="gpperf-tem-") as tmp:
        path = os.path.join(tmp, "tem.py")
        with open(path, "w") as f:
            f.write(source(cfg, m, n, k, a_trans, b_trans))
        spec = importlib.util.spec_from_file_location("gpperf_tem", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        fn = mod.triton_tem_mm
        signature = {"arg_A": "*fp16", "arg_B": "*fp16", "out_ptr0": "*fp16"}
        attrs = {(i,): [["tt.divisibility", 16]] for i in range(3)}
        src = ASTSource(fn, signature, {}, attrs)
        log = io.StringIO()
        with knobs.cache.scope(), knobs.nvidia.scope(), redirect_stdout(log):
            knobs.cache.dir = os.path.join(tmp, "cache")
            knobs.nvidia.dump_ptxas_log = True
            kernel = triton.compile(
                src,
                target=GPUTarget("cuda", arch, 32),
                options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages},
            )
    stack, spill, _spill_ld, regs = (int(x) for x in _PTXAS_LINE.search(log.getvalue()).groups())
    text = sass(kernel.asm["cubin"])
    return {
        "registers": regs,
        "spill_bytes": spill,
        "shared_bytes": int(kernel.metadata.shared),
        "loads": load_widths(text),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="JSON lines to append the rows to")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--cases", default=None, help="comma-separated case numbers (default all)")
    args = ap.parse_args(argv)
    os.environ.pop("TRITON_INTERPRET", None)
    cases = list(CASES) if args.cases is None else [CASES[int(i)] for i in args.cases.split(",")]
    out = open(args.out, "a") if args.out else None  # noqa: SIM115 (closed below; rows flushed one by one)
    print(f"{'config':<26} {'case':<20} {'regs':>5} {'spill':>6} {'smem KB':>8}  global loads")
    for config in args.configs.split(","):
        cfg = TileConfig.from_key(config)
        for name, m, n, k, at, bt in cases:
            row = {"config": config, "case": name, "m": m, "n": n, "k": k, "a_trans": at, "b_trans": bt}
            row.update(facts(cfg, m, n, k, at, bt))
            emit(row, out)
    if out:
        out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
