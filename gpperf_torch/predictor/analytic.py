"""The analytic fallback rule: a roofline estimate of each Triton config's time, and of cuBLAS's, used when no
model exists for the GPU (selector.py). Numpy only; calibrated by benchmarks/calibrate_analytic.py on the public
data.

cuBLAS is a candidate like the configs, so the dispatch policy (policy/dispatch.py) weighs the two as it does
for a model: cuBLAS's estimate is the rule's best estimate over the whole candidate space (cuBLAS picks among
many tuned kernels per shape) times CUBLAS["factor"], and the rule's predicted gain of a Triton config over
cuBLAS carries the uncertainty CUBLAS["gain_sd"] (log units), both measured on the public data: the spread of
the realised gain around the predicted one. With the policy's z, Triton runs only where the predicted gain
clears z of those spreads: safe in the sense the models are (docs/selection.md has the measured numbers).
"""

from __future__ import annotations

import functools

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
    # Tie-breaks where the roofline sees no difference (configs it would otherwise score exactly alike):
    "reg_cost": 0.02,  # accumulators past 128 fp32 registers per thread crowd the pipeline: +2% per doubling
    "thin_cost": 0.01,  # fewer than 32 accumulators per thread: warps the tile cannot keep busy, +1% per halving
    "smem_cost": 1e-4,  # less shared memory per block leaves room for more resident blocks: a tie goes to it
    "store_bonus": 0.002,  # a tile wider in N than in M stores C (row-major) in longer contiguous runs
}
# cuBLAS in the analytic rule: its estimate (the rule's best over the candidate space, times `factor`) and the
# spread of the realised log gain of the rule's Triton pick around the predicted one (`gain_sd`). Measured by
# `python benchmarks/calibrate_analytic.py --dispatch` on the public A100 random shapes (checked on H100 and on
# both GPUs' Hugging Face shapes); see docs/selection.md.
CUBLAS = {"factor": 0.906, "gain_sd": 0.248}


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
    acc_regs = bm * bn / (np.asarray(warps, dtype=np.float64) * 32)
    tiebreak = 1 + p["reg_cost"] * np.log2(np.maximum(acc_regs / 128.0, 1.0))
    tiebreak = tiebreak * np.where(bn > bm, 1 - p["store_bonus"], 1.0)
    tiebreak = tiebreak * (1 + p["thin_cost"] * np.log2(np.maximum(32.0 / acc_regs, 1.0)))
    smem = (bm + bn) * bk * es * np.maximum(stages - 1, 1)  # the operand buffers of the pipeline
    tiebreak = tiebreak * (1 + p["smem_cost"] * smem / info.max_shared_memory)
    return (waves * tile_s + reduce_s) * 1e3 * (1 - p["stage_bonus"] * np.minimum(stages, 4)) * tiebreak


def _estimate_cfgs(m, n, k, dtype: str, triton: list[TileConfig], info: DeviceInfo) -> np.ndarray:
    c = np.array([(x.block_m, x.block_n, x.block_k, x.split_k, x.num_warps, x.num_stages) for x in triton],
                 dtype=np.float64).T  # fmt: skip
    return analytic_estimate(m, n, k, kernels.elem_size(dtype), *c, info)


@functools.lru_cache(maxsize=16)
def _space(elem_size: int, max_shared_memory: int) -> np.ndarray:
    """(6, n) config columns of the whole candidate space valid for an element size and shared memory."""
    cfgs = kernels.candidate_space(elem_size=elem_size, max_shared_memory=max_shared_memory)
    return np.array([(x.block_m, x.block_n, x.block_k, x.split_k, x.num_warps, x.num_stages) for x in cfgs],
                    dtype=np.float64).T  # fmt: skip


def cublas_time_ms(m, n, k, dtype: str, info: DeviceInfo) -> float:
    """The rule's estimate of cuBLAS's time for one GEMM: its best estimate over the candidate space (split-K
    included) times CUBLAS["factor"]."""
    es = kernels.elem_size(dtype)
    est = analytic_estimate(m, n, k, es, *_space(es, info.max_shared_memory), info)
    return float(est.min()) * CUBLAS["factor"]


def analytic_time_ms(
    m: int, n: int, k: int, dtype: str, cands: list[TileConfig | None], info: DeviceInfo
) -> np.ndarray:
    """The analytic estimate per candidate, cuBLAS (None) included (cublas_time_ms)."""
    triton = [c for c in cands if c is not None]
    out = np.empty(len(cands))
    if triton:
        out[[i for i, x in enumerate(cands) if x is not None]] = _estimate_cfgs(m, n, k, dtype, triton, info)
    torch_idx = [i for i, x in enumerate(cands) if x is None]
    if torch_idx:
        out[torch_idx] = cublas_time_ms(m, n, k, dtype, info)
    return out


__all__ = ["ANALYTIC_PARAMS", "CUBLAS", "analytic_estimate", "analytic_time_ms", "cublas_time_ms"]
