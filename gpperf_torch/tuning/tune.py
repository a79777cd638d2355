"""Offline tuning: measure runtime, power and energy per (shape, dtype, layout, config) into a resumable CSV.

``gpperf-torch tune --preset llm --dtype fp16 bf16 --out runs/h100.csv --budget-s 300`` or `tune(...)`.

Work is ordered so that a budget cut still buys a broad dataset: compilation runs ahead in worker processes
(it dominates on a GPU), shapes are visited round-robin (each pass gives every problem its next few configs,
the torch.matmul baseline first), and the order is shuffled with a seed to spread thermal drift. Every row is
flushed as written; rerunning the same command skips rows already in the file (`dataset.KEY_COLUMNS`).

This module puts the run together from its neighbours in `gpperf_torch.tuning`: `plan` (problems, sampling,
order, resume), `local` (the measuring executor in this process), `ray_exec` (the same sweep on a Ray cluster,
one worker per GPU, this process the only writer: docs/cluster.md), `precompile`, `progress` and `runtime` (GPU
or interpreter). The CSV and its lock are `measure/writer.py`'s; the command line is `cli/tune.py`.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..measure.device import DeviceInfo
from ..measure.writer import DatasetWriter, check_out_file
from .inputs import DEFAULT_ROTATE_BYTES
from .local import _over_budget, _Run, base_row_of, new_run_id, open_bench, run_local
from .plan import (
    INTERPRET_MAX_MNK,
    LAYOUTS,
    Problem,
    TuneSummary,
    WorkItem,
    _problems,
    _resolve_shapes,
    _seed_of,
    config_space,
    normalize_dtype,
    pending_work,
    plan_items,
    read_configs,
    variant_of,
)
from .precompile import Precompiler
from .progress import _Progress
from .ray_exec import DEFAULT_RETRIES, import_ray, ray_session, run_on_ray
from .runtime import NO_CUDA_MESSAGE, NoCudaError, _ensure_interpreter
from .shapes import Shape

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
    ray: str | None = None,
    ray_workers: int | None = None,
    ray_retries: int = DEFAULT_RETRIES,
) -> TuneSummary:
    """Measure every (shape, dtype, layout, config) not yet in `out` and append one row each.

    Shapes: exactly one of `preset` ("llm", "square", "random"), `shapes` or `shapes_file`. Configs: the
    device-filtered candidate space, or `configs` / `configs_file`, optionally `configs_per_shape` sampled.
    `energy_fraction` of rows (chosen by a hash of the row key, so a rerun agrees) get an NVML energy window
    of `energy_window_s`; 0 disables energy. Stops cleanly after `budget_s`. Raises NoCudaError without a GPU
    unless `interpret` (tiny shapes through the Triton interpreter).

    `ray`: run on a Ray cluster instead (an address, ``"auto"``, or ``"local"`` to start a local runtime), one
    worker per GPU (`ray_workers` of them, default every GPU of the cluster; with `interpret`, that many CPU
    workers, default 1). A task lost with its worker is sent again up to `ray_retries` times, then recorded as
    a failure row. See docs/cluster.md.
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
    if ray is None and ray_workers is not None:
        raise ValueError(f"ray_workers={ray_workers} needs ray=ADDRESS ('local', 'auto' or a Ray address)")
    if ray is not None:
        if not isinstance(ray, str) or not ray.strip():
            raise ValueError(f"ray must be a Ray address, 'auto' or 'local', got {ray!r}")
        if ray_workers is not None and (not isinstance(ray_workers, int) or ray_workers < 1):
            raise ValueError(f"ray_workers must be an integer >= 1, got {ray_workers!r}")
        if not isinstance(ray_retries, int) or ray_retries < 0:
            raise ValueError(f"ray_retries must be an integer >= 0, got {ray_retries!r}")
        import_ray()  # a clear message naming the extra, before anything else happens
    dtypes = list(dict.fromkeys(normalize_dtype(d) for d in dtypes))
    shape_list = _resolve_shapes(preset, shapes, shapes_file, seed, random_count)

    if ray is None:  # on Ray the driver runs no kernel: each worker sets up (and checks) its own interpreter
        _ensure_interpreter(interpret)
    import torch

    if not interpret and ray is None and not torch.cuda.is_available():
        raise NoCudaError(NO_CUDA_MESSAGE)
    from ..kernels import TileConfig

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

    given = list(configs) if configs is not None else (read_configs(configs_file) if configs_file else None)
    if given is not None:
        given = [c if isinstance(c, TileConfig) else TileConfig.from_key(str(c)) for c in given]
    problems = _problems(shape_list, dtypes, layouts, tf32)
    if ray is not None:
        settings = dict(
            interpret=interpret,
            energy_fraction=energy_fraction,
            energy_window_s=energy_window_s,
            idle_s=idle_s,
            time_budget_ms=time_budget_ms,
            rotate_bytes=rotate_bytes,
            seed=seed,
        )
        plan = dict(torch_baseline=torch_baseline, configs_per_shape=configs_per_shape, seed=seed, chunk=chunk)
        return _tune_on_ray(
            out, ray, ray_workers, ray_retries, problems, given, dtypes, len(shape_list), settings, plan,
            budget_s=budget_s, t_start=t_start, quiet=quiet,
        )  # fmt: skip

    bench = open_bench(interpret, energy_fraction)
    info, gpu_name, dev, meter, timer = bench.info, bench.gpu_name, bench.dev, bench.meter, bench.timer
    summary = TuneSummary(out=str(out), interpreted=interpret, energy_available=bool(meter.available))
    summary.energy_reason = meter.reason
    summary.shapes, summary.problems = len(shape_list), len(problems)
    if energy_fraction > 0:
        meter.warn_if_unavailable()  # once per run; rows then skip the meter
    base_row = base_row_of(bench, new_run_id())
    space = config_space(dtypes, given, info.max_shared_memory)

    writer = DatasetWriter(out)
    summary.repaired_bytes = writer.repaired_bytes
    pool: Precompiler | None = None
    progress = None
    try:
        planned = plan_items(
            problems, space, torch_baseline=torch_baseline, configs_per_shape=configs_per_shape, seed=seed
        )
        work, summary.rows_skipped = pending_work(writer, gpu_name, planned, chunk=chunk, seed=seed)
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
            min_reps=bench.min_reps,
            max_reps=bench.max_reps,
            rotate_bytes=rotate_bytes,
            seed=seed,
            progress=progress,
            out_of_time=out_of_time,
            time_left=time_left,
            batch_runner=bench.batch_runner,
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


def _tune_on_ray(
    out: str | Path,
    address: str,
    n_workers: int | None,
    retries: int,
    problems: list[Problem],
    given: list[Any] | None,
    dtypes: list[str],
    n_shapes: int,
    settings: dict[str, Any],
    plan: dict[str, Any],
    *,
    budget_s: float | None,
    t_start: float,
    quiet: bool,
) -> TuneSummary:
    """The Ray executor beside the local one: the same plan, writer and resume, measured by Ray workers."""
    interpret = settings["interpret"]
    summary = TuneSummary(out=str(out), interpreted=interpret)
    summary.shapes, summary.problems = n_shapes, len(problems)
    summary.energy_reason = "no worker reported an energy meter"
    writer: DatasetWriter | None = None

    def plan_for(gpu: str, info: DeviceInfo) -> list[WorkItem]:
        assert writer is not None
        space = config_space(dtypes, given, info.max_shared_memory)
        planned = plan_items(
            problems,
            space,
            torch_baseline=plan["torch_baseline"],
            configs_per_shape=plan["configs_per_shape"],
            seed=plan["seed"],
        )
        work, skipped = pending_work(writer, gpu, planned, chunk=plan["chunk"], seed=plan["seed"])
        summary.rows_skipped += skipped
        logger.info("%s: %s: %d rows already present, %d to measure", out, gpu, skipped, len(work))
        return work

    workers = n_workers if n_workers is not None else (1 if interpret else None)
    with ray_session(address, num_cpus=workers if interpret else None) as ray_mod:
        if not interpret:
            gpus = int(ray_mod.cluster_resources().get("GPU", 0))
            if gpus < 1:
                raise NoCudaError(
                    f"gpperf-torch tune: the Ray cluster at {address!r} has no GPUs; each worker holds one "
                    f"(num_gpus=1). Add GPU nodes (ray start --address=...), or pass --interpret "
                    f"--ray-workers N to run the interpreter on N CPU workers."
                )
            if workers is not None and workers > gpus:
                # A worker holds a whole GPU: extra ones would only wait for a GPU that never frees up.
                logger.warning("--ray-workers %d > %d GPUs on the cluster: starting %d", workers, gpus, gpus)
            workers = min(workers, gpus) if workers is not None else gpus
        # Opened once the cluster is reachable, so a failed connection leaves no file behind.
        writer = DatasetWriter(out)
        summary.repaired_bytes = writer.repaired_bytes
        try:
            run_on_ray(
                ray=ray_mod,
                writer=writer,
                summary=summary,
                plan_for=plan_for,
                settings=settings,
                n_workers=workers,
                run_id=new_run_id(),
                budget_s=budget_s,
                t_start=t_start,
                retries=retries,
                quiet=quiet,
            )
        finally:
            writer.close()
    summary.elapsed_s = time.monotonic() - t_start
    summary.rows_per_s = summary.rows_written / summary.elapsed_s if summary.elapsed_s > 0 else 0.0
    return summary
