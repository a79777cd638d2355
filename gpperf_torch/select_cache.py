"""The selection disk cache: one JSON file of selections per (device, model), shared by processes.

Moved out of selector.py unchanged; the selector keeps the in-memory dictionary and decides what to store.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from .device import DeviceInfo

logger = logging.getLogger(__name__)
_warned: set[str] = set()


def _warn_once(key: str, msg: str, *args) -> None:
    if key not in _warned:
        _warned.add(key)
        logger.warning(msg, *args)


def cache_dir() -> Path:
    env = os.environ.get("GPPERF_CACHE_DIR")
    if env:
        return Path(env)
    try:
        from platformdirs import user_cache_dir

        return Path(user_cache_dir("gpperf-torch", appauthor=False))
    except ImportError:  # platformdirs missing (e.g. a bare GPU image): the XDG default
        return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gpperf-torch"


def _key_to_str(key: tuple) -> str:
    return ",".join(str(int(x)) if isinstance(x, bool) else str(x) for x in key)


def _str_to_key(s: str) -> tuple:
    m, n, k, batch, dtype, a_t, b_t, tf32, obj = s.split(",")
    return (int(m), int(n), int(k), int(batch), dtype, a_t == "1", b_t == "1", tf32 == "1", obj)


class DiskCache:
    """Selections per (device, model hash) in one JSON file: loaded once, flushed in batches and at exit,
    written atomically (temp file + rename) under a file lock, merged with what other processes wrote."""

    FLUSH_EVERY = 16
    FLUSH_SECONDS = 5.0

    def __init__(self, info: DeviceInfo, model_hash: str):
        slug = "".join(ch if ch.isalnum() else "_" for ch in info.name)
        self.path = cache_dir() / f"select-{slug}-{model_hash[:16]}.json"
        self.pending: dict[str, str] = {}
        self.last_flush = time.monotonic()
        self.enabled = os.environ.get("GPPERF_DISK_CACHE", "1") != "0"

    def load(self) -> dict[tuple, str]:
        if not self.enabled or not self.path.exists():
            return {}
        try:
            raw = json.loads(self.path.read_text())
            return {_str_to_key(k): v for k, v in raw.get("selections", {}).items()}
        except (OSError, ValueError, AttributeError) as e:
            _warn_once(f"corrupt:{self.path}", "gpperf: ignoring corrupt selection cache %s (%s)", self.path, e)
            return {}

    def add(self, key: tuple, value: str) -> None:
        if not self.enabled:
            return
        self.pending[_key_to_str(key)] = value
        if len(self.pending) >= self.FLUSH_EVERY or time.monotonic() - self.last_flush > self.FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        try:
            from filelock import FileLock

            self.path.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(str(self.path) + ".lock", timeout=5):
                merged: dict[str, str] = {}
                if self.path.exists():
                    try:
                        merged = json.loads(self.path.read_text()).get("selections", {})
                    except (OSError, ValueError, AttributeError):
                        merged = {}  # corrupt: rewrite it whole
                merged.update(self.pending)
                tmp = self.path.with_suffix(f".tmp{os.getpid()}")
                tmp.write_text(json.dumps({"version": 1, "selections": merged}))
                os.replace(tmp, self.path)
            self.pending.clear()
        except Exception as e:  # a cache must never break a matmul
            _warn_once(f"flush:{self.path}", "gpperf: cannot write selection cache %s (%s)", self.path, e)
        self.last_flush = time.monotonic()
