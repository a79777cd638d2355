"""Run-time predictor: a model.onnx + model.json pair, verified on load, that predicts time (and energy).

Imports only numpy, onnxruntime and the standard library besides gpperf's own features/device/kernels: the op
loads this module, and scikit-learn or skl2onnx must never be needed to select a config. Models load from
ONNX + JSON only, never pickle.

model.json (written by train.export) carries what is needed to use the ONNX graph correctly and to refuse it
when it does not fit: the feature schema version and names, the target names and their transform, the
candidate configs, the training device, and the sha256 of model.onnx. Any mismatch is a ValueError naming the
file and the fix, never a silently wrong model.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..kernels.configs import TileConfig
from ..measure.dataset import TORCH_KEY
from ..measure.device import DeviceInfo
from . import model_meta
from .features import FEATURE_NAMES, config_matrix, shape_features

logger = logging.getLogger(__name__)

DATA_DIR = Path(__file__).resolve().parents[1] / "data"  # gpperf_torch/data: the shipped models


def model_paths(path: str | Path) -> tuple[Path, Path]:
    """(onnx, json) for a model directory (model.onnx + model.json) or a `<name>`, `<name>.onnx|.json` path."""
    path = Path(path)
    if path.is_dir():
        return path / "model.onnx", path / "model.json"
    stem = path.with_suffix("") if path.suffix in (".onnx", ".json") else path
    return stem.with_name(stem.name + ".onnx"), stem.with_name(stem.name + ".json")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def parse_candidates(keys: Sequence[str]) -> list[TileConfig | None]:
    """Candidate keys from model.json -> configs; "torch" -> None (torch.matmul)."""
    return [None if key == TORCH_KEY else TileConfig.from_key(key) for key in keys]


class Predictor:
    """A loaded model: `predict_features(X)` and `predict(shape...)` in linear units (ms, W, J)."""

    def __init__(self, session, meta: dict, onnx_path: Path | None = None) -> None:
        self._session = session
        self._input = session.get_inputs()[0].name
        self.meta = meta
        self.targets: tuple[str, ...] = tuple(meta["targets"])
        self.candidates: list[TileConfig | None] = parse_candidates(meta["candidates"])
        self.candidate_keys: tuple[str, ...] = tuple(meta["candidates"])
        self.device = DeviceInfo.from_dict(meta["device"])
        self.model_hash: str = meta["onnx_sha256"]
        self.path = onnx_path
        self._cand_matrix = config_matrix(self.candidates)
        self._outputs = [o.name for o in session.get_outputs()]
        if self._outputs[1:2] != ["rel_trees"]:
            raise ValueError(
                f"{onnx_path}: the graph has no per-tree output 'rel_trees' (outputs {self._outputs}): it was"
                " exported by an older gpperf-torch; retrain it with `gpperf-torch train`"
            )
        n_out = session.get_outputs()[0].shape[-1]
        if isinstance(n_out, int) and n_out != len(self.targets):
            raise ValueError(
                f"{onnx_path}: the graph has {n_out} outputs but model.json names targets {self.targets}: "
                "the two files do not belong together; re-export the model"
            )

    def __repr__(self) -> str:
        return (
            f"Predictor({self.path}, device={self.device.short_name}, targets={self.targets}, "
            f"{len(self.candidates)} candidates, hash={self.model_hash[:12]})"
        )

    @classmethod
    def load(cls, path: str | Path) -> Predictor:
        """Load and verify `path` (a directory with model.onnx + model.json, or `<name>[.onnx|.json]`)."""
        onnx_path, json_path = model_paths(path)
        for p in (onnx_path, json_path):
            if not p.is_file():
                raise ValueError(
                    f"model file {p} not found: a model is a pair <name>.onnx + <name>.json "
                    "(or a directory with model.onnx + model.json), written by `gpperf-torch train`"
                )
        # the whole sidecar against its schema and this version (format, feature schema, targets): ModelError
        meta = model_meta.read(json_path)
        actual = file_sha256(onnx_path)
        if actual != meta["onnx_sha256"]:
            raise ValueError(
                f"{onnx_path}: sha256 {actual[:16]}... does not match {meta['onnx_sha256'][:16]}... recorded in "
                f"{json_path.name}: the model file was changed or belongs to another export; re-export or "
                "restore the pair"
            )
        import onnxruntime as ort  # deferred: importing it costs ~0.1 s, only paid when a model is used

        opts = ort.SessionOptions()
        # One thread: a selection scores tens of rows, where thread hand-off costs more than it saves.
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            session = ort.InferenceSession(str(onnx_path), sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types
            raise ValueError(f"{onnx_path}: onnxruntime cannot load it: {e}") from e
        n_in = session.get_inputs()[0].shape[-1]
        if isinstance(n_in, int) and n_in != len(FEATURE_NAMES):
            raise ValueError(f"{onnx_path}: graph takes {n_in} features, the schema has {len(FEATURE_NAMES)}")
        logger.debug("loaded model %s (%s)", onnx_path, meta.get("provenance", ""))
        return cls(session, meta, onnx_path)

    def predict_features(self, X: np.ndarray) -> np.ndarray:
        """(n, n_targets) predictions in linear units for float32 feature rows (features.FEATURE_NAMES)."""
        X = np.ascontiguousarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != len(FEATURE_NAMES):
            raise ValueError(f"predict_features takes (n, {len(FEATURE_NAMES)}) float32 rows, got {X.shape}")
        (y,) = self._session.run(self._outputs[:1], {self._input: X})
        return np.exp(np.asarray(y, dtype=np.float64).reshape(len(X), len(self.targets)))

    def predict_with_spread(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(predict_features(X), (n, n_trees) per-tree log deviations of the rank forest from its mean): the
        model's own uncertainty, from the same onnxruntime call (the graph's second output)."""
        X = np.ascontiguousarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != len(FEATURE_NAMES):
            raise ValueError(f"predict_with_spread takes (n, {len(FEATURE_NAMES)}) float32 rows, got {X.shape}")
        y, trees = self._session.run(self._outputs, {self._input: X})
        trees = np.asarray(trees, dtype=np.float64)
        pred = np.exp(np.asarray(y, dtype=np.float64).reshape(len(X), len(self.targets)))
        return pred, trees - trees.mean(axis=1, keepdims=True)

    def predict(
        self,
        m: int,
        n: int,
        k: int,
        dtype: object,
        a_trans: bool | int,
        b_trans: bool | int,
        tf32: bool | int = False,
        cfgs: Sequence[TileConfig | None] | np.ndarray | None = None,
        device: DeviceInfo | None = None,
    ) -> dict[str, np.ndarray]:
        """Predicted {target: (n_cfg,) array} for one GEMM over `cfgs` (default: the model's candidates).

        `cfgs` may be TileConfigs/None or a config matrix (features.config_matrix); `device` defaults to the
        device the model was trained on.
        """
        return self.predict_trees(m, n, k, dtype, a_trans, b_trans, tf32, cfgs, device)[0]

    def predict_trees(
        self,
        m: int,
        n: int,
        k: int,
        dtype: object,
        a_trans: bool | int,
        b_trans: bool | int,
        tf32: bool | int = False,
        cfgs: Sequence[TileConfig | None] | np.ndarray | None = None,
        device: DeviceInfo | None = None,
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """predict()'s dict and the (n_cfg, n_trees) per-tree log deviations of time (predict_with_spread)."""
        if cfgs is None:
            matrix = self._cand_matrix
        elif isinstance(cfgs, np.ndarray):
            matrix = cfgs
        else:
            matrix = config_matrix(cfgs)
        X = shape_features(m, n, k, dtype, a_trans, b_trans, tf32, matrix, device or self.device)
        y, dev = self.predict_with_spread(X)
        out = {name: y[:, i] for i, name in enumerate(self.targets)}
        # Below the fastest time it was trained on (tiny shapes) the shape-level estimate extrapolates to
        # nanoseconds; lift the whole shape to that floor: every ratio between candidates, so every ranking
        # (time, energy, EDP, power), stays as predicted.
        floor = self.meta.get("time_floor_ms")
        lowest = float(out["time_ms"].min()) if len(X) else 0.0
        if floor and 0.0 < lowest < floor:
            scale = floor / lowest
            out["time_ms"] = out["time_ms"] * scale
            if "energy_j" in out:
                out["energy_j"] = out["energy_j"] * scale
        return out, dev


def shipped_model(short_name: str) -> Path | None:
    """Path of the shipped `<short_name>.onnx` (its .json beside it), or None when there is none."""
    onnx_path, json_path = model_paths(DATA_DIR / short_name)
    return onnx_path if onnx_path.is_file() and json_path.is_file() else None


def load_cli_model(arg: str) -> Predictor:
    """The model a command line names: a directory / `<name>[.onnx|.json]` path, else a shipped model's short name
    ("h100", "a100")."""
    onnx_path, json_path = model_paths(arg)
    shipped = None if onnx_path.is_file() or json_path.is_file() else shipped_model(arg)
    return Predictor.load(shipped or arg)


def list_shipped() -> list[str]:
    """Short names (e.g. "a100", "h100") of the models shipped in gpperf_torch/data."""
    return sorted(p.stem for p in DATA_DIR.glob("*.onnx") if p.with_suffix(".json").is_file())


__all__ = ["Predictor", "file_sha256", "list_shipped", "load_cli_model", "model_paths", "shipped_model"]
