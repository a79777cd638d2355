"""Evaluation: prediction accuracy and selection metrics of a model on measured data.

Selection metrics are per group (one GEMM problem on one GPU): the model picks the Triton config with the
lowest predicted time among those measured for the group, and regret = measured time of the pick / measured
time of the group's best Triton config. `predictor` is anything with `targets` and `predict_features` (a
loaded Predictor or a fitted forest), so held-out numbers measure what ships.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from ..measure.dataset import TORCH_KEY, Table
from ..policy.dispatch import k_ratio, unaligned_transposed
from .features import table_features

ENERGY_TARGETS = ("power_w", "energy_j")


def energy_rows(table: Table, rows: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask: ok rows (of `rows`) with a finite positive power_w and energy_j."""
    sel = table.ok if rows is None else (np.asarray(rows) & table.ok)
    for t in ENERGY_TARGETS:
        col = table[t] if t in table else np.full(len(table), np.nan)
        sel = sel & np.isfinite(col) & (col > 0)
    return sel


def rank_static_configs(table: Table, rows: np.ndarray) -> list[str]:
    """Triton configs ordered by the number of groups (within `rows`) where each was the fastest."""
    wins: dict[str, int] = {}
    for g in _groups(table, rows):
        if g.triton_best is not None:
            wins[g.triton_best] = wins.get(g.triton_best, 0) + 1
    return sorted(wins, key=lambda k: (-wins[k], k))


# ---- evaluation ----------------------------------------------------------------------------------------
@dataclass
class _Group:
    index: int
    size: float  # log2(M*N*K)
    triton_keys: list[str]
    triton_rows: np.ndarray  # one row per distinct config (duplicates: the first)
    triton_time: np.ndarray  # measured, inf = failed
    torch_row: int | None
    torch_time: float
    unaligned: bool = False  # a transposed operand's leading dimension unaligned (dispatch.unaligned_transposed)
    k_ratio: float = 0.0  # log2 K - (log2 M + log2 N) / 2 (dispatch.k_ratio, the K guard's measure)

    @property
    def triton_best(self) -> str | None:
        if not len(self.triton_time) or not np.isfinite(self.triton_time).any():
            return None
        return self.triton_keys[int(np.argmin(self.triton_time))]


def _groups(table: Table, rows: np.ndarray | None = None) -> list[_Group]:
    """Per-group views of the measured candidates (duplicate measurements of one config: their median)."""
    gid = table.group_id
    idx = np.flatnonzero(rows) if rows is not None else np.arange(len(table))
    idx = idx[np.argsort(gid[idx], kind="stable")]
    bounds = np.flatnonzero(np.diff(gid[idx])) + 1
    t_all = np.where(table.ok, table["time_ms"], np.inf)
    backend = table["backend"]
    config = table["config"]
    out = []
    for part in np.split(idx, bounds):
        if not len(part):
            continue
        first: dict[str, int] = {}
        times: dict[str, list[float]] = {}
        for r in part.tolist():
            key = config[r] if backend[r] == "triton" else TORCH_KEY
            first.setdefault(key, r)
            times.setdefault(key, []).append(t_all[r])
        tri = [k for k in first if k != TORCH_KEY]
        r0 = part[0]
        out.append(
            _Group(
                index=int(gid[r0]),
                size=math.log2(float(table["m"][r0]) * float(table["n"][r0]) * float(table["k"][r0])),
                triton_keys=tri,
                triton_rows=np.array([first[k] for k in tri], dtype=np.int64),
                triton_time=np.array([float(np.median(times[k])) for k in tri]),
                torch_row=first.get(TORCH_KEY),
                torch_time=float(np.median(times[TORCH_KEY])) if TORCH_KEY in times else math.inf,
                unaligned=bool(unaligned_transposed(*(table[c][r0] for c in ("m", "n", "k", "a_trans", "b_trans")))),
                k_ratio=float(k_ratio(table["m"][r0], table["n"][r0], table["k"][r0])),
            )
        )
    return out


def _geomean(x) -> float:
    x = np.asarray(x, dtype=np.float64)
    return float(np.exp(np.mean(np.log(x)))) if len(x) else math.nan


def _r2(y: np.ndarray, p: np.ndarray) -> float:
    ss = float(np.sum((y - y.mean()) ** 2))
    return 1.0 - float(np.sum((y - p) ** 2)) / ss if ss > 0 else math.nan


def selection_latency_ms(predictor, n_candidates: int = 30, repeats: int = 200) -> float | None:
    """Median ms to score `n_candidates` configs for one shape through `predictor.predict` (None if absent)."""
    if not hasattr(predictor, "predict") or not hasattr(predictor, "candidates"):
        return None
    cands = predictor.candidates[:n_candidates]
    cands = cands + [cands[0]] * (n_candidates - len(cands))
    from .features import config_matrix

    matrix = config_matrix(cands)
    times = []
    for i in range(repeats):
        m = 256 + 64 * (i % 7)  # vary the shape so no cache above us could help
        t0 = time.perf_counter()
        predictor.predict(m, 4096, 4096, "float16", False, False, False, cfgs=matrix)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def _policy_of(predictor, policy, host_cost: bool = False):
    """The model's dispatch policy; without `host_cost`, with zero host cost: the data are kernel times of
    launches back to back, which carry no host cost to add (the op adds it in eager mode, see dispatch.py)."""
    from ..policy.dispatch import NO_HOST_COST, Policy

    if policy is not None:
        return policy
    policy = Policy.from_meta(getattr(predictor, "meta", None))
    return policy if host_cost else policy.with_host(NO_HOST_COST, "none (kernel times)")


def _spread(predictor, X: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    if hasattr(predictor, "predict_with_spread"):
        return predictor.predict_with_spread(X)
    return predictor.predict_features(X), None


def _domain(predictor) -> tuple[float | None, float | None]:
    """(time floor in ms, k_ratio_max) of a model: where its training data ends (model.json, or a Fitted's
    attributes); what the selector reads from a loaded model too."""
    meta = getattr(predictor, "meta", None) or {}
    floor = meta.get("time_floor_ms") or getattr(predictor, "time_floor_ms", None)
    kmax = meta.get("k_ratio_max", getattr(predictor, "k_ratio_max", None))
    return floor, kmax


def _dispatch_group(g: _Group, finite: np.ndarray, pt, dev, work_all, policy, domain):
    """decide() over the group's runnable Triton configs and torch, as the selector sees them."""
    from ..policy.dispatch import decide, floor_scale

    floor, kmax = domain
    rows = g.triton_rows[finite]
    if g.torch_row is not None and math.isfinite(g.torch_time):
        rows = np.append(rows, g.torch_row)
    is_torch = np.zeros(len(rows), dtype=bool)
    is_torch[len(g.triton_rows[finite]) :] = True
    t = pt[rows] * floor_scale(pt[rows], floor)
    d = decide(t, is_torch, policy, log_dev=None if dev is None else dev[rows], work=work_all[rows],
               unaligned=g.unaligned, k_ratio=g.k_ratio, k_ratio_max=kmax)  # fmt: skip
    return d, rows


def dispatch_samples(
    predictor, table: Table, *, device_lookup=None, policy=None, host_cost: bool = False
) -> np.ndarray:
    """(n_groups, 5) per group with a cuBLAS time: predicted log gain of the Triton pick over torch (host costs
    included) and its spread over the trees, the measured speedup of that pick over torch, and of the best Triton
    config, and 1.0 where a transposed operand is unaligned (dispatch.unaligned_transposed, 0.0 elsewhere). What
    calibrate_z needs to evaluate any confidence z without predicting again. A shape the K guard sends to
    torch.matmul (dispatch.beyond_k_range) has gain -inf: no z dispatches it."""
    policy = _policy_of(predictor, policy, host_cost)
    X = table_features(table, device_lookup)
    pred, dev = _spread(predictor, X)
    pt, work_all = pred[:, 0], _table_work(table)
    domain = _domain(predictor)
    out = []
    for g in _groups(table):
        finite = np.isfinite(g.triton_time)
        if not finite.any() or g.torch_row is None or not math.isfinite(g.torch_time):
            continue
        d, _ = _dispatch_group(g, finite, pt, dev, work_all, policy, domain)
        pick_time = g.triton_time[finite][d.triton_index]
        gain = -math.inf if d.guard else d.gain
        best = g.torch_time / g.triton_time[finite].min()
        out.append((gain, d.gain_sd, g.torch_time / pick_time, best, float(g.unaligned)))
    return np.asarray(out, dtype=np.float64).reshape(-1, 5)


def dispatch_metrics(speedups: np.ndarray, to_extern: np.ndarray) -> dict:
    """The issue-11 keys from per-shape speedups of the dispatch over cuBLAS."""
    s = np.asarray(speedups, dtype=np.float64)
    return {
        "speedup_vs_extern_geomean": _geomean(s),
        "speedup_vs_extern_p10": float(np.quantile(s, 0.1)),
        "speedup_vs_extern_min": float(s.min()),
        "share_slower_than_extern_3pct": float(np.mean(s < SLOWER_THRESHOLD)),
        "share_dispatched_to_extern": float(np.mean(to_extern)),
    }


# A shape counts as slowed down by dispatch when it runs below this fraction of cuBLAS's speed.
SLOWER_THRESHOLD = 0.97


def speedups_at(
    samples: np.ndarray, z: float, margin: float = 0.0, z_unaligned: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """(speedup, to_extern) per sample row of dispatch_samples under confidence z, and at least z_unaligned on the
    rows flagged unaligned (column 4, where present): Policy.z_for. Calibration leaves z_unaligned at 0: the floor
    is a separate rule, set on top of the calibrated z."""
    unaligned = samples[:, 4] > 0 if samples.shape[1] > 4 else False
    zz = np.where(unaligned, max(z, z_unaligned), z)
    go = samples[:, 0] - zz * samples[:, 1] > margin
    return np.where(go, samples[:, 2], 1.0), ~go


# Calibration of the dispatch confidence on grouped held-out data (train.py): the z that maximises the geomean
# speedup over cuBLAS while, over the pooled held-out groups, at most MAX_SLOWER_SHARE of the shapes run below
# 0.97x. The grid starts at 0 (point estimate). The table also reports the share below MIN_SPEEDUP, which is
# not a constraint: it was (at most 0.25% of the pooled groups) until measured. On the HF data that bound means
# "no shape", and one or two confidently wrong shapes (H100: a transposed 1024x512x2048 at 0.79x, the unaligned
# 50265x512x8192 at 0.72x), held out by three of the ten inner splits, then set z for every shape: z 1.39 on
# average, up to 3.25, over 9 family-test runs (benchmarks/dispatch_eval.py: 3 folds of whole HF model families
# x 3 forest seeds). On those held-out families that bought nothing: 2 shapes below 0.8x with it and without it,
# 10 against 11 below 0.97x over the 9 runs, for a geomean of 1.0320 against 1.0423 without it. Severe
# slowdowns are met by mechanisms aimed at them (the unaligned floor and the K guard, dispatch.py).
Z_GRID = tuple(round(0.25 * i, 2) for i in range(17))  # 0 .. 4
MAX_SLOWER_SHARE = 0.01
MIN_SPEEDUP = 0.8  # reported per z in the calibration table, not a constraint (above)
# Held-out groups are shapes like the training ones; shapes of a new kind are not, and there the trees' spread
# understates the error. Measured (H100, benchmarks/dispatch_eval.py): calibrated on grouped splits of the
# random shapes alone, z came out 0.5-0.75, and on every Hugging Face shape (none seen) 15% of them then ran
# below 0.97x cuBLAS; at z = 1 5%, at z = 1.5 0.5%. Hence a floor, and a z per data source (calibrate_sources).
Z_MIN = 1.0
MIN_CALIBRATION_SHAPES = 30  # a source with fewer held-out shapes does not set z on its own


def calibrate_z(samples: np.ndarray, margin: float = 0.0) -> dict:
    """{"z": ..., "table": [{z, geomean, share_slower, min}, ...]} from pooled dispatch_samples."""
    rows, chosen = [], None
    for z in Z_GRID:
        s, ext = speedups_at(samples, z, margin)
        m = dispatch_metrics(s, ext)
        row = {"z": z, **{k: m[k] for k in ("speedup_vs_extern_geomean", "share_slower_than_extern_3pct",
                                             "speedup_vs_extern_min", "share_dispatched_to_extern")}}  # fmt: skip
        rows.append(row)
        row["share_below_min_speedup"] = float(np.mean(s < MIN_SPEEDUP))
        safe = m["share_slower_than_extern_3pct"] <= MAX_SLOWER_SHARE
        if safe and (chosen is None or m["speedup_vs_extern_geomean"] > chosen["speedup_vs_extern_geomean"] + 1e-9):
            chosen = row
    if chosen is None:  # nothing is safe: the most cautious z on the grid
        chosen = rows[-1]
    return {"z": chosen["z"], "n_shapes": len(samples), "table": rows}


def calibrate_sources(samples: dict[str, list[np.ndarray]]) -> dict:
    """The dispatch z for a model trained on several data sources (e.g. random shapes and real-model GEMMs):
    calibrate_z on each source's pooled held-out samples, then the largest of them and Z_MIN, so that the policy
    is safe on every kind of shape its data holds (pooled, the most numerous source would decide alone: on
    A100, 1866 random groups against 274 HF ones). {"z", "per_source": {name: calibrate_z(...)}}."""
    per = {}
    for name, parts in samples.items():
        pooled = np.concatenate(parts) if parts else np.zeros((0, 4))
        if len(pooled) >= MIN_CALIBRATION_SHAPES:
            per[name] = calibrate_z(pooled)
    z = max([Z_MIN, *(c["z"] for c in per.values())])
    return {"z": z, "z_min": Z_MIN, "per_source": per}


def _table_work(table: Table) -> np.ndarray:
    """Padded work per row (dispatch.padded_work; torch rows inf)."""
    from ..policy.dispatch import padded_work

    cfg = np.stack([table[c] for c in ("block_m", "block_n", "block_k", "group_m", "split_k")], axis=1)
    cfg = np.where((table["backend"] == "triton")[:, None], cfg, 0)
    m, n, k = (table[c].astype(np.float64) for c in ("m", "n", "k"))
    return padded_work(m, n, k, cfg)


def evaluate(
    predictor, table: Table, *, device_lookup=None, static_ranking: list[str] | None = None, policy=None,
    host_cost: bool = False,
) -> dict:  # fmt: skip
    """Prediction accuracy and selection quality of `predictor` on every group of `table`.

    `predictor` is anything with `targets` and `predict_features(X) -> (n, n_targets)` in linear units (a
    loaded Predictor, or a Fitted forest; with `predict_with_spread`, dispatch sees the trees' spread). The
    choice in each group is dispatch.decide's with `policy` (default: the model's, as the op uses it; its host
    cost only with `host_cost`, since the data are kernel times), among the group's Triton configs that ran and
    torch. The best-static baseline uses `static_ranking` (default: the one
    the model recorded from its training groups; failing that, from `table` itself, which flatters the baseline).
    """
    if len(table) == 0:
        raise ValueError("evaluate: the table is empty")
    policy = _policy_of(predictor, policy, host_cost)
    targets = tuple(predictor.targets)
    X = table_features(table, device_lookup)
    pred, dev = _spread(predictor, X)
    res: dict = {"n_rows": len(table), "n_shapes": table.n_groups}

    ok = table.ok
    for i, t in enumerate(targets):
        sel = ok & np.isfinite(table[t]) & (table[t] > 0) if t in table else np.zeros(len(table), bool)
        if not sel.any():
            continue
        y, p = table[t][sel], pred[sel, i]
        ape = np.abs(p - y) / y
        short = t.split("_")[0]
        res[f"r2_log_{short}"] = _r2(np.log(y), np.log(p))
        res[f"mape_{short}"] = float(np.mean(ape))
        res[f"median_ape_{short}"] = float(np.median(ape))

    if static_ranking is None:
        static_ranking = list(getattr(predictor, "meta", {}).get("baseline_static_ranking") or [])
        res["baseline_static_source"] = "model" if static_ranking else "eval-data"
        if not static_ranking:
            static_ranking = rank_static_configs(table, np.ones(len(table), bool))
    rank = {k: i for i, k in enumerate(static_ranking)}

    regrets, static_regrets, median_regrets, top1, sizes = [], [], [], [], []
    speedups, to_extern, oracle_speedups, triton_only_speedups, k_guarded = [], [], [], [], []
    n_failed_pick = 0
    pt = pred[:, 0]
    work_all = _table_work(table)
    domain = _domain(predictor)
    for g in _groups(table):
        finite = np.isfinite(g.triton_time)
        if not finite.any():
            continue
        best = float(g.triton_time[finite].min())
        n_failed_pick += int(not np.isfinite(g.triton_time[int(np.argmin(pt[g.triton_rows]))]))
        # The selector filters configs that cannot run (validity check); here: those that failed to run.
        d, rows = _dispatch_group(g, finite, pt, dev, work_all, policy, domain)
        pick_time = float(g.triton_time[finite][d.triton_index])
        regrets.append(pick_time / best)
        top1.append(pick_time == best)
        sizes.append(g.size)
        median_regrets.append(float(np.median(g.triton_time[finite])) / best)
        ranked = sorted((rank.get(k, len(rank)), j) for j, k in enumerate(g.triton_keys) if finite[j])
        static_regrets.append(g.triton_time[ranked[0][1]] / best)
        if d.torch_index is not None:
            chosen = g.torch_time if d.to_extern else pick_time
            speedups.append(g.torch_time / chosen)
            to_extern.append(d.to_extern)
            k_guarded.append(bool(d.guard))
            triton_only_speedups.append(g.torch_time / pick_time)
            oracle_speedups.append(g.torch_time / min(best, g.torch_time))

    r = np.asarray(regrets)
    res.update(
        n_shapes_selected=len(r),
        geomean_regret=_geomean(r),
        p90_regret=float(np.quantile(r, 0.9)) if len(r) else math.nan,
        max_regret=float(r.max()) if len(r) else math.nan,
        within_5pct=float(np.mean(r <= 1.05)) if len(r) else math.nan,
        top1_agreement=float(np.mean(top1)) if len(r) else math.nan,
        picks_of_failed_configs=n_failed_pick,
        baseline_best_static_regret=_geomean(static_regrets),
        baseline_best_static_config=static_ranking[0] if static_ranking else None,
        baseline_median_config_regret=_geomean(median_regrets),
    )
    if speedups:
        res.update(dispatch_metrics(np.asarray(speedups), np.asarray(to_extern)))
        res["share_k_guarded"] = float(np.mean(k_guarded))
        res.update(
            speedup_vs_extern_triton_only_geomean=_geomean(triton_only_speedups),
            speedup_vs_extern_oracle_geomean=_geomean(oracle_speedups),
            n_shapes_with_extern=len(speedups),
            dispatch_policy={**policy.as_dict(), "host_source": policy.host_source},
        )
    res["regret_by_size"] = _by_size(np.asarray(sizes), r)
    if "energy_j" in targets:
        res.update(_energy_selection(table, pred[:, targets.index("energy_j")], pt))
    latency = selection_latency_ms(predictor)
    if latency is not None:
        res["selection_latency_ms_30"] = latency
    return res


# Energy-selection regret is computed over groups where at least this many candidates have measured energy.
MIN_ENERGY_CONFIGS = 3


def _energy_selection(table: Table, pred_energy: np.ndarray, pred_time: np.ndarray) -> dict:
    """Energy-selection metrics over the groups where >= MIN_ENERGY_CONFIGS candidates (Triton configs and torch,
    as the selector's `energy` objective ranks both) have measured energy: regret = measured energy of the
    candidate with the lowest predicted energy / the lowest measured energy among them; and, for reference, the
    same regret of the time objective's pick (lowest predicted time), which shows what the energy head buys."""
    e_rows = energy_rows(table)
    if not e_rows.any():
        return {"n_shapes_energy": 0}
    gid = table.group_id
    idx = np.flatnonzero(e_rows)
    idx = idx[np.argsort(gid[idx], kind="stable")]
    keys = np.where(table["backend"] == "triton", table["config"], TORCH_KEY)
    energy = table["energy_j"]
    regrets, time_pick_regrets = [], []
    for part in np.split(idx, np.flatnonzero(np.diff(gid[idx])) + 1):
        firsts: dict[str, int] = {}
        measured: dict[str, list[float]] = {}
        for r in part.tolist():
            firsts.setdefault(keys[r], r)
            measured.setdefault(keys[r], []).append(float(energy[r]))
        if len(firsts) < MIN_ENERGY_CONFIGS:
            continue
        rows_ = np.array(list(firsts.values()))
        e = np.array([float(np.median(v)) for v in measured.values()])
        regrets.append(e[int(np.argmin(pred_energy[rows_]))] / e.min())
        time_pick_regrets.append(e[int(np.argmin(pred_time[rows_]))] / e.min())
    if not regrets:
        return {"n_shapes_energy": 0}
    r = np.asarray(regrets)
    return {
        "n_shapes_energy": len(r),
        "energy_geomean_regret": _geomean(r),
        "energy_p90_regret": float(np.quantile(r, 0.9)),
        "energy_max_regret": float(r.max()),
        "energy_within_5pct": float(np.mean(r <= 1.05)),
        "energy_regret_of_time_pick": _geomean(time_pick_regrets),
    }


def _by_size(sizes: np.ndarray, regrets: np.ndarray) -> list[dict]:
    """Geomean regret per 6-wide bin of log2(M*N*K)."""
    out = []
    if not len(sizes):
        return out
    lo = 6 * math.floor(sizes.min() / 6)
    while lo <= sizes.max():
        sel = (sizes >= lo) & (sizes < lo + 6)
        if sel.any():
            out.append({"log2_mnk": [lo, lo + 6], "n": int(sel.sum()), "geomean_regret": _geomean(regrets[sel])})
        lo += 6
    return out


def _pool_by_size(bins: list[dict]) -> list[dict]:
    """Merge _by_size bins (of several splits) with the same range: counts add, geomeans weigh by count."""
    pooled: dict[tuple, list[float]] = {}
    for b in bins:
        acc = pooled.setdefault(tuple(b["log2_mnk"]), [0.0, 0.0])
        acc[0] += b["n"]
        acc[1] += b["n"] * math.log(b["geomean_regret"])
    return [
        {"log2_mnk": list(k), "n": int(n), "geomean_regret": math.exp(s / n)} for k, (n, s) in sorted(pooled.items())
    ]


def per_group_choices(predictor, table: Table, device_lookup=None, policy=None) -> dict[str, np.ndarray]:
    """Per group with a finite Triton time, the dispatch policy's choice (as evaluate makes it): "size"
    (log2 MNK), "regret" of the Triton pick, and, NaN where the group has no cuBLAS time, "speedup" over
    cuBLAS of the dispatch and "to_extern". For plots (report.py)."""
    policy = _policy_of(predictor, policy)
    pred, dev = _spread(predictor, table_features(table, device_lookup))
    pt, work_all = pred[:, 0], _table_work(table)
    domain = _domain(predictor)
    out: dict[str, list] = {"size": [], "regret": [], "speedup": [], "to_extern": []}
    for g in _groups(table):
        finite = np.isfinite(g.triton_time)
        if not finite.any():
            continue
        d, _ = _dispatch_group(g, finite, pt, dev, work_all, policy, domain)
        pick_time = float(g.triton_time[finite][d.triton_index])
        out["size"].append(g.size)
        out["regret"].append(pick_time / g.triton_time[finite].min())
        has_torch = d.torch_index is not None
        out["speedup"].append(g.torch_time / (g.torch_time if d.to_extern else pick_time) if has_torch else math.nan)
        out["to_extern"].append(float(d.to_extern) if has_torch else math.nan)
    return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}


def regrets_per_group(predictor, table: Table, device_lookup=None) -> tuple[np.ndarray, np.ndarray]:
    """(log2 MNK, regret of the dispatch policy's Triton pick) of every group with a finite Triton time."""
    c = per_group_choices(predictor, table, device_lookup)
    return c["size"], c["regret"]


def combine_splits(runs: list[dict]) -> dict:
    """One metrics dict from several splits' `evaluate` outputs: ratios (regrets, speedups) by geometric mean,
    max_* by max, *_min by min, counts and other numbers by mean; regret_by_size pools the bins of every split;
    names (the best static config) are the first split's. Adds n_splits."""
    out: dict = {}
    for key, first in runs[0].items():
        vals = [r.get(key) for r in runs]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals)
        if key == "regret_by_size":
            out[key] = _pool_by_size([b for r in runs for b in r.get(key, [])])
        elif not numeric or len(runs) == 1:
            out[key] = first
        elif all(isinstance(v, int) for v in vals):
            out[key] = int(round(float(np.mean(vals))))
        elif key.startswith("max_"):
            out[key] = float(max(vals))
        elif key.endswith("_min"):
            out[key] = float(min(vals))
        elif "regret" in key or "speedup" in key:
            out[key] = _geomean(vals)
        else:
            out[key] = float(np.mean(vals))
    out["n_splits"] = len(runs)
    return out
