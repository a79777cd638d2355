"""Plots of a model on data: predicted vs measured time, regret CDF, regret by shape size, and the per-shape
time/energy Pareto view of all candidates.

Offline only (matplotlib, Agg backend: no display needed).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plain_log_ticks(ax, which: str = "xy") -> None:
    """Log axes labelled as plain numbers (0.7, 2, 50), not matplotlib's `7x10^-1`; minor ticks labelled only
    when the axis spans less than a decade (else they crowd). Call after the data are drawn."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    fmt = FuncFormatter(lambda v, _: f"{v:g}")
    for name in which:
        axis = ax.xaxis if name == "x" else ax.yaxis
        if axis.get_scale() != "log":
            continue
        lo, hi = sorted(axis.get_view_interval())
        axis.set_major_formatter(fmt)
        axis.set_minor_formatter(fmt if lo > 0 and hi / lo < 10 else NullFormatter())


def model_label(predictor) -> str:
    """A model as plot titles name it: the shipped name or the model's file/directory, and its GPU."""
    path = Path(predictor.path) if getattr(predictor, "path", None) else None
    name = "model" if path is None else (path.parent.name if path.stem == "model" else path.stem)
    return f"{name} model ({predictor.device.short_name})"


def draw_report(predictor, table, out_dir: str | Path, *, title: str = "") -> list[Path]:
    """Write predicted_vs_measured.png, regret_cdf.png, regret_by_size.png and speedup_vs_cublas_cdf.png (the
    dispatch policy against always calling cuBLAS) into `out_dir`."""
    from ..predictor.evaluation import per_group_choices, regrets_per_group
    from ..predictor.features import table_features

    plt = _plt()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []

    ok = table.ok
    pred = predictor.predict_features(table_features(table))[:, 0]
    fig, ax = plt.subplots(figsize=(5.5, 5))
    triton = ok & (table["backend"] == "triton")
    ax.scatter(table["time_ms"][triton], pred[triton], s=3, alpha=0.4, label="triton configs")
    torch_rows = ok & (table["backend"] != "triton")
    if torch_rows.any():
        ax.scatter(table["time_ms"][torch_rows], pred[torch_rows], s=8, alpha=0.8, c="C3", label="torch.matmul")
    if ok.any():
        lo = float(min(table["time_ms"][ok].min(), pred[ok].min()))
        hi = float(max(table["time_ms"][ok].max(), pred[ok].max()))
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="predicted = measured")
    ax.set(xscale="log", yscale="log", xlabel="measured time (ms)", ylabel="predicted time (ms)")
    ax.set_title(f"{title}\npredicted vs measured".strip(), fontsize=10)
    ax.legend(loc="upper left")
    _plain_log_ticks(ax)
    written.append(_save(fig, out_dir / "predicted_vs_measured.png", plt))

    sizes, regrets = regrets_per_group(predictor, table)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    if len(regrets):
        r = np.sort(regrets)
        ax.step(r, np.arange(1, len(r) + 1) / len(r), where="post")
    ax.axvline(1.05, color="k", ls=":", lw=0.8, label="1.05: within 5% of the best")
    ax.set(xscale="log", xlabel="regret (time of pick / best measured)", ylabel="share of shapes")
    ax.set_title(f"{title}\nregret CDF ({len(regrets)} shapes)".strip(), fontsize=10)
    ax.legend(loc="lower right")
    _plain_log_ticks(ax)
    written.append(_save(fig, out_dir / "regret_cdf.png", plt))

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(sizes, regrets, s=10, alpha=0.6)
    if len(sizes):
        edges = np.arange(np.floor(sizes.min()), np.ceil(sizes.max()) + 3, 3)
        centers, geo = [], []
        for lo, hi in zip(edges[:-1], edges[1:], strict=True):
            sel = (sizes >= lo) & (sizes < hi)
            if sel.any():
                centers.append((lo + hi) / 2)
                geo.append(float(np.exp(np.mean(np.log(regrets[sel])))))
        ax.plot(centers, geo, "C1-o", label="geomean per bin")
        ax.legend()
    ax.set(yscale="log", xlabel="log2(M*N*K)", ylabel="regret")
    ax.set_title(f"{title}\nregret by shape size".strip(), fontsize=10)
    _plain_log_ticks(ax)
    written.append(_save(fig, out_dir / "regret_by_size.png", plt))

    # What users get against always calling cuBLAS: the dispatch policy's choice (dispatch.decide, as eval).
    choices = per_group_choices(predictor, table)
    sp = choices["speedup"][np.isfinite(choices["speedup"])]
    if len(sp):
        fig, ax = plt.subplots(figsize=(5.5, 4))
        r = np.sort(sp)
        ax.step(r, np.arange(1, len(r) + 1) / len(r), where="post")
        ax.axvline(0.97, color="C3", ls=":", lw=0.8, label="0.97x")
        ax.axvline(1.0, color="k", ls=":", lw=0.8, label="1.0x: as fast as cuBLAS")
        geo = float(np.exp(np.mean(np.log(sp))))
        to_ext = float(np.nanmean(choices["to_extern"]))
        ax.set(xscale="log", xlabel="speedup over cuBLAS (dispatch policy)", ylabel="share of shapes")
        ax.set_title(f"{title}\ngeomean {geo:.3f}, {to_ext:.0%} to cuBLAS ({len(sp)} shapes)".strip(), fontsize=10)
        ax.legend(loc="upper left")
        _plain_log_ticks(ax)
        written.append(_save(fig, out_dir / "speedup_vs_cublas_cdf.png", plt))
    return written


PARETO_TOP = 15  # candidates a time-only model's plot names


def pareto_plot(
    predictor,
    m: int,
    n: int,
    k: int,
    dtype: object,
    a_trans: bool = False,
    b_trans: bool = False,
    tf32: bool = False,
    *,
    chosen: dict[str, object] | None = None,
    out: str | Path = "pareto.png",
    cfgs: Sequence | None = None,
) -> Path:
    """Predicted time vs energy of every candidate for one shape, the Pareto front joined, choices marked.

    `chosen` maps an objective name to the config it selected (a TileConfig, None for torch.matmul, or a key).
    Models without an energy target plot predicted time per candidate instead.
    """
    plt = _plt()
    cands = list(predictor.candidates if cfgs is None else cfgs)
    pred = predictor.predict(m, n, k, dtype, a_trans, b_trans, tf32, cfgs=cands)
    keys = ["torch" if c is None else c.key for c in cands]
    t = pred["time_ms"]
    fig, ax = plt.subplots(figsize=(6, 4.5))
    marks = {
        (v if isinstance(v, str) else ("torch" if v is None else v.key)): name for name, v in (chosen or {}).items()
    }
    if "energy_j" in pred:
        e = pred["energy_j"]
        ax.scatter(t, e, s=12, alpha=0.6, label="candidates")
        order = np.argsort(t)
        front, best_e = [], np.inf
        for i in order:
            if e[i] < best_e:
                front.append(i)
                best_e = e[i]
        ax.plot(t[front], e[front], "C1-", lw=1, label="Pareto front")
        for key, name in marks.items():
            if key in keys:
                i = keys.index(key)
                ax.scatter([t[i]], [e[i]], s=60, marker="*", label=f"{name}: {key}")
        ax.set(xlabel="predicted time (ms)", ylabel="predicted energy (J)")
        _plain_log_ticks(ax)
        ax.set_title(f"{model_label(predictor)}: {m}x{n}x{k} {dtype}, predicted")
    else:
        # No energy: the fastest candidates by predicted time, named, and every marked choice (a bar per
        # candidate of a 150-config space says nothing).
        order = list(np.argsort(t, kind="stable")[:PARETO_TOP])
        order += [i for i in range(len(keys)) if keys[i] in marks and i not in order]
        y = np.arange(len(order))[::-1]
        ax.barh(y, t[order], color=["C3" if keys[i] in marks else "C0" for i in order])
        ax.set_yticks(y, [keys[i] + (f"  ({marks[keys[i]]})" if keys[i] in marks else "") for i in order],
                      fontsize=6)  # fmt: skip
        ax.set(xlabel="predicted time (ms)")
        ax.set_title(
            f"{model_label(predictor)}: {m}x{n}x{k} {dtype}\npredicted time, the {min(PARETO_TOP, len(t))} fastest"
            f" of {len(t)} candidates (no energy predicted)",
            fontsize=9,
        )
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    return _save(fig, Path(out), plt)


def _save(fig, path: Path, plt) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    logger.info("wrote %s", path)
    return path


def _cmd_report(args: argparse.Namespace) -> int:
    from ..measure import dataset
    from ..predictor.model_meta import in_sample
    from ..predictor.runtime import load_cli_model

    predictor = load_cli_model(args.model)
    table = dataset.load_table(args.data, include_interpreted=args.include_interpreted)
    data = ", ".join(Path(p).name for p in args.data)
    trained_on = in_sample(predictor.meta, args.data)
    if trained_on:
        print(f"gpperf-torch report: warning: in-sample: the model was trained on {', '.join(trained_on)}: the plots"
              " describe fitted data, not unseen shapes", file=sys.stderr)  # fmt: skip
        data += " (in-sample)"
    for p in draw_report(predictor, table, args.out, title=f"{model_label(predictor)} on {data}"):
        print(p)
    return 0


def _cmd_pareto(args: argparse.Namespace) -> int:
    """`gpperf-torch report --pareto M N K`: every candidate's predicted time vs energy for one shape, with the
    configs that the objectives time, energy, edp and balanced choose marked (report.pareto_plot), and, when
    --data holds the shape, a second plot of the measured points beside the predicted ones. A time-only model
    is said to be one, and its plot shows predicted time per candidate. Without --pareto: the data report."""
    import sys

    from .. import kernels
    from ..measure import dataset
    from ..measure.device import short_name_of
    from ..paths import check_output_dir
    from ..predictor.runtime import load_cli_model
    from ..selection.objectives import parse_objective
    from ..selection.ranking import order_by_objective

    check_output_dir(args.out)  # an existing file named by --out: one line, before any work, the file untouched
    if args.pareto is None:
        if not args.data:
            print(
                "gpperf-torch report: give --data CSV... (model report) or --pareto M N K (one shape)", file=sys.stderr
            )
            return 2
        return _cmd_report(args)
    m, n, k = args.pareto
    if min(m, n, k) < 1:
        print(f"gpperf-torch report: --pareto needs positive M N K, got {m} {n} {k}", file=sys.stderr)
        return 2
    aliases = {"fp16": "float16", "half": "float16", "bf16": "bfloat16", "fp32": "float32", "float": "float32"}
    dtype = aliases.get(args.dtype, args.dtype)
    try:
        es = kernels.elem_size(dtype)
        predictor = load_cli_model(args.model)
    except ValueError as e:
        print(f"gpperf-torch report: {e}", file=sys.stderr)
        return 2
    info = predictor.device
    a_t, b_t = bool(args.a_trans), bool(args.b_trans)
    tf32 = bool(args.tf32) and dtype == "float32"
    # The candidates the selector would consider on the model's GPU: the model's, valid for this dtype there.
    cands = [
        c for c in predictor.candidates
        if c is None or kernels.is_valid(c, elem_size=es, max_shared_memory=info.max_shared_memory)
    ]  # fmt: skip
    if not cands:
        print(f"gpperf-torch report: none of the model's candidates runs for {dtype} on {info.name}", file=sys.stderr)
        return 2
    pred = predictor.predict(m, n, k, dtype, a_t, b_t, tf32, cfgs=cands)
    keys = ["torch" if c is None else c.key for c in cands]
    picks: dict[str, int] = {}
    for name in ("time", "energy", "edp", "balanced"):
        obj = parse_objective(name)
        if all(t in pred for t in obj.needs):
            picks[name] = int(order_by_objective(obj, pred, info)[0])
    energy = "energy_j" in pred
    layout = ("t" if a_t else "n") + ("t" if b_t else "n")
    print(f"{m}x{n}x{k} {dtype} layout {layout} on {info.name}: {len(cands)} candidates ({predictor.path})")
    if not energy:
        print(
            f"the model predicts {', '.join(predictor.targets)} only: energy is not predicted, so the plot shows "
            "predicted time per candidate and only the time objective's choice. For the time/energy view, measure "
            "energy on the GPU (`gpperf-torch tune`, NVML) and train on it (`gpperf-torch train`)"
        )
    head = f"{'objective':<10} {'config':<26}" + "".join(f"{t:>12}" for t in predictor.targets)
    print(head)
    print("-" * len(head))
    for name, i in picks.items():
        print(f"{name:<10} {keys[i]:<26}" + "".join(f"{float(pred[t][i]):>12.5g}" for t in predictor.targets))
    # Objectives that agree share one mark, labelled with all their names.
    by_config: dict[int, list[str]] = {}
    for name, i in picks.items():
        by_config.setdefault(i, []).append(name)
    chosen = {", ".join(names): cands[i] for i, names in by_config.items()}
    out_dir = Path(args.out)
    stem = f"pareto_{m}x{n}x{k}_{dtype}_{layout}"
    path = pareto_plot(
        predictor, m, n, k, dtype, a_t, b_t, tf32, chosen=chosen, out=out_dir / f"{stem}.png", cfgs=cands
    )
    print(path)
    if not args.data:
        return 0

    # Measured points for the same shape, where the data has them (the model's GPU preferred).
    table = dataset.load_table(args.data, include_interpreted=args.include_interpreted)
    sel = (
        table.ok & (table["m"] == m) & (table["n"] == n) & (table["k"] == k) & (table["dtype"] == dtype)
        & (table["a_trans"] == int(a_t)) & (table["b_trans"] == int(b_t)) & (table["tf32"] == int(tf32))
    )  # fmt: skip
    same_gpu = sel & np.array([short_name_of(str(g)) == info.short_name for g in table["gpu"]], dtype=bool)
    sel = same_gpu if same_gpu.any() else sel
    if not sel.any():
        print(f"--data has no measured ok rows for {m}x{n}x{k} {dtype} {layout}: no measured plot")
        return 0
    measured: dict[str, list[tuple[float, float]]] = {}
    for r in np.flatnonzero(sel):
        key = "torch" if table["backend"][r] != "triton" else str(table["config"][r])
        measured.setdefault(key, []).append((float(table["time_ms"][r]), float(table["energy_j"][r])))
    mkeys = sorted(measured)
    mt = np.array([float(np.median([t for t, _ in measured[c]])) for c in mkeys])
    me = np.full(len(mkeys), np.nan)  # median measured energy per candidate, where measured
    for j, c in enumerate(mkeys):
        finite = [e for _, e in measured[c] if np.isfinite(e)]
        if finite:
            me[j] = float(np.median(finite))
    mcfgs = [None if c == "torch" else kernels.TileConfig.from_key(c) for c in mkeys]
    mpred = predictor.predict(m, n, k, dtype, a_t, b_t, tf32, cfgs=mcfgs)
    marks = {keys[i]: ", ".join(names) for i, names in by_config.items()}
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    has_e = np.isfinite(me)
    if energy and has_e.any():
        ax.scatter(mt[has_e], me[has_e], s=16, label="measured")
        ax.scatter(
            mpred["time_ms"][has_e],
            mpred["energy_j"][has_e],
            s=16,
            facecolors="none",
            edgecolors="C1",
            label="predicted",
        )
        for c, t, e, pt, pe in zip(mkeys, mt, me, mpred["time_ms"], mpred["energy_j"], strict=True):
            if np.isfinite(e):
                ax.plot([t, pt], [e, pe], color="0.7", lw=0.5)
            if c in marks and np.isfinite(e):
                color = f"C{2 + list(marks).index(c)}"  # C0/C1: the measured/predicted series
                ax.scatter([t], [e], s=70, marker="*", color=color, label=f"{marks[c]}: {c} (measured)")
        ax.set(xlabel="time (ms)", ylabel="energy (J)")
    else:
        order = np.argsort(mt)
        x = np.arange(len(order))
        ax.bar(
            x - 0.2, mt[order], width=0.4, label="measured", color=["C3" if mkeys[i] in marks else "C0" for i in order]
        )
        ax.bar(x + 0.2, mpred["time_ms"][order], width=0.4, label="predicted", color="C1", alpha=0.6)
        ax.set(xlabel="measured candidates (sorted by measured time)", ylabel="time (ms)", yscale="log")
        if not has_e.any():
            print("--data has no energy for this shape: the measured plot shows time only")
    data = ", ".join(Path(p).name for p in args.data)
    ax.set_title(f"{model_label(predictor)} on {data}\n{m}x{n}x{k} {dtype} {layout}: measured vs predicted"
                 f" ({len(mkeys)} candidates)", fontsize=9)  # fmt: skip
    ax.legend(fontsize=7)
    _plain_log_ticks(ax)
    best = mkeys[int(np.argmin(mt))]
    print(f"measured {len(mkeys)} candidates for this shape; fastest measured {best} ({mt.min():.5g} ms)")
    print(_save(fig, out_dir / f"{stem}_measured.png", plt))
    return 0


def add_cli(subparsers) -> None:
    p = subparsers.add_parser(
        "report",
        help="plots of a model on data (PNG), or one shape's time/energy Pareto view of every candidate (--pareto)",
    )
    p.add_argument("--model", required=True, help="model directory, <name>.onnx, or a shipped model (h100, a100)")
    p.add_argument("--data", nargs="+", default=None, help="CSV files (auto-detected format); needed without --pareto")
    p.add_argument("--out", required=True, help="directory for the PNGs")
    p.add_argument("--include-interpreted", action="store_true", help="keep interpreter rows (tests only)")
    p.add_argument(
        "--pareto", nargs=3, type=int, metavar=("M", "N", "K"), default=None,
        help="one GEMM shape: predicted time vs energy of every candidate, each objective's choice marked "
        "(measured points too when --data holds the shape)",
    )  # fmt: skip
    p.add_argument("--dtype", default="float16", help="with --pareto: float16|bfloat16|float32 (fp16, bf16, fp32)")
    p.add_argument("--a-trans", action="store_true", help="with --pareto: A is a transposed view")
    p.add_argument("--b-trans", action="store_true", help="with --pareto: B is a transposed view (Linear: x @ W^T)")
    p.add_argument("--tf32", action="store_true", help="with --pareto and float32: TF32 allowed")
    p.set_defaults(func=_cmd_pareto)


__all__ = ["add_cli", "draw_report", "pareto_plot"]
