"""Model variants compared on the dispatch frontier: is a change to the forests worth a full dispatch_eval run?

    python benchmarks/variant_frontier.py --gpus a100 --variants base max_leaf_nodes=8000 pool [--seeds 0 1 2]

For each GPU, test (benchmarks/dispatch_eval.py's `family`, `rand_split`, `rand2hf`, `hf_split`) and seed: one
fit on the training side with the variant's parameters, then the dispatch samples of the test side
(evaluation.dispatch_samples: the shipped pick and tie rule, the K guard, kernel times without host cost) read
at every z of the calibration grid, with the unaligned floor (dispatch.DEFAULT_Z_UNALIGNED). No inner
calibration: a fit takes seconds (1 s H100, 6 s A100 on 2 cores), against a minute with dispatch_eval's ten
inner fits, so a variant is judged in a few minutes.

Printed per variant and test, as the mean over seeds:
- `regret`: the Triton pick's time over the best Triton config's, on the test groups that have a cuBLAS time;
- `z=0` and `z=1`: the geomean speedup over cuBLAS and the share of shapes below 0.97x of the point estimate and
  of z = 1 (the calibration's floor, evaluation.Z_MIN, which every A100 run and most H100 runs end at);
- `best<=1%`: the highest geomean over the z grid with at most 1% of the shapes below 0.97x (one z for every
  seed, on the means), and its z. This chooses z on the test side: it compares models by their frontier and is
  never a result to report.

Variants: `base` (the shipped procedure), `NAME=VALUE` for a forest parameter of fitting.fit (n_estimators,
max_leaf_nodes, max_features, min_samples_leaf, max_samples; `target_weight`), `pool` (the other GPUs' files
added and pooled into the rank forest: fit(rank_other_gpus=True)), joined with `:` (`pool:max_leaf_nodes=8000`).
Public data at run time, never copied.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import dispatch_eval as de  # noqa: E402  (the splits and file lists of the dispatch table)

FLOAT_PARAMS = {"max_features", "target_weight", "max_samples"}
INT_PARAMS = {"n_estimators", "max_leaf_nodes", "min_samples_leaf"}


def parse_variant(spec: str, gpu: str) -> tuple[list[str], dict]:
    """(data files, fit keyword arguments) of a variant spec (see the module docstring)."""
    files, kw = list(de.FILES[gpu]), {}
    for part in spec.split(":"):
        if part == "base":
            continue
        if part == "pool":
            files += [f for other in de.FILES.values() for f in other if f not in files]
            kw["rank_other_gpus"] = True
            continue
        name, _, value = part.partition("=")
        if name in INT_PARAMS:
            kw[name] = int(value)
        elif name in FLOAT_PARAMS:
            kw[name] = float(value)
        else:
            raise ValueError(f"variant {spec!r}: unknown part {part!r}; use base, pool or one of"
                             f" {sorted(INT_PARAMS | FLOAT_PARAMS)}=VALUE")  # fmt: skip
    return files, kw


def frontier(samples: np.ndarray) -> dict:
    """Regret, and the geomean and share below 0.97x at every z of the calibration grid, of one test's samples."""
    from gpperf_torch.policy.dispatch import DEFAULT_Z_UNALIGNED
    from gpperf_torch.predictor.evaluation import Z_GRID, dispatch_metrics, speedups_at

    ms = [dispatch_metrics(*speedups_at(samples, z, z_unaligned=DEFAULT_Z_UNALIGNED)) for z in Z_GRID]
    return {
        "regret": float(np.exp(np.mean(np.log(samples[:, 3] / samples[:, 2])))),
        "geo": np.array([m["speedup_vs_extern_geomean"] for m in ms]),
        "slow": np.array([m["share_slower_than_extern_3pct"] for m in ms]),
    }


def summary_line(rows: list[dict]) -> str:
    """The printed cells of one variant and test: means over seeds, one z for every seed."""
    from gpperf_torch.predictor.evaluation import MAX_SLOWER_SHARE, Z_GRID

    regret = np.mean([r["regret"] for r in rows])
    geo, slow = np.mean([r["geo"] for r in rows], axis=0), np.mean([r["slow"] for r in rows], axis=0)
    i0, i1 = Z_GRID.index(0.0), Z_GRID.index(1.0)
    ok = np.flatnonzero(slow <= MAX_SLOWER_SHARE)
    best = f"{geo[ok].max():8.4f} ({Z_GRID[ok[np.argmax(geo[ok])]]:.2f})" if len(ok) else f"{'none':>15s}"
    return f"{regret:7.4f} {geo[i0]:8.4f}/{slow[i0]:5.3f} {geo[i1]:8.4f}/{slow[i1]:5.3f} {best}"


def main(argv: list[str] | None = None) -> int:
    from gpperf_torch.policy.dispatch import NO_HOST_COST, Policy
    from gpperf_torch.predictor.evaluation import dispatch_samples

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=de.DEFAULT_DATA)
    ap.add_argument("--gpus", nargs="+", default=["h100", "a100"])
    ap.add_argument("--tests", nargs="+", default=["family", "rand_split", "rand2hf"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4, 5])
    ap.add_argument("--variants", nargs="+", default=["base"])
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if not args.data.is_dir():
        print(f"public data not found at {args.data}: pass --data or set GPPERF_PUBLIC_DATA", file=sys.stderr)
        return 2
    point = Policy(z=0.0, host_ms=dict(NO_HOST_COST))  # the samples carry mean and spread: any z reads them
    print(f"{'gpu':5s} {'variant':28s} {'test':10s} {'regret':>7s} {'z=0 geo/slow':>14s} {'z=1 geo/slow':>14s}"
          f" {'best<=1% (z)':>14s}  s")  # fmt: skip
    for gpu in args.gpus:
        for spec in args.variants:
            files, kw = parse_variant(spec, gpu)
            table, mk = de.load_gpu(args.data, gpu, files)
            for test in args.tests:
                t0 = time.perf_counter()
                sides = de.fits(table, mk, gpu, test, args.seeds, args.jobs, **kw)
                rows = [frontier(dispatch_samples(model, side, policy=point)) for _, model, side in sides]
                print(f"{gpu:5s} {spec:28s} {test:10s} {summary_line(rows)} {time.perf_counter() - t0:3.0f}",
                      flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
