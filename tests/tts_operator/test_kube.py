"""The shared Kubernetes client: one retry decision per API error, kopf's form of it, real calls."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import kopf
import pytest
from kubernetes import client, config

from support.kube import KubeAPI, make_pod
from tts_operator.kube import Kube, KubeApiError, as_kopf, kopf_errors


@pytest.mark.parametrize(
    ("status", "temporary", "delay"),
    [
        (0, True, 10.0),  # no answer
        (404, True, 1.0),  # gone or not there yet: the next pass sees what is
        (409, True, 1.0),  # changed meanwhile
        (410, True, 1.0),  # a watch's version too old: list again
        (429, True, 10.0),
        (500, True, 10.0),
        (503, True, 10.0),
        (400, False, None),
        (401, False, None),
        (403, False, None),  # RBAC: a person must grant it
        (422, False, None),  # an invalid object: the same body fails again
    ],
)
def test_each_status_has_one_retry_decision(status: int, temporary: bool, delay: float | None) -> None:
    err = KubeApiError(status, "x")
    assert err.temporary is temporary
    mapped = as_kopf(err)
    if temporary:
        assert isinstance(mapped, kopf.TemporaryError) and mapped.delay == delay == err.retry_delay
    else:
        assert isinstance(mapped, kopf.PermanentError)
    assert str(err) in str(mapped)


def test_the_servers_retry_after_wins() -> None:
    assert KubeApiError(429, "slow down", retry_after=3.0).retry_delay == 3.0


def test_a_wrapped_handler_raises_kopfs_decision_and_keeps_its_name() -> None:
    @kopf_errors
    async def reconcile_thing(status: int) -> str:
        if status:
            raise KubeApiError(status, "refused")
        return "done"

    assert reconcile_thing.__qualname__.endswith("reconcile_thing")  # kopf's handler id stays the same
    assert asyncio.run(reconcile_thing(status=0)) == "done"
    with pytest.raises(kopf.TemporaryError):
        asyncio.run(reconcile_thing(status=409))
    with pytest.raises(kopf.PermanentError, match="403: refused"):
        asyncio.run(reconcile_thing(status=403))


@pytest.fixture()
def kube(kube_api: KubeAPI) -> Iterator[Kube]:
    api = Kube(config.new_client_from_config(config_file=str(kube_api.kubeconfig)))
    try:
        yield api
    finally:
        api.close()


def test_calls_on_a_real_server_answer_dicts_and_classified_errors(kube_api: KubeAPI, kube: Kube) -> None:
    ns = kube_api.namespace
    assert kube.get("Pod", ns, "p") is None
    created = kube.create(make_pod("svc", "p", ns))
    assert created["metadata"]["name"] == "p"
    with pytest.raises(KubeApiError) as exists:
        kube.create(make_pod("svc", "p", ns))
    assert exists.value.status == 409 and exists.value.temporary
    invalid: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "Bad_Name", "namespace": ns},
    }
    with pytest.raises(KubeApiError) as refused:
        kube.create(invalid)
    assert refused.value.status == 422 and not refused.value.temporary
    patched = kube.patch("Pod", ns, "p", {"metadata": {"annotations": {"a": "1"}}})
    assert patched["metadata"]["annotations"]["a"] == "1"
    assert [i["metadata"]["name"] for i in kube.list("Pod", ns, "metadata.name=p")["items"]] == ["p"]
    assert kube.list("Pod", ns, "metadata.name=q")["items"] == []
    assert kube.delete("Pod", ns, "nothing") is False


def test_a_delete_with_another_uid_is_refused(kube_api: KubeAPI, kube: Kube) -> None:
    kube.create(make_pod("svc", "p", kube_api.namespace))
    with pytest.raises(KubeApiError) as conflict:
        kube.delete("Pod", kube_api.namespace, "p", uid="not-its-uid")
    assert conflict.value.status == 409
    assert kube.get("Pod", kube_api.namespace, "p") is not None


def test_a_watch_yields_typed_events_from_a_resource_version(kube_api: KubeAPI, kube: Kube) -> None:
    ns = kube_api.namespace
    version = kube.list("Pod", ns)["metadata"]["resourceVersion"]
    seen: list[tuple[str, str]] = []
    stop = threading.Event()

    def follow() -> None:
        for kind, obj in kube.watch("Pod", ns, stop, resource_version=version, timeout_seconds=30):
            seen.append((kind, obj["metadata"]["name"]))
            if kind == "DELETED":
                return

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    kube.create(make_pod("svc", "w", ns))
    kube_api.delete("pods", None, "w")
    thread.join(timeout=20)
    stop.set()
    assert seen[0] == ("ADDED", "w") and seen[-1] == ("DELETED", "w")


def test_an_unreachable_server_is_status_zero() -> None:
    settings = client.Configuration()
    settings.host = "http://127.0.0.1:1"
    with pytest.raises(KubeApiError) as got:
        Kube(client.ApiClient(settings), timeout=2.0).get("Pod", "demo", "p")
    assert got.value.status == 0 and got.value.temporary
