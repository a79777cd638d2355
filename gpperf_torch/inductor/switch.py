"""Turning the Inductor hook on and off, process-wide: `install`, `uninstall`, `enabled`, `uuid`.

Inductor (torch 2.13) finds its choices handler in two per-thread places, and both must point at the hook:
- `torch._inductor.config.inductor_choices_class`, a config entry whose user override is a ContextVar, so a
  value set in one thread is invisible to threads started later. `install` sets the entry's *default* (shared by
  all threads) and the calling thread's override; a thread started afterwards sees the default.
- `V.choices`, a thread-local handler created from that config on first use. `install` replaces the calling
  thread's; a thread started afterwards creates its own from the config. A thread that already built a plain
  handler before `install` keeps it (Inductor offers no way to reach another thread's locals): install first.

The hook reads the module state below on every call, so `uninstall` takes effect in every thread at once: a
handler left behind in some thread behaves as Inductor's own. The config entry also names the hook in the FX
graph cache key (config._cache_config_factory_keys: the factory's instance's `uuid()`), so a graph compiled
without the hook, or with another mode, model or package version, is never reused.

Nothing here imports torch._inductor at module level: the package imports on torches without the hook, and
`install` says so there.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator

from ..errors import UserError
from . import settings

logger = logging.getLogger(__name__)

MODES = settings.MODES
_CONFIG_KEY = "inductor_choices_class"


class HookUnavailableError(RuntimeError):
    """This torch's Inductor lacks what the hook needs (InductorChoices._finalize_template_configs)."""


_lock = threading.Lock()
# What install replaced, restored by uninstall: the config entry's default, the calling thread's override and
# choices handler (and the thread that installed).
_saved: dict = {}


def _default_mode() -> str:
    import torch

    return "verify" if torch.cuda.is_available() else "predict"


def _internals():
    """torch._inductor's config module, its config entry for the choices factory, V's handler slot, the hook."""
    try:
        from torch._inductor import config
        from torch._inductor import virtualized as virt
        from torch._inductor.choices import InductorChoices

        entry = config._config[_CONFIG_KEY]
        slot = virt._choices
        assert hasattr(InductorChoices, "_finalize_template_configs")
        assert _CONFIG_KEY in getattr(config, "_cache_config_factory_keys", [])
        from .hook import GpperfChoices
    except (ImportError, AttributeError, KeyError, AssertionError) as e:
        import torch

        raise HookUnavailableError(
            f"gpperf_torch.inductor needs torch 2.13's InductorChoices hook; torch {torch.__version__} lacks it "
            f"({type(e).__name__}: {e}). The op path (gp.patch, gp.nn.Linear) works on this torch: use it "
            "under torch.compile instead."
        ) from e
    return config, entry, virt, slot, GpperfChoices


def install(mode: str | None = None, top_k: int = 3) -> None:
    """Let the predictor choose Inductor's GEMM templates in every torch.compile of this process.

    mode: "predict" (one choice per GEMM, nothing benchmarked) or "verify" (cuBLAS + at most `top_k` predicted
    templates, benchmarked by Inductor's own autotuner). Default: verify on a GPU, predict elsewhere.
    Calling it again changes the settings; `uninstall()` restores Inductor's own behaviour.
    """
    mode = mode or _default_mode()
    if mode not in MODES:
        raise UserError(f"mode must be one of {MODES}, got {mode!r}")
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
        raise UserError(f"top_k must be a positive int, got {top_k!r}")
    config, entry, virt, slot, hook_cls = _internals()
    with _lock:
        if settings.current() is None:
            theirs = getattr(config, _CONFIG_KEY)
            if theirs is not None and theirs is not hook_cls:
                raise RuntimeError(
                    f"torch._inductor.config.{_CONFIG_KEY} is already set to {theirs!r}: the gpperf hook would "
                    "replace it. Unset it first, or leave the compile path to it and use the op path (gp.patch)."
                )
            _saved.update(
                default=entry.default,
                override=entry.user_override.get(),
                handler=getattr(virt.threadlocal, slot._key, None),
                thread=threading.get_ident(),
            )
        settings.set_current(settings.Settings(mode, top_k))
        entry.default = hook_cls  # threads started from now on
        setattr(config, _CONFIG_KEY, hook_cls)  # this thread (also marks its config hash dirty)
        slot._set_handler(hook_cls())
    logger.info("gpperf Inductor hook installed: mode=%s top_k=%d", mode, top_k)


def uninstall() -> None:
    """Restore Inductor's own choices: the config entry, this thread's handler; the hook goes passive everywhere."""
    if settings.current() is None:
        return
    config, entry, virt, slot, _ = _internals()
    with _lock:
        settings.set_current(None)
        entry.default = _saved.get("default")
        if _saved.get("thread") == threading.get_ident():
            entry.user_override.set(_saved["override"])
            handler = _saved["handler"]
            if handler is None:
                if hasattr(virt.threadlocal, slot._key):
                    delattr(virt.threadlocal, slot._key)
            else:
                slot._set_handler(handler)
        else:  # another thread installed: this one falls back to the (restored) default
            setattr(config, _CONFIG_KEY, entry.default)
            if hasattr(virt.threadlocal, slot._key):
                delattr(virt.threadlocal, slot._key)
        config._hash_dirty_var.set(True)  # the FX cache key is recomputed without the hook
        if hasattr(config, "_get_dict_dirty_keys_var"):
            config._get_dict_dirty_keys_var.set(None)
        _saved.clear()
    logger.info("gpperf Inductor hook uninstalled")


@contextlib.contextmanager
def enabled(mode: str | None = None, top_k: int = 3) -> Iterator[None]:
    """`with gp.inductor.enabled("predict"): torch.compile(model)(x)`: the hook for the block, then as before."""
    before = settings.current()
    install(mode, top_k)
    try:
        yield
    finally:
        if before is None:
            uninstall()
        else:
            install(before.mode, before.top_k)


__all__ = ["HookUnavailableError", "MODES", "enabled", "install", "uninstall"]
