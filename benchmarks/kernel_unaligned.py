"""Registers, spills, shared memory and global-load width of our kernel on unaligned shapes (issue 27), no GPU.

Cross-compiles (``gpperf-torch inspect --fresh --sass``) a few configs typical of the data on a set of shapes:
aligned, K % 16 in {8, 4, 2}, N % 16 != 0 (odd N included), A or B transposed. Prints one table row per
(config, case) and writes them as JSON lines (row by row, so an interrupted run keeps what it measured).

    nice -n 15 python benchmarks/kernel_unaligned.py --out results/kernel-facts/unaligned_after.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections import Counter

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

# LDGSTS = cp.async, LDG = plain global load; the suffix is the width in bits (none: 32, U16/S16: 16).
_LOAD = re.compile(r"^\s+/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?(LDGSTS|LDG)(\.[A-Z0-9_.]+)?", re.M)


def load_widths(sass: str) -> dict[str, int]:
    """Global loads in the SASS by kind and width in bytes: {"cp.async x 16 B": 48, "ldg x 2 B": 4, ...}."""
    out: Counter = Counter()
    for op, mods in _LOAD.findall(sass):
        parts = (mods or "").split(".")
        bits = 32
        for p in parts:
            if p in ("128", "64"):
                bits = int(p)
            elif p in ("U16", "S16"):
                bits = 16
            elif p in ("U8", "S8"):
                bits = 8
        out[f"{'cp.async' if op == 'LDGSTS' else 'ldg'} x {bits // 8} B"] += 1
    return dict(sorted(out.items()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="JSON lines to append the rows to")
    ap.add_argument("--gpu", default="h100")
    ap.add_argument("--dtype", default="fp16")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--cases", default=None, help="comma-separated case numbers (default all)")
    args = ap.parse_args(argv)
    cases = list(CASES) if args.cases is None else [CASES[int(i)] for i in args.cases.split(",")]
    out = open(args.out, "a") if args.out else None  # noqa: SIM115 (closed below; rows flushed one by one)
    print(f"{'config':<26} {'case':<20} {'regs':>5} {'spill':>6} {'smem KB':>8} {'SASS':>6}  global loads")
    for config in args.configs.split(","):
        for name, m, n, k, at, bt in cases:
            info = inspect_config(
                config, gpu=args.gpu, dtype=args.dtype, a_trans=at, b_trans=bt, m=m, n=n, k=k, with_sass=True
            )
            loads = load_widths(info.pop("sass"))
            row = {"config": config, "case": name, "m": m, "n": n, "k": k, "a_trans": at, "b_trans": bt}
            row.update({f: info[f] for f in ("registers", "spill_bytes", "shared_bytes", "sass_instructions")})
            row["loads"] = loads
            print(
                f"{config:<26} {name:<20} {row['registers']:>5} {row['spill_bytes']:>6} "
                f"{row['shared_bytes'] / 1024:>8.0f} {row['sass_instructions']:>6}  "
                + ", ".join(f"{v} {k}" for k, v in loads.items()),
                flush=True,
            )
            if out:
                out.write(json.dumps(row) + "\n")
                out.flush()
    if out:
        out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
