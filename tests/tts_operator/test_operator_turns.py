"""A TTSService's reconciles take turns, whatever starts them: the create handler racing the level check,
provoked on purpose against the real API server (the operator's own handlers, in this process)."""

from __future__ import annotations

import asyncio
import importlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import kopf
import pytest

from support.cluster import Cluster
from support.procs import until
from tts_operator import settings as settings_module

SPEC = {"model": {"name": "hibari"}, "replicas": 1}  # the spec of conftest's `uid` TTSService
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


class HeldPost:
    """Once armed, holds the next POST the operator's client sends until `release`: the reconcile that sent
    it is then in the middle of making a child, for as long as the test needs."""

    def __init__(self, create: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]) -> None:
        self._create = create
        self._armed = False
        self.held = asyncio.Event()
        self.released = asyncio.Event()

    def arm(self) -> None:
        self._armed, self.held, self.released = True, asyncio.Event(), asyncio.Event()

    async def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        if self._armed:
            self._armed = False
            self.held.set()
            await self.released.wait()
        return await self._create(manifest)


@dataclass
class InProcess:
    """The operator's handlers on one TTSService `voice`, with kopf's indexes as the test sets them."""

    handlers: ModuleType
    memo: kopf.Memo
    indexes: dict[str, Any]
    args: dict[str, Any]  # what kopf passes the service's handlers
    post: HeldPost

    def waiting(self) -> int:
        """Reconciles of the service waiting for their turn."""
        serial = self.memo["reconciles"]
        return int(serial.waiting((self.args["namespace"], "voice")))


@pytest.fixture
async def operator(
    handlers: ModuleType, kube_cluster: Cluster, namespace: str, operator_identity: str, uid: str
) -> AsyncIterator[InProcess]:
    if not kube_cluster.audited:
        pytest.skip("this cluster keeps no audit log that the tests can read (see support/cluster.py)")
    memo = kopf.Memo()
    await handlers.configure(settings=kopf.OperatorSettings(), memo=memo)
    # kopf's indexes: the service, and none of its children (each watch shows a child a moment after its POST
    # is answered, or its deletion a moment after it; here the watches stay that moment behind).
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
    post = HeldPost(memo["api"].create)
    memo["api"].create = post.create
    args = {"name": "voice", "namespace": namespace, "uid": uid, "spec": SPEC, "memo": memo, **indexes}
    try:
        yield InProcess(handlers, memo, indexes, args, post)
    finally:
        post.released.set()
        await handlers.close(memo=memo)


async def _level_check_meanwhile(op: InProcess) -> None:
    """While a reconcile's POST is held: a level check of the service, which either runs (and makes what its
    index does not show) or waits for its turn; then the POST goes on, and both finish."""
    await op.post.held.wait()
    check = asyncio.create_task(op.handlers.recheck_service(**op.args))
    await until(
        lambda: check.done() or op.waiting() > 0,
        within=UNTIL_S,
        interval=0.01,
        what="the level check to finish or wait for its turn",
    )
    op.post.released.set()
    await check


def _child_creates(audit: list[dict[str, Any]]) -> Counter[tuple[str, str, int]]:
    """(plural, name, answer code) of every create in the audit log, events aside."""
    return Counter(
        (e["objectRef"]["resource"], e["objectRef"].get("name", ""), e["responseStatus"]["code"])
        for e in audit
        if e["verb"] == "create" and e["objectRef"]["resource"] != "events"
    )


async def test_the_level_check_waits_for_the_create_handler_and_posts_no_child_twice(
    operator: InProcess, kube_cluster: Cluster, operator_identity: str
) -> None:
    """The level check fires while the create handler is still making the children (at 500 services it
    did, every time the applies took longer than its first delay): it must wait for its turn, and then not
    POST again what the create handler made although the watches do not show those children yet (409
    AlreadyExists and a GET each, before). Each child is created once; no create is refused."""
    mark = kube_cluster.audit_mark()
    operator.post.arm()
    create = asyncio.create_task(operator.handlers.reconcile_service(**operator.args))
    await _level_check_meanwhile(operator)
    await create
    # A level check later, while the watches still show no child: the operator knows what it made.
    await operator.handlers.recheck_service(**operator.args)
    creates = _child_creates(kube_cluster.audit(user=operator_identity, since=mark))
    assert creates == Counter({(plural, name, 201): 1 for plural, name in CHILDREN})


async def test_a_deleted_child_put_back_while_the_level_check_runs_is_created_once(
    operator: InProcess, kube_cluster: Cluster, namespace: str, operator_identity: str
) -> None:
    """A child deleted by hand: its DELETED event puts it back, and the level check, whose index no longer
    shows it, would too. They take turns: the Service is created once, and no create is refused."""
    await operator.handlers.reconcile_service(**operator.args)
    url = f"/api/v1/namespaces/{namespace}/services/voice"
    status, deleted = kube_cluster.request("DELETE", url)
    assert status == 200, deleted
    mark = kube_cluster.audit_mark()
    operator.post.arm()
    # The watch's DELETED event, as kopf hands it to the child handler (the index has dropped the child).
    labels = deleted["metadata"]["labels"]
    put_back = asyncio.create_task(
        operator.handlers._child_outcome(
            "services", "DELETED", deleted, namespace, labels, operator.memo, operator.indexes
        )
    )
    await _level_check_meanwhile(operator)
    assert await put_back == "put back"
    creates = _child_creates(kube_cluster.audit(user=operator_identity, since=mark))
    assert creates == Counter({("services", "voice", 201): 1})
    status, service = kube_cluster.request("GET", url)
    assert status == 200 and service["metadata"]["uid"] != deleted["metadata"]["uid"], service
