"""`gpperf_torch.explain(M, N, K, ...)`: the ranked candidates of one shape, with why the first is first.

The same path as the op's first sight (ranking.score and dispatch.decide for prediction, verify_policy for the
candidates the measured dispatch would time), and, where this device's verified table holds the shape's bucket,
the measured choice that the op would use instead.
"""

from __future__ import annotations

import math

import torch

from .. import kernels
from ..measure.device import device_for
from ..policy import verify_policy
from ..policy.energy_policy import ENERGY_OBJECTIVES, energy_candidates
from . import table
from .objectives import current_objective, parse_objective
from .ranking import TORCH, measured_head, ranked_rows, score
from .state import default_device, state, state_for_info

DTYPE_ALIASES = {"fp16": "float16", "half": "float16", "bf16": "bfloat16", "fp32": "float32", "float": "float32"}


def explain(
    m: int,
    n: int,
    k: int,
    *,
    dtype: str | torch.dtype = "float16",
    a_trans: bool = False,
    b_trans: bool = False,
    objective: str | None = None,
    gpu: str | None = None,
    device: torch.device | str | None = None,
    batch: int = 1,
) -> list[dict]:
    """Ranked candidates for a shape: dicts with config, backend, predicted time/power/energy, rank.

    `gpu="h100"` uses that GPU's shipped model (works without a GPU); else the current (or given) device. The
    first row also says why (the dispatch decision), which candidates the measured dispatch (`verify`) times
    (`verify_candidates`), and, when this device's verified table has the shape, its measured choice (`measured`).
    """
    dtype_s = str(dtype).replace("torch.", "")
    dtype_s = DTYPE_ALIASES.get(dtype_s, dtype_s)
    kernels.elem_size(dtype_s)
    obj = parse_objective(objective or current_objective())
    if gpu is not None:
        st = state_for_info(device_for(gpu=gpu))
    else:
        st = state(torch.device(device) if device is not None else default_device())
    tf32 = dtype_s == "float32" and bool(kernels.tf32_allowed())
    key = (m, n, k, batch, dtype_s, bool(a_trans), bool(b_trans), tf32, str(obj))
    s = score(st, key)
    rows = ranked_rows(s, obj, st.info)
    decision = s.decision
    out = []
    for i, (cfg, pred) in enumerate(rows):
        row = {
            "rank": i + 1,
            "backend": TORCH if cfg is None else "triton",
            "config": TORCH if cfg is None else cfg.key,
            **pred,
            "model": str(st.model.path) if st.model else "analytic",
            "objective": str(obj),
            "device": st.info.name,
        }
        if i == 0:
            row["why"] = decision.reason if decision is not None else f"best predicted {obj}"
            if s.fallback:  # an energy objective answered with the time pick: say so, and why
                row["why"] = f"the time pick (objective {obj}, no predicted energy): {row['why']}"
                row["objective_note"] = s.fallback
            if decision is not None and decision.torch_index is not None and decision.triton_index is not None:
                row.update(
                    triton_pick=rows[0 if decision.index == decision.triton_index else 1][0].key,
                    predicted_gain_vs_torch=math.exp(decision.gain),
                    gain_sd_log=decision.gain_sd,
                )
            if decision is not None and decision.guard:
                row["guard"] = decision.guard
            row["policy"] = {**st.policy.as_dict(), "host_source": st.policy.host_source}
            if obj.name in ("time", *ENERGY_OBJECTIVES):
                vp = verify_policy.default_policy()
                cands = measured_head(s, vp)
                if obj.name in ENERGY_OBJECTIVES:
                    idx = [s.cands.index(c) for c in cands if c in s.cands]
                    more = energy_candidates(idx, s.preds.get("energy_j"), s.is_torch, vp.top_k)
                    cands += [s.cands[j] for j in more if s.cands[j] not in cands]
                row["verify_candidates"] = [TORCH if c is None else c.key for c in cands]
                row["verify_policy"] = vp.as_dict()
                entry = table.for_device(st.info).lookup(key, objective=str(obj))
                if entry is not None:
                    row["measured"] = entry.as_dict()
        out.append(row)
    return out


__all__ = ["explain"]
