"""The selection disk cache: one JSON file of selections per (device, model), shared by processes.

The selector keeps the in-memory dictionary, decides what to store, and says which loaded entries it can use:
every entry is checked on load (key fields, config key, candidate of this model valid on this device), and one
that fails is ignored with a warning naming the file, never raised at a matmul or at launch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from ..kernels import TileConfig
from ..measure.dataset import TORCH_KEY as TORCH
from ..measure.device import DeviceInfo
from ..once import WarnOnce
from ..paths import cache_dir, cannot_write, disk_cache_enabled, keep_unreadable, slug

logger = logging.getLogger(__name__)
_warn_once = WarnOnce(logger)
_warned = _warn_once.seen  # tests clear it


def cache_token(meta: dict | None, analytic: dict | None = None, policy: dict | None = None) -> str:
    """What a cache file is keyed by besides the device: a digest of the model's whole description (model.json:
    the ONNX hash, the candidate set, the targets, the time floor, ...), so an edited model.json never reuses
    selections made with another candidate set. Without a model: the analytic rule's parameters and the
    candidate space it ranks. `policy`: the dispatch policy's terms (dispatch.Policy.as_dict), when given."""
    if meta is None:
        from .. import kernels

        meta = {"analytic": analytic or {}, "candidates": [c.key for c in kernels.candidate_space()]}
    if policy is not None:
        meta = {"model": meta, "policy": policy}
    blob = json.dumps(meta, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def _key_to_str(key: tuple) -> str:
    return ",".join(str(int(x)) if isinstance(x, bool) else str(x) for x in key)


_FLAGS = {"0": False, "1": True}


def _str_to_key(s: str) -> tuple:
    """A cache file's key string -> the selection key; ValueError saying what is wrong."""
    if not isinstance(s, str):
        raise ValueError(f"key {s!r} is not a string")
    parts = s.split(",")
    if len(parts) != 9:
        raise ValueError(f"key {s!r} has {len(parts)} fields, expected 9 (m,n,k,batch,dtype,a_t,b_t,tf32,objective)")
    m, n, k, batch, dtype, a_t, b_t, tf32, obj = parts
    try:
        sizes = tuple(int(x) for x in (m, n, k, batch))
    except ValueError:
        raise ValueError(f"key {s!r}: m, n, k and batch must be integers") from None
    if min(sizes) < 0:  # 0 is harmless (an empty GEMM); a negative size is no key the op makes
        raise ValueError(f"key {s!r}: m, n, k and batch must be >= 0")
    if any(f not in _FLAGS for f in (a_t, b_t, tf32)):
        raise ValueError(f"key {s!r}: the layout and tf32 flags must be 0 or 1")
    if not dtype or not obj:
        raise ValueError(f"key {s!r}: empty dtype or objective")
    return (*sizes[:3], sizes[3], dtype, _FLAGS[a_t], _FLAGS[b_t], _FLAGS[tf32], obj)


def _parse_value(v: object) -> TileConfig | None:
    if not isinstance(v, str):
        raise ValueError(f"value {v!r} is not a config key string")
    return None if v == TORCH else TileConfig.from_key(v)


# accept(key, cfg) raises ValueError when a well-formed entry cannot be used here (its config is not among the
# model's candidates valid on this device for its dtype, its objective does not parse).
Accept = Callable[[tuple, "TileConfig | None"], None]


def _read_selections(path: Path) -> dict:
    """The `selections` object of a cache file; ValueError when the file as a whole is not a cache file."""
    raw = json.loads(path.read_text())
    if not isinstance(raw, dict):
        raise ValueError(f"the root is a {type(raw).__name__}, not an object")
    sel = raw.get("selections", {})
    if not isinstance(sel, dict):
        raise ValueError(f"'selections' is a {type(sel).__name__}, not an object")
    return sel


class DiskCache:
    """Selections per (device, model hash) in one JSON file: loaded once, flushed in batches and at exit,
    written atomically (temp file + rename) under a file lock, merged with what other processes wrote."""

    FLUSH_EVERY = 16
    FLUSH_SECONDS = 5.0

    def __init__(self, info: DeviceInfo, token: str):
        self.path = cache_dir() / f"select-{slug(info.name)}-{token[:16]}.json"
        self.pending: dict[str, str] = {}
        self.last_flush = time.monotonic()
        self.enabled = disk_cache_enabled()

    def load(self, accept: Accept | None = None) -> dict[tuple, TileConfig | None]:
        """The usable selections of the file: {key: config (None: torch.matmul)}.

        Never raises: a file that cannot be read is ignored, and so is each entry that does not parse or that
        `accept` refuses, with one warning naming the file, how many entries were ignored, and why the first
        was. A cache must never break a matmul."""
        if not self.enabled or not self.path.exists():
            return {}
        try:
            sel = _read_selections(self.path)
        except (OSError, ValueError) as e:
            _warn_once(f"corrupt:{self.path}", "gpperf: ignoring corrupt selection cache %s (%s)", self.path, e)
            return {}
        out: dict[tuple, TileConfig | None] = {}
        bad = 0
        first = ""
        for k, v in sel.items():
            try:
                key = _str_to_key(k)
                cfg = _parse_value(v)
                if accept is not None:
                    accept(key, cfg)
            except (ValueError, TypeError) as e:
                bad += 1
                first = first or f"{k!r}: {e}"
                continue
            out[key] = cfg
        if bad:
            _warn_once(
                f"entries:{self.path}",
                "gpperf: ignoring %d of %d entries of the selection cache %s (first: %s)",
                bad, len(sel), self.path, first,
            )  # fmt: skip
        return out

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
                        merged = {k: v for k, v in _read_selections(self.path).items() if _well_formed(k, v)}
                    except (OSError, ValueError) as e:  # unreadable: kept beside it, never silently replaced
                        backup = keep_unreadable(self.path)
                        _warn_once(f"backup:{self.path}", "gpperf: the selection cache %s could not be read (%s); "
                                   "kept as %s and started anew", self.path, e, backup)  # fmt: skip
                merged.update(self.pending)
                tmp = self.path.with_suffix(f".tmp{os.getpid()}")
                tmp.write_text(json.dumps({"version": 1, "selections": merged}))
                os.replace(tmp, self.path)
            self.pending.clear()
        except Exception as e:  # a cache must never break a matmul: the selections stay in memory
            cannot_write(self.path, e)
            self.enabled = False  # no retry on every 16th selection: this process keeps them in memory
            self.pending.clear()
        self.last_flush = time.monotonic()


def _well_formed(k: object, v: object) -> bool:
    """Entries another process wrote are kept on a merge when they parse (whether they suit this process is
    decided when loading); malformed ones are dropped then."""
    try:
        _str_to_key(k)
        _parse_value(v)
    except (ValueError, TypeError):
        return False
    return True
