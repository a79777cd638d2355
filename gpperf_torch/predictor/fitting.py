"""Fitting: the grouped split and the random-forest time model (rel + offset + roofline) and energy head.

Offline only (scikit-learn): the op never imports this module. See train.py for the whole pipeline and
export.py for the ONNX graph these forests become.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np

from ..measure.dataset import TORCH_KEY, Table
from ..measure.device import DeviceInfo, short_name_of
from ..policy.dispatch import k_ratio
from .evaluation import energy_rows, rank_static_configs
from .features import CONFIG_COLUMNS, FEATURE_NAMES, feature_index, table_device, table_features

logger = logging.getLogger(__name__)

TARGETS = ("time_ms", "power_w", "energy_j")

# Forest size: the leaf cap bounds the ONNX file (~38 B per node) whatever the data size, so that a model stays
# tens of MiB at most (H100 7 MiB, A100 22 MiB with its larger rank forest, below) and loads in under 0.5 s; on H100
# held-out regret is within noise of 48 uncapped trees (docs/predictor.md).
DEFAULT_PARAMS = {
    "n_estimators": 32,
    "max_leaf_nodes": 1500,
    "min_samples_leaf": 1,
    "max_features": 0.8,
    "max_samples": None,
}
# The rank forest's leaf cap grows with its data beyond LARGE_RANK_ROWS rows: one leaf per RANK_ROWS_PER_LEAF rows,
# at most MAX_RANK_LEAVES. At 1500 leaves the A100's ~42k-60k rank rows (the public A100 data) were under-fitted:
# with 4000, held-out regret fell from 1.0327 to 1.0220 on whole HF families held out and from 1.0198 to 1.0139 on
# the random split (seeds 0-2); dispatch on new families 1.0162 -> 1.0169, on the random split 1.0066 -> 1.0087,
# trained on random shapes and evaluated on HF ones 1.0051 -> 1.0140 (1.7% -> 0.4% of shapes below 0.97x).
# With 8000 (benchmarks/variant_frontier.py, seeds 0-5, z = 1): regret 1.0224 -> 1.0205 (families), 1.0137 ->
# 1.0114 (random split), 1.0665 -> 1.0647 (random -> HF), dispatch 1.0169 -> 1.0173, 1.0089 -> 1.0100, 1.0140 ->
# 1.0144; 16000 adds nothing (1.0202 / 1.0112 / 1.0664). The file grows with the leaves (docs/predictor.md).
# The H100's ~15k rows keep 1500 (4000 there: family 1.0414 -> 1.0387, within noise).
LARGE_RANK_ROWS = 20000
RANK_ROWS_PER_LEAF = 5
MAX_RANK_LEAVES = 8000
# A candidate must have been measured (ok) in at least this many training groups: configs seen a handful of
# times are extrapolations, and the selector only chooses among configs the model has learned.
MIN_CANDIDATE_GROUPS = 3


# The time model is two forests whose log outputs add up, plus an analytic roofline term:
#   log time = rel(features) + offset(shape features) + ln2 * max(f_compute - 8, f_memory)
# `rel` sees every feature and learns each config's log time relative to the fastest Triton config of its group
# (its slowdown); `offset` sees only the problem and device (config columns zeroed) and
# learns the group's best log time less the roofline. Within one shape, offset and roofline are the same for
# every config, so the ranking that selection uses is exactly rel's, which does not spend its splits on the
# 1000x spread of sizes (held-out regret on H100 1.058 -> 1.032 against one forest on absolute log time,
# docs/predictor.md). The roofline term is what lets the offset forest, trained on a few hundred groups,
# extrapolate in size (r2 0.975 -> 0.99).
# Why the best rather than the group mean: the best is what selection is about, and the offset then predicts the
# time of the config that will be chosen. Capping the slowdown (so that configs 10-100x slower weigh less in the
# squared error) did not help: cap 1.5 (4.5x) 1.0175, cap 2.5 1.0148, uncapped 1.0148 (H100 held-out regret,
# mean of split seeds 0-39, docs/predictor.md).
COMPUTE_FEATURE = "log2_t_compute_ideal"  # 2MNK / (SMs x MHz)
MEMORY_FEATURE = "log2_t_memory_ideal"  # bytes / (GB/s x 1e3), in microseconds
# Peak rate per SM per cycle, as a power of two: ~2^8 flops on FP32 FMA units (H100 256, A100 128), 8x that on
# tensor cores with TF32 and 16x with 16-bit inputs (H100 and A100 alike). The shift puts the compute term in
# microseconds beside the memory one. Without the tensor-core part, an H100 model trained without K-major TF32
# shapes predicted their time 16x too slow (held-out r2 0.965 at split seed 0; 0.988 with it; mean of seeds 0-9
# 0.9954, H100 rows only).
ROOFLINE_SHIFT = 8.0
TF32_SHIFT = 3.0  # + 1 more for 16-bit inputs
OFFSET_PARAMS = {"n_estimators": 32, "max_features": 1.0, "min_samples_leaf": 1, "max_leaf_nodes": 1500}

# Energy is measured on a subset of rows only (a 0.2 s NVML window per row, `tune --energy-fraction`), so it is
# not a column of the time forests: a third forest, the energy head, is fitted on the rows that have it
# (whichever they are; a group's energy rows are a sample of its configs, so there is no group mean to be
# relative to) and predicts two log columns from all features:
#   head[0] = log power_w
#   head[1] = log(energy_j / time_ms)   (joules per measured millisecond: power plus the energy window's gaps)
# and the graph outputs (log time, head[0], head[1] + log time). Energy thus inherits the time model's accuracy
# in size and learns only its ratio to time, which spans ~3x against time's ~1000x.
ENERGY_PARAMS = {"n_estimators": 32, "max_features": 0.8, "min_samples_leaf": 2, "max_leaf_nodes": 1000}
# A model predicts energy only when this many training rows, from this many groups, have power and energy:
# fewer and the head would be a guess that the `energy`/`edp`/`balanced`/`power_cap` objectives then trust.
MIN_ENERGY_ROWS = 30
MIN_ENERGY_GROUPS = 5


def config_mask() -> np.ndarray:
    """float32 (n_features,): 1 on problem and device features, 0 on config features (the offset's view)."""
    mask = np.ones(len(FEATURE_NAMES), dtype=np.float32)
    mask[CONFIG_COLUMNS] = 0.0
    return mask


def roofline(X: np.ndarray) -> np.ndarray:
    """(n,) float32: the analytic log-time term (what the ONNX graph computes too)."""
    X = np.asarray(X, dtype=np.float32)
    mma, half = X[:, feature_index("mma")], (X[:, feature_index("dtype_bytes")] < 4).astype(np.float32)
    shift = np.float32(ROOFLINE_SHIFT) + mma * (np.float32(TF32_SHIFT) + half)
    base = np.maximum(X[:, feature_index(COMPUTE_FEATURE)] - shift, X[:, feature_index(MEMORY_FEATURE)])
    return base * np.float32(math.log(2.0))


@dataclass
class Fitted:
    """The fitted forests and what export needs to describe them."""

    rel: object  # RandomForestRegressor on all features: log slowdown against the group's best
    offset: object  # RandomForestRegressor on problem/device features: group's best log time less roofline
    targets: tuple[str, ...]  # ("time_ms",) or ("time_ms", "power_w", "energy_j")
    candidates: list[str]  # TileConfig keys, "torch" for torch.matmul
    device: DeviceInfo
    static_ranking: list[str]  # triton configs by how often they were best on training groups
    n_rows: int
    n_groups: int
    params: dict = field(default_factory=dict)
    energy: object | None = None  # RandomForestRegressor: (log power_w, log energy_j/time_ms); None: time only
    time_floor_ms: float | None = None  # the fastest measured training row (predictions are lifted to it)
    k_ratio_max: float | None = None  # the K-heaviest training shape's dispatch.k_ratio (the K guard's bound)
    dispatch: dict | None = None  # the calibrated dispatch policy (dispatch.Policy.as_dict), set by train

    def log_predict(self, X: np.ndarray) -> np.ndarray:
        """(n, n_targets) natural-log predictions, the same values the exported graph computes."""
        X = np.asarray(X, dtype=np.float32)
        rel = np.asarray(self.rel.predict(X), dtype=np.float64).reshape(len(X))
        off = np.asarray(self.offset.predict(X * config_mask()), dtype=np.float64).reshape(len(X))
        log_t = rel + off + roofline(X)
        if self.energy is None:
            return log_t[:, None]
        head = np.asarray(self.energy.predict(X), dtype=np.float64).reshape(len(X), 2)
        return np.stack([log_t, head[:, 0], head[:, 1] + log_t], axis=1)

    def predict_features(self, X: np.ndarray) -> np.ndarray:
        """Same contract as Predictor.predict_features: linear units, (n, n_targets)."""
        return np.exp(self.log_predict(X))

    def predict_with_spread(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Same contract as Predictor.predict_with_spread: (predict_features(X), (n, n_trees) per-tree log
        deviations of the rank forest from its mean)."""
        X = np.asarray(X, dtype=np.float32)
        trees = np.stack([t.predict(X) for t in self.rel.estimators_], axis=1).astype(np.float64)
        return self.predict_features(X), trees - trees.mean(axis=1, keepdims=True)

    @property
    def meta(self) -> dict:
        return {
            "targets": list(self.targets),
            "baseline_static_ranking": self.static_ranking,
            **({"dispatch": self.dispatch} if self.dispatch else {}),
        }

    @property
    def forests(self) -> tuple:
        return (self.rel, self.offset) + ((self.energy,) if self.energy is not None else ())

    @property
    def n_nodes(self) -> int:
        return int(sum(t.tree_.node_count for f in self.forests for t in f.estimators_))


# ---- splitting ---------------------------------------------------------------------------------------
def grouped_split(table: Table, test_frac: float = 0.3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Boolean (train, test) row masks; every group (one GEMM problem on one GPU) falls wholly on one side."""
    if not 0.0 < test_frac < 1.0:
        raise ValueError(f"test_frac must be in (0, 1), got {test_frac}")
    n_groups = table.n_groups
    if n_groups < 2:
        raise ValueError(f"a grouped split needs at least 2 groups (GEMM problems), the table has {n_groups}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(n_groups)
    n_test = min(max(1, round(test_frac * n_groups)), n_groups - 1)
    test_groups = np.zeros(n_groups, dtype=bool)
    test_groups[order[:n_test]] = True
    test = test_groups[table.group_id]
    return ~test, test


def split_for_target(
    table: Table, test_frac: float = 0.3, seed: int = 0, target_gpu: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """grouped_split, or with `target_gpu`: the target GPU's groups split as grouped_split splits them on their
    own (so the held-out groups equal those of a single-GPU run with the same seed), every other row trains."""
    if target_gpu is None:
        return grouped_split(table, test_frac=test_frac, seed=seed)
    on_target = gpu_rows(table, target_gpu)
    _, te = grouped_split(table.subset(on_target), test_frac=test_frac, seed=seed)
    test = np.zeros(len(table), dtype=bool)
    test[np.flatnonzero(on_target)[te]] = True
    return ~test, test


# A model family, for data without a model column: GEMMs of one transformer width share their weight dimensions,
# and the smallest dimension of a projection, MLP or LM-head GEMM (forward, or either gradient) is the hidden
# size unless the token count is smaller. So the family key of a shape is its smallest dimension of at least
# FAMILY_MIN_DIM (below it: classification heads, tiny batches), else its largest. On the public HF GEMMs this
# gives 7 families (hidden 128 ... 2048; 768: 30% of the shapes). Used to hold out whole families.
FAMILY_MIN_DIM = 128


def family_keys(table: Table) -> np.ndarray:
    """(n_rows,) int64 family key of each row's shape (see FAMILY_MIN_DIM)."""
    d = np.stack([table[c].astype(np.int64) for c in ("m", "n", "k")], axis=1)
    big = np.where(d >= FAMILY_MIN_DIM, d, np.iinfo(np.int64).max).min(axis=1)
    return np.where(big == np.iinfo(np.int64).max, d.max(axis=1), big)


def family_split(
    table: Table, rows: np.ndarray, families: np.ndarray, *, test_frac: float = 0.3, seed: int = 0,
    target_gpu: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(train, test) masks within `rows`: of the target GPU's rows (all of `rows` without one), those with a
    family (`families` >= 0) leave by whole families (shuffled by `seed`, added until `test_frac` of those groups
    is held out: at least one family, never all), the others by groups (grouped_split). Rows of other GPUs train,
    except those of a held-out family: a family seen on another GPU would not be new."""
    rows = np.asarray(rows, dtype=bool)
    families = np.asarray(families)
    on = rows & (gpu_rows(table, target_gpu) if target_gpu else True)
    fam_on = on & (families >= 0)
    test = np.zeros(len(table), dtype=bool)
    loose = on & ~fam_on
    if loose.any():
        _, te = grouped_split(table.subset(loose), test_frac=test_frac, seed=seed)
        test[np.flatnonzero(loose)[te]] = True
    fams = np.unique(families[fam_on])
    if len(fams) > 1:
        gid = table.group_id
        size = {f: len(np.unique(gid[fam_on & (families == f)])) for f in fams.tolist()}
        total, held, out = sum(size.values()), 0, []
        for f in np.random.default_rng(seed).permutation(fams).tolist():
            if out and held >= test_frac * total:
                break
            if len(out) == len(fams) - 1:
                break
            out.append(f)
            held += size[f]
        gone = np.isin(families, out)
        test |= fam_on & gone
        return rows & ~test & ~(gone & (families >= 0)), test
    return rows & ~test, test


# ---- fitting -------------------------------------------------------------------------------------------
def targets_of(table: Table, rows: np.ndarray) -> tuple[str, ...]:
    """time_ms, plus power_w and energy_j when enough of `rows` have them (MIN_ENERGY_ROWS / _GROUPS).

    Energy may be on any subset of the rows (tuning measures it on a fraction of them); too few and the model is
    time-only, with a warning that says why.
    """
    e = energy_rows(table, rows)
    n_rows, n_groups = int(e.sum()), len(np.unique(table.group_id[e]))
    if n_rows >= MIN_ENERGY_ROWS and n_groups >= MIN_ENERGY_GROUPS:
        return TARGETS
    if n_rows:
        logger.warning(
            "energy measured on only %d training rows in %d groups (need >= %d rows in >= %d groups): the model "
            "predicts time only", n_rows, n_groups, MIN_ENERGY_ROWS, MIN_ENERGY_GROUPS,
        )  # fmt: skip
    return ("time_ms",)


def gpu_rows(table: Table, gpu: str) -> np.ndarray:
    """Rows measured on GPU `gpu`: the exact driver name, or any name with the same short name ("h100")."""
    names = table["gpu"].astype(str)
    want = short_name_of(gpu)
    match = {n for n in set(names.tolist()) if n == gpu or short_name_of(n) == want}
    if not match:
        raise ValueError(f"no rows of GPU {gpu!r} in the data; its GPUs: {sorted(set(names.tolist()))}")
    return np.isin(names, sorted(match))


def training_device(table: Table) -> DeviceInfo:
    """The descriptor of the table's (most common) GPU: recorded as the model's device."""
    names, counts = np.unique(table["gpu"].astype(str), return_counts=True)
    if len(names) > 1:
        logger.warning("training on several GPUs %s: the model's device is the most common", names.tolist())
    return table_device(table, str(names[np.argmax(counts)]))


def candidate_keys(table: Table, rows: np.ndarray, min_groups: int = MIN_CANDIDATE_GROUPS) -> list[str]:
    """Triton configs measured ok in >= min_groups groups of `rows` (most common first, ties by key: the order
    must not depend on the process's string hashing, or a retrained model's candidate list, and so the order its
    exact ties fall in, would change from run to run), then "torch"."""
    sel = rows & (table["backend"] == "triton")
    pairs = set(zip(table["config"][sel].tolist(), table.group_id[sel].tolist(), strict=True))
    counts: dict[str, int] = {}
    for key, _ in pairs:
        counts[key] = counts.get(key, 0) + 1
    keys = sorted((k for k, c in counts.items() if c >= min(min_groups, table.n_groups)), key=lambda k: (-counts[k], k))
    if np.any(rows & (table["backend"] == TORCH_KEY)):
        keys.append(TORCH_KEY)
    return keys


def training_k_ratio_max(table: Table, rows: np.ndarray) -> float | None:
    """The largest dispatch.k_ratio (log2 K - (log2 M + log2 N) / 2) among the shapes of `rows` (the target GPU's
    rows with a usable Triton measurement): beyond it the K guard sends a shape to torch.matmul."""
    if not np.any(rows):
        return None
    return float(np.max(k_ratio(table["m"][rows], table["n"][rows], table["k"][rows])))


def rank_leaf_cap(n_rows: int) -> int:
    """The rank forest's max_leaf_nodes for `n_rows` training rows (see LARGE_RANK_ROWS)."""
    if n_rows <= LARGE_RANK_ROWS:
        return DEFAULT_PARAMS["max_leaf_nodes"]
    return min(MAX_RANK_LEAVES, n_rows // RANK_ROWS_PER_LEAF)


def _row_mask(table: Table, rows) -> np.ndarray:
    rows = np.ones(len(table), dtype=bool) if rows is None else np.asarray(rows)
    if rows.dtype != bool:
        mask = np.zeros(len(table), dtype=bool)
        mask[rows] = True
        rows = mask
    return rows


def _take(weight: np.ndarray | None, rows: np.ndarray) -> np.ndarray | None:
    return None if weight is None else weight[rows]


def fit(
    table: Table,
    *,
    rows: np.ndarray | None = None,
    targets: tuple[str, ...] | None = None,
    seed: int = 0,
    device_lookup=None,
    n_jobs: int = -1,
    target_gpu: str | None = None,
    target_weight: float = 1.0,
    rank_other_gpus: bool = False,
    **params,
) -> Fitted:
    """Fit the time forests (see Fitted) on the ok rows of `rows`, and the energy head on those of them that
    have power and energy (when enough do, see targets_of; `targets=("time_ms",)` forces a time-only model).

    `target_gpu` (a name or short name, e.g. "h100") trains one GPU's model on data from several: every GPU's
    rows train the forests, each with its own device features, while the candidates, the recorded device and
    the static ranking come from the target GPU's rows alone; `target_weight` weighs its rows against the others.
    The rank forest (`rel`, the one selection ranks by) trains on the target GPU's rows only unless
    `rank_other_gpus`: other GPUs' per-config speeds differ (H100 held-out regret, split seeds 3-7: 1.0318 with
    the A100 rows, 1.0186 without); the offset forest and the energy head train on every GPU's rows.
    Rows of groups without a usable Triton measurement (torch-only) are left out of the time forests.
    """
    from sklearn.ensemble import RandomForestRegressor

    unknown = set(params) - set(DEFAULT_PARAMS) - {"max_depth"}
    if unknown:
        raise TypeError(f"fit: unknown forest parameters {sorted(unknown)}; known: {sorted(DEFAULT_PARAMS)}")
    rows = _row_mask(table, rows)
    usable = rows & table.ok
    if usable.sum() < 2:
        raise ValueError(f"fit: only {int(usable.sum())} usable rows (status ok, finite time); need more data")
    target_rows = gpu_rows(table, target_gpu) & rows if target_gpu else rows
    if target_gpu and not np.any(target_rows & table.ok):
        raise ValueError(f"fit: no usable training rows of the target GPU {target_gpu!r}")
    if targets is None:
        targets = targets_of(table, usable)
    targets = tuple(targets)
    if targets not in (("time_ms",), TARGETS):
        raise ValueError(f"fit: targets must be ('time_ms',) or {TARGETS}, got {targets}")
    e_rows = energy_rows(table, usable)
    if len(targets) > 1 and not e_rows.any():
        raise ValueError("fit: no training row has power_w and energy_j; fit a time-only model")
    X = table_features(table, device_lookup)
    log_t = np.log(np.where(usable, table["time_ms"], 1.0))
    # Weights only when asked for: scikit-learn draws its bootstrap differently once any weight is given.
    weight = np.where(gpu_rows(table, target_gpu), target_weight, 1.0) if target_gpu and target_weight != 1 else None
    # Each group's best log time over its usable Triton rows: the offset forest's target, rel's reference.
    gid = table.group_id
    tri = usable & (table["backend"] == "triton")
    counts = np.bincount(gid[tri], minlength=table.n_groups)
    best = np.full(table.n_groups, np.inf)
    np.minimum.at(best, gid[tri], log_t[tri])
    rel_rows = usable & (counts[gid] > 0)
    # The shape-level offset learns from every GPU (its device features transfer sizes across them); the rank
    # forest only from the target GPU unless asked otherwise.
    off_source = rel_rows
    if target_gpu and not rank_other_gpus:
        rel_rows = rel_rows & target_rows
        if not rel_rows.any():
            raise ValueError(f"fit: no target GPU {target_gpu!r} rows with a usable Triton measurement")
    _, first = np.unique(gid[off_source], return_index=True)
    off_rows = np.flatnonzero(off_source)[first]
    forest_params = {**DEFAULT_PARAMS, **params}
    if "max_leaf_nodes" not in params:
        forest_params["max_leaf_nodes"] = rank_leaf_cap(int(rel_rows.sum()))
    t0 = time.perf_counter()
    rel = RandomForestRegressor(random_state=seed, n_jobs=n_jobs, **forest_params)
    # torch.matmul rows may be faster than every Triton config: their slowdown is negative.
    y_rel = log_t[rel_rows] - best[gid[rel_rows]]
    rel.fit(X[rel_rows], y_rel, sample_weight=_take(weight, rel_rows))
    offset = RandomForestRegressor(random_state=seed, n_jobs=n_jobs, **OFFSET_PARAMS)
    y_off = best[gid[off_rows]] - roofline(X[off_rows])
    offset.fit(X[off_rows] * config_mask(), y_off, sample_weight=_take(weight, off_rows))
    energy = None
    energy_params = {**ENERGY_PARAMS, "n_estimators": min(ENERGY_PARAMS["n_estimators"], forest_params["n_estimators"])}
    if len(targets) > 1:
        energy = RandomForestRegressor(random_state=seed, n_jobs=n_jobs, **energy_params)
        y_e = np.stack([np.log(table["power_w"][e_rows]), np.log(table["energy_j"][e_rows]) - log_t[e_rows]], 1)
        energy.fit(X[e_rows], y_e, sample_weight=_take(weight, e_rows))
    logger.info(
        "fitted time forests %d+%d trees on %d rows / %d groups%s x %d features in %.1f s",
        rel.n_estimators, offset.n_estimators, int(rel_rows.sum()), len(off_rows),
        f", energy head on {int(e_rows.sum())} rows / {len(np.unique(gid[e_rows]))} groups" if energy else "",
        X.shape[1], time.perf_counter() - t0,
    )  # fmt: skip
    tgt_usable = usable & target_rows
    return Fitted(
        rel=rel,
        offset=offset,
        energy=energy,
        targets=targets,
        candidates=candidate_keys(table, tgt_usable),
        device=training_device(table.subset(tgt_usable)),
        static_ranking=rank_static_configs(table, target_rows),
        time_floor_ms=float(np.min(table["time_ms"][tgt_usable])),
        k_ratio_max=training_k_ratio_max(table, tgt_usable & tri),
        n_rows=int(usable.sum()),
        n_groups=len(np.unique(table.group_id[rows])),
        params={
            "rel": forest_params,
            "offset": OFFSET_PARAMS,
            **({"energy": energy_params, "n_energy_rows": int(e_rows.sum())} if energy else {}),
            "seed": seed,
            "roofline_shift": ROOFLINE_SHIFT,
            "rel_target": "log time - group's best Triton log time",
            **({"target_gpu": target_gpu, "target_weight": target_weight} if target_gpu else {}),
            **({"rank_other_gpus": rank_other_gpus} if target_gpu else {}),
            "n_rel_rows": int(rel_rows.sum()),
            "train_gpus": sorted(set(table["gpu"][usable].astype(str).tolist())),
        },
    )
