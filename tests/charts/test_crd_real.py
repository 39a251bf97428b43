"""`kubectl get tts` as the API server renders it (the Table API): the columns docs/operator.md shows."""

from __future__ import annotations

import json

from support.cluster import ROOT, Cluster

STATUS = {
    "ready": "1/2",
    "pods": {"gpu": 1, "cpu": 1, "unloaded": 0, "failed": 0},
    "vram": "3Gi",
    "endpoint": "http://hibari.ns.svc.cluster.local:8000",
    "lastUsed": "2026-01-01T00:00:00Z",
}


def test_examples_apply_and_get_tts_shows_the_documented_columns(
    kube_cluster: Cluster, namespace: str
) -> None:
    for example in sorted((ROOT / "examples").glob("*.yaml")):
        done = kube_cluster.kubectl("apply", "-n", namespace, "-f", str(example))
        assert "created" in done.stdout, done.stdout
    name = kube_cluster.json("get", "tts", "-n", namespace)["items"][0]["metadata"]["name"]
    kube_cluster.kubectl(
        "patch",
        "tts",
        name,
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": STATUS}),
    )

    table = kube_cluster.kubectl("get", "tts", name, "-n", namespace).stdout.splitlines()
    assert table[0].split() == ["NAME", "READY", "GPU", "CPU", "UNLOADED", "VRAM", "AGE"], table
    assert table[1].split()[:6] == [name, "1/2", "1", "1", "0", "3Gi"], table

    wide = kube_cluster.kubectl("get", "tts", name, "-n", namespace, "-o", "wide").stdout.splitlines()
    assert wide[0].split() == [
        "NAME",
        "READY",
        "GPU",
        "CPU",
        "UNLOADED",
        "VRAM",
        "AGE",
        "MODEL",
        "ENDPOINT",
        "LAST",
        "USED",
    ], wide
    row = wide[1].split()
    assert row[:6] == [name, "1/2", "1", "1", "0", "3Gi"] and row[7:9] == ["hibari", STATUS["endpoint"]], wide
    assert row[9].endswith(("d", "y")), wide  # Last Used: a date column, rendered as an age by kubectl
