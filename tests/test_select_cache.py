"""The selection disk cache never hurts a matmul: every entry is checked on load, one that is malformed or that
names a config this model/device cannot run is ignored with one warning naming the file, and the file is keyed
by the model's whole description (an edited model.json never reuses another candidate set's selections)."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch

import gpperf_torch as gp
from gpperf_torch import kernels
from gpperf_torch.predictor import analytic
from gpperf_torch.predictor.runtime import Predictor, file_sha256, model_paths, shipped_model
from gpperf_torch.selection import ranking, select_cache, selector
from gpperf_torch.selection import state as state_mod


@pytest.fixture
def cache_on(monkeypatch, tmp_path):
    monkeypatch.setenv("GPPERF_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("GPPERF_DISK_CACHE", "1")
    monkeypatch.delenv("GPPERF_MODEL", raising=False)
    selector.reset()
    select_cache._warned.clear()
    yield tmp_path / "cache"
    selector.reset()


def _operands():
    return torch.randn(8, 12), torch.randn(12, 16)


def _state():
    return selector._state(torch.device("cpu"))


def _write(path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))


def _bad_values(st) -> dict[str, object]:
    # invalid for the fp32 64x64x64 entry below by the selector's own rule (the compiler's facts, else the estimate)
    valid = ranking.valid_candidates(st, "float32", (64, 64, 64, False, False, False))
    es4 = [c for c in st.model.candidates if c is not None and c not in valid]
    outside = next(c for c in kernels.candidate_space() if c not in st.model.candidates)
    return {
        "zzz": "zzz",
        "number": 123,
        "null": None,
        "list": ["torch"],
        "half_key": "64x64x32_g8",
        "not_a_candidate": outside.key,
        "invalid_on_device": es4[0].key,  # needs more shared memory (or spills) for fp32 on this GPU
    }


BAD_KEYS = [
    "1,2,3", "a,12,16,1,float32,0,0,0,time", "-8,16,12,1,float32,0,0,0,time", "8,16,12,1,float32,2,0,0,time",
    "8,16,12,1,float8,0,0,0,time", "8,16,12,1,float32,0,0,0,bogus", "8,16,12,1,float32,0,0,0,power_cap:nan",
    "8,16,12,1,,0,0,0,time", "8,16,12,-1,float32,0,0,0,time",
]  # fmt: skip
BAD_VALUE_NAMES = ["zzz", "number", "null", "list", "half_key", "not_a_candidate", "invalid_on_device"]


@pytest.mark.parametrize("bad", BAD_VALUE_NAMES)
def test_a_bad_value_is_ignored_per_entry_and_the_file_named(cache_on, caplog, bad):
    a, b = _operands()
    st = _state()
    key = selector._key(a, b, None)
    good_other = (*key[:3], 2, *key[4:])  # the same GEMM batched twice: another, good entry
    bad_value = _bad_values(st)[bad]
    other = select_cache._key_to_str((64, 64, 64, 1, "float32", False, False, False, "time"))
    _write(
        st.disk.path,
        {
            "version": 1,
            "selections": {
                select_cache._key_to_str(key): "torch",
                select_cache._key_to_str(good_other): "torch",
                other: bad_value,
            },
        },
    )
    selector.reset()
    with caplog.at_level(logging.WARNING, logger="gpperf_torch.selection.select_cache"):
        out = gp.matmul(a, b)  # never raises
        c, d = torch.randn(64, 64), torch.randn(64, 64)
        torch.testing.assert_close(gp.matmul(c, d), c @ d, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out, a @ b, rtol=1e-5, atol=1e-5)
    st = _state()
    assert st.memory[key] is None and st.memory[good_other] is None  # the good entries were used
    msgs = [r.getMessage() for r in caplog.records if "selection cache" in r.getMessage()]
    assert len(msgs) == 1 and str(st.disk.path) in msgs[0] and "ignoring 1 of 3 entries" in msgs[0]


@pytest.mark.parametrize("bad_key", BAD_KEYS)
def test_a_bad_key_is_ignored_per_entry(cache_on, caplog, bad_key):
    a, b = _operands()
    st = _state()
    key = selector._key(a, b, None)
    _write(st.disk.path, {"selections": {select_cache._key_to_str(key): "torch", bad_key: "torch"}})
    selector.reset()
    with caplog.at_level(logging.WARNING, logger="gpperf_torch.selection.select_cache"):
        torch.testing.assert_close(gp.matmul(a, b), a @ b, rtol=1e-5, atol=1e-5)
    assert _state().memory[key] is None
    msgs = [r.getMessage() for r in caplog.records if "selection cache" in r.getMessage()]
    assert len(msgs) == 1 and "ignoring 1 of 2 entries" in msgs[0] and str(st.disk.path) in msgs[0]


CORRUPT = {
    "not_json": "{not json",
    "list_root": "[1, 2]",
    "string_root": '"selections"',
    "selections_list": '{"selections": ["a"]}',
    "selections_null": '{"selections": null}',
    "binary": "\x00\x01\x02",
    "empty": "",
}


@pytest.mark.parametrize("kind", sorted(CORRUPT))
def test_a_corrupt_file_is_ignored_and_rewritten_on_flush(cache_on, caplog, kind):
    a, b = _operands()
    st = _state()
    _write(st.disk.path, CORRUPT[kind])
    selector.reset()
    with caplog.at_level(logging.WARNING, logger="gpperf_torch.selection.select_cache"):
        torch.testing.assert_close(gp.matmul(a, b), a @ b, rtol=1e-5, atol=1e-5)
    msgs = [r.getMessage() for r in caplog.records if "selection cache" in r.getMessage()]
    assert len(msgs) == 1 and str(st.disk.path) in msgs[0]
    selector.flush_caches()
    written = json.loads(st.disk.path.read_text())
    assert isinstance(written["selections"], dict) and len(written["selections"]) == 1
    backups = list(st.disk.path.parent.glob(st.disk.path.name + ".unreadable-*"))
    assert len(backups) == 1 and backups[0].read_text() == CORRUPT[kind], "the unreadable file is kept"


def test_flush_keeps_good_entries_of_other_processes_and_drops_malformed(cache_on):
    a, b = _operands()
    st = _state()
    theirs = select_cache._key_to_str((32, 32, 32, 1, "float16", False, True, False, "time"))
    _write(st.disk.path, {"selections": {theirs: "torch", "1,2": "torch", "8,8,8,1,float16,0,0,0,time": "zzz"}})
    gp.matmul(a, b)
    selector.flush_caches()
    sel = json.loads(st.disk.path.read_text())["selections"]
    assert theirs in sel and "1,2" not in sel and "8,8,8,1,float16,0,0,0,time" not in sel and len(sel) == 2


def _copy_model(src_onnx, dst_dir, edit=None):
    dst_dir.mkdir(parents=True)
    onnx_path, json_path = model_paths(src_onnx)
    shutil.copy(onnx_path, dst_dir / "model.onnx")
    meta = json.loads(json_path.read_text())
    if edit:
        edit(meta)
    (dst_dir / "model.json").write_text(json.dumps(meta))
    assert file_sha256(dst_dir / "model.onnx") == meta["onnx_sha256"]
    return dst_dir


@pytest.mark.parametrize("edit", ["drop_candidates", "time_floor", "reorder_candidates"])
def test_an_edited_model_json_gets_its_own_cache_file(cache_on, tmp_path, edit):
    src = shipped_model("h100")
    edits = {
        "drop_candidates": lambda m: m.update(candidates=m["candidates"][: len(m["candidates"]) // 2]),
        "time_floor": lambda m: m.update(time_floor_ms=1.0),
        "reorder_candidates": lambda m: m.update(candidates=m["candidates"][::-1]),
    }
    a_dir = _copy_model(src, tmp_path / "a")
    b_dir = _copy_model(src, tmp_path / "b", edits[edit])
    pa, pb = Predictor.load(a_dir), Predictor.load(b_dir)
    assert pa.model_hash == pb.model_hash  # same ONNX file ...
    info = state_mod.device_info(torch.device("cpu"))
    ca = select_cache.DiskCache(info, select_cache.cache_token(pa.meta))
    cb = select_cache.DiskCache(info, select_cache.cache_token(pb.meta))
    assert ca.path != cb.path  # ... yet not the same selections


def test_analytic_token_depends_on_its_parameters():
    t1 = select_cache.cache_token(None, analytic.ANALYTIC_PARAMS)
    t2 = select_cache.cache_token(None, {**analytic.ANALYTIC_PARAMS, "tile_exp": 0.6})
    assert t1 != t2 and t1 == select_cache.cache_token(None, dict(analytic.ANALYTIC_PARAMS))


def test_disabled_cache_reads_nothing(cache_on, monkeypatch):
    st = _state()
    _write(st.disk.path, "{broken")
    monkeypatch.setenv("GPPERF_DISK_CACHE", "off")
    selector.reset()
    assert not _state().disk.enabled and _state().disk.load() == {}
