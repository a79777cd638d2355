"""The measured dispatch: candidates (cuBLAS always), the noise margin, M buckets, interleaved timing, and the op's
first sight in verify mode (table hits, no measuring under capture or tracing, the per-process cap, failures)."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

import gpperf_torch as gp
from gpperf_torch import kernels
from gpperf_torch.measure import timing as measure
from gpperf_torch.policy import verify_policy
from gpperf_torch.policy.verify_policy import VerifyPolicy
from gpperf_torch.selection import selector, table, verify

from helpers import FAST

interp_only = pytest.mark.skipif(not kernels.interpreting(), reason="measures through the Triton interpreter")


# ---- the candidate set -----------------------------------------------------------------------------------------
def _times(*tri, torch_ms=1.0):
    t = np.array([*tri, torch_ms], dtype=np.float64)
    return t, np.array([False] * len(tri) + [True])


@pytest.mark.parametrize("policy", [verify_policy.default_policy(), verify_policy.parse("verify:0"),
                                    verify_policy.parse("verify:5"), verify_policy.parse("exhaustive")])  # fmt: skip
@pytest.mark.parametrize("tri", [(0.5, 0.6, 0.7), (2.0, 3.0), (0.9,), (np.inf, 0.8), ()])
def test_candidates_always_hold_cublas_first(policy, tri):
    t, is_torch = _times(*tri)
    idx = verify_policy.candidates(t, is_torch, policy)
    assert idx[0] == len(tri), "cuBLAS (torch.matmul) is always measured, first"
    assert len(set(idx)) == len(idx) and all(np.isfinite(t[i]) for i in idx)


def test_top_k_within_and_skip():
    t, is_torch = _times(0.50, 0.52, 0.70, 0.54, 0.51)
    p = VerifyPolicy(top_k=3, within=0.1, skip_below=None)
    assert verify_policy.candidates(t, is_torch, p) == [5, 0, 4, 1]  # the fastest three, all within 10%
    p = VerifyPolicy(top_k=3, within=0.03, skip_below=None)
    assert verify_policy.candidates(t, is_torch, p) == [5, 0, 4]  # 0.52 is 4% off the fastest: cut
    assert verify_policy.candidates(t, is_torch, verify_policy.parse("verify:2")) == [5, 0, 4]
    # cuBLAS predicted 3x faster than the best Triton config, with no spread: only cuBLAS, nothing to time
    t, is_torch = _times(3.0, 3.1, torch_ms=1.0)
    assert verify_policy.candidates(t, is_torch, verify_policy.default_policy()) == [2]
    # the same point estimate with a wide spread over the trees: the upper bound reaches past 0.9x, measure
    dev = np.array([[-1.2, 1.2], [0.0, 0.0], [1.2, -1.2]])
    assert verify_policy.candidates(t, is_torch, verify_policy.default_policy(), log_dev=dev)[:2] == [2, 0]


def test_parse_modes():
    assert verify_policy.parse("verify") == verify_policy.default_policy()
    assert verify_policy.parse("VERIFY:4").top_k == 4 and verify_policy.parse("verify:4").within is None
    assert verify_policy.parse("exhaustive").exhaustive
    for bad in ("verify:x", "verify:-1", "fast", "exhaustive:2"):
        with pytest.raises(ValueError, match="verify"):
            verify_policy.parse(bad)


def test_default_top_k_follows_the_environment(monkeypatch):
    monkeypatch.setenv("GPPERF_VERIFY_TOP_K", "2")
    assert verify_policy.default_policy().top_k == 2 and verify.verify_top_k() == 2


# ---- the noise margin ------------------------------------------------------------------------------------------
def test_keep_triton_needs_more_than_the_noise():
    p = verify_policy.default_policy()
    assert verify_policy.keep_triton(0.95, 1.0, 0.0, p)  # 5% faster, no noise
    assert not verify_policy.keep_triton(0.995, 1.0, 0.0, p)  # 0.5%: inside the 1% minimum margin
    assert not verify_policy.keep_triton(0.95, 1.0, 0.03, p)  # 5% faster but 3% standard error: 6% needed
    assert verify_policy.keep_triton(0.90, 1.0, 0.03, p)
    assert not verify_policy.keep_triton(0.95, 1.0, math.inf, p)  # fewer than 3 rounds: never kept
    # host costs count: a 4 us kernel that saves 0.2 us loses to a 12 us host-cost difference
    assert not verify_policy.keep_triton(0.0038, 0.004, 0.0, p, host_triton_ms=0.020, host_torch_ms=0.008)


def test_ratio_noise_is_a_robust_standard_error():
    med, se = verify_policy.ratio_noise([1.0] * 20)
    assert med == 1.0 and se == 0.0
    rng = np.random.default_rng(0)
    r = 0.9 * (1 + 0.05 * rng.standard_normal(400))
    med, se = verify_policy.ratio_noise(r)
    assert abs(med - 0.9) < 0.01 and 0.5 * 0.0031 < se < 2 * 0.0031  # 1.2533 * 0.05 / sqrt(400)
    assert verify_policy.ratio_noise([1.0, 2.0])[1] == math.inf


def test_choose_measured_keeps_triton_only_beyond_the_noise():
    p = verify_policy.default_policy()
    steady = {"torch": [1.0] * 9, "A": [0.90] * 9, "B": [0.95] * 9}
    assert verify_policy.choose_measured(steady, p)[0] == "A"
    close = {"torch": [1.0] * 9, "A": [0.996] * 9}  # faster, but by less than the minimum margin
    assert verify_policy.choose_measured(close, p)[0] == "torch"
    rng = np.random.default_rng(1)
    base = 1 + 0.2 * rng.standard_normal(9)  # drift common to both: paired ratios cancel it
    paired = {"torch": list(base), "A": list(0.95 * base)}
    assert verify_policy.choose_measured(paired, p)[0] == "A"
    noisy = {"torch": list(1 + 0.2 * rng.standard_normal(9)), "A": list(0.95 * (1 + 0.2 * rng.standard_normal(9)))}
    assert verify_policy.choose_measured(noisy, p)[0] == "torch"  # independent noise of 20%: 5% is not evidence
    assert verify_policy.choose_measured({"A": [0.5] * 5}, p)[0] == "A"  # cuBLAS did not run: the config that did
    assert verify_policy.choose_measured({}, p)[0] is None


# ---- M buckets -----------------------------------------------------------------------------------------------
def test_m_buckets_cover_every_m_once_and_stay_narrow():
    seen_hi = 0
    for m in range(1, 70000):
        lo, hi = verify_policy.m_bucket(m)
        assert lo <= m <= hi
        if m <= verify_policy.EXACT_M_UP_TO:
            assert lo == hi == m
        else:
            assert hi / lo <= 2 ** (1 / verify_policy.DEFAULT_BUCKET_STEPS) + 1e-9 or hi - lo <= 1
        if lo > seen_hi:  # a new bucket starts right after the previous one ends: no gaps, no overlaps
            assert lo == seen_hi + 1
            seen_hi = hi
        else:
            assert (lo, hi) == verify_policy.m_bucket(m - 1)
    assert verify_policy.m_bucket(1000, steps=0) == (1000, 1000)
    assert verify_policy.m_bucket(1000, steps=1) == (512, 1023)


def test_bucket_key_separates_m_alignment_and_layout():
    key = (100, 64, 32, 1, "float16", False, True, False, "time")
    k1 = verify_policy.bucket_key(key)
    assert verify_policy.bucket_key((101, *key[1:])) == k1  # same bucket, neither a multiple of 16
    assert verify_policy.bucket_key((96, *key[1:])) != k1  # a multiple of 16 compiles another binary
    assert verify_policy.bucket_key((100, 64, 32, 1, "float16", True, True, False, "time")) != k1


# ---- interleaved timing ----------------------------------------------------------------------------------------
class FakeClock:
    """A clock advanced only by the work the fns report, so the timing arithmetic is exact."""

    def __init__(self):
        self.now = 0.0
        self.primed = 0.0

    def mark(self):
        return self.now

    def elapsed_ms(self, a, b):
        return b - a

    def sync(self):
        pass

    def prime(self, ms):
        self.primed += ms


def test_interleaved_rounds_alternate_and_group_short_kernels():
    clock = FakeClock()
    order = []

    def fn(name, ms):
        def run():
            order.append(name)
            clock.now += ms

        return run

    res = measure.interleaved([fn("a", 0.01), fn("b", 1.0)], clock=clock, budget_ms=30, min_rounds=5, max_rounds=50)
    assert res.groups == [5, 1]  # 0.01 ms kernels are timed 5 to a sample (SAMPLE_MS of work)
    assert res.rounds == 28  # 30 ms of estimated work in rounds of 1.05 ms
    assert all(abs(s - 0.01) < 1e-12 for s in res.samples[0]) and all(abs(s - 1.0) < 1e-9 for s in res.samples[1])
    timed = order[6:]  # after the 3 + 3 estimate launches: rounds alternate which candidate goes first
    assert timed[:6] == ["a"] * 5 + ["b"] and timed[6:12] == ["b"] + ["a"] * 5
    long = measure.interleaved([fn("c", 40.0)], clock=clock, budget_ms=5, min_rounds=5, max_rounds=50)
    assert long.rounds == 5  # the minimum: a GEMM longer than the budget still gets a median


# ---- the op in verify mode -------------------------------------------------------------------------------------
@pytest.fixture
def verifying(measuring):
    """conftest's measuring state (the synthetic model on the CPU); measured choices kept in memory only."""
    return measuring


def _ab(m=20, n=16, k=24):
    return torch.randn(m, k, dtype=torch.float16), torch.randn(n, k, dtype=torch.float16).t()


@interp_only
def test_auto_mode_predicts_on_the_cpu(verifying):
    a, b = _ab()
    selector.choose(a, b, None, None)
    assert verify.stats.shapes == 0 and selector._mode_of(a) == "predict"
    with gp.mode("verify"):
        selector.choose(a, b, None, None)
    assert verify.stats.shapes == 1


@interp_only
def test_verify_measures_once_per_bucket_and_the_result_is_right(verifying):
    a, b = _ab(100)
    with gp.mode("verify"):
        out = gp.matmul(a, b)
        torch.testing.assert_close(out.float(), a.float() @ b.float(), rtol=2e-3, atol=2e-2)
        assert verify.stats.shapes == 1 and verify.stats.candidates >= 2
        gp.matmul(a, b)  # the same shape: the process's memo
        a2, b2 = _ab(101)  # a new M in the same bucket: a table lookup, no measurement
        out2 = gp.matmul(a2, b2)
        torch.testing.assert_close(out2.float(), a2.float() @ b2.float(), rtol=2e-3, atol=2e-2)
        assert verify.stats.shapes == 1 and verify.stats.table_hits == 1
        gp.matmul(*_ab(96))  # M a multiple of 16: its own bucket
    assert verify.stats.shapes == 2
    entry = table.for_device(verifying.info).lookup(selector._key(a, b, None)[:8], verify.bucket_steps())
    assert entry is not None and entry.m == 100 and "torch" in entry.times_ms


@interp_only
def test_no_measuring_while_tracing_and_the_next_eager_call_measures(verifying, monkeypatch):
    a, b = _ab()
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    with gp.mode("verify"):
        cfg = selector.choose(a, b, None, None)
    assert verify.stats.shapes == 0 and verify.stats.predicted == {"while torch.compile traces": 1}
    assert cfg == selector.rank(verifying, selector._key(a, b, None))[0][0]  # the prediction
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: False)
    with gp.mode("verify"):
        selector.choose(a, b, None, None)
    assert verify.stats.shapes == 1


def test_cannot_measure_names_capture_tracing_and_fake_tensors(monkeypatch):
    from torch._subclasses.fake_tensor import FakeTensorMode

    a = torch.randn(4, 4)
    assert verify.cannot_measure(a) == ""
    with FakeTensorMode():
        fake = torch.randn(4, 4)
    assert "FakeTensor" in verify.cannot_measure(fake)
    monkeypatch.setattr(torch.jit, "is_tracing", lambda: True)
    assert "torch.jit" in verify.cannot_measure(a)
    monkeypatch.setattr(torch.jit, "is_tracing", lambda: False)

    class Cuda:  # a stand-in for a CUDA tensor during a capture (no GPU here)
        is_cuda = True

    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    assert "CUDA graph capture" in verify.cannot_measure(Cuda())


@interp_only
def test_per_process_cap_falls_back_to_predict_and_warns_once(verifying, monkeypatch, caplog):
    monkeypatch.setenv("GPPERF_VERIFY_MAX_SHAPES", "1")
    from gpperf_torch.selection import state

    state._warned.discard("verify-cap")
    with gp.mode("verify"), caplog.at_level(logging.WARNING):
        for m in (20, 40, 60):
            gp.matmul(*_ab(m))
    assert verify.stats.shapes == 1 and verify.stats.predicted == {"per-process cap reached": 2}
    assert sum("GPPERF_VERIFY_MAX_SHAPES" in r.getMessage() for r in caplog.records) == 1


@interp_only
def test_a_failing_config_is_skipped(verifying, monkeypatch):
    a, b = _ab()
    real = kernels.launch

    def launch(a, b, out=None, cfg=None, **kw):
        if cfg == FAST:
            raise RuntimeError("resources exhausted (simulated)")
        return real(a, b, out, cfg, **kw)

    monkeypatch.setattr(kernels, "launch", launch)
    res = verify.measure_candidates(a, b, [None, FAST, kernels.TileConfig(16, 16, 32)], verify_policy.default_policy(),
                                    max_shared_memory=None)  # fmt: skip
    assert FAST.key in res.errors and "simulated" in res.errors[FAST.key]
    assert set(res.times_ms) == {"torch", "16x16x32_g8_s1_w4_st3"} and res.rounds == 3


@interp_only
def test_objectives_other_than_time_use_the_prediction(verifying):
    # the synthetic time model predicts no power: the prediction's own error, not a measurement
    with gp.mode("verify"), gp.objective("power_cap:300"), pytest.raises(ValueError, match="power"):
        gp.matmul(*_ab())
    assert verify.stats.shapes == 0


def test_explain_lists_the_verify_candidates_and_the_measured_choice(verifying):
    rows = gp.explain(100, 16, 24, b_trans=True, device="cpu")
    first = rows[0]
    assert first["verify_candidates"][0] == "torch" and 2 <= len(first["verify_candidates"]) <= 4
    assert first["verify_policy"]["top_k"] == 3 and "measured" not in first
    key = (100, 16, 24, 1, "float16", False, True, False)
    entry = table.Entry(choice="torch", m=100, times_ms={"torch": 1.0})
    table.for_device(verifying.info).add(verify_policy.bucket_key(key), entry)
    measured = gp.explain(101, 16, 24, b_trans=True, device="cpu")[0]["measured"]  # the same bucket
    assert measured["choice"] == "torch" and measured["m"] == 100
