"""A TTSService's reconciles take turns, whatever starts them: the create handler racing the level check,
provoked on purpose against the real API server (the operator's own handlers, in this process)."""

from __future__ import annotations

import asyncio
import importlib
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import kopf
import kubernetes
import pytest

from support.cluster import Cluster
from tts_operator import settings as settings_module

SPEC = {"model": {"name": "hibari"}, "replicas": 1}
UNTIL_S = 30.0
CHILDREN = {
    ("serviceaccounts", "voice-agent"),
    ("roles", "voice-agent"),
    ("rolebindings", "voice-agent"),
    ("services", "voice"),
    ("deployments", "voice"),
}


@pytest.fixture(scope="module")
def handlers() -> ModuleType:
    """The operator's handlers module, imported as `tts-operator run` does: once its settings are in place
    (defaults here; no DRA watches, which a test process has none of)."""
    if settings_module.loaded() is None:
        settings_module.use(settings_module.OperatorSettings(dra="off", api_threads=8))
    return importlib.import_module("tts_operator.handlers")


@pytest.fixture
def operator_identity(
    kube_cluster: Cluster, namespace: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """The handlers' API client as its own ServiceAccount (told apart in the audit log); the kubernetes
    client's process-wide default configuration, which the operator's client sets, is restored after."""
    kubeconfig = kube_cluster.identity(namespace, "operator", tmp_path)
    # Where the client looks when there is no in-cluster config: $KUBECONFIG, read when it was imported.
    monkeypatch.setattr(kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig))
    saved = kubernetes.client.Configuration.get_default_copy()
    try:
        yield Cluster.username(namespace, "operator")
    finally:
        kubernetes.client.Configuration.set_default(saved)


class FirstPostHeld:
    """Holds the first POST the operator's client sends until `release`: the reconcile that sent it is then
    in the middle of making a service's children, for as long as the test needs."""

    def __init__(self, create: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]) -> None:
        self._create = create
        self.held = asyncio.Event()
        self.released = asyncio.Event()

    async def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        if not self.held.is_set():
            self.held.set()
            await self.released.wait()
        return await self._create(manifest)


async def _until(condition: Callable[[], bool], what: str) -> None:
    """Poll `condition` while the event loop runs the tasks it looks at."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + UNTIL_S
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {UNTIL_S}s waiting for {what}")
        await asyncio.sleep(0.01)


def _child_creates(audit: list[dict[str, Any]]) -> Counter[tuple[str, str, int]]:
    """(plural, name, answer code) of every create in the audit log, events aside."""
    return Counter(
        (e["objectRef"]["resource"], e["objectRef"].get("name", ""), e["responseStatus"]["code"])
        for e in audit
        if e["verb"] == "create" and e["objectRef"]["resource"] != "events"
    )


async def test_the_level_check_waits_for_the_create_handler_and_posts_no_child_twice(
    handlers: ModuleType, kube_cluster: Cluster, namespace: str, operator_identity: str
) -> None:
    """The level check fires while the create handler is still making the children (at 500 services it
    did, every time the applies took longer than its first delay): it must wait for its turn, and then not
    POST again what the create handler made although the watches do not show those children yet (409
    AlreadyExists and a GET each, before). Each child is created once; no create is refused."""
    if not kube_cluster.audited:
        pytest.skip("this cluster keeps no audit log that the tests can read (see support/cluster.py)")
    status, created = kube_cluster.request(
        "POST",
        f"/apis/tts.residency.dev/v1alpha1/namespaces/{namespace}/ttsservices",
        {
            "apiVersion": "tts.residency.dev/v1alpha1",
            "kind": "TTSService",
            "metadata": {"name": "voice"},
            "spec": SPEC,
        },
    )
    assert status == 201, created
    uid = created["metadata"]["uid"]
    memo = kopf.Memo()
    await handlers.configure(settings=kopf.OperatorSettings(), memo=memo)
    # kopf's indexes as they are at that moment: the service, and none of its children yet (each watch shows
    # them a moment after its POST is answered; here, for the whole test).
    services = {
        (namespace, "voice"): [
            {"uid": uid, "spec": SPEC, "status": {}, "generation": 1, "version": "1", "deleting": False}
        ]
    }
    indexes: dict[str, Any] = {
        "services": services,
        "pods_by_service": {},
        **{f"children_{plural}": {} for plural in handlers.CHILD_BUILDERS},
    }
    await handlers.start_status(memo=memo, **indexes)
    held = FirstPostHeld(memo["api"].create)
    memo["api"].create = held.create
    args = {"name": "voice", "namespace": namespace, "uid": uid, "spec": SPEC, "memo": memo, **indexes}
    mark = kube_cluster.audit_mark()
    try:
        create = asyncio.create_task(handlers.reconcile_service(**args))
        await held.held.wait()  # the create handler is making the children
        check = asyncio.create_task(handlers.recheck_service(**args))
        # The level check either ran (and made what its index did not show) or waits for its turn.
        await _until(
            lambda: check.done() or memo["reconciles"].waiting((namespace, "voice")) > 0,
            "the level check to finish or wait for its turn",
        )
        held.released.set()
        await asyncio.gather(create, check)
        # A level check later, while the watches still show no child: the operator knows what it made.
        await handlers.recheck_service(**args)
    finally:
        held.released.set()
        await handlers.close(memo=memo)
    creates = _child_creates(kube_cluster.audit(user=operator_identity, since=mark))
    assert creates == Counter({(plural, name, 201): 1 for plural, name in CHILDREN})
