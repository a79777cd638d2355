"""The training pipeline: load, evaluate on held-out groups, fit and export, end to end (train_and_export).

Offline only (scikit-learn, skl2onnx): the op never imports this module. The work is split by concern:
fitting.py (grouped split, the forests), evaluation.py (metrics), export.py (ONNX + JSON); the `train` and
`eval` commands are cli/train.py.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..measure import dataset
from ..measure.dataset import Table
from ..measure.device import short_name_of
from ..paths import check_output_dir
from ..policy.dispatch import NO_HOST_COST, UNALIGNED_ELEMS, UNALIGNED_MIN_LD, Policy
from .evaluation import (
    MAX_SLOWER_SHARE,
    SLOWER_THRESHOLD,
    calibrate_sources,
    combine_splits,
    dispatch_samples,
    evaluate,
    selection_latency_ms,
)
from .export import export
from .fitting import DEFAULT_PARAMS, Fitted, fit, grouped_split, split_for_target, targets_of
from .runtime import Predictor, model_paths

logger = logging.getLogger(__name__)

# The keys `format_metrics` prints, in this order.
SUMMARY_KEYS = (
    "n_shapes", "geomean_regret", "p90_regret", "max_regret", "within_5pct", "top1_agreement", "r2_log_time",
    "mape_time", "median_ape_time", "r2_log_power", "mape_power", "r2_log_energy", "mape_energy",
    "median_ape_energy", "n_shapes_energy", "energy_geomean_regret", "energy_p90_regret",
    "energy_regret_of_time_pick", "baseline_best_static_regret",
    "baseline_median_config_regret", "speedup_vs_extern_geomean", "speedup_vs_extern_p10",
    "speedup_vs_extern_min", "share_slower_than_extern_3pct", "share_dispatched_to_extern",
    "speedup_vs_extern_oracle_geomean", "dispatch_z",
    "selection_latency_ms_30", "verify_policy", "verify_speedup_vs_extern_geomean", "verify_speedup_vs_extern_p10",
    "verify_speedup_vs_extern_min", "verify_share_dispatched_to_extern", "verify_candidates_per_shape",
    "verify_share_unmeasured", "verify_compiles", "verify_compiles_config_dtype_layout",
    "verify_speedup_vs_extern_oracle_geomean", "verify_share_of_oracle_gain",
)  # fmt: skip


def format_metrics(metrics: dict) -> str:
    lines = []
    for key in SUMMARY_KEYS:
        if key in metrics:
            v = metrics[key]
            lines.append(f"  {key:<40} {v:.4f}" if isinstance(v, float) else f"  {key:<40} {v}")
    for b in metrics.get("regret_by_size", []):
        lo, hi = b["log2_mnk"]
        lines.append(f"  regret, log2(MNK) in [{lo}, {hi}){'':<9} {b['geomean_regret']:.4f}  (n={b['n']})")
    return "\n".join(lines)


# Keys listed per split (train_and_export's `splits`): one split's regret moves by +-0.02 with which shapes it
# happens to hold out (public H100 data, 68 held-out groups), so a single split's number misleads.

REPEAT_KEYS = ("geomean_regret", "p90_regret", "max_regret", "within_5pct", "top1_agreement", "r2_log_time",
               "mape_time", "baseline_best_static_regret", "speedup_vs_extern_geomean", "speedup_vs_extern_p10",
               "speedup_vs_extern_min", "share_slower_than_extern_3pct",
               "share_dispatched_to_extern")  # fmt: skip


def _split_within(table: Table, rows: np.ndarray | None, test_frac: float, seed: int, target_gpu: str | None):
    """split_for_target restricted to `rows` (None: all rows): (train, test) masks over the whole table."""
    if rows is None:
        return split_for_target(table, test_frac=test_frac, seed=seed, target_gpu=target_gpu)
    idx = np.flatnonzero(rows)
    tr, te = split_for_target(table.subset(rows), test_frac=test_frac, seed=seed, target_gpu=target_gpu)
    train, test = np.zeros(len(table), dtype=bool), np.zeros(len(table), dtype=bool)
    train[idx[tr]], test[idx[te]] = True, True
    return train, test


# Recorded in the model's `dispatch.calibrated_on`: the floor is a constant of dispatch.py, not calibrated here.
UNALIGNED_NOTE = (
    "; z at least {z:g} (z_unaligned, not calibrated: dispatch.DEFAULT_Z_UNALIGNED) for shapes whose transposed"
    " operand has a leading dimension that is not a multiple of {elems} and at least {min_ld} long"
    " (dispatch.unaligned_transposed), chosen on the family-level test of benchmarks/dispatch_eval.py"
    " (docs/predictor.md)"
)


def held_out_metrics(
    table: Table, *, test_frac: float = 0.3, seeds=(0,), target_gpu: str | None = None,
    rows: np.ndarray | None = None, sources: np.ndarray | None = None, **fit_kw,
) -> tuple[dict, dict, Fitted]:  # fmt: skip
    """Fit on the train side of each seed's grouped split (of `rows`, default all) and evaluate on its held-out
    groups, with the dispatch confidence z calibrated on held-out groups (evaluation.calibrate_sources: per data
    source, `sources` naming each row's, e.g. its file; None: one source).

    Each split is evaluated at the z calibrated on the other splits' held-out groups (with one split: its own,
    which flatters it); the z for a model fitted on all of `rows` is calibrated on every split's held-out groups
    and returned in the summary ("dispatch"), with the calibration tables. Returns the metrics combined over the
    seeds (combine_splits), a per-split summary {"seeds": [...], key: {mean, min, max, per_seed}} for
    REPEAT_KEYS, and the first seed's model (its `dispatch` set to its leave-one-out z).
    """
    src = np.zeros(len(table), dtype=np.int64) if sources is None else np.asarray(sources)
    names = [str(x) for x in np.unique(src)]
    fitted = []
    for s in seeds:
        train_rows, test_rows = _split_within(table, rows, test_frac, s, target_gpu)
        model = fit(table, rows=train_rows, seed=s, target_gpu=target_gpu, **fit_kw)
        samples = {}
        for name in names:
            sel = test_rows & (src.astype(str) == name)
            if sel.any():
                samples[name] = dispatch_samples(model, table.subset(sel))
        fitted.append((model, table.subset(test_rows), samples))

    def calibrate(parts):
        return calibrate_sources({n: [p[n] for p in parts if n in p] for n in names})

    pooled = calibrate([f[2] for f in fitted])
    runs = []
    for i, (model, test, _) in enumerate(fitted):
        others = [f[2] for j, f in enumerate(fitted) if j != i]
        z = calibrate(others)["z"] if others else pooled["z"]
        model.dispatch = Policy(z=z).as_dict()
        metrics = evaluate(model, test, policy=Policy(z=z, host_ms=dict(NO_HOST_COST)))
        metrics.pop("selection_latency_ms_30", None)
        metrics["dispatch_z"] = z
        runs.append(metrics)
    summary: dict = {"seeds": list(seeds)}
    for key in (*REPEAT_KEYS, "dispatch_z"):
        vals = [r[key] for r in runs if key in r]
        if len(vals) == len(runs):
            summary[key] = {"mean": float(np.mean(vals)), "min": float(np.min(vals)), "max": float(np.max(vals)),
                            "per_seed": [float(v) for v in vals]}  # fmt: skip
    summary["dispatch"] = {**Policy(z=pooled["z"]).as_dict(), "calibration": pooled}
    return combine_splits(runs), summary, fitted[0][0]


def file_sources(paths: list[str], table: Table, include_interpreted: bool = False) -> np.ndarray | None:
    """(n_rows,) each row's data file name (load_table keeps the files' order), or None for one file."""
    if len(paths) < 2:
        return None
    out, start = np.empty(len(table), dtype=object), 0
    for p in paths:
        n = len(dataset.load_table(p, include_interpreted=include_interpreted))
        out[start : start + n] = Path(p).name
        start += n
    if start != len(table):
        raise RuntimeError(f"file_sources: {start} rows in the files, {len(table)} in the table")
    return out.astype(str)


def train_and_export(
    paths: list[str], out: str | Path, *, test_frac: float = 0.3, seed: int = 0, use_all: bool = True,
    splits: int = 5, provenance: str = "", include_interpreted: bool = False, target_gpu: str | None = None,
    **params,
) -> dict:  # fmt: skip
    """Load, evaluate on held-out groups of `splits` grouped splits (seeds seed, seed+1, ...), then export the
    model refitted on all the data (`use_all`, the default) or the one fitted on the first split's train side.

    The metrics in model.json are always from held-out groups: with `use_all` they describe the procedure (the
    same settings fitted on 70% of the groups), not the exported forest itself, which has seen every group.
    With data from several GPUs the model is for `target_gpu` (default: the first file's GPU): only that GPU's
    groups are split and evaluated; the other GPUs' rows all train (see `fit`).
    """
    if splits < 1:
        raise ValueError(f"splits must be >= 1, got {splits}")
    _check_model_out(out, paths)
    table = dataset.load_table(paths, include_interpreted=include_interpreted)
    gpus = sorted({short_name_of(g) for g in np.unique(table["gpu"].astype(str)).tolist()})
    if target_gpu is None and len(gpus) > 1:
        # Data from several GPUs: the model is for the first file's GPU (rows keep the files' order).
        target_gpu = short_name_of(str(table["gpu"][0]))
        logger.info("data from GPUs %s: training a model for %s (the first file's; --target-gpu picks another)",
                    gpus, target_gpu)  # fmt: skip
    seeds = tuple(range(seed, seed + splits))
    metrics, per_split, split_model = held_out_metrics(
        table, test_frac=test_frac, seeds=seeds, target_gpu=target_gpu,
        sources=file_sources(paths, table, include_interpreted), **params,
    )  # fmt: skip
    model = fit(table, seed=seed, target_gpu=target_gpu, **params) if use_all else split_model
    calibration = per_split.pop("dispatch")
    model.dispatch = {k: calibration[k] for k in ("z", "margin", "tie_rel", "z_unaligned", "host_ms")}
    model.dispatch["calibrated_on"] = (
        f"held-out groups of {splits} grouped split(s){' of the ' + target_gpu + ' groups' if target_gpu else ''}:"
        f" the z of the highest geomean speedup over cuBLAS with at most {MAX_SLOWER_SHARE:.0%} of shapes below"
        f" {SLOWER_THRESHOLD}x (evaluation.calibrate_z)"
    )
    cal = calibration["calibration"]
    model.dispatch["calibrated_on"] += (
        f"; a z per data file, the largest and at least {cal['z_min']} (evaluation.calibrate_sources)"
        + UNALIGNED_NOTE.format(z=calibration["z_unaligned"], elems=UNALIGNED_ELEMS, min_ld=UNALIGNED_MIN_LD)
    )
    if model.k_ratio_max is not None:
        model.dispatch["calibrated_on"] += (
            f"; the K guard (not calibrated): torch.matmul for shapes with log2 K - (log2 M + log2 N)/2 above"
            f" k_ratio_max = {model.k_ratio_max:.3f}, the K-heaviest training shape's (dispatch.beyond_k_range)"
        )
    model.dispatch["calibration"] = {
        name: {"z": c["z"], "n_shapes": c["n_shapes"], "table": c["table"]} for name, c in cal["per_source"].items()
    }
    target_note = f"; target GPU {target_gpu}, all rows of other GPUs train" if target_gpu else ""
    of_target = f" of the {target_gpu} groups" if target_gpu else ""
    meta = {
        "provenance": provenance
        or f"trained by gpperf-torch train on {', '.join(Path(p).name for p in paths)}"
        f" ({'all groups' if use_all else f'a grouped {1 - test_frac:.0%} split'}, seed {seed}{target_note})",
        "data_files": [Path(p).name for p in paths],
        "data_sha256": dataset.data_hash(paths),
        "split": {
            "test_frac": test_frac,
            "seed": seed,
            "trained_on": "all" if use_all else "train split",
            **({"target_gpu": target_gpu} if target_gpu else {}),
        },  # fmt: skip
        "metrics": {
            "held_out": metrics,
            "held_out_splits": per_split,
            "note": f"held-out groups of {splits} grouped {test_frac:.0%} split(s){of_target}, seeds {seeds[0]}.."
            f"{seeds[-1]}: held_out combines them (ratios by geometric mean, max by max, others by mean; lists from"
            f" seed {seed}), held_out_splits lists each"
            + ("; the exported forest is the same procedure refitted on all groups" if use_all else ""),
        },
    }
    onnx_path, _ = export(model, out, meta)
    loaded = Predictor.load(out)
    metrics["held_out_splits"] = per_split
    metrics["selection_latency_ms_30"] = selection_latency_ms(loaded)
    metrics["onnx_bytes"] = onnx_path.stat().st_size
    metrics["warnings"] = quality_warnings(metrics)
    for w in metrics["warnings"]:
        logger.warning("gpperf train: %s", w)
    return metrics


MIN_HELD_OUT_SHAPES = 20  # fewer held-out shapes than this: the metrics are anecdotes, not an estimate


def quality_warnings(metrics: dict) -> list[str]:
    """What a user should know before shipping a freshly trained model: held-out regret no better than the best
    static config (one config for every shape: the model adds nothing), or too few held-out shapes to tell."""
    out = []
    n = metrics.get("n_shapes")
    reg, static = metrics.get("geomean_regret"), metrics.get("baseline_best_static_regret")
    if isinstance(reg, (int, float)) and isinstance(static, (int, float)) and reg > static + 1e-9:
        out.append(
            f"the model's held-out geomean regret {reg:.4f} is worse than the best static config's {static:.4f}"
            " (one config for every shape): it selects worse than no model would; tune more shapes"
            " (`gpperf-torch tune`) and train again"
        )
    if isinstance(n, (int, float)) and n < MIN_HELD_OUT_SHAPES:
        out.append(
            f"the held-out metrics rest on {n:g} shape(s) (fewer than {MIN_HELD_OUT_SHAPES}): they cannot tell a"
            " good model from a bad one; tune more shapes (`gpperf-torch tune`) before trusting it"
        )
    return out


def _check_model_out(out: str | Path, paths: Sequence[str | Path]) -> None:
    """Before any fitting: `out` must not be an existing file (a directory is written into, `<stem>.onnx|.json`
    beside it) and must not be one of the data files."""
    out = Path(out)
    stem = out.suffix in (".onnx", ".json")
    targets = model_paths(out) if stem else model_paths(check_output_dir(out) / "model")
    data = {Path(p).resolve() for p in paths}
    for t in targets:
        if t.resolve() in data:
            raise UserError(f"{t}: --out would overwrite the data file {t}; pass another path")
        if t.is_dir():
            raise UserError(f"{t}: is a directory where the model file belongs; pass another --out")


__all__ = [
    "DEFAULT_PARAMS",
    "Fitted",
    "format_metrics",
    "evaluate",
    "export",
    "fit",
    "combine_splits",
    "grouped_split",
    "quality_warnings",
    "held_out_metrics",
    "split_for_target",
    "targets_of",
    "train_and_export",
]
