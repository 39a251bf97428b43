"""Worker processes started before the engine knows its models, so their imports overlap the server's.

`tts-runtime serve` starts one at once, before it imports its settings and the web server (about half a
second of a 2-core machine's start-up): the process imports what every worker needs (numpy, pydantic, the
contract, the worker loop) meanwhile, and the engine's first worker adopts it (`become`, with its spec).
"""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing as mp
import os
import threading
from multiprocessing.connection import Connection
from typing import Any

from tts_runtime.engine.lifecycle import become_worker, start_process
from tts_runtime.engine.tuning import roomy_pipe

_blanks: list[tuple[Any, Connection]] = []  # (process, the engine's end of its pipe), not adopted yet
_lock = threading.Lock()


def blank_main(conn: Connection, parent_pid: int) -> None:
    """The blank process: import the worker loop, then wait to be told which model to serve."""
    become_worker(parent_pid)
    from tts_runtime.engine.worker import worker_main  # the imports this process exists to do early

    try:
        _, op, args = conn.recv()
    except (EOFError, OSError):
        os._exit(0)  # never adopted: the server started no worker model, or failed to start
    if op != "become":
        os._exit(0)
    spec_json, device, adopt = args
    worker_main(conn, spec_json, device, adopt, True, parent_pid)  # a standby from here on


def start() -> None:
    """Start one blank process (from the spawner thread, like every worker); ended at exit if unused."""
    ctx = mp.get_context("spawn")
    parent, child = roomy_pipe(ctx)
    proc = ctx.Process(target=blank_main, args=(child, os.getpid()), name="tts-blank", daemon=False)
    start_process(proc)
    child.close()
    with _lock:
        if not _blanks:
            # Registered after multiprocessing's own exit handler, so it runs first: that one would
            # wait forever for a blank still waiting on its pipe.
            atexit.register(end_unused)
        _blanks.append((proc, parent))


def take() -> tuple[Any, Connection] | None:
    """A started blank process and its pipe, or None (none started, or it died)."""
    with _lock:
        while _blanks:
            proc, conn = _blanks.pop()
            if proc.is_alive():
                return proc, conn
            _end(proc, conn)
    return None


def end_unused() -> None:
    """End the blanks no model adopted (the server's models were all started, or start-up failed)."""
    with _lock:
        left = list(_blanks)
        _blanks.clear()
    for proc, conn in left:
        _end(proc, conn)


def _end(proc: Any, conn: Connection) -> None:
    conn.close()  # it sees EOF and exits
    with contextlib.suppress(ValueError, OSError):
        proc.join(5.0)
        if proc.is_alive():
            proc.kill()
            proc.join(5.0)
