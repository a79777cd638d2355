"""Energy of one kernel from NVML's total-energy counter, behind a small interface (`EnergyMeter`).

An energy meter turns ``run_batch()`` (run a batch back-to-back, synchronise, return how many ran) into an
`Energy`. NVML is reached only through an object with pynvml's function names, so tests pass a fake one. The
timers are timing.py's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

logger = logging.getLogger(__name__)

# NVML's total-energy counter is an unsigned 64-bit count of millijoules since the driver loaded.
COUNTER_BITS = 64
# A counter step implying more than this many watts is a reset (driver reload), not a measurement.
MAX_PLAUSIBLE_W = 5000.0


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

    def throttle_reasons(self) -> list[str] | None: ...


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
        self.clock = clock  # what windows are timed with (callers size their batches on it)
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

    def throttle_reasons(self) -> list[str] | None:
        return throttle_reasons(self._nvml, self._handle)

    def update_period_s(self, seconds: float = 0.5) -> float | None:
        """The counter's update period, observed: the median interval between changes of the counter read in a
        tight loop for `seconds` (None when it changed fewer than 3 times). Energy windows must be several of
        these long; the period differs between GPUs and drivers (a few ms to ~100 ms), so it is measured on the
        device (the GPU check's `energy` step records it), never assumed."""
        if not self.available:
            return None
        clock = self._clock
        t_end = clock() + seconds
        last, changes = self._read(), []
        while clock() < t_end:
            e = self._read()
            if e != last:
                changes.append(clock())
                last = e
            else:
                self._sleep(0.0005)
        gaps = sorted(b - a for a, b in zip(changes, changes[1:], strict=False))
        return gaps[len(gaps) // 2] if len(gaps) >= 2 else None


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

    def throttle_reasons(self) -> list[str] | None:
        return None

    def update_period_s(self, seconds: float = 0.5) -> float | None:
        return None


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


# NVML's clock event ("throttle") reasons, by bit (nvmlClocksThrottleReason* / nvmlClocksEventReason*). Idle and
# the application-clock setting are not throttling: they are left out of `throttle_reasons`.
THROTTLE_BITS = {
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal",
    0x40: "hw_thermal",
    0x80: "hw_power_brake",
    0x100: "display_clock",
}
NOT_THROTTLING = 0x1 | 0x2  # GPU idle, applications clocks setting


def decode_throttle(mask: int) -> list[str]:
    """The names of the throttle reasons set in an NVML clock-event mask (idle and app clocks left out);
    unknown bits are named by their value, never dropped."""
    mask = int(mask) & ~NOT_THROTTLING
    out = [name for bit, name in THROTTLE_BITS.items() if mask & bit]
    rest = mask & ~sum(THROTTLE_BITS)
    if rest:
        out.append(f"0x{rest:x}")
    return out


def throttle_reasons(nvml: Any, handle: Any) -> list[str] | None:
    """The clock event reasons active now ([] none; None where NVML refuses to say): a sample, so callers read it
    at the end of each measurement window."""
    for name in ("nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetCurrentClocksThrottleReasons"):
        fn = getattr(nvml, name, None)
        if fn is None:
            continue
        try:
            return decode_throttle(fn(handle))
        except Exception as e:
            logger.debug("%s failed: %s", name, e)
    return None


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
    "COUNTER_BITS",
    "MAX_PLAUSIBLE_W",
    "Energy",
    "EnergyMeter",
    "NullEnergyMeter",
    "NvmlEnergyMeter",
    "counter_delta_mj",
    "decode_throttle",
    "driver_version",
    "nvml_conditions",
    "open_energy_meter",
    "open_nvml",
    "throttle_reasons",
]
