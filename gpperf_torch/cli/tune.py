"""`gpperf-torch tune`: the command line of the tuning run (tuning/tune.py)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from ..measure.writer import DatasetLockedError
from ..tuning.plan import LAYOUTS
from ..tuning.ray_exec import RayUnavailableError
from ..tuning.runtime import InterpreterSetupError, NoCudaError, _interpret_env_set
from ..tuning.shapes import PRESETS
from ..tuning.tune import tune
from .argtypes import fraction, non_negative_float, non_negative_int, positive_float, positive_int

logger = logging.getLogger(__name__)


def add_cli(subparsers: Any) -> None:
    """The `tune` subcommand."""
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
    p.add_argument("--configs-per-shape", type=positive_int, metavar="N", help="seeded, stratified sample per shape")
    p.add_argument("--no-torch-baseline", action="store_true", help="skip the torch.matmul row per shape")
    p.add_argument("--budget-s", type=positive_float, metavar="S", help="stop cleanly after S seconds (rerun resumes)")
    p.add_argument("--time-budget-ms", type=positive_float, default=25.0, help="timing budget per row (default 25 ms)")
    p.add_argument("--energy-window-s", type=positive_float, default=0.25, help="NVML energy window per row (0.25 s)")
    p.add_argument(
        "--energy-fraction",
        type=fraction,
        default=1.0,
        help="share of rows that get an energy window (default 1; torch baselines always do)",
    )
    p.add_argument("--no-energy", action="store_true", help="runtime only (same as --energy-fraction 0)")
    p.add_argument(
        "--idle-s", type=non_negative_float, default=1.0, help="seconds to measure idle power before the run"
    )
    p.add_argument("--chunk", type=positive_int, default=4, help="configs per shape per round-robin pass (default 4)")
    p.add_argument("--jobs", type=non_negative_int, help="precompile processes (default: CPU count - 1; 0 disables)")
    p.add_argument("--seed", type=int, default=0, help="seed for random shapes, config samples and order")
    p.add_argument("--random-count", type=positive_int, default=200, help="shapes drawn by --preset random")
    p.add_argument("--max-shapes", type=positive_int, metavar="N", help="measure a seeded sample of N shapes")
    p.add_argument("--interpret", action="store_true", help="no GPU: tiny shapes through the Triton interpreter")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    ray = p.add_argument_group("cluster (needs gpperf-torch[cluster]; see docs/cluster.md)")
    ray.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="run the sweep on a Ray cluster, one worker per GPU: a Ray address, 'auto', or 'local' (starts a "
        "local Ray runtime); the CSV is written here only",
    )
    ray.add_argument(
        "--ray-workers",
        type=int,
        metavar="N",
        help="Ray workers (default: one per GPU of the cluster; with --interpret: N CPU workers, default 1)",
    )
    ray.add_argument(
        "--ray-retries",
        type=int,
        default=2,
        metavar="N",
        help="times a task lost with its worker is sent again before it is written as failure rows (default 2)",
    )
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
            ray=args.ray,
            ray_workers=args.ray_workers,
            ray_retries=args.ray_retries,
        )
    except NoCudaError as e:
        print(str(e), file=sys.stderr)
        return 2
    except (DatasetLockedError, InterpreterSetupError, RayUnavailableError, ValueError, TypeError) as e:
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
    for label, w in s.workers.items():
        print(f"  worker {label} ({w['gpu']}): {w['rows']} rows, {w['rows_per_s']:.2f} rows/s while busy")
    if s.workers_lost or s.tasks_retried:
        print(f"  {s.workers_lost} workers lost, {s.tasks_retried} tasks sent again")
    return 0
