"""gpperf-torch: matmul that picks its own Triton tile config per shape, for speed or for energy.

import gpperf_torch
c = gpperf_torch.matmul(a, b)                 # tile config chosen by the predictor for this shape
with gpperf_torch.objective("energy"):        # or "edp", "balanced", "power_cap:300"
    y = gpperf_torch.patch(model)(x)          # every nn.Linear goes through the op
gpperf_torch.energy.measure(model, x)         # J per call, W, calls/s, clocks, throttling (NVML)
"""

from __future__ import annotations

import os as _os

# Installed, `gpperf_torch.kernels` is the top-level `kernels/` folder of the source tree (setuptools
# package-dir). Run from a plain checkout (PYTHONPATH=., a GPU machine without pip access), the same folder is
# found through the package path, so the import below works both ways.
_here = _os.path.dirname(_os.path.abspath(__file__))
if not _os.path.isdir(_os.path.join(_here, "kernels")) and _os.path.isfile(
    _os.path.join(_os.path.dirname(_here), "kernels", "__init__.py")
):
    __path__.append(_os.path.dirname(_here))

from . import energy, kernels
from .errors import DeviceMismatchError, DtypeError, ModelError, ShapeError
from .kernels import TileConfig, candidate_space
from .nn import Linear, patch, record_shapes, recording, unpatch
from .ops import linear, matmul
from .selection.explain import explain
from .selection.objectives import mode, objective
from .selection.selector import flush, verify_stats
from .selection.state import set_model
from .warmup import format_report as format_warmup
from .warmup import warmup

__version__ = "0.1.0"

__all__ = [
    "DeviceMismatchError",
    "DtypeError",
    "Linear",
    "ModelError",
    "ShapeError",
    "TileConfig",
    "candidate_space",
    "energy",
    "explain",
    "flush",
    "format_warmup",
    "kernels",
    "linear",
    "matmul",
    "mode",
    "objective",
    "patch",
    "record_shapes",
    "recording",
    "set_model",
    "unpatch",
    "verify_stats",
    "warmup",
]


def __getattr__(name: str):
    # `gpperf_torch.tune(...)`: the offline tuning run (tuning/tune.py), imported on first use: the op never needs
    # the tuner, and importing it here would make every `import gpperf_torch` pay for it.
    if name == "tune":
        from .tuning.tune import tune

        return tune
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
