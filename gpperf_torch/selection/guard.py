"""The end-to-end guard's comparison: a model's forward plain (every GEMM cuBLAS) against patched (the chosen
configs), whole, host costs included, so that "never slower than plain PyTorch" holds for the model and not only
per GEMM (issue 28: our one GPU decoder run used 0.114 J/token patched against 0.049 plain, because the patched
model was slower).

Time: the two forwards in interleaved rounds on the wall clock after a synchronisation (CUDA events would let a
primed GPU hide the host path, which is exactly what may make a patched model slower). Energy (the energy
objectives, where NVML's counter is there): interleaved windows of each (measure/energy_windows.py). Patched is
kept only where it is better beyond the noise of the paired rounds (1% and twice the noise, the rule of
verify_policy.margin); for `balanced:s` it must save energy and be at most `s` slower. The front (warmup.py) swaps
the model's layers and reverts the GEMMs to cuBLAS when this says so.

| variable | meaning | default |
| --- | --- | --- |
| GPPERF_GUARD_BUDGET_MS | wall time of the timed rounds (at least 7 rounds each) | 500 |
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from .. import env
from ..measure import timing
from ..measure.energy import EnergyMeter
from ..measure.energy_windows import calibrated, interleaved_windows
from ..policy.energy_policy import ENERGY_OBJECTIVES, paired_log_ratio
from ..policy.verify_policy import default_policy, margin, ratio_noise
from .objectives import Objective

DEFAULT_BUDGET_MS = 500.0
ROUNDS = (7, 50)


def budget_ms() -> float:
    return env.read("GPPERF_GUARD_BUDGET_MS", DEFAULT_BUDGET_MS, env.parse_positive_float)


@dataclass
class GuardResult:
    """What the guard measured and decided (warmup's report carries it as a dict)."""

    objective: str
    kept_patched: bool
    reason: str
    plain_ms: float
    patched_ms: float
    time_noise: float  # se of the median per-round time ratio patched / plain (fraction)
    time_margin: float
    plain_j: float | None = None  # J per forward (None: not measured, `energy_unknown` says why)
    patched_j: float | None = None
    energy_saving: float | None = None  # 1 - patched / plain, of the objective's energy score
    energy_noise: float | None = None
    energy_margin: float | None = None
    energy_unknown: str = ""
    throttled: bool | None = None
    throttle_reasons: list[str] = field(default_factory=list)
    rounds: int = 0
    clock: str = "wall clock after synchronisation"

    @property
    def time_gain(self) -> float:
        """Plain's time over patched's (> 1: patched faster)."""
        return self.plain_ms / self.patched_ms if self.patched_ms > 0 else math.nan

    def as_dict(self) -> dict:
        d = asdict(self)
        d["time_gain"] = self.time_gain
        return d


def compare(
    plain: Callable[[], object],
    patched: Callable[[], object],
    objective: Objective,
    *,
    sync: Callable[[], None] | None,
    meter: EnergyMeter | None,
    window_s: float,
    repeats: int,
    budget: float | None = None,
) -> GuardResult:
    """Measure `plain()` against `patched()` (each one forward; both already warm) and decide (module docstring)."""
    clock = timing.WallClock(sync)
    timed = timing.interleaved([plain, patched], clock=clock, budget_ms=budget or budget_ms(), min_rounds=ROUNDS[0],
                               max_rounds=ROUNDS[1])  # fmt: skip
    p_ms, q_ms = (statistics.median(s) for s in timed.samples)
    _, noise = ratio_noise(q / p for p, q in zip(*timed.samples, strict=True))
    policy = default_policy()
    t_margin = margin(noise, policy)
    faster = q_ms * (1.0 + t_margin) < p_ms
    res = GuardResult(objective=str(objective), kept_patched=faster, reason="", plain_ms=p_ms, patched_ms=q_ms,
                      time_noise=noise, time_margin=t_margin, rounds=timed.rounds)  # fmt: skip
    time_why = (f"patched {p_ms / q_ms:.3f}x plain in time (needed {1 + t_margin:.3f}x: "
                f"{t_margin:.1%} over {timed.rounds} rounds)")  # fmt: skip
    if objective.name not in ENERGY_OBJECTIVES:
        res.reason = time_why
        return res
    if meter is None or not getattr(meter, "available", False):
        res.energy_unknown = getattr(meter, "reason", "") or "no energy meter"
        res.reason = f"{time_why}; energy n/a ({res.energy_unknown}): judged on time, as the time pick was made"
        return res
    runs = {"plain": calibrated(plain, meter, sync, time.perf_counter),
            "patched": calibrated(patched, meter, sync, time.perf_counter)}  # fmt: skip
    w = interleaved_windows(meter, runs, window_s=window_s, repeats=repeats)
    res.throttled, res.throttle_reasons = w.throttled(), w.throttle_reasons()
    if not w.by_key["plain"] or not w.by_key["patched"]:
        res.energy_unknown = "the energy counter did not advance within the windows (window too short?)"
        res.reason = f"{time_why}; energy n/a ({res.energy_unknown}): judged on time"
        return res

    def score(key: str) -> dict[int, float]:
        return {x.round: x.energy_j * (x.ms_per_unit if objective.name == "edp" else 1.0) for x in w.by_key[key]}

    res.plain_j = statistics.median(w.energies("plain"))
    res.patched_j = statistics.median(w.energies("patched"))
    mean, se, _ = paired_log_ratio(score("patched"), score("plain"))
    res.energy_saving = 1.0 - math.exp(mean) if math.isfinite(mean) else None
    res.energy_noise, res.energy_margin = se, margin(se, policy)
    frugal = res.energy_saving is not None and res.energy_saving > res.energy_margin
    what = "energy x time" if objective.name == "edp" else "energy"
    e_why = (f"patched saves {res.energy_saving or 0.0:.1%} {what} (needed {res.energy_margin:.1%}, "
             f"{len(w.by_key['plain'])} windows of {window_s:g} s each)")  # fmt: skip
    if objective.name == "balanced":
        slack = objective.value or 0.0
        in_slack = q_ms <= p_ms * (1.0 + slack)
        res.kept_patched = frugal and in_slack
        res.reason = f"{e_why}; {time_why}, slack {slack:.0%}" + ("" if in_slack else ": slower than the slack allows")
    else:
        res.kept_patched = frugal
        res.reason = f"{e_why}; {time_why}"
    return res


__all__ = ["GuardResult", "budget_ms", "compare"]
