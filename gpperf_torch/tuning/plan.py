"""The plan of a sweep: problems (shape x dtype x layout), work items, sampling, ordering, compile classes.

Everything here is pure and seeded (crc32, never hash()), so a rerun plans the same work and resume
(`pending_work`) can skip what is already in the file.
"""

from __future__ import annotations

import csv
import logging
import random
import zlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..measure.dataset import KEY_COLUMNS
from ..measure.writer import DatasetWriter, format_cell
from .shapes import Shape, preset_shapes, read_shapes

logger = logging.getLogger(__name__)

DTYPE_ALIASES = {
    "fp16": "float16",
    "half": "float16",
    "float16": "float16",
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
    "fp32": "float32",
    "float": "float32",
    "float32": "float32",
}
# Layout names give (a_trans, b_trans): "nt" is Linear's forward (B = weight.T, a transposed view).
LAYOUTS = {"nn": (0, 0), "nt": (0, 1), "tn": (1, 0), "tt": (1, 1)}
# The interpreter runs a 128^3 GEMM in about a second; anything bigger makes a CPU run useless.
INTERPRET_MAX_MNK = 128**3


# ---- work ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Problem:
    m: int
    n: int
    k: int
    dtype: str  # float16 | bfloat16 | float32
    a_trans: int
    b_trans: int
    tf32: int

    @property
    def layout(self) -> str:
        return ("t" if self.a_trans else "n") + ("t" if self.b_trans else "n")


@dataclass(frozen=True)
class WorkItem:
    problem: Problem
    cfg: Any  # TileConfig, or None for the torch.matmul baseline


@dataclass
class TuneSummary:
    out: str
    rows_written: int = 0
    rows_skipped: int = 0  # already in the file when the run started
    rows_failed: int = 0  # written with a status other than ok
    rows_remaining: int = 0  # planned but not measured (budget or interruption)
    elapsed_s: float = 0.0
    rows_per_s: float = 0.0
    budget_stopped: bool = False
    energy_available: bool = False
    energy_reason: str = ""
    interpreted: bool = False
    shapes: int = 0
    problems: int = 0
    repaired_bytes: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    # Ray runs: per worker label {"gpu", "rows", "rows_per_s"}; tasks lost with a worker and sent again; workers
    # lost (died, killed, node gone); rows a retried task returned that were already written (never rewritten).
    workers: dict[str, dict[str, Any]] = field(default_factory=dict)
    tasks_retried: int = 0
    workers_lost: int = 0
    rows_duplicate_dropped: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def normalize_dtype(name: str) -> str:
    try:
        return DTYPE_ALIASES[str(name).replace("torch.", "").lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; use one of {', '.join(sorted(DTYPE_ALIASES))}") from None


def _seed_of(*parts: object) -> int:
    # Python's hash() of a str changes per process; resuming needs the same choices every run.
    return zlib.crc32("|".join(map(str, parts)).encode())


def sample_configs(configs: Sequence[Any], count: int | None, *, seed: int, key: object) -> list[Any]:
    """A seeded, diverse subset: round-robin over strata of (tile shape, split-K or not), shuffled.

    Each problem gets its own subset (seeded by `key`), so together the problems cover the whole space.
    """
    rng = random.Random(_seed_of(seed, key))
    if count is None or count >= len(configs):
        out = list(configs)
        rng.shuffle(out)
        return out
    if count < 1:
        raise ValueError(f"configs per shape must be >= 1, got {count}")
    strata: dict[tuple, list[Any]] = defaultdict(list)
    for cfg in configs:
        strata[(cfg.block_m, cfg.block_n, cfg.split_k > 1)].append(cfg)
    groups = list(strata.values())
    rng.shuffle(groups)
    for g in groups:
        rng.shuffle(g)
    out = []
    while len(out) < count:
        for g in groups:
            if g and len(out) < count:
                out.append(g.pop())
    return out


def read_configs(path: str | Path) -> list[Any]:
    """TileConfig keys, one a line (``128x64x32_g8_s1_w4_st3``), or a CSV with a ``config`` column."""
    from ..kernels import TileConfig

    path = Path(path)
    try:
        lines = [ln.split("#", 1)[0].strip() for ln in path.read_text().splitlines()]
    except (OSError, UnicodeDecodeError) as e:  # missing, a directory, binary
        raise ValueError(f"cannot read configs file {str(path)!r}: {e}") from e
    lines = [ln for ln in lines if ln]
    if lines and "config" in [c.strip() for c in lines[0].split(",")]:
        lines = [r["config"] for r in csv.DictReader(lines) if r.get("config")]
    if not lines:
        raise ValueError(f"configs file {str(path)!r} names no configs; write one key like 64x64x32_g8_s1_w4_st3")
    out = []
    for ln in lines:
        try:
            out.append(TileConfig.from_key(ln))
        except ValueError as e:
            raise ValueError(f"configs file {str(path)!r}: {e}") from None
    return list(dict.fromkeys(out))


def order_work(per_problem: dict[Problem, list[WorkItem]], *, chunk: int, seed: int) -> list[WorkItem]:
    """Round-robin passes: each problem gets its next `chunk` items per pass, problems shuffled per pass."""
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    rng = random.Random(_seed_of(seed, "order"))
    problems = list(per_problem)
    out: list[WorkItem] = []
    p = 0
    while True:
        visiting = [pr for pr in problems if len(per_problem[pr]) > p * chunk]
        if not visiting:
            return out
        rng.shuffle(visiting)
        for pr in visiting:
            out.extend(per_problem[pr][p * chunk : (p + 1) * chunk])
        p += 1


# ---- precompilation (GPU only) ----------------------------------------------------------------------
def _proxy_dim(d: int) -> int:
    # Triton specializes integer arguments on ==1 and %16==0, and launch passes the largest power of two up to
    # 8 dividing sizes and strides (kernels/align.py); a tiny tensor in the same class compiles the same binary,
    # which lands in the on-disk cache the measuring process then loads.
    return 1 if d == 1 else (16 if d % 16 == 0 else 16 + (d & -d))


def _proxy_k(k: int, cfg: Any) -> int:
    if k == 1:
        return 1
    eff = min(cfg.split_k, -(-k // cfg.block_k))  # launch() never runs empty K slices
    if k % cfg.block_k == 0:  # the EVEN_K binary (no K masks): keep K % BLOCK_K == 0
        return eff * cfg.block_k
    return (eff - 1) * cfg.block_k + (16 if k % 16 == 0 else 16 + (k & -k))


def variant_of(item: WorkItem) -> tuple | None:
    if item.cfg is None:
        return None
    p = item.problem
    return (
        item.cfg.key,
        p.dtype,
        p.a_trans,
        p.b_trans,
        p.tf32,
        _proxy_dim(p.m),
        _proxy_dim(p.n),
        _proxy_k(p.k, item.cfg),
    )


def _problems(shapes: Sequence[Shape], dtypes: Sequence[str], layouts: Sequence[str], tf32: bool) -> list[Problem]:
    out = []
    for m, n, k in shapes:
        for dt in dtypes:
            for lay in layouts:
                a_t, b_t = LAYOUTS[lay]
                out.append(Problem(m, n, k, dt, a_t, b_t, int(tf32 and dt == "float32")))
    return out


def _resolve_shapes(
    preset: str | None, shapes: Sequence[Shape] | None, shapes_file: str | None, seed: int, random_count: int
) -> list[Shape]:
    given = [x is not None for x in (preset, shapes, shapes_file)]
    if sum(given) != 1:
        raise ValueError("give exactly one of preset=..., shapes=[(m, n, k), ...] or shapes_file=...")
    if preset is not None:
        return preset_shapes(preset, seed=seed, count=random_count)
    if shapes_file is not None:
        return read_shapes(shapes_file)
    out = []
    for s in shapes or ():
        if len(s) != 3 or min(int(x) for x in s) < 1:
            raise ValueError(f"shape {s!r} is not (m, n, k) with positive sizes")
        out.append((int(s[0]), int(s[1]), int(s[2])))
    if not out:
        raise ValueError("shapes=[] names no shapes")
    return out


def config_space(dtypes: Sequence[str], given: Sequence[Any] | None, max_shared_memory: int) -> dict[str, list[Any]]:
    """Configs per dtype: the candidate space filtered for a device, or the given list as is (so an invalid one
    is recorded as such)."""
    from ..kernels import candidate_space, elem_size

    return {
        dt: list(given)
        if given is not None
        else candidate_space(elem_size=elem_size(dt), max_shared_memory=max_shared_memory)
        for dt in dtypes
    }


def plan_items(
    problems: Sequence[Problem],
    space: dict[str, list[Any]],
    *,
    torch_baseline: bool,
    configs_per_shape: int | None,
    seed: int,
) -> dict[Problem, list[WorkItem]]:
    """Every problem's items, the torch.matmul baseline first, then its (sampled) configs."""
    out = {}
    for p in problems:
        items = [WorkItem(p, None)] if torch_baseline else []
        items += [WorkItem(p, c) for c in sample_configs(space[p.dtype], configs_per_shape, seed=seed, key=p)]
        out[p] = items
    return out


# ---- resume: the planned items not yet in the file -----------------------------------------------------
def _item_key(gpu: str, it: WorkItem) -> tuple[str, ...]:
    p = it.problem
    vals = {
        "gpu": gpu,
        "m": p.m,
        "n": p.n,
        "k": p.k,
        "dtype": p.dtype,
        "a_trans": p.a_trans,
        "b_trans": p.b_trans,
        "tf32": p.tf32,
        "backend": "torch" if it.cfg is None else "triton",
        "config": "" if it.cfg is None else it.cfg.key,
    }
    return tuple(format_cell(vals[c]) for c in KEY_COLUMNS)


def pending_work(
    writer: DatasetWriter, gpu: str, planned: dict[Problem, list[WorkItem]], *, chunk: int, seed: int
) -> tuple[list[WorkItem], int]:
    """Resume: the planned items on `gpu` not yet in the file, in sweep order, and how many were skipped.

    A problem with an `oom` row is skipped whole (its inputs did not fit on that GPU).
    """
    skipped = 0
    per_problem: dict[Problem, list[WorkItem]] = {}
    for p, planned_items in planned.items():
        pkey = tuple(str(x) for x in (gpu, p.m, p.n, p.k, p.dtype, p.a_trans, p.b_trans, p.tf32))
        if pkey in writer.oom_problems:
            items = []
        else:
            items = [it for it in planned_items if _item_key(gpu, it) not in writer.existing]
        skipped += len(planned_items) - len(items)
        if items:
            per_problem[p] = items
    return order_work(per_problem, chunk=chunk, seed=seed), skipped
