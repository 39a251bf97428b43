"""Tiny models and failure-injecting factories, importable by worker processes, tests, bench and the CLI."""
