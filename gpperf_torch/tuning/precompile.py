"""Ahead-of-time compilation in worker processes, in the order the sweep will need the kernels (GPU only)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterable

from .inputs import InputSets
from .plan import Problem

logger = logging.getLogger(__name__)


def _warm_variant(variant: tuple) -> str:
    """Compile one kernel variant by launching it on tiny tensors (fills Triton's on-disk cache)."""
    try:
        import torch

        from ..kernels import TileConfig, launch

        key, dtype, a_trans, b_trans, tf32, m, n, k = variant
        p = Problem(m, n, k, dtype, a_trans, b_trans, tf32)
        sets = InputSets(p, "cuda", rotate_bytes=0, max_sets=1)
        launch(*sets.operands(0), TileConfig.from_key(key), allow_tf32=bool(tf32))
        torch.cuda.synchronize()
        return ""
    except Exception as e:  # the measuring process records the failure as a row
        return f"{type(e).__name__}: {e}"


def _warm_worker() -> None:
    """Worker process main: one JSON variant per stdin line, one result line per variant on stdout."""
    for line in sys.stdin:
        err = _warm_variant(tuple(json.loads(line)))
        sys.stdout.write(json.dumps(err) + "\n")
        sys.stdout.flush()


class Precompiler:
    """Worker processes that compile variants in the order the sweep will need them.

    Plain subprocesses rather than multiprocessing: spawn-based pools re-run the caller's ``__main__``, which
    breaks any script that calls `tune()` without an ``if __name__ == "__main__"`` guard. A variant the sweep
    reaches before any worker took it is dropped from the queue and compiled by the sweep itself.
    """

    def __init__(self, variants: Iterable[tuple], jobs: int):
        self._pending = list(dict.fromkeys(variants))
        self._running: set[tuple] = set()
        self._cv = threading.Condition()
        self._closed = False
        self._procs: list[subprocess.Popen] = []
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        cmd = [sys.executable, "-c", "from gpperf_torch.tuning.precompile import _warm_worker; _warm_worker()"]
        total = len(self._pending)
        for _ in range(max(0, min(jobs, total))):
            proc = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
            )
            self._procs.append(proc)
            threading.Thread(target=self._feed, args=(proc,), daemon=True).start()
        logger.info("precompiling %d kernel variants in %d processes", total, len(self._procs))

    def _feed(self, proc: subprocess.Popen) -> None:
        while True:
            with self._cv:
                if self._closed or not self._pending:
                    break
                v = self._pending.pop(0)
                self._running.add(v)
            try:
                proc.stdin.write(json.dumps(v) + "\n")
                proc.stdin.flush()
                alive = bool(proc.stdout.readline())
            except (OSError, ValueError):
                alive = False
            with self._cv:
                self._running.discard(v)
                self._cv.notify_all()
            if not alive:  # the worker died (or was closed): the sweep compiles what is left
                break
        with contextlib.suppress(OSError, ValueError):
            proc.stdin.close()

    def wait(self, variant: tuple | None, timeout: float = 600.0) -> bool:
        """Until `variant` is compiled or left to the caller; False when `timeout` seconds passed first."""
        if variant is None:
            return True
        with self._cv:
            if variant in self._pending:
                self._pending.remove(variant)
                return True
            return self._cv.wait_for(lambda: variant not in self._running, timeout=max(0.0, timeout))

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._pending.clear()
        for proc in self._procs:
            proc.kill()
        for proc in self._procs:
            proc.wait()
