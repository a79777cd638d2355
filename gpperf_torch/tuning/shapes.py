"""GEMM shapes to tune on: named presets (`llm`, `square`, `random`) and shape files.

A shape is ``(m, n, k)`` for ``C[m, n] = A[m, k] @ B[k, n]``. Layouts (which operand is a transposed view) are
chosen separately by the tuner, so every preset can be measured in every layout.
"""

from __future__ import annotations

import csv
import logging
import math
import random
from pathlib import Path

logger = logging.getLogger(__name__)

Shape = tuple[int, int, int]

# (in_features, out_features) of the Linear layers of common decoder models (HF naming in the comments).
# Projections shared by several models appear once; fused variants (qkv, gate+up) are what vLLM and
# many training stacks actually run.
LLM_LINEARS: dict[str, tuple[tuple[int, int], ...]] = {
    # Llama-2-7B: q/k/v/o 4096->4096, gate/up 4096->11008, down 11008->4096; fused qkv 4096->12288
    "llama-7b": ((4096, 4096), (4096, 11008), (11008, 4096), (4096, 12288)),
    # Llama-3-8B and Mistral-7B (GQA, 8 KV heads of 128): k/v 4096->1024, gate/up 4096->14336,
    # down 14336->4096; fused qkv 4096->6144
    "llama-3-8b/mistral-7b": ((4096, 1024), (4096, 14336), (14336, 4096), (4096, 6144)),
    # GPT-2 small: c_attn 768->2304, c_proj 768->768, c_fc 768->3072, mlp c_proj 3072->768
    "gpt2": ((768, 2304), (768, 768), (768, 3072), (3072, 768)),
}
# Tokens per batch: decode (a handful of sequences, one token each) and prefill/training chunks.
DECODE_TOKENS = (1, 2, 4, 8, 16)
PREFILL_TOKENS = (512, 1024, 2048, 4096, 8192)

SQUARE_SIZES = (64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192)

# `random` draws log-uniform sizes in [1, RANDOM_MAX_DIM]; shapes above these caps are redrawn so one row
# never needs gigabytes or seconds: 2*m*n*k <= 2**41 flop (~3 ms at fp16 on an H100), and A+B+C at fp32
# under 2 GiB.
RANDOM_MAX_DIM = 65536
RANDOM_MAX_MNK = 2**40
RANDOM_MAX_ELEMS = 2**29

PRESETS = ("llm", "square", "random")


def llm_shapes(*, backward: bool = True) -> list[Shape]:
    """Forward GEMMs at decode and prefill token counts, plus the two backward GEMMs at prefill counts.

    A Linear with weight W[out, in] computes y[T, out] = x[T, in] @ W.T (m=T, n=out, k=in); backward computes
    dx[T, in] = dy @ W (m=T, n=in, k=out) and dW[out, in] = dy.T @ x (m=out, n=in, k=T).
    """
    pairs = sorted({p for model in LLM_LINEARS.values() for p in model})
    out: list[Shape] = []
    for fin, fout in pairs:
        for t in DECODE_TOKENS + PREFILL_TOKENS:
            out.append((t, fout, fin))
        if backward:
            for t in PREFILL_TOKENS:
                out.append((t, fin, fout))  # grad of the input
                out.append((fout, fin, t))  # grad of the weight
    return _dedup(out)


def square_shapes() -> list[Shape]:
    return [(s, s, s) for s in SQUARE_SIZES]


def random_shapes(count: int = 200, *, seed: int = 0, max_dim: int = RANDOM_MAX_DIM) -> list[Shape]:
    """`count` shapes with m, n, k log-uniform in [1, max_dim], redrawn while over the size caps."""
    if count < 1:
        raise ValueError(f"random shape count must be >= 1, got {count}")
    if max_dim < 1:
        raise ValueError(f"max_dim must be >= 1, got {max_dim}")
    rng = random.Random(seed)
    hi = math.log(max_dim)
    out: list[Shape] = []
    seen: set[Shape] = set()
    attempts = 0
    while len(out) < count:
        attempts += 1
        if attempts > 1000 * count:
            raise ValueError(f"could not draw {count} distinct shapes under max_dim={max_dim}; ask for fewer")
        m, n, k = (max(1, min(max_dim, round(math.exp(rng.uniform(0.0, hi))))) for _ in range(3))
        if m * n * k > RANDOM_MAX_MNK or m * k + k * n + m * n > RANDOM_MAX_ELEMS or (m, n, k) in seen:
            continue
        seen.add((m, n, k))
        out.append((m, n, k))
    return out


def preset_shapes(name: str, *, seed: int = 0, count: int = 200) -> list[Shape]:
    """Shapes of a named preset (`llm`, `square`, `random`)."""
    if name == "llm":
        return llm_shapes()
    if name == "square":
        return square_shapes()
    if name == "random":
        return random_shapes(count, seed=seed)
    raise ValueError(f"unknown shape preset {name!r}; choose one of {', '.join(PRESETS)} or pass a shapes file")


def read_shapes(path: str | Path) -> list[Shape]:
    """Shapes from a file: lines ``M N K`` (whitespace or commas), or a CSV with columns m, n, k.

    Blank lines and ``#`` comments are ignored; a header line naming m, n, k (any case) is allowed.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:  # missing, a directory, binary
        raise ValueError(f"cannot read shapes file {str(path)!r}: {e}") from e
    lines = [ln.split("#", 1)[0].strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln]
    if not lines:
        raise ValueError(f"shapes file {str(path)!r} has no shapes; write one 'M N K' per line")
    first = [c.strip().lower() for c in lines[0].replace(",", " ").split()]
    if {"m", "n", "k"} <= set(first):
        # A CSV with a header: take the m, n, k columns wherever they are.
        rows = csv.DictReader(lines, skipinitialspace=True)
        rows.fieldnames = [f.strip().lower() for f in rows.fieldnames or []]
        items = [(r["m"], r["n"], r["k"], i + 2) for i, r in enumerate(rows)]
    else:
        items = []
        for i, ln in enumerate(lines):
            parts = ln.replace(",", " ").split()
            if len(parts) != 3:
                raise ValueError(f"{path}: line {i + 1} {ln!r} is not 'M N K' (three integers)")
            items.append((*parts, i + 1))
    out: list[Shape] = []
    for m, n, k, lineno in items:
        try:
            shape = (int(m), int(n), int(k))
        except (TypeError, ValueError):
            raise ValueError(f"{path}: line {lineno} has m={m!r} n={n!r} k={k!r}; sizes must be integers") from None
        if min(shape) < 1:
            raise ValueError(f"{path}: line {lineno} has shape {shape}; sizes must be >= 1")
        out.append(shape)
    return _dedup(out)


def _dedup(shapes: list[Shape]) -> list[Shape]:
    seen: set[Shape] = set()
    return [s for s in shapes if not (s in seen or seen.add(s))]


__all__ = ["PRESETS", "Shape", "llm_shapes", "preset_shapes", "random_shapes", "read_shapes", "square_shapes"]
