"""The prepared GPU check, dry run: every step and the summary through the Triton interpreter on tiny shapes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytest.importorskip("skl2onnx", reason="the check trains a model: needs the [train] extra")


@pytest.mark.timeout(500)
def test_gpu_check_dry_run(tmp_path):
    env = dict(os.environ, TRITON_INTERPRET="1", GPPERF_DISK_CACHE="0")
    # this checkout's package, whichever one the environment has installed (as gpu_check.sh's shim does)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    env.pop("OUT", None)
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/gpu_check.py"), "--dry-run", "--out", str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=490,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    steps = summary["steps"]
    assert list(steps) == ["env", "tests", "verify", "compile", "energy", "tune", "predict", "e2e", "overhead",
                           "decode", "model"]  # fmt: skip
    assert all(s["status"] == "ok" for s in steps.values()), {k: v.get("error") for k, v in steps.items()}
    assert steps["tests"]["result"]["passed"] > 0 and steps["tests"]["result"]["failures"] == 0
    assert steps["tune"]["result"]["rows_written"] > 0 and steps["tune"]["result"]["interpreted"]
    held = steps["predict"]["result"]["held_out"]
    assert held["n_shapes"] >= 1 and held["geomean_regret"] >= 1.0
    assert steps["e2e"]["result"]["shapes"] >= 1
    assert steps["overhead"]["result"]["first_sight_30_ms"][0] > 0
    assert set(steps["tests"]["result"]["runs"]) == {"lean_off", "lean_on"}  # the tests run both ways
    assert all(r["passed"] > 0 and r["failures"] == 0 for r in steps["tests"]["result"]["runs"].values())
    decode = steps["decode"]["result"]
    rows = {r["row"]: r for r in decode["rows"]}
    assert list(rows) == [
        "plain", "patched torch-only", "patched predict", "patched predict, lean", "patched verify",
        "patched verify, lean", "plain, CUDA graph", "patched predict, CUDA graph",
    ]  # fmt: skip
    assert decode["interpreter"] and decode["gemm_calls_per_step"] > 0
    for name in ("plain", "patched torch-only", "patched predict", "patched verify"):
        assert rows[name]["tokens_per_s"] > 0 and rows[name]["us_per_gemm"] > 0, rows[name]
        assert rows[name]["max_dlogit_vs_plain"] < 1e-3
    assert "skipped" in rows["plain, CUDA graph"]  # no GPU
    ver = steps["verify"]["result"]
    assert ver["interpreter"] and [m["model"] for m in ver["models"]] == ["decoder", "vit_mlp", "timm_odd"]
    for m in ver["models"]:
        assert m["plain_ms"] > 0 and m["predict_ms"] > 0 and m["verify_ms"] > 0, m
        assert m["shapes"] >= 1 and m["measured"] == m["shapes"] and m["candidates_per_shape"] >= 1, m
    assert "triton_choices" in ver["noise_check"], ver["noise_check"]
    comp = steps["compile"]["result"]
    assert comp["cpu_lowering"] and {r["config"] for r in comp["rows"]} == {
        "default", "gpperf predict", "gpperf verify", "max-autotune"}  # fmt: skip
    done = [r for r in comp["rows"] if "steady_ms" in r]
    assert done and all(r["compile_s"] > 0 and r["max_abs_diff_vs_eager"] < 1e-3 for r in done), comp["rows"]
    assert not [r for r in comp["rows"] if "error" in r], comp["rows"]
    en = steps["energy"]["result"]
    assert en["interpreter"] and not en["counter"]["available"] and len(en["shapes"]) >= 2
    for r in en["shapes"]:
        assert len(r["candidates"]) >= 2 and r["time_opt"] in {c["config"] for c in r["candidates"]}, r
        assert all(c["j"] is None for c in r["candidates"]) and r["saving"] is None  # no counter: n/a, never 0
    dec_rows = {r["row"]: r for r in en["decoder"]["rows"]}
    assert list(dec_rows) == ["plain", "time, guard", "energy, guard"]
    assert all(r["tokens_per_s"] > 0 and r["j_per_token"] is None and r["energy_na"] for r in dec_rows.values())
    for name in ("summary.md", "tune.csv", "e2e.csv", "tests.xml", "model.onnx", "model.json"):
        assert (tmp_path / name).is_file(), name
    assert len(list(tmp_path.iterdir())) <= 8, "a device call brings back at most 8 files"
    md = (tmp_path / "summary.md").read_text()
    assert "| tune | ok |" in md and "held-out" in md
    assert "| energy | ok |" in md and "| shape | candidates | time-opt |" in md and "decoder J/token" in md
    assert "| decode row | tokens/s |" in md and "INTERPRETER NUMBERS" in md
    assert "| model | plain ms | predict ms | verify ms |" in md and "noise check" in md
    assert "| model | config | compile s | steady ms | GEMMs on templates |" in md and "| compile | ok |" in md
    assert md.strip() in proc.stdout, "the summary table is printed last"


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET", "0") in ("", "0"), reason="re-times through the interpreter")
def test_noise_check_retimes_verified_triton_choices(tmp_path):
    """The verify step's noise check on a table with one Triton choice (the dry run's interpreter keeps none)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from gpucheck.verify import noise_check
    finally:
        sys.path.pop(0)
    import torch

    from gpperf_torch.measure.device import device_for
    from gpperf_torch.policy import verify_policy
    from gpperf_torch.selection import table

    info = device_for(torch.device("cpu"))
    key = verify_policy.bucket_key((20, 16, 24, 1, "float32", False, True, False))
    entry = table.Entry(choice="16x16x32_g8_s1_w4_st3", m=20, times_ms={"torch": 1.0, "16x16x32_g8_s1_w4_st3": 0.5})
    path = tmp_path / "t.json"
    table.write_file(path, {(*table.identity_of(info), *key): entry})
    res = noise_check(str(path))
    assert res["triton_choices"] == 1 and res["rows"][0]["verified_gain"] == 2.0
    assert res["rows"][0]["retimed_gain"] > 0 and 0.0 <= res["share_slower"] <= 1.0
