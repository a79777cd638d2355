"""The `gpperf::mm` custom op and the broadcasting front `matmul()`.

The op takes 2-D (M, K) @ (K, N) or 3-D batched (B, M, K) @ (B, K, N) operands and picks a tile config per
shape at run time (inside the op, so `torch.compile` sees one opaque call and the choice follows the actual
shape). Its backward GEMMs go through the same op, so they are tile-selected too.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from . import kernels
from .errors import DeviceMismatchError, DtypeError, ShapeError
from .kernels import TileConfig

logger = logging.getLogger(__name__)

_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _triton_errors() -> tuple[type[BaseException], ...]:
    """Triton's compile/resource errors (one base class in recent Triton, separate classes before)."""
    try:
        from triton.errors import TritonError

        return (TritonError,)
    except ImportError:
        from triton.compiler.errors import CompilationError
        from triton.runtime.errors import OutOfResources

        return (CompilationError, OutOfResources)


_TRITON_ERRORS = _triton_errors()
# Callbacks (a, b) run on every GEMM the op computes; `gpperf_torch.nn.recording` adds one.
observers: list = []


def _torch_mm(a: Tensor, b: Tensor, bias: Tensor | None) -> Tensor:
    """torch.matmul (cuBLAS on a GPU), with the bias fused where torch can (addmm)."""
    if bias is None:
        return torch.matmul(a, b)
    if a.dim() == 2:
        return torch.addmm(bias.to(a.dtype), a, b)
    return torch.matmul(a, b) + bias.to(a.dtype)


def _run(a: Tensor, b: Tensor, bias: Tensor | None, config: str | None, objective: str | None) -> Tensor:
    """Select (unless forced) and launch. Shared by the CUDA kernel and the interpreted CPU kernel."""
    from . import selector

    cfg = TileConfig.from_key(config) if config else None
    choice = selector.choose(a, b, cfg, objective)
    if choice is None:  # the model predicts torch.matmul (cuBLAS) is better for this objective
        return _torch_mm(a, b, bias)
    try:
        return kernels.launch(a, b, cfg=choice, max_shared_memory=selector.max_shared_memory(a.device), bias=bias)
    except _TRITON_ERRORS as e:
        shape = f"{tuple(a.shape)} @ {tuple(b.shape)} {a.dtype} on {a.device}"
        if cfg is not None:
            raise RuntimeError(f"the forced config {cfg.key} does not compile or launch for {shape}: {e}") from e
        if a.device.type != "cuda":  # the interpreter: a kernel bug must fail loudly, never be papered over
            raise
        # A selected config this GPU cannot run (resources, compiler): torch.matmul for this shape from now on.
        selector.replace_choice(a, b, objective, None, reason=f"{choice.key} failed for {shape}: {e}")
        return _torch_mm(a, b, bias)


def _compute(
    a: Tensor, b: Tensor, bias: Tensor | None = None, config: str | None = None, objective: str | None = None
) -> Tensor:
    """C = A @ B (+ bias over the last dimension) for 2-D or 3-D (batched) A, B; `config` forces a TileConfig
    key, `objective` overrides the selection objective."""
    for observe in observers:
        observe(a, b)
    if a.device.type == "cpu":
        if kernels.interpreting() and a.dtype in _KERNEL_DTYPES:
            return _run(a, b, bias, config, objective)
        return _torch_mm(a, b, bias)
    if a.dtype not in _KERNEL_DTYPES:  # float64 on CUDA: torch.matmul computes it (documented)
        return _torch_mm(a, b, bias)
    return _run(a, b, bias, config, objective)


mm = torch.library.custom_op("gpperf::mm", _compute, mutates_args=(), device_types=("cuda", "cpu"))


@mm.register_fake
def _mm_fake(
    a: Tensor, b: Tensor, bias: Tensor | None = None, config: str | None = None, objective: str | None = None
) -> Tensor:
    torch._check(a.dim() == b.dim() and a.dim() in (2, 3), lambda: "gpperf::mm takes 2-D or 3-D operands")
    torch._check(a.shape[-1] == b.shape[-2], lambda: f"inner dimensions differ: {a.shape} @ {b.shape}")
    if bias is not None:
        torch._check(bias.dim() == 1 and bias.shape[0] == b.shape[-1], lambda: f"bias {bias.shape} for N={b.shape[-1]}")
    return a.new_empty((*a.shape[:-1], b.shape[-1]))


def _setup_context(ctx, inputs, output) -> None:
    a, b, bias, _config, objective = inputs
    ctx.save_for_backward(a, b)
    ctx.objective = objective
    ctx.bias_dtype = None if bias is None else bias.dtype


def _backward(ctx, grad: Tensor):
    a, b = ctx.saved_tensors
    grad_a = grad_b = grad_bias = None
    # dA = dC @ B^T and dB = A^T @ dC: transposed views, no copies; a forced forward config does not carry
    # over (the backward shapes differ), the objective does.
    if ctx.needs_input_grad[0]:
        grad_a = _mm(grad, b.transpose(-1, -2), None, None, ctx.objective)
    if ctx.needs_input_grad[1]:
        grad_b = _mm(a.transpose(-1, -2), grad, None, None, ctx.objective)
    if ctx.bias_dtype is not None and ctx.needs_input_grad[2]:
        grad_bias = grad.reshape(-1, grad.shape[-1]).sum(0).to(ctx.bias_dtype)
    return grad_a, grad_b, grad_bias, None, None


mm.register_autograd(_backward, setup_context=_setup_context)


# ---- the public front ------------------------------------------------------------------------------
def _mm(a: Tensor, b: Tensor, bias: Tensor | None, config: str | None, objective: str | None) -> Tensor:
    """Call the op, or, in plain eager inference, its implementation directly.

    The custom op's Python dispatch costs ~25 us per call, more than a small GEMM takes on a GPU. Where the op
    adds nothing (no autograd to record, not tracing, plain tensors) the same implementation runs directly;
    under torch.compile/export, autograd or tensor subclasses (FakeTensor, functionalization) the op is used.
    """
    if (
        type(a) is Tensor
        and type(b) is Tensor
        and (bias is None or (type(bias) is Tensor and not bias.requires_grad))
        and not (torch.is_grad_enabled() and (a.requires_grad or b.requires_grad))
        and not torch.compiler.is_compiling()
    ):
        return _compute(a, b, bias, config, objective)
    return mm(a, b, bias, config, objective)


def _check(a: Tensor, b: Tensor) -> None:
    if not isinstance(a, Tensor) or not isinstance(b, Tensor):
        raise TypeError(f"matmul expects tensors, got {type(a).__name__} and {type(b).__name__}")
    if a.dim() == 0 or b.dim() == 0:
        raise ShapeError(
            f"both arguments to matmul need to be at least 1D, but they are {a.dim()}D and {b.dim()}D "
            f"(shapes {tuple(a.shape)} and {tuple(b.shape)}); use a * b for scalars"
        )
    if a.device != b.device:
        raise DeviceMismatchError(
            f"expected both tensors on the same device, got a on {a.device} and b on {b.device}; move one with .to()"
        )
    if a.dtype != b.dtype:
        raise DtypeError(
            f"expected both tensors to have the same dtype, got {a.dtype} and {b.dtype} "
            f"(shapes {tuple(a.shape)} and {tuple(b.shape)}); cast one, e.g. b.to(a.dtype)"
        )
    if not a.dtype.is_floating_point:
        raise DtypeError(
            f"gpperf_torch.matmul supports float16, bfloat16, float32 (and float64 via torch), got {a.dtype}; "
            "use torch.matmul for integer or complex tensors"
        )
    ka = a.shape[-1]
    kb = b.shape[0] if b.dim() == 1 else b.shape[-2]
    if ka != kb:
        raise ShapeError(
            f"inner dimensions differ: a{tuple(a.shape)} @ b{tuple(b.shape)} "
            f"({ka} != {kb}); matmul needs a.shape[-1] == b.shape[-2]"
        )
    if a.dim() > 2 and b.dim() > 2:
        try:
            torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
        except RuntimeError:
            raise ShapeError(f"batch dimensions do not broadcast: a{tuple(a.shape)} @ b{tuple(b.shape)}") from None


def _autocast(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Under torch.autocast, floating inputs go to its dtype, as torch.matmul's do (the custom op itself is
    unknown to autocast, and the eager fast path skips the dispatcher)."""
    if isinstance(a, Tensor) and isinstance(b, Tensor) and a.device == b.device:
        dev = a.device.type
        if dev in ("cuda", "cpu") and torch.is_autocast_enabled(dev):
            dt = torch.get_autocast_dtype(dev)
            # torch's rule: floating tensors other than float64 are cast
            if a.dtype.is_floating_point and a.dtype not in (dt, torch.float64):
                a = a.to(dt)
            if b.dtype.is_floating_point and b.dtype not in (dt, torch.float64):
                b = b.to(dt)
    return a, b


def matmul(a: Tensor, b: Tensor, *, config: TileConfig | str | None = None, objective: str | None = None) -> Tensor:
    """`torch.matmul` semantics (1-D, 2-D, N-D broadcast) with per-shape tile selection.

    config: force a TileConfig (or its key); invalid for the inputs or device -> ValueError.
    objective: "time" (default), "energy", "edp", "balanced", "power_cap:<watts>"; default from
    `gpperf_torch.objective(...)` or the GPPERF_OBJECTIVE environment variable.
    """
    a, b = _autocast(a, b)
    _check(a, b)
    key: str | None = None
    if config is not None:
        cfg = config if isinstance(config, TileConfig) else TileConfig.from_key(config)
        if a.dtype in _KERNEL_DTYPES:
            from .selector import max_shared_memory

            reason = kernels.check_config(
                cfg, elem_size=kernels.elem_size(a.dtype), max_shared_memory=max_shared_memory(a.device)
            )
            if reason is not None:
                raise ValueError(f"config {cfg.key} cannot run for {a.dtype} on {a.device}: {reason}")
        key = cfg.key
    if objective is not None:
        from .selector import parse_objective

        parse_objective(objective)  # fail here, at the call, not deep inside the op

    if a.dim() == 2 and b.dim() == 2:  # the common case, without reshapes
        return _mm(a, b, None, key, objective)
    if a.dim() == 1 and b.dim() == 1:
        return _mm(a.unsqueeze(0), b.unsqueeze(1), None, key, objective).reshape(())
    a_vec, b_vec = a.dim() == 1, b.dim() == 1
    a2 = a.unsqueeze(0) if a_vec else a
    b2 = b.unsqueeze(1) if b_vec else b
    M, K = a2.shape[-2:]
    N = b2.shape[-1]

    if b2.dim() == 2:
        # Fold a's batch dimensions into M: one 2-D GEMM. (reshape is a view whenever the layout allows.)
        batch = a2.shape[:-2]
        out = _mm(a2.reshape(-1, K), b2, None, key, objective).reshape(*batch, M, N)
    elif a2.dim() == 2:
        batch = b2.shape[:-2]
        bb = b2.reshape(-1, K, N)
        out = _mm(a2.expand(bb.shape[0], M, K), bb, None, key, objective).reshape(*batch, M, N)
    else:
        batch = torch.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
        a3 = a2.expand(*batch, M, K).reshape(-1, M, K)
        b3 = b2.expand(*batch, K, N).reshape(-1, K, N)
        out = _mm(a3, b3, None, key, objective).reshape(*batch, M, N)
    if a_vec:
        out = out.squeeze(-2)
    if b_vec:
        out = out.squeeze(-1)
    return out


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """`torch.nn.functional.linear` through the op: ``x @ weight^T + bias``, the bias added in the kernel's
    epilogue (one launch, like cuBLAS's addmm), the weight read as a transposed view (no copy)."""
    autocast_on = x.device.type in ("cuda", "cpu") and torch.is_autocast_enabled(x.device.type)
    x, w = _autocast(x, weight)
    _check(x, w.t())
    if bias is not None and autocast_on:
        bias = bias.to(x.dtype)
    out = _mm(x.reshape(-1, x.shape[-1]), w.t(), bias, None, None)
    return out.reshape(*x.shape[:-1], w.shape[0])
