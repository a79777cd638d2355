"""The hook's installed settings (mode, top_k) and its part of Inductor's cache key; read by the hook on every call.

Apart from switch.py (which installs the hook into Inductor) so that the hook reads them without importing the
module that imports it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from pathlib import Path

MODES = ("predict", "verify")


@dataclasses.dataclass(frozen=True)
class Settings:
    mode: str
    top_k: int


_current: Settings | None = None


def current() -> Settings | None:
    """The installed settings, or None: the hook then behaves exactly as Inductor's own InductorChoices."""
    return _current


def set_current(value: Settings | None) -> None:
    global _current
    _current = value


def installed() -> bool:
    return _current is not None


@functools.cache
def code_version() -> str:
    """The package version and a hash of this room's source: a changed hook or policy changes the cache key even
    in a source checkout whose version string did not move."""
    try:
        from importlib.metadata import version

        ver = version("gpperf-torch")
    except Exception:  # a source tree on PYTHONPATH, not installed
        ver = "src"
    h = hashlib.sha256()
    for f in sorted(Path(__file__).parent.glob("*.py")):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return f"{ver}-{h.hexdigest()[:12]}"


def uuid() -> str:
    """The hook's part of Inductor's FX graph cache key: package version and source hash, the model's hash on this
    process's GPU, mode and top_k ("off" when not installed)."""
    st = _current
    if st is None:
        return f"gpperf-{code_version()}-off"
    return f"gpperf-{code_version()}-{st.mode}-k{st.top_k}-{_model_hash()}"


def _model_hash() -> str:
    """The hash of the model the hook ranks with on this process's current GPU ('none' without one)."""
    import torch

    if not torch.cuda.is_available():
        return "none"
    try:
        from ..selection.state import default_device, state

        return state(default_device()).model_hash[:16]
    except Exception as e:  # a broken model: the hook defers, and the key still differs from a working one
        return f"error-{type(e).__name__}"


__all__ = ["MODES", "Settings", "code_version", "current", "installed", "set_current", "uuid"]
