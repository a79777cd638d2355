"""Shared test helpers: float64 reference and per-dtype tolerances (atol grows with K)."""

from __future__ import annotations

import math

import torch

# rtol covers rounding of the output to the dtype; atol covers fp32 accumulation, growing like sqrt(K)
# for random inputs (TF32 on GPU rounds the inputs to 10 mantissa bits: same order as fp16).
RTOL = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float32: 1e-5}
ATOL_PER_SQRT_K = {torch.float16: 1e-3, torch.bfloat16: 8e-3, torch.float32: 1e-5}
TF32_RTOL, TF32_ATOL_PER_SQRT_K = 2e-3, 2e-3


def tolerances(dtype: torch.dtype, k: int, tf32: bool = False) -> tuple[float, float]:
    scale = max(1.0, math.sqrt(k))
    if tf32 and dtype == torch.float32:
        return TF32_RTOL, TF32_ATOL_PER_SQRT_K * scale
    return RTOL[dtype], ATOL_PER_SQRT_K[dtype] * scale


def assert_close_to_reference(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, tf32: bool = False) -> None:
    """Compare against a float64 matmul of the same (already rounded) inputs."""
    ref = torch.matmul(a.double().cpu(), b.double().cpu())
    assert out.shape == ref.shape, f"shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    assert not torch.isnan(out).any(), "NaN in output: an element was left unwritten (poisoned) or overflowed"
    rtol, atol = tolerances(a.dtype, a.shape[-1], tf32)
    torch.testing.assert_close(out.double().cpu(), ref, rtol=rtol, atol=atol)


def randn(*shape: int, dtype: torch.dtype, device: str, gen: torch.Generator | None = None) -> torch.Tensor:
    """Fresh random inputs (never zeros) made in float32 then rounded to dtype."""
    return torch.randn(*shape, generator=gen).to(dtype=dtype, device=device)
