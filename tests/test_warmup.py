"""`gp.warmup(model, inputs)`: records a model's GEMMs, verifies each (here through the Triton interpreter), saves
the verified table, reports per shape; a second warmup reads the table; GPPERF_TABLE makes it measure nothing."""

from __future__ import annotations

import math

import pytest
import torch

import gpperf_torch as gp
from gpperf_torch import kernels
from gpperf_torch.selection import selector, table, verify

pytestmark = pytest.mark.skipif(not kernels.interpreting(), reason="warmup measures through the Triton interpreter")


@pytest.fixture
def setup(measuring, monkeypatch):
    monkeypatch.setenv("GPPERF_DISK_CACHE", "1")  # the table is written (into fresh_selector's own folder)
    table.reset()
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(24, 40), torch.nn.ReLU(), torch.nn.Linear(40, 16)).half()
    return gp.patch(net), (torch.randn(20, 24, dtype=torch.float16),)


def test_warmup_verifies_each_gemm_saves_the_table_and_reports(setup, tmp_path):
    net, x = setup
    want = gp.unpatch(net)(*x)
    gp.patch(net)
    saved = tmp_path / "model-table.json"
    rows = gp.warmup(net, x, save=saved, progress=False)
    assert [(r["m"], r["n"], r["k"], r["layout"]) for r in rows] == [(20, 16, 40, "nt"), (20, 40, 24, "nt")]
    for r in rows:
        assert r["source"] == "measured" and r["backend"] in ("torch", "triton") and "torch" in r["times_ms"]
        assert r["gain"] >= 1.0 and r["calls"] == 1 and r["bucket"] == [20, 20]
        assert r["config"] == "torch" or r["config"] in r["times_ms"]
    assert verify.stats.shapes == 2
    assert len(table.read_file(saved)[0]) == 2
    assert "measured" in gp.format_warmup(rows)
    with gp.mode("verify"):
        got = net(*x)  # the model's calls hit the measured choices: nothing more is measured
    assert verify.stats.shapes == 2
    torch.testing.assert_close(got.float(), want.float(), rtol=2e-3, atol=2e-2)
    again = gp.warmup(net, x, progress=False)
    assert [r["source"] for r in again] == ["table", "table"] and verify.stats.shapes == 2


def test_warmup_with_backward_records_the_gradient_gemms(setup):
    net, x = setup
    rows = gp.warmup(net, x, backward=True, progress=False)
    layouts = {r["layout"] for r in rows}
    assert len(rows) == 5 and {"nt", "tn"} <= layouts  # dX = dY @ W, dW = dY^T @ X among them
    assert all(p.grad is None for p in net.parameters()), "warmup leaves the gradients as they were"


def test_warmup_under_a_read_only_table_measures_nothing(setup, tmp_path, monkeypatch):
    net, x = setup
    monkeypatch.setenv("GPPERF_TABLE", str(tmp_path / "absent.json"))
    selector.reset()
    rows = gp.warmup(net, x, progress=False)
    assert [r["source"] for r in rows] == ["predicted", "predicted"] and verify.stats.shapes == 0
    assert all(math.isnan(r["gain"]) for r in rows)
    assert not (tmp_path / "absent.json").exists()
