"""Warnings said once per process: a module's `_warn_once = WarnOnce(logger)`.

One helper for every room that warns about a lasting condition (a missing model, a read-only table, a cap
reached), so that a hot loop logs it once, not once per GEMM. `seen` is the set of keys already warned; tests
clear it (each module keeps the name `_warned` for it).
"""

from __future__ import annotations

import logging


class WarnOnce:
    """`warn(key, msg, *args)`: logger.warning(msg, *args) the first time `key` is seen, nothing after."""

    def __init__(self, logger: logging.Logger):
        self.logger = logger
        self.seen: set[str] = set()

    def __call__(self, key: str, msg: str, *args) -> None:
        if key not in self.seen:
            self.seen.add(key)
            self.logger.warning(msg, *args)


__all__ = ["WarnOnce"]
