"""`gp.energy.measure(fn, *args, seconds=1.0, repeats=3)`: what a callable costs in energy on this GPU.

    import gpperf_torch as gp
    r = gp.energy.measure(model, x)                 # J per call, W, calls/s, spreads, SM clock, limit, throttling
    r = gp.energy.measure(graph.replay)             # a CUDA graph: replays are measured like any call
    print(r)                                        # "n/a (why)" for what could not be known

NVML's total-energy counter over `repeats` windows of `seconds` each (measure/energy_windows.py; a window runs
`fn(*args)` back to back, synchronised per batch). Without a GPU or a counter the energy figures are None with the
reason in `unknown` (never zero), and calls/s comes from the wall clock. Never inside a CUDA-graph capture or a
torch.compile / torch.jit trace: a RuntimeError says so (measure outside, e.g. pass `graph.replay`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .measure.energy import EnergyMeter
from .measure.energy_windows import CallEnergy, measure_callable
from .selection import energy_verify, verify


def _device(args: tuple, device: torch.device | str | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    for a in args:
        if isinstance(a, torch.Tensor):
            return a.device
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def measure(
    fn: Callable[..., object],
    *args,
    seconds: float = 1.0,
    repeats: int = 3,
    device: torch.device | str | None = None,
    meter: EnergyMeter | None = None,
    **kwargs,
) -> CallEnergy:
    """J per call, average W, calls/s and their spread across `repeats` windows of `seconds`, the SM clock, the
    power limit and whether the GPU throttled (clock-event reasons, e.g. the power cap) while `fn(*args,
    **kwargs)` ran. `device`: the GPU (default: the first tensor argument's, else the current one); `meter`: an
    energy meter to use instead of NVML's (tests)."""
    why = verify.cannot_measure_now()
    if why:
        raise RuntimeError(f"gp.energy.measure cannot run {why}: measure outside it (for a CUDA graph, pass "
                           "graph.replay after the capture)")  # fmt: skip
    dev = _device(args, device)
    cuda = dev.type == "cuda"
    m = meter or energy_verify.meter_for(dev)
    name = torch.cuda.get_device_name(dev) if cuda else "cpu"
    return measure_callable(lambda: fn(*args, **kwargs), m, seconds=seconds, repeats=repeats,
                            sync=torch.cuda.synchronize if cuda else None, device=name)  # fmt: skip


__all__ = ["CallEnergy", "measure"]
