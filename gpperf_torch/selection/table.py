"""The verified table: measured choices that persist and travel, one JSON file per device.

Each entry is one measured GEMM bucket (verify_policy.bucket_key: an M range, M's alignment, N, K, batch, dtype,
layout, TF32) under one objective (time, energy, edp, balanced:<slack>) on one GPU (name, compute capability, SM
count) under one torch and one triton version, with its choice ("torch" or a config key) and the evidence (median
times of every candidate, noise, margin, rounds; for the energy objectives also `energy`: J, W and ms per
candidate from NVML windows, their paired noise, the window length used, SM clock, power limit and throttle
reasons such as the power cap). A bucket key without an objective is a time key (format version 1 had none).
Lookups match the whole identity: an entry measured on another GPU or with other library versions is never used.

It is kept apart from the prediction cache (select_cache.py, keyed by the model): a retrained model does not
discard measurements. Writes are atomic (a temporary file renamed under a file lock) and merge with what other
processes wrote meanwhile (per entry, the newer measurement wins). A table that cannot be read, or holds nothing
for this GPU and these versions, is ignored with one warning that says why.

Measurements through the Triton interpreter (a CPU: wall-clock times of an emulation, nothing a GPU would show)
are marked: their `gpu` field is the described GPU's name with INTERPRETER_MARK, they go to a file of their own
(default_path), and no GPU's identity ever matches them, so they are never served to a real GPU.

`GPPERF_TABLE=path` loads a table read-only: the process never measures and never writes (a production host);
shapes it lacks take the prediction. `gpperf-torch table show|merge PATH...` prints and combines tables
(cli/table.py).
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .. import kernels
from ..measure.dataset import TORCH_KEY as TORCH
from ..measure.device import DeviceInfo
from ..once import WarnOnce
from ..paths import cache_dir, cannot_write, disk_cache_enabled, keep_unreadable, slug
from ..policy.verify_policy import bucket_key, bucket_steps_from_env, gain_over_torch

logger = logging.getLogger(__name__)

FORMAT = "gpperf-verified-table"
# Version 2 keys entries by objective too. Version 1 files (time only) are read as time entries; a reader of
# version 1 refuses version 2 files whole (it would take an energy entry for a time one).
VERSION = 2
READS = (1, 2)
# What an entry is keyed by, in order: the device and library identity, then the GEMM bucket.
IDENTITY_FIELDS = ("gpu", "capability", "sm_count", "torch", "triton")
BUCKET_FIELDS = ("m_lo", "m_hi", "m16", "n", "k", "batch", "dtype", "a_trans", "b_trans", "tf32")
KEY_FIELDS = IDENTITY_FIELDS + BUCKET_FIELDS + ("objective",)
_warn_once = WarnOnce(logger)
_warned = _warn_once.seen  # tests clear it


def library_versions() -> tuple[str, str]:
    import torch
    import triton

    return str(torch.__version__), str(triton.__version__)


INTERPRETER_MARK = " [interpreter: CPU wall clock]"


def interpreted() -> bool:
    """Whether this process's measurements run through the Triton interpreter (no GPU): they are marked."""
    import torch

    return kernels.interpreting() and not torch.cuda.is_available()


def is_interpreted(gpu: str) -> bool:
    """Whether an entry's `gpu` field marks interpreter measurements."""
    return gpu.endswith(INTERPRETER_MARK)


def identity_of(info: DeviceInfo) -> tuple:
    """(gpu, capability, sm_count, torch, triton) of this process on `info`; `gpu` carries INTERPRETER_MARK
    where the measurements are the interpreter's."""
    torch_v, triton_v = library_versions()
    gpu = info.name + (INTERPRETER_MARK if interpreted() else "")
    return (gpu, ".".join(map(str, info.capability)), int(info.sm_count), torch_v, triton_v)


@dataclass
class Entry:
    """One measured bucket: the choice and its evidence."""

    choice: str  # "torch" or a TileConfig key
    m: int  # the M that was measured (the bucket spans m_lo..m_hi)
    times_ms: dict[str, float] = field(default_factory=dict)
    noise: float = math.nan
    margin: float = math.nan
    rounds: int = 0
    mode: str = "verify"  # verify | exhaustive | warmup | guard (reverted to cuBLAS by warmup's guard)
    measured_at: str = ""
    energy: dict = field(default_factory=dict)  # energy objectives: the windows' evidence (module docstring)

    @property
    def gain(self) -> float:
        return gain_over_torch(self.times_ms, self.choice, TORCH)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["gain"] = self.gain
        return d


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _entry_record(key: tuple, e: Entry) -> dict:
    rec = dict(zip(KEY_FIELDS, key, strict=True))
    rec.update(choice=e.choice, m=e.m, times_ms=e.times_ms, noise=_finite_or_none(e.noise),
               margin=_finite_or_none(e.margin), rounds=e.rounds, mode=e.mode, measured_at=e.measured_at)  # fmt: skip
    if e.energy:
        rec["energy"] = _json_safe(e.energy)
    return rec


def _json_safe(x):
    """inf / nan (a noise with too few rounds) as None: JSON has no such numbers."""
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, float):
        return _finite_or_none(x)
    return x


def with_objective(key: tuple, objective: str = "time") -> tuple:
    """A table key with its objective: a bucket key (or identity + bucket key) without one gets `objective`."""
    if len(key) in (len(BUCKET_FIELDS), len(IDENTITY_FIELDS) + len(BUCKET_FIELDS)):
        return (*key, objective)
    return tuple(key)


def _finite_or_none(x: float) -> float | None:
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None


def _parse_record(rec: object) -> tuple[tuple, Entry]:
    """One JSON entry -> (key, Entry); ValueError saying what is wrong."""
    if not isinstance(rec, dict):
        raise ValueError(f"an entry is a {type(rec).__name__}, not an object")
    rec = {"objective": "time", **rec}  # version 1 entries: time
    missing = [f for f in (*KEY_FIELDS, "choice", "m") if f not in rec]
    if missing:
        raise ValueError(f"entry lacks {', '.join(missing)}")
    ints = ("sm_count", "m_lo", "m_hi", "n", "k", "batch", "m")
    for f in ints:
        if not isinstance(rec[f], int) or isinstance(rec[f], bool) or rec[f] < 0:
            raise ValueError(f"entry field {f}={rec[f]!r} is not a non-negative integer")
    for f in ("m16", "a_trans", "b_trans", "tf32"):
        if not isinstance(rec[f], bool):
            raise ValueError(f"entry field {f}={rec[f]!r} is not true/false")
    for f in ("gpu", "capability", "torch", "triton", "dtype", "choice", "objective"):
        if not isinstance(rec[f], str) or not rec[f]:
            raise ValueError(f"entry field {f}={rec[f]!r} is not a string")
    if rec["choice"] != TORCH:
        from ..kernels import TileConfig

        TileConfig.from_key(rec["choice"])  # ValueError for a malformed key
    energy = rec.get("energy") or {}
    if not isinstance(energy, dict):
        raise ValueError("energy must be an object")
    times = rec.get("times_ms") or {}
    if not isinstance(times, dict) or not all(isinstance(v, (int, float)) for v in times.values()):
        raise ValueError("times_ms must map candidate keys to milliseconds")
    key = tuple(rec[f] for f in KEY_FIELDS)
    entry = Entry(
        choice=rec["choice"], m=rec["m"], times_ms={str(k): float(v) for k, v in times.items()},
        noise=float(rec["noise"]) if isinstance(rec.get("noise"), (int, float)) else math.nan,
        margin=float(rec["margin"]) if isinstance(rec.get("margin"), (int, float)) else math.nan,
        rounds=int(rec.get("rounds") or 0), mode=str(rec.get("mode") or "verify"),
        measured_at=str(rec.get("measured_at") or ""), energy=energy,
    )  # fmt: skip
    return key, entry


def read_file(path: Path) -> tuple[dict[tuple, Entry], int, str]:
    """(entries, ignored entries, why the first was ignored) of a table file; ValueError/OSError when the file as a
    whole is not a table of this version."""
    raw = json.loads(Path(path).read_text())
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        got = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
        raise ValueError(f"not a gpperf verified table (format {got!r}, expected {FORMAT!r})")
    if raw.get("version") not in READS:
        raise ValueError(f"table format version {raw.get('version')!r}, this gpperf reads {READS}")
    recs = raw.get("entries")
    if not isinstance(recs, list):
        raise ValueError("'entries' is not a list")
    out: dict[tuple, Entry] = {}
    bad, first = 0, ""
    for rec in recs:
        try:
            key, entry = _parse_record(rec)
        except (ValueError, TypeError) as e:
            bad += 1
            first = first or str(e)
            continue
        out[key] = newer(out.get(key), entry)
    return out, bad, first


def newer(a: Entry | None, b: Entry) -> Entry:
    """The entry to keep of two for one key: the later measurement (b on a tie)."""
    return b if a is None or b.measured_at >= a.measured_at else a


def write_file(path: Path, entries: dict[tuple, Entry], *, merge: bool = True) -> int:
    """Write `entries` to `path` atomically under a file lock, merged (`merge`) with what the file holds then
    (per key, the newer measurement wins; a file that cannot be read as a table is kept beside it as a backup,
    keep_unreadable, and the table starts anew). Returns the entries written."""
    from filelock import FileLock

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock", timeout=10):
        merged: dict[tuple, Entry] = {}
        if merge and path.exists():
            try:
                merged, _, _ = read_file(path)
            except (OSError, ValueError) as e:
                backup = keep_unreadable(path)
                logger.warning("gpperf: the verified table %s could not be read (%s); kept as %s, and a new table "
                               "written in its place", path, e, backup)  # fmt: skip
        for key, e in entries.items():
            key = with_objective(key)
            merged[key] = newer(merged.get(key), e)
        doc = {"format": FORMAT, "version": VERSION, "written_at": _now(),
               "entries": [_entry_record(k, merged[k]) for k in sorted(merged, key=sort_key)]}  # fmt: skip
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}.{threading.get_ident()}")
        tmp.write_text(json.dumps(doc, indent=0) + "\n")
        os.replace(tmp, path)
    return len(merged)


def sort_key(key: tuple) -> tuple:
    return tuple(str(x) if isinstance(x, str) else f"{int(x):012d}" for x in key)


def default_path(info: DeviceInfo) -> Path:
    """This device's table file in the cache directory (interpreter measurements in a file of their own)."""
    return cache_dir() / f"verified-{slug(info.name)}{'-interpreter' if interpreted() else ''}.json"


class VerifiedTable:
    """The measured choices of one device: loaded at first use, added to as shapes are measured, flushed in
    batches and at exit (unless read-only)."""

    FLUSH_EVERY = 8
    FLUSH_SECONDS = 5.0

    def __init__(self, info: DeviceInfo, path: Path, *, read_only: bool = False, persist: bool = True):
        self.info = info
        self.path = Path(path)
        self.read_only = read_only
        self.persist = persist and not read_only
        self.identity = identity_of(info)
        self.entries: dict[tuple, Entry] | None = None
        self.pending: dict[tuple, Entry] = {}
        self.last_flush = time.monotonic()
        self._lock = threading.Lock()

    def _load(self) -> dict[tuple, Entry]:
        if self.entries is not None:
            return self.entries
        entries: dict[tuple, Entry] = {}
        if (self.persist or self.read_only) and self.path.exists():
            try:
                every, bad, first = read_file(self.path)
            except (OSError, ValueError, UnicodeDecodeError) as e:
                _warn_once(f"corrupt:{self.path}", "gpperf: ignoring verified table %s (%s)", self.path, e)
                every, bad, first = {}, 0, ""
            if bad:
                _warn_once(f"bad:{self.path}", "gpperf: ignoring %d malformed entries of the verified table %s "
                           "(first: %s)", bad, self.path, first)  # fmt: skip
            entries = {k[len(IDENTITY_FIELDS) :]: e for k, e in every.items() if k[: len(IDENTITY_FIELDS)] ==
                       self.identity}  # fmt: skip
            if every and not entries:
                self._warn_foreign(every)
        elif self.read_only:
            _warn_once(f"missing:{self.path}", "gpperf: GPPERF_TABLE=%s does not exist: nothing is measured and every "
                       "shape takes the prediction", self.path)  # fmt: skip
        self.entries = entries
        return entries

    def _warn_foreign(self, every: dict[tuple, Entry]) -> None:
        ids = sorted({k[: len(IDENTITY_FIELDS)] for k in every})
        same_gpu = [i for i in ids if i[:3] == self.identity[:3]]
        if same_gpu:
            why = (f"its entries were measured with torch {same_gpu[0][3]} / triton {same_gpu[0][4]}, this process"
                   f" runs torch {self.identity[3]} / triton {self.identity[4]}: re-measure (gp.warmup) to use"
                   " measurements of these versions")  # fmt: skip
        else:
            why = (f"it holds entries for {', '.join(f'{i[0]} (sm {i[1]}, {i[2]} SMs)' for i in ids[:3])}, not for"
                   f" {self.identity[0]} (sm {self.identity[1]}, {self.identity[2]} SMs)")  # fmt: skip
        _warn_once(f"foreign:{self.path}", "gpperf: not using the verified table %s: %s", self.path, why)

    def lookup(self, key: tuple, steps: int | None = None, objective: str = "time") -> Entry | None:
        """The entry of a selection key's bucket under `objective` on this device and these versions, or None."""
        entries = self._load()
        if not entries:
            return None
        return entries.get((*bucket_key(key, bucket_steps_from_env() if steps is None else steps), objective))

    def add(self, bkey: tuple, entry: Entry) -> None:
        """Remember a measured bucket (in memory at once; on disk at the next flush). `bkey`: a bucket key with its
        objective (without one: time)."""
        bkey = with_objective(bkey)
        if self.read_only:
            raise ValueError(f"the verified table {self.path} is read-only (GPPERF_TABLE): nothing is added to it")
        if not entry.measured_at:
            entry.measured_at = _now()
        with self._lock:
            self._load()[bkey] = entry
            if self.persist:
                self.pending[bkey] = entry
        if self.persist and (len(self.pending) >= self.FLUSH_EVERY
                             or time.monotonic() - self.last_flush > self.FLUSH_SECONDS):  # fmt: skip
            self.flush()

    def flush(self) -> None:
        with self._lock:
            if not self.pending or not self.persist:
                return
            pending, self.pending = self.pending, {}
        try:
            write_file(self.path, {(*self.identity, *k): e for k, e in pending.items()})
        except Exception as e:  # a table must never break a matmul: the entries stay in memory
            cannot_write(self.path, e)
            self.persist = False  # no retry on every flush: this process keeps its measurements in memory
        self.last_flush = time.monotonic()

    def save(self, path: Path | None = None) -> Path:
        """Write every entry of this device (not only the pending ones) to `path` (default: this table's file)."""
        if self.read_only and path is None:
            raise ValueError(f"the verified table {self.path} is read-only (GPPERF_TABLE); pass another path")
        target = Path(path) if path is not None else self.path
        with self._lock:
            entries = dict(self._load())
            if target == self.path:
                self.pending.clear()
        write_file(target, {(*self.identity, *k): e for k, e in entries.items()})
        return target

    def __len__(self) -> int:
        return len(self._load())


_tables: dict[str, VerifiedTable] = {}
_tables_lock = threading.Lock()


def table_path_env() -> Path | None:
    raw = os.environ.get("GPPERF_TABLE", "").strip()
    return Path(raw).expanduser() if raw else None


def for_device(info: DeviceInfo) -> VerifiedTable:
    """This process's verified table of `info`: GPPERF_TABLE (read-only) when set, else the device's file in the
    cache directory (written unless GPPERF_DISK_CACHE=0, then kept in memory)."""
    t = _tables.get(info.name)
    if t is None:
        with _tables_lock:
            t = _tables.get(info.name)
            if t is None:
                ro = table_path_env()
                if ro is not None:
                    t = VerifiedTable(info, ro, read_only=True)
                else:
                    t = VerifiedTable(info, default_path(info), persist=disk_cache_enabled())
                _tables[info.name] = t
    return t


def flush_all() -> None:
    for t in list(_tables.values()):
        t.flush()


def reset() -> None:
    """Forget the loaded tables (pending entries are flushed first)."""
    flush_all()
    with _tables_lock:
        _tables.clear()


atexit.register(flush_all)

__all__ = [
    "INTERPRETER_MARK",
    "Entry",
    "VerifiedTable",
    "default_path",
    "flush_all",
    "for_device",
    "identity_of",
    "interpreted",
    "is_interpreted",
    "read_file",
    "reset",
    "with_objective",
    "write_file",
]
