"""Measurement arithmetic: timing statistics, and NVML energy-counter handling against a fake NVML.

The fake below is the only fake in the project: NVML's counter behaviour (steps, wrap-around, missing
counter) cannot be produced on demand by real hardware, and CPU-only CI has no NVML at all.
"""

import logging
import math
from types import SimpleNamespace

import pytest

from gpperf_torch.measure import timing as measure
from gpperf_torch.tuning import inputs, local, plan

# ---- the fake NVML ---------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, dt: float) -> None:
        self.t += dt


class FakeNVMLError(Exception):
    pass


class FakeNvml:
    """pynvml's names for what the meter uses; the energy counter steps every `update_s` at `power_w`."""

    NVML_FI_DEV_POWER_INSTANT = 186
    NVML_CLOCK_SM = 1
    NVML_CLOCK_MEM = 2
    NVML_TEMPERATURE_GPU = 0

    def __init__(self, clock, *, power_w=300.0, update_s=0.1, start_mj=0, has_counter=True, instant=True):
        self.clock = clock
        self.power_w = power_w
        self.update_s = update_s
        self.start_mj = start_mj
        self.has_counter = has_counter
        self.instant = instant

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        if not self.has_counter:
            raise FakeNVMLError("Not Supported")
        tick = math.floor(self.clock() / self.update_s) * self.update_s
        return (self.start_mj + round(tick * self.power_w * 1000)) % 2**64

    def nvmlDeviceGetFieldValues(self, handle, fields):
        if not self.instant:
            raise FakeNVMLError("Not Supported")
        assert fields == [self.NVML_FI_DEV_POWER_INSTANT]
        value = SimpleNamespace(uiVal=int(self.power_w * 1000 + 7000))
        return [SimpleNamespace(nvmlReturn=0, valueType=1, value=value)]

    def nvmlDeviceGetPowerUsage(self, handle):
        return int(self.power_w * 1000)

    def nvmlDeviceGetClockInfo(self, handle, which):
        return {self.NVML_CLOCK_SM: 1755, self.NVML_CLOCK_MEM: 2619}[which]

    def nvmlDeviceGetTemperature(self, handle, which):
        return 41

    def nvmlDeviceGetEnforcedPowerLimit(self, handle):
        return 700_000


def make_meter(**kw):
    clock = FakeClock()
    nvml = FakeNvml(clock, **kw)
    meter = measure.NvmlEnergyMeter(nvml, "handle0", clock=clock, sleep=clock.sleep)
    return meter, clock


def batch(clock, seconds=0.01, reps=10):
    def run():
        clock.sleep(seconds)
        return reps

    return run


# ---- counter arithmetic ----------------------------------------------------------------------------


def test_counter_delta_plain_and_wrapped():
    assert measure.counter_delta_mj(1_000, 251_000) == 250_000
    assert measure.counter_delta_mj(2**64 - 100, 50) == 150  # one wrap of the 64-bit counter
    assert measure.counter_delta_mj(7, 7) == 0
    with pytest.raises(ValueError, match="start=-1"):
        measure.counter_delta_mj(-1, 5)


def test_energy_differencing_over_an_aligned_window():
    meter, clock = make_meter(power_w=300.0, update_s=0.1)
    e = meter.measure(batch(clock), 0.25)
    assert e is not None
    assert e.window_s >= 0.25
    assert e.power_w == pytest.approx(300.0, rel=0.05)
    assert e.energy_j == pytest.approx(300.0 * 0.001, rel=0.05)  # each rep takes 1 ms of fake time
    assert e.reps == pytest.approx(e.window_s / 0.001, rel=0.05)
    assert e.power_instant_w == pytest.approx(307.0)  # the instant field, not the averaged usage


def test_energy_across_counter_wraparound():
    meter, clock = make_meter(power_w=300.0, update_s=0.05, start_mj=2**64 - 40_000)  # wraps after 40 J
    e = meter.measure(batch(clock), 0.25)
    assert e is not None
    assert e.power_w == pytest.approx(300.0, rel=0.05)


def test_window_shorter_than_counter_step_is_extended():
    meter, clock = make_meter(power_w=200.0, update_s=0.4)
    e = meter.measure(batch(clock), 0.25)  # the counter has not moved at 0.25 s: keep running to the next step
    assert e is not None
    assert e.window_s > 0.25
    assert e.power_w == pytest.approx(200.0, rel=0.05)


def test_counter_that_never_steps_marks_the_row_once(caplog):
    meter, clock = make_meter(update_s=10.0)
    with caplog.at_level(logging.WARNING, logger="gpperf_torch.measure.timing"):
        assert meter.measure(batch(clock), 0.25) is None
        assert meter.measure(batch(clock), 0.25) is None
    assert len([r for r in caplog.records if "did not advance" in r.getMessage()]) == 1


def test_missing_counter_gives_no_energy_and_one_warning(caplog):
    meter, clock = make_meter(has_counter=False)
    assert not meter.available
    assert "Not Supported" in meter.reason
    with caplog.at_level(logging.WARNING, logger="gpperf_torch.measure.timing"):
        meter.warn_if_unavailable()
        for _ in range(3):
            assert meter.measure(batch(clock), 0.25) is None
    assert len([r for r in caplog.records if "energy columns stay empty" in r.getMessage()]) == 1
    assert meter.idle_power_w(1.0) is None
    # Clocks and temperature are still recorded without the counter.
    assert meter.conditions() == {
        "sm_clock_mhz": 1755.0,
        "mem_clock_mhz": 2619.0,
        "temp_c": 41.0,
        "power_limit_w": 700.0,
    }


def test_idle_power_and_instant_power_fallback():
    meter, clock = make_meter(power_w=70.0, update_s=0.1, instant=False)
    assert meter.idle_power_w(1.0) == pytest.approx(70.0, rel=0.02)
    assert meter.instant_power_w() == pytest.approx(70.0)  # nvmlDeviceGetPowerUsage stands in


def test_counter_reset_is_not_a_measurement():
    clock = FakeClock()
    nvml = FakeNvml(clock, power_w=300.0, update_s=0.05)
    meter = measure.NvmlEnergyMeter(nvml, "h", clock=clock, sleep=clock.sleep)
    calls = {"n": 0}

    def run():
        calls["n"] += 1
        clock.sleep(0.01)
        if calls["n"] == 10:
            nvml.start_mj -= 10**9  # the driver reloaded: the counter restarts far lower
        return 10

    assert meter.measure(run, 0.25) is None


def test_window_must_be_positive():
    meter, clock = make_meter()
    with pytest.raises(ValueError, match="window"):
        meter.measure(batch(clock), 0.0)


# ---- timing ----------------------------------------------------------------------------------------


def test_summarize_quantiles():
    t = measure.summarize([5.0, 1.0, 2.0, 3.0, 4.0])
    assert (t.median_ms, t.p20_ms, t.p80_ms, t.n_reps) == (3.0, 1.8, 4.2, 5)
    with pytest.raises(ValueError, match="at least one"):
        measure.summarize([])


def test_reps_follow_the_time_budget():
    assert measure.reps_for_budget(0.01, 25.0, 10, 1000) == 1000  # fast kernel: capped
    assert measure.reps_for_budget(1.0, 25.0, 10, 1000) == 25
    assert measure.reps_for_budget(10.0, 25.0, 10, 1000) == 10  # slow kernel: at least min_reps


def test_wall_timer_rotates_inputs_and_counts_reps():
    clock = FakeClock()
    seen = []

    def fn(i):
        seen.append(i)
        clock.sleep(0.002)

    t = measure.WallTimer(clock=clock).measure(fn, budget_ms=20.0, min_reps=3, max_reps=100)
    assert t.n_reps == 10
    assert t.median_ms == pytest.approx(2.0)
    assert seen[2:] == list(range(10))  # input set index advances every repetition


def test_row_records_energy_and_conditions_from_the_meter():
    """The tuner's per-row path with a (fake) NVML meter: energy columns filled, clocks recorded."""
    import torch

    meter, clock = make_meter(power_w=250.0, update_s=0.02)
    p = plan.Problem(8, 8, 8, "float32", 0, 0, 0)
    sets = inputs.InputSets(p, "cpu", rotate_bytes=4096)
    assert sets.n_sets > 1

    def fn(i):
        clock.sleep(0.0005)
        a, b, c = sets.operands(i)
        return torch.matmul(a, b, out=c)

    a0, b0, _ = sets.operands(0)
    run = SimpleNamespace(
        dev="cpu",
        timer=measure.WallTimer(clock=clock),
        time_budget_ms=5.0,
        min_reps=2,
        max_reps=50,
        meter=meter,
        energy_fraction=1.0,
        energy_window_s=0.1,
        idle_power=50.0,
        batch_runner=measure.wall_batch_runner,
    )
    row = local._measure_row(plan.WorkItem(p, None), fn, torch.matmul(a0, b0), 1e-4, run)
    assert row["status"] == "ok"
    assert row["power_w"] == pytest.approx(250.0, rel=0.1)
    assert row["energy_j"] == pytest.approx(250.0 * 0.0005, rel=0.1)
    assert row["dynamic_energy_j"] == pytest.approx(200.0 * 0.0005, rel=0.15)
    assert row["sm_clock_mhz"] == 1755.0 and row["temp_c"] == 41.0 and row["power_limit_w"] == 700.0
