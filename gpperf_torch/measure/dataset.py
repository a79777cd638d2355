"""Dataset schema (the columns of a tuning CSV, one row per shape x dtype x layout x config) and readers.

The writer (`tune.py`) and the readers (this module) share these names; `docs/dataset.md` explains each one.
Derived features are never stored as the only copy: a row carries everything needed to recompute them.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from ..errors import DataFileError
from ..kernels.configs import CONFIG_FIELDS

SCHEMA_VERSION = 1

# Identity of a measurement: rows with equal keys are the same measurement (used to resume a run).
KEY_COLUMNS = ("gpu", "m", "n", "k", "dtype", "a_trans", "b_trans", "tf32", "backend", "config")

COLUMNS = (
    # --- identity ---------------------------------------------------------------------------------
    "gpu",  # device name as the driver reports it
    "m",
    "n",
    "k",  # C[m, n] = A[m, k] @ B[k, n]
    "dtype",  # float16 | bfloat16 | float32
    "a_trans",  # 1 when A is a transposed view (stride over k != 1), else 0
    "b_trans",  # 1 when B is a transposed view (stride over n != 1), else 0
    "tf32",  # 1 when fp32 inputs may use TF32, 0 otherwise (0 for 16-bit inputs)
    "backend",  # triton (our kernel) | torch (torch.matmul, i.e. cuBLAS)
    "config",  # TileConfig.key, empty for backend=torch
    "block_m",
    "block_n",
    "block_k",
    "group_m",
    "split_k",
    "num_warps",
    "num_stages",
    # --- outcome ----------------------------------------------------------------------------------
    "status",  # ok | compile_error | out_of_resources | invalid | oom | error
    "error",  # error text for a failed row, else empty
    # --- runtime ----------------------------------------------------------------------------------
    "time_ms",  # median kernel time
    "time_ms_p20",
    "time_ms_p80",
    "n_reps",
    "tflops",  # 2*m*n*k / time
    # --- energy (empty where NVML or its energy counter is missing) --------------------------------
    "energy_j",  # joules per GEMM from the NVML total-energy counter over a long window
    "power_w",  # average watts over that window
    "power_instant_w",  # NVML_FI_DEV_POWER_INSTANT sampled at the end of the window
    "idle_power_w",  # watts measured idle before the run
    "dynamic_energy_j",  # energy_j minus idle_power_w * time
    "energy_window_s",
    "energy_reps",
    # --- conditions -------------------------------------------------------------------------------
    "sm_clock_mhz",
    "mem_clock_mhz",
    "temp_c",
    "power_limit_w",
    # --- device descriptor and provenance -----------------------------------------------------------
    "capability",  # e.g. 9.0
    "sm_count",
    "max_shared_memory",
    "l2_bytes",
    "sm_clock_max_mhz",
    "mem_clock_max_mhz",
    "mem_bandwidth_gbs",  # peak DRAM bandwidth (table value, or 2 x memory clock x bus width from NVML)
    "driver",
    "cuda",
    "torch",
    "triton",
    "interpreted",  # 1 when measured through the Triton interpreter (wall clock, not GPU numbers)
    "run_id",
    "timestamp",
    "worker",  # host/device that measured the row, e.g. node3/cuda:1 (last: files from before it still resume)
)

STATUSES = ("ok", "compile_error", "out_of_resources", "invalid", "oom", "error")


# ---- readers --------------------------------------------------------------------------------------
# Everything below turns CSV files (ours, or the public Inductor autotuning data) into one `Table` of numpy
# columns. Training, evaluation and the plots read only `Table`, never the CSVs.

logger = logging.getLogger(__name__)

# The columns every `Table` has, whichever format it came from (a superset of what training needs).
INT_COLUMNS = (
    "m", "n", "k", "a_trans", "b_trans", "tf32",
    "block_m", "block_n", "block_k", "group_m", "split_k", "num_warps", "num_stages", "interpreted",
)  # fmt: skip
FLOAT_COLUMNS = ("time_ms", "power_w", "energy_j")
STR_COLUMNS = ("gpu", "dtype", "backend", "config", "status", "source")
# The device descriptor a tuning row carries (NaN / "" where absent, e.g. in the public data): it describes a
# GPU that device.KNOWN_DEVICES does not know (device.descriptor_from_fields).
DEVICE_FLOAT_COLUMNS = (
    "sm_count", "max_shared_memory", "l2_bytes", "sm_clock_max_mhz", "mem_clock_max_mhz", "mem_bandwidth_gbs",
    "power_limit_w",
)  # fmt: skip
DEVICE_STR_COLUMNS = ("capability",)
DEVICE_COLUMNS = DEVICE_STR_COLUMNS + DEVICE_FLOAT_COLUMNS
TABLE_COLUMNS = STR_COLUMNS + INT_COLUMNS + FLOAT_COLUMNS + DEVICE_COLUMNS

# The public data (see /work/shared/data/autoheuristic_mm/README.md): recognised by these header names.
PUBLIC_COLUMNS = (
    "gpu",
    "m",
    "k",
    "n",
    "dtype",
    "a_stride1",
    "b_stride1",
    "tf32",
    "backend",
    "time_ms_median",
)
# Inductor's mm template always uses GROUP_M=8 and no split-K.
PUBLIC_GROUP_M = 8
TORCH_KEY = "torch"  # the candidate key of torch.matmul (cuBLAS) in tables and model metadata


def group_key_of(gpu: str, m: int, n: int, k: int, dtype: str, a_trans: int, b_trans: int, tf32: int) -> tuple:
    """One GEMM problem on one GPU: the rows sharing it are the candidates a selector chooses between."""
    return (gpu, int(m), int(n), int(k), dtype, int(a_trans), int(b_trans), int(tf32))


class Table:
    """Numpy columns of equal length (see TABLE_COLUMNS), plus the per-row `group_key` and group ids."""

    def __init__(self, columns: dict[str, np.ndarray]) -> None:
        lengths = {name: len(col) for name, col in columns.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"Table columns differ in length: {lengths}")
        missing = [c for c in TABLE_COLUMNS if c not in columns]
        if missing:
            raise ValueError(f"Table is missing columns {missing}; build it with load_table() or from_rows()")
        self.columns = columns
        self._groups: tuple[np.ndarray, list[tuple]] | None = None

    def __len__(self) -> int:
        return len(self.columns["m"])

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[name]

    def __contains__(self, name: str) -> bool:
        return name in self.columns

    def __repr__(self) -> str:
        return f"Table({len(self)} rows, {self.n_groups} groups, gpus={sorted(set(self['gpu'].tolist()))})"

    def subset(self, index: np.ndarray) -> Table:
        """Rows selected by a boolean mask or an index array."""
        return Table({name: col[index] for name, col in self.columns.items()})

    def _group_index(self) -> tuple[np.ndarray, list[tuple]]:
        if self._groups is None:
            keys = self.group_key
            ids: dict[tuple, int] = {}
            gid = np.fromiter((ids.setdefault(key, len(ids)) for key in keys), dtype=np.int64, count=len(keys))
            self._groups = (gid, list(ids))
        return self._groups

    @property
    def group_key(self) -> list[tuple]:
        """(gpu, m, n, k, dtype, a_trans, b_trans, tf32) of every row."""
        c = self.columns
        return [
            group_key_of(*row)
            for row in zip(
                c["gpu"].tolist(), c["m"].tolist(), c["n"].tolist(), c["k"].tolist(), c["dtype"].tolist(),
                c["a_trans"].tolist(), c["b_trans"].tolist(), c["tf32"].tolist(), strict=True,
            )
        ]  # fmt: skip

    @property
    def group_id(self) -> np.ndarray:
        """Dense int id of each row's group (ids follow first appearance)."""
        return self._group_index()[0]

    @property
    def groups(self) -> list[tuple]:
        """The distinct group keys, indexed by `group_id`."""
        return self._group_index()[1]

    @property
    def n_groups(self) -> int:
        return len(self.groups)

    @property
    def ok(self) -> np.ndarray:
        """Rows with a usable time: status ok and a finite positive time."""
        t = self.columns["time_ms"]
        return (self.columns["status"] == "ok") & np.isfinite(t) & (t > 0)

    def device_fields(self, gpu: str) -> dict:
        """The device descriptor columns recorded on the rows of GPU `gpu`: each the first value present.

        Fields no row carries are left out (the public data has none); see device.descriptor_from_fields.
        """
        sel = self.columns["gpu"] == gpu
        out: dict = {}
        for name in DEVICE_COLUMNS:
            if name not in self.columns:
                continue
            col = self.columns[name][sel]
            present = col != "" if name in DEVICE_STR_COLUMNS else np.isfinite(col.astype(np.float64))
            if present.any():
                out[name] = col[np.argmax(present)]
        return out

    def has_target(self, name: str, rows: np.ndarray | None = None) -> bool:
        """True when column `name` is finite and positive on all `rows` (default: the ok rows)."""
        if name not in self.columns:
            return False
        col = self.columns[name][self.ok if rows is None else rows]
        return len(col) > 0 and bool(np.all(np.isfinite(col) & (col > 0)))


class BadValue(ValueError):
    """A field of one row that does not parse (the row is dropped and counted, see read_csv)."""


def _to_float(text: str | None, column: str = "") -> float:
    """Empty -> NaN; a number (also inf/nan) -> float; anything else is a BadValue (a torn or foreign row)."""
    if text is None or text.strip() == "":
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise BadValue(f"{column}={text!r} is not a number") from None


def _to_int(text: str | None, default: int = 0, column: str = "") -> int:
    """Empty -> `default`; an integer (or an integral float such as '64.0') -> int; else a BadValue."""
    if text is None or text.strip() == "":
        return default
    try:
        return int(text)
    except ValueError:
        pass
    try:
        x = float(text)
    except ValueError:
        raise BadValue(f"{column}={text!r} is not an integer") from None
    if not x.is_integer():
        raise BadValue(f"{column}={text!r} is not an integer")
    return int(x)


def _size(r: dict[str, str], column: str) -> int:
    v = _to_int(r.get(column), -1, column)
    if v < 1:
        raise BadValue(f"{column}={r.get(column)!r} is not a positive integer")
    return v


def _flag(r: dict[str, str], column: str) -> int:
    v = _to_int(r.get(column), 0, column)
    if v not in (0, 1):
        raise BadValue(f"{column}={r.get(column)!r} is not 0 or 1")
    return v


DTYPES = ("float16", "bfloat16", "float32")


def _dtype(text: str | None) -> str:
    d = (text or "").strip().replace("torch.", "")
    if d not in DTYPES:
        raise BadValue(f"dtype={text!r} is not one of {', '.join(DTYPES)}")
    return d


def _gpu(text: str | None) -> str:
    g = (text or "").strip()
    if not g:
        raise BadValue("gpu is empty")
    return g


_PUBLIC_BACKENDS = ("triton", "extern_mm")
_PUBLIC_TF32 = ("True", "False", "not_float_32")


def _public_row(r: dict[str, str]) -> dict:
    backend = r["backend"]
    if backend not in _PUBLIC_BACKENDS:
        raise BadValue(f"backend={backend!r} is not one of {', '.join(_PUBLIC_BACKENDS)}")
    if r["tf32"] not in _PUBLIC_TF32:
        raise BadValue(f"tf32={r['tf32']!r} is not one of {', '.join(_PUBLIC_TF32)}")
    t = _to_float(r["time_ms_median"], "time_ms_median")
    triton = backend == "triton"
    cfg = {
        "block_m": _size(r, "block_m") if triton else 0,
        "block_n": _size(r, "block_n") if triton else 0,
        "block_k": _size(r, "block_k") if triton else 0,
        "group_m": PUBLIC_GROUP_M if triton else 0,
        "split_k": 1 if triton else 0,
        "num_warps": _size(r, "num_warps") if triton else 0,
        "num_stages": _size(r, "num_stages") if triton else 0,
    }
    return {
        "gpu": _gpu(r["gpu"]),
        "m": _size(r, "m"),
        "n": _size(r, "n"),
        "k": _size(r, "k"),
        "dtype": _dtype(r["dtype"]),
        "a_trans": int(_to_int(r["a_stride1"], 1, "a_stride1") != 1),
        "b_trans": int(_to_int(r["b_stride1"], 1, "b_stride1") != 1),
        "tf32": int(r["tf32"] == "True"),
        "backend": "triton" if triton else TORCH_KEY,
        "config": _config_key(cfg) if triton else "",
        **cfg,
        "status": "ok" if math.isfinite(t) and t > 0 else "error",
        "time_ms": t if math.isfinite(t) else math.inf,
        "power_w": math.nan,
        "energy_j": math.nan,
        "interpreted": 0,
        "source": "public",
    }


def _config_key(cfg: dict) -> str:
    return (
        f"{cfg['block_m']}x{cfg['block_n']}x{cfg['block_k']}_g{cfg['group_m']}_s{cfg['split_k']}"
        f"_w{cfg['num_warps']}_st{cfg['num_stages']}"
    )


_OUR_BACKENDS = ("triton", TORCH_KEY)


def _our_row(r: dict[str, str]) -> dict:
    backend = (r.get("backend") or "").strip()
    if backend not in _OUR_BACKENDS:
        raise BadValue(f"backend={r.get('backend')!r} is not one of {', '.join(_OUR_BACKENDS)}")
    triton = backend == "triton"
    status = (r.get("status") or "ok").strip()
    if status not in STATUSES:
        raise BadValue(f"status={status!r} is not one of {', '.join(STATUSES)}")
    # A failed row may lack config fields (e.g. an invalid key); a measured Triton row must have them all.
    if triton and status == "ok":
        cfg = {c: _size(r, c) for c in CONFIG_FIELDS}
    else:
        cfg = {c: (_to_int(r.get(c), 0, c) if triton else 0) for c in CONFIG_FIELDS}
    t = _to_float(r.get("time_ms"), "time_ms")
    if status != "ok" or not math.isfinite(t):
        t = math.inf
    return {
        "gpu": _gpu(r["gpu"]),
        "m": _size(r, "m"),
        "n": _size(r, "n"),
        "k": _size(r, "k"),
        "dtype": _dtype(r["dtype"]),
        "a_trans": _flag(r, "a_trans"),
        "b_trans": _flag(r, "b_trans"),
        "tf32": _flag(r, "tf32"),
        "backend": TORCH_KEY if not triton else "triton",
        "config": (r.get("config") or _config_key(cfg)) if triton else "",
        **cfg,
        "status": status,
        "time_ms": t,
        "power_w": _to_float(r.get("power_w"), "power_w"),
        "energy_j": _to_float(r.get("energy_j"), "energy_j"),
        "interpreted": _flag(r, "interpreted"),
        "source": "tuning",
        "capability": (r.get("capability") or "").strip(),
        **{c: _to_float(r.get(c), c) for c in DEVICE_FLOAT_COLUMNS},
    }


def detect_format(header: Sequence[str]) -> str:
    """'tuning' (our CSV, see COLUMNS) or 'public' (Inductor autotuning data); ValueError otherwise."""
    names = set(header)
    if {"status", "time_ms", "config", "a_trans"} <= names:
        return "tuning"
    if set(PUBLIC_COLUMNS) <= names:
        return "public"
    shown = ",".join(header)
    shown = shown if len(shown) <= 80 else shown[:80] + "..."
    raise ValueError(
        f"unrecognised CSV header {shown!r}: expected our tuning columns"
        f" (gpperf_torch.dataset.COLUMNS, written by `gpperf-torch tune`) or the public autoheuristic columns"
        f" ({', '.join(PUBLIC_COLUMNS)})"
    )


def from_rows(rows: Iterable[dict]) -> Table:
    """A Table from dicts holding TABLE_COLUMNS (what the readers build internally; handy in tests)."""
    rows = list(rows)
    cols: dict[str, np.ndarray] = {}
    for name in TABLE_COLUMNS:
        values = [r.get(name) for r in rows]
        if name in INT_COLUMNS:
            cols[name] = np.asarray([0 if v is None else v for v in values], dtype=np.int64)
        elif name in FLOAT_COLUMNS or name in DEVICE_FLOAT_COLUMNS:
            cols[name] = np.asarray([math.nan if v is None else v for v in values], dtype=np.float64)
        else:
            cols[name] = np.asarray(["" if v is None else v for v in values], dtype=object)
    return Table(cols)


# Sniffed before parsing: a NUL byte never occurs in a CSV we can read (csv would stop on it with a less
# helpful message), so a file holding one in its first block is reported as binary.
_SNIFF_BYTES = 8192


def open_text_table(path: str | Path):
    """`path` opened for csv reading, after checks that name the file: it exists, is a regular file, is not
    empty, is not binary. DataFileError otherwise (never modifies the file)."""
    path = Path(path)
    if not path.exists():
        raise DataFileError(f"{path}: no such file")
    if path.is_dir():
        raise DataFileError(f"{path}: is a directory, expected a CSV file")
    try:
        with path.open("rb") as f:
            head = f.read(_SNIFF_BYTES)
    except OSError as e:
        raise DataFileError(f"{path}: cannot read it ({e.strerror or e})") from e
    if not head.strip():
        raise DataFileError(f"{path}: the file is empty (no header line)")
    if b"\0" in head:
        raise DataFileError(f"{path}: a binary file, not a CSV")
    return path.open(newline="", encoding="utf-8-sig")  # -sig: a byte-order mark (spreadsheet exports) is no header


def read_csv(path: str | Path) -> tuple[list[dict], str]:
    """Rows of one CSV in Table form, and the detected format (see `read_csv_counted`)."""
    rows, fmt, _ = read_csv_counted(path)
    return rows, fmt


def read_csv_counted(path: str | Path) -> tuple[list[dict], str, int]:
    """Rows of one CSV in Table form, the detected format, and how many malformed rows were dropped.

    A row with another number of fields than the header (a write cut by a crash, a stray line) or with a value
    that does not parse (a number cut short, an unknown dtype or status) is dropped, never read as data; one
    warning per file says how many and why the first was. DataFileError for a file that is not a dataset.
    """
    path = Path(path)
    n_fields = n_values = 0
    first_bad = ""
    rows: list[dict] = []
    try:
        with open_text_table(path) as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if not header or not any(h.strip() for h in header):
                raise DataFileError(f"{path}: the first line is empty; expected a CSV header")
            try:
                fmt = detect_format(header)
            except ValueError as e:
                raise DataFileError(f"{path}: {e}") from None
            convert = _public_row if fmt == "public" else _our_row
            width = len(header)
            for values in reader:
                if not values:  # a blank line
                    continue
                if len(values) != width:
                    n_fields += 1
                    first_bad = first_bad or f"line {reader.line_num}: {len(values)} fields, the header has {width}"
                    continue
                try:
                    rows.append(convert(dict(zip(header, values, strict=True))))
                except BadValue as e:
                    n_values += 1
                    first_bad = first_bad or f"line {reader.line_num}: {e}"
    except UnicodeDecodeError as e:
        raise DataFileError(f"{path}: not a UTF-8 text file (byte offset {e.start}); expected a CSV") from None
    except csv.Error as e:
        raise DataFileError(f"{path}: not a readable CSV ({e})") from None
    if n_fields or n_values:
        logger.warning(
            "%s: dropped %d malformed rows (%d with a wrong number of fields, %d with a value that does not "
            "parse; first: %s)",
            path, n_fields + n_values, n_fields, n_values, first_bad,
        )  # fmt: skip
    return rows, fmt, n_fields + n_values


def load_table(paths: str | Path | Sequence[str | Path], *, include_interpreted: bool = False) -> Table:
    """Read CSVs of either format (auto-detected per file) into one Table.

    Rows measured through the Triton interpreter (interpreted=1) are wall-clock CPU numbers, not GPU numbers:
    they are dropped unless `include_interpreted` (tests use them to exercise the pipeline).
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    if not paths:
        raise DataFileError("no data files given")
    rows: list[dict] = []
    n_interp = n_dropped = 0
    for p in paths:
        part, fmt, dropped = read_csv_counted(p)
        n_dropped += dropped
        interp = sum(r["interpreted"] for r in part)
        if interp and not include_interpreted:
            logger.info("%s: dropping %d interpreted rows (pass include_interpreted to keep them)", p, interp)
            part = [r for r in part if not r["interpreted"]]
            n_interp += interp
        logger.debug("%s: %d rows (%s format)", p, len(part), fmt)
        rows.extend(part)
    if not rows:
        names = ", ".join(map(str, paths))
        if n_interp:
            raise DataFileError(
                f"no usable rows in {names}: all {n_interp} measured rows were timed through the Triton interpreter"
                " (`tune --interpret`), which gives CPU wall-clock times, not GPU timings, so they cannot train or"
                " judge a model. Measure on a GPU with `gpperf-torch tune --out FILE`, or pass --include-interpreted"
                " (include_interpreted=True) to exercise the pipeline only"
            )
        why = f"all {n_dropped} rows are malformed (see the warning above)" if n_dropped else "no data rows"
        raise DataFileError(f"no usable rows in {names}: {why}")
    return from_rows(rows)


def data_hash(paths: str | Path | Sequence[str | Path]) -> str:
    """sha256 over the bytes of the data files (in the given order): recorded as a model's provenance."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()
