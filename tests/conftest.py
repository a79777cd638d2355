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
