"""Where gpperf keeps its files: the user cache directory (selections, verified tables, host costs, measurements).

A leaf module (standard library, platformdirs and errors only), so that every room that writes a file can ask
for the directory without importing the selector that calls it; and `check_output_dir`, the check every command
and the training library run on an output directory before their work.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import UserError


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


__all__ = ["cache_dir", "check_output_dir", "slug"]
