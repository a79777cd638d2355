"""dispatch.py: the one policy (Triton config vs cuBLAS), its confidence rule, ties, host cost and its storage."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from gpperf_torch.kernels import TileConfig
from gpperf_torch.policy import dispatch
from gpperf_torch.policy.dispatch import NO_HOST_COST, Policy, decide, padded_work
from gpperf_torch.predictor.features import config_matrix

KERNEL = Policy(z=1.0, host_ms=dict(NO_HOST_COST))


def _dev(n: int, sd: float, seed: int = 0) -> np.ndarray:
    d = np.random.default_rng(seed).normal(0.0, sd, size=(n, 32))
    return d - d.mean(axis=1, keepdims=True)


def test_confident_gain_goes_to_triton_uncertain_to_torch():
    t = np.array([1.0, 1.3])  # Triton 1.3x faster than torch (predicted)
    is_torch = np.array([False, True])
    sure = decide(t, is_torch, KERNEL, log_dev=_dev(2, 0.01))
    assert sure.index == 0 and not sure.to_extern and sure.gain == pytest.approx(math.log(1.3), abs=0.02)
    unsure = decide(t, is_torch, KERNEL, log_dev=_dev(2, 0.5))
    assert unsure.to_extern and unsure.triton_index == 0 and "not confident" in unsure.reason
    # z = 0 is the point estimate: the same spread no longer vetoes
    assert not decide(t, is_torch, Policy(z=0.0, host_ms=dict(NO_HOST_COST)), log_dev=_dev(2, 0.5)).to_extern
    # predicted slower: torch whatever the spread
    slower = decide(np.array([1.3, 1.0]), is_torch, KERNEL, log_dev=_dev(2, 0.01))
    assert slower.to_extern and "predicted slower" in slower.reason


def test_host_cost_sends_microsecond_gemms_to_torch():
    t = np.array([0.004, 0.006])  # 4 us Triton, 6 us cuBLAS: a kernel-time win ...
    is_torch = np.array([False, True])
    assert not decide(t, is_torch, KERNEL).to_extern
    eager = Policy(z=1.0, host_ms={"triton": 0.020, "torch": 0.008})
    d = decide(t, is_torch, eager)  # ... lost to the launch: 24 us against 14 us per call
    assert d.to_extern and d.gain == pytest.approx(math.log(0.014 / 0.024))
    big = decide(t * 1000, is_torch, eager)  # milliseconds: the host cost no longer matters
    assert not big.to_extern


def test_unaligned_transposed_operands_need_more_confidence():
    # A transposed: its leading dimension is m; B transposed: k. Only those, when not a multiple of 8 and >= 128.
    assert dispatch.unaligned_transposed(50265, 512, 8192, True, False)
    assert not dispatch.unaligned_transposed(50265, 512, 8192, False, False)  # A row-major: ld = k, aligned
    assert not dispatch.unaligned_transposed(50264, 512, 8192, True, False)
    assert dispatch.unaligned_transposed(64, 64, 1001, False, True)
    # a short unaligned leading dimension (a thin operand) keeps the plain z: 2x1536x512 with A transposed ran
    # Triton 1.7x faster than cuBLAS, 5376x5376x43 with B transposed 1.27x
    assert not dispatch.unaligned_transposed(2, 1536, 512, True, False)
    assert not dispatch.unaligned_transposed(5376, 5376, 43, False, True)
    assert not dispatch.unaligned_transposed(64, 64, 100, False, True)
    assert dispatch.unaligned_transposed(dispatch.UNALIGNED_MIN_LD + 1, 64, 64, True, False)
    got = dispatch.unaligned_transposed(np.array([50265, 50264]), 512, 8192, np.array([1, 1]), 0)
    assert got.tolist() == [True, False]
    t, is_torch = np.array([1.0, 1.3]), np.array([False, True])
    dev = np.zeros((2, 32))
    dev[0, :16], dev[0, 16:] = 0.15, -0.15  # gain log(1.3) = 0.26, sd 0.15: confident at z = 1, not at 3.5
    assert not decide(t, is_torch, KERNEL, log_dev=dev).to_extern
    d = decide(t, is_torch, KERNEL, log_dev=dev, unaligned=True)
    assert d.to_extern and f"z raised to {dispatch.DEFAULT_Z_UNALIGNED:g}" in d.reason
    assert Policy.from_meta({"dispatch": {"z": 1.0}}).z_unaligned == dispatch.DEFAULT_Z_UNALIGNED
    assert Policy.from_meta({"dispatch": {"z": 1.0, "z_unaligned": 4}}).z_for(True) == 4.0
    assert Policy(z=4.0).z_for(True) == 4.0 and Policy(z=4.0).z_for(False) == 4.0  # z above the floor: z


def test_ties_go_to_the_least_padded_work():
    cfgs = [TileConfig(128, 128, 64, 8, 1, 4, 3), TileConfig(16, 64, 64, 8, 1, 4, 3), None]
    work = padded_work(1, 256, 128, config_matrix(cfgs))
    assert work[1] < work[0] and math.isinf(work[2])
    t = np.array([0.0059, 0.00592, 0.02])  # within the tie tolerance: the forest cannot tell them apart
    d = decide(t, np.array([False, False, True]), KERNEL, work=work)
    assert d.index == 1 and d.tied == 2 and "least padded work" in d.reason
    # outside the tolerance the faster config wins even with more padding
    d = decide(np.array([0.0050, 0.0059, 0.02]), np.array([False, False, True]), KERNEL, work=work)
    assert d.index == 0 and d.tied == 1


def test_no_candidates_and_no_torch():
    with pytest.raises(ValueError, match="no candidate"):
        decide(np.array([np.inf]), np.array([False]), KERNEL)
    assert decide(np.array([1.0]), np.array([True]), KERNEL).to_extern
    d = decide(np.array([2.0, 1.0]), np.array([False, False]), KERNEL)
    assert d.index == 1 and d.torch_index is None


def test_policy_from_model_meta_and_defaults():
    p = Policy.from_meta({"dispatch": {"z": 0.75, "host_ms": {"triton": 0.015}}})
    assert p.z == 0.75 and p.host_ms == {"triton": 0.015, "torch": dispatch.DEFAULT_HOST_MS["torch"]}
    assert p.host_source == "model"
    d = Policy.from_meta(None)
    assert d.z == dispatch.DEFAULT_Z and d.host_ms == dispatch.DEFAULT_HOST_MS and d.host_source == "default"


def test_measured_host_cost_replaces_the_constant(tmp_path, monkeypatch):
    monkeypatch.setenv("GPPERF_CACHE_DIR", str(tmp_path))
    assert dispatch.write_host_cost("NVIDIA H100 80GB HBM3", {"triton": 0.011, "torch": 0.007}) is None
    assert not any(tmp_path.iterdir())  # GPPERF_DISK_CACHE=0 (tests/conftest.py): no file of ours
    monkeypatch.setenv("GPPERF_DISK_CACHE", "1")
    meta = {"dispatch": {"z": 1.0, "host_ms": {"triton": 0.020, "torch": 0.008}}}
    assert dispatch.policy_for(meta, "NVIDIA H100 80GB HBM3").host_source == "model"
    path = dispatch.write_host_cost("NVIDIA H100 80GB HBM3", {"triton": 0.011, "torch": 0.007}, source="test")
    assert path.parent == tmp_path and json.loads(path.read_text())["host_ms"]["triton"] == 0.011
    p = dispatch.policy_for(meta, "NVIDIA H100 80GB HBM3")
    assert p.host_ms == {"triton": 0.011, "torch": 0.007} and p.host_source == str(path)
    monkeypatch.setenv("GPPERF_HOST_COST", "0")
    assert dispatch.policy_for(meta, "NVIDIA H100 80GB HBM3").host_ms == NO_HOST_COST
    monkeypatch.delenv("GPPERF_HOST_COST")
    path.write_text("{not json")
    assert dispatch.policy_for(meta, "NVIDIA H100 80GB HBM3").host_source == "model"  # corrupt: warned, ignored
    with pytest.raises(ValueError, match="milliseconds"):
        dispatch.write_host_cost("x", {"triton": -1.0, "torch": 0.008})


def test_floor_scale():
    assert dispatch.floor_scale(np.array([0.001, 0.002]), 0.004) == pytest.approx(4.0)
    assert dispatch.floor_scale(np.array([0.01, np.inf]), 0.004) == 1.0
    assert dispatch.floor_scale(np.array([0.001]), None) == 1.0


def test_k_ratio_and_the_k_guard():
    # log2 K - (log2 M + log2 N) / 2: a 256x128x32768 weight gradient is 7.5 powers of two K-heavy
    assert dispatch.k_ratio(256, 128, 32768) == pytest.approx(15 - 7.5)
    assert dispatch.k_ratio(4096, 4096, 4096) == 0.0
    assert dispatch.k_ratio(np.array([1, 4]), 4, 16).tolist() == pytest.approx([3.0, 2.0])
    assert dispatch.beyond_k_range(7.5, 5.0) and not dispatch.beyond_k_range(5.0, 5.0)
    assert not dispatch.beyond_k_range(7.5, None) and not dispatch.beyond_k_range(None, 5.0)
    t, is_torch = np.array([1.0, 3.0]), np.array([False, True])  # the trees agree on a 3x gain ...
    sure = decide(t, is_torch, KERNEL, log_dev=_dev(2, 0.01))
    assert not sure.to_extern and sure.guard == ""
    within = decide(t, is_torch, KERNEL, log_dev=_dev(2, 0.01), k_ratio=5.0, k_ratio_max=5.47)
    assert not within.to_extern and within.guard == ""
    # ... but no training shape was so K-heavy: torch.matmul, and explain says why, with the numbers
    d = decide(t, is_torch, KERNEL, log_dev=_dev(2, 0.01), k_ratio=7.5, k_ratio_max=5.47)
    assert d.to_extern and d.guard == "k_range" and d.triton_index == 0
    assert "K is heavier than in every training shape" in d.reason and "7.50 > 5.47" in d.reason
    assert d.gain == pytest.approx(math.log(3.0), abs=0.02)  # the prediction is still reported
    # the guard holds for any z, the point estimate too; without a recorded range there is no guard
    assert decide(t, is_torch, Policy(z=0.0, host_ms=dict(NO_HOST_COST)), k_ratio=7.5, k_ratio_max=5.47).to_extern
    assert not decide(t, is_torch, KERNEL, log_dev=_dev(2, 0.01), k_ratio=7.5, k_ratio_max=None).to_extern


def test_an_uncertainty_without_trees_holds_triton_back():
    """The analytic rule has no trees: its calibrated spread (gain_sd) plays their part in the bound."""
    t = np.array([1.0, 0.8])  # cuBLAS, one Triton config 1.25x faster by the estimate
    is_torch = np.array([True, False])
    pol = Policy(host_ms=dict(NO_HOST_COST))
    assert decide(t, is_torch, pol).index == 1  # no spread: trusted
    d = decide(t, is_torch, pol, gain_sd=0.3)  # log 1.25 = 0.22 < 1 sd
    assert d.index == 0 and d.gain_sd == 0.3 and "not confident" in d.reason
    assert decide(t, is_torch, pol, gain_sd=0.1).index == 1
