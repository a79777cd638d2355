"""The dispatch policy: which candidate runs a GEMM, a Triton config or torch.matmul (cuBLAS).

One function, `decide`, used by the op (selector.rank / choose), `explain`, `gpperf-torch select`,
`gpperf-torch eval` and the report alike, so that what eval measures is what users get. It sees, per candidate,
the predicted kernel time, the per-tree spread of the model's rank forest (its uncertainty, in log units), and a
per-backend host cost per call (eager mode: a Triton launch from Python costs more than a cuBLAS call).

The rule:
1. the Triton pick: the fastest predicted Triton config; configs predicted within `tie_rel` of it count as
   tied (below the model's resolution, e.g. tiny shapes at the time floor) and the tie goes to the config with
   the least padded work (the tile that fits the problem), not to whichever the candidate list names first;
2. Triton over cuBLAS only when confident: with per-tree predicted gains
   g_t = log(t_torch,t + host_torch) - log(t_pick,t + host_triton), the pick runs when
   mean(g) - z * sd(g) > margin; otherwise torch.matmul. z is calibrated on grouped held-out data at training
   time and stored in the model's JSON (`dispatch`); see docs/selection.md. Where a transposed operand's
   leading dimension is unaligned (unaligned_transposed), z is at least `z_unaligned`;
3. torch.matmul, whatever the trees say, for a shape whose K is heavier against its output than in every
   training shape (k_ratio above the model's `k_ratio_max`): there cuBLAS splits K and the trees, which have
   never seen such a shape, agree on a gain that is not there.

No scikit-learn, no torch: numpy only (the op imports this module).
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .. import env
from ..paths import cache_dir, cannot_write, disk_cache_enabled, slug

logger = logging.getLogger(__name__)

# Per-call host cost in eager mode, milliseconds, used when neither the model nor a GPU-check measurement gives
# one. Published figures for Triton 3.5-3.7 (the issue's): a launch through `kernel[grid]` with ~20 arguments
# costs about 13-27 us of Python and driver time, `torch.matmul` about 8 us. These are host (CPU) costs: they
# matter when the host, not the GPU, is the bottleneck, which is the case for GEMMs of a few microseconds.
DEFAULT_HOST_MS = {"triton": 0.020, "torch": 0.008}
DEFAULT_Z = 1.0  # used by models without a calibrated `dispatch` section (and the analytic rule: no spread)
DEFAULT_MARGIN = 0.0
DEFAULT_TIE_REL = 0.01  # about twice the public data's measurement noise (median 0.5%)
# Shapes where a transposed operand's leading dimension is not a multiple of UNALIGNED_ELEMS: Triton cannot
# vectorise its loads along that dimension and its speed then hangs on warps and stages in ways the forest does not
# learn (H100, 50265x512x8192 with A transposed: the best config 2.3x faster than cuBLAS, the pick 0.49x, with the
# trees agreeing on a 1.42x gain, 6.9 sd off). For them the confidence z is at least DEFAULT_Z_UNALIGNED.
# Measured (benchmarks/dispatch_eval.py, docs/predictor.md): whole HF families held out, seeds 0-2, the worst
# shape 0.486x -> 0.912x (H100) and 0.891x -> 0.936x (A100) at 2.5, at 0.4% of the H100 geomean on the other
# tests. Over 9 family runs (3 folds x 3 forest seeds) the same shape still ran at 0.716x in one run at 2.5 or 3.0
# (a 1.48x gain predicted, 3.4 sd of the trees above 1): 3.5 removes it, for 0.07% of the H100 random split's
# geomean and nothing elsewhere (sending these shapes to cuBLAS outright costs 0.2% there).
# The floor leaves out leading dimensions below UNALIGNED_MIN_LD elements (shorter than the widest tile: the
# operand is a thin sliver whose narrow loads are a small share of the traffic). The slow shape above, like the
# other real-model shapes of this class, has a long unaligned dimension (vocabularies of 50265, 30522, 128100
# rows), while the short ones (2, 4, 43) ran Triton 1.3-1.7x faster than cuBLAS and the floor held them back.
# Measured on the calibration splits of benchmarks/dispatch_eval.py (both GPUs, seeds 0-2): the unaligned shapes
# z = 1 would dispatch, leading dimension < 128: 240 dispatches, geomean 1.44x, 1% below 0.97x, none below 0.8x
# (worst 0.85x); >= 128: 152, geomean 1.27x, 11% below 0.97x, 7% below 0.8x (worst 0.49x). No shape has one
# between 64 and 1024, so any threshold there splits alike.
UNALIGNED_ELEMS = 8
UNALIGNED_MIN_LD = 128
DEFAULT_Z_UNALIGNED = 3.5
# The K guard. k_ratio = log2 K - (log2 M + log2 N) / 2: how many times longer the reduction is than the side of
# the output, in powers of two. Weight gradients of real models (M, N of a few hundred, K of 16k-32k tokens) sit
# far above any random training shape: there cuBLAS splits K over the SMs, while a template without split-K runs
# a handful of programs each looping over all of K; and the trees, extrapolating, agree on a gain. Measured
# (benchmarks/dispatch_eval.py, H100, trained on random shapes, evaluated on every HF shape, seeds 0-2): the guard
# lifted the geomean over cuBLAS from 0.999 to 1.017, the worst shape from 0.36x to 0.73x and the shapes below
# 0.97x from 3.5% to 2.3%. Where the training data holds such shapes it seldom fires (0.4% of the shapes of the
# family test, 1.1% of the HF split, none of the random split; the family geomean is the same with it and without
# it). M- or N-heavy guards on the same rule cost 0.5% on the random split and removed no slow shape.
HOST_COST_FILE = "host_cost-{slug}.json"  # in paths.cache_dir(): written by benchmarks/gpu_check.py


@dataclass(frozen=True)
class Policy:
    """The dispatch parameters: confidence z, log margin, tie tolerance and per-backend host cost (ms)."""

    z: float = DEFAULT_Z
    margin: float = DEFAULT_MARGIN
    tie_rel: float = DEFAULT_TIE_REL
    z_unaligned: float = DEFAULT_Z_UNALIGNED  # the least z for shapes with an unaligned transposed operand
    host_ms: dict = field(default_factory=lambda: dict(DEFAULT_HOST_MS))
    host_source: str = "default"  # "default" | "model" | the path of a GPU-check measurement | "none"

    @classmethod
    def from_meta(cls, meta: dict | None) -> Policy:
        """The policy a model's JSON records (`dispatch`: z, margin, tie_rel, host_ms), defaults for the rest."""
        d = dict((meta or {}).get("dispatch") or {})
        host = d.get("host_ms")
        return cls(
            z=float(d.get("z", DEFAULT_Z)),
            margin=float(d.get("margin", DEFAULT_MARGIN)),
            tie_rel=float(d.get("tie_rel", DEFAULT_TIE_REL)),
            z_unaligned=float(d.get("z_unaligned", DEFAULT_Z_UNALIGNED)),
            host_ms={**DEFAULT_HOST_MS, **{k: float(v) for k, v in host.items()}} if host else dict(DEFAULT_HOST_MS),
            host_source="model" if host else "default",
        )

    def with_host(self, host_ms: dict | None, source: str) -> Policy:
        return self if not host_ms else replace(self, host_ms={**self.host_ms, **host_ms}, host_source=source)

    def as_dict(self) -> dict:
        return {"z": self.z, "margin": self.margin, "tie_rel": self.tie_rel, "z_unaligned": self.z_unaligned,
                "host_ms": dict(self.host_ms)}  # fmt: skip

    def z_for(self, unaligned: bool) -> float:
        """The confidence z of a shape: at least z_unaligned where a transposed operand is unaligned."""
        return max(self.z, self.z_unaligned) if unaligned else self.z


NO_HOST_COST = {"triton": 0.0, "torch": 0.0}


def k_ratio(m, n, k):
    """log2 K - (log2 M + log2 N) / 2 (elementwise for arrays): how K-heavy a GEMM is, the K guard's measure.
    Batched GEMMs count their batch in M, as the selector scores them."""
    m, n, k = (np.maximum(np.asarray(x, dtype=np.float64), 1.0) for x in (m, n, k))
    return np.log2(k) - 0.5 * (np.log2(m) + np.log2(n))


def beyond_k_range(ratio: float | None, ratio_max: float | None) -> bool:
    """True where a shape's k_ratio is above the model's training range (None: no range recorded, no guard)."""
    return ratio is not None and ratio_max is not None and float(ratio) > float(ratio_max) + 1e-9


def unaligned_transposed(m, n, k, a_trans, b_trans):
    """True (elementwise for arrays) where a transposed operand's leading dimension is not a multiple of
    UNALIGNED_ELEMS and at least UNALIGNED_MIN_LD elements long: A transposed (A[m, k] stored k-major) has leading
    dimension m, B transposed has k."""
    m, n, k = (np.asarray(x, dtype=np.int64) for x in (m, n, k))
    a_t, b_t = np.asarray(a_trans).astype(bool), np.asarray(b_trans).astype(bool)
    long_odd_m = (m % UNALIGNED_ELEMS != 0) & (m >= UNALIGNED_MIN_LD)
    long_odd_k = (k % UNALIGNED_ELEMS != 0) & (k >= UNALIGNED_MIN_LD)
    return (a_t & long_odd_m) | (b_t & long_odd_k)


@dataclass
class Decision:
    """What `decide` chose, and why (for explain)."""

    index: int  # the chosen candidate
    triton_index: int | None  # the Triton pick (None: no Triton candidate)
    torch_index: int | None
    gain: float = math.nan  # predicted log gain of the Triton pick over torch, host costs included (mean of trees)
    gain_sd: float = math.nan  # its spread over the trees
    tied: int = 1  # Triton configs tied with the fastest (the tie went to the least padded work)
    reason: str = ""
    guard: str = ""  # "k_range" when the K guard sent the shape to torch.matmul whatever the prediction

    @property
    def to_extern(self) -> bool:
        return self.index == self.torch_index


def padded_work(m: int, n: int, k: int, cfg: np.ndarray) -> np.ndarray:
    """(n_cfg,) multiply-adds each config computes, padding included (a config matrix, features.config_matrix;
    torch rows, all zeros, get inf): the tie-break among configs the model cannot tell apart."""
    cfg = np.asarray(cfg, dtype=np.float64)
    bm, bn, bk, sk = np.maximum(cfg[:, 0], 1), np.maximum(cfg[:, 1], 1), np.maximum(cfg[:, 2], 1), cfg[:, 4]
    kk = np.maximum(bk * np.maximum(sk, 1), 1)
    work = np.ceil(m / bm) * bm * np.ceil(n / bn) * bn * np.ceil(k / kk) * kk
    return np.where(cfg[:, 0] == 0, np.inf, work)


def decide(
    time_ms: np.ndarray,
    is_torch: np.ndarray,
    policy: Policy,
    *,
    log_dev: np.ndarray | None = None,
    work: np.ndarray | None = None,
    unaligned: bool = False,
    k_ratio: float | None = None,
    k_ratio_max: float | None = None,
    gain_sd: float | None = None,
) -> Decision:
    """Choose among candidates of one GEMM.

    time_ms: (n,) predicted kernel times (inf: unusable); is_torch: (n,) bool; log_dev: (n, T) per-tree log
    deviations from time_ms of the rank forest (None: no spread, e.g. the analytic rule); work: (n,) padded work
    for the tie-break (None: no tie-break); unaligned: the shape has an unaligned transposed operand
    (unaligned_transposed), so its z is at least policy.z_unaligned; k_ratio: the shape's (dispatch.k_ratio) and
    k_ratio_max the model's training range (None: no K guard): above it, torch.matmul; gain_sd: without trees
    (log_dev None), the uncertainty of the predicted log gain (the analytic rule's calibrated spread; None: 0).
    """
    t = np.asarray(time_ms, dtype=np.float64)
    is_torch = np.asarray(is_torch, dtype=bool)
    tri = np.flatnonzero(~is_torch & np.isfinite(t))
    torch_idx = np.flatnonzero(is_torch & np.isfinite(t))
    torch_i = int(torch_idx[0]) if len(torch_idx) else None
    if not len(tri):
        if torch_i is None:
            raise ValueError("dispatch: no candidate has a finite predicted time")
        return Decision(torch_i, None, torch_i, reason="no Triton candidate")
    best = float(t[tri].min())
    tied = tri[t[tri] <= best * (1.0 + policy.tie_rel)]
    if work is not None and len(tied) > 1:
        w = np.asarray(work, dtype=np.float64)[tied]
        least = tied[w == w.min()]
        pick = int(least[np.argmin(t[least])])
    else:
        pick = int(tri[np.argmin(t[tri])])
    if torch_i is None:
        return Decision(pick, pick, None, tied=len(tied), reason="no torch.matmul candidate")
    h_tri, h_torch = policy.host_ms.get("triton", 0.0), policy.host_ms.get("torch", 0.0)
    if log_dev is not None:
        dev = np.asarray(log_dev, dtype=np.float64)
        g = np.log(t[torch_i] * np.exp(dev[torch_i]) + h_torch) - np.log(t[pick] * np.exp(dev[pick]) + h_tri)
        gain, sd = float(g.mean()), float(g.std())
    else:
        gain, sd = math.log((t[torch_i] + h_torch) / (t[pick] + h_tri)), float(gain_sd or 0.0)
    z = policy.z_for(bool(unaligned))
    bound = gain - z * sd
    guard = "k_range" if beyond_k_range(k_ratio, k_ratio_max) else ""
    if guard:
        idx = torch_i
        reason = (
            f"torch.matmul: K is heavier than in every training shape (log2 K - (log2 M + log2 N)/2 ="
            f" {k_ratio:.2f} > {k_ratio_max:.2f}), where cuBLAS splits K and the model has no evidence"
            f" (Triton predicted {math.exp(gain):.3f}x, mean - {z:g} sd = {math.exp(bound):.3f}x, not trusted)"
        )
    elif bound > policy.margin:
        idx = pick
        reason = (
            f"Triton: predicted {math.exp(gain):.3f}x faster than torch.matmul (host cost included),"
            f" confident: mean - {z:g} sd = {math.exp(bound):.3f}x > {math.exp(policy.margin):.3f}x"
        )
    else:
        idx = torch_i
        why = "predicted slower" if gain <= policy.margin else "gain not confident"
        reason = (
            f"torch.matmul: Triton {why} ({math.exp(gain):.3f}x predicted, host cost included;"
            f" mean - {z:g} sd = {math.exp(bound):.3f}x <= {math.exp(policy.margin):.3f}x)"
        )
    if unaligned and z > policy.z and not guard:
        reason += (
            f"; z raised to {z:g}: a transposed operand's leading dimension is not a multiple of {UNALIGNED_ELEMS}"
            f" (and at least {UNALIGNED_MIN_LD} long)"
        )
    if len(tied) > 1:
        reason += f"; {len(tied)} Triton configs tied within {policy.tie_rel:.0%}: least padded work won"
    return Decision(idx, pick, torch_i, gain=gain, gain_sd=sd, tied=len(tied), reason=reason, guard=guard)


def floor_scale(time_ms: np.ndarray, floor_ms: float | None) -> float:
    """The factor that lifts one shape's predicted times so that the fastest is at the model's time floor (the
    fastest training row; 1.0 when above it). Below the training sizes the shape-level forest extrapolates to
    nanoseconds; one factor for the whole shape keeps every ratio between its candidates. It matters here
    because host costs add to absolute times."""
    t = np.asarray(time_ms, dtype=np.float64)
    t = t[np.isfinite(t)]
    lowest = float(t.min()) if len(t) else 0.0
    return floor_ms / lowest if floor_ms and 0.0 < lowest < floor_ms else 1.0


# ---- host cost measured on this machine ------------------------------------------------------------------
def host_cost_path(device_name: str, cache: Path | None = None) -> Path:
    """Where the GPU check stores the measured per-call host cost of `device_name` (a small JSON)."""
    return Path(cache_dir() if cache is None else cache) / HOST_COST_FILE.format(slug=slug(device_name))


def write_host_cost(device_name: str, host_ms: dict, *, source: str = "", cache: Path | None = None) -> Path | None:
    """Record a measured host cost ({"triton": ms, "torch": ms}) for `device_name` (atomic write). Into the cache
    directory (`cache` None) only with the disk cache on (GPPERF_DISK_CACHE); None when nothing was written."""
    for k in ("triton", "torch"):
        v = host_ms.get(k)
        if not isinstance(v, (int, float)) or not (0.0 <= v < 10.0):
            raise ValueError(f"host cost {k!r} must be milliseconds in [0, 10), got {v!r}")
    if cache is None and not disk_cache_enabled():
        return None
    path = host_cost_path(device_name, cache)
    doc = {"device": device_name, "host_ms": {k: float(host_ms[k]) for k in ("triton", "torch")}, "source": source}
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(doc, indent=1) + "\n")
        os.replace(tmp, path)
    except OSError as e:
        cannot_write(path, e)
        return None
    return path


def read_host_cost(device_name: str, cache: Path | None = None) -> tuple[dict | None, str]:
    """(host_ms, path) measured for `device_name`, or (None, "") when there is none or it is unreadable."""
    path = host_cost_path(device_name, cache)
    if not path.is_file():
        return None, ""
    try:
        doc = json.loads(path.read_text())
        host = {k: float(doc["host_ms"][k]) for k in ("triton", "torch")}
        if not all(0.0 <= v < 10.0 for v in host.values()):
            raise ValueError(f"out of range: {host}")
        return host, str(path)
    except (OSError, ValueError, KeyError, TypeError) as e:
        logger.warning("gpperf: ignoring unreadable host-cost file %s (%s)", path, e)
        return None, ""


def policy_for(meta: dict | None, device_name: str | None = None) -> Policy:
    """The policy of a model on a device: the model's, with the GPU check's measured host cost when one exists.
    GPPERF_HOST_COST=0 sets the host cost to zero (e.g. under CUDA graphs, where launches are replayed)."""
    policy = Policy.from_meta(meta)
    if not env.flag("GPPERF_HOST_COST", True):
        return replace(policy, host_ms=dict(NO_HOST_COST), host_source="none")
    if device_name:
        host, path = read_host_cost(device_name)
        policy = policy.with_host(host, path)
    return policy


__all__ = [
    "DEFAULT_HOST_MS",
    "Decision",
    "Policy",
    "UNALIGNED_MIN_LD",
    "beyond_k_range",
    "decide",
    "host_cost_path",
    "k_ratio",
    "padded_work",
    "policy_for",
    "read_host_cost",
    "write_host_cost",
]
