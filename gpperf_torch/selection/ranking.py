"""First sight by prediction: the model's valid candidates for a GEMM, their predicted targets, and the order the
objective puts them in (for time, dispatch.decide's choice first).

Stateless: every function takes the device's selection state (state.State: its model, device, policy and the
validity caches it fills) and a selection key. The selector calls these; so do explain, the measured dispatch
(which measures the head of this ranking) and the report.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from .. import kernels
from ..kernels import TileConfig
from ..kernels import facts as kernels_facts
from ..measure.dataset import TORCH_KEY as TORCH  # torch.matmul's (cuBLAS's) name in models, caches and tables
from ..measure.device import DeviceInfo
from ..once import WarnOnce
from ..policy import verify_policy
from ..policy.dispatch import Decision, decide, k_ratio, padded_work, unaligned_transposed
from ..policy.energy_policy import ENERGY_OBJECTIVES
from ..predictor.analytic import CUBLAS, analytic_time_ms
from ..predictor.features import config_matrix
from .objectives import Objective, parse_objective

logger = logging.getLogger(__name__)

_warn_once = WarnOnce(logger)
_warned = _warn_once.seen  # tests clear it


def valid_candidates(st, dtype: str, launch: tuple | None = None) -> list[TileConfig | None]:
    """The model's candidates (None: torch.matmul) that run on this device for `dtype` (cached per state).

    With `launch` = (m, n, k, a_trans, b_trans, tf32), validity uses the compiler's facts for the binary that
    shape runs (kernels.facts: no spills, shared memory within the device), cached per compile class.
    """
    ckey = (dtype,) if launch is None else kernels_facts.class_key(dtype, *launch)
    cached = st.valid.get(ckey)
    if cached is None:
        # Without a model, the analytic rule: every config of the candidate space, and cuBLAS (None) as well.
        cands = st.model.candidates if st.model else [None, *kernels.candidate_space()]
        smem = st.info.max_shared_memory
        if launch is None:
            es = kernels.elem_size(dtype)
            cached = [c for c in cands if c is None or kernels.is_valid(c, elem_size=es, max_shared_memory=smem)]
        else:
            kw = dict(zip(("m", "n", "k", "a_trans", "b_trans", "tf32"), launch, strict=True))
            cap = st.info.capability
            cached = [
                c
                for c in cands
                if c is None
                or kernels_facts.check(c, capability=cap, dtype=dtype, max_shared_memory=smem, **kw) is None
            ]
        if not cached:
            raise ValueError(f"none of the model's {len(cands)} candidates runs on {st.info.name} for {dtype}")
        st.valid[ckey] = cached
        st.valid_matrix[ckey] = (cached, config_matrix(cached))
    return cached


@dataclass
class Scored:
    """One GEMM's valid candidates and what the model predicts for each."""

    cands: list[TileConfig | None]
    preds: dict[str, np.ndarray]  # target -> (n,) predicted, time lifted to the model's floor
    dev: np.ndarray | None  # (n, T) per-tree log deviations of time (None: the analytic rule, no spread)
    host: np.ndarray  # (n,) per-call host cost of each candidate's backend, ms
    is_torch: np.ndarray  # (n,) bool
    decision: Decision | None = None  # dispatch.decide's, for the time objective
    gain_sd: float | None = None  # without trees (the analytic rule): the calibrated spread of the log gain
    fallback: str = ""  # why an energy objective took the time pick ('' when it did not)


def time_fallback_reason(obj: Objective, st) -> str:
    """Why an energy objective is answered with the time pick for this state's model ('' when it is not): the model
    (or the analytic rule) predicts no energy. Energy tracks time within a shape on measured data, so the fastest
    is the best guess (docs/energy.md)."""
    if obj.name not in ENERGY_OBJECTIVES:
        return ""
    have = st.model.targets if st.model is not None else ("time_ms",)
    missing = [t for t in obj.needs if t not in have]
    if not missing:
        return ""
    what = f"the model {st.model.path}" if st.model is not None else "the analytic rule (no model for this GPU)"
    return (
        f"{what} predicts time only, so objective {obj} takes the time pick: energy tracks time within a shape "
        "(R^2 0.994 on the public Ada sweep, docs/energy.md). Measured energy: verify mode or gp.warmup on a GPU "
        "with NVML; predicted energy: a model trained on energy (`gpperf-torch tune` on the GPU, then `train`)"
    )


def objective_for(obj: Objective, st) -> tuple[Objective, str]:
    """The objective this state's model ranks `obj` by, and why it differs ('' when it does not): an energy
    objective without predicted energy takes the time pick, warned once per objective and model. The op, explain
    and the Inductor hook all ask here, so the three answer alike."""
    fallback = time_fallback_reason(obj, st)
    if not fallback:
        return obj, ""
    _warn_once(f"time-fallback:{obj}:{st.model_hash}", "gpperf: %s", fallback)
    return Objective("time"), fallback


def score(st, key: tuple) -> Scored:
    """Every valid candidate of `key` with its predicted targets; for the time objective, the dispatch decision."""
    m, n, k, batch, dtype, a_t, b_t, tf32, obj_s = key
    obj = parse_objective(obj_s)
    obj, fallback = objective_for(obj, st)
    launch = (m, n, k, a_t, b_t, tf32)
    cands = valid_candidates(st, dtype, launch)
    entry = st.valid_matrix.get(kernels_facts.class_key(dtype, *launch))
    matrix = entry[1] if entry is not None and entry[0] is cands else config_matrix(cands)
    dev = None
    have = st.model.targets if st.model is not None else ("time_ms",)
    missing = [t for t in obj.needs if t not in have]
    if missing:  # power_cap without predicted power: a cap is a constraint, the time pick does not honour it
        where = f"the model for {st.info.name} ({st.model.path})" if st.model else "the analytic rule"
        raise ValueError(
            f"objective {obj} needs predicted {', '.join(missing)}, but {where} predicts only {', '.join(have)}. "
            "Measure power on the GPU with `gpperf-torch tune` (NVML) and `gpperf-torch train`, or use another "
            "objective"
        )
    if st.model is None:
        preds = {"time_ms": analytic_time_ms(m * batch, n, k, dtype, cands, st.info)}
    else:
        # Batched GEMMs are scored as one GEMM of batch*M rows (same tiles and waves; see DESIGN's key).
        preds, dev = st.model.predict_trees(m * batch, n, k, dtype, a_t, b_t, tf32=tf32, cfgs=matrix, device=st.info)
    is_torch = np.array([c is None for c in cands])
    host = np.where(is_torch, st.policy.host_ms.get("torch", 0.0), st.policy.host_ms.get("triton", 0.0))
    decision = None
    gain_sd = CUBLAS["gain_sd"] if st.model is None else None
    if obj.name == "time":
        kmax = st.model.meta.get("k_ratio_max") if st.model is not None else None
        decision = decide(preds["time_ms"], is_torch, st.policy, log_dev=dev, work=padded_work(m * batch, n, k, matrix),
                          unaligned=bool(unaligned_transposed(m, n, k, a_t, b_t)),
                          k_ratio=float(k_ratio(m * batch, n, k)), k_ratio_max=kmax,
                          gain_sd=gain_sd)  # fmt: skip
    return Scored(cands, preds, dev, host, is_torch, decision, gain_sd, fallback)


def measured_head(s: Scored, policy) -> list[TileConfig | None]:
    """The candidates a measured first sight times under `policy` (verify_policy.VerifyPolicy): cuBLAS first,
    always, even where the model does not list it, then the Triton configs verify_policy.candidates names."""
    idx = verify_policy.candidates(s.preds["time_ms"], s.is_torch, policy, log_dev=s.dev, gain_sd=s.gain_sd)
    cands = [s.cands[i] for i in idx]
    if None not in cands:
        cands.insert(0, None)
    return cands


def rank(st, key: tuple) -> list[tuple[TileConfig | None, dict[str, float]]]:
    """All valid candidates for `key`, best first for its objective, each with its predicted targets."""
    return rank_with_decision(st, key)[0]


def rank_with_decision(st, key: tuple) -> tuple[list[tuple[TileConfig | None, dict]], Decision | None]:
    """rank() and, for the time objective, the dispatch decision that put the first candidate first.

    Time: dispatch.decide (the one policy eval measures) picks the first; the rest follow by predicted time plus
    host cost. Each candidate's dict has its predicted targets, `time_sd_log` (the spread of its log time over
    the rank forest's trees) and `host_ms`. Other objectives order by their own rule (order_by_objective)."""
    s = score(st, key)
    return ranked_rows(s, parse_objective(key[-1]), st.info), s.decision


def ranked_rows(s: Scored, obj: Objective, info: DeviceInfo) -> list[tuple[TileConfig | None, dict]]:
    d = s.decision
    if d is not None:
        # The choice first; when that is torch.matmul, the Triton pick it was weighed against next.
        head = [d.index]
        if d.triton_index is not None and d.triton_index != d.index:
            head.append(d.triton_index)
        rest = np.argsort(s.preds["time_ms"] + s.host, kind="stable")
        order = np.concatenate([head, rest[~np.isin(rest, head)]]).astype(np.int64)
    else:
        order = order_by_objective(obj, s.preds, info)
    sd = s.dev.std(axis=1) if s.dev is not None else np.zeros(len(s.cands))
    rows = []
    for i in order:
        row = {t: float(v[i]) for t, v in s.preds.items()}
        row.update(time_sd_log=float(sd[i]), host_ms=float(s.host[i]))
        rows.append((s.cands[i], row))
    return rows


def order_by_objective(obj: Objective, preds: dict[str, np.ndarray], info: DeviceInfo | None = None) -> np.ndarray:
    """Candidate indices best first for `obj` from predicted targets (time: by predicted time alone)."""
    t = preds.get("time_ms")
    if obj.name == "time":
        score_ = t
    elif obj.name == "energy":
        score_ = preds["energy_j"]
    elif obj.name == "edp":
        score_ = preds["energy_j"] * t
    elif obj.name == "balanced":
        # Least energy among configs predicted within `slack` of the fastest; the rest after, by time.
        ok = t <= t.min() * (1 + obj.value)
        score_ = np.where(ok, preds["energy_j"], np.inf)
        return np.lexsort((t, score_))
    else:  # power_cap: fastest under the cap; if none fits, the least power first (warned)
        p = preds["power_w"]
        ok = p <= obj.value
        if not ok.any():
            _warn_once(f"cap:{obj.value}", "gpperf: no config is predicted under %s W; taking the lowest power",
                       obj.value)  # fmt: skip
            return np.argsort(p, kind="stable")
        score_ = np.where(ok, t, np.inf)
        return np.lexsort((p, score_))
    return np.argsort(score_, kind="stable")


__all__ = [
    "TORCH",
    "Scored",
    "measured_head",
    "order_by_objective",
    "rank",
    "rank_with_decision",
    "score",
    "time_fallback_reason",
    "valid_candidates",
]
