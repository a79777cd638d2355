"""Registers, spills, shared memory and global-load width of our kernel on unaligned shapes (issue 27), no GPU.

Cross-compiles (``gpperf-torch inspect --fresh``) a few configs typical of the data on a set of shapes:
aligned, K % 16 in {8, 4, 2}, N % 16 != 0 (odd N included), A or B transposed. Prints one table row per
(config, case) and writes them as JSON lines (row by row, so an interrupted run keeps what it measured).

    nice -n 15 python benchmarks/kernel_unaligned.py --out results/kernel-facts/unaligned_after.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gpperf_torch.cli.inspect import inspect_config  # noqa: E402

CONFIGS = (
    "128x128x64_g8_s1_w4_st3",
    "128x64x32_g8_s1_w4_st3",
    "64x128x32_g8_s1_w4_st3",
    "64x64x32_g8_s1_w4_st2",
    "128x128x32_g8_s1_w8_st2",
)
# (name, m, n, k, a_trans, b_trans): B transposed is nn.Linear's layout.
CASES = (
    ("aligned nt", 4096, 4096, 4096, False, True),
    ("aligned nn", 4096, 4096, 4096, False, False),
    ("K%16=8 nt", 4096, 4096, 4104, False, True),
    ("K%16=4 nt", 4096, 4096, 4100, False, True),
    ("K%16=2 nt", 4096, 4096, 4098, False, True),
    ("K%16=8 nn", 4096, 4096, 4104, False, False),
    ("K%16=4 nn", 4096, 4096, 4100, False, False),
    ("N%16=8 nt", 4096, 4104, 4096, False, True),
    ("N odd nt", 4096, 4097, 4096, False, True),
    ("N%16=8 nn", 4096, 4104, 4096, False, False),
    ("N odd nn", 4096, 4097, 4096, False, False),
    ("A^T K%16=8 tn", 4096, 4096, 4104, True, False),
    ("A^T M%16=8 tn", 4104, 4096, 4096, True, False),
    ("A^T B^T K%16=4 tt", 4096, 4096, 4100, True, True),
)


def _short(loads: dict[str, int]) -> str:
    """The A/B tile loads (the kernel's few 4-byte parameter loads left out): ``48 cp.async x 16 B``."""
    return ", ".join(f"{v} {k}" for k, v in loads.items() if k != "ldg x 4 B") or "-"


def compare(before: str, after: str, template: str) -> str:
    """A markdown table of before / after / Inductor's template per (config, case), and the worst deltas."""

    def load(path: str) -> dict:
        with open(path) as f:
            return {(r["config"], r["case"]): r for r in map(json.loads, f)}

    b, a, t = load(before), load(after), load(template)
    lines = [
        "| config | case | before: regs / spill B / smem KB / loads | after | Inductor's template | regs after - tem |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    worst_regs = worst_spill = -(10**9)
    width_mismatch = []
    for key in t:
        row = [f"{r['registers']} / {r['spill_bytes']} / {r['shared_bytes'] // 1024} / {_short(r['loads'])}"
               for r in (b[key], a[key], t[key])]  # fmt: skip
        d_regs = a[key]["registers"] - t[key]["registers"]
        worst_regs = max(worst_regs, d_regs)
        worst_spill = max(worst_spill, a[key]["spill_bytes"] - t[key]["spill_bytes"])
        widths = [{k for k in r["loads"] if k.startswith("cp.async")} for r in (a[key], t[key])]
        if widths[0] != widths[1]:
            width_mismatch.append(key)
        lines.append(f"| {key[0]} | {key[1]} | {' | '.join(row)} | {d_regs:+d} |")
    lines.append("")
    lines.append(
        f"{len(t)} cases: after - template at most {worst_regs:+d} registers and {worst_spill:+d} B of spill; "
        f"cp.async widths differ in {len(width_mismatch)} {width_mismatch}"
    )
    return "\n".join(lines)


def emit(row: dict, out) -> None:
    """Print one facts row (with its SASS count where it has one) and append it to `out` (JSON lines) at once, so an
    interrupted run keeps what it compiled."""
    sass = f" {row['sass_instructions']:>6}" if "sass_instructions" in row else ""
    print(
        f"{row['config']:<26} {row['case']:<20} {row['registers']:>5} {row['spill_bytes']:>6} "
        f"{row['shared_bytes'] / 1024:>8.0f}{sass}  " + ", ".join(f"{v} {k}" for k, v in row["loads"].items()),
        flush=True,
    )
    if out:
        out.write(json.dumps(row) + "\n")
        out.flush()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="JSON lines to append the rows to")
    ap.add_argument("--gpu", default="h100")
    ap.add_argument("--dtype", default="fp16")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--cases", default=None, help="comma-separated case numbers (default all)")
    ap.add_argument("--compare", nargs=3, metavar=("BEFORE", "AFTER", "TEMPLATE"), help="print the markdown table")
    args = ap.parse_args(argv)
    if args.compare:
        print(compare(*args.compare))
        return 0
    cases = list(CASES) if args.cases is None else [CASES[int(i)] for i in args.cases.split(",")]
    out = open(args.out, "a") if args.out else None  # noqa: SIM115 (closed below; rows flushed one by one)
    print(f"{'config':<26} {'case':<20} {'regs':>5} {'spill':>6} {'smem KB':>8} {'SASS':>6}  global loads")
    for config in args.configs.split(","):
        for name, m, n, k, at, bt in cases:
            info = inspect_config(
                config, gpu=args.gpu, dtype=args.dtype, a_trans=at, b_trans=bt, m=m, n=n, k=k, fresh=True
            )
            loads = info["global_loads"]
            row = {"config": config, "case": name, "m": m, "n": n, "k": k, "a_trans": at, "b_trans": bt}
            row.update({f: info[f] for f in ("registers", "spill_bytes", "shared_bytes", "sass_instructions")})
            row["loads"] = loads
            emit(row, out)
    if out:
        out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
