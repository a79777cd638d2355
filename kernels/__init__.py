"""Pure-Triton kernels of gpperf-torch (installed as ``gpperf_torch.kernels``).

Owns the `@triton.jit` matmul and its wrapper (`matmul`), `TileConfig` and the candidate space (`configs`), the
lean launcher (`launcher`), the alignment facts a launch passes (`align`) and the cross-compiled facts of each
config (`crosscompile`, `facts`, `build_facts`).
Imports no other part of gpperf_torch, nor torch.library, ONNX or NVML.
"""

from .configs import (
    CANDIDATE_GRID,
    CONFIG_FIELDS,
    DEFAULT_CONFIG,
    SMALL_TILE_GRID,
    SPLIT_K_GRID,
    TileConfig,
    candidate_space,
    check_config,
    elem_size,
    is_valid,
)
from .matmul import NotCompiledError, check_inputs, interpreting, launch, tf32_allowed

__all__ = [
    "CANDIDATE_GRID",
    "CONFIG_FIELDS",
    "DEFAULT_CONFIG",
    "NotCompiledError",
    "SMALL_TILE_GRID",
    "SPLIT_K_GRID",
    "TileConfig",
    "candidate_space",
    "check_config",
    "check_inputs",
    "elem_size",
    "interpreting",
    "is_valid",
    "launch",
    "tf32_allowed",
]
