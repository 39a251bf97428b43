"""Residency's Kubernetes side: the TTSService operator and the per-pod residency agent."""

__version__ = "0.1.0"
