"""Repeated, interleaved energy windows: what several callables cost in joules, on one meter, paired by round.

One window is one `EnergyMeter.measure` of a callable run back to back (energy.py: the window starts and ends on
updates of NVML's counter). Several candidates are measured in rounds, each round running every candidate once,
in an order that rotates from round to round, so that drift (temperature, clocks, other work) falls on all of
them alike and the windows of one round can be compared pairwise (the paired noise of the keep rule,
policy/energy_policy.py). After each window the SM clock and the clock-event (throttle) reasons are sampled.

`measure_callable` is `gp.energy.measure`'s measurement (the front, gpperf_torch/energy.py, adds the device and
the capture checks): J per call, W, calls/s, their spread across repeats, clocks, power limit and throttling,
with every figure it cannot know left None and the reason said.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from .energy import EnergyMeter

# A batch of calls between two counter reads lasts about this long: short enough that the window ends close to
# its length, long enough that reading the clock and the counter costs nothing next to it.
BATCH_S = 0.005
MAX_BATCH = 100_000


@dataclass(frozen=True)
class Window:
    """One energy window of one candidate: J and ms per unit of work (the count `run_batch` returns)."""

    key: str
    round: int
    energy_j: float
    power_w: float
    window_s: float
    units: int
    sm_clock_mhz: float | None
    throttle: list[str] | None  # clock-event reasons sampled at the window's end; None: NVML did not say

    @property
    def ms_per_unit(self) -> float:
        return self.window_s * 1e3 / self.units if self.units else math.nan


@dataclass
class Windows:
    """Interleaved windows per candidate (same length lists, round i of each measured in the same round)."""

    by_key: dict[str, list[Window]] = field(default_factory=dict)
    window_s: float = 0.0
    rounds: int = 0
    missed: dict[str, int] = field(default_factory=dict)  # windows the counter gave nothing for, per key
    wall_s: float = 0.0

    def energies(self, key: str) -> list[float]:
        return [w.energy_j for w in self.by_key.get(key, [])]

    def paired(self, a: str, b: str) -> list[tuple[Window, Window]]:
        """The windows of `a` and `b` measured in the same rounds."""
        wb = {w.round: w for w in self.by_key.get(b, [])}
        return [(w, wb[w.round]) for w in self.by_key.get(a, []) if w.round in wb]

    def throttled(self) -> bool | None:
        seen = [w.throttle for ws in self.by_key.values() for w in ws]
        if not seen or all(t is None for t in seen):
            return None
        return any(t for t in seen)

    def throttle_reasons(self) -> list[str]:
        return sorted({r for ws in self.by_key.values() for w in ws for r in (w.throttle or ())})

    def sm_clock_mhz(self) -> float | None:
        c = [w.sm_clock_mhz for ws in self.by_key.values() for w in ws if w.sm_clock_mhz is not None]
        return float(statistics.median(c)) if c else None


def spread(values: list[float]) -> float | None:
    """Relative spread of repeated measurements: (max - min) / median; None with fewer than two."""
    v = [x for x in values if x is not None and math.isfinite(x)]
    if len(v) < 2:
        return None
    med = statistics.median(v)
    return (max(v) - min(v)) / med if med else None


def repeatability(w: Windows) -> float | None:
    """The median over candidates of the relative sd of a candidate's repeated windows (J per unit): how far
    two windows of the same kernel disagree. None with fewer than two windows per candidate."""
    cvs = []
    for ws in w.by_key.values():
        e = [x.energy_j for x in ws]
        if len(e) >= 2 and statistics.mean(e) > 0:
            cvs.append(statistics.stdev(e) / statistics.mean(e))
    return float(statistics.median(cvs)) if cvs else None


def interleaved_windows(
    meter: EnergyMeter,
    runs: dict[str, Callable[[], int]],
    *,
    window_s: float,
    repeats: int,
    budget_s: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Windows:
    """`repeats` rounds of one window per callable (`run_batch() -> units run`), the order rotating each round.
    Stops between rounds once `budget_s` is spent (so every candidate has the same rounds). A window the counter
    gives nothing for (energy.py warns) is counted in `missed`, never stored as zero."""
    if window_s <= 0:
        raise ValueError(f"energy window must be > 0 s, got {window_s}")
    out = Windows(by_key={k: [] for k in runs}, window_s=window_s, missed={k: 0 for k in runs})
    keys = list(runs)
    t0 = clock()
    for r in range(max(int(repeats), 0)):
        if r and budget_s is not None and clock() - t0 > budget_s:
            break
        order = keys[r % len(keys) :] + keys[: r % len(keys)] if keys else []
        for key in order:
            e = meter.measure(runs[key], window_s)
            if e is None:
                out.missed[key] += 1
                continue
            cond = meter.conditions()
            out.by_key[key].append(Window(key=key, round=r, energy_j=e.energy_j, power_w=e.power_w,
                                          window_s=e.window_s, units=e.reps, sm_clock_mhz=cond.get("sm_clock_mhz"),
                                          throttle=meter.throttle_reasons()))  # fmt: skip
        out.rounds = r + 1
    out.wall_s = clock() - t0
    return out


def batch_size(call_s: float, target_s: float = BATCH_S) -> int:
    """Calls per batch so that a batch lasts about `target_s`."""
    if not (call_s > 0 and math.isfinite(call_s)):
        return 1
    return int(min(MAX_BATCH, max(1, math.ceil(target_s / call_s))))


def batched(fn: Callable[[], object], n: int, sync: Callable[[], None] | None) -> Callable[[], int]:
    """`run_batch` for a meter: `n` calls of `fn` back to back, then one synchronisation."""

    def run_batch() -> int:
        for _ in range(n):
            fn()
        if sync is not None:
            sync()
        return n

    return run_batch


def calibrated(
    fn: Callable[[], object], meter: EnergyMeter, sync: Callable[[], None] | None, clock: Callable[[], float]
) -> Callable[[], int]:
    """`run_batch` for `fn` (warm) with batches of about BATCH_S, timed on the clock the meter's windows use (the
    meter's `clock`; `clock` without a counter)."""
    wclock = getattr(meter, "clock", None) if getattr(meter, "available", False) else None
    wclock = wclock or clock
    t0 = wclock()
    fn()
    if sync is not None:
        sync()
    return batched(fn, batch_size(wclock() - t0), sync)


@dataclass
class CallEnergy:
    """`gp.energy.measure`'s answer. Every figure that could not be known is None and `unknown` says why."""

    j_per_call: float | None = None
    watts: float | None = None
    calls_per_s: float | None = None
    spread: dict[str, float | None] = field(default_factory=dict)  # (max - min) / median across repeats
    sm_clock_mhz: float | None = None
    power_limit_w: float | None = None
    throttled: bool | None = None
    throttle_reasons: list[str] = field(default_factory=list)
    repeats: int = 0
    window_s: float = 0.0
    device: str = ""
    unknown: dict[str, str] = field(default_factory=dict)  # figure -> why it is None

    def as_dict(self) -> dict:
        return asdict(self)

    def fmt(self, name: str, spec: str = ".4g", *, why: bool = True) -> str:
        """One figure as text: the number, or 'n/a (why)' ('n/a' alone with why=False)."""
        v = getattr(self, name)
        if v is None:
            return f"n/a ({self.unknown.get(name, 'not measured')})" if why else "n/a"
        return format(v, spec) if isinstance(v, float) else str(v)

    def __str__(self) -> str:
        parts = [f"{self.fmt('j_per_call', why=False)} J/call", f"{self.fmt('watts', '.1f', why=False)} W",
                 f"{self.fmt('calls_per_s', '.4g', why=False)} calls/s",
                 f"SM {self.fmt('sm_clock_mhz', '.0f', why=False)} MHz",
                 f"limit {self.fmt('power_limit_w', '.0f', why=False)} W",
                 f"throttled {self.fmt('throttled', why=False)}"]  # fmt: skip
        if self.throttle_reasons:
            parts[-1] += f" ({', '.join(self.throttle_reasons)})"
        text = (f"{self.device}: " if self.device else "") + ", ".join(parts)
        reasons = sorted(set(self.unknown.values()))
        return text + (f" [n/a: {'; '.join(reasons)}]" if reasons else "")


def measure_callable(
    fn: Callable[[], object],
    meter: EnergyMeter,
    *,
    seconds: float,
    repeats: int,
    sync: Callable[[], None] | None,
    clock: Callable[[], float] = time.perf_counter,
    device: str = "",
) -> CallEnergy:
    """J per call, W, calls/s of `fn()` over `repeats` windows of `seconds` each (energy from `meter`); where the
    meter has no counter, calls/s from the wall clock and the energy figures None with the meter's reason."""
    if seconds <= 0 or repeats < 1:
        raise ValueError(f"energy.measure needs seconds > 0 and repeats >= 1, got seconds={seconds} repeats={repeats}")
    fn()  # warm: compilation, first-sight selection, allocator
    if sync is not None:
        sync()
    run = calibrated(fn, meter, sync, clock)
    out = CallEnergy(repeats=repeats, window_s=seconds, device=device)
    if getattr(meter, "available", False):
        w = interleaved_windows(meter, {"fn": run}, window_s=seconds, repeats=repeats)
        ws = w.by_key["fn"]
        if ws:
            e = [x.energy_j for x in ws]
            p = [x.power_w for x in ws]
            c = [x.units / x.window_s for x in ws]
            out.j_per_call, out.watts, out.calls_per_s = (float(statistics.median(v)) for v in (e, p, c))
            out.spread = {"j_per_call": spread(e), "watts": spread(p), "calls_per_s": spread(c)}
            out.sm_clock_mhz = w.sm_clock_mhz()
            out.throttled = w.throttled()
            out.throttle_reasons = w.throttle_reasons()
            if out.throttled is None:
                out.unknown["throttled"] = "NVML does not report clock-event reasons here"
            if out.sm_clock_mhz is None:
                out.unknown["sm_clock_mhz"] = "NVML does not report the SM clock here"
        else:
            why = f"the energy counter did not advance in {w.missed['fn']} windows of {seconds:g} s (window too short?)"
            _unknown_energy(out, why)
        out.power_limit_w = meter.conditions().get("power_limit_w")
        if out.power_limit_w is None:
            out.unknown["power_limit_w"] = "NVML does not report the power limit here"
        if out.calls_per_s is None:
            out.calls_per_s = _wall_rate(run, seconds, repeats, clock, out)
        return out
    _unknown_energy(out, getattr(meter, "reason", "") or "no energy meter")
    for name in ("sm_clock_mhz", "power_limit_w", "throttled"):
        out.unknown[name] = getattr(meter, "reason", "") or "no NVML"
    out.calls_per_s = _wall_rate(run, seconds, repeats, clock, out)
    return out


def _unknown_energy(out: CallEnergy, why: str) -> None:
    out.j_per_call = out.watts = None
    out.unknown["j_per_call"] = out.unknown["watts"] = why


def _wall_rate(run: Callable[[], int], seconds: float, repeats: int, clock, out: CallEnergy) -> float:
    rates = []
    for _ in range(repeats):
        t0, n = clock(), 0
        while clock() - t0 < seconds:
            n += run()
        rates.append(n / (clock() - t0))
    out.spread["calls_per_s"] = spread(rates)
    return float(statistics.median(rates))


__all__ = [
    "CallEnergy",
    "Window",
    "Windows",
    "batch_size",
    "batched",
    "calibrated",
    "interleaved_windows",
    "measure_callable",
    "repeatability",
    "spread",
]
