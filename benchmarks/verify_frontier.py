"""The measured dispatch's frontier: gain over cuBLAS against candidates measured per shape, on shapes the model
never saw; and what sharing a measurement across M (buckets) loses. The evidence behind verify_policy.py.

    python benchmarks/verify_frontier.py [--gpus h100 a100] [--tests family rand_split] [--seeds 0 1 2 3 4 5]
    python benchmarks/verify_frontier.py --buckets      # the M-bucket table only (no fitting, seconds)
    python benchmarks/verify_frontier.py --backend both --gpus h100 --tests family --seeds 0 1 2

`--backend inductor` (or `both`: the op's rows and these from the same fits) replays the compile path's policy
(gpperf_torch/inductor/replay.py) on the same test sides: the candidates are the template configs Inductor 2.13
offers per shape that the data measured; `predict` is one choice, nothing timed; `verify:K` / `verify` the extern
plus the templates verify_policy names, the fastest measured kept (Inductor's autotuner: no margin);
`max-autotune` every offered config and the extern; `perfect` the best measured config, offered or not. Printed
also: the shares of shapes below 0.97x and 0.8x the extern (the issue's safety bounds for predict). `--epilogue
act` adds the modelled pointwise kernel (gpperf_torch/inductor/costs.py) to the extern's measured time.

For each GPU, test (benchmarks/dispatch_eval.py's splits: `family` holds whole Hugging Face model families out,
`rand_split` a grouped 30% of the random shapes, `hf_split`, `rand2hf`) and seed: one fit on the training side
(the shipped procedure without the inner calibration of z), then on the test side:
- `predict`: the predict-only dispatch (dispatch.decide) at z = 1, the calibration's floor (evaluation.Z_MIN);
- `verify:K`: cuBLAS plus the top K Triton configs by prediction, the fastest measured kept
  (verify_eval.verify_metrics, the same functions as the op);
- `verify`: the product's default policy (verify_policy.default_policy);
- `perfect`: the best measured config or cuBLAS.
Printed: the mean over seeds of the geomean over cuBLAS, its worst seed, the mean p10 shape, the worst shape of
any seed, candidates measured per shape (cuBLAS included), distinct compile classes, and the share of the perfect
pick's gain.

`--buckets`: over every public file, pairs of shapes that differ only in M: the speedup over cuBLAS when one
uses the other's best measured choice, against its own, by |log2(M ratio)|, and for pairs that share a bucket
under each scheme (exact, 8 or 4 per octave, powers of two). Public data at run time, never copied.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import dispatch_eval as de  # noqa: E402  (the splits and file lists of the dispatch table)

POLICIES = ("predict", "verify:1", "verify:2", "verify:3", "verify:4", "verify", "perfect")
INDUCTOR_POLICIES = ("predict", "verify:1", "verify:2", "verify:3", "verify:4", "verify", "max-autotune", "perfect")


def _row_metrics(model, test) -> dict[str, dict]:
    from gpperf_torch.policy import verify_policy
    from gpperf_torch.policy.dispatch import NO_HOST_COST, Policy
    from gpperf_torch.predictor import train
    from gpperf_torch.predictor.verify_eval import verify_metrics

    out = {}
    m = train.evaluate(model, test, policy=Policy(z=1.0, host_ms=dict(NO_HOST_COST)))
    out["predict"] = {"geo": m["speedup_vs_extern_geomean"], "p10": m["speedup_vs_extern_p10"],
                      "min": m["speedup_vs_extern_min"], "cands": 0.0, "compiles": 0, "share": math.nan}  # fmt: skip
    for name in POLICIES[1:-1]:
        v = verify_metrics(model, test, verify_policy.parse(name))
        out[name] = {"geo": v["verify_speedup_vs_extern_geomean"], "p10": v["verify_speedup_vs_extern_p10"],
                     "min": v["verify_speedup_vs_extern_min"],
                     "cands": v["verify_candidates_per_shape"], "compiles": v["verify_compiles"],
                     "share": v["verify_share_of_oracle_gain"]}  # fmt: skip
        oracle = v["verify_speedup_vs_extern_oracle_geomean"]
    out["perfect"] = {"geo": oracle, "p10": 1.0, "min": 1.0, "cands": math.nan, "compiles": 0, "share": 1.0}
    return out


def _inductor_metrics(model, test, epilogue: str | None = None) -> dict[str, dict]:
    from gpperf_torch.inductor.replay import inductor_metrics
    from gpperf_torch.policy import verify_policy

    out = {}
    for name in INDUCTOR_POLICIES[1:-2]:
        v = inductor_metrics(model, test, verify_policy.parse(name), epilogue=epilogue)
        out[name] = _inductor_row(v, "verify", v["inductor_verify_choices_per_shape"])
    out["predict"] = _inductor_row(v, "predict", 1.0)
    out["max-autotune"] = _inductor_row(v, "max_autotune", v["inductor_max_autotune_choices_per_shape"])
    out["perfect"] = _inductor_row(v, "oracle", math.nan)
    best = math.log(out["perfect"]["geo"])
    for row in out.values():
        row["share"] = math.log(row["geo"]) / best if best > 0 else math.nan
    out["_coverage"] = {"offered": v["inductor_offered_per_shape"], "measured": v["inductor_offered_measured_share"],
                        "unseen": v["inductor_unseen_per_shape"], "n": v["inductor_n_shapes"]}  # fmt: skip
    return out


def _inductor_row(v: dict, pol: str, cands: float) -> dict:
    return {"geo": v[f"inductor_{pol}_geomean"], "p10": v[f"inductor_{pol}_p10"], "min": v[f"inductor_{pol}_min"],
            "below097": v[f"inductor_{pol}_share_below_0.97"], "below08": v[f"inductor_{pol}_share_below_0.8"],
            "cands": cands}  # fmt: skip


def _print_inductor(gpu: str, test: str, runs: list[dict]) -> None:
    for name in INDUCTOR_POLICIES:
        col = {f: [r[name][f] for r in runs] for f in ("geo", "p10", "min", "cands", "share", "below097", "below08")}
        print(f"{gpu:5s} {test:10s} {'ind ' + name:16s} {np.mean(col['geo']):8.4f} {min(col['geo']):10.4f}"
              f" {np.mean(col['p10']):6.3f} {min(col['min']):6.3f} {np.mean(col['cands']):6.2f}"
              f" {np.nanmean(col['share']):10.2f} {np.mean(col['below097']):7.3f} {max(col['below097']):7.3f}"
              f" {np.mean(col['below08']):6.3f}", flush=True)  # fmt: skip
    cov = [r["_coverage"] for r in runs]
    print(f"  (compile path: {np.mean([c['n'] for c in cov]):.0f} shapes per seed; Inductor offers"
          f" {np.mean([c['offered'] for c in cov]):.1f} configs per shape, the data measured"
          f" {np.mean([c['measured'] for c in cov]):.0%} of them, {np.mean([c['unseen'] for c in cov]):.1f} never"
          " seen by the model)", flush=True)  # fmt: skip


def _inductor_header() -> None:
    print(f"{'gpu':5s} {'test':10s} {'policy':16s} {'geomean':>8s} {'worst seed':>10s} {'p10':>6s} {'min':>6s}"
          f" {'cands':>6s} {'of perfect':>10s} {'<0.97x':>7s} {'worst':>7s} {'<0.8x':>6s}")  # fmt: skip


def frontier(args) -> None:
    if args.backend == "inductor":
        _inductor_header()
        for gpu in args.gpus:
            table, mk = de.load_gpu(args.data, gpu)
            for test in args.tests:
                t0 = time.perf_counter()
                sides = de.fits(table, mk, gpu, test, args.seeds, args.jobs)
                runs = [_inductor_metrics(model, side, args.epilogue) for _, model, side in sides]
                _print_inductor(gpu, test, runs)
                print(f"  ({len(args.seeds)} seeds, {time.perf_counter() - t0:.0f} s)", flush=True)
        return
    print(f"{'gpu':5s} {'test':10s} {'policy':9s} {'geomean':>8s} {'worst seed':>10s} {'p10':>6s} {'min':>6s}"
          f" {'cands':>6s} {'compiles':>8s} {'of perfect':>10s}")  # fmt: skip
    for gpu in args.gpus:
        table, mk = de.load_gpu(args.data, gpu)
        for test in args.tests:
            t0 = time.perf_counter()
            sides = list(de.fits(table, mk, gpu, test, args.seeds, args.jobs))
            runs = [_row_metrics(model, side) for _, model, side in sides]
            for name in POLICIES:
                col = {f: [r[name][f] for r in runs] for f in ("geo", "p10", "min", "cands", "compiles", "share")}
                share = np.nanmean(col["share"]) if name != "predict" else math.nan
                print(f"{gpu:5s} {test:10s} {name:9s} {np.mean(col['geo']):8.4f} {min(col['geo']):10.4f}"
                      f" {np.mean(col['p10']):6.3f} {min(col['min']):6.3f} {np.mean(col['cands']):6.2f}"
                      f" {np.mean(col['compiles']):8.0f} {share:10.2f}", flush=True)  # fmt: skip
            if args.backend == "both":
                _inductor_header()
                _print_inductor(gpu, test, [_inductor_metrics(model, side, args.epilogue) for _, model, side in sides])
            print(f"  ({len(args.seeds)} seeds, {time.perf_counter() - t0:.0f} s)", flush=True)


# ---- M buckets ----------------------------------------------------------------------------------------------
SCHEMES = {"exact": 0, "8/octave": 8, "4/octave": 4, "2/octave": 2, "pow2": 1}
BINS = (0.125, 0.25, 0.5, 1.0, 1.01, 2.0, math.inf)  # upper edges of |log2(M ratio)| (1.01: exactly 2x)


def _shapes(table) -> list[dict]:
    from gpperf_torch.predictor.evaluation import _groups

    out = []
    for g in _groups(table):
        fin = np.isfinite(g.triton_time)
        if not fin.any() or not math.isfinite(g.torch_time):
            continue
        r = g.triton_rows[0]
        keys = [k for k, ok in zip(g.triton_keys, fin, strict=True) if ok]
        tt = g.triton_time[fin]
        j = int(np.argmin(tt))
        out.append({"m": int(table["m"][r]), "rest": tuple(str(table[c][r]) for c in ("n", "k", "dtype", "a_trans",
                    "b_trans", "tf32")), "times": dict(zip(keys, tt.tolist(), strict=True)),
                    "torch": g.torch_time, "best": keys[j] if tt[j] < g.torch_time else "torch"})  # fmt: skip
    return out


def _transfer(a: dict, b: dict) -> float | None:
    """a's speedup over cuBLAS with b's best choice, over a's own best (None: b's config not measured for a)."""
    own = a["torch"] / min(a["torch"], a["times"].get(a["best"], math.inf))
    if b["best"] == "torch":
        return 1.0 / own
    t = a["times"].get(b["best"])
    return None if t is None else (a["torch"] / t) / own


def buckets(args) -> None:
    from gpperf_torch.measure import dataset
    from gpperf_torch.policy.verify_policy import m_bucket

    print(f"{'file':16s} {'|log2 M ratio|':>15s} {'pairs':>6s} {'loss':>7s} {'<0.97x':>7s} {'worst':>6s}")
    for f in ("h100_mm.csv", "h100_hf_mm.csv", "a100_mm.csv", "a100_hf_mm.csv"):
        shapes = _shapes(dataset.load_table(str(args.data / f)))
        by = defaultdict(list)
        for s in shapes:
            by[s["rest"]].append(s)
        bins: dict[float, list] = defaultdict(list)
        scheme: dict[str, list] = defaultdict(list)
        for members in by.values():
            for a in members:
                for b in members:
                    if a is b:
                        continue
                    r = _transfer(a, b)
                    if r is None:
                        continue
                    d = abs(math.log2(a["m"] / b["m"]))
                    bins[next(e for e in BINS if d < e)].append(r)
                    for name, steps in SCHEMES.items():
                        same = m_bucket(a["m"], steps) == m_bucket(b["m"], steps) and (a["m"] % 16 == 0) == (
                            b["m"] % 16 == 0)  # fmt: skip
                        if same:
                            scheme[name].append(r)
        for e in BINS:
            if bins[e]:
                r = np.asarray(bins[e])
                print(f"{f:16s} {'< ' + format(e, 'g'):>15s} {len(r):6d} {np.exp(np.mean(np.log(r))):7.4f}"
                      f" {np.mean(r < 0.97):7.3f} {r.min():6.3f}")  # fmt: skip
        for name in SCHEMES:
            r = np.asarray(scheme[name]) if scheme[name] else None
            if r is not None:
                print(f"{f:16s} {'same ' + name:>15s} {len(r):6d} {np.exp(np.mean(np.log(r))):7.4f}"
                      f" {np.mean(r < 0.97):7.3f} {r.min():6.3f}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=de.DEFAULT_DATA)
    ap.add_argument("--gpus", nargs="+", default=["h100", "a100"])
    ap.add_argument("--tests", nargs="+", default=["family", "rand_split"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4, 5])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument(
        "--backend",
        choices=("op", "inductor", "both"),
        default="op",
        help="op: the op's measured dispatch; inductor: the compile path's policy; both, from the same fits",
    )
    ap.add_argument(
        "--epilogue",
        choices=("bias", "act", "bias_act"),
        default=None,
        help="compile path: charge the extern the modelled pointwise kernel a template fuses (costs.py)",
    )
    ap.add_argument("--buckets", action="store_true", help="only the M-bucket table")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if not args.data.is_dir():
        print(f"public data not found at {args.data}: pass --data or set GPPERF_PUBLIC_DATA", file=sys.stderr)
        return 2
    if args.buckets:
        buckets(args)
    else:
        frontier(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
