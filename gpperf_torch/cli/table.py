"""`gpperf-torch table show|merge PATH...`: print and combine verified tables (table.py).

show   every entry of the tables (default: every verified table in the cache directory), one line each:
       GPU, what timed it (the GPU, or the Triton interpreter's CPU wall clock), library versions, the M bucket,
       N, K, batch, dtype, layout, the choice, its gain over cuBLAS, the
       candidates' median times; --json prints the records.
merge  the tables' entries into --out (itself included when it exists), per entry the newer measurement kept:
       tables measured on several hosts of one GPU kind become one that `GPPERF_TABLE` can ship read-only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..paths import cache_dir
from ..selection import table


def _read(paths: list[Path]) -> dict[tuple, table.Entry]:
    """Every entry of `paths`, merged (the newer wins); ValueError naming a file that is not a table."""
    out: dict[tuple, table.Entry] = {}
    for p in paths:
        try:
            entries, bad, first = table.read_file(p)
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"{p}: {e}") from None
        if bad:
            print(f"gpperf-torch table: {p}: ignored {bad} malformed entries (first: {first})", file=sys.stderr)
        for k, e in entries.items():
            out[k] = table.newer(out.get(k), e)
    return out


def _cmd_show(args: argparse.Namespace) -> int:
    paths = [Path(p) for p in args.paths] or sorted(cache_dir().glob("verified-*.json"))
    if not paths:
        print(f"gpperf-torch table: no verified tables in {cache_dir()}; pass PATH...", file=sys.stderr)
        return 2
    entries = _read(paths)
    ordered = sorted(entries.items(), key=lambda kv: table.sort_key(kv[0]))
    if args.json:
        recs = [{**dict(zip(table.KEY_FIELDS, k, strict=True)), **e.as_dict(),
                 "timed_by": "interpreter" if table.is_interpreted(k[0]) else "gpu"} for k, e in ordered]  # fmt: skip
        json.dump(recs, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    print(f"{len(entries)} entries in {', '.join(map(str, paths))}")
    print(f"{'gpu':24s} {'timed by':11s} {'torch/triton':18s} {'M':>11s} {'N':>6s} {'K':>6s} {'b':>3s} {'dtype':8s}"
          f" {'lay':3s} {'objective':13s} {'choice':26s} {'gain':>6s} {'noise':>6s} measured (ms)")  # fmt: skip
    for k, e in ordered:
        f = dict(zip(table.KEY_FIELDS, k, strict=True))
        mr = f"{f['m_lo']}" if f["m_lo"] == f["m_hi"] else f"{f['m_lo']}-{f['m_hi']}"
        mr += "" if not f["m16"] else "*"
        times = " ".join(f"{c}={t:.4g}" for c, t in sorted(e.times_ms.items(), key=lambda ct: ct[1]))
        interp = table.is_interpreted(f["gpu"])
        gpu = f["gpu"].removesuffix(table.INTERPRETER_MARK)[:24]
        versions = f["torch"].split("+")[0] + "/" + f["triton"]
        print(f"{gpu:24s} {'interpreter' if interp else 'gpu':11s} {versions:18s} {mr:>11s} {f['n']:6d}"
              f" {f['k']:6d} {f['batch']:3d} {f['dtype']:8s} {'nt'[f['a_trans']] + 'nt'[f['b_trans']]:3s}"
              f" {f['objective']:13s} {e.choice:26s} {e.gain:6.3f} {e.noise:6.3f} {times}")  # fmt: skip
    print("(M* : M a multiple of 16; gain: cuBLAS's measured time over the choice's)")
    if any(table.is_interpreted(k[0]) for k in entries):
        print("(timed by interpreter: the Triton interpreter's CPU wall clock, not GPU times; never served to a GPU)")
    return 0


def _cmd_merge(args: argparse.Namespace) -> int:
    out = Path(args.out)
    paths = [Path(p) for p in args.paths]
    if out.is_dir():
        raise ValueError(f"{out}: --out is a directory; give the table file to write")
    entries = _read(paths)
    n = table.write_file(out, entries, merge=out.exists())
    print(f"wrote {out}: {n} entries ({len(entries)} from {len(paths)} table(s))")
    return 0


def add_cli(subparsers) -> None:
    p = subparsers.add_parser("table", help="show or merge verified tables (measured choices)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = p.add_subparsers(dest="table_command", required=True)
    s = sub.add_parser("show", help="print the entries of verified tables")
    s.add_argument("paths", nargs="*", help="table files (default: every verified table in the cache directory)")
    s.add_argument("--json", action="store_true", help="print the entries as JSON records")
    s.set_defaults(func=_cmd_show)
    m = sub.add_parser("merge", help="combine verified tables into one (per entry, the newer measurement wins)")
    m.add_argument("paths", nargs="+", help="table files to merge")
    m.add_argument("--out", required=True, help="the table file to write (merged with it when it exists)")
    m.set_defaults(func=_cmd_merge)


__all__ = ["add_cli"]
