"""Measured energy for the energy objectives (energy, edp, balanced[:slack]) in verify mode and gp.warmup.

A first sight under an energy objective (on a GPU with NVML's total-energy counter) times the candidates as the
time objective does (verify.measure_candidates: cuBLAS and the predicted best Triton configs, CUDA events; the
time rule's pick is "the fastest"), adds the configs of least predicted energy where the model predicts energy
(policy/energy_policy.energy_candidates), then measures every candidate in repeated energy windows on the call's
own operands, interleaved by round (measure/energy_windows.py), and keeps the fastest unless a frugal-looking
candidate saves beyond twice the paired noise and 1% (energy_policy.choose_energy). Without a counter (no NVML,
the interpreter) the time pick is kept and the record says why.

Budgets (GPPERF_*; the window length is a parameter because the counter's update period differs between GPUs
and drivers: the GPU check's `energy` step measures it and the windows' repeatability, and every record keeps
the window used):
| variable | meaning | default |
| --- | --- | --- |
| GPPERF_ENERGY_WINDOW_S | seconds per energy window (several counter updates long) | 0.2 |
| GPPERF_ENERGY_REPEATS | windows per candidate (interleaved rounds) | 3 |
| GPPERF_ENERGY_BUDGET_S | seconds of windows per shape: fewer candidates (never under 2) when they do not fit | 4 |
| GPPERF_ENERGY_MAX_SHAPES | shapes measured in energy per process; later new shapes take the prediction | 64 |
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field

import torch

from .. import env, kernels
from ..kernels import TileConfig
from ..measure.dataset import TORCH_KEY as TORCH
from ..measure.energy import EnergyMeter, NullEnergyMeter, open_energy_meter
from ..measure.energy_windows import batch_size, batched, interleaved_windows, repeatability
from ..policy.energy_policy import choose_energy
from ..policy.verify_policy import VerifyPolicy
from . import verify
from .objectives import Objective

logger = logging.getLogger(__name__)

DEFAULT_WINDOW_S = 0.2
DEFAULT_REPEATS = 3
DEFAULT_BUDGET_S = 4.0
DEFAULT_MAX_SHAPES = 64
# A window lasts its length plus up to one counter update (energy.py aligns both ends on updates): planned at
# this multiple of its length when fitting the candidates into the budget.
WINDOW_OVERHEAD = 1.5


def window_s() -> float:
    return env.read("GPPERF_ENERGY_WINDOW_S", DEFAULT_WINDOW_S, env.parse_positive_float)


def repeats() -> int:
    return env.positive_int("GPPERF_ENERGY_REPEATS", DEFAULT_REPEATS)


def budget_s() -> float:
    return env.read("GPPERF_ENERGY_BUDGET_S", DEFAULT_BUDGET_S, env.parse_positive_float)


def max_shapes() -> int:
    return env.read("GPPERF_ENERGY_MAX_SHAPES", DEFAULT_MAX_SHAPES, env.parse_non_negative_int)


@dataclass
class Stats:
    shapes: int = 0  # shapes measured in energy
    windows: int = 0
    window_wall_s: float = 0.0
    no_counter: int = 0  # energy first sights that had no counter (the time pick kept)

    def as_dict(self) -> dict:
        return asdict(self)


stats = Stats()


def reset_stats() -> None:
    global stats
    stats = Stats()


# ---- the meter ---------------------------------------------------------------------------------------
_meters: dict[int, EnergyMeter] = {}
_override: EnergyMeter | None = None


def set_meter(meter: EnergyMeter | None) -> None:
    """Use `meter` for every device (tests pass a fake NVML's); None: NVML's, opened per device at first use."""
    global _override
    _override = meter


def meter_for(device: torch.device) -> EnergyMeter:
    """The energy meter of `device`: NVML's counter on a GPU, a NullEnergyMeter saying why elsewhere."""
    if _override is not None:
        return _override
    if device.type != "cuda" or kernels.interpreting():
        return NullEnergyMeter("no GPU energy counter here (CPU / Triton interpreter)")
    idx = device.index if device.index is not None else torch.cuda.current_device()
    m = _meters.get(idx)
    if m is None:
        m = _meters[idx] = open_energy_meter(idx)
    return m


# ---- the measurement ---------------------------------------------------------------------------------
@dataclass
class EnergyResult(verify.Result):
    """verify.Result (the time measurement; `choice` is the kept one) plus the energy record (table.Entry.energy)."""

    energy: dict = field(default_factory=dict)


def _launcher(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, cfg: TileConfig | None, smem: int | None):
    if cfg is None:
        return lambda: torch.matmul(a, b, out=out)
    return lambda: kernels.launch(a, b, out, cfg, max_shared_memory=smem, check=False)


def fit_budget(keys: list[str], fastest: str, times_ms: dict[str, float], n_repeats: int, win_s: float,
               budget: float) -> list[str]:  # fmt: skip
    """The candidates whose windows fit `budget` seconds: the fastest and cuBLAS first, then by measured time;
    never fewer than two (a comparison needs two)."""
    fits = max(2, int(budget // (WINDOW_OVERHEAD * win_s * max(n_repeats, 1))))
    order = sorted(keys, key=lambda k: (k != fastest, k != TORCH, times_ms.get(k, math.inf)))
    return order[:fits]


def measure_energy(
    a: torch.Tensor,
    b: torch.Tensor,
    cands: list[TileConfig | None],
    objective: Objective,
    policy: VerifyPolicy,
    *,
    max_shared_memory: int | None,
    host_ms: dict | None = None,
    meter: EnergyMeter | None = None,
) -> EnergyResult:
    """Time `cands` on (a, b), then measure them in interleaved energy windows and keep by energy_policy's rule."""
    res = verify.measure_candidates(a, b, cands, policy, max_shared_memory=max_shared_memory, host_ms=host_ms)
    meter = meter or meter_for(a.device)
    win, reps, budget = window_s(), repeats(), budget_s()
    record: dict = {"objective": str(objective), "window_s": win, "repeats": reps, "fastest": res.choice_key}
    if not getattr(meter, "available", False):
        stats.no_counter += 1
        record.update(available=False, reason=f"{meter.reason}: the time pick is kept (energy tracks time within a "
                      "shape, docs/energy.md)")  # fmt: skip
        return EnergyResult(**vars(res), energy=record)
    keys = fit_budget(list(res.times_ms), res.choice_key, res.times_ms, reps, win, budget)
    out = torch.empty((*a.shape[:-1], b.shape[-1]), dtype=a.dtype, device=a.device)
    sync = torch.cuda.synchronize if a.is_cuda else None
    runs = {}
    for key in keys:
        cfg = None if key == TORCH else TileConfig.from_key(key)
        n = batch_size(res.times_ms[key] / 1e3)
        runs[key] = batched(_launcher(a, b, out, cfg, max_shared_memory), n, sync)
    w = interleaved_windows(meter, runs, window_s=win, repeats=reps, budget_s=budget, clock=time.monotonic)
    by_key = {k: {x.round: (x.energy_j, x.power_w, x.ms_per_unit) for x in ws} for k, ws in w.by_key.items()}
    choice = choose_energy(objective.name, objective.value, res.choice_key, res.times_ms, by_key, policy)
    cond = meter.conditions()
    record.update(
        available=True, rounds=w.rounds, candidates=keys, dropped=[k for k in res.times_ms if k not in keys],
        j=choice.j, w=choice.w, ms=choice.ms, noise=choice.noise_by_key, best=choice.best, saving=choice.saving,
        margin=choice.margin, kept=choice.kept, reason=choice.reason, missed={k: v for k, v in w.missed.items() if v},
        repeatability=repeatability(w), sm_clock_mhz=w.sm_clock_mhz(), power_limit_w=cond.get("power_limit_w"),
        throttled=w.throttled(), throttle_reasons=w.throttle_reasons(), wall_s=w.wall_s,
    )  # fmt: skip
    stats.shapes += 1
    stats.windows += sum(len(x) for x in w.by_key.values())
    stats.window_wall_s += w.wall_s
    if w.throttled():
        logger.info("gpperf: the GPU throttled during energy windows (%s)", ", ".join(w.throttle_reasons()))
    kept = None if choice.kept == TORCH else TileConfig.from_key(choice.kept)
    return EnergyResult(**{**vars(res), "choice": kept}, energy=record)


__all__ = [
    "EnergyResult",
    "budget_s",
    "fit_budget",
    "max_shapes",
    "measure_energy",
    "meter_for",
    "repeats",
    "reset_stats",
    "set_meter",
    "stats",
    "window_s",
]
