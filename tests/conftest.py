"""Suite-wide markers: gpu tests skip without CUDA; k8s tests skip without a real cluster."""

from __future__ import annotations

import os

import pytest

# A real API server for every test that asks for `kube_cluster` or `namespace` (support/cluster.py).
pytest_plugins = ["support.cluster"]

# Captured before any test module sets KUBECONFIG for the emulator: the e2e suite needs a real one.
REAL_KUBECONFIG = os.environ.get("KUBECONFIG")


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    cuda = _cuda_available()
    for item in items:
        if "gpu" in item.keywords and not cuda:
            item.add_marker(pytest.mark.skip(reason="needs CUDA (run on a GPU machine)"))
        if "k8s" in item.keywords and not REAL_KUBECONFIG:
            item.add_marker(pytest.mark.skip(reason="needs KUBECONFIG pointing at a real cluster"))
