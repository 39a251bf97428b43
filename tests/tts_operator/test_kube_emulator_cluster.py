"""The emulator's cluster-level behaviour: namespaces, CRDs and their schemas, as an API server has them."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kmock
import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from support.kube import KubeAPI, make_pod

ROOT = Path(__file__).resolve().parents[2]
CRD = yaml.safe_load((ROOT / "crds" / "ttsservices.yaml").read_text())
TTS = "/apis/tts.residency.dev/v1alpha1/namespaces/default/ttsservices"


@pytest.fixture()
def strict_api(tmp_path: Path) -> Iterator[KubeAPI]:
    api = KubeAPI(tmp_path, strict=True)
    try:
        yield api
    finally:
        api.close()


@pytest.fixture()
def core(strict_api: KubeAPI) -> Iterator[client.CoreV1Api]:
    api_client = config.new_client_from_config(config_file=str(strict_api.kubeconfig))
    try:
        yield client.CoreV1Api(api_client)
    finally:
        api_client.close()


def _tts(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "tts.residency.dev/v1alpha1", "kind": "TTSService", "metadata": {"name": name},
            "spec": {"model": {"name": "hibari"}, **spec}}


def test_namespaces_are_cluster_scoped_objects(core: client.CoreV1Api) -> None:
    names = {ns.metadata.name for ns in core.list_namespace().items}
    assert {"default", "kube-system"} <= names
    created = core.create_namespace({"metadata": {"name": "team"}})
    assert created.status.phase == "Active" and created.metadata.uid
    assert core.read_namespace("team").metadata.labels["kubernetes.io/metadata.name"] == "team"
    assert core.list_node().items == []  # a bare API server: no kubelet ever registered


def test_deleting_a_namespace_empties_it_and_waits_for_finalizers(strict_api: KubeAPI,
                                                                 core: client.CoreV1Api) -> None:
    core.create_namespace({"metadata": {"name": "team"}})
    strict_api.create("pods", make_pod("voice", "plain", namespace="team"))
    held = make_pod("voice", "held", namespace="team")
    held["metadata"]["finalizers"] = ["example.com/hold"]
    strict_api.create("pods", held)
    strict_api.create("pods", make_pod("voice", "elsewhere"))

    core.delete_namespace("team")
    assert core.read_namespace("team").status.phase == "Terminating"
    assert strict_api.get("pods", "team", "plain") is None
    assert strict_api.get("pods", "team", "held")["metadata"]["deletionTimestamp"]  # type: ignore[index]
    with pytest.raises(ApiException) as refused:
        core.create_namespaced_pod("team", make_pod("voice", "late", namespace="team"))
    assert refused.value.status == 403 and "being terminated" in str(refused.value.body)

    strict_api.patch("pods", "team", "held", {"metadata": {"finalizers": []}})
    with pytest.raises(ApiException) as gone:
        core.read_namespace("team")
    assert gone.value.status == 404
    assert json.loads(gone.value.body)["message"] == 'namespaces "team" not found'
    assert strict_api.get("pods", "default", "elsewhere") is not None


def test_strict_refuses_objects_in_a_missing_namespace(strict_api: KubeAPI, kube_api: KubeAPI) -> None:
    response = strict_api.http.post("/api/v1/namespaces/nowhere/pods", json=make_pod("voice", "p"))
    assert response.status_code == 404 and 'namespaces "nowhere" not found' in response.json()["message"]
    # The default emulator stays lenient: the operator's tests put pods anywhere without a Namespace.
    lenient = kube_api.http.post("/api/v1/namespaces/nowhere/pods", json=make_pod("voice", "p"))
    assert lenient.status_code == 201


def test_a_custom_resource_exists_only_with_its_crd(strict_api: KubeAPI) -> None:
    assert strict_api.http.get(TTS).status_code == 404
    assert strict_api.http.get("/apis/tts.residency.dev/v1alpha1").status_code == 404

    crd = strict_api.create("customresourcedefinitions", copy.deepcopy(CRD))
    conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert conditions == {"NamesAccepted": "True", "Established": "True"}
    discovery = strict_api.http.get("/apis/tts.residency.dev/v1alpha1").json()
    assert {r["name"] for r in discovery["resources"]} == {"ttsservices", "ttsservices/status"}
    strict_api.create("ttsservices", _tts("voice"))
    listed = strict_api.http.get(TTS).json()
    assert listed["kind"] == "TTSServiceList"
    assert [o["metadata"]["name"] for o in listed["items"]] == ["voice"]

    strict_api.delete("customresourcedefinitions", None, CRD["metadata"]["name"])
    assert strict_api.http.get(TTS).status_code == 404
    tts = kmock.resource(group="tts.residency.dev", version="v1alpha1", plural="ttsservices")
    assert strict_api.emulator.objects[(tts, "default", "voice")].deleted  # its objects went with it


def test_the_crd_schema_defaults_prunes_and_refuses_like_the_api_server(kube_api: KubeAPI) -> None:
    # Before the CRD exists nothing is validated (the lenient emulator serves TTSService regardless).
    assert kube_api.http.post(TTS, json=_tts("early", replicas="many")).status_code == 201
    kube_api.create("customresourcedefinitions", copy.deepcopy(CRD))

    stored = kube_api.create("ttsservices", _tts("voice", unknown=1))
    assert stored["spec"]["replicas"] == 1 and stored["spec"]["gpu"] == {"count": 1,
                                                                          "resourceName": "nvidia.com/gpu"}
    assert stored["spec"]["residency"]["offloadAfterUse"] is True and "unknown" not in stored["spec"]

    bad = kube_api.http.post(TTS, json=_tts("bad", replicas="many"))
    assert bad.status_code == 422, bad.text
    body = bad.json()
    assert body["reason"] == "Invalid" and "spec.replicas" in body["message"]
    assert [c["field"] for c in body["details"]["causes"]] == ["spec.replicas"]

    cel = kube_api.http.post(TTS, json=_tts("plugin", model={"name": "x", "backend": "plugin"}))
    assert cel.status_code == 422 and "model.factory" in cel.json()["message"]
    strict = kube_api.http.post(f"{TTS}?fieldValidation=Strict", json=_tts("strict", unknown=1))
    assert strict.status_code == 422 and "spec.unknown" in strict.json()["message"]

    patched = kube_api.http.patch(f"{TTS}/voice", json={"spec": {"replicas": -1}},
                                  headers={"Content-Type": "application/merge-patch+json"})
    assert patched.status_code == 422 and "spec.replicas" in patched.json()["message"]
    smp = kube_api.http.patch(f"{TTS}/voice", json={"spec": {"replicas": 2}},
                              headers={"Content-Type": "application/strategic-merge-patch+json"})
    assert smp.status_code == 415  # custom resources have no strategic merge patch
    status = kube_api.patch("ttsservices", "default", "voice",
                            {"status": {"ready": "0/1", "kopf": {"progress": {}}}}, status=True)
    assert status["status"] == {"ready": "0/1"}  # a field the schema does not know is dropped


def test_a_missing_object_is_a_kubernetes_not_found(kube_api: KubeAPI) -> None:
    response = kube_api.http.get("/apis/apps/v1/namespaces/default/deployments/nope")
    assert response.status_code == 404
    assert response.json()["reason"] == "NotFound"
    assert response.json()["message"] == 'deployments.apps "nope" not found'
