"""The agent's pod client against the real API server: its own pod only, merge patches, clear errors."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import config
from kubernetes.client.exceptions import ApiException

from support.kube import KubeAPI, make_pod
from tts_operator.agent.pod_client import PodApiError, PodClient, PodForbidden, PodNotFound, annotations_of


@pytest.fixture()
def api_client(kube_api: KubeAPI) -> Iterator[Any]:
    client = config.new_client_from_config(config_file=str(kube_api.kubeconfig))
    try:
        yield client
    finally:
        client.close()


def test_patch_adds_and_removes_annotations_without_touching_others(
    kube_api: KubeAPI, api_client: Any
) -> None:
    kube_api.create("pods", make_pod("svc", "p", annotations={"keep": "me", "drop": "x"}))
    pods = PodClient("p", kube_api.namespace, api_client=api_client)
    patched = pods.patch_annotations({"new": '{"a":1}', "drop": None})
    assert annotations_of(patched) == {"keep": "me", "new": '{"a":1}'}
    stored = kube_api.get("pods", None, "p")
    assert stored is not None and stored["metadata"]["annotations"] == {"keep": "me", "new": '{"a":1}'}
    assert annotations_of(pods.get()) == {"keep": "me", "new": '{"a":1}'}


def test_missing_pod_is_not_found(kube_api: KubeAPI, api_client: Any) -> None:
    pods = PodClient("ghost", kube_api.namespace, api_client=api_client)
    with pytest.raises(PodNotFound, match=f"{kube_api.namespace}/ghost"):
        pods.get()
    with pytest.raises(PodNotFound):
        pods.patch_annotations({"a": "b"})


def test_watch_lists_then_follows_only_its_own_pod(kube_api: KubeAPI, api_client: Any) -> None:
    kube_api.create("pods", make_pod("svc", "other"))
    pods = PodClient("mine", kube_api.namespace, api_client=api_client)
    stop = threading.Event()
    seen: list[dict[str, str] | None] = []

    def follow() -> None:
        for pod in pods.watch(stop, timeout_seconds=30):
            seen.append(None if pod is None else annotations_of(pod))
            if seen[-1] == {"k": "2"}:
                return

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    kube_api.wait_for(lambda: seen, what="the initial listing")
    assert seen == [None]  # listed: not there yet (the other pod is not mistaken for it)
    kube_api.create("pods", make_pod("svc", "mine", annotations={"k": "1"}))
    kube_api.patch("pods", None, "other", {"metadata": {"annotations": {"noise": "yes"}}})
    kube_api.patch("pods", None, "mine", {"metadata": {"annotations": {"k": "2"}}})
    thread.join(timeout=20)
    stop.set()
    # A watch may replay an event after a reconnect (the agent is level-based, so a repeat is harmless):
    # compare the distinct successive values.
    distinct = [value for i, value in enumerate(seen) if i == 0 or value != seen[i - 1]]
    assert distinct == [None, {"k": "1"}, {"k": "2"}]


def test_forbidden_names_the_missing_rbac_rule() -> None:
    pods = PodClient("p", "demo")
    error = pods._error("patch", ApiException(status=403, reason="Forbidden"))
    assert isinstance(error, PodForbidden)
    assert "namespace demo" in str(error) and "'patch'" in str(error) and "resources: ['pods']" in str(error)
    other = pods._error("get", ApiException(status=500, reason="Internal"))
    assert type(other) is PodApiError and "HTTP 500" in str(other)
    unreachable = pods._error("get", ConnectionRefusedError("refused"))
    assert type(unreachable) is PodApiError and "refused" in str(unreachable)
