"""The prepared GPU check: one command that turns a short GPU lease into evidence.

    make gpu-check                    # on a GPU machine (benchmarks/README.md has the exact device call)
    make gpu-check-dry                # the same steps on CPU through the Triton interpreter, tiny sizes

Steps, in the order that makes a cut-off run still useful (each stops at its budget; the summary is rewritten
after every step, so whatever ran is on disk):
  1 env       GPU, SMs, clocks, power limit, driver, library versions, what is missing
  2 tests     the CUDA-marked tests (all dtypes incl. bf16, odd shapes, split-K, opcheck, torch.compile, CUDA
              graphs), then the launch-path ones again with the lean launch path on (GPPERF_LEAN_LAUNCH=1)
  3 verify    the measured dispatch on a decoder, a ViT block's GEMMs and odd TIMM-like layers: plain vs predict
              vs verify end to end, gp.warmup's first-sight cost (compiles, timed ms per shape), and a noise check
              (a fresh process re-times every verified Triton choice against cuBLAS)
  4 compile   torch.compile of a decoder block and a ViT MLP: default, max-autotune, the gpperf Inductor hook in
              predict and verify mode (issue 26): compile s, steady-state ms, share of GEMMs on Triton templates
  5 energy    NVML windows: the counter's update period, ~8 shapes from decode to 4096^3 (cuBLAS + the top-3
              configs, three interleaved windows each): window repeatability, energy-optimal vs time-optimal
              saving and slowdown, the keep rule's pick; the decoder's J/token plain / time / energy with the guard
  6 tune      a budgeted tuning run (runtime + NVML energy), llm + random shapes, fp16 and bf16
  7 predict   train on a grouped 70% of the new data, evaluate on the held-out shapes; evaluate the shipped
              model on all new shapes (does the public-data model transfer to our kernel?)
  8 e2e       held-out shapes: gpperf (predict / verify / exhaustive) vs torch.matmul vs the measured best vs
              triton.autotune over the same candidates (steady state and time to first result); objective
              energy vs time (joules and ms per GEMM)
  9 overhead  benchmarks/selection_overhead.py here: first-sight latency, cached path, host time per call of
              gpperf_torch.matmul vs kernels.launch vs torch.matmul
  10 decode   the decoder example's decode steps (2 layers, GPT-2 width, batch 4, fp16): tokens/s and us per GEMM
              call plain / patched torch-only / predict / verify, lean launch path off and on, CUDA graphs
  11 model    a model retrained on all new data, written beside the results (ready for gpperf_torch/data/)
The steps live in benchmarks/gpucheck/ by concern (common state, verify, compile, energy, tune + predict + model,
e2e, decode, summary);
this file is the command line, the env and tests steps, and the overhead step.
Everything goes to --out (default $OUT, else results/<gpu>-<date>/): summary.json, summary.md, tune.csv,
e2e.csv, tests.xml, model.onnx, model.json (and log.txt from gpu_check.sh): eight files at most.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
import xml.etree.ElementTree as ET
from datetime import datetime
from pathlib import Path

from gpucheck.common import REPO, Check, log
from gpucheck.compile import step_compile
from gpucheck.decode import step_decode
from gpucheck.e2e import step_e2e
from gpucheck.energy import step_energy
from gpucheck.summary import summary_markdown
from gpucheck.tune import step_model, step_predict, step_tune
from gpucheck.verify import step_verify

# Budgets (seconds) sized for a 9-minute run on an H100/H200 with 16 CPU cores (one device call is at most 600 s:
# the whole check stays under 560 s with the start and the transfers); see benchmarks/README.md. The H200 run
# of 2026-11-26 showed the tuning step is compile-bound (~1.5 rows/s with 28 configs x 2 dtypes over 20 shapes:
# each new shape divisibility pattern compiles every config again), so it gets the largest share. The tests run
# twice (the lean launch path off, then on: its second pass reuses the compiled kernels).
# The verify step (the measured dispatch on three models' GEMMs, issue 20) comes right after the tests: it is the
# current focus, and it needs only the shipped model; tune and tests gave up 30 s and 10 s for it.
# The compile step (issue 26: the Inductor hook against default and max-autotune) and the energy step (issue 28:
# NVML window repeatability, energy-optimal vs time-optimal, the decoder's J/token with the guard) come after
# verify. compile's max-autotune rows are compile-bound (Inductor benchmarks ~20 template configs per GEMM), so it
# gets 50 s and the rows run cheapest first; energy gets 45 s (about 8 shapes x 4 candidates x 3 windows of 0.25 s
# plus the decoder rows). The two need 95 s more: tune (-10), e2e (-5) and decode (-5) gave up 20 s, and the whole
# run grows from 460 to 530 s (steps 520 s + env), which still leaves a 600 s device call 70 s for the machine's
# start-up and the wheels.
GPU_BUDGETS = {"tests": 100, "verify": 80, "compile": 50, "energy": 45, "tune": 90, "predict": 20, "e2e": 50,
               "overhead": 15, "decode": 55, "model": 15}  # fmt: skip
DRY_BUDGETS = {"tests": 90, "verify": 60, "compile": 60, "energy": 40, "tune": 25, "predict": 30, "e2e": 40,
               "overhead": 20, "decode": 40, "model": 20}  # fmt: skip
GPU_TOTAL_S = 530
# triton.autotune with its default benchmarking (25 ms warm-up + 100 ms per config) costs seconds per shape:
# measured on the first few held-out shapes only.
AUTOTUNE_SHAPES = 2
DRY_TOTAL_S = 480


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
        from gpperf_torch.measure import timing as measure
        from gpperf_torch.measure.device import current_device

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
# The launch-path tests run a second time with the lean launch path on (GPPERF_LEAN_LAUNCH=1): it becomes the
# default on CUDA only once both passes are green on a GPU.
LEAN_TEST_FILES = ["tests/test_kernel.py", "tests/test_op.py", "tests/test_cuda_graphs.py", "tests/test_front.py",
                   "tests/test_nn.py", "tests/test_launcher.py"]  # fmt: skip


def _pytest(c: Check, args: list[str], xml: Path, budget: float, env: dict) -> dict:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}",
           "-o", "junit_family=xunit2", *args]  # fmt: skip
    log(f"tests: {' '.join(cmd[3:])} (budget {budget:.0f} s, GPPERF_LEAN_LAUNCH={env['GPPERF_LEAN_LAUNCH']})")
    log_path = c.out / "tests.log"
    with open(log_path, "w") as logf:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=logf, stderr=subprocess.STDOUT, text=True, env=env)
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


def step_tests(c: Check) -> dict:
    if c.dry:
        # CPU: the same machinery on a slice of the interpreter tests (the cuda cases skip here); the lean pass
        # (no effect under the interpreter) runs the key and capture tests.
        off_args = ["tests/test_kernel.py", "tests/test_op.py", "-k", "100x37x53 or opcheck or split_k or cuda"]
        on_args = ["tests/test_launcher.py", "tests/test_cuda_graphs.py"]
    else:
        off_args = ["-m", "cuda", "tests"]
        on_args = ["-m", "cuda", *LEAN_TEST_FILES]
        try:
            import xdist  # noqa: F401  (pytest-xdist: compile in parallel processes)

            off_args += ["-n", "8"]
            on_args += ["-n", "8"]
        except ImportError:
            pass
    budget = c.budget("tests")
    t_end = time.monotonic() + budget
    runs = {}
    # lean off first, into tests.xml (what comes back); the lean-on report is read into summary.json, then removed
    for name, args, lean, xml in (
        ("lean_off", off_args, "0", c.out / "tests.xml"),
        ("lean_on", on_args, "1", c.out / "tests-lean.xml"),
    ):
        left = t_end - time.monotonic()
        if left < 5:
            runs[name] = {"skipped": "tests budget spent"}
            continue
        env = dict(os.environ, GPPERF_LEAN_LAUNCH=lean)
        share = left * (0.65 if name == "lean_off" else 1.0)  # the second pass reuses compiled kernels
        runs[name] = _pytest(c, args, xml, share, env)
        if name == "lean_on":
            xml.unlink(missing_ok=True)
    res = {"runs": runs}
    for k in ("tests", "passed", "failures", "errors", "skipped"):
        res[k] = sum(r.get(k, 0) for r in runs.values())
    res["timed_out"] = any(r.get("timed_out") for r in runs.values())
    res["failed_names"] = [f"{n}: {t}" for n, r in runs.items() for t in r.get("failed_names", [])][:30]
    return res


# ---- 8 overhead -------------------------------------------------------------------------------------
def step_overhead(c: Check) -> dict:
    """benchmarks/selection_overhead.py on this machine: first sight, cached path, host time per call."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import selection_overhead
    finally:
        sys.path.pop(0)
    from gpperf_torch.paths import cache_dir
    from gpperf_torch.policy import dispatch
    from gpperf_torch.selection import selector

    cache = cache_dir()  # before measure(), which points GPPERF_CACHE_DIR at a temporary directory
    selector.reset()  # the shipped model for this GPU, not the e2e step's split model
    res = selection_overhead.measure(repeats=60 if c.dry else 200)
    host = res.get("host_us_per_call", {})
    if "kernels.launch" in host:  # a real GPU: record the per-call host cost that dispatch adds in eager mode
        measured = {"triton": host["gpperf_torch.matmul"] / 1e3, "torch": host["torch.matmul"] / 1e3}
        res["host_cost_file"] = str(
            dispatch.write_host_cost(res.get("device", "unknown"), measured, source="gpu_check overhead", cache=cache)
        )
    return res


STEPS = {
    "env": step_env,
    "tests": step_tests,
    "verify": step_verify,
    "compile": step_compile,
    "energy": step_energy,
    "tune": step_tune,
    "predict": step_predict,
    "e2e": step_e2e,
    "overhead": step_overhead,
    "decode": step_decode,
    "model": step_model,
}
STEP_ORDER = list(STEPS)


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
    c = Check(out, args.dry_run, budgets, total, STEP_ORDER, render=summary_markdown)
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
