"""Shared test helpers: float64 reference and per-dtype tolerances (atol grows with K)."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch

from gpperf_torch import kernels
from gpperf_torch.kernels import TileConfig
from gpperf_torch.measure.dataset import COLUMNS, KEY_COLUMNS

# Where kernel and op tests run: the Triton interpreter on the CPU, and a GPU when there is one.
DEVICES = [
    pytest.param(
        "cpu",
        id="interp",
        marks=pytest.mark.skipif(not kernels.interpreting(), reason="CPU runs need TRITON_INTERPRET=1"),
    ),
    pytest.param("cuda", id="cuda", marks=pytest.mark.cuda),
]

# rtol covers rounding of the output to the dtype; atol covers fp32 accumulation, growing like sqrt(K)
# for random inputs (TF32 on GPU rounds the inputs to 10 mantissa bits: same order as fp16).
RTOL = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float32: 1e-5}
ATOL_PER_SQRT_K = {torch.float16: 1e-3, torch.bfloat16: 8e-3, torch.float32: 1e-5}
TF32_RTOL, TF32_ATOL_PER_SQRT_K = 2e-3, 2e-3


def tolerances(dtype: torch.dtype, k: int, tf32: bool = False) -> tuple[float, float]:
    scale = max(1.0, math.sqrt(k))
    if tf32 and dtype == torch.float32:
        return TF32_RTOL, TF32_ATOL_PER_SQRT_K * scale
    return RTOL[dtype], ATOL_PER_SQRT_K[dtype] * scale


def assert_close_to_reference(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, tf32: bool = False) -> None:
    """Compare against a float64 matmul of the same (already rounded) inputs."""
    ref = torch.matmul(a.double().cpu(), b.double().cpu())
    assert out.shape == ref.shape, f"shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    assert not torch.isnan(out).any(), "NaN in output: an element was left unwritten (poisoned) or overflowed"
    rtol, atol = tolerances(a.dtype, a.shape[-1], tf32)
    torch.testing.assert_close(out.double().cpu(), ref, rtol=rtol, atol=atol)


def randn(*shape: int, dtype: torch.dtype, device: str, gen: torch.Generator | None = None) -> torch.Tensor:
    """Fresh random inputs (never zeros) made in float32 then rounded to dtype."""
    return torch.randn(*shape, generator=gen).to(dtype=dtype, device=device)


# A synthetic tuning table with a known trade-off, for tests that need a small trained model: FAST is quickest at
# the most power, FRUGAL 3% slower at much less power (so `energy` and `balanced` pick it), SLOW worse at both,
# torch.matmul 20% slower than FAST. Small tiles, so the interpreter runs them quickly.
FAST = TileConfig(32, 32, 32, num_warps=4, num_stages=3)
FRUGAL = TileConfig(16, 32, 32, num_warps=2, num_stages=3)
SLOW = TileConfig(16, 16, 64, num_warps=1, num_stages=2)
POWER = {FAST.key: 400.0, FRUGAL.key: 250.0, SLOW.key: 300.0, "torch": 380.0}


def synthetic_rows(with_energy: bool, n_shapes: int = 40, first: tuple = ()) -> list[dict]:
    """Rows in `dataset.from_rows` form: n_shapes fp16 shapes (B transposed; `first` then seeded random ones)
    x the four candidates."""
    rng = np.random.default_rng(0)
    shapes = list(first) + [
        tuple(int(x) for x in np.exp(rng.uniform(np.log(64), np.log(4096), 3))) for _ in range(n_shapes - len(first))
    ]
    rows = []
    for m, n, k in shapes:
        flops_ms = 2 * m * n * k / 5e11
        for key, factor in ((FAST.key, 1.0), (FRUGAL.key, 1.03), (SLOW.key, 1.5), ("torch", 1.2)):
            t = flops_ms * factor + 0.002
            cfg = TileConfig.from_key(key).as_dict() if key != "torch" else {}
            row = {
                "gpu": "NVIDIA H100 80GB HBM3",
                "m": m,
                "n": n,
                "k": k,
                "dtype": "float16",
                "a_trans": 0,
                "b_trans": 1,
                "tf32": 0,
                "backend": "torch" if key == "torch" else "triton",
                "config": "" if key == "torch" else key,
                "status": "ok",
                "time_ms": t,
                "source": "test",
                **cfg,
            }
            if with_energy:
                row["power_w"] = POWER[key]
                row["energy_j"] = POWER[key] * t / 1e3
            rows.append(row)
    return rows


def read_rows(path):
    """A tuning CSV of this version's layout as dicts (asserting the header and every row's width)."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == list(COLUMNS)
    assert all(len(r) == len(COLUMNS) for r in rows[1:])
    return [dict(zip(COLUMNS, r, strict=True)) for r in rows[1:]]


def keys(rows):
    """The row keys (dataset.KEY_COLUMNS) of read_rows' dicts, in file order."""
    return [tuple(r[c] for c in KEY_COLUMNS) for r in rows]


def export_synthetic_model(folder, *, seed: int = 0, energy: bool = False):
    """A small model trained on synthetic_rows, exported to `folder` (model.onnx + model.json); needs sklearn."""
    pytest.importorskip("sklearn", reason="training a test model needs the [train] extra")
    from gpperf_torch.measure import dataset
    from gpperf_torch.predictor import train

    fitted = train.fit(dataset.from_rows(synthetic_rows(energy)), seed=seed, n_jobs=1, n_estimators=20)
    train.export(fitted, folder, {"provenance": "synthetic test data"})
    return folder


# ---- a simulated GPU behind NVML's names (energy tests) ---------------------------------------------
class FakeGpu:
    """NVML's names for what the energy meters use, on a simulated clock: the total-energy counter integrates the
    power of whatever ran and steps every `update_s`; SM clock, power limit and clock-event (throttle) mask are
    settable. `run(seconds, watts)` is a kernel running; `sleep` idles. NVML's counter behaviour (steps, power
    caps, throttling) cannot be produced on demand by real hardware, and CPU-only CI has no NVML at all."""

    NVML_CLOCK_SM = 1
    NVML_CLOCK_MEM = 2
    NVML_TEMPERATURE_GPU = 0

    def __init__(self, *, update_s: float = 0.02, idle_w: float = 60.0, has_counter: bool = True):
        self.us = 0  # simulated time, integer microseconds (no float drift at counter steps)
        self.update_us = round(update_s * 1e6)
        self.idle_w = idle_w
        self.has_counter = has_counter
        self.energy_mj = 0.0  # exact
        self.counter_mj = 0  # what NVML reports: the energy at the last update
        self.sm_clock_mhz = 1980
        self.power_limit_w = 700.0
        self.throttle_mask = 0

    def clock(self) -> float:
        return self.us / 1e6

    def run(self, seconds: float, watts: float) -> None:
        left = max(1, round(seconds * 1e6))
        while left > 0:
            step = min(left, self.update_us - self.us % self.update_us)
            self.energy_mj += watts * step / 1e3
            self.us += step
            left -= step
            if self.us % self.update_us == 0:
                self.counter_mj = int(self.energy_mj)

    def sleep(self, seconds: float) -> None:
        self.run(seconds, self.idle_w)

    def meter(self):
        from gpperf_torch.measure.energy import NvmlEnergyMeter

        return NvmlEnergyMeter(self, "gpu0", clock=self.clock, sleep=self.sleep)

    # pynvml's functions
    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        if not self.has_counter:
            raise RuntimeError("Not Supported")
        return self.counter_mj

    def nvmlDeviceGetPowerUsage(self, handle):
        return int(self.idle_w * 1000)

    def nvmlDeviceGetClockInfo(self, handle, which):
        return {self.NVML_CLOCK_SM: self.sm_clock_mhz, self.NVML_CLOCK_MEM: 2619}[which]

    def nvmlDeviceGetTemperature(self, handle, which):
        return 50

    def nvmlDeviceGetEnforcedPowerLimit(self, handle):
        return int(self.power_limit_w * 1000)

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle):
        return self.throttle_mask


def kernel_on(gpu: FakeGpu, seconds: float, watts: float):
    """A zero-argument callable that 'runs' a kernel of `seconds` at `watts` on the fake GPU."""
    return lambda: gpu.run(seconds, watts)


class LaunchRecorder:
    """Stands in for a jitted kernel (`kernel[grid](...)`): records each launch's (args, kwargs), then runs the
    real one."""

    def __init__(self, real):
        self.real, self.calls = real, []

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            self.calls.append((args, kwargs))
            return self.real[grid](*args, **kwargs)

        return run
