"""The progress bar of a tuning run."""

from __future__ import annotations

import logging
import time

logger = logging.getLogger(__name__)


class _Progress:
    """A rich progress bar (rows, rows/s, ETA), or nothing when quiet or rich is missing."""

    def __init__(self, total: int, *, quiet: bool, per_worker: bool = False):
        self._p = None
        self._per_worker = per_worker
        self._worker_rows: dict[str, int] = {}
        if quiet or (total == 0 and not per_worker):
            return
        try:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
        except ImportError:
            return
        self._p = Progress(
            TextColumn("tune"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} rows/s"),
            *([TextColumn("{task.fields[workers]}")] if per_worker else []),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            transient=False,
        )
        self._task = self._p.add_task("tune", total=total, rate="-", workers="")
        self._t0 = time.monotonic()
        self._done = 0
        self._p.start()

    def grow(self, rows: int) -> None:
        """More rows planned (a Ray worker with a GPU model not seen before joined the run)."""
        if self._p is not None and rows:
            self._p.update(self._task, total=self._p.tasks[0].total + rows)

    def advance(self, worker: str | None = None) -> None:
        if worker is not None:
            self._worker_rows[worker] = self._worker_rows.get(worker, 0) + 1
        if self._p is None:
            return
        self._done += 1
        elapsed = max(time.monotonic() - self._t0, 1e-9)
        fields = {"rate": f"{self._done / elapsed:.1f}"}
        if self._per_worker:
            fields["workers"] = "  ".join(f"{w} {n / elapsed:.2f}/s" for w, n in sorted(self._worker_rows.items()))
        self._p.update(self._task, advance=1, **fields)

    def close(self) -> None:
        if self._p is not None:
            self._p.stop()
