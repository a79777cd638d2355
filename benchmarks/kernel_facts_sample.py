"""Which launch inputs change the compiled kernel? Cross-compile a sample and compare (no GPU needed).

For each sampled config and target, compile a base class (fp16, A and B row-major, M/N/K divisible by 16,
K % BLOCK_K == 0, no split-K, no bias) and variants that change one input at a time, plus the full cross of
layouts x alignments. Reports, per input, how often registers / shared bytes / SASS count / the code itself
(SASS hash) differ from the base. Used to choose the key of the facts table (docs/kernel_facts.md).

    nice -n 15 python benchmarks/kernel_facts_sample.py --jobs 2 --out results/kernel_facts_sample.jsonl
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gpperf_torch.kernels import TileConfig  # noqa: E402
from gpperf_torch.kernels.crosscompile import CompileClass, facts  # noqa: E402

SAMPLE = [
    "128x128x64_g8_s1_w4_st3",
    "128x128x64_g8_s1_w8_st4",
    "64x64x32_g8_s1_w4_st4",
    "16x64x128_g8_s1_w4_st3",
    "128x256x64_g8_s1_w8_st3",
    "64x128x32_g8_s1_w4_st4",
    "32x32x16_g8_s1_w2_st1",
    "16x32x64_g8_s1_w1_st2",
    "256x128x32_g8_s1_w8_st4",
    "32x64x128_g8_s4_w4_st3",
]


def variants(cfg: TileConfig, arch: int, *, cross: bool) -> list[tuple[str, TileConfig, CompileClass]]:
    base = CompileClass(arch, "float16")
    out = [("base", cfg, base)]
    for dt in ("bfloat16", "float32", "tf32"):
        out.append((f"dtype={dt}", cfg, dataclasses.replace(base, dtype=dt)))
    for g in (1, 4, 16):
        out.append((f"group_m={g}", dataclasses.replace(cfg, group_m=g), base))
    out.append(("bias", cfg, dataclasses.replace(base, bias=True)))
    for s in (2, 4, 16):
        c = dataclasses.replace(cfg, split_k=s)
        out.append((f"split_k={s}", c, dataclasses.replace(base, split=True)))
    if not cross:  # layouts and alignments one at a time
        for name, cls in [
            ("layout=TN", dataclasses.replace(base, a_trans=True)),
            ("layout=NT", dataclasses.replace(base, b_trans=True)),
            ("k=odd", dataclasses.replace(base, k="x")),
            ("n16=False", dataclasses.replace(base, n="x")),
        ]:
            out.append((name, cfg, cls))
        return out
    for at in (False, True):
        for bt in (False, True):
            for m16 in (True, False):
                for n16 in (True, False):
                    for k in ("even", "k16", "odd"):
                        if k == "k16" and cfg.block_k == 16:
                            continue
                        kc = {"even": "even", "k16": "16", "odd": "x"}[k]
                        cls = dataclasses.replace(
                            base, a_trans=at, b_trans=bt, m="16" if m16 else "x", n="16" if n16 else "x", k=kc
                        )
                        if cls == base:
                            continue
                        name = f"layout={'T' if at else 'N'}{'T' if bt else 'N'} m16={m16} n16={n16} k={k}"
                        out.append((name, cfg, cls))
    return out


def _one(job):
    name, base, cfg, cls = job
    t = time.perf_counter()
    f = facts(cfg, cls)
    return {
        "variant": name,
        "base": base,
        "cfg": cfg.key,
        "cls": dataclasses.asdict(cls),
        **f,
        "compile_s": round(time.perf_counter() - t, 3),
    }


FIELDS = ("registers", "spill_bytes", "shared_bytes", "sass_instructions", "mma", "sass_sha")


def summarize(path: str) -> str:
    """Markdown: per varied input, in how many (config, target) pairs each fact differs from the base."""
    with open(path) as f:
        rows = [json.loads(line) for line in f]
    base = {(r["base"], r["cls"]["arch"]): r for r in rows if r["variant"] == "base"}
    counts: dict[str, dict[str, int]] = {}
    for r in rows:
        b = base.get((r["base"], r["cls"]["arch"]))
        if b is None or r["variant"] == "base":
            continue
        c = counts.setdefault(r["variant"], dict.fromkeys(("n", *FIELDS), 0))
        c["n"] += 1
        for fld in FIELDS:
            c[fld] += r[fld] != b[fld]
    lines = [
        "| input changed (vs fp16, NN, M/N/K % 16 == 0, K % BLOCK_K == 0) | pairs | registers | spill | shared |"
        " SASS count | MMA | code |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for v, c in counts.items():
        lines.append(f"| {v} | {c['n']} | " + " | ".join(str(c[f]) for f in FIELDS) + " |")
    # split-K values against each other (SPLIT_K is a constexpr: is the value itself visible in the code?)
    by = {}
    for r in rows:
        if r["variant"].startswith("split_k="):
            by.setdefault((r["base"], r["cls"]["arch"]), []).append(r)
    same = sum(len({tuple(x[f] for f in FIELDS[:4]) for x in v}) == 1 for v in by.values())
    lines.append(f"\nsplit_k 2, 4, 16: same registers/spill/shared/SASS count in {same} of {len(by)} pairs")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", default="results/kernel_facts_sample.jsonl")
    ap.add_argument("--summary", action="store_true", help="only print the summary of --out")
    args = ap.parse_args()
    if args.summary:
        print(summarize(args.out))
        return 0
    done = set()
    if os.path.exists(args.out):
        with open(args.out) as f:
            done = {(r["variant"], r["base"], r["cls"]["arch"]) for r in map(json.loads, f)}
    jobs = []
    for i, key in enumerate(SAMPLE):
        cfg = TileConfig.from_key(key)
        cfg1 = TileConfig(**{**cfg.as_dict(), "split_k": 1})
        for arch in (80, 90):
            for name, c, cls in variants(cfg1, arch, cross=i < 5):
                if (name, cfg1.key, arch) not in done:
                    jobs.append((name, cfg1.key, c, cls))
    print(f"{len(jobs)} compiles to run", flush=True)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with ProcessPoolExecutor(args.jobs) as ex, open(args.out, "a") as f:
        for r in ex.map(_one, jobs, chunksize=4):
            f.write(json.dumps(r) + "\n")
            f.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
