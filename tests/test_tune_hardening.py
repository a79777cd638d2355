"""`tune` never edits a file that is not a gpperf dataset, and refuses settings that mean nothing (a count of 0,
a negative or NaN budget) instead of reading them as a default or as "no limit"."""

from __future__ import annotations

import math

import pytest
import torch

from gpperf_torch.cli.main import main as cli_main
from gpperf_torch.errors import DataFileError
from gpperf_torch.kernels import TileConfig
from gpperf_torch.measure import writer
from gpperf_torch.measure.dataset import COLUMNS
from gpperf_torch.measure.writer import HEADER_LINE, LOCK_SUFFIX, check_out_file
from gpperf_torch.tuning import tune as tune_mod
from gpperf_torch.tuning.precompile import Precompiler

INTERP = not torch.cuda.is_available()
CFG = TileConfig(16, 16, 32, num_warps=1, num_stages=2)
FAST = dict(interpret=INTERP, energy_fraction=0.0, time_budget_ms=2.0, quiet=True, jobs=0)

FOREIGN = {
    "csv_torn_tail": b"name,age,city\nann,31,oslo\nbob,4",  # the example: a torn last line
    "csv_whole": b"name,age\nann,31\n",
    "one_line_no_newline": b"x,y",
    "older_gpperf_header": b"gpu,m,n,k,dtype,config,time_ms\nH100,1,2,3,float16,,0.1\n",
    "our_columns_reordered": (",".join(reversed(COLUMNS)) + "\n").encode(),
    "our_header_plus_column": (",".join(COLUMNS) + ",extra\n").encode(),
    "our_header_crlf": (",".join(COLUMNS) + "\r\n").encode(),
    "binary": bytes(range(256)),
    "latin1": "caf\xe9,cr\xe8me\n".encode("latin-1"),
    "json": b'{"version": 1, "selections": {}}',
    "public_format": b"gpu,m,k,n,dtype,a_stride0,a_stride1,b_stride0,b_stride1,tf32,backend\nH100,1,2,3\n",
}


@pytest.mark.parametrize("kind", sorted(FOREIGN))
def test_a_file_that_is_not_ours_is_refused_untouched(tmp_path, kind):
    out = tmp_path / "f.csv"
    out.write_bytes(FOREIGN[kind])
    before = (out.read_bytes(), out.stat().st_mtime_ns)
    with pytest.raises(DataFileError) as info:
        tune_mod.tune(out, shapes=[(16, 16, 16)], configs=[CFG], **FAST)
    assert str(out) in str(info.value) and "nothing was changed" in str(info.value)
    assert (out.read_bytes(), out.stat().st_mtime_ns) == before
    assert not (tmp_path / ("f.csv" + LOCK_SUFFIX)).exists()  # refused before the lock file is made
    with pytest.raises(DataFileError):  # and the writer alone refuses it too
        writer.DatasetWriter(out)
    assert (out.read_bytes(), out.stat().st_mtime_ns) == before


def test_a_directory_as_out_is_one_clear_error(tmp_path):
    with pytest.raises(DataFileError, match="is a directory; --out names the CSV file"):
        tune_mod.tune(tmp_path, shapes=[(16, 16, 16)], configs=[CFG], **FAST)


@pytest.mark.parametrize("cut", [0, 1, 10, len(HEADER_LINE) - 1])
def test_our_header_cut_short_by_a_crash_is_ours(tmp_path, cut):
    out = tmp_path / "t.csv"
    out.write_bytes(HEADER_LINE[:cut])
    check_out_file(out)  # passes: the file holds nothing but the start of our header
    s = tune_mod.tune(out, shapes=[(16, 16, 16)], configs=[CFG], torch_baseline=False, **FAST)
    assert s.rows_written == 1 and out.read_bytes().startswith(HEADER_LINE)


@pytest.mark.parametrize("content", [None, b"", HEADER_LINE, HEADER_LINE + b"H100,1"])
def test_ours_passes_the_check(tmp_path, content):
    out = tmp_path / "t.csv"
    if content is not None:
        out.write_bytes(content)
    check_out_file(out)
    if content is not None:
        assert out.read_bytes() == content  # the check itself never edits


BAD_SETTINGS = [
    ("max_shapes", 0), ("max_shapes", -1), ("max_shapes", 1.5), ("budget_s", 0), ("budget_s", -2.0),
    ("budget_s", math.nan), ("budget_s", math.inf), ("time_budget_ms", 0), ("time_budget_ms", -5.0),
    ("time_budget_ms", math.nan), ("idle_s", -1.0), ("idle_s", math.nan), ("energy_window_s", 0.0),
    ("energy_window_s", -0.25), ("energy_fraction", 1.5), ("energy_fraction", -0.1), ("energy_fraction", math.nan),
    ("chunk", 0), ("chunk", -4), ("jobs", -1), ("random_count", 0), ("configs_per_shape", 0),
    ("configs_per_shape", -3), ("max_shapes", True),
]  # fmt: skip


@pytest.mark.parametrize(("name", "value"), BAD_SETTINGS, ids=[f"{n}={v}" for n, v in BAD_SETTINGS])
def test_settings_that_mean_nothing_are_refused_before_any_work(tmp_path, name, value):
    out = tmp_path / "t.csv"
    kw = {**FAST, name: value}
    with pytest.raises(ValueError, match=name):
        tune_mod.tune(out, shapes=[(16, 16, 16)], configs=[CFG], **kw)
    assert not out.exists()


CLI_BAD = [
    ("--max-shapes", "0"), ("--max-shapes", "-2"), ("--max-shapes", "x"), ("--budget-s", "-2"),
    ("--budget-s", "0"), ("--budget-s", "nan"), ("--budget-s", "inf"), ("--time-budget-ms", "0"),
    ("--energy-window-s", "-1"), ("--energy-fraction", "2"), ("--idle-s", "-0.5"), ("--chunk", "0"),
    ("--jobs", "-1"), ("--random-count", "0"), ("--configs-per-shape", "0"),
]  # fmt: skip


@pytest.mark.parametrize(("flag", "value"), CLI_BAD, ids=[f"{f}={v}" for f, v in CLI_BAD])
def test_cli_refuses_meaningless_numbers(tmp_path, capsys, flag, value):
    out = tmp_path / "t.csv"
    with pytest.raises(SystemExit) as info:
        cli_main(["tune", "--preset", "square", "--out", str(out), flag, value])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and value in err and "Traceback" not in err
    assert not out.exists()


def test_precompiler_wait_honours_its_timeout():
    pool = Precompiler([], jobs=0)
    try:
        v = ("16x16x32_g8_s1_w1_st2", "float16", 0, 0, 0, 16, 16, 16)
        pool._running.add(v)  # as if a worker were compiling it
        assert pool.wait(v, timeout=0.01) is False
        assert pool.wait(v, timeout=-5) is False  # a budget already spent
        pool._running.clear()
        assert pool.wait(v, timeout=0.01) is True
        pool._pending.append(v)  # not started: left to the caller at once
        assert pool.wait(v, timeout=0) is True and v not in pool._pending
        assert pool.wait(None) is True
    finally:
        pool.close()
