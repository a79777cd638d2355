"""Tile configurations: the `TileConfig` record, the candidate space, and validity for a device's limits.

Pure Python (no torch, no Triton) so that training, selection and tests can reason about configs anywhere.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, fields

# Element sizes in bytes by dtype name (torch and numpy spellings both accepted by `elem_size`).
ELEM_SIZE = {"float16": 2, "bfloat16": 2, "float32": 4, "half": 2, "fp16": 2, "bf16": 2, "fp32": 4}

# Triton's tl.dot needs every block dimension >= 16; warps must be a power of two the backend accepts.
MIN_BLOCK = 16
MAX_BLOCK = 256
ALLOWED_WARPS = (1, 2, 4, 8, 16)
# A fp32 accumulator larger than this many registers per thread spills to local memory and runs
# far slower than a smaller tile (Hopper: 255 registers per thread in all).
MAX_ACC_REGS_PER_THREAD = 256
# Triton keeps `num_stages` copies of the A and B tiles in shared memory (the last stage is consumed from
# registers on Hopper, but budgeting all stages is the conservative rule the compiler enforces).


@dataclass(frozen=True, order=True)
class TileConfig:
    """One launch configuration of the tiled matmul kernel."""

    block_m: int
    block_n: int
    block_k: int
    group_m: int = 8
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 3

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"TileConfig.{f.name} must be a positive int, got {v!r}")

    # ---- naming -------------------------------------------------------------------------------------
    @property
    def key(self) -> str:
        """Stable short name, e.g. ``128x64x32_g8_s1_w4_st3`` (used in datasets and model metadata)."""
        return (
            f"{self.block_m}x{self.block_n}x{self.block_k}_g{self.group_m}_s{self.split_k}"
            f"_w{self.num_warps}_st{self.num_stages}"
        )

    @classmethod
    def from_key(cls, key: str) -> TileConfig:
        try:
            blocks, g, s, w, st = key.split("_")
            bm, bn, bk = (int(x) for x in blocks.split("x"))
            return cls(bm, bn, bk, int(g[1:]), int(s[1:]), int(w[1:]), int(st[2:]))
        except (ValueError, IndexError) as e:
            raise ValueError(f"not a TileConfig key: {key!r} (expected e.g. '128x64x32_g8_s1_w4_st3')") from e

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def __str__(self) -> str:
        return self.key

    # ---- resources ----------------------------------------------------------------------------------
    def smem_bytes(self, elem_size: int, arch: int | None = None, tensor_cores: bool = True) -> int:
        """Shared memory the pipelined main loop needs, estimated: copies of the A and B tiles.

        Without `arch` (capability as 80, 90): all num_stages copies. With it, the rule measured against the
        compiler (kernels/facts_table.json, docs/kernel_facts.md): wgmma kernels keep num_stages copies in
        shared memory; mma.sync and FMA kernels (sm_80+) keep num_stages - 1, the last stage being consumed
        from registers; and the epilogue may reuse the buffer to convert the BLOCK_M x BLOCK_N output tile,
        so it is at least that big. On the 4948 compiled entries this is exact for 95.6% and never below the
        compiler. `tensor_cores=False` is IEEE fp32 (no TF32: FMA, never wgmma).
        """
        tile = (self.block_m * self.block_k + self.block_k * self.block_n) * elem_size
        if arch is None or arch < 80:
            return self.num_stages * tile
        if mma_family(self, arch=arch, tensor_cores=tensor_cores) == "wgmma":
            stages = self.num_stages
        else:
            stages = max(self.num_stages - 1, 1)
        return max(stages * tile, self.block_m * self.block_n * elem_size)

    def acc_regs_per_thread(self) -> float:
        return self.block_m * self.block_n / (self.num_warps * 32)


def mma_family(cfg: TileConfig, *, arch: int, tensor_cores: bool = True) -> str:
    """The tensor-core instructions Triton emits, as predicted (the facts table has the compiler's answer):
    wgmma on sm_90 when BLOCK_M is a multiple of 64 and the warps form whole warpgroups, mma.sync on other
    tensor-core launches (sm_80+), fma for IEEE fp32."""
    if not tensor_cores or arch < 80:
        return "fma"
    if arch == 90 and cfg.block_m % 64 == 0 and cfg.num_warps % 4 == 0:
        return "wgmma"
    return "mma.sync"


# The config's fields in declaration order: the column names datasets and feature matrices use for a config.
CONFIG_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(TileConfig))


def elem_size(dtype: object) -> int:
    """Bytes per element for a dtype given as torch dtype, numpy dtype or name."""
    name = str(dtype).replace("torch.", "")
    try:
        return ELEM_SIZE[name]
    except KeyError:
        raise ValueError(f"unsupported dtype {dtype!r}: gpperf supports float16, bfloat16 and float32") from None


def _pow2(x: int) -> bool:
    return x > 0 and (x & (x - 1)) == 0


def check_config(
    cfg: TileConfig,
    *,
    elem_size: int,
    max_shared_memory: int | None = None,
    facts: dict | None = None,
    arch: int | None = None,
    tensor_cores: bool = True,
) -> str | None:
    """Return None when `cfg` can run on a device with `max_shared_memory` bytes per block, else the reason.

    `facts` (a kernel facts table entry, ``kernels.facts.lookup``) replaces the estimates with what the
    compiler produced for the binary that will run: its shared memory, and any spill (a spilling config is
    never chosen: local-memory traffic costs more than a smaller tile gains). Without facts, `arch` (and
    `tensor_cores`, False for IEEE fp32) sharpen the shared-memory estimate (`TileConfig.smem_bytes`).
    """
    for name in ("block_m", "block_n", "block_k"):
        v = getattr(cfg, name)
        if not _pow2(v) or not MIN_BLOCK <= v <= MAX_BLOCK:
            return f"{name}={v} must be a power of two in [{MIN_BLOCK}, {MAX_BLOCK}]"
    if cfg.num_warps not in ALLOWED_WARPS:
        return f"num_warps={cfg.num_warps} must be one of {ALLOWED_WARPS}"
    if not _pow2(cfg.split_k) or cfg.split_k > 64:
        return f"split_k={cfg.split_k} must be a power of two <= 64"
    if cfg.num_stages > 8:
        return f"num_stages={cfg.num_stages} must be <= 8"
    if cfg.group_m > 64:
        return f"group_m={cfg.group_m} must be <= 64"
    if cfg.acc_regs_per_thread() > MAX_ACC_REGS_PER_THREAD:
        return (
            f"accumulator needs {cfg.acc_regs_per_thread():.0f} registers per thread "
            f"(> {MAX_ACC_REGS_PER_THREAD}): use more warps or a smaller tile"
        )
    if facts is not None and facts["spill_bytes"] > 0:
        return (
            f"spills {facts['spill_bytes']} B per thread to local memory ({facts['registers']} registers; "
            "compiler facts): use more warps or a smaller tile"
        )
    if max_shared_memory is not None:
        need = facts["shared_bytes"] if facts is not None else cfg.smem_bytes(elem_size, arch, tensor_cores)
        if need > max_shared_memory:
            src = "compiler facts" if facts is not None else "estimate"
            return f"needs {need} B of shared memory per block ({src}), the device has {max_shared_memory} B"
    return None


def is_valid(
    cfg: TileConfig, *, elem_size: int, max_shared_memory: int | None = None, facts: dict | None = None
) -> bool:
    return check_config(cfg, elem_size=elem_size, max_shared_memory=max_shared_memory, facts=facts) is None


# ---- the candidate space ---------------------------------------------------------------------------
# A grid that covers what Inductor's mm template and Triton's tutorial search, plus split-K for the
# small-output / long-K shapes (decode GEMMs, weight gradients) where one tile per SM leaves the GPU idle.
# Chosen to keep the space at a few hundred configs: enough to contain the measured best for the public
# H100/A100 data within ~2% on nearly every shape, small enough to score in one onnxruntime call.
CANDIDATE_GRID = {
    "block_m": (16, 32, 64, 128, 256),
    "block_n": (32, 64, 128, 256),
    "block_k": (32, 64, 128),
    "group_m": (8,),
    "split_k": (1,),
    "num_warps": (4, 8),
    "num_stages": (3, 4),
}
SPLIT_K_GRID = {
    "block_m": (16, 32, 64),
    "block_n": (32, 64, 128),
    "block_k": (64, 128),
    "group_m": (8,),
    "split_k": (2, 4, 8, 16),
    "num_warps": (4,),
    "num_stages": (3,),
}
# Small tiles with few warps for tiny GEMMs (M or N of a few rows), where launch latency dominates.
SMALL_TILE_GRID = {
    "block_m": (16,),
    "block_n": (16, 32, 64),
    "block_k": (64, 128, 256),
    "group_m": (8,),
    "split_k": (1,),
    "num_warps": (1, 2),
    "num_stages": (2, 3),
}


def _expand(grid: dict[str, tuple[int, ...]]) -> list[TileConfig]:
    keys = list(grid)
    return [TileConfig(**dict(zip(keys, vals, strict=True))) for vals in itertools.product(*grid.values())]


def candidate_space(*, elem_size: int | None = None, max_shared_memory: int | None = None) -> list[TileConfig]:
    """All candidates, filtered for a device when its limits are given (elem_size=2 if only smem is given)."""
    seen: set[TileConfig] = set()
    out: list[TileConfig] = []
    for grid in (CANDIDATE_GRID, SPLIT_K_GRID, SMALL_TILE_GRID):
        for cfg in _expand(grid):
            if cfg in seen:
                continue
            if check_config(cfg, elem_size=elem_size or 2, max_shared_memory=max_shared_memory) is None:
                seen.add(cfg)
                out.append(cfg)
    return out


# A config that runs correctly everywhere (smem 3*(64*32+32*64)*4 B = 48 KiB at fp32).
DEFAULT_CONFIG = TileConfig(64, 64, 32, group_m=8, split_k=1, num_warps=4, num_stages=3)
