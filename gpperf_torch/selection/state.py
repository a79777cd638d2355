"""What selection knows per device: the device descriptor, the model (or the analytic rule), its valid candidates,
the dispatch policy, and the per-process and on-disk caches of predicted choices.

The registry is keyed by device name (one state per GPU kind, shared by every torch.device of that kind);
`_by_device` is the hot path's shortcut to it. Measured (verified) choices live in table.py, apart: a retrained
model does not discard measurements.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading

import numpy as np
import torch

from ..errors import ModelError
from ..kernels import TileConfig
from ..kernels import facts as kernels_facts
from ..measure.device import KNOWN_DEVICES, DeviceInfo, device_for
from ..once import WarnOnce
from ..policy.dispatch import policy_for
from ..predictor.analytic import ANALYTIC_PARAMS, CUBLAS
from .objectives import parse_objective
from .ranking import TORCH, valid_candidates
from .select_cache import DiskCache, cache_token

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_devices: dict[torch.device, DeviceInfo] = {}
_states: dict[str, State] = {}  # by device name
_by_device: dict[torch.device, State] = {}  # the hot path's shortcut to _states
warn_once = WarnOnce(logger)
_warned = warn_once.seen  # tests clear it


def device_info(dev: torch.device) -> DeviceInfo:
    info = _devices.get(dev)
    if info is None:
        info = device_for(dev)
        _devices[dev] = info
    return info


def max_shared_memory(dev: torch.device) -> int:
    return device_info(dev).max_shared_memory


class State:
    """What selection needs for one device: the model (or None), its valid candidates, the caches."""

    def __init__(self, info: DeviceInfo, model_path: str | None = None):
        self.info = info
        self.model = load_model(info, model_path)
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
        rule = {**ANALYTIC_PARAMS, "cublas": CUBLAS}
        token = cache_token(self.model.meta if self.model else None, rule, self.policy.as_dict())
        self.disk = DiskCache(info, token)
        self.memory.update(self.disk.load(self.usable))

    def valid_set(self, dtype: str, launch: tuple) -> frozenset:
        """The candidates (None: torch.matmul) valid for one launch, as a set (cached per compile class)."""
        ckey = kernels_facts.class_key(dtype, *launch)
        valid = self._valid_sets.get(ckey)
        if valid is None:
            valid = self._valid_sets[ckey] = frozenset(valid_candidates(self, dtype, launch))
        return valid

    def valid_for(self, key: tuple) -> frozenset:
        """valid_set of a selection key (m, n, k, batch, dtype, a_trans, b_trans, tf32, ...)."""
        m, n, k, _, dtype, a_t, b_t, tf32 = key[:8]
        return self.valid_set(dtype, (m, n, k, a_t, b_t, tf32))

    def usable(self, key: tuple, cfg: TileConfig | None) -> None:
        """ValueError when a cached selection cannot be used here (see select_cache.DiskCache.load)."""
        parse_objective(key[-1])
        if cfg not in self.valid_for(key):
            raise ValueError(f"{cfg or TORCH} is not a candidate of this model valid on {self.info.name} for {key[4]}")

    @property
    def model_hash(self) -> str:
        return self.model.model_hash if self.model else "analytic"


def load_model(info: DeviceInfo, path: str | None):
    from ..predictor.runtime import Predictor, list_shipped, load_cli_model, shipped_model

    where = "set_model" if path else "GPPERF_MODEL"
    path = path or os.environ.get("GPPERF_MODEL")
    if path:
        try:  # a model directory or file, else a shipped model's name ("h100"), as every command accepts
            return load_cli_model(str(path))
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
                warn_once(f"alias:{info.name}", "gpperf: no model for %s; using the %s model (same architecture)",
                          info.name, name)  # fmt: skip
                break
    if shipped is None:
        warn_once(
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
        warn_once(f"badmodel:{shipped}", "gpperf: shipped model %s unusable (%s); using the analytic rule", shipped, e)
        return None


def state(dev: torch.device) -> State:
    st = _by_device.get(dev)
    if st is not None:
        return st
    info = device_info(dev)
    with _lock:
        st = _states.get(info.name)
        if st is None:
            st = _states[info.name] = State(info)
        _by_device[dev] = st
    return st


def state_for_info(info: DeviceInfo) -> State:
    """The state of a GPU by its descriptor (e.g. a named GPU on a machine without one)."""
    with _lock:
        st = _states.get(info.name)
        if st is None:
            st = _states[info.name] = State(info)
    return st


def set_model_for(info: DeviceInfo, path: str | None) -> None:
    """Use the model at `path` for the GPU `info` describes (e.g. a named GPU on a machine without one)."""
    with _lock:
        _states[info.name] = State(info, path)
        _by_device.clear()


def default_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def set_model(path: str | None, device: torch.device | str | None = None) -> None:
    """Use the model at `path` (dir with model.onnx + model.json) for `device`; None restores the default."""
    dev = torch.device(device) if device is not None else default_device()
    set_model_for(device_info(dev), path)


def reset() -> None:
    """Forget loaded models, device descriptors and in-memory selections (the disk cache stays)."""
    with _lock:
        _states.clear()
        _devices.clear()
        _by_device.clear()


def all_states() -> list[State]:
    return list(_states.values())


def flush_caches() -> None:
    for st in all_states():
        st.disk.flush()


atexit.register(flush_caches)


__all__ = [
    "State",
    "all_states",
    "default_device",
    "device_info",
    "flush_caches",
    "load_model",
    "max_shared_memory",
    "reset",
    "set_model",
    "set_model_for",
    "state",
    "state_for_info",
    "warn_once",
]
