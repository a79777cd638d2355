"""Reading datasets: torn and malformed rows are dropped (counted in one warning), never read as data; a file
that is not a dataset is a DataFileError naming the file; the readers never modify what they read."""

from __future__ import annotations

import csv
import io
import logging
import math

import pytest

from gpperf_torch.errors import DataFileError
from gpperf_torch.kernels import TileConfig
from gpperf_torch.measure import dataset

CFG = TileConfig(32, 32, 32, num_warps=4, num_stages=3)


def our_rows(n: int = 4, interpreted: int = 0) -> list[dict]:
    rows = []
    for i in range(n):
        triton = i % 2 == 0
        r = dict.fromkeys(dataset.COLUMNS, "")
        r.update(
            gpu="NVIDIA H100 80GB HBM3", m=64 * (i + 1), n=128, k=96, dtype="float16", a_trans=0, b_trans=1, tf32=0,
            backend="triton" if triton else "torch", config=CFG.key if triton else "", status="ok",
            time_ms=f"{291.222 + i:.6g}", power_w="301.5", energy_j="0.0877", interpreted=interpreted,
            capability="9.0", sm_count=132, run_id="run-abcdef", timestamp="2026-12-01T09:00:00Z",
        )  # fmt: skip
        if triton:
            r.update(CFG.as_dict())
        rows.append(r)
    return rows


def write_ours(path, rows) -> bytes:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=dataset.COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    path.write_bytes(buf.getvalue().encode())
    return path.read_bytes()


PUBLIC_HEADER = (
    "gpu,m,k,n,dtype,a_stride0,a_stride1,b_stride0,b_stride1,tf32,backend,block_m,block_k,block_n,num_stages,"
    "num_warps,time_ms_median,n_repeats,time_ms_min,time_ms_max"
)
PUBLIC_LINES = [
    "H100,256,512,1024,float16,512,1,1024,1,not_float_32,extern_mm,,,,,,0.0291222,3,0.029,0.0295",
    "H100,256,512,1024,float16,512,1,1024,1,not_float_32,triton,64,32,64,3,4,0.0311,3,0.031,0.0312",
    "H100,256,512,1024,float16,512,1,1024,1,not_float_32,triton,128,32,64,4,8,0.0402,3,0.040,0.0404",
]


def write_public(path, lines=PUBLIC_LINES) -> bytes:
    path.write_bytes(("\n".join([PUBLIC_HEADER, *lines]) + "\n").encode())
    return path.read_bytes()


def _as_tuples(t: dataset.Table) -> list[tuple]:
    names = ("gpu", "m", "n", "k", "dtype", "a_trans", "b_trans", "backend", "config", "status", "interpreted")
    floats = ("time_ms", "power_w", "energy_j")  # NaN as None: NaN != NaN would make equal rows differ
    return [
        tuple(t[c][i] for c in names) + tuple(None if math.isnan(t[c][i]) else float(t[c][i]) for c in floats)
        for i in range(len(t))
    ]


# ---- torn rows: every cut of the last row ------------------------------------------------------------------
@pytest.mark.parametrize("interpreted", [0, 1])
def test_torn_last_row_of_ours_is_never_read_as_data(tmp_path, interpreted):
    path = tmp_path / "cut.csv"
    full = write_ours(path, our_rows(4, interpreted))
    whole = _as_tuples(dataset.load_table(path, include_interpreted=True))
    last_start = full.rstrip(b"\n").rfind(b"\n") + 1
    for cut in range(last_start + 1, len(full) - 1):
        path.write_bytes(full[:cut])
        got = _as_tuples(dataset.load_table(path, include_interpreted=True))
        # Either the torn row is gone, or it was cut only inside a field nobody reads (the timestamp).
        assert got in (whole[:-1], whole), f"cut at byte {cut}: {got[-1]} is not any row of the file"
        if got == whole:
            assert full[:cut].count(b",") == full.count(b",")  # all fields present
        # An interpreter row never turns into a GPU row.
        gpu_only = dataset.load_table(path) if not interpreted else None
        if interpreted:
            with pytest.raises(DataFileError, match="interpreter"):
                dataset.load_table(path)
        else:
            assert len(gpu_only) == len(got)


def test_torn_last_row_of_public_is_never_read_as_data(tmp_path):
    path = tmp_path / "pub.csv"
    full = write_public(path)
    whole = _as_tuples(dataset.load_table(path))
    last_start = full.rstrip(b"\n").rfind(b"\n") + 1
    for cut in range(last_start + 1, len(full) - 1):
        path.write_bytes(full[:cut])
        got = _as_tuples(dataset.load_table(path))
        assert got in (whole[:-1], whole), f"cut at byte {cut}: {got[-1]}"


def test_torn_row_example_from_the_issue(tmp_path, caplog):
    """291.222 cut to '29' with the rest of the line gone: the row is dropped, not read as 29 ms."""
    path = tmp_path / "cut.csv"
    full = write_ours(path, our_rows(3))
    cut = full.rindex(b"291.222".replace(b"291", b"293")) + 2  # the last row's time_ms, after "29"
    path.write_bytes(full[:cut])
    with caplog.at_level(logging.WARNING, logger="gpperf_torch.measure.dataset"):
        t = dataset.load_table(path)
    assert len(t) == 2 and all(x > 290 for x in t["time_ms"].tolist())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "dropped 1 malformed rows" in warnings[0] and str(path) in warnings[0]


# ---- values that do not parse ----------------------------------------------------------------------------
OURS_BAD = [
    ("m", "12x"), ("m", "-4"), ("m", "0"), ("m", "6.5"), ("m", ""), ("n", "1e"), ("k", "abc"),
    ("time_ms", "29.1.2"), ("time_ms", "29ms"), ("dtype", "float8"), ("dtype", ""), ("status", "okay"),
    ("a_trans", "2"), ("b_trans", "yes"), ("tf32", "-1"), ("backend", "cudnn"), ("backend", ""),
    ("interpreted", "yes"), ("interpreted", "2"), ("block_m", ""), ("block_m", "big"), ("num_warps", "0"),
    ("power_w", "abc"), ("energy_j", "1,2"), ("gpu", ""), ("sm_count", "many"),
]  # fmt: skip


@pytest.mark.parametrize(("column", "value"), OURS_BAD, ids=[f"{c}={v!r}" for c, v in OURS_BAD])
def test_unparseable_value_in_ours_drops_the_row(tmp_path, caplog, column, value):
    rows = our_rows(4)
    rows[2][column] = value  # row 2 is a Triton row
    path = tmp_path / "bad.csv"
    before = write_ours(path, rows)
    with caplog.at_level(logging.WARNING, logger="gpperf_torch.measure.dataset"):
        t = dataset.load_table(path)
    assert len(t) == 3 and 64 * 3 not in t["m"].tolist()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "dropped 1 malformed rows" in warnings[0] and "line 4" in warnings[0] and str(path) in warnings[0]
    assert path.read_bytes() == before  # reading never edits


PUBLIC_BAD = [
    (1, "256", "x256"), (1, "float16", "float4"), (1, "not_float_32", "maybe"), (1, "0.0311", "0.03.11"),
    (1, ",64,32,64,", ",sixty,32,64,"), (1, "triton", "cutlass"), (0, "extern_mm", ""), (2, ",8,0.0402", ",0,0.0402"),
]  # fmt: skip


@pytest.mark.parametrize(("line", "old", "new"), PUBLIC_BAD, ids=[f"{o}->{n}" for _, o, n in PUBLIC_BAD])
def test_unparseable_value_in_public_drops_the_row(tmp_path, caplog, line, old, new):
    lines = list(PUBLIC_LINES)
    lines[line] = lines[line].replace(old, new, 1)
    path = tmp_path / "pub.csv"
    write_public(path, lines)
    with caplog.at_level(logging.WARNING, logger="gpperf_torch.measure.dataset"):
        t = dataset.load_table(path)
    assert len(t) == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "dropped 1 malformed rows" in warnings[0]


@pytest.mark.parametrize("extra", ["", ",extra", ",a,b,c"])
def test_rows_with_a_wrong_number_of_fields_are_counted_in_one_warning(tmp_path, caplog, extra):
    path = tmp_path / "x.csv"
    full = write_ours(path, our_rows(4)).decode().splitlines()
    # Two rows broken: one cut short, one with fields added (or a second cut when extra is "").
    full[1] = full[1].rsplit(",", 3)[0]
    full[3] = full[3] + extra if extra else full[3].rsplit(",", 1)[0]
    path.write_text("\n".join(full) + "\n")
    with caplog.at_level(logging.WARNING, logger="gpperf_torch.measure.dataset"):
        t = dataset.load_table(path)
    assert len(t) == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "dropped 2 malformed rows (2 with a wrong number of fields" in warnings[0]


def test_integral_floats_and_blank_lines_are_accepted(tmp_path):
    rows = our_rows(2)
    rows[0]["m"] = "64.0"
    path = tmp_path / "ok.csv"
    write_ours(path, rows)
    path.write_text(path.read_text() + "\n\n")
    t = dataset.load_table(path)
    assert len(t) == 2 and t["m"].tolist()[0] == 64


def test_failed_rows_keep_their_status(tmp_path):
    rows = our_rows(2)
    rows[0].update(status="compile_error", time_ms="", block_m="", error="boom")
    path = tmp_path / "f.csv"
    write_ours(path, rows)
    t = dataset.load_table(path)
    assert t["status"].tolist() == ["compile_error", "ok"] and math.isinf(t["time_ms"][0]) and not t.ok[0]


# ---- files that are not datasets -----------------------------------------------------------------------------
BAD_FILES = {
    "missing": None,
    "empty": b"",
    "blank": b"\n\n  \n",
    "binary": bytes(range(256)) * 4,
    "nul": b"gpu,m,n\x00,k\n1,2,3\n",
    "latin1": "gpu,m,n,k\nH100,1,2,3,caf\xe9\n".encode("latin-1"),
    "foreign": b"name,age\nann,31\nbob,4",
    "truncated_header": b"gpu,m,n,k,dtype,a_tr",
    "json": b'{"selections": {}}\n',
    "header_only": ",".join(dataset.COLUMNS).encode() + b"\n",
}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_a_file_that_is_not_a_dataset_is_one_clear_error(tmp_path, kind):
    path = tmp_path / f"{kind}.csv"
    if BAD_FILES[kind] is not None:
        path.write_bytes(BAD_FILES[kind])
    before = path.read_bytes() if path.exists() else None
    with pytest.raises(DataFileError) as info:
        dataset.load_table(path)
    msg = str(info.value)
    assert str(path) in msg and "\n" not in msg and "Traceback" not in msg
    assert (path.read_bytes() if path.exists() else None) == before


def test_a_directory_is_named(tmp_path):
    with pytest.raises(DataFileError, match="is a directory"):
        dataset.load_table(tmp_path)


def test_all_rows_malformed_says_so(tmp_path):
    rows = our_rows(2)
    for r in rows:
        r["dtype"] = "int8"
    path = tmp_path / "bad.csv"
    write_ours(path, rows)
    with pytest.raises(DataFileError, match="all 2 rows are malformed"):
        dataset.load_table(path)


def test_only_interpreted_rows_explains_why_and_what_to_pass(tmp_path):
    path = tmp_path / "interp.csv"
    write_ours(path, our_rows(4, interpreted=1))
    with pytest.raises(DataFileError) as info:
        dataset.load_table(path)
    msg = str(info.value)
    assert "all 4 measured rows" in msg and "not GPU timings" in msg and "--include-interpreted" in msg
    assert len(dataset.load_table(path, include_interpreted=True)) == 4


def test_no_paths_is_an_error():
    with pytest.raises(DataFileError, match="no data files"):
        dataset.load_table([])


def test_a_byte_order_mark_is_not_part_of_the_header(tmp_path):
    path = tmp_path / "bom.csv"
    body = write_ours(path, our_rows(2))
    path.write_bytes(b"\xef\xbb\xbf" + body)
    assert len(dataset.load_table(path)) == 2


def test_a_field_past_the_csv_limit_is_a_data_file_error(tmp_path):
    path = tmp_path / "huge.csv"
    path.write_bytes(",".join(dataset.COLUMNS).encode() + b'\n"' + b"x" * (csv.field_size_limit() + 10) + b'"\n')
    with pytest.raises(DataFileError, match="not a readable CSV"):
        dataset.load_table(path)
