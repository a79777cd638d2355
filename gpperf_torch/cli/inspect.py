"""`gpperf-torch inspect CONFIG`: what the compiler says about one tile config on a GPU, without the GPU.

Reads the shipped kernel facts table when it has the binary (same Triton, same kernel, same class), otherwise
cross-compiles it on the spot (a second or two). ``--sass`` always compiles, to print the disassembly.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..kernels import TileConfig, facts
from ..measure.device import known_device

DTYPES = {"fp16": "float16", "float16": "float16", "bf16": "bfloat16", "bfloat16": "bfloat16"}
DTYPES.update({"fp32": "float32", "float32": "float32"})


def inspect_config(
    config: str,
    *,
    gpu: str,
    dtype: str = "fp16",
    tf32: bool = False,
    a_trans: bool = False,
    b_trans: bool = False,
    m: int = 4096,
    n: int = 4096,
    k: int = 4096,
    with_sass: bool = False,
    fresh: bool = False,
) -> dict[str, Any]:
    """The facts of `config` for one launch class on `gpu`, and whether it fits the device."""
    cfg = TileConfig.from_key(config)
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}: use one of fp16, bf16, fp32")
    if tf32 and DTYPES[dtype] != "float32":
        raise ValueError("--tf32 applies to fp32 only")
    for name, v in (("m", m), ("n", n), ("k", k)):
        if v < 1:
            raise ValueError(f"--{name} must be a positive size, got {v}")
    dev = known_device(gpu)
    arch = dev.capability[0] * 10 + dev.capability[1]
    dt = DTYPES[dtype]
    run = facts.launched_config(cfg, m, n, k)
    found = None
    if not (with_sass or fresh):
        found = facts.lookup(cfg, arch=arch, dtype=dt, tf32=tf32, a_trans=a_trans, b_trans=b_trans, m=m, n=n, k=k)
    source = "table"
    if found is None:
        from ..kernels.crosscompile import CompileClass, facts_many

        cls = CompileClass.of_launch(
            arch, "tf32" if tf32 else dt, run, m, n, k, a_trans=a_trans, b_trans=b_trans, split=run.split_k > 1
        )
        found = facts_many([(run, cls)], with_sass=with_sass)[0]
        source = f"compiled (triton {found['triton']})"
    blocks = facts.blocks_per_sm(found, run, arch)
    out: dict[str, Any] = {
        "config": cfg.key,
        "launched_config": run.key,
        "gpu": dev.short_name,
        "target": f"sm_{arch}",
        "dtype": dt + ("+tf32" if tf32 else ""),
        "layout": ("t" if a_trans else "n") + ("t" if b_trans else "n"),
        "shape": [m, n, k],
        **{f: found[f] for f in facts.FIELDS},
        "blocks_per_sm": blocks,
        "max_shared_memory": dev.max_shared_memory,
        "fits": found["shared_bytes"] <= dev.max_shared_memory and found["spill_bytes"] == 0 and blocks > 0,
        "source": source,
    }
    if "global_loads" in found:  # a fresh compile: the global loads by kind and width (cp.async x 16 B, ...)
        out["global_loads"] = found["global_loads"]
    if with_sass:
        out["sass"] = found["sass"]
    return out


def _print(info: dict[str, Any]) -> None:
    why = []
    if info["shared_bytes"] > info["max_shared_memory"]:
        why.append(f"needs {info['shared_bytes']} B shared memory, the device has {info['max_shared_memory']} B")
    if info["spill_bytes"]:
        why.append(f"spills {info['spill_bytes']} B per thread to local memory")
    print(
        f"{info['config']} on {info['gpu']} ({info['target']}), {info['dtype']}, layout {info['layout']}, "
        f"M,N,K = {','.join(map(str, info['shape']))}"
    )
    if info["launched_config"] != info["config"]:
        print(f"  launches as         {info['launched_config']} (split-K capped by K)")
    for f in ("registers", "spill_bytes", "shared_bytes", "mma", "sass_instructions", "blocks_per_sm"):
        print(f"  {f:<20} {info[f]}")
    if "global_loads" in info:
        loads = ", ".join(f"{v} {k}" for k, v in info["global_loads"].items())
        print(f"  {'global_loads':<20} {loads or 'none'}")
    print(f"  {'fits':<20} {'yes' if info['fits'] else 'no: ' + '; '.join(why or ['no block fits on an SM'])}")
    print(f"  {'source':<20} {info['source']}")
    if "sass" in info:
        print(info["sass"])


def add_cli(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "inspect",
        help="registers, spills, shared memory and MMA family of one config, from the compiler (no GPU needed)",
    )
    p.add_argument("config", help="tile config key, e.g. 128x128x64_g8_s1_w4_st3")
    p.add_argument("--gpu", required=True, help="h100, a100, h200 (or another known GPU)")
    p.add_argument("--dtype", default="fp16", help="fp16 (default), bf16, fp32")
    p.add_argument("--tf32", action="store_true", help="fp32 with TF32 tensor cores allowed")
    p.add_argument("--a-trans", action="store_true", help="A is a transposed (column-major) view")
    p.add_argument("--b-trans", action="store_true", help="B is a transposed (column-major) view")
    for d in ("m", "n", "k"):
        p.add_argument(f"--{d}", type=int, default=4096, help=f"{d.upper()} (its divisibility selects the binary)")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.add_argument("--sass", action="store_true", help="also print the disassembly (compiles the kernel)")
    p.add_argument("--fresh", action="store_true", help="compile even when the table has the entry")
    p.set_defaults(func=run_cli)


def run_cli(args: argparse.Namespace) -> int:
    try:
        info = inspect_config(
            args.config,
            gpu=args.gpu,
            dtype=args.dtype,
            tf32=args.tf32,
            a_trans=args.a_trans,
            b_trans=args.b_trans,
            m=args.m,
            n=args.n,
            k=args.k,
            with_sass=args.sass,
            fresh=args.fresh,
        )
    except ValueError as e:
        print(f"gpperf-torch inspect: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(info, indent=None if args.sass else 2))
    else:
        _print(info)
    return 0
