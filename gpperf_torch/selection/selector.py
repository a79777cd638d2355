"""Per-shape selection: the op's entry point. A choice per GEMM, remembered, made once at first sight.

Hot path: `choose()` is called by the op on every GEMM. A hit in the per-process dictionary costs one tuple
build and one dict lookup (about a microsecond). A first sight:
- `predict`: scores every candidate of the model in one onnxruntime call (ranking.py, about a millisecond) and
  dispatches on the prediction (dispatch.py); remembered in memory and in a JSON file per device and model;
- `verify` (`auto` on a GPU): the device's verified table (table.py) when it holds the shape's M bucket, else
  cuBLAS and the predicted best Triton configs (verify_policy.py) measured on the call's own operands
  (verify.py), the fastest kept, and added to the table; never inside a CUDA-graph capture or a trace, never
  past the per-process cap, never with a read-only table (GPPERF_TABLE): the prediction then;
- `exhaustive`: every valid candidate measured.
Under an energy objective (energy, edp, balanced[:slack]) a measured first sight also measures joules in NVML
windows (energy_verify.py) and keeps the fastest unless a frugal-looking candidate saves beyond the noise; the
verified table keeps it under that objective. Without a counter it keeps the time pick (and says so).

The data flows one way: ops -> selector -> (objectives, state, ranking, verify, table, policy), and none of
those imports this module (tests/test_import_cycles.py).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch

from .. import kernels
from ..kernels import TileConfig
from ..policy import verify_policy
from ..policy.energy_policy import ENERGY_OBJECTIVES, energy_candidates
from . import energy_verify, table, verify
from .objectives import MEASURED_MODES, _env, _mode_var, _objective_var, current_mode, parse_objective
from .objectives import reload_env as _reload_objectives_env
from .ranking import TORCH, measured_head, rank, score
from .state import _by_device, flush_caches, warn_once
from .state import reset as _reset_state
from .state import state as _state

_DTYPE_NAMES = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32"}
_allow_tf32 = kernels.tf32_allowed
_warn_once = warn_once


_trace = threading.local()  # depth: > 0 inside a torch.jit trace (told by the op's front: the op cannot see it)


@contextlib.contextmanager
def tracing() -> Iterator[None]:
    """The calls inside are part of a torch.jit trace: choices are remembered in memory only, none is measured."""
    _trace.depth = getattr(_trace, "depth", 0) + 1
    try:
        yield
    finally:
        _trace.depth -= 1


def _in_trace() -> bool:
    return getattr(_trace, "depth", 0) > 0 or torch.jit.is_tracing()


def reload_env() -> None:
    """Read GPPERF_OBJECTIVE and GPPERF_MODE again (objectives.reload_env)."""
    _reload_objectives_env()


def reset() -> None:
    """Forget loaded models, in-memory selections, loaded verified tables (flushed first) and the measurement
    counters; read the GPPERF_* variables again. The disk caches stay."""
    _reset_state()
    table.reset()
    verify.reset_stats()
    energy_verify.reset_stats()
    reload_env()


def _key(a: torch.Tensor, b: torch.Tensor, objective: str | None) -> tuple:
    """The selection key (DESIGN.md): M, N, K, batch, dtype, layout flags, TF32, objective."""
    # Written for the per-call path: one stride() tuple per operand (stride(-1) costs twice as much), no unpacking
    # into lists; this is most of what a cached choice costs.
    sa = a.shape
    if len(sa) == 2:
        m, k = sa
        batch = 1
    else:
        batch, m, k = sa
    n = b.shape[-1]
    dtype = a.dtype
    return (
        m,
        n,
        k,
        batch,
        _DTYPE_NAMES[dtype],
        k > 1 and a.stride()[-1] != 1,
        n > 1 and b.stride()[-1] != 1,
        dtype is torch.float32 and _allow_tf32(),
        objective or _objective_var.get() or _env["objective"],
    )


def _mode_of(a: torch.Tensor) -> str:
    return current_mode(a.is_cuda)


def _memo_key(key: tuple, md: str) -> tuple:
    return key if md == "predict" else (*key, md)  # a measured choice is remembered apart from the predicted one


def choose(a: torch.Tensor, b: torch.Tensor, forced: TileConfig | None, objective: str | None) -> TileConfig | None:
    """The config for `a @ b` (None: use torch.matmul). Called by the op on every GEMM."""
    if forced is not None:
        return forced
    st = _by_device.get(a.device) or _state(a.device)
    key = _key(a, b, objective)
    # _mode_of and _memo_key written out: this is the per-call path, and the two calls cost 5% of a hit.
    md = _mode_var.get() or _env["mode"]
    if md == "auto":
        md = "verify" if a.is_cuda else "predict"
    mkey = key if md == "predict" else (*key, md)
    try:
        return st.memory[mkey]
    except KeyError:
        pass
    if md == "predict":
        return _predicted(st, key)
    return _measured(st, key, mkey, md, a, b)


def _predicted(st, key: tuple) -> TileConfig | None:
    cfg = rank(st, key)[0][0]
    st.memory[key] = cfg
    if not _in_trace():  # a trace that fails must leave nothing behind on disk: memory only
        st.disk.add(key, TORCH if cfg is None else cfg.key)
    return cfg


def _fallback(st, key: tuple, mkey: tuple | None, reason: str) -> TileConfig | None:
    """The prediction where no measurement may run; remembered under the measured key `mkey` unless None (then
    the next call measures)."""
    verify.count_predicted(reason)
    cfg = st.memory.get(key) if key in st.memory else _predicted(st, key)
    if mkey is not None:
        st.memory[mkey] = cfg
    return cfg


def _measured(st, key: tuple, mkey: tuple, md: str, a: torch.Tensor, b: torch.Tensor) -> TileConfig | None:
    """First sight in a measured mode: the verified table's choice, else a measurement, else the prediction."""
    obj = parse_objective(key[-1])
    if obj.name not in ("time", *ENERGY_OBJECTIVES):
        _warn_once(f"verify-obj:{key[-1]}", "gpperf: %s mode measures time and energy, not power; objective %s uses "
                   "the prediction", md, key[-1])  # fmt: skip
        return _fallback(st, key, mkey, f"objective {obj.name}")
    why = verify.cannot_measure(a) or ("while torch.jit traces" if _in_trace() else "")
    if why:
        return _fallback(st, key, None, why)  # not remembered as measured: the next eager call measures
    tbl = table.for_device(st.info)
    steps = verify.bucket_steps()
    entry = tbl.lookup(key[:8], steps, objective=str(obj))
    if entry is not None and (md == "verify" or entry.mode == md):
        cfg = None if entry.choice == TORCH else TileConfig.from_key(entry.choice)
        if cfg in st.valid_for(key):
            verify.stats.table_hits += 1
            st.memory[mkey] = cfg
            return cfg
    if tbl.read_only:
        return _fallback(st, key, mkey, "read-only table (GPPERF_TABLE) without this shape")
    cap = verify.max_shapes()
    if verify.stats.shapes >= cap:
        _warn_once("verify-cap", "gpperf: %d shapes measured in this process (GPPERF_VERIFY_MAX_SHAPES); new shapes "
                   "take the prediction from now on", cap)  # fmt: skip
        return _fallback(st, key, mkey, "per-process cap reached")
    if obj.name in ENERGY_OBJECTIVES and energy_verify.stats.shapes >= energy_verify.max_shapes():
        _warn_once("energy-cap", "gpperf: %d shapes measured in energy in this process (GPPERF_ENERGY_MAX_SHAPES); "
                   "new shapes take the prediction from now on", energy_verify.max_shapes())  # fmt: skip
        return _fallback(st, key, mkey, "per-process energy cap reached")
    return measure(st, key, a, b, md).choice


def measured_candidates(st, key: tuple, md: str) -> tuple[list[TileConfig | None], verify_policy.VerifyPolicy]:
    """The candidates a first sight of `key` measures in mode `md` (cuBLAS always first) and the policy."""
    policy = verify_policy.parse("exhaustive") if md == "exhaustive" else verify_policy.default_policy()
    s = score(st, key)
    cands = measured_head(s, policy)
    if parse_objective(key[-1]).name in ENERGY_OBJECTIVES and not policy.exhaustive:
        # cuBLAS + the time rule's candidates + the top-k by predicted energy (where the model predicts it)
        idx = [s.cands.index(c) for c in cands if c in s.cands]
        more = energy_candidates(idx, s.preds.get("energy_j"), s.is_torch, policy.top_k)
        cands += [s.cands[i] for i in more if s.cands[i] not in cands]
    return cands, policy


def measure(st, key: tuple, a: torch.Tensor, b: torch.Tensor, md: str = "verify", *, source: str = "") -> verify.Result:
    """Measure the candidates of `key` on (a, b), record the result (this process's memo for mode `md`, the table,
    the CSV, the stats) and return it."""
    cands, policy = measured_candidates(st, key, md)
    obj = parse_objective(key[-1])
    if obj.name in ENERGY_OBJECTIVES:
        res = energy_verify.measure_energy(a, b, cands, obj, policy, max_shared_memory=st.info.max_shared_memory,
                                           host_ms=st.policy.host_ms)  # fmt: skip
        if not res.energy.get("available"):
            _warn_once(f"no-counter:{st.info.name}", "gpperf: objective %s in %s mode: %s", obj, md,
                       res.energy.get("reason"))  # fmt: skip
    else:
        res = verify.measure_candidates(a, b, cands, policy, max_shared_memory=st.info.max_shared_memory,
                                        host_ms=st.policy.host_ms)  # fmt: skip
    verify.record(res)
    st.memory[_memo_key(key, md)] = res.choice
    tbl = table.for_device(st.info)
    if not tbl.read_only and res.times_ms:
        entry = table.Entry(choice=res.choice_key, m=int(key[0]), times_ms=dict(res.times_ms), noise=res.noise,
                            margin=res.margin, rounds=res.rounds, mode=source or md,
                            energy=dict(getattr(res, "energy", None) or {}))  # fmt: skip
        tbl.add((*verify_policy.bucket_key(key[:8], verify.bucket_steps()), str(obj)), entry)
    verify.append_rows(st.info, key, res)
    return res


def replace_choice(
    a: torch.Tensor, b: torch.Tensor, objective: str | None, cfg: TileConfig | None, *, reason: str = ""
) -> None:
    """Remember `cfg` (None: torch.matmul) for this GEMM in every mode, e.g. after the chosen config failed."""
    key = _key(a, b, objective)
    replace_key(_state(a.device), key, cfg)
    if reason:
        _warn_once(f"replaced:{key}", "gpperf: %s; using %s for this shape", reason, cfg or "torch.matmul")


def triton_pick(a: torch.Tensor, b: torch.Tensor, objective: str | None = None) -> TileConfig | None:
    """The Triton config selection runs for `a @ b` when it runs Triton: the first Triton candidate of the
    predicted ranking (for time, the dispatch decision's Triton pick, also where the decision is torch.matmul).
    An objective the model cannot rank (e.g. energy with a time-only model) ranks by time. None: no Triton
    candidate is valid. Never measures; what `gpperf_torch.stats.counting` runs on the interpreter."""
    st = _state(a.device)
    key = _key(a, b, objective)
    try:
        ranked = rank(st, key)
    except ValueError:
        ranked = rank(st, (*key[:-1], "time"))
    return next((cfg for cfg, _ in ranked if cfg is not None), None)


def replace_key(st, key: tuple, cfg: TileConfig | None) -> None:
    """Remember `cfg` (None: torch.matmul) for the selection key `key` in every mode (warmup's guard)."""
    for mkey in (key, *(_memo_key(key, md) for md in MEASURED_MODES)):
        st.memory[mkey] = cfg


UNSEEN = object()  # `cached_choice`'s answer for a GEMM this process has not selected a config for


def cached_choice(a: torch.Tensor, b: torch.Tensor, objective: str | None) -> TileConfig | None | object:
    """What `choose` would return for `a @ b` if that choice is already made, else UNSEEN: never selects, loads
    a model or measures. Asked inside a CUDA graph capture, where none of that may happen."""
    st = _by_device.get(a.device)
    if st is None:
        return UNSEEN
    key = _key(a, b, objective)
    md = _mode_of(a)
    got = st.memory.get(_memo_key(key, md), UNSEEN)
    if got is UNSEEN and md != "predict":
        got = st.memory.get(key, UNSEEN)  # predicted before (e.g. a shape first met while tracing)
    return got


def verify_stats() -> dict:
    """What measuring has cost this process: shapes measured, candidates, compiles and their seconds, timed ms,
    failures, table hits, and first sights that took the prediction (by reason); `energy`: shapes measured in
    energy windows, windows, their seconds, and energy first sights without a counter."""
    return {**verify.stats.as_dict(), "energy": energy_verify.stats.as_dict()}


def flush() -> None:
    """Write pending selections and measurements to disk now (also done in batches and at exit)."""
    flush_caches()
    table.flush_all()
