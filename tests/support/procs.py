"""Child processes for tests: start one with its output in a file, wait until it answers, stop it cleanly.

- `Process(args, env, log)` — a subprocess in its own process group, stdout and stderr in `log`;
  `.logs()`, `.wait_until_ok(url, timeout, what)` (polls until `url` answers 200; fails at once with the
  output when the process exits, or at the deadline), `.stop()` (SIGTERM to the group, SIGKILL if it lingers).
- `start_runtime(log, *args, env=..., port=None)` — `tts-runtime serve --port PORT *args` on a free port
  (or `port`), configured only by `args` and `env` (no `TTS_RUNTIME_*` inherited), returned once `/readyz`
  answers 200; a `RuntimeProcess` with `.port` and `.url`. Stop it with `.stop()`.
- `wait_for(fn, timeout, interval, what)` — polls `fn()` until truthy and returns its value.
- `executable(name)` — a console script of this virtual environment; `free_port()`.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import httpx

from support.background import free_port

__all__ = ["Process", "RuntimeProcess", "executable", "free_port", "runtime_env", "start_runtime", "wait_for"]

T = TypeVar("T")
RUNTIME_READY_S = 60.0  # a cold start imports torch; on a busy 2-core CI runner that takes a while


def wait_for(fn: Callable[[], T], timeout: float = 20.0, interval: float = 0.1, what: str = "") -> T:
    """Poll `fn()` until it returns something truthy, and return that; AssertionError at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or fn}: last {value!r}")
        time.sleep(interval)


async def until(
    condition: Callable[[], object], within: float = 10.0, interval: float = 0.005, what: str = ""
) -> None:
    """`wait_for` inside an event loop: polls while the loop runs the tasks `condition` looks at."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what or condition}")
        await asyncio.sleep(interval)


def executable(name: str) -> str:
    """The console script `name` next to this interpreter (the project's venv), else the one on PATH."""
    found = Path(sys.executable).parent / name
    return str(found) if found.exists() else (shutil.which(name) or name)


class Process:
    """A subprocess whose output goes to a file (a pipe could fill and block it)."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._file = log.open("wb")
        # Its own session: stop() signals the whole group, so no grandchild outlives the test.
        self.popen = subprocess.Popen(
            args, env=env, stdout=self._file, stderr=subprocess.STDOUT, start_new_session=True
        )

    def logs(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_until_ok(self, url: str, timeout: float, what: str) -> None:
        """Wait until `url` answers 200; fail with the tail of the output if the process exits or is late."""

        def ok() -> bool:
            if self.popen.poll() is not None:
                raise AssertionError(f"{what} exited ({self.popen.returncode}):\n{self.logs()[-4000:]}")
            try:
                return httpx.get(url, timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        try:
            wait_for(ok, timeout=timeout, interval=0.1, what=f"{what} at {url}")
        except AssertionError as err:
            if self.popen.poll() is not None:
                raise
            raise AssertionError(f"{err}\n{what} said:\n{self.logs()[-4000:]}") from None

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=timeout)
        self._file.close()


class RuntimeProcess(Process):
    """A `tts-runtime serve` child: where it listens."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path, port: int) -> None:
        super().__init__(args, env, log)
        self.port = port
        self.url = f"http://127.0.0.1:{port}"


def runtime_env(**extra: str) -> dict[str, str]:
    """This process's environment without any `TTS_RUNTIME_*` setting (the test's own are in `extra`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TTS_RUNTIME_")}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def start_runtime(
    log: Path,
    *args: str,
    env: dict[str, str] | None = None,
    port: int | None = None,
    timeout: float = RUNTIME_READY_S,
) -> RuntimeProcess:
    """`tts-runtime serve --port PORT *args`, once ready; stopped (its output shown) if it never gets there.

    `env` adds to `runtime_env()`; `port` reuses a port (a restart), else a free one is picked.
    """
    port = free_port() if port is None else port
    command = [executable("tts-runtime"), "serve", "--port", str(port), *args]
    proc = RuntimeProcess(command, runtime_env(**(env or {})), log, port)
    try:
        proc.wait_until_ok(f"{proc.url}/readyz", timeout=timeout, what="tts-runtime serve")
    except BaseException:
        proc.stop()
        raise
    return proc
