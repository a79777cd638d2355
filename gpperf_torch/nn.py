"""Drop-in modules: `Linear`, `patch`/`unpatch` a model's nn.Linear layers, and `record_shapes`."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from . import ops
from .errors import DtypeError
from .ops import linear


class Linear(nn.Linear):
    """`torch.nn.Linear` whose GEMM goes through `gpperf_torch.matmul` (same parameters and state_dict keys).

    The weight is used as a transposed view (``x @ W^T``), never copied: the kernel reads it in place.
    """

    def forward(self, input: Tensor) -> Tensor:
        weight = self.weight
        if input.dtype is not weight.dtype:
            _check_dtypes(input, weight)
        return linear(input, weight, self.bias)  # under autocast: in the autocast dtype


def _check_dtypes(input: Tensor, weight: Tensor) -> None:
    """Same rule as F.linear: the caller casts (or torch.autocast does, as for torch's own Linear)."""
    if not (input.device.type in ("cuda", "cpu") and torch.is_autocast_enabled(input.device.type)):
        raise DtypeError(  # a RuntimeError too, which nn.Linear raises here
            f"Linear got input {input.dtype} but weight is {weight.dtype}; cast one, e.g. "
            f"input.to({weight.dtype}) or model.to({input.dtype}), or run under torch.autocast"
        )


def patch(model: nn.Module) -> nn.Module:
    """Make every plain `nn.Linear` in `model` (itself included) a gpperf `Linear`, in place; weights shared.

    The swap changes each module's class only: parameters, buffers, hooks and state_dict keys stay as they
    were. Subclasses of nn.Linear (other libraries' layers with their own forward) are left alone.
    """
    for mod in model.modules():
        if type(mod) is nn.Linear:
            mod.__class__ = Linear
    return model


def unpatch(model: nn.Module) -> nn.Module:
    """Undo `patch`: every gpperf `Linear` becomes a plain `nn.Linear` again, in place."""
    for mod in model.modules():
        if type(mod) is Linear:
            mod.__class__ = nn.Linear
    return model


# ---- shape recording ---------------------------------------------------------------------------------
@dataclass(frozen=True, order=True)
class GemmShape:
    """One GEMM the op ran: C[m, n] = A[m, k] @ B[k, n], `batch` of them, with dtype and layout."""

    m: int
    n: int
    k: int
    dtype: str
    a_trans: bool
    b_trans: bool
    batch: int = 1


@contextlib.contextmanager
def recording() -> Iterator[Counter]:
    """Count every GEMM shape the op runs inside the block (forward and backward alike)."""
    rec: Counter = Counter()

    def observe(a: Tensor, b: Tensor) -> None:
        m, k = a.shape[-2], a.shape[-1]
        n = b.shape[-1]
        rec[
            GemmShape(
                m,
                n,
                k,
                str(a.dtype).replace("torch.", ""),
                k > 1 and a.stride(-1) != 1,
                n > 1 and b.stride(-1) != 1,
                a.shape[0] if a.dim() == 3 else 1,
            )
        ] += 1

    ops.observers.append(observe)
    try:
        yield rec
    finally:
        ops.observers.remove(observe)


def record_shapes(model: nn.Module, example_inputs, *, backward: bool = True) -> list[tuple[GemmShape, int]]:
    """Run `model` once and return the GEMM shapes its Linear layers (patched for the run) and any
    gpperf_torch.matmul calls produce, forward and, when `backward` and the output allows, backward.

    The model comes back as it was: layers patched only for the run are unpatched, and parameter
    gradients are restored, so recording does not change results.
    """
    plain = [m for m in model.modules() if type(m) is nn.Linear]
    for m in plain:
        m.__class__ = Linear
    params = [p for p in model.parameters() if p.requires_grad]
    saved_grads = [None if p.grad is None else p.grad.clone() for p in params]
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    try:
        with recording() as rec:
            out = model(*inputs)
            if backward and params:
                loss = _first_tensor(out)
                if loss is not None and loss.requires_grad and loss.dtype.is_floating_point:
                    loss.float().sum().backward()
    finally:
        for m in plain:
            m.__class__ = nn.Linear
        for p, g in zip(params, saved_grads, strict=True):
            p.grad = g
    return sorted(rec.items())


def _first_tensor(out) -> Tensor | None:
    if isinstance(out, Tensor):
        return out
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        for o in out:
            t = _first_tensor(o)
            if t is not None:
                return t
    return getattr(out, "logits", None) if not isinstance(out, (list, tuple)) else None


__all__ = ["GemmShape", "Linear", "patch", "record_shapes", "recording", "unpatch"]
