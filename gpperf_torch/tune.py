"""Offline tuning: measure runtime, power and energy per (shape, dtype, layout, config) into a resumable CSV.

``gpperf-torch tune --preset llm --dtype fp16 bf16 --out runs/h100.csv --budget-s 300`` or `tune(...)`.

Work is ordered so that a budget cut still buys a broad dataset: compilation runs ahead in worker processes
(it dominates on a GPU), shapes are visited round-robin (each pass gives every problem its next few configs,
the torch.matmul baseline first), and the order is shuffled with a seed to spread thermal drift. Every row is
flushed as written; rerunning the same command skips rows already in the file (`dataset.KEY_COLUMNS`).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import logging
import math
import os
import random
import subprocess
import sys
import threading
import time
import types
import uuid
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import measure
from .dataset import COLUMNS, KEY_COLUMNS
from .device import KNOWN_DEVICES, DeviceInfo
from .shapes import PRESETS, Shape, preset_shapes, read_shapes

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
# Input sets are rotated until they span this many bytes (2x the largest L2 we know, H200's 60 MiB), so a
# small shape is not timed with its operands already in L2.
DEFAULT_ROTATE_BYTES = 2 * max(d.l2_bytes for d in KNOWN_DEVICES.values())
MAX_INPUT_SETS = 512
ERROR_TEXT_MAX = 400
LOCK_SUFFIX = ".lock"


class DatasetLockedError(RuntimeError):
    """Another process holds the output file's lock."""


class NoCudaError(RuntimeError):
    """Tuning needs a GPU unless interpreting."""


NO_CUDA_MESSAGE = (
    "gpperf-torch tune: no CUDA device found. Tuning measures GPU kernels; run it on a machine with an "
    "NVIDIA GPU, or pass --interpret to run the same pipeline on tiny shapes through the Triton "
    "interpreter (wall-clock times, no energy, rows marked interpreted=1)."
)


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
    from .kernels import TileConfig

    path = Path(path)
    try:
        lines = [ln.split("#", 1)[0].strip() for ln in path.read_text().splitlines()]
    except OSError as e:
        raise ValueError(f"cannot read configs file {str(path)!r}: {e}") from e
    lines = [ln for ln in lines if ln]
    if lines and "config" in [c.strip() for c in lines[0].split(",")]:
        lines = [r["config"] for r in csv.DictReader(lines) if r.get("config")]
    if not lines:
        raise ValueError(f"configs file {str(path)!r} names no configs; write one key like 64x64x32_g8_s1_w4_st3")
    return list(dict.fromkeys(TileConfig.from_key(ln) for ln in lines))


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


# ---- the CSV --------------------------------------------------------------------------------------
def repair_torn_tail(path: str | Path) -> int:
    """Truncate a partial last line (a write cut by a kill or crash); return the bytes removed."""
    path = Path(path)
    if not path.exists():
        return 0
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return 0
        pos = size
        keep = 0
        while pos > 0:
            step = min(65536, pos)
            pos -= step
            f.seek(pos)
            nl = f.read(step).rfind(b"\n")
            if nl >= 0:
                keep = pos + nl + 1
                break
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
    logger.warning("%s: removed a torn last line (%d bytes) left by an interrupted run", path, size - keep)
    return size - keep


def _key(row: dict[str, str] | Sequence[str]) -> tuple[str, ...]:
    if isinstance(row, dict):
        return tuple(row[c] for c in KEY_COLUMNS)
    idx = [COLUMNS.index(c) for c in KEY_COLUMNS]
    return tuple(row[i] for i in idx)


_PROBLEM_COLUMNS = ("gpu", "m", "n", "k", "dtype", "a_trans", "b_trans", "tf32")


class DatasetWriter:
    """Append-only CSV writer that holds a lock, repairs a torn tail and knows which rows exist.

    Rows are single physical lines (error texts are flattened), each flushed when written, with an fsync at
    most every `fsync_every_s`: a SIGKILL loses at most the row in flight, a power cut at most a few seconds.
    """

    def __init__(self, path: str | Path, *, fsync_every_s: float = 5.0):
        from filelock import FileLock, Timeout

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(str(self.path) + LOCK_SUFFIX)
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            raise DatasetLockedError(
                f"{self.path} is being written by another tune run (lock {self.path}{LOCK_SUFFIX} is held); "
                f"wait for that run to finish, or pass a different --out"
            ) from None
        try:
            self.repaired_bytes = repair_torn_tail(self.path)
            self.existing: set[tuple[str, ...]] = set()
            self.oom_problems: set[tuple[str, ...]] = set()
            header = self._read_existing()
            self._f = open(self.path, "a", newline="")  # noqa: SIM115 (held open for the whole run)
            self._w = csv.writer(self._f, lineterminator="\n")
            if not header:
                self._w.writerow(COLUMNS)
                self._f.flush()
        except BaseException:
            self._lock.release()
            raise
        self._fsync_every_s = fsync_every_s
        self._last_fsync = time.monotonic()

    def _read_existing(self) -> bool:
        if not self.path.exists() or self.path.stat().st_size == 0:
            return False
        with open(self.path, newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header != list(COLUMNS):
                raise ValueError(
                    f"{self.path} exists with other columns than this version writes "
                    f"(first line {','.join(header or [])[:120]!r}...); pass a new --out or move the old file"
                )
            pidx = [COLUMNS.index(c) for c in _PROBLEM_COLUMNS]
            status = COLUMNS.index("status")
            bad = 0
            for row in reader:
                if len(row) != len(COLUMNS):
                    bad += 1
                    continue
                self.existing.add(_key(row))
                if row[status] == "oom":
                    self.oom_problems.add(tuple(row[i] for i in pidx))
            if bad:
                logger.warning("%s: ignored %d malformed rows (wrong number of fields)", self.path, bad)
        return True

    def write(self, row: dict[str, Any]) -> None:
        values = [_fmt(row.get(c)) for c in COLUMNS]
        self._w.writerow(values)
        self._f.flush()
        self.existing.add(_key(values))
        if time.monotonic() - self._last_fsync >= self._fsync_every_s:
            os.fsync(self._f.fileno())
            self._last_fsync = time.monotonic()

    def close(self) -> None:
        try:
            if not self._f.closed:
                self._f.flush()
                os.fsync(self._f.fileno())
                self._f.close()
        finally:
            self._lock.release()

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(int(v))
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    if isinstance(v, str):
        flat = " | ".join(s.strip() for s in v.splitlines() if s.strip())
        return flat if len(flat) <= ERROR_TEXT_MAX else flat[: ERROR_TEXT_MAX - 3] + "..."
    return str(v)


# ---- failures -------------------------------------------------------------------------------------
def classify_error(e: BaseException) -> str:
    """Map an exception from launching a config to a dataset status."""
    import torch

    name = type(e).__name__
    text = str(e).lower()
    if isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in text:
        return "oom"
    if name == "OutOfResources" or "out of resource" in text:
        return "out_of_resources"
    if name in ("CompilationError", "CompileTimeAssertionFailure", "PTXASError") or "passmanager" in text:
        return "compile_error"
    if isinstance(e, (ValueError, TypeError)):
        return "invalid"  # launch() refused the config or the inputs
    return "error"


# ---- inputs ---------------------------------------------------------------------------------------
def _round_up(x: int, to: int = 64) -> int:
    return -(-x // to) * to


class InputSets:
    """Random operands rotated over enough sets to exceed L2 (views into one allocation each for A|B and C).

    Never zeros: power depends on the data, and a zero-filled GEMM draws far less than a real one.
    """

    def __init__(self, p: Problem, device: str, *, rotate_bytes: int, max_sets: int = MAX_INPUT_SETS, seed=0):
        import torch

        dtype = getattr(torch, p.dtype)
        es = torch.empty((), dtype=dtype).element_size()
        a, b, c = _round_up(p.m * p.k), _round_up(p.k * p.n), _round_up(p.m * p.n)  # 128 B aligned views
        self.n_sets = max(1, min(max_sets, math.ceil(rotate_bytes / ((a + b + c) * es))))
        gen = torch.Generator(device=device).manual_seed(seed)
        ab = torch.randn(self.n_sets * (a + b), device=device, dtype=dtype, generator=gen)
        out = torch.empty(self.n_sets * c, device=device, dtype=dtype)
        self.a, self.b, self.c = [], [], []
        for i in range(self.n_sets):
            base = i * (a + b)
            av = ab[base : base + p.m * p.k]
            bv = ab[base + a : base + a + p.k * p.n]
            self.a.append(av.view(p.k, p.m).t() if p.a_trans else av.view(p.m, p.k))
            self.b.append(bv.view(p.n, p.k).t() if p.b_trans else bv.view(p.k, p.n))
            self.c.append(out[i * c : i * c + p.m * p.n].view(p.m, p.n))

    def operands(self, i: int) -> tuple[Any, Any, Any]:
        j = i % self.n_sets
        return self.a[j], self.b[j], self.c[j]


def _rel_error(out: Any, ref: Any) -> float:
    o, r = out.float(), ref.float()
    return float((o - r).norm() / r.norm().clamp_min(1e-30))


# ---- precompilation (GPU only) ----------------------------------------------------------------------
def _proxy_dim(d: int) -> int:
    # Triton specializes integer arguments on ==1 and %16==0; a tiny tensor in the same class compiles the
    # same binary, which lands in the on-disk cache the measuring process then loads.
    return 1 if d == 1 else (16 if d % 16 == 0 else 17)


def _proxy_k(k: int, cfg: Any) -> int:
    if k == 1:
        return 1
    eff = min(cfg.split_k, -(-k // cfg.block_k))  # launch() never runs empty K slices
    if k % cfg.block_k == 0:  # the EVEN_K binary (no K masks): keep K % BLOCK_K == 0
        return eff * cfg.block_k
    return (eff - 1) * cfg.block_k + (16 if k % 16 == 0 else 17)


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


def _warm_variant(variant: tuple) -> str:
    """Compile one kernel variant by launching it on tiny tensors (fills Triton's on-disk cache)."""
    try:
        import torch

        from .kernels import TileConfig, launch

        key, dtype, a_trans, b_trans, tf32, m, n, k = variant
        p = Problem(m, n, k, dtype, a_trans, b_trans, tf32)
        sets = InputSets(p, "cuda", rotate_bytes=0, max_sets=1)
        launch(*sets.operands(0), TileConfig.from_key(key), allow_tf32=bool(tf32))
        torch.cuda.synchronize()
        return ""
    except Exception as e:  # the measuring process records the failure as a row
        return f"{type(e).__name__}: {e}"


def _warm_worker() -> None:
    """Worker process main: one JSON variant per stdin line, one result line per variant on stdout."""
    for line in sys.stdin:
        err = _warm_variant(tuple(json.loads(line)))
        sys.stdout.write(json.dumps(err) + "\n")
        sys.stdout.flush()


class Precompiler:
    """Worker processes that compile variants in the order the sweep will need them.

    Plain subprocesses rather than multiprocessing: spawn-based pools re-run the caller's ``__main__``, which
    breaks any script that calls `tune()` without an ``if __name__ == "__main__"`` guard. A variant the sweep
    reaches before any worker took it is dropped from the queue and compiled by the sweep itself.
    """

    def __init__(self, variants: Iterable[tuple], jobs: int):
        self._pending = list(dict.fromkeys(variants))
        self._running: set[tuple] = set()
        self._cv = threading.Condition()
        self._closed = False
        self._procs: list[subprocess.Popen] = []
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        cmd = [sys.executable, "-c", "from gpperf_torch.tune import _warm_worker; _warm_worker()"]
        total = len(self._pending)
        for _ in range(max(0, min(jobs, total))):
            proc = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
            )
            self._procs.append(proc)
            threading.Thread(target=self._feed, args=(proc,), daemon=True).start()
        logger.info("precompiling %d kernel variants in %d processes", total, len(self._procs))

    def _feed(self, proc: subprocess.Popen) -> None:
        while True:
            with self._cv:
                if self._closed or not self._pending:
                    break
                v = self._pending.pop(0)
                self._running.add(v)
            try:
                proc.stdin.write(json.dumps(v) + "\n")
                proc.stdin.flush()
                alive = bool(proc.stdout.readline())
            except (OSError, ValueError):
                alive = False
            with self._cv:
                self._running.discard(v)
                self._cv.notify_all()
            if not alive:  # the worker died (or was closed): the sweep compiles what is left
                break
        with contextlib.suppress(OSError, ValueError):
            proc.stdin.close()

    def wait(self, variant: tuple | None, timeout: float = 600.0) -> None:
        if variant is None:
            return
        with self._cv:
            if variant in self._pending:
                self._pending.remove(variant)
                return
            self._cv.wait_for(lambda: variant not in self._running, timeout=timeout)

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._pending.clear()
        for proc in self._procs:
            proc.kill()
        for proc in self._procs:
            proc.wait()


# ---- the sweep --------------------------------------------------------------------------------------
class InterpreterSetupError(RuntimeError):
    """Triton was imported without TRITON_INTERPRET=1, so its kernels cannot run on the CPU."""


def _interpret_env_set() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _ensure_interpreter(interpret: bool) -> None:
    """For `interpret`, check that Triton runs interpreted: that is fixed when triton is first imported
    (its own @jit helpers such as tl.cdiv are built then), so setting the variable later is too late."""
    if not interpret:
        return
    mod = sys.modules.get("gpperf_torch.kernels.matmul")
    compiled = mod is not None and type(mod._matmul_kernel).__name__ != "InterpretedFunction"
    if compiled or ("triton" in sys.modules and not _interpret_env_set()):
        raise InterpreterSetupError(
            "interpret=True needs TRITON_INTERPRET=1 in the environment before triton is imported (importing "
            "gpperf_torch imports it); run e.g. `TRITON_INTERPRET=1 python your_script.py`"
        )
    os.environ["TRITON_INTERPRET"] = "1"


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


def tune(
    out: str | Path,
    *,
    preset: str | None = None,
    shapes: Sequence[Shape] | None = None,
    shapes_file: str | None = None,
    dtypes: Sequence[str] = ("fp16",),
    layouts: Sequence[str] = ("nn",),
    tf32: bool = False,
    configs: Sequence[Any] | None = None,
    configs_file: str | None = None,
    configs_per_shape: int | None = None,
    torch_baseline: bool = True,
    budget_s: float | None = None,
    time_budget_ms: float = 25.0,
    energy_fraction: float = 1.0,
    energy_window_s: float = 0.25,
    idle_s: float = 1.0,
    chunk: int = 4,
    jobs: int | None = None,
    seed: int = 0,
    random_count: int = 200,
    max_shapes: int | None = None,
    interpret: bool = False,
    quiet: bool = False,
    rotate_bytes: int = DEFAULT_ROTATE_BYTES,
) -> TuneSummary:
    """Measure every (shape, dtype, layout, config) not yet in `out` and append one row each.

    Shapes: exactly one of `preset` ("llm", "square", "random"), `shapes` or `shapes_file`. Configs: the
    device-filtered candidate space, or `configs` / `configs_file`, optionally `configs_per_shape` sampled.
    `energy_fraction` of rows (chosen by a hash of the row key, so a rerun agrees) get an NVML energy window
    of `energy_window_s`; 0 disables energy. Stops cleanly after `budget_s`. Raises NoCudaError without a GPU
    unless `interpret` (tiny shapes through the Triton interpreter).
    """
    t_start = time.monotonic()
    if not 0.0 <= energy_fraction <= 1.0:
        raise ValueError(f"energy_fraction must be in [0, 1], got {energy_fraction}")
    if energy_window_s <= 0:
        raise ValueError(f"energy_window_s must be > 0, got {energy_window_s}")
    if budget_s is not None and budget_s <= 0:
        raise ValueError(f"budget_s must be > 0 seconds, got {budget_s}")
    bad_layouts = [x for x in layouts if x not in LAYOUTS]
    if bad_layouts:
        raise ValueError(f"unknown layouts {bad_layouts}; use {', '.join(LAYOUTS)}")
    dtypes = list(dict.fromkeys(normalize_dtype(d) for d in dtypes))
    shape_list = _resolve_shapes(preset, shapes, shapes_file, seed, random_count)

    _ensure_interpreter(interpret)
    import torch
    import triton

    if not interpret and not torch.cuda.is_available():
        raise NoCudaError(NO_CUDA_MESSAGE)
    from .kernels import TileConfig, candidate_space, elem_size

    if interpret:
        too_big = [s for s in shape_list if s[0] * s[1] * s[2] > INTERPRET_MAX_MNK]
        shape_list = [s for s in shape_list if s[0] * s[1] * s[2] <= INTERPRET_MAX_MNK]
        if too_big:
            logger.warning(
                "--interpret: skipping %d shapes with m*n*k > %d (e.g. %s); the interpreter is for tiny ones",
                len(too_big),
                INTERPRET_MAX_MNK,
                "x".join(map(str, too_big[0])),
            )
        if not shape_list:
            raise ValueError(
                f"--interpret: every shape has m*n*k > {INTERPRET_MAX_MNK}; pass small shapes (e.g. --shapes "
                f"FILE with '64 64 64') or run on a GPU"
            )
    if max_shapes is not None:
        rng = random.Random(_seed_of(seed, "max_shapes"))
        shape_list = rng.sample(shape_list, min(max_shapes, len(shape_list)))

    # Device and provenance.
    if interpret:
        info: DeviceInfo = KNOWN_DEVICES["h100"]  # validity limits; the rows say interpreted=1
        gpu_name, dev = f"interpreter ({info.short_name} limits)", "cpu"
        meter: Any = measure.NullEnergyMeter("Triton interpreter: no GPU to measure energy on")
        timer: Any = measure.WallTimer()
        min_reps, max_reps = 2, 50
        driver = ""
    else:
        from .device import current_device

        info = current_device()
        gpu_name, dev = info.name, "cuda"
        meter = measure.open_energy_meter(torch.cuda.current_device()) if energy_fraction > 0 else None
        if meter is None:
            meter = measure.NullEnergyMeter("energy disabled (energy_fraction=0)")
        timer = measure.CudaEventTimer()
        min_reps, max_reps = 10, 1000
        driver = measure.driver_version()
    summary = TuneSummary(out=str(out), interpreted=interpret, energy_available=bool(meter.available))
    summary.energy_reason = meter.reason
    if energy_fraction > 0:
        meter.warn_if_unavailable()  # once per run; rows then skip the meter

    base_row = {
        "gpu": gpu_name,
        "capability": f"{info.capability[0]}.{info.capability[1]}",
        "sm_count": info.sm_count,
        "max_shared_memory": info.max_shared_memory,
        "l2_bytes": info.l2_bytes,
        "sm_clock_max_mhz": info.sm_clock_mhz,
        "mem_clock_max_mhz": info.mem_clock_mhz,
        "mem_bandwidth_gbs": info.mem_bandwidth_gbs,
        "driver": driver,
        "cuda": torch.version.cuda or "",
        "torch": torch.__version__,
        "triton": triton.__version__,
        "interpreted": int(interpret),
        "run_id": uuid.uuid4().hex[:12],
    }

    # Configs per dtype: the candidate space filtered for this device, or the given list as is (so an
    # invalid one is recorded as such).
    given = list(configs) if configs is not None else (read_configs(configs_file) if configs_file else None)
    if given is not None:
        given = [c if isinstance(c, TileConfig) else TileConfig.from_key(str(c)) for c in given]
    space = {
        dt: given
        if given is not None
        else candidate_space(elem_size=elem_size(dt), max_shared_memory=info.max_shared_memory)
        for dt in dtypes
    }

    writer = DatasetWriter(out)
    summary.repaired_bytes = writer.repaired_bytes
    pool: Precompiler | None = None
    progress = None
    try:
        problems = _problems(shape_list, dtypes, layouts, tf32)
        summary.shapes, summary.problems = len(shape_list), len(problems)
        per_problem: dict[Problem, list[WorkItem]] = {}
        for p in problems:
            pkey = tuple(str(x) for x in (gpu_name, p.m, p.n, p.k, p.dtype, p.a_trans, p.b_trans, p.tf32))
            items = [WorkItem(p, None)] if torch_baseline else []
            items += [WorkItem(p, c) for c in sample_configs(space[p.dtype], configs_per_shape, seed=seed, key=p)]
            total = len(items)
            if pkey in writer.oom_problems:
                items = []
            else:
                items = [it for it in items if _item_key(gpu_name, it) not in writer.existing]
            summary.rows_skipped += total - len(items)
            if items:
                per_problem[p] = items
        work = order_work(per_problem, chunk=chunk, seed=seed)
        if summary.rows_skipped:
            logger.info("%s: %d rows already present, %d to measure", out, summary.rows_skipped, len(work))

        idle_power = None
        if work and meter.available:
            idle_power = meter.idle_power_w(idle_s)
            if idle_power is not None:
                logger.info("idle power %.1f W over %.1f s", idle_power, idle_s)
        if work and not interpret:
            variants = [v for v in map(variant_of, work) if v is not None]
            n_jobs = jobs if jobs is not None else max(1, (os.cpu_count() or 2) - 1)
            if variants and n_jobs > 0:
                pool = Precompiler(variants, n_jobs)

        progress = _Progress(len(work), quiet=quiet)
        t_loop = time.monotonic()

        def out_of_time() -> bool:
            return budget_s is not None and _over_budget(t_start, budget_s, summary.rows_written, t_loop)

        run = _Run(
            writer=writer,
            summary=summary,
            base_row=base_row,
            dev=dev,
            timer=timer,
            meter=meter,
            pool=pool,
            info=info,
            energy_fraction=energy_fraction,
            energy_window_s=energy_window_s,
            idle_power=idle_power,
            time_budget_ms=time_budget_ms,
            min_reps=min_reps,
            max_reps=max_reps,
            rotate_bytes=rotate_bytes,
            seed=seed,
            progress=progress,
            out_of_time=out_of_time,
            batch_runner=measure.wall_batch_runner if interpret else measure.cuda_batch_runner,
        )
        i = 0
        while i < len(work):
            # Visit one problem's chunk with one set of inputs.
            j = i
            while j < len(work) and work[j].problem == work[i].problem:
                j += 1
            if out_of_time() or _visit(work[i:j], run):
                summary.budget_stopped = True
                break
            i = j
        summary.rows_remaining = len(work) - summary.rows_written
    finally:
        if progress is not None:
            progress.close()
        if pool is not None:
            pool.close()
        writer.close()
    summary.elapsed_s = time.monotonic() - t_start
    summary.rows_per_s = summary.rows_written / summary.elapsed_s if summary.elapsed_s > 0 else 0.0
    return summary


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
    return tuple(_fmt(vals[c]) for c in KEY_COLUMNS)


def _over_budget(t_start: float, budget_s: float, rows: int, t_loop: float) -> bool:
    now = time.monotonic()
    # Do not start a row that would most likely end past the budget (average row time so far).
    avg = (now - t_loop) / rows if rows else 0.0
    return now - t_start + avg > budget_s


def _row_for(base: dict[str, Any], it: WorkItem) -> dict[str, Any]:
    p = it.problem
    row = dict(base)
    row.update(m=p.m, n=p.n, k=p.k, dtype=p.dtype, a_trans=p.a_trans, b_trans=p.b_trans, tf32=p.tf32)
    if it.cfg is None:
        row.update(backend="torch", config="")
    else:
        row.update(backend="triton", config=it.cfg.key, **it.cfg.as_dict())
    return row


@dataclass
class _Run:
    """What every row of one run shares."""

    writer: DatasetWriter
    summary: TuneSummary
    base_row: dict[str, Any]
    dev: str
    timer: Any
    meter: Any
    pool: Precompiler | None
    info: DeviceInfo
    energy_fraction: float
    energy_window_s: float
    idle_power: float | None
    time_budget_ms: float
    min_reps: int
    max_reps: int
    rotate_bytes: int
    seed: int
    progress: _Progress
    out_of_time: Callable[[], bool]
    batch_runner: Callable[..., tuple[Callable[[], int], Callable[[], None]]] = measure.cuda_batch_runner

    def emit(self, row: dict[str, Any]) -> None:
        row["timestamp"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.writer.write(row)
        s = self.summary
        s.rows_written += 1
        s.statuses[row["status"]] = s.statuses.get(row["status"], 0) + 1
        if row["status"] != "ok":
            s.rows_failed += 1
        self.progress.advance()


def _visit(items: list[WorkItem], run: _Run) -> bool:
    """Measure one problem's chunk of items; return True when the budget ran out mid-chunk."""
    import torch

    from .kernels import check_config, elem_size, launch

    p = items[0].problem
    es = elem_size(p.dtype)
    sets = None
    for rotate in (run.rotate_bytes, 0):  # on OOM retry with a single set before giving the shape up
        try:
            sets = InputSets(p, run.dev, rotate_bytes=rotate, seed=_seed_of(run.seed, p))
            break
        except torch.cuda.OutOfMemoryError as e:
            err = e
            torch.cuda.empty_cache()
    if sets is None:
        # One oom row stands for the whole problem; a rerun skips the problem.
        row = _row_for(run.base_row, WorkItem(p, None))
        row.update(status="oom", error=f"inputs for {p.m}x{p.n}x{p.k} {p.dtype} do not fit: {err}")
        run.emit(row)
        return False

    prev_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = bool(p.tf32)
    try:
        a0, b0, _ = sets.operands(0)
        ref = torch.matmul(a0, b0)
        tol = 1e-4 if p.dtype == "float32" and not p.tf32 else 2e-2
        smem = run.info.max_shared_memory
        for idx, it in enumerate(items):
            if idx > 0 and run.out_of_time():
                return True
            row = _row_for(run.base_row, it)
            cfg = it.cfg
            if cfg is not None:
                reason = check_config(cfg, elem_size=es, max_shared_memory=smem)
                if reason is not None:
                    row.update(status="invalid", error=f"{cfg.key} for {p.dtype} on {run.info.short_name}: {reason}")
                    run.emit(row)
                    continue
                if run.pool is not None:
                    run.pool.wait(variant_of(it))

                def fn(i: int, cfg=cfg) -> Any:
                    a, b, c = sets.operands(i)
                    return launch(a, b, c, cfg, allow_tf32=bool(p.tf32), max_shared_memory=smem)
            else:

                def fn(i: int) -> Any:
                    a, b, c = sets.operands(i)
                    return torch.matmul(a, b, out=c)

            row.update(_measure_row(it, fn, ref, tol, run))
            run.emit(row)
            if row["status"] == "error" and run.dev == "cuda" and not _cuda_healthy():
                raise RuntimeError(
                    f"the CUDA context failed after {row['config'] or 'torch.matmul'} on {p.m}x{p.n}x{p.k} "
                    f"({row['error']}); rows so far are saved and this one is recorded: rerun to resume"
                )
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev_tf32
    return False


def _cuda_healthy() -> bool:
    import torch

    try:
        torch.cuda.synchronize()
        return True
    except Exception:
        return False


def _measure_row(it: WorkItem, fn: Callable[[int], Any], ref: Any, tol: float, run: _Run) -> dict[str, Any]:
    import torch

    p = it.problem
    try:
        out = fn(0)
        if run.dev == "cuda":
            torch.cuda.synchronize()
        err = _rel_error(out, ref)
        if not err <= tol:  # also catches NaN
            return {"status": "error", "error": f"wrong result: relative error {err:.3g} > {tol:g}"}
        timing = run.timer.measure(fn, budget_ms=run.time_budget_ms, min_reps=run.min_reps, max_reps=run.max_reps)
    except Exception as e:
        status = classify_error(e)
        if status == "oom":
            torch.cuda.empty_cache()
        logger.debug("%s on %s: %s", it.cfg, p, e)
        return {"status": status, "error": f"{type(e).__name__}: {e}"}
    row: dict[str, Any] = {
        "status": "ok",
        "error": "",
        "time_ms": timing.median_ms,
        "time_ms_p20": timing.p20_ms,
        "time_ms_p80": timing.p80_ms,
        "n_reps": timing.n_reps,
        "tflops": 2.0 * p.m * p.n * p.k / (timing.median_ms * 1e-3) / 1e12 if timing.median_ms > 0 else None,
        "idle_power_w": run.idle_power,
    }
    if run.meter.available and _energy_selected(it, run.energy_fraction):
        run_batch, release = run.batch_runner(fn, timing.median_ms)
        try:
            energy = run.meter.measure(run_batch, run.energy_window_s)
        finally:
            release()
        if energy is not None:
            row.update(
                energy_j=energy.energy_j,
                power_w=energy.power_w,
                power_instant_w=energy.power_instant_w,
                energy_window_s=energy.window_s,
                energy_reps=energy.reps,
            )
            if run.idle_power is not None and energy.reps:
                row["dynamic_energy_j"] = energy.energy_j - run.idle_power * energy.window_s / energy.reps
    row.update(run.meter.conditions())
    return row


def _energy_selected(it: WorkItem, fraction: float) -> bool:
    if fraction <= 0.0:
        return False
    if fraction >= 1.0 or it.cfg is None:  # the baseline always gets energy when any row does
        return True
    return _seed_of("energy", it.problem, it.cfg.key) / 2**32 < fraction


class _Progress:
    """A rich progress bar (rows, rows/s, ETA), or nothing when quiet or rich is missing."""

    def __init__(self, total: int, *, quiet: bool):
        self._p = None
        if quiet or total == 0:
            return
        try:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
        except ImportError:
            return
        self._p = Progress(
            TextColumn("tune"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} rows/s"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            transient=False,
        )
        self._task = self._p.add_task("tune", total=total, rate="-")
        self._t0 = time.monotonic()
        self._done = 0
        self._p.start()

    def advance(self) -> None:
        if self._p is None:
            return
        self._done += 1
        rate = self._done / max(time.monotonic() - self._t0, 1e-9)
        self._p.update(self._task, advance=1, rate=f"{rate:.1f}")

    def close(self) -> None:
        if self._p is not None:
            self._p.stop()


# ---- command line --------------------------------------------------------------------------------
def add_cli(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "tune",
        help="measure runtime/power/energy per (shape, config) into a resumable CSV",
        description="Sweep shapes x dtypes x layouts x tile configs on this GPU; rerun to resume.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", choices=PRESETS, help="named shape set")
    src.add_argument("--shapes", metavar="FILE", help="shapes file: lines 'M N K' or a CSV with m,n,k")
    p.add_argument("--out", required=True, help="CSV to append to (created if missing; resumed if present)")
    p.add_argument("--dtype", nargs="+", default=["fp16"], help="fp16 bf16 fp32 (default fp16)")
    p.add_argument(
        "--layout",
        nargs="+",
        default=["nn"],
        choices=list(LAYOUTS),
        help="nn: both row-major (default); nt: B transposed (Linear's weight); tn; tt",
    )
    p.add_argument("--tf32", action="store_true", help="let fp32 inputs use TF32 (recorded in the tf32 column)")
    p.add_argument("--configs", metavar="FILE", help="TileConfig keys to measure instead of the candidate space")
    p.add_argument("--configs-per-shape", type=int, metavar="N", help="seeded, stratified sample per shape")
    p.add_argument("--no-torch-baseline", action="store_true", help="skip the torch.matmul row per shape")
    p.add_argument("--budget-s", type=float, metavar="S", help="stop cleanly after S seconds (rerun resumes)")
    p.add_argument("--time-budget-ms", type=float, default=25.0, help="timing budget per row (default 25 ms)")
    p.add_argument("--energy-window-s", type=float, default=0.25, help="NVML energy window per row (0.25 s)")
    p.add_argument(
        "--energy-fraction",
        type=float,
        default=1.0,
        help="share of rows that get an energy window (default 1; torch baselines always do)",
    )
    p.add_argument("--no-energy", action="store_true", help="runtime only (same as --energy-fraction 0)")
    p.add_argument("--idle-s", type=float, default=1.0, help="seconds to measure idle power before the run")
    p.add_argument("--chunk", type=int, default=4, help="configs per shape per round-robin pass (default 4)")
    p.add_argument("--jobs", type=int, help="precompile processes (default: CPU count - 1; 0 disables)")
    p.add_argument("--seed", type=int, default=0, help="seed for random shapes, config samples and order")
    p.add_argument("--random-count", type=int, default=200, help="shapes drawn by --preset random")
    p.add_argument("--max-shapes", type=int, metavar="N", help="measure a seeded sample of N shapes")
    p.add_argument("--interpret", action="store_true", help="no GPU: tiny shapes through the Triton interpreter")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_cli)


def run_cli(args: argparse.Namespace) -> int:
    if args.interpret and not _interpret_env_set():
        # Triton decides at import whether it interprets; this process imported it already: start afresh.
        logger.info("restarting with TRITON_INTERPRET=1 for --interpret")
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**os.environ, "TRITON_INTERPRET": "1"})
    try:
        s = tune(
            args.out,
            preset=args.preset,
            shapes_file=args.shapes,
            dtypes=args.dtype,
            layouts=args.layout,
            tf32=args.tf32,
            configs_file=args.configs,
            configs_per_shape=args.configs_per_shape,
            torch_baseline=not args.no_torch_baseline,
            budget_s=args.budget_s,
            time_budget_ms=args.time_budget_ms,
            energy_fraction=0.0 if args.no_energy else args.energy_fraction,
            energy_window_s=args.energy_window_s,
            idle_s=args.idle_s,
            chunk=args.chunk,
            jobs=args.jobs,
            seed=args.seed,
            random_count=args.random_count,
            max_shapes=args.max_shapes,
            interpret=args.interpret,
            quiet=args.quiet,
        )
    except NoCudaError as e:
        print(str(e), file=sys.stderr)
        return 2
    except (DatasetLockedError, InterpreterSetupError, ValueError, TypeError) as e:
        print(f"gpperf-torch tune: {e}", file=sys.stderr)
        return 2 if not isinstance(e, DatasetLockedError) else 1
    except KeyboardInterrupt:
        msg = "gpperf-torch tune: interrupted; rows so far are saved, rerun the same command to resume"
        print(msg, file=sys.stderr)
        return 130
    stop = " (budget reached; rerun to continue)" if s.budget_stopped else ""
    energy = "energy measured" if s.energy_available else f"no energy: {s.energy_reason}"
    print(
        f"{s.out}: wrote {s.rows_written} rows ({s.rows_failed} failed), skipped {s.rows_skipped} present, "
        f"{s.rows_remaining} left, {s.elapsed_s:.1f} s, {s.rows_per_s:.2f} rows/s, {energy}{stop}"
    )
    return 0


__all__ = [
    "DatasetLockedError",
    "DatasetWriter",
    "InterpreterSetupError",
    "NoCudaError",
    "TuneSummary",
    "add_cli",
    "classify_error",
    "order_work",
    "repair_torn_tail",
    "sample_configs",
    "tune",
]


class _CallableModule(types.ModuleType):
    """`gpperf_torch.tune(...)` calls `tune()`: importing this submodule rebinds the package attribute `tune`
    to the module, so the module itself is made callable."""

    def __call__(self, *args: Any, **kwargs: Any) -> TuneSummary:
        return tune(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
