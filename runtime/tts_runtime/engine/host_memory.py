"""Page-locking a plain host allocation at its exact size (`cudaHostRegister`), behind a small seam.

torch's pinned allocator (`pin_memory=True`) rounds every block up to a power of two (a 9 GB arena
would pin 16 GB); registering a plain allocation pins exactly its bytes. Copies from registered memory
are asynchronous, like from `pin_memory`. The same call pins an `exit-worker` shared-memory block, so its
restore copy runs at pinned speed too. Tests pass a `HostPinner` of their own: without a GPU the real
one is never called.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

log = logging.getLogger(__name__)


class HostPinner(Protocol):
    def register(self, ptr: int, nbytes: int) -> bool: ...  # True: now page-locked for the device

    def unregister(self, ptr: int) -> None: ...


class CudaHostPinner:
    """`cudaHostRegister`/`cudaHostUnregister` through torch's bindings of the CUDA runtime."""

    def register(self, ptr: int, nbytes: int) -> bool:
        import torch

        cudart: Any = torch.cuda.cudart()  # type: ignore[no-untyped-call]
        err = cudart.cudaHostRegister(ptr, nbytes, 0)  # cudaHostRegisterDefault
        if _code(err) != 0:
            log.warning("cudaHostRegister of %d bytes failed (%s): host copy stays pageable", nbytes, err)
            return False
        return True

    def unregister(self, ptr: int) -> None:
        import torch

        cudart: Any = torch.cuda.cudart()  # type: ignore[no-untyped-call]
        err = cudart.cudaHostUnregister(ptr)
        if _code(err) != 0:
            log.warning("cudaHostUnregister failed (%s)", err)


def _code(err: object) -> int:
    value: Any = getattr(err, "value", err)
    return int(value)


class PinnedRegion:
    """One registered range: what is pinned, and how long registering it took."""

    def __init__(self, pinner: HostPinner | None, ptr: int, nbytes: int) -> None:
        self._pinner = pinner
        self.ptr = ptr
        self.nbytes = 0
        self.seconds = 0.0
        if pinner is not None and nbytes > 0:
            t0 = time.perf_counter()
            if pinner.register(ptr, nbytes):
                self.nbytes = nbytes
            self.seconds = time.perf_counter() - t0

    @property
    def pinned(self) -> bool:
        return self.nbytes > 0

    def release(self) -> None:
        """Unregister (before the memory itself is freed or unmapped); idempotent."""
        if self.nbytes and self._pinner is not None:
            self._pinner.unregister(self.ptr)
        self.nbytes = 0
