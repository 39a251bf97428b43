"""Shared test fixtures: the Kubernetes API emulator and process helpers."""
