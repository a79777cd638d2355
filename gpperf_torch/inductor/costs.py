"""The compile path's costs: what the dispatch policy adds to each candidate's predicted kernel time under
`torch.compile`, where the op's eager costs do not apply.

1. No Python host cost per call. The op adds a per-call host cost to each backend (dispatch.DEFAULT_HOST_MS or
   the GPU check's measurement): a Triton launch from Python costs more than a cuBLAS call. Compiled, Inductor's
   generated wrapper launches the template and calls the aten extern alike, with no Python dispatch per GEMM.
   Both host costs are zero here, as in `gpperf-torch eval` (the data are kernel times).
2. The epilogue a template fuses and cuBLAS does not. Inductor fuses pointwise work that follows a GEMM into the
   template's epilogue (computed in registers before the store). With the extern (aten mm/addmm: cuBLAS):
   - a bias (addmm) is fused by cuBLAS (beta * C), so it costs nothing extra on either path;
   - an activation (or bias + activation, which Inductor then computes in one pointwise kernel after an aten mm)
     costs one more kernel: it reads the M x N output and writes it back.
   That extra kernel is charged to the extern candidate as an additive cost, like the op's host cost (the
   model's spread does not apply to it): the policy's `host_ms` of torch carries it, triton's is zero.

The extra kernel is modelled, not measured (no GPU on the machine this was written on): the larger of
- the output pass at the device's datasheet DRAM bandwidth (DeviceInfo.mem_bandwidth_gbs: H100 SXM 3350 GB/s,
  A100 SXM 80 GB 2039 GB/s): 2 x batch x M x N x element size bytes; and
- the model's time floor (model.json `time_floor_ms`): the fastest kernel its training data timed on that GPU,
  with the same benchmarker Inductor's autotuner uses (H100 4.9 us, A100 6.3 us): a kernel launched in a stream
  costs at least that much GPU time as that harness measures it.
Both terms are lower bounds (datasheet bandwidth is not reached by a pointwise kernel; launch and transfer add
rather than overlap), so the saving credited to a template is never more than the real one: the estimate can
only lean towards the extern, Inductor's own default. A GPU check of the compile path measures the real thing.
"""

from __future__ import annotations

from dataclasses import replace

from ..errors import UserError
from ..kernels import elem_size
from ..measure.device import DeviceInfo
from ..policy.dispatch import NO_HOST_COST, Policy

EPILOGUES = (None, "bias", "act", "bias_act")
UNFUSED_BY_CUBLAS = ("act", "bias_act")  # the epilogues that cost the extern one more pointwise kernel


def check_epilogue(epilogue: str | None) -> str | None:
    if epilogue not in EPILOGUES:
        raise UserError(f"epilogue must be one of {EPILOGUES} (None: a plain mm), got {epilogue!r}")
    return epilogue


def unfused_epilogue_ms(m: int, n: int, batch: int, dtype: str, epilogue: str | None, info: DeviceInfo,
                        floor_ms: float | None) -> float:  # fmt: skip
    """Milliseconds the extern (cuBLAS) pays for the epilogue a template fuses: one pointwise kernel over the
    output for an activation, nothing for a bias or no epilogue (module docstring)."""
    if check_epilogue(epilogue) not in UNFUSED_BY_CUBLAS:
        return 0.0
    out_bytes = int(batch) * int(m) * int(n) * elem_size(dtype)
    pass_ms = 2.0 * out_bytes / (float(info.mem_bandwidth_gbs) * 1e9) * 1e3  # read + write, at datasheet bandwidth
    return max(pass_ms, float(floor_ms or 0.0))


def compile_policy(base: Policy, extern_extra_ms: float) -> Policy:
    """The op's dispatch policy (z, margin, ties, unaligned floor) with the compile path's costs: no host cost,
    and the extern's unfused epilogue as its additive cost."""
    host = {**NO_HOST_COST, "torch": float(extern_extra_ms)}
    source = "compile path: no host cost per call"
    if extern_extra_ms > 0:
        source += f"; torch pays the unfused epilogue kernel ({extern_extra_ms * 1e3:.1f} us, inductor/costs.py)"
    return replace(base, host_ms=host, host_source=source)


__all__ = ["EPILOGUES", "check_epilogue", "compile_policy", "unfused_epilogue_ms"]
