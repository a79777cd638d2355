"""The compile path: Inductor's own matmul template under `torch.compile`, its config chosen per GEMM by the model.

    import gpperf_torch as gp
    gp.inductor.install()              # verify on a GPU: cuBLAS + the top predicted templates, Inductor times them
    gp.inductor.install("predict")     # one choice per GEMM, nothing benchmarked
    with gp.inductor.enabled("predict"):
        torch.compile(model)(x)

Owns everything that touches `torch._inductor` (no other room may): the policy (`policy`: which of the template
configs Inductor offers for a GEMM to keep, ranked by the model under the op's dispatch rules with the compile
path's costs, `costs`), the list of configs Inductor offers (`templates`), the replay of that policy on measured
data (`replay`, for `gpperf-torch eval --backend inductor`), and the hook that installs the policy into Inductor
(`hook`: the InductorChoices subclass; `gemm`: what it reads off a GEMM being lowered; `switch`: turning it on
and off, process-wide). docs/inductor.md has the design.

It sits above selection (it scores through the selector's state and ranking) and below the front and the CLI:
`gpperf_torch.explain(..., backend="inductor")` and `gpperf-torch select/eval --backend inductor` call it, and
nothing below imports it (tests/test_import_cycles.py). Importing this package imports no torch._inductor module:
that happens on first use, so the op path keeps working on a torch whose internals differ.
"""

from __future__ import annotations

from .settings import current, installed, uuid
from .switch import HookUnavailableError, enabled, install, uninstall

__all__ = ["HookUnavailableError", "current", "enabled", "install", "installed", "uninstall", "uuid"]
