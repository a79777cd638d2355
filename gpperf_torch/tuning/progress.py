"""The progress bar of a tuning run."""

from __future__ import annotations

import logging
import time

logger = logging.getLogger(__name__)


class _Progress:
    """A rich progress bar (rows, rows/s, ETA), or nothing when quiet or rich is missing."""

    def __init__(self, total: int, *, quiet: bool):
        self._p = None
        if quiet or total == 0:
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
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            transient=False,
        )
        self._task = self._p.add_task("tune", total=total, rate="-")
        self._t0 = time.monotonic()
        self._done = 0
        self._p.start()

    def advance(self) -> None:
        if self._p is None:
            return
        self._done += 1
        rate = self._done / max(time.monotonic() - self._t0, 1e-9)
        self._p.update(self._task, advance=1, rate=f"{rate:.1f}")

    def close(self) -> None:
        if self._p is not None:
            self._p.stop()
