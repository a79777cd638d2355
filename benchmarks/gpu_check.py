"""The prepared GPU check: one command that turns a short GPU lease into evidence.

    make gpu-check                    # on a GPU machine (benchmarks/README.md has the exact device call)
    make gpu-check-dry                # the same steps on CPU through the Triton interpreter, tiny sizes

Steps, in the order that makes a cut-off run still useful (each stops at its budget; the summary is rewritten
after every step, so whatever ran is on disk):
  1 env       GPU, SMs, clocks, power limit, driver, library versions, what is missing
  2 tests     the CUDA-marked tests (all dtypes incl. bf16, odd shapes, split-K, opcheck, torch.compile)
  3 tune      a budgeted tuning run (runtime + NVML energy), llm + random shapes, fp16 and bf16
  4 predict   train on a grouped 70% of the new data, evaluate on the held-out shapes; evaluate the shipped
              model on all new shapes (does the public-data model transfer to our kernel?)
  5 e2e       held-out shapes: gpperf (predict / verify / exhaustive) vs torch.matmul vs the measured best vs
              triton.autotune over the same candidates (steady state and time to first result); objective
              energy vs time (joules and ms per GEMM)
  6 overhead  benchmarks/selection_overhead.py here: first-sight latency, cached path, host time per call of
              gpperf_torch.matmul vs kernels.launch vs torch.matmul
  7 model     a model retrained on all new data, written beside the results (ready for gpperf_torch/data/)
Everything goes to --out (default $OUT, else results/<gpu>-<date>/): summary.json, summary.md, tune.csv,
e2e.csv, tests.xml, model.onnx, model.json (and log.txt from gpu_check.sh): eight files at most.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import random
import signal
import subprocess
import sys
import time
import traceback
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Budgets (seconds) sized for a 7-minute run on an H100/H200 with 16 CPU cores; see benchmarks/README.md. The H200 run
# of 2026-11-26 showed the tuning step is compile-bound (~1.5 rows/s with 28 configs x 2 dtypes over 20 shapes:
# each new shape divisibility pattern compiles every config again), so it gets the largest share.
GPU_BUDGETS = {"tests": 70, "tune": 190, "predict": 20, "e2e": 60, "overhead": 15, "model": 15}
DRY_BUDGETS = {"tests": 90, "tune": 25, "predict": 30, "e2e": 40, "overhead": 20, "model": 20}
GPU_TOTAL_S = 420
# triton.autotune with its default benchmarking (25 ms warm-up + 100 ms per config) costs seconds per shape:
# measured on the first few held-out shapes only.
AUTOTUNE_SHAPES = 2
DRY_TOTAL_S = 280


class Check:
    def __init__(self, out: Path, dry: bool, budgets: dict[str, float], total_s: float):
        self.out = out
        self.dry = dry
        self.budgets = budgets
        self.t0 = time.monotonic()
        self.deadline = self.t0 + total_s
        self.summary: dict = {
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "dry_run": dry,
            "steps": {},
        }
        self.state: dict = {}

    def budget(self, step: str) -> float:
        later = [s for s in STEP_ORDER[STEP_ORDER.index(step) + 1 :]]
        reserve = sum(min(self.budgets[s], 15) for s in later if s in self.budgets)  # keep a little for later steps
        return max(1.0, min(self.budgets.get(step, 30), self.deadline - time.monotonic() - reserve))

    def write(self) -> None:
        self.summary["elapsed_s"] = round(time.monotonic() - self.t0, 1)
        (self.out / "summary.json").write_text(json.dumps(self.summary, indent=1, default=_json_default))
        (self.out / "summary.md").write_text(summary_markdown(self.summary))


def _json_default(o):
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    return str(o)


def log(msg: str) -> None:
    print(f"[gpu-check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---- 1 env --------------------------------------------------------------------------------------------
def step_env(c: Check) -> dict:
    import torch
    import triton

    info: dict = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda_available": torch.cuda.is_available(),
        "interpreter": os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"),
    }
    missing = []
    for mod in ("onnxruntime", "sklearn", "skl2onnx", "onnx", "pynvml", "platformdirs", "filelock", "rich"):
        try:
            m = __import__(mod)
            info[f"{mod}_version"] = getattr(m, "__version__", "?")
        except ImportError:
            missing.append(mod)
    info["missing"] = missing
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(
            gpu=p.name,
            sm_count=p.multi_processor_count,
            capability=f"{p.major}.{p.minor}",
            memory_gib=round(p.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
        )
        from gpperf_torch import measure
        from gpperf_torch.device import current_device

        d = current_device()
        info.update(
            max_shared_memory=d.max_shared_memory,
            l2_mib=round(d.l2_bytes / 2**20, 1),
            sm_clock_max_mhz=d.sm_clock_mhz,
            mem_clock_max_mhz=d.mem_clock_mhz,
            power_limit_w=d.power_limit_w,
            driver=measure.driver_version(),
        )
        meter = measure.open_energy_meter(0)
        info["energy_counter"] = bool(getattr(meter, "available", False))
        info["energy_reason"] = getattr(meter, "reason", "")
        if info["energy_counter"]:
            info["idle_power_w"] = meter.idle_power_w(1.0)
            info["conditions"] = meter.conditions()
    else:
        info["gpu"] = "none (Triton interpreter)" if info["interpreter"] else "none"
    c.state["gpu"] = info.get("gpu", "cpu")
    return info


# ---- 2 tests ------------------------------------------------------------------------------------------
def step_tests(c: Check) -> dict:
    xml = c.out / "tests.xml"
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        f"--junitxml={xml}",
        "-o",
        "junit_family=xunit2",
    ]
    if c.dry:
        # CPU: the same machinery on a slice of the interpreter tests (the cuda cases skip here).
        cmd += ["tests/test_kernel.py", "tests/test_op.py", "-k", "100x37x53 or opcheck or split_k or cuda"]
    else:
        cmd += ["-m", "cuda", "tests"]
        try:
            import xdist  # noqa: F401  (pytest-xdist: compile in parallel processes)

            cmd += ["-n", "8"]
        except ImportError:
            pass
    budget = c.budget("tests")
    log(f"tests: {' '.join(cmd[3:])} (budget {budget:.0f} s)")
    log_path = c.out / "tests.log"
    with open(log_path, "w") as logf:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=logf, stderr=subprocess.STDOUT, text=True)
        timed_out = False
        try:
            proc.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            # Ctrl-C: pytest stops and still writes the junit report of what ran.
            timed_out = True
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    tail = log_path.read_text(errors="replace")[-3000:]
    log_path.unlink()  # its tail goes into summary.json (the device call brings back 8 files at most)
    res = {"command": " ".join(cmd[1:]), "timed_out": timed_out, "tail": tail[-1500:]}
    if xml.exists():
        root = ET.parse(xml).getroot()
        suite = root if root.tag == "testsuite" else root.find("testsuite")
        n = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        n["passed"] = n["tests"] - n["failures"] - n["errors"] - n["skipped"]
        res.update(n)
        res["failed_names"] = [
            f"{tc.get('classname')}::{tc.get('name')}"
            for tc in suite.iter("testcase")
            if tc.find("failure") is not None or tc.find("error") is not None
        ][:30]
    return res


# ---- 3 tune -------------------------------------------------------------------------------------------
def check_configs(dry: bool, count: int = 48):
    """The fixed candidate sample every shape is measured on (so regret, autotune and e2e compare alike)."""
    from gpperf_torch.kernels import TileConfig, candidate_space

    if dry:
        return [
            TileConfig(16, 32, 32),
            TileConfig(32, 32, 64, num_warps=2),
            TileConfig(16, 64, 32, split_k=2),
            TileConfig(32, 16, 32, group_m=1),
        ]
    space = candidate_space(elem_size=2, max_shared_memory=232448)
    rng = random.Random(20261126)
    # Stratified: every block_m x split-K family is represented, then a seeded fill up to 48.
    by_family: dict = {}
    for cfg in space:
        by_family.setdefault((cfg.block_m, cfg.split_k > 1, cfg.num_warps <= 2), []).append(cfg)
    chosen = [rng.choice(v) for _, v in sorted(by_family.items())]
    rest = [cfg for cfg in space if cfg not in chosen]
    rng.shuffle(rest)
    chosen += rest[: max(0, count - len(chosen))]
    # Configs Triton's tutorial and Inductor rely on, so the measured best is never far from the usual picks.
    for cfg in (
        TileConfig(128, 256, 64, num_warps=8, num_stages=3),
        TileConfig(128, 128, 64, num_warps=8, num_stages=4),
        TileConfig(64, 128, 64, num_warps=4, num_stages=4),
        TileConfig(128, 128, 32, num_warps=4, num_stages=4),
    ):
        if cfg not in chosen:
            chosen.append(cfg)
    return chosen


def check_shapes(dry: bool, n_llm: int = 14, n_random: int = 16) -> list[tuple[int, int, int]]:
    from gpperf_torch.shapes import llm_shapes, random_shapes

    if dry:
        return [(16, 32, 64), (33, 47, 29), (64, 64, 64), (1, 96, 128), (100, 37, 53), (48, 80, 16)]
    # Triton compiles a kernel per config and per shape class (each of M, N, K: ==1, a multiple of 16, or
    # other). The H200 run of 2026-11-26 spent its tuning budget compiling (1.5 rows/s over ~8 classes), so the
    # shapes here fall in two classes: M=1 or every size a multiple of 16 (llm decode with 2-8 tokens and odd
    # random sizes are left to longer runs: `gpperf-torch tune --preset random`).
    rng = random.Random(7)
    llm = [s for s in llm_shapes() if s[0] == 1 or s[0] % 16 == 0]
    picked = rng.sample(llm, n_llm)

    def up16(x: int) -> int:
        return max(16, (x + 15) // 16 * 16)

    rand = [(up16(m), up16(n), up16(k)) for m, n, k in random_shapes(80, seed=11, max_dim=16384) if m * n * k <= 2**37][
        :n_random
    ]
    return picked + rand


def step_tune(c: Check) -> dict:
    from gpperf_torch.tune import tune

    o = c.opts
    shapes = check_shapes(c.dry, o.llm_shapes, o.random_shapes)
    configs = check_configs(c.dry, o.configs)
    budget = c.budget("tune")
    csv_path = c.out / "tune.csv"
    log(
        f"tune: {len(shapes)} shapes x fp16,bf16 x {','.join(o.layouts)} x {len(configs)} configs "
        f"(budget {budget:.0f} s)"
    )
    summary = tune(
        csv_path,
        shapes=shapes,
        dtypes=("fp16", "bf16"),
        layouts=tuple(o.layouts),
        configs=configs,
        budget_s=budget,
        time_budget_ms=10.0 if not c.dry else 1.0,
        energy_fraction=o.energy_fraction if not c.dry else 0.0,
        energy_window_s=0.2,
        idle_s=1.0 if not c.dry else 0.1,
        jobs=min(16, os.cpu_count() or 4),
        seed=0,
        interpret=c.dry,
        quiet=True,
    )
    Path(str(csv_path) + ".lock").unlink(missing_ok=True)  # filelock leaves it; keep $OUT to the files we name
    c.state["tune_csv"] = csv_path
    c.state["configs"] = configs
    res = summary.as_dict()
    res["energy_check"] = energy_plausibility(csv_path)
    return res


def energy_plausibility(path: Path) -> dict:
    """Joules per GEMM x GEMMs per second should be the window's average watts, above idle, under the limit."""
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("energy_j") and r.get("status") == "ok"]
    if not rows:
        return {"rows_with_energy": 0}
    ratio, over_limit, under_idle = [], 0, 0
    for r in rows:
        e, t, p = float(r["energy_j"]), float(r["time_ms"]) / 1e3, float(r["power_w"])
        ratio.append((e / t) / p if p > 0 and t > 0 else float("nan"))
        if r.get("power_limit_w") and p > float(r["power_limit_w"]) * 1.05:
            over_limit += 1
        if r.get("idle_power_w") and p < float(r["idle_power_w"]) * 0.9:
            under_idle += 1
    ratio = sorted(x for x in ratio if math.isfinite(x))
    watts = sorted(float(r["power_w"]) for r in rows)
    return {
        "rows_with_energy": len(rows),
        "energy_over_time_vs_power_median": ratio[len(ratio) // 2] if ratio else None,
        "power_w_min_median_max": [watts[0], watts[len(watts) // 2], watts[-1]],
        "rows_over_power_limit": over_limit,
        "rows_under_idle_power": under_idle,
    }


# ---- 4 predict ----------------------------------------------------------------------------------------
def step_predict(c: Check) -> dict:
    from gpperf_torch import dataset, train
    from gpperf_torch.predictor import Predictor, shipped_model

    path = c.state.get("tune_csv") or c.out / "tune.csv"
    model_dir = Path("/tmp") / f"gpperf-check-model-{os.getpid()}"
    held_out = train.train_and_export(
        [str(path)],
        model_dir,
        test_frac=0.3,
        seed=0,
        use_all=False,  # this model must not have seen the held-out groups that later steps select on
        splits=1,  # its metrics then describe exactly that model and those groups
        include_interpreted=c.dry,
        provenance="gpu-check: grouped 70% split of this run's tune.csv",
    )
    c.state["split_model"] = model_dir
    table = dataset.load_table([str(path)], include_interpreted=c.dry)
    _, test_rows = train.grouped_split(table, test_frac=0.3, seed=0)
    c.state["held_out_table"] = table.subset(test_rows)
    res = {"held_out": held_out}
    gpu_short = _short(c.state.get("gpu", "h100"))
    shipped = shipped_model(gpu_short) or shipped_model("h100")
    if shipped is not None:
        try:
            res["shipped_model"] = str(Path(shipped).name)
            res["shipped_on_new_data"] = train.evaluate(Predictor.load(shipped), table)
        except Exception as e:  # a transfer failure is a finding, not a crash
            res["shipped_on_new_data"] = {"error": f"{type(e).__name__}: {e}"}
    return res


def _short(name: str) -> str:
    from gpperf_torch.device import short_name_of

    return short_name_of(name)


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

    M, K = a.shape
    N = b.shape[1]

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
        INDEX_64=False,
        HAS_BIAS=False,
    )


def _e2e_problem(p: dict, device: str, timer, meter, model_dir, autotune) -> dict:
    """One held-out shape: every contender's steady-state time and time to first result; energy per objective."""
    import torch

    import gpperf_torch as gp
    from gpperf_torch import measure, selector

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
            selector.set_model(str(model_dir), device)
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
                with gp.objective(obj):
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

    from gpperf_torch import measure, selector

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
        selector.set_model(str(model_dir), device)
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


# ---- 6 overhead -------------------------------------------------------------------------------------
def step_overhead(c: Check) -> dict:
    """benchmarks/selection_overhead.py on this machine: first sight, cached path, host time per call."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import selection_overhead
    finally:
        sys.path.pop(0)
    from gpperf_torch import dispatch, selector

    cache = selector.cache_dir()  # before measure(), which points GPPERF_CACHE_DIR at a temporary directory
    selector.reset()  # the shipped model for this GPU, not the e2e step's split model
    res = selection_overhead.measure(repeats=60 if c.dry else 200)
    host = res.get("host_us_per_call", {})
    if "kernels.launch" in host:  # a real GPU: record the per-call host cost that dispatch adds in eager mode
        measured = {"triton": host["gpperf_torch.matmul"] / 1e3, "torch": host["torch.matmul"] / 1e3}
        res["host_cost_file"] = str(
            dispatch.write_host_cost(res.get("device", "unknown"), measured, source="gpu_check overhead", cache=cache)
        )
    return res


# ---- 7 model ------------------------------------------------------------------------------------------
def step_model(c: Check) -> dict:
    import shutil

    from gpperf_torch import train

    path = c.state.get("tune_csv") or c.out / "tune.csv"
    tmp = Path("/tmp") / f"gpperf-check-full-{os.getpid()}"
    metrics = train.train_and_export(
        [str(path)],
        tmp,
        test_frac=0.3,
        seed=0,
        use_all=True,
        include_interpreted=c.dry,
        provenance=f"gpu-check on {c.state.get('gpu')}: all groups of tune.csv",
    )
    for name in ("model.onnx", "model.json"):
        shutil.copy(tmp / name, c.out / name)
    return {"held_out_before_refit": metrics, "files": ["model.onnx", "model.json"]}


STEPS = {
    "env": step_env,
    "tests": step_tests,
    "tune": step_tune,
    "predict": step_predict,
    "e2e": step_e2e,
    "overhead": step_overhead,
    "model": step_model,
}
STEP_ORDER = list(STEPS)


# ---- summary ------------------------------------------------------------------------------------------
def _fmt(x, nd=3) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{nd}f}" if abs(x) < 1e4 else f"{x:.3g}"
    return str(x)


def summary_markdown(s: dict) -> str:
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
    for name in STEP_ORDER:
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
        elif name == "env":
            txt = (
                f"{env.get('sm_count', '-')} SMs, smem {env.get('max_shared_memory', '-')} B, energy counter "
                f"{env.get('energy_counter', False)}, idle {_fmt(env.get('idle_power_w'), 1)} W"
            )
        else:
            txt = ", ".join(res.get("files", [])) if isinstance(res, dict) else str(res)
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
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help="results folder (default $OUT, else results/<gpu>-<date>)")
    ap.add_argument("--dry-run", action="store_true", help="CPU + Triton interpreter, tiny shapes and budgets")
    ap.add_argument("--steps", nargs="+", default=STEP_ORDER, choices=STEP_ORDER)
    ap.add_argument("--total-s", type=float, default=None, help="whole-run budget")
    for s in GPU_BUDGETS:
        ap.add_argument(f"--budget-{s}", type=float, default=None, help=f"seconds for step {s}")
    ap.add_argument("--llm-shapes", type=int, default=12, help="llm-preset shapes to tune")
    ap.add_argument("--random-shapes", type=int, default=8, help="random shapes to tune")
    ap.add_argument("--layouts", nargs="+", default=["nt"], choices=["nn", "nt", "tn", "tt"])
    ap.add_argument("--configs", type=int, default=24, help="size of the fixed config sample (+4 usual picks)")
    ap.add_argument("--energy-fraction", type=float, default=0.3, help="share of tuning rows with an energy window")
    ap.add_argument("--e2e-shapes", type=int, default=6, help="held-out shapes in the end-to-end step")
    ap.add_argument("--autotune-shapes", type=int, default=AUTOTUNE_SHAPES, help="of those, timed with autotune")
    args = ap.parse_args(argv)

    if args.dry_run:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    os.environ.setdefault("GPPERF_DISK_CACHE", "0")
    budgets = dict(DRY_BUDGETS if args.dry_run else GPU_BUDGETS)
    for s in budgets:
        v = getattr(args, f"budget_{s}")
        if v is not None:
            budgets[s] = v
    total = args.total_s or (DRY_TOTAL_S if args.dry_run else GPU_TOTAL_S)
    out = Path(args.out or os.environ.get("OUT") or f"results/gpu-check-{datetime.now():%Y%m%d-%H%M}")
    out.mkdir(parents=True, exist_ok=True)
    c = Check(out, args.dry_run, budgets, total)
    c.opts = args
    if not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            print("gpu-check: no CUDA device here; use `make gpu-check-dry` (or --dry-run) on a CPU", file=sys.stderr)
            return 2
    for name in STEP_ORDER:
        if name not in args.steps:
            continue
        if time.monotonic() > c.deadline - 5:
            c.summary["steps"][name] = {"status": "skipped (total budget spent)"}
            continue
        log(f"step {name} ...")
        t0 = time.monotonic()
        try:
            result = STEPS[name](c)
            c.summary["steps"][name] = {"status": "ok", "result": result}
        except Exception as e:
            traceback.print_exc()
            c.summary["steps"][name] = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
        c.summary["steps"][name]["seconds"] = round(time.monotonic() - t0, 1)
        c.write()
    c.write()
    print()
    print((out / "summary.md").read_text())
    failed = [n for n, r in c.summary["steps"].items() if r.get("status") == "failed"]
    tests = c.summary["steps"].get("tests", {}).get("result", {})
    return 1 if failed or tests.get("failures") or tests.get("errors") else 0


if __name__ == "__main__":
    sys.exit(main())
