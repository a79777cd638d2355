"""The `gpperf::mm` custom op and the broadcasting front `matmul()`.

The op takes 2-D (M, K) @ (K, N) or 3-D batched (B, M, K) @ (B, K, N) operands and picks a tile config per
shape at run time (inside the op, so `torch.compile` sees one opaque call and the choice follows the actual
shape). Its backward GEMMs go through the same op, so they are tile-selected too.
"""

from __future__ import annotations

import functools
import logging

import torch
from torch import Tensor

from . import kernels
from .errors import ConfigError, DeviceMismatchError, DtypeError, ShapeError
from .kernels import TileConfig
from .once import WarnOnce
from .selection import selector
from .selection.objectives import parse_objective
from .selection.state import max_shared_memory

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
# Callbacks (a, b, bias, choice, out, objective) run after every non-empty GEMM the op computes, with the
# TileConfig that ran (None: torch.matmul); `gpperf_torch.stats.counting` adds one.
reporters: list = []

# The per-call path reads these once (module globals: no attribute walks on every GEMM).
_KERNEL_SET = frozenset(_KERNEL_DTYPES)
_FLOATS = frozenset((*_KERNEL_DTYPES, torch.float64))
_PLAIN = (Tensor, torch.nn.Parameter)  # plain tensors: no subclass behaviour for the eager fast path to skip
_INTERPRETING = kernels.interpreting()
_HAS_CUDA = torch.cuda.is_available()
_grad_enabled = torch.is_grad_enabled
_is_compiling = torch.compiler.is_compiling
_any_autocast = torch._C._is_any_autocast_enabled
_jit_tracing = torch._C._is_tracing


def _capturing() -> bool:
    """Whether the current CUDA stream is capturing a graph (CPU-only torch has no such state)."""
    return _HAS_CUDA and torch.cuda.is_current_stream_capturing()


@functools.lru_cache(maxsize=1024)
def _config(key: str) -> TileConfig:
    try:
        return TileConfig.from_key(key)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _torch_mm(a: Tensor, b: Tensor, bias: Tensor | None) -> Tensor:
    """torch.matmul (cuBLAS on a GPU), with the bias fused where torch can (addmm)."""
    if bias is None:
        return torch.matmul(a, b)
    if bias.dtype is not a.dtype:  # (checked first: .to() costs a microsecond even when it has nothing to do)
        bias = bias.to(a.dtype)
    if a.dim() == 2:
        return torch.addmm(bias, a, b)
    return torch.matmul(a, b) + bias


def _run(a: Tensor, b: Tensor, bias: Tensor | None, config: str | None, objective: str | None) -> Tensor:
    """Select (unless forced) and launch. Shared by the CUDA kernel and the interpreted CPU kernel."""
    if _capturing():
        return _run_captured(a, b, bias, config, objective)
    cfg = _config(config) if config else None
    choice = selector.choose(a, b, cfg, objective)
    if choice is None:  # the model predicts torch.matmul (cuBLAS) is better for this objective
        out = _torch_mm(a, b, bias)
        if reporters:
            _report(a, b, bias, None, out, objective)
        return out
    try:
        out = kernels.launch(a, b, cfg=choice, max_shared_memory=max_shared_memory(a.device), bias=bias, check=False)
        if reporters:
            _report(a, b, bias, choice, out, objective)
        return out
    except _TRITON_ERRORS as e:
        shape = f"{tuple(a.shape)} @ {tuple(b.shape)} {a.dtype} on {a.device}"
        if cfg is not None:
            raise RuntimeError(f"the forced config {cfg.key} does not compile or launch for {shape}: {e}") from e
        if a.device.type != "cuda":  # the interpreter: a kernel bug must fail loudly, never be papered over
            raise
        # A selected config this GPU cannot run (resources, compiler): torch.matmul for this shape from now on.
        selector.replace_choice(a, b, objective, None, reason=f"{choice.key} failed for {shape}: {e}")
        out = _torch_mm(a, b, bias)
        if reporters:
            _report(a, b, bias, None, out, objective)
        return out


def _run_captured(a: Tensor, b: Tensor, bias: Tensor | None, config: str | None, objective: str | None) -> Tensor:
    """Inside a CUDA graph capture: no selection, no compilation, only what the graph can replay.

    A shape whose choice was made before the capture, with its kernel compiled, launches that kernel (recorded in
    the graph). A shape met first inside the capture gets torch.matmul, which captures safely, with a warning
    once; a forced config that was never compiled is an error (the caller asked for that kernel)."""
    cfg = _config(config) if config else None
    shape = f"{tuple(a.shape)} @ {tuple(b.shape)} {a.dtype}"
    choice = cfg if cfg is not None else selector.cached_choice(a, b, objective)
    if choice is selector.UNSEEN:
        _warn_once(
            f"capture-unseen:{shape}",
            "gpperf: %s first met inside a CUDA graph capture, where no config may be selected; torch.matmul "
            "computes it in this graph. Run one step before capturing to use a selected config",
            shape,
        )
        return _torch_mm(a, b, bias)
    if choice is None:
        return _torch_mm(a, b, bias)
    try:
        return kernels.launch(
            a,
            b,
            cfg=choice,
            max_shared_memory=max_shared_memory(a.device),
            bias=bias,
            check=False,
            compiled_only=True,
        )
    except kernels.NotCompiledError as e:
        if cfg is not None:
            raise RuntimeError(f"forced config {cfg.key} inside a CUDA graph capture: {e}") from e
        _warn_once(f"capture-compile:{shape}", "gpperf: %s; torch.matmul computes it in this graph", e)
        return _torch_mm(a, b, bias)


_warn_once = WarnOnce(logger)
_warned = _warn_once.seen  # tests clear it


def _compute(
    a: Tensor, b: Tensor, bias: Tensor | None = None, config: str | None = None, objective: str | None = None
) -> Tensor:
    """C = A @ B (+ bias over the last dimension) for 2-D or 3-D (batched) A, B, operands already checked;
    `config` forces a TileConfig key, `objective` overrides the selection objective.

    An empty GEMM (M, N, K or the batch 0) is torch's (empty, or zeros / the bias for K = 0), never selected;
    so are float64, meta tensors, and the CPU without the interpreter."""
    nonempty = a.numel() and b.numel()
    if observers and nonempty:
        for observe in observers:
            observe(a, b)
    if nonempty and a.dtype in _KERNEL_SET and (a.is_cuda or (_INTERPRETING and a.is_cpu)):
        return _run(a, b, bias, config, objective)
    out = _torch_mm(a, b, bias)
    if reporters and nonempty:
        _report(a, b, bias, None, out, objective)
    return out


def _compute_checked(a: Tensor, b: Tensor, bias: Tensor | None = None) -> Tensor:
    """_compute for operands a straight path has checked (plain tensors, one device, 2-D, shapes that multiply):
    a kernel dtype goes to selection without asking again what the caller just asked."""
    if a.dtype in _KERNEL_SET and (_INTERPRETING or a.is_cuda) and not observers and a.numel() and b.numel():
        return _run(a, b, bias, None, None)
    return _compute(a, b, bias)


def _report(a: Tensor, b: Tensor, bias: Tensor | None, choice, out: Tensor, objective: str | None) -> None:
    for report in reporters:
        report(a, b, bias, choice, out, objective)


def _op_impl(
    a: Tensor, b: Tensor, bias: Tensor | None = None, config: str | None = None, objective: str | None = None
) -> Tensor:
    """The op's implementation: called directly (torch.ops.gpperf.mm) its operands are checked here."""
    _check_op_operands(a, b, bias)
    return _compute(a, b, bias, config, objective)


def _check_op_operands(a: Tensor, b: Tensor, bias: Tensor | None) -> None:
    if a.dim() not in (2, 3) or b.dim() != a.dim():
        raise ShapeError(
            f"gpperf::mm takes 2-D or 3-D operands of equal rank, got a{tuple(a.shape)}, b{tuple(b.shape)}"
        )
    if a.shape[-1] != b.shape[-2] or (a.dim() == 3 and a.shape[0] != b.shape[0]):
        raise ShapeError(f"gpperf::mm: shapes do not multiply: a{tuple(a.shape)} @ b{tuple(b.shape)}")
    if a.dtype != b.dtype or (bias is not None and bias.dtype != a.dtype):
        raise DtypeError(
            f"gpperf::mm: dtypes differ: a {a.dtype}, b {b.dtype}" + ("" if bias is None else f", bias {bias.dtype}")
        )
    if a.device != b.device or (bias is not None and bias.device != a.device):
        raise DeviceMismatchError(f"gpperf::mm: operands on different devices: a on {a.device}, b on {b.device}")
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != b.shape[-1]):
        raise ShapeError(f"gpperf::mm: bias must be 1-D of {b.shape[-1]} elements, got {tuple(bias.shape)}")


mm = torch.library.custom_op("gpperf::mm", _op_impl, mutates_args=(), device_types=("cuda", "cpu"))


@mm.register_fake
def _mm_fake(
    a: Tensor, b: Tensor, bias: Tensor | None = None, config: str | None = None, objective: str | None = None
) -> Tensor:
    torch._check(a.dim() == b.dim() and a.dim() in (2, 3), lambda: "gpperf::mm takes 2-D or 3-D operands")
    torch._check(a.shape[-1] == b.shape[-2], lambda: f"inner dimensions differ: {a.shape} @ {b.shape}")
    if bias is not None:
        torch._check(bias.dim() == 1 and bias.shape[0] == b.shape[-1], lambda: f"bias {bias.shape} for N={b.shape[-1]}")
        torch._check(bias.dtype == a.dtype, lambda: f"bias is {bias.dtype}, operands {a.dtype}")
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

    The custom op's Python dispatch costs ~8-25 us per call, more than a small GEMM takes on a GPU. Where the op
    adds nothing (no autograd to record, not tracing, plain tensors or parameters) the same implementation runs
    directly; under torch.compile/export, autograd or tensor subclasses (FakeTensor, functionalization) the op
    is used.
    """
    if (
        type(a) in _PLAIN
        and type(b) in _PLAIN
        and (bias is None or type(bias) in _PLAIN)
        and not (_grad_enabled() and (a.requires_grad or b.requires_grad or (bias is not None and bias.requires_grad)))
        and not _is_compiling()
    ):
        return _compute(a, b, bias, config, objective)
    return _op(a, b, bias, config, objective)


def _op(a: Tensor, b: Tensor, bias: Tensor | None, config: str | None, objective: str | None) -> Tensor:
    """The custom op. Inside it torch.jit's tracer is off, so a trace is told to the selector here: what is
    chosen while tracing stays in memory (a trace that fails leaves nothing on disk) and nothing is measured."""
    if not _is_compiling() and _jit_tracing():  # (dynamo cannot trace the tracer's flag: asked only outside it)
        with selector.tracing():
            return mm(a, b, bias, config, objective)
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
    # The straight paths: plain tensors, no options; each check here is one the general path makes too, and
    # anything unusual goes there (which names the problem).
    if config is None and objective is None and type(a) in _PLAIN and type(b) in _PLAIN:
        if a.is_cuda:  # two 2-D tensors of one kernel dtype on one GPU, eager, no autocast
            if a.ndim == 2 and b.ndim == 2 and not _is_compiling() and not _any_autocast():
                dt = a.dtype
                if (
                    b.dtype is dt
                    and dt in _FLOATS
                    and a.shape[1] == b.shape[0]
                    and b.is_cuda
                    and a.get_device() == b.get_device()
                ):
                    if _grad_enabled() and (a.requires_grad or b.requires_grad):
                        return _op(a, b, None, None, None)
                    return _compute_checked(a, b)
        elif not _INTERPRETING:
            # No kernel runs on a CPU without the interpreter: torch computes it (any rank, autograd, autocast,
            # compile alike). Only a floating dtype is checked first: torch would multiply integers.
            if not observers and not reporters and a.is_cpu and a.dtype in _FLOATS:
                try:
                    return torch.matmul(a, b)
                except RuntimeError:
                    pass
        elif a.ndim == 2 and b.ndim == 2 and a.is_cpu and b.is_cpu and not _is_compiling() and not _any_autocast():
            dt = a.dtype
            if b.dtype is dt and dt in _KERNEL_SET and a.shape[1] == b.shape[0]:  # the interpreted kernel
                if _grad_enabled() and (a.requires_grad or b.requires_grad):
                    return _op(a, b, None, None, None)
                return _compute_checked(a, b)
    return _matmul_general(a, b, config, objective)


def _matmul_general(a: Tensor, b: Tensor, config: TileConfig | str | None, objective: str | None) -> Tensor:
    a, b = _autocast(a, b)
    _check(a, b)
    key: str | None = None
    if config is not None:
        if not isinstance(config, (TileConfig, str)):
            raise TypeError(f"config must be a TileConfig or its key string, got {type(config).__name__}")
        cfg = config if isinstance(config, TileConfig) else _config(config)
        if a.dtype in _KERNEL_DTYPES:
            reason = kernels.check_config(
                cfg, elem_size=kernels.elem_size(a.dtype), max_shared_memory=max_shared_memory(a.device)
            )
            if reason is not None:
                raise ConfigError(f"config {cfg.key} cannot run for {a.dtype} on {a.device}: {reason}")
        key = cfg.key
    if objective is not None:
        parse_objective(objective)  # fail here, at the call, not deep inside the op
    if a.numel() == 0 or b.numel() == 0:
        # An empty GEMM (M, N, K or a batch of 0): torch's result (empty, or zeros for K = 0), no selection.
        return torch.matmul(a, b)

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
    epilogue (one launch, like cuBLAS's addmm), the weight read as a transposed view (no copy).

    Same contract as F.linear: one dtype for input, weight and bias (torch.autocast casts them), a bias of
    out_features elements or any shape F.linear broadcasts (e.g. (1, N))."""
    # The straight paths (a Linear layer's call): plain tensors or parameters, a 2-D weight, a (N,) bias of the
    # same dtype, one device, eager, no autocast, a non-empty GEMM.
    if not _INTERPRETING and not observers and not reporters and type(x) in _PLAIN and x.is_cpu:
        # No kernel runs on a CPU without the interpreter: F.linear computes it, after the one check F.linear
        # does not make (it accepts a 1-D weight); its own errors go to the general path, which names them.
        if x.dtype in _FLOATS and type(weight) in _PLAIN and weight.ndim == 2:
            try:
                return torch.nn.functional.linear(x, weight, bias)
            except RuntimeError:
                pass
    elif (
        type(x) in _PLAIN
        and type(weight) in _PLAIN
        and (bias is None or type(bias) in _PLAIN)
        and weight.ndim == 2
        and x.ndim >= 1
        and not _is_compiling()
        and not _any_autocast()
    ):
        dt = x.dtype
        K = x.shape[-1]
        N = weight.shape[0]
        if (
            weight.dtype is dt
            and dt in _FLOATS
            and weight.shape[1] == K
            and (bias is None or (bias.dtype is dt and bias.ndim == 1 and bias.shape[0] == N))
            and x.numel()
            and weight.numel()
        ):
            fast = False
            if x.is_cuda:
                dev = x.get_device()
                fast = weight.is_cuda and weight.get_device() == dev and (bias is None or bias.get_device() == dev)
            elif x.is_cpu and weight.is_cpu and (bias is None or bias.is_cpu):
                fast = dt is not torch.float64  # the interpreted kernel (float64: the general path, torch)
            if fast:
                x2 = x if x.ndim == 2 else x.reshape(-1, K)
                if _grad_enabled() and (
                    x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
                ):
                    out = _op(x2, weight.t(), bias, None, None)
                else:
                    out = _compute_checked(x2, weight.t(), bias)
                return out if x.ndim == 2 else out.reshape(*x.shape[:-1], N)
    return _linear_general(x, weight, bias)


def _linear_general(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    autocast_on = (
        isinstance(x, Tensor) and x.device.type in ("cuda", "cpu") and torch.is_autocast_enabled(x.device.type)
    )
    x, w = _autocast(x, weight)
    if isinstance(w, Tensor) and w.dim() != 2:
        raise ShapeError(f"linear expects a 2-D weight (out_features, in_features), got {tuple(w.shape)}")
    _check(x, w.t() if isinstance(w, Tensor) else w)
    N = w.shape[0]
    fused = None
    if bias is not None:
        if not isinstance(bias, Tensor):
            raise TypeError(f"linear: bias must be a tensor or None, got {type(bias).__name__}")
        if autocast_on:
            bias = bias.to(x.dtype)
        if bias.device != x.device:
            raise DeviceMismatchError(
                f"linear: bias is on {bias.device}, input on {x.device}; move it with .to({str(x.device)!r})"
            )
        if bias.dtype != x.dtype:  # F.linear's rule too (it raises): the kernel would silently mix precisions
            raise DtypeError(
                f"linear: bias is {bias.dtype} but input and weight are {x.dtype}; cast it, e.g. "
                f"bias.to({x.dtype}), or run under torch.autocast"
            )
        fused = _fusable_bias(x, w, bias)
    if x.numel() == 0 or w.numel() == 0:
        # An empty GEMM (no rows, no output or no input features): torch's result (empty, or the bias for
        # in_features = 0), no selection.
        return torch.nn.functional.linear(x, w, bias)
    out = _mm(x.reshape(-1, x.shape[-1]), w.t(), fused, None, None)
    out = out.reshape(*x.shape[:-1], N)
    if bias is not None and fused is None:
        out = out + bias  # a bias F.linear broadcasts but not per column (e.g. (M, N)); shape checked above
    return out


def _fusable_bias(x: Tensor, w: Tensor, bias: Tensor) -> Tensor | None:
    """The bias as the (N,) vector the kernel adds to every row, or None where it is not one (then added after
    the GEMM). Shapes F.linear rejects raise its error, found by running F.linear on meta tensors."""
    N = w.shape[0]
    if bias.dim() == 1 and bias.shape[0] == N:
        return bias
    meta = torch.nn.functional.linear(
        torch.empty(x.shape, dtype=x.dtype, device="meta"),
        torch.empty(w.shape, dtype=w.dtype, device="meta"),
        torch.empty(bias.shape, dtype=bias.dtype, device="meta"),
    )  # raises like F.linear for a bias it does not broadcast
    if tuple(meta.shape) != (*x.shape[:-1], N):
        raise ShapeError(f"linear: bias {tuple(bias.shape)} changes the output shape for input {tuple(x.shape)}")
    if all(d == 1 for d in bias.shape[:-1]) and (bias.dim() == 0 or bias.shape[-1] in (1, N)):
        return bias.reshape(-1).expand(N)  # (1, N), (1,), (): one value per column
    return None
