"""The measured dispatch for the energy objectives (energy, edp, balanced[:slack]): which candidates a first sight
measures in joules, and when a frugal-looking one is kept over the fastest. numpy only, no torch.

Why a rule at all: energy tracks time within a shape (R^2 0.994 on the public Kernel Tuner / PowerSensor3 sweep of
one 4096^3 GEMM on an RTX 4000 Ada), and what a different tile config saves at the same clock is small (-1.85%
median, -4.1% at most there; 0 on 23 of 25 problems in our H200 run, docs/energy.md). Windows of NVML's counter
disagree by about as much. So the fastest (the time rule's pick: verify_policy.choose_measured) is the default,
and another candidate is kept only where its measured saving beats the noise of the paired windows:

    saving > max(min_margin, noise_z * se)      (1% and twice the noise, as for time)

with `se` the standard error of the mean per-round log ratio of the candidate's score to the fastest's (windows
of one round are measured back to back, so they share the drift). Scores per window: energy J per GEMM; edp
J x ms; balanced J, among candidates whose measured time is within `slack` of the fastest's.

Candidates: cuBLAS, the top-k by predicted time (the time rule's own candidates, so the time pick is the one the
`time` objective would keep), and the top-k by predicted energy where the model predicts it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .verify_policy import VerifyPolicy, margin

ENERGY_OBJECTIVES = ("energy", "edp", "balanced")


def energy_candidates(head: list[int], energy_j: np.ndarray | None, is_torch: np.ndarray, top_k: int) -> list[int]:
    """`head` (the time rule's candidate indices, cuBLAS first) plus the `top_k` Triton configs of least predicted
    energy not already in it (none without an energy prediction)."""
    out = list(head)
    if energy_j is None or top_k <= 0:
        return out
    e = np.asarray(energy_j, dtype=np.float64)
    tri = np.flatnonzero(~np.asarray(is_torch, dtype=bool) & np.isfinite(e))
    for i in tri[np.argsort(e[tri], kind="stable")][:top_k]:
        if int(i) not in out:
            out.append(int(i))
    return out


@dataclass
class EnergyChoice:
    """The keep rule's answer and its evidence (per candidate key)."""

    kept: str  # the candidate kept
    fastest: str  # the time rule's pick, kept unless another saves beyond the noise
    best: str | None  # the candidate of least score (None: no other had windows)
    saving: float  # best's measured saving over the fastest (fraction of the score; 0 when best is None)
    noise: float  # se of best's paired log ratio (inf with fewer than two rounds)
    margin: float  # the saving it needed
    reason: str
    j: dict[str, float] = field(default_factory=dict)  # median J per GEMM
    w: dict[str, float] = field(default_factory=dict)  # median W
    ms: dict[str, float] = field(default_factory=dict)  # median ms per GEMM over the windows (back to back)
    noise_by_key: dict[str, float] = field(default_factory=dict)  # paired noise against the fastest


def paired_log_ratio(a: dict[int, float], b: dict[int, float]) -> tuple[float, float, int]:
    """(mean, standard error, n) of log(a/b) over the rounds both have; se inf with fewer than two."""
    r = [math.log(a[i] / b[i]) for i in sorted(set(a) & set(b)) if a[i] > 0 and b[i] > 0]
    if not r:
        return math.nan, math.inf, 0
    if len(r) < 2:
        return r[0], math.inf, 1
    return float(np.mean(r)), float(np.std(r, ddof=1) / math.sqrt(len(r))), len(r)


def choose_energy(
    objective: str,
    slack: float | None,
    fastest: str,
    times_ms: dict[str, float],
    windows: dict[str, dict[int, tuple[float, float, float]]],
    policy: VerifyPolicy,
) -> EnergyChoice:
    """Keep the fastest unless another candidate's measured score beats it beyond the noise (module docstring).

    windows: key -> round -> (J per GEMM, W, ms per GEMM) of that round's window; times_ms: the time rule's
    medians (CUDA events), for balanced's slack."""
    if objective not in ENERGY_OBJECTIVES:
        raise ValueError(f"choose_energy handles {', '.join(ENERGY_OBJECTIVES)}, not {objective!r}")
    med = {k: tuple(float(np.median([v[i] for v in ws.values()])) for i in range(3)) for k, ws in windows.items()
           if ws}  # fmt: skip
    out = EnergyChoice(kept=fastest, fastest=fastest, best=None, saving=0.0, noise=math.inf, margin=math.nan,
                       reason="", j={k: v[0] for k, v in med.items()}, w={k: v[1] for k, v in med.items()},
                       ms={k: v[2] for k, v in med.items()})  # fmt: skip
    if not windows.get(fastest):
        out.reason = f"the fastest ({fastest}) has no energy window: kept without an energy comparison"
        return out

    def score(ws: dict[int, tuple[float, float, float]]) -> dict[int, float]:
        return {i: (j * ms if objective == "edp" else j) for i, (j, _, ms) in ws.items()}

    ref = score(windows[fastest])
    t_ref = times_ms.get(fastest, math.nan)
    best, best_mean, best_se = None, 0.0, math.inf
    for key, ws in windows.items():
        if key == fastest or not ws:
            continue
        if objective == "balanced":
            t = times_ms.get(key, math.nan)
            if not (math.isfinite(t) and math.isfinite(t_ref) and t <= t_ref * (1.0 + (slack or 0.0))):
                continue
        mean, se, _ = paired_log_ratio(score(ws), ref)
        out.noise_by_key[key] = se
        if math.isfinite(mean) and (best is None or mean < best_mean):
            best, best_mean, best_se = key, mean, se
    if best is None:
        out.reason = "no other candidate with energy windows" + (" within the slack" if objective == "balanced" else "")
        return out
    out.best = best
    out.saving = 1.0 - math.exp(best_mean)
    out.noise = best_se
    out.margin = margin(best_se, policy)
    if out.saving > out.margin:
        out.kept = best
        out.reason = f"{best} saves {out.saving:.1%} {objective} over the fastest (needed {out.margin:.1%})"
    else:
        out.reason = (f"kept the fastest: the most frugal-looking ({best}) saves {out.saving:.1%}, within the noise "
                      f"(needed {out.margin:.1%})")  # fmt: skip
    return out


__all__ = ["ENERGY_OBJECTIVES", "EnergyChoice", "choose_energy", "energy_candidates", "paired_log_ratio"]
