"""`gpperf-torch eval --mode verify[:K]`: the measured dispatch replayed on measured data.

Per group (one GEMM on one GPU) with a cuBLAS time: verify_policy.candidates picks, from the model's predictions
for the group's measured Triton configs, the ones a first sight would time (cuBLAS always among them); the
fastest measured of those is kept over cuBLAS only by verify_policy.keep_triton (the data's times are medians
of repeats: the noise term is the policy's minimum margin). The same functions the op uses, so that what eval
reports is what users get. `verify` alone is the product's default policy; `verify:K` is cuBLAS plus the
top K Triton configs by prediction, without cuts.
"""

from __future__ import annotations

import math

import numpy as np

from ..kernels import facts as kernels_facts
from ..measure.dataset import Table
from ..policy import verify_policy
from ..policy.verify_policy import VerifyPolicy
from .evaluation import SLOWER_THRESHOLD, _geomean, _groups, _spread
from .features import table_features

KEYS = (
    "verify_policy", "verify_n_shapes", "verify_speedup_vs_extern_geomean", "verify_speedup_vs_extern_p10",
    "verify_speedup_vs_extern_min", "verify_share_slower_than_extern_3pct", "verify_share_dispatched_to_extern",
    "verify_candidates_per_shape", "verify_share_unmeasured", "verify_compiles", "verify_compiles_config_dtype_layout",
    "verify_speedup_vs_extern_oracle_geomean", "verify_share_of_oracle_gain",
)  # fmt: skip


def replay(predictor, table: Table, policy: VerifyPolicy, *, device_lookup=None) -> dict[str, np.ndarray]:
    """Per group with a finite cuBLAS time and a Triton config that ran: "speedup" of the measured dispatch over
    cuBLAS, "oracle" (the best measured over cuBLAS, cuBLAS included), "n_candidates" (cuBLAS included),
    "to_extern", and the list "compile_keys" of (config, compile class) of every Triton candidate measured."""
    pred, dev = _spread(predictor, table_features(table, device_lookup))
    pt = pred[:, 0]
    out: dict[str, list] = {"speedup": [], "oracle": [], "n_candidates": [], "to_extern": [], "compile_keys": [],
                            "layout_keys": []}  # fmt: skip
    cols = {c: table[c] for c in ("m", "n", "k", "dtype", "a_trans", "b_trans", "tf32")}
    for g in _groups(table):
        finite = np.isfinite(g.triton_time)
        if not finite.any() or g.torch_row is None or not math.isfinite(g.torch_time):
            continue
        tri_rows = g.triton_rows[finite]
        tri_time = g.triton_time[finite]
        tri_keys = [k for k, ok in zip(g.triton_keys, finite, strict=True) if ok]
        rows = np.append(tri_rows, g.torch_row)
        is_torch = np.zeros(len(rows), dtype=bool)
        is_torch[-1] = True
        idx = verify_policy.candidates(pt[rows], is_torch, policy, log_dev=None if dev is None else dev[rows])
        measured = [i for i in idx if not is_torch[i]]
        t_torch = g.torch_time
        speedup, to_extern = 1.0, True
        if measured:
            j = min(measured, key=lambda i: tri_time[i])
            if verify_policy.keep_triton(float(tri_time[j]), t_torch, 0.0, policy):
                speedup, to_extern = t_torch / float(tri_time[j]), False
        r0 = int(g.torch_row)
        shape = {c: v[r0] for c, v in cols.items()}
        ckey = kernels_facts.class_key(str(shape["dtype"]), int(shape["m"]), int(shape["n"]), int(shape["k"]),
                                       bool(shape["a_trans"]), bool(shape["b_trans"]), bool(shape["tf32"]))  # fmt: skip
        layout = (str(shape["dtype"]), bool(shape["a_trans"]), bool(shape["b_trans"]), bool(shape["tf32"]))
        out["compile_keys"].append([(tri_keys[i], ckey) for i in measured])
        out["layout_keys"].append([(tri_keys[i], layout) for i in measured])
        out["speedup"].append(speedup)
        out["oracle"].append(t_torch / min(t_torch, float(tri_time.min())))
        out["n_candidates"].append(len(idx))  # cuBLAS (a candidate of every group here) included
        out["to_extern"].append(to_extern)
    arrays = {k: np.asarray(v, dtype=np.float64) for k, v in out.items() if k not in ("compile_keys", "layout_keys")}
    arrays["compile_keys"] = out["compile_keys"]  # type: ignore[assignment]
    arrays["layout_keys"] = out["layout_keys"]  # type: ignore[assignment]
    return arrays


def verify_metrics(predictor, table: Table, policy: VerifyPolicy | None = None, *, device_lookup=None) -> dict:
    """The verify_* keys (KEYS) of the measured dispatch under `policy` (default: the product's) on `table`."""
    policy = policy or verify_policy.default_policy()
    r = replay(predictor, table, policy, device_lookup=device_lookup)
    s = r["speedup"]
    res: dict = {"verify_policy": str(policy), "verify_n_shapes": len(s)}
    if not len(s):
        return res
    oracle = r["oracle"]
    gain, best = float(np.sum(np.log(s))), float(np.sum(np.log(oracle)))
    res.update(
        verify_speedup_vs_extern_geomean=_geomean(s),
        verify_speedup_vs_extern_p10=float(np.quantile(s, 0.1)),
        verify_speedup_vs_extern_min=float(s.min()),
        verify_share_slower_than_extern_3pct=float(np.mean(s < SLOWER_THRESHOLD)),
        verify_share_dispatched_to_extern=float(np.mean(r["to_extern"])),
        verify_candidates_per_shape=float(np.mean(r["n_candidates"])),
        verify_share_unmeasured=float(np.mean(r["n_candidates"] <= 1)),  # cuBLAS alone: nothing to time
        verify_compiles=len({k for ks in r["compile_keys"] for k in ks}),
        verify_compiles_config_dtype_layout=len({k for ks in r["layout_keys"] for k in ks}),
        verify_speedup_vs_extern_oracle_geomean=_geomean(oracle),
        verify_share_of_oracle_gain=gain / best if best > 0 else math.nan,
    )
    return res


__all__ = ["KEYS", "replay", "verify_metrics"]
