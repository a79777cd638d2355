"""The single feature function: (shape, dtype, layout, config, device) -> one row of float32 features.

Training (`table_features`, one row per measurement) and selection (`shape_features`, one shape against many
candidate configs) both call `_features`, one vectorized numpy implementation over broadcastable arrays, so
the two can never drift apart. Bump FEATURE_SCHEMA_VERSION whenever a feature's meaning or order changes:
models record the version they were trained with and the predictor refuses a mismatch.

No scikit-learn here (the op imports this module at run time).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from ..kernels.configs import CONFIG_FIELDS, TileConfig, elem_size
from ..measure.device import DeviceInfo, descriptor_from_fields, known_device

FEATURE_SCHEMA_VERSION = 3  # v2: mma_kind, dev_capability; v3: a_ld_align, b_ld_align

# Column order of a config matrix: CONFIG_FIELDS (TileConfig's fields); a row of zeros is torch.matmul (cuBLAS).

FEATURE_NAMES = (
    # --- the problem ------------------------------------------------------------------------------
    "log2_m",
    "log2_n",
    "log2_k",
    "dtype_bytes",
    "is_bf16",
    "tf32",
    "mma",  # tensor cores usable: 16-bit inputs, or fp32 with TF32 allowed (fp32 otherwise runs on FMA units)
    "a_trans",
    "b_trans",
    # Operands that are not K-contiguous on the TF32 tensor-core path (A row-major and B transposed are): the
    # hardware transposes only 16-bit tiles on load, so each such operand costs an extra shuffle.
    "tf32_transposed_ops",
    "log2_ai_gemm",  # flops per byte of the whole GEMM (each operand read once)
    "log2_t_compute_ideal",  # 2MNK / (SMs x clock): a device-relative size, lets models transfer across GPUs
    "log2_t_memory_ideal",  # minimal bytes / bandwidth
    # --- the config (zeros for torch.matmul) -------------------------------------------------------
    "is_torch",
    *CONFIG_FIELDS,  # block_m, block_n, block_k, group_m, split_k, num_warps, num_stages
    # --- the config on this problem and device ---------------------------------------------------
    "log2_tiles",  # output tiles x split-K = programs launched
    "log2_waves",  # programs / SMs
    "wave_efficiency",  # programs / (SMs x ceil(waves)): how full the waves are, last one included
    "pad_m",  # share of each padded dimension that is wasted work
    "pad_n",
    "pad_k",
    "log2_k_iters",  # main-loop iterations per program (per split)
    "ai_tile",  # flops per byte loaded per K step of one tile
    "smem_kib",  # shared memory per block
    "smem_frac",  # of the device's per-block maximum
    "blocks_per_sm_smem",  # programs one SM can hold by shared memory
    "acc_regs",  # fp32 accumulator registers per thread
    "log2_traffic_time",  # global traffic of the tiling (A re-read per N tile, B per M tile) / bandwidth
    "log2_t_compute_tiled",  # waves x padded work of one program / clock
    # Which tensor-core instruction Triton can use for this config: 0 none (fp32 without TF32 runs on FMA
    # units), 2 mma.sync (Ampere-style, per warp), 3 wgmma (Hopper, per warpgroup of 4 warps). Triton emits
    # wgmma only for num_warps % 4 == 0 and block_m % 64 == 0, and wgmma reads TF32 operands only K-major from
    # shared memory (16-bit ones either way). On the public H100 data this is why TF32 with a transposed operand
    # prefers a 2-warp tile (mma.sync) while K-major TF32 prefers 128x128 tiles of 4 warps.
    "mma_kind",
    # --- the device ---------------------------------------------------------------------------------
    "dev_sm_count",
    "dev_smem_kib",
    "dev_sm_clock_mhz",
    "dev_mem_clock_mhz",
    "dev_mem_bw_gbs",
    "dev_capability",  # compute capability as major + minor / 10 (9.0 for H100)
    # --- the operands' alignment ---------------------------------------------------------------------
    # log2 of the alignment in bytes of each operand's leading dimension (A: K, or M when transposed; B: N, or K
    # when transposed), capped at 16 B: 16-byte vector loads (and TMA) need it, and Triton falls back to narrower
    # loads when it cannot prove it. Real-model shapes (vocabularies of 50257 or 30522 rows) are often unaligned,
    # random shapes rarely; on them a transposed operand with an odd leading dimension ran Triton 3-6x slower.
    "a_ld_align",
    "b_ld_align",
)
ALIGN_CAP_BYTES = 16
N_FEATURES = len(FEATURE_NAMES)
_IDX = {name: i for i, name in enumerate(FEATURE_NAMES)}
# Columns that describe a Triton config: zeroed on torch.matmul rows so that they carry no made-up tile.
CONFIG_COLUMNS = slice(_IDX["is_torch"], _IDX["mma_kind"] + 1)  # every column that depends on the config
_CONFIG_COLS = slice(_IDX["block_m"], _IDX["mma_kind"] + 1)


def config_matrix(cfgs: Sequence[TileConfig | None]) -> np.ndarray:
    """int64 (n, 7) of the CONFIG_FIELDS of each config; None (torch.matmul) is a row of zeros."""
    out = np.zeros((len(cfgs), len(CONFIG_FIELDS)), dtype=np.int64)
    for i, cfg in enumerate(cfgs):
        if cfg is None:
            continue
        if not isinstance(cfg, TileConfig):
            raise TypeError(f"config_matrix takes TileConfig or None (torch.matmul), got {type(cfg).__name__}")
        out[i] = (
            cfg.block_m,
            cfg.block_n,
            cfg.block_k,
            cfg.group_m,
            cfg.split_k,
            cfg.num_warps,
            cfg.num_stages,
        )
    return out


def _dtype_info(dtype: object) -> tuple[int, int]:
    name = str(dtype).replace("torch.", "")
    return elem_size(name), int(name in ("bfloat16", "bf16"))


def _device_values(device: DeviceInfo) -> tuple[float, float, float, float, float, float]:
    major, minor = device.capability
    return (
        float(device.sm_count),
        float(device.max_shared_memory),
        float(device.sm_clock_mhz),
        float(device.mem_clock_mhz),
        float(device.mem_bandwidth_gbs),
        float(major) + float(minor) / 10.0,
    )


class _ConfigPart(NamedTuple):
    """What depends on the configs alone: computed once per config matrix and cached for selection."""

    static: np.ndarray  # (8, n): is_torch and the seven config fields, as features
    is_torch: np.ndarray  # (n,) bool
    any_torch: bool
    dims: np.ndarray  # (3, n): the tile along M, N and K (block_k x split_k: K per program's full loop)
    split_k: np.ndarray
    work2: np.ndarray  # 2 x block_m x block_n x block_k: flops of one main-loop step
    ai2: np.ndarray  # flops per element loaded in one main-loop step
    stage_elems: np.ndarray  # elements of shared memory per block (all stages)
    acc_regs: np.ndarray
    split_mask: np.ndarray  # split_k > 1
    split_out: np.ndarray  # bytes per output element written and re-read by the split-K reduction
    wgmma_kind: np.ndarray  # mma_kind where the problem allows wgmma: 3 if num_warps % 4 == 0 and block_m % 64 == 0


def _config_part(cfg: np.ndarray) -> _ConfigPart:
    bad = np.flatnonzero(np.any(cfg == 0, axis=1) & (cfg[:, 0] != 0))
    if len(bad):
        raise ValueError(
            f"config row {int(bad[0])} = {cfg[bad[0]].tolist()} has a zero field: a Triton config needs every"
            f" field of {CONFIG_FIELDS} >= 1 (only torch.matmul rows are all zeros)"
        )
    cfg_t = np.asarray(cfg, dtype=np.float64).T
    is_torch = cfg_t[0] == 0
    # torch.matmul rows (all zeros) compute with a stand-in tile of 1s so that the arithmetic stays finite;
    # _features zeroes their config columns. Triton rows have no zero field (the callers check).
    bm, bn, bk, _gm, sk, nw, ns = np.maximum(cfg_t, 1.0)
    tile_in = bm * bk + bk * bn
    work2 = 2.0 * bm * bn * bk
    return _ConfigPart(
        static=np.vstack([is_torch[None, :], cfg_t]),
        is_torch=is_torch,
        any_torch=bool(is_torch.any()),
        dims=np.stack([bm, bn, bk * sk]),
        split_k=sk,
        work2=work2,
        ai2=work2 / tile_in,
        stage_elems=ns * tile_in,
        acc_regs=bm * bn / (nw * 32.0),
        split_mask=sk > 1,
        # Split-K writes fp32 partial sums that a second pass reads back: 4 B out + 4 B in per split.
        split_out=8.0 * sk,
        wgmma_kind=np.where((np.mod(nw, 4) == 0) & (np.mod(bm, 64) == 0), 3.0, 2.0),
    )


_PART_CACHE: dict[bytes, _ConfigPart] = {}
_PART_CACHE_MAX = 64


def _cached_config_part(cfg: np.ndarray) -> _ConfigPart:
    key = cfg.tobytes() + bytes(str(cfg.shape), "ascii")
    part = _PART_CACHE.get(key)
    if part is None:
        if len(_PART_CACHE) >= _PART_CACHE_MAX:  # a handful of candidate sets per process: no LRU needed
            _PART_CACHE.clear()
        part = _PART_CACHE[key] = _config_part(cfg)
    return part


def _ld_align_scalar(ld: float, esize: float) -> float:
    nbytes = int(ld) * int(esize)
    return float(min(nbytes & -nbytes, ALIGN_CAP_BYTES).bit_length() - 1)


def _ld_align(ld: np.ndarray, esize: np.ndarray) -> np.ndarray:
    """log2 of the power-of-two alignment (bytes, capped at ALIGN_CAP_BYTES) of leading dimensions `ld`."""
    nbytes = np.asarray(ld, dtype=np.int64) * np.asarray(esize, dtype=np.int64)
    return np.log2(np.minimum(nbytes & -nbytes, ALIGN_CAP_BYTES).astype(np.float64))


def _features(m, n, k, esize, is_bf16, tf32, a_trans, b_trans, part: _ConfigPart, dev, n_rows: int):
    """The feature matrix (float32, n_rows x N_FEATURES).

    Shape inputs and device values are Python scalars (one shape, selection) or (n_rows,) arrays (a table);
    both broadcast against the config part. Built feature-major and transposed once at the end: on the
    selection hot path the cost is the number of numpy calls, so they are kept few.
    """
    sm, smem_dev, clk, mclk, bw, cap = dev
    out = np.empty((N_FEATURES, n_rows), dtype=np.float64)
    mn = m * n
    flops = 2.0 * mn * k
    min_bytes = esize * (m * k + k * n + mn)
    if np.ndim(m) == 0 and np.ndim(sm) == 0:
        # One shape (selection): the problem and device columns are constants, written in one call each.
        # mma_kind's problem part (see FEATURE_NAMES): whether tensor cores, and wgmma, are possible at all.
        tensor = esize < 4 or bool(tf32)
        wgmma_possible = cap >= 9.0 and (esize < 4 or (a_trans == 0 and b_trans == 1))
        logs = np.log2(np.array([m, n, k, flops / min_bytes, flops / (sm * clk), min_bytes / (bw * 1e3)]))
        out[0:13] = np.array([
            logs[0], logs[1], logs[2], esize, is_bf16, tf32, float(tensor), a_trans, b_trans,
            float(esize == 4 and bool(tf32)) * (a_trans + 1 - b_trans), logs[3], logs[4], logs[5],
        ])[:, None]  # fmt: skip
        out[36:42] = np.array([sm, smem_dev / 1024.0, clk, mclk, bw, cap])[:, None]
        out[42] = _ld_align_scalar(m if a_trans else k, esize)
        out[43] = _ld_align_scalar(k if b_trans else n, esize)
    else:
        out[0] = np.log2(m)
        out[1] = np.log2(n)
        out[2] = np.log2(k)
        out[3] = esize
        out[4] = is_bf16
        out[5] = tf32
        tensor = np.logical_or(esize < 4, tf32)
        wgmma_possible = (cap >= 9.0) & ((esize < 4) | ((np.asarray(a_trans) == 0) & (np.asarray(b_trans) == 1)))
        out[6] = tensor
        out[7] = a_trans
        out[8] = b_trans
        out[9] = np.logical_and(esize == 4, tf32) * (a_trans + 1 - b_trans)
        out[10] = np.log2(flops / min_bytes)
        # Device-relative sizes (flops per SM per MHz, bytes per GB/s): they let a model transfer across GPUs.
        out[11] = np.log2(flops / (sm * clk))
        out[12] = np.log2(min_bytes / (bw * 1e3))
        out[36] = sm
        out[37] = smem_dev / 1024.0
        out[38] = clk
        out[39] = mclk
        out[40] = bw
        out[41] = cap
        out[42] = _ld_align(np.where(np.asarray(a_trans) != 0, m, k), esize)
        out[43] = _ld_align(np.where(np.asarray(b_trans) != 0, k, n), esize)
    out[13:21] = part.static

    sizes = np.array([[m], [n], [k]]) if np.ndim(m) == 0 else np.stack([m, n, k])
    tiles = np.ceil(sizes / part.dims)  # programs along M and N; main-loop iterations along K
    out[24:27] = 1.0 - sizes / (tiles * part.dims)  # padding waste along M, N, K
    programs = tiles[0] * tiles[1] * part.split_k
    waves = np.ceil(programs / sm)
    out[21] = np.log2(programs)
    out[22] = out[21] - np.log2(sm)
    out[23] = programs / (waves * sm)
    out[27] = np.log2(tiles[2])
    out[28] = part.ai2 / esize
    smem = part.stage_elems * esize
    out[29] = smem / 1024.0
    out[30] = smem / smem_dev
    out[31] = np.floor(smem_dev / smem)
    out[32] = part.acc_regs
    out_bytes = np.where(part.split_mask, part.split_out, esize) * mn
    traffic = esize * (m * k * tiles[1] + k * n * tiles[0]) + out_bytes
    out[33] = np.log2(traffic / (bw * 1e3))
    out[34] = np.log2(waves * part.work2 * tiles[2] / clk)
    if np.ndim(tensor) == 0:  # one shape: the problem picks one of three rows
        out[35] = (part.wgmma_kind if wgmma_possible else 2.0) if tensor else 0.0
    else:
        out[35] = np.where(tensor, np.where(wgmma_possible, part.wgmma_kind, 2.0), 0.0)
    if part.any_torch:
        out[_CONFIG_COLS, part.is_torch] = 0.0
    return np.ascontiguousarray(out.T, dtype=np.float32)


def shape_features(
    m: int,
    n: int,
    k: int,
    dtype: object,
    a_trans: bool | int,
    b_trans: bool | int,
    tf32: bool | int,
    cfg_matrix: np.ndarray,
    device: DeviceInfo,
) -> np.ndarray:
    """float32 (n_cfg, N_FEATURES): one GEMM against every row of `cfg_matrix` (see config_matrix)."""
    if min(m, n, k) < 1:
        raise ValueError(f"shape_features needs positive sizes, got m={m}, n={n}, k={k}")
    cfg = np.asarray(cfg_matrix)
    if cfg.ndim != 2 or cfg.shape[1] != len(CONFIG_FIELDS):
        raise ValueError(f"cfg_matrix must be (n, {len(CONFIG_FIELDS)}) from config_matrix(), got {cfg.shape}")
    esize, is_bf16 = _dtype_info(dtype)
    return _features(
        float(m), float(n), float(k), float(esize), is_bf16, int(bool(tf32)), int(bool(a_trans)),
        int(bool(b_trans)), _cached_config_part(cfg), _device_values(device), cfg.shape[0],
    )  # fmt: skip


DeviceLookup = Callable[[str], DeviceInfo]


def table_device(table, gpu: str) -> DeviceInfo:
    """Descriptor of GPU `gpu` in a dataset.Table: the known table's entry (device.KNOWN_DEVICES, which the
    public data needs: it names only 'H100'/'A100'), else one built from the device fields its rows carry."""
    try:
        return known_device(gpu)
    except ValueError:
        if not hasattr(table, "device_fields"):
            raise
        return descriptor_from_fields(gpu, table.device_fields(gpu))


def table_features(table, device_lookup: DeviceLookup | DeviceInfo | None = None) -> np.ndarray:
    """float32 (n_rows, N_FEATURES) for every row of a dataset.Table.

    `device_lookup` maps the table's gpu names to descriptors: a callable, one DeviceInfo for all rows, or
    None for `table_device` (the known GPUs' table, else the device fields recorded on the rows).
    """
    n_rows = len(table)
    gpu = table["gpu"]
    if isinstance(device_lookup, DeviceInfo):
        dev = _device_values(device_lookup)
    else:
        lookup = device_lookup or (lambda name: table_device(table, name))
        dev_cols = np.empty((6, n_rows), dtype=np.float64)
        for name in set(gpu.tolist()):
            dev_cols[:, gpu == name] = np.asarray(_device_values(lookup(name)))[:, None]
        dev = tuple(dev_cols)
    dtypes = table["dtype"]
    esize = np.empty(n_rows, dtype=np.float64)
    is_bf16 = np.empty(n_rows, dtype=np.float64)
    for name in set(dtypes.tolist()):
        sel = dtypes == name
        esize[sel], is_bf16[sel] = _dtype_info(name)
    cfg = np.stack([table[c] for c in CONFIG_FIELDS], axis=1).astype(np.int64)
    # Backend decides torch-ness (a table's torch rows have zero config fields already; be explicit anyway).
    cfg[table["backend"] != "triton"] = 0
    if n_rows and np.any(cfg[table["backend"] == "triton"] == 0):
        raise ValueError("table_features: a triton row has a zero config field (block/group/split/warps/stages)")
    f64 = np.float64
    return _features(
        table["m"].astype(f64), table["n"].astype(f64), table["k"].astype(f64), esize, is_bf16, table["tf32"],
        table["a_trans"], table["b_trans"], _config_part(cfg), dev, n_rows,
    )  # fmt: skip


def feature_index(name: str) -> int:
    """Column of a named feature; ValueError lists the names."""
    try:
        return _IDX[name]
    except KeyError:
        raise ValueError(f"unknown feature {name!r}; features: {', '.join(FEATURE_NAMES)}") from None


# _features writes columns by position: keep it in step with FEATURE_NAMES.
assert N_FEATURES == 44

__all__ = [
    "CONFIG_COLUMNS",
    "CONFIG_FIELDS",
    "FEATURE_NAMES",
    "FEATURE_SCHEMA_VERSION",
    "N_FEATURES",
    "config_matrix",
    "feature_index",
    "shape_features",
    "table_device",
    "table_features",
]
