"""The debounced status writer: one write per change, not per event; no second write while the watch lags."""

from __future__ import annotations

import asyncio
import json
from typing import Any, cast

import pytest

from tts_contract import annotations as ann
from tts_operator.api import Api
from tts_operator.kube import KubeApiError
from tts_operator.status import PodInfo
from tts_operator.statuswriter import ServiceKey, StatusWriter

KEY: ServiceKey = ("default", "voice")


def run(coro: Any) -> Any:
    return asyncio.run(coro)


class FakeApi:
    """Records status patches and answers with increasing resource versions, like the API server."""

    def __init__(self, missing: bool = False) -> None:
        self.patches: list[dict[str, Any]] = []
        self.missing = missing

    async def patch(
        self, kind: str, namespace: str, name: str, body: dict[str, Any], sub: str | None = None
    ) -> dict[str, Any]:
        assert (kind, namespace, name, sub) == ("TTSService", "default", "voice", "status")
        if self.missing:
            raise KubeApiError(404, "not found")
        self.patches.append(body)
        return {"metadata": {"resourceVersion": str(100 + len(self.patches))}}


def pod(state: str) -> PodInfo:
    report = ann.ResidencyValue.model_validate(
        {"models": [{"name": "hibari", "state": state, "vramBytes": 5 if state == "gpu" else 0}]}
    )
    return PodInfo(namespace="default", name="voice-0", service="voice", ready=True, residency=report)


class World:
    def __init__(self) -> None:
        self.entry: dict[str, Any] = {
            "uid": "u",
            "spec": {"model": {"name": "hibari"}, "replicas": 1},
            "status": {},
            "generation": 1,
            "version": "10",
            "deleting": False,
        }
        self.pods = [pod("gpu")]

    def writer(self, api: FakeApi) -> StatusWriter:
        return StatusWriter(
            cast(Api, api),
            lambda key: [self.entry] if key == KEY else [],
            lambda key: list(self.pods) if key == KEY else [],
        )


def test_a_change_is_written_once_even_while_the_index_still_shows_the_old_status() -> None:
    world, api = World(), FakeApi()
    writer = world.writer(api)
    assert run(writer.write(KEY)) is True
    assert api.patches[0]["status"]["pods"]["gpu"] == 1 and api.patches[0]["status"]["ready"] == "1/1"
    # The watch has not shown our write yet (the index still holds version 10 and an empty status).
    assert run(writer.write(KEY)) is False
    world.pods = [pod("cpu")]
    assert run(writer.write(KEY)) is True
    assert api.patches[1]["status"]["pods"] == {"gpu": 0, "cpu": 1, "unloaded": 0, "failed": 0}
    assert json.dumps(api.patches[1]["status"]["conditions"]) == json.dumps(
        api.patches[0]["status"]["conditions"]
    )  # nothing transitioned: the times stay
    # The watch catches up: what it shows is the truth again, and it equals what we wrote.
    world.entry = {**world.entry, "status": api.patches[1]["status"], "version": "102"}
    assert run(writer.write(KEY)) is False
    assert len(api.patches) == 2


def test_a_watch_newer_than_our_write_wins_over_the_memo() -> None:
    world, api = World(), FakeApi()
    writer = world.writer(api)
    run(writer.write(KEY))
    # Someone else's write, newer than ours, emptied the status: ours must be written again.
    world.entry = {**world.entry, "status": {}, "version": "500"}
    assert run(writer.write(KEY)) is True


def test_a_spec_change_is_written_and_a_deleted_service_is_not() -> None:
    world, api = World(), FakeApi()
    writer = world.writer(api)
    run(writer.write(KEY))
    world.entry = {**world.entry, "generation": 2, "spec": {"model": {"name": "hibari"}, "replicas": 3}}
    assert run(writer.write(KEY)) is True
    written = api.patches[-1]["status"]
    assert written["observedGeneration"] == 2 and written["ready"] == "1/3"
    world.entry = {**world.entry, "deleting": True}
    assert run(writer.write(KEY)) is False
    assert run(World().writer(FakeApi(missing=True)).write(KEY)) is False  # 404: gone meanwhile


def test_an_invalid_spec_is_reported_in_the_conditions() -> None:
    world, api = World(), FakeApi()
    world.entry["spec"] = {"replicas": 1}
    assert run(world.writer(api).write(KEY)) is True
    ready = next(c for c in api.patches[0]["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and ready["reason"] == "InvalidSpec"


def test_other_api_errors_propagate_to_the_debouncer() -> None:
    class Broken(FakeApi):
        async def patch(
            self, kind: str, namespace: str, name: str, body: dict[str, Any], sub: str | None = None
        ) -> dict[str, Any]:
            raise KubeApiError(500, "internal")

    with pytest.raises(KubeApiError):
        run(World().writer(Broken()).write(KEY))
