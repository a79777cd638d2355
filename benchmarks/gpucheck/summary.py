"""The GPU check's summary.md: one row per step, then the end-to-end and decode tables."""

from __future__ import annotations

from .compile import compile_table
from .decode import decode_table
from .energy import energy_table
from .verify import verify_table


# ---- summary ------------------------------------------------------------------------------------------
def _fmt(x, nd=3) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{nd}f}" if abs(x) < 1e4 else f"{x:.3g}"
    return str(x)


def summary_markdown(s: dict, step_order: list[str]) -> str:
    st = s["steps"]
    env = st.get("env", {}).get("result", {})
    lines = [
        f"# gpperf-torch GPU check: {env.get('gpu', '?')}",
        "",
        f"started {s['started']}, elapsed {s.get('elapsed_s')} s, dry run: {s['dry_run']}; "
        f"torch {env.get('torch')}, triton {env.get('triton')}, driver {env.get('driver', '-')}, "
        f"power limit {env.get('power_limit_w', '-')} W, missing: {', '.join(env.get('missing', [])) or 'none'}",
        "",
        "| step | status | s | result |",
        "|---|---|---|---|",
    ]
    for name in step_order:
        r = st.get(name)
        if r is None:
            lines.append(f"| {name} | not run | - | - |")
            continue
        res = r.get("result") or {}
        if name == "tests":
            txt = (
                f"{res.get('passed', '?')} passed, {res.get('failures', 0) + res.get('errors', 0)} failed, "
                f"{res.get('skipped', 0)} skipped" + (" (timed out)" if res.get("timed_out") else "")
            )
        elif name == "tune":
            ec = res.get("energy_check", {})
            txt = (
                f"{res.get('rows_written')} rows ({res.get('rows_per_s', 0):.1f}/s), {res.get('problems')} "
                f"problems, energy rows {ec.get('rows_with_energy', 0)}, E/t vs P "
                f"{_fmt(ec.get('energy_over_time_vs_power_median'))}, W min/med/max "
                f"{ec.get('power_w_min_median_max', '-')}"
            )
        elif name == "predict":
            h = res.get("held_out", {})
            sh = res.get("shipped_on_new_data", {})
            txt = (
                f"held-out: geomean regret {_fmt(h.get('geomean_regret'))}, p90 {_fmt(h.get('p90_regret'))}, "
                f"within 5% {_fmt(h.get('within_5pct'))}, r2_log_time {_fmt(h.get('r2_log_time'))}, best static "
                f"{_fmt(h.get('baseline_best_static_regret'))}, n={h.get('n_shapes')}; shipped "
                f"{res.get('shipped_model', '-')} on new data: regret {_fmt(sh.get('geomean_regret'))}"
            )
        elif name == "e2e":
            txt = (
                f"{res.get('shapes', 0)} shapes; gpperf/torch {_fmt(res.get('geomean_gpperf_over_torch'))}, "
                f"gpperf/measured best {_fmt(res.get('geomean_gpperf_over_measured_best'))}, gpperf/autotune "
                f"{_fmt(res.get('geomean_gpperf_over_autotune'))}, energy-obj J/time-obj J "
                f"{_fmt(res.get('geomean_energy_obj_j_over_time_obj_j'))} at ms ratio "
                f"{_fmt(res.get('geomean_energy_obj_ms_over_time_obj_ms'))}"
            )
        elif name == "overhead":
            host = res.get("host_us_per_call", {})
            txt = (
                f"first sight 30 cands {_fmt((res.get('first_sight_30_ms') or [None])[0])} ms, cached choose "
                f"{_fmt((res.get('cached_choose_us') or [None])[0], 1)} us; host us/call: "
                + ", ".join(f"{k} {v:.1f}" for k, v in host.items())
            )
        elif name == "decode":
            by = {r["row"]: r for r in res.get("rows", []) if "tokens_per_s" in r}
            txt = (
                ("interpreter numbers; " if res.get("interpreter") else "")
                + "tokens/s: "
                + ", ".join(f"{k} {v['tokens_per_s']:.1f}" for k, v in by.items())
            )
            if res.get("front_host_us_per_gemm") is not None:
                txt += f"; our host cost {res['front_host_us_per_gemm']:+.2f} us per GEMM call"
        elif name == "verify":
            ms = [m for m in res.get("models", []) if "verify_ms" in m]
            nc = res.get("noise_check") or {}
            txt = ("interpreter numbers; " if res.get("interpreter") else "") + "verify/plain: " + ", ".join(
                f"{m['model']} {m['verify_ms'] / m['plain_ms']:.3f}" for m in ms)  # fmt: skip
            if "triton_choices" in nc:
                txt += f"; noise check: {nc['share_slower']:.0%} of {nc['triton_choices']} Triton choices slower"
        elif name == "compile":
            by = [r for r in res.get("rows", []) if "steady_ms" in r]
            txt = ("CPU lowering (the hook defers); " if res.get("cpu_lowering") else "") + "; ".join(
                f"{r['model']} {r['config']} {r['compile_s']:.1f} s / {r['steady_ms']:.3f} ms" for r in by)  # fmt: skip
        elif name == "energy":
            cn = res.get("counter", {})
            dec = {r["row"]: r for r in (res.get("decoder") or {}).get("rows", []) if "tokens_per_s" in r}
            rep, sav = res.get("repeatability_median"), res.get("saving_median")
            txt = (("interpreter numbers; " if res.get("interpreter") else "")
                   + ("counter, period " + _fmt(cn.get("update_period_s"), 4) + " s" if cn.get("available")
                      else "energy n/a (no counter)")
                   + f"; window repeatability {'n/a' if rep is None else f'{rep:.2%}'}, energy-opt saving median "
                   f"{'n/a' if sav is None else f'{sav:.2%}'}; J/token "
                   + ", ".join(f"{k} {'n/a' if v.get('j_per_token') is None else _fmt(v['j_per_token'], 4)}"
                               for k, v in dec.items()))  # fmt: skip
        elif name == "env":
            txt = (
                f"{env.get('sm_count', '-')} SMs, smem {env.get('max_shared_memory', '-')} B, energy counter "
                f"{env.get('energy_counter', False)}, idle {_fmt(env.get('idle_power_w'), 1)} W"
            )
        else:
            txt = ", ".join(res.get("files", [])) if isinstance(res, dict) else str(res)
        if name == "tests" and res.get("runs"):
            txt += (
                " ("
                + ", ".join(
                    f"{k.replace('_', ' ')}: {v.get('passed', 0)} passed, {v.get('failures', 0) + v.get('errors', 0)} "
                    f"failed"
                    if "skipped" not in v or isinstance(v.get("skipped"), int)
                    else f"{k}: {v['skipped']}"
                    for k, v in res["runs"].items()
                )
                + ")"
            )
        if r.get("error"):
            txt = f"ERROR {r['error'][:160]}"
        lines.append(f"| {name} | {r['status']} | {r.get('seconds', '-')} | {txt} |")
    rows = st.get("e2e", {}).get("result", {}).get("rows", [])
    if rows:
        lines += [
            "",
            "| shape (fp16) | torch ms | gpperf ms | verify ms | exhaustive ms | autotune ms | measured best "
            "| gpperf first ms | autotune first ms | config |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            lines.append(
                f"| {r['m']}x{r['n']}x{r['k']} {'nt' if r['b_trans'] else 'nn'} | {_fmt(r.get('torch_ms'), 4)} | "
                f"{_fmt(r.get('gpperf_predict_ms'), 4)} | {_fmt(r.get('gpperf_verify_ms'), 4)} | "
                f"{_fmt(r.get('gpperf_exhaustive_ms'), 4)} | {_fmt(r.get('autotune_ms'), 4)} | "
                f"{_fmt(r.get('measured_best_ms'), 4)} | {_fmt(r.get('gpperf_predict_first_ms'), 1)} | "
                f"{_fmt(r.get('autotune_first_ms'), 1)} | {r.get('gpperf_predict_config')} |"
            )
    lines += verify_table(st.get("verify", {}).get("result") or {})
    lines += compile_table(st.get("compile", {}).get("result") or {})
    lines += energy_table(st.get("energy", {}).get("result") or {})
    lines += decode_table(st.get("decode", {}).get("result") or {})
    return "\n".join(lines) + "\n"
