"""EVEN_K: the kernel drops its K masks when K % BLOCK_K == 0; both paths against a float64 reference.

The condition is exact with split-K too: each slice spans a whole number of BLOCK_K steps (k_per_split is a
multiple of BLOCK_K), so a K divisible by BLOCK_K leaves every step full even when the last slice is short or
empty. Outputs start poisoned (NaN) so an unwritten element fails.
"""

from __future__ import annotations

import pytest
import torch

from gpperf_torch.kernels import TileConfig, launch
from gpperf_torch.kernels import matmul as matmul_mod

from helpers import DEVICES, LaunchRecorder, assert_close_to_reference, randn

BK = 32
CASES = [  # (K, split_k, expected EVEN_K)
    (4 * BK, 1, True),
    (4 * BK, 4, True),  # one BLOCK_K step per slice
    (5 * BK, 4, True),  # slices of 2, 2, 1 steps and one empty slice: still no partial step
    (3 * BK, 2, True),  # K divisible by BLOCK_K but not by BLOCK_K * SPLIT_K
    (4 * BK + 16, 1, False),  # divisible by 16, not by BLOCK_K
    (4 * BK + 16, 4, False),
    (101, 1, False),
    (101, 2, False),
    (7, 1, False),  # shorter than one step
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize(("k", "split_k", "even"), CASES, ids=lambda v: str(v))
def test_even_k_paths_match_reference(device, dtype, k, split_k, even, monkeypatch):
    rec = LaunchRecorder(matmul_mod._MATMUL)
    monkeypatch.setattr(matmul_mod, "_MATMUL", rec)
    m, n = 20, 24
    a, b = randn(m, k, dtype=dtype, device=device), randn(k, n, dtype=dtype, device=device)
    out = torch.full((m, n), float("nan"), dtype=dtype, device=device)
    launch(a, b, out, TileConfig(16, 16, BK, split_k=split_k, num_warps=1, num_stages=2), allow_tf32=False)
    assert rec.calls[0][1]["EVEN_K"] is even
    assert_close_to_reference(out, a, b)


@pytest.mark.parametrize("device", DEVICES)
def test_even_k_transposed_and_batched(device):
    a = randn(2, 3 * BK, 20, dtype=torch.float32, device=device).transpose(1, 2)  # (2, 20, 96), K-major
    b = randn(2, 24, 3 * BK, dtype=torch.float32, device=device).transpose(1, 2)
    out = launch(a, b, cfg=TileConfig(16, 16, BK, split_k=2, num_warps=1, num_stages=2), allow_tf32=False)
    for i in range(2):
        assert_close_to_reference(out[i], a[i], b[i])
