"""Export: a fitted model (fitting.Fitted) to model.onnx + model.json, the only form the op loads.

Offline only (skl2onnx, onnx). The graph computes exactly Fitted.log_predict; runtime.py loads it.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import time
from pathlib import Path

import numpy as np

from ..policy.dispatch import Policy
from .features import FEATURE_NAMES, FEATURE_SCHEMA_VERSION, feature_index
from .fitting import COMPUTE_FEATURE, MEMORY_FEATURE, ROOFLINE_SHIFT, TF32_SHIFT, Fitted, config_mask
from .model_meta import MODEL_FORMAT, MODEL_FORMAT_VERSION
from .runtime import file_sha256

logger = logging.getLogger(__name__)


def library_versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import skl2onnx
    import sklearn

    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
        "skl2onnx": skl2onnx.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def export(model: Fitted, out: str | Path, meta: dict | None = None) -> tuple[Path, Path]:
    """Write `out` as model.onnx + model.json (a directory) or `<out>.onnx` + `<out>.json` (a stem path).

    `meta` adds fields to model.json (provenance text, metrics, data hash...). The ONNX graph is float32 in and
    out, one output column per target (log units), with the key facts in its metadata_props as well.
    """
    from .runtime import model_paths

    out = Path(out)
    if out.suffix not in (".onnx", ".json"):
        out.mkdir(parents=True, exist_ok=True)
    onnx_path, json_path = model_paths(out)
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    onx = to_onnx(model)
    extra = dict(meta or {})
    props = {
        "gpperf.format": f"{MODEL_FORMAT} v{MODEL_FORMAT_VERSION}",
        "gpperf.feature_schema_version": str(FEATURE_SCHEMA_VERSION),
        "gpperf.feature_names": ",".join(FEATURE_NAMES),
        "gpperf.targets": ",".join(model.targets),
        "gpperf.target_transform": "log",
        "gpperf.device": model.device.short_name,
        "gpperf.provenance": str(extra.get("provenance", "")),
        "gpperf.data_sha256": str(extra.get("data_sha256", "")),
    }
    for key, value in props.items():
        entry = onx.metadata_props.add()
        entry.key, entry.value = key, value
    onx.producer_name = "gpperf-torch"
    onnx_path.write_bytes(onx.SerializeToString())
    doc = {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "feature_schema_version": FEATURE_SCHEMA_VERSION,
        "feature_names": list(FEATURE_NAMES),
        "targets": list(model.targets),
        "target_transform": "log",
        "candidates": model.candidates,
        "device": model.device.as_dict(),
        "baseline_static_ranking": model.static_ranking,
        "time_floor_ms": model.time_floor_ms,
        "k_ratio_max": model.k_ratio_max,
        # The dispatch policy (dispatch.Policy.from_meta reads it); without calibration, the defaults.
        "dispatch": model.dispatch or Policy().as_dict(),
        "forest": {
            **model.params,
            "n_nodes": model.n_nodes,
        },
        "n_train_rows": model.n_rows,
        "n_train_groups": model.n_groups,
        "library_versions": library_versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **extra,
        "onnx_sha256": file_sha256(onnx_path),
        "onnx_bytes": onnx_path.stat().st_size,
    }
    json_path.write_text(json.dumps(doc, indent=1, default=json_default) + "\n")
    logger.info("wrote %s (%.1f MiB) and %s", onnx_path, onnx_path.stat().st_size / 2**20, json_path)
    return onnx_path, json_path


def to_onnx(model: Fitted):
    """One ONNX graph: features (float32, n x F) -> log_targets (float32, n x n_targets), as Fitted.log_predict."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    opset = {"": 17, "ai.onnx.ml": 3}

    def convert(forest, name: str, n_out: int, prefix: str):
        onx = convert_sklearn(
            forest,
            initial_types=[("features", FloatTensorType([None, len(FEATURE_NAMES)]))],
            final_types=[(name, FloatTensorType([None, n_out]))],
            target_opset=opset,
        )
        return onnx.compose.add_prefix(onx, prefix) if prefix else onx

    rel = convert(model.rel, "rel", 1, "")  # input: features
    _per_tree_outputs(rel, model.rel.n_estimators)
    off = convert(model.offset, "off", 1, "offset_")  # input: offset_features
    consts = [
        numpy_helper.from_array(config_mask(), "config_mask"),
        numpy_helper.from_array(np.array([feature_index(COMPUTE_FEATURE)], dtype=np.int64), "compute_idx"),
        numpy_helper.from_array(np.array([feature_index(MEMORY_FEATURE)], dtype=np.int64), "memory_idx"),
        numpy_helper.from_array(np.array([feature_index("mma")], dtype=np.int64), "mma_idx"),
        numpy_helper.from_array(np.array([feature_index("dtype_bytes")], dtype=np.int64), "bytes_idx"),
        numpy_helper.from_array(np.array(4.0, dtype=np.float32), "four"),
        numpy_helper.from_array(np.array(TF32_SHIFT, dtype=np.float32), "tf32_shift"),
        numpy_helper.from_array(np.array(ROOFLINE_SHIFT, dtype=np.float32), "roofline_shift"),
        numpy_helper.from_array(np.array(math.log(2.0), dtype=np.float32), "ln2"),
    ]
    glue_in = [
        helper.make_node("Mul", ["features", "config_mask"], ["offset_features"]),
        helper.make_node("Gather", ["features", "compute_idx"], ["compute_col"], axis=1),
        helper.make_node("Gather", ["features", "memory_idx"], ["memory_col"], axis=1),
        # shift = ROOFLINE_SHIFT + mma * (TF32_SHIFT + [dtype_bytes < 4]), as roofline() computes it
        helper.make_node("Gather", ["features", "mma_idx"], ["mma_col"], axis=1),
        helper.make_node("Gather", ["features", "bytes_idx"], ["bytes_col"], axis=1),
        helper.make_node("Less", ["bytes_col", "four"], ["is_half_bool"]),
        helper.make_node("Cast", ["is_half_bool"], ["is_half"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["is_half", "tf32_shift"], ["mma_bits"]),
        helper.make_node("Mul", ["mma_col", "mma_bits"], ["mma_shift"]),
        helper.make_node("Add", ["mma_shift", "roofline_shift"], ["shift"]),
        helper.make_node("Sub", ["compute_col", "shift"], ["compute_shifted"]),
        helper.make_node("Max", ["compute_shifted", "memory_col"], ["roofline_log2"]),
        helper.make_node("Mul", ["roofline_log2", "ln2"], ["roofline_term"]),
    ]
    glue_out = [
        helper.make_node("Add", ["rel", "offset_off"], ["forests"]),
        helper.make_node("Add", ["forests", "roofline_term"], ["log_time" if model.energy else "log_targets"]),
    ]
    nodes = glue_in + list(rel.graph.node) + list(off.graph.node)
    inits = consts + list(rel.graph.initializer) + list(off.graph.initializer)
    if model.energy is not None:
        # head columns: log power, log(energy / time); log energy = the second + log time.
        head = convert(model.energy, "head", 2, "energy_")
        for node in head.graph.node:
            for i, name in enumerate(node.input):
                if name == "energy_features":
                    node.input[i] = "features"
        nodes += list(head.graph.node)
        inits += list(head.graph.initializer) + [
            numpy_helper.from_array(np.array([0], dtype=np.int64), "col0"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "col1"),
            numpy_helper.from_array(np.array([2], dtype=np.int64), "col2"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
        ]
        glue_out += [
            helper.make_node("Slice", ["energy_head", "col0", "col1", "axis1"], ["log_power"]),
            helper.make_node("Slice", ["energy_head", "col1", "col2", "axis1"], ["log_energy_per_ms"]),
            helper.make_node("Add", ["log_energy_per_ms", "log_time"], ["log_energy"]),
            helper.make_node("Concat", ["log_time", "log_power", "log_energy"], ["log_targets"], axis=1),
        ]
    graph = helper.make_graph(
        nodes + glue_out,
        "gpperf_predictor",
        inputs=[helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, len(FEATURE_NAMES)])],
        outputs=[
            helper.make_tensor_value_info("log_targets", TensorProto.FLOAT, [None, len(model.targets)]),
            helper.make_tensor_value_info("rel_trees", TensorProto.FLOAT, [None, model.rel.n_estimators]),
        ],
        initializer=inits,
    )
    opsets = {o.domain: o.version for o in rel.opset_import}
    opsets[""] = max(opsets.get("", 0), 13)  # Slice with tensor inputs (13), Gather/Max/Concat
    merged = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()])
    merged.ir_version = rel.ir_version
    onnx.checker.check_model(merged)
    return merged


def _per_tree_outputs(rel, n_trees: int) -> None:
    """Rewrite the rank forest's TreeEnsembleRegressor (in place) to output every tree's prediction.

    skl2onnx sums the trees with each leaf weight divided by the tree count into one target; giving each tree
    its own target (target_ids = tree ids) and its undivided weight yields the (n, n_trees) matrix "rel_trees",
    and a ReduceMean of it restores the forest's output. One tree walk serves both: the spread of the trees is
    what dispatch (dispatch.py) reads as the model's uncertainty, at no extra tree evaluation.
    """
    from onnx import helper

    (index,) = [i for i, n in enumerate(rel.graph.node) if n.op_type == "TreeEnsembleRegressor"]
    node = rel.graph.node[index]
    attrs = {a.name: a for a in node.attribute}
    if "target_weights" not in attrs or attrs["n_targets"].i != 1:
        raise ValueError("unexpected skl2onnx forest encoding: cannot expose per-tree outputs")
    tree_ids = list(attrs["target_treeids"].ints)
    weights = [w * n_trees for w in attrs["target_weights"].floats]
    keep = [a for a in node.attribute if a.name not in ("n_targets", "target_ids", "target_weights")]
    del node.attribute[:]
    node.attribute.extend(keep)
    node.attribute.extend(
        [
            helper.make_attribute("n_targets", n_trees),
            helper.make_attribute("target_ids", tree_ids),
            helper.make_attribute("target_weights", weights),
        ]
    )
    mean_out = node.output[0]
    node.output[0] = "rel_trees"
    rel.graph.node.insert(index + 1, helper.make_node("ReduceMean", ["rel_trees"], [mean_out], axes=[1], keepdims=1))


def json_default(obj):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
