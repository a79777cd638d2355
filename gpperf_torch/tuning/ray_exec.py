"""The Ray executor: the same sweep on a Ray cluster, one worker per GPU, the driver the only writer.

Each worker is a Ray actor holding one GPU (``num_gpus=1``, so its NVML energy window sees only its own GPU) or,
with ``interpret``, one CPU running the Triton interpreter. A worker opens its own `Bench` and reports its GPU
model; the driver plans the sweep once per GPU model it sees (every model measures the whole plan, so one model
per GPU type can be trained from the merged CSV) and skips what the file already holds (`pending_work`).

Tasks are cut from the sweep's round-robin order in windows, and within a window grouped by compile class
(`variant_of`): a worker compiles a config once and times it on many shapes, while a run cut off by the budget
still covers what the single-GPU order would have covered. An idle worker prefers a task of a compile class it
has already compiled.

Workers return rows; the driver writes them through the one `DatasetWriter` (lock, per-row flush, dedupe by
row key). A worker that dies loses only its in-flight task: its items are sent again one by one (so a config
that kills its worker is isolated), each at most `retries` times, then written as a failure row; the driver
starts a replacement worker. A driver killed outright takes its workers with it (Ray actors share their
owner's fate) and the file keeps every row written so far: rerunning the command resumes.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..measure.dataset import KEY_COLUMNS
from ..measure.writer import DatasetWriter, format_cell
from .local import _over_budget, _row_for, _Run, _visit, base_row_of, open_bench
from .plan import Problem, TuneSummary, WorkItem, variant_of
from .progress import _Progress
from .runtime import _ensure_interpreter

logger = logging.getLogger(__name__)

RAY_MISSING_MESSAGE = (
    "--ray needs Ray, which is an optional extra: pip install 'gpperf-torch[cluster]' (on the driver and on "
    "every node of the cluster)"
)
NAMESPACE = "gpperf-tune"
DEFAULT_RETRIES = 2
TASK_ITEMS = 8  # items per task: one compile, several shapes; small enough that a lost task costs little
START_TIMEOUT_S = 300.0  # a worker not started by then (no free GPU on the cluster?) is given up
BUDGET_GRACE_S = 30.0  # past the budget, in-flight tasks get this long before their workers are killed
# A task running this much longer than the slowest one so far (and at least STALL_MIN_S) has a hung worker (a
# GPU that stopped answering): the worker is killed and the task counts as lost with it.
STALL_FACTOR = 20.0
STALL_MIN_S = 600.0


class RayUnavailableError(RuntimeError):
    """`ray=` was asked for but Ray is not installed, its cluster cannot be reached, or no worker starts."""


def import_ray() -> Any:
    try:
        import ray
    except ImportError as e:
        raise RayUnavailableError(RAY_MISSING_MESSAGE) from e
    return ray


@contextlib.contextmanager
def ray_session(address: str, *, num_cpus: int | None) -> Iterator[Any]:
    """Connect to `address` (a Ray address, ``auto``) or start a local runtime (``local``); reuse a session this
    process already holds (and then leave it running)."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    try:
        if address == "local":
            ray.init(num_cpus=num_cpus, include_dashboard=False, namespace=NAMESPACE)
        else:
            ray.init(address=address, namespace=NAMESPACE)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise RayUnavailableError(
            f"cannot connect to the Ray cluster at {address!r} ({type(e).__name__}: {e}); start one with "
            f"`ray start --head` (docs/cluster.md), or pass --ray local to start a runtime on this machine"
        ) from e
    try:
        yield ray
    finally:
        ray.shutdown()


def worker_env(interpret: bool) -> dict[str, str]:
    """Environment of a worker process: this checkout first on the path (a source checkout on shared storage
    then runs the driver's code; elsewhere the installed package is found), and the interpreter switch, which
    Triton reads when it is first imported."""
    root = str(Path(__file__).resolve().parents[2])
    env = {"PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)}
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    return env


@dataclass
class _CollectingRun(_Run):
    """A worker's `_Run`: rows go back to the driver instead of into a file."""

    rows: list[dict[str, Any]] = field(default_factory=list)

    def emit(self, row: dict[str, Any]) -> None:
        row["timestamp"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.rows.append(row)


class TuneWorker:
    """One Ray actor: one GPU (or one CPU interpreting); measures tasks and returns their rows."""

    def __init__(self, rank: int, run_id: str, settings: dict[str, Any]):
        self.rank = rank
        self.run_id = run_id
        self.s = settings
        self.bench: Any = None

    def describe(self) -> dict[str, Any]:
        """Open the device (here, not in __init__, so a failure comes back as this call's error)."""
        import ray

        interpret = self.s["interpret"]
        _ensure_interpreter(interpret)
        host = socket.gethostname()
        if interpret:
            label = f"{host}/cpu:{self.rank}"
        else:
            ids = ray.get_gpu_ids()
            label = f"{host}/cuda:{ids[0] if ids else 0}"
        self.bench = open_bench(interpret, self.s["energy_fraction"], worker=label)
        meter = self.bench.meter
        self.idle_power = meter.idle_power_w(self.s["idle_s"]) if meter.available else None
        self.base_row = base_row_of(self.bench, self.run_id)
        return {
            "gpu": self.bench.gpu_name,
            "info": self.bench.info,
            "worker": label,
            "pid": os.getpid(),
            "base_row": self.base_row,
            "energy_available": bool(meter.available),
            "energy_reason": meter.reason,
        }

    def measure(self, items: list[WorkItem], remaining_s: float | None) -> dict[str, Any]:
        """Measure `items` (problem by problem, in order) until done or `remaining_s` runs out."""
        b, s = self.bench, self.s
        t0 = time.monotonic()
        run = _CollectingRun(
            writer=None,  # type: ignore[arg-type]
            summary=None,  # type: ignore[arg-type]
            base_row=self.base_row,
            dev=b.dev,
            timer=b.timer,
            meter=b.meter,
            pool=None,
            info=b.info,
            energy_fraction=s["energy_fraction"],
            energy_window_s=s["energy_window_s"],
            idle_power=self.idle_power,
            time_budget_ms=s["time_budget_ms"],
            min_reps=b.min_reps,
            max_reps=b.max_reps,
            rotate_bytes=s["rotate_bytes"],
            seed=s["seed"],
            progress=None,  # type: ignore[arg-type]
            out_of_time=lambda: remaining_s is not None and _over_budget(t0, remaining_s, len(run.rows), t0),
            batch_runner=b.batch_runner,
        )
        stopped, fatal = False, ""
        try:
            for group in _by_problem(items):
                if run.out_of_time() or _visit(group, run):
                    stopped = True
                    break
        except Exception as e:  # the CUDA context failed: rows so far come back, then this worker retires
            fatal = f"{type(e).__name__}: {e}"
        return {"rows": run.rows, "stopped": stopped, "fatal": fatal, "elapsed_s": time.monotonic() - t0}


def _by_problem(items: list[WorkItem]) -> list[list[WorkItem]]:
    groups: dict[Problem, list[WorkItem]] = {}
    for it in items:
        groups.setdefault(it.problem, []).append(it)
    return list(groups.values())


def compile_class(it: WorkItem) -> tuple:
    """Items of one class share one compiled kernel (the torch baselines of a dtype and layout share one)."""
    v = variant_of(it)
    p = it.problem
    return v if v is not None else ("torch", p.dtype, p.a_trans, p.b_trans, p.tf32)


@dataclass
class _Task:
    gpu: str
    items: list[WorkItem]
    cls: tuple
    attempts: int = 0  # times lost with its worker


def make_tasks(gpu: str, work: list[WorkItem], *, task_items: int, window: int) -> list[_Task]:
    """Windows of the sweep order, each grouped by compile class into tasks of at most `task_items` items."""
    tasks = []
    for w0 in range(0, len(work), window):
        groups: dict[tuple, list[WorkItem]] = {}
        for it in work[w0 : w0 + window]:
            groups.setdefault(compile_class(it), []).append(it)
        for cls, its in groups.items():
            tasks.extend(_Task(gpu, its[i : i + task_items], cls) for i in range(0, len(its), task_items))
    return tasks


@dataclass
class _Worker:
    actor: Any
    rank: int
    started: float
    label: str = ""
    gpu: str = ""
    pid: int = 0
    seen: set[tuple] = field(default_factory=set)  # compile classes it has compiled
    rows: int = 0
    first_dispatch: float | None = None
    last_result: float | None = None


def _row_key(row: dict[str, Any]) -> tuple[str, ...]:
    return tuple(format_cell(row.get(c)) for c in KEY_COLUMNS)


def run_on_ray(
    *,
    ray: Any,
    writer: DatasetWriter,
    summary: TuneSummary,
    plan_for: Callable[[str, Any], list[WorkItem]],
    settings: dict[str, Any],
    n_workers: int,
    run_id: str,
    budget_s: float | None,
    t_start: float,
    retries: int = DEFAULT_RETRIES,
    quiet: bool = False,
    task_items: int = TASK_ITEMS,
    start_timeout_s: float = START_TIMEOUT_S,
) -> None:
    """Drive `n_workers` Ray workers over the sweep, writing their rows as they come; fills `summary`."""
    from ray.exceptions import RayActorError, RayTaskError

    interpret = settings["interpret"]
    actor_cls = ray.remote(TuneWorker)
    opts: dict[str, Any] = {"num_cpus": 1} if interpret else {"num_gpus": 1, "num_cpus": 1}
    opts["runtime_env"] = {"env_vars": worker_env(interpret)}
    opts["namespace"] = NAMESPACE
    queues: dict[str, collections.deque[_Task]] = {}
    base_rows: dict[str, dict[str, Any]] = {}
    oom: set[tuple[str, Problem]] = set()
    starting: dict[Any, _Worker] = {}  # describe() ref -> worker
    inflight: dict[Any, tuple[_Worker, _Task]] = {}  # measure() ref -> (worker, task)
    sent_at: dict[Any, float] = {}  # measure() ref -> when it was sent
    idle: list[_Worker] = []
    live: list[_Worker] = []
    joined_workers: list[_Worker] = []
    start_errors: list[str] = []
    dropped = [0]  # items not measured because their problem's inputs did not fit (an oom row stands for them)
    next_rank = 0
    replacements = n_workers
    ever_started = False
    planned = 0
    task_s: list[float] = []
    row_s: list[float] = []
    window = task_items * max(n_workers, 1) * 2
    progress = _Progress(0, quiet=quiet, per_worker=True)

    def start_worker() -> None:
        nonlocal next_rank
        actor = actor_cls.options(name=f"tune-{run_id}-{next_rank}", **opts).remote(next_rank, run_id, settings)
        w = _Worker(actor, next_rank, time.monotonic())
        starting[actor.describe.remote()] = w
        next_rank += 1

    def remaining_s() -> float | None:
        return None if budget_s is None else budget_s - (time.monotonic() - t_start)

    def out_of_time() -> bool:
        left = remaining_s()
        avg_row = sum(row_s) / len(row_s) if row_s else 0.0
        return left is not None and left <= avg_row

    def emit(row: dict[str, Any], w_label: str) -> None:
        key = _row_key(row)
        if key in writer.existing:  # a retried task's rows that did reach the driver the first time
            summary.rows_duplicate_dropped += 1
            return
        writer.write(row)
        summary.rows_written += 1
        summary.statuses[row["status"]] = summary.statuses.get(row["status"], 0) + 1
        if row["status"] != "ok":
            summary.rows_failed += 1
        progress.advance(w_label)

    def give_up(task: _Task, label: str, err: str) -> None:
        for it in task.items:
            row = _row_for(base_rows[task.gpu], it)
            row.update(
                status="error",
                worker=label,
                timestamp=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                error=f"lost with its Ray worker {task.attempts} times ({err}); not retried again",
            )
            emit(row, label)

    def lose(w: _Worker, task: _Task | None, err: str) -> None:
        summary.workers_lost += 1
        logger.warning("Ray worker %s (pid %s) lost: %s", w.label or w.rank, w.pid or "?", err)
        with contextlib.suppress(Exception):
            ray.kill(w.actor)
        if w in live:
            live.remove(w)
        if w in idle:
            idle.remove(w)
        if task is not None:
            task.attempts += 1
            if task.attempts > retries:
                give_up(task, w.label, err)
            else:
                summary.tasks_retried += 1
                # One item a task from now on: a config that kills its worker is then isolated.
                for it in reversed(task.items):
                    queues[task.gpu].appendleft(_Task(task.gpu, [it], task.cls, task.attempts))
        nonlocal replacements
        if replacements > 0:
            replacements -= 1
            start_worker()

    def next_task(w: _Worker) -> _Task | None:
        q = queues.get(w.gpu)
        while q:
            pick = 0
            for i in range(min(len(q), 2 * max(n_workers, 1))):
                if q[i].cls in w.seen:
                    pick = i
                    break
            task = q[pick]
            del q[pick]
            kept = [it for it in task.items if (task.gpu, it.problem) not in oom]
            dropped[0] += len(task.items) - len(kept)
            task.items = kept
            if task.items:
                return task
        return None

    def dispatch() -> None:
        for w in list(idle):
            if out_of_time():
                return
            task = next_task(w)
            if task is None:
                continue
            idle.remove(w)
            w.seen.add(task.cls)
            if w.first_dispatch is None:
                w.first_dispatch = time.monotonic()
            ref = w.actor.measure.remote(task.items, remaining_s())
            inflight[ref] = (w, task)
            sent_at[ref] = time.monotonic()

    def joined(w: _Worker, desc: dict[str, Any]) -> None:
        nonlocal ever_started, planned
        ever_started = True
        w.label, w.gpu, w.pid = desc["worker"], desc["gpu"], desc["pid"]
        live.append(w)
        joined_workers.append(w)
        idle.append(w)
        logger.info("Ray worker %s joined: %s (pid %d)", w.label, w.gpu, w.pid)
        if desc["energy_available"]:
            summary.energy_available, summary.energy_reason = True, ""
        elif not summary.energy_available:
            summary.energy_reason = desc["energy_reason"]
        if w.gpu not in queues:  # a GPU model not seen before: plan the sweep for it
            base_rows[w.gpu] = desc["base_row"]
            work = plan_for(w.gpu, desc["info"])
            queues[w.gpu] = collections.deque(make_tasks(w.gpu, work, task_items=task_items, window=window))
            planned += len(work)
            progress.grow(len(work))

    for _ in range(n_workers):
        start_worker()
    budget_hit = False
    try:
        while True:
            dispatch()
            # Done, unless one of the first workers is still starting: it may bring a GPU model not seen yet.
            # A replacement only ever takes over work that is already planned.
            if not inflight and not any(queues.values()) and not any(w.rank < n_workers for w in starting.values()):
                break
            if not inflight and not starting:
                break
            ready, _ = ray.wait([*inflight, *starting], num_returns=1, timeout=1.0)
            now = time.monotonic()
            for ref in ready:
                if ref in starting:
                    w = starting.pop(ref)
                    try:
                        joined(w, ray.get(ref))
                    except (RayActorError, RayTaskError) as e:
                        start_errors.append(str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__)
                        logger.warning("Ray worker %d failed to start: %s", w.rank, e)
                        with contextlib.suppress(Exception):
                            ray.kill(w.actor)
                    continue
                w, task = inflight.pop(ref)
                sent_at.pop(ref, None)
                try:
                    res = ray.get(ref)
                except RayActorError as e:
                    lose(w, task, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
                    continue
                except RayTaskError as e:  # a bug, not a lost worker: count an attempt, keep the worker
                    idle.append(w)
                    task.attempts += 1
                    if task.attempts > retries:
                        give_up(task, w.label, str(e).splitlines()[0])
                    else:
                        summary.tasks_retried += 1
                        queues[task.gpu].appendleft(task)
                    continue
                w.last_result = now
                for row in res["rows"]:
                    emit(row, w.label)
                    w.rows += 1
                    if row["status"] == "oom" and row["backend"] == "torch":  # the inputs did not fit
                        p = Problem(*(row[c] for c in ("m", "n", "k", "dtype", "a_trans", "b_trans", "tf32")))
                        oom.add((task.gpu, p))
                if res["rows"]:
                    task_s.append(res["elapsed_s"])
                    row_s.append(res["elapsed_s"] / len(res["rows"]))
                if res["fatal"]:
                    done = {_row_key(r) for r in res["rows"]}
                    rest = [it for it in task.items if _row_key(_row_for(base_rows[task.gpu], it)) not in done]
                    lose(w, _Task(task.gpu, rest, task.cls, task.attempts) if rest else None, res["fatal"])
                    continue
                if res["stopped"]:
                    budget_hit = True
                idle.append(w)
            stall_s = max(STALL_MIN_S, STALL_FACTOR * max(task_s, default=0.0))
            for ref, t_sent in list(sent_at.items()):
                if now - t_sent > stall_s:
                    w, task = inflight.pop(ref)
                    sent_at.pop(ref)
                    lose(w, task, f"no answer after {now - t_sent:.0f} s (hung?)")
            for ref, w in list(starting.items()):
                if now - w.started > start_timeout_s:
                    starting.pop(ref)
                    logger.warning(
                        "Ray worker %d did not start within %.0f s (is a %s free on the cluster?); giving it up",
                        w.rank,
                        start_timeout_s,
                        "CPU" if interpret else "GPU",
                    )
                    with contextlib.suppress(Exception):
                        ray.kill(w.actor)
            if not live and not starting and not ever_started:
                why = f"the last one failed with: {start_errors[-1]}" if start_errors else "check `ray status`"
                raise RayUnavailableError(
                    f"no Ray worker started (each needs {'1 CPU' if interpret else '1 GPU (num_gpus=1)'} on the "
                    f"cluster and waits at most {start_timeout_s:.0f} s); {why}"
                )
            left = remaining_s()
            if left is not None and left < -max(BUDGET_GRACE_S, 10 * (max(task_s) if task_s else 0.0)):
                for w, _task in list(inflight.values()):
                    logger.warning("Ray worker %s still busy past the budget: stopping it", w.label)
                    with contextlib.suppress(Exception):
                        ray.kill(w.actor)
                inflight.clear()
                sent_at.clear()
                budget_hit = True
                break
            if out_of_time() and not inflight:
                budget_hit = True
                break
    finally:
        progress.close()
        for w in [*live, *starting.values()]:
            with contextlib.suppress(Exception):
                ray.kill(w.actor)
        _worker_stats(summary, joined_workers)
    if not live and any(queues.values()):
        logger.error("every Ray worker was lost; rows so far are saved: rerun the same command to resume")
    summary.rows_remaining = max(0, planned - summary.rows_written - dropped[0])
    # Stopped by the budget with work left, or before any worker joined (nothing could even be planned).
    summary.budget_stopped = budget_hit and (summary.rows_remaining > 0 or not queues)


def _worker_stats(summary: TuneSummary, workers: list[_Worker]) -> None:
    for w in workers:
        span = (w.last_result or 0.0) - (w.first_dispatch or 0.0)
        summary.workers[w.label] = {"gpu": w.gpu, "rows": w.rows, "rows_per_s": w.rows / span if span > 0 else 0.0}


__all__ = ["RAY_MISSING_MESSAGE", "RayUnavailableError", "TuneWorker", "import_ray", "ray_session", "run_on_ray"]
