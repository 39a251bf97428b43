"""The command lines in the chart and the Dockerfile are accepted by the real CLIs, meaning what we intend."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import dockerfile
import helm_python as helm
import pytest
from chartlib import REPO, objects, one, render

# Runs `tts-operator` exactly as the container would, with kopf.run replaced by a recorder of its arguments:
# the real parser, the real handler imports, no cluster.
_RECORD_KOPF_RUN = """
import json, sys, kopf
def record(**kwargs):
    print("KOPF_RUN " + json.dumps(kwargs, default=str))
kopf.run = record
from tts_operator.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _operator_run(args: list[str]) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-c", _RECORD_KOPF_RUN, *args], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert result.returncode == 0, result.stderr
    line = next(x for x in result.stdout.splitlines() if x.startswith("KOPF_RUN "))
    kwargs: dict[str, Any] = json.loads(line.removeprefix("KOPF_RUN "))
    return kwargs


def _dockerfile_instruction(stage: str, cmd: str) -> list[str]:
    current = None
    found: list[str] = []
    for command in dockerfile.parse_file(str(REPO / "Dockerfile")):
        if command.cmd == "FROM":
            current = command.value[-1]
        elif current == stage and command.cmd == cmd:
            found = list(command.value)
    return found


@pytest.mark.parametrize(
    ("values", "clusterwide", "namespaces"),
    [({}, True, []), ({"operator": {"watchNamespaces": ["tts-a", "tts-b"]}}, False, ["tts-a", "tts-b"])],
    ids=["all-namespaces", "restricted"],
)
def test_chart_operator_command_means_what_the_chart_says(
    chart: helm.Chart, values: dict[str, Any], clusterwide: bool, namespaces: list[str]
) -> None:
    container = one(objects(render(chart, values)), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["tts-operator"]
    kwargs = _operator_run(container["args"])
    assert kwargs["standalone"] is True
    assert kwargs["clusterwide"] is clusterwide
    assert kwargs["namespaces"] == namespaces
    port = container["livenessProbe"]["httpGet"]["port"]
    port_number = next(p["containerPort"] for p in container["ports"] if p["name"] == port)
    assert (
        kwargs["liveness_endpoint"]
        == f"http://0.0.0.0:{port_number}{container['livenessProbe']['httpGet']['path']}"
    )


def test_operator_image_default_command_is_accepted() -> None:
    kwargs = _operator_run(_dockerfile_instruction("operator", "CMD"))
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
