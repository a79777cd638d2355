"""Objectives and modes: what selection optimises and how it decides, parsed once, set per block or per process.

objective: time (default) | energy | edp | balanced[:slack] | power_cap:<W>
mode:      auto (default: verify on a GPU, predict elsewhere) | predict | verify | exhaustive

`predict` scores the model's candidates and dispatches on the prediction (no measurement); `verify` measures
cuBLAS and the predicted best Triton configs once per shape (bucket) on the call's own operands and keeps the
fastest (verify_policy.py, verify.py); `exhaustive` measures every valid candidate. On a CPU (the Triton
interpreter) times mean nothing, so `auto` is `predict` there; an explicit `verify` still runs (tests, warmup).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator
from dataclasses import dataclass

from .. import env
from ..errors import UserError

OBJECTIVES = ("time", "energy", "edp", "balanced", "power_cap")
MODES = ("auto", "predict", "verify", "exhaustive")
MEASURED_MODES = ("verify", "exhaustive")  # the modes whose choices are measured (remembered apart)
DEFAULT_MODE = "auto"
DEFAULT_BALANCED_SLACK = 0.05


@dataclass(frozen=True)
class Objective:
    name: str
    value: float | None = None  # watts for power_cap, slack for balanced

    def __str__(self) -> str:
        return self.name if self.value is None else f"{self.name}:{self.value:g}"

    @property
    def needs(self) -> tuple[str, ...]:
        return {
            "time": ("time_ms",),
            "energy": ("energy_j",),
            "edp": ("time_ms", "energy_j"),
            "balanced": ("time_ms", "energy_j"),
            "power_cap": ("time_ms", "power_w"),
        }[self.name]


def _number(spec: object, arg: str, what: str, example: str) -> float:
    try:
        x = float(arg.strip().removesuffix("w").removesuffix("W"))
    except ValueError:
        raise UserError(f"objective {spec!r}: {what} must be a number, e.g. {example!r}") from None
    if not math.isfinite(x):
        raise UserError(f"objective {spec!r}: {what} must be a finite number, e.g. {example!r}")
    return x


def parse_objective(spec: str | Objective) -> Objective:
    """ "time" | "energy" | "edp" | "balanced[:slack]" | "power_cap:<watts>" -> Objective (ValueError else).

    Case and surrounding spaces do not matter; an argument that is not a finite number, or is out of range, is
    refused (never read as some default)."""
    if isinstance(spec, Objective):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"objective must be a string such as 'time' or 'power_cap:300', got {type(spec).__name__}")
    name, colon, arg = spec.strip().lower().partition(":")
    name = name.strip()
    if name not in OBJECTIVES:
        raise UserError(f"unknown objective {spec!r}; choose one of {', '.join(OBJECTIVES)} (power_cap:<watts>)")
    if name == "power_cap":
        if not arg.strip():
            raise UserError(f"objective {spec!r}: power_cap needs a limit in watts, e.g. 'power_cap:300'")
        watts = _number(spec, arg, "the power cap in watts", "power_cap:300")
        if watts <= 0:
            raise UserError(f"objective {spec!r}: the power cap must be positive watts, e.g. 'power_cap:300'")
        return Objective("power_cap", watts)
    if name == "balanced":
        if colon and not arg.strip():
            raise UserError(f"objective {spec!r}: give a slack after the colon, e.g. 'balanced:0.05', or none")
        slack = _number(spec, arg, "the slack", "balanced:0.05") if colon else DEFAULT_BALANCED_SLACK
        if not 0 <= slack < 10:
            raise UserError(f"objective {spec!r}: slack must be a fraction in [0, 10), such as 0.05")
        return Objective("balanced", slack)
    if colon:
        raise UserError(f"objective {spec!r}: {name} takes no argument")
    return Objective(name)


def parse_mode(name: str) -> str:
    """auto | predict | verify | exhaustive, in any case (ValueError else)."""
    md = name.strip().lower() if isinstance(name, str) else name
    if md not in MODES:
        raise UserError(f"unknown mode {name!r}; choose one of {', '.join(MODES)}")
    return md


_objective_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("gpperf_objective", default=None)
_mode_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("gpperf_mode", default=None)
_env: dict[str, str] = {}


@contextlib.contextmanager
def objective(spec: str) -> Iterator[Objective]:
    """`with gpperf_torch.objective("energy"):` selects for that objective inside the block (Linear too)."""
    obj = parse_objective(spec)
    token = _objective_var.set(str(obj))
    try:
        yield obj
    finally:
        _objective_var.reset(token)


@contextlib.contextmanager
def mode(name: str) -> Iterator[str]:
    """`with gpperf_torch.mode("predict"):` auto | predict (no measurement) | verify (measure cuBLAS and the
    predicted best Triton configs once per shape) | exhaustive (measure every candidate)."""
    name = parse_mode(name)
    token = _mode_var.set(name)
    try:
        yield name
    finally:
        _mode_var.reset(token)


def current_objective() -> str:
    return _objective_var.get() or _env["objective"]


def resolve_mode(md: str, on_gpu: bool) -> str:
    """`auto` made concrete: verify on a GPU, predict elsewhere (the interpreter's times mean nothing)."""
    if md == "auto":
        return "verify" if on_gpu else "predict"
    return md


def current_mode(on_gpu: bool) -> str:
    """The mode in force (the block's, else GPPERF_MODE, else auto), resolved for a GPU or not."""
    return resolve_mode(_mode_var.get() or _env["mode"], on_gpu)


def reload_env() -> None:
    """Read GPPERF_OBJECTIVE and GPPERF_MODE again (they are read once, at import and at `reset()`). A bad value
    is warned about (naming the variable and the default) and the default used: import must never fail."""
    obj = env.read("GPPERF_OBJECTIVE", "time", lambda v: str(parse_objective(v)))
    md = env.read("GPPERF_MODE", DEFAULT_MODE, parse_mode)
    _env.update(objective=obj, mode=md)


reload_env()

__all__ = [
    "DEFAULT_MODE",
    "MEASURED_MODES",
    "MODES",
    "OBJECTIVES",
    "Objective",
    "current_mode",
    "current_objective",
    "mode",
    "objective",
    "parse_mode",
    "parse_objective",
    "reload_env",
    "resolve_mode",
]
