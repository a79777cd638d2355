"""`gpperf-torch select M N K`: rank the candidate configs of one GEMM shape (explain, as a table or JSON); with
`--backend inductor`, what the torch.compile path chooses among Inductor's mm template configs."""

from __future__ import annotations

import json
import math
import sys

import torch

from ..errors import ModelError
from ..inductor.costs import EPILOGUES
from ..inductor.policy import explain as explain_inductor
from ..measure.device import device_for
from ..selection.explain import explain
from ..selection.state import set_model_for

_DTYPE_ALIASES = {"fp16": "float16", "half": "float16", "bf16": "bfloat16", "fp32": "float32", "float": "float32"}


def add_cli(sub) -> None:
    from .argtypes import non_negative_int, positive_int

    p = sub.add_parser("select", help="rank the candidate configs for one GEMM shape (works without a GPU)")
    p.add_argument("m", type=positive_int)
    p.add_argument("n", type=positive_int)
    p.add_argument("k", type=positive_int)
    p.add_argument("--dtype", default="float16", help="float16|bfloat16|float32 (fp16, bf16, fp32)")
    p.add_argument("--objective", default=None, help="time | energy | edp | balanced[:slack] | power_cap:<W>")
    p.add_argument(
        "--gpu", default=None, help="use this GPU's shipped model (h100, a100, ...) instead of the local GPU"
    )
    p.add_argument("--model", default=None, help="model directory (model.onnx + model.json) to use")
    p.add_argument("--a-trans", action="store_true", help="A is a transposed view")
    p.add_argument("--b-trans", action="store_true", help="B is a transposed view (as in Linear: x @ W^T)")
    p.add_argument(
        "--backend", choices=("op", "inductor"), default="op",
        help="op: the custom op's choice (default); inductor: the torch.compile path's, among Inductor's own mm"
        " template configs and the aten extern",
    )  # fmt: skip
    p.add_argument("--epilogue", choices=[x for x in EPILOGUES if x], default=None,
                   help="with --backend inductor: what the template would fuse (bias, act, bias_act)")  # fmt: skip
    p.add_argument(
        "--mode",
        choices=("predict", "verify"),
        default="predict",
        help="with --backend inductor: the hook's mode (verify: the candidates Inductor's autotuner times)",
    )
    p.add_argument("--top", type=non_negative_int, default=10, help="rows to print (0: all)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cli_select)


def _cli_select(args) -> int:
    dtype = _DTYPE_ALIASES.get(args.dtype, args.dtype)
    try:
        if args.model:
            info = (
                device_for(gpu=args.gpu)
                if args.gpu
                else (device_for() if torch.cuda.is_available() else device_for(gpu="h100"))
            )
            set_model_for(info, args.model)
            gpu = info.short_name if (args.gpu or not torch.cuda.is_available()) else None
        else:
            gpu = args.gpu
            if gpu is None and not torch.cuda.is_available():
                print("no GPU here: pass --gpu NAME (e.g. --gpu h100) to use that GPU's shipped model", file=sys.stderr)
                return 2
        if args.backend == "inductor":
            rows = explain_inductor(
                args.m, args.n, args.k, dtype=dtype, a_trans=args.a_trans, b_trans=args.b_trans, epilogue=args.epilogue,
                mode=args.mode, objective=args.objective, gpu=gpu,
            )  # fmt: skip
        elif args.epilogue is not None:
            raise ValueError("--epilogue is the compile path's: add --backend inductor")
        else:
            rows = explain(args.m, args.n, args.k, dtype=dtype, a_trans=args.a_trans, b_trans=args.b_trans,
                           objective=args.objective, gpu=gpu)  # fmt: skip
    except (ValueError, ModelError) as e:
        print(f"gpperf-torch select: {e}", file=sys.stderr)
        return 2
    shown = rows if args.top == 0 else rows[: args.top]
    if args.json:
        print(json.dumps(shown, indent=1))
        return 0
    targets = [t for t in ("time_ms", "power_w", "energy_j") if t in rows[0]]
    first = rows[0]
    inductor = args.backend == "inductor"
    extra = "epilogue_ms" if inductor else "host_ms"
    path = f" compile path ({first['mode']}, epilogue {first['epilogue']})" if inductor else ""
    print(
        f"{args.m}x{args.n}x{args.k} {dtype} a_trans={int(args.a_trans)} b_trans={int(args.b_trans)} "
        f"objective={first['objective']} on {first['device']}{path} (model: {first['model']})"
    )
    head = f"{'rank':>4}  {'config':<26}" + "".join(f"{t:>12}" for t in targets) + f"{'+-(1 sd)':>10}{extra:>12}"
    print(head)
    print("-" * len(head))
    for r in shown:
        spread = f"{math.expm1(r['time_sd_log']):>9.1%}"
        print(
            f"{r['rank']:>4}  {r['config']:<26}"
            + "".join(f"{r[t]:>12.5g}" for t in targets)
            + f" {spread}{r[extra]:>12.4f}"
        )
    print(f"({len(rows)} candidates; best first)")
    print(f"why: {first['why']}")
    if "objective_note" in first:
        print(f"note: {first['objective_note']}")
    if "triton_pick" in first:
        print(f"Triton pick weighed against torch.matmul: {first['triton_pick']}")
    pol = first["policy"]
    if not inductor:
        print(f"policy: z={pol['z']:g}, host cost per call (ms) {pol['host_ms']} from {pol['host_source']}")
    else:
        print(f"policy: z={pol['z']:g}, added per call (ms) {pol['host_ms']}: {pol['host_source']}")
        print(f"verify candidates (Inductor's autotuner times them): {', '.join(first['verify_candidates'])}")
        for key, why in first["left_out"].items():
            print(f"left out: {key}: {why}")
    return 0
