"""What a tuning process needs before it can measure: a GPU, or Triton in interpreter mode."""

from __future__ import annotations

import logging
import os
import sys

logger = logging.getLogger(__name__)


class NoCudaError(RuntimeError):
    """Tuning needs a GPU unless interpreting."""


NO_CUDA_MESSAGE = (
    "gpperf-torch tune: no CUDA device found. Tuning measures GPU kernels; run it on a machine with an "
    "NVIDIA GPU, or pass --interpret to run the same pipeline on tiny shapes through the Triton "
    "interpreter (wall-clock times, no energy, rows marked interpreted=1)."
)


class InterpreterSetupError(RuntimeError):
    """Triton was imported without TRITON_INTERPRET=1, so its kernels cannot run on the CPU."""


def _interpret_env_set() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _ensure_interpreter(interpret: bool) -> None:
    """For `interpret`, check that Triton runs interpreted: that is fixed when triton is first imported
    (its own @jit helpers such as tl.cdiv are built then), so setting the variable later is too late."""
    if not interpret:
        return
    mod = sys.modules.get("gpperf_torch.kernels.matmul")
    compiled = mod is not None and type(mod._matmul_kernel).__name__ != "InterpretedFunction"
    if compiled or ("triton" in sys.modules and not _interpret_env_set()):
        raise InterpreterSetupError(
            "interpret=True needs TRITON_INTERPRET=1 in the environment before triton is imported (importing "
            "gpperf_torch imports it); run e.g. `TRITON_INTERPRET=1 python your_script.py`"
        )
    os.environ["TRITON_INTERPRET"] = "1"
