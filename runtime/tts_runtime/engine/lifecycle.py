"""Worker processes outside the request loop: signals, parent death, /dev/shm housekeeping, process state."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import re
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tts_runtime.engine.tuning import tune_allocator

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
SHM_DIR = Path("/dev/shm")
_BLOCK = re.compile(r"^tts-(\d+)-[0-9a-f]+$")  # tts-<engine pid>-<random>: WorkerExecutor's block names

# Blocks named by executors of this process that are not closed yet: a sweep never touches these.
_live_blocks: set[str] = set()
_live_lock = threading.Lock()

# The kernel sends the parent-death signal when the *thread* that forked the worker ends, not the
# process: a pool thread that retires would kill its workers. One thread that lives as long as the
# process starts every worker.
_spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tts-spawner")


def start_process(proc: Any) -> None:
    """`proc.start()` from the long-lived spawner thread (see `become_worker`)."""
    _spawner.submit(proc.start).result()


def become_worker(parent_pid: int) -> None:
    """First thing a worker does: leave signals to the engine, die with it, tune its allocator.

    A container runtime or systemd signals the whole process group; the engine decides when its workers
    end (after the drain), so the signals are ignored here. SIGKILL of the engine must not leave a worker
    behind (re-parented to pid 1, holding GPU memory): the parent-death signal ends it. The engine may
    have died before the signal was armed, so the parent is checked once more afterwards. Its replies
    are the per-request buffers a worker allocates: they stay in its heap (`tune_allocator`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    set_parent_death_signal(signal.SIGKILL)
    tune_allocator()
    if os.getppid() != parent_pid:
        os._exit(0)


def set_parent_death_signal(sig: int) -> bool:
    """prctl(PR_SET_PDEATHSIG, sig); False where the platform has no such call."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0:
            return True
        log.warning("prctl(PR_SET_PDEATHSIG) failed: %s", os.strerror(ctypes.get_errno()))
    except (OSError, AttributeError):
        log.info("no parent-death signal on this platform; a killed engine may leave its workers")
    return False


# -- shared memory blocks --------------------------------------------------------------------------------
def claim_block(name: str) -> None:
    with _live_lock:
        _live_blocks.add(name)


def forget_block(name: str) -> None:
    with _live_lock:
        _live_blocks.discard(name)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


def sweep_stale_blocks(shm_dir: Path = SHM_DIR) -> list[str]:
    """Unlink `tts-*` blocks whose engine is dead (a SIGKILLed group leaves them; in a pod the emptyDir
    outlives the container and counts against its memory). A block named with this process's pid that no
    executor here holds is stale too: in a restarted container the new engine often gets the old pid."""
    removed: list[str] = []
    me = os.getpid()
    try:
        entries = list(shm_dir.iterdir())
    except OSError:
        return removed
    with _live_lock:
        live = set(_live_blocks)
    for path in entries:
        m = _BLOCK.match(path.name)
        if m is None or path.name in live:
            continue
        pid = int(m.group(1))
        if pid != me and pid_alive(pid):
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path.name)
    if removed:
        log.warning("removed %d shared-memory blocks left by a dead runtime: %s", len(removed), removed)
    return removed


def shm_free_bytes(shm_dir: Path = SHM_DIR) -> int | None:
    """Bytes free in /dev/shm (None where it cannot be read)."""
    try:
        st = os.statvfs(shm_dir)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def reserve(fd: int, size: int) -> None:
    """Allocate a block's pages now: a full /dev/shm fails here (ENOSPC), not with a SIGBUS on write."""
    if size > 0 and hasattr(os, "posix_fallocate"):
        os.posix_fallocate(fd, 0, size)


# -- process state ---------------------------------------------------------------------------------------
def process_state(pid: int) -> str | None:
    """The kernel's one-letter state of `pid` (R, S, D, T stopped, t traced, Z zombie), None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    return fields[0] if fields else None


def cannot_serve(pid: int) -> str | None:
    """Why a live worker cannot make progress, or None: stopped (SIGSTOP, a debugger) or a zombie."""
    state = process_state(pid)
    if state in ("T", "t"):
        return f"its worker process {pid} is stopped (SIGSTOP or a debugger) and serves nothing"
    if state in ("Z", "X"):
        return f"its worker process {pid} has exited"
    return None
