"""Error types: each is also a RuntimeError, the kind torch.matmul raises, so code written for torch keeps
catching them, while the brief's ValueError/TypeError convention holds too."""

from __future__ import annotations


class ShapeError(ValueError, RuntimeError):
    """Operand shapes that cannot be multiplied (names both shapes)."""


class DtypeError(TypeError, RuntimeError):
    """Mixed or unsupported dtypes (names both dtypes and the fix)."""


class DeviceMismatchError(ValueError, RuntimeError):
    """Operands on different devices (names both devices)."""


class ModelError(ValueError):
    """A model file that is missing, corrupt or does not match this package (schema, candidates)."""
