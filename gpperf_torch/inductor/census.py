"""How a compiled graph runs its GEMMs: on Inductor's Triton templates or on extern (cuBLAS/aten) calls.

Read off the code Inductor generates (torch._inductor.utils.run_and_get_code), so it counts the same for every
configuration (plain torch.compile, max-autotune, the gpperf hook). Used by the GPU check's compile step.
"""

from __future__ import annotations

import re
from collections.abc import Callable

# Inductor's wrapper calls an extern GEMM as extern_kernels.mm / addmm / bmm / baddbmm (or _mm_plus_mm ...), and
# a template as a kernel named triton_tem_* (Triton) or cpp_fused_*mm* / a CPP template on the CPU.
_EXTERN = re.compile(r"extern_kernels\.(mm|addmm|bmm|baddbmm|_int_mm|addmm_activation)\(")
_TEMPLATE_CALL = re.compile(r"\b(triton_tem_\w+)\.run\(")


def count_gemms(code: str) -> dict:
    """{"template": n, "extern": m, "share_template": n / (n + m) or None} for one generated module."""
    extern = len(_EXTERN.findall(code))
    template = len(_TEMPLATE_CALL.findall(code))
    total = extern + template
    return {"template": template, "extern": extern, "share_template": (template / total) if total else None}


def run_and_count(fn: Callable, *args, **kwargs):
    """(fn's result, count_gemms over every module Inductor generated while running it: compile happens here)."""
    from torch._inductor.utils import run_and_get_code

    result, codes = run_and_get_code(fn, *args, **kwargs)
    counts = [count_gemms(c) for c in codes]
    template = sum(c["template"] for c in counts)
    extern = sum(c["extern"] for c in counts)
    total = template + extern
    return result, {"template": template, "extern": extern, "share_template": template / total if total else None}


__all__ = ["count_gemms", "run_and_count"]
