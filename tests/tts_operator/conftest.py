"""Fixtures for the operator's tests: the Kubernetes API emulator and the operator subprocess."""

from support.kube import kube_api, run_operator

__all__ = ["kube_api", "run_operator"]
