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

from . import energy, kernels, stats
from .errors import ConfigError, DeviceMismatchError, DtypeError, ModelError, ShapeError, UserError
from .kernels import TileConfig, candidate_space
from .nn import Linear, patch, record_shapes, recording, unpatch
from .ops import linear, matmul
from .selection.explain import explain as _explain_op
from .selection.objectives import mode, objective
from .selection.selector import flush, verify_stats
from .selection.state import set_model
from .warmup import format_report as format_warmup
from .warmup import warmup

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
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
    "stats",
    "unpatch",
    "verify_stats",
    "warmup",
]


_EXPLAIN_BACKENDS = ("op", "inductor")


def explain(m: int, n: int, k: int, *, backend: str = "op", **kwargs) -> list[dict]:
    """The ranked candidates of one GEMM, the choice first, with why (dicts: rank, backend, config, predicted
    time, ...; the first adds why, verify_candidates, the policy).

    backend="op" (default): the custom op's choice among its Triton configs and torch.matmul
    (selection/explain.py; keywords dtype, a_trans, b_trans, batch, objective, gpu, device). backend="inductor":
    what the torch.compile path chooses among Inductor's own mm template configs and the aten extern
    (inductor/policy.py; also epilogue=None|"bias"|"act"|"bias_act", mode="predict"|"verify", top_k).
    """
    if backend == "op":
        return _explain_op(m, n, k, **kwargs)
    if backend == "inductor":
        from .inductor.policy import explain as explain_inductor

        return explain_inductor(m, n, k, **kwargs)
    raise UserError(f"backend must be one of {_EXPLAIN_BACKENDS}, got {backend!r}")


def __getattr__(name: str):
    # `gpperf_torch.tune(...)`: the offline tuning run (tuning/tune.py), imported on first use: the op never needs
    # the tuner, and importing it here would make every `import gpperf_torch` pay for it.
    if name == "tune":
        from .tuning.tune import tune

        return tune
    # `gpperf_torch.inductor.install()`: the torch.compile hook (inductor/), imported on first use like the tuner;
    # importing it imports no torch._inductor module either (that waits for install()).
    if name == "inductor":
        import importlib

        return importlib.import_module(".inductor", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
