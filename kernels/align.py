"""Alignment facts of a launch: what the compiler may assume about sizes, strides and pointers (issue 27).

Triton specializes a runtime integer only as "equal to 1" or "divisible by 16", and a pointer only as "16-byte
aligned". A K of 4104 (divisible by 8) then compiles like an odd K: scalar loads instead of cp.async, and the
128-wide tiles spill. Inductor writes sizes into its kernel as constants, so it keeps the vectors. The kernel
takes, for K, N and every stride, the largest power of two dividing it as a constexpr (``DIV_*``) and rebuilds
the value as a multiple of it, so the compiler knows the alignment of every load, store and K mask.

Every claim is a fact about the numbers of this launch:

- a divisor is computed from the value itself (never assumed), capped at 16 bytes' worth of elements (the
  widest vector): 8 for fp16/bf16, 4 for fp32. Beyond that a claim changes no code but would add compile
  classes;
- the claims about an operand's strides only matter with its data pointer 16-byte aligned (Triton tells the
  compiler nothing about a pointer that is not, so no vector can be formed from it): with a weaker pointer they
  are dropped (1), which keeps the number of binaries down;
- the leading stride of an operand whose rows wrap around (``offs % M`` on its contiguous axis: A transposed,
  B row-major) also takes the divisor of that size, so a vector never straddles the wrap;
- int64 element offsets (``INDEX_64``) only where a matrix reaches past 2**31 elements, tile padding included.

The result per dimension is one of five classes (divisor 1, 2, 4, 8 and "divisible by 16", which Triton's own
flag marks): `classes` in kernels.facts names them.
"""

from __future__ import annotations

import functools

import torch

INT32_MAX = 2**31 - 1
VECTOR_BYTES = 16


def pow2_divisor(x: int, cap: int) -> int:
    """Largest power of two not above `cap` that divides `x` (0 is divisible by every number: `cap`)."""
    if x == 0:
        return cap
    return min(cap, x & -x)


def cap_for(elem_size: int) -> int:
    """Elements in the widest vector (16 bytes): the largest divisor worth telling the compiler."""
    return max(1, VECTOR_BYTES // elem_size)


def pointer_aligned(t: torch.Tensor) -> bool:
    """Whether the tensor's first element is 16-byte aligned (what Triton specializes a pointer on)."""
    return t.data_ptr() % VECTOR_BYTES == 0


def divisors(
    *,
    n: int,
    k: int,
    m: int,
    a_strides: tuple[int, int],
    b_strides: tuple[int, int],
    c_strides: tuple[int, int],
    a_aligned: bool,
    b_aligned: bool,
    c_aligned: bool,
    elem_size: int,
    c_elem_size: int,
) -> dict[str, int]:
    """The kernel's DIV_* constexprs for a launch: strides as (row, column) of A (M x K), B (K x N), C (M x N)."""
    cap, c_cap = cap_for(elem_size), cap_for(c_elem_size)
    sam, sak = a_strides
    sbk, sbn = b_strides
    scm, scn = c_strides

    def operand(s_row: int, s_col: int, aligned: bool, wrap_row: int | None, wrap_col: int | None, cap: int):
        if not aligned:
            return 1, 1
        d_row, d_col = pow2_divisor(s_row, cap), pow2_divisor(s_col, cap)
        # A unit stride marks the contiguous axis; if that axis wraps around (offs % size), the other stride
        # (the one a vector's start depends on) must also be a multiple of the wrapped size's divisor.
        if s_col == 1 and wrap_col is not None:
            d_row = min(d_row, pow2_divisor(wrap_col, cap))
        if s_row == 1 and wrap_row is not None:
            d_col = min(d_col, pow2_divisor(wrap_row, cap))
        return d_row, d_col

    # A's rows wrap at M, B's columns at N; the K axis is masked, never wrapped.
    div_am, div_ak = operand(sam, sak, a_aligned, m, None, cap)
    div_bk, div_bn = operand(sbk, sbn, b_aligned, None, n, cap)
    div_cm, div_cn = operand(scm, scn, c_aligned, None, None, c_cap)
    return {
        "DIV_K": pow2_divisor(k, cap),
        "DIV_N": pow2_divisor(n, c_cap),
        "DIV_AM": div_am,
        "DIV_AK": div_ak,
        "DIV_BK": div_bk,
        "DIV_BN": div_bn,
        "DIV_CM": div_cm,
        "DIV_CN": div_cn,
    }


def needs_int64(
    *,
    m: int,
    n: int,
    k: int,
    block_m: int,
    block_n: int,
    block_k: int,
    a_strides: tuple[int, int],
    b_strides: tuple[int, int],
    c_strides: tuple[int, int],
) -> bool:
    """Whether an element offset inside one matrix (batch and split-K slices excluded: they move the base pointer
    in 64-bit) can pass int32, counting the tile padding the kernel computes (masked) offsets for."""
    rk = -(-k // block_k) * block_k  # K offsets run to the padded end (masked)
    rm = -(-m // block_m) * block_m  # C's rows and columns too (A's and B's wrap around instead)
    rn = -(-n // block_n) * block_n
    sam, sak = a_strides
    sbk, sbn = b_strides
    scm, scn = c_strides
    # A K step adds BLOCK_K * stride to the carried offsets once more after the last load: one step of slack.
    reach = max(
        (m - 1) * sam + (rk + block_k - 1) * sak,
        (rk + block_k - 1) * sbk + (n - 1) * sbn,
        (rm - 1) * scm + (rn - 1) * scn,
    )
    return reach > INT32_MAX


@functools.lru_cache(maxsize=16384)
def launch_constexprs(
    m: int,
    n: int,
    k: int,
    a_strides: tuple[int, int],
    b_strides: tuple[int, int],
    c_strides: tuple[int, int],
    aligned: tuple[bool, bool, bool],
    elem_size: int,
    c_elem_size: int,
    blocks: tuple[int, int, int],
) -> tuple[bool, dict[str, int]]:
    """(INDEX_64, the DIV_* constexprs) of a launch, once per combination: launch() runs on every GEMM, and the
    two functions above cost ~5 us together (a cache hit ~1 us)."""
    index_64 = needs_int64(
        m=m, n=n, k=k, block_m=blocks[0], block_n=blocks[1], block_k=blocks[2],
        a_strides=a_strides, b_strides=b_strides, c_strides=c_strides,
    )  # fmt: skip
    divs = divisors(
        n=n, k=k, m=m, a_strides=a_strides, b_strides=b_strides, c_strides=c_strides,
        a_aligned=aligned[0], b_aligned=aligned[1], c_aligned=aligned[2],
        elem_size=elem_size, c_elem_size=c_elem_size,
    )  # fmt: skip
    return index_64, divs
