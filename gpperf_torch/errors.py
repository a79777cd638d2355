"""Error types: each is also a RuntimeError, the kind torch.matmul raises, so code written for torch keeps
catching them, while the brief's ValueError/TypeError convention holds too."""

from __future__ import annotations


class ShapeError(ValueError, RuntimeError):
    """Operand shapes that cannot be multiplied (names both shapes)."""


class DtypeError(TypeError, RuntimeError):
    """Mixed or unsupported dtypes (names both dtypes and the fix)."""


class DeviceMismatchError(ValueError, RuntimeError):
    """Operands on different devices (names both devices)."""


class ConfigError(ValueError, RuntimeError):
    """A forced tile config that cannot run for these operands on this device (names the config and why)."""


class ModelError(ValueError, RuntimeError):
    """A model file that is missing, corrupt or does not match this package (schema, candidates)."""


class UserError(ValueError, RuntimeError):
    """A mistake in what the user gave (a file, an argument, an environment variable), not a bug.

    The command line prints its message as one line and exits 2 (cli.main). Other ValueErrors and OSErrors get
    the same treatment there, so a subcommand need not convert them; subclass this where a caller should be able
    to tell the user's mistake from other failures.
    """


class DataFileError(UserError):
    """A data file (tuning CSV, public data, shapes or configs list) that cannot be read as one; names the file."""
