"""Kernel facts: what the compiler says about each tile config (registers, spills, shared memory, MMA family).

The table (``kernels/facts_table.json``) is built on any CPU by cross-compiling the kernel for sm_80 and sm_90
(``python -m gpperf_torch.kernels.build_facts``; docs/kernel_facts.md). A lookup names the binary a launch
would run: target, dtype, layout and the alignment class of its sizes. An entry exists only for a class that was
compiled; otherwise the answer is None and callers fall back to the pure-Python estimate in ``configs``.

Pure Python and JSON: no Triton needed to read the table.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import hashlib
import json
import logging
import os
from pathlib import Path

from .align import cap_for, pow2_divisor
from .configs import TileConfig, elem_size

logger = logging.getLogger(__name__)

TABLE_PATH = Path(__file__).resolve().parent / "facts_table.json"
FORMAT = "gpperf-kernel-facts"
FORMAT_VERSION = 1
FIELDS = ("registers", "spill_bytes", "shared_bytes", "mma", "sass_instructions")
# Registers per SM and per thread, threads per SM, blocks per SM: the same on sm_80 and sm_90.
REGS_PER_SM = 65536
MAX_THREADS_PER_SM = {80: 2048, 90: 2048}
MAX_BLOCKS_PER_SM = 32
# Shared memory per SM (the per-block opt-in maximum is 1 KiB less: DeviceInfo.max_shared_memory).
SMEM_PER_SM = {80: 167936, 90: 233472}
# fp16 and bf16 compile to the same resources (measured: docs/kernel_facts.md), so bf16 reads fp16's entries.
DTYPE_CLASS = {"float16": "f16", "bfloat16": "f16", "half": "f16", "fp16": "f16", "bf16": "f16"}


def dtype_class(dtype: object, tf32: bool = False) -> str:
    """Table name of a launch dtype: f16 (fp16 and bf16), tf32 (fp32 with TF32 allowed) or f32 (IEEE fp32)."""
    name = str(dtype).replace("torch.", "")
    if name in DTYPE_CLASS:
        return DTYPE_CLASS[name]
    if name in ("float32", "fp32", "float"):
        return "tf32" if tf32 else "f32"
    raise ValueError(f"unsupported dtype {dtype!r}: gpperf supports float16, bfloat16 and float32")


def size_code(v: int, *, cap: int = 16, divisors: bool = True) -> str:
    """A size's alignment class: ``1`` (equal to 1: a constant to Triton), ``16`` (divisible by 16: Triton's own
    flag), else the largest power of two up to `cap` dividing it (``8``, ``4``, ``2``; ``x`` for odd). With
    divisors=False (a size that is no stride of its layout) only 1 / 16 / x are told apart."""
    if v == 1:
        return "1"
    if v % 16 == 0:
        return "16"
    if not divisors:
        return "x"
    d = pow2_divisor(v, cap)
    return "x" if d == 1 else str(d)


def align_class(m: int, n: int, k: int, cfg: TileConfig, *, a_trans: bool = False, elem_size: int = 2) -> str:
    """Alignment class of a launch with contiguous operands: what of M, N, K the binary is specialized on.

    ``even``: M, N and K divisible by 16 and K by BLOCK_K (the EVEN_K binary); ``a``: the same without
    K % BLOCK_K == 0. Any other launch is written out per size (`size_code`): ``m16n8k16`` is N divisible by 8
    and not 16, ``x`` odd, ``1`` equal to 1; ``keven`` K % BLOCK_K == 0. The kernel is told the largest power
    of two dividing N, K and every leading stride (kernels/align.py), capped at a 16-byte vector (8 elements in
    fp16/bf16, 4 in fp32: fp32's 8 is its 4). M is a leading stride only with A transposed; otherwise it is
    only a size, of which Triton sees 1 / divisible by 16 / neither.
    """
    cap = cap_for(elem_size)
    mc = size_code(m, cap=cap, divisors=a_trans)
    nc = size_code(n, cap=cap)
    kc = "even" if k != 1 and k % cfg.block_k == 0 else size_code(k, cap=cap)
    if mc == nc == "16" and kc in ("even", "16"):
        return "even" if kc == "even" else "a"
    return f"m{mc}n{nc}k{kc}"


def entry_key(arch: int, dtype_cls: str, a_trans: bool, b_trans: bool, align: str) -> str:
    """``sm90/f16/nt/even``: target, dtype class, layout (A then B: n = row-major, t = transposed view) and
    alignment class. Inside an entry, configs are keyed by ``TileConfig.key`` with the split-K a launch runs."""
    layout = ("t" if a_trans else "n") + ("t" if b_trans else "n")
    return f"sm{arch}/{dtype_cls}/{layout}/{align}"


def kernel_source_hash() -> str:
    """Hash of the code that decides a binary: the kernel and its helper, and the alignment facts a launch passes
    (kernels/align.py). The table is stale (ignored) once any of it changes; comments, formatting and
    docstrings do not count."""
    here = Path(__file__).resolve().parent
    parts = []
    align_fns = ("pow2_divisor", "cap_for", "pointer_aligned", "divisors", "needs_int64")
    for name, fns in (("matmul.py", ("_multiple", "_matmul_kernel")), ("align.py", align_fns)):
        tree = ast.parse((here / name).read_text())
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name in fns:
                body = node.body
                if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                    node.body = body[1:] or body  # the docstring is not code
                parts.append(ast.dump(node, include_attributes=False))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _triton_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("triton")
    except Exception:  # no triton installed: the table cannot be matched against it
        return None


class FactsTable:
    """The loaded table: ``entries[entry_key][config_key] = [registers, spill, shared, mma, sass_count]``."""

    def __init__(self, data: dict, *, path: str | os.PathLike | None = None):
        if data.get("format") != FORMAT or data.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path or 'table'} is not a {FORMAT} v{FORMAT_VERSION} file")
        self.data = data
        self.path = path
        self.triton = data["triton"]
        self.kernel_hash = data["kernel_hash"]
        self.entries: dict[str, dict[str, list]] = data["entries"]

    @classmethod
    def load(cls, path: str | os.PathLike = TABLE_PATH) -> FactsTable:
        with open(path) as f:
            return cls(json.load(f), path=path)

    @property
    def current(self) -> bool:
        """True when the installed Triton and the kernel source are those the table was built with."""
        return self.triton == _triton_version() and self.kernel_hash == kernel_source_hash()

    def get(self, cfg: TileConfig, key: str) -> dict | None:
        row = self.entries.get(key, {}).get(cfg.key)
        return None if row is None else dict(zip(FIELDS, row, strict=True))

    def __len__(self) -> int:
        return sum(len(v) for v in self.entries.values())


@functools.lru_cache(maxsize=1)
def table() -> FactsTable | None:
    """The shipped table when it matches this Triton and kernel, else None (callers use the estimate)."""
    if not TABLE_PATH.is_file():
        return None
    try:
        t = FactsTable.load(TABLE_PATH)
    except (OSError, ValueError, KeyError) as e:
        logger.warning("kernel facts table %s unreadable (%s): using the estimate", TABLE_PATH, e)
        return None
    if not t.current:
        logger.info(
            "kernel facts table built for triton %s / kernel %s, running triton %s / kernel %s: using the estimate",
            t.triton,
            t.kernel_hash,
            _triton_version(),
            kernel_source_hash(),
        )
        return None
    return t


def lookup(
    cfg: TileConfig,
    *,
    arch: int,
    dtype: object,
    tf32: bool = False,
    a_trans: bool = False,
    b_trans: bool = False,
    m: int = 4096,
    n: int = 4096,
    k: int = 4096,
    bias: bool = False,
) -> dict | None:
    """Facts of the binary a 2-D launch of `cfg` on this shape would run, or None when the table lacks it."""
    t = table()
    if t is None or bias:
        return None
    run = launched_config(cfg, m, n, k)
    align = align_class(m, n, k, cfg, a_trans=a_trans, elem_size=elem_size(dtype))
    return t.get(run, entry_key(arch, dtype_class(dtype, tf32), a_trans, b_trans, align))


def launched_config(cfg: TileConfig, m: int, n: int, k: int) -> TileConfig:
    """The config whose binary runs: launch() caps split_k at the number of BLOCK_K steps (no empty slices) and
    drops it when the fp32 workspace would need 64-bit indexing."""
    split = max(1, min(cfg.split_k, -(-k // cfg.block_k)))
    if split > 1 and split * m * n > 2**31 - 1:
        split = 1
    return cfg if split == cfg.split_k else dataclasses.replace(cfg, split_k=split)


def blocks_per_sm(f: dict, cfg: TileConfig, arch: int) -> int:
    """Occupancy from the compiler's facts: resident blocks per SM as registers, shared memory and threads allow."""
    threads = cfg.num_warps * 32
    # Registers are allocated per warp in units of 256 (8 per thread, rounded up).
    regs_per_warp = -(-max(f["registers"], 1) * 32 // 256) * 256
    by_regs = REGS_PER_SM // (regs_per_warp * cfg.num_warps)
    by_smem = SMEM_PER_SM[arch] // f["shared_bytes"] if f["shared_bytes"] else MAX_BLOCKS_PER_SM
    by_threads = MAX_THREADS_PER_SM[arch] // threads
    return max(0, min(by_regs, by_smem, by_threads, MAX_BLOCKS_PER_SM))


def class_key(dtype: str, m: int, n: int, k: int, a_trans: bool, b_trans: bool, tf32: bool) -> tuple:
    """What of a launch selects its binary, for caching per-class validity (every BLOCK_K divides K or not)."""

    # Per size: 1 (a constant to Triton) or the largest power of two up to 16 dividing it (the kernel's DIV_*
    # constexprs and Triton's own flag), then which BLOCK_K divide K (the EVEN_K binary).
    def code(v: int) -> int:
        return 0 if v == 1 else pow2_divisor(v, 16)

    return (dtype, bool(tf32), bool(a_trans), bool(b_trans), code(m), code(n), code(k)) + tuple(
        k % d == 0 for d in (32, 64, 128, 256)
    )


def check(
    cfg: TileConfig,
    *,
    capability: tuple[int, int],
    dtype: str,
    tf32: bool = False,
    a_trans: bool = False,
    b_trans: bool = False,
    m: int = 4096,
    n: int = 4096,
    k: int = 4096,
    max_shared_memory: int | None = None,
) -> str | None:
    """``configs.check_config`` with the compiler's facts for this launch when the table has them (else the
    estimate): None when `cfg` runs without spilling inside the device's shared memory, else the reason."""
    from .configs import check_config, elem_size

    # The declared config, not the split-capped one: validity is cached per class, and for the K where the
    # split is capped (K < split_k * BLOCK_K) the capped binary has a smaller workspace, not more resources.
    arch = capability[0] * 10 + capability[1]
    f = lookup(
        cfg,
        arch=arch,
        dtype=dtype,
        tf32=tf32,
        a_trans=a_trans,
        b_trans=b_trans,
        m=m,
        n=n,
        k=max(k, cfg.split_k * cfg.block_k),
    )
    tensor_cores = dtype_class(dtype, tf32) != "f32"
    if f is None and table() is not None:
        # A current table without this alignment class (a build cut short, or a class never built): the aligned
        # binary of the same target, dtype and layout is the closest fact, so a config that spills there is not
        # chosen here either. A partial guard: in the rebuilt classes an unaligned binary's registers equal its
        # aligned one's at the median (-32 to +104), and 10 of the 29 unaligned entries that spill also spill
        # aligned. Shared memory is left to the estimate (an upper bound in every class).
        aligned = lookup(cfg, arch=arch, dtype=dtype, tf32=tf32, a_trans=a_trans, b_trans=b_trans)
        if aligned is not None and aligned["spill_bytes"] > 0:
            return (
                f"spills {aligned['spill_bytes']} B per thread in its aligned binary ({aligned['registers']} "
                "registers; compiler facts, none for this alignment class): use more warps or a smaller tile"
            )
    return check_config(
        cfg,
        elem_size=elem_size(dtype),
        max_shared_memory=max_shared_memory,
        facts=f,
        arch=arch,
        tensor_cores=tensor_cores,
    )
