"""Both images built from the Dockerfile and started as they run in Kubernetes: non-root, read-only root.

Marker `image` (not in the default run: `pytest -m image`; .ci/run runs it as its own step). Builds with
scripts/build-images.sh (podman needs no daemon; docker works too), the runtime with torch's CPU build.
Where `../shared/images/base.sh` exists (or in $RESIDENCY_SHARED_IMAGES; machines without an image registry)
it provides the base image.
Without podman or docker the tests skip, unless RESIDENCY_REQUIRE_IMAGES=1 (CI), where that is an error.
"""

from __future__ import annotations

import glob
import io
import os
import shutil
import subprocess
import time
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from chartlib import REPO

from support.procs import free_port, wait_for

# The first test also waits for both builds (~10 min on 2 cores).
pytestmark = [pytest.mark.image, pytest.mark.timeout(1800)]

BASE_SH = Path(os.environ.get("RESIDENCY_SHARED_IMAGES") or REPO.parent / "shared" / "images") / "base.sh"
TAG = "test"
PREFIX = "localhost"
RUNTIME = f"{PREFIX}/residency-runtime:{TAG}"
OPERATOR = f"{PREFIX}/residency-operator:{TAG}"
USER = "10001:10001"
READY_S = 180  # torch and the voice load on a busy 2-core runner


@dataclass
class Engine:
    name: str  # podman or docker

    def run_flags(self) -> list[str]:
        """`run` as in Kubernetes' securityContext: read-only root filesystem, the image's own USER."""
        if self.name == "podman":
            # This kind of machine refuses the default rlimits (../shared/images/README.md).
            return ["run", "--read-only", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1000:1000"]
        return ["run", "--read-only"]

    def __call__(
        self, *args: str, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        # podman: runc, as crun is refused on this kind of machine's hybrid cgroups.
        command = [self.name, *(["--runtime", "runc"] if self.name == "podman" else []), *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr}")
        return done


def _torch_wheels() -> str | None:
    """A local folder holding torch's CPU wheel (pip's find-links on these machines), if any."""
    for folder in (os.environ.get("PIP_FIND_LINKS", "") + " /opt/wheels").split():
        if glob.glob(f"{folder}/torch-*+cpu-*.whl"):
            return folder
    return None


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    name = os.environ.get("ENGINE") or next((e for e in ("podman", "docker") if shutil.which(e)), None)
    if name is None and BASE_SH.exists():
        name = "podman"  # base.sh installs it
    if name is None:
        if os.environ.get("RESIDENCY_REQUIRE_IMAGES") == "1":
            pytest.fail("building the images needs podman or docker")
        pytest.skip("needs podman or docker to build the images")
    env = dict(os.environ, ENGINE=name)
    if BASE_SH.exists():
        work = Path(os.environ.get("RESIDENCY_IMAGE_WORK", "/tmp/residency-images"))
        subprocess.run(["bash", str(BASE_SH), str(work)], check=True, timeout=900)
        env["PYTHON_IMAGE"] = "localhost/pybase:3.11-bookworm"
    wheels = _torch_wheels()
    if wheels and name == "podman":
        env["TORCH_WHEELS"] = wheels
    started = time.monotonic()
    build = ["bash", str(REPO / "scripts" / "build-images.sh"), "--tag", TAG, "--prefix", PREFIX, "--cpu"]
    done = subprocess.run(build, env=env, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, f"build-images.sh failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    print(
        f"both images built in {time.monotonic() - started:.0f} s:",
        *(line for line in done.stderr.splitlines() if line.startswith("built ")),
        sep="\n  ",
    )
    yield Engine(name)


@pytest.mark.parametrize("image", [OPERATOR, RUNTIME])
def test_image_runs_as_its_non_root_user_on_a_read_only_root(engine: Engine, image: str) -> None:
    assert engine("image", "inspect", "--format", "{{.Config.User}}", image).stdout.strip() == USER
    probe = (
        "import os, sys\n"
        "print(os.getuid(), os.getgid())\n"
        "try:\n    open('/opt/venv/written', 'w')\nexcept OSError as e:\n    print(type(e).__name__)\n"
    )
    done = engine(
        *engine.run_flags(), "--rm", "--network", "none", "--entrypoint", "python", image, "-c", probe
    )
    assert done.stdout.split() == ["10001", "10001", "OSError"], done.stdout


@pytest.mark.parametrize("command", ["run", "agent"])
def test_operator_image_answers(engine: Engine, command: str) -> None:
    done = engine(*engine.run_flags(), "--rm", "--network", "none", OPERATOR, command, "--help")
    assert f"usage: tts-operator {command}" in done.stdout, done.stdout + done.stderr


def test_runtime_image_serves_speech_from_hibari_on_cpu(engine: Engine) -> None:
    port = free_port()
    name = f"residency-runtime-test-{port}"
    engine(
        *engine.run_flags(),
        "-d",
        "--name",
        name,
        "--tmpfs",
        "/tmp",
        "--network",
        "host",
        RUNTIME,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            state = engine("inspect", "--format", "{{.State.Running}}", name).stdout.strip()
            assert state == "true", engine("logs", name, check=False).stdout[-3000:]
            try:
                return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, timeout=READY_S, interval=1, what="the runtime container's /readyz")
        response = httpx.post(
            f"{url}/v1/audio/speech",
            timeout=120,
            json={
                "model": "hibari",
                "input": "Residency serves this sentence from a container.",
                "response_format": "wav",
            },
        )
        assert response.status_code == 200, response.text
        with wave.open(io.BytesIO(response.content)) as audio:
            assert (audio.getnchannels(), audio.getsampwidth(), audio.getframerate()) == (1, 2, 24000)
            # A streamed wav's header says "length unknown": count the samples that came.
            seconds = len(audio.readframes(1 << 30)) / audio.getsampwidth() / audio.getframerate()
        assert 0.5 < seconds < 30, seconds
        assert engine("exec", name, "id", "-u").stdout.strip() == "10001"
    finally:
        engine("rm", "-f", name, check=False)
