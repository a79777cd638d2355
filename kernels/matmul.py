"""Tiled matmul in Triton: C[M, N] = A[M, K] @ B[K, N] with tunable tiles, grouped ordering and split-K.

Batched operands (B, M, K) @ (B, K, N) run in one launch (grid axis 2); a broadcast batch has stride 0.

Structure follows Triton's tutorial 03: arguments grouped (pointers, sizes, strides, meta-parameters), grouped
program ordering for L2 reuse, a masked K loop, an fp32 accumulator. Split-K writes fp32 partial sums to a
workspace that a second kernel reduces in a fixed order, so results are bitwise reproducible (no atomics).

Alignment facts (kernels/align.py, issue 27): launch passes the largest power of two dividing K, N and every
stride as constexprs (DIV_*), and the kernel rebuilds those values as multiples of them, so the compiler keeps
vector loads and cp.async on unaligned shapes as Inductor's template does. Per-element offsets are int32 within a
matrix (the batch, split-K and K-start offsets move the base pointers in 64-bit); INDEX_64 only where a matrix
passes 2**31 elements.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from .align import launch_constexprs
from .configs import DEFAULT_CONFIG, TileConfig, check_config, elem_size
from .launcher import LeanKernel

_SUPPORTED = (torch.float16, torch.bfloat16, torch.float32)
_TL_DTYPE = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32}
_INT32_MAX = 2**31 - 1
# torch.backends.cuda.matmul.allow_tf32 is a property costing ~1.5 us; the getter it wraps ~0.1 us.
tf32_allowed = getattr(torch._C, "_get_cublas_allow_tf32", None) or (lambda: torch.backends.cuda.matmul.allow_tf32)


# Triton decides at decoration (import) time whether a kernel is interpreted, so the answer is fixed here.
_INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def interpreting() -> bool:
    """True when Triton runs these kernels through its CPU interpreter (TRITON_INTERPRET=1 at import time)."""
    return _INTERPRETING


@triton.jit
def _multiple(x, DIV: tl.constexpr):
    """`x` rebuilt as a multiple of DIV, so the compiler knows its divisibility (DIV divides x: launch checked)."""
    if DIV > 1:
        return x // DIV * DIV
    return x


@triton.jit
def _matmul_kernel(
    # pointers
    a_ptr,
    b_ptr,
    c_ptr,
    bias_ptr,
    # sizes
    M,
    N,
    K,
    # strides (elements)
    stride_ab,
    stride_am,
    stride_ak,
    stride_bb,
    stride_bk,
    stride_bn,
    stride_cb,
    stride_cs,
    stride_cm,
    stride_cn,
    stride_bias,
    # meta-parameters
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    SPLIT_K: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    INDEX_64: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    EVEN_K: tl.constexpr,
    # Alignment facts (kernels/align.py): a power of two dividing the size or stride, 1 = no claim. Triton itself
    # only tells the compiler "divisible by 16"; with these it knows 8, 4 or 2 too (vector loads, cp.async).
    DIV_K: tl.constexpr = 1,
    DIV_N: tl.constexpr = 1,
    DIV_AM: tl.constexpr = 1,
    DIV_AK: tl.constexpr = 1,
    DIV_BK: tl.constexpr = 1,
    DIV_BN: tl.constexpr = 1,
    DIV_CM: tl.constexpr = 1,
    DIV_CN: tl.constexpr = 1,
):
    K = _multiple(K, DIV_K)
    N = _multiple(N, DIV_N)
    stride_am = _multiple(stride_am, DIV_AM)
    stride_ak = _multiple(stride_ak, DIV_AK)
    stride_bk = _multiple(stride_bk, DIV_BK)
    stride_bn = _multiple(stride_bn, DIV_BN)
    stride_cm = _multiple(stride_cm, DIV_CM)
    stride_cn = _multiple(stride_cn, DIV_CN)
    pid = tl.program_id(axis=0)
    pid_k = tl.program_id(axis=1)
    pid_b = tl.program_id(axis=2).to(tl.int64)
    # Grouped ordering: GROUP_M consecutive programs walk down a column of tiles so they share B in L2.
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m

    # This program's slice of K: whole BLOCK_K steps, the last slice may be short or empty.
    k_per_split = tl.cdiv(tl.cdiv(K, BLOCK_K), SPLIT_K) * BLOCK_K
    k_start = pid_k * k_per_split
    k_len = tl.minimum(k_per_split, K - k_start)
    # Batch, split-K slice and K start move the base pointers (scalar, 64-bit): the per-element offsets below
    # stay within one matrix tile, int32 unless a matrix reaches past 2**31 elements (INDEX_64, chosen at launch).
    a_ptr += pid_b * stride_ab + k_start.to(tl.int64) * stride_ak
    b_ptr += pid_b * stride_bb + k_start.to(tl.int64) * stride_bk
    c_ptr += pid_b * stride_cb + pid_k.to(tl.int64) * stride_cs

    # Rows/columns past the edge wrap around (always in bounds); their results are masked at the store.
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_am = tl.max_contiguous(tl.multiple_of(offs_m % M, BLOCK_M), BLOCK_M)
    offs_bn = tl.max_contiguous(tl.multiple_of(offs_n % N, BLOCK_N), BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    if INDEX_64:
        offs_m = offs_m.to(tl.int64)
        offs_n = offs_n.to(tl.int64)
        offs_am = offs_am.to(tl.int64)
        offs_bn = offs_bn.to(tl.int64)
        offs_k = offs_k.to(tl.int64)

    # Offsets (not pointers) carried across the K loop, the pointers formed at each step as Inductor's template
    # does: a 2-D tensor of 64-bit pointers incremented in place costs registers in skinny tiles.
    a_offs = offs_am[:, None] * stride_am + offs_k[None, :] * stride_ak
    b_offs = offs_k[:, None] * stride_bk + offs_bn[None, :] * stride_bn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(k_len, BLOCK_K)):
        if EVEN_K:
            # K % BLOCK_K == 0: every slice starts and ends on a BLOCK_K boundary (k_per_split is a multiple of
            # BLOCK_K), so each step is a full tile and the loads need no mask (fewer registers and instructions).
            a = tl.load(a_ptr + a_offs)
            b = tl.load(b_ptr + b_offs)
        else:
            k_mask = offs_k < k_len - k * BLOCK_K
            a = tl.load(a_ptr + a_offs, mask=k_mask[None, :], other=0.0)
            b = tl.load(b_ptr + b_offs, mask=k_mask[:, None], other=0.0)
        if UPCAST:
            # Interpreter only: its bf16 dot is wrong upstream, so multiply the same values in fp32.
            acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
        a_offs += BLOCK_K * stride_ak
        b_offs += BLOCK_K * stride_bk

    c_offs = offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn
    c_mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    if HAS_BIAS and SPLIT_K == 1:  # (with split-K the reduction adds it, once)
        bias = tl.load(bias_ptr + offs_n * stride_bias, mask=offs_n < N, other=0.0)
        acc += bias.to(tl.float32)[None, :]
    tl.store(c_ptr + c_offs, acc.to(c_ptr.dtype.element_ty), mask=c_mask)


@triton.jit
def _splitk_reduce_kernel(
    ws_ptr,
    c_ptr,
    bias_ptr,
    M,
    N,
    stride_wb,
    stride_ws,
    stride_cb,
    stride_cm,
    stride_cn,
    stride_bias,
    SPLIT_K: tl.constexpr,
    BLOCK: tl.constexpr,
    HAS_BIAS: tl.constexpr,
):
    # Sum the SPLIT_K fp32 partial products in a fixed order: same bits on every run.
    pid_b = tl.program_id(2).to(tl.int64)
    ws_ptr += pid_b * stride_wb
    c_ptr += pid_b * stride_cb
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < M * N
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for s in tl.static_range(SPLIT_K):
        acc += tl.load(ws_ptr + s * stride_ws + offs, mask=mask, other=0.0)
    row = offs // N
    col = offs % N
    if HAS_BIAS:
        acc += tl.load(bias_ptr + col * stride_bias, mask=mask, other=0.0).to(tl.float32)
    tl.store(c_ptr + row * stride_cm + col * stride_cn, acc.to(c_ptr.dtype.element_ty), mask=mask)


# Both kernels launch through the lean path when it is on (kernels/launcher.py; off by default).
_MATMUL = LeanKernel(_matmul_kernel)
_REDUCE = LeanKernel(_splitk_reduce_kernel)


class NotCompiledError(RuntimeError):
    """`launch(..., compiled_only=True)` met a kernel that would have to be compiled first (e.g. during a CUDA
    graph capture, where compiling must not happen)."""


@functools.lru_cache(maxsize=8192)
def _plan(cfg: TileConfig, dtype: torch.dtype, max_shared_memory: int | None, tf32: bool, arch: int | None) -> tuple:
    """(input precision, interpreter bf16 upcast, why the config cannot run or None), once per combination.

    With the GPU's arch the shared-memory estimate is the one measured against the compiler (kernels/facts.py),
    which agrees with the facts the selector filters by: without it, launch would refuse configs the selector
    rightly picked. IEEE fp32 (no TF32) compiles to FMA code, which keeps one pipeline stage fewer in shared
    memory."""
    # ("tf32" for 16-bit inputs too: tl.dot ignores it there; one compiled variant)
    precision = ("tf32" if tf32 else "ieee") if dtype == torch.float32 else "tf32"
    upcast = _INTERPRETING and dtype == torch.bfloat16
    tensor_cores = dtype != torch.float32 or tf32
    reason = check_config(
        cfg, elem_size=elem_size(dtype), max_shared_memory=max_shared_memory, arch=arch, tensor_cores=tensor_cores
    )
    return precision, upcast, reason


# The interpreter (a CPU tensor) stands in for an H100: gpperf_torch.device.device_for describes a CPU as one, so
# the selector's validity and this check agree there too.
_INTERPRETER_ARCH = 90


@functools.lru_cache(maxsize=64)
def _arch(device: torch.device) -> int:
    if device.type != "cuda":
        return _INTERPRETER_ARCH
    major, minor = torch.cuda.get_device_capability(device)
    return major * 10 + minor


def check_inputs(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None) -> None:
    """Raise ValueError/TypeError naming shapes, dtypes and devices for anything the kernel cannot take."""
    if a.dim() not in (2, 3) or b.dim() != a.dim():
        raise ValueError(
            f"launch expects 2-D or 3-D (batched) operands of equal rank, got a{tuple(a.shape)} and b{tuple(b.shape)}"
        )
    if a.shape[-1] != b.shape[-2] or (a.dim() == 3 and a.shape[0] != b.shape[0]):
        raise ValueError(
            f"shapes do not multiply: a{tuple(a.shape)} @ b{tuple(b.shape)} needs a.shape[-1] == b.shape[-2]"
            + (" and equal batch sizes" if a.dim() == 3 else "")
        )
    if a.dtype != b.dtype:
        raise TypeError(f"dtypes differ: a is {a.dtype}, b is {b.dtype}; cast one so both match")
    if a.dtype not in _SUPPORTED:
        raise TypeError(f"unsupported dtype {a.dtype}: the kernel takes float16, bfloat16 or float32")
    if a.device != b.device:
        raise ValueError(f"operands on different devices: a on {a.device}, b on {b.device}")
    if out is not None:
        want = (*a.shape[:-1], b.shape[-1])
        if tuple(out.shape) != want or out.dtype != a.dtype or out.device != a.device:
            raise ValueError(
                f"out must be {want} {a.dtype} on {a.device}, got {tuple(out.shape)} {out.dtype} on {out.device}"
            )


def launch(
    a: torch.Tensor,
    b: torch.Tensor,
    out: torch.Tensor | None = None,
    cfg: TileConfig | None = None,
    *,
    allow_tf32: bool | None = None,
    max_shared_memory: int | None = None,
    bias: torch.Tensor | None = None,
    check: bool = True,
    compiled_only: bool = False,
) -> torch.Tensor:
    """Compute ``out = a @ b (+ bias)`` (2-D, or 3-D batched) with tile config `cfg`: check, allocate, launch.

    Any strides (transposed or sliced views are read in place, never copied). `bias` (N,) is added to every
    row in the kernel's epilogue (in fp32, before the cast to the output dtype).
    check=False skips the operand checks (the op has done them once per call already).
    compiled_only=True raises NotCompiledError, before launching anything, where a kernel would have to be
    compiled first (inside a CUDA graph capture nothing may be compiled).
    """
    if check:
        check_inputs(a, b, out)
        if bias is not None and (
            bias.dim() != 1 or bias.shape[0] != b.shape[-1] or bias.device != a.device or not bias.is_floating_point()
        ):
            raise ValueError(
                f"bias must be a floating 1-D tensor of {b.shape[-1]} elements on {a.device}, "
                f"got {tuple(bias.shape)} {bias.dtype} on {bias.device}"
            )
    # This runs on every GEMM: what depends only on (config, dtype, device limit, TF32) is worked out once
    # (_plan), and sizes come from size()/stride() with integer arithmetic (triton.cdiv alone costs ~2 us).
    cfg = cfg or DEFAULT_CONFIG
    dtype = a.dtype
    tf32 = dtype is torch.float32 and bool(tf32_allowed() if allow_tf32 is None else allow_tf32)
    arch = None if max_shared_memory is None else _arch(a.device)
    precision, upcast, reason = _plan(cfg, dtype, max_shared_memory, tf32, arch)
    if reason is not None:
        raise ValueError(f"TileConfig {cfg.key} cannot run for {dtype} on {a.device}: {reason}")
    batched = a.dim() == 3
    if batched:
        batch, M, K = a.shape
        sab, sam, sak = a.stride()
        sbb, sbk, sbn = b.stride()
    else:
        batch = 1
        M, K = a.shape
        sab, (sam, sak) = 0, a.stride()
        sbb, (sbk, sbn) = 0, b.stride()
    N = b.size(-1)
    if out is None:
        out = a.new_empty((batch, M, N) if batched else (M, N))
    if M == 0 or N == 0 or batch == 0:
        return out
    if K == 0:
        return out.zero_() if bias is None else out.copy_(bias.expand_as(out))
    result = out
    if upcast:
        # The interpreter casts fp32 to bf16 by truncation (its cast_impl passes no rounding mode), where a GPU
        # and torch round to nearest even: under the interpreter the kernels write fp32 and torch rounds, once.
        out = torch.empty(out.shape, dtype=torch.float32, device=out.device)
    if batched:
        scb, scm, scn = out.stride()
    else:
        scb, (scm, scn) = 0, out.stride()
    split_k = min(cfg.split_k, (K + cfg.block_k - 1) // cfg.block_k)  # never launch empty K slices
    if split_k > 1 and max(split_k * M * N, (M - 1) * scm + (N - 1) * scn) > _INT32_MAX:
        split_k = 1  # the fp32 workspace would need 64-bit indexing in the reduction; big outputs gain nothing
    grid = (((M + cfg.block_m - 1) // cfg.block_m) * ((N + cfg.block_n - 1) // cfg.block_n), split_k, batch)
    if split_k == 1:
        target = out
        stride_cb, stride_cs, stride_cm, stride_cn = scb, 0, scm, scn
    else:
        target = torch.empty((batch, split_k, M, N), dtype=torch.float32, device=a.device)
        stride_cb, stride_cs, stride_cm, stride_cn = target.stride()
    # What the compiler may assume (kernels/align.py): facts of these numbers and pointers, never guesses.
    index_64, divs = launch_constexprs(
        M, N, K, (sam, sak), (sbk, sbn), (stride_cm, stride_cn),
        (a.data_ptr() & 15 == 0, b.data_ptr() & 15 == 0, target.data_ptr() & 15 == 0),
        a.element_size(), target.element_size(), (cfg.block_m, cfg.block_n, cfg.block_k),
    )  # fmt: skip
    pending: list = []
    mm_kernel, reduce_kernel = (
        (_MATMUL, _REDUCE) if not compiled_only else (_Deferred(_MATMUL, pending), _Deferred(_REDUCE, pending))
    )
    mm_kernel[grid](
        a,
        b,
        target,
        out if bias is None else bias,  # not read without HAS_BIAS
        M,
        N,
        K,
        sab,
        sam,
        sak,
        sbb,
        sbk,
        sbn,
        stride_cb,
        stride_cs,
        stride_cm,
        stride_cn,
        0 if bias is None else bias.stride(0),
        BLOCK_M=cfg.block_m,
        BLOCK_N=cfg.block_n,
        BLOCK_K=cfg.block_k,
        GROUP_M=cfg.group_m,
        SPLIT_K=split_k,
        INPUT_PRECISION=precision,
        UPCAST=upcast,
        INDEX_64=index_64,
        HAS_BIAS=bias is not None,
        EVEN_K=K % cfg.block_k == 0,  # exact with split-K too: slices are whole BLOCK_K multiples
        **divs,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )
    if split_k > 1:
        block = 1024
        reduce_kernel[((M * N + block - 1) // block, 1, batch)](
            target,
            out,
            out if bias is None else bias,
            M,
            N,
            target.stride(0),
            target.stride(1),
            scb,
            scm,
            scn,
            0 if bias is None else bias.stride(0),
            SPLIT_K=split_k,
            BLOCK=block,
            HAS_BIAS=bias is not None,
        )
    if compiled_only:
        _launch_if_compiled(pending, f"{tuple(a.shape)} @ {tuple(b.shape)} {a.dtype} with {cfg.key}")
    if result is not out:
        result.copy_(out)
    return result


class _Deferred:
    """Records a `kernel[grid](...)` launch instead of making it (see launch's compiled_only)."""

    def __init__(self, kernel: LeanKernel, sink: list):
        self.kernel, self.sink = kernel, sink

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.sink.append((self.kernel, grid, args, kwargs))


def _launch_if_compiled(pending: list, what: str) -> None:
    """Launch the recorded kernels only if every one of them is compiled already (else launch none)."""
    for kernel, _grid, args, kwargs in pending:
        if not kernel.is_compiled(args, kwargs):
            raise NotCompiledError(
                f"{kernel.fn.__name__ if hasattr(kernel.fn, '__name__') else kernel.fn} for {what} is not compiled "
                "yet; run this shape once before the CUDA graph capture (a warm-up step)"
            )
    for kernel, grid, args, kwargs in pending:
        kernel[grid](*args, **kwargs)
