"""The measuring executor: inputs, one problem's chunk of items measured into rows, and the local loop."""

from __future__ import annotations

import logging
import math
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from ..measure import timing as measure
from ..measure.device import KNOWN_DEVICES, DeviceInfo
from .inputs import InputSets
from .plan import WorkItem, _seed_of, variant_of

if TYPE_CHECKING:
    from ..measure.writer import DatasetWriter
    from .plan import TuneSummary
    from .precompile import Precompiler
    from .progress import _Progress

logger = logging.getLogger(__name__)


@dataclass
class Bench:
    """What one measuring process measures on and with: the device, its timer and energy meter, provenance.

    The local executor opens one in the tuning process; each Ray worker opens its own on its own GPU.
    """

    info: DeviceInfo
    gpu_name: str  # the `gpu` column: the driver's device name, or the interpreter's label
    dev: str  # torch device: "cuda" or "cpu" (interpreter)
    meter: Any
    timer: Any
    min_reps: int
    max_reps: int
    driver: str
    interpret: bool
    worker: str  # the `worker` column: host and device index, e.g. "node3/cuda:1"

    @property
    def batch_runner(self) -> Callable[..., tuple[Callable[[], int], Callable[[], None]]]:
        return measure.wall_batch_runner if self.interpret else measure.cuda_batch_runner


def open_bench(interpret: bool, energy_fraction: float, *, worker: str | None = None) -> Bench:
    """The device this process measures on (CUDA's current device, or the interpreter on the CPU)."""
    host = socket.gethostname()
    if interpret:
        info: DeviceInfo = KNOWN_DEVICES["h100"]  # validity limits; the rows say interpreted=1
        return Bench(
            info=info,
            gpu_name=f"interpreter ({info.short_name} limits)",
            dev="cpu",
            meter=measure.NullEnergyMeter("Triton interpreter: no GPU to measure energy on"),
            timer=measure.WallTimer(),
            min_reps=2,
            max_reps=50,
            driver="",
            interpret=True,
            worker=worker or f"{host}/cpu",
        )
    import torch

    from ..measure.device import current_device

    info = current_device()
    index = torch.cuda.current_device()
    meter = measure.open_energy_meter(index) if energy_fraction > 0 else None
    if meter is None:
        meter = measure.NullEnergyMeter("energy disabled (energy_fraction=0)")
    return Bench(
        info=info,
        gpu_name=info.name,
        dev="cuda",
        meter=meter,
        timer=measure.CudaEventTimer(),
        min_reps=10,
        max_reps=1000,
        driver=measure.driver_version(),
        interpret=False,
        worker=worker or f"{host}/cuda:{index}",
    )


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def base_row_of(bench: Bench, run_id: str) -> dict[str, Any]:
    """The columns every row measured on `bench` shares: device descriptor and provenance."""
    import torch
    import triton

    info = bench.info
    return {
        "gpu": bench.gpu_name,
        "capability": f"{info.capability[0]}.{info.capability[1]}",
        "sm_count": info.sm_count,
        "max_shared_memory": info.max_shared_memory,
        "l2_bytes": info.l2_bytes,
        "sm_clock_max_mhz": info.sm_clock_mhz,
        "mem_clock_max_mhz": info.mem_clock_mhz,
        "mem_bandwidth_gbs": info.mem_bandwidth_gbs,
        "driver": bench.driver,
        "cuda": torch.version.cuda or "",
        "torch": torch.__version__,
        "triton": triton.__version__,
        "interpreted": int(bench.interpret),
        "run_id": run_id,
        "worker": bench.worker,
    }


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


def _rel_error(out: Any, ref: Any) -> float:
    o, r = out.float(), ref.float()
    return float((o - r).norm() / r.norm().clamp_min(1e-30))


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
    time_left: Callable[[], float] = lambda: math.inf  # seconds of the budget left (inf: none)
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

    from ..kernels import check_config, elem_size, launch

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
                # A compile can take seconds: wait no longer than the budget, stop before the row if it ends.
                if run.pool is not None and not run.pool.wait(variant_of(it), timeout=min(600.0, run.time_left())):
                    return True

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


def run_local(work: list[WorkItem], run: _Run) -> None:
    """Measure `work` in order in this process, one problem's chunk at a time, until done or out of time."""
    i = 0
    while i < len(work):
        # Visit one problem's chunk with one set of inputs.
        j = i
        while j < len(work) and work[j].problem == work[i].problem:
            j += 1
        if run.out_of_time() or _visit(work[i:j], run):
            run.summary.budget_stopped = True
            break
        i = j
