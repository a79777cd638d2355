"""Environment variables and objective/mode arguments: a bad GPPERF_* value never breaks import or --help (a
warning naming the variable and the default); an objective argument that means nothing is refused."""

from __future__ import annotations

import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

import gpperf_torch as gp
from gpperf_torch import env
from gpperf_torch.cli.main import main as cli_main
from gpperf_torch.selection import selector

ROOT = Path(__file__).resolve().parents[1]


# ---- objectives ----------------------------------------------------------------------------------------------
GOOD = {
    "time": "time", " Time ": "time", "ENERGY": "energy", "edp": "edp", "balanced": "balanced:0.05",
    "balanced:0.1": "balanced:0.1", "Balanced:0": "balanced:0", "power_cap:300": "power_cap:300",
    "POWER_CAP: 250.5": "power_cap:250.5", "power_cap:300W": "power_cap:300", "power_cap:1e3": "power_cap:1000",
}  # fmt: skip
BAD = [
    "power_cap:nan", "power_cap:inf", "power_cap:-inf", "power_cap:0", "power_cap:-5", "power_cap:", "power_cap",
    "power_cap:x", "power_cap:300:400", "balanced:x", "balanced:nan", "balanced:inf", "balanced:-0.1",
    "balanced:10", "balanced:", "time:", "time:1", "energy:0.5", "edp:x", "bogus", "", "  ", "fastest", "time energy",
]  # fmt: skip


@pytest.mark.parametrize("spec", sorted(GOOD))
def test_objectives_that_mean_something_parse(spec):
    assert str(selector.parse_objective(spec)) == GOOD[spec]


@pytest.mark.parametrize("spec", BAD)
def test_objectives_that_mean_nothing_are_refused_with_the_spec_named(spec):
    with pytest.raises(ValueError) as info:
        selector.parse_objective(spec)
    msg = str(info.value)
    assert repr(spec) in msg and "could not convert" not in msg  # never a bare float-parse message


@pytest.mark.parametrize("spec", [None, 3, 300.0, ["time"]])
def test_objective_of_another_type_is_a_type_error(spec):
    with pytest.raises(TypeError, match="objective must be a string"):
        selector.parse_objective(spec)


@pytest.mark.parametrize("spec", ["power_cap:nan", "balanced:x", "bogus"])
def test_context_manager_refuses_before_the_block(spec):
    entered = False
    with pytest.raises(ValueError), gp.objective(spec):
        entered = True
    assert not entered


@pytest.mark.parametrize(
    ("name", "want"), [("VERIFY", "verify"), ("Predict", "predict"), (" exhaustive ", "exhaustive")]
)
def test_mode_is_case_insensitive(name, want):
    with gp.mode(name) as got:
        assert got == want and selector._mode_var.get() == want


@pytest.mark.parametrize("name", ["", "fast", "verify2", "predict,verify"])
def test_unknown_mode_is_refused(name):
    with pytest.raises(ValueError, match="unknown mode"), gp.mode(name):
        pass


# ---- environment variables -------------------------------------------------------------------------------------
ENV_CASES = [
    ("GPPERF_OBJECTIVE", "bogus", "objective", "time"),
    ("GPPERF_OBJECTIVE", "power_cap:nan", "objective", "time"),
    ("GPPERF_OBJECTIVE", "balanced:x", "objective", "time"),
    ("GPPERF_OBJECTIVE", "time:3", "objective", "time"),
    ("GPPERF_MODE", "fastest", "mode", "auto"),
    ("GPPERF_MODE", "verify!", "mode", "auto"),
]


@pytest.mark.parametrize(("var", "value", "field", "default"), ENV_CASES)
def test_bad_environment_warns_naming_variable_and_default(monkeypatch, caplog, var, value, field, default):
    monkeypatch.setenv(var, value)
    env._warned.clear()
    try:
        with caplog.at_level(logging.WARNING, logger="gpperf_torch.env"):
            selector.reload_env()
        assert selector._env[field] == default
        msgs = [r.getMessage() for r in caplog.records]
        assert len(msgs) == 1 and var in msgs[0] and repr(value) in msgs[0] and repr(default) in msgs[0]
    finally:
        monkeypatch.delenv(var)
        selector.reload_env()


@pytest.mark.parametrize(
    ("var", "value", "field", "want"),
    [
        ("GPPERF_MODE", "VERIFY", "mode", "verify"),
        ("GPPERF_MODE", "Exhaustive", "mode", "exhaustive"),
        ("GPPERF_OBJECTIVE", "ENERGY", "objective", "energy"),
        ("GPPERF_OBJECTIVE", "Power_Cap:300", "objective", "power_cap:300"),
        ("GPPERF_OBJECTIVE", "", "objective", "time"),
    ],
)
def test_good_environment_any_case(monkeypatch, var, value, field, want):
    monkeypatch.setenv(var, value)
    try:
        selector.reload_env()
        assert selector._env[field] == want
    finally:
        monkeypatch.delenv(var)
        selector.reload_env()


@pytest.mark.parametrize(("raw", "want"), [("0", False), ("off", False), ("FALSE", False), ("no", False),
                                           ("1", True), ("On", True), ("true", True), ("YES", True)])  # fmt: skip
def test_disk_cache_flag_values(monkeypatch, raw, want):
    monkeypatch.setenv("GPPERF_DISK_CACHE", raw)
    assert env.flag("GPPERF_DISK_CACHE", True) is want


@pytest.mark.parametrize(("var", "raw", "default"), [
    ("GPPERF_DISK_CACHE", "maybe", True), ("GPPERF_DISK_CACHE", "2", True),
    ("GPPERF_VERIFY_TOP_K", "x", 3), ("GPPERF_VERIFY_TOP_K", "0", 3), ("GPPERF_VERIFY_TOP_K", "-2", 3),
    ("GPPERF_VERIFY_TOP_K", "2.5", 3),
])  # fmt: skip
def test_other_bad_variables_fall_back_with_a_warning(monkeypatch, caplog, var, raw, default):
    from gpperf_torch.selection.verify import verify_top_k

    monkeypatch.setenv(var, raw)
    env._warned.clear()
    with caplog.at_level(logging.WARNING, logger="gpperf_torch.env"):
        got = verify_top_k() if var == "GPPERF_VERIFY_TOP_K" else env.flag(var, True)
    assert got == default
    assert any(var in r.getMessage() and repr(default) in r.getMessage() for r in caplog.records)


def test_verify_top_k_reads_a_good_value(monkeypatch):
    from gpperf_torch.selection.verify import verify_top_k

    monkeypatch.setenv("GPPERF_VERIFY_TOP_K", "5")
    assert verify_top_k() == 5


def test_cli_help_in_process_survives_bad_environment(monkeypatch, capsys):
    monkeypatch.setenv("GPPERF_OBJECTIVE", "bogus")
    monkeypatch.setenv("GPPERF_MODE", "LOUD")
    selector.reload_env()
    try:
        with pytest.raises(SystemExit) as info:
            cli_main(["--help"])
        assert info.value.code == 0 and "tune" in capsys.readouterr().out
    finally:
        monkeypatch.delenv("GPPERF_OBJECTIVE")
        monkeypatch.delenv("GPPERF_MODE")
        selector.reload_env()


def test_import_and_help_in_a_fresh_process_survive_bad_environment():
    """The true check: a new interpreter, the variables set before `import gpperf_torch`."""
    code = "import gpperf_torch, math; from gpperf_torch.cli.main import main; main(['--help'])"
    environ = {
        **os.environ, "PYTHONPATH": str(ROOT), "GPPERF_OBJECTIVE": "bogus", "GPPERF_MODE": "VERIFY!",
        "GPPERF_DISK_CACHE": "perhaps", "GPPERF_VERIFY_TOP_K": "many",
    }  # fmt: skip
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environ, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and "usage: gpperf-torch" in r.stdout
    assert "GPPERF_OBJECTIVE='bogus'" in r.stderr and "'time'" in r.stderr and "GPPERF_MODE" in r.stderr


def test_objective_values_are_finite():
    for spec in GOOD:
        v = selector.parse_objective(spec).value
        assert v is None or math.isfinite(v)
