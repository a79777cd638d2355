"""The examples run end to end (tiny sizes, through the Triton interpreter without a GPU), and the Pareto report.

Each example's `main(argv)` is called in this process (imports are paid once); selector state it changes
(`set_model`) is reset around every test. The Pareto CLI is checked with tiny models trained here on synthetic
data, one with energy targets and one time-only.
"""

from __future__ import annotations

import csv
import importlib.util
import re
import sys
from pathlib import Path

import pytest
import torch

from gpperf_torch.cli.main import main as cli_main
from gpperf_torch.measure import dataset
from gpperf_torch.selection import selector

from helpers import FAST, FRUGAL, SLOW, synthetic_rows

pytest.importorskip("sklearn", reason="training a test model needs the [train] extra")
from gpperf_torch.predictor import train  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CUDA = torch.cuda.is_available()
# Tiny sizes on any machine (the examples' GPU defaults are GPT-2-small-like); float32 keeps comparisons tight.
TINY = ["--d-model", "32", "--heads", "2", "--dtype", "float32"]

PARETO_SHAPE = (1024, 512, 768)


def _load_example(name: str):
    path = REPO / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """{"energy": dir, "time": dir, "csv": a tuning CSV (our format) of the energy rows}."""
    out = {}
    for name, energy in (("energy", True), ("time", False)):
        rows = synthetic_rows(energy, first=(PARETO_SHAPE,))
        fitted = train.fit(dataset.from_rows(rows), seed=0, n_jobs=1, n_estimators=10)
        d = tmp_path_factory.mktemp(f"model_{name}")
        train.export(fitted, d, {"provenance": "synthetic test data"})
        out[name] = d
    path = tmp_path_factory.mktemp("data") / "tune.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=dataset.COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in synthetic_rows(True, first=(PARETO_SHAPE,)):
            w.writerow({**r, "interpreted": 0})
    out["csv"] = path
    return out


@pytest.fixture(autouse=True)
def _fresh(fresh_selector):
    """Every example starts from a fresh selector (tests/conftest.py)."""


_COUNTS = re.compile(
    r"GEMMs: (\d+) ran Triton, (\d+) ran torch.matmul \(the dispatch chose Triton for (\d+), torch.matmul for \d+"
    r"(?:; (\d+) ran on the Triton config a GPU would use.*?kernel checked against float64 on (\d+) distinct GEMMs: "
    r"(all within tolerance|FAILED))?"
)


def _assert_kernel_ran(out: str) -> None:
    """The example printed what ran (gp.stats), and the Triton kernel ran at least once, checked against float64
    (on a CPU the dispatch picks torch.matmul for these tiny shapes: the check runs the Triton pick anyway)."""
    found = _COUNTS.findall(out)
    assert len(found) == 1, out
    ran_triton, torch_, dispatched, extra, checked, verdict = found[0]
    assert int(ran_triton) + int(torch_) > 0, out
    if not CUDA:
        assert int(ran_triton) >= 1 and int(ran_triton) == int(dispatched) + int(extra), out
        assert int(checked) >= 1 and verdict == "all within tolerance", out
        if int(dispatched) == 0:
            assert "compare torch with torch" in out, out


def _row(out: str, name: str) -> list[str]:
    line = next(ln for ln in out.splitlines() if ln.startswith(name + " "))
    return line[len(name) :].split()


# ---- energy_aware_inference.py -----------------------------------------------------------------------------
def test_energy_aware_inference_shipped_model(capsys):
    ex = _load_example("energy_aware_inference")
    argv = [*TINY, "--vocab", "96", "--batch", "1", "--window-s", "0.2"]
    assert ex.main([*argv, "--layers", "1", "--prompt-len", "4", "--new-tokens", "3"]) == 0
    out = capsys.readouterr().out
    if not CUDA:
        assert "NOT GPU numbers" in out
    plain, timed = _row(out, "plain PyTorch"), _row(out, "time")
    assert float(plain[0]) > 0 and float(timed[0]) > 0  # tokens/s
    assert float(timed[5]) < 1e-3 and timed[6] == "yes"  # max |dlogit| against plain PyTorch, same tokens
    assert "skipped" not in out and "What to try next" in out and "nvidia-smi -pl" in out
    for obj in ("energy", "balanced:0.05"):  # the shipped H100 model predicts time only: the time pick, said
        row = _row(out, obj)
        assert float(row[0]) > 0 and float(row[5]) < 1e-3 and row[6] == "yes", out
        assert row[-1] == "pick" and row[-2] == "time", out
    if not CUDA:
        assert timed[1] == "n/a" and timed[2] == "n/a"  # no energy counter on a CPU: n/a, never 0
        assert "energy is n/a on a CPU" in out and "uses the shipped H100 model" in out
    assert "prefill vs decode" in out and "decode ms/step" in out
    _assert_kernel_ran(out)


def test_energy_aware_inference_energy_model(models, capsys):
    ex = _load_example("energy_aware_inference")
    argv = [*TINY, "--vocab", "96", "--batch", "1", "--window-s", "0.2", "--layers", "1", "--prompt-len", "3"]
    argv += ["--new-tokens", "2", "--model", str(models["energy"])]
    assert ex.main(argv) == 0
    out = capsys.readouterr().out
    assert "skipped" not in out
    for obj in ("time", "energy", "balanced:0.05"):
        row = _row(out, obj)
        assert float(row[0]) > 0 and float(row[5]) < 1e-3 and row[-1] == "-", out  # chosen by predicted energy
    _assert_kernel_ran(out)
    state = selector._state(torch.device("cuda" if CUDA else "cpu"))  # the example put the default model back
    assert state.model is None or not str(state.model.path).startswith(str(models["energy"]))


# ---- offline_tuning.py ----------------------------------------------------------------------------------------
def test_offline_tuning(tmp_path, capsys):
    ex = _load_example("offline_tuning")
    argv = ["--out", str(tmp_path), "--configs", "2", "--budget-s", "60", "--d-model", "16", "--tokens", "4"]
    assert ex.main(argv) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "tune.csv").is_file()
    assert (tmp_path / "model" / "model.onnx").is_file() and (tmp_path / "model" / "model.json").is_file()
    assert "1. record_shapes" in out and "3. train_and_export" in out and "4. set_model" in out
    if not CUDA:
        assert "NOT GPU numbers" in out
    # Every recorded shape got a choice from the new model (one table row each).
    n_shapes = int(re.search(r"record_shapes: (\d+) distinct GEMMs", out).group(1))
    table = out.split("4. set_model")[1].splitlines()[2 : 2 + n_shapes]
    assert len(table) == n_shapes and all(re.match(r"\s+\d+x\d+x\d+ (nn|nt|tn|tt) ", ln) for ln in table), out
    diff = float(re.search(r"max \|diff\| vs plain PyTorch (\S+)", out).group(1))
    assert diff < 1e-3
    _assert_kernel_ran(out)


# ---- torch_compile.py ------------------------------------------------------------------------------------------
def test_torch_compile(capsys):
    ex = _load_example("torch_compile")
    assert ex.main([*TINY, "--layers", "1", "--batch", "1", "--seq", "4"]) == 0
    out = capsys.readouterr().out
    diffs = [float(x) for x in re.findall(r"max \|compiled - [^|]+\|[^0-9]*([0-9.e+-]+)", out)]
    assert len(diffs) == 3, out  # forward vs eager, forward vs plain PyTorch, backward vs eager
    assert max(diffs) < 1e-3, out
    assert "fullgraph=True" in out
    hook = re.search(r"max \|hook-compiled - plain PyTorch\| ([0-9.e+-]+)", out)  # the compile path's section
    assert hook and float(hook.group(1)) < 1e-3, out
    _assert_kernel_ran(out)


# ---- quickstart.py ------------------------------------------------------------------------------------------------
def test_quickstart(capsys):
    ex = _load_example("quickstart")
    assert ex.main(["--small", "--dtype", "float32"]) == 0
    out = capsys.readouterr().out
    assert "all results match float64" in out
    _assert_kernel_ran(out)


def test_quickstart_objective_it_cannot_use_is_one_message(capsys, monkeypatch):
    """An objective the model cannot serve ends with a message naming the fix (exit 2) or runs; no traceback."""
    ex = _load_example("quickstart")
    rc = ex.main(["--small", "--objective", "energy"])
    captured = capsys.readouterr()
    assert rc in (0, 2), captured
    assert "Traceback" not in captured.err
    if rc == 2:
        assert "gpperf-torch tune" in captured.err
    assert ex.main(["--small", "--objective", "fastest"]) == 2
    assert "objective 'fastest'" in capsys.readouterr().err


# ---- gpperf-torch report --pareto ----------------------------------------------------------------------------------
def test_report_pareto_energy_model(models, tmp_path, capsys):
    m, n, k = PARETO_SHAPE
    argv = ["report", "--model", str(models["energy"]), "--pareto", str(m), str(n), str(k), "--b-trans"]
    assert cli_main([*argv, "--out", str(tmp_path), "--data", str(models["csv"])]) == 0
    out = capsys.readouterr().out
    picks = {obj: _row(out, obj)[0] for obj in ("time", "energy", "edp", "balanced")}
    assert picks["time"] == FAST.key
    assert picks["energy"] == FRUGAL.key and picks["balanced"] == FRUGAL.key
    stem = f"pareto_{m}x{n}x{k}_float16_nt"
    assert (tmp_path / f"{stem}.png").stat().st_size > 1000
    assert (tmp_path / f"{stem}_measured.png").stat().st_size > 1000  # --data holds this shape
    assert "measured 4 candidates" in out


def test_report_pareto_time_only_model(models, tmp_path, capsys):
    argv = ["report", "--model", str(models["time"]), "--pareto", "256", "256", "256", "--out", str(tmp_path)]
    assert cli_main(argv) == 0
    out = capsys.readouterr().out
    assert "energy is not predicted" in out
    assert _row(out, "time")[0] in {FAST.key, FRUGAL.key, SLOW.key, "torch"}
    assert not any(ln.startswith(("energy ", "balanced ", "edp ")) for ln in out.splitlines())
    assert (tmp_path / "pareto_256x256x256_float16_nn.png").is_file()
    # The shape is not in --data: no measured plot, and it says so.
    assert cli_main([*argv, "--data", str(models["csv"])]) == 0
    assert "no measured ok rows" in capsys.readouterr().out


def test_report_needs_data_or_pareto(models, tmp_path, capsys):
    assert cli_main(["report", "--model", str(models["time"]), "--out", str(tmp_path)]) == 2
    assert "--pareto M N K" in capsys.readouterr().err
