"""The engine's errors; each carries the HTTP status the server maps it to."""

from __future__ import annotations


class ResidencyError(Exception):
    """Base of the engine's errors; `status` is the HTTP status the server maps it to."""

    status: int = 500


class UnknownModelError(ResidencyError, KeyError):
    status = 404


class InvalidTransitionError(ResidencyError):
    """A verb asked of a model in a state it cannot start from (e.g. offload while unloaded)."""

    status = 409


class InsufficientGpuMemoryError(ResidencyError):
    """Not enough free GPU memory even after offloading this process's idle models."""

    status = 503

    def __init__(self, message: str, *, needed_bytes: int, free_bytes: int, retry_after: float = 5.0):
        super().__init__(message)
        self.needed_bytes = needed_bytes
        self.free_bytes = free_bytes
        self.retry_after = retry_after


class ModelLoadError(ResidencyError):
    """The model could not be loaded; the model is `failed` and the next request retries after backoff."""

    status = 503

    def __init__(self, message: str, *, retry_after: float = 1.0):
        super().__init__(message)
        self.retry_after = retry_after


class WorkerCrashedError(ResidencyError):
    """The worker process died while serving a request; the model recovers on the next one."""

    status = 503


class BusyError(ResidencyError):
    """Too many requests queued for the model (bounded queue)."""

    status = 503

    def __init__(self, message: str, *, retry_after: float = 1.0):
        super().__init__(message)
        self.retry_after = retry_after


class InvalidRequestError(ResidencyError, ValueError):
    """The request itself is wrong (unknown voice, empty text, bad speed); the message says what to fix."""

    status = 400


class RequestCancelled(ResidencyError):
    """The request's client went away and its model stopped between two pieces: nobody to answer."""

    status = 499
