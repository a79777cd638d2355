"""Shared test helpers: float64 reference and per-dtype tolerances (atol grows with K)."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch

from gpperf_torch import kernels
from gpperf_torch.kernels import TileConfig
from gpperf_torch.measure.dataset import COLUMNS, KEY_COLUMNS

# Where kernel and op tests run: the Triton interpreter on the CPU, and a GPU when there is one.
DEVICES = [
    pytest.param(
        "cpu",
        id="interp",
        marks=pytest.mark.skipif(not kernels.interpreting(), reason="CPU runs need TRITON_INTERPRET=1"),
    ),
    pytest.param("cuda", id="cuda", marks=pytest.mark.cuda),
]

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


# A synthetic tuning table with a known trade-off, for tests that need a small trained model: FAST is quickest at
# the most power, FRUGAL 3% slower at much less power (so `energy` and `balanced` pick it), SLOW worse at both,
# torch.matmul 20% slower than FAST. Small tiles, so the interpreter runs them quickly.
FAST = TileConfig(32, 32, 32, num_warps=4, num_stages=3)
FRUGAL = TileConfig(16, 32, 32, num_warps=2, num_stages=3)
SLOW = TileConfig(16, 16, 64, num_warps=1, num_stages=2)
POWER = {FAST.key: 400.0, FRUGAL.key: 250.0, SLOW.key: 300.0, "torch": 380.0}


def synthetic_rows(with_energy: bool, n_shapes: int = 40, first: tuple = ()) -> list[dict]:
    """Rows in `dataset.from_rows` form: n_shapes fp16 shapes (B transposed; `first` then seeded random ones)
    x the four candidates."""
    rng = np.random.default_rng(0)
    shapes = list(first) + [
        tuple(int(x) for x in np.exp(rng.uniform(np.log(64), np.log(4096), 3))) for _ in range(n_shapes - len(first))
    ]
    rows = []
    for m, n, k in shapes:
        flops_ms = 2 * m * n * k / 5e11
        for key, factor in ((FAST.key, 1.0), (FRUGAL.key, 1.03), (SLOW.key, 1.5), ("torch", 1.2)):
            t = flops_ms * factor + 0.002
            cfg = TileConfig.from_key(key).as_dict() if key != "torch" else {}
            row = {
                "gpu": "NVIDIA H100 80GB HBM3",
                "m": m,
                "n": n,
                "k": k,
                "dtype": "float16",
                "a_trans": 0,
                "b_trans": 1,
                "tf32": 0,
                "backend": "torch" if key == "torch" else "triton",
                "config": "" if key == "torch" else key,
                "status": "ok",
                "time_ms": t,
                "source": "test",
                **cfg,
            }
            if with_energy:
                row["power_w"] = POWER[key]
                row["energy_j"] = POWER[key] * t / 1e3
            rows.append(row)
    return rows


def read_rows(path):
    """A tuning CSV of this version's layout as dicts (asserting the header and every row's width)."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == list(COLUMNS)
    assert all(len(r) == len(COLUMNS) for r in rows[1:])
    return [dict(zip(COLUMNS, r, strict=True)) for r in rows[1:]]


def keys(rows):
    """The row keys (dataset.KEY_COLUMNS) of read_rows' dicts, in file order."""
    return [tuple(r[c] for c in KEY_COLUMNS) for r in rows]


def export_synthetic_model(folder, *, seed: int = 0, energy: bool = False):
    """A small model trained on synthetic_rows, exported to `folder` (model.onnx + model.json); needs sklearn."""
    pytest.importorskip("sklearn", reason="training a test model needs the [train] extra")
    from gpperf_torch.measure import dataset
    from gpperf_torch.predictor import train

    fitted = train.fit(dataset.from_rows(synthetic_rows(energy)), seed=seed, n_jobs=1, n_estimators=20)
    train.export(fitted, folder, {"provenance": "synthetic test data"})
    return folder
