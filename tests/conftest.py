"""Test set-up: without CUDA, kernels run through the Triton interpreter (set before any kernel import)."""

import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Selections must not leak into (or be read from) the user's cache directory during tests.
os.environ.setdefault("GPPERF_DISK_CACHE", "0")

requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs an NVIDIA GPU; runs in `make gpu-check`")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "cuda" in item.keywords and not HAS_CUDA:
            item.add_marker(pytest.mark.skip(reason="needs an NVIDIA GPU; runs in `make gpu-check`"))


@pytest.fixture
def fresh_selector(monkeypatch, tmp_path):
    """A selector with no loaded models or cached choices, caching into this test's own folder."""
    from gpperf_torch.selection import selector

    monkeypatch.setenv("GPPERF_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("GPPERF_DISK_CACHE", "0")
    selector.reset()
    yield
    selector.reset()


@pytest.fixture(scope="session")
def synthetic_model(tmp_path_factory):
    """A small model trained on helpers.synthetic_rows (model.onnx + model.json); skips without sklearn."""
    from helpers import export_synthetic_model

    return export_synthetic_model(tmp_path_factory.mktemp("synthetic_model"))


@pytest.fixture
def measuring(fresh_selector, synthetic_model, monkeypatch):
    """fresh_selector with the synthetic model on the CPU, no eager host cost (its kernels take microseconds) and
    no GPPERF_TABLE: the selection state of the measured-dispatch tests."""
    import torch

    from gpperf_torch.selection import selector, state

    monkeypatch.setenv("GPPERF_HOST_COST", "0")
    monkeypatch.delenv("GPPERF_TABLE", raising=False)
    selector.reset()
    state.set_model(str(synthetic_model), "cpu")
    return selector._state(torch.device("cpu"))
