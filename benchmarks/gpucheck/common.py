"""What every step of the GPU check shares: the run's state and budgets (`Check`), logging, JSON output."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


class Check:
    """The run's state. `render(summary, step_order) -> markdown` writes summary.md (gpucheck.summary's
    summary_markdown, passed in by gpu_check.py: the summary reads the steps' tables, the steps read this)."""

    def __init__(self, out: Path, dry: bool, budgets: dict[str, float], total_s: float, step_order: list[str],
                 render: Callable[[dict, list[str]], str] | None = None):  # fmt: skip
        self.out = out
        self.render = render
        self.step_order = step_order
        self.dry = dry
        self.budgets = budgets
        self.t0 = time.monotonic()
        self.deadline = self.t0 + total_s
        self.summary: dict = {
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "dry_run": dry,
            "steps": {},
        }
        self.state: dict = {}

    def budget(self, step: str) -> float:
        later = [s for s in self.step_order[self.step_order.index(step) + 1 :]]
        reserve = sum(min(self.budgets[s], 15) for s in later if s in self.budgets)  # keep a little for later steps
        return max(1.0, min(self.budgets.get(step, 30), self.deadline - time.monotonic() - reserve))

    def write(self) -> None:
        self.summary["elapsed_s"] = round(time.monotonic() - self.t0, 1)
        (self.out / "summary.json").write_text(json.dumps(self.summary, indent=1, default=_json_default))
        if self.render is not None:
            (self.out / "summary.md").write_text(self.render(self.summary, self.step_order))


def _json_default(o):
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    return str(o)


def log(msg: str) -> None:
    print(f"[gpu-check {time.strftime('%H:%M:%S')}] {msg}", flush=True)
