"""Offline tuning: measure runtime, power and energy per (shape, dtype, layout, config) into a resumable CSV.

``gpperf-torch tune --preset llm --dtype fp16 bf16 --out runs/h100.csv --budget-s 300`` or `tune(...)`.

Work is ordered so that a budget cut still buys a broad dataset: compilation runs ahead in worker processes
(it dominates on a GPU), shapes are visited round-robin (each pass gives every problem its next few configs,
the torch.matmul baseline first), and the order is shuffled with a seed to spread thermal drift. Every row is
flushed as written; rerunning the same command skips rows already in the file (`dataset.KEY_COLUMNS`).
"""

from __future__ import annotations

import logging
import math
import os
import random
import sys
import time
import types
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import measure
from .device import KNOWN_DEVICES, DeviceInfo
from .shapes import Shape

# The parts live in gpperf_torch.tuning; their names are re-exported here, where callers have always found them.
from .tuning.cli import add_cli, run_cli
from .tuning.local import (
    DEFAULT_ROTATE_BYTES,
    MAX_INPUT_SETS,
    InputSets,
    _measure_row,
    _over_budget,
    _Run,
    _visit,
    classify_error,
    run_local,
)
from .tuning.plan import (
    DTYPE_ALIASES,
    INTERPRET_MAX_MNK,
    LAYOUTS,
    Problem,
    TuneSummary,
    WorkItem,
    _problems,
    _resolve_shapes,
    _seed_of,
    normalize_dtype,
    order_work,
    read_configs,
    sample_configs,
    variant_of,
)
from .tuning.precompile import Precompiler, _warm_worker
from .tuning.progress import _Progress
from .tuning.runtime import NO_CUDA_MESSAGE, InterpreterSetupError, NoCudaError, _ensure_interpreter
from .tuning.writer import (
    LOCK_SUFFIX,
    DatasetLockedError,
    DatasetWriter,
    _fmt,
    _item_key,
    check_out_file,
    repair_torn_tail,
)

logger = logging.getLogger(__name__)


def _check_numbers(**values: Any) -> None:
    """ValueError for a setting that means nothing (NaN, a negative budget, a count of 0): never a default."""
    bounds = {
        "energy_fraction": (0.0, 1.0, "in [0, 1]"), "energy_window_s": (0.0, math.inf, "> 0 seconds"),
        "budget_s": (0.0, math.inf, "> 0 seconds"), "time_budget_ms": (0.0, math.inf, "> 0 ms"),
        "idle_s": (0.0, math.inf, ">= 0 seconds"), "chunk": (1, math.inf, ">= 1"), "jobs": (0, math.inf, ">= 0"),
        "random_count": (1, math.inf, ">= 1"), "max_shapes": (1, math.inf, ">= 1"),
        "configs_per_shape": (1, math.inf, ">= 1"),
    }  # fmt: skip
    open_low = {"energy_window_s", "budget_s", "time_budget_ms"}
    ints = {"chunk", "jobs", "random_count", "max_shapes", "configs_per_shape"}
    for name, v in values.items():
        if v is None and name in ("budget_s", "jobs", "max_shapes", "configs_per_shape"):
            continue  # None: no limit / the default
        low, high, want = bounds[name]
        if name in ints:
            ok = isinstance(v, int) and not isinstance(v, bool) and low <= v <= high
        else:
            ok = (
                isinstance(v, (int, float))
                and not isinstance(v, bool)
                and math.isfinite(v)
                and (v > low if name in open_low else v >= low)
                and v <= high
            )
        if not ok:
            raise ValueError(f"{name} must be {'an integer ' if name in ints else ''}{want}, got {v!r}")


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
    _check_numbers(
        energy_fraction=energy_fraction, energy_window_s=energy_window_s, budget_s=budget_s,
        time_budget_ms=time_budget_ms, idle_s=idle_s, chunk=chunk, jobs=jobs, random_count=random_count,
        max_shapes=max_shapes, configs_per_shape=configs_per_shape,
    )  # fmt: skip
    check_out_file(out)  # someone else's file is refused before any work (and never modified)
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
            # Under a budget the idle measurement takes at most a tenth of it: the budget is the user's.
            idle_power = meter.idle_power_w(idle_s if budget_s is None else min(idle_s, budget_s / 10))
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

        def time_left() -> float:
            return math.inf if budget_s is None else budget_s - (time.monotonic() - t_start)

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
            time_left=time_left,
            batch_runner=measure.wall_batch_runner if interpret else measure.cuda_batch_runner,
        )
        run_local(work, run)
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


__all__ = [
    "DEFAULT_ROTATE_BYTES",
    "DTYPE_ALIASES",
    "INTERPRET_MAX_MNK",
    "LAYOUTS",
    "LOCK_SUFFIX",
    "MAX_INPUT_SETS",
    "NO_CUDA_MESSAGE",
    "DatasetLockedError",
    "DatasetWriter",
    "InputSets",
    "InterpreterSetupError",
    "NoCudaError",
    "Precompiler",
    "Problem",
    "TuneSummary",
    "WorkItem",
    "add_cli",
    "classify_error",
    "normalize_dtype",
    "order_work",
    "read_configs",
    "repair_torn_tail",
    "run_cli",
    "run_local",
    "sample_configs",
    "tune",
    "variant_of",
]
# Private helpers that tests and older callers reach through this module.
_REEXPORTED_PRIVATE = (_fmt, _measure_row, _visit, _warm_worker)


class _CallableModule(types.ModuleType):
    """`gpperf_torch.tune(...)` calls `tune()`: importing this submodule rebinds the package attribute `tune`
    to the module, so the module itself is made callable."""

    def __call__(self, *args: Any, **kwargs: Any) -> TuneSummary:
        return tune(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
