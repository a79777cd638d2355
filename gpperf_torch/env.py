"""The GPPERF_* environment variables, read in one place: a bad value never breaks `import gpperf_torch` or
`gpperf-torch --help`. It is logged once as a warning that names the variable, the value, why, and the default
used instead (the explicit API, `gpperf_torch.objective(...)` and `mode(...)`, still raises on bad values).

| variable | meaning | default |
| --- | --- | --- |
| GPPERF_OBJECTIVE | time, energy, edp, balanced[:slack], power_cap:<W> | time |
| GPPERF_MODE | auto (verify on a GPU, predict elsewhere), predict, verify, exhaustive (any case) | auto |
| GPPERF_MODEL | model directory; checked when first used (a ModelError there) | the shipped model |
| GPPERF_DISK_CACHE | 1/0, on/off, true/false, yes/no (any case); 0: no file of ours is written (paths.py) | 1 |
| GPPERF_CACHE_DIR | where selections, verified tables and measurements are kept | the user cache dir |
| GPPERF_TABLE | a verified table loaded read-only: the process never measures or writes (table.py) | unset |
| GPPERF_VERIFY_TOP_K | Triton configs timed per shape by verify mode, an integer >= 1 | 3 |
| GPPERF_VERIFY_BUDGET_MS | GPU time of verify's timed rounds per shape, ms (at least 5 rounds) | 5 |
| GPPERF_VERIFY_MAX_SHAPES | shapes measured per process; later ones take the prediction | 512 |
| GPPERF_VERIFY_BUCKETS | M buckets per octave that share a measured choice (0: every M apart) | 8 |
| GPPERF_HOST_COST | 1/0 (as GPPERF_DISK_CACHE): add the eager per-call host cost in dispatch | 1 |
| GPPERF_ENERGY_WINDOW_S | seconds per NVML energy window (energy objectives; check it on the device) | 0.2 |
| GPPERF_ENERGY_REPEATS | energy windows per candidate, interleaved | 3 |
| GPPERF_ENERGY_BUDGET_S | seconds of energy windows per shape | 4 |
| GPPERF_ENERGY_MAX_SHAPES | shapes measured in energy per process; later ones take the prediction | 64 |
| GPPERF_GUARD_BUDGET_MS | wall time of warmup's end-to-end guard (plain vs patched forward) | 500 |
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from typing import TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")
_warned: set[tuple[str, str]] = set()

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def read(name: str, default: T, parse: Callable[[str], T]) -> T:
    """`parse(os.environ[name])`, or `default` when unset or empty, or when parse raises ValueError (warned once
    per value)."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return parse(raw)
    except ValueError as e:
        if (name, raw) not in _warned:
            _warned.add((name, raw))
            logger.warning("gpperf: ignoring %s=%r (%s); using the default %r", name, raw, e, default)
        return default


def parse_bool(raw: str) -> bool:
    v = raw.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise ValueError(f"expected one of {', '.join(_TRUE + _FALSE)}")


def parse_int_at_least(raw: str, low: int) -> int:
    try:
        v = int(raw.strip())
    except ValueError:
        raise ValueError("not an integer") from None
    if v < low:
        raise ValueError(f"must be at least {low}")
    return v


def parse_positive_int(raw: str) -> int:
    return parse_int_at_least(raw, 1)


def parse_non_negative_int(raw: str) -> int:
    return parse_int_at_least(raw, 0)


def parse_positive_float(raw: str) -> float:
    try:
        v = float(raw.strip())
    except ValueError:
        raise ValueError("not a number") from None
    if not (math.isfinite(v) and v > 0):
        raise ValueError("must be a positive, finite number")
    return v


def flag(name: str, default: bool) -> bool:
    return read(name, default, parse_bool)


def positive_int(name: str, default: int) -> int:
    return read(name, default, parse_positive_int)
