"""GPU check step `decode`: the decoder example's decode steps, with the causes of a patched model's cost apart.

A decode GEMM (M = batch) runs for a few microseconds, so in eager PyTorch the host path per call can be the
whole cost. The rows separate it from the choice of configs:
  plain                      unpatched: torch.matmul / cuBLAS, torch's own host path
  patched torch-only         patched, every GEMM forced to torch.matmul through our front: minus `plain`, that is
                             our host cost per call (front, selection lookup, op path)
  patched predict            the selector's choices, launched through Triton's JIT binder (lean path off)
  patched predict, lean      the same choices, the lean launch path on (compiled kernels called directly)
  patched verify (+ lean)    choices measured once per shape (verify mode)
  plain / patched, CUDA graph   each decode step replayed as one CUDA graph (static KV cache): no host cost
Per row: tokens/s, microseconds per decode step and per GEMM call, and the extra per GEMM call against plain.
Through the interpreter (the dry run) the same table is printed, marked as interpreter numbers.
"""

from __future__ import annotations

import importlib.util
import statistics
import sys
import time

from .common import REPO, Check, log

EXAMPLE = REPO / "examples" / "energy_aware_inference.py"


def _example():
    spec = importlib.util.spec_from_file_location("gpu_check_decoder_example", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the class is built
    spec.loader.exec_module(mod)
    return mod


def step_decode(c: Check) -> dict:
    import torch

    import gpperf_torch as gp
    from gpperf_torch.kernels import launcher
    from gpperf_torch.selection import selector

    ex = _example()
    cuda = torch.cuda.is_available() and not c.dry
    device = "cuda" if cuda else "cpu"
    if cuda:  # the model: 2 layers of GPT-2 width, batch 4, fp16
        cfg = ex.DecoderConfig(vocab=50257, d_model=768, n_layers=2, n_heads=12, d_ff=3072, max_seq=1024)
        batch, prompt_len, steps, reps, dtype = 4, 32, 16, 5, torch.float16
    else:
        cfg = ex.DecoderConfig(vocab=96, d_model=32, n_layers=1, n_heads=2, d_ff=128, max_seq=64)
        batch, prompt_len, steps, reps, dtype = 1, 4, 2, 1, torch.float32
    budget = c.budget("decode")
    t_end = time.monotonic() + budget
    selector.reset()  # the shipped model for this device
    torch.manual_seed(0)
    model = ex.Decoder(cfg).to(device=device, dtype=dtype).eval()
    prompt = torch.randint(0, cfg.vocab, (batch, prompt_len), device=device)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    with torch.inference_mode():
        last, cache = ex.prefill(model, prompt)  # unpatched: every row decodes from the same cache
        first = last.argmax(-1)
        gp.patch(model)
        with gp.recording() as rec:
            ex.decode(model, first, cache, 1)
        gp.unpatch(model)
    n_gemm = sum(rec.values())
    log(f"decode: {cfg.n_layers} layers, d_model {cfg.d_model}, batch {batch}, {n_gemm} GEMM calls per step")

    ref_logits: list = []

    def timed(run) -> tuple[float, float]:
        """(median seconds per decode step, max |dlogit| against plain) for `run()` -> list of logits."""
        with torch.inference_mode():
            logits = run()  # warm-up: selection, compilation (and verify's measurements) happen here
            sync()
            diff = max((a.float() - b.float()).abs().max().item() for a, b in zip(logits, ref_logits, strict=True))
            ts = []
            for _ in range(reps):
                t0 = time.perf_counter()
                run()
                sync()
                ts.append((time.perf_counter() - t0) / steps)
        return statistics.median(ts), diff

    def eager() -> list:
        return ex.decode(model, first, cache, steps)[1]

    def graphed() -> tuple:
        sd = ex.StaticDecoder(model, cache, first, cache[0][0].shape[2] + steps, graph=True)
        return lambda: ex.decode_static(sd, first, steps)[1]

    real_choose = selector.choose

    def torch_only(a, b, forced, objective):
        real_choose(a, b, forced, objective)  # the lookup's cost stays in the row
        return None

    rows: list[dict] = []

    def row(name: str, patched: bool, *, mode: str = "predict", lean: bool = False, torch_gemms: bool = False,
            graph: bool = False) -> None:  # fmt: skip
        r: dict = {"row": name}
        if time.monotonic() > t_end:
            r["skipped"] = "decode budget spent"
        elif graph and not cuda:
            r["skipped"] = "no GPU: no CUDA graph"
        elif lean and not cuda:
            r["note"] = "interpreter: the lean path does not apply (same as off)"
        if "skipped" in r:
            rows.append(r)
            return
        launcher.set_enabled(lean)
        if torch_gemms:
            selector.choose = torch_only
        try:
            if patched:
                gp.patch(model)
            with gp.mode(mode):
                if graph:
                    with torch.inference_mode():
                        run = graphed()
                else:
                    run = eager
                step_s, diff = timed(run)
        except Exception as e:  # one row failing is a finding, not the end of the table
            r["error"] = f"{type(e).__name__}: {e}"[:300]
            rows.append(r)
            return
        finally:
            selector.choose = real_choose
            launcher.set_enabled(False)
            gp.unpatch(model)
        r.update(
            tokens_per_s=batch / step_s,
            us_per_step=step_s * 1e6,
            us_per_gemm=step_s * 1e6 / max(n_gemm, 1),
            max_dlogit_vs_plain=diff,
        )
        rows.append(r)
        log(f"decode {name}: {r['tokens_per_s']:.1f} tokens/s, {r['us_per_gemm']:.2f} us per GEMM call")

    with torch.inference_mode():
        ref_logits.extend(eager())
    lean_default = launcher.enabled()
    try:
        row("plain", False)
        row("patched torch-only", True, torch_gemms=True)
        row("patched predict", True)
        row("patched predict, lean", True, lean=True)
        row("patched verify", True, mode="verify")
        row("patched verify, lean", True, mode="verify", lean=True)
        row("plain, CUDA graph", False, graph=True)
        row("patched predict, CUDA graph", True, graph=True)
    finally:
        launcher.set_enabled(lean_default)
    plain = next((r for r in rows if r["row"] == "plain" and "us_per_step" in r), None)
    for r in rows:
        if plain is not None and "us_per_step" in r:
            r["extra_us_per_gemm_vs_plain"] = (r["us_per_step"] - plain["us_per_step"]) / max(n_gemm, 1)
    host = next((r for r in rows if r["row"] == "patched torch-only" and "extra_us_per_gemm_vs_plain" in r), None)
    return {
        "interpreter": not cuda,
        "model": f"{cfg.n_layers} layers, d_model {cfg.d_model}, d_ff {cfg.d_ff}, vocab {cfg.vocab}, "
        f"{str(dtype).replace('torch.', '')}, batch {batch}, prompt {prompt_len}, {steps} decode steps x {reps}",
        "gemm_calls_per_step": n_gemm,
        # our front + op path per GEMM call over torch's own (what the selector's eager host cost stands for)
        "front_host_us_per_gemm": None if host is None else host["extra_us_per_gemm_vs_plain"],
        "rows": rows,
    }


def decode_table(res: dict) -> list[str]:
    """The decode rows as markdown (summary.md)."""
    if not res.get("rows"):
        return []
    lines = [
        "",
        f"decode steps: {res.get('model')}, {res.get('gemm_calls_per_step')} GEMM calls per step"
        + (
            " -- INTERPRETER NUMBERS (CPU wall clock through the Triton interpreter, not GPU times)"
            if res.get("interpreter")
            else ""
        ),  # fmt: skip
        "",
        "| decode row | tokens/s | us per step | us per GEMM call | extra us per GEMM vs plain | max abs dlogit |",
        "|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        if "us_per_step" not in r:
            why = r.get("skipped") or r.get("error") or "-"
            lines.append(f"| {r['row']} | {why} | | | | |")
            continue
        name = r["row"] + (f" ({r['note']})" if r.get("note") else "")
        lines.append(
            f"| {name} | {r['tokens_per_s']:.1f} | {r['us_per_step']:.1f} | {r['us_per_gemm']:.2f} | "
            f"{r.get('extra_us_per_gemm_vs_plain', 0):+.2f} | {r['max_dlogit_vs_plain']:.2e} |"
        )
    return lines
