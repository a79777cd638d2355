"""torch.compile: Inductor's own matmul template, its config chosen per GEMM by gpperf's model (docs/inductor.md).

    import gpperf_torch as gp
    gp.inductor.install()              # verify on a GPU: cuBLAS + the top predicted templates, Inductor times them
    gp.inductor.install("predict")     # one choice per GEMM, nothing benchmarked
    with gp.inductor.enabled("predict"):
        torch.compile(model)(x)

Torch internals live in this room only (hook.py, gemm.py); importing it does not import torch._inductor.
"""

from __future__ import annotations

from .install import HookUnavailableError, current, enabled, install, installed, uninstall, uuid

__all__ = ["HookUnavailableError", "current", "enabled", "install", "installed", "uninstall", "uuid"]
