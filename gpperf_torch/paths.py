"""Where gpperf keeps its files: the user cache directory (selections, verified tables, host costs, measurements).

A leaf module (standard library, platformdirs and the basics only), so that every room that writes a file can ask
for the directory without importing the selector that calls it; and `check_output_dir`, the check every command
and the training library run on an output directory before their work.

Every writer into the cache directory (select_cache, table, verify's rows, the host cost) asks `disk_cache_enabled`
first (GPPERF_DISK_CACHE=0: no file of ours is written) and reports a failed write through `cannot_write`: one
warning per directory naming it and the variables that move or switch it off; what was measured stays in memory.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from . import env
from .errors import UserError

logger = logging.getLogger(__name__)
_unwritable: set[str] = set()  # directories already warned about (tests clear it)


def cache_dir() -> Path:
    """GPPERF_CACHE_DIR, else the user cache directory (platformdirs), else the XDG default."""
    env = os.environ.get("GPPERF_CACHE_DIR")
    if env:
        return Path(env)
    try:
        from platformdirs import user_cache_dir

        return Path(user_cache_dir("gpperf-torch", appauthor=False))
    except ImportError:  # platformdirs missing (e.g. a bare GPU image): the XDG default
        return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gpperf-torch"


def disk_cache_enabled() -> bool:
    """GPPERF_DISK_CACHE (default on): off, nothing of ours is written to the cache directory."""
    return env.flag("GPPERF_DISK_CACHE", True)


def cannot_write(path: str | Path, err: BaseException) -> None:
    """A write into the cache directory failed: warn once per directory (naming it, the error, and the variables
    that move it or switch the disk cache off). Callers keep what they measured in memory and go on."""
    where = str(Path(path).parent)
    if where in _unwritable:
        logger.debug("gpperf: cannot write %s (%s)", path, err)
        return
    _unwritable.add(where)
    logger.warning(
        "gpperf: cannot write %s (%s); selections and measurements stay in this process's memory only. Set "
        "GPPERF_CACHE_DIR to a writable directory to keep them, or GPPERF_DISK_CACHE=0 to write no files",
        path, err,
    )  # fmt: skip


def keep_unreadable(path: Path) -> Path:
    """Move a file that cannot be read as what it should be out of the way, beside it, so that a rewrite never
    destroys it silently: `<name>.unreadable-<UTC time>`; returns the backup's path."""
    backup = path.with_name(f"{path.name}.unreadable-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
    os.replace(path, backup)
    return backup


def slug(name: str) -> str:
    """A device name as a file-name part: every character that is not a letter or digit becomes '_'."""
    return "".join(ch if ch.isalnum() else "_" for ch in name)


def check_output_dir(path: str | Path, what: str = "--out") -> Path:
    """`path` as a directory to write into (created later by the command); UserError when it exists as a file."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UserError(
            f"{p}: {what} exists and is a file, not a directory; it was left as it is: pass a new path or a directory"
        )
    return p


__all__ = ["cache_dir", "cannot_write", "check_output_dir", "disk_cache_enabled", "keep_unreadable", "slug"]
