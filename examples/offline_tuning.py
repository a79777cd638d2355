"""Offline tuning for your own model: record its GEMM shapes, measure them, train a predictor, use it.

The same flow as the command line (`gpperf-torch tune` -> `gpperf-torch train` -> GPPERF_MODEL=dir), from Python:

1. `gpperf_torch.record_shapes(model, example_inputs)` runs the model once, forward and backward, and returns
   every GEMM its Linear layers produce (M, N, K, dtype, layout, count);
2. `gpperf_torch.tune(...)` measures those shapes over a fixed set of tile configs (plus torch.matmul),
   time and, on a GPU with NVML, energy, into a resumable CSV;
3. `gpperf_torch.predictor.train.train_and_export(...)` fits the predictor on the CSV, writing model.onnx + model.json;
4. `gpperf_torch.set_model(dir)` makes the op select with it; `gpperf_torch.explain` shows each shape's choice.

    python examples/offline_tuning.py --out runs/mymlp             # GPU: a 4096-wide MLP, ~48 configs, 5 min
    python examples/offline_tuning.py --d-model 32 --tokens 8       # what runs on a CPU (the interpreter)

Without a GPU the measuring runs through the Triton interpreter on tiny shapes (wall-clock times, no energy,
rows marked interpreted=1): the flow is real, the model it trains describes the interpreter, not a GPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before gpperf_torch imports the kernel

import gpperf_torch as gp  # noqa: E402
from gpperf_torch import kernels  # noqa: E402
from gpperf_torch.tuning.plan import sample_configs  # noqa: E402

LAYOUT_NAMES = {(False, False): "nn", (False, True): "nt", (True, False): "tn", (True, True): "tt"}
# Small tiles for the interpreter: each program instance costs the same whatever its size, so these keep the
# tiny CPU shapes at one or a few programs.
CPU_CONFIGS = [
    kernels.TileConfig(16, 16, 16, num_warps=1, num_stages=1),
    kernels.TileConfig(32, 32, 32, num_warps=2, num_stages=2),
    kernels.TileConfig(32, 64, 32, num_warps=4, num_stages=2),
    kernels.TileConfig(64, 32, 32, num_warps=4, num_stages=2),
    kernels.TileConfig(64, 64, 32, num_warps=4, num_stages=3),
    kernels.TileConfig(16, 32, 32, split_k=2, num_warps=2, num_stages=2),
]


class MLPModel(nn.Module):
    """A stack of transformer-style MLP blocks (Linear -> GELU -> Linear, residual) and a head."""

    def __init__(self, d_model: int, layers: int, out: int):
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.LayerNorm(d_model), nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model)
            )
            for _ in range(layers)
        )
        self.head = nn.Linear(d_model, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = x + block(x)
        return self.head(x)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None, help="directory for tune.csv and model/ (default: a new temp dir)")
    p.add_argument("--d-model", type=int, default=None, help="model width (GPU 4096, CPU 32)")
    p.add_argument("--layers", type=int, default=None, help="MLP blocks (GPU 2, CPU 1)")
    p.add_argument("--tokens", type=int, default=None, help="batch x sequence rows of the input (GPU 2048, CPU 8)")
    p.add_argument("--dtype", default=None, choices=["float16", "bfloat16", "float32"], help="GPU fp16, CPU fp32")
    p.add_argument("--configs", type=int, default=None, help="tile configs measured per shape (GPU 48, CPU 6)")
    p.add_argument("--budget-s", type=float, default=None, help="stop measuring after this long (GPU 300, CPU 120)")
    p.add_argument("--energy-fraction", type=float, default=1.0, help="rows that get an NVML energy window (GPU)")
    p.add_argument("--test-frac", type=float, default=0.3, help="shapes held out for the metrics, then refit on all")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    threads = torch.get_num_threads()
    if not torch.cuda.is_available():
        torch.set_num_threads(1)  # tiny tensors: more threads only wait on each other
    try:
        with gp.stats.counting() as counts:  # on the interpreter: each GEMM's Triton pick also runs, vs float64
            rc = _main(args)
    finally:
        torch.set_num_threads(threads)
        gp.set_model(None)  # back to the shipped model for this process
    print(f"\n{counts.summary()}")
    return rc if counts.ok else 1


def _main(args: argparse.Namespace) -> int:
    from gpperf_torch.predictor import train  # offline extras: scikit-learn, skl2onnx

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    d_model = args.d_model or (4096 if cuda else 32)
    layers = args.layers or (2 if cuda else 1)
    tokens = args.tokens or (2048 if cuda else 8)
    dtype_name = args.dtype or ("float16" if cuda else "float32")
    dtype = getattr(torch, dtype_name)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="gpperf-offline-"))
    out.mkdir(parents=True, exist_ok=True)
    csv_path, model_dir = out / "tune.csv", out / "model"

    if cuda:
        print(f"GPU: {torch.cuda.get_device_name()}: measuring real kernels (time; energy via NVML where available)")
    else:
        print("No GPU: measuring through the Triton interpreter (TRITON_INTERPRET=1) on tiny shapes.")
        print("NOTE: these are NOT GPU numbers: times are the interpreter's wall clock, there is no energy, and the")
        print("model trained here describes the interpreter. The flow is the one to run on your GPU.")
    print(f"outputs under {out}\n")

    # 1. The model's own GEMM shapes, forward and backward.
    torch.manual_seed(args.seed)
    model = MLPModel(d_model, layers, out=d_model // 2).to(device=device, dtype=dtype)
    x = torch.randn(tokens, d_model, device=device, dtype=dtype)
    recorded = gp.record_shapes(model, x)
    print(f"1. record_shapes: {len(recorded)} distinct GEMMs in one forward + backward of {type(model).__name__}")
    for shape, count in recorded:
        lay = LAYOUT_NAMES[(shape.a_trans, shape.b_trans)]
        print(f"   {shape.m:>6} x {shape.n:>6} x {shape.k:>6}  {shape.dtype:<8} {lay}  x{count}")

    # 2. Measure them: one tune() call per layout (tune crosses its shapes with its layouts), same CSV.
    by_layout: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
    for shape, _ in recorded:
        # Batched GEMMs are selected as one GEMM of batch * M rows, so that is the shape to measure.
        mnk = (shape.m * shape.batch, shape.n, shape.k)
        lay = LAYOUT_NAMES[(shape.a_trans, shape.b_trans)]
        if mnk not in by_layout[lay]:
            by_layout[lay].append(mnk)
    if cuda:
        from gpperf_torch.measure.device import current_device

        info = current_device()
        space = kernels.candidate_space(
            elem_size=kernels.elem_size(dtype_name), max_shared_memory=info.max_shared_memory
        )
        # One fixed sample for every shape: the predictor learns configs it has seen across shapes.
        configs = sample_configs(space, args.configs or 48, seed=args.seed, key="offline_tuning")
    else:
        configs = CPU_CONFIGS[: args.configs or len(CPU_CONFIGS)]
    budget = args.budget_s or (300.0 if cuda else 120.0)
    written = 0
    for lay, shapes in by_layout.items():
        summary = gp.tune(
            csv_path,
            shapes=shapes,
            dtypes=[dtype_name],
            layouts=[lay],
            configs=configs,
            budget_s=budget,
            energy_fraction=args.energy_fraction if cuda else 0.0,
            time_budget_ms=25.0 if cuda else 2.0,
            jobs=None if cuda else 0,
            interpret=not cuda,
            quiet=True,
            seed=args.seed,
        )
        written += summary.rows_written
        energy = "with energy" if summary.energy_available else f"no energy ({summary.energy_reason})"
        print(
            f"2. tune layout {lay}: {summary.rows_written} rows written, {summary.rows_skipped} already there, "
            f"{summary.rows_failed} failed, {summary.elapsed_s:.1f} s, {energy}"
        )
    print(f"   -> {csv_path} ({written} new rows, {len(configs)} configs + torch.matmul per shape)")

    # 3. Train: hold out some shapes for honest metrics, then refit on all of them (few shapes here).
    from gpperf_torch.measure import dataset
    from gpperf_torch.predictor.runtime import Predictor

    n_groups = dataset.load_table(csv_path, include_interpreted=not cuda).n_groups
    fit_jobs = -1 if cuda else 1
    if n_groups >= 2:
        metrics = train.train_and_export(
            [str(csv_path)], model_dir, test_frac=args.test_frac, seed=args.seed, use_all=True,
            include_interpreted=not cuda, n_jobs=fit_jobs,
        )  # fmt: skip
        held_out = f"held out {args.test_frac:.0%} of {n_groups} shapes: {_short(metrics)}"
    else:  # one shape: nothing to hold out; fit on it all
        table = dataset.load_table(csv_path, include_interpreted=not cuda)
        train.export(train.fit(table, seed=args.seed, n_jobs=fit_jobs), model_dir, {"provenance": "offline_tuning.py"})
        held_out = "one shape only: no held-out metrics"
    predictor = Predictor.load(model_dir)
    print(
        f"3. train_and_export -> {model_dir}: targets {', '.join(predictor.targets)}, "
        f"{len(predictor.candidates)} candidates; {held_out}"
    )

    # 4. Use it: the op now selects with the new model; explain each recorded shape's choice.
    shipped = {}
    for shape, _ in recorded:
        shipped[shape] = _ranked(shape, device)[0]
    gp.set_model(str(model_dir))
    print("4. set_model: the choice for each recorded shape (new model vs the shipped one)")
    print(f"   {'M x N x K':>14} {'layout':<6} {'new model':<24} {'pred ms':>9}  {'best Triton':<24} {'shipped model'}")
    for shape, _ in recorded:
        ranked = _ranked(shape, device)
        best, triton = ranked[0], next((r for r in ranked if r["backend"] == "triton"), ranked[0])
        lay = LAYOUT_NAMES[(shape.a_trans, shape.b_trans)]
        mnk = f"{shape.m * shape.batch}x{shape.n}x{shape.k}"
        print(
            f"   {mnk:>14} {lay:<6} {best['config']:<24} {best['time_ms']:>9.4g}  {triton['config']:<24} "
            f"{shipped[shape]['config']}"
        )

    # The model runs with the new selections, forward and backward, and gives the same result.
    y = model(x)
    gp.patch(model)
    y2 = model(x)
    y2.float().sum().backward()
    gp.unpatch(model)
    print(f"\npatched model with the new model: max |diff| vs plain PyTorch {(y - y2).abs().max().item():.3e}")
    if not cuda:
        print("(interpreter run: the flow and the results are real, the measured times are not GPU times)")
    print(f"use it elsewhere: GPPERF_MODEL={model_dir} or gpperf_torch.set_model({str(model_dir)!r})")
    return 0


def _ranked(shape, device: str) -> list[dict]:
    """gpperf_torch.explain for a recorded shape: every candidate, best first, with its predictions."""
    return gp.explain(
        shape.m,
        shape.n,
        shape.k,
        dtype=shape.dtype,
        a_trans=shape.a_trans,
        b_trans=shape.b_trans,
        batch=shape.batch,
        device=device,
    )


def _short(metrics: dict) -> str:
    keys = ("geomean_regret", "top1_agreement", "r2_log_time", "geomean_energy_regret")
    return ", ".join(f"{k} {metrics[k]:.3g}" for k in keys if isinstance(metrics.get(k), float))


if __name__ == "__main__":
    sys.exit(main())
