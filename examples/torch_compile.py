"""torch.compile with gpperf, two ways: the op path (a patched model) and the Inductor hook (`gp.inductor.install`).

Which to use when:
- `gp.inductor.install()` -- you compile with Inductor (the default backend) on a GPU. Inductor then runs its own
  Triton matmul template with the config the model predicts per GEMM (or cuBLAS where that wins), and fuses the
  bias, activation and residual into it; no host cost per call. "verify" (the default on a GPU) hands Inductor's
  autotuner cuBLAS + at most 3 predicted templates per GEMM (max-autotune times ~20); "predict" times nothing.
  The choice is made once per compile, for the shape hint (a dynamic M gets the hint's config).
- `gp.patch(model)` -- eager PyTorch, another compile backend, or shapes that vary at run time: the op chooses per
  actual shape when it runs, can optimise energy (`gp.objective("energy")`), and keeps a measured table across
  runs; under torch.compile it is one opaque op (Inductor fuses nothing into it).
On a CPU the hook defers to Inductor (it ranks CUDA GEMMs only): the hook section below runs, and says so.

Op path: the op `gpperf::mm` is a torch.library custom op with a fake (meta) implementation and an autograd formula, so
Dynamo traces a patched model into one graph without breaks; the tile config is still chosen inside the op at
run time, per actual shape, and the backward GEMMs go through the same op. This example compiles a small
transformer-style block stack, compares outputs and gradients with eager, and (on a GPU) times both.

    python examples/torch_compile.py                       # GPU: inductor, d=1024, 4 layers, fp16
    python examples/torch_compile.py --backend aot_eager   # what runs quickly on a CPU (the default there)

Without a GPU the kernels run through the Triton interpreter at tiny sizes: the outputs are real, the times
are not GPU times (they are not printed).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before gpperf_torch imports the kernel

import gpperf_torch as gp  # noqa: E402


class Block(nn.Module):
    """Pre-LayerNorm self-attention (causal, torch SDPA) and MLP, all projections plain nn.Linear."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(att.transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", default=None, help="torch.compile backend (GPU inductor, CPU aot_eager)")
    p.add_argument("--d-model", type=int, default=None, help="GPU 1024, CPU 32")
    p.add_argument("--layers", type=int, default=None, help="GPU 4, CPU 2")
    p.add_argument("--heads", type=int, default=None, help="GPU 16, CPU 2")
    p.add_argument("--batch", type=int, default=None, help="GPU 8, CPU 1")
    p.add_argument("--seq", type=int, default=None, help="GPU 512, CPU 8")
    p.add_argument("--dtype", default=None, choices=["float16", "bfloat16", "float32"], help="GPU fp16, CPU fp32")
    p.add_argument("--reps", type=int, default=20, help="timed iterations on a GPU")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    threads = torch.get_num_threads()
    if not torch.cuda.is_available():
        torch.set_num_threads(1)  # tiny tensors: more threads only wait on each other
    try:
        with gp.stats.counting() as counts:  # on the interpreter: each GEMM's Triton pick also runs, vs float64
            rc = _main(args)
    finally:
        torch.set_num_threads(threads)
    print(f"\n{counts.summary()}")
    return rc if counts.ok else 1


def _main(args: argparse.Namespace) -> int:
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    d = args.d_model or (1024 if cuda else 32)
    layers = args.layers or (4 if cuda else 2)
    heads = args.heads or (16 if cuda else 2)
    batch, seq = args.batch or (8 if cuda else 1), args.seq or (512 if cuda else 8)
    dtype = getattr(torch, args.dtype or ("float16" if cuda else "float32"))
    backend = args.backend or ("inductor" if cuda else "aot_eager")
    if cuda:
        print(f"GPU: {torch.cuda.get_device_name()}")
    else:
        print("No GPU: the Triton kernels run through the Triton interpreter (TRITON_INTERPRET=1) at tiny sizes.")
        print("NOTE: these are NOT GPU numbers; outputs and gradients are real; kernel times are not shown.")
    print(f"model: {layers} blocks, d_model {d}, {heads} heads; input {batch}x{seq}x{d} {dtype}; backend {backend}\n")

    torch.manual_seed(args.seed)
    model = nn.Sequential(*(Block(d, heads) for _ in range(layers))).to(device=device, dtype=dtype)
    x = torch.randn(batch, seq, d, device=device, dtype=dtype)
    with torch.no_grad():
        plain = model(x)  # plain PyTorch, for reference
    gp.patch(model)

    torch._dynamo.reset()
    compiled = torch.compile(model, backend=backend, fullgraph=True)  # fullgraph: any graph break is an error
    t0 = time.perf_counter()
    with torch.no_grad():
        out_c = compiled(x)
    t_compile = time.perf_counter() - t0
    with torch.no_grad():
        out_e = model(x)
    print(f"forward  compiled in {t_compile:.1f} s (fullgraph=True: no graph breaks)")
    print(f"forward  max |compiled - eager (patched)|  {(out_c - out_e).abs().max().item():.3e}")
    print(f"forward  max |compiled - plain PyTorch|    {(out_c - plain).abs().max().item():.3e}")

    # Backward: the compiled graph's backward runs the op's backward GEMMs (tile-selected too).
    grads = {}
    for name, fn in (("eager", model), ("compiled", compiled)):
        model.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_()
        fn(xi).float().square().mean().backward()
        grads[name] = [xi.grad] + [p.grad for p in model.parameters()]
    diff = max(
        (a.float() - b.float()).abs().max().item() for a, b in zip(grads["eager"], grads["compiled"], strict=True)
    )
    scale = max(g.float().abs().max().item() for g in grads["eager"])
    print(
        f"backward max |compiled - eager|           {diff:.3e}  (input and {len(grads['eager']) - 1} parameter "
        f"gradients; largest gradient {scale:.3e})"
    )

    if cuda:
        print()
        for name, fn in (("eager (patched)", model), (f"compiled ({backend})", compiled)):
            ms = _time_ms(fn, x, args.reps)
            print(f"forward+backward {name:<22} {ms:8.3f} ms/iter")
    else:
        print("\n(interpreter run: run on a GPU for timings)")
    gp.unpatch(model)
    _hook(model, x, plain, backend, cuda, args.reps)
    return 0


def _hook(model: nn.Module, x: torch.Tensor, plain: torch.Tensor, backend: str, cuda: bool, reps: int) -> None:
    """The compile path: the unpatched model under torch.compile with gpperf's Inductor hook installed."""
    print("\ncompile path: gp.inductor.install() on the unpatched model")
    if backend != "inductor":
        print(f"  (backend {backend}: Inductor is not involved, so the hook is not consulted; on a GPU the default")
        print("   backend is Inductor, and the hook chooses its templates)")
    elif not cuda:
        print("  (on a CPU the hook defers to Inductor's own CPU lowering: nothing is chosen by gpperf here)")
    torch._dynamo.reset()
    with gp.inductor.enabled():  # install() ... uninstall(); the mode: verify on a GPU, predict elsewhere
        mode = gp.inductor.current().mode
        hooked = torch.compile(model, backend=backend)
        t0 = time.perf_counter()
        with torch.no_grad():
            out_h = hooked(x)  # compiles here: the hook chooses while Inductor lowers each GEMM
        t_compile = time.perf_counter() - t0
    print(f"forward  compiled with the hook ({mode}) in {t_compile:.1f} s")
    print(f"forward  max |hook-compiled - plain PyTorch| {(out_h - plain).abs().max().item():.3e}")
    if cuda:
        with torch.no_grad():
            ms = _time_ms(lambda xi: hooked(xi.detach()), x, reps, backward=False)
        print(f"forward {'compiled, gpperf hook':<23} {ms:8.3f} ms/iter")
    torch._dynamo.reset()


def _time_ms(fn, x: torch.Tensor, reps: int, backward: bool = True) -> float:
    def step():
        if not backward:
            fn(x)
            return
        xi = x.detach().requires_grad_()
        fn(xi).float().square().mean().backward()

    step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        step()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps * 1e3


if __name__ == "__main__":
    sys.exit(main())
