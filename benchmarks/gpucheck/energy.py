"""GPU check step `energy`: what NVML windows can tell apart, and what energy-aware selection saves (issue 28).

1 the counter: its update period observed on this GPU (energy windows must be several periods long), the window
  length used;
2 shapes from decode (M = 1) to 4096^3, fp16, Linear's layout: cuBLAS and the shipped model's top-3 configs by
  predicted time, each timed (CUDA events) and measured in energy windows repeated three times, interleaved by
  round; per shape the repeatability of a window (the relative sd of one kernel's repeated windows), the
  energy-optimal candidate against the time-optimal one (saving, slowdown), and what the keep rule keeps
  (policy/energy_policy.py: a saving beyond twice the paired noise and 1%);
3 the decoder example's decode steps (2 layers, GPT-2 width, batch 4): J/token, W, tokens/s, SM clock and
  throttling for plain PyTorch and patched under `time` and `energy`, each after gp.warmup with the guard.
Shapes are taken in order until the step's budget is spent (the decoder keeps its share). Through the
interpreter (the dry run) the same tables are printed on tiny shapes, with energy n/a (no counter).
"""

from __future__ import annotations

import statistics
import time

from .common import Check, log
from .decode import _example

# (M, N, K): decode, small batches, prefill-like, square up to 4096^3 (fp16, B transposed as in Linear)
GPU_SHAPES = [(1, 4096, 4096), (4, 4096, 4096), (16, 4096, 11008), (128, 4096, 4096), (512, 4096, 4096),
              (1024, 1024, 1024), (2048, 2048, 2048), (4096, 4096, 4096)]  # fmt: skip
DRY_SHAPES = [(1, 32, 32), (4, 32, 48), (16, 48, 32), (32, 32, 32)]
TOP = 3
REPEATS = 3
GPU_WINDOW_S = 0.25
DRY_WINDOW_S = 0.05
DECODER_SHARE = 0.35  # of the step's budget, kept for the decoder rows


def step_energy(c: Check) -> dict:
    import torch

    from gpperf_torch import kernels
    from gpperf_torch.measure.energy import NullEnergyMeter, open_energy_meter
    from gpperf_torch.selection import selector

    cuda = torch.cuda.is_available() and not c.dry
    budget = c.budget("energy")
    t0 = time.monotonic()
    selector.reset()
    meter = open_energy_meter(torch.cuda.current_device()) if cuda else NullEnergyMeter("no GPU (dry run)")
    window = GPU_WINDOW_S if cuda else DRY_WINDOW_S
    period = meter.update_period_s(0.5) if meter.available else None
    counter = {"available": bool(meter.available), "reason": meter.reason, "update_period_s": period,
               "window_s": window, "repeats": REPEATS, "conditions": meter.conditions()}  # fmt: skip
    if period is not None and window < 3 * period:
        window = 3 * period  # at least three counter updates per window
        counter["window_s"] = window
    log(f"energy: counter {counter['available']} ({meter.reason or 'NVML'}), update period {period}, window {window}")
    shapes_end = t0 + budget * (1 - DECODER_SHARE)
    rows = []
    for m, n, k in GPU_SHAPES if cuda else DRY_SHAPES:
        if time.monotonic() > shapes_end:
            rows.append({"m": m, "n": n, "k": k, "skipped": "energy budget spent"})
            continue
        try:
            rows.append(_shape(m, n, k, cuda, meter, window, kernels))
        except Exception as e:  # one shape failing is a finding, not the end of the step
            rows.append({"m": m, "n": n, "k": k, "error": f"{type(e).__name__}: {e}"[:300]})
        log(f"energy: {m}x{n}x{k}: {_short(rows[-1])}")
    measured = [r for r in rows if r.get("repeatability") is not None]
    savings = [r["saving"] for r in rows if r.get("saving") is not None]
    decoder = _decoder(c, cuda, window, t0 + budget)
    return {
        "interpreter": not cuda,
        "counter": counter,
        "shapes": rows,
        "repeatability_median": statistics.median(r["repeatability"] for r in measured) if measured else None,
        "saving_median": statistics.median(savings) if savings else None,
        "kept_other_than_fastest": sum(r.get("kept") not in (None, r.get("time_opt")) for r in rows),
        "decoder": decoder,
    }


def _short(r: dict) -> str:
    if "skipped" in r or "error" in r:
        return r.get("skipped") or r.get("error")
    sv = r.get("saving")
    return f"time-opt {r['time_opt']}, energy-opt {r.get('energy_opt')}, saving " + (
        "n/a" if sv is None else f"{sv:.2%}"
    )


def _shape(m: int, n: int, k: int, cuda: bool, meter, window: float, kernels) -> dict:
    import torch

    from gpperf_torch.measure.energy_windows import batch_size, batched, interleaved_windows, repeatability
    from gpperf_torch.nn import GemmShape
    from gpperf_torch.policy.energy_policy import choose_energy
    from gpperf_torch.policy.verify_policy import default_policy, parse
    from gpperf_torch.selection import selector, verify
    from gpperf_torch.selection.ranking import TORCH, measured_head, score
    from gpperf_torch.selection.state import state
    from gpperf_torch.warmup import operands

    dev = torch.device("cuda" if cuda else "cpu")
    dtype = "float16" if cuda else "float32"
    a, b = operands(GemmShape(m, n, k, dtype, False, True), dev)
    st = state(dev)
    key = selector._key(a, b, "time")
    cands = selector.measured_candidates(st, key, "verify")[0]
    if len(cands) < TOP + 1:  # the top-3 by predicted time, whatever the skip rule says
        cands = measured_head(score(st, key), parse(f"verify:{TOP}"))
    res = verify.measure_candidates(a, b, cands, default_policy(), max_shared_memory=st.info.max_shared_memory)
    out = torch.empty((m, n), device=dev, dtype=a.dtype)
    sync = torch.cuda.synchronize if cuda else None
    runs = {}
    for ckey in res.times_ms:
        cfg = None if ckey == TORCH else kernels.TileConfig.from_key(ckey)

        def fn(cfg=cfg):
            if cfg is None:
                torch.matmul(a, b, out=out)
            else:
                kernels.launch(a, b, out, cfg, max_shared_memory=st.info.max_shared_memory, check=False)

        runs[ckey] = batched(fn, batch_size(res.times_ms[ckey] / 1e3), sync)
    w = interleaved_windows(meter, runs, window_s=window, repeats=REPEATS)
    time_opt = min(res.times_ms, key=res.times_ms.get)
    row: dict = {"m": m, "n": n, "k": k, "dtype": dtype, "time_opt": time_opt, "rounds": w.rounds,
                 "window_s": window, "candidates": []}  # fmt: skip
    for ckey, ms in res.times_ms.items():
        e = w.energies(ckey)
        ws = w.by_key.get(ckey, [])
        row["candidates"].append({
            "config": ckey, "ms": ms, "j": statistics.median(e) if e else None,
            "w": statistics.median(x.power_w for x in ws) if ws else None,
            "j_cv": statistics.stdev(e) / statistics.mean(e) if len(e) >= 2 else None, "windows": len(e),
        })  # fmt: skip
    row["repeatability"] = repeatability(w)
    row["throttled"], row["throttle_reasons"] = w.throttled(), w.throttle_reasons()
    row["sm_clock_mhz"] = w.sm_clock_mhz()
    js = {c["config"]: c["j"] for c in row["candidates"] if c["j"] is not None}
    if js and time_opt in js:
        e_opt = min(js, key=js.get)
        row.update(energy_opt=e_opt, saving=1 - js[e_opt] / js[time_opt],
                   slowdown=res.times_ms[e_opt] / res.times_ms[time_opt] - 1)  # fmt: skip
        by = {kk: {x.round: (x.energy_j, x.power_w, x.ms_per_unit) for x in v} for kk, v in w.by_key.items()}
        ch = choose_energy("energy", None, time_opt, res.times_ms, by, default_policy())
        row.update(kept=ch.kept, keep_reason=ch.reason, keep_margin=ch.margin)
    else:
        row.update(energy_opt=None, saving=None, slowdown=None, kept=None,
                   keep_reason=f"energy n/a ({getattr(meter, 'reason', '') or 'no windows'})")  # fmt: skip
    return row


def _decoder(c: Check, cuda: bool, window: float, t_end: float) -> dict:
    """J/token of the decoder's decode steps: plain, and patched under time and energy after warmup + guard."""
    import os

    import torch

    import gpperf_torch as gp
    from gpperf_torch.selection import selector

    ex = _example()
    device = "cuda" if cuda else "cpu"
    if cuda:
        cfg = ex.DecoderConfig(vocab=50257, d_model=768, n_layers=2, n_heads=12, d_ff=3072, max_seq=1024)
        batch, prompt_len, steps, dtype, seconds = 4, 32, 8, torch.float16, max(window, 0.3)
    else:
        cfg = ex.DecoderConfig(vocab=96, d_model=32, n_layers=1, n_heads=2, d_ff=128, max_seq=64)
        batch, prompt_len, steps, dtype, seconds = 1, 4, 2, torch.float32, 0.05
    # warmup's energy windows per GEMM: short, so that the three rows fit the decoder's share
    env = {"GPPERF_ENERGY_WINDOW_S": str(window), "GPPERF_ENERGY_REPEATS": "2", "GPPERF_ENERGY_BUDGET_S": "1.5",
           "GPPERF_GUARD_BUDGET_MS": "300"}  # fmt: skip
    if not cuda:
        env["GPPERF_VERIFY_TOP_K"] = "1"  # the interpreter: the same path, fewer candidates to run through it
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    selector.reset()
    torch.manual_seed(0)
    model = ex.Decoder(cfg).to(device=device, dtype=dtype).eval()
    prompt = torch.randint(0, cfg.vocab, (batch, prompt_len), device=device)
    rows = []
    try:
        with torch.inference_mode():
            last, cache = ex.prefill(model, prompt)
            first = last.argmax(-1)

            def run():
                ex.decode(model, first, cache, steps)

            for name, obj in (("plain", None), ("time, guard", "time"), ("energy, guard", "energy")):
                r: dict = {"row": name}
                if time.monotonic() > t_end:
                    r["skipped"] = "energy budget spent"
                    rows.append(r)
                    continue
                try:
                    if obj is not None:
                        gp.patch(model)
                        rep = gp.warmup(model, (first[:, None], cache), objective=obj, guard=True, progress=False)
                        g = rep.guard or {}
                        r["guard"] = g.get("skipped") or ("kept" if g.get("kept_patched") else "reverted")
                        r["guard_reason"] = g.get("reason", "")
                    with gp.objective(obj or "time"):
                        e = gp.energy.measure(run, seconds=seconds, repeats=3)
                except Exception as ex_:  # one row failing is a finding
                    r["error"] = f"{type(ex_).__name__}: {ex_}"[:300]
                    rows.append(r)
                    continue
                finally:
                    gp.unpatch(model)
                tokens = batch * steps
                r.update(tokens_per_s=None if e.calls_per_s is None else e.calls_per_s * tokens,
                         j_per_token=None if e.j_per_call is None else e.j_per_call / tokens, watts=e.watts,
                         sm_clock_mhz=e.sm_clock_mhz, throttled=e.throttled, throttle_reasons=e.throttle_reasons,
                         spread=e.spread, energy_na=e.unknown.get("j_per_call", ""))  # fmt: skip
                rows.append(r)
                log(f"energy decoder {name}: {r['tokens_per_s']:.1f} tokens/s, J/token {r['j_per_token']}")
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        selector.reset()
    return {"model": f"{cfg.n_layers} layers, d_model {cfg.d_model}, batch {batch}, {steps} decode steps, "
            f"{str(dtype).replace('torch.', '')}", "rows": rows}  # fmt: skip


def _f(x, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def energy_table(res: dict) -> list[str]:
    """The energy step's tables (summary.md)."""
    if not res.get("shapes") and not res.get("decoder"):
        return []
    cn = res.get("counter", {})
    lines = ["", "energy: NVML counter " + ("available" if cn.get("available") else f"n/a ({cn.get('reason')})")
             + f", update period {_f(cn.get('update_period_s'), '.4f')} s, windows of {cn.get('window_s')} s x "
             f"{cn.get('repeats')} interleaved; median window repeatability (sd / mean of one kernel's windows) "
             f"{_f(res.get('repeatability_median'), '.2%')}"
             + (" -- INTERPRETER NUMBERS (CPU wall clock, no energy counter)" if res.get("interpreter") else ""),
             "", "| shape | candidates | time-opt | ms | J/GEMM | energy-opt | saving | slowdown | kept by the rule "
             "| repeatability | throttled |", "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in res.get("shapes", []):
        shape = f"{r['m']}x{r['n']}x{r['k']}"
        if "candidates" not in r:
            lines.append(f"| {shape} | {r.get('skipped') or r.get('error')} | | | | | | | | | |")
            continue
        top = next(c for c in r["candidates"] if c["config"] == r["time_opt"])
        thr = "n/a" if r.get("throttled") is None else (", ".join(r["throttle_reasons"]) or "no")
        lines.append(f"| {shape} | {len(r['candidates'])} | {r['time_opt']} | {top['ms']:.4f} | {_f(top['j'], '.4g')}"
                     f" | {r.get('energy_opt') or 'n/a'} | {_f(r.get('saving'), '.2%')}"
                     f" | {_f(r.get('slowdown'), '+.2%')} | {r.get('kept') or 'n/a'}"
                     f" | {_f(r.get('repeatability'), '.2%')} | {thr} |")  # fmt: skip
    dec = res.get("decoder") or {}
    if dec.get("rows"):
        lines += ["", f"decoder J/token ({dec.get('model')}):", "",
                  "| row | tokens/s | J/token | W | SM MHz | throttled | guard |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in dec["rows"]:
            if "tokens_per_s" not in r:
                lines.append(f"| {r['row']} | {r.get('skipped') or r.get('error')} | | | | | |")
                continue
            thr = "n/a" if r.get("throttled") is None else (", ".join(r["throttle_reasons"]) or "no")
            lines.append(f"| {r['row']} | {_f(r['tokens_per_s'], '.1f')} | {_f(r['j_per_token'], '.4g')} | "
                         f"{_f(r['watts'], '.1f')} | {_f(r['sm_clock_mhz'], '.0f')} | {thr} |"
                         f" {r.get('guard', '-')} |")  # fmt: skip
    return lines
