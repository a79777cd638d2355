"""The Triton kernel against a float64 reference: dtypes x shapes x layouts x tile configs.

On a machine without a GPU these run through the Triton interpreter (bf16 through the interpreter-only
fp32 upcast, since the interpreter's bf16 dot is wrong upstream); the `cuda` cases run in `make gpu-check`.
"""

from __future__ import annotations

import pytest
import torch

from gpperf_torch.kernels import TileConfig, launch

from helpers import DEVICES, assert_close_to_reference, randn, tolerances

DTYPES = [torch.float16, torch.bfloat16, torch.float32]
# Small tiles keep the interpreter fast; the cuda runs also take the big tiles below.
CONFIGS = [
    TileConfig(16, 32, 32, group_m=8, num_warps=4, num_stages=3),
    TileConfig(32, 16, 64, group_m=1, num_warps=2, num_stages=2),
    TileConfig(16, 64, 16, group_m=4, split_k=4, num_warps=4, num_stages=3),
]
BIG_CONFIGS = [
    TileConfig(128, 128, 64, group_m=8, num_warps=8, num_stages=3),
    TileConfig(64, 256, 32, group_m=8, num_warps=8, num_stages=4),
    TileConfig(64, 64, 128, group_m=8, split_k=8, num_warps=4, num_stages=3),
]
SHAPES = [  # (M, N, K)
    (1, 4096, 128),
    (4096, 1, 64),
    (100, 37, 53),
    (1, 1, 1),
    (33, 65, 129),
    (64, 64, 0),
    (0, 16, 32),
    (16, 0, 32),
]


def _poisoned(m: int, n: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    return torch.full((m, n), float("nan"), dtype=dtype, device=device)


def _operands(m, n, k, dtype, device, layout):
    if layout == "nn":
        a, b = randn(m, k, dtype=dtype, device=device), randn(k, n, dtype=dtype, device=device)
    elif layout == "tt":  # both transposed views: column-major storage
        a = randn(k, m, dtype=dtype, device=device).t()
        b = randn(n, k, dtype=dtype, device=device).t()
    elif layout == "sliced":  # non-unit strides everywhere (every other column/row)
        a = randn(m, 2 * k, dtype=dtype, device=device)[:, ::2]
        b = randn(2 * k, n, dtype=dtype, device=device)[::2]
    else:
        raise AssertionError(layout)
    return a, b


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_shapes(device, dtype, shape):
    m, n, k = shape
    # Wide tiles along the long side keep the interpreter's program count small.
    cfg = TileConfig(128 if m >= 1024 else 16, 128 if n >= 1024 else 32, 64)
    for layout in ("nn", "tt"):
        a, b = _operands(m, n, k, dtype, device, layout)
        out = launch(a, b, _poisoned(m, n, dtype, device), cfg)
        assert_close_to_reference(out, a, b)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
@pytest.mark.parametrize("layout", ["nn", "tt", "sliced"])
def test_configs_and_layouts(device, dtype, cfg, layout):
    m, n, k = 70, 90, 200
    a, b = _operands(m, n, k, dtype, device, layout)
    out = launch(a, b, _poisoned(m, n, dtype, device), cfg)
    assert_close_to_reference(out, a, b)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cfg", BIG_CONFIGS, ids=str)
@pytest.mark.parametrize("shape", [(4096, 4096, 4096), (1, 11008, 4096), (777, 1023, 2049)], ids=str)
def test_big_tiles_cuda(dtype, cfg, shape):
    m, n, k = shape
    a, b = _operands(m, n, k, dtype, "cuda", "nn")
    out = launch(a, b, _poisoned(m, n, dtype, "cuda"), cfg, allow_tf32=False)
    assert_close_to_reference(out, a, b)


# The alignment classes of issue 27 (kernels/align.py): K % 16 in {8, 4, 2}, N % 16 == 8 and odd N, in nn.Linear's
# layout (B transposed), plain nn and A transposed, on the GPU with the compiled vector loads (cp.async).
UNALIGNED_SHAPES = [(512, 1024, 4104), (512, 1024, 4100), (512, 1024, 4098), (512, 1000, 4096), (512, 4097, 1024),
                    (4104, 512, 1024), (197 * 8, 2304, 768)]  # fmt: skip


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cfg", BIG_CONFIGS[:2] + [TileConfig(64, 128, 32, num_warps=4, num_stages=3)], ids=str)
@pytest.mark.parametrize("shape", UNALIGNED_SHAPES, ids=str)
@pytest.mark.parametrize("layout", ["nt", "nn", "tn"])
def test_unaligned_classes_cuda(dtype, cfg, shape, layout):
    m, n, k = shape
    a = randn(k, m, dtype=dtype, device="cuda").t() if layout == "tn" else randn(m, k, dtype=dtype, device="cuda")
    b = randn(n, k, dtype=dtype, device="cuda").t() if layout == "nt" else randn(k, n, dtype=dtype, device="cuda")
    out = launch(a, b, _poisoned(m, n, dtype, "cuda"), cfg, allow_tf32=False)
    assert_close_to_reference(out, a, b)


@pytest.mark.cuda
def test_tf32_cuda():
    a, b = _operands(256, 256, 1024, torch.float32, "cuda", "nn")
    out = launch(a, b, cfg=TileConfig(64, 64, 32), allow_tf32=True)
    assert_close_to_reference(out, a, b, tf32=True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_batched(device, dtype):
    a = randn(3, 20, 70, dtype=dtype, device=device)
    b = randn(70, 3, 24, dtype=dtype, device=device).permute(1, 0, 2)  # non-contiguous batch
    out = launch(a, b, cfg=TileConfig(16, 32, 32, split_k=2))
    for i in range(3):
        assert_close_to_reference(out[i], a[i], b[i])
    bcast = launch(a, b[:1].expand(3, 70, 24), cfg=CONFIGS[0])  # broadcast batch: stride 0
    for i in range(3):
        assert_close_to_reference(bcast[i], a[i], b[0])


@pytest.mark.parametrize("device", DEVICES)
def test_split_k_is_deterministic(device):
    a = randn(48, 1000, dtype=torch.float32, device=device)
    b = randn(1000, 40, dtype=torch.float32, device=device)
    cfg = TileConfig(16, 32, 32, split_k=8)
    first = launch(a, b, cfg=cfg)
    for _ in range(2):
        assert torch.equal(launch(a, b, cfg=cfg), first), "split-K must reduce in a fixed order"
    assert_close_to_reference(first, a, b)


def test_k_zero_gives_zeros_and_empty_shapes():
    a, b = torch.empty(5, 0), torch.empty(0, 7)
    out = launch(a, b, _poisoned(5, 7, torch.float32, "cpu"))
    assert torch.equal(out, torch.zeros(5, 7))
    assert launch(torch.empty(0, 3), torch.randn(3, 4)).shape == (0, 4)


@pytest.mark.parametrize(
    "a, b, err, match",
    [
        (torch.randn(3, 4), torch.randn(5, 6), ValueError, r"a\(3, 4\) @ b\(5, 6\)"),
        (torch.randn(3, 4), torch.randn(4, 5, dtype=torch.float16), TypeError, "float32.*float16"),
        (torch.ones(3, 4, dtype=torch.int32), torch.ones(4, 5, dtype=torch.int32), TypeError, "int32"),
        (torch.randn(4), torch.randn(4, 5), ValueError, "2-D or 3-D"),
    ],
)
def test_launch_rejects_bad_input(a, b, err, match):
    with pytest.raises(err, match=match):
        launch(a, b)


def test_invalid_config_is_a_clear_error():
    with pytest.raises(ValueError, match="shared memory"):
        launch(
            torch.randn(8, 8),
            torch.randn(8, 8),
            cfg=TileConfig(256, 256, 128, num_warps=8, num_stages=5),
            max_shared_memory=232448,
        )
    with pytest.raises(ValueError, match="power of two"):
        launch(torch.randn(8, 8), torch.randn(8, 8), cfg=TileConfig(48, 32, 32))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("split_k", [1, 4])
def test_bias_in_the_epilogue(device, dtype, split_k):
    a = randn(2, 33, 70, dtype=dtype, device=device)
    b = randn(2, 45, 70, dtype=dtype, device=device).transpose(-1, -2)  # Linear's layout
    bias = randn(45, dtype=dtype, device=device)
    out = torch.full((2, 33, 45), float("nan"), dtype=dtype, device=device)
    launch(a, b, out, TileConfig(16, 32, 32, split_k=split_k), bias=bias)
    ref = a.double().cpu() @ b.double().cpu() + bias.double().cpu()
    rtol, atol = tolerances(dtype, 70)
    torch.testing.assert_close(out.double().cpu(), ref, rtol=rtol, atol=atol + rtol * 4)
    with pytest.raises(ValueError, match="bias must be a floating 1-D tensor of 45"):
        launch(a, b, cfg=TileConfig(16, 32, 32), bias=bias[:10])
