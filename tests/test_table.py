"""The verified table: atomic writes, concurrent writers merging, corrupt / foreign / other-version tables ignored
with a warning, GPPERF_TABLE read-only, and `gpperf-torch table show|merge`."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import gpperf_torch as gp
from gpperf_torch import kernels
from gpperf_torch.cli.main import main as cli_main
from gpperf_torch.measure import dataset
from gpperf_torch.measure.device import KNOWN_DEVICES
from gpperf_torch.policy import verify_policy
from gpperf_torch.selection import selector, table, verify
from gpperf_torch.selection import state as state_mod

from helpers import export_synthetic_model

ROOT = Path(__file__).resolve().parents[1]
H100 = KNOWN_DEVICES["h100"]
A100 = KNOWN_DEVICES["a100"]


def _bkey(m=100, n=64, k=32):
    return verify_policy.bucket_key((m, n, k, 1, "float16", False, True, False))


def _entry(choice="torch", m=100, at="", t_torch=1.0):
    return table.Entry(choice=choice, m=m, times_ms={"torch": t_torch, "32x32x32_g8_s1_w4_st3": 0.9}, noise=0.01,
                       margin=0.02, rounds=9, measured_at=at)  # fmt: skip


def _write(path, info, entries):
    return table.write_file(path, {(*table.identity_of(info), *k): e for k, e in entries.items()})


@pytest.fixture
def clean(monkeypatch, tmp_path):
    monkeypatch.setenv("GPPERF_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("GPPERF_TABLE", raising=False)
    table.reset()
    table._warned.clear()
    yield tmp_path
    table.reset()


def test_round_trip_and_identity(clean):
    path = clean / "t.json"
    _write(path, H100, {_bkey(): _entry("32x32x32_g8_s1_w4_st3"), _bkey(2000): _entry(m=2000)})
    t = table.VerifiedTable(H100, path)
    e = t.lookup((101, 64, 32, 1, "float16", False, True, False))  # 101 shares 100's bucket
    assert e is not None and e.choice == "32x32x32_g8_s1_w4_st3" and e.m == 100 and abs(e.gain - 1 / 0.9) < 1e-9
    assert t.lookup((96, 64, 32, 1, "float16", False, True, False)) is None
    assert len(t) == 2 and len(table.VerifiedTable(A100, path)) == 0  # another GPU's process sees nothing


def test_writes_are_atomic(clean, monkeypatch):
    path = clean / "t.json"
    _write(path, H100, {_bkey(): _entry()})
    before = path.read_bytes()

    def crash(src, dst):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        _write(path, H100, {_bkey(2000): _entry(m=2000)})
    monkeypatch.undo()
    assert path.read_bytes() == before, "a failed write leaves the table as it was"
    assert table.read_file(path)[0]


def test_merge_keeps_the_newer_measurement(clean):
    path = clean / "t.json"
    _write(path, H100, {_bkey(): _entry("torch", at="2026-01-01T00:00:00")})
    _write(path, H100, {_bkey(): _entry("32x32x32_g8_s1_w4_st3", at="2026-06-01T00:00:00")})
    _write(path, H100, {_bkey(): _entry("torch", at="2025-01-01T00:00:00")})  # older: loses
    (entry,) = table.read_file(path)[0].values()
    assert entry.choice == "32x32x32_g8_s1_w4_st3"


WRITER = """
import sys
from gpperf_torch.selection import table
from gpperf_torch.policy import verify_policy
from gpperf_torch.measure.device import KNOWN_DEVICES
from gpperf_torch.selection import state as state_mod
path, who = sys.argv[1], int(sys.argv[2])
ident = table.identity_of(KNOWN_DEVICES["h100"])
for i in range(25):
    key = verify_policy.bucket_key((1000 * who + i + 1, 64, 32, 1, "float16", False, True, False), steps=0)
    table.write_file(path, {(*ident, *key): table.Entry(choice="torch", m=key[0], times_ms={"torch": 1.0})})
"""


def test_two_concurrent_writers_merge(clean):
    path = clean / "t.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(w)], env=env) for w in (1, 2)]
    assert [p.wait(timeout=180) for p in procs] == [0, 0]
    entries, bad, _ = table.read_file(path)
    assert bad == 0 and len(entries) == 50, "every entry of both writers survives"
    assert not list(clean.glob("t.json.tmp*")), "no temporary file is left behind"


@pytest.mark.parametrize("content", ["{not json", "[]", '{"format": "something-else"}',
                                     '{"format": "gpperf-verified-table", "version": 99, "entries": []}'])  # fmt: skip
def test_a_corrupt_table_is_ignored_with_a_warning(clean, caplog, content):
    path = clean / "t.json"
    path.write_text(content)
    with caplog.at_level(logging.WARNING, logger="gpperf_torch.selection.table"):
        t = table.VerifiedTable(H100, path)
        assert t.lookup((100, 64, 32, 1, "float16", False, True, False)) is None
    assert any("ignoring verified table" in r.getMessage() and str(path) in r.getMessage() for r in caplog.records)


def test_an_unreadable_table_is_kept_as_a_backup_never_silently_replaced(clean, caplog):
    path = clean / "t.json"
    path.write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="gpperf_torch.selection.table"):
        _write(path, H100, {_bkey(): _entry()})
    backups = list(clean.glob("t.json.unreadable-*"))
    assert len(backups) == 1 and backups[0].read_text() == "{not json"
    assert len(table.read_file(path)[0]) == 1
    assert any(str(backups[0]) in r.getMessage() for r in caplog.records)


@pytest.mark.skipif(not kernels.interpreting() or torch.cuda.is_available(), reason="interpreter measurements")
def test_interpreter_measurements_are_marked_keyed_apart_and_never_served_to_a_gpu(clean, capsys, monkeypatch):
    ident = table.identity_of(H100)
    assert table.is_interpreted(ident[0]) and ident[0] != H100.name
    assert table.default_path(H100).name.endswith("-interpreter.json")
    path = clean / "t.json"
    _write(path, H100, {_bkey(): _entry()})
    assert cli_main(["table", "show", str(path)]) == 0
    out = capsys.readouterr().out
    assert " interpreter " in out and "not GPU times" in out
    assert (
        table.VerifiedTable(H100, path).lookup((100, 64, 32, 1, "float16", False, True, False)) is not None
    )  # this process: the interpreter's
    monkeypatch.setattr(table, "interpreted", lambda: False)  # a real H100 reading the same file
    assert table.identity_of(H100)[0] == H100.name
    assert table.VerifiedTable(H100, path).lookup((100, 64, 32, 1, "float16", False, True, False)) is None


def test_malformed_entries_are_ignored_and_counted(clean, caplog):
    path = clean / "t.json"
    _write(path, H100, {_bkey(): _entry()})
    doc = json.loads(path.read_text())
    doc["entries"].append({**doc["entries"][0], "n": "sixty-four"})
    doc["entries"].append({**doc["entries"][0], "choice": "not-a-config"})
    path.write_text(json.dumps(doc))
    with caplog.at_level(logging.WARNING, logger="gpperf_torch.selection.table"):
        assert len(table.VerifiedTable(H100, path)) == 1
    assert any("2 malformed entries" in r.getMessage() for r in caplog.records)


def test_a_foreign_table_is_ignored_with_a_warning(clean, caplog):
    path = clean / "t.json"
    _write(path, A100, {_bkey(): _entry()})
    with caplog.at_level(logging.WARNING, logger="gpperf_torch.selection.table"):
        assert len(table.VerifiedTable(H100, path)) == 0
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert "A100" in msg and "H100" in msg and "not using the verified table" in msg


def test_other_library_versions_are_ignored_with_a_warning(clean, caplog, monkeypatch):
    path = clean / "t.json"
    monkeypatch.setattr(table, "library_versions", lambda: ("2.5.1+cu124", "3.1.0"))
    _write(path, H100, {_bkey(): _entry()})
    monkeypatch.undo()
    with caplog.at_level(logging.WARNING, logger="gpperf_torch.selection.table"):
        assert len(table.VerifiedTable(H100, path)) == 0
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert "triton 3.1.0" in msg and "re-measure" in msg


# ---- the op with a table -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    # the second: a retrained model (same candidates, another forest and hash)
    return [export_synthetic_model(tmp_path_factory.mktemp(f"table_model{s}"), seed=s) for s in (0, 1)]


def _ab(m):
    return torch.randn(m, 24, dtype=torch.float16), torch.randn(16, 24, dtype=torch.float16).t()


@pytest.mark.skipif(not kernels.interpreting(), reason="the op measures through the Triton interpreter")
def test_gpperf_table_is_read_only_and_never_measures(fresh_selector, clean, model_dir, monkeypatch):
    info = state_mod.device_info(torch.device("cpu"))
    path = clean / "shipped.json"
    key = selector._key(*_ab(40), None)
    _write(path, info, {verify_policy.bucket_key(key[:8]): _entry("torch", m=40)})
    before = path.read_bytes()
    monkeypatch.setenv("GPPERF_TABLE", str(path))
    monkeypatch.setenv("GPPERF_DISK_CACHE", "1")
    monkeypatch.setenv("GPPERF_HOST_COST", "0")
    selector.reset()
    gp.set_model(str(model_dir[0]), "cpu")
    with gp.mode("verify"):
        assert selector.choose(*_ab(40), None, None) is None  # the table's choice
        selector.choose(*_ab(200), None, None)  # not in the table: the prediction, never a measurement
    assert verify.stats.shapes == 0 and verify.stats.table_hits == 1
    assert verify.stats.predicted == {"read-only table (GPPERF_TABLE) without this shape": 1}
    tbl = table.for_device(info)
    assert tbl.read_only and tbl.path == path
    with pytest.raises(ValueError, match="read-only"):
        tbl.add(_bkey(), _entry())
    selector.flush()
    assert path.read_bytes() == before
    assert not list(clean.glob("cache/verified-*.json")), "a read-only process writes no table of its own"


@pytest.mark.skipif(not kernels.interpreting(), reason="the op measures through the Triton interpreter")
def test_measured_choices_persist_across_processes_and_models(fresh_selector, clean, model_dir, monkeypatch):
    """Measurements survive a restart and a retrained model (the table is not keyed by the model)."""
    monkeypatch.setenv("GPPERF_DISK_CACHE", "1")
    monkeypatch.setenv("GPPERF_HOST_COST", "0")
    selector.reset()
    gp.set_model(str(model_dir[0]), "cpu")
    with gp.mode("verify"):
        gp.matmul(*_ab(40))
    assert verify.stats.shapes == 1
    selector.flush()
    info = state_mod.device_info(torch.device("cpu"))
    assert table.default_path(info).exists()
    selector.reset()  # a new process, in effect
    gp.set_model(str(model_dir[1]), "cpu")  # a retrained model
    with gp.mode("verify"):
        gp.matmul(*_ab(41))  # same bucket
    assert verify.stats.shapes == 0 and verify.stats.table_hits == 1
    csv_rows = dataset.load_table([str(verify.dataset_path(info.name))], include_interpreted=True)
    assert "torch" in set(csv_rows["backend"].tolist()), "the measurements are also tuning rows"


# ---- the command line -------------------------------------------------------------------------------------------
def test_table_show_and_merge(clean, capsys):
    a, b, out = clean / "a.json", clean / "b.json", clean / "merged.json"
    _write(a, H100, {_bkey(): _entry("32x32x32_g8_s1_w4_st3", at="2026-01-01")})
    _write(b, H100, {_bkey(): _entry("torch", at="2026-02-01"), _bkey(3000): _entry(m=3000)})
    _write(b, A100, {_bkey(): _entry()})
    assert cli_main(["table", "merge", str(a), str(b), "--out", str(out)]) == 0
    assert "3 entries" in capsys.readouterr().out
    entries = table.read_file(out)[0]
    assert len(entries) == 3
    time_key = (*_bkey(), "time")  # a bucket key written without an objective is a time key
    h100 = [
        e
        for k, e in entries.items()
        if k[0] == table.identity_of(H100)[0] and k[len(table.IDENTITY_FIELDS) :] == time_key
    ]
    assert [e.choice for e in h100] == ["torch"], "the newer measurement wins"
    assert cli_main(["table", "show", str(out)]) == 0
    text = capsys.readouterr().out
    assert "3 entries" in text and "A100" in text and "torch=1" in text
    assert cli_main(["table", "show", "--json", str(out)]) == 0
    recs = json.loads(capsys.readouterr().out)
    assert len(recs) == 3 and {"gpu", "m_lo", "m_hi", "choice", "gain"} <= set(recs[0])
    bad = clean / "bad.json"
    bad.write_text("[]")
    assert cli_main(["table", "show", str(bad)]) == 2
    assert "not a gpperf verified table" in capsys.readouterr().err


def test_entry_gain_and_dict():
    e = _entry("32x32x32_g8_s1_w4_st3")
    assert abs(e.gain - 1 / 0.9) < 1e-9 and replace(e, choice="torch").gain == 1.0
    assert e.as_dict()["gain"] == e.gain
