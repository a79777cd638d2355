"""`gpperf-torch eval --backend inductor`: the compile path's policy replayed on measured data.

The public data are Inductor's own max-autotune benchmarks: its mm template's configs (the `choice` strings) and
the aten extern (cuBLAS), timed by the autotuner's benchmarker. So the replay is about the kernel users run. Per
group (one GEMM) with a cuBLAS time and a template config that ran:

- the candidates are the configs Inductor 2.13 offers for the shape (policy.offered_keys), less those the model
  never saw or that do not fit (policy.screen), that the group measured (a config 2.13 offers and the data never
  timed cannot be replayed: `inductor_offered_measured_share` says how many were);
- `predict`: policy.compile_decision's choice (dispatch.decide with the compile path's costs), nothing timed;
- `verify[:K]`: the extern plus the templates verify_policy.candidates names, and Inductor's autotuner keeps the
  fastest measured of them (no noise margin: the autotuner takes the minimum; the data's times are its medians);
  with an epilogue, the extern's time includes its separate epilogue kernel, as Inductor's scheduler compares
  them (config.benchmark_epilogue_fusion, on by default: the extern plus the epilogue kernel against the fastest
  template with the epilogue fused);
- `max-autotune`: Inductor's own choice among every offered config the group measured and the extern;
- the speedup is over the extern alone (Inductor's default without max-autotune).

With `epilogue` ("act", "bias_act") the extern's unfused pointwise kernel (costs.py, modelled) is added to its
measured time wherever it runs; the templates' times stay measured (the fused epilogue assumed free, which the
data cannot check).
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import UserError
from ..measure.dataset import Table
from ..policy import verify_policy
from ..policy.dispatch import Policy, floor_scale
from ..policy.verify_policy import VerifyPolicy
from ..predictor.evaluation import MIN_SPEEDUP, SLOWER_THRESHOLD, _geomean, _groups, _spread
from ..predictor.features import config_matrix, table_device, table_features
from .costs import compile_policy, unfused_epilogue_ms
from .policy import GemmSpec, compile_decision, offered_keys, screen


def _seen(predictor) -> list[str]:
    """A model's candidate keys in its order (a loaded Predictor's candidate_keys, a Fitted's candidates)."""
    keys = getattr(predictor, "candidate_keys", None)
    return list(keys if keys is not None else predictor.candidates)


def replay(predictor, table: Table, vpolicy: VerifyPolicy | None = None, *, epilogue: str | None = None,
           device_lookup=None) -> dict[str, np.ndarray]:  # fmt: skip
    """Per replayed group: "predict", "verify" (vpolicy, default the product's), "max_autotune" and "oracle" (the
    best of every config the group measured) speedups over the extern; "verify_n" (choices the autotuner times,
    the extern included; 1: nothing timed), "max_autotune_n", "to_extern" (predict), "offered", "offered_measured",
    "unseen" (offered configs the model never saw), and the shape ("m", "n", "k")."""
    vpolicy = vpolicy or verify_policy.default_policy()
    pred, dev = _spread(predictor, table_features(table, device_lookup))
    pt = pred[:, 0]
    meta = getattr(predictor, "meta", None) or {}
    floor, kmax = meta.get("time_floor_ms"), meta.get("k_ratio_max")
    base = Policy.from_meta(meta)
    seen = _seen(predictor)
    offered_cache: dict[tuple, list[str]] = {}
    names = ("predict", "verify", "max_autotune", "oracle", "verify_n", "max_autotune_n", "to_extern", "offered",
             "offered_measured", "unseen", "m", "n", "k")  # fmt: skip
    out: dict[str, list] = {k: [] for k in names}
    cols = {c: table[c] for c in ("gpu", "m", "n", "k", "dtype", "a_trans", "b_trans", "tf32")}
    for g in _groups(table):
        if g.torch_row is None or not math.isfinite(g.torch_time):
            continue
        r0 = int(g.torch_row)
        m, n, k = int(cols["m"][r0]), int(cols["n"][r0]), int(cols["k"][r0])
        dtype, a_t, b_t, tf32 = str(cols["dtype"][r0]), bool(cols["a_trans"][r0]), bool(cols["b_trans"][r0]), bool(
            cols["tf32"][r0])  # fmt: skip
        info = table_device(table, str(cols["gpu"][r0]))
        ckey = (m, n, k, dtype)
        if ckey not in offered_cache:
            keys = offered_keys(GemmSpec(m, n, k, dtype, epilogue=epilogue))
            if keys is None:
                raise UserError("eval --backend inductor needs Inductor's template configs, which this torch's"
                                " internals do not give (gpperf_torch/inductor/templates.py)")  # fmt: skip
            offered_cache[ckey] = keys
        offered = offered_cache[ckey]
        measured = {key: j for j, key in enumerate(g.triton_keys) if np.isfinite(g.triton_time[j])}
        kept, left = screen(offered, seen, info, dtype, tf32)
        kept = [c for c in kept if c.key in measured]
        offered_ok = [key for key in offered if key in measured]
        if not offered_ok:
            continue  # no offered config ran here: nothing to replay (Inductor would have the extern alone)
        extra = unfused_epilogue_ms(m, n, 1, dtype, epilogue, info, floor)
        t_ext = g.torch_time + extra  # what the extern path costs (its unfused epilogue modelled)
        tri_t = np.array([g.triton_time[measured[c.key]] for c in kept])
        rows = np.array([g.triton_rows[measured[c.key]] for c in kept] + [r0], dtype=np.int64)
        is_torch = np.zeros(len(rows), dtype=bool)
        is_torch[-1] = True
        t = pt[rows] * floor_scale(pt[rows], floor)
        policy = compile_policy(base, extra)
        d, vidx = compile_decision(t, is_torch, None if dev is None else dev[rows], config_matrix([*kept, None]), m=m,
                                   n=n, k=k, a_trans=a_t, b_trans=b_t, policy=policy, vpolicy=vpolicy,
                                   k_ratio_max=kmax)  # fmt: skip
        chosen = t_ext if d.to_extern else float(tri_t[d.index])
        timed = [i for i in vidx if not is_torch[i]]
        # Inductor's autotuner keeps the fastest; with an epilogue its scheduler then weighs the extern plus the
        # separate epilogue kernel against the fastest template with the epilogue fused (benchmark_epilogue_fusion,
        # on by default): the minimum of the extern path's cost and the templates' times.
        verify_t = min([t_ext, *(float(tri_t[i]) for i in timed)])
        ma_t = min([t_ext, *(float(g.triton_time[measured[key]]) for key in offered_ok)])
        all_best = min(t_ext, float(np.min(g.triton_time[np.isfinite(g.triton_time)])))
        out["predict"].append(t_ext / chosen)
        out["verify"].append(t_ext / verify_t)
        out["max_autotune"].append(t_ext / ma_t)
        out["oracle"].append(t_ext / all_best)
        out["verify_n"].append(len(vidx))
        out["max_autotune_n"].append(len(offered_ok) + 1)
        out["to_extern"].append(d.to_extern)
        out["offered"].append(len(offered))
        out["offered_measured"].append(len(offered_ok))
        out["unseen"].append(sum(1 for why in left.values() if why.startswith("never seen")))
        for name, v in (("m", m), ("n", n), ("k", k)):
            out[name].append(v)
    return {key: np.asarray(v, dtype=np.float64) for key, v in out.items()}


def _summary(s: np.ndarray) -> dict:
    return {"geomean": _geomean(s), "p10": float(np.quantile(s, 0.1)), "min": float(s.min()),
            "share_below_0.97": float(np.mean(s < SLOWER_THRESHOLD)),
            "share_below_0.8": float(np.mean(s < MIN_SPEEDUP))}  # fmt: skip


def inductor_metrics(predictor, table: Table, mode: str | VerifyPolicy = "predict", *, epilogue: str | None = None,
                     device_lookup=None) -> dict:  # fmt: skip
    """The inductor_* keys of `gpperf-torch eval --backend inductor`. `mode`: "predict" or a VerifyPolicy (the
    verify replay's; "predict" replays the product's default verify policy beside it).

    Headline keys of `mode`: inductor_speedup_vs_extern_{geomean, p10, min}, inductor_share_slower_than_extern_3pct,
    inductor_share_below_0.8x, inductor_choices_timed_per_shape (the extern included where anything is timed; 0 in
    predict mode). Then, per policy (predict, verify, max_autotune, oracle: the best measured config of the group,
    offered or not), inductor_<policy>_{geomean, p10, min, share_below_0.97, share_below_0.8}; verify's choices
    per shape; how many configs Inductor offers per shape and the share of them the data measured."""
    vpolicy = mode if isinstance(mode, VerifyPolicy) else verify_policy.default_policy()
    if not isinstance(mode, VerifyPolicy) and mode != "predict":
        raise UserError(f"mode must be 'predict' or a VerifyPolicy, got {mode!r}")
    r = replay(predictor, table, vpolicy, epilogue=epilogue, device_lookup=device_lookup)
    name = "verify" if isinstance(mode, VerifyPolicy) else "predict"
    res: dict = {"inductor_mode": name if name == "predict" else str(vpolicy), "inductor_epilogue": epilogue,
                 "inductor_n_shapes": len(r["predict"])}  # fmt: skip
    if not len(r["predict"]):
        return res
    head = _summary(r[name])
    timed = np.where(r["verify_n"] > 1, r["verify_n"], 0) if name == "verify" else np.zeros(len(r["predict"]))
    res.update(
        inductor_speedup_vs_extern_geomean=head["geomean"], inductor_speedup_vs_extern_p10=head["p10"],
        inductor_speedup_vs_extern_min=head["min"], inductor_share_slower_than_extern_3pct=head["share_below_0.97"],
        inductor_share_below_08x=head["share_below_0.8"], inductor_choices_timed_per_shape=float(np.mean(timed)),
    )  # fmt: skip
    for pol in ("predict", "verify", "max_autotune", "oracle"):
        res.update({f"inductor_{pol}_{k}": v for k, v in _summary(r[pol]).items()})
    res.update(
        inductor_predict_share_to_extern=float(np.mean(r["to_extern"])),
        inductor_verify_policy=str(vpolicy),
        inductor_verify_choices_per_shape=float(np.mean(r["verify_n"])),
        inductor_verify_share_untimed=float(np.mean(r["verify_n"] <= 1)),
        inductor_max_autotune_choices_per_shape=float(np.mean(r["max_autotune_n"])),
        inductor_offered_per_shape=float(np.mean(r["offered"])),
        inductor_offered_measured_share=float(np.sum(r["offered_measured"]) / np.sum(r["offered"])),
        inductor_unseen_per_shape=float(np.mean(r["unseen"])),
    )
    return res


def format_inductor(metrics: dict) -> str:
    """The replay as a table: one line per policy."""
    lines = [f"  compile path ({metrics.get('inductor_mode')}; epilogue {metrics.get('inductor_epilogue')}):"
             f" {metrics.get('inductor_n_shapes', 0)} shapes"]  # fmt: skip
    if not metrics.get("inductor_n_shapes"):
        return "\n".join(lines)
    lines.append(f"  {'policy':<14}{'geomean':>9}{'p10':>8}{'min':>8}{'<0.97x':>8}{'<0.8x':>8}{'choices':>8}")
    timed = {"predict": 1.0, "verify": metrics["inductor_verify_choices_per_shape"],
             "max_autotune": metrics["inductor_max_autotune_choices_per_shape"], "oracle": math.nan}  # fmt: skip
    for pol in ("predict", "verify", "max_autotune", "oracle"):
        g = lambda k, pol=pol: metrics[f"inductor_{pol}_{k}"]  # noqa: E731
        lines.append(f"  {pol:<14}{g('geomean'):>9.4f}{g('p10'):>8.3f}{g('min'):>8.3f}{g('share_below_0.97'):>8.3f}"
                     f"{g('share_below_0.8'):>8.3f}{timed[pol]:>8.2f}")  # fmt: skip
    lines.append(f"  verify: {metrics['inductor_verify_policy']}; offered per shape"
                 f" {metrics['inductor_offered_per_shape']:.1f}, of which measured in the data"
                 f" {metrics['inductor_offered_measured_share']:.0%}, never seen by the model"
                 f" {metrics['inductor_unseen_per_shape']:.1f}")  # fmt: skip
    return "\n".join(lines)


__all__ = ["format_inductor", "inductor_metrics", "replay"]
