"""The schema of a model's sidecar (model.json), checked whole when the model loads.

Every field the run time reads is checked for presence and type here, so a malformed sidecar (a list for a root,
a number for a checksum, a device without a capability, a string where a number belongs) is a ModelError at load
that names the file and the field, never an AttributeError or TypeError at the first matmul. Fields the run
time does not read (metrics, provenance, library versions, ...) may hold anything. Whether the contents fit
this version of gpperf (format version, feature schema, targets) is checked here too: this module is the one
check a model's metadata goes through.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from ..errors import ModelError
from ..kernels.configs import TileConfig
from ..measure.dataset import TORCH_KEY, data_hash
from .features import FEATURE_NAMES, FEATURE_SCHEMA_VERSION

# The model format and its targets: defined here, with the schema that checks them (runtime.py loads models with them).
MODEL_FORMAT = "gpperf-model"
MODEL_FORMAT_VERSION = 2  # v2: the graph also outputs the rank forest per tree ("rel_trees")
KNOWN_TARGETS = ("time_ms", "power_w", "energy_j")
RETRAIN = "re-export it with `gpperf-torch train`"

_SHA256 = re.compile(r"[0-9a-f]{64}")


def _kind(v: object) -> str:
    return "null" if v is None else type(v).__name__


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def _str(v: object) -> str | None:
    return None if isinstance(v, str) and v.strip() else "a non-empty string"


def _positive_int(v: object) -> str | None:
    return None if _is_int(v) and v > 0 else "a positive integer"


def _non_negative_int(v: object) -> str | None:
    return None if _is_int(v) and v >= 0 else "an integer >= 0"


def _positive_number(v: object) -> str | None:
    return None if _is_number(v) and v > 0 else "a positive finite number"


def _capability(v: object) -> str | None:
    ok = isinstance(v, list | tuple) and len(v) == 2 and all(_is_int(x) and x >= 0 for x in v)
    return None if ok else "a list of two integers such as [9, 0]"


def _sha256(v: object) -> str | None:
    return None if isinstance(v, str) and _SHA256.fullmatch(v) else "a sha256 hex digest (64 lowercase hex digits)"


# DeviceInfo's fields (device.DeviceInfo) and what each must be.
DEVICE_FIELDS: dict[str, Callable[[object], str | None]] = {
    "name": _str,
    "short_name": _str,
    "capability": _capability,
    "sm_count": _positive_int,
    "max_shared_memory": _positive_int,
    "l2_bytes": _non_negative_int,
    "sm_clock_mhz": _positive_number,
    "mem_clock_mhz": _positive_number,
    "mem_bandwidth_gbs": _positive_number,
    "power_limit_w": _positive_number,
}


def _fail(where: str, field: str, want: str, got: object) -> ModelError:
    shown = repr(got)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return ModelError(f"{where}: field {field!r} must be {want}, got {shown} ({_kind(got)}); {RETRAIN}")


def _string_list(meta: dict, field: str, where: str, *, non_empty: bool = True) -> list[str]:
    v = meta.get(field)
    if not isinstance(v, list) or (non_empty and not v):
        raise _fail(where, field, "a non-empty list of strings" if non_empty else "a list of strings", v)
    for i, x in enumerate(v):
        if not isinstance(x, str):
            raise _fail(where, f"{field}[{i}]", "a string", x)
    dup = sorted({x for x in v if v.count(x) > 1}) if len(set(v)) != len(v) else []
    if dup:
        raise ModelError(f"{where}: field {field!r} lists {dup[:3]} more than once; {RETRAIN}")
    return v


def feature_difference(theirs: Sequence[str], ours: Sequence[str] = FEATURE_NAMES) -> str:
    """What differs between a model's feature names and this gpperf's, in words ('' when equal)."""
    theirs, ours = list(theirs), list(ours)
    if theirs == ours:
        return ""
    missing = [f for f in ours if f not in theirs]
    extra = [f for f in theirs if f not in ours]
    if not missing and not extra and len(theirs) == len(ours):
        i = next(i for i, (a, b) in enumerate(zip(theirs, ours, strict=True)) if a != b)
        return (
            f"the same {len(ours)} feature names in another order (first difference at position {i}: "
            f"the model has {theirs[i]!r}, this gpperf {ours[i]!r})"
        )
    parts = []
    if missing:
        parts.append(f"the model lacks {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if extra:
        parts.append(f"has {extra[:5]}{' ...' if len(extra) > 5 else ''} that this gpperf does not compute")
    if not parts:
        parts.append(f"{len(theirs)} names where this gpperf has {len(ours)} (a name repeated)")
    return ", ".join(parts)


def validate(meta: object, where: str) -> dict:
    """`meta` (parsed model.json) checked against the schema; ModelError naming `where` and the field."""
    if not isinstance(meta, dict):
        raise ModelError(f"{where}: the JSON root must be an object, got a {_kind(meta)}; {RETRAIN}")
    if meta.get("format") != MODEL_FORMAT:
        raise ModelError(
            f"{where}: not a gpperf model description (format={meta.get('format')!r}, expected {MODEL_FORMAT!r})"
        )
    version = meta.get("format_version")
    if not _is_int(version) or version != MODEL_FORMAT_VERSION:
        raise ModelError(
            f"{where}: format_version {version!r}: model format v{version}, this gpperf reads"
            f" v{MODEL_FORMAT_VERSION} (v2 adds the per-tree output that dispatch reads as uncertainty): retrain it"
            " with `gpperf-torch train` or use the gpperf-torch version that wrote it"
        )
    fsv = meta.get("feature_schema_version")
    if not _is_int(fsv):
        raise _fail(where, "feature_schema_version", "an integer", fsv)
    names = _string_list(meta, "feature_names", where)
    diff = feature_difference(names)
    if fsv != FEATURE_SCHEMA_VERSION or diff:
        why = f": {diff}" if diff else ""
        raise ModelError(
            f"{where}: model was trained with feature schema v{fsv} ({len(names)} features), this gpperf computes "
            f"v{FEATURE_SCHEMA_VERSION} ({len(FEATURE_NAMES)} features){why}; retrain it with `gpperf-torch "
            "train` or use the gpperf version that wrote it"
        )
    targets = _string_list(meta, "targets", where)
    if targets[0] != "time_ms" or not set(targets) <= set(KNOWN_TARGETS):
        raise ModelError(f"{where}: targets {targets} must start with 'time_ms' and be among {KNOWN_TARGETS}")
    if meta.get("target_transform") != "log":
        raise ModelError(f"{where}: unsupported target_transform {meta.get('target_transform')!r} (expected 'log')")
    for i, key in enumerate(_string_list(meta, "candidates", where)):
        if key != TORCH_KEY:
            try:
                TileConfig.from_key(key)
            except ValueError as e:
                raise ModelError(f"{where}: candidates[{i}] = {key!r} is not a config: {e}; {RETRAIN}") from None
    device = meta.get("device")
    if not isinstance(device, dict):
        raise _fail(where, "device", "an object (the training GPU's descriptor)", device)
    for name, check in DEVICE_FIELDS.items():
        if name not in device:
            raise ModelError(f"{where}: field 'device.{name}' is missing; {RETRAIN}")
        want = check(device[name])
        if want:
            raise _fail(where, f"device.{name}", want, device[name])
    if "onnx_sha256" not in meta:
        raise ModelError(f"{where}: field 'onnx_sha256' is missing; {RETRAIN}")
    want = _sha256(meta["onnx_sha256"])
    if want:
        raise _fail(where, "onnx_sha256", want, meta["onnx_sha256"])
    floor = meta.get("time_floor_ms")
    if floor is not None and not (_is_number(floor) and floor >= 0):
        raise _fail(where, "time_floor_ms", "a finite number >= 0 (or absent)", floor)
    kmax = meta.get("k_ratio_max")
    if kmax is not None and not _is_number(kmax):
        raise _fail(where, "k_ratio_max", "a finite number (or absent: no K guard)", kmax)
    if "baseline_static_ranking" in meta and meta["baseline_static_ranking"] is not None:
        _string_list(meta, "baseline_static_ranking", where, non_empty=False)
    return meta


def read(json_path: str | Path) -> dict:
    """Parse and validate a model.json; ModelError naming the file for any problem (unreadable, binary, not
    JSON, not the schema)."""
    json_path = Path(json_path)
    try:
        text = json_path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ModelError(f"{json_path}: not a UTF-8 text file (byte offset {e.start}); {RETRAIN}") from None
    except OSError as e:
        raise ModelError(f"{json_path}: cannot read it ({e.strerror or e})") from None
    if not text.strip():
        raise ModelError(f"{json_path}: the file is empty; {RETRAIN}")
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as e:
        raise ModelError(f"{json_path}: not valid JSON ({e}); {RETRAIN}") from None
    return validate(meta, str(json_path))


__all__ = ["DEVICE_FIELDS", "feature_difference", "in_sample", "read", "validate"]


def in_sample(meta: dict, paths: Sequence[str | Path]) -> list[str]:
    """The data files among `paths` a model (its model.json `meta`) was trained on: all of them when their bytes
    hash to its data_sha256, else those whose name is one of its data_files (the JSON records names, not paths).
    Metrics on them describe fitted data, not unseen shapes (eval and report say so)."""
    names = set(meta.get("data_files") or [])
    if meta.get("data_sha256"):
        try:
            if data_hash(list(paths)) == meta["data_sha256"]:
                return [Path(p).name for p in paths]
        except OSError:
            pass
    return [Path(p).name for p in paths if Path(p).name in names]
