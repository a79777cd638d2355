"""GPU check step `verify`: the measured dispatch on realistic models' GEMMs.

Models (GPU sizes; the dry run shrinks them and runs through the interpreter):
  decoder   the example's GPT-2-width decoder (2 layers, batch 4, fp16): prefill of 128 tokens + 8 decode steps
  vit_mlp   a ViT-B/16 block's GEMMs (qkv 768->2304, proj, MLP 768->3072->768) on 8 images x 197 tokens, fp16
  timm_odd  odd TIMM-like layers (widths 96, 200, 1000, 1280; M of 3136, 25088, 64), fp16
For each: end-to-end time of plain PyTorch, patched `predict`, and patched `verify` after `gp.warmup` (whose
first-sight cost is reported: compile seconds, timed milliseconds, candidates, per shape); the per-shape report.
Then the noise check: a fresh process re-times every verified Triton choice against cuBLAS (interleaved, 4x the
budget) and reports the share actually slower (and slower by more than 3%).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import REPO, Check, log

NOISE_BUDGET_MS = 20.0  # 4x the first sight's default budget: the re-timing is the referee
PER_SHAPE_KEYS = ("m", "n", "k", "layout", "config", "gain", "noise", "times_ms", "compile_s", "bench_ms")


def _models(cuda: bool):
    import torch
    from torch import nn

    from .decode import _example

    ex = _example()
    if cuda:
        dcfg = ex.DecoderConfig(vocab=50257, d_model=768, n_layers=2, n_heads=12, d_ff=3072, max_seq=1024)
        batch, prompt_len, steps = 4, 128, 8
        vit_tokens, vit_d, vit_ff = 8 * 197, 768, 3072
        odd = [(3136, 96, 384), (25088, 96, 200), (64, 1280, 1000), (3136, 200, 96)]
    else:
        dcfg = ex.DecoderConfig(vocab=96, d_model=32, n_layers=1, n_heads=2, d_ff=64, max_seq=64)
        batch, prompt_len, steps = 1, 4, 1
        vit_tokens, vit_d, vit_ff = 20, 24, 40
        odd = [(20, 12, 37), (3, 40, 25)]

    class ViTBlockGemms(nn.Module):
        def __init__(self, d: int, ff: int):
            super().__init__()
            self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
            self.fc1, self.fc2 = nn.Linear(d, ff), nn.Linear(ff, d)

        def forward(self, x):
            q = self.qkv(x)[..., : x.shape[-1]]
            x = x + self.proj(q)
            return x + self.fc2(torch.nn.functional.gelu(self.fc1(x)))

    class OddLayers(nn.Module):
        def __init__(self, shapes):
            super().__init__()
            self.shapes = shapes
            self.layers = nn.ModuleList(nn.Linear(k, n) for _, k, n in shapes)

        def forward(self, xs):
            return [layer(x) for layer, x in zip(self.layers, xs, strict=True)]

    dtype = torch.float16 if cuda else torch.float32
    dev = "cuda" if cuda else "cpu"
    torch.manual_seed(0)
    dec = ex.Decoder(dcfg).to(device=dev, dtype=dtype).eval()
    prompt = torch.randint(0, dcfg.vocab, (batch, prompt_len), device=dev)
    with torch.inference_mode():
        _, cache = ex.prefill(dec, prompt)
    first = prompt[:, -1:]

    def run_decoder():
        last, c = ex.prefill(dec, prompt)
        return ex.decode(dec, last.argmax(-1), c, steps)[0]

    vit = ViTBlockGemms(vit_d, vit_ff).to(device=dev, dtype=dtype).eval()
    x_vit = torch.randn(vit_tokens, vit_d, device=dev, dtype=dtype)
    oddm = OddLayers(odd).to(device=dev, dtype=dtype).eval()
    xs = [torch.randn(m, k, device=dev, dtype=dtype) for m, k, _ in odd]
    return [
        ("decoder", dec, [(prompt,), (first, cache)], run_decoder,
         f"{dcfg.n_layers} layers d_model {dcfg.d_model}, batch {batch}, prefill {prompt_len} + {steps} decode steps"),
        ("vit_mlp", vit, [(x_vit,)], lambda: vit(x_vit), f"{vit_tokens} tokens, d {vit_d}, mlp {vit_ff}"),
        ("timm_odd", oddm, [(xs,)], lambda: oddm(xs), ", ".join(f"{m}x{k}->{n}" for m, k, n in odd)),
    ]  # fmt: skip


def _timed(run, sync, reps: int) -> float:
    """Median seconds of `run()` after one warm-up call."""
    import torch

    with torch.inference_mode():
        run()
        sync()
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            run()
            sync()
            ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def step_verify(c: Check) -> dict:
    import torch

    import gpperf_torch as gp
    from gpperf_torch.selection import selector

    cuda = torch.cuda.is_available() and not c.dry
    t_end = time.monotonic() + c.budget("verify")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    reps = 20 if cuda else 1
    tmp = Path(tempfile.mkdtemp(prefix="gpperf-verify-check-"))
    table_path = tmp / "verified.json"
    os.environ.pop("GPPERF_TABLE", None)
    selector.reset()  # the shipped model for this GPU, a fresh table
    out: dict = {"interpreter": not cuda, "models": [], "table": str(table_path)}
    for name, model, inputs, run, desc in _models(cuda):
        if time.monotonic() > t_end:
            out["models"].append({"model": name, "skipped": "verify budget spent"})
            continue
        r: dict = {"model": name, "what": desc}
        try:
            r["plain_ms"] = _timed(run, sync, reps) * 1e3
            gp.patch(model)
            with gp.mode("predict"):
                r["predict_ms"] = _timed(run, sync, reps) * 1e3
            t0 = time.perf_counter()
            shapes, guards = [], []
            for inp in inputs:  # the guard (on by default on a GPU) may send a model's GEMMs back to cuBLAS
                rep = gp.warmup(model, inp, save=table_path, progress=False)
                shapes += rep
                guards.append(rep.guard)
            sync()
            r["warmup_s"] = time.perf_counter() - t0
            with gp.mode("verify"):
                r["verify_ms"] = _timed(run, sync, reps) * 1e3
            measured = [s for s in shapes if "bench_ms" in s]  # measured now (the guard may have reverted it)
            r.update(
                guard=guards,
                reverted_by_guard=sum(s["source"] == "guard" for s in shapes),
                shapes=len(shapes),
                measured=len(measured),
                kept_triton=sum(s["backend"] == "triton" for s in shapes),
                compiles=sum(s.get("compiles", 0) for s in measured),
                compile_s=sum(s.get("compile_s", 0.0) for s in measured),
                bench_ms_per_shape=statistics.mean([s.get("bench_ms", 0.0) for s in measured]) if measured else 0.0,
                candidates_per_shape=statistics.mean([len(s["times_ms"]) for s in measured]) if measured else 0.0,
                per_shape=[{k: s.get(k) for k in PER_SHAPE_KEYS} for s in shapes],
            )
            log(f"verify {name}: plain {r['plain_ms']:.3f} ms, predict {r['predict_ms']:.3f} ms, verify "
                f"{r['verify_ms']:.3f} ms; warmup {r['warmup_s']:.1f} s for {len(shapes)} GEMMs "
                f"({r['compiles']} compiles, {r['compile_s']:.1f} s)")  # fmt: skip
        except Exception as e:  # one model failing is a finding, not the end of the step
            r["error"] = f"{type(e).__name__}: {e}"[:300]
        finally:
            gp.unpatch(model)
        out["models"].append(r)
    out["stats"] = gp.verify_stats()
    left = t_end - time.monotonic()
    if table_path.exists() and left > 5:
        out["noise_check"] = _noise_check_subprocess(table_path, timeout=left, dry=not cuda)
    else:
        out["noise_check"] = {"skipped": "no verified table" if not table_path.exists() else "verify budget spent"}
    return out


def _noise_check_subprocess(table_path: Path, timeout: float, dry: bool) -> dict:
    code = ("import sys, json; sys.path.insert(0, sys.argv[1]); from gpucheck.verify import noise_check; "
            "print('NOISE ' + json.dumps(noise_check(sys.argv[2])))")  # fmt: skip
    env = dict(os.environ, GPPERF_DISK_CACHE="0")
    try:
        proc = subprocess.run([sys.executable, "-c", code, str(REPO / "benchmarks"), str(table_path)], env=env,
                              capture_output=True, text=True, timeout=timeout, cwd=REPO)  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("NOISE ")]
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr or proc.stdout)[-600:]}
    return json.loads(lines[-1][6:])


def noise_check(table_path: str) -> dict:
    """In this (fresh) process: re-time every verified Triton choice of the table against cuBLAS on fresh operands
    of its measured shape; the share whose median is slower than cuBLAS's (and slower by more than 3%)."""
    import torch

    from gpperf_torch import kernels
    from gpperf_torch.kernels import TileConfig
    from gpperf_torch.measure import timing as measure
    from gpperf_torch.nn import GemmShape
    from gpperf_torch.selection import table
    from gpperf_torch.warmup import operands

    entries, _, _ = table.read_file(Path(table_path))
    cuda = torch.cuda.is_available() and not kernels.interpreting()
    dev = "cuda" if cuda else "cpu"
    clock = measure.CudaClock() if cuda else measure.WallClock()
    rows = []
    for key, e in entries.items():
        f = dict(zip(table.KEY_FIELDS, key, strict=True))
        if e.choice == table.TORCH or f["objective"] != "time":  # energy choices are not time claims
            continue
        m, n, k = e.m, f["n"], f["k"]
        a, b = operands(GemmShape(m, n, k, f["dtype"], f["a_trans"], f["b_trans"], f["batch"]), dev)
        out = torch.empty((*a.shape[:-1], n), device=dev, dtype=a.dtype)
        cfg = TileConfig.from_key(e.choice)

        def tri(a=a, b=b, out=out, cfg=cfg):
            kernels.launch(a, b, out, cfg)

        def cub(a=a, b=b, out=out):
            torch.matmul(a, b, out=out)

        tri(), cub()
        res = measure.interleaved([cub, tri], clock=clock, budget_ms=NOISE_BUDGET_MS, min_rounds=10 if cuda else 3,
                                  max_rounds=200 if cuda else 3)  # fmt: skip
        t_c, t_t = statistics.median(res.samples[0]), statistics.median(res.samples[1])
        rows.append({"m": m, "n": n, "k": k, "config": e.choice, "verified_gain": e.gain, "retimed_gain": t_c / t_t})
    gains = [r["retimed_gain"] for r in rows]
    return {
        "triton_choices": len(rows),
        "share_slower": sum(g < 1.0 for g in gains) / len(gains) if gains else 0.0,
        "share_slower_3pct": sum(g < 0.97 for g in gains) / len(gains) if gains else 0.0,
        "min_retimed_gain": min(gains) if gains else None,
        "geomean_retimed_gain": float(statistics.geometric_mean(gains)) if gains else None,
        "rows": rows,
    }


def verify_table(res: dict) -> list[str]:
    """The verify rows as markdown (summary.md)."""
    models = res.get("models") or []
    if not models:
        return []
    lines = [
        "",
        "verify: plain PyTorch vs patched predict vs patched verify (after gp.warmup)"
        + (" -- INTERPRETER NUMBERS (not GPU times)" if res.get("interpreter") else ""),
        "",
        "| model | plain ms | predict ms | verify ms | verify / plain | GEMMs | kept Triton | warmup s | compiles "
        "(s) | timed ms per shape | candidates per shape |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in models:
        if "verify_ms" not in r:
            lines.append(f"| {r['model']} | {r.get('skipped') or r.get('error') or '-'} | | | | | | | | | |")
            continue
        lines.append(
            f"| {r['model']} ({r['what']}) | {r['plain_ms']:.3f} | {r['predict_ms']:.3f} | {r['verify_ms']:.3f} | "
            f"{r['verify_ms'] / r['plain_ms']:.3f} | {r['shapes']} | {r['kept_triton']} | {r['warmup_s']:.1f} | "
            f"{r['compiles']} ({r['compile_s']:.1f}) | {r['bench_ms_per_shape']:.1f} | "
            f"{r['candidates_per_shape']:.1f} |"
        )
    nc = res.get("noise_check") or {}
    if "triton_choices" in nc:
        lines += ["", f"noise check (fresh process, re-timed against cuBLAS): {nc['triton_choices']} verified Triton "
                  f"choices, {nc['share_slower']:.0%} slower than cuBLAS, {nc['share_slower_3pct']:.0%} slower by >3%, "
                  f"min gain {nc['min_retimed_gain'] or float('nan'):.3f}"]  # fmt: skip
    elif nc:
        lines += ["", f"noise check: {nc.get('skipped') or nc.get('error')}"]
    return lines
