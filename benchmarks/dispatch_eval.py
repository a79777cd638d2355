"""Dispatch against cuBLAS on shapes unlike the training data: the table of docs/predictor.md ("Dispatch").

    python benchmarks/dispatch_eval.py [--data DIR] [--gpus h100 a100] [--seeds 0 1 2] [--inner 10] [--json FILE]

Four tests per GPU, each over several seeds, each with the shipped procedure (benchmarks/train_shipped.py's
files, `train.held_out_metrics` to calibrate the dispatch confidence z on `--inner` (10, as shipped) grouped
splits of the training side only, then one fit on the whole training side, evaluated on the test side at that z):

- `family`:    whole model families of the HF GEMMs leave together (fitting.family_keys: a family is the
  hidden size its weight shapes share), in 3 folds of about a third of the HF shapes each; seed s holds out
  fold s % 3 (seeds 0-2: every HF shape once), on both GPUs' HF data; random shapes and the other families
  train. The closest test to new model families, which acceptance checks;
- `hf_split`:  a grouped 30% split of the Hugging Face model GEMMs (`*_hf_mm.csv`) is the test; everything
  else trains (random shapes, the other 70% of HF shapes, and for H100 the A100 rows, as shipped);
- `rand2hf`:   train on the random shapes only (`*_mm.csv`), evaluate on every HF shape: the stronger test of
  shapes unlike the training data (no real-model shape was seen);
- `rand_split`: a grouped 30% split of the random shapes is the test, HF shapes train.

z is calibrated per data file on the training side's held-out groups and the largest taken, with a floor
(evaluation.calibrate_sources), as `gpperf-torch train` does; the K guard bounds every fit by its own training
shapes (dispatch.py). "point estimate" is z = 0 without the tie rule or the unaligned floor (the K guard stays:
it is the model's range, not a confidence).

Prints, per GPU and test, the mean over seeds and the worst seed of the eval keys (dispatch via
dispatch.decide, kernel times: no host cost), and the regret. Public data at run time, never copied.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEFAULT_DATA = Path(os.environ.get("GPPERF_PUBLIC_DATA", REPO.parent / "shared/data/autoheuristic_mm"))
FILES = {
    "h100": ("h100_mm.csv", "h100_hf_mm.csv", "a100_mm.csv", "a100_hf_mm.csv"),
    "a100": ("a100_mm.csv", "a100_hf_mm.csv"),
}
KEYS = ("speedup_vs_extern_geomean", "speedup_vs_extern_p10", "speedup_vs_extern_min",
        "share_slower_than_extern_3pct", "share_dispatched_to_extern", "geomean_regret",
        "speedup_vs_extern_oracle_geomean", "dispatch_z", "share_k_guarded")  # fmt: skip
# For the worst seed: the lowest value of these, the highest of the others.
HIGHER_IS_BETTER = {"speedup_vs_extern_geomean", "speedup_vs_extern_p10", "speedup_vs_extern_min"}


def _masks(table, gpu: str, files: list[Path]) -> dict[str, np.ndarray]:
    """Row masks by origin (train.file_sources: load_table keeps the files' order), and the file names."""
    from gpperf_torch.predictor import train

    src = train.file_sources([str(f) for f in files], table)
    hf = np.char.find(src, "_hf_") >= 0
    own = np.char.startswith(src, gpu)
    return {"hf": hf & own, "rand": ~hf & own, "other_hf": hf & ~own, "sources": src}


N_FAMILY_FOLDS = 3


def family_folds(table, mk: dict) -> dict[int, int]:
    """The target GPU's HF families (fitting.family_keys) in N_FAMILY_FOLDS folds of about equal numbers of
    groups (largest family first, each into the smallest fold): seed s holds out fold s % 3, so seeds 0-2 hold
    out every HF shape once, each with its whole family."""
    from gpperf_torch.predictor.fitting import family_keys

    fam, gid = family_keys(table), table.group_id
    size = {f: len(np.unique(gid[mk["hf"] & (fam == f)])) for f in np.unique(fam[mk["hf"]]).tolist()}
    folds, load = {}, [0] * N_FAMILY_FOLDS
    for f in sorted(size, key=lambda f: (-size[f], f)):
        i = int(np.argmin(load))
        folds[f], load[i] = i, load[i] + size[f]
    return folds


def split_rows(table, mk: dict, gpu: str, test: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(test rows, train rows) of one test and seed."""
    from gpperf_torch.predictor import train
    from gpperf_torch.predictor.fitting import family_keys

    if test == "rand2hf":
        test_rows = mk["hf"]
        return test_rows, ~mk["hf"] & ~mk["other_hf"]
    if test == "family":
        fam = family_keys(table)
        folds = family_folds(table, mk)
        out = np.isin(fam, [f for f, i in folds.items() if i == seed % N_FAMILY_FOLDS])
        test_rows = mk["hf"] & out
        # The held-out families leave the other GPU's data too: a family seen on the A100 is not new.
        return test_rows, ~test_rows & ~(mk["other_hf"] & out)
    pool = mk["hf"] if test == "hf_split" else mk["rand"]
    _, te = train.split_for_target(table.subset(pool), seed=seed, target_gpu=gpu)
    test_rows = np.zeros(len(table), dtype=bool)
    test_rows[np.flatnonzero(pool)[te]] = True
    return test_rows, ~test_rows


def load_gpu(data: Path, gpu: str, files: list[str] | None = None):
    """(table, masks) of one GPU's files (default FILES[gpu]), as every test of this script reads them."""
    from gpperf_torch.measure import dataset

    paths = [data / f for f in (files or FILES[gpu])]
    table = dataset.load_table([str(p) for p in paths])
    return table, _masks(table, gpu, paths)


def fits(table, mk: dict, gpu: str, test: str, seeds, jobs: int, **fit_kw):
    """Per seed of one test: (seed, a model fitted on the training side, the test side's table); one fit each,
    no inner calibration (benchmarks/variant_frontier.py, verify_frontier.py)."""
    from gpperf_torch.predictor import train

    for seed in seeds:
        test_rows, train_rows = split_rows(table, mk, gpu, test, seed)
        model = train.fit(table, rows=train_rows, seed=seed, target_gpu=gpu, n_jobs=jobs, **fit_kw)
        yield seed, model, table.subset(test_rows)


def run_one(table, mk: dict, gpu: str, test: str, seed: int, inner: int, n_jobs: int) -> dict:
    from gpperf_torch.policy.dispatch import NO_HOST_COST, Policy
    from gpperf_torch.predictor import train

    test_rows, train_rows = split_rows(table, mk, gpu, test, seed)
    kw = {"target_gpu": gpu, "n_jobs": n_jobs}
    _, summary, _ = train.held_out_metrics(table, seeds=tuple(range(100 + seed, 100 + seed + inner)),
                                           rows=train_rows, sources=mk["sources"], **kw)  # fmt: skip
    z = summary["dispatch"]["z"]
    model = train.fit(table, rows=train_rows, seed=seed, **kw)
    m = train.evaluate(model, table.subset(test_rows), policy=Policy(z=z, host_ms=dict(NO_HOST_COST)))
    point_policy = Policy(z=0.0, tie_rel=0.0, z_unaligned=0.0, host_ms=dict(NO_HOST_COST))
    point = train.evaluate(model, table.subset(test_rows), policy=point_policy)
    m["dispatch_z"] = z
    m["point_estimate"] = {k: point[k] for k in KEYS if k in point}
    return m


def main(argv: list[str] | None = None) -> int:
    from gpperf_torch.measure import dataset

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--gpus", nargs="+", default=["h100", "a100"])
    ap.add_argument("--tests", nargs="+", default=["family", "hf_split", "rand2hf", "rand_split"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--inner", type=int, default=10, help="grouped splits of the training side that calibrate z")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if not args.data.is_dir():
        print(f"public data not found at {args.data}: pass --data or set GPPERF_PUBLIC_DATA", file=sys.stderr)
        return 2
    out: dict = {}
    for gpu in args.gpus:
        files = [args.data / f for f in FILES[gpu]]
        table = dataset.load_table([str(f) for f in files])
        mk = _masks(table, gpu, files)
        for test in args.tests:
            seeds = args.seeds  # rand2hf: the seed moves the forest's randomness and the calibration splits only
            t0 = time.perf_counter()
            runs = [run_one(table, mk, gpu, test, s, args.inner, args.jobs) for s in seeds]
            out[f"{gpu}/{test}"] = runs
            print(f"\n{gpu} {test}: seeds {seeds}, {runs[0]['n_shapes_with_extern']} test shapes,"
                  f" {time.perf_counter() - t0:.0f} s")  # fmt: skip
            for label, get in (("dispatch", lambda r: r), ("point estimate", lambda r: r["point_estimate"])):
                cells = []
                for k in KEYS:
                    vals = [get(r)[k] for r in runs if k in get(r)]
                    if not vals:
                        continue
                    worst = min(vals) if k in HIGHER_IS_BETTER else max(vals)
                    cells.append(f"{k} {np.mean(vals):.4f} (worst {worst:.4f})")
                print(f"  {label}: " + "; ".join(cells))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
