"""The tuner's operands: random inputs rotated over enough sets that a small shape is not timed from L2."""

from __future__ import annotations

import math
from typing import Any

from ..measure.device import KNOWN_DEVICES
from .plan import Problem

# Input sets are rotated until they span this many bytes (2x the largest L2 we know, H200's 60 MiB), so a
# small shape is not timed with its operands already in L2.
DEFAULT_ROTATE_BYTES = 2 * max(d.l2_bytes for d in KNOWN_DEVICES.values())
MAX_INPUT_SETS = 512


def _round_up(x: int, to: int = 64) -> int:
    return -(-x // to) * to


class InputSets:
    """Random operands rotated over enough sets to exceed L2 (views into one allocation each for A|B and C).

    Never zeros: power depends on the data, and a zero-filled GEMM draws far less than a real one.
    """

    def __init__(self, p: Problem, device: str, *, rotate_bytes: int, max_sets: int = MAX_INPUT_SETS, seed=0):
        import torch

        dtype = getattr(torch, p.dtype)
        es = torch.empty((), dtype=dtype).element_size()
        a, b, c = _round_up(p.m * p.k), _round_up(p.k * p.n), _round_up(p.m * p.n)  # 128 B aligned views
        self.n_sets = max(1, min(max_sets, math.ceil(rotate_bytes / ((a + b + c) * es))))
        gen = torch.Generator(device=device).manual_seed(seed)
        ab = torch.randn(self.n_sets * (a + b), device=device, dtype=dtype, generator=gen)
        out = torch.empty(self.n_sets * c, device=device, dtype=dtype)
        self.a, self.b, self.c = [], [], []
        for i in range(self.n_sets):
            base = i * (a + b)
            av = ab[base : base + p.m * p.k]
            bv = ab[base + a : base + a + p.k * p.n]
            self.a.append(av.view(p.k, p.m).t() if p.a_trans else av.view(p.m, p.k))
            self.b.append(bv.view(p.n, p.k).t() if p.b_trans else bv.view(p.k, p.n))
            self.c.append(out[i * c : i * c + p.m * p.n].view(p.m, p.n))

    def operands(self, i: int) -> tuple[Any, Any, Any]:
        j = i % self.n_sets
        return self.a[j], self.b[j], self.c[j]


__all__ = ["DEFAULT_ROTATE_BYTES", "MAX_INPUT_SETS", "InputSets"]
