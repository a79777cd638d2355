"""`gpperf_torch.warmup(model, example_inputs)`: measure every GEMM a model runs, once, before it serves.

Records the model's GEMMs (nn.record_shapes, forward and optionally backward, without measuring during the
recording), verifies each on operands of its shape, dtype and layout (selector.measure: cuBLAS and the
predicted best Triton configs, the fastest kept by the noise rule), saves the verified table, and returns one
row per GEMM: backend, config, measured times, gain over cuBLAS. A shape the table already holds (this GPU,
these library versions) is not measured again. With GPPERF_TABLE set (a read-only table) nothing is measured:
the report says what the table holds and what would take the prediction.

Warmup is explicit, so the per-process cap of first-sight measurements (GPPERF_VERIFY_MAX_SHAPES) does not
apply to it. Through the Triton interpreter (a CPU) it runs the same way, with times that are not GPU times.

Under an energy objective (energy, edp, balanced[:slack]; `objective=` or the current one) each GEMM is also
measured in NVML energy windows (selection/energy_verify.py) and the table keeps it under that objective.

The guard (`guard=True`, the default on a GPU) then measures the model's forward plain (every GEMM cuBLAS) and
patched, whole (selection/guard.py): in time, and for energy objectives in energy. If patched is not better
beyond the noise, every GEMM of the model goes back to cuBLAS (in this process and in the table, marked
`guard`), and the report says so (`report.guard`). Never under a CUDA-graph capture or a trace. The plain forward
swaps the model's gpperf Linear layers back to nn.Linear for the measurement; GEMMs the model calls through
gp.matmul directly go through the op in both forwards.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from . import kernels
from .nn import GemmShape, Linear, record_shapes
from .paths import cannot_write
from .policy import verify_policy
from .selection import energy_verify, guard, selector, table, verify
from .selection.objectives import current_objective, parse_objective
from .selection.objectives import mode as mode_block
from .selection.objectives import objective as objective_block
from .selection.ranking import TORCH, rank
from .selection.state import state

logger = logging.getLogger(__name__)


def operands(s: GemmShape, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """Random operands of one GEMM with its layout (a transposed view where the op saw one), seeded by its shape
    (also the GPU check's noise check)."""
    dtype = getattr(torch, s.dtype)
    gen = torch.Generator(device="cpu").manual_seed(s.m * 131 + s.n * 17 + s.k)

    def mat(rows: int, cols: int, trans: bool) -> torch.Tensor:
        shape = (s.batch, cols, rows) if trans else (s.batch, rows, cols)
        x = torch.randn(shape, generator=gen).to(device=device, dtype=dtype)
        x = x.transpose(-1, -2) if trans else x
        return x if s.batch > 1 else x[0]

    return mat(s.m, s.k, s.a_trans), mat(s.k, s.n, s.b_trans)


class _Bar:
    """rich's progress bar when rich is installed and `show`, else one log line per GEMM at INFO."""

    def __init__(self, total: int, show: bool):
        self._p = None
        self._total = total
        self._done = 0
        if not show or total == 0:
            return
        try:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
        except ImportError:
            return
        self._p = Progress(TextColumn("warmup"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[what]}"),
                           TimeElapsedColumn(), transient=False)  # fmt: skip
        self._task = self._p.add_task("warmup", total=total, what="")
        self._p.start()

    def step(self, what: str) -> None:
        self._done += 1
        if self._p is not None:
            self._p.update(self._task, advance=1, what=what)
        else:
            logger.info("warmup %d/%d: %s", self._done, self._total, what)

    def close(self) -> None:
        if self._p is not None:
            self._p.stop()


class WarmupReport(list):
    """warmup's rows (one dict per GEMM), and `guard`: the end-to-end guard's measurement and decision (None when
    it did not run; {"skipped": why} when it could not)."""

    guard: dict | None = None
    objective: str = "time"


def warmup(
    model: nn.Module,
    example_inputs,
    backward: bool = False,
    *,
    save: str | Path | None = None,
    progress: bool = True,
    remeasure: bool = False,
    objective: str | None = None,
    guard: bool | None = None,
) -> WarmupReport:
    """Verify every GEMM `model` runs on `example_inputs` (forward; backward too with `backward`), save the
    verified table (`save`, default this GPU's table file in the cache directory), and return one dict per GEMM:
    m, n, k, batch, dtype, layout, calls (per model call), source ("measured", "table", "predicted" or "guard"),
    backend, config, times_ms (every candidate's median), gain (cuBLAS's time over the choice's), noise, and for
    energy objectives `energy` (J, W, ms per candidate, noise, clocks, throttling).

    `remeasure` measures shapes the table already holds again. `objective` (default: the current one) is what the
    GEMMs are chosen for. `guard` (default: on a GPU) compares the whole forward plain and patched and reverts
    the model's GEMMs to cuBLAS unless patched is better beyond the noise (the report's `guard`)."""
    shapes = record_shapes_quietly(model, example_inputs, backward)
    dev = _device_of(model, example_inputs)
    st = state(dev)
    tbl = table.for_device(st.info)
    steps = verify.bucket_steps()
    obj, tf32 = str(parse_objective(objective or current_objective())), bool(kernels.tf32_allowed())
    report = WarmupReport()
    report.objective = obj
    bar = _Bar(len(shapes), progress)
    try:
        for s, calls in shapes:
            key = (s.m, s.n, s.k, s.batch, s.dtype, s.a_trans, s.b_trans, s.dtype == "float32" and tf32, obj)
            row = {"m": s.m, "n": s.n, "k": s.k, "batch": s.batch, "dtype": s.dtype,
                   "layout": "nt"[s.a_trans] + "nt"[s.b_trans], "calls": calls}  # fmt: skip
            entry = None if remeasure else tbl.lookup(key[:8], steps, objective=obj)
            if entry is not None:
                row.update(source="table", backend=_backend(entry.choice), config=entry.choice,
                           times_ms=dict(entry.times_ms), gain=entry.gain, noise=entry.noise)  # fmt: skip
                if entry.energy:
                    row["energy"] = dict(entry.energy)
            elif tbl.read_only:
                cfg = rank(st, key)[0][0]
                choice = TORCH if cfg is None else cfg.key
                row.update(source="predicted", backend=_backend(choice), config=choice, times_ms={},
                           gain=float("nan"), noise=float("nan"))  # fmt: skip
            else:
                a, b = operands(s, dev)
                # Also remembered in this process: the exact shape is answered without a table lookup from now on.
                res = selector.measure(st, key, a, b, "verify", source="warmup")
                row.update(source="measured", backend=_backend(res.choice_key), config=res.choice_key,
                           times_ms=dict(res.times_ms), gain=res.gain, noise=res.noise, compiles=res.compiles,
                           compile_s=res.compile_s, bench_ms=res.bench_ms, errors=dict(res.errors))  # fmt: skip
                if getattr(res, "energy", None):
                    row["energy"] = dict(res.energy)
            row["key"] = key
            row["bucket"] = list(verify_policy.m_bucket(s.m, steps))
            if row["source"] != "predicted":  # what timed it: the GPU, or the interpreter's CPU wall clock
                row["timed_by"] = "interpreter" if table.interpreted() else "gpu"
            report.append(row)
            bar.step(f"{s.m}x{s.n}x{s.k} {s.dtype} {row['layout']}: {row['config']} ({row['source']})")
    finally:
        bar.close()
    if guard is None:
        guard = dev.type == "cuda" and not kernels.interpreting()
    if guard and report:
        report.guard = _guard(model, example_inputs, report, st, tbl, steps, obj, dev)
    for row in report:
        row.pop("key", None)
    if tbl.read_only:
        logger.info("warmup: GPPERF_TABLE=%s is read-only: nothing measured or saved", tbl.path)
    elif save is not None or tbl.persist:
        target = Path(save) if save is not None else tbl.path
        try:
            path = tbl.save(target)
            logger.info("warmup: %d GEMMs, verified table saved to %s", len(report), path)
        except (OSError, ValueError, TimeoutError) as e:  # what was measured is kept: in the report, in memory
            if save is None:
                cannot_write(target, e)
            else:
                logger.warning("gpperf: warmup could not save the verified table to %s (%s); the %d GEMMs "
                               "measured are in the report and in this process's memory",
                               target, e, len(report))  # fmt: skip
    return report


def _guard(model, example_inputs, rows: list[dict], st, tbl, steps: int, obj: str, dev: torch.device) -> dict:
    """Compare the whole forward plain and patched (selection/guard.py); revert the GEMMs to cuBLAS unless patched
    is better beyond the noise. Returns the guard's record for the report."""
    why = verify.cannot_measure_now(cuda=dev.type == "cuda")
    if why:
        return {"skipped": f"not measured {why}"}
    if all(r["config"] == TORCH for r in rows):
        return {"skipped": "every GEMM already uses cuBLAS: patched is plain", "kept_patched": False}
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    linears = [m for m in model.modules() if type(m) in (nn.Linear, Linear)]
    was = [type(m) for m in linears]
    sync = torch.cuda.synchronize if dev.type == "cuda" else None

    def forward(cls):
        def run():
            for m in linears:
                m.__class__ = cls
            model(*inputs)

        return run

    plain, patched = forward(nn.Linear), forward(Linear)
    try:
        with torch.inference_mode(), objective_block(obj):
            for fn in (plain, patched):  # warm: first sights of shapes warmup did not see, compilation
                fn()
            if sync is not None:
                sync()
            res = guard.compare(plain, patched, parse_objective(obj), sync=sync, meter=energy_verify.meter_for(dev),
                                window_s=energy_verify.window_s(), repeats=energy_verify.repeats())  # fmt: skip
    finally:
        for m, cls in zip(linears, was, strict=True):
            m.__class__ = cls
    out = res.as_dict()
    if not res.kept_patched:
        _revert(rows, st, tbl, steps, obj, res.reason)
        out["reverted"] = sum(r["config"] == TORCH for r in rows)
        logger.warning("gpperf warmup: the patched model is not better than plain PyTorch beyond the noise (%s): "
                       "its GEMMs use cuBLAS", res.reason)  # fmt: skip
    return out


def _revert(rows: list[dict], st, tbl, steps: int, obj: str, reason: str) -> None:
    """Every GEMM of the report back to cuBLAS: in this process, and in the table (mode `guard`) unless read-only."""
    for r in rows:
        key = r["key"]
        selector.replace_key(st, key, None)
        if not tbl.read_only:
            entry = table.Entry(choice=TORCH, m=int(r["m"]), times_ms=dict(r.get("times_ms") or {}),
                                noise=float(r.get("noise", float("nan"))), mode="guard",
                                energy={**(r.get("energy") or {}), "guard": reason})  # fmt: skip
            tbl.add((*verify_policy.bucket_key(key[:8], steps), obj), entry)
        r.update(source="guard", backend="torch", config=TORCH, gain=1.0, chosen_before_guard=r["config"])


def _backend(choice: str) -> str:
    return "torch" if choice == TORCH else "triton"


def record_shapes_quietly(model: nn.Module, example_inputs, backward: bool) -> list[tuple[GemmShape, int]]:
    """nn.record_shapes under the predict mode: the recording pass itself measures nothing."""
    with mode_block("predict"):
        return record_shapes(model, example_inputs, backward=backward)


def _device_of(model: nn.Module, example_inputs) -> torch.device:
    for p in model.parameters():
        return p.device
    inputs = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    for x in inputs:
        if isinstance(x, torch.Tensor):
            return x.device
    return torch.device("cpu")


def format_report(rows: list[dict]) -> str:
    """The report as a table (what `print(gp.format_warmup(rows))` shows)."""
    lines = [f"{'GEMM':28s} {'calls':>5s} {'source':9s} {'backend':7s} {'gain':>6s} {'torch ms':>9s} {'chosen ms':>9s}"
             "  config"]  # fmt: skip
    for r in rows:
        shape = f"{r['m']}x{r['n']}x{r['k']}" + (f" (x{r['batch']})" if r["batch"] > 1 else "")
        t = r.get("times_ms") or {}
        lines.append(f"{shape + ' ' + r['dtype'] + ' ' + r['layout']:28s} {r['calls']:5d} {r['source']:9s}"
                     f" {r['backend']:7s} {r['gain']:6.3f} {t.get(TORCH, float('nan')):9.4f}"
                     f" {t.get(r['config'], float('nan')):9.4f}  {r['config']}")  # fmt: skip
    if table.interpreted() and any(r["source"] != "predicted" for r in rows):
        lines.append("(times: the Triton interpreter's CPU wall clock, not GPU times; the table marks them so, and no"
                     " GPU is ever served them)")  # fmt: skip
    g = getattr(rows, "guard", None)
    if g:
        if "skipped" in g:
            lines.append(f"guard: not run ({g['skipped']})")
        elif g.get("kept_patched"):
            lines.append(f"guard: patched kept ({g['reason']})")
        else:
            lines.append(f"guard: REVERTED to cuBLAS, {g.get('reverted', 0)} GEMMs ({g['reason']})")
    return "\n".join(lines)


__all__ = ["WarmupReport", "format_report", "operands", "warmup"]
