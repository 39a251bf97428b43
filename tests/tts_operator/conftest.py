"""Fixtures of the operator tests that run the operator's own code in this process against the real API
server: its client authenticated as its own ServiceAccount."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import kubernetes
import pytest

from support.cluster import Cluster
from support.recording_api import RecordingApi


@pytest.fixture
def operator_identity(
    kube_cluster: Cluster, namespace: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """The operator's API client (`tts_operator.api.Api`, made after this) as its own ServiceAccount, told
    apart in the audit log (its user name is yielded); the kubernetes client's process-wide default
    configuration, which that client sets, is restored after."""
    kubeconfig = kube_cluster.identity(namespace, "operator", tmp_path)
    # Where the client looks when there is no in-cluster config: $KUBECONFIG, read when it was imported.
    monkeypatch.setattr(kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig))
    saved = kubernetes.client.Configuration.get_default_copy()
    try:
        yield Cluster.username(namespace, "operator")
    finally:
        kubernetes.client.Configuration.set_default(saved)


@pytest.fixture
async def api(operator_identity: str) -> AsyncIterator[RecordingApi]:
    """The operator's own client as its ServiceAccount, every call recorded (`calls`)."""
    client = RecordingApi(4)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def uid(kube_cluster: Cluster, namespace: str) -> str:
    """The uid of a real TTSService `voice` to own the children: the garbage collector removes
    children whose owner does not exist."""
    status, created = kube_cluster.request(
        "POST",
        f"/apis/tts.residency.dev/v1alpha1/namespaces/{namespace}/ttsservices",
        {
            "apiVersion": "tts.residency.dev/v1alpha1",
            "kind": "TTSService",
            "metadata": {"name": "voice"},
            "spec": {"model": {"name": "hibari"}, "replicas": 1},
        },
    )
    assert status == 201, created
    return str(created["metadata"]["uid"])
