"""Cross-compile the matmul kernel for a GPU target on any machine (no GPU needed) and read what the compiler says.

Triton's wheel carries the NVIDIA backend with ptxas, cuobjdump and nvdisasm, so ``triton.compile`` builds
the exact cubin a launch on an A100 (sm_80) or H100/H200 (sm_90) would run. The arguments are specialized the
way the JIT specializes a real launch (Triton's own binder on stand-in arguments that mirror
``kernels.matmul.launch``): pointers and integers divisible by 16 get ``tt.divisibility``, integers equal to 1
become constants, so vector widths and the software pipeliner are those of the real binary.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import io
import logging
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass

from .configs import TileConfig

logger = logging.getLogger(__name__)

# Targets by GPU family: capability (major*10+minor) Triton compiles for.
ARCHS = {"sm80": 80, "sm86": 86, "sm89": 89, "sm90": 90}
# Launch dtypes the kernel takes; fp32 compiles differently with and without TF32.
DTYPES = ("float16", "bfloat16", "float32", "tf32")


# Divisible by 16; by 8, 4 or 2 (and no higher power of two); odd ("x"); equal to 1 (Triton makes it a constant).
SIZE_CLASSES = ("16", "8", "4", "2", "x", "1")
K_CLASSES = ("even", *SIZE_CLASSES)  # even: K % BLOCK_K == 0 (the EVEN_K binary)
_STAND_IN = {"16": 0, "8": 8, "4": 4, "2": 2, "x": 1}  # added to a multiple of 16 (and of every BLOCK_K)


@dataclass(frozen=True)
class CompileClass:
    """Everything besides the tile config that selects a distinct binary for one launch.

    Sizes are classes of the largest power of two dividing them (kernels/align.py; 16, 8, 4, 2, odd) or equal
    to 1 (a constant to Triton); ``launch_args`` turns them into stand-in sizes and strides with the same
    specialization.
    """

    arch: int  # 80 (A100), 90 (H100, H200); 86 and 89 also compile
    dtype: str  # float16 | bfloat16 | float32 | tf32 (float32 with TF32 allowed)
    a_trans: bool = False  # A is a transposed view (column-major M x K)
    b_trans: bool = False
    m: str = "16"  # SIZE_CLASSES
    n: str = "16"
    k: str = "even"  # K_CLASSES
    split: bool = False  # SPLIT_K > 1 (fp32 workspace output)
    bias: bool = False

    def __post_init__(self) -> None:
        if self.arch not in ARCHS.values():
            raise ValueError(f"arch must be one of {sorted(ARCHS.values())}, got {self.arch}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.m not in SIZE_CLASSES or self.n not in SIZE_CLASSES or self.k not in K_CLASSES:
            raise ValueError(f"size classes must be in {SIZE_CLASSES} (m, n) and {K_CLASSES} (k), got {self}")
        if self.split and self.k == "1":
            raise ValueError("K = 1 cannot be split")

    @classmethod
    def of_launch(cls, arch: int, dtype: str, cfg: TileConfig, m: int, n: int, k: int, **kw) -> CompileClass:
        """The class of a launch of `cfg` with contiguous operands of these sizes (`kw`: a_trans, b_trans...)."""

        kc = "1" if k == 1 else "even" if k % cfg.block_k == 0 else size_class(k)
        return cls(arch=arch, dtype=dtype, m=size_class(m), n=size_class(n), k=kc, **kw)


def size_class(v: int) -> str:
    """SIZE_CLASSES name of a size: 1, the largest power of two up to 16 dividing it, or x (odd)."""
    if v == 1:
        return "1"
    d = v & -v if v else 16
    return "16" if d >= 16 else "x" if d == 1 else str(d)


def _sizes(cls: CompileClass, cfg: TileConfig) -> tuple[int, int, int, int]:
    """Stand-in M, N, K and the split-K a launch of this class runs (same specialization as the class)."""
    m, n = (1 if c == "1" else 16 * 64 + _STAND_IN[c] for c in (cls.m, cls.n))
    split = cfg.split_k if cls.split else 1
    if cls.split and split == 1:
        raise ValueError(f"class has split-K but {cfg.key} has split_k=1")
    if cls.k == "16" and cfg.block_k == 16:
        raise ValueError("with BLOCK_K=16, K % 16 == 0 is K % BLOCK_K == 0: use k='even'")
    # Enough K for `split` non-empty slices; divisible by BLOCK_K, by 16 only, or by neither.
    k = 1 if cls.k == "1" else cfg.block_k * max(split, 2) * 2 + {**_STAND_IN, "even": 0, "16": 16}[cls.k]
    return m, n, k, split


def launch_args(cfg: TileConfig, cls: CompileClass) -> tuple[list, dict]:
    """Positional and keyword arguments of ``_matmul_kernel`` for a 2-D launch of class `cls`.

    Mirrors kernels.matmul.launch (a test checks the two agree): only their specialization matters here.
    """
    import torch

    from .align import divisors

    m, n, k, split = _sizes(cls, cfg)
    tdt = {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(cls.dtype, torch.float32)
    ptr = torch.empty(64, dtype=tdt)  # 16-byte aligned CPU storage: stands in for any aligned pointer
    ws = torch.empty(64, dtype=torch.float32)
    # A (M x K) row-major: strides (K, 1); transposed view of a (K x M) tensor: (1, M). Same for B (K x N).
    a_sm, a_sk = (1, m) if cls.a_trans else (k, 1)
    b_sk, b_sn = (1, k) if cls.b_trans else (n, 1)
    if split > 1:
        c, c_strides = ws, (split * m * n, m * n, n, 1)
    else:
        c, c_strides = ptr, (0, 0, n, 1)
    args = [ptr, ptr, c, ptr, m, n, k, 0, a_sm, a_sk, 0, b_sk, b_sn, *c_strides, 1 if cls.bias else 0]
    divs = divisors(
        n=n, k=k, m=m, a_strides=(a_sm, a_sk), b_strides=(b_sk, b_sn), c_strides=c_strides[2:],
        a_aligned=True, b_aligned=True, c_aligned=True, elem_size=ptr.element_size(), c_elem_size=c.element_size(),
    )  # fmt: skip
    kwargs = dict(
        BLOCK_M=cfg.block_m,
        BLOCK_N=cfg.block_n,
        BLOCK_K=cfg.block_k,
        GROUP_M=cfg.group_m,
        SPLIT_K=split,
        INPUT_PRECISION="ieee" if cls.dtype == "float32" else "tf32",
        UPCAST=False,
        INDEX_64=False,
        HAS_BIAS=cls.bias,
        EVEN_K=k % cfg.block_k == 0,
        **divs,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )
    return args, kwargs


def _jit_function():
    """The kernel as a JITFunction, also when the interpreter (TRITON_INTERPRET=1) wrapped it at import."""
    from triton.runtime.jit import JITFunction

    from .matmul import _matmul_kernel

    if isinstance(_matmul_kernel, JITFunction):
        return _matmul_kernel
    return _jit_of(_matmul_kernel.fn)


@functools.lru_cache(maxsize=4)
def _jit_of(pyfn):
    from triton.runtime.jit import JITFunction

    return JITFunction(pyfn)


@functools.lru_cache(maxsize=4)
def _backend(arch: int):
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend

    target = GPUTarget("cuda", arch, 32)
    return target, make_backend(target)


def specialization(cfg: TileConfig, cls: CompileClass):
    """(signature, constexprs, attrs, options) exactly as Triton's JIT would build them for this launch."""
    from triton.runtime.jit import create_function_from_signature

    fn = _jit_function()
    _, backend = _backend(cls.arch)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    args, kwargs = launch_args(cfg, cls)
    bound, spec, opts = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, opts, bound, spec, opts)
    return fn, signature, constexprs, attrs, options


def tool(name: str) -> str:
    """Path of a CUDA tool shipped in the triton wheel (ptxas, cuobjdump, nvdisasm)."""
    import triton

    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{name} not found at {path}: this triton wheel has no NVIDIA backend tools")
    return path


_PTXAS_LINE = re.compile(
    r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads.*?Used (\d+) registers", re.S
)
_SASS_INSN = re.compile(r"^\s+/\*[0-9a-f]{4,}\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", re.M)


_SASS_LINE = re.compile(r"^\s+/\*[0-9a-f]{4,}\*/\s+(.*?);", re.M)


# LDGSTS = cp.async, LDG = a plain global load; the suffix is the width in bits (none: 32; U16/S16: 16).
_LOAD = re.compile(r"^\s+/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?(LDGSTS|LDG)(\.[A-Z0-9_.]+)?", re.M)


def load_widths(sass_text: str) -> dict[str, int]:
    """Global loads in the SASS by kind and width: ``{"cp.async x 16 B": 48, "ldg x 2 B": 64, ...}``."""
    out: dict[str, int] = {}
    for op, mods in _LOAD.findall(sass_text):
        bits = 32
        for p in (mods or "").split("."):
            if p in ("128", "64"):
                bits = int(p)
            elif p in ("U16", "S16"):
                bits = 16
            elif p in ("U8", "S8"):
                bits = 8
        key = f"{'cp.async' if op == 'LDGSTS' else 'ldg'} x {bits // 8} B"
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items()))


def sass(cubin: bytes) -> str:
    """The disassembly of a cubin (cuobjdump -sass)."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([tool("cuobjdump"), "-sass", f.name], check=True, capture_output=True, text=True).stdout


def _mma_family(opcodes: list[str]) -> str:
    if any(op.startswith("HGMMA") for op in opcodes):
        return "wgmma"
    if any(op.startswith("HMMA") for op in opcodes):
        return "mma.sync"
    return "fma"


def compile_kernel(cfg: TileConfig, cls: CompileClass):
    """Compile the kernel for (cfg, cls); returns (CompiledKernel, ptxas log). Uses a private cache dir.

    The cache is bypassed so that ptxas runs and its `-v` report (spills) is seen; one compile is ~1-3 s.
    """
    import triton
    from triton import knobs
    from triton.compiler import ASTSource

    fn, signature, constexprs, attrs, options = specialization(cfg, cls)
    target, _ = _backend(cls.arch)
    src = ASTSource(fn, signature, constexprs, attrs)
    log = io.StringIO()
    with (
        tempfile.TemporaryDirectory(prefix="gpperf-xc-") as cache,
        knobs.cache.scope(),
        knobs.nvidia.scope(),
        contextlib.redirect_stdout(log),
    ):
        knobs.cache.dir = cache
        knobs.nvidia.dump_ptxas_log = True
        kernel = triton.compile(src, target=target, options=options.__dict__)
    return kernel, log.getvalue()


def facts(cfg: TileConfig, cls: CompileClass, *, with_sass: bool = False) -> dict:
    """What the compiler says about (cfg, cls): registers, spills, shared bytes, MMA family, SASS size."""
    import triton

    kernel, log = compile_kernel(cfg, cls)
    m = _PTXAS_LINE.search(log)
    if m is None:
        raise RuntimeError(f"could not read the ptxas report for {cfg.key} {cls}: {log[-500:]!r}")
    stack, spill_st, spill_ld, regs = (int(x) for x in m.groups())
    text = sass(kernel.asm["cubin"])
    ops = [g[1] for g in _SASS_INSN.findall(text) if g[1] != "NOP"]  # NOPs only pad the end of the kernel
    out = {
        "registers": regs,
        "spill_bytes": spill_st,  # bytes of spill stores per thread (ptxas -v); loads reported alike
        "spill_load_bytes": spill_ld,
        "stack_bytes": stack,
        "shared_bytes": int(kernel.metadata.shared),
        "mma": _mma_family(ops),
        "sass_instructions": len(ops),
        "global_loads": load_widths(text),  # not in the table: `inspect` shows it for a fresh compile
        "triton": triton.__version__,
        # identical code (same opcodes and operands, addresses stripped) <=> same hash: dedupes the table
        "sass_sha": hashlib.sha256("\n".join(i.strip() for i in _SASS_LINE.findall(text)).encode()).hexdigest()[:16],
    }
    if with_sass:
        out["sass"] = text
    return out


def _class_dict(cls: CompileClass) -> dict:
    return {f: getattr(cls, f) for f in CompileClass.__dataclass_fields__}


def _worker() -> None:
    """Subprocess main: one JSON job per stdin line ({"cfg": key, "cls": {...}, "sass": bool}), one JSON reply.

    Compiles run here when the calling process imported Triton in interpreter mode (TRITON_INTERPRET=1), in
    which Triton's own language helpers cannot be compiled.
    """
    import json
    import sys

    for line in sys.stdin:
        job = json.loads(line)
        try:
            out = facts(TileConfig.from_key(job["cfg"]), CompileClass(**job["cls"]), with_sass=job.get("sass", False))
        except Exception as e:  # reported to the caller, which raises it with the job named
            out = {"error": f"{type(e).__name__}: {e}"}
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()


def facts_many(jobs: list[tuple[TileConfig, CompileClass]], *, with_sass: bool = False) -> list[dict]:
    """`facts` for each job: in this process, or in a subprocess without TRITON_INTERPRET when this process
    imported Triton in interpreter mode (safe to call from any process)."""
    import json
    import sys

    from .matmul import interpreting

    if not interpreting():
        return [facts(cfg, cls, with_sass=with_sass) for cfg, cls in jobs]

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    # The folder that holds the package this module was imported through (a checkout or site-packages), read off
    # the already loaded parent package: the kernels import nothing else of gpperf_torch.
    top = sys.modules[__name__.partition(".")[0]]
    root = os.path.dirname(os.path.dirname(os.path.abspath(top.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in [root, env.get("PYTHONPATH", "")] if p)
    cmd = [sys.executable, "-c", "from gpperf_torch.kernels.crosscompile import _worker; _worker()"]
    lines = "".join(
        json.dumps({"cfg": cfg.key, "cls": _class_dict(cls), "sass": with_sass}) + "\n" for cfg, cls in jobs
    )
    proc = subprocess.run(cmd, input=lines, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"cross-compile worker failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    outs = [json.loads(x) for x in proc.stdout.splitlines() if x.strip()]
    for (cfg, cls), out in zip(jobs, outs, strict=True):
        if "error" in out:
            raise RuntimeError(f"cross-compiling {cfg.key} for {cls}: {out['error']}")
    return outs


def class_of_entry(key: str) -> CompileClass:
    """The CompileClass a facts-table entry key (``sm90/f16/nt/even``, ``sm80/f32/nn/m16nxk16``) stands for."""
    try:
        arch, dt, layout, align = key.split("/")
        if align in ("even", "a"):
            m = n = "16"
            k = "even" if align == "even" else "16"
        else:
            size = "(16|8|4|2|x|1)"
            m, n, k = re.fullmatch(f"m{size}n{size}k(even|16|8|4|2|x|1)", align).groups()
        return CompileClass(
            arch=int(arch[2:]),
            dtype={"f16": "float16", "tf32": "tf32", "f32": "float32"}[dt],
            a_trans=layout[0] == "t",
            b_trans=layout[1] == "t",
            m=m,
            n=n,
            k=k,
        )
    except (ValueError, KeyError, IndexError, AttributeError) as e:
        raise ValueError(f"not a kernel-facts entry key: {key!r} (expected e.g. 'sm90/f16/nt/even')") from e


def job_class(cfg: TileConfig, key: str) -> CompileClass:
    """The class to compile `cfg` under for table entry `key` (split-K configs compile their split binary)."""
    return dataclasses.replace(class_of_entry(key), split=cfg.split_k > 1)
