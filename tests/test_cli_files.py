"""Every command of the CLI, fed a missing, empty, truncated, binary or wrong-format file, exits non-zero with
ONE line naming the file and the problem (no traceback), and never modifies an input it did not create.

The commands are discovered from the parser: a subcommand added later is checked too, through the options that
take a file (FILE_OPTIONS), or it fails `test_every_command_is_covered` until it is given a case here.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gpperf_torch import kernels
from gpperf_torch.cli.main import build_parser
from gpperf_torch.cli.main import main as cli_main
from gpperf_torch.measure import dataset
from gpperf_torch.predictor.runtime import model_paths, shipped_model

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("missing", "empty", "truncated", "binary", "wrong_format")
BINARY = bytes(range(256)) * 8
INTERPRET = ["--interpret"] if kernels.interpreting() else []  # tune without a GPU (never re-execs in tests)


def _data_file(d: Path, kind: str) -> Path:
    """A tuning-data CSV argument (--data) of the given kind."""
    p = d / f"data_{kind}.csv"
    header = ",".join(dataset.COLUMNS) + "\n"
    content = {
        "empty": b"",
        "truncated": header[:23].encode(),  # a dataset cut inside its header
        "binary": BINARY,
        "wrong_format": b"name,age,city\nann,31,oslo\nbob,44,rome\n",
    }
    if kind != "missing":
        p.write_bytes(content[kind])
    return p


def _model_dir(d: Path, kind: str) -> Path:
    """A model argument (--model DIR) whose model.json is of the given kind (missing: no directory at all)."""
    p = d / f"model_{kind}"
    if kind == "missing":
        return p
    p.mkdir()
    onnx_path, json_path = model_paths(shipped_model("h100"))
    os.symlink(onnx_path, p / "model.onnx")  # never written: a link saves copying 7 MB per case
    text = json_path.read_bytes()
    content = {
        "empty": b"",
        "truncated": text[: len(text) // 3],
        "binary": BINARY,
        "wrong_format": b"m,n,k\n64,64,64\n",
    }
    (p / "model.json").write_bytes(content[kind])
    return p


def _shapes_file(d: Path, kind: str) -> Path:
    p = d / f"shapes_{kind}.txt"
    content = {"empty": b"", "truncated": b"64 64", "binary": BINARY, "wrong_format": b'{"shapes": [[64, 64, 64]]}\n'}
    if kind != "missing":
        p.write_bytes(content[kind])
    return p


def _configs_file(d: Path, kind: str) -> Path:
    p = d / f"configs_{kind}.txt"
    content = {"empty": b"", "truncated": b"64x64x32_g8", "binary": BINARY, "wrong_format": b"64 64 64\n"}
    if kind != "missing":
        p.write_bytes(content[kind])
    return p


def _foreign_out(d: Path, kind: str) -> Path:
    """--out of tune naming an existing file that is not a gpperf dataset (missing/empty are legitimate outputs)."""
    p = d / f"out_{kind}.csv"
    content = {"truncated": b"name,age\nann,31\nbob,4", "binary": BINARY, "wrong_format": b'{"a": 1}\n'}
    p.write_bytes(content[kind])
    return p


def _good_shapes(d: Path) -> Path:
    p = d / "good_shapes.txt"
    p.write_text("16 16 16\n")
    return p


def _table_file(d: Path, kind: str) -> Path:
    """A verified-table argument (`table show|merge PATH`) of the given kind."""
    p = d / f"table_{kind}.json"
    content = {
        "empty": b"",
        "truncated": b'{"format": "gpperf-verified-table", "version": 1, "entr',
        "binary": BINARY,
        "wrong_format": b'{"name": "ann", "age": 31}',
    }
    if kind != "missing":
        p.write_bytes(content[kind])
    return p


# command -> [(what is under test, argv builder(tmp dir, kind) -> (argv, the path that must be named))]
def _cases():
    return {
        "tune": [
            ("shapes", lambda d, k: (["tune", "--shapes", str(p := _shapes_file(d, k)), "--out", str(d / "t.csv"),
                                      *INTERPRET, "-q"], p)),
            ("configs", lambda d, k: (["tune", "--shapes", str(_good_shapes(d)), "--configs",
                                       str(p := _configs_file(d, k)), "--out", str(d / "t.csv"), *INTERPRET, "-q"], p)),
            ("out", lambda d, k: (["tune", "--shapes", str(_good_shapes(d)), "--out", str(p := _foreign_out(d, k)),
                                   *INTERPRET, "-q"], p)),
        ],
        "train": [("data", lambda d, k: (["train", "--data", str(p := _data_file(d, k)), "--out", str(d / "m")], p))],
        "eval": [
            ("data", lambda d, k: (["eval", "--model", "h100", "--data", str(p := _data_file(d, k))], p)),
            ("model", lambda d, k: (["eval", "--model", str(p := _model_dir(d, k)), "--data", str(d / "x.csv")], p)),
        ],
        "report": [
            ("data", lambda d, k: (["report", "--model", "h100", "--data", str(p := _data_file(d, k)),
                                    "--out", str(d / "r")], p)),
            ("model", lambda d, k: (["report", "--model", str(p := _model_dir(d, k)), "--pareto", "64", "64", "64",
                                     "--out", str(d / "r")], p)),
        ],
        "table": [
            ("show", lambda d, k: (["table", "show", str(p := _table_file(d, k))], p)),
            ("merge", lambda d, k: (["table", "merge", str(p := _table_file(d, k)), "--out", str(d / "m.json")], p)),
        ],
        "select": [("model", lambda d, k: (["select", "64", "64", "64", "--gpu", "h100",
                                            "--model", str(p := _model_dir(d, k))], p))],
    }  # fmt: skip


# Options that take a file, for subcommands without a case above: each is fed the bad data file.
FILE_OPTIONS = ("--data", "--model", "--shapes", "--configs", "--input", "--file", "--csv", "--path")
# Subcommands that read no file at all (their bad arguments are tested beside them).
NO_FILE_COMMANDS = {"inspect": "CONFIG and flags only; bad values in tests/test_kernel_facts.py"}


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _cases_for_all():
    out = []
    known = _cases()
    for name in _subcommands():
        for what, build in known.get(name, []):
            for kind in KINDS:
                if what == "out" and kind in ("missing", "empty"):
                    continue  # a new or empty --out is what tune writes to, not a mistake
                out.append(pytest.param(name, what, build, kind, id=f"{name}-{what}-{kind}"))
    return out


def _snapshot(d: Path) -> dict[str, tuple]:
    return {
        str(p): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(d.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def _check_one_line(err: str, named: Path) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one line, got {len(lines)}:\n{err}"
    line = lines[0]
    assert "Traceback" not in err and str(named) in line, line
    return line


@pytest.mark.parametrize(("command", "what", "build", "kind"), _cases_for_all())
def test_bad_file_is_one_line_and_inputs_stay(tmp_path, capsys, command, what, build, kind):
    argv, named = build(tmp_path, kind)
    before = _snapshot(tmp_path)
    capsys.readouterr()
    rc = cli_main(argv)
    err = capsys.readouterr().err
    assert rc != 0
    _check_one_line(err, named)
    after = _snapshot(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before  # every input byte-identical, untouched


def test_every_command_is_covered():
    """A subcommand without a case here must at least take its files through FILE_OPTIONS."""
    known = _cases()
    for name, sub in _subcommands().items():
        if name in known or name in NO_FILE_COMMANDS:
            continue
        options = {s for a in sub._actions for s in a.option_strings}
        assert options & set(FILE_OPTIONS), (
            f"subcommand {name!r} has no bad-file case in tests/test_cli_files.py and no option among {FILE_OPTIONS}"
        )


@pytest.mark.parametrize("kind", KINDS)
def test_commands_added_later_get_the_same_treatment(tmp_path, capsys, kind):
    """Subcommands with no case in _cases() (e.g. `inspect`): each file option fed the bad data file."""
    known = _cases()
    others = {n: s for n, s in _subcommands().items() if n not in known and n not in NO_FILE_COMMANDS}
    if not others:
        pytest.skip("every registered subcommand has its own cases")
    for name, sub in others.items():
        for action in sub._actions:
            opts = [s for s in action.option_strings if s in FILE_OPTIONS]
            if not opts:
                continue
            bad = _data_file(tmp_path, kind)
            before = _snapshot(tmp_path)
            capsys.readouterr()
            try:
                rc = cli_main([name, opts[0], str(bad)])
            except SystemExit as e:  # other required arguments missing: argparse's one line
                rc = e.code
            err = capsys.readouterr().err
            assert rc != 0 and len([ln for ln in err.splitlines() if ln.strip()]) == 1, err
            assert _snapshot(tmp_path) == before


# ---- ordinary mistakes that are not files ---------------------------------------------------------------------
def _arg_cases(d: Path):
    existing = d / "existing.txt"
    existing.write_text("keep me\n")
    data = _data_file(d, "wrong_format")
    data.with_name("d.json").write_bytes(data.read_bytes())  # a data file with a model's suffix
    return [
        (["train", "--data", str(data), "--out", str(existing)], str(existing)),
        (["train", "--data", str(existing), "--out", str(existing.with_suffix(""))], str(existing)),
        (["report", "--model", "h100", "--pareto", "64", "64", "64", "--out", str(existing)], str(existing)),
        (["tune", "--shapes", str(_good_shapes(d)), "--out", str(d), *INTERPRET], str(d)),
        (["eval", "--model", str(d / "nope"), "--data", str(data)], str(d / "nope")),
        (["train", "--data", str(js := data.with_name("d.json")), "--out", str(js)], str(js)),
    ]


@pytest.mark.parametrize("i", range(6))
def test_existing_file_or_directory_as_out_is_one_line(tmp_path, capsys, i):
    argv, named = _arg_cases(tmp_path)[i]
    before = _snapshot(tmp_path)
    capsys.readouterr()
    assert cli_main(argv) == 2
    _check_one_line(capsys.readouterr().err, Path(named))
    assert _snapshot(tmp_path) == before


BAD_ARGS = [
    ["train", "--data", "x.csv", "--out", "m", "--test-frac", "0"],
    ["train", "--data", "x.csv", "--out", "m", "--test-frac", "1"],
    ["train", "--data", "x.csv", "--out", "m", "--test-frac", "nan"],
    ["train", "--data", "x.csv", "--out", "m", "--n-estimators", "0"],
    ["train", "--data", "x.csv", "--out", "m", "--n-estimators", "-5"],
    ["train", "--data", "x.csv", "--out", "m", "--max-leaf-nodes", "1"],
    ["train", "--data", "x.csv", "--out", "m", "--splits", "0"],
    ["select", "64", "64", "64", "--gpu", "h100", "--top", "-3"],
    ["select", "0", "64", "64", "--gpu", "h100"],
    ["select", "64", "-1", "64", "--gpu", "h100"],
    ["tune", "--preset", "square", "--out", "t.csv", "--max-shapes", "0"],
    ["tune", "--preset", "square", "--out", "t.csv", "--budget-s", "-1"],
    ["frobnicate"],
]


@pytest.mark.parametrize("argv", BAD_ARGS, ids=[" ".join(a[:1] + a[-2:]) for a in BAD_ARGS])
def test_meaningless_arguments_are_one_line(tmp_path, capsys, argv, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        cli_main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "error: argument" in lines[0] and "Traceback" not in err, err
    assert not any(tmp_path.iterdir())  # nothing was created


def test_select_objective_nan_is_one_line(capsys):
    assert cli_main(["select", "64", "64", "64", "--gpu", "h100", "--objective", "power_cap:nan"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "power_cap:nan" in err


def test_interpreted_rows_say_why_and_what_to_pass(tmp_path, capsys):
    """The CPU newcomer path: `tune --interpret`, then `train` on that file."""
    csv_path = tmp_path / "interp.csv"
    header = ",".join(dataset.COLUMNS)
    row = dict.fromkeys(dataset.COLUMNS, "")
    row.update(gpu="interpreter (h100 limits)", m="16", n="16", k="16", dtype="float16", a_trans="0", b_trans="0",
               tf32="0", backend="torch", status="ok", time_ms="0.5", interpreted="1")  # fmt: skip
    csv_path.write_text(header + "\n" + ",".join(str(row[c]) for c in dataset.COLUMNS) + "\n")
    assert cli_main(["train", "--data", str(csv_path), "--out", str(tmp_path / "m")]) == 2
    line = _check_one_line(capsys.readouterr().err, csv_path)
    assert "interpreter" in line and "not GPU timings" in line and "--include-interpreted" in line


# ---- a few true subprocess checks: the installed entry point's stderr, whole -------------------------------------
def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TRITON_INTERPRET": "1", "GPPERF_DISK_CACHE": "0"}
    code = "import sys; from gpperf_torch.cli.main import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=300)  # fmt: skip


@pytest.mark.parametrize(
    "case",
    ["train-missing", "tune-foreign-out", "select-binary-model", "eval-truncated-data"],
)
def test_subprocess_stderr_is_exactly_one_line(tmp_path, case):
    if case == "train-missing":
        p = tmp_path / "nope.csv"
        argv = ["train", "--data", str(p), "--out", str(tmp_path / "m")]
    elif case == "tune-foreign-out":
        p = _foreign_out(tmp_path, "truncated")
        argv = ["tune", "--shapes", str(_good_shapes(tmp_path)), "--out", str(p), "--interpret", "-q"]
    elif case == "select-binary-model":
        p = _model_dir(tmp_path, "binary")
        argv = ["select", "64", "64", "64", "--gpu", "h100", "--model", str(p)]
    else:
        p = _data_file(tmp_path, "truncated")
        argv = ["eval", "--model", "h100", "--data", str(p)]
    before = _snapshot(tmp_path)
    r = _run(argv, tmp_path)
    assert r.returncode == 2, r.stderr
    _check_one_line(r.stderr, p)
    assert _snapshot(tmp_path) == before
    assert json.dumps(r.stdout) == '""'  # nothing on stdout either


def test_a_closed_pipe_ends_quietly(tmp_path):
    """`gpperf-torch select ... | head`: the reader went away; exit 0, nothing on stderr."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TRITON_INTERPRET": "1", "GPPERF_DISK_CACHE": "0"}
    code = "import sys; from gpperf_torch.cli.main import main; sys.exit(main(sys.argv[1:]))"
    argv = ["select", "64", "64", "64", "--gpu", "h100", "--top", "0"]
    p = subprocess.Popen([sys.executable, "-c", code, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=env, cwd=tmp_path)  # fmt: skip
    p.stdout.close()  # before the command writes: its first write meets a closed pipe
    err = p.stderr.read()
    assert p.wait(timeout=300) == 0 and err == b"", err


@pytest.mark.parametrize("name", ["h100", "a100"])
def test_shipped_model_names_work_wherever_a_model_is_named(name, capsys, monkeypatch, fresh_selector):
    assert cli_main(["select", "64", "64", "64", "--model", name, "--top", "1"]) == 0
    assert f"{name}.onnx" in capsys.readouterr().out
    import gpperf_torch as gp
    from gpperf_torch.selection import selector

    monkeypatch.setenv("GPPERF_MODEL", name)
    selector.reset()
    assert gp.explain(64, 64, 64, device="cpu")[0]["model"].endswith(f"{name}.onnx")
