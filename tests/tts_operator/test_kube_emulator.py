"""The test Kubernetes API emulator behaves like an API server where our code depends on it."""

from __future__ import annotations

from support.kube import KubeAPI, make_pod, selector_matches


def _svc(name: str) -> dict[str, object]:
    return {"apiVersion": "tts.residency.dev/v1alpha1", "kind": "TTSService",
            "metadata": {"name": name}, "spec": {"model": {"name": "hibari"}}, "status": {"x": 1}}


def test_create_stamps_metadata_and_ignores_status(kube_api: KubeAPI) -> None:
    response = kube_api.http.post("/apis/tts.residency.dev/v1alpha1/namespaces/default/ttsservices",
                                  json=_svc("a"))
    obj = response.json()
    meta = obj["metadata"]
    assert meta["namespace"] == "default" and meta["uid"] and meta["generation"] == 1
    assert meta["resourceVersion"] and "status" not in obj


def test_status_subresource_is_isolated_and_generation_follows_spec(kube_api: KubeAPI) -> None:
    kube_api.create("ttsservices", _svc("a"))
    kube_api.patch("ttsservices", "default", "a", {"status": {"ready": "1/1"}})
    assert kube_api.get("ttsservices", "default", "a")["status"] == {"x": 1}  # type: ignore[index]
    kube_api.patch("ttsservices", "default", "a", {"status": {"ready": "1/1"}, "spec": {"x": 1}}, status=True)
    obj = kube_api.get("ttsservices", "default", "a")
    assert obj is not None and obj["status"] == {"x": 1, "ready": "1/1"} and "x" not in obj["spec"]
    assert obj["metadata"]["generation"] == 1
    rv = obj["metadata"]["resourceVersion"]
    obj = kube_api.patch("ttsservices", "default", "a", {"spec": {"replicas": 2}})
    assert obj["metadata"]["generation"] == 2 and obj["metadata"]["resourceVersion"] != rv
    replace = [{"op": "replace", "path": "/spec/replicas", "value": 3}]
    obj = kube_api.patch("ttsservices", "default", "a", replace)
    assert obj["spec"]["replicas"] == 3 and obj["metadata"]["generation"] == 3


def test_label_selector_and_owner_garbage_collection(kube_api: KubeAPI) -> None:
    owner = kube_api.create("ttsservices", _svc("a"))
    ref = {"apiVersion": "tts.residency.dev/v1alpha1", "kind": "TTSService", "name": "a",
           "uid": owner["metadata"]["uid"], "controller": True}
    pod = make_pod("a", "a-1")
    pod["metadata"]["ownerReferences"] = [ref]
    kube_api.create("pods", pod)
    kube_api.create("pods", make_pod("b", "b-1"))
    pods = kube_api.list("pods", selector="tts.residency.dev/service=a")
    assert [p["metadata"]["name"] for p in pods] == ["a-1"]
    kube_api.delete("ttsservices", "default", "a")
    assert kube_api.get("pods", "default", "a-1") is None
    assert kube_api.get("pods", "default", "b-1") is not None


def test_selector_semantics() -> None:
    labels = {"a": "1", "b": "2"}
    assert selector_matches("a=1,b", labels)
    assert selector_matches("a in (1,3),!c", labels)
    assert not selector_matches("a!=1", labels)
    assert not selector_matches("b notin (2)", labels)
