"""features.py: shapes, finiteness, the torch row, and shape_features == table_features row by row."""

from __future__ import annotations

import numpy as np
import pytest

from gpperf_torch.kernels.configs import TileConfig, candidate_space
from gpperf_torch.measure import dataset
from gpperf_torch.measure.device import KNOWN_DEVICES
from gpperf_torch.predictor.features import (
    CONFIG_FIELDS,
    FEATURE_NAMES,
    N_FEATURES,
    config_matrix,
    feature_index,
    shape_features,
    table_features,
)

H100 = KNOWN_DEVICES["h100"]


def _rows():
    shapes = [(1, 4096, 4096, "float16", 0, 0, 0), (4096, 4096, 4096, "bfloat16", 1, 0, 0),
              (333, 77, 9000, "float32", 0, 1, 1), (8, 129792, 4096, "float32", 1, 1, 0)]  # fmt: skip
    cfgs = [TileConfig(128, 64, 32), TileConfig(16, 32, 128, split_k=4, num_warps=2, num_stages=2), None]
    rows = []
    for m, n, k, dt, at, bt, tf in shapes:
        for c in cfgs:
            fields = dict.fromkeys(CONFIG_FIELDS, 0) if c is None else c.as_dict()
            rows.append(dict(gpu="H100", m=m, n=n, k=k, dtype=dt, a_trans=at, b_trans=bt, tf32=tf,
                             backend="torch" if c is None else "triton", config="" if c is None else c.key,
                             status="ok", time_ms=1.0, **fields))  # fmt: skip
    return rows, shapes, cfgs


def test_shape_and_finite():
    cfgs = candidate_space() + [None]
    X = shape_features(4096, 1024, 512, "float16", False, True, False, config_matrix(cfgs), H100)
    assert X.shape == (len(cfgs), N_FEATURES) == (len(cfgs), len(FEATURE_NAMES))
    assert X.dtype == np.float32 and np.isfinite(X).all()
    # torch.matmul row: is_torch set, no made-up tile
    assert X[-1, feature_index("is_torch")] == 1 and X[-1, feature_index("block_m")] == 0
    assert X[-1, feature_index("smem_kib")] == 0 and X[0, feature_index("smem_kib")] > 0


def test_known_values():
    cfg = TileConfig(128, 64, 32, group_m=8, split_k=2, num_warps=4, num_stages=3)
    x = shape_features(1000, 512, 300, "float32", 1, 0, 1, config_matrix([cfg]), H100)[0]
    f = {name: x[i] for i, name in enumerate(FEATURE_NAMES)}
    assert f["log2_m"] == pytest.approx(np.log2(1000))
    assert f["log2_tiles"] == pytest.approx(np.log2(8 * 8 * 2))  # ceil(1000/128) * ceil(512/64) * split 2
    assert f["pad_m"] == pytest.approx(1 - 1000 / 1024)
    assert f["pad_k"] == pytest.approx(1 - 300 / 320)  # K per split 150 -> 5 iterations of 32: 160 per split
    assert f["log2_k_iters"] == pytest.approx(np.log2(5))
    assert f["smem_kib"] == pytest.approx(3 * (128 * 32 + 32 * 64) * 4 / 1024)
    assert f["wave_efficiency"] == pytest.approx(128 / 132)
    assert f["dev_sm_count"] == 132 and f["dev_mem_bw_gbs"] == pytest.approx(3350)
    assert f["mma"] == 1 and f["tf32_transposed_ops"] == 2
    # the device comes from the descriptor, not from constants
    x2 = shape_features(1000, 512, 300, "float32", 1, 0, 1, config_matrix([cfg]), KNOWN_DEVICES["a100"])[0]
    assert x2[feature_index("dev_sm_count")] == 108


def test_table_and_shape_features_agree():
    rows, shapes, cfgs = _rows()
    table = dataset.from_rows(rows)
    X = table_features(table)
    assert X.shape == (len(rows), N_FEATURES) and np.isfinite(X).all()
    i = 0
    for m, n, k, dt, at, bt, tf in shapes:
        Xs = shape_features(m, n, k, dt, at, bt, tf, config_matrix(cfgs), H100)
        np.testing.assert_array_equal(Xs, X[i : i + len(cfgs)])
        i += len(cfgs)


def test_bad_inputs():
    with pytest.raises(TypeError, match="TileConfig or None"):
        config_matrix(["128x64x32"])
    with pytest.raises(ValueError, match="positive sizes"):
        shape_features(0, 1, 1, "float16", 0, 0, 0, config_matrix([None]), H100)
    bad = config_matrix([TileConfig(64, 64, 32)])
    bad[0, 4] = 0
    with pytest.raises(ValueError, match="zero field"):
        shape_features(64, 64, 64, "float16", 0, 0, 0, bad, H100)
    with pytest.raises(ValueError, match="unsupported dtype"):
        shape_features(64, 64, 64, "int8", 0, 0, 0, config_matrix([None]), H100)


@pytest.mark.parametrize(
    "dtype, a_trans, b_trans, tf32, cfg, device, kind",
    [
        ("float16", 0, 0, 0, TileConfig(128, 128, 32, num_warps=4), "h100", 3),  # wgmma
        ("bfloat16", 1, 0, 0, TileConfig(64, 64, 32, num_warps=8), "h100", 3),  # 16-bit: any layout
        ("float16", 0, 0, 0, TileConfig(128, 64, 32, num_warps=2), "h100", 2),  # 2 warps: no warpgroup
        ("float16", 0, 0, 0, TileConfig(32, 64, 32, num_warps=4), "h100", 2),  # block_m < 64
        ("float32", 0, 1, 1, TileConfig(128, 128, 32, num_warps=4), "h100", 3),  # TF32, both K-major
        ("float32", 1, 1, 1, TileConfig(128, 128, 32, num_warps=4), "h100", 2),  # TF32, A not K-major
        ("float32", 0, 0, 1, TileConfig(128, 128, 32, num_warps=4), "h100", 2),  # TF32, B not K-major
        ("float32", 0, 1, 0, TileConfig(128, 128, 32, num_warps=4), "h100", 0),  # fp32 without TF32: FMA
        ("float16", 0, 0, 0, TileConfig(128, 128, 32, num_warps=4), "a100", 2),  # sm80 has no wgmma
    ],
)
def test_mma_kind(dtype, a_trans, b_trans, tf32, cfg, device, kind):
    dev = KNOWN_DEVICES[device]
    x = shape_features(512, 512, 512, dtype, a_trans, b_trans, tf32, config_matrix([cfg, None]), dev)
    assert x[0, feature_index("mma_kind")] == kind
    assert x[1, feature_index("mma_kind")] == 0  # torch.matmul row: no config, no made-up instruction
    assert x[0, feature_index("dev_capability")] == pytest.approx(dev.capability[0] + dev.capability[1] / 10)
    # the table path computes the same value
    fields = cfg.as_dict()
    row = dict(gpu=dev.name, m=512, n=512, k=512, dtype=dtype, a_trans=a_trans, b_trans=b_trans, tf32=tf32,
               backend="triton", config=cfg.key, status="ok", time_ms=1.0, **fields)  # fmt: skip
    assert table_features(dataset.from_rows([row]))[0, feature_index("mma_kind")] == kind


def test_leading_dimension_alignment():
    """a_ld_align / b_ld_align: log2 of the leading dimension's alignment in bytes, capped at 16 B."""
    from gpperf_torch.measure.device import known_device
    from gpperf_torch.predictor.features import config_matrix, feature_index, shape_features

    dev = known_device("h100")
    cfg = config_matrix([None])
    ia, ib = feature_index("a_ld_align"), feature_index("b_ld_align")
    x = shape_features(50265, 512, 8192, "float16", 1, 0, 0, cfg, dev)[0]  # A transposed: ld = M, odd
    assert x[ia] == 1.0 and x[ib] == 4.0  # 2 B (one fp16 element), 512 x 2 B >= 16 B
    x = shape_features(64, 36, 4, "float32", 0, 1, 0, cfg, dev)[0]  # A: ld = K = 4 -> 16 B; B^T: ld = K
    assert x[ia] == 4.0 and x[ib] == 4.0
    x = shape_features(64, 6, 3, "float16", 0, 0, 0, cfg, dev)[0]  # A: K=3 -> 2 B; B: N=6 -> 4 B
    assert x[ia] == 1.0 and x[ib] == 2.0
