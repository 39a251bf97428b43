"""The agent's passes against an in-memory runtime and pod: what it writes on its pod, and in which patch."""

from __future__ import annotations

import json
from typing import Any, cast

from tts_contract import annotations as ann
from tts_operator.agent.loop import Agent, Timing
from tts_operator.agent.pod_client import PodClient
from tts_operator.agent.runtime_client import RuntimeClient

POLICY = {
    "offloadAfterUse": False,
    "idleOffloadSeconds": 600,
    "idleReleaseSeconds": 3600,
    "pinned": False,
    "priority": 0,
}


class Runtime:
    """A runtime with one model; the verbs move it like the engine does (offload: gpu -> cpu)."""

    base_url = "http://runtime.test"

    def __init__(self, state: str) -> None:
        self.state = state
        self.verbs: list[tuple[str, str]] = []

    def report(self) -> dict[str, Any]:
        vram = 2**30 if self.state == "gpu" else 0
        return {
            "models": [
                {
                    "name": "hibari",
                    "variant": "base",
                    "state": self.state,
                    "vramBytes": vram,
                    "hostBytes": 2**30,
                    "leases": 0,
                    "idleSeconds": 3.0,
                    "error": None,
                    "lastUsed": "2026-01-01T00:00:00Z",
                    "policy": POLICY,
                }
            ],
            "gpu": {
                "uuid": "GPU-1",
                "index": 0,
                "totalBytes": 80 * 2**30,
                "freeBytes": 2**30,
                "processBytes": 0,
            },
        }

    def verb(self, model: str, verb: str) -> dict[str, Any]:
        self.verbs.append((model, verb))
        self.state = {"offload": "cpu", "release": "unloaded"}[verb]
        return {}


class Pod:
    """The agent's own pod: merge patches of its annotations, each one recorded."""

    ref = "default/voice-0"

    def __init__(self, annotations: dict[str, str]) -> None:
        self.annotations = dict(annotations)
        self.patches: list[dict[str, str | None]] = []

    def body(self) -> dict[str, Any]:
        meta = {"name": "voice-0", "namespace": "default", "annotations": dict(self.annotations)}
        return {"metadata": meta}

    def patch_annotations(self, changes: dict[str, str | None]) -> dict[str, Any]:
        self.patches.append(dict(changes))
        for key, value in changes.items():
            if value is None:
                self.annotations.pop(key, None)
            else:
                self.annotations[key] = value
        return self.body()


def agent_for(runtime: Runtime, pod: Pod) -> Agent:
    clock = iter(float(t) for t in range(1000, 10**6))
    agent = Agent(
        cast(RuntimeClient, runtime),
        cast(PodClient, pod),
        Timing(min_publish_interval=0.0),
        clock=lambda: next(clock),
    )
    agent._set_pod(pod.body())  # what the pod-watch thread does on every event
    return agent


def published_state(pod: Pod) -> str:
    return str(json.loads(pod.annotations[ann.RESIDENCY])["models"][0]["state"])


def test_serving_an_offload_request_acknowledges_it_with_the_new_report_in_one_patch() -> None:
    runtime, pod = Runtime("gpu"), Pod({ann.POLICY: json.dumps(POLICY)})
    agent = agent_for(runtime, pod)
    agent.step()
    assert published_state(pod) == "gpu"
    pod.patches.clear()

    request = {"id": "r-1", "verb": "offload", "requestedBy": "default/peer", "reason": "needs memory"}
    pod.annotations[ann.OFFLOAD_REQUEST] = json.dumps(request)
    agent._set_pod(pod.body())
    agent.step()
    assert runtime.verbs == [("hibari", "offload")]
    # One write: the request is gone in the same patch that says the model left the GPU.
    assert len(pod.patches) == 1
    assert set(pod.patches[0]) == {ann.OFFLOAD_REQUEST, ann.RESIDENCY}
    assert pod.patches[0][ann.OFFLOAD_REQUEST] is None
    assert ann.OFFLOAD_REQUEST not in pod.annotations and published_state(pod) == "cpu"

    # The publisher knows: the same report is not written again.
    agent.step()
    agent.step()
    assert len(pod.patches) == 1


def test_a_malformed_request_is_removed_and_the_publisher_keeps_count() -> None:
    runtime, pod = Runtime("cpu"), Pod({ann.OFFLOAD_REQUEST: "{nope"})
    agent = agent_for(runtime, pod)
    agent.step()
    assert runtime.verbs == []
    assert ann.OFFLOAD_REQUEST not in pod.annotations and published_state(pod) == "cpu"
    agent.step()
    assert len(pod.patches) == 1
