"""The agent's pod client against the real API server: its own pod only, merge patches, clear errors."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client, config

from support.kube import KubeAPI, make_pod
from tts_operator.agent.pod_client import PodClient, annotations_of
from tts_operator.kube import KubeApiError


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


def test_missing_pod_is_not_found_and_may_still_come(kube_api: KubeAPI, api_client: Any) -> None:
    pods = PodClient("ghost", kube_api.namespace, api_client=api_client)
    with pytest.raises(KubeApiError, match=f"{kube_api.namespace}/ghost not found") as got:
        pods.get()
    assert got.value.status == 404 and got.value.temporary
    with pytest.raises(KubeApiError, match="not found") as patched:
        pods.patch_annotations({"a": "b"})
    assert patched.value.status == 404


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
    refused = pods._explain("patch", KubeApiError(403, "Forbidden"))
    assert refused.status == 403 and not refused.temporary  # a person must grant it: the agent logs ERROR
    assert (
        "namespace demo" in str(refused)
        and "'patch'" in str(refused)
        and "resources: ['pods']" in str(refused)
    )
    other = pods._explain("get", KubeApiError(500, "Internal"))
    assert other.temporary and "get pod demo/p: 500: Internal" in str(other)


def test_an_unreachable_api_server_is_a_temporary_error() -> None:
    config = client.Configuration()
    config.host = "http://127.0.0.1:1"
    pods = PodClient("p", "demo", request_timeout=2.0, api_client=client.ApiClient(config))
    with pytest.raises(KubeApiError, match="get pod demo/p") as got:
        pods.get()
    assert got.value.status == 0 and got.value.temporary
