"""The process settings that keep a request's audio off slow paths: the allocator and worker pipes."""

from __future__ import annotations

import multiprocessing as mp
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from tts_runtime.engine.tuning import roomy_pipe

# Four 512 KiB buffers alive at once, as one reply's (the read, the samples, their encodings), then freed:
# the minor page faults one more such request costs, counted by the kernel.
FAULTS = """
import resource, sys
import numpy as np
{setup}
def request():
    held = [np.ones(131072, np.float32) for _ in range(4)]
    return sum(float(h[-1]) for h in held)
request()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(50):
    request()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 50)
"""
PAGES_PER_REQUEST = 4 * 512 * 1024 // os.sysconf("SC_PAGE_SIZE")


def run_faults(setup: str, env: dict[str, str] | None = None) -> tuple[list[str], float]:
    """What `setup` printed, and the faults per request after it, in a fresh interpreter."""
    out = subprocess.run(
        [sys.executable, "-c", FAULTS.format(setup=setup)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **(env or {})},
    )
    *printed, faults = out.stdout.split()
    return printed, float(faults)


needs_glibc = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's; other allocators keep their defaults"
)


@needs_glibc
def test_a_worker_reuses_its_request_buffers_instead_of_faulting_them_in_again() -> None:
    # What a worker does first (become_worker) tunes its allocator; without it glibc gives the buffers
    # back at each free and the next request faults every page in again (480 of 512 here, measured).
    _, plain = run_faults("")
    _, worker = run_faults(
        "import os\nfrom tts_runtime.engine.lifecycle import become_worker\nbecome_worker(os.getppid())"
    )
    assert plain > PAGES_PER_REQUEST / 2, f"the default allocator faulted {plain} pages per request"
    assert worker < PAGES_PER_REQUEST / 50, f"a worker faulted {worker} pages per request"


@needs_glibc
def test_the_users_own_allocator_settings_are_left_alone() -> None:
    setup = "from tts_runtime.engine.tuning import tune_allocator\nprint(tune_allocator())"
    printed, faults = run_faults(setup, {"MALLOC_TRIM_THRESHOLD_": str(128 * 1024)})
    assert printed == ["False"]
    assert faults > PAGES_PER_REQUEST / 2  # the user's small trim threshold still trims


def test_a_worker_pipe_takes_a_whole_reply_while_nobody_reads() -> None:
    # A one-sentence reply is ~400 KB of float32 audio; the default socket buffer (~208 KiB) made the
    # worker wait for the engine's reader thread, and so for the engine's GIL, in the middle of a write.
    reply = os.urandom(1 << 20)
    wmem_max = Path("/proc/sys/net/core/wmem_max")
    if wmem_max.exists() and 2 * int(wmem_max.read_text()) < len(reply) + (64 << 10):
        pytest.skip(f"this kernel caps socket buffers at net.core.wmem_max={wmem_max.read_text().strip()}")
    engine_end, worker_end = roomy_pipe(mp.get_context("spawn"))
    try:
        os.set_blocking(worker_end.fileno(), False)
        worker_end.send_bytes(reply)  # BlockingIOError if the write had to wait for a reader
        assert engine_end.recv_bytes() == reply
    finally:
        engine_end.close()
        worker_end.close()


def test_a_default_pipe_would_have_blocked_that_write() -> None:
    # The control for the test above: the same write on multiprocessing's own pipe needs a reader.
    default = Path("/proc/sys/net/core/wmem_default")
    if default.exists() and int(default.read_text()) >= 1 << 20:
        pytest.skip(f"this kernel's default socket buffer is large: {default.read_text().strip()} bytes")
    engine_end, worker_end = mp.get_context("spawn").Pipe()
    try:
        os.set_blocking(worker_end.fileno(), False)
        with pytest.raises(BlockingIOError):
            worker_end.send_bytes(os.urandom(1 << 20))
    finally:
        engine_end.close()
        worker_end.close()
