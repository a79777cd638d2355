"""Per-shape selection: objectives, the model's candidates (cuBLAS included), caching, fallback, explain.

Hot path: `choose()` is called by the op on every GEMM. A hit in the per-process dictionary costs one tuple
build and one dict lookup (about a microsecond); a first sight scores every candidate of the model in one
onnxruntime call (about a millisecond), then is remembered in memory and in a JSON file per device and model.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from . import env, kernels
from .analytic import ANALYTIC_PARAMS, analytic_estimate, analytic_time_ms  # noqa: F401 (re-exported)
from .device import KNOWN_DEVICES, DeviceInfo, device_for
from .dispatch import Decision, decide, k_ratio, padded_work, policy_for, unaligned_transposed
from .errors import ModelError
from .features import config_matrix
from .kernels import TileConfig
from .kernels import facts as kernels_facts
from .select_cache import DiskCache as _DiskCache
from .select_cache import (
    cache_dir,  # noqa: F401 (verify and users import it from here)
    cache_token,
)

logger = logging.getLogger(__name__)

OBJECTIVES = ("time", "energy", "edp", "balanced", "power_cap")
MODES = ("predict", "verify", "exhaustive")
TORCH = "torch"  # the candidate name of torch.matmul (cuBLAS) in models and caches
DEFAULT_BALANCED_SLACK = 0.05


# ---- objectives ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Objective:
    name: str
    value: float | None = None  # watts for power_cap, slack for balanced

    def __str__(self) -> str:
        return self.name if self.value is None else f"{self.name}:{self.value:g}"

    @property
    def needs(self) -> tuple[str, ...]:
        return {
            "time": ("time_ms",),
            "energy": ("energy_j",),
            "edp": ("time_ms", "energy_j"),
            "balanced": ("time_ms", "energy_j"),
            "power_cap": ("time_ms", "power_w"),
        }[self.name]


def _number(spec: object, arg: str, what: str, example: str) -> float:
    try:
        x = float(arg.strip().removesuffix("w").removesuffix("W"))
    except ValueError:
        raise ValueError(f"objective {spec!r}: {what} must be a number, e.g. {example!r}") from None
    if not math.isfinite(x):
        raise ValueError(f"objective {spec!r}: {what} must be a finite number, e.g. {example!r}")
    return x


def parse_objective(spec: str | Objective) -> Objective:
    """ "time" | "energy" | "edp" | "balanced[:slack]" | "power_cap:<watts>" -> Objective (ValueError else).

    Case and surrounding spaces do not matter; an argument that is not a finite number, or is out of range, is
    refused (never read as some default)."""
    if isinstance(spec, Objective):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"objective must be a string such as 'time' or 'power_cap:300', got {type(spec).__name__}")
    name, colon, arg = spec.strip().lower().partition(":")
    name = name.strip()
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {spec!r}; choose one of {', '.join(OBJECTIVES)} (power_cap:<watts>)")
    if name == "power_cap":
        if not arg.strip():
            raise ValueError(f"objective {spec!r}: power_cap needs a limit in watts, e.g. 'power_cap:300'")
        watts = _number(spec, arg, "the power cap in watts", "power_cap:300")
        if watts <= 0:
            raise ValueError(f"objective {spec!r}: the power cap must be positive watts, e.g. 'power_cap:300'")
        return Objective("power_cap", watts)
    if name == "balanced":
        if colon and not arg.strip():
            raise ValueError(f"objective {spec!r}: give a slack after the colon, e.g. 'balanced:0.05', or none")
        slack = _number(spec, arg, "the slack", "balanced:0.05") if colon else DEFAULT_BALANCED_SLACK
        if not 0 <= slack < 10:
            raise ValueError(f"objective {spec!r}: slack must be a fraction in [0, 10), such as 0.05")
        return Objective("balanced", slack)
    if colon:
        raise ValueError(f"objective {spec!r}: {name} takes no argument")
    return Objective(name)


def parse_mode(name: str) -> str:
    """predict | verify | exhaustive, in any case (ValueError else)."""
    md = name.strip().lower() if isinstance(name, str) else name
    if md not in MODES:
        raise ValueError(f"unknown mode {name!r}; choose one of {', '.join(MODES)}")
    return md


_objective_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("gpperf_objective", default=None)
_mode_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("gpperf_mode", default=None)


@contextlib.contextmanager
def objective(spec: str) -> Iterator[Objective]:
    """`with gpperf_torch.objective("energy"):` selects for that objective inside the block (Linear too)."""
    obj = parse_objective(spec)
    token = _objective_var.set(str(obj))
    try:
        yield obj
    finally:
        _objective_var.reset(token)


@contextlib.contextmanager
def mode(name: str) -> Iterator[str]:
    """`with gpperf_torch.mode("verify"):` predict | verify (benchmark the top-k once) | exhaustive."""
    name = parse_mode(name)
    token = _mode_var.set(name)
    try:
        yield name
    finally:
        _mode_var.reset(token)


def current_objective() -> str:
    return _objective_var.get() or _env["objective"]


# ---- device and model state --------------------------------------------------------------------------
_lock = threading.Lock()
_devices: dict[torch.device, DeviceInfo] = {}
_states: dict[str, _State] = {}  # by device name
_warned: set[str] = set()


def _device_info(dev: torch.device) -> DeviceInfo:
    info = _devices.get(dev)
    if info is None:
        info = device_for(dev)
        _devices[dev] = info
    return info


def max_shared_memory(dev: torch.device) -> int:
    return _device_info(dev).max_shared_memory


def _warn_once(key: str, msg: str, *args) -> None:
    if key not in _warned:
        _warned.add(key)
        logger.warning(msg, *args)


class _State:
    """What selection needs for one device: the model (or None), its valid candidates, the caches."""

    def __init__(self, info: DeviceInfo, model_path: str | None = None):
        self.info = info
        self.model = _load_model(info, model_path)
        self.memory: dict[tuple, TileConfig | None] = {}
        # Keyed by compile class (kernels.facts.class_key), or (dtype,) without a shape.
        self.valid: dict[tuple, list[TileConfig | None]] = {}
        self.valid_matrix: dict[tuple, tuple[list, np.ndarray]] = {}  # (self.valid[key], its config_matrix)
        # The dispatch policy (dispatch.py): the model's calibrated confidence and host cost, the GPU check's
        # measured host cost for this device when there is one.
        self.policy = policy_for(self.model.meta if self.model else None, info.name)
        self._valid_sets: dict[tuple, frozenset] = {}
        # Keyed by the whole model description and the policy: a new host-cost measurement or an edited
        # model.json never reuses selections made under other terms.
        token = cache_token(self.model.meta if self.model else None, ANALYTIC_PARAMS, self.policy.as_dict())
        self.disk = _DiskCache(info, token)
        self.memory.update(self.disk.load(self._usable))

    def _usable(self, key: tuple, cfg: TileConfig | None) -> None:
        """ValueError when a cached selection cannot be used here (see select_cache.DiskCache.load)."""
        parse_objective(key[-1])
        m, n, k, _, dtype, a_t, b_t, tf32 = key[:8]
        launch = (m, n, k, a_t, b_t, tf32)
        ckey = kernels_facts.class_key(dtype, *launch)
        valid = self._valid_sets.get(ckey)
        if valid is None:
            valid = self._valid_sets[ckey] = frozenset(_valid_candidates(self, dtype, launch))
        if cfg not in valid:
            raise ValueError(f"{cfg or TORCH} is not a candidate of this model valid on {self.info.name} for {key[4]}")

    @property
    def model_hash(self) -> str:
        return self.model.model_hash if self.model else "analytic"


def _load_model(info: DeviceInfo, path: str | None):
    from .predictor import Predictor, list_shipped, shipped_model

    where = "set_model" if path else "GPPERF_MODEL"
    path = path or os.environ.get("GPPERF_MODEL")
    if path:
        try:
            return Predictor.load(path)
        except (ModelError, ValueError, OSError) as e:
            raise ModelError(f"{where}={path!r} cannot be used: {e}") from e
    shipped = shipped_model(info.short_name)
    if shipped is None:
        # No model for this GPU by name: one trained on a GPU of the same architecture (compute capability, SM
        # count) ranks configs alike (e.g. the H200 takes the H100's model; its memory is faster, not different).
        for name in list_shipped():
            cand = KNOWN_DEVICES.get(name)
            if cand is not None and cand.capability == info.capability and cand.sm_count == info.sm_count:
                shipped = shipped_model(name)
                _warn_once(
                    f"alias:{info.name}",
                    "gpperf: no model for %s; using the %s model (same architecture)",
                    info.name,
                    name,
                )
                break
    if shipped is None:
        _warn_once(
            f"nomodel:{info.name}",
            "gpperf: no model for %s; using the analytic rule (waves, padding, intensity). Measure and train one: "
            "`gpperf-torch tune --out runs/mine.csv` then `gpperf-torch train --data runs/mine.csv --out mymodel` "
            "and set GPPERF_MODEL=mymodel",
            info.name,
        )
        return None
    try:
        return Predictor.load(shipped)
    except (ModelError, ValueError, OSError) as e:
        _warn_once(
            f"badmodel:{shipped}",
            "gpperf: shipped model %s unusable (%s); using the analytic rule",
            shipped,
            e,
        )
        return None


_by_device: dict[torch.device, _State] = {}  # the hot path's shortcut to _states


def _state(dev: torch.device) -> _State:
    st = _by_device.get(dev)
    if st is not None:
        return st
    info = _device_info(dev)
    with _lock:
        st = _states.get(info.name)
        if st is None:
            st = _states[info.name] = _State(info)
        _by_device[dev] = st
    return st


def set_model(path: str | None, device: torch.device | str | None = None) -> None:
    """Use the model at `path` (dir with model.onnx + model.json) for `device`; None restores the default."""
    dev = torch.device(device) if device is not None else _default_device()
    set_model_for(_device_info(dev), path)


def set_model_for(info: DeviceInfo, path: str | None) -> None:
    """Use the model at `path` for the GPU `info` describes (e.g. a named GPU on a machine without one)."""
    with _lock:
        _states[info.name] = _State(info, path)
        _by_device.clear()


def reset() -> None:
    """Forget loaded models and in-memory selections (the disk cache stays)."""
    with _lock:
        _states.clear()
        _devices.clear()
        _by_device.clear()
    reload_env()


def _default_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


# ---- the hot path -------------------------------------------------------------------------------------
_DTYPE_NAMES = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32"}
_allow_tf32 = kernels.tf32_allowed
_env: dict[str, str] = {}


def reload_env() -> None:
    """Read GPPERF_OBJECTIVE and GPPERF_MODE again (they are read once, at import and at `reset()`). A bad value
    is warned about (naming the variable and the default) and the default used: import must never fail."""
    obj = env.read("GPPERF_OBJECTIVE", "time", lambda v: str(parse_objective(v)))
    md = env.read("GPPERF_MODE", "predict", parse_mode)
    _env.update(objective=obj, mode=md)


reload_env()


def _key(a: torch.Tensor, b: torch.Tensor, objective: str | None) -> tuple:
    """The selection key (DESIGN.md): M, N, K, batch, dtype, layout flags, TF32, objective."""
    *batch, m, k = a.shape
    n = b.shape[-1]
    dtype = a.dtype
    return (
        m,
        n,
        k,
        batch[0] if batch else 1,
        _DTYPE_NAMES[dtype],
        k > 1 and a.stride(-1) != 1,
        n > 1 and b.stride(-1) != 1,
        dtype is torch.float32 and _allow_tf32(),
        objective or _objective_var.get() or _env["objective"],
    )


def replace_choice(
    a: torch.Tensor, b: torch.Tensor, objective: str | None, cfg: TileConfig | None, *, reason: str = ""
) -> None:
    """Remember `cfg` (None: torch.matmul) for this GEMM in every mode, e.g. after the chosen config failed."""
    st = _state(a.device)
    key = _key(a, b, objective)
    for mkey in (key, *((*key, md) for md in MODES[1:])):
        st.memory[mkey] = cfg
    if reason:
        _warn_once(f"replaced:{key}", "gpperf: %s; using %s for this shape", reason, cfg or "torch.matmul")


def choose(a: torch.Tensor, b: torch.Tensor, forced: TileConfig | None, objective: str | None) -> TileConfig | None:
    """The config for `a @ b` (None: use torch.matmul). Called by the op on every GEMM."""
    if forced is not None:
        return forced
    st = _by_device.get(a.device) or _state(a.device)
    key = _key(a, b, objective)
    md = _mode_var.get() or _env["mode"]
    mkey = key if md == "predict" else (*key, md)  # a verified choice is remembered apart from the predicted one
    try:
        return st.memory[mkey]
    except KeyError:
        pass
    if md == "predict":
        cfg = rank(st, key)[0][0]
    else:
        from .verify import benchmark_choice

        cfg = benchmark_choice(st, key, a, b, md)
    st.memory[mkey] = cfg
    if md == "predict":
        st.disk.add(key, TORCH if cfg is None else cfg.key)
    return cfg


UNSEEN = object()  # `cached_choice`'s answer for a GEMM this process has not selected a config for


def cached_choice(a: torch.Tensor, b: torch.Tensor, objective: str | None) -> TileConfig | None | object:
    """What `choose` would return for `a @ b` if that choice is already made, else UNSEEN: never selects, loads
    a model or benchmarks. Asked inside a CUDA graph capture, where none of that may happen."""
    st = _by_device.get(a.device)
    if st is None:
        return UNSEEN
    key = _key(a, b, objective)
    md = _mode_var.get() or _env["mode"]
    return st.memory.get(key if md == "predict" else (*key, md), UNSEEN)


# ---- first sight -------------------------------------------------------------------------------------
def _valid_candidates(st: _State, dtype: str, launch: tuple | None = None) -> list[TileConfig | None]:
    """The model's candidates (None: torch.matmul) that run on this device for `dtype` (cached per state).

    With `launch` = (m, n, k, a_trans, b_trans, tf32), validity uses the compiler's facts for the binary that
    shape runs (kernels.facts: no spills, shared memory within the device), cached per compile class.
    """
    ckey = (dtype,) if launch is None else kernels_facts.class_key(dtype, *launch)
    cached = st.valid.get(ckey)
    if cached is None:
        cands = st.model.candidates if st.model else kernels.candidate_space()
        smem = st.info.max_shared_memory
        if launch is None:
            es = kernels.elem_size(dtype)
            cached = [c for c in cands if c is None or kernels.is_valid(c, elem_size=es, max_shared_memory=smem)]
        else:
            kw = dict(zip(("m", "n", "k", "a_trans", "b_trans", "tf32"), launch, strict=True))
            cap = st.info.capability
            cached = [
                c
                for c in cands
                if c is None
                or kernels_facts.check(c, capability=cap, dtype=dtype, max_shared_memory=smem, **kw) is None
            ]
        if not cached:
            raise ValueError(f"none of the model's {len(cands)} candidates runs on {st.info.name} for {dtype}")
        st.valid[ckey] = cached
        st.valid_matrix[ckey] = (cached, config_matrix(cached))
    return cached


def rank(st: _State, key: tuple) -> list[tuple[TileConfig | None, dict[str, float]]]:
    """All valid candidates for `key`, best first for its objective, each with its predicted targets."""
    return rank_with_decision(st, key)[0]


def rank_with_decision(st: _State, key: tuple) -> tuple[list[tuple[TileConfig | None, dict]], Decision | None]:
    """rank() and, for the time objective, the dispatch decision that put the first candidate first.

    Time: dispatch.decide (the one policy eval measures) picks the first; the rest follow by predicted time plus
    host cost. Each candidate's dict has its predicted targets, `time_sd_log` (the spread of its log time over
    the rank forest's trees) and `host_ms`. Other objectives order by their own rule (_order)."""
    m, n, k, batch, dtype, a_t, b_t, tf32, obj_s = key
    obj = parse_objective(obj_s)
    launch = (m, n, k, a_t, b_t, tf32)
    cands = _valid_candidates(st, dtype, launch)
    entry = st.valid_matrix.get(kernels_facts.class_key(dtype, *launch))
    matrix = entry[1] if entry is not None and entry[0] is cands else config_matrix(cands)
    dev = None
    if st.model is None:
        t = analytic_time_ms(m * batch, n, k, dtype, cands, st.info)
        preds = {"time_ms": t}
    else:
        missing = [t for t in obj.needs if t not in st.model.targets]
        if missing:
            raise ValueError(
                f"objective {obj} needs predicted {', '.join(missing)}, but the model for {st.info.name} "
                f"({st.model.path}) predicts only {', '.join(st.model.targets)}. Measure energy on the GPU with "
                "`gpperf-torch tune` (NVML) and `gpperf-torch train`, or use objective='time'"
            )
        # Batched GEMMs are scored as one GEMM of batch*M rows (same tiles and waves; see DESIGN's key).
        preds, dev = st.model.predict_trees(m * batch, n, k, dtype, a_t, b_t, tf32=tf32, cfgs=matrix, device=st.info)
    is_torch = np.array([c is None for c in cands])
    host = np.where(is_torch, st.policy.host_ms.get("torch", 0.0), st.policy.host_ms.get("triton", 0.0))
    decision = None
    if obj.name == "time":
        t = preds["time_ms"]  # predict_trees has already lifted the shape to the model's time floor
        work = padded_work(m * batch, n, k, matrix)
        kmax = st.model.meta.get("k_ratio_max") if st.model is not None else None
        decision = decide(t, is_torch, st.policy, log_dev=dev, work=work,
                          unaligned=bool(unaligned_transposed(m, n, k, a_t, b_t)),
                          k_ratio=float(k_ratio(m * batch, n, k)), k_ratio_max=kmax)  # fmt: skip
        # The choice first; when that is torch.matmul, the Triton pick it was weighed against next.
        head = [decision.index]
        if decision.triton_index is not None and decision.triton_index != decision.index:
            head.append(decision.triton_index)
        rest = np.argsort(t + host, kind="stable")
        order = np.concatenate([head, rest[~np.isin(rest, head)]]).astype(np.int64)
    else:
        order = _order(obj, preds, st.info)
    sd = dev.std(axis=1) if dev is not None else np.zeros(len(cands))
    rows = []
    for i in order:
        row = {t: float(v[i]) for t, v in preds.items()}
        row.update(time_sd_log=float(sd[i]), host_ms=float(host[i]))
        rows.append((cands[i], row))
    return rows, decision


def _order(obj: Objective, preds: dict[str, np.ndarray], info: DeviceInfo) -> np.ndarray:
    t = preds.get("time_ms")
    if obj.name == "time":
        score = t
    elif obj.name == "energy":
        score = preds["energy_j"]
    elif obj.name == "edp":
        score = preds["energy_j"] * t
    elif obj.name == "balanced":
        # Least energy among configs predicted within `slack` of the fastest; the rest after, by time.
        ok = t <= t.min() * (1 + obj.value)
        score = np.where(ok, preds["energy_j"], np.inf)
        return np.lexsort((t, score))
    else:  # power_cap: fastest under the cap; if none fits, the least power first (warned)
        p = preds["power_w"]
        ok = p <= obj.value
        if not ok.any():
            _warn_once(
                f"cap:{obj.value}",
                "gpperf: no config is predicted under %s W; taking the lowest power",
                obj.value,
            )
            return np.argsort(p, kind="stable")
        score = np.where(ok, t, np.inf)
        return np.lexsort((p, score))
    return np.argsort(score, kind="stable")


# ---- explain -----------------------------------------------------------------------------------------
def explain(
    m: int,
    n: int,
    k: int,
    *,
    dtype: str | torch.dtype = "float16",
    a_trans: bool = False,
    b_trans: bool = False,
    objective: str | None = None,
    gpu: str | None = None,
    device: torch.device | str | None = None,
    batch: int = 1,
) -> list[dict]:
    """Ranked candidates for a shape: dicts with config, backend, predicted time/power/energy, rank.

    `gpu="h100"` uses that GPU's shipped model (works without a GPU); else the current (or given) device.
    """
    dtype_s = str(dtype).replace("torch.", "")
    dtype_s = {"fp16": "float16", "half": "float16", "bf16": "bfloat16", "fp32": "float32"}.get(dtype_s, dtype_s)
    kernels.elem_size(dtype_s)
    obj = parse_objective(objective or current_objective())
    if gpu is not None:
        info = device_for(gpu=gpu)
        with _lock:
            st = _states.get(info.name)
            if st is None:
                st = _states[info.name] = _State(info)
    else:
        st = _state(torch.device(device) if device is not None else _default_device())
    tf32 = dtype_s == "float32" and bool(torch.backends.cuda.matmul.allow_tf32)
    key = (m, n, k, batch, dtype_s, bool(a_trans), bool(b_trans), tf32, str(obj))
    rows, decision = rank_with_decision(st, key)
    out = []
    for i, (cfg, pred) in enumerate(rows):
        row = {
            "rank": i + 1,
            "backend": TORCH if cfg is None else "triton",
            "config": TORCH if cfg is None else cfg.key,
            **pred,
            "model": str(st.model.path) if st.model else "analytic",
            "objective": str(obj),
            "device": st.info.name,
        }
        if i == 0:
            row["why"] = decision.reason if decision is not None else f"best predicted {obj}"
            if decision is not None and decision.torch_index is not None and decision.triton_index is not None:
                row.update(
                    triton_pick=rows[0 if decision.index == decision.triton_index else 1][0].key,
                    predicted_gain_vs_torch=math.exp(decision.gain),
                    gain_sd_log=decision.gain_sd,
                )
            if decision is not None and decision.guard:
                row["guard"] = decision.guard
            row["policy"] = {**st.policy.as_dict(), "host_source": st.policy.host_source}
        out.append(row)
    return out


def flush_caches() -> None:
    for st in list(_states.values()):
        st.disk.flush()


import atexit  # noqa: E402

atexit.register(flush_caches)
