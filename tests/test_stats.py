"""gpperf_torch.stats.counting: the GEMMs counted by backend, and the interpreter's float64 check of the Triton
pick that runs whatever the dispatch says (a wrong kernel is reported, the op's own result is untouched)."""

from __future__ import annotations

import pytest
import torch

import gpperf_torch as gp
from gpperf_torch import kernels, ops
from gpperf_torch.kernels import TileConfig

pytestmark = pytest.mark.skipif(not kernels.interpreting(), reason="the CPU check needs TRITON_INTERPRET=1")

SMALL = TileConfig(16, 16, 32, num_warps=1, num_stages=1)


@pytest.fixture(autouse=True)
def _fresh(fresh_selector):
    """A fresh selector per test (tests/conftest.py)."""


def test_counts_by_backend_and_checks_each_distinct_gemm_once():
    a, w, bias = torch.randn(8, 32), torch.randn(24, 32), torch.randn(24)
    with gp.stats.counting() as c:
        for _ in range(3):
            gp.linear(a, w, bias)  # the dispatch: torch.matmul for so small a shape on the H100 model
        gp.matmul(a, w.t(), config=SMALL)  # forced: Triton
        gp.matmul(a.double(), w.double().t())  # float64: torch, never checked (no kernel dtype)
    assert (c.triton, c.torch) == (1, 4)
    assert c.checked == 2 and c.extra_runs == 1, c  # the linear once (its Triton pick), the forced run once
    assert c.ok and 0.0 <= c.max_err <= 1.0 and c.kernel_runs == 2
    assert "2 ran Triton, 4 ran torch.matmul (the dispatch chose Triton for 1, torch.matmul for 4" in c.summary()
    assert ops.reporters == []  # removed on exit
    with gp.stats.counting(check=False) as c2:
        gp.linear(a, w)
    assert (c2.torch, c2.checked) == (1, 0) and "kernel checked" not in c2.summary()
    assert "compare torch with torch" in c2.summary()


def test_a_wrong_kernel_is_reported_and_the_result_is_torchs(monkeypatch):
    a, w = torch.randn(8, 32), torch.randn(24, 32)
    real = kernels.launch

    def off_by_one(a, b, out=None, **kw):
        return real(a, b, out, **kw).add_(1.0)

    monkeypatch.setattr(kernels, "launch", off_by_one)
    with gp.stats.counting() as c:
        y = gp.linear(a, w)
    torch.testing.assert_close(y, a @ w.t())
    assert not c.ok and "FAILED" in c.summary() and "the tolerance" in c.failures[0]


def test_the_pick_is_the_decisions_triton_config():
    from gpperf_torch.selection import selector

    a, b = torch.randn(16, 64), torch.randn(64, 96)
    pick = selector.triton_pick(a, b)
    ranked = gp.explain(16, 96, 64, dtype=torch.float32, device="cpu")
    assert pick is not None and pick.key == ranked[0].get("triton_pick", ranked[0]["config"])
