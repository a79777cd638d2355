"""The analytic fallback rule: a roofline estimate of each Triton config's time, used when no model exists for
the GPU (selector.py). Numpy only; calibrated by benchmarks/calibrate_analytic.py on the public data."""

from __future__ import annotations

import numpy as np

from .. import kernels
from ..kernels import TileConfig
from ..measure.device import DeviceInfo

# Parameters of the analytic rule; calibrated by benchmarks/calibrate_analytic.py on the public data (see there).
ANALYTIC_PARAMS = {
    "ref_tile": 128 * 128,  # tiles smaller than this leave tensor cores idle ...
    "tile_exp": 0.5,  # ... with efficiency (tile / ref_tile) ** tile_exp
    "warp_exp": 0.25,  # fewer than 4 warps: (warps / 4) ** warp_exp
    "tile_overhead_s": 2e-6,  # fixed cost per tile (prologue, epilogue, scheduling)
    "l2_factor": 4.0,  # operand traffic per SM served from L2 at this multiple of DRAM bandwidth
    "stage_bonus": 0.01,  # deeper pipelines hide latency: 1% per stage (up to 4)
}


def analytic_estimate(m, n, k, elem_size, bm, bn, bk, sk, warps, stages, info: DeviceInfo, params=None):
    """Vectorized roofline estimate (ms): waves of tiles x the slower of a tile's math and its operand traffic.

    Arguments broadcast (numpy arrays over configs and/or problems). Captures what decides most choices: wave
    quantization over the SMs, padding waste at the edges, per-tile arithmetic intensity (bigger tiles reuse
    operands more) and split-K for long-K small-output shapes.
    """
    p = ANALYTIC_PARAMS if params is None else {**ANALYTIC_PARAMS, **params}
    es = np.asarray(elem_size, dtype=np.float64)
    # Peak dense rate per SM (FLOP/cycle): Hopper / Ampere tensor cores; fp32 (TF32 or not) at a quarter.
    flop_per_cycle = (2048.0 if info.capability[0] >= 9 else 1024.0) * np.where(es == 4, 0.25, 1.0)
    sm_rate = flop_per_cycle * info.sm_clock_mhz * 1e6
    bw_per_sm = info.mem_bandwidth_gbs * 1e9 / info.sm_count * p["l2_factor"]
    k_steps = np.ceil(k / bk)
    ksplit = np.ceil(k_steps / sk) * bk
    work_items = np.ceil(m / bm) * np.ceil(n / bn) * np.minimum(sk, k_steps)
    waves = np.ceil(work_items / info.sm_count)
    eff = np.minimum(1.0, bm * bn / p["ref_tile"]) ** p["tile_exp"] * np.minimum(1.0, warps / 4) ** p["warp_exp"]
    math_s = 2.0 * bm * bn * ksplit / (sm_rate * np.maximum(eff, 0.05))
    mem_s = (bm + bn) * ksplit * es / bw_per_sm
    tile_s = np.maximum(math_s, mem_s) + p["tile_overhead_s"]
    reduce_s = np.where(sk > 1, 2 * m * n * 4 * sk / (info.mem_bandwidth_gbs * 1e9) + 4e-6, 0.0)
    return (waves * tile_s + reduce_s) * 1e3 * (1 - p["stage_bonus"] * np.minimum(stages, 4))


def analytic_time_ms(
    m: int, n: int, k: int, dtype: str, cands: list[TileConfig | None], info: DeviceInfo
) -> np.ndarray:
    """The analytic estimate per candidate. torch.matmul is not estimated (infinite): without a model there is
    nothing to compare cuBLAS with."""
    triton = [c for c in cands if c is not None]
    out = np.full(len(cands), np.inf)
    if triton:
        c = np.array([(x.block_m, x.block_n, x.block_k, x.split_k, x.num_warps, x.num_stages) for x in triton],
                     dtype=np.float64).T  # fmt: skip
        est = analytic_estimate(m, n, k, kernels.elem_size(dtype), *c, info)
        out[[i for i, x in enumerate(cands) if x is not None]] = est
    return out
