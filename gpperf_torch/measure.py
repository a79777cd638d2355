"""Measuring one kernel: runtime (CUDA events or wall clock) and energy (NVML's total-energy counter).

Small interfaces in the spirit of Kernel Tuner's observers: a timer turns ``fn(i)`` (run the kernel on input
set ``i``) into a `Timing`; an energy meter turns ``run_batch()`` (run a batch back-to-back, synchronise,
return how many ran) into an `Energy`. The tuner owns the sweep; the op's opt-in verify mode may borrow the
timer. NVML is reached only through an object with pynvml's function names, so tests pass a fake one.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

logger = logging.getLogger(__name__)

# NVML's total-energy counter is an unsigned 64-bit count of millijoules since the driver loaded.
COUNTER_BITS = 64
# A counter step implying more than this many watts is a reset (driver reload), not a measurement.
MAX_PLAUSIBLE_W = 5000.0


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
            torch = self._torch
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda._sleep(1_000_000)  # wake the clocks up first
            s.record()
            torch.cuda._sleep(10_000_000)
            e.record()
            e.synchronize()
            self._cycles_per_ms = 10_000_000 / max(s.elapsed_time(e), 1e-3)
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


# ---- energy ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Energy:
    energy_j: float  # per repetition
    power_w: float  # average over the window
    window_s: float
    reps: int
    power_instant_w: float | None = None


def counter_delta_mj(start: int, end: int, *, bits: int = COUNTER_BITS) -> int:
    """Millijoules between two readings of a `bits`-bit counter, across one wrap-around."""
    if start < 0 or end < 0:
        raise ValueError(f"energy counter readings must be >= 0, got start={start} end={end}")
    return (end - start) % (1 << bits)


class EnergyMeter(Protocol):
    available: bool
    reason: str

    def measure(self, run_batch: Callable[[], int], window_s: float) -> Energy | None: ...

    def warn_if_unavailable(self) -> None: ...

    def idle_power_w(self, seconds: float) -> float | None: ...

    def conditions(self) -> dict[str, float | None]: ...


class NvmlEnergyMeter:
    """Energy from NVML's total-energy counter, differenced over a window aligned to counter updates.

    The counter advances in steps (every few to ~100 ms depending on the GPU), so a reading taken at an
    arbitrary moment is stale by up to one step. The window therefore starts on the first update seen while
    the kernel is already running and ends on the first update after `window_s`, with repetitions counted in
    between; if no update arrives within `max_window_factor * window_s` the row gets no energy (marked, not
    guessed). Missing NVML or counter: `available` is False, `reason` says why, and `measure` warns once.
    """

    def __init__(
        self,
        nvml: Any,
        handle: Any,
        *,
        clock: Callable[[], float] = time.perf_counter,
        sleep: Callable[[float], None] = time.sleep,
        max_window_factor: float = 4.0,
        max_align_s: float = 0.5,
    ):
        self._nvml = nvml
        self._handle = handle
        self._clock = clock
        self._sleep = sleep
        self._max_window_factor = max_window_factor
        self._max_align_s = max_align_s
        self._warned: set[str] = set()
        self.available = True
        self.reason = ""
        try:
            self._read()
        except Exception as e:  # NVMLError_NotSupported on GPUs without the counter (pre-Volta, some vGPUs)
            self.available = False
            self.reason = f"NVML total-energy counter unavailable ({type(e).__name__}: {e})"

    def _read(self) -> int:
        return int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))

    def warn_if_unavailable(self) -> None:
        if not self.available:
            self._warn_once("unavailable", f"{self.reason}: energy columns stay empty, runtime is still measured")

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning("%s", message)

    def measure(self, run_batch: Callable[[], int], window_s: float = 0.25) -> Energy | None:
        if window_s <= 0:
            raise ValueError(f"energy window must be > 0 s, got {window_s}")
        if not self.available:
            self.warn_if_unavailable()
            return None
        clock = self._clock
        # Start on a counter update seen while the kernel runs (steady power, fresh reading).
        prev = self._read()
        start_e, start_t = prev, clock()
        deadline = start_t + self._max_align_s
        while clock() < deadline:
            run_batch()
            e = self._read()
            if e != prev:
                start_e, start_t = e, clock()
                break
        reps = 0
        while clock() - start_t < window_s:
            reps += run_batch()
        # End on the first update after the window (extending it up to max_window_factor * window_s).
        last = self._read()
        end_e = None
        limit = start_t + self._max_window_factor * window_s
        while clock() < limit:
            reps += run_batch()
            e = self._read()
            if e != last:
                end_e = e
                break
        end_t = clock()
        if end_e is None or end_e == start_e:
            self._warn_once(
                "short",
                f"NVML energy counter did not advance within {end_t - start_t:.2f} s; rows get no energy. "
                f"Use a longer --energy-window-s.",
            )
            return None
        dt = end_t - start_t
        joules = counter_delta_mj(start_e, end_e) / 1000.0
        if joules / dt > MAX_PLAUSIBLE_W:
            self._warn_once("reset", f"NVML energy counter jumped by {joules:.0f} J in {dt:.2f} s (reset?)")
            return None
        return Energy(joules / max(reps, 1), joules / dt, dt, reps, self.instant_power_w())

    def idle_power_w(self, seconds: float = 1.0) -> float | None:
        """Average watts with nothing running (measured before a sweep so dynamic energy can be derived)."""
        if not self.available:
            return None

        def nap() -> int:
            self._sleep(0.005)
            return 0

        energy = self.measure(nap, seconds)
        return energy.power_w if energy else None

    def instant_power_w(self) -> float | None:
        nvml = self._nvml
        field = getattr(nvml, "NVML_FI_DEV_POWER_INSTANT", None)
        if field is not None and hasattr(nvml, "nvmlDeviceGetFieldValues"):
            try:
                (v,) = nvml.nvmlDeviceGetFieldValues(self._handle, [field])
                if int(v.nvmlReturn) == 0:
                    return _field_value(v) / 1000.0  # milliwatts
            except Exception as e:
                logger.debug("NVML_FI_DEV_POWER_INSTANT unavailable: %s", e)
        try:
            return nvml.nvmlDeviceGetPowerUsage(self._handle) / 1000.0  # a ~1 s average on recent GPUs
        except Exception:
            return None

    def conditions(self) -> dict[str, float | None]:
        return nvml_conditions(self._nvml, self._handle)


class NullEnergyMeter:
    """No NVML at all (the interpreter, a machine without the driver library)."""

    def __init__(self, reason: str):
        self.available = False
        self.reason = reason
        self._warned = False

    def warn_if_unavailable(self) -> None:
        if not self._warned:
            self._warned = True
            logger.warning("%s: energy columns stay empty, runtime is still measured", self.reason)

    def measure(self, run_batch: Callable[[], int], window_s: float = 0.25) -> Energy | None:
        self.warn_if_unavailable()
        return None

    def idle_power_w(self, seconds: float = 1.0) -> float | None:
        return None

    def conditions(self) -> dict[str, float | None]:
        return {"sm_clock_mhz": None, "mem_clock_mhz": None, "temp_c": None, "power_limit_w": None}


def _field_value(v: Any) -> float:
    # nvmlValueType_t: 0 double, 1 uint, 2 ulong, 3 ulonglong, 4 slonglong, 5 sint
    kind = int(getattr(v, "valueType", 1))
    name = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal"}.get(kind, "uiVal")
    return float(getattr(v.value, name))


def nvml_conditions(nvml: Any, handle: Any) -> dict[str, float | None]:
    """Current SM and memory clocks (MHz), temperature (C), enforced power limit (W); None where refused."""

    def get(f: Callable[[], float]) -> float | None:
        try:
            return float(f())
        except Exception:
            return None

    return {
        "sm_clock_mhz": get(lambda: nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_SM)),
        "mem_clock_mhz": get(lambda: nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_MEM)),
        "temp_c": get(lambda: nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)),
        "power_limit_w": get(lambda: nvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000.0),
    }


def open_nvml(device_index: int = 0) -> tuple[Any, Any] | None:
    """(pynvml module, handle) for a torch CUDA device index, or None when NVML is missing.

    The handle is found by UUID so CUDA_VISIBLE_DEVICES renumbering cannot pick the wrong GPU.
    """
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception as e:
        logger.debug("nvmlInit failed: %s", e)
        return None
    handle = None
    try:
        import torch

        uuid = getattr(torch.cuda.get_device_properties(device_index), "uuid", None)
        if uuid is not None:
            handle = pynvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}")
    except Exception as e:
        logger.debug("NVML handle by UUID failed (%s); using index %d", e, device_index)
    if handle is None:
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(device_index)
        except Exception as e:
            logger.debug("NVML handle by index failed: %s", e)
            return None
    return pynvml, handle


def open_energy_meter(device_index: int = 0) -> NvmlEnergyMeter | NullEnergyMeter:
    nv = open_nvml(device_index)
    if nv is None:
        return NullEnergyMeter("NVML unavailable (pynvml missing or nvmlInit failed)")
    return NvmlEnergyMeter(*nv)


def driver_version() -> str:
    nv = open_nvml()
    if nv is None:
        return ""
    try:
        v = nv[0].nvmlSystemGetDriverVersion()
        return v.decode() if isinstance(v, bytes) else str(v)
    except Exception:
        return ""


__all__ = [
    "CudaEventTimer",
    "Energy",
    "EnergyMeter",
    "NullEnergyMeter",
    "NvmlEnergyMeter",
    "Timer",
    "Timing",
    "WallTimer",
    "counter_delta_mj",
    "cuda_batch_runner",
    "driver_version",
    "wall_batch_runner",
    "nvml_conditions",
    "open_energy_meter",
    "open_nvml",
    "summarize",
]
