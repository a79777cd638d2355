"""Build the kernel facts table by cross-compiling candidates on the CPU (no GPU): one resumable command.

    nice -n 15 python -m gpperf_torch.kernels.build_facts --jobs 2 --budget-cpu-min 90

Each compile's facts are appended to a cache file (JSON lines) as it finishes, so an interrupted build loses
nothing and a rerun compiles only what is missing; the table (kernels/facts_table.json) is then written from
the cache. Work is ordered by priority (see `plan`) and stops at the CPU budget, so a cut keeps the most useful
entries. What is compiled and why is in docs/kernel_facts.md.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import os
import resource
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

from . import facts as F
from .configs import TileConfig, candidate_space

logger = logging.getLogger(__name__)

DEFAULT_CACHE = Path("build") / "kernel_facts_cache.jsonl"
LAYOUTS = ((False, False), (False, True), (True, False), (True, True))
MODEL_GPUS = {"h100": 90, "a100": 80}  # shipped models and the target their GPU compiles for
# Tier 5's classes (kernels.facts.align_class names), most frequent in real-model GEMMs first: N or K of an odd
# width divisible by 8 (1000, 1960, 3000, 4104, 8200: vision models, vocab heads), M of batch x sequence, odd N
# (vocabularies such as 50257), K % BLOCK_K != 0, K % 16 in {4, 2}, decode at batch 1, and both M and N.
UNALIGNED_CLASSES = (
    "m16n8keven",
    "m16n16k8",
    "mxn16keven",
    "m16nxkeven",
    "a",
    "m16n16k4",
    "m16n16k2",
    "m1n16keven",
    "mxnxkeven",
)


def model_candidates(gpu: str) -> list[TileConfig]:
    """The configs a shipped model can choose (its JSON's `candidates`, without torch.matmul)."""
    path = Path(__file__).resolve().parent.parent / "gpperf_torch" / "data" / f"{gpu}.json"
    if not path.is_file():  # installed layout: kernels/ is gpperf_torch/kernels
        path = Path(__file__).resolve().parent.parent / "data" / f"{gpu}.json"
    with open(path) as f:
        keys = json.load(f)["candidates"]
    return [TileConfig.from_key(k) for k in keys if k != "torch"]


def plan() -> list[tuple[str, str, TileConfig]]:
    """(tier, entry key, config) in build order: a build cut short by its budget keeps the most used entries.
    Order: per layout (nt, then nn) and target (sm_90, then sm_80), tier 1 then tier 5's first two classes;
    tier 1 in tn and tt; the rest of tier 5; tiers 2, 3, 4.

    1. every config a shipped model can choose, on its GPU's target, fp16/bf16, all four layouts, aligned
       sizes with K % BLOCK_K == 0 (the binary most launches run);
    2. the same configs for fp32 with TF32 and IEEE fp32, A row-major (B either way: nn.Linear is "nt");
    3. the rest of the candidate space (tuning, GPUs without a model such as the H200) on both targets,
       fp16/bf16, A row-major;
    4. fp32 and TF32 with A transposed;
    5. the shipped models' configs, fp16/bf16, A row-major, in the alignment classes real models meet besides
       `even` (UNALIGNED_CLASSES, class by class, nn.Linear's layout nt before nn): N or K divisible by 8 and
       not 16, M not 16-divisible (batch x sequence), odd N (vocabularies), K not a multiple of BLOCK_K (the
       masked main loop), K % 16 in {4, 2}, M = 1 (decode at batch 1: a constant to Triton), M and N both.
    """
    out: list[tuple[str, str, TileConfig]] = []
    seen: set[tuple[str, str]] = set()

    def add(tier: str, arch: int, dt: str, layouts, cfgs, align: str = "even") -> None:
        for at, bt in layouts:
            key = F.entry_key(arch, dt, at, bt, align)
            for cfg in cfgs:
                if (key, cfg.key) not in seen:
                    seen.add((key, cfg.key))
                    out.append((tier, key, cfg))

    models = {gpu: model_candidates(gpu) for gpu in MODEL_GPUS}
    nn, nt, tn, tt = LAYOUTS

    # nn.Linear's layout (nt) first, H100 before A100, each target's aligned binary followed by the two most
    # common unaligned classes; then plain matmul (nn), then the transposed-A layouts.
    def tier1(gpu: str, layouts) -> None:
        add("1", MODEL_GPUS[gpu], "f16", layouts, models[gpu])

    def tier5(gpu: str, aligns, layouts) -> None:
        for align in aligns:
            # class "a" (K % 16 == 0, K % BLOCK_K != 0) cannot hold a BLOCK_K of 16
            cfgs = [c for c in models[gpu] if align != "a" or c.block_k > 16]
            add("5", MODEL_GPUS[gpu], "f16", layouts, cfgs, align)

    for layout in (nt, nn):
        for gpu in MODEL_GPUS:
            tier1(gpu, (layout,))
            tier5(gpu, UNALIGNED_CLASSES[:2], (layout,))
    for gpu in MODEL_GPUS:
        tier1(gpu, (tn, tt))
    for layout in (nt, nn):
        for gpu in MODEL_GPUS:
            tier5(gpu, UNALIGNED_CLASSES[2:], (layout,))
    for tier, layouts in (("2", LAYOUTS[:2]), ("3", None), ("4", LAYOUTS[2:])):
        if layouts is None:
            for arch in MODEL_GPUS.values():
                add("3", arch, "f16", LAYOUTS[:2], candidate_space())
            continue
        for dt in ("tf32", "f32"):
            for gpu, arch in MODEL_GPUS.items():
                add(tier, arch, dt, layouts, models[gpu])
    return out


def _worker_init(niceness: int) -> None:
    os.environ.pop("TRITON_INTERPRET", None)
    if niceness:
        os.nice(niceness)


def _cpu_s() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _compile(key: str, cfg_key: str) -> dict:
    from .crosscompile import facts, job_class

    cfg = TileConfig.from_key(cfg_key)
    c0, t0 = _cpu_s(), time.perf_counter()
    try:
        row = facts(cfg, job_class(cfg, key))
    except Exception as e:  # kept as a row: the table records the config as not compilable for this class
        row = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
    return {
        "key": key,
        "cfg": cfg_key,
        **row,
        "cpu_s": round(_cpu_s() - c0, 3),
        "wall_s": round(time.perf_counter() - t0, 3),
    }


def read_cache(path: Path, *, triton: str, kernel_hash: str) -> dict[tuple[str, str], dict]:
    """Cached rows for this Triton and kernel (others are ignored); a torn last line is skipped."""
    rows: dict[tuple[str, str], dict] = {}
    if not path.is_file():
        return rows
    with open(path) as f:
        for line in f:
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            if r.get("triton") == triton and r.get("kernel_hash") == kernel_hash:
                rows[(r["key"], r["cfg"])] = r
    return rows


def write_table(rows: dict[tuple[str, str], dict], out: Path, *, triton: str, kernel_hash: str) -> dict:
    entries: dict[str, dict[str, list]] = {}
    failed: dict[str, dict[str, str]] = {}
    for (key, cfg), r in sorted(rows.items()):
        if "error" in r:
            failed.setdefault(key, {})[cfg] = r["error"]
        else:
            entries.setdefault(key, {})[cfg] = [r[f] for f in F.FIELDS]
    data = {
        "format": F.FORMAT,
        "format_version": F.FORMAT_VERSION,
        "triton": triton,
        "kernel_hash": kernel_hash,
        "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": "nice -n 15 python -m gpperf_torch.kernels.build_facts --jobs 2",
        "fields": list(F.FIELDS),
        "notes": (
            "registers and spill bytes (spill stores) per thread from ptxas -v; shared_bytes = the compiled "
            "kernel's metadata.shared; mma from the SASS opcodes (HGMMA = wgmma, HMMA = mma.sync, else fma); "
            "sass_instructions = SASS instructions without the NOP padding. f16 entries also hold bf16 (same "
            "resources, measured). Entry key = target/dtype/layout/alignment, alignment 'even' = M, N, K "
            "divisible by 16 and K by BLOCK_K."
        ),
        "build": {
            "compiles": len(rows),
            "cpu_s": round(sum(r.get("cpu_s", 0.0) for r in rows.values()), 1),
        },
        "entries": entries,
        "failed": failed,
    }
    tmp = out.with_suffix(".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, separators=(",", ":"), sort_keys=False)
        f.write("\n")
    os.replace(tmp, out)
    return data


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gpperf_torch.kernels.build_facts", description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2, help="compile processes (default 2)")
    ap.add_argument("--nice", type=int, default=15, help="niceness of the compile processes (default 15)")
    # The whole plan took 60 CPU-min on the 2-core dev box (cached compiles count): the default covers it.
    ap.add_argument("--budget-cpu-min", type=float, default=90.0, help="stop starting compiles past this CPU time")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"resumable cache (default {DEFAULT_CACHE})")
    ap.add_argument("--out", type=Path, default=F.TABLE_PATH, help="table to write")
    ap.add_argument("--tiers", default="12345", help="which tiers of the plan to build (default all: 12345)")
    ap.add_argument("--limit", type=int, default=None, help="compile at most this many (0: write the table only)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from importlib.metadata import version

    triton, kernel_hash = version("triton"), F.kernel_source_hash()
    args.cache.parent.mkdir(parents=True, exist_ok=True)
    rows = read_cache(args.cache, triton=triton, kernel_hash=kernel_hash)
    todo = [(k, c) for t, k, c in plan() if t in args.tiers and (k, c.key) not in rows]
    if args.limit is not None:
        todo = todo[: args.limit]
    spent = sum(r.get("cpu_s", 0.0) for r in rows.values())
    budget = args.budget_cpu_min * 60
    logger.info("%d cached, %d to compile, %.1f of %.0f CPU-min spent", len(rows), len(todo), spent / 60, budget / 60)
    it = iter(todo)
    with (
        ProcessPoolExecutor(args.jobs, initializer=_worker_init, initargs=(args.nice,)) as ex,
        open(args.cache, "a") as cache,
    ):
        running = set()
        while True:
            while len(running) < 2 * args.jobs and spent < budget:
                nxt = next(it, None)
                if nxt is None:
                    break
                running.add(ex.submit(_compile, nxt[0], nxt[1].key))
            if not running:
                break
            done, running = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                r = fut.result()
                r["triton"], r["kernel_hash"] = triton, kernel_hash
                cache.write(json.dumps(r) + "\n")
                cache.flush()
                rows[(r["key"], r["cfg"])] = r
                spent += r["cpu_s"]
                if len(rows) % 100 == 0:
                    logger.info("%d compiled, %.1f CPU-min", len(rows), spent / 60)
    if spent >= budget:
        logger.warning(
            "CPU budget of %.0f min reached: the table has %d of the planned entries", budget / 60, len(rows)
        )
    data = write_table(rows, args.out, triton=triton, kernel_hash=kernel_hash)
    logger.info(
        "wrote %s: %d entries in %d classes, %d failed compiles",
        args.out,
        len(rows),
        len(data["entries"]),
        sum(len(v) for v in data["failed"].values()),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
