"""Draw the README gallery: the shipped H100 procedure on held-out public H100 shapes, and the H200 measurements.

    python benchmarks/gallery.py [--out docs/gallery]

1. `report.draw_report` of the shipped H100 model's procedure on public H100 shape groups it never saw: fitted as
   `train_shipped.py` fits it (H100 + all A100 rows) but on the 70% train side of the grouped split, seed 0, and
   drawn on the other 30% (the shipped forest itself has seen every group): predicted vs measured, regret CDF,
   regret by size, and the dispatch policy's speedup over cuBLAS (CDF).
2. From our own GPU run (results/h200-20261126/tune.csv, NVIDIA H200): measured time vs energy per GEMM of every
   row with an NVML energy window, coloured by shape, torch.matmul marked.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PUBLIC = Path(os.environ.get("GPPERF_PUBLIC_DATA", REPO.parent / "shared/data/autoheuristic_mm"))
H200_RUN = REPO / "results/h200-20261126/tune.csv"


def held_out_report(out: Path) -> list[Path]:
    from gpperf_torch.cli import report
    from gpperf_torch.measure import dataset
    from gpperf_torch.predictor import train

    # The shipped model's files (benchmarks/train_shipped.py): random shapes and HF model GEMMs, both GPUs.
    files = ("h100_mm.csv", "h100_hf_mm.csv", "a100_mm.csv", "a100_hf_mm.csv")
    table = dataset.load_table([str(PUBLIC / f) for f in files])
    tr, test = train.split_for_target(table, test_frac=0.3, seed=0, target_gpu="h100")
    model = train.fit(table, rows=tr, seed=0, target_gpu="h100", n_jobs=2)
    # Dispatch as the shipped model does: its calibrated z (kernel times: report draws without host cost).
    model.dispatch = json.loads((REPO / "gpperf_torch/data/h100.json").read_text())["dispatch"]
    return report.draw_report(
        model,
        table.subset(test),
        out,
        title="public H100, held-out:",
    )


def h200_energy_plot(out: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not H200_RUN.is_file():
        return None
    with open(H200_RUN, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["status"] == "ok" and r["energy_j"]]
    shapes = sorted({(int(r["m"]), int(r["n"]), int(r["k"]), r["dtype"]) for r in rows})
    cmap = plt.get_cmap("tab20")
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for i, s in enumerate(shapes):
        pts = [r for r in rows if (int(r["m"]), int(r["n"]), int(r["k"]), r["dtype"]) == s]
        for r in pts:
            is_torch = r["backend"] == "torch"
            ax.scatter(
                float(r["time_ms"]) * 1e3,
                float(r["energy_j"]) * 1e3,
                color=cmap(i % 20),
                marker="*" if is_torch else "o",
                s=90 if is_torch else 30,
                edgecolors="k" if is_torch else "none",
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("time per GEMM (us, CUDA events)")
    ax.set_ylabel("energy per GEMM (mJ, NVML counter over >= 0.2 s)")
    n_w = [float(r["power_w"]) for r in rows]
    ax.set_title(
        f"NVIDIA H200: {len(rows)} measured (shape, config) rows, {len(shapes)} shapes\n"
        f"colour = shape, star = torch.matmul; average power {min(n_w):.0f}-{max(n_w):.0f} W",
        fontsize=10,
    )
    ax.grid(True, which="both", alpha=0.3)
    path = out / "h200_time_vs_energy.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "docs/gallery")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    written = []
    if (PUBLIC / "h100_mm.csv").is_file():
        written += held_out_report(args.out)
    else:
        print(f"public data not found at {PUBLIC}: skipping the held-out report", file=sys.stderr)
    p = h200_energy_plot(args.out)
    if p:
        written.append(p)
    for w in written:
        print(w)
    return 0 if written else 1


if __name__ == "__main__":
    sys.exit(main())
