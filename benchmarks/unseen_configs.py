"""Would scoring configs the model never saw be safe? The evidence behind the compile path's rule (inductor/policy.py)
that leaves them out.

    python benchmarks/unseen_configs.py [--gpu h100] [--test family] [--seeds 0 1 2] [--sets 3] [--size 4]

Inductor offers configs the training data never timed (torch 2.13 added two to the mm template's list). To see
what scoring such configs does, this hides configs the data has: for each seed (benchmarks/dispatch_eval.py's
splits; `family` holds whole HF model families out) and each of `--sets` random sets of `--size` configs drawn
from those Inductor offers at large shapes, one forest is fitted without any row of the hidden configs. On the
test side the compile path's policy (inductor/replay.py) is then replayed twice: with the hidden configs left out
(the rule) and with them scored as if seen. Printed, mean over runs: the geomean speedup over the extern of
predict and verify, the shares of shapes below 0.97x and 0.8x in predict, and the hidden configs' prediction error
(median |log(predicted / measured)|) against that of the configs the forest saw, on the test side.
Public data at run time, never copied.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import dispatch_eval as de  # noqa: E402  (the splits and file lists of the dispatch table)


def _log_error(model, test, hidden: set[str]) -> tuple[float, float]:
    """Median |log(pred / measured)| of the test rows of hidden configs, and of the other Triton rows."""
    from gpperf_torch.predictor.features import table_features

    ok = test.ok & (test["backend"] == "triton") & np.isfinite(test["time_ms"])
    pred = model.predict_features(table_features(test.subset(ok)))[:, 0]
    err = np.abs(np.log(pred / test["time_ms"][ok]))
    is_hidden = np.isin(test["config"][ok], sorted(hidden))
    return float(np.median(err[is_hidden])), float(np.median(err[~is_hidden]))


def main(argv: list[str] | None = None) -> int:
    from gpperf_torch.inductor.policy import GemmSpec, offered_keys
    from gpperf_torch.inductor.replay import inductor_metrics
    from gpperf_torch.policy import verify_policy
    from gpperf_torch.predictor import train

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=de.DEFAULT_DATA)
    ap.add_argument("--gpu", default="h100")
    ap.add_argument("--test", default="family")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--sets", type=int, default=3)
    ap.add_argument("--size", type=int, default=4)
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if not args.data.is_dir():
        print(f"public data not found at {args.data}: pass --data or set GPPERF_PUBLIC_DATA", file=sys.stderr)
        return 2
    table, mk = de.load_gpu(args.data, args.gpu)
    measured = set(table["config"][table["backend"] == "triton"].tolist())
    pool = sorted(k for k in offered_keys(GemmSpec(4096, 4096, 4096, "float16")) or [] if k in measured)
    vp = verify_policy.default_policy()
    rows = []
    for seed in args.seeds:
        test_rows, train_rows = de.split_rows(table, mk, args.gpu, args.test, seed)
        test = table.subset(test_rows)
        rng = np.random.default_rng(1000 + seed)
        for _ in range(args.sets):
            hidden = set(rng.choice(pool, size=args.size, replace=False).tolist())
            keep = train_rows & ~np.isin(table["config"], sorted(hidden))
            model = train.fit(table, rows=keep, seed=seed, target_gpu=args.gpu, n_jobs=args.jobs)
            scored = dataclasses.replace(model, candidates=[*model.candidates, *sorted(hidden)])
            res = {}
            for name, mdl in (("left out", model), ("scored", scored)):
                p = inductor_metrics(mdl, test, "predict")
                v = inductor_metrics(mdl, test, vp)
                res[name] = (p["inductor_predict_geomean"], p["inductor_predict_share_below_0.97"],
                             p["inductor_predict_share_below_0.8"], p["inductor_predict_min"],
                             v["inductor_verify_geomean"])  # fmt: skip
            err_hidden, err_seen = _log_error(model, test, hidden)
            rows.append((res["left out"], res["scored"], err_hidden, err_seen))
            print(f"seed {seed} hidden {sorted(hidden)}: left out {np.round(res['left out'], 4).tolist()},"
                  f" scored {np.round(res['scored'], 4).tolist()}, |log err| hidden {err_hidden:.3f}"
                  f" seen {err_seen:.3f}", flush=True)  # fmt: skip
    left = np.array([r[0] for r in rows])
    scored = np.array([r[1] for r in rows])
    print(f"\n{args.gpu} {args.test}: {len(rows)} runs ({len(args.seeds)} seeds x {args.sets} sets of {args.size}"
          " hidden configs)")  # fmt: skip
    print(f"{'hidden configs':14s} {'predict':>8s} {'<0.97x':>7s} {'<0.8x':>6s} {'min':>6s} {'verify':>8s}")
    for name, a in (("left out", left), ("scored", scored)):
        print(f"{name:14s} {np.exp(np.mean(np.log(a[:, 0]))):8.4f} {a[:, 1].mean():7.3f} {a[:, 2].mean():6.3f}"
              f" {a[:, 3].min():6.3f} {np.exp(np.mean(np.log(a[:, 4]))):8.4f}")  # fmt: skip
    print(f"median |log(pred/measured)|: hidden configs {np.mean([r[2] for r in rows]):.3f},"
          f" seen configs {np.mean([r[3] for r in rows]):.3f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
