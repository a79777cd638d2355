"""Measuring kernels' runtime: CUDA events or the wall clock, behind small interfaces.

In the spirit of Kernel Tuner's observers: a timer turns ``fn(i)`` (run the kernel on input set ``i``) into a
`Timing` (the tuner's sweep); `interleaved` times several candidates of one GEMM in alternating rounds on one
`Clock` (the measured dispatch, verify.py), so that drift (clocks, temperature, other work) falls on all of
them alike. Energy (NVML's counter) is energy.py's.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from .energy import (
    Energy,
    EnergyMeter,
    NullEnergyMeter,
    NvmlEnergyMeter,
    counter_delta_mj,
    driver_version,
    nvml_conditions,
    open_energy_meter,
    open_nvml,
)

logger = logging.getLogger(__name__)


# ---- runtime ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Timing:
    median_ms: float
    p20_ms: float
    p80_ms: float
    n_reps: int


def quantile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated quantile of an already sorted, non-empty list (numpy's default method)."""
    if not sorted_values:
        raise ValueError("quantile of no samples: measure at least one repetition")
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(samples_ms: list[float]) -> Timing:
    s = sorted(samples_ms)
    return Timing(quantile(s, 0.5), quantile(s, 0.2), quantile(s, 0.8), len(s))


def reps_for_budget(estimate_ms: float, budget_ms: float, min_reps: int, max_reps: int) -> int:
    """Repetitions that fill `budget_ms` (fast kernels get more), clamped to [min_reps, max_reps]."""
    if estimate_ms <= 0:
        return max_reps
    return int(min(max_reps, max(min_reps, budget_ms // estimate_ms)))


class Timer(Protocol):
    def measure(self, fn: Callable[[int], Any], *, budget_ms: float, min_reps: int, max_reps: int) -> Timing: ...


class WallTimer:
    """Wall-clock timer for the Triton interpreter (and anything without CUDA events)."""

    def __init__(self, sync: Callable[[], None] | None = None, clock: Callable[[], float] = time.perf_counter):
        self._sync = sync or (lambda: None)
        self._clock = clock

    def measure(
        self, fn: Callable[[int], Any], *, budget_ms: float = 25.0, min_reps: int = 3, max_reps: int = 1000
    ) -> Timing:
        fn(0)  # compile and first touch, untimed
        self._sync()
        t0 = self._clock()
        fn(1)
        self._sync()
        reps = reps_for_budget((self._clock() - t0) * 1e3, budget_ms, min_reps, max_reps)
        samples = []
        for i in range(reps):
            t0 = self._clock()
            fn(i)
            self._sync()
            samples.append((self._clock() - t0) * 1e3)
        return summarize(samples)


def sleep_cycles_per_ms(torch) -> float:
    """GPU clock cycles of torch.cuda._sleep per millisecond, measured once by the caller (clocks woken first)."""
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda._sleep(1_000_000)  # wake the clocks up first
    s.record()
    torch.cuda._sleep(10_000_000)
    e.record()
    e.synchronize()
    return 10_000_000 / max(s.elapsed_time(e), 1e-3)


class CudaEventTimer:
    """Per-repetition CUDA events, the median over a time budget.

    A kernel shorter than its own launch (a few microseconds) would be timed waiting for the host. So each
    batch of launches is queued behind a GPU sleep long enough for the host to enqueue the whole batch: the
    events then bracket back-to-back kernels, as Triton's do_bench gets from its cache-flush kernel.
    """

    def __init__(self, batch: int = 64):
        import torch

        self._torch = torch
        self._batch = batch
        self._cycles_per_ms: float | None = None

    def _sleep_cycles_per_ms(self) -> float:
        if self._cycles_per_ms is None:
            self._cycles_per_ms = sleep_cycles_per_ms(self._torch)
        return self._cycles_per_ms

    def measure(
        self,
        fn: Callable[[int], Any],
        *,
        budget_ms: float = 25.0,
        min_reps: int = 10,
        max_reps: int = 1000,
        warmup: int = 5,
    ) -> Timing:
        torch = self._torch
        event = torch.cuda.Event
        fn(0)  # compile or load from the cache, first touch of the buffers
        torch.cuda.synchronize()
        s, e = event(enable_timing=True), event(enable_timing=True)
        t0 = time.perf_counter()
        s.record()
        for i in range(warmup):
            fn(i)
        e.record()
        host_ms = (time.perf_counter() - t0) * 1e3 / warmup
        e.synchronize()
        dev_ms = s.elapsed_time(e) / warmup
        reps = reps_for_budget(dev_ms, budget_ms, min_reps, max_reps)
        # An event pair costs the GPU a few microseconds; for tiny kernels each sample brackets a group of
        # launches (about 50 us of work) and is divided by the group size, so the overhead does not inflate
        # the time. Larger kernels get one pair per launch.
        group = max(1, min(64, round(0.05 / max(dev_ms, 1e-4))))
        samples = max(min_reps, -(-reps // group))
        starts = [event(enable_timing=True) for _ in range(samples)]
        ends = [event(enable_timing=True) for _ in range(samples)]
        starved = host_ms > 0.5 * dev_ms
        cycles_per_ms = self._sleep_cycles_per_ms() if starved else 0.0
        per_batch = max(1, self._batch // group)
        i = 0
        for b0 in range(0, samples, per_batch):
            b1 = min(samples, b0 + per_batch)
            if starved:
                # 2x the host's enqueue time (events included), capped so a slow host cannot stall for long.
                torch.cuda._sleep(int(cycles_per_ms * min(50.0, 2.0 * (host_ms + 0.01) * (b1 - b0) * group)))
            for j in range(b0, b1):
                starts[j].record()
                for _ in range(group):
                    fn(i)
                    i += 1
                ends[j].record()
        ends[-1].synchronize()
        timing = summarize([a.elapsed_time(b) / group for a, b in zip(starts, ends, strict=True)])
        return Timing(timing.median_ms, timing.p20_ms, timing.p80_ms, samples * group)


def cuda_batch_runner(
    fn: Callable[[int], Any], estimate_ms: float, *, target_ms: float = 10.0, use_graph: bool = True
) -> tuple[Callable[[], int], Callable[[], None]]:
    """A ``run_batch()`` for the energy meter: about `target_ms` of back-to-back kernels per call.

    Each call enqueues a batch and then waits for the *previous* one, returning how many repetitions have
    completed; so the GPU always has a batch queued and never idles while the host syncs and relaunches (an
    idle gap would average idle power into the energy per GEMM). Kernels faster than their own launch are
    captured once into a CUDA graph and replayed, for the same reason; eager launches are the fallback when
    capture fails. Returns ``(run_batch, release)``.
    """
    import torch

    n = max(1, min(1000, round(target_ms / max(estimate_ms, 1e-4))))
    launch_batch: Callable[[], None]
    release: Callable[[], None] = lambda: None  # noqa: E731
    graph = None
    if use_graph and estimate_ms < 0.05:
        n = min(n, 500)
        try:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                fn(0)  # as torch's docs advise: a warm-up on a side stream before capture
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                for i in range(n):
                    fn(i)
        except Exception as e:  # capture is an optimisation: eager launches still measure
            logger.debug("CUDA graph capture failed (%s); energy batches launch eagerly", e)
            graph = None
            torch.cuda.synchronize()
    if graph is not None:
        launch_batch, release = graph.replay, graph.reset
    else:

        def launch_batch() -> None:
            for i in range(n):
                fn(i)

    in_flight: list[Any] = []

    def run_batch() -> int:
        launch_batch()
        done = torch.cuda.Event()
        done.record()
        in_flight.append(done)
        if len(in_flight) < 2:
            return 0
        in_flight.pop(0).synchronize()
        return n

    def finish() -> None:
        torch.cuda.synchronize()
        release()

    return run_batch, finish


def wall_batch_runner(
    fn: Callable[[int], Any], estimate_ms: float, *, target_ms: float = 2.0, sync: Callable[[], None] | None = None
) -> tuple[Callable[[], int], Callable[[], None]]:
    """`cuda_batch_runner` without CUDA: eager launches then `sync` (the interpreter, tests)."""
    n = max(1, min(1000, round(target_ms / max(estimate_ms, 1e-4))))

    def run() -> int:
        for i in range(n):
            fn(i)
        if sync is not None:
            sync()
        return n

    return run, lambda: None


# ---- interleaved rounds ---------------------------------------------------------------------------
class Clock(Protocol):
    """Marks in a stream of work: `mark()` before and after a group of launches, `sync()` once, then
    `elapsed_ms(start, end)`; `prime(ms)` keeps the device busy for about `ms` so the host can queue ahead."""

    def mark(self) -> Any: ...

    def elapsed_ms(self, start: Any, end: Any) -> float: ...

    def sync(self) -> None: ...

    def prime(self, ms: float) -> None: ...


class WallClock:
    """perf_counter marks after a sync (the Triton interpreter, the CPU: work is done when the call returns)."""

    def __init__(self, sync: Callable[[], None] | None = None, clock: Callable[[], float] = time.perf_counter):
        self._sync = sync or (lambda: None)
        self._clock = clock

    def mark(self) -> float:
        self._sync()
        return self._clock()

    def elapsed_ms(self, start: float, end: float) -> float:
        return (end - start) * 1e3

    def sync(self) -> None:
        self._sync()

    def prime(self, ms: float) -> None:
        pass  # nothing runs ahead of the host


class CudaClock:
    """CUDA events on the current stream; `prime` queues a GPU sleep (torch.cuda._sleep) so that launches
    enqueued behind it run back to back (a kernel shorter than its own launch is otherwise timed waiting for
    the host, see CudaEventTimer)."""

    def __init__(self):
        import torch

        self._torch = torch
        self._cycles_per_ms: float | None = None

    def mark(self):
        e = self._torch.cuda.Event(enable_timing=True)
        e.record()
        return e

    def elapsed_ms(self, start, end) -> float:
        return float(start.elapsed_time(end))

    def sync(self) -> None:
        self._torch.cuda.synchronize()

    def prime(self, ms: float) -> None:
        if self._cycles_per_ms is None:
            self._cycles_per_ms = sleep_cycles_per_ms(self._torch)
        self._torch.cuda._sleep(int(self._cycles_per_ms * min(50.0, ms)))


@dataclass(frozen=True)
class Interleaved:
    """Per candidate, one sample per round (ms per launch); what the rounds cost."""

    samples: list[list[float]]
    rounds: int
    groups: list[int]  # launches per sample of each candidate
    wall_ms: float  # host wall time of the timed rounds (sleeps and syncs included)


# A sample brackets about this much GPU work (a group of launches of a tiny kernel), so that an event pair's own
# cost (a few microseconds) stays small against it.
SAMPLE_MS = 0.05
# Queue at most this much host enqueue time behind one GPU sleep (CudaClock.prime is capped at 50 ms).
PRIME_HOST_MS = 20.0


def interleaved(
    fns: list[Callable[[], Any]], *, clock: Clock, budget_ms: float, min_rounds: int = 5, max_rounds: int = 50
) -> Interleaved:
    """Time `fns` (each launches one candidate; already compiled and warm) in alternating rounds: every round
    times each once (a group of back-to-back launches for short kernels), in an order rotated by the round.

    Rounds fill `budget_ms` of estimated GPU time, at least `min_rounds` (so a GEMM longer than budget_ms /
    (min_rounds x candidates) takes longer than the budget) and at most `max_rounds`."""
    if not fns:
        return Interleaved([], 0, [], 0.0)
    n = len(fns)
    est, host = [], []
    for fn in fns:  # one short estimate each: 3 launches between two marks
        t0 = time.perf_counter()
        a = clock.mark()
        for _ in range(3):
            fn()
        b = clock.mark()
        host.append((time.perf_counter() - t0) * 1e3 / 3)
        clock.sync()
        est.append(max(clock.elapsed_ms(a, b) / 3, 1e-4))
    groups = [max(1, min(64, round(SAMPLE_MS / e))) for e in est]
    per_round = sum(g * e for g, e in zip(groups, est, strict=True))
    host_round = sum(g * h for g, h in zip(groups, host, strict=True))
    rounds = int(min(max_rounds, max(min_rounds, budget_ms // max(per_round, 1e-6))))
    starved = host_round > 0.5 * per_round
    per_prime = max(1, int(PRIME_HOST_MS // max(host_round, 1e-6)))
    marks: list[list[tuple]] = [[] for _ in range(n)]
    t0 = time.perf_counter()
    for r in range(rounds):
        if starved and r % per_prime == 0:
            clock.prime(2.0 * (host_round + 0.01) * min(per_prime, rounds - r))
        for j in range(n):
            i = (j + r) % n
            start = clock.mark()
            for _ in range(groups[i]):
                fns[i]()
            marks[i].append((start, clock.mark()))
    clock.sync()
    wall = (time.perf_counter() - t0) * 1e3
    samples = [[clock.elapsed_ms(s, e) / groups[i] for s, e in marks[i]] for i in range(n)]
    return Interleaved(samples, rounds, groups, wall)


__all__ = [
    "Clock",
    "CudaClock",
    "CudaEventTimer",
    "Energy",
    "EnergyMeter",
    "NullEnergyMeter",
    "NvmlEnergyMeter",
    "Timer",
    "Timing",
    "WallClock",
    "WallTimer",
    "interleaved",
    "counter_delta_mj",
    "cuda_batch_runner",
    "driver_version",
    "wall_batch_runner",
    "nvml_conditions",
    "open_energy_meter",
    "open_nvml",
    "summarize",
]
