"""Distributed tuning on Ray, on the CPU: interpreter workers, tiny shapes, a few configs, one local Ray session.

The whole flow a GPU cluster runs: workers that report their device, tasks sharded by compile class, the driver
the only writer. Failures are real: a worker killed by its actor handle or by SIGKILL to its process, and the
driver's process group killed with SIGKILL, then restarted.
"""

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from gpperf_torch.cli import tune as tune_cli
from gpperf_torch.kernels import TileConfig
from gpperf_torch.tuning import plan, ray_exec, runtime
from gpperf_torch.tuning import tune as tune_mod

from helpers import keys, read_rows

REPO = Path(__file__).resolve().parents[1]
CONFIGS = [
    TileConfig(16, 16, 32, num_warps=1, num_stages=2),
    TileConfig(32, 32, 32, num_warps=4, num_stages=2),
    TileConfig(16, 32, 16, split_k=2, num_warps=2, num_stages=2),
]
SHAPES = [(16, 16, 16), (32, 16, 16), (16, 32, 16), (32, 32, 16), (16, 16, 32), (32, 16, 32)]
N_ROWS = len(SHAPES) * (1 + len(CONFIGS))
FAST = dict(interpret=True, energy_fraction=0.0, time_budget_ms=2.0, quiet=True, jobs=0)
HOST = socket.gethostname()
HAS_CUDA = torch.cuda.is_available()


def wait_for_rows(path, n, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().count("\n") >= n + 1:
            return
        time.sleep(0.05)
    raise AssertionError(f"{path} did not reach {n} rows within {timeout} s")


@pytest.fixture(scope="module")
def ray():
    """One local Ray runtime for the module (starting one costs seconds here); tune(ray="local") reuses it."""
    ray = pytest.importorskip("ray", reason="Ray is the optional extra gpperf-torch[cluster] (in [dev])")
    ray.init(num_cpus=2, include_dashboard=False, namespace=ray_exec.NAMESPACE, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_tasks_are_cut_by_compile_class_and_keep_the_sweep_order():
    problems = [plan.Problem(m, 16, 16, "float16", 0, 0, 0) for m in (16, 32, 48, 64, 80, 96)]
    per = {p: [plan.WorkItem(p, c) for c in [None, *CONFIGS]] for p in problems}
    work = plan.order_work(per, chunk=2, seed=0)
    tasks = ray_exec.make_tasks("g", work, task_items=4, window=12)
    assert sorted(map(repr, (it for t in tasks for it in t.items))) == sorted(map(repr, work))  # each item once
    assert all(len({ray_exec.compile_class(it) for it in t.items}) == 1 for t in tasks)
    assert all(1 <= len(t.items) <= 4 for t in tasks)
    # The first window is the sweep's first pass: every problem's baseline and first config come first.
    first_window = {id(it) for it in work[:12]}
    n_first = sum(1 for t in tasks if id(t.items[0]) in first_window)
    assert {id(it) for t in tasks[:n_first] for it in t.items} == first_window
    # Items of one compile class from different shapes share a task (one compile, many shapes).
    assert max(len({it.problem for it in t.items}) for t in tasks) > 1


def test_without_ray_the_message_names_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(ray_exec.RayUnavailableError, match=r"gpperf-torch\[cluster\]"):
        tune_mod.tune(tmp_path / "x.csv", shapes=[(16, 16, 16)], ray="local", **FAST)
    parser = argparse.ArgumentParser()
    tune_cli.add_cli(parser.add_subparsers(dest="command"))
    argv = ["tune", "--shapes", str(tmp_path / "none.txt"), "--out", str(tmp_path / "x.csv"), "--interpret"]
    args = parser.parse_args([*argv, "--ray", "local"])
    assert args.func(args) == 2
    assert "pip install 'gpperf-torch[cluster]'" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()


def test_bad_ray_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="needs ray=ADDRESS"):
        tune_mod.tune(tmp_path / "x.csv", shapes=[(16, 16, 16)], ray_workers=2, **FAST)
    pytest.importorskip("ray")
    with pytest.raises(ValueError, match="ray_workers must be an integer >= 1"):
        tune_mod.tune(tmp_path / "x.csv", shapes=[(16, 16, 16)], ray="local", ray_workers=0, **FAST)
    with pytest.raises(ValueError, match="ray_retries"):
        tune_mod.tune(tmp_path / "x.csv", shapes=[(16, 16, 16)], ray="local", ray_retries=-1, **FAST)


def test_one_and_two_workers_measure_the_local_sweep_once(ray, tmp_path):
    planned = {(str(m), str(n), str(k), "torch" if c is None else "triton", "" if c is None else c.key)
               for m, n, k in SHAPES for c in [None, *CONFIGS]}  # fmt: skip
    for n in (1, 2):
        out = tmp_path / f"ray{n}.csv"
        s = tune_mod.tune(out, shapes=SHAPES, configs=CONFIGS, ray="local", ray_workers=n, **FAST)
        rows = read_rows(out)
        assert s.rows_written == len(rows) == N_ROWS and s.rows_remaining == 0 and not s.budget_stopped
        assert {(r["m"], r["n"], r["k"], r["backend"], r["config"]) for r in rows} == planned
        assert len(set(keys(rows))) == N_ROWS  # each row once
        assert {r["status"] for r in rows} == {"ok"} and {r["interpreted"] for r in rows} == {"1"}
        labels = {f"{HOST}/cpu:{i}" for i in range(n)}
        assert {r["worker"] for r in rows} <= labels and set(s.workers) <= labels
        assert sum(w["rows"] for w in s.workers.values()) == N_ROWS
        assert {r["gpu"] for r in rows} == {"interpreter (h100 limits)"}
        assert (s.workers_lost, s.tasks_retried) == (0, 0)
    if HAS_CUDA:  # the local executor below interprets: not in a process that imported triton for the GPU
        return
    # Resume across executors: a file the local executor completed has nothing left for a Ray run.
    local = tmp_path / "local.csv"
    tune_mod.tune(local, shapes=SHAPES, configs=CONFIGS, **FAST)
    assert set(keys(read_rows(local))) == set(keys(read_rows(tmp_path / "ray2.csv")))
    again = tune_mod.tune(local, shapes=SHAPES, configs=CONFIGS, ray="local", ray_workers=2, **FAST)
    assert (again.rows_written, again.rows_skipped) == (0, N_ROWS)
    assert len(read_rows(local)) == N_ROWS


def _run_in_thread(**kwargs):
    box = {}

    def target():
        try:
            box["summary"] = tune_mod.tune(**kwargs)
        except BaseException as e:  # re-raised in the test thread
            box["error"] = e

    th = threading.Thread(target=target, daemon=True)
    th.start()
    return th, box


def _finish(th, box, timeout=240.0):
    th.join(timeout)
    assert not th.is_alive(), "the tuning run did not finish"
    if "error" in box:
        raise box["error"]
    return box["summary"]


def test_worker_killed_by_its_handle_loses_only_its_task(ray, tmp_path):
    out = tmp_path / "killw.csv"
    th, box = _run_in_thread(out=out, shapes=SHAPES, configs=CONFIGS, ray="local", ray_workers=2, **FAST)
    wait_for_rows(out, 1)
    first = read_rows(out)[0]  # the worker that returned a task is now busy with its next one
    rank = first["worker"].rsplit(":", 1)[1]
    ray.kill(ray.get_actor(f"tune-{first['run_id']}-{rank}", namespace=ray_exec.NAMESPACE))
    s = _finish(th, box)
    rows = read_rows(out)
    assert len(rows) == len(set(keys(rows))) == N_ROWS  # nothing lost, nothing twice
    assert s.workers_lost == 1 and s.tasks_retried >= 1
    assert {r["status"] for r in rows} == {"ok"}  # the retried items were measured elsewhere
    assert len(s.workers) >= 2  # the replacement worker joined


def _worker_pids():
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                cmd = Path(f"/proc/{d}/cmdline").read_bytes()
            except OSError:
                continue
            if cmd.startswith(b"ray::TuneWorker"):
                pids.append(int(d))
    return pids


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the worker's pid in /proc")
def test_worker_sigkilled_past_its_retries_leaves_failure_rows(ray, tmp_path):
    out = tmp_path / "killp.csv"
    th, box = _run_in_thread(out=out, shapes=SHAPES, configs=CONFIGS, ray="local", ray_workers=1, ray_retries=0, **FAST)
    wait_for_rows(out, 1)
    deadline = time.monotonic() + 10
    while len(pids := _worker_pids()) != 1 and time.monotonic() < deadline:  # earlier runs' workers exiting
        time.sleep(0.1)
    assert len(pids) == 1, pids
    os.kill(pids[0], signal.SIGKILL)
    s = _finish(th, box)
    rows = read_rows(out)
    assert len(rows) == len(set(keys(rows))) == N_ROWS
    failed = [r for r in rows if r["status"] != "ok"]
    assert s.workers_lost == 1 and s.tasks_retried == 0 and failed
    assert all(r["status"] == "error" and "lost with its Ray worker 1 times" in r["error"] for r in failed)
    assert s.rows_failed == len(failed) < N_ROWS  # the replacement worker measured the rest
    # Failure rows are rows: a rerun skips them like any other.
    again = tune_mod.tune(out, shapes=SHAPES, configs=CONFIGS, ray="local", ray_workers=1, **FAST)
    assert (again.rows_written, again.rows_skipped) == (0, N_ROWS)


def _session_pids(sid):
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[3]) == sid:
                pids.append(int(d))
    return pids


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="checks the killed session in /proc")
def test_driver_process_group_sigkilled_then_resumed(ray, tmp_path):
    shapes = tmp_path / "shapes.txt"
    shapes.write_text("".join(f"{m} {n} {k}\n" for m, n, k in SHAPES))
    cfgs = tmp_path / "configs.txt"
    cfgs.write_text("".join(c.key + "\n" for c in CONFIGS))
    out = tmp_path / "killd.csv"
    cmd = [sys.executable, "-c", "import sys; from gpperf_torch.cli.main import main; sys.exit(main())", "tune"]
    cmd += ["--shapes", str(shapes), "--configs", str(cfgs), "--out", str(out), "--interpret", "-q"]
    cmd += ["--no-energy", "--time-budget-ms", "2", "--ray", "local", "--ray-workers", "2"]
    env = dict(
        os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    )
    # Its own session and process group: the driver, and the Ray runtime it starts, are killed together.
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, start_new_session=True, stderr=subprocess.DEVNULL)
    try:
        wait_for_rows(out, 1, timeout=180)
        assert proc.poll() is None, "the run ended before it could be killed; give it more work"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
        deadline = time.monotonic() + 30
        while _session_pids(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        for pid in _session_pids(proc.pid):  # whatever outlived the group (none expected): ours to end
            os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
    partial = read_rows(out)  # parses: no torn row
    assert 1 <= len(partial) < N_ROWS and len(set(keys(partial))) == len(partial)
    s = tune_mod.tune(out, shapes=SHAPES, configs=CONFIGS, ray="local", ray_workers=2, **FAST)
    assert s.rows_skipped == len(partial) and s.rows_written == N_ROWS - len(partial)
    rows = read_rows(out)
    assert len(rows) == len(set(keys(rows))) == N_ROWS
    assert len({r["run_id"] for r in rows}) == 2  # the killed run's rows, then the resumed run's


def test_budget_holds_for_the_whole_run_and_a_rerun_finishes(ray, tmp_path):
    out = tmp_path / "budget.csv"
    shapes = [(m, n, k) for m in (16, 32) for n in (16, 32) for k in (16, 32, 48)]
    budget = 3.0  # Ray workers start in seconds: the budget includes that
    opts = dict(FAST, time_budget_ms=20.0)
    s = tune_mod.tune(out, shapes=shapes, configs=CONFIGS, ray="local", ray_workers=1, budget_s=budget, **opts)
    assert s.elapsed_s < budget + 10.0  # a worker stops itself at the budget: at most a row or two later
    rows = read_rows(out)
    assert s.rows_written == len(rows) == len(set(keys(rows)))
    assert s.budget_stopped or s.rows_written == len(shapes) * 4
    rest = tune_mod.tune(out, shapes=shapes, configs=CONFIGS, ray="local", ray_workers=2, **opts)
    assert rest.rows_skipped == s.rows_written and not rest.budget_stopped
    rows = read_rows(out)
    assert len(rows) == len(set(keys(rows))) == len(shapes) * 4


def test_gpu_sweep_on_a_cluster_without_gpus_says_what_to_do(ray, tmp_path):
    if ray.cluster_resources().get("GPU", 0):
        pytest.skip("this Ray runtime has GPUs: test_gpu_worker_measures_on_its_gpu runs instead")
    with pytest.raises(runtime.NoCudaError, match="has no GPUs.*--interpret --ray-workers N"):
        tune_mod.tune(tmp_path / "g.csv", shapes=[(16, 16, 16)], ray="local", energy_fraction=0.0, quiet=True)


@pytest.mark.cuda
def test_gpu_worker_measures_on_its_gpu(tmp_path):
    """On a GPU machine: `--ray local` with real workers (one per GPU, NVML energy where available)."""
    pytest.importorskip("ray")
    import ray

    if ray.is_initialized():  # the CPU tests' runtime has no GPUs; start one that sees them
        ray.shutdown()
    out = tmp_path / "gpu.csv"
    s = tune_mod.tune(out, shapes=[(256, 256, 256), (512, 256, 128)], configs=CONFIGS, ray="local", ray_workers=1,
                      energy_window_s=0.1, time_budget_ms=5.0, quiet=True, idle_s=0.2)  # fmt: skip
    rows = read_rows(out)
    assert s.rows_written == len(rows) == 8 and len(set(keys(rows))) == 8
    assert {r["gpu"] for r in rows} == {torch.cuda.get_device_name(0)} and {r["interpreted"] for r in rows} == {"0"}
    assert all(r["worker"].startswith(f"{HOST}/cuda:") for r in rows)
    assert {r["status"] for r in rows} == {"ok"}
    if s.energy_available:  # NVML on the worker's own GPU
        assert any(r["energy_j"] for r in rows)
