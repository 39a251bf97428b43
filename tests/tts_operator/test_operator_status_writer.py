"""The debounced status writer on the real API server: one write per change, not per event; no second write
while the watch lags (the index is what the operator's watch would hold: the object as read back)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml

from support.cluster import Cluster
from support.recording_api import RecordingApi
from tts_contract import annotations as ann
from tts_operator.api import Api
from tts_operator.kube import KubeApiError
from tts_operator.status import PodInfo
from tts_operator.statuswriter import ServiceKey, StatusWriter

PATH = "/apis/tts.residency.dev/v1alpha1/namespaces/{ns}/ttsservices/{name}"


def pod(state: str) -> PodInfo:
    report = ann.ResidencyValue.model_validate(
        {"models": [{"name": "hibari", "state": state, "vramBytes": 5 if state == "gpu" else 0}]}
    )
    return PodInfo(namespace="default", name="voice-0", service="voice", ready=True, residency=report)


def patches(api: RecordingApi) -> int:
    return api.calls.count(("PATCH", "TTSService"))


class World:
    """A TTSService `voice` on the server, and the index entry the operator's watch would hold for it."""

    def __init__(self, cluster: Cluster, namespace: str, uid: str) -> None:
        self.cluster, self.namespace = cluster, namespace
        self.key: ServiceKey = (namespace, "voice")
        self.pods = [pod("gpu")]
        self.entry = self.watched()
        assert self.entry["uid"] == uid

    def read(self, name: str = "voice") -> dict[str, Any]:
        status, obj = self.cluster.request("GET", PATH.format(ns=self.namespace, name=name))
        assert status == 200, obj
        return dict(obj)

    def watched(self) -> dict[str, Any]:
        """The service as the watch shows it now (what `reconcile.observed` indexes)."""
        obj = self.read()
        meta = obj["metadata"]
        return {
            "uid": meta["uid"],
            "spec": obj["spec"],
            "status": obj.get("status") or {},
            "generation": meta["generation"],
            "version": meta["resourceVersion"],
            "deleting": bool(meta.get("deletionTimestamp")),
        }

    def writer(self, api: Api) -> StatusWriter:
        return StatusWriter(
            api,
            lambda key: [self.entry] if key[1] in ("voice", "ghost") else [],
            lambda key: list(self.pods),
        )


@pytest.fixture
def world(kube_cluster: Cluster, namespace: str, uid: str) -> World:
    return World(kube_cluster, namespace, uid)


async def test_a_change_is_written_once_even_while_the_index_still_shows_the_old_status(
    world: World, api: RecordingApi
) -> None:
    writer = world.writer(api)
    assert await writer.write(world.key) is True
    first = world.read()["status"]
    assert first["pods"]["gpu"] == 1 and first["ready"] == "1/1"
    # The watch has not shown our write yet (the index still holds the version before it, no status).
    assert await writer.write(world.key) is False
    world.pods = [pod("cpu")]
    assert await writer.write(world.key) is True
    second = world.read()["status"]
    assert second["pods"] == {"gpu": 0, "cpu": 1, "unloaded": 0, "failed": 0}
    assert json.dumps(second["conditions"]) == json.dumps(first["conditions"])  # nothing transitioned
    # The watch catches up: what it shows is the truth again, and it equals what we wrote.
    world.entry = world.watched()
    assert await writer.write(world.key) is False
    assert patches(api) == 2


async def test_a_watch_newer_than_our_write_wins_over_the_memo(world: World, api: RecordingApi) -> None:
    writer = world.writer(api)
    await writer.write(world.key)
    # Someone else's write, newer than ours, emptied the status: ours must be written again.
    status, _ = world.cluster.request(
        "PATCH",
        PATH.format(ns=world.namespace, name="voice") + "/status",
        {"status": None},
        content_type="application/merge-patch+json",
    )
    assert status == 200
    world.entry = world.watched()
    assert world.entry["status"] == {}
    assert await writer.write(world.key) is True
    assert world.read()["status"]["pods"]["gpu"] == 1


async def test_a_spec_change_is_written_and_a_deleted_service_is_not(world: World, api: RecordingApi) -> None:
    writer = world.writer(api)
    await writer.write(world.key)
    status, _ = world.cluster.request(
        "PATCH",
        PATH.format(ns=world.namespace, name="voice"),
        {"spec": {"replicas": 3}},
        content_type="application/merge-patch+json",
    )
    assert status == 200
    world.entry = world.watched()
    assert world.entry["generation"] == 2
    assert await writer.write(world.key) is True
    written = world.read()["status"]
    assert written["observedGeneration"] == 2 and written["ready"] == "1/3"
    sent = patches(api)
    world.entry = {**world.entry, "deleting": True}
    assert await writer.write(world.key) is False
    assert patches(api) == sent  # nothing sent for a service on its way out
    # A service the index still holds but the server no longer has: its 404 is no error.
    world.entry = {**world.watched(), "deleting": False}
    assert await writer.write((world.namespace, "ghost")) is False


async def test_an_invalid_spec_is_reported_in_the_conditions(world: World, api: RecordingApi) -> None:
    # A spec the operator cannot serve (an index entry from before a CRD rule): the server takes the status.
    world.entry = {**world.entry, "spec": {"replicas": 1}}
    assert await world.writer(api).write(world.key) is True
    ready = next(c for c in world.read()["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and ready["reason"] == "InvalidSpec"


@pytest.fixture
def stale_identity(operator_identity: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The operator's kubeconfig with a token the server does not know, for the clients made after this."""
    config = yaml.safe_load(Path(kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION).read_text())
    config["users"][0]["user"]["token"] = "not-a-token"
    stale = tmp_path / "stale.kubeconfig"
    stale.write_text(yaml.safe_dump(config))
    monkeypatch.setattr(kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(stale))


async def test_other_api_errors_propagate_to_the_debouncer(world: World, stale_identity: None) -> None:
    client = Api(1)  # refused by the server (401): the debouncer retries what propagates
    try:
        with pytest.raises(KubeApiError) as raised:
            await world.writer(client).write(world.key)
        assert raised.value.status == 401
    finally:
        client.close()
