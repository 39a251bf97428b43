"""Shared test code: the Kubernetes API server, process helpers, fake GPUs, tiny and failing models."""
