"""GPU check step 5: held-out shapes end to end (gpperf predict / verify / exhaustive vs torch.matmul vs the measured
best vs triton.autotune), and energy per objective."""

from __future__ import annotations

import csv
import math
import time

from .common import Check, log
from .tune import check_configs


# ---- 5 e2e --------------------------------------------------------------------------------------------
def _held_out_problems(c: Check, limit: int) -> list[dict]:
    t = c.state.get("held_out_table")
    if t is None:
        return []
    seen, out = set(), []
    for i in range(len(t)):
        key = (
            int(t["m"][i]),
            int(t["n"][i]),
            int(t["k"][i]),
            str(t["dtype"][i]),
            int(t["a_trans"][i]),
            int(t["b_trans"][i]),
        )
        if key in seen or key[3] != "float16":
            continue
        seen.add(key)
        ok = (t.group_id == t.group_id[i]) & t.ok & (t["backend"] == "triton")
        best = float(t["time_ms"][ok].min()) if ok.any() else float("nan")
        out.append(dict(zip(("m", "n", "k", "dtype", "a_trans", "b_trans"), key, strict=True), measured_best_ms=best))
    out.sort(key=lambda p: p["m"] * p["n"] * p["k"])
    if len(out) > limit:  # spread over sizes
        idx = [round(i * (len(out) - 1) / (limit - 1)) for i in range(limit)]
        out = [out[i] for i in idx]
    return out


def _operands(p: dict, device: str):
    import torch

    dt = getattr(torch, p["dtype"])
    a = (
        torch.randn(p["k"], p["m"], device=device).to(dt).t()
        if p["a_trans"]
        else torch.randn(p["m"], p["k"], device=device).to(dt)
    )
    b = (
        torch.randn(p["n"], p["k"], device=device).to(dt).t()
        if p["b_trans"]
        else torch.randn(p["k"], p["n"], device=device).to(dt)
    )
    return a, b


def _autotuned_kernel(configs):
    import triton

    from gpperf_torch.kernels import matmul as km

    tconfigs = [
        triton.Config(
            {"BLOCK_M": cf.block_m, "BLOCK_N": cf.block_n, "BLOCK_K": cf.block_k, "GROUP_M": cf.group_m, "SPLIT_K": 1},
            num_warps=cf.num_warps,
            num_stages=cf.num_stages,
        )
        for cf in configs
        if cf.split_k == 1  # split-K needs our reduction pass: not expressible in autotune
    ]
    return triton.autotune(configs=tconfigs, key=["M", "N", "K"])(km._matmul_kernel), len(tconfigs)


def _launch_autotuned(kernel, a, b, out):
    import triton

    from gpperf_torch.kernels.align import launch_constexprs

    M, K = a.shape
    N = b.shape[1]
    # The alignment facts launch() passes (kernels/align.py; INDEX_64 with the largest tile padding): the same binary
    # class as our launches. EVEN_K does depend on BLOCK_K, which autotune picks: the masked K loop, always right.
    ptrs = (a.data_ptr() % 16 == 0, b.data_ptr() % 16 == 0, out.data_ptr() % 16 == 0)
    index_64, divs = launch_constexprs(
        M, N, K, a.stride(), b.stride(), out.stride(), ptrs, a.element_size(), out.element_size(), (256, 256, 256)
    )

    def grid(meta):
        return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]), 1, 1)

    kernel[grid](
        a,
        b,
        out,
        out,  # bias pointer, unused (HAS_BIAS=False)
        M,
        N,
        K,
        0,
        a.stride(0),
        a.stride(1),
        0,
        b.stride(0),
        b.stride(1),
        0,
        0,
        out.stride(0),
        out.stride(1),
        0,
        INPUT_PRECISION="tf32",
        UPCAST=False,
        INDEX_64=index_64,
        HAS_BIAS=False,
        EVEN_K=False,
        **divs,
    )


def _e2e_problem(p: dict, device: str, timer, meter, model_dir, autotune) -> dict:
    """One held-out shape: every contender's steady-state time and time to first result; energy per objective."""
    import torch

    import gpperf_torch as gp
    from gpperf_torch.measure import timing as measure
    from gpperf_torch.selection import selector, state

    a, b = _operands(p, device)
    out = torch.empty(a.shape[0], b.shape[1], device=device, dtype=a.dtype)
    row = dict(p)

    def first_and_steady(fn, name: str) -> None:
        t0 = time.perf_counter()
        fn(0)
        if device == "cuda":
            torch.cuda.synchronize()
        row[f"{name}_first_ms"] = (time.perf_counter() - t0) * 1e3
        budget_ms = 20.0 if device == "cuda" else 2.0
        row[f"{name}_ms"] = timer.measure(fn, budget_ms=budget_ms, min_reps=3, max_reps=500).median_ms

    first_and_steady(lambda _i: torch.matmul(a, b, out=out), "torch")
    for md in ("predict", "verify", "exhaustive"):
        if md == "exhaustive" and device != "cuda":
            continue  # exhaustive through the interpreter is minutes per shape
        selector.reset()  # first sight again: time to first result includes selection
        if model_dir is not None:
            state.set_model(str(model_dir), device)
        with gp.mode(md):
            first_and_steady(lambda _i: gp.matmul(a, b), f"gpperf_{md}")
            cfg = selector.choose(a, b, None, None)
        row[f"gpperf_{md}_config"] = "torch" if cfg is None else cfg.key
    if autotune is not None:
        kernel, n_configs = autotune
        try:
            first_and_steady(lambda _i: _launch_autotuned(kernel, a, b, out), "autotune")
            row["autotune_configs"] = n_configs
        except Exception as e:
            row["autotune_error"] = f"{type(e).__name__}: {e}"[:200]
    if meter is not None and getattr(meter, "available", False):
        for obj in ("time", "energy"):
            try:
                # the predicted choice per objective: measured energy (windows of seconds per shape) is the energy
                # step's, within its own budget
                with gp.objective(obj), gp.mode("predict"):
                    cfg = selector.choose(a, b, None, None)
                    run, release = measure.cuda_batch_runner(lambda _i: gp.matmul(a, b), row["gpperf_predict_ms"])
                    e = meter.measure(run, 0.3)
                    release()
                row[f"{obj}_objective_config"] = "torch" if cfg is None else cfg.key
                if e is not None:
                    row[f"{obj}_objective_j_per_gemm"] = e.energy_j
                    row[f"{obj}_objective_ms_per_gemm"] = e.window_s / e.reps * 1e3
                    row[f"{obj}_objective_w"] = e.power_w
            except ValueError as err:  # a time-only model: say so
                row[f"{obj}_objective_error"] = str(err)[:200]
    return row


def step_e2e(c: Check) -> dict:
    import torch

    from gpperf_torch.measure import timing as measure
    from gpperf_torch.selection import state

    device = "cuda" if torch.cuda.is_available() and not c.dry else "cpu"
    problems = _held_out_problems(c, limit=c.opts.e2e_shapes if not c.dry else 2)
    if not problems:
        return {"skipped": "no held-out fp16 shapes"}
    budget = c.budget("e2e")
    t_end = time.monotonic() + budget
    timer = measure.CudaEventTimer() if device == "cuda" else measure.WallTimer()
    meter = measure.open_energy_meter(0) if device == "cuda" else None
    model_dir = c.state.get("split_model")
    if model_dir is not None:
        state.set_model(str(model_dir), device)
    tuned_kernel, n_auto = _autotuned_kernel(c.state.get("configs") or check_configs(c.dry, c.opts.configs))
    rows = []
    for i, p in enumerate(problems):
        if time.monotonic() > t_end:
            break
        autotune = (tuned_kernel, n_auto) if device == "cuda" and i < c.opts.autotune_shapes else None
        row = _e2e_problem(p, device, timer, meter, model_dir, autotune)
        rows.append(row)
        log(f"e2e {p['m']}x{p['n']}x{p['k']}: torch {row['torch_ms']:.4f} ms, gpperf {row['gpperf_predict_ms']:.4f} ms")
    if rows:
        keys = sorted({k for r in rows for k in r}, key=lambda k: (k not in problems[0], k))
        with open(c.out / "e2e.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)
    res = {"shapes": len(rows), "rows": rows}

    def geo(num, den):
        xs = [r[num] / r[den] for r in rows if r.get(num) and r.get(den) and r[den] > 0 and math.isfinite(r[den])]
        return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else None

    res["geomean_gpperf_over_torch"] = geo("gpperf_predict_ms", "torch_ms")
    res["geomean_gpperf_over_measured_best"] = geo("gpperf_predict_ms", "measured_best_ms")
    res["geomean_gpperf_over_autotune"] = geo("gpperf_predict_ms", "autotune_ms")
    res["geomean_verify_over_torch"] = geo("gpperf_verify_ms", "torch_ms")
    res["geomean_energy_obj_j_over_time_obj_j"] = geo("energy_objective_j_per_gemm", "time_objective_j_per_gemm")
    res["geomean_energy_obj_ms_over_time_obj_ms"] = geo("energy_objective_ms_per_gemm", "time_objective_ms_per_gemm")
    return res
