"""TileConfig, the candidate space and validity rules (pure Python)."""

from __future__ import annotations

import pytest

from gpperf_torch.kernels import (
    CANDIDATE_GRID,
    DEFAULT_CONFIG,
    TileConfig,
    candidate_space,
    check_config,
    elem_size,
    is_valid,
)

H100_SMEM, A100_SMEM = 232448, 166912


def test_key_round_trip_and_order():
    cfg = TileConfig(128, 64, 32, group_m=4, split_k=2, num_warps=8, num_stages=5)
    assert cfg.key == "128x64x32_g4_s2_w8_st5"
    assert TileConfig.from_key(cfg.key) == cfg
    assert sorted([cfg, DEFAULT_CONFIG])  # orderable, hashable
    with pytest.raises(ValueError, match="not a TileConfig key"):
        TileConfig.from_key("128x64")


def test_fields_must_be_positive_ints():
    with pytest.raises(ValueError, match="block_m"):
        TileConfig(0, 64, 32)
    with pytest.raises(ValueError, match="num_warps"):
        TileConfig(64, 64, 32, num_warps=2.5)


def test_space_is_a_few_hundred_and_valid_everywhere_it_says():
    space = candidate_space()
    assert 200 <= len(space) <= 600
    assert len(set(space)) == len(space)
    assert all(is_valid(c, elem_size=2) for c in space)
    assert {c.block_m for c in space} >= set(CANDIDATE_GRID["block_m"])
    assert any(c.split_k > 1 for c in space)


def test_device_filter_uses_shared_memory_and_dtype():
    h100_fp16 = candidate_space(elem_size=2, max_shared_memory=H100_SMEM)
    a100_fp16 = candidate_space(elem_size=2, max_shared_memory=A100_SMEM)
    h100_fp32 = candidate_space(elem_size=4, max_shared_memory=H100_SMEM)
    assert len(a100_fp16) < len(h100_fp16) and len(h100_fp32) < len(h100_fp16)
    assert all(c.smem_bytes(2) <= A100_SMEM for c in a100_fp16)


@pytest.mark.parametrize(
    "cfg, match",
    [
        (TileConfig(48, 64, 32), "power of two"),
        (TileConfig(8, 64, 32), "power of two in"),
        (TileConfig(64, 64, 32, num_warps=3), "num_warps"),
        (TileConfig(256, 256, 64, num_warps=4), "registers"),
        (TileConfig(64, 64, 32, split_k=3), "split_k"),
    ],
)
def test_invalid_configs_name_the_reason(cfg, match):
    reason = check_config(cfg, elem_size=2, max_shared_memory=H100_SMEM)
    assert reason is not None and match in reason


def test_shared_memory_rule():
    cfg = TileConfig(256, 128, 64, num_warps=8, num_stages=4)  # 4*(256*64+64*128)*2 = 196608 B
    assert cfg.smem_bytes(2) == 196608
    assert is_valid(cfg, elem_size=2, max_shared_memory=H100_SMEM)
    assert not is_valid(cfg, elem_size=2, max_shared_memory=A100_SMEM)


def test_elem_size_names():
    assert elem_size("torch.bfloat16") == 2 and elem_size("float32") == 4 and elem_size("fp16") == 2
    with pytest.raises(ValueError, match="unsupported dtype"):
        elem_size("int8")
