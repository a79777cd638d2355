"""What the hook knows about one GEMM Inductor is lowering: the GemmSpec from its hinted sizes, dtypes and strides,
and its epilogue when the FX graph shows it. Torch internals (Inductor IR nodes, V.graph) stay in this room.
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)

DTYPES = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32"}

# Views between the GEMM and its consumers are looked through (F.linear on a 3-D input lowers to view -> addmm ->
# view); a lone add of a vector is a bias.
_VIEWS = {"view", "_unsafe_view", "reshape", "squeeze", "unsqueeze"}
_ADDS = {"add"}


def transposed(stride: tuple[int, ...], rows: int, cols: int) -> bool:
    """True when a rows x cols operand is stored column-major (its leading dimension is `rows`): the project's
    a_trans / b_trans convention (A stored K x M, B stored N x K)."""
    s_rows, s_cols = stride[-2], stride[-1]
    if cols == 1 or rows == 1:  # a vector: both layouts are the same memory; call it untransposed
        return False
    return s_rows == 1 and s_cols != 1


def spec_of(kernel_inputs, op_name: str):
    """GemmSpec for an mm/addmm/bmm's MMKernelInputs (hinted sizes), or None when the policy cannot describe it."""
    from .policy import GemmSpec

    mat1, mat2 = kernel_inputs.mat1mat2()
    dtype = DTYPES.get(mat1.get_dtype())
    if dtype is None or mat2.get_dtype() != mat1.get_dtype() or kernel_inputs.out_dtype() != mat1.get_dtype():
        return None
    m, n, k = kernel_inputs.mnk_hinted()
    shapes = kernel_inputs.shapes_hinted()
    strides = kernel_inputs.strides_hinted()
    i1, i2 = kernel_inputs._mat1_idx, kernel_inputs._mat2_idx
    batch = int(kernel_inputs.batch_hinted()) if op_name == "bmm" else 1
    if min(m, n, k, batch) <= 0 or len(shapes[i1]) != (3 if op_name == "bmm" else 2):
        return None
    return GemmSpec(
        m=int(m),
        n=int(n),
        k=int(k),
        dtype=dtype,
        a_trans=transposed(tuple(strides[i1]), m, k),
        b_trans=transposed(tuple(strides[i2]), k, n),
        batch=batch,
        epilogue=epilogue_of(op_name),
    )


def _name(node) -> str:
    target = getattr(node, "target", None)
    packet = getattr(target, "overloadpacket", None)
    return getattr(packet, "__name__", "") if packet is not None else ""


def _pointwise(node) -> bool:
    target = getattr(node, "target", None)
    return node.op == "call_function" and torch.Tag.pointwise in getattr(target, "tags", ())


def _consumers(node) -> list:
    """The node's users, looking through views."""
    out = []
    for user in getattr(node, "users", {}) or {}:
        out.extend(_consumers(user) if _name(user) in _VIEWS else [user])
    return out


def epilogue_of(op_name: str) -> str | None:
    """None, "bias", "act" or "bias_act" for the FX node being lowered (V.graph.current_node): addmm carries its
    bias; a lone add of a vector after mm/bmm is a bias; pointwise consumers (an activation, decomposed or not, a
    residual add, a cast) are what the scheduler fuses into a template's epilogue and cuBLAS leaves to a kernel
    of its own: "act". Unknown (no FX node) is None: the plan then counts no fusion saving."""
    from torch._inductor.virtualized import V

    try:
        node = V.graph.current_node
    except Exception:  # no graph being lowered
        return None
    if node is None or not hasattr(node, "users"):
        return None
    bias = op_name == "addmm"
    users = _consumers(node)
    if not bias and len(users) == 1 and _name(users[0]) in _ADDS and _is_vector_add(users[0]):
        bias, users = True, _consumers(users[0])
    act = bool(users) and all(_pointwise(u) for u in users)
    if bias and act:
        return "bias_act"
    return "bias" if bias else ("act" if act else None)


def _is_vector_add(add) -> bool:
    other = [a for a in add.args if hasattr(a, "meta") and a.meta.get("val") is not None]
    if len(other) != 2:
        return False
    other = [a for a in other if a.meta["val"].dim() == 1]
    if len(other) != 1:
        return False
    val = other[0].meta.get("val")
    return isinstance(val, torch.Tensor) and val.dim() == 1


__all__ = ["DTYPES", "epilogue_of", "spec_of", "transposed"]
