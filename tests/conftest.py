"""Suite-wide fixtures and markers: gpu tests skip without CUDA; the real API server for Kubernetes tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# A real API server for every test that asks for `kube_cluster`, `namespace`, `kube_api` or `run_operator`
# (support/cluster.py, support/kube.py): without one, those tests skip with one line saying how to run them.
pytest_plugins = ["support.cluster", "support.kube"]

# Subprocesses (tts-runtime, tts-operator) import this checkout's code, whatever the venv's install points at,
# and the test-only models (`support.tiny:factory`, `support.faults:...`) from tests/.
_ROOT = Path(__file__).resolve().parent.parent
os.environ["PYTHONPATH"] = os.pathsep.join(
    [
        *(str(_ROOT / root) for root in ("contract", "runtime", "operator", "tests")),
        os.environ.get("PYTHONPATH", ""),
    ]
).rstrip(os.pathsep)


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    cuda = _cuda_available()
    for item in items:
        # The marker, not `item.keywords`: keywords hold every parent's name (a checkout named `gpu`).
        if item.get_closest_marker("gpu") is not None and not cuda:
            item.add_marker(pytest.mark.skip(reason="needs CUDA (run on a GPU machine)"))
