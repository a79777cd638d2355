"""Selection: objectives, cuBLAS as a candidate, caching (memory + disk), fallback, explain, CLI, verify mode."""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys

import pytest
import torch

import gpperf_torch as gp
from gpperf_torch import kernels
from gpperf_torch.cli.main import main as cli_main
from gpperf_torch.kernels import TileConfig
from gpperf_torch.measure import dataset
from gpperf_torch.selection import selector

from helpers import FAST, FRUGAL, synthetic_rows

pytest.importorskip("sklearn", reason="training a test model needs the [train] extra")
from gpperf_torch.predictor import train  # noqa: E402
from gpperf_torch.selection import objectives


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    out = {}
    for name, energy in (("energy", True), ("time", False)):
        table = dataset.from_rows(synthetic_rows(energy))
        fitted = train.fit(table, seed=0, n_jobs=1, n_estimators=20)
        d = tmp_path_factory.mktemp(f"model_{name}")
        train.export(fitted, d, {"provenance": "synthetic test data"})
        out[name] = d
    return out


@pytest.fixture
def fresh(fresh_selector, monkeypatch):
    """tests/conftest.py's fresh_selector, without the eager per-call host cost: the synthetic kernels take a few
    microseconds, where a Triton launch's host cost would send every shape to torch.matmul (tested apart)."""
    monkeypatch.setenv("GPPERF_HOST_COST", "0")


def _key(m=1024, n=1024, k=1024, obj="time"):
    return (m, n, k, 1, "float16", False, True, False, obj)


def _st(model_dir):
    gp.set_model(str(model_dir), "cpu")
    return selector._state(torch.device("cpu"))


def test_objectives_choose_by_their_rule(fresh, model_dirs):
    st = _st(model_dirs["energy"])
    assert st.model.targets == ("time_ms", "power_w", "energy_j")
    best = {obj: selector.rank(st, _key(obj=obj))[0][0] for obj in ("time", "energy", "edp", "balanced")}
    assert best["time"] == FAST
    assert best["energy"] == FRUGAL
    assert best["balanced"] == FRUGAL  # 3% slower is inside the 5% slack, and uses less energy
    strict = selector.rank(st, _key(obj="balanced:0.001"))[0][0]
    assert strict == FAST  # nothing else is within 0.1% of the fastest
    cap = selector.rank(st, _key(obj="power_cap:320"))
    assert cap[0][0] == FRUGAL and cap[0][1]["power_w"] <= 320  # FAST (400 W) is over the cap


def test_power_cap_nobody_fits_takes_lowest_power(fresh, model_dirs, caplog):
    st = _st(model_dirs["energy"])
    with caplog.at_level(logging.WARNING):
        ranked = selector.rank(st, _key(obj="power_cap:10"))
    assert ranked[0][0] == FRUGAL and "no config is predicted under" in caplog.text


def test_energy_objective_on_time_only_model_takes_the_time_pick(fresh, model_dirs):
    st = _st(model_dirs["time"])
    assert selector.rank(st, _key())[0][0] == FAST
    for obj in ("energy", "edp", "balanced:0.05"):  # issue 28: energy tracks time within a shape
        assert selector.rank(st, _key(obj=obj))[0][0] == FAST
    with pytest.raises(ValueError, match="gpperf-torch tune.*gpperf-torch train"):  # a cap is a constraint
        selector.rank(st, _key(obj="power_cap:300"))


def test_torch_is_a_candidate(fresh, model_dirs):
    st = _st(model_dirs["energy"])
    ranked = selector.rank(st, _key(8, 8, 8))
    assert None in [c for c, _ in ranked], "torch.matmul (cuBLAS) must be scored with the rest"


def test_op_uses_objective_context_and_caches(fresh, model_dirs, monkeypatch):
    gp.set_model(str(model_dirs["energy"]), "cpu")
    calls = []
    real = selector.rank
    monkeypatch.setattr(selector, "rank", lambda st, key: calls.append(key) or real(st, key))
    a = torch.randn(1024, 512, dtype=torch.float16)
    w = torch.randn(768, 512, dtype=torch.float16)
    assert selector.choose(a, w.t(), None, None) == FAST
    assert selector.choose(a, w.t(), None, None) == FAST
    assert len(calls) == 1, "the second call must be a cache hit"
    with gp.objective("energy"):
        assert selector.choose(a, w.t(), None, None) == FRUGAL
    assert len(calls) == 2 and calls[1][-1] == "energy"
    if kernels.interpreting():
        a, w = a[:40, :48], w[:24, :48]
        with gp.objective("energy"):
            out = gp.matmul(a, w.t())
        torch.testing.assert_close(out.float(), a.float() @ w.float().t(), rtol=2e-3, atol=2e-2)


def test_env_objective_and_mode(fresh, monkeypatch):
    monkeypatch.setenv("GPPERF_OBJECTIVE", "edp")
    selector.reset()
    assert objectives.current_objective() == "edp"
    # A bad value falls back to the default with a warning (tests/test_env_objectives.py): import never fails.
    monkeypatch.setenv("GPPERF_OBJECTIVE", "fastest")
    selector.reset()
    assert objectives.current_objective() == "time"
    monkeypatch.setenv("GPPERF_MODE", "guess")
    selector.reset()
    assert selector._env["mode"] == "auto"  # verify on a GPU, predict on the CPU
    monkeypatch.delenv("GPPERF_MODE")


@pytest.mark.parametrize("bad", ["fast", "power_cap", "power_cap:-3", "time:2", "balanced:x"])
def test_parse_objective_rejects(bad):
    with pytest.raises(ValueError):
        selector.parse_objective(bad)


def test_explain_ranks_with_predictions(fresh, model_dirs):
    gp.set_model(str(model_dirs["energy"]), "cpu")
    rows = gp.explain(2048, 2048, 1024, dtype=torch.float16, b_trans=True, objective="energy", device="cpu")
    assert [r["rank"] for r in rows] == list(range(1, len(rows) + 1))
    assert rows[0]["config"] == FRUGAL.key
    energies = [r["energy_j"] for r in rows]
    assert energies == sorted(energies)
    assert all(math.isfinite(r["time_ms"]) and r["power_w"] > 0 for r in rows)


def test_no_model_uses_analytic_rule_and_warns_once(fresh, caplog):
    from gpperf_torch.selection import state

    state._warned.discard("nomodel:NVIDIA L4")  # other tests ask about the L4 too; this one counts the warning
    with caplog.at_level(logging.WARNING):
        rows = gp.explain(4096, 4096, 4096, dtype="fp16", gpu="l4")  # no shipped model for an L4
        gp.explain(64, 64, 64, dtype="fp16", gpu="l4")
    assert rows[0]["model"] == "analytic"
    assert caplog.text.count("no model for NVIDIA L4") == 1
    assert "gpperf-torch tune" in caplog.text and "gpperf-torch train" in caplog.text
    # big GEMMs get big tiles, tiny ones small tiles (the Triton pick the dispatch weighs against cuBLAS)
    big = TileConfig.from_key(rows[0]["triton_pick"])
    small = TileConfig.from_key(gp.explain(16, 64, 64, dtype="fp16", gpu="l4")[0]["triton_pick"])
    assert big.block_m * big.block_n > small.block_m * small.block_n


@pytest.mark.parametrize("gpu", ["l4", "rtx4090"])
@pytest.mark.parametrize("mnk", [(4096, 4096, 4096), (64, 64, 64), (37, 500, 3000), (1, 11008, 4096)])
def test_the_analytic_rule_weighs_cublas_with_its_uncertainty(fresh, gpu, mnk):
    """cuBLAS is a candidate with a finite estimate; Triton only where the predicted gain clears z spreads."""
    from gpperf_torch.predictor.analytic import CUBLAS

    rows = gp.explain(*mnk, dtype="fp16", gpu=gpu)
    by = {r["config"]: r for r in rows}
    assert "torch" in by and math.isfinite(by["torch"]["time_ms"]) and by["torch"]["time_ms"] > 0
    first = rows[0]
    g, bound = first["predicted_gain_vs_torch"], math.log(first["predicted_gain_vs_torch"])
    assert first["gain_sd_log"] == pytest.approx(CUBLAS["gain_sd"])
    assert (first["backend"] == "triton") == (bound - first["gain_sd_log"] > 0), (g, first["why"])
    # no exact ties among the best Triton estimates: the rule tells its top configs apart
    tri = sorted(r["time_ms"] for r in rows if r["config"] != "torch")
    assert tri[0] < tri[2]


def test_bad_model_is_a_clear_error(fresh, model_dirs, tmp_path, monkeypatch):
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in ("model.onnx", "model.json"):
        (bad / f).write_bytes((model_dirs["time"] / f).read_bytes())
    (bad / "model.onnx").write_bytes((bad / "model.onnx").read_bytes() + b"\0")
    with pytest.raises(ValueError, match="sha256"):
        gp.set_model(str(bad), "cpu")
    monkeypatch.setenv("GPPERF_MODEL", str(bad))
    selector.reset()
    with pytest.raises(gp.ModelError, match="GPPERF_MODEL"):
        selector._state(torch.device("cpu"))


def test_disk_cache_round_trip_corrupt_and_concurrent(fresh, model_dirs, monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("GPPERF_DISK_CACHE", "1")
    gp.set_model(str(model_dirs["time"]), "cpu")
    a, b = torch.randn(96, 80, dtype=torch.float16), torch.randn(80, 72, dtype=torch.float16)
    cfg = selector.choose(a, b, None, None)
    st = selector._state(torch.device("cpu"))
    st.disk.flush()
    saved = json.loads(st.disk.path.read_text())["selections"]
    assert any(v == (cfg.key if cfg else "torch") for v in saved.values())
    # a new process-level state loads it back without scoring
    gp.set_model(str(model_dirs["time"]), "cpu")
    st2 = selector._state(torch.device("cpu"))
    assert any(k[:3] == (96, 72, 80) for k in st2.memory)
    # corrupt file: warned and ignored, never an error
    st2.disk.path.write_text("{not json")
    with caplog.at_level(logging.WARNING):
        gp.set_model(str(model_dirs["time"]), "cpu")
    assert "corrupt selection cache" in caplog.text
    # two processes adding entries at once: the file stays valid JSON holding both
    path = st2.disk.path
    path.unlink()
    code = (
        "import sys; from gpperf_torch.selection import select_cache\n"
        "from gpperf_torch.measure.device import KNOWN_DEVICES\n"
        "c = select_cache.DiskCache(KNOWN_DEVICES['h100'], sys.argv[2])\n"
        "c.path = __import__('pathlib').Path(sys.argv[1])\n"
        "for i in range(40): c.pending[f'{i},{sys.argv[3]},1,1,float16,0,0,0,time'] = 'torch'; c.flush()\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path), "h", tag]) for tag in ("7", "9")]
    assert all(p.wait(timeout=60) == 0 for p in procs)
    sel = json.loads(path.read_text())["selections"]
    assert sum(k.split(",")[1] == "7" for k in sel) == 40 and sum(k.split(",")[1] == "9" for k in sel) == 40


def test_cli_select_with_shipped_model(capsys, fresh):
    from gpperf_torch.predictor.runtime import list_shipped

    if "h100" not in list_shipped():
        pytest.skip("no shipped h100 model in gpperf_torch/data")
    assert cli_main(["select", "4096", "4096", "4096", "--dtype", "bf16", "--gpu", "h100", "--top", "5"]) == 0
    out = capsys.readouterr().out
    assert "rank" in out and "time_ms" in out and len(out.strip().splitlines()) >= 8
    assert cli_main(["select", "64", "64", "64", "--gpu", "h100", "--json", "--top", "0"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["rank"] == 1 and len(rows) > 10
    assert cli_main(["select", "64", "64", "64", "--gpu", "h100", "--objective", "energy"]) == 0
    assert "objective=energy" in capsys.readouterr().out  # the time pick, said (tests/test_energy.py)
    assert cli_main(["select", "64", "64", "64", "--gpu", "h100", "--objective", "power_cap:300"]) == 2
    assert "objective=" not in capsys.readouterr().out


@pytest.mark.skipif(not kernels.interpreting(), reason="verify mode on CPU runs through the Triton interpreter")
def test_verify_mode_measures_cublas_and_top_k_and_records(fresh, model_dirs, monkeypatch, tmp_path):
    monkeypatch.setenv("GPPERF_VERIFY_TOP_K", "2")
    monkeypatch.setenv("GPPERF_DISK_CACHE", "1")  # the measurements are appended as tuning rows
    gp.set_model(str(model_dirs["time"]), "cpu")
    a, b = torch.randn(20, 24), torch.randn(24, 16)
    with gp.mode("verify"):
        out = gp.matmul(a, b)
    torch.testing.assert_close(out, a @ b, rtol=1e-5, atol=1e-5)
    from gpperf_torch.selection.verify import dataset_path

    rows = dataset.load_table(
        [str(dataset_path(selector._state(torch.device("cpu")).info.name))], include_interpreted=True
    )
    # cuBLAS always, plus at most GPPERF_VERIFY_TOP_K Triton configs (fewer where verify_policy cuts them)
    backends = rows["backend"].tolist()
    assert backends.count("torch") == 1 and 1 <= backends.count("triton") <= 2 and set(rows["m"].tolist()) == {20}
    with pytest.raises(ValueError, match="unknown mode"), gp.mode("fastest"):
        pass


def test_host_cost_sends_microsecond_gemms_to_torch(fresh_selector, model_dirs, monkeypatch):
    """In eager mode a Triton launch costs more host time than cuBLAS: for the synthetic model's ~4 us kernels
    (FAST predicted ~10% faster than torch) that decides; at milliseconds it does not."""
    st = _st(model_dirs["time"])
    assert st.policy.host_ms["triton"] > st.policy.host_ms["torch"] > 0
    assert selector.rank(st, _key(1024, 768, 512))[0][0] is None
    assert selector.rank(st, _key(4096, 4096, 4096))[0][0] == FAST
    monkeypatch.setenv("GPPERF_HOST_COST", "0")
    st = _st(model_dirs["time"])
    assert selector.rank(st, _key(1024, 768, 512))[0][0] == FAST


def test_explain_shows_spread_host_cost_and_why(fresh, model_dirs):
    gp.set_model(str(model_dirs["time"]), "cpu")
    rows = gp.explain(1024, 1024, 1024, b_trans=True, device="cpu")
    first = rows[0]
    assert first["config"] == FAST.key and "Triton: predicted" in first["why"]
    assert first["triton_pick"] == FAST.key and first["predicted_gain_vs_torch"] > 1.0
    assert first["policy"]["host_source"] == "none" and first["policy"]["z"] >= 0
    for r in rows:
        assert r["time_sd_log"] >= 0 and r["host_ms"] == 0.0 and r["time_ms"] > 0


def test_k_guard_sends_shapes_k_heavier_than_the_training_data_to_torch(fresh, model_dirs):
    """The model records its training shapes' K range (k_ratio_max); the selector, explain and the op send a
    shape beyond it to torch.matmul whatever the trees predict, and explain says why with both numbers."""
    meta = json.loads((model_dirs["time"] / "model.json").read_text())
    kmax = meta["k_ratio_max"]
    assert isinstance(kmax, float)
    st = _st(model_dirs["time"])
    k = 64 * 2 ** math.ceil(kmax + 1)  # 64 x 64 x k: log2 k - 6 > kmax
    assert selector.rank(st, _key(64, 64, k))[0][0] is None
    rows = gp.explain(64, 64, k, b_trans=True, device="cpu")
    assert rows[0]["backend"] == "torch" and rows[0]["guard"] == "k_range"
    assert "K is heavier than in every training shape" in rows[0]["why"] and f"{kmax:.2f}" in rows[0]["why"]
    inside = gp.explain(1024, 1024, 1024, b_trans=True, device="cpu")[0]
    assert "guard" not in inside and inside["config"] == FAST.key


@pytest.mark.parametrize("mnk", [(4096, 4096, 4096), (16, 4096, 4096), (64, 64, 64)])
def test_verify_measures_the_analytic_rules_top_configs_beside_cublas(fresh, mnk):
    """Predict mode keeps cuBLAS without a model; verify still times the rule's best Triton configs (its
    uncertainty keeps them from being cut as predicted slower)."""
    from gpperf_torch.measure.device import KNOWN_DEVICES
    from gpperf_torch.selection import state as state_mod

    st = state_mod.state_for_info(KNOWN_DEVICES["l4"])
    cands, _ = selector.measured_candidates(st, (*mnk, 1, "float16", False, True, False, "time"), "verify")
    assert cands[0] is None and len(cands) >= 2, cands
