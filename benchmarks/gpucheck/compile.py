"""Step `compile`: torch.compile of two models in four configurations -- Inductor's default, max-autotune, the gpperf
hook in predict mode and in verify mode (issue 26) -- with compile seconds, steady-state ms and the share of GEMMs
that run on Inductor's Triton templates (the rest on extern cuBLAS calls), read off the generated code.

Models: a decoder block (GPT-2 width: LayerNorm, fused qkv, causal SDPA, out projection, GELU MLP; plain
nn.Linear, so Inductor sees the GEMMs: the hook works on those, the op path is the verify step's), and a ViT-B
MLP (768 -> 3072 -> 768, GELU, 8 x 197 tokens), fp16. Rows run cheapest first (default, predict, verify,
max-autotune) so that a cut-off step still has the comparison that matters; each compile starts from a reset
Dynamo and a fresh Inductor cache directory, so compile seconds are cold (the machine's Triton cache may be warm
from earlier steps), after one untimed warm-up compile that takes the process's one-time costs.

Dry run (CPU): the same table from Inductor's CPU lowering at tiny widths: compile seconds and ms are CPU numbers,
the hook defers to Inductor on a CPU (predict and verify rows equal the default; said in each row), and CPU GEMMs
are extern calls or CPP templates, not Triton templates. The fake-H100 lowering tests (tests/test_inductor_hook.py)
are where the hook's choices are checked without a GPU.
"""

from __future__ import annotations

import os
import tempfile
import time

from .common import Check, log

CONFIGS = ("default", "gpperf predict", "gpperf verify", "max-autotune")


def _models(dry: bool, device: str, dtype):
    import torch
    import torch.nn.functional as F
    from torch import nn

    d, heads, batch, seq = (32, 2, 1, 8) if dry else (768, 12, 4, 128)
    tokens = (2, 9) if dry else (8, 197)
    vit_d = 32 if dry else 768

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
            self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

        def forward(self, x):
            b, t, _ = x.shape
            q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
            att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.proj(att.transpose(1, 2).reshape(b, t, d))
            return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))

    mlp = nn.Sequential(nn.Linear(vit_d, 4 * vit_d), nn.GELU(), nn.Linear(4 * vit_d, vit_d))
    g = torch.Generator().manual_seed(0)
    return [
        ("decoder block", Block().to(device, dtype), torch.randn(batch, seq, d, generator=g).to(device, dtype)),
        ("vit mlp", mlp.to(device, dtype), torch.randn(*tokens, vit_d, generator=g).to(device, dtype)),
    ]


def _steady_ms(fn, x, cuda: bool, reps: int) -> float:
    import torch

    with torch.no_grad():
        fn(x)
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn(x)
        if cuda:
            torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps * 1e3


def _row(name: str, config: str, model, x, cuda: bool, reps: int) -> dict:
    import torch

    import gpperf_torch as gp
    from gpperf_torch.inductor.census import run_and_count

    torch._dynamo.reset()
    with torch.no_grad():
        ref = model(x)
    # a fresh Inductor cache per compile: the FX graph cache would otherwise hand max-autotune's graph back
    # (on a GPU; the CPU dry run keeps the cache: its C++ compiles are not what it shows)
    old = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if cuda:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="gpperf-compile-")
    try:
        if config.startswith("gpperf"):
            gp.inductor.install(config.split()[1], top_k=3)
        compiled = torch.compile(model, mode="max-autotune-no-cudagraphs" if config == "max-autotune" else None)
        t0 = time.perf_counter()
        with torch.no_grad():
            out, census = run_and_count(compiled, x)
        if cuda:
            torch.cuda.synchronize()
        compile_s = time.perf_counter() - t0
        ms = _steady_ms(compiled, x, cuda, reps)
    finally:
        gp.inductor.uninstall()
        if old is None:
            os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
        else:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = old
        torch._dynamo.reset()
    row = {"model": name, "config": config, "compile_s": round(compile_s, 2), "steady_ms": ms,
           "gemms_template": census["template"], "gemms_extern": census["extern"],
           "share_template": census["share_template"],
           "max_abs_diff_vs_eager": float((out.float() - ref.float()).abs().max())}  # fmt: skip
    if not cuda and config.startswith("gpperf"):
        row["note"] = "the hook defers on a CPU: Inductor's default"
    return row


def step_compile(c: Check) -> dict:
    import torch

    cuda = torch.cuda.is_available() and not c.dry
    device, dtype = ("cuda", torch.float16) if cuda else ("cpu", torch.float32)
    budget = c.budget("compile")
    t_end = time.monotonic() + budget
    reps = 50 if cuda else 5
    rows = []
    threads = torch.get_num_threads()
    if not cuda:
        torch.set_num_threads(1)  # tiny CPU tensors: more threads only wait on each other (and the box is shared)
    models = _models(not cuda, device, dtype)
    # One untimed compile first: the process's one-time costs (Inductor's imports, the compile workers' start)
    # would otherwise land on the first row.
    torch._dynamo.reset()
    warm = torch.randn(16, 16, device=device, dtype=dtype)
    torch.compile(lambda a: torch.relu(a @ a))(warm)
    torch._dynamo.reset()
    for config in CONFIGS:
        last_s = None
        for name, model, x in reversed(models):  # the ViT MLP first: two GEMMs, the cheaper compile
            # A compile cannot be cut short: start one only when it should end within the step's budget, so that
            # an overrun does not eat the later steps' time. Guess: max-autotune ~20 s for the MLP on a GPU, the
            # others ~5 s; the decoder block (4 GEMMs) about twice what the MLP took in the same configuration.
            guess = 2.0 * last_s if last_s is not None else (20.0 if config == "max-autotune" and cuda else 5.0)
            left = t_end - time.monotonic()
            if left < (2.0 if c.dry else guess):
                why = (
                    "compile budget spent"
                    if left <= 0
                    else f"{left:.0f} s left of the budget, a compile takes ~{guess:.0f} s"
                )
                rows.append({"model": name, "config": config, "skipped": why})
                continue
            log(f"compile: {name}, {config}")
            try:
                rows.append(_row(name, config, model, x, cuda, reps))
                last_s = rows[-1]["compile_s"]
            except Exception as e:  # one configuration failing must not hide the others
                rows.append({"model": name, "config": config, "error": f"{type(e).__name__}: {str(e)[:200]}"})
    torch.set_num_threads(threads)
    if rows and all("error" in r for r in rows):
        raise RuntimeError(f"every configuration failed, e.g. {rows[0]['error']}")
    return {"rows": rows, "device": "cuda" if cuda else "cpu", "dtype": str(dtype).replace("torch.", ""),
            "cpu_lowering": not cuda}  # fmt: skip


def compile_table(res: dict) -> list[str]:
    """The compile rows as markdown (summary.md)."""
    if not res.get("rows"):
        return []
    note = " -- CPU NUMBERS (Inductor's CPU lowering; the hook defers on a CPU)" if res.get("cpu_lowering") else ""
    lines = ["", f"torch.compile, {res.get('dtype')}{note}", "",
             "| model | config | compile s | steady ms | GEMMs on templates | max abs diff vs eager |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for r in res["rows"]:
        if "steady_ms" not in r:
            lines.append(f"| {r['model']} | {r['config']} | {r.get('skipped') or r.get('error')} | | | |")
            continue
        share = r["share_template"]
        tmpl = f"{r['gemms_template']}/{r['gemms_template'] + r['gemms_extern']}"
        tmpl += f" ({share:.0%})" if share is not None else ""
        cfg = r["config"] + (f" ({r['note']})" if r.get("note") else "")
        lines.append(f"| {r['model']} | {cfg} | {r['compile_s']:.1f} | {r['steady_ms']:.3f} | {tmpl} | "
                     f"{r['max_abs_diff_vs_eager']:.2e} |")  # fmt: skip
    return lines


__all__ = ["CONFIGS", "compile_table", "step_compile"]
