"""`gpperf-torch train` and `gpperf-torch eval`: fit a model on tuning data, or measure one on data.

The work is predictor/train.py's (train_and_export) and predictor/evaluation.py's (evaluate); the replay of the
measured dispatch is predictor/verify_eval.py's, the compile path's (`--backend inductor`) inductor/replay.py's.
"""

from __future__ import annotations

import argparse
import json
import sys

from ..inductor.costs import EPILOGUES
from ..inductor.replay import format_inductor, inductor_metrics
from ..measure import dataset
from ..policy.verify_policy import parse
from ..predictor.evaluation import evaluate
from ..predictor.export import json_default
from ..predictor.fitting import DEFAULT_PARAMS
from ..predictor.model_meta import in_sample
from ..predictor.runtime import load_cli_model
from ..predictor.train import format_metrics, train_and_export
from ..predictor.verify_eval import verify_metrics
from .argtypes import int_at_least, open_fraction, positive_int


def _cmd_train(args: argparse.Namespace) -> int:
    params = {}
    if args.n_estimators is not None:
        params["n_estimators"] = args.n_estimators
    if args.max_leaf_nodes is not None:
        params["max_leaf_nodes"] = args.max_leaf_nodes
    metrics = train_and_export(
        args.data, args.out, test_frac=args.test_frac, seed=args.seed, use_all=args.all, splits=args.splits,
        include_interpreted=args.include_interpreted, target_gpu=args.target_gpu, **params,
    )  # fmt: skip
    rep = metrics["held_out_splits"]
    seeds = rep["seeds"]
    fitted = "refitted on all groups" if args.all else f"fitted on the train split of seed {seeds[0]}"
    print(f"wrote {args.out} ({fitted}); held-out metrics over {len(seeds)} split(s), seeds {seeds[0]}..{seeds[-1]}:")
    print(format_metrics(metrics))
    if len(seeds) > 1:
        for key in ("geomean_regret", "r2_log_time"):
            if key in rep:
                v = rep[key]
                per_seed = " ".join(f"{x:.4f}" for x in v["per_seed"])
                print(f"  {key} per split: {per_seed} (min {v['min']:.4f}, max {v['max']:.4f})")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    predictor = load_cli_model(args.model)
    table = dataset.load_table(args.data, include_interpreted=args.include_interpreted)
    if args.backend == "inductor":
        return _eval_inductor(args, predictor, table)
    if args.epilogue is not None:
        print("gpperf-torch eval: --epilogue is the compile path's: add --backend inductor", file=sys.stderr)
        return 2
    metrics = evaluate(predictor, table, host_cost=args.host_cost)
    if args.mode is not None:
        metrics.update(verify_metrics(predictor, table, args.mode))
    trained_on = in_sample(predictor.meta, args.data)
    if trained_on:
        metrics["in_sample"] = trained_on
        print(
            f"gpperf-torch eval: warning: in-sample: the model was trained on {', '.join(trained_on)} (its JSON's"
            " data_files): these metrics describe fitted data, not unseen shapes; its held-out metrics are in"
            " model.json (metrics.held_out), or evaluate on data it never saw",
            file=sys.stderr,
        )
    if args.json:
        json.dump(metrics, sys.stdout, default=json_default)
        sys.stdout.write("\n")
    else:
        print(f"{predictor} on {', '.join(args.data)} ({len(table)} rows):")
        print(format_metrics(metrics))
    return 0


def _eval_inductor(args: argparse.Namespace, predictor, table) -> int:
    if args.mode is not None and args.mode.exhaustive:
        print("gpperf-torch eval: --backend inductor replays predict or verify[:K] (max-autotune, every offered"
              " config, is reported beside them)", file=sys.stderr)  # fmt: skip
        return 2
    metrics = inductor_metrics(predictor, table, args.mode or "predict", epilogue=args.epilogue)
    if args.json:
        json.dump(metrics, sys.stdout, default=json_default)
        sys.stdout.write("\n")
    else:
        print(f"{predictor} on {', '.join(args.data)} ({len(table)} rows), the compile path's policy replayed:")
        print(format_inductor(metrics))
    return 0


def add_cli(subparsers) -> None:
    p = subparsers.add_parser("train", help="fit the predictor on tuning data (ours or the public format)")
    p.add_argument("--data", nargs="+", required=True, help="CSV files (auto-detected format)")
    p.add_argument("--out", required=True, help="directory for model.onnx + model.json")
    p.add_argument("--test-frac", type=open_fraction, default=0.3, help="share of groups held out for the metrics")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--all", action=argparse.BooleanOptionalAction, default=True,
        help="after the held-out evaluation, refit on all the data and export that (default); --no-all exports"
        " the forest fitted on the train split, which the metrics then describe exactly",
    )  # fmt: skip
    p.add_argument(
        "--splits", type=positive_int, default=5,
        help="held-out evaluation over this many grouped splits (seeds seed, seed+1, ...), combined",
    )  # fmt: skip
    p.add_argument("--n-estimators", type=positive_int, default=None, help=f"default {DEFAULT_PARAMS['n_estimators']}")
    p.add_argument(
        "--max-leaf-nodes", type=int_at_least(2), default=None, help=f"default {DEFAULT_PARAMS['max_leaf_nodes']}"
    )
    p.add_argument("--include-interpreted", action="store_true", help="keep interpreter rows (tests only)")
    p.add_argument(
        "--target-gpu", default=None,
        help="with data from several GPUs: the GPU the model is for (e.g. h100); its configs are the candidates,"
        " its groups are split for the held-out metrics, every other GPU's rows train with their own device",
    )  # fmt: skip
    p.set_defaults(func=_cmd_train)

    e = subparsers.add_parser("eval", help="prediction and selection metrics of a model on data")
    e.add_argument("--model", required=True, help="model directory, <name>.onnx, or a shipped model (h100, a100)")
    e.add_argument("--data", nargs="+", required=True, help="CSV files (auto-detected format)")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument(
        "--host-cost", action="store_true",
        help="dispatch as in eager mode, with the per-call host cost of each backend added to predicted times"
        " (default: none, as the data are kernel times); speedups are still measured kernel times",
    )  # fmt: skip
    e.add_argument(
        "--mode", type=_mode_arg, default=None, metavar="predict|verify[:K]|exhaustive",
        help="also replay the measured dispatch on the data: verify (the product's default policy, what a GPU runs"
        " by default), verify:K (cuBLAS plus the top K Triton configs by prediction) or exhaustive; adds the"
        " verify_* keys. Default: predict (the predict-only dispatch's keys alone)",
    )  # fmt: skip
    e.add_argument(
        "--backend", choices=("op", "inductor"), default="op",
        help="op: the custom op's dispatch (default); inductor: the torch.compile path's policy (Inductor's own mm"
        " template configs as candidates, no host cost, Inductor's autotuner keeping the fastest in verify mode),"
        " replayed with inductor_* keys beside max-autotune",
    )  # fmt: skip
    e.add_argument(
        "--epilogue", choices=[x for x in EPILOGUES if x], default=None,
        help="with --backend inductor: charge the extern the pointwise kernel a template fuses (bias: none; act,"
        " bias_act: one modelled pass over the output, inductor/costs.py); default: a plain mm, as the data",
    )  # fmt: skip
    e.add_argument("--include-interpreted", action="store_true", help="keep interpreter rows (tests only)")
    e.set_defaults(func=_cmd_eval)


def _mode_arg(spec: str):
    """--mode: predict (None) | verify | verify:K | exhaustive (a verify_policy.VerifyPolicy)."""
    if spec.strip().lower() == "predict":
        return None
    try:
        return parse(spec)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
