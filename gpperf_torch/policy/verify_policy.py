"""The measured dispatch's policy: which candidates a first sight measures, when a measured Triton config is kept
over cuBLAS, and which GEMMs share a measurement (M buckets).

One set of rules for the op (verify.py measures what `candidates` names and keeps what `keep_triton` allows),
`explain` (it lists the candidates) and `gpperf-torch eval --mode verify` (verify_eval.py replays them on measured
data), so that what eval reports is what users get. numpy only, no torch.

The candidates: cuBLAS, always, plus the Triton configs the model predicts fastest: at most `top_k`, only those
predicted within `within` of the fastest, and none where the model is confident that the best of them is much
slower than cuBLAS (the upper bound mean + skip_z * sd of its per-tree log gain below log(skip_below)): there
cuBLAS alone is the candidate and nothing is measured.

Chosen on the frontier of gain against measured candidates per shape (benchmarks/verify_frontier.py; grouped
splits of the public data, models fitted without the test shapes; docs/selection.md, "Measured dispatch"):
geomean over cuBLAS / candidates per shape (cuBLAS included), mean of seeds 0-5:

| rule | H100 families | H100 random | A100 families | A100 random |
| --- | --- | --- | --- | --- |
| predict (dispatch.decide, z = 1) | 1.043 / 0 | 1.021 / 0 | 1.017 / 0 | 1.011 / 0 |
| cuBLAS + top-1 | 1.074 / 2 | 1.030 / 2 | 1.043 / 2 | 1.024 / 2 |
| cuBLAS + top-2 | 1.082 / 3 | 1.031 / 3 | 1.045 / 3 | 1.025 / 3 |
| cuBLAS + top-3 | 1.088 / 4 | 1.033 / 4 | 1.047 / 4 | 1.026 / 4 |
| this default (top-3, within 10%, skip < 0.9x at 1.5 sd) | 1.088 / 3.59 | 1.033 / 3.30 | 1.047 / 3.63 | 1.026 / 3.66 |
| perfect pick | 1.093 | 1.035 | 1.050 | 1.027 |

The keep rule: Triton only where its measured time (plus its host cost) beats cuBLAS's by more than the noise,
`margin = max(min_margin, noise_z * se)` with `se` the standard error of the median of the per-round time ratios,
so that a verified choice is never slower than cuBLAS beyond noise. min_margin = 1%: twice the public data's
median repeat-to-repeat spread (0.5%); on the data it costs 0.0004 of the geomean (A100 random shapes).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np

from .. import env

DEFAULT_TOP_K = 3
DEFAULT_WITHIN = 0.10
DEFAULT_SKIP_BELOW = 0.90
DEFAULT_SKIP_Z = 1.5
MIN_MARGIN = 0.01
NOISE_Z = 2.0
# M buckets: GEMMs whose M lies in one bucket (and that agree in everything else) share one measured choice, so
# a server's new token count costs a lookup. Measured on the public data (benchmarks/verify_frontier.py
# --buckets): the best measured choice of one M used at another M of the same N, K, dtype and layout loses
# nothing at a ratio below 1.09 (50 pairs), but 6% of the geomean at a ratio of 2 on the H100 (134 pairs, 45% of
# them below 0.97x) and 4% on the A100 (120 pairs, 24%): power-of-two buckets are too coarse. Hence 8 buckets
# per octave (a ratio of at most 1.09 within a bucket), and M exact up to 16 (decode batch sizes).
DEFAULT_BUCKET_STEPS = 8
EXACT_M_UP_TO = 16


@dataclass(frozen=True)
class VerifyPolicy:
    """What a first sight measures (candidates) and when it keeps Triton (keep_triton)."""

    top_k: int = DEFAULT_TOP_K
    within: float | None = DEFAULT_WITHIN  # relative to the fastest predicted Triton config; None: no cut
    skip_below: float | None = DEFAULT_SKIP_BELOW  # None: always measure Triton
    skip_z: float = DEFAULT_SKIP_Z
    min_margin: float = MIN_MARGIN
    noise_z: float = NOISE_Z
    exhaustive: bool = False  # every valid candidate (the `exhaustive` mode)

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        if self.exhaustive:
            return "exhaustive"
        if self.within is None and self.skip_below is None:
            return f"verify:{self.top_k}"
        return (f"verify (cuBLAS + top-{self.top_k}, within {self.within:.0%}, skip below {self.skip_below:g}x at"
                f" {self.skip_z:g} sd, margin >= {self.min_margin:.0%})")  # fmt: skip


def top_k_from_env() -> int:
    """GPPERF_VERIFY_TOP_K (an integer >= 1; a bad value warns and means the default)."""
    return env.positive_int("GPPERF_VERIFY_TOP_K", DEFAULT_TOP_K)


def bucket_steps_from_env() -> int:
    """GPPERF_VERIFY_BUCKETS: M buckets per octave (0: every M apart); a bad value warns and means the default."""
    return env.read("GPPERF_VERIFY_BUCKETS", DEFAULT_BUCKET_STEPS, env.parse_non_negative_int)


def default_policy(top_k: int | None = None) -> VerifyPolicy:
    """The product's default (module docstring), with `top_k` Triton configs at most (default:
    GPPERF_VERIFY_TOP_K, else DEFAULT_TOP_K): what the op measures and `eval --mode verify` replays."""
    return replace(VerifyPolicy(), top_k=int(top_k_from_env() if top_k is None else top_k))


def parse(spec: str) -> VerifyPolicy:
    """ "verify" (the default policy) | "verify:K" (cuBLAS plus the top K Triton configs by prediction, no cuts) |
    "exhaustive"; ValueError naming the forms otherwise."""
    s = spec.strip().lower()
    name, colon, arg = s.partition(":")
    if name == "exhaustive" and not colon:
        return VerifyPolicy(exhaustive=True)
    if name != "verify":
        raise ValueError(f"unknown measured mode {spec!r}: use 'verify', 'verify:K' (K >= 0) or 'exhaustive'")
    if not colon:
        return default_policy()
    try:
        k = int(arg)
    except ValueError:
        raise ValueError(f"{spec!r}: K in 'verify:K' must be an integer >= 0, e.g. 'verify:3'") from None
    if k < 0:
        raise ValueError(f"{spec!r}: K in 'verify:K' must be >= 0")
    return VerifyPolicy(top_k=k, within=None, skip_below=None)


def candidates(
    time_ms: np.ndarray,
    is_torch: np.ndarray,
    policy: VerifyPolicy,
    *,
    log_dev: np.ndarray | None = None,
    gain_sd: float | None = None,
) -> list[int]:
    """Indices of the candidates a first sight measures: torch.matmul first (when it is a candidate), then the
    Triton configs best first. time_ms: (n,) predicted (inf: unusable); log_dev: (n, T) per-tree log deviations
    (None: no trees, e.g. the analytic rule, whose calibrated spread of the log gain is then `gain_sd`)."""
    t = np.asarray(time_ms, dtype=np.float64)
    is_torch = np.asarray(is_torch, dtype=bool)
    torch_idx = [int(i) for i in np.flatnonzero(is_torch)][:1]
    tri = np.flatnonzero(~is_torch & np.isfinite(t))
    if not len(tri):
        return torch_idx
    order = tri[np.argsort(t[tri], kind="stable")]
    if policy.exhaustive:
        return torch_idx + [int(i) for i in order]
    best = float(t[order[0]])
    picked = [int(i) for i in order[: policy.top_k] if policy.within is None or t[i] <= best * (1.0 + policy.within)]
    if torch_idx and picked and policy.skip_below is not None and np.isfinite(t[torch_idx[0]]):
        ti, pi = torch_idx[0], picked[0]
        if log_dev is not None:
            dev = np.asarray(log_dev, dtype=np.float64)
            g = (math.log(t[ti]) + dev[ti]) - (math.log(t[pi]) + dev[pi])
            upper = float(g.mean() + policy.skip_z * g.std())
        else:
            upper = math.log(t[ti] / t[pi]) + policy.skip_z * float(gain_sd or 0.0)
        if upper < math.log(policy.skip_below):
            picked = []
    return torch_idx + picked


def margin(noise_rel: float, policy: VerifyPolicy) -> float:
    """The relative lead a Triton config needs over cuBLAS to be kept: at least min_margin, more when noisy."""
    noise = float(noise_rel) if math.isfinite(noise_rel) else math.inf
    return max(policy.min_margin, policy.noise_z * noise)


def keep_triton(
    triton_ms: float, torch_ms: float, noise_rel: float, policy: VerifyPolicy, *, host_triton_ms: float = 0.0,
    host_torch_ms: float = 0.0,
) -> bool:  # fmt: skip
    """Whether the measured Triton time beats cuBLAS's by more than the noise (host costs added to both)."""
    if not (math.isfinite(triton_ms) and triton_ms > 0):
        return False
    if not math.isfinite(torch_ms):
        return True  # cuBLAS failed or was not measured: nothing to be slower than
    return (triton_ms + host_triton_ms) * (1.0 + margin(noise_rel, policy)) < torch_ms + host_torch_ms


def gain_over_torch(times_ms: dict[str, float], choice: str, torch_key: str = "torch") -> float:
    """cuBLAS's measured time over the choice's: 1.0 when cuBLAS is the choice or either was not timed."""
    t, c = times_ms.get(torch_key), times_ms.get(choice)
    return t / c if t and c and math.isfinite(t) and math.isfinite(c) and c > 0 else 1.0


def ratio_noise(ratios) -> tuple[float, float]:
    """(median, standard error of the median as a fraction of it) of paired per-round time ratios: a robust
    sd (1.4826 x MAD) times the median's efficiency factor (1.2533) over sqrt(n). inf with fewer than 3."""
    r = np.asarray(list(ratios), dtype=np.float64)
    r = r[np.isfinite(r) & (r > 0)]
    if not len(r):
        return math.nan, math.inf
    med = float(np.median(r))
    if len(r) < 3:
        return med, math.inf
    mad = float(np.median(np.abs(r - med)))
    return med, 1.2533 * 1.4826 * mad / math.sqrt(len(r)) / med


def choose_measured(
    samples: dict[str, list[float]], policy: VerifyPolicy, *, host_ms: dict | None = None, torch_key: str = "torch"
) -> tuple[str | None, dict[str, float], float]:
    """(kept key, median per key, noise) from interleaved samples (one per round, paired across keys): the
    fastest Triton config by median, kept over cuBLAS only by keep_triton with the noise of their paired
    per-round ratios. None when nothing was timed; the fastest Triton config where cuBLAS was not timed."""
    times = {k: float(np.median(v)) for k, v in samples.items() if len(v)}
    tri = [k for k in times if k != torch_key]
    if not tri:
        return (torch_key if torch_key in times else None), times, math.inf
    best = min(tri, key=lambda k: times[k])
    if torch_key not in times:
        return best, times, math.inf
    _, noise = ratio_noise(x / y for x, y in zip(samples[best], samples[torch_key], strict=False))
    host = host_ms or {}
    keep = keep_triton(times[best], times[torch_key], noise, policy, host_triton_ms=host.get("triton", 0.0),
                       host_torch_ms=host.get("torch", 0.0))  # fmt: skip
    return (best if keep else torch_key), times, noise


# ---- M buckets -----------------------------------------------------------------------------------------------
def m_bucket(m: int, steps: int = DEFAULT_BUCKET_STEPS) -> tuple[int, int]:
    """(lo, hi), inclusive: the M range whose GEMMs share one measured choice. Exact up to EXACT_M_UP_TO (and for
    steps = 0); above, `steps` buckets per octave, bucket i holding 2^(i/steps) <= M < 2^((i+1)/steps)."""
    m = int(m)
    if steps <= 0 or m <= EXACT_M_UP_TO:
        return m, m
    i = math.floor(steps * math.log2(m) + 1e-12)
    lo, hi = math.ceil(2.0 ** (i / steps) - 1e-9), math.ceil(2.0 ** ((i + 1) / steps) - 1e-9) - 1
    lo, hi = min(lo, m), max(hi, m)  # float rounding at a bucket's edge
    return max(lo, EXACT_M_UP_TO + 1), hi


def bucket_key(key: tuple, steps: int = DEFAULT_BUCKET_STEPS) -> tuple:
    """The table key of a selection key (m, n, k, batch, dtype, a_t, b_t, tf32, ...): M replaced by its bucket,
    and whether M is a multiple of 16 (Triton compiles another binary, and unaligned M reads differently)."""
    m, n, k, batch, dtype, a_t, b_t, tf32 = key[:8]
    lo, hi = m_bucket(m, steps)
    return (lo, hi, m % 16 == 0, n, k, batch, dtype, bool(a_t), bool(b_t), bool(tf32))


__all__ = [
    "DEFAULT_BUCKET_STEPS",
    "VerifyPolicy",
    "bucket_key",
    "candidates",
    "choose_measured",
    "default_policy",
    "gain_over_torch",
    "keep_triton",
    "m_bucket",
    "margin",
    "parse",
    "ratio_noise",
]
