"""Selection overhead: what tile selection adds to a matmul call. Prints a table.

    python benchmarks/selection_overhead.py [--gpu h100] [--repeats 300] [--no-interpret]

Rows:
  first sight, N candidates   scoring N candidates for a new shape (features + one onnxruntime call + ordering)
  cached choose()             the per-call path once a shape was seen (dictionary hit)
  host time per call          gpperf_torch.matmul vs kernels.launch vs torch.matmul (GPU, 64x64), each launch with
                              the lean launch path off and on; or on a CPU gpperf_torch.matmul vs the custom op's
                              dispatch vs torch.matmul (8x8); and a patched biased Linear vs nn.Linear (no_grad).
                              On a CPU the Triton interpreter is on (TRITON_INTERPRET=1, unless --no-interpret),
                              so selection runs on every call as on a GPU (the dispatch then picks torch.matmul for
                              8x8): the honest host cost. Without it a CPU call never selects (nothing to launch)
  disk cache load             reading a selection cache of 1000 shapes
  shape_features              building the feature rows of 300 candidates for one shape
  model load                  Predictor.load of each shipped model (onnxruntime session + JSON), after a first load
Targets (2-core CPU): first sight < 2 ms for 30 candidates, cached path < 10 us, shape_features < 2 ms for 300
candidates, model load < 0.5 s. These are checked here, not in unit tests, whose timings a loaded CI host skews.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("GPPERF_DISK_CACHE", "0")
# On a CPU, selection is active only under the interpreter: measure that path unless told otherwise.
if __name__ == "__main__" and "--no-interpret" not in sys.argv and not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from gpperf_torch import kernels
from gpperf_torch.measure.device import device_for  # noqa: E402
from gpperf_torch.selection import ranking, select_cache, selector, state  # noqa: E402


def _stats(samples_s: list[float]) -> tuple[float, float]:
    xs = sorted(samples_s)
    return statistics.median(xs), xs[min(len(xs) - 1, int(0.99 * len(xs)))]


def first_sight(st, n_candidates: int, repeats: int, rng) -> tuple[float, float]:
    space = [c for c in kernels.candidate_space(elem_size=2, max_shared_memory=st.info.max_shared_memory)]
    model_cands = st.model.candidates if st.model else space
    pool = [c for c in model_cands if c is not None] + [c for c in space if c not in model_cands]
    cands = (pool * (n_candidates // max(1, len(pool)) + 1))[:n_candidates]
    orig = ranking.valid_candidates
    ranking.valid_candidates = lambda _st, _dtype, *_launch: cands
    try:
        times = []
        for _ in range(repeats):
            m, n, k = (int(x) for x in np.exp(rng.uniform(0, np.log(16384), 3)).round() + 1)
            key = (m, n, k, 1, "float16", False, True, False, "time")
            t0 = time.perf_counter()
            selector.rank(st, key)[0]
            times.append(time.perf_counter() - t0)
    finally:
        ranking.valid_candidates = orig
    return _stats(times)


def cached_choose(repeats: int) -> tuple[float, float]:
    a, b = torch.randn(64, 64), torch.randn(64, 64)
    selector.choose(a, b, None, None)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(100):
            selector.choose(a, b, None, None)
        times.append((time.perf_counter() - t0) / 100)
    return _stats(times)


def _host_us(fn, repeats: int, inner: int, sync=None) -> float:
    """Median host time per call (us) over `repeats` batches of `inner` calls."""
    for _ in range(inner):
        fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        ts.append((time.perf_counter() - t0) / inner)
        if sync is not None:
            sync()
    return statistics.median(ts) * 1e6


def op_overhead(repeats: int) -> dict[str, float]:
    """Host time per call (us) of gpperf_torch.matmul and what it is compared with, on a 64x64 GEMM.

    GPU: gpperf_torch.matmul (cached selection + launch), kernels.launch with the same config, torch.matmul.
    CPU without the interpreter there is no kernel to launch: gpperf_torch.matmul (front, checks, fast path to
    torch.matmul), the custom op's own dispatch, torch.matmul.
    """
    import gpperf_torch as gp
    from gpperf_torch.kernels import launcher

    if torch.cuda.is_available() and not kernels.interpreting():
        a = torch.randn(64, 64, device="cuda", dtype=torch.float16)
        b = torch.randn(64, 64, device="cuda", dtype=torch.float16)
        cfg = selector.choose(a, b, None, None) or kernels.DEFAULT_CONFIG
        out = torch.empty(64, 64, device="cuda", dtype=torch.float16)
        sync = torch.cuda.synchronize
        res = {
            "gpperf_torch.matmul": _host_us(lambda: gp.matmul(a, b), repeats, 20, sync),
            "kernels.launch": _host_us(lambda: kernels.launch(a, b, out, cfg), repeats, 20, sync),
            "torch.matmul": _host_us(lambda: torch.matmul(a, b, out=out), repeats, 20, sync),
        }
        was = launcher.enabled()
        launcher.set_enabled(True)
        try:
            res["gpperf_torch.matmul, lean launch"] = _host_us(lambda: gp.matmul(a, b), repeats, 20, sync)
            res["kernels.launch, lean launch"] = _host_us(lambda: kernels.launch(a, b, out, cfg), repeats, 20, sync)
        finally:
            launcher.set_enabled(was)
        dev, dtype, inner, sync_ = "cuda", torch.float16, 20, sync
    else:
        a, b = torch.randn(8, 8), torch.randn(8, 8)
        what = "selection active (interpreter)" if kernels.interpreting() else "no selection (no interpreter)"
        res = {
            f"gpperf_torch.matmul, {what}": _host_us(lambda: gp.matmul(a, b), repeats, 50),
            "custom-op dispatch": _host_us(lambda: torch.ops.gpperf.mm(a, b, None, None), repeats, 50),
            "torch.matmul": _host_us(lambda: torch.matmul(a, b), repeats, 50),
        }
        dev, dtype, inner, sync_ = "cpu", torch.float32, 50, None
    # A biased Linear in inference (its bias an nn.Parameter that requires grad): patched against torch's own.
    ref = torch.nn.Linear(64, 64).to(dev, dtype)
    lin = gp.patch(torch.nn.Linear(64, 64).to(dev, dtype))
    x = torch.randn(8 if dev == "cpu" else 64, 64, device=dev, dtype=dtype)
    with torch.no_grad():
        res["patched Linear (bias), no_grad"] = _host_us(lambda: lin(x), repeats, inner, sync_)
        res["nn.Linear (bias), no_grad"] = _host_us(lambda: ref(x), repeats, inner, sync_)
    return res


def disk_load(info, n: int = 1000) -> float:
    with tempfile.TemporaryDirectory() as d:
        os.environ["GPPERF_CACHE_DIR"] = d
        os.environ["GPPERF_DISK_CACHE"] = "1"
        cache = select_cache.DiskCache(info, "bench")
        sel = {f"{i},{i + 1},{i + 2},1,float16,0,1,0,time": "128x128x64_g8_s1_w8_st3" for i in range(n)}
        Path(cache.path).parent.mkdir(parents=True, exist_ok=True)
        Path(cache.path).write_text(json.dumps({"version": 1, "selections": sel}))
        ts = []
        for _ in range(20):
            t0 = time.perf_counter()
            loaded = cache.load()
            ts.append(time.perf_counter() - t0)
        assert len(loaded) == n
        os.environ["GPPERF_DISK_CACHE"] = "0"
        del os.environ["GPPERF_CACHE_DIR"]
        return statistics.median(ts)


def features_300(info, repeats: int) -> tuple[float, float]:
    """shape_features for one shape and 300 candidate configs (the features half of first sight)."""
    from gpperf_torch.predictor.features import config_matrix, shape_features

    C = config_matrix(kernels.candidate_space()[:300])
    shape_features(2048, 2048, 2048, "float16", 0, 0, 0, C, info)
    times = []
    for _ in range(max(1, repeats // 3)):
        t0 = time.perf_counter()
        for _ in range(10):
            shape_features(2048, 2048, 2048, "float16", 0, 0, 0, C, info)
        times.append((time.perf_counter() - t0) / 10)
    return _stats(times)


def model_loads(repeats: int = 5) -> dict[str, tuple[float, float]]:
    """Predictor.load of each shipped model: (median, max) seconds over `repeats` loads after a first one."""
    from gpperf_torch.predictor.runtime import Predictor, list_shipped, shipped_model

    res = {}
    for name in list_shipped():
        path = shipped_model(name)
        Predictor.load(path)  # the first load also imports onnxruntime
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            Predictor.load(path)
            ts.append(time.perf_counter() - t0)
        res[name] = (statistics.median(ts), max(ts))
    return res


def measure(gpu: str | None = None, repeats: int = 300) -> dict:
    """All rows of the table as a dict (also used by the GPU check)."""
    torch.set_num_threads(1)
    info = device_for(gpu=gpu or (None if torch.cuda.is_available() else "h100"))
    st = state.State(info)
    rng = np.random.default_rng(0)
    first_sight(st, 30, 20, rng)  # warm onnxruntime
    res: dict = {"device": info.name, "model": str(st.model.path) if st.model else "analytic rule"}
    for n in (30, 300):
        med, p99 = first_sight(st, n, repeats, rng)
        res[f"first_sight_{n}_ms"] = (med * 1e3, p99 * 1e3)
    med, p99 = cached_choose(repeats)
    res["cached_choose_us"] = (med * 1e6, p99 * 1e6)
    res["host_us_per_call"] = op_overhead(max(20, repeats // 10))
    res["disk_cache_load_1000_ms"] = disk_load(info) * 1e3
    med, p99 = features_300(info, repeats)
    res["shape_features_300_ms"] = (med * 1e3, p99 * 1e3)
    res["model_load_s"] = model_loads()
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpu", default=None, help="model of this GPU (default: the local GPU, else h100)")
    ap.add_argument("--repeats", type=int, default=300)
    ap.add_argument("--no-interpret", action="store_true", help="on a CPU: the path without selection")
    args = ap.parse_args(argv)
    r = measure(args.gpu, args.repeats)
    print(f"device {r['device']}; model {r['model']}; torch {torch.__version__}; host {os.cpu_count()} cores")
    print(f"\n{'what':<52}{'median':>10}{'p99':>10}  unit")
    print("-" * 80)
    for n in (30, 300):
        med, p99 = r[f"first_sight_{n}_ms"]
        print(f"{f'first sight, {n} candidates':<52}{med:>10.3f}{p99:>10.3f}  ms")
    med, p99 = r["cached_choose_us"]
    print(f"{'cached choose()':<52}{med:>10.3f}{p99:>10.3f}  us")
    for name, us in r["host_us_per_call"].items():
        print(f"{f'host time per call: {name}':<52}{us:>10.3f}{'':>10}  us")
    print(f"{'disk cache load, 1000 shapes':<52}{r['disk_cache_load_1000_ms']:>10.3f}{'':>10}  ms")
    med, p99 = r["shape_features_300_ms"]
    print(f"{'shape_features, 300 candidates':<52}{med:>10.3f}{p99:>10.3f}  ms")
    for name, (med, worst) in r["model_load_s"].items():
        print(f"{f'model load: {name} (max in the p99 column)':<52}{med:>10.3f}{worst:>10.3f}  s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
