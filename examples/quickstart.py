"""Quickstart: multiply a few shapes through gpperf_torch.matmul, check them against torch, and show for each
shape what runs (a Triton tile config or cuBLAS) and why: the predicted times, the predicted gain over cuBLAS
and its confidence (gpperf_torch.explain, the same dispatch policy the op uses).

    python examples/quickstart.py            # on a GPU: real kernels, predicted times for this GPU
    python examples/quickstart.py --small    # tiny shapes (what runs on a CPU through the Triton interpreter)

Without a GPU this runs the same Triton kernel through the interpreter: results are real, times are not (the
dispatch picks torch.matmul for these shapes; gp.stats runs each one's Triton pick too, checked against float64).
The interpreter is not thread-safe: one thread at a time.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before gpperf_torch imports the kernel

import gpperf_torch as gp  # noqa: E402

GPU_SHAPES = [(1, 4096, 4096), (16, 11008, 4096), (512, 4096, 4096), (4096, 4096, 4096), (100, 37, 53)]
CPU_SHAPES = [(1, 256, 128), (16, 96, 64), (100, 37, 53), (128, 128, 64)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="tiny shapes (default without a GPU)")
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    parser.add_argument("--objective", default="time", help="time | energy | edp | balanced | power_cap:<W>")
    args = parser.parse_args(argv)

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    dtype = getattr(torch, args.dtype)
    shapes = CPU_SHAPES if (args.small or not cuda) else GPU_SHAPES
    if cuda:
        print(f"GPU: {torch.cuda.get_device_name()}  (Triton kernels compiled for it)")
    else:
        print("No GPU: running the Triton kernel through the Triton interpreter (TRITON_INTERPRET=1).")
        print("Results are real; predicted times are for the model's GPU, not for this CPU.")
    print(f"dtype {args.dtype}, objective {args.objective}\n")

    try:
        with gp.objective(args.objective):  # a bad objective fails here, before any GEMM
            pass
        ok, ranked = _run(shapes, dtype, args.objective, device, cuda)
    except ValueError as e:  # e.g. an energy objective the model cannot predict: the fix, not a traceback
        print(f"objective {args.objective!r} cannot be used here: {e}", file=sys.stderr)
        return 2
    src = ranked[0]["model"]
    why = "the analytic rule (no model for this GPU)" if src == "analytic" else f"the predictor {os.path.basename(src)}"
    print(
        f"\nEach shape: the fastest predicted of {len(ranked)} candidates by {why}; Triton only where the predicted"
        " gain over cuBLAS, per-call host cost included (eager mode), is confident (mean - z sd of the forest's"
        " trees > 1). gain: predicted speedup of the Triton pick over cuBLAS, +- one sd."
    )
    if not cuda:
        print(
            "(interpreter run: the dispatch sent these GEMMs to torch.matmul; the Triton kernel ran each one too, on"
            " the config a GPU would use, checked against float64 (the counts above); the times are the model's"
            " predictions for its GPU)"
        )
    print("all results match float64" if ok else "MISMATCH against float64")
    return 0 if ok else 1


def _run(shapes, dtype, objective, device, cuda) -> tuple[bool, list[dict]]:
    """Each shape through gp.matmul, its result checked against float64; the counts of what ran (gp.stats)."""
    ok = True
    header = f"{'M x N x K':>18}  {'runs on':<26} {'Triton pick':<26} {'ms (Triton/cuBLAS)':>19} {'gain':>14}  check"
    print(header)
    print("-" * len(header))
    with gp.stats.counting() as counts:  # on the interpreter: also runs each GEMM's Triton pick, vs float64
        for m, n, k in shapes:
            a = torch.randn(m, k, device=device).to(dtype)
            w = torch.randn(n, k, device=device).to(dtype)  # a Linear weight: used as a transposed view
            with gp.objective(objective):
                out = gp.matmul(a, w.t())
            ref = a.double() @ w.double().t()
            err = (out.double() - ref).abs().max().item()
            tol = (2e-2 if dtype == torch.bfloat16 else 2e-3) * max(1.0, ref.abs().max().item())
            good = err <= tol
            ok &= good
            ranked = _show(m, n, k, dtype, objective, device, "ok" if good else f"FAIL ({err:.1e})")
    print(f"\n{counts.summary()}")
    if not cuda:
        # What the shipped H100 model runs for shapes too large for the interpreter (explain only, not run).
        print("\nexplain only (shipped h100 model), not run:")
        for m, n, k in GPU_SHAPES:
            _show(m, n, k, dtype, objective, None, "-", gpu="h100")
    return ok and counts.ok, ranked


def _show(m, n, k, dtype, objective, device, check, gpu=None) -> list[dict]:
    ranked = gp.explain(m, n, k, dtype=dtype, b_trans=True, objective=objective, device=device, gpu=gpu)
    first = ranked[0]
    pick = first.get("triton_pick", first["config"] if first["backend"] == "triton" else "-")
    times = {r["config"]: r["time_ms"] for r in ranked}
    t_tri, t_torch = times.get(pick, math.nan), times.get("torch", math.nan)
    if "predicted_gain_vs_torch" in first:
        g, sd = first["predicted_gain_vs_torch"], first["gain_sd_log"]
        gain = f"{g:.2f}x +-{math.expm1(sd):.0%}"
    else:
        gain = "-"
    runs = "cuBLAS (torch.matmul)" if first["backend"] == "torch" else "Triton"
    print(f"{f'{m}x{n}x{k}':>18}  {runs:<26} {pick:<26} {f'{t_tri:.4f}/{t_torch:.4f}':>19} {gain:>14}  {check}")
    print(f"{'':>20}why: {first['why']}")
    return ranked


if __name__ == "__main__":
    sys.exit(main())
