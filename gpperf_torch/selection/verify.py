"""The measured dispatch's measurement: time cuBLAS and the candidates verify_policy names, once per shape, on the
call's own operands, and keep the fastest by the policy's noise rule.

Each candidate is launched once to compile it (Triton caches the binary, in memory and on disk; a compile is
counted when the kernel was not compiled before, with its seconds), then all are timed in interleaved rounds
(measure.interleaved: CUDA events on a GPU, the wall clock in the interpreter) within a per-shape budget, and
the medians compared. A config that fails to compile or run is skipped, never fatal. Never inside a CUDA-graph
capture or while torch.compile / torch.jit traces (`cannot_measure`): the caller then takes the prediction.

Budgets (GPPERF_*):
| variable | meaning | default |
| --- | --- | --- |
| GPPERF_VERIFY_TOP_K | Triton configs measured at most per shape | 3 |
| GPPERF_VERIFY_BUDGET_MS | GPU time of the timed rounds per shape, ms (at least 5 rounds each) | 5 |
| GPPERF_VERIFY_MAX_SHAPES | shapes measured per process; later new shapes use the prediction (warned once) | 512 |
| GPPERF_VERIFY_BUCKETS | M buckets per octave (0: every M apart); verify_policy.m_bucket | 8 |

The measurements are appended to a CSV in the tuning schema (dataset.COLUMNS), so `gpperf-torch train` can learn
from them (`dataset_path`).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch

from .. import env, kernels
from ..kernels import TileConfig
from ..measure import timing as measure
from ..measure.dataset import COLUMNS
from ..measure.dataset import TORCH_KEY as TORCH
from ..measure.device import DeviceInfo
from ..paths import cache_dir, cannot_write, disk_cache_enabled, slug
from ..policy.verify_policy import (
    VerifyPolicy,
    bucket_steps_from_env,
    choose_measured,
    gain_over_torch,
    margin,
    top_k_from_env,
)

logger = logging.getLogger(__name__)

DEFAULT_BUDGET_MS = 5.0
DEFAULT_MAX_SHAPES = 512
# Rounds of the interleaved timing: at least 5 on a GPU (a median and a spread), at most 50. The interpreter
# takes tens of milliseconds per launch and its times mean nothing: 3 rounds there.
GPU_ROUNDS = (5, 50)
INTERPRETER_ROUNDS = (3, 3)


# The measured dispatch's budgets, read from the environment when a first sight needs them (module docstring).
verify_top_k = top_k_from_env
bucket_steps = bucket_steps_from_env


def budget_ms() -> float:
    return env.read("GPPERF_VERIFY_BUDGET_MS", DEFAULT_BUDGET_MS, env.parse_positive_float)


def max_shapes() -> int:
    return env.read("GPPERF_VERIFY_MAX_SHAPES", DEFAULT_MAX_SHAPES, env.parse_non_negative_int)


def cannot_measure(a: torch.Tensor) -> str:
    """Why no measurement may run now ('' when one may): a CUDA-graph capture records launches instead of
    running them, and a trace (torch.compile, torch.jit, fake tensors) has no real operands."""
    if a.is_cuda and torch.cuda.is_current_stream_capturing():
        return "inside a CUDA graph capture"
    why = cannot_measure_now(cuda=False)
    if why:
        return why
    if type(a) is not torch.Tensor and not isinstance(a, torch.nn.Parameter):
        return f"on a {type(a).__name__} (not a plain tensor)"
    return ""


def cannot_measure_now(cuda: bool | None = None) -> str:
    """cannot_measure without operands (gp.energy.measure, warmup's guard): a capture on the current CUDA stream
    (checked where CUDA is initialised, or `cuda`), torch.compile or torch.jit tracing."""
    if cuda is None:
        cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    if cuda and torch.cuda.is_current_stream_capturing():
        return "inside a CUDA graph capture"
    if torch.compiler.is_compiling():
        return "while torch.compile traces"
    if torch.jit.is_tracing():
        return "while torch.jit traces"
    return ""


@dataclass
class Stats:
    """What measuring has cost this process (gpperf_torch.verify_stats())."""

    shapes: int = 0  # shapes measured
    candidates: int = 0  # candidates timed, cuBLAS included
    compiles: int = 0  # Triton kernels compiled (or loaded from Triton's disk cache) for a measurement
    compile_s: float = 0.0
    bench_ms: float = 0.0  # wall time of the timed rounds
    failed: int = 0  # candidates skipped because they failed to compile or run
    kept_triton: int = 0
    table_hits: int = 0  # first sights answered by the verified table
    predicted: dict = field(default_factory=dict)  # first sights that took the prediction, by reason

    def as_dict(self) -> dict:
        return {k: (dict(v) if isinstance(v, dict) else v) for k, v in self.__dict__.items()}


stats = Stats()


def reset_stats() -> None:
    global stats
    stats = Stats()


@dataclass
class Result:
    """One shape's measurement: the kept choice and the evidence."""

    choice: TileConfig | None
    times_ms: dict[str, float]  # median per candidate key ("torch" for cuBLAS)
    errors: dict[str, str]
    noise: float  # standard error of the median time ratio of the best Triton config to cuBLAS (fraction)
    margin: float  # the lead Triton needed (verify_policy.margin)
    rounds: int
    compiles: int
    compile_s: float
    bench_ms: float
    samples: dict[str, list[float]] = field(default_factory=dict)
    p20_ms: dict[str, float] = field(default_factory=dict)
    p80_ms: dict[str, float] = field(default_factory=dict)

    @property
    def choice_key(self) -> str:
        return TORCH if self.choice is None else self.choice.key

    @property
    def gain(self) -> float:
        """cuBLAS's measured time over the choice's (verify_policy.gain_over_torch)."""
        return gain_over_torch(self.times_ms, self.choice_key, TORCH)


def _sync(a: torch.Tensor):
    return torch.cuda.synchronize if a.is_cuda else None


def measure_candidates(
    a: torch.Tensor,
    b: torch.Tensor,
    cands: list[TileConfig | None],
    policy: VerifyPolicy,
    *,
    max_shared_memory: int | None,
    host_ms: dict | None = None,
    budget: float | None = None,
) -> Result:
    """Time `cands` (None: torch.matmul) on (a, b) and keep the fastest by the policy's rule (verify_policy)."""
    out = torch.empty((*a.shape[:-1], b.shape[-1]), dtype=a.dtype, device=a.device)
    gpu = a.is_cuda and not kernels.interpreting()
    sync = _sync(a)
    fns, keys, errors = [], [], {}
    compiles, compile_s = 0, 0.0
    for cfg in cands:
        key = TORCH if cfg is None else cfg.key
        if key in keys or key in errors:
            continue
        if cfg is None:

            def fn(a=a, b=b, out=out) -> None:
                torch.matmul(a, b, out=out)
        else:

            def fn(a=a, b=b, out=out, cfg=cfg) -> None:
                kernels.launch(a, b, out, cfg, max_shared_memory=max_shared_memory, check=False)

        try:
            fresh = False
            if cfg is not None and gpu:
                try:
                    kernels.launch(a, b, out, cfg, max_shared_memory=max_shared_memory, check=False,
                                   compiled_only=True)  # fmt: skip
                except kernels.NotCompiledError:
                    fresh = True
            t0 = time.perf_counter()
            fn()  # compile (or load from Triton's cache) and first touch, untimed
            if sync is not None:
                sync()
            if fresh:
                compiles += 1
                compile_s += time.perf_counter() - t0
        except Exception as e:  # a config that fails to compile or run is skipped, never fatal
            logger.debug("verify: %s failed for %s @ %s: %s", key, tuple(a.shape), tuple(b.shape), e)
            errors[key] = f"{type(e).__name__}: {e}"[:300]
            continue
        fns.append(fn)
        keys.append(key)
    rounds_lo, rounds_hi = GPU_ROUNDS if gpu else INTERPRETER_ROUNDS
    clock = measure.CudaClock() if gpu else measure.WallClock(sync)
    timed = measure.interleaved(fns, clock=clock, budget_ms=budget or budget_ms(), min_rounds=rounds_lo,
                                max_rounds=rounds_hi)  # fmt: skip
    samples = dict(zip(keys, timed.samples, strict=True))
    kept, times, noise = choose_measured(samples, policy, host_ms=host_ms, torch_key=TORCH)
    return Result(
        choice=None if kept in (None, TORCH) else TileConfig.from_key(kept),
        times_ms=times,
        errors=errors,
        noise=noise,
        margin=margin(noise, policy),
        rounds=timed.rounds,
        compiles=compiles,
        compile_s=compile_s,
        bench_ms=timed.wall_ms,
        samples=samples,
        p20_ms={k: float(_quantile(v, 0.2)) for k, v in samples.items()},
        p80_ms={k: float(_quantile(v, 0.8)) for k, v in samples.items()},
    )


def _quantile(values: list[float], q: float) -> float:
    return measure.quantile(sorted(values), q) if values else math.nan


def record(result: Result) -> None:
    """Add a measurement to this process's stats."""
    stats.shapes += 1
    stats.candidates += len(result.times_ms) + len(result.errors)
    stats.compiles += result.compiles
    stats.compile_s += result.compile_s
    stats.bench_ms += result.bench_ms
    stats.failed += len(result.errors)
    stats.kept_triton += int(result.choice is not None)


def count_predicted(reason: str) -> None:
    stats.predicted[reason] = stats.predicted.get(reason, 0) + 1


# ---- the measurements as tuning rows ----------------------------------------------------------------
def dataset_path(device_name: str) -> Path:
    """Where verify/exhaustive append their measurements (one CSV per device, in the user cache dir)."""
    return cache_dir() / f"verify-{slug(device_name)}.csv"


def append_rows(info: DeviceInfo, key: tuple, result: Result) -> None:
    """Append one row per measured candidate (tuning CSV schema, dataset.COLUMNS): `train` can learn from them.
    Never raises: a measurement that cannot be saved is logged."""
    from ..measure.writer import DatasetLockedError, DatasetWriter

    m, n, k, batch, dtype, a_t, b_t, tf32 = key[:8]
    base = {
        "gpu": info.name, "m": m * batch, "n": n, "k": k, "dtype": dtype, "a_trans": int(a_t), "b_trans": int(b_t),
        "tf32": int(tf32), "capability": ".".join(map(str, info.capability)), "sm_count": info.sm_count,
        "max_shared_memory": info.max_shared_memory, "torch": torch.__version__,
        "interpreted": int(kernels.interpreting()), "run_id": "verify",
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }  # fmt: skip
    if not disk_cache_enabled():
        return
    path = dataset_path(info.name)
    try:
        with DatasetWriter(path) as w:
            for ckey in (*result.times_ms, *result.errors):
                row = dict(base)
                if ckey == TORCH:
                    row.update(backend="torch", config="")
                else:
                    cfg = TileConfig.from_key(ckey)
                    row.update(backend="triton", config=ckey, **cfg.as_dict())
                t = result.times_ms.get(ckey)
                row["status"] = "ok" if t is not None else "error"
                row["error"] = "" if t is not None else result.errors[ckey]
                if t is not None:
                    row.update(time_ms=t, time_ms_p20=result.p20_ms.get(ckey), time_ms_p80=result.p80_ms.get(ckey),
                               n_reps=len(result.samples.get(ckey, ())))  # fmt: skip
                    if t > 0:
                        row["tflops"] = 2.0 * m * batch * n * k / (t * 1e-3) / 1e12
                    row.update(_energy_columns(getattr(result, "energy", None) or {}, ckey))
                w.write({c: row.get(c) for c in COLUMNS})
    except DatasetLockedError as e:
        logger.info("verify: measurements not saved to %s (%s)", path, e)
    except (OSError, ValueError) as e:
        cannot_write(path, e)


def _energy_columns(energy: dict, ckey: str) -> dict:
    """The tuning schema's energy columns of one candidate from an energy measurement's record (empty: none)."""
    j = (energy.get("j") or {}).get(ckey)
    if j is None:
        return {}
    return {"energy_j": j, "power_w": (energy.get("w") or {}).get(ckey), "energy_window_s": energy.get("window_s"),
            "sm_clock_mhz": energy.get("sm_clock_mhz"), "power_limit_w": energy.get("power_limit_w")}  # fmt: skip


__all__ = [
    "Result",
    "Stats",
    "append_rows",
    "budget_ms",
    "bucket_steps",
    "cannot_measure",
    "cannot_measure_now",
    "dataset_path",
    "max_shapes",
    "measure_candidates",
    "stats",
    "verify_top_k",
]
