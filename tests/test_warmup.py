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


@pytest.mark.parametrize("where", ["cache", "save"])
def test_warmup_keeps_its_report_when_the_table_cannot_be_saved(setup, tmp_path, monkeypatch, caplog, where):
    """A cache directory (or --save path) that cannot be used: one warning naming it (and GPPERF_CACHE_DIR for the
    cache), the report and the in-memory choices kept."""
    import logging

    from gpperf_torch import paths

    net, x = setup
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    paths._unwritable.clear()
    if where == "cache":
        monkeypatch.setenv("GPPERF_CACHE_DIR", str(blocker / "cache"))
        selector.reset()
        table.reset()
    save = None if where == "cache" else blocker / "sub" / "t.json"
    with caplog.at_level(logging.WARNING):
        rows = gp.warmup(net, x, save=save, progress=False)
        gp.flush()
    assert len(rows) == 2 and all(r["source"] == "measured" for r in rows)
    msgs = [r.getMessage() for r in caplog.records if str(blocker) in r.getMessage()]
    assert len(msgs) == 1, msgs  # once, however many files fail
    if where == "cache":
        assert "GPPERF_CACHE_DIR" in msgs[0] and "GPPERF_DISK_CACHE=0" in msgs[0]
    assert blocker.read_text() == "not a directory"
    with gp.mode("verify"):
        net(*x)
    assert verify.stats.shapes == 2  # measured once, remembered in memory


def test_disk_cache_off_writes_no_file(setup, tmp_path, monkeypatch):
    """GPPERF_DISK_CACHE=0: selections, measurements, the table and verify's rows stay in memory."""
    net, x = setup
    cache = tmp_path / "cache-off"
    monkeypatch.setenv("GPPERF_CACHE_DIR", str(cache))
    monkeypatch.setenv("GPPERF_DISK_CACHE", "0")
    selector.reset()
    table.reset()
    gp.warmup(net, x, progress=False)
    with gp.mode("predict"):
        net(*x)
    gp.flush()
    assert not cache.exists() or not any(cache.rglob("*")), list(cache.rglob("*"))


def test_a_failed_trace_leaves_nothing_in_the_disk_cache(setup, tmp_path, monkeypatch):
    net, x = setup
    cache = tmp_path / "cache-trace"
    monkeypatch.setenv("GPPERF_CACHE_DIR", str(cache))
    selector.reset()

    class DictOut(torch.nn.Module):  # torch.jit.trace refuses a dict output (strict)
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            return {"y": self.net(x)}

    with gp.mode("predict"), pytest.raises(RuntimeError):
        torch.jit.trace(DictOut(), x)
    gp.flush()
    assert not cache.exists() or not any(cache.rglob("*.json")), list(cache.rglob("*"))
