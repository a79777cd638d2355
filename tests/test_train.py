"""train.py: readers, grouped split, fit + ONNX export agreement, metrics on a synthetic set with a known
answer, and the train/eval command line."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from gpperf_torch.cli.main import main as cli_main
from gpperf_torch.kernels.configs import TileConfig
from gpperf_torch.measure import dataset
from gpperf_torch.predictor import evaluation, fitting, train
from gpperf_torch.predictor.features import table_features

PUBLIC_DATA = Path(
    os.environ.get("GPPERF_PUBLIC_DATA", Path(__file__).resolve().parents[2] / "shared/data/autoheuristic_mm")
)
needs_public = pytest.mark.skipif(
    not (PUBLIC_DATA / "h100_mm.csv").is_file(),
    reason=f"public data not found at {PUBLIC_DATA} (set GPPERF_PUBLIC_DATA to its directory)",
)
SMALL = {"n_estimators": 8, "max_leaf_nodes": 200}

CONFIGS = [
    TileConfig(128, 128, 32, num_warps=8, num_stages=3),
    TileConfig(64, 64, 32),
    TileConfig(32, 64, 64, num_warps=4, num_stages=4),
    TileConfig(16, 32, 128, split_k=4, num_warps=2, num_stages=2),
]


def synthetic_rows(n_shapes: int = 40, seed: int = 0, energy: bool = True) -> list[dict]:
    """Groups where the right answer is known: big shapes -> the 128x128 tile, skinny ones -> split-K.

    time = size term x a per-config factor that depends only on the regime, plus torch at 1.1x the best. The
    size term runs fp32 (no TF32: FMA units) 16x slower than 16-bit inputs (tensor cores), as the A100 and H100 do.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n_shapes):
        skinny = rng.random() < 0.5
        m = int(rng.integers(1, 16)) if skinny else int(2 ** rng.uniform(11, 13))
        n, k = int(2 ** rng.uniform(10, 13)), int(2 ** rng.uniform(10, 13))
        dt = str(rng.choice(["float16", "bfloat16", "float32"]))
        base = 1e-6 * m * n * k / 1e3 * (16.0 if dt == "float32" else 1.0) + 0.01
        factors = [1.6, 1.3, 1.2, 1.0] if skinny else [1.0, 1.25, 1.5, 2.5]
        for cfg, f in zip(CONFIGS, factors, strict=True):
            t = base * f
            rows.append(_row(m, n, k, dt, cfg, t, energy))
        rows.append(_row(m, n, k, dt, None, base * 1.1, energy))
    return rows


def _row(m, n, k, dt, cfg, t, energy):
    fields = dict.fromkeys(dataset.CONFIG_FIELDS, 0) if cfg is None else cfg.as_dict()
    return dict(
        gpu="NVIDIA H100 80GB HBM3", m=m, n=n, k=k, dtype=dt, a_trans=0, b_trans=0, tf32=0,
        backend="torch" if cfg is None else "triton", config="" if cfg is None else cfg.key, status="ok",
        time_ms=t, power_w=300.0 + 100 * (cfg is None) if energy else math.nan,
        energy_j=t * 1e-3 * (300.0 + 100 * (cfg is None)) if energy else math.nan, interpreted=0, **fields,
    )  # fmt: skip


def synthetic_table(**kw) -> dataset.Table:
    return dataset.from_rows(synthetic_rows(**kw))


def write_tuning_csv(path: Path, rows: list[dict]) -> None:
    """Rows in our tuning CSV format (dataset.COLUMNS), as tune.py writes them."""
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=dataset.COLUMNS)
        w.writeheader()
        for r in rows:
            out = dict.fromkeys(dataset.COLUMNS, "")
            out.update({k: v for k, v in r.items() if k in dataset.COLUMNS})
            if r["backend"] == "torch":
                for c in dataset.CONFIG_FIELDS:
                    out[c] = ""
            for c in ("power_w", "energy_j"):
                out[c] = "" if isinstance(r[c], float) and math.isnan(r[c]) else r[c]
            out["interpreted"] = r.get("interpreted", 0)
            w.writerow(out)


# ---- readers ------------------------------------------------------------------------------------------
def test_read_our_csv(tmp_path):
    rows = synthetic_rows(n_shapes=3)
    rows[1] = {**rows[1], "status": "compile_error", "time_ms": math.nan}
    rows[2] = {**rows[2], "interpreted": 1}
    path = tmp_path / "tune.csv"
    write_tuning_csv(path, rows)
    t = dataset.load_table(path)
    assert len(t) == len(rows) - 1  # the interpreted row is dropped by default
    assert len(dataset.load_table(path, include_interpreted=True)) == len(rows)
    assert t["status"][1] == "compile_error" and math.isinf(t["time_ms"][1]) and not t.ok[1]
    assert t.n_groups == 3 and t.group_key[0] == ("NVIDIA H100 80GB HBM3", rows[0]["m"], rows[0]["n"],
                                                  rows[0]["k"], rows[0]["dtype"], 0, 0, 0)  # fmt: skip
    assert set(t["backend"].tolist()) == {"triton", "torch"}
    assert t.has_target("energy_j")


def test_unknown_header(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="unrecognised CSV header"):
        dataset.load_table(p)


@needs_public
def test_read_public_format():
    t = dataset.load_table(PUBLIC_DATA / "h100_mm.csv")
    assert t.n_groups > 100
    tri = t["backend"] == "triton"
    assert set(t["group_m"][tri].tolist()) == {8} and set(t["split_k"][tri].tolist()) == {1}
    assert set(t["backend"].tolist()) == {"triton", "torch"}
    assert np.isnan(t["energy_j"]).all() and not t.has_target("energy_j")
    assert (~t.ok).sum() > 0 and np.isinf(t["time_ms"][~t.ok]).all()  # "inf" = failed config


# ---- split, fit, export -----------------------------------------------------------------------------
def test_grouped_split_keeps_groups_whole():
    t = synthetic_table(n_shapes=50)
    tr, te = train.grouped_split(t, test_frac=0.3, seed=1)
    assert not (tr & te).any() and (tr | te).all()
    assert not set(t.group_id[tr].tolist()) & set(t.group_id[te].tolist())
    assert len(set(t.group_id[te].tolist())) == 15
    tr2, _ = train.grouped_split(t, test_frac=0.3, seed=1)
    np.testing.assert_array_equal(tr, tr2)  # seeded
    with pytest.raises(ValueError, match="test_frac"):
        train.grouped_split(t, test_frac=1.5)


def test_metrics_on_known_answer():
    t = synthetic_table(n_shapes=80)
    tr, te = train.grouped_split(t, seed=0)
    model = train.fit(t, rows=tr, seed=0, **SMALL)
    assert model.targets == ("time_ms", "power_w", "energy_j")
    assert "torch" in model.candidates and len(model.candidates) == 5
    m = train.evaluate(model, t.subset(te))
    assert m["n_shapes"] == 24
    assert m["geomean_regret"] < 1.02 and m["top1_agreement"] > 0.9
    assert m["within_5pct"] > 0.9 and m["r2_log_time"] > 0.95
    # the static config is right in only about half of the groups: its regret is much worse
    assert m["baseline_best_static_regret"] > 1.2
    # torch is 1.1x the best: picking the best triton config instead gives ~1.1x
    assert m["speedup_vs_extern_geomean"] == pytest.approx(1.1, abs=0.02)


def test_onnx_matches_sklearn(tmp_path):
    from gpperf_torch.predictor.runtime import Predictor

    t = synthetic_table(n_shapes=30)
    model = train.fit(t, seed=0, **SMALL)
    train.export(model, tmp_path / "m", {"provenance": "test"})
    p = Predictor.load(tmp_path / "m")
    X = table_features(t)
    np.testing.assert_allclose(np.log(p.predict_features(X)), model.log_predict(X), atol=1e-4)
    assert p.targets == model.targets


def test_time_only_when_no_energy(tmp_path):
    t = synthetic_table(n_shapes=12, energy=False)
    model = train.fit(t, seed=0, **SMALL)
    assert model.targets == ("time_ms",)


# ---- the command line ---------------------------------------------------------------------------------
def test_cli_train_and_eval_json(tmp_path, capsys):
    csv_path = tmp_path / "tune.csv"
    write_tuning_csv(csv_path, synthetic_rows(n_shapes=30))
    out = tmp_path / "model"
    assert cli_main(["train", "--data", str(csv_path), "--out", str(out), "--n-estimators", "8"]) == 0
    assert (out / "model.onnx").is_file() and (out / "model.json").is_file()
    meta = json.loads((out / "model.json").read_text())
    assert "geomean_regret" in meta["metrics"]["held_out"]
    # the unaligned-operand floor and the K guard's range travel with the model; the note says neither is calibrated
    from gpperf_torch.policy.dispatch import DEFAULT_Z_UNALIGNED

    assert meta["dispatch"]["z_unaligned"] == DEFAULT_Z_UNALIGNED
    assert "z_unaligned, not calibrated" in meta["dispatch"]["calibrated_on"]
    assert isinstance(meta["k_ratio_max"], float)
    assert "the K guard (not calibrated)" in meta["dispatch"]["calibrated_on"]
    capsys.readouterr()
    assert cli_main(["eval", "--model", str(out), "--data", str(csv_path), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    for key in ("n_shapes", "geomean_regret", "p90_regret", "max_regret", "within_5pct", "top1_agreement",
                "r2_log_time", "mape_time", "baseline_best_static_regret", "speedup_vs_extern_geomean"):  # fmt: skip
        assert key in res, key
    assert res["n_shapes"] == 30
    assert res["in_sample"] == ["tune.csv"]  # its own training file: said so
    assert cli_main(["eval", "--model", str(out), "--data", str(csv_path)]) == 0
    captured = capsys.readouterr()
    assert "geomean_regret" in captured.out and "in-sample" in captured.err and "tune.csv" in captured.err
    other = tmp_path / "other.csv"
    write_tuning_csv(other, synthetic_rows(n_shapes=6))
    assert cli_main(["eval", "--model", str(out), "--data", str(other), "--json"]) == 0
    captured = capsys.readouterr()
    assert "in_sample" not in json.loads(captured.out) and "in-sample" not in captured.err


def test_train_warns_when_the_model_adds_nothing_or_the_evidence_is_thin():
    from gpperf_torch.predictor.train import quality_warnings

    worse = quality_warnings({"geomean_regret": 1.20, "baseline_best_static_regret": 1.10, "n_shapes": 200})
    assert len(worse) == 1 and "worse than the best static config" in worse[0]
    thin = quality_warnings({"geomean_regret": 1.0, "baseline_best_static_regret": 1.0, "n_shapes": 2})
    assert len(thin) == 1 and "2 shape(s)" in thin[0]
    assert quality_warnings({"geomean_regret": 1.02, "baseline_best_static_regret": 1.10, "n_shapes": 68}) == []


def test_cli_eval_mode_verify_replays_the_measured_dispatch(tmp_path, capsys):
    """eval --mode verify[:K]: cuBLAS plus the predicted best configs measured, the fastest kept (the same
    verify_policy functions as the op); the worst shape is never below cuBLAS, exhaustive is the perfect pick."""
    csv_path = tmp_path / "tune.csv"
    write_tuning_csv(csv_path, synthetic_rows(n_shapes=30))
    out = tmp_path / "model"
    assert cli_main(["train", "--data", str(csv_path), "--out", str(out), "--n-estimators", "8", "--splits", "2"]) == 0
    res = {}
    for mode in ("verify", "verify:0", "verify:1", "verify:4", "exhaustive"):
        capsys.readouterr()
        assert cli_main(["eval", "--model", str(out), "--data", str(csv_path), "--json", "--mode", mode]) == 0
        res[mode] = json.loads(capsys.readouterr().out)
    d = res["verify"]
    for key in ("verify_speedup_vs_extern_geomean", "verify_speedup_vs_extern_min", "verify_candidates_per_shape",
                "verify_compiles", "speedup_vs_extern_geomean", "geomean_regret"):  # fmt: skip
        assert key in d, key
    assert d["verify_policy"].startswith("verify (cuBLAS + top-3")
    assert all(r["verify_speedup_vs_extern_min"] >= 1.0 for r in res.values())
    assert res["verify:0"]["verify_speedup_vs_extern_geomean"] == 1.0
    assert res["verify:0"]["verify_candidates_per_shape"] == 1.0 and res["verify:0"]["verify_compiles"] == 0
    assert res["verify:1"]["verify_candidates_per_shape"] == 2.0
    assert 2.0 <= d["verify_candidates_per_shape"] <= 4.0
    oracle = d["verify_speedup_vs_extern_oracle_geomean"]
    assert res["exhaustive"]["verify_speedup_vs_extern_geomean"] == pytest.approx(oracle)
    assert res["verify:1"]["verify_speedup_vs_extern_geomean"] <= res["verify:4"]["verify_speedup_vs_extern_geomean"]
    assert oracle == pytest.approx(1.1, rel=1e-6)  # the synthetic best config is 1.1x faster than torch everywhere
    with pytest.raises(SystemExit) as info:  # an argument error: one line, exit status 2
        cli_main(["eval", "--model", str(out), "--data", str(csv_path), "--mode", "verify:x"])
    assert info.value.code == 2 and "verify:K" in capsys.readouterr().err


def test_cli_report(tmp_path):
    csv_path = tmp_path / "tune.csv"
    write_tuning_csv(csv_path, synthetic_rows(n_shapes=12))
    out = tmp_path / "model"
    assert cli_main(["train", "--data", str(csv_path), "--out", str(out), "--n-estimators", "4", "--all"]) == 0
    assert cli_main(["report", "--model", str(out), "--data", str(csv_path), "--out", str(tmp_path / "r")]) == 0
    assert {p.name for p in (tmp_path / "r").glob("*.png")} == {
        "predicted_vs_measured.png", "regret_cdf.png", "regret_by_size.png", "speedup_vs_cublas_cdf.png"}  # fmt: skip
    from gpperf_torch.cli.report import pareto_plot
    from gpperf_torch.predictor.runtime import Predictor

    p = Predictor.load(out)
    png = pareto_plot(p, 4096, 4096, 4096, "float16", chosen={"time": CONFIGS[0]}, out=tmp_path / "p.png")
    assert png.is_file()


@needs_public
def test_public_h100_small_forest():
    """A small forest on the public H100 data already beats the best static config on held-out groups."""
    t = dataset.load_table(PUBLIC_DATA / "h100_mm.csv")
    tr, te = train.grouped_split(t, seed=0)
    model = train.fit(t, rows=tr, seed=0, n_estimators=16, max_leaf_nodes=800)
    m = train.evaluate(model, t.subset(te))
    assert m["r2_log_time"] > 0.95
    assert m["geomean_regret"] < m["baseline_best_static_regret"]


# ---- energy on a subset of rows, several GPUs, unknown GPUs --------------------------------------------
# Per-config power: the big tile draws the most, the split-K one the least, torch in between.
POWER = {CONFIGS[0].key: 420.0, CONFIGS[1].key: 330.0, CONFIGS[2].key: 300.0, CONFIGS[3].key: 220.0, "torch": 380.0}


def partial_energy_rows(n_shapes: int = 60, fraction: float = 0.35, seed: int = 0, gpu: str | None = None):
    """synthetic_rows with per-config power, and power/energy kept on a random `fraction` of the rows only (as
    `tune --energy-fraction` measures them); energy_j = power x time plus a small per-launch gap."""
    rng = np.random.default_rng(seed + 100)
    rows = []
    for r in synthetic_rows(n_shapes=n_shapes, seed=seed, energy=False):
        key = r["config"] or "torch"
        measured = rng.random() < fraction
        power = POWER[key] * (1 + 0.02 * rng.standard_normal())
        rows.append({
            **r, **({"gpu": gpu} if gpu else {}),
            "power_w": power if measured else math.nan,
            "energy_j": power * (r["time_ms"] + 0.002) * 1e-3 if measured else math.nan,
        })  # fmt: skip
    return rows


def test_energy_on_a_subset_of_rows(tmp_path):
    from gpperf_torch.predictor.runtime import Predictor

    t = dataset.from_rows(partial_energy_rows())
    has_e = np.isfinite(t["energy_j"])
    assert 0.25 < has_e.mean() < 0.45 and not t.has_target("energy_j")  # not on every row
    tr, te = train.grouped_split(t, seed=0)
    model = train.fit(t, rows=tr, seed=0, **SMALL)
    assert model.targets == ("time_ms", "power_w", "energy_j") and model.energy is not None
    assert model.params["n_energy_rows"] == int((has_e & tr).sum())
    train.export(model, tmp_path / "m", {"provenance": "partial energy"})
    p = Predictor.load(tmp_path / "m")
    assert p.targets == ("time_ms", "power_w", "energy_j")
    X = table_features(t)
    np.testing.assert_allclose(np.log(p.predict_features(X)), model.log_predict(X), atol=1e-4)
    # power follows the config: ranked as measured, on a shape none of the training rows has
    cfgs = [*CONFIGS, None]
    out = p.predict(3000, 2000, 1500, "float16", False, False, cfgs=cfgs)
    power = dict(zip([c.key if c else "torch" for c in cfgs], out["power_w"], strict=True))
    assert sorted(power, key=power.get) == sorted(POWER, key=POWER.get)
    assert all(abs(power[k] / POWER[k] - 1) < 0.1 for k in POWER)
    # energy = power x time: the config with the lowest energy is predicted lowest
    np.testing.assert_allclose(out["energy_j"], out["power_w"] * out["time_ms"] * 1e-3, rtol=0.15)
    # held-out metrics include energy, over the rows and groups that have it
    m = train.evaluate(p, t.subset(te))
    assert m["r2_log_energy"] > 0.9 and m["mape_power"] < 0.1 and m["mape_energy"] < 0.2
    assert m["n_shapes_energy"] > 0 and 1.0 <= m["energy_geomean_regret"] < 1.1
    assert m["geomean_regret"] < 1.05  # time is trained on all ok rows


def test_energy_needs_enough_rows(caplog):
    rows = partial_energy_rows(n_shapes=30, fraction=0.04)
    t = dataset.from_rows(rows)
    assert 0 < np.isfinite(t["energy_j"]).sum() < fitting.MIN_ENERGY_ROWS
    with caplog.at_level("WARNING", logger="gpperf_torch.predictor.train"):
        model = train.fit(t, seed=0, **SMALL)
    assert model.targets == ("time_ms",) and model.energy is None
    assert "predicts time only" in caplog.text
    with pytest.raises(ValueError, match="targets must be"):
        train.fit(t, seed=0, targets=("time_ms", "energy_j"), **SMALL)


def test_target_gpu_trains_on_several_gpus(tmp_path):
    h100 = synthetic_rows(n_shapes=20, seed=1)
    a100 = [{**r, "gpu": "NVIDIA A100-SXM4-80GB"} for r in synthetic_rows(n_shapes=30, seed=2)]
    extra = TileConfig(256, 64, 32, num_warps=8, num_stages=3)  # measured on the A100 only
    a100 += [{**r, **extra.as_dict(), "config": extra.key} for r in a100 if r["config"] == CONFIGS[0].key]
    t = dataset.from_rows(h100 + a100)
    model = train.fit(t, seed=0, target_gpu="h100", **SMALL)
    assert model.device.short_name == "h100" and extra.key not in model.candidates
    assert model.params["train_gpus"] == ["NVIDIA A100-SXM4-80GB", "NVIDIA H100 80GB HBM3"]
    assert model.n_rows == len(t)  # the A100 rows train too
    # the split holds out only target-GPU groups, the same ones as a split of the target's data alone
    tr, te = train.split_for_target(t, seed=0, target_gpu="h100")
    h_only = dataset.from_rows(h100)
    _, te_h = train.grouped_split(h_only, seed=0)
    held_out = {k for k, x in zip(t.group_key, te, strict=True) if x}
    assert held_out == {k for k, x in zip(h_only.group_key, te_h, strict=True) if x}
    assert tr[len(h100) :].all()
    with pytest.raises(ValueError, match="no rows of GPU"):
        train.fit(t, target_gpu="l4", **SMALL)
    csv_h, csv_a = tmp_path / "h.csv", tmp_path / "a.csv"
    write_tuning_csv(csv_h, h100)
    write_tuning_csv(csv_a, a100)
    out = tmp_path / "model"
    args = ["train", "--data", str(csv_h), str(csv_a), "--out", str(out), "--n-estimators", "4", "--target-gpu", "h100"]
    assert cli_main(args) == 0
    meta = json.loads((out / "model.json").read_text())
    assert meta["device"]["short_name"] == "h100" and meta["split"]["target_gpu"] == "h100"
    assert meta["metrics"]["held_out"]["n_shapes"] == 6


def test_rank_forest_trains_on_the_target_gpu_only():
    """With target_gpu the rank forest (what selection ranks by) learns from the target's rows alone: the same
    forest as an H100-only fit, while the offset forest learns from every GPU; rank_other_gpus pools them."""
    h100 = synthetic_rows(n_shapes=20, seed=1)
    a100 = [{**r, "gpu": "NVIDIA A100-SXM4-80GB"} for r in synthetic_rows(n_shapes=30, seed=2)]
    t, h_only = dataset.from_rows(h100 + a100), dataset.from_rows(h100)
    model = train.fit(t, seed=0, target_gpu="h100", **SMALL)
    alone = train.fit(h_only, seed=0, **SMALL)
    X = table_features(t)
    assert np.allclose(model.rel.predict(X), alone.rel.predict(X), rtol=0, atol=1e-12)
    assert model.params["n_rel_rows"] == len(h_only) and model.params["rank_other_gpus"] is False
    # the offset forest learns one row per group of every GPU (a bootstrap's weights sum to its row count)
    assert model.offset.estimators_[0].tree_.weighted_n_node_samples[0] == t.n_groups == 50
    pooled = train.fit(t, seed=0, target_gpu="h100", rank_other_gpus=True, **SMALL)
    assert pooled.params["n_rel_rows"] == len(t)
    assert not np.allclose(pooled.rel.predict(X), alone.rel.predict(X), rtol=0, atol=1e-6)


A6000_FIELDS = dict(
    capability="8.6", sm_count=84, max_shared_memory=101376, l2_bytes=6 * 2**20, sm_clock_max_mhz=2100,
    mem_clock_max_mhz=8001, mem_bandwidth_gbs=768.0, power_limit_w=300.0,
)  # fmt: skip


def test_unknown_gpu_trains_from_row_fields(tmp_path):
    from gpperf_torch.measure.device import descriptor_from_fields
    from gpperf_torch.predictor.runtime import Predictor

    name = "NVIDIA RTX A6000"
    rows = [{**r, "gpu": name, **A6000_FIELDS} for r in synthetic_rows(n_shapes=20)]
    path = tmp_path / "a6000.csv"
    write_tuning_csv(path, rows)
    t = dataset.load_table(path)
    assert t.device_fields(name)["sm_count"] == 84
    X = table_features(t)
    from gpperf_torch.predictor.features import feature_index

    assert X[0, feature_index("dev_sm_count")] == 84 and X[0, feature_index("dev_mem_bw_gbs")] == 768
    out = tmp_path / "model"
    assert cli_main(["train", "--data", str(path), "--out", str(out), "--n-estimators", "4"]) == 0
    p = Predictor.load(out)
    assert p.device == descriptor_from_fields(name, A6000_FIELDS)
    assert p.device.capability == (8, 6) and p.device.short_name == "rtx_a6000" and p.device.sm_clock_mhz == 2100
    # rows without the fields: a clear error that names them
    bare = tmp_path / "bare.csv"
    write_tuning_csv(bare, [{**r, "gpu": name} for r in synthetic_rows(n_shapes=3)])
    with pytest.raises(ValueError, match="lack the device fields"):
        table_features(dataset.load_table(bare))


def test_train_refits_on_all_and_repeats_splits(tmp_path, capsys):
    """`train` evaluates on held-out groups of --splits seeds, then by default exports the forest refitted on all
    groups; --no-all exports the train-split forest. Data from several GPUs: the model is for the first file's."""
    h100 = synthetic_rows(n_shapes=20, seed=1)
    a100 = [{**r, "gpu": "NVIDIA A100-SXM4-80GB"} for r in synthetic_rows(n_shapes=30, seed=2)]
    csv_h, csv_a = tmp_path / "h.csv", tmp_path / "a.csv"
    write_tuning_csv(csv_h, h100)
    write_tuning_csv(csv_a, a100)
    out = tmp_path / "model"
    assert cli_main(["train", "--data", str(csv_h), str(csv_a), "--out", str(out), "--n-estimators", "4"]) == 0
    assert "over 5 split(s), seeds 0..4" in capsys.readouterr().out
    meta = json.loads((out / "model.json").read_text())
    assert meta["device"]["short_name"] == "h100" and meta["split"]["target_gpu"] == "h100"
    assert meta["split"]["trained_on"] == "all" and meta["n_train_groups"] == 50
    rep, held = meta["metrics"]["held_out_splits"], meta["metrics"]["held_out"]
    assert rep["seeds"] == [0, 1, 2, 3, 4] and held["n_splits"] == 5
    # held_out combines the splits: regrets by geometric mean, max by max, the rest by mean
    g = rep["geomean_regret"]
    assert g["min"] <= held["geomean_regret"] <= g["max"]
    assert held["geomean_regret"] == pytest.approx(np.exp(np.mean(np.log(g["per_seed"]))))
    assert held["max_regret"] == max(rep["max_regret"]["per_seed"])
    assert held["r2_log_time"] == pytest.approx(rep["r2_log_time"]["mean"])
    # the A100 file first: an A100 model
    args = ["train", "--data", str(csv_a), str(csv_h), "--out", str(out), "--n-estimators", "4", "--splits", "1"]
    assert cli_main(args) == 0
    meta = json.loads((out / "model.json").read_text())
    assert meta["device"]["short_name"] == "a100" and meta["metrics"]["held_out"]["n_splits"] == 1
    args = ["train", "--data", str(csv_h), "--out", str(out), "--n-estimators", "4", "--splits", "1", "--no-all"]
    assert cli_main(args) == 0
    meta = json.loads((out / "model.json").read_text())
    assert meta["split"]["trained_on"] == "train split" and meta["n_train_groups"] == 14
    with pytest.raises(ValueError, match="splits must be >= 1"):
        train.train_and_export([str(csv_h)], out, splits=0)


def test_rank_target_is_the_slowdown_against_the_best(monkeypatch):
    """rel learns log(t / t_best of its group's Triton configs); the offset forest the group's best log time less
    the roofline (so that offset + roofline predicts the time of the config selection will pick)."""
    from sklearn.ensemble import RandomForestRegressor

    seen = []
    real_fit = RandomForestRegressor.fit

    def recording_fit(self, X, y, sample_weight=None):
        seen.append((np.array(X), np.array(y)))
        return real_fit(self, X, y, sample_weight=sample_weight)

    monkeypatch.setattr(RandomForestRegressor, "fit", recording_fit)
    t = synthetic_table(n_shapes=10, seed=3)
    train.fit(t, seed=0, targets=("time_ms",), **SMALL)
    (_, y_rel), (X_off, y_off) = seen
    ok = t.ok
    log_t, gid, tri = np.log(t["time_ms"][ok]), t.group_id[ok], (t["backend"] == "triton")[ok]
    best = {g: log_t[(gid == g) & tri].min() for g in np.unique(gid)}
    np.testing.assert_allclose(y_rel, log_t - np.array([best[g] for g in gid]), atol=1e-12)
    assert np.isclose(y_rel[tri], 0).sum() == len(best) and (y_rel[tri] >= 0).all()
    np.testing.assert_allclose(y_off + fitting.roofline(X_off), list(best.values()), rtol=1e-6)  # groups in id order


def test_eval_and_report_take_a_shipped_model_by_name(tmp_path, capsys):
    csv_path = tmp_path / "tune.csv"
    write_tuning_csv(csv_path, synthetic_rows(n_shapes=6))
    assert cli_main(["eval", "--model", "h100", "--data", str(csv_path), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["n_shapes"] == 6 and res["geomean_regret"] >= 1.0
    assert cli_main(["report", "--model", "a100", "--data", str(csv_path), "--out", str(tmp_path / "r")]) == 0
    capsys.readouterr()
    assert cli_main(["eval", "--model", "no-such-model", "--data", str(csv_path)]) == 2  # one line, no traceback
    assert "not found" in capsys.readouterr().err


def test_combine_splits():
    a = {"geomean_regret": 1.1, "max_regret": 2.0, "r2_log_time": 0.9, "n_shapes": 10, "name": "x",
         "regret_by_size": [{"log2_mnk": [30, 36], "n": 2, "geomean_regret": 1.21}]}  # fmt: skip
    b = {"geomean_regret": 1.0, "max_regret": 1.5, "r2_log_time": 1.0, "n_shapes": 11, "name": "y",
         "regret_by_size": [{"log2_mnk": [30, 36], "n": 1, "geomean_regret": 1.0},
                            {"log2_mnk": [36, 42], "n": 3, "geomean_regret": 1.5}]}  # fmt: skip
    c = train.combine_splits([a, b])
    assert c["geomean_regret"] == pytest.approx(math.sqrt(1.1)) and c["max_regret"] == 2.0
    assert c["r2_log_time"] == pytest.approx(0.95) and c["n_shapes"] == 10 and c["name"] == "x" and c["n_splits"] == 2
    assert c["regret_by_size"] == [
        {"log2_mnk": [30, 36], "n": 3, "geomean_regret": pytest.approx(1.21 ** (2 / 3))},
        {"log2_mnk": [36, 42], "n": 3, "geomean_regret": 1.5},
    ]
    assert train.combine_splits([a]) == {**a, "n_splits": 1}


# ---- dispatch metrics and calibration ---------------------------------------------------------------------
def test_eval_reports_the_dispatch_keys_through_the_policy():
    from gpperf_torch.policy.dispatch import NO_HOST_COST, Policy

    t = synthetic_table(n_shapes=80)
    tr, te = train.grouped_split(t, seed=0)
    model = train.fit(t, rows=tr, seed=0, **SMALL)
    m = train.evaluate(model, t.subset(te))
    for key in ("speedup_vs_extern_geomean", "speedup_vs_extern_p10", "speedup_vs_extern_min",
                "share_slower_than_extern_3pct", "share_dispatched_to_extern"):  # fmt: skip
        assert key in m, key
    assert m["speedup_vs_extern_min"] <= m["speedup_vs_extern_p10"] <= m["speedup_vs_extern_geomean"] * 1.2
    assert m["dispatch_policy"]["host_ms"] == NO_HOST_COST  # kernel times: no host cost unless asked
    # everything to cuBLAS: speedup exactly 1, every shape dispatched to extern
    never = train.evaluate(model, t.subset(te), policy=Policy(z=0.0, margin=10.0, host_ms=dict(NO_HOST_COST)))
    assert never["speedup_vs_extern_geomean"] == 1.0 and never["share_dispatched_to_extern"] == 1.0
    assert never["speedup_vs_extern_min"] == 1.0 and never["share_slower_than_extern_3pct"] == 0.0
    # the eager policy adds each backend's host cost: the synthetic ~us kernels then go to cuBLAS more often
    eager = train.evaluate(model, t.subset(te), host_cost=True)
    assert eager["share_dispatched_to_extern"] >= m["share_dispatched_to_extern"]


def test_calibrate_z_takes_the_best_safe_confidence():
    # columns: predicted log gain, its spread, measured speedup of the pick, of the best config
    good = np.tile([[0.2, 0.05, 1.2, 1.2]], (95, 1))  # confident and right
    wrong = np.tile([[0.1, 0.2, 0.5, 0.5]], (5, 1))  # unsure and wrong: z >= 0.5 keeps them on cuBLAS
    c = evaluation.calibrate_z(np.vstack([good, wrong]))
    assert c["z"] == 0.5 and len(c["table"]) == len(evaluation.Z_GRID)
    assert c["table"][0]["share_slower_than_extern_3pct"] == pytest.approx(0.05)
    s = evaluation.calibrate_sources({"a.csv": [np.vstack([good, wrong])], "b.csv": [good], "tiny.csv": [wrong]})
    assert s["z"] == max(0.5, evaluation.Z_MIN) and set(s["per_source"]) == {"a.csv", "b.csv"}  # tiny: too few
    # The share below 0.8x is reported, not a constraint: one confidently wrong shape among 200 (0.5%, below 0.97x
    # within the 1% allowed) no longer forces z up for every other shape.
    sure_wrong = np.array([[0.3, 0.05, 0.5, 0.5]])
    c = evaluation.calibrate_z(np.vstack([np.tile(good[:1], (199, 1)), sure_wrong]))
    assert c["z"] == 0.0 and c["table"][0]["share_below_min_speedup"] == pytest.approx(0.005)
    # guarded shapes (gain -inf, dispatch_samples) never dispatch, whatever z
    s_, ext = evaluation.speedups_at(np.array([[-np.inf, 0.0, 0.5, 0.5]]), 0.0)
    assert s_.tolist() == [1.0] and ext.tolist() == [True]


def test_speedups_at_applies_the_unaligned_floor_like_the_policy():
    from gpperf_torch.policy.dispatch import Policy

    # gain 0.2 with sd 0.1: dispatched at z = 1 (0.1 > 0), not at z = 3.5 (-0.15); column 4 flags unaligned
    samples = np.array([[0.2, 0.1, 1.2, 1.3, 0.0], [0.2, 0.1, 1.2, 1.3, 1.0]])
    s, ext = evaluation.speedups_at(samples, 1.0, z_unaligned=3.5)
    assert s.tolist() == [1.2, 1.0] and ext.tolist() == [False, True]
    policy = Policy(z=1.0, z_unaligned=3.5)
    assert [0.2 - policy.z_for(bool(u)) * 0.1 > 0 for u in samples[:, 4]] == (~ext).tolist()
    s, ext = evaluation.speedups_at(samples, 1.0)  # calibration: no floor
    assert not ext.any()
    s, ext = evaluation.speedups_at(samples[:, :4], 1.0, z_unaligned=3.5)  # 4 columns: no flag, no floor
    assert not ext.any()


def test_fit_records_the_k_range_and_eval_guards_beyond_it():
    from gpperf_torch.policy.dispatch import NO_HOST_COST, Policy, k_ratio

    t = synthetic_table(n_shapes=40)
    tr, te = train.grouped_split(t, seed=0)
    model = train.fit(t, rows=tr, seed=0, **SMALL)
    trained = tr & (t["backend"] == "triton") & t.ok
    assert model.k_ratio_max == pytest.approx(float(np.max(k_ratio(t["m"][trained], t["n"][trained], t["k"][trained]))))
    policy = Policy(z=0.0, host_ms=dict(NO_HOST_COST))
    free = train.evaluate(model, t.subset(te), policy=policy)
    assert free["share_k_guarded"] == 0.0 or free["share_k_guarded"] < 1.0
    model.k_ratio_max = -100.0  # every shape beyond the range: all to cuBLAS, each counted as guarded
    m = train.evaluate(model, t.subset(te), policy=policy)
    assert m["share_k_guarded"] == 1.0 and m["share_dispatched_to_extern"] == 1.0
    assert m["speedup_vs_extern_geomean"] == 1.0
    samples = evaluation.dispatch_samples(model, t.subset(te), policy=policy)
    assert np.all(np.isneginf(samples[:, 0]))
    assert samples.shape[1] == 5 and set(np.unique(samples[:, 4])) <= {0.0, 1.0}


def test_held_out_metrics_calibrate_dispatch_and_combine_min():
    t = synthetic_table(n_shapes=40)
    metrics, summary, model = train.held_out_metrics(t, seeds=(0, 1), **SMALL)
    cal = summary["dispatch"]
    assert cal["z"] >= evaluation.Z_MIN and "per_source" in cal["calibration"]
    assert len(summary["dispatch_z"]["per_seed"]) == 2 and model.dispatch["z"] >= evaluation.Z_MIN
    per_seed_min = summary["speedup_vs_extern_min"]["per_seed"]
    assert metrics["speedup_vs_extern_min"] == pytest.approx(min(per_seed_min))  # the worst split, not a mean
    c = train.combine_splits([{"speedup_vs_extern_min": 0.9}, {"speedup_vs_extern_min": 0.7}])
    assert c["speedup_vs_extern_min"] == 0.7


def test_file_sources(tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    write_tuning_csv(a, synthetic_rows(n_shapes=2))
    write_tuning_csv(b, synthetic_rows(n_shapes=3))
    t = dataset.load_table([a, b])
    src = train.file_sources([str(a), str(b)], t)
    n_a, n_b = len(dataset.load_table(a)), len(dataset.load_table(b))
    assert n_a < n_b and src.tolist() == ["a.csv"] * n_a + ["b.csv"] * n_b
    assert train.file_sources([str(a)], dataset.load_table(a)) is None


def test_rank_leaf_cap_grows_with_the_data():
    from gpperf_torch.predictor import fitting

    assert fitting.rank_leaf_cap(100) == fitting.DEFAULT_PARAMS["max_leaf_nodes"] == 1500
    assert fitting.rank_leaf_cap(fitting.LARGE_RANK_ROWS) == 1500  # the H100's ~15k rows: unchanged
    assert fitting.rank_leaf_cap(30000) == 6000 and fitting.rank_leaf_cap(60000) == fitting.MAX_RANK_LEAVES == 8000
    model = train.fit(synthetic_table(n_shapes=10), seed=0, **SMALL)
    assert model.params["rel"]["max_leaf_nodes"] == SMALL.get("max_leaf_nodes", 1500)


def test_candidate_order_is_deterministic_across_processes():
    """Ties in how often a config was measured go by key, not by set order (string hashing varies per process):
    a retrained model lists its candidates in the same order every time."""
    import subprocess
    import sys

    from gpperf_torch.predictor.fitting import candidate_keys

    t = synthetic_table(n_shapes=12)
    rows = np.ones(len(t), dtype=bool)
    keys = candidate_keys(t, rows)
    counts = {k: len(set(t.group_id[(t["config"] == k) & (t["backend"] == "triton")].tolist())) for k in keys[:-1]}
    assert [counts[k] for k in keys[:-1]] == sorted(counts.values(), reverse=True)
    for a, b in zip(keys[:-2], keys[1:-1], strict=True):
        assert counts[a] > counts[b] or a < b  # ties in key order
    code = (
        "import sys, numpy as np; sys.path.insert(0, sys.argv[1]); import test_train as tt; "
        "from gpperf_torch.predictor.fitting import candidate_keys; t = tt.synthetic_table(n_shapes=12); "
        "print(','.join(candidate_keys(t, np.ones(len(t), dtype=bool))))"
    )
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent)], env=env, check=True,
                             capture_output=True, text=True).stdout.strip()  # fmt: skip
        assert out.split(",") == keys
