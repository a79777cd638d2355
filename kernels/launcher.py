"""The lean launch path: call an already compiled Triton kernel directly, without re-binding through the JIT.

`kernel[grid](...)` on a `@triton.jit` function walks Triton's binder on every call: it builds the argument
dictionary, specializes every argument (dtype, alignment, divisibility), turns the result into a string key and
looks it up (13-27 us for ~20 arguments in Triton 3.5-3.7). For a decode GEMM of a few microseconds that is the
whole kernel. `LeanKernel` wraps a JIT function with the same `[grid](*args, **kwargs)` interface: on the first
call with a given specialization it launches through the JIT (which compiles if needed and returns the
`CompiledKernel`), remembers that kernel under `spec_key(...)`, and from then on calls its launcher directly.

The switch: the lean path is OFF by default. Turn it on with the environment variable
``GPPERF_LEAN_LAUNCH=1`` (read at import) or ``gpperf_torch.kernels.launcher.set_enabled(True)``. It becomes
the default on CUDA only after the CUDA tests have passed with it on a GPU (`make gpu-check` runs them both
ways). Under the Triton interpreter (TRITON_INTERPRET=1) there is no compiled kernel to call, so the switch has
no effect there: every launch goes through the interpreter.

Correctness rests on `spec_key`: two calls share a compiled kernel only if Triton itself would give them the
same specialization (tests/test_launcher.py checks that on the CPU against Triton's own binder).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import torch

logger = logging.getLogger(__name__)

ENV_VAR = "GPPERF_LEAN_LAUNCH"
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_UINT64_MAX = 2**64 - 1
_Tensor = torch.Tensor
_HookChain: type = type(None)  # triton.knobs.HookChain, bound on first use


def _from_env() -> bool:
    """GPPERF_LEAN_LAUNCH: 1/true/yes/on or 0/false/no/off (any case); anything else warns and means off."""
    raw = os.environ.get(ENV_VAR, "")
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value not in ("", "0", "false", "no", "off"):
        logger.warning("gpperf: %s=%r is not 1 or 0; the lean launch path stays off (the default)", ENV_VAR, raw)
    return False


_enabled = _from_env()
# Triton decides at decoration (import) time whether kernels are interpreted (as kernels.matmul does).
_INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def set_enabled(on: bool) -> None:
    """Turn the lean launch path on or off for this process (default: the GPPERF_LEAN_LAUNCH variable)."""
    global _enabled
    _enabled = bool(on)


def enabled() -> bool:
    """Whether launches take the lean path (never under the Triton interpreter)."""
    return _enabled and not _INTERPRETING


# ---- the cache key ------------------------------------------------------------------------------------------
def _int_code(x: int, specialize: bool = True) -> int:
    """What Triton 3.x specializes an int argument on, as one small int: equal to 1 (becomes a constexpr), else
    its type (i32 / i64 / u64 by range) and, when specialized, divisibility by 16."""
    if specialize and x == 1:
        return 1
    d = 1 if specialize and x & 15 == 0 else 0  # (-16 & 15 == 0, like -16 % 16)
    if _INT32_MIN <= x <= _INT32_MAX:
        return 2 | d
    if _INT64_MIN <= x <= _INT64_MAX:
        return 4 | d
    if 0 <= x <= _UINT64_MAX:
        return 8 | d
    raise ValueError(f"integer argument {x} does not fit in 64 bits")


def spec_key(args: tuple, kwargs: dict, no_specialize: frozenset[int] = frozenset()) -> tuple:
    """A hashable key that is equal for two launches exactly when Triton 3.x specializes them alike.

    `args` are the kernel's positional (runtime) arguments, `kwargs` its constexprs and launch options
    (num_warps, num_stages, ...; the knobs Triton adds, debug and instrumentation_mode, are added by the
    caller). Per runtime argument Triton keys on:
      tensors: the dtype and whether data_ptr() is 16-byte aligned;
      ints: equal to 1 (then a constexpr), else i32/i64/u64 by range and divisibility by 16;
      bools, floats: their type only (Triton never specializes them); None: a constexpr None.
    `no_specialize` holds positions marked do_not_specialize (ints keep only their type; Triton 3.7 does not
    apply do_not_specialize_on_alignment to tensors).
    Constexprs and options key on name, value and type (True == 1 in Python, not in Triton's key).
    """
    parts = []
    for i, x in enumerate(args):
        t = type(x)
        if t is int:
            parts.append(_int_code(x, i not in no_specialize))
        elif isinstance(x, _Tensor):
            parts.append((x.dtype, x.data_ptr() & 15 == 0))
        elif t is bool:
            parts.append("u1")
        elif t is float:
            parts.append("fp32")
        elif x is None:
            parts.append(None)
        else:  # anything else (tensor descriptors, dtypes, ...): the exact value, never wrongly shared
            parts.append((t, x))
    return (tuple(parts), tuple(kwargs.items()), tuple(map(type, kwargs.values())))


def _fast_key(args: tuple, kwargs: dict) -> tuple:
    """`spec_key` for the common case of tensors and ints only (no do_not_specialize), in one comprehension;
    AttributeError for any other argument (bool, float and None are not ints and have no data_ptr)."""
    return (
        tuple(
            [
                (x.dtype, x.data_ptr() & 15 == 0)
                if type(x) is not int
                else 1
                if x == 1
                else (2 | (x & 15 == 0))
                if _INT32_MIN <= x <= _INT32_MAX
                else _int_code(x)
                for x in args
            ]
        ),
        tuple(kwargs.items()),
        tuple(map(type, kwargs.values())),
    )


def _driver_functions() -> tuple[Callable, Callable]:
    """The active driver's current-device and current-stream getters (what Triton's own run launches on)."""
    from triton.runtime import driver

    return driver.active.get_current_device, driver.active.get_current_stream


# ---- the lean kernel -----------------------------------------------------------------------------------------
class LeanKernel:
    """`kernel[grid](*args, **kwargs)` like a `@triton.jit` function, launching a cached `CompiledKernel`
    directly when the lean path is on (see the module docstring)."""

    def __init__(self, fn):
        self.fn = fn
        self.cache: dict[tuple, object] = {}
        self._prepared = False

    def _prepare(self) -> None:
        # What the launcher needs besides the runtime arguments: the constexpr parameters in signature order
        # (Triton passes every bound argument, constexprs included, and its launcher skips them).
        from triton import knobs

        params = self.fn.params
        self._constexprs = [(p.name, p.default if p.has_default else None) for p in params if p.is_constexpr]
        self._n_runtime = sum(1 for p in params if not p.is_constexpr)
        runtime_positions = [i for i, p in enumerate(params) if not p.is_constexpr]
        if runtime_positions != list(range(self._n_runtime)):
            raise TypeError(f"{self.fn}: the lean path needs the constexpr parameters after the runtime ones")
        self._no_specialize = frozenset(i for i, p in enumerate(params) if p.do_not_specialize and not p.is_constexpr)
        self._knobs = knobs
        global _HookChain
        try:
            from triton.knobs import HookChain as _HookChain
        except ImportError:  # an older Triton: hooks are plain callables or None
            _HookChain = type(None)
        self._current_device, self._current_stream = _driver_functions()
        self._prepared = True

    def __getitem__(self, grid) -> Callable:
        return lambda *args, **kwargs: self.run(grid, args, kwargs)

    def key(self, args: tuple, kwargs: dict) -> tuple:
        if not self._prepared:
            self._prepare()
        knobs = self._knobs
        try:
            if self._no_specialize:
                raise AttributeError
            base = _fast_key(args, kwargs)
        except AttributeError:  # a None, bool or float argument, or do_not_specialize: the general function
            base = spec_key(args, kwargs, self._no_specialize)
        # What Triton's run adds to the options of every launch (part of its cache key too).
        return (*base, knobs.runtime.debug, knobs.compilation.instrumentation_mode)

    def is_compiled(self, args: tuple, kwargs: dict) -> bool:
        """Whether a launch with these arguments would find a compiled kernel (no compilation): asked inside a
        CUDA graph capture, where compiling (module loads) must not happen. Exact: Triton's own binder and key.
        Under the interpreter nothing is ever compiled: always True."""
        if _INTERPRETING:
            return True
        if enabled() and (*self.key(args, kwargs), torch.cuda.current_device()) in self.cache:
            return True
        from triton import knobs
        from triton.runtime.jit import compute_cache_key

        fn = self.fn
        device = torch.cuda.current_device()
        if device not in fn.device_caches:
            return False
        kernel_cache, kernel_key_cache, _target, _backend, binder = fn.device_caches[device]
        kw = dict(kwargs, debug=kwargs.get("debug", fn.debug) or knobs.runtime.debug)
        kw["instrumentation_mode"] = knobs.compilation.instrumentation_mode
        _bound, specialization, options = binder(*args, **kw)
        return compute_cache_key(kernel_key_cache, specialization, options) in kernel_cache

    def run(self, grid, args: tuple, kwargs: dict):
        if not _enabled or _INTERPRETING:
            return self.fn[grid](*args, **kwargs)
        if not self._prepared:
            self._prepare()
        knobs = self._knobs
        if knobs.runtime.add_stages_inspection_hook is not None or self.fn.pre_run_hooks or callable(grid):
            # Triton adds to its key, runs hooks, or computes the grid from the bound arguments: its own path.
            return self.fn[grid](*args, **kwargs)
        device = self._current_device()
        key = (*self.key(args, kwargs), device)
        entry = self.cache.get(key)
        if entry is None:
            # First sight of this specialization: Triton binds, compiles if needed, launches, returns the kernel.
            kernel = self.fn[grid](*args, **kwargs)
            # A kernel that reads global variables keeps Triton's path: its run checks they have not changed
            # since it compiled (ours read none).
            if kernel is not None and not getattr(self.fn, "used_global_vals", None):
                # The constexpr values (equal keys: equal values) and the launcher, looked up once.
                tail = tuple(kwargs.get(name, default) for name, default in self._constexprs)
                self.cache[key] = (kernel.run, kernel.function, kernel.packed_metadata, kernel, tail)
            return kernel
        run, function, metadata, kernel, tail = entry
        stream = self._current_stream(device)
        bound = (*args, *tail)
        enter, leave = knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook
        # An empty HookChain calls nothing: passing None instead skips two Python calls in Triton's launcher.
        if enter is not None and isinstance(enter, _HookChain) and not enter.calls:
            enter = None
        if leave is not None and isinstance(leave, _HookChain) and not leave.calls:
            leave = None
        meta = None if enter is None and leave is None else kernel.launch_metadata(grid, stream, *bound)
        run(
            grid[0],
            grid[1] if len(grid) > 1 else 1,
            grid[2] if len(grid) > 2 else 1,
            stream,
            function,
            metadata,
            meta,
            enter,
            leave,
            *bound,
        )
        return kernel

    def clear(self) -> None:
        """Forget the compiled kernels (Triton's own cache keeps them; the next launch re-binds once)."""
        self.cache.clear()


if _enabled and _INTERPRETING:
    logger.info("gpperf: %s=1 has no effect under the Triton interpreter", ENV_VAR)

__all__ = ["ENV_VAR", "LeanKernel", "enabled", "set_enabled", "spec_key"]
