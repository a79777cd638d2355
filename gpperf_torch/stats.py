"""What ran: count the GEMMs the op sent to a Triton config and to torch.matmul, and, on the Triton interpreter,
run each distinct GEMM once on the Triton config selection would use on a GPU and check it against float64.

    with gpperf_torch.stats.counting() as counts:
        model(x)
    print(counts.summary())   # "GEMMs: 6 ran Triton, 24 ran torch.matmul (the dispatch chose ...); kernel checked ..."

Why: on a CPU the dispatch sends nearly every GEMM to torch.matmul (the model predicts cuBLAS faster for small
shapes, host cost included), so a model run there says nothing about the kernel. With `check` on (the default
under the interpreter) the kernel runs anyway, once per distinct GEMM (shape, dtype, layout, bias, objective):
on the op's own output where the op ran Triton, else on `selector.triton_pick`'s config with the same operands;
both are compared with a float64 matmul of the same inputs (per-dtype tolerances, atol growing with sqrt(K)).
The op's own result is never changed.

Counting is process-wide (every thread's GEMMs count) and costs one list check per GEMM while no counter is on.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor

from . import kernels, ops
from .selection import selector
from .selection.state import max_shared_memory

logger = logging.getLogger(__name__)

# rtol covers rounding of the output to the dtype; atol covers fp32 accumulation, growing like sqrt(K) for
# random inputs; TF32 rounds the inputs to 10 mantissa bits (the values tests/helpers.py checks the kernel with).
_RTOL = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float32: 1e-5}
_ATOL_PER_SQRT_K = {torch.float16: 1e-3, torch.bfloat16: 8e-3, torch.float32: 1e-5}
_TF32_RTOL = _TF32_ATOL_PER_SQRT_K = 2e-3


def tolerances(dtype: torch.dtype, k: int, tf32: bool = False) -> tuple[float, float]:
    """(rtol, atol) of the kernel against a float64 matmul of the same inputs."""
    scale = max(1.0, math.sqrt(k))
    if tf32 and dtype == torch.float32:
        return _TF32_RTOL, _TF32_ATOL_PER_SQRT_K * scale
    return _RTOL[dtype], _ATOL_PER_SQRT_K[dtype] * scale


@dataclass
class Counts:
    """GEMM calls by backend, and the float64 checks of the kernel made while counting."""

    triton: int = 0  # calls the op computed with a Triton config
    torch: int = 0  # calls the op computed with torch.matmul (cuBLAS on a GPU)
    checked: int = 0  # distinct GEMMs whose Triton result was compared with float64
    extra_runs: int = 0  # of those, how many ran the Triton pick beside a torch.matmul dispatch (check only)
    max_err: float = 0.0  # the largest |kernel - float64| / (atol + rtol |float64|) seen (<= 1: within tolerance)
    failures: list[str] = field(default_factory=list)  # GEMMs outside tolerance or whose kernel raised
    check: bool = False
    _seen: set = field(default_factory=set, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def kernel_runs(self) -> int:
        """Triton kernel launches: the op's own plus the check's."""
        return self.triton + self.extra_runs

    def summary(self) -> str:
        """What ran, in a line: Triton kernel runs (the dispatch's and the check's) and torch.matmul's, then what
        the dispatch chose and the float64 check's verdict; a second line where the dispatch chose no Triton
        config (results compared with plain PyTorch are then torch's against torch's, not a check of the kernel)."""
        s = (
            f"GEMMs: {self.kernel_runs} ran Triton, {self.torch} ran torch.matmul (the dispatch chose Triton for"
            f" {self.triton}, torch.matmul for {self.torch}"
        )
        if self.check:
            s += (
                f"; {self.extra_runs} ran on the Triton config a GPU would use beside torch.matmul's dispatch);"
                f" kernel checked against float64 on {self.checked} distinct GEMMs: "
            )
            s += (
                f"all within tolerance (worst {self.max_err:.2g} of it)"
                if self.ok
                else "FAILED: " + "; ".join(self.failures[:3])
            )
        else:
            s += ")"
        if self.triton == 0 and self.torch:
            s += (
                "\n(every GEMM of the run itself was torch.matmul's: differences against plain PyTorch compare torch"
                " with torch" + ("; the float64 check above is the kernel's)" if self.checked else ")")
            )
        return s

    def __call__(self, a: Tensor, b: Tensor, bias: Tensor | None, choice, out: Tensor, objective: str | None) -> None:
        with self._lock:
            if choice is None:
                self.torch += 1
            else:
                self.triton += 1
            if not self.check or a.dtype not in _RTOL:
                return
            key = (tuple(a.shape), tuple(b.shape), a.stride(-1) == 1, b.stride(-1) == 1, a.dtype, bias is not None,
                   str(a.device), objective)  # fmt: skip
            if key in self._seen:
                return
            self._seen.add(key)
        self._check(a, b, bias, choice, out, objective)

    def _check(self, a, b, bias, choice, out, objective) -> None:
        what = f"{tuple(a.shape)} @ {tuple(b.shape)} {str(a.dtype).removeprefix('torch.')}"
        if choice is None:
            if not (a.is_cuda or kernels.interpreting()):
                return  # no kernel runs on a CPU without the interpreter
            cfg = selector.triton_pick(a, b, objective)
            if cfg is None:
                return
            what += f" on {cfg.key}"
            try:
                out = torch.full_like(out, math.nan)  # poisoned: an element the kernel leaves unwritten shows
                kernels.launch(a, b, out, cfg=cfg, max_shared_memory=max_shared_memory(a.device), bias=bias)
            except Exception as e:  # noqa: BLE001 - a kernel failure is what this check reports
                with self._lock:
                    self.checked += 1
                    self.extra_runs += 1
                    self.failures.append(f"{what}: {type(e).__name__}: {e}")
                return
            extra = 1
        else:
            what += f" on {choice.key}"
            extra = 0
        ref = torch.matmul(a.detach().double().cpu(), b.detach().double().cpu())
        if bias is not None:
            ref = ref + bias.detach().double().cpu()
        tf32 = a.dtype == torch.float32 and kernels.tf32_allowed()
        rtol, atol = tolerances(a.dtype, a.shape[-1], tf32)
        got = out.detach().double().cpu()
        ratio = ((got - ref).abs() / (atol + rtol * ref.abs())).max().item() if got.numel() else 0.0
        with self._lock:
            self.checked += 1
            self.extra_runs += extra
            if not math.isfinite(ratio) or ratio > 1.0:
                self.failures.append(f"{what}: {ratio:.2f}x the tolerance (rtol {rtol:g}, atol {atol:g})")
            else:
                self.max_err = max(self.max_err, ratio)


@contextlib.contextmanager
def counting(check: bool | None = None) -> Iterator[Counts]:
    """Count the GEMMs the op computes inside the block, by backend.

    check: run each distinct GEMM's Triton kernel once and compare it with float64 (None: on the Triton
    interpreter only, where the dispatch otherwise leaves the kernel unused; on a GPU pass True to check too).
    """
    counts = Counts(check=kernels.interpreting() if check is None else bool(check))
    ops.reporters.append(counts)
    try:
        yield counts
    finally:
        ops.reporters.remove(counts)


__all__ = ["Counts", "counting", "tolerances"]
