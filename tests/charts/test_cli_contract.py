"""The command lines in the chart and the Dockerfile are accepted by the real CLIs, meaning what we intend."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import dockerfile
import helm_python as helm
from chartlib import REPO, objects, one, render

# Runs `tts-operator` exactly as the container would, with kopf.run replaced by a recorder of its arguments:
# the real parser, the real handler imports, no cluster. One interpreter for every command line (imports
# take seconds); each line of stdin is one JSON argv.
_RECORD_KOPF_RUN = """
import json, sys, kopf
kopf.run = lambda **kwargs: print("KOPF_RUN " + json.dumps(kwargs, default=str), flush=True)
from tts_operator.cli import main
for line in sys.stdin:
    main(json.loads(line))
"""


def _operator_runs(argvs: list[list[str]]) -> list[dict[str, Any]]:
    result = subprocess.run(
        [sys.executable, "-c", _RECORD_KOPF_RUN],
        input="".join(json.dumps(argv) + "\n" for argv in argvs),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    runs = [
        json.loads(x.removeprefix("KOPF_RUN "))
        for x in result.stdout.splitlines()
        if x.startswith("KOPF_RUN ")
    ]
    assert len(runs) == len(argvs), result.stdout + result.stderr
    return runs


def _dockerfile_instruction(stage: str, cmd: str) -> list[str]:
    current = None
    found: list[str] = []
    for command in dockerfile.parse_file(str(REPO / "Dockerfile")):
        if command.cmd == "FROM":
            current = command.value[-1]
        elif current == stage and command.cmd == cmd:
            found = list(command.value)
    return found


# (values, clusterwide, namespaces) the operator must end up with.
CASES: list[tuple[dict[str, Any], bool, list[str]]] = [
    ({}, True, []),
    ({"operator": {"watchNamespaces": ["tts-a", "tts-b"]}}, False, ["tts-a", "tts-b"]),
    ({"operator": {"healthPort": 9090, "extraArgs": ["--verbose"]}}, True, []),
]


def test_chart_operator_command_means_what_the_chart_says(chart: helm.Chart) -> None:
    containers = [
        one(objects(render(chart, values)), "Deployment")["spec"]["template"]["spec"]["containers"][0]
        for values, _, _ in CASES
    ]
    assert all(c["command"] == ["tts-operator"] for c in containers)
    runs = _operator_runs([c["args"] for c in containers])
    for container, kwargs, (_, clusterwide, namespaces) in zip(containers, runs, CASES, strict=True):
        assert kwargs["standalone"] is True
        assert kwargs["clusterwide"] is clusterwide
        assert kwargs["namespaces"] == namespaces
        probe = container["livenessProbe"]["httpGet"]
        port = next(p["containerPort"] for p in container["ports"] if p["name"] == probe["port"])
        assert kwargs["liveness_endpoint"] == f"http://0.0.0.0:{port}{probe['path']}"


def test_operator_image_default_command_is_accepted() -> None:
    (kwargs,) = _operator_runs([_dockerfile_instruction("operator", "CMD")])
    assert kwargs["standalone"] is True and kwargs["clusterwide"] is True


def test_runtime_image_command_binds_all_interfaces_on_8000() -> None:
    entrypoint = _dockerfile_instruction("runtime", "ENTRYPOINT")
    assert entrypoint[0] == "tts-runtime"
    argv = entrypoint[1:] + _dockerfile_instruction("runtime", "CMD")
    # In a fresh interpreter: the real parser, parsing only (nothing is served).
    code = (
        "import json, sys; from tts_runtime.cli import build_parser; "
        "print(json.dumps(vars(build_parser().parse_args(sys.argv[1:])), default=str))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert result.returncode == 0, result.stderr
    args = json.loads(result.stdout.splitlines()[-1])
    assert args["command"] == "serve"
    assert args["host"] == "0.0.0.0"
    assert int(args["port"]) == 8000
    assert _dockerfile_instruction("runtime", "EXPOSE") == ["8000"]
