"""Selection overhead: what tile selection adds to a matmul call. Prints a table.

    python benchmarks/selection_overhead.py [--gpu h100] [--repeats 300]

Rows:
  first sight, N candidates   scoring N candidates for a new shape (features + one onnxruntime call + ordering)
  cached choose()             the per-call path once a shape was seen (dictionary hit)
  op call vs launcher         gpperf_torch.matmul host time minus kernels.launch host time (GPU), or on a CPU
                              the custom op's dispatch vs torch.matmul on a tiny shape
  disk cache load             reading a selection cache of 1000 shapes
Targets (2-core CPU): first sight < 2 ms for 30 candidates, cached path < 10 us.
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

from gpperf_torch import kernels, selector  # noqa: E402
from gpperf_torch.device import device_for  # noqa: E402


def _stats(samples_s: list[float]) -> tuple[float, float]:
    xs = sorted(samples_s)
    return statistics.median(xs), xs[min(len(xs) - 1, int(0.99 * len(xs)))]


def first_sight(st, n_candidates: int, repeats: int, rng) -> tuple[float, float]:
    space = [c for c in kernels.candidate_space(elem_size=2, max_shared_memory=st.info.max_shared_memory)]
    model_cands = st.model.candidates if st.model else space
    pool = [c for c in model_cands if c is not None] + [c for c in space if c not in model_cands]
    cands = (pool * (n_candidates // max(1, len(pool)) + 1))[:n_candidates]
    orig = selector._valid_candidates
    selector._valid_candidates = lambda _st, _dtype: cands
    try:
        times = []
        for _ in range(repeats):
            m, n, k = (int(x) for x in np.exp(rng.uniform(0, np.log(16384), 3)).round() + 1)
            key = (m, n, k, 1, "float16", False, True, False, "time")
            t0 = time.perf_counter()
            selector.rank(st, key)[0]
            times.append(time.perf_counter() - t0)
    finally:
        selector._valid_candidates = orig
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


def op_overhead(repeats: int) -> tuple[float, float, str]:
    import gpperf_torch as gp

    if torch.cuda.is_available() and not kernels.interpreting():
        a = torch.randn(64, 64, device="cuda", dtype=torch.float16)
        b = torch.randn(64, 64, device="cuda", dtype=torch.float16)
        cfg = selector.choose(a, b, None, None) or kernels.DEFAULT_CONFIG
        out = torch.empty(64, 64, device="cuda", dtype=torch.float16)
        gp.matmul(a, b)
        kernels.launch(a, b, out, cfg)
        torch.cuda.synchronize()

        def host(fn):
            ts = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                for _ in range(20):
                    fn()
                ts.append((time.perf_counter() - t0) / 20)
                torch.cuda.synchronize()
            return statistics.median(ts)

        op = host(lambda: gp.matmul(a, b))
        direct = host(lambda: kernels.launch(a, b, out, cfg))
        return op - direct, op, "gpperf_torch.matmul - kernels.launch (host time per call, GPU)"
    a, b = torch.randn(8, 8), torch.randn(8, 8)

    def host(fn):
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(50):
                fn()
            ts.append((time.perf_counter() - t0) / 50)
        return statistics.median(ts)

    direct = host(lambda: torch.matmul(a, b))
    dispatch = host(lambda: torch.ops.gpperf.mm(a, b, None, None)) - direct
    op = host(lambda: gp.matmul(a, b))
    return (
        op - direct,
        op,
        (
            "gpperf_torch.matmul - torch.matmul on 8x8 (CPU without interpreter: no kernel to launch, so this is the "
            f"front + checks + fast path); the custom op's own dispatch, used under autograd and torch.compile, adds "
            f"{dispatch * 1e6:.1f} us"
        ),
    )


def disk_load(info, n: int = 1000) -> float:
    with tempfile.TemporaryDirectory() as d:
        os.environ["GPPERF_CACHE_DIR"] = d
        os.environ["GPPERF_DISK_CACHE"] = "1"
        cache = selector._DiskCache(info, "bench")
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpu", default=None, help="model of this GPU (default: the local GPU, else h100)")
    ap.add_argument("--repeats", type=int, default=300)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    info = device_for(gpu=args.gpu or (None if torch.cuda.is_available() else "h100"))
    st = selector._State(info)
    rng = np.random.default_rng(0)
    model = st.model.path if st.model else "analytic rule"
    print(f"device {info.name}; model {model}; torch {torch.__version__}; host {os.cpu_count()} cores")
    first_sight(st, 30, 20, rng)  # warm onnxruntime
    rows = []
    for n in (30, 300):
        med, p99 = first_sight(st, n, args.repeats, rng)
        rows.append((f"first sight, {n} candidates", med * 1e3, p99 * 1e3, "ms"))
    med, p99 = cached_choose(args.repeats)
    rows.append(("cached choose()", med * 1e6, p99 * 1e6, "us"))
    over, op, what = op_overhead(max(20, args.repeats // 10))
    rows.append(("op call vs launcher", over * 1e6, op * 1e6, "us (overhead | whole call)"))
    rows.append(("disk cache load, 1000 shapes", disk_load(info) * 1e3, float("nan"), "ms"))
    print(f"\n{'what':<32}{'median':>12}{'p99 / call':>12}  unit")
    print("-" * 72)
    for name, a, b, unit in rows:
        print(f"{name:<32}{a:>12.3f}{b:>12.3f}  {unit}")
    print(f"\n(op row: {what})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
