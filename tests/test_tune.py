"""The tuning run: schema, resume (after a SIGKILL too), torn-line repair, lock, budget, failure rows, CLI.

Without CUDA these run through the Triton interpreter on tiny shapes and a handful of small configs; with CUDA
the same tests measure on the GPU (energy off, so they stay quick).
"""

import argparse
import csv
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from gpperf_torch.cli import tune as tune_cli
from gpperf_torch.kernels import TileConfig
from gpperf_torch.measure import writer
from gpperf_torch.measure.dataset import COLUMNS, STATUSES
from gpperf_torch.tuning import plan
from gpperf_torch.tuning import tune as tune_mod
from gpperf_torch.tuning.shapes import llm_shapes, random_shapes, read_shapes

from helpers import keys, read_rows

HAS_CUDA = torch.cuda.is_available()
INTERP = not HAS_CUDA
CONFIGS = [
    TileConfig(16, 16, 32, num_warps=1, num_stages=2),
    TileConfig(32, 32, 32, num_warps=4, num_stages=2),
    TileConfig(16, 32, 16, split_k=2, num_warps=2, num_stages=2),
]
# 3 * (256*128 + 128*256) * 2 B = 384 KiB of shared memory: more than any GPU we know offers.
TOO_BIG = TileConfig(256, 256, 128, num_warps=16, num_stages=3)
FAST = dict(interpret=INTERP, energy_fraction=0.0, time_budget_ms=2.0, quiet=True, jobs=0)
REPO = Path(__file__).resolve().parents[1]


def test_schema_and_resume(tmp_path):
    out = tmp_path / "run.csv"
    shapes = [(16, 32, 32), (1, 16, 32)]
    s = tune_mod.tune(out, shapes=shapes, dtypes=["fp16", "fp32"], configs=CONFIGS[:2], **FAST)
    assert s.rows_written == 2 * 2 * 3 and s.rows_failed == 0 and not s.budget_stopped
    assert not s.energy_available
    rows = read_rows(out)
    assert len(rows) == 12 and len(set(keys(rows))) == 12
    assert {r["status"] for r in rows} == {"ok"}
    assert all(r["status"] in STATUSES for r in rows)
    assert {r["interpreted"] for r in rows} == {str(int(INTERP))}
    assert {r["dtype"] for r in rows} == {"float16", "float32"}
    assert sum(r["backend"] == "torch" for r in rows) == 4  # one baseline per (shape, dtype)
    ok = [r for r in rows if r["backend"] == "triton"]
    assert all(float(r["time_ms_p20"]) <= float(r["time_ms"]) <= float(r["time_ms_p80"]) for r in ok)
    assert all(r["energy_j"] == "" and r["torch"] == torch.__version__ for r in rows)
    # Rerunning the same command measures nothing new.
    again = tune_mod.tune(out, shapes=shapes, dtypes=["fp16", "fp32"], configs=CONFIGS[:2], **FAST)
    assert (again.rows_written, again.rows_skipped) == (0, 12)
    assert len(read_rows(out)) == 12


def test_failures_are_rows_and_layouts(tmp_path):
    out = tmp_path / "fail.csv"
    s = tune_mod.tune(
        out, shapes=[(32, 16, 32)], layouts=["nt", "tn"], configs=[CONFIGS[0], TOO_BIG], torch_baseline=False, **FAST
    )
    rows = read_rows(out)
    assert s.rows_written == 4 and s.rows_failed == 2
    bad = [r for r in rows if r["config"] == TOO_BIG.key]
    assert [r["status"] for r in bad] == ["invalid", "invalid"]
    assert all("shared memory" in r["error"] and r["time_ms"] == "" for r in bad)
    assert {(r["a_trans"], r["b_trans"]) for r in rows} == {("0", "1"), ("1", "0")}


def test_budget_stops_cleanly_and_a_rerun_finishes(tmp_path):
    out = tmp_path / "budget.csv"
    shapes = [(16, 16, 16), (32, 16, 16), (16, 32, 16), (32, 32, 32)]
    s = tune_mod.tune(out, shapes=shapes, configs=CONFIGS, budget_s=0.05, **FAST)
    assert s.budget_stopped and s.rows_remaining > 0
    assert s.rows_written == len(read_rows(out)) < 16
    rest = tune_mod.tune(out, shapes=shapes, configs=CONFIGS, **FAST)
    assert not rest.budget_stopped and rest.rows_skipped == s.rows_written
    rows = read_rows(out)
    assert len(rows) == 16 and len(set(keys(rows))) == 16


def test_round_robin_order_covers_shapes_first():
    problems = [plan.Problem(m, 8, 8, "float16", 0, 0, 0) for m in (1, 2, 3)]
    per = {p: [plan.WorkItem(p, c) for c in [None, *CONFIGS]] for p in problems}
    order = plan.order_work(per, chunk=2, seed=0)
    assert len(order) == 12
    # The first pass gives every problem its baseline and one config before any gets a third item.
    first = order[:6]
    assert all(sum(it.problem == p for it in first) == 2 for p in problems)
    assert all(next(it for it in first if it.problem == p).cfg is None for p in problems)  # baseline first


def test_config_sampling_is_seeded_and_diverse():
    from gpperf_torch.kernels import candidate_space

    space = candidate_space(elem_size=2, max_shared_memory=232448)
    a = plan.sample_configs(space, 12, seed=1, key="x")
    assert a == plan.sample_configs(space, 12, seed=1, key="x")
    assert len(set(a)) == 12
    assert len({(c.block_m, c.block_n) for c in a}) >= 8  # stratified over tile shapes
    with pytest.raises(ValueError, match="configs per shape"):
        plan.sample_configs(space, 0, seed=1, key="x")


def test_torn_last_line_is_repaired(tmp_path):
    out = tmp_path / "torn.csv"
    tune_mod.tune(out, shapes=[(16, 16, 16)], configs=CONFIGS[:1], **FAST)
    whole = out.read_bytes()
    out.write_bytes(whole + b"interpreter,16,16,16,float16,0,0,0,triton,16x")  # a write cut short
    s = tune_mod.tune(out, shapes=[(16, 16, 16)], configs=CONFIGS[:2], **FAST)
    assert s.repaired_bytes > 0 and s.rows_written == 1 and s.rows_skipped == 2
    rows = read_rows(out)
    assert len(rows) == 3 and len(set(keys(rows))) == 3
    assert writer.repair_torn_tail(out) == 0


def test_other_schema_is_refused(tmp_path):
    out = tmp_path / "old.csv"
    out.write_text("gpu,m,n,k\nx,1,2,3\n")
    with pytest.raises(ValueError, match="not a gpperf tuning dataset of this version"):
        tune_mod.tune(out, shapes=[(16, 16, 16)], configs=CONFIGS[:1], **FAST)


def test_lock_held_by_another_process(tmp_path):
    out = tmp_path / "locked.csv"
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from filelock import FileLock; import time; l = FileLock({str(out) + '.lock'!r}); "
         "l.acquire(); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(writer.DatasetLockedError, match="another tune run"):
            tune_mod.tune(out, shapes=[(16, 16, 16)], configs=CONFIGS[:1], **FAST)
    finally:
        holder.kill()
        holder.wait()
    # The lock dies with its holder: a new run proceeds.
    assert tune_mod.tune(out, shapes=[(16, 16, 16)], configs=CONFIGS[:1], **FAST).rows_written == 2


def test_resume_after_sigkill(tmp_path):
    out = tmp_path / "killed.csv"
    shapes = [(16, 16, 16), (32, 16, 16), (16, 32, 16), (32, 32, 16), (16, 16, 32)]
    script = textwrap.dedent(
        f"""
        import importlib
        from gpperf_torch.kernels import TileConfig
        tune = importlib.import_module("gpperf_torch.tuning.tune")
        configs = [TileConfig.from_key(k) for k in {[c.key for c in CONFIGS]!r}]
        tune.tune({str(out)!r}, shapes={shapes!r}, configs=configs, interpret={INTERP}, energy_fraction=0.0,
                  time_budget_ms=20.0, quiet=True, jobs=0)
        """
    )
    env = dict(os.environ)
    if INTERP:
        env["TRITON_INTERPRET"] = "1"
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, cwd=REPO)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and out.read_text().count("\n") >= 4:  # header + 3 rows
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed; give it more work"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    partial = read_rows(out)  # parses: no torn row, header intact
    assert 3 <= len(partial) < 20
    s = tune_mod.tune(out, shapes=shapes, configs=CONFIGS, **FAST)
    assert s.rows_skipped == len(partial)
    rows = read_rows(out)
    assert len(rows) == 20 and len(set(keys(rows))) == 20


@pytest.mark.skipif(HAS_CUDA, reason="checks the message shown where there is no GPU")
def test_cli_without_cuda_needs_interpret(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    tune_cli.add_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["tune", "--preset", "square", "--out", str(tmp_path / "x.csv")])
    assert args.func(args) == 2
    err = capsys.readouterr().err
    assert "no CUDA device" in err and "--interpret" in err
    assert not (tmp_path / "x.csv").exists()


def test_cli_interpret_runs_tiny_shapes(tmp_path, capsys):
    shapes = tmp_path / "shapes.txt"
    shapes.write_text("# m n k\n16 16 16\n4096 4096 4096\n")
    cfgs = tmp_path / "configs.txt"
    cfgs.write_text(CONFIGS[0].key + "\n")
    parser = argparse.ArgumentParser()
    tune_cli.add_cli(parser.add_subparsers(dest="command"))
    out = tmp_path / "cli.csv"
    argv = ["tune", "--shapes", str(shapes), "--configs", str(cfgs), "--out", str(out), "-q", "--no-energy"]
    args = parser.parse_args([*argv, "--time-budget-ms", "2", "--jobs", "0"] + (["--interpret"] if INTERP else []))
    assert args.func(args) == 0
    rows = read_rows(out)
    assert "wrote" in capsys.readouterr().out
    if INTERP:  # the 4096^3 shape is beyond the interpreter and skipped with a warning
        assert {(r["m"], r["n"], r["k"]) for r in rows} == {("16", "16", "16")}


def test_shapes_presets_and_files(tmp_path):
    llm = llm_shapes()
    assert (1, 4096, 4096) in llm and (8192, 14336, 4096) in llm  # decode and prefill forward
    assert (4096, 4096, 11008) in {(m, n, k) for m, n, k in llm} or (512, 4096, 11008) in llm  # backward dx
    assert (11008, 4096, 512) in llm  # weight gradient: m=out, n=in, k=tokens
    assert len(llm) == len(set(llm))
    r = random_shapes(50, seed=3)
    assert r == random_shapes(50, seed=3) and r != random_shapes(50, seed=4)
    assert all(min(s) >= 1 and max(s) <= 65536 and s[0] * s[1] * s[2] <= 2**40 for s in r)
    f = tmp_path / "s.csv"
    f.write_text("name,M,N,K\nqkv,16,4096,4096\nup, 8, 11008, 4096\n")
    assert read_shapes(f) == [(16, 4096, 4096), (8, 11008, 4096)]
    f.write_text("1 2\n")
    with pytest.raises(ValueError, match="not 'M N K'"):
        read_shapes(f)


def test_file_from_before_the_worker_column_resumes_in_its_layout(tmp_path):
    from gpperf_torch.measure import dataset

    out = tmp_path / "old.csv"
    shapes = [(16, 16, 16), (32, 16, 16)]
    tune_mod.tune(out, shapes=shapes[:1], configs=CONFIGS[:1], **FAST)
    with open(out, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0][-1] == "worker" and all(r[-1] for r in rows[1:])  # host/device of the measuring process
    with open(out, "w", newline="") as f:  # the same rows as an older version wrote them
        csv.writer(f, lineterminator="\n").writerows(r[:-1] for r in rows)
    s = tune_mod.tune(out, shapes=shapes, configs=CONFIGS[:1], **FAST)
    assert (s.rows_skipped, s.rows_written) == (2, 2)
    with open(out, newline="") as f:
        again = list(csv.reader(f))
    assert again[0] == list(COLUMNS[:-1]) and all(len(r) == len(COLUMNS) - 1 for r in again)
    assert len(dataset.load_table(out, include_interpreted=True)) == 4
