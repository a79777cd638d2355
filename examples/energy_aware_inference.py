"""Energy-aware inference: a decoder-only transformer generating tokens greedily under each objective.

A GPT-2-small-like model (random weights, built from a config: nothing is downloaded) is patched with
`gpperf_torch.patch`, so every nn.Linear (q/k/v/o projections, the MLP, the LM head) goes through the op and
gets a tile config per shape. It then generates as plain PyTorch (unpatched) and under the objectives `time`,
`energy` and `balanced:0.05`, and prints per objective tokens/s, joules per token and average watts
(`gp.energy.measure`: NVML's energy counter), the SM clock and whether the GPU throttled (e.g. at its power cap),
the largest logit difference against plain PyTorch, and a prefill vs decode breakdown: prefill GEMMs have
M = batch x prompt length, decode GEMMs M = batch, and the two are chosen (and behave) differently.

On a GPU each objective first runs `gp.warmup` with the guard on the prefill and on a decode step: every GEMM is
measured (in NVML energy windows for the energy objectives), then the whole forward plain against patched, and
where patched is not better beyond the noise the model's GEMMs go back to cuBLAS (the `guard` column).

    python examples/energy_aware_inference.py                     # GPU: 12 layers, d=768, vocab 50257, fp16
    python examples/energy_aware_inference.py --model mymodel     # a model trained with energy (tune + train)
    python examples/energy_aware_inference.py --layers 2 --d-model 32 --vocab 96 --prompt-len 6 --new-tokens 4
    python examples/energy_aware_inference.py --cuda-graphs       # also decode steps replayed as CUDA graphs

Without a GPU it runs a tiny model through the Triton interpreter: logits are real, times are CPU wall clock
and there is no energy counter (energy is n/a). The shipped models (trained on public data) predict time only:
with them `energy` and `balanced` take the time pick (energy tracks time within a shape on measured data, R^2
0.994; docs/energy.md), and on a GPU verify mode measures the energy itself. It ends with what you can try next
(power limits and clocks); it never changes them.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before gpperf_torch imports the kernel

import gpperf_torch as gp  # noqa: E402
from gpperf_torch.measure import timing as measure  # noqa: E402

PLAIN = "plain PyTorch"


# ---- the model ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DecoderConfig:
    vocab: int = 50257
    d_model: int = 768
    n_layers: int = 12
    n_heads: int = 12
    d_ff: int = 3072
    max_seq: int = 1024


class Block(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        d = cfg.d_model
        self.n_heads = cfg.n_heads
        self.ln1 = nn.LayerNorm(d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.ln2 = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, cfg.d_ff)
        self.fc2 = nn.Linear(cfg.d_ff, d)

    def forward(self, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None):
        b, t, d = x.shape
        h = self.ln1(x)

        def heads(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2)

        q, k, v = heads(self.q(h)), heads(self.k(h)), heads(self.v(h))
        if past is not None:  # decode: attend to the cached keys/values and this step's
            k, v = torch.cat([past[0], k], 2), torch.cat([past[1], v], 2)
        # Prefill is causal within the prompt; a decode step's single query may see everything cached.
        att = F.scaled_dot_product_attention(q, k, v, is_causal=past is None and t > 1)
        x = x + self.o(att.transpose(1, 2).reshape(b, t, d))
        x = x + self.fc2(F.gelu(self.fc1(self.ln2(x))))
        return x, (k, v)

    def step_static(self, x: torch.Tensor, kbuf: torch.Tensor, vbuf: torch.Tensor, pos: torch.Tensor, mask):
        """One decode step against a preallocated cache (batch, heads, max_len, head_dim): this step's key and
        value are written at `pos` (a device tensor) and attention is masked past it. Shapes and addresses never
        change from step to step, so a CUDA graph can capture it."""
        b, t, d = x.shape
        h = self.ln1(x)

        def heads(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2)

        q, k, v = heads(self.q(h)), heads(self.k(h)), heads(self.v(h))
        kbuf.index_copy_(2, pos, k)
        vbuf.index_copy_(2, pos, v)
        att = F.scaled_dot_product_attention(q, kbuf, vbuf, attn_mask=mask)
        x = x + self.o(att.transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class Decoder(nn.Module):
    """GPT-2-shaped decoder (pre-LayerNorm blocks, learned positions, untied LM head) with a KV cache."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.cfg = cfg
        self.tok = nn.Embedding(cfg.vocab, cfg.d_model)
        self.pos = nn.Embedding(cfg.max_seq, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab, bias=False)

    def forward(self, ids: torch.Tensor, cache: list | None = None):
        start = 0 if cache is None else cache[0][0].shape[2]
        pos = torch.arange(start, start + ids.shape[1], device=ids.device)
        x = self.tok(ids) + self.pos(pos)
        new_cache = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, None if cache is None else cache[i])
            new_cache.append(kv)
        return self.head(self.ln_f(x)), new_cache

    def step_static(self, ids: torch.Tensor, kbufs: list, vbufs: list, pos: torch.Tensor) -> torch.Tensor:
        """The logits of one decode step (ids: (batch, 1)) with the static cache of `StaticDecoder`."""
        x = self.tok(ids) + self.pos(pos)
        mask = (torch.arange(kbufs[0].shape[2], device=ids.device) <= pos)[None, None, None, :]
        for block, kb, vb in zip(self.blocks, kbufs, vbufs, strict=True):
            x = block.step_static(x, kb, vb, pos, mask)
        return self.head(self.ln_f(x))[:, -1]


class StaticDecoder:
    """Decode steps on a preallocated KV cache, replayed as one CUDA graph per step (`--cuda-graphs`).

    Built from a prefill's cache: copies it into buffers of `max_len` positions, runs two warm-up steps on a side
    stream (where tile selection and kernel compilation happen: nothing may be selected or compiled inside a
    capture), then captures one step. Each `step` copies the token and position into the graph's static inputs
    and replays it: one launch of the whole step, no per-GEMM host cost. With `graph=False` (no GPU) the same
    static step runs eagerly, so its logits can be checked anywhere.
    """

    def __init__(self, model: Decoder, cache: list, first: torch.Tensor, max_len: int, graph: bool = True):
        self.model = model
        self.start = cache[0][0].shape[2]
        b, h, _, dh = cache[0][0].shape
        like = cache[0][0]
        self.kbufs = [like.new_zeros(b, h, max_len, dh) for _ in cache]
        self.vbufs = [like.new_zeros(b, h, max_len, dh) for _ in cache]
        for (k, v), kb, vb in zip(cache, self.kbufs, self.vbufs, strict=True):
            kb[:, :, : self.start].copy_(k)
            vb[:, :, : self.start].copy_(v)
        self.ids = first[:, None].clone()
        self.pos = torch.full((1,), self.start, dtype=torch.long, device=first.device)
        self.graph = None
        if graph:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # the first step's own position: what it writes, the real step rewrites
                for _ in range(2):
                    self.model.step_static(self.ids, self.kbufs, self.vbufs, self.pos)
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.logits = self.model.step_static(self.ids, self.kbufs, self.vbufs, self.pos)

    def step(self, tok: torch.Tensor, i: int) -> torch.Tensor:
        """Logits of decode step `i` (0-based) fed token `tok` (batch,)."""
        self.ids.copy_(tok[:, None])
        self.pos.fill_(self.start + i)
        if self.graph is None:
            return self.model.step_static(self.ids, self.kbufs, self.vbufs, self.pos)
        self.graph.replay()
        return self.logits


def decode_static(sd: StaticDecoder, first: torch.Tensor, steps: int, forced: torch.Tensor | None = None):
    """`decode` on a StaticDecoder: the same tokens and logits (cloned out of the graph's output buffer)."""
    tok, tokens, logits_all = first, [], []
    for i in range(steps):
        logits = sd.step(tok, i).clone()
        logits_all.append(logits)
        greedy = logits.argmax(-1)
        tokens.append(greedy)
        tok = forced[:, i] if forced is not None else greedy
    return torch.stack(tokens, 1), logits_all


# ---- generation in two phases ----------------------------------------------------------------------------
def prefill(model: Decoder, prompt: torch.Tensor):
    """The whole prompt at once: GEMMs with M = batch x prompt length. Returns last logits and the cache."""
    logits, cache = model(prompt)
    return logits[:, -1], cache


def decode(model: Decoder, first: torch.Tensor, cache: list, steps: int, forced: torch.Tensor | None = None):
    """`steps` single-token steps (GEMMs with M = batch) from `cache` (not modified: a new cache is built).

    `forced` (batch, steps) feeds those tokens instead of the greedy ones, so that two models' logits are
    compared on the same sequence. Returns the greedy tokens and the logits of every step.
    """
    tok, tokens, logits_all = first, [], []
    for i in range(steps):
        logits, cache = model(tok[:, None], cache)
        logits = logits[:, -1]
        logits_all.append(logits)
        greedy = logits.argmax(-1)
        tokens.append(greedy)
        tok = forced[:, i] if forced is not None else greedy
    return torch.stack(tokens, 1), logits_all


def generate(model: Decoder, prompt: torch.Tensor, new_tokens: int, forced: torch.Tensor | None = None):
    """Greedy generation: prefill gives token 1, then new_tokens - 1 decode steps. (tokens, list of logits)."""
    last, cache = prefill(model, prompt)
    first = last.argmax(-1)
    tok0 = forced[:, 0] if forced is not None else first
    rest, logits = decode(model, tok0, cache, new_tokens - 1, None if forced is None else forced[:, 1:])
    return torch.cat([first[:, None], rest], 1), [last, *logits]


# ---- measurement ---------------------------------------------------------------------------------------
def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def measure_phase(fn, count: int, reps: int, energy: bool, window_s: float, repeats: int = 3) -> dict:
    """Seconds per call of `fn` (which does `count` units of work); with `energy` (a GPU), joules and watts per
    call, SM clock and throttling from `gp.energy.measure` (None where it could not know)."""
    fn()  # warm: compilation and first-sight selection happen here, not in the numbers
    _sync()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    _sync()
    out = {"s": (time.perf_counter() - t0) / reps, "j": None, "w": None, "sm_mhz": None, "throttled": None,
           "throttle_reasons": [], "energy_na": "no GPU (energy is n/a on a CPU)"}  # fmt: skip
    if energy:
        r = gp.energy.measure(fn, seconds=window_s, repeats=repeats)
        out.update(j=r.j_per_call, w=r.watts, sm_mhz=r.sm_clock_mhz, throttled=r.throttled,
                   throttle_reasons=r.throttle_reasons, energy_na=r.unknown.get("j_per_call", ""))  # fmt: skip
    return out


def run_objective(model, prompt, new_tokens, ref, args, meter) -> dict:
    """Generate once against the reference tokens (logit diff), then time (and meter) each phase."""
    tokens, logits = generate(model, prompt, new_tokens, forced=ref["tokens"] if ref else None)
    diff = 0.0
    if ref is not None:
        diff = max((a.float() - b.float()).abs().max().item() for a, b in zip(logits, ref["logits"], strict=True))
    _, cache = prefill(model, prompt)
    first = tokens[:, 0]
    steps = max(new_tokens - 1, 1)
    pre = measure_phase(lambda: prefill(model, prompt), 1, args.reps, meter, args.window_s, args.energy_repeats)
    dec = measure_phase(lambda: decode(model, first, cache, steps), steps, args.reps, meter, args.window_s,
                        args.energy_repeats)  # fmt: skip
    graphs = None
    if getattr(args, "cuda_graphs", False):
        sd = StaticDecoder(model, cache, first, cache[0][0].shape[2] + steps, graph=torch.cuda.is_available())
        fed = tokens if ref is None else ref["tokens"]  # the tokens the eager decode steps were fed
        _, glogits = decode_static(sd, fed[:, 0], steps, fed[:, 1:])
        gdiff = max((a.float() - b.float()).abs().max().item() for a, b in zip(glogits, logits[1:], strict=True))
        graphs = measure_phase(lambda: decode_static(sd, first, steps), steps, args.reps, meter, args.window_s,
                               args.energy_repeats)  # fmt: skip
        graphs["max_diff_vs_eager"] = gdiff
    return {
        "tokens": tokens,
        "logits": logits,
        "max_diff": diff,
        "same_tokens": bool(ref is None or torch.equal(tokens, ref["tokens"])),
        "prefill": pre,
        "decode": dec,
        "graphs": graphs,
        "steps": steps,
    }


def summarize(r: dict, batch: int, new_tokens: int) -> dict:
    """Per-generation figures: prefill once, then new_tokens - 1 decode steps, batch sequences."""
    pre, dec, steps = r["prefill"], r["decode"], r["steps"]
    decode_steps = new_tokens - 1
    total_s = pre["s"] + dec["s"] / steps * decode_steps
    tokens = batch * new_tokens
    out = {"tokens_per_s": tokens / total_s, "j_per_token": None, "watts": None}
    clocks = [x for x in (pre.get("sm_mhz"), dec.get("sm_mhz")) if x is not None]
    out["sm_mhz"] = min(clocks) if clocks else None
    thr = [x.get("throttled") for x in (pre, dec)]
    out["throttled"] = None if all(t is None for t in thr) else any(thr)
    out["throttle_reasons"] = sorted({r for x in (pre, dec) for r in x.get("throttle_reasons", [])})
    if pre["j"] is not None and dec["j"] is not None:
        total_j = pre["j"] + dec["j"] / steps * decode_steps
        out["j_per_token"] = total_j / tokens
        out["watts"] = total_j / total_s
    return out


def _fmt(v: float | None, spec: str) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def _yes_no(v: bool | None) -> str:
    return "n/a" if v is None else ("yes" if v else "no")


def warm(model: Decoder, prompt: torch.Tensor, obj: str, guard: bool) -> dict:
    """gp.warmup on the prefill and on one decode step (their GEMMs differ: M = batch x prompt vs M = batch), with
    the end-to-end guard; what the guard decided for each."""
    out = {}
    last, cache = prefill(model, prompt)
    for phase, inputs in (("prefill", (prompt,)), ("decode", (last.argmax(-1)[:, None], cache))):
        rep = gp.warmup(model, inputs, objective=obj, guard=guard, progress=False)
        g = rep.guard or {}
        if not guard:
            out[phase] = "off"
        elif "skipped" in g:
            out[phase] = "n/a"
        else:
            out[phase] = "kept" if g.get("kept_patched") else "reverted"
    return out


def pick_note(obj: str, device: str) -> str:
    """How the objective chose its configs: 'time pick' where the model predicts no energy (said once, why)."""
    try:
        row = gp.explain(256, 768, 768, objective=obj, device=device)[0]
    except ValueError:
        return ""
    return "time pick" if "objective_note" in row else ""


# ---- main ------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=None, help="default 12 on a GPU, 2 on a CPU")
    p.add_argument("--d-model", type=int, default=None, help="default 768 on a GPU, 32 on a CPU")
    p.add_argument("--heads", type=int, default=None, help="default 12 on a GPU, 2 on a CPU")
    p.add_argument("--vocab", type=int, default=None, help="default 50257 on a GPU, 96 on a CPU")
    p.add_argument("--batch", type=int, default=None, help="sequences generated together (decode GEMMs: M = batch)")
    p.add_argument("--prompt-len", type=int, default=None, help="prompt tokens (prefill GEMMs: M = batch x this)")
    p.add_argument("--new-tokens", type=int, default=None, help="tokens generated per sequence (>= 2)")
    p.add_argument("--dtype", default=None, choices=["float16", "bfloat16", "float32"], help="GPU fp16, CPU fp32")
    p.add_argument("--objectives", nargs="+", default=["time", "energy", "balanced:0.05"],
                   help="besides plain PyTorch")  # fmt: skip
    p.add_argument("--model", default=None, help="gpperf model directory to select with (default: shipped model)")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions per phase (GPU 10, CPU 1)")
    p.add_argument("--window-s", type=float, default=0.5, help="NVML energy window per phase and objective")
    p.add_argument("--energy-repeats", type=int, default=3, help="energy windows per phase (their spread)")
    p.add_argument("--guard", choices=["auto", "on", "off"], default="auto",
                   help="gp.warmup with the end-to-end guard per objective (auto: on a GPU; a CPU's interpreter "
                   "times mean nothing)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="also time decode steps replayed as CUDA graphs (static KV cache); without a GPU the static step "
        "runs eagerly (its logits are checked, there is no graph)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    threads = torch.get_num_threads()
    if not torch.cuda.is_available():
        torch.set_num_threads(1)  # a tiny model: more threads only wait on each other (and on a busy CPU, spin)
    try:
        with gp.stats.counting() as counts:  # on the interpreter: each GEMM's Triton pick also runs, vs float64
            rc = _main(args)
    finally:
        torch.set_num_threads(threads)
        if args.model:
            gp.set_model(None)
    print(f"\n{counts.summary()}")
    return rc if counts.ok else 1


def _main(args: argparse.Namespace) -> int:
    cuda = torch.cuda.is_available()
    gpu_defaults = dict(layers=12, d_model=768, heads=12, vocab=50257, batch=4, prompt_len=128, new_tokens=32, reps=10)
    cpu_defaults = dict(layers=2, d_model=32, heads=2, vocab=96, batch=1, prompt_len=6, new_tokens=4, reps=1)
    for key, value in (gpu_defaults if cuda else cpu_defaults).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.new_tokens < 2:
        raise SystemExit("--new-tokens must be >= 2 (one from prefill, the rest from decode steps)")
    dtype = getattr(torch, args.dtype or ("float16" if cuda else "float32"))
    device = "cuda" if cuda else "cpu"

    selecting = f"the model in {args.model}" if args.model else "the shipped H100 model"
    if cuda:
        print(f"GPU: {torch.cuda.get_device_name()}")
        meter = measure.open_energy_meter(torch.cuda.current_device())
        if not meter.available:
            print(f"energy: {meter.reason}; J/token and watts are n/a")
        meter = meter.available
    else:
        meter = False
        print("No GPU: the Triton kernels run through the Triton interpreter (TRITON_INTERPRET=1) on a tiny model.")
        print("NOTE: the numbers below are NOT GPU numbers: times are CPU wall clock of the interpreter, and there")
        print(f"is no energy counter: energy is n/a on a CPU. The logits are real; selection uses {selecting}.")
    guard = args.guard == "on" or (args.guard == "auto" and cuda)
    if args.model:
        gp.set_model(args.model)

    torch.manual_seed(args.seed)
    cfg = DecoderConfig(
        vocab=args.vocab,
        d_model=args.d_model,
        n_layers=args.layers,
        n_heads=args.heads,
        d_ff=4 * args.d_model,
        max_seq=max(1024, args.prompt_len + args.new_tokens),
    )
    model = Decoder(cfg).to(device=device, dtype=dtype).eval()
    prompt = torch.randint(0, cfg.vocab, (args.batch, args.prompt_len), device=device)
    print(
        f"model: {cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.n_heads} heads, d_ff {cfg.d_ff}, vocab {cfg.vocab} "
        f"({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, random weights), {args.dtype or dtype}"
    )
    print(
        f"generation: batch {args.batch}, prompt {args.prompt_len} tokens, {args.new_tokens} new tokens (greedy); "
        f"prefill GEMMs M = {args.batch * args.prompt_len}, decode GEMMs M = {args.batch}\n"
    )

    results: dict[str, dict] = {}
    skipped: dict[str, str] = {}
    with torch.inference_mode():
        results[PLAIN] = ref = run_objective(model, prompt, args.new_tokens, None, args, meter)
        gp.patch(model)
        for obj in args.objectives:
            try:
                with gp.objective(obj):
                    guarded = warm(model, prompt, obj, guard) if guard else {"prefill": "off", "decode": "off"}
                    results[obj] = run_objective(model, prompt, args.new_tokens, ref, args, meter)
                    results[obj].update(guard=guarded, pick=pick_note(obj, device))
            except ValueError as e:  # e.g. power_cap with a model that predicts no power: the message names the fix
                skipped[obj] = str(e)
        gp.unpatch(model)

    head = (f"{'objective':<14} {'tokens/s':>10} {'J/token':>10} {'avg W':>8} {'SM MHz':>7} {'throttled':>9} "
            f"{'max|dlogit|':>12}  same  guard (prefill/decode)  pick")  # fmt: skip
    print(head)
    print("-" * len(head))
    throttled: set[str] = set()
    for name in [PLAIN, *args.objectives]:
        if name in skipped:
            print(f"{name:<14} skipped: {skipped[name]}")
            continue
        r = results[name]
        s = summarize(r, args.batch, args.new_tokens)
        throttled.update(s["throttle_reasons"])
        g = r.get("guard") or {}
        gtxt = f"{g['prefill']}/{g['decode']}" if g else "-"
        print(
            f"{name:<14} {s['tokens_per_s']:>10.1f} {_fmt(s['j_per_token'], '10.4f'):>10} "
            f"{_fmt(s['watts'], '8.1f'):>8} {_fmt(s['sm_mhz'], '7.0f'):>7} {_yes_no(s['throttled']):>9} "
            f"{r['max_diff']:>12.3e}  {'yes' if r['same_tokens'] else 'no':<4}  {gtxt:<22}  {r.get('pick') or '-'}"
        )
    na = results[PLAIN]["prefill"].get("energy_na")
    if results[PLAIN]["prefill"]["j"] is None and na:
        print(f"(energy n/a: {na})")
    if any(results[n].get("pick") for n in results):
        print("(time pick: the model predicts time only, and energy tracks time within a shape on measured data,"
              " R^2 0.994; on a GPU, verify mode and gp.warmup measure the energy itself)")  # fmt: skip

    print("\nprefill vs decode (per prefill call of the whole prompt; per decode step = one token per sequence)")
    head = f"{'objective':<14} {'prefill ms':>11} {'prefill J':>10} {'decode ms/step':>15} {'decode J/step':>14}"
    print(head)
    print("-" * len(head))
    for name in [PLAIN, *args.objectives]:
        if name in skipped:
            continue
        pre, dec, steps = results[name]["prefill"], results[name]["decode"], results[name]["steps"]
        dec_j = None if dec["j"] is None else dec["j"] / steps
        print(
            f"{name:<14} {pre['s'] * 1e3:>11.3f} {_fmt(pre['j'], '10.4f'):>10} {dec['s'] / steps * 1e3:>15.3f} "
            f"{_fmt(dec_j, '14.5f'):>14}"
        )
    if args.cuda_graphs:
        print(
            "\ndecode steps on a static KV cache"
            + (", each replayed as one CUDA graph" if cuda else " (no GPU: eager, no graph)")
        )
        head = f"{'objective':<14} {'decode ms/step':>15} {'decode J/step':>14} {'vs eager decode':>16}"
        head += f" {'max|dlogit|':>12}"
        print(head)
        print("-" * len(head))
        for name in [PLAIN, *args.objectives]:
            if name in skipped:
                continue
            g, dec, steps = results[name]["graphs"], results[name]["decode"], results[name]["steps"]
            g_j = None if g["j"] is None else g["j"] / steps
            print(
                f"{name:<14} {g['s'] / steps * 1e3:>15.3f} {_fmt(g_j, '14.5f'):>14} {dec['s'] / g['s']:>15.2f}x "
                f"{g['max_diff_vs_eager']:>12.3e}"
            )
    if not cuda:
        print("\n(interpreter run: times are not GPU times and energy is n/a; what ran, and the kernel's check: below)")
    if skipped:
        print(
            "\nskipped objectives need a model with power targets: measure on the GPU with `gpperf-torch tune` "
            "(NVML), train with `gpperf-torch train`, and pass --model DIR (or set GPPERF_MODEL=DIR)"
        )
    print(next_steps(throttled))
    return 0


def next_steps(throttled: set[str]) -> str:
    """What a user can try next, and why (issue 28's measured numbers; docs/energy.md). Never done here."""
    lines = [
        "",
        "What to try next (this example never changes these settings; they need admin rights and apply to the GPU):",
        "  * tile configs save little energy at a fixed clock: the energy-optimal config vs the time-optimal one is",
        "    -1.85% median (-4.1% at most) at +4.6% time on the public Ada sweep, and 0 on 23 of 25 problems in our",
        "    H200 run; running slower costs energy (a slower patched decoder used 0.114 J/token vs 0.049 plain).",
        "  * power limit: `sudo nvidia-smi -pl <watts>` (see `nvidia-smi -q -d POWER` for the allowed range).",
        "    Limits saved 12-23% energy on the public Zeus traces; measure tokens/s and J/token again after.",
        "  * clocks: `sudo nvidia-smi -lgc <min>,<max>` (lock the SM clock) or application clocks",
        "    `sudo nvidia-smi -ac <mem>,<sm>` (`nvidia-smi -q -d SUPPORTED_CLOCKS`); lowering the SM clock saved",
        "    about 10% energy at +22% time. `sudo nvidia-smi -rgc` / `-rac` restore the defaults.",
    ]
    if "sw_power_cap" in throttled:
        lines.append("  * this run reached the power cap (sw_power_cap): the clocks were already lowered by the limit;"
                     " 19 of 70 of our H200 energy windows did too")  # fmt: skip
    elif throttled:
        lines.append(f"  * this run throttled ({', '.join(sorted(throttled))}): compare numbers at equal clocks")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
