"""Device descriptor: what features and validity checks need to know about a GPU.

Read from torch (and NVML when present) for the current GPU, or from the table below for a named GPU, so that
`gpperf-torch select --gpu h100` and training on public data work on a machine without one.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import asdict, dataclass

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeviceInfo:
    name: str  # as the driver reports it, e.g. "NVIDIA H100 80GB HBM3"
    short_name: str  # the key of shipped models: "h100", "a100", "h200", or a slug of `name`
    capability: tuple[int, int]
    sm_count: int
    max_shared_memory: int  # bytes per block (opt-in maximum)
    l2_bytes: int
    sm_clock_mhz: int  # maximum SM clock
    mem_clock_mhz: int
    mem_bandwidth_gbs: float  # datasheet peak, GB/s
    power_limit_w: float

    def as_dict(self) -> dict:
        d = asdict(self)
        d["capability"] = list(self.capability)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> DeviceInfo:
        d = dict(d)
        d["capability"] = tuple(d["capability"])
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


# Datasheet values for GPUs we ship models for (SXM parts; the PCIe parts differ in clocks/power only).
KNOWN_DEVICES: dict[str, DeviceInfo] = {
    "h100": DeviceInfo("NVIDIA H100 80GB HBM3", "h100", (9, 0), 132, 232448, 50 * 2**20, 1980, 2619, 3350.0, 700.0),
    "h200": DeviceInfo("NVIDIA H200", "h200", (9, 0), 132, 232448, 60 * 2**20, 1980, 3201, 4800.0, 700.0),
    "a100": DeviceInfo("NVIDIA A100-SXM4-80GB", "a100", (8, 0), 108, 166912, 40 * 2**20, 1410, 1593, 2039.0, 400.0),
    "l4": DeviceInfo("NVIDIA L4", "l4", (8, 9), 58, 101376, 48 * 2**20, 2040, 6251, 300.0, 72.0),
    "rtx4090": DeviceInfo(
        "NVIDIA GeForce RTX 4090", "rtx4090", (8, 9), 128, 101376, 72 * 2**20, 2520, 10501, 1008.0, 450.0
    ),
}


def short_name_of(name: str) -> str:
    """Map a driver name ("NVIDIA H100 80GB HBM3", "H100", "A100-SXM4-40GB") to a table key or a slug."""
    low = name.lower().replace("nvidia", "").replace("geforce", "").strip()
    for key in ("h200", "h100", "a100", "l4"):
        if key in low.replace(" ", "").replace("-", ""):
            return key
    if "4090" in low:
        return "rtx4090"
    return "".join(c if c.isalnum() else "_" for c in low).strip("_") or "unknown"


def known_device(name: str) -> DeviceInfo:
    """Descriptor for a named GPU ("h100", "A100", "NVIDIA H200"); ValueError lists the known names."""
    key = short_name_of(name)
    if key not in KNOWN_DEVICES:
        raise ValueError(f"unknown GPU {name!r}; known: {', '.join(sorted(KNOWN_DEVICES))}")
    return KNOWN_DEVICES[key]


# The descriptor fields a tuning CSV row carries (dataset.DEVICE_COLUMNS) -> DeviceInfo fields.
_FIELD_MAP = {
    "sm_count": "sm_count",
    "max_shared_memory": "max_shared_memory",
    "l2_bytes": "l2_bytes",
    "sm_clock_max_mhz": "sm_clock_mhz",
    "mem_clock_max_mhz": "mem_clock_mhz",
    "mem_bandwidth_gbs": "mem_bandwidth_gbs",
    "power_limit_w": "power_limit_w",
}
# Without these the features cannot be computed; l2_bytes and power_limit_w are descriptive only.
_REQUIRED_FIELDS = ("sm_count", "max_shared_memory", "sm_clock_max_mhz", "mem_clock_max_mhz", "mem_bandwidth_gbs")


def _capability(value: object) -> tuple[int, int]:
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return int(value[0]), int(value[1])
    text = str(value).strip()
    if not text:
        return (0, 0)
    major, _, minor = text.partition(".")
    return int(float(major)), int(minor or 0)


def descriptor_from_fields(name: str, fields: dict) -> DeviceInfo:
    """A DeviceInfo from the device columns of a tuning CSV row (capability "8.6", sm_count, max_shared_memory,
    l2_bytes, sm_clock_max_mhz, mem_clock_max_mhz, mem_bandwidth_gbs, power_limit_w): how a GPU that
    KNOWN_DEVICES does not list (e.g. "NVIDIA RTX A6000") is described when training on its own tuning data.

    ValueError names the fields that are missing or not positive (the features need them)."""

    def value(key: str) -> float:
        v = fields.get(key)
        try:
            v = float(v)
        except (TypeError, ValueError):
            return float("nan")
        return v

    bad = [k for k in _REQUIRED_FIELDS if not value(k) > 0]
    if bad:
        raise ValueError(
            f"GPU {name!r} is not in the known table ({', '.join(sorted(KNOWN_DEVICES))}) and its data rows lack "
            f"the device fields {bad}: re-run `gpperf-torch tune` (which records them) or add the GPU to "
            "device.KNOWN_DEVICES"
        )
    vals = {dst: value(src) for src, dst in _FIELD_MAP.items()}
    return DeviceInfo(
        name=name,
        short_name=short_name_of(name),
        capability=_capability(fields.get("capability", "")),
        sm_count=int(vals["sm_count"]),
        max_shared_memory=int(vals["max_shared_memory"]),
        l2_bytes=int(vals["l2_bytes"]) if vals["l2_bytes"] > 0 else 0,
        sm_clock_mhz=int(round(vals["sm_clock_mhz"])),
        mem_clock_mhz=int(round(vals["mem_clock_mhz"])),
        mem_bandwidth_gbs=float(vals["mem_bandwidth_gbs"]),
        power_limit_w=float(vals["power_limit_w"]) if vals["power_limit_w"] > 0 else 0.0,
    )


def _nvml_clocks_power_bandwidth(index: int) -> tuple[int, int, float, float | None] | None:
    """Max SM and memory clocks (MHz), enforced power limit (W) and peak DRAM bandwidth (GB/s) from NVML."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(index)
        sm = pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_SM)
        mem = pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_MEM)
        power = pynvml.nvmlDeviceGetEnforcedPowerLimit(h) / 1000.0
        try:  # double data rate x bus width: e.g. H100 SXM 2 x 2619 MHz x 5120 bit = 3352 GB/s
            bw = 2 * mem * 1e6 * pynvml.nvmlDeviceGetMemoryBusWidth(h) / 8 / 1e9
        except Exception:
            bw = None
        return int(sm), int(mem), float(power), bw
    except Exception as e:  # NVML absent or refused: the table's values stand in
        logger.debug("NVML query failed: %s", e)
        return None


@functools.lru_cache(maxsize=16)
def current_device(index: int | None = None) -> DeviceInfo:
    """Descriptor of a CUDA device from torch (+NVML for clocks, bandwidth and power limit).

    For a GPU in KNOWN_DEVICES the feature-relevant values (clocks, bandwidth) are the table's, the same ones
    its training data was described with, so features match between training and selection.
    """
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("no CUDA device: pass a GPU name (e.g. gpu='h100') to describe one")
    if index is None:
        index = torch.cuda.current_device()
    p = torch.cuda.get_device_properties(index)
    short = short_name_of(p.name)
    base = KNOWN_DEVICES.get(short)
    smem = int(getattr(p, "shared_memory_per_block_optin", 0) or (base.max_shared_memory if base else 101376))
    l2 = int(getattr(p, "L2_cache_size", 0) or (base.l2_bytes if base else 0))
    nv = _nvml_clocks_power_bandwidth(index)
    power = nv[2] if nv else (base.power_limit_w if base else 300.0)
    if base is not None:
        sm_clk, mem_clk, bw = base.sm_clock_mhz, base.mem_clock_mhz, base.mem_bandwidth_gbs
    elif nv is not None:
        sm_clk, mem_clk, bw = nv[0], nv[1], nv[3] or 1000.0
    else:
        sm_clk, mem_clk, bw = 1500, 1500, 1000.0
    return DeviceInfo(p.name, short, (p.major, p.minor), p.multi_processor_count, smem, l2, sm_clk, mem_clk, bw, power)


def device_for(device: object = None, gpu: str | None = None) -> DeviceInfo:
    """Descriptor for a torch device (CUDA) or for a named GPU; on a CPU tensor without a name, the H100."""
    if gpu is not None:
        return known_device(gpu)
    import torch

    dev = torch.device(device) if device is not None else None
    if dev is not None and dev.type == "cuda":
        return current_device(dev.index if dev.index is not None else torch.cuda.current_device())
    if dev is None and torch.cuda.is_available():
        return current_device()
    # CPU (the interpreter): describe the H100 so selection logic runs the same code path.
    return KNOWN_DEVICES["h100"]


__all__ = [
    "DeviceInfo",
    "KNOWN_DEVICES",
    "current_device",
    "descriptor_from_fields",
    "device_for",
    "known_device",
    "short_name_of",
]
