"""The residency agent: the sidecar that bridges one runtime and its own pod's annotations."""
