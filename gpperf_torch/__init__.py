"""gpperf-torch: matmul that picks its own Triton tile config per shape, for speed or for energy.

import gpperf_torch
c = gpperf_torch.matmul(a, b)                 # tile config chosen by the predictor for this shape
with gpperf_torch.objective("energy"):        # or "edp", "balanced", "power_cap:300"
    y = gpperf_torch.patch(model)(x)          # every nn.Linear goes through the op
"""

from __future__ import annotations

from . import kernels
from .errors import DeviceMismatchError, DtypeError, ModelError, ShapeError
from .kernels import TileConfig, candidate_space
from .nn import Linear, patch, record_shapes, recording, unpatch
from .ops import matmul
from .selector import explain, mode, objective, set_model

__version__ = "0.1.0"

__all__ = [
    "DeviceMismatchError",
    "DtypeError",
    "Linear",
    "ModelError",
    "ShapeError",
    "TileConfig",
    "candidate_space",
    "explain",
    "kernels",
    "matmul",
    "mode",
    "objective",
    "patch",
    "record_shapes",
    "recording",
    "set_model",
    "unpatch",
]


def tune(*args, **kwargs):
    """Offline tuning run (see `gpperf_torch.tune.tune`); imported lazily, it is not needed at run time."""
    from .tune import tune as _tune

    return _tune(*args, **kwargs)
