"""A malformed model sidecar (model.json) is a ModelError at load naming the file and the field, whatever is
wrong with it; never an AttributeError/TypeError later at a matmul."""

from __future__ import annotations

import copy
import json
import shutil

import pytest

import gpperf_torch as gp
from gpperf_torch.errors import ModelError
from gpperf_torch.predictor import model_meta
from gpperf_torch.predictor.features import FEATURE_NAMES
from gpperf_torch.predictor.model_meta import MODEL_FORMAT_VERSION
from gpperf_torch.predictor.runtime import Predictor, model_paths, shipped_model
from gpperf_torch.selection import selector

SHIPPED = shipped_model("h100")
META = json.loads(model_paths(SHIPPED)[1].read_text())
WHERE = "/models/x/model.json"
MISSING = object()


def _set(meta: dict, path: str, value) -> dict:
    meta = copy.deepcopy(meta)
    *parents, last = path.split(".")
    node = meta
    for p in parents:
        node = node[p]
    if value is MISSING:
        del node[last]
    else:
        node[last] = value
    return meta


def _swap(names, i=0, j=1):
    names = list(names)
    names[i], names[j] = names[j], names[i]
    return names


CASES = [
    # (field path, value, text the message must hold)
    ("format", MISSING, "format"),
    ("format", "other", "format"),
    ("format", 1, "format"),
    ("format_version", 1, "format v1"),  # the format before the per-tree output
    ("format_version", MODEL_FORMAT_VERSION + 1, "format_version"),
    ("format_version", str(MODEL_FORMAT_VERSION), "format_version"),
    ("format_version", float(MODEL_FORMAT_VERSION), "format_version"),
    ("format_version", True, "format_version"),
    ("feature_schema_version", "2", "feature_schema_version"),
    ("feature_schema_version", None, "feature_schema_version"),
    ("feature_schema_version", 1, "feature schema v1"),
    ("feature_names", "log2_m", "feature_names"),
    ("feature_names", [1, 2], "feature_names[0]"),
    ("feature_names", [], "feature_names"),
    ("feature_names", MISSING, "feature_names"),
    ("feature_names", _swap(FEATURE_NAMES), "another order"),
    (
        "feature_names",
        _swap(FEATURE_NAMES, 2, len(FEATURE_NAMES) - 1),
        f"position 2: the model has {FEATURE_NAMES[-1]!r}",
    ),
    ("feature_names", list(FEATURE_NAMES[:-1]), f"lacks [{FEATURE_NAMES[-1]!r}]"),
    ("feature_names", [*FEATURE_NAMES, "new_feature"], "'new_feature'"),
    ("feature_names", [*FEATURE_NAMES[:-1], FEATURE_NAMES[0]], "more than once"),
    ("targets", "time_ms", "targets"),
    ("targets", [], "targets"),
    ("targets", ["energy_j"], "targets"),
    ("targets", ["time_ms", "bogus"], "targets"),
    ("targets", [1], "targets[0]"),
    ("targets", ["time_ms", "time_ms"], "more than once"),
    ("targets", MISSING, "targets"),
    ("target_transform", "none", "target_transform"),
    ("target_transform", None, "target_transform"),
    ("candidates", [], "candidates"),
    ("candidates", "torch", "candidates"),
    ("candidates", [1], "candidates[0]"),
    ("candidates", ["zzz"], "candidates[0]"),
    ("candidates", ["torch", "torch"], "more than once"),
    ("candidates", None, "candidates"),
    ("device", MISSING, "device"),
    ("device", [], "device"),
    ("device", "h100", "device"),
    ("device.capability", MISSING, "device.capability"),
    ("device.capability", 9.0, "device.capability"),
    ("device.capability", [9], "device.capability"),
    ("device.capability", ["9", "0"], "device.capability"),
    ("device.sm_count", "132", "device.sm_count"),
    ("device.sm_count", 0, "device.sm_count"),
    ("device.sm_count", True, "device.sm_count"),
    ("device.sm_count", 13.5, "device.sm_count"),
    ("device.max_shared_memory", None, "device.max_shared_memory"),
    ("device.l2_bytes", -1, "device.l2_bytes"),
    ("device.sm_clock_mhz", "fast", "device.sm_clock_mhz"),
    ("device.mem_bandwidth_gbs", "3350", "device.mem_bandwidth_gbs"),
    ("device.power_limit_w", float("nan"), "device.power_limit_w"),
    ("device.power_limit_w", float("inf"), "device.power_limit_w"),
    ("device.name", "", "device.name"),
    ("device.name", 5, "device.name"),
    ("device.short_name", MISSING, "device.short_name"),
    ("onnx_sha256", 123, "onnx_sha256"),
    ("onnx_sha256", "abc", "onnx_sha256"),
    ("onnx_sha256", MISSING, "onnx_sha256"),
    ("onnx_sha256", None, "onnx_sha256"),
    ("onnx_sha256", META["onnx_sha256"].upper(), "onnx_sha256"),
    ("time_floor_ms", "0.1", "time_floor_ms"),
    ("time_floor_ms", -1, "time_floor_ms"),
    ("time_floor_ms", [], "time_floor_ms"),
    ("k_ratio_max", "5.5", "k_ratio_max"),
    ("k_ratio_max", float("nan"), "k_ratio_max"),
    ("baseline_static_ranking", "x", "baseline_static_ranking"),
    ("baseline_static_ranking", [1], "baseline_static_ranking[0]"),
]


@pytest.mark.parametrize(("field", "value", "text"), CASES, ids=[f"{f}={v!r}"[:60] for f, v, _ in CASES])
def test_every_malformed_field_is_a_model_error_naming_it(field, value, text):
    with pytest.raises(ModelError) as info:
        model_meta.validate(_set(META, field, value), WHERE)
    msg = str(info.value)
    assert msg.startswith(WHERE) and text in msg, msg


@pytest.mark.parametrize("root", [[], [META], "model", 3, None, True])
def test_a_root_that_is_not_an_object(root):
    with pytest.raises(ModelError, match="root must be an object"):
        model_meta.validate(root, WHERE)


def test_the_shipped_sidecars_are_valid():
    model_meta.validate(copy.deepcopy(META), WHERE)
    for extra in ({"time_floor_ms": None}, {"time_floor_ms": 0}, {"provenance": 5, "metrics": []},
                  {"k_ratio_max": None}, {"k_ratio_max": -2.5}):  # fmt: skip
        model_meta.validate({**META, **extra}, WHERE)  # fields the run time does not read may hold anything


@pytest.mark.parametrize(
    "theirs",
    [
        _swap(FEATURE_NAMES),
        _swap(FEATURE_NAMES, 3, 7),
        list(reversed(FEATURE_NAMES)),
    ],
)
def test_feature_names_in_another_order_say_what_differs(theirs):
    text = model_meta.feature_difference(theirs)
    i = next(i for i, (a, b) in enumerate(zip(theirs, FEATURE_NAMES, strict=True)) if a != b)
    assert "another order" in text and f"position {i}" in text and repr(theirs[i]) in text


# ---- through Predictor.load, set_model and GPPERF_MODEL ----------------------------------------------------
@pytest.fixture(scope="module")
def model_copy(tmp_path_factory):
    d = tmp_path_factory.mktemp("model")
    onnx_path, json_path = model_paths(SHIPPED)
    shutil.copy(onnx_path, d / "model.onnx")
    return d


JSON_FILES = {
    "list_root": "[]",
    "checksum_number": json.dumps(_set(META, "onnx_sha256", 12345)),
    "device_without_capability": json.dumps(_set(META, "device.capability", MISSING)),
    "string_for_number": json.dumps(_set(META, "device.sm_count", "132")),
    "not_json": "{",
    "empty": "",
    "binary": b"\x89PNG\r\n\x1a\n\x00\xff",
    "truncated": json.dumps(META)[:200],
}


@pytest.mark.parametrize("kind", sorted(JSON_FILES))
def test_predictor_load_raises_model_error_naming_the_file(model_copy, kind):
    content = JSON_FILES[kind]
    path = model_copy / "model.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ModelError) as info:
        Predictor.load(model_copy)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("kind", ["list_root", "checksum_number", "device_without_capability", "string_for_number"])
def test_set_model_and_env_model_raise_model_error(model_copy, kind, fresh_selector, monkeypatch):
    (model_copy / "model.json").write_text(JSON_FILES[kind])
    with pytest.raises(ModelError, match="model.json"):
        gp.set_model(str(model_copy), "cpu")
    monkeypatch.setenv("GPPERF_MODEL", str(model_copy))
    selector.reset()
    import torch

    with pytest.raises(ModelError, match="GPPERF_MODEL"):
        gp.matmul(torch.randn(4, 4), torch.randn(4, 4))
