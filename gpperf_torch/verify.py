"""`verify` and `exhaustive` selection modes: benchmark candidates once per new shape, keep the measured best.

verify: the predictor's top-k (default 3, env GPPERF_VERIFY_TOP_K) are timed on the call's own operands;
exhaustive: every valid candidate is (the baseline the other modes are measured against). Both time runtime
only (energy needs a window of ~0.25 s per config, too slow for a first call): for objectives other than
`time` they fall back to the prediction, with a one-time warning. The measurements are appended to a local
dataset (the tuning CSV schema) that `gpperf-torch train` can use later.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path

import torch

from . import env, kernels
from .dataset import COLUMNS
from .kernels import TileConfig

logger = logging.getLogger(__name__)

DEFAULT_TOP_K = 3
# Per-candidate timing budget: a first sight must stay cheap (tens of ms for verify).
BUDGET_MS = 5.0


def verify_top_k() -> int:
    return env.positive_int("GPPERF_VERIFY_TOP_K", DEFAULT_TOP_K)


def dataset_path(device_name: str) -> Path:
    """Where verify/exhaustive append their measurements (one CSV per device, in the user cache dir)."""
    from .selector import cache_dir

    slug = "".join(ch if ch.isalnum() else "_" for ch in device_name)
    return cache_dir() / f"verify-{slug}.csv"


def _timer():
    from . import measure

    if torch.cuda.is_available() and not kernels.interpreting():
        return measure.CudaEventTimer()
    return measure.WallTimer()


def benchmark_choice(st, key: tuple, a: torch.Tensor, b: torch.Tensor, mode: str) -> TileConfig | None:
    """Measure the candidates `mode` asks for on (a, b) and return the fastest (None: torch.matmul)."""
    from .selector import _warn_once, parse_objective, rank

    ranked = rank(st, key)
    obj = parse_objective(key[-1])
    if obj.name != "time":
        _warn_once(
            f"verify-obj:{obj}", "gpperf: %s mode measures runtime only; objective %s uses the prediction", mode, obj
        )
        return ranked[0][0]
    if a.is_cuda and torch.cuda.is_current_stream_capturing():
        return ranked[0][0]  # never benchmark inside a CUDA-graph capture: predicted choice (cached next time)
    cands = [c for c, _ in ranked]
    if mode == "verify":
        cands = cands[: verify_top_k()]
    out = torch.empty((*a.shape[:-1], b.shape[-1]), dtype=a.dtype, device=a.device)
    timer = _timer()
    smem = st.info.max_shared_memory
    results: list[tuple[TileConfig | None, float | None, str]] = []
    for cfg in cands:

        def fn(_i: int, cfg=cfg) -> None:
            if cfg is None:
                torch.matmul(a, b, out=out)
            else:
                kernels.launch(a, b, out, cfg, max_shared_memory=smem)

        try:
            t = timer.measure(fn, budget_ms=BUDGET_MS, min_reps=3, max_reps=200)
            results.append((cfg, t.median_ms, "ok"))
        except Exception as e:  # a config that fails to compile or run is skipped, never fatal
            logger.debug("verify: %s failed: %s", cfg, e)
            results.append((cfg, None, f"error: {e}"[:200]))
    timed = [(c, t) for c, t, _ in results if t is not None]
    if not timed:
        return ranked[0][0]
    best = min(timed, key=lambda ct: ct[1])[0]
    _append(st, key, a, results)
    return best


def _append(st, key: tuple, a: torch.Tensor, results) -> None:
    from .tune import DatasetLockedError, DatasetWriter

    m, n, k, batch, dtype, a_t, b_t, tf32, _obj = key
    base = {
        "gpu": st.info.name,
        "m": m * batch,
        "n": n,
        "k": k,
        "dtype": dtype,
        "a_trans": int(a_t),
        "b_trans": int(b_t),
        "tf32": int(tf32),
        "capability": ".".join(map(str, st.info.capability)),
        "sm_count": st.info.sm_count,
        "max_shared_memory": st.info.max_shared_memory,
        "torch": torch.__version__,
        "interpreted": int(kernels.interpreting()),
        "run_id": "verify",
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    path = dataset_path(st.info.name)
    try:
        with DatasetWriter(path) as w:
            for cfg, t, status in results:
                row = dict(base)
                if cfg is None:
                    row.update(backend="torch", config="")
                else:
                    row.update(backend="triton", config=cfg.key, **cfg.as_dict())
                row["status"] = "ok" if t is not None else "error"
                row["error"] = "" if t is not None else status
                row["time_ms"] = t
                if t:
                    row["tflops"] = 2.0 * m * batch * n * k / (t * 1e-3) / 1e12
                w.write({c: row.get(c) for c in COLUMNS})
    except (DatasetLockedError, OSError, ValueError) as e:
        logger.info("verify: measurements not saved to %s (%s)", path, e)
