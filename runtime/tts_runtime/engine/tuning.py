"""Process settings that keep a request's audio off slow paths: the allocator, and worker pipes' buffers.

A request's audio crosses a few buffers of hundreds of KB (the worker's reply, its read, the encoding).
Two defaults made each of those cost a millisecond or more per request on a VM (measured, docs/PERFORMANCE.md
section 2): glibc hands such buffers out as fresh mmap'd pages and gives them back on free, so every request
pays page faults for all of them again; and a worker's reply larger than the socket's buffer blocks the
worker until the engine's reader thread (which needs the engine's GIL) has drained it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
from multiprocessing.connection import Connection
from typing import Any

# mallopt(3) parameters.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# Buffers below this come from the heap and are reused; what a longer clip needs above it still gets
# its own mapping. Free memory up to TRIM stays with the process (per malloc arena) instead of going
# back to the kernel, to be faulted in again by the next request.
MMAP_THRESHOLD_BYTES = 16 << 20
TRIM_THRESHOLD_BYTES = 64 << 20
# A worker's reply of a minute of 24 kHz float32 audio fits in one write. The kernel grants at most twice
# net.core.wmem_max (8 MiB here; ~416 KiB on a default kernel, still one sentence's reply).
PIPE_BUFFER_BYTES = 8 << 20
_USER_SET = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES")


def tune_allocator() -> bool:
    """Keep per-request buffers in the heap (glibc's mallopt); False where not glibc or the user chose
    their own settings (the MALLOC_* variables or GLIBC_TUNABLES are left to mean what they say)."""
    if any(os.environ.get(name) for name in _USER_SET):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False  # not glibc (musl, macOS): its allocator's own defaults
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    mmap: int = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    trim: int = mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    return mmap == trim == 1  # mallopt answers 1 for done


def roomy_pipe(ctx: Any) -> tuple[Connection, Connection]:
    """`ctx.Pipe()` (a Unix socket pair) whose buffers take a whole reply: the sender never waits on the
    receiving process's scheduling to finish a write."""
    ends: tuple[Connection, Connection] = ctx.Pipe()
    for end in ends:
        sock = socket.socket(fileno=end.fileno())
        try:
            for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
                with contextlib.suppress(OSError):  # best effort: the kernel's default still works
                    sock.setsockopt(socket.SOL_SOCKET, option, PIPE_BUFFER_BYTES)
        finally:
            sock.detach()  # the Connection owns the descriptor
    return ends
