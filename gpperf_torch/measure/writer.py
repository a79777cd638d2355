"""The resumable dataset writer: one locked, append-only CSV, a torn tail repaired, the existing rows known.

Every tuning executor (local or Ray) hands its rows to one `DatasetWriter` in the driving process, and the
measured dispatch appends its measurements through one too; the schema is dataset.py's. How a planned work
item is matched against the rows already written (resume) is the tuner's: tuning/plan.py, `pending_work`.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import DataFileError
from .dataset import COLUMNS, KEY_COLUMNS

logger = logging.getLogger(__name__)

ERROR_TEXT_MAX = 400
LOCK_SUFFIX = ".lock"
# Files written before the `worker` column (the last one) was added: resumed in their own layout.
COLUMNS_BEFORE_WORKER = COLUMNS[: COLUMNS.index("worker")]


class DatasetLockedError(RuntimeError):
    """Another process holds the output file's lock."""


# ---- the CSV --------------------------------------------------------------------------------------
HEADER_LINE = (",".join(COLUMNS) + "\n").encode()
# The header of files written before the `worker` column: still ours, resumed in their own layout.
OLD_HEADER_LINE = (",".join(COLUMNS_BEFORE_WORKER) + "\n").encode()


def check_out_file(path: str | Path) -> None:
    """Refuse an output path that is not a gpperf tuning dataset, before anything is created or changed there.

    Passes a missing or empty file, a file whose first line is this version's header (or the header from before
    the `worker` column, resumed in its own layout), and a file holding only the start of the header (a run
    killed while writing it). Anything else (someone else's CSV, another layout, a binary file, a directory) is
    a DataFileError: the torn-line repair must never cut a file that is not ours.
    """
    path = Path(path)
    if path.is_dir():
        raise DataFileError(f"{path}: is a directory; --out names the CSV file to write, e.g. {path / 'tune.csv'}")
    if not path.exists():
        return
    if not path.is_file():
        raise DataFileError(f"{path}: not a regular file; --out names the CSV file to write")
    with open(path, "rb") as f:
        head = f.read(len(HEADER_LINE))
        more = bool(f.read(1))
    if not head or head == HEADER_LINE or head.startswith(OLD_HEADER_LINE):
        return
    if not more and HEADER_LINE.startswith(head) and b"\n" not in head:
        return  # only the start of our header: a run killed while writing it
    if b"\0" in head:
        raise DataFileError(f"{path}: exists and is a binary file, not a gpperf tuning dataset; nothing was changed")
    try:
        first = head.decode("utf-8").split("\n", 1)[0]
    except UnicodeDecodeError:
        raise DataFileError(
            f"{path}: exists and is not a UTF-8 text file, not a gpperf tuning dataset; nothing was changed"
        ) from None
    shown = first if len(first) <= 80 else first[:80] + "..."
    raise DataFileError(
        f"{path}: exists and is not a gpperf tuning dataset of this version (first line {shown!r}); nothing was "
        "changed: pass a new --out or move the file"
    )


def repair_torn_tail(path: str | Path) -> int:
    """Truncate a partial last line (a write cut by a kill or crash); return the bytes removed."""
    path = Path(path)
    if not path.exists():
        return 0
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return 0
        pos = size
        keep = 0
        while pos > 0:
            step = min(65536, pos)
            pos -= step
            f.seek(pos)
            nl = f.read(step).rfind(b"\n")
            if nl >= 0:
                keep = pos + nl + 1
                break
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
    logger.warning("%s: removed a torn last line (%d bytes) left by an interrupted run", path, size - keep)
    return size - keep


def _key(row: dict[str, str] | Sequence[str]) -> tuple[str, ...]:
    if isinstance(row, dict):
        return tuple(row[c] for c in KEY_COLUMNS)
    idx = [COLUMNS.index(c) for c in KEY_COLUMNS]
    return tuple(row[i] for i in idx)


_PROBLEM_COLUMNS = ("gpu", "m", "n", "k", "dtype", "a_trans", "b_trans", "tf32")


class DatasetWriter:
    """Append-only CSV writer that holds a lock, repairs a torn tail and knows which rows exist.

    Rows are single physical lines (error texts are flattened), each flushed when written, with an fsync at
    most every `fsync_every_s`: a SIGKILL loses at most the row in flight, a power cut at most a few seconds.
    """

    def __init__(self, path: str | Path, *, fsync_every_s: float = 5.0):
        from filelock import FileLock, Timeout

        self.path = Path(path)
        check_out_file(self.path)  # before the directory, the lock or the repair touch anything
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(str(self.path) + LOCK_SUFFIX)
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            raise DatasetLockedError(
                f"{self.path} is being written by another tune run (lock {self.path}{LOCK_SUFFIX} is held); "
                f"wait for that run to finish, or pass a different --out"
            ) from None
        try:
            check_out_file(self.path)  # again under the lock: another process may have written it meanwhile
            self.columns: tuple[str, ...] = COLUMNS  # what the file's header names: COLUMNS or an older prefix
            self.repaired_bytes = repair_torn_tail(self.path)
            self.existing: set[tuple[str, ...]] = set()
            self.oom_problems: set[tuple[str, ...]] = set()
            header = self._read_existing()
            self._f = open(self.path, "a", newline="")  # noqa: SIM115 (held open for the whole run)
            self._w = csv.writer(self._f, lineterminator="\n")
            if not header:
                self._w.writerow(COLUMNS)
                self._f.flush()
        except BaseException:
            self._lock.release()
            raise
        self._fsync_every_s = fsync_every_s
        self._last_fsync = time.monotonic()

    def _read_existing(self) -> bool:
        if not self.path.exists() or self.path.stat().st_size == 0:
            return False
        with open(self.path, newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header == list(COLUMNS_BEFORE_WORKER):  # an older file: keep writing its layout
                self.columns = COLUMNS_BEFORE_WORKER
            elif header != list(COLUMNS):
                raise ValueError(
                    f"{self.path} exists with other columns than this version writes "
                    f"(first line {','.join(header or [])[:120]!r}...); pass a new --out or move the old file"
                )
            pidx = [COLUMNS.index(c) for c in _PROBLEM_COLUMNS]
            status = COLUMNS.index("status")
            bad = 0
            for row in reader:
                if len(row) != len(self.columns):
                    bad += 1
                    continue
                self.existing.add(_key(row))
                if row[status] == "oom":
                    self.oom_problems.add(tuple(row[i] for i in pidx))
            if bad:
                logger.warning("%s: ignored %d malformed rows (wrong number of fields)", self.path, bad)
        return True

    def write(self, row: dict[str, Any]) -> None:
        values = [format_cell(row.get(c)) for c in self.columns]
        self._w.writerow(values)
        self._f.flush()
        self.existing.add(_key(values))
        if time.monotonic() - self._last_fsync >= self._fsync_every_s:
            os.fsync(self._f.fileno())
            self._last_fsync = time.monotonic()

    def close(self) -> None:
        try:
            if not self._f.closed:
                self._f.flush()
                os.fsync(self._f.fileno())
                self._f.close()
        finally:
            self._lock.release()

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def format_cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(int(v))
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    if isinstance(v, str):
        flat = " | ".join(s.strip() for s in v.splitlines() if s.strip())
        return flat if len(flat) <= ERROR_TEXT_MAX else flat[: ERROR_TEXT_MAX - 3] + "..."
    return str(v)
