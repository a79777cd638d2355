"""The compile path's policy (gpperf_torch/inductor/policy.py, costs.py, templates.py, replay.py): Inductor's offered
template configs, plan() per mode under the op's dispatch rules with the compile path's costs, unseen configs left
out, explain/select with backend inductor, and eval --backend inductor replaying the policy on the public data.
CPU only: the shipped H100 model by name, no lowering (the hook's harness is another test module)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

import gpperf_torch as gp
from gpperf_torch.cli.main import main as cli_main
from gpperf_torch.errors import ModelError, UserError
from gpperf_torch.inductor import costs, templates
from gpperf_torch.inductor.policy import GemmSpec, explain, offered_keys, plan, template_key
from gpperf_torch.measure.device import known_device
from gpperf_torch.predictor.runtime import load_cli_model
from gpperf_torch.selection.explain import explain as explain_op

PUBLIC_DATA = Path(
    os.environ.get("GPPERF_PUBLIC_DATA", Path(__file__).resolve().parents[2] / "shared/data/autoheuristic_mm")
)
needs_data = pytest.mark.skipif(
    not (PUBLIC_DATA / "h100_hf_mm.csv").is_file(),
    reason=f"public data not found at {PUBLIC_DATA} (set GPPERF_PUBLIC_DATA to its directory)",
)
# The configs torch 2.13 added to the mm template's list, which the public data never timed.
NEW_IN_213 = ("128x256x64_g8_s1_w8_st4", "128x128x128_g8_s1_w8_st4")
H100_SEEN = set(load_cli_model("h100").candidate_keys)


@pytest.fixture(scope="module")
def inductor_offers():
    """Skip the module's Inductor-dependent tests on a torch whose internals differ (offered_keys is None)."""
    keys = offered_keys(GemmSpec(4096, 4096, 4096, "float16"))
    if keys is None:
        pytest.skip("this torch's Inductor internals differ from 2.13's (gpperf_torch/inductor/templates.py)")
    return keys


def test_template_key_is_the_data_and_model_key():
    assert template_key(128, 128, 64, 8, 3, 4) == "128x128x64_g8_s1_w4_st3"
    assert template_key(16, 32, 128, 8, 5, 2) == "16x32x128_g8_s1_w2_st5"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"m": 0, "n": 8, "k": 8, "dtype": "float16"}, "m must be a positive int"),
        ({"m": 8, "n": 8, "k": 8, "dtype": "int8"}, "dtype must be one of"),
        ({"m": 8, "n": 8, "k": 8, "dtype": "float16", "epilogue": "gelu"}, "epilogue must be one of"),
        ({"m": 8, "n": 8, "k": 8, "dtype": "float16", "batch": 0}, "batch must be a positive int"),
    ],
)
def test_gemm_spec_refuses_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GemmSpec(**kwargs)


def test_gemm_spec_takes_dtype_aliases():
    assert GemmSpec(8, 8, 8, "bf16").dtype == "bfloat16"
    assert GemmSpec(8, 8, 8, "torch.float16").dtype == "float16"


def test_offered_keys_are_inductors_lists(inductor_offers):
    big = inductor_offers
    assert len(big) == len(set(big))
    assert "128x128x64_g8_s1_w4_st3" in big and "32x32x16_g8_s1_w2_st1" in big  # max-autotune's DEFAULT list
    assert "128x64x128_g8_s1_w8_st4" in big  # AutoHeuristic's extra list (mm-ah), offered for a plain mm
    assert set(NEW_IN_213) <= set(big)
    # blocks clamped to the next power of two of the dimension (at least 16), warps to BLOCK_M * BLOCK_N / 256
    small = offered_keys(GemmSpec(2, 768, 16, "float16"))
    assert small and all(k.startswith("16x") and "x16_g8" in k for k in small)
    assert "16x32x16_g8_s1_w2_st1" in small
    # addmm and bmm: the DEFAULT list only (AutoHeuristic's extra list is tuned_mm's)
    for spec in (GemmSpec(4096, 4096, 4096, "float16", epilogue="bias"), GemmSpec(64, 64, 64, "float16", batch=8)):
        keys = offered_keys(spec)
        assert keys and "128x64x128_g8_s1_w8_st4" not in keys


def test_offered_keys_is_none_where_the_internals_differ(monkeypatch):
    import torch._inductor.template_heuristics.registry as registry

    def gone(*a, **k):
        raise AttributeError("no such heuristic")

    monkeypatch.setattr(registry, "get_template_heuristic", gone)
    templates._warned.clear()
    assert offered_keys(GemmSpec(64, 64, 64, "float16")) is None
    assert plan(GemmSpec(64, 64, 64, "float16"), gpu="h100") is None  # the hook defers to Inductor
    with pytest.raises(ModelError, match="Inductor internals"):
        explain(64, 64, 64, gpu="h100")


SHAPES = [
    GemmSpec(4096, 4096, 4096, "float16"),
    GemmSpec(16, 4096, 4096, "bfloat16", b_trans=True, epilogue="bias_act"),
    GemmSpec(8192, 768, 3072, "float16", epilogue="act"),
    GemmSpec(100, 50, 30, "float32"),
    GemmSpec(197, 768, 768, "bfloat16", b_trans=True, epilogue="bias"),
    GemmSpec(64, 64, 128, "float16", batch=12),
]


@pytest.mark.parametrize("spec", SHAPES, ids=lambda s: f"{s.m}x{s.n}x{s.k}-{s.dtype}-{s.epilogue}-b{s.batch}")
@pytest.mark.parametrize("mode", ["predict", "verify"])
def test_plan_ranks_offered_templates_and_the_extern(fresh_selector, inductor_offers, spec, mode):
    rows = plan(spec, mode=mode, gpu="h100")
    first = rows[0]
    assert first["mode"] == mode and first["epilogue"] == spec.epilogue
    assert [r["rank"] for r in rows] == list(range(1, len(rows) + 1))
    configs = [r["config"] for r in rows]
    assert configs.count("torch") == 1 and len(set(configs)) == len(configs)
    offered = set(offered_keys(spec))
    assert set(configs) - {"torch"} <= offered & H100_SEEN  # only offered configs the model has seen
    assert set(first["left_out"]) == offered - set(configs)
    assert first["verify_candidates"][0] == "torch" and len(first["verify_candidates"]) <= 1 + 3
    assert set(first["verify_candidates"]) <= set(configs)
    assert all(r["host_ms"] == 0.0 for r in rows)  # no host cost per call on the compile path
    assert all(r["backend"] == ("torch" if r["config"] == "torch" else "triton") for r in rows)
    assert first["why"] and first["policy"]["host_ms"]["triton"] == 0.0


def test_plan_modes_rank_alike(fresh_selector, inductor_offers):
    spec = SHAPES[2]
    predict, verify = plan(spec, mode="predict", gpu="h100"), plan(spec, mode="verify", gpu="h100")
    strip = [{k: v for k, v in r.items() if k != "mode"} for r in predict]
    assert strip == [{k: v for k, v in r.items() if k != "mode"} for r in verify]


@pytest.mark.parametrize("top_k", [0, 1, 2, 5])
def test_verify_candidates_hold_at_most_top_k_templates(fresh_selector, inductor_offers, top_k):
    rows = plan(GemmSpec(2048, 2048, 2048, "float16"), mode="verify", top_k=top_k, gpu="h100")
    cands = rows[0]["verify_candidates"]
    assert cands[0] == "torch" and len(cands) - 1 <= top_k
    assert rows[0]["verify_policy"]["top_k"] == top_k


def test_unseen_and_unfit_configs_are_left_out(fresh_selector):
    assert not set(NEW_IN_213) & H100_SEEN
    seen_big = "128x128x64_g8_s1_w8_st5"  # seen, but IEEE fp32 needs 4 x 64 KiB of shared memory: not on an H100
    assert seen_big in H100_SEEN
    offered = [*NEW_IN_213, seen_big, "64x64x32_g8_s1_w4_st2", "64x64x64_g8_s4_w4_st3"]
    rows = plan(GemmSpec(1024, 1024, 1024, "float32"), offered=offered, gpu="h100")
    left = rows[0]["left_out"]
    for key in NEW_IN_213:
        assert "never seen" in left[key]
    assert "shared memory" in left[seen_big]
    assert "split-K" in left["64x64x64_g8_s4_w4_st3"]
    assert {r["config"] for r in rows} == {"torch", "64x64x32_g8_s1_w4_st2"}


def test_nothing_offered_leaves_the_extern(fresh_selector):
    rows = plan(GemmSpec(512, 512, 512, "float16"), mode="verify", offered=[], gpu="h100")
    assert [r["config"] for r in rows] == ["torch"]
    assert rows[0]["verify_candidates"] == ["torch"] and "no Triton candidate" in rows[0]["why"]


def test_plan_refuses_bad_arguments(fresh_selector):
    spec = GemmSpec(64, 64, 64, "float16")
    with pytest.raises(ValueError, match="mode must be one of"):
        plan(spec, mode="exhaustive", offered=[], gpu="h100")
    with pytest.raises(ValueError, match="top_k must be an int"):
        plan(spec, top_k=-1, offered=[], gpu="h100")
    with pytest.raises(UserError, match="needs predicted power_w"):
        plan(spec, objective="power_cap:300", offered=[], gpu="h100")


@pytest.mark.parametrize("objective", ["energy", "edp", "balanced:0.05"])
def test_energy_objectives_take_the_time_pick_as_the_op_does(fresh_selector, inductor_offers, objective):
    """The shipped models predict time only: an energy objective gets the time objective's choice and says why,
    on the compile path exactly as on the op path (selection.ranking.objective_for)."""
    spec = GemmSpec(4096, 4096, 4096, "float16")
    timed = plan(spec, mode="verify", objective="time", gpu="h100")
    rows = plan(spec, mode="verify", objective=objective, gpu="h100")
    assert [r["config"] for r in rows] == [r["config"] for r in timed]
    assert rows[0]["verify_candidates"] == timed[0]["verify_candidates"]
    assert rows[0]["objective"] == objective and "time pick" in rows[0]["why"]
    assert "predicts time only" in rows[0]["objective_note"]
    op_first = explain_op(4096, 4096, 4096, gpu="h100", objective=objective)[0]
    assert "objective_note" in op_first


def test_a_gpu_without_a_model_defers_to_inductor(fresh_selector):
    assert plan(GemmSpec(64, 64, 64, "float16"), offered=[], gpu="l4") is None
    with pytest.raises(ModelError, match="no model for NVIDIA L4"):
        explain(64, 64, 64, gpu="l4")


# ---- the compile path's costs ------------------------------------------------------------------------------------
def test_the_extern_pays_the_unfused_activation_pass():
    h100 = known_device("h100")
    big = costs.unfused_epilogue_ms(8192, 8192, 1, "float16", "act", h100, 0.0049)
    assert big == pytest.approx(2 * 8192 * 8192 * 2 / 3350e9 * 1e3)  # read + write at datasheet bandwidth
    assert costs.unfused_epilogue_ms(64, 64, 1, "float16", "bias_act", h100, 0.0049) == 0.0049  # the launch floor
    for epi in (None, "bias"):
        assert costs.unfused_epilogue_ms(8192, 8192, 1, "float16", epi, h100, 0.0049) == 0.0
    with pytest.raises(ValueError, match="epilogue must be one of"):
        costs.unfused_epilogue_ms(8, 8, 1, "float16", "relu", h100, None)


def test_the_fused_epilogue_moves_the_choice_towards_the_template(fresh_selector):
    offered = [k for k in offered_keys(SHAPES[2]) or [] if k in H100_SEEN]
    if not offered:
        pytest.skip("this torch's Inductor internals differ from 2.13's")
    plain = plan(GemmSpec(8192, 768, 3072, "float16"), offered=offered, gpu="h100")
    fused = plan(GemmSpec(8192, 768, 3072, "float16", epilogue="act"), offered=offered, gpu="h100")
    torch_row = next(r for r in fused if r["config"] == "torch")
    extra = costs.unfused_epilogue_ms(8192, 768, 1, "float16", "act", known_device("h100"), 0.0049)
    assert torch_row["epilogue_ms"] == pytest.approx(extra, rel=0.01) and extra > 0
    assert fused[0]["predicted_gain_vs_torch"] > plain[0]["predicted_gain_vs_torch"]
    assert fused[0]["policy"]["host_ms"] == {"triton": 0.0, "torch": pytest.approx(extra, rel=0.01)}


# ---- one policy, visible -----------------------------------------------------------------------------------------
def test_explain_with_backend_inductor_is_plan(fresh_selector, inductor_offers):
    spec = SHAPES[1]
    rows = gp.explain(spec.m, spec.n, spec.k, dtype="bf16", b_trans=True, epilogue="bias_act", mode="verify",
                      gpu="h100", backend="inductor")  # fmt: skip
    assert rows == plan(spec, mode="verify", gpu="h100")
    assert gp.explain(256, 512, 1024, gpu="h100") == explain_op(256, 512, 1024, gpu="h100")  # backend="op" as before
    with pytest.raises(ValueError, match="backend must be one of"):
        gp.explain(8, 8, 8, backend="triton")


def test_select_prints_the_compile_path(fresh_selector, inductor_offers, capsys):
    argv = ["select", "8192", "768", "3072", "--gpu", "h100", "--backend", "inductor", "--epilogue", "act"]
    assert cli_main([*argv, "--mode", "verify"]) == 0
    out = capsys.readouterr().out
    assert "compile path (verify, epilogue act)" in out and "epilogue_ms" in out
    assert "verify candidates (Inductor's autotuner times them): torch" in out
    assert cli_main([*argv, "--json", "--top", "0"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows == plan(GemmSpec(8192, 768, 3072, "float16", epilogue="act"), gpu="h100")
    assert cli_main(["select", "64", "64", "64", "--gpu", "h100", "--epilogue", "act"]) == 2
    assert "add --backend inductor" in capsys.readouterr().err


# ---- eval --backend inductor -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hf_slice():
    """The first 40 shape groups of the public H100 Hugging Face GEMMs (read at run time)."""
    from gpperf_torch.measure import dataset

    table = dataset.load_table([str(PUBLIC_DATA / "h100_hf_mm.csv")])
    return table.subset(table.group_id < np.unique(table.group_id)[40])


@needs_data
def test_replay_on_public_data(inductor_offers, hf_slice):
    from gpperf_torch.inductor.replay import inductor_metrics, replay
    from gpperf_torch.policy.verify_policy import parse

    model = load_cli_model("h100")
    r = replay(model, hf_slice, parse("verify:2"))
    n = len(r["predict"])
    assert 30 <= n <= 40
    assert np.all(r["verify_n"] <= 3) and np.all(r["verify_n"] >= 1)
    assert np.all(r["verify"] >= 1.0 - 1e-12)  # the autotuner times the extern too: never below it
    assert np.all(r["max_autotune"] >= r["verify"] - 1e-12) and np.all(r["oracle"] >= r["max_autotune"] - 1e-12)
    assert np.all(r["offered_measured"] <= r["offered"]) and np.all(r["unseen"] >= 1)  # 2.13's new configs (clamped)
    m = inductor_metrics(model, hf_slice, parse("verify:2"))
    assert m["inductor_n_shapes"] == n and m["inductor_verify_choices_per_shape"] <= 3
    assert m["inductor_speedup_vs_extern_geomean"] == m["inductor_verify_geomean"]
    p = inductor_metrics(model, hf_slice, "predict")
    assert p["inductor_speedup_vs_extern_geomean"] == p["inductor_predict_geomean"]
    assert p["inductor_choices_timed_per_shape"] == 0.0 and p["inductor_mode"] == "predict"
    # with an activation the extern pays one more pass: every policy gains against it
    act = inductor_metrics(model, hf_slice, "predict", epilogue="act")
    assert act["inductor_max_autotune_geomean"] > p["inductor_max_autotune_geomean"]


@needs_data
@pytest.mark.parametrize("mode", ["predict", "verify", "verify:1"])
def test_cli_eval_backend_inductor(inductor_offers, hf_slice, tmp_path, capsys, mode):
    src = PUBLIC_DATA / "h100_hf_mm.csv"
    lines = src.read_text().splitlines()
    keep = {tuple(x.split(",")[1:9]) for x in lines[1:400]}  # a few shapes: every row of each
    csv_path = tmp_path / "h100_slice.csv"
    csv_path.write_text("\n".join([lines[0], *(x for x in lines[1:] if tuple(x.split(",")[1:9]) in keep)]) + "\n")
    argv = ["eval", "--model", "h100", "--data", str(csv_path), "--backend", "inductor", "--mode", mode]
    assert cli_main([*argv, "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["inductor_n_shapes"] >= 5 and math.isfinite(m["inductor_speedup_vs_extern_geomean"])
    assert m["inductor_mode"] == "predict" or (mode != "predict" and m["inductor_mode"].startswith("verify"))
    assert cli_main(argv) == 0
    assert "max_autotune" in capsys.readouterr().out
    assert cli_main([*argv[:-2], "--mode", "exhaustive"]) == 2
    assert cli_main(["eval", "--model", "h100", "--data", str(csv_path), "--epilogue", "act"]) == 2


@needs_data
def test_the_replay_makes_plans_choices(fresh_selector, inductor_offers, hf_slice):
    """One policy: on each public shape, the replay's predict choice and verify candidates are plan()'s first row
    given the configs the shape measured (the replay scores table rows, plan the runtime model's features)."""
    from gpperf_torch.inductor.replay import replay
    from gpperf_torch.predictor.evaluation import _groups

    model = load_cli_model("h100")
    checked = 0
    for g in _groups(hf_slice)[:12]:
        r0 = int(g.torch_row)
        one = hf_slice.subset(hf_slice.group_id == hf_slice.group_id[r0])
        r = replay(model, one)
        if not len(r["predict"]):
            continue
        measured = {k: t for k, t in zip(g.triton_keys, g.triton_time, strict=True) if np.isfinite(t)}
        spec = GemmSpec(int(hf_slice["m"][r0]), int(hf_slice["n"][r0]), int(hf_slice["k"][r0]),
                        str(hf_slice["dtype"][r0]), a_trans=bool(hf_slice["a_trans"][r0]),
                        b_trans=bool(hf_slice["b_trans"][r0]))  # fmt: skip
        first = plan(spec, mode="verify", offered=list(measured), gpu="h100")[0]
        chosen = g.torch_time if first["config"] == "torch" else measured[first["config"]]
        assert r["predict"][0] == pytest.approx(g.torch_time / chosen, rel=1e-9), spec
        assert r["verify_n"][0] == len(first["verify_candidates"]), spec
        checked += 1
    assert checked >= 8
