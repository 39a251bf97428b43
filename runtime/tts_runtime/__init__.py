"""Residency's inference runtime: the GPU residency engine and the HTTP server in front of it."""

__version__ = "0.1.0"
