"""Bench 3: the real operator (`tts-operator run`) on a real Kubernetes API server at 10/100/500 services.

    python bench/operator_scale.py                       # N = 10, 100, 500
    python bench/operator_scale.py --counts 10,100       # a quicker run

For each N, on a fresh control plane (kube-apiserver + kube-controller-manager 1.36 of ../shared/k8s, with an
audit log of every request but watches) and a fresh operator subprocess in namespace `bench`, as its own
ServiceAccount:
  1. apply N TTSServices at once: time from each apply to its five children seen by a watch;
  2. each service's pod (made by its Deployment's ReplicaSet, Pending) runs as a kubelet would make it run
     (bound to a node, status Running/Ready) and its agent publishes a residency report, `pods-per-gpu` pods
     sharing each GPU: time from the report to the first `status` showing the pod;
  3. idle: the operator's API requests per second;
  4. residency changes, one at a time (a pod's agent reports gpu → cpu): time from the annotation patch to
     `TTSService.status` showing it (a watch sees it), and the operator's API requests per change (writes
     exactly; all requests net of the idle rate);
  5. the operator's memory (VmRSS / VmHWM from /proc) after each phase;
  6. the operator's child creates over the whole run: one per child, or duplicates (refused 409).
Requests are the API server's own record (its audit log, by the operator's user); times are when the bench's
watches see an object change. The operator runs with its production defaults (status 0.5 s after a change,
level check every 30 s) unless --status-seconds / --recheck-seconds say otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

import benchlib
from benchlib import fmt_bytes, fmt_ms, print_table, summary

sys.path.insert(0, str(benchlib.REPO / "tests"))
from support.cluster import SHARED_K8S, Cluster
from support.kube import KubeAPI, Process

NAMESPACE = "bench"
CHILDREN = ("deployments", "services", "serviceaccounts", "roles", "rolebindings")
WRITES = ("create", "update", "patch", "delete", "deletecollection")
GIB = benchlib.GIB
GPUS_PER_NODE = 8
# Every request but watches (long-running: logged once, when they end), at the Metadata level.
AUDIT_POLICY = """apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: None
    verbs: ["watch"]
  - level: Metadata
"""


def status_pods(obj: dict[str, Any]) -> dict[str, int]:
    return dict((obj.get("status") or {}).get("pods") or {})


class Watches:
    """One watch per resource of the namespace: when each change arrived (what the bench times)."""

    def __init__(self, cluster: Cluster) -> None:
        from kubernetes import client

        self.lock = threading.Lock()
        self.changes: list[tuple[float, str, str, dict[str, Any]]] = []  # time, plural, type, summary
        self.stopped = threading.Event()
        apps, core = client.AppsV1Api(cluster.client), client.CoreV1Api(cluster.client)
        rbac, custom = client.RbacAuthorizationV1Api(cluster.client), client.CustomObjectsApi(cluster.client)
        lists: dict[str, tuple[Any, tuple[Any, ...]]] = {
            "deployments": (apps.list_namespaced_deployment, (NAMESPACE,)),
            "services": (core.list_namespaced_service, (NAMESPACE,)),
            "serviceaccounts": (core.list_namespaced_service_account, (NAMESPACE,)),
            "roles": (rbac.list_namespaced_role, (NAMESPACE,)),
            "rolebindings": (rbac.list_namespaced_role_binding, (NAMESPACE,)),
            "ttsservices": (
                custom.list_namespaced_custom_object,
                ("tts.residency.dev", "v1alpha1", NAMESPACE, "ttsservices"),
            ),
        }
        self.threads = [
            threading.Thread(target=self._follow, args=(plural, fn, fn_args), daemon=True)
            for plural, (fn, fn_args) in lists.items()
        ]
        for thread in self.threads:
            thread.start()

    def _follow(self, plural: str, fn: Any, fn_args: tuple[Any, ...]) -> None:
        from kubernetes import watch

        since: str | None = None
        while not self.stopped.is_set():
            try:
                for event in watch.Watch().stream(fn, *fn_args, resource_version=since, timeout_seconds=300):
                    now = time.monotonic()
                    obj = event["raw_object"]
                    meta = obj.get("metadata") or {}
                    since = meta.get("resourceVersion") or since
                    summary_ = {
                        "name": meta.get("name"),
                        "service": (meta.get("labels") or {}).get("tts.residency.dev/service"),
                        "pods": status_pods(obj),
                    }
                    with self.lock:
                        self.changes.append((now, plural, event["type"], summary_))
                    if self.stopped.is_set():
                        return
            except Exception:  # a busy server may end a watch (410, 504): start again
                self.stopped.wait(0.5)

    def since(self, t: float) -> list[tuple[float, str, str, dict[str, Any]]]:
        with self.lock:
            i = len(self.changes)
            while i > 0 and self.changes[i - 1][0] >= t:
                i -= 1
            return self.changes[i:]

    def stop(self) -> None:
        self.stopped.set()


class Requests:
    """The operator's requests as the API server's audit log records them, on the bench's clock."""

    def __init__(self, cluster: Cluster, user: str) -> None:
        self.cluster, self.user = cluster, user
        # Audit times are wall-clock; the bench times with the monotonic clock.
        self.offset = time.time() - time.monotonic()
        self.mark = 0
        # monotonic time, verb, what: "resource[/subresource]", a URL for discovery, " 409" etc. on a refusal
        self.events: list[tuple[float, str, str]] = []

    def _read(self) -> None:
        for event in self.cluster.audit(user=self.user, since=self.mark):
            ref = event.get("objectRef") or {}
            stamp = datetime.fromisoformat(event["stageTimestamp"].replace("Z", "+00:00")).timestamp()
            key = (
                ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
                if ref
                else event["requestURI"].split("?")[0]
            )
            code = int((event.get("responseStatus") or {}).get("code") or 0)
            key += f" {code}" if code >= 400 else ""
            self.events.append((stamp - self.offset, event["verb"], key))
        self.mark = self.cluster.audit_mark()

    def between(self, since: float, until: float | None = None) -> list[tuple[float, str, str]]:
        self._read()
        return [e for e in self.events if e[0] >= since and (until is None or e[0] <= until)]


def service(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "tts.residency.dev/v1alpha1",
        "kind": "TTSService",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "model": {"name": "hibari"},
            "replicas": 1,
            "residency": {
                "offloadAfterUse": True,
                "idleOffloadSeconds": 600,
                "idleReleaseSeconds": 3600,
                "pinned": False,
                "priority": 0,
            },
        },
    }


def residency(state: str, group: int, seq: int) -> str:
    """An agent's report: one model, on GPU `group` (shared by `pods-per-gpu` pods)."""
    vram = 2 * GIB if state == "gpu" else 0
    return json.dumps(
        {
            "models": [
                {
                    "name": "hibari",
                    "state": state,
                    "vramBytes": vram,
                    "hostBytes": GIB,
                    "leases": 0,
                    "lastUsed": "2026-01-01T00:00:00Z",
                }
            ],
            "gpu": {
                "uuid": f"GPU-bench-{group}",
                "index": 0,
                "totalBytes": 80 * GIB,
                "freeBytes": 60 * GIB,
                "processBytes": vram,
            },
            "updated": f"2026-01-01T00:{seq // 60 % 60:02d}:{seq % 60:02d}Z",
        }
    )


def kinds(reqs: list[tuple[float, str, str]]) -> dict[str, int]:
    """Requests counted by verb and resource: "patch pods", "patch ttsservices/status", "create services 409"
    (refused: already there), "get /apis" (discovery)."""
    out: dict[str, int] = {}
    for _, verb, resource in reqs:
        key = f"{verb} {resource}"
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items()))


def child_creates(reqs: list[tuple[float, str, str]], n: int) -> dict[str, int]:
    """The operator's POSTs of children over the whole run: answered 201, refused 409 (AlreadyExists: a
    duplicate create), refused otherwise; `expected` is one per child."""
    out = {"expected": n * len(CHILDREN), "created": 0, "conflicts": 0, "other_refusals": 0}
    for _, verb, what in reqs:
        resource, _, code = what.partition(" ")
        if verb != "create" or resource not in CHILDREN:
            continue
        out["created" if not code else "conflicts" if code == "409" else "other_refusals"] += 1
    return out


def wait(what: str, done: Any, timeout: float, interval: float = 0.05) -> float:
    """Poll `done()` until true; returns when; raises after `timeout`."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)
    return time.monotonic()


def quiet(requests: Requests, seconds: float, timeout: float) -> None:
    """Wait until the operator has written nothing for `seconds` (or `timeout` passes)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = time.monotonic()
        if not any(verb in WRITES for _, verb, _ in requests.between(now - seconds)):
            return
        time.sleep(0.2)


def start_operator(cluster: Cluster, directory: Path, env_extra: dict[str, str]) -> tuple[Process, str]:
    kubeconfig = cluster.identity(NAMESPACE, "operator", directory)
    port = benchlib.free_port()
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "PYTHONUNBUFFERED": "1",
        "RESIDENCY_RUNTIME_IMAGE": "ghcr.io/residency-dev/residency-runtime:bench",
        "RESIDENCY_AGENT_IMAGE": "ghcr.io/residency-dev/residency-operator:bench",
        **env_extra,
    }
    args = [
        benchlib.executable("tts-operator"),
        "run",
        "--standalone",
        "--namespace",
        NAMESPACE,
        "--liveness",
        f"http://127.0.0.1:{port}/healthz",
    ]
    proc = Process(args, env, directory / "operator.log")

    def alive() -> bool:
        if proc.popen.poll() is not None:
            raise SystemExit(f"the operator exited ({proc.popen.returncode}):\n{proc.logs()[-3000:]}")
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait("the operator's liveness endpoint", alive, 60, 0.2)
    except TimeoutError:
        proc.stop()
        raise
    return proc, Cluster.username(NAMESPACE, "operator")


def control_plane(directory: Path) -> Cluster:
    """A fresh control plane of ../shared/k8s with the bench's audit policy."""
    import subprocess

    policy = directory / "audit-policy.yaml"
    policy.write_text(AUDIT_POLICY)
    work = directory / "k8s"
    audit = f"--audit-policy-file={policy} --audit-log-path={work}/logs/audit.log"
    # up.sh's /24 has 254 ClusterIPs: the 255th Service would be refused (500, "range is full").
    env = {**os.environ, "KAS_EXTRA_ARGS": f"{audit} --service-cluster-ip-range=10.96.0.0/16"}
    done = subprocess.run(
        ["bash", str(SHARED_K8S / "up.sh"), str(work)], capture_output=True, text=True, timeout=300, env=env
    )
    if done.returncode != 0:
        raise SystemExit(f"../shared/k8s/up.sh failed:\n{done.stdout}\n{done.stderr}")
    cluster = Cluster(work / "admin.kubeconfig", workdir=work)
    cluster.apply_crds()
    cluster.kubectl("create", "namespace", NAMESPACE)
    return cluster


def run_scale(n: int, args: argparse.Namespace, env_extra: dict[str, str]) -> dict[str, Any]:
    import subprocess

    with tempfile.TemporaryDirectory(prefix="opbench-") as tmp:
        cluster = control_plane(Path(tmp))
        proc: Process | None = None
        watches = Watches(cluster)
        try:
            proc, user = start_operator(cluster, Path(tmp), env_extra)
            return measure(n, cluster, watches, Requests(cluster, user), proc, args)
        finally:
            watches.stop()
            if proc is not None:
                proc.stop()
                log = benchlib.RESULTS / "logs" / f"operator-{n}.log"
                log.parent.mkdir(parents=True, exist_ok=True)
                log.write_text(proc.logs())
            cluster.close()
            subprocess.run(
                ["bash", str(SHARED_K8S / "down.sh"), str(cluster.workdir), "--wipe"],
                capture_output=True,
                timeout=120,
            )


def measure(
    n: int, cluster: Cluster, watches: Watches, requests: Requests, proc: Process, args: argparse.Namespace
) -> dict[str, Any]:
    api = KubeAPI(cluster, NAMESPACE, Path(tempfile.gettempdir()))
    pid = proc.popen.pid
    names = [f"svc-{i:04d}" for i in range(n)]
    out: dict[str, Any] = {"services": n, "memory": {"idle": benchlib.proc_memory(pid)}}
    timeout = max(120.0, n * 1.0)

    # 1. apply -> children
    applied: dict[str, float] = {}
    t_start = time.monotonic()
    for name in names:
        applied[name] = time.monotonic()
        api.create("ttsservices", service(name))
    t_applied = time.monotonic()

    def children() -> dict[str, set[str]]:
        seen: dict[str, set[str]] = {}
        for _, plural, kind, obj in watches.since(t_start):
            if plural in CHILDREN and kind == "ADDED" and obj["service"]:
                seen.setdefault(obj["service"], set()).add(plural)
        return seen

    try:
        wait(
            "every service's children",
            lambda: sum(len(v) == 5 for v in children().values()) >= n,
            timeout,
            0.25,
        )
    except TimeoutError:
        complete = sum(len(v) == 5 for v in children().values())
        out["apply"] = {
            "finished": False,
            "services_with_children": complete,
            "after_s": timeout,
            "requests": kinds(requests.between(t_start)),
        }
        out["memory"]["applied"] = benchlib.proc_memory(pid)
        print(f"[{n}] only {complete}/{n} services had their children after {timeout:.0f}s", flush=True)
        return out
    done_at: dict[str, float] = {}
    for t, plural, kind, obj in watches.since(t_start):
        if plural in CHILDREN and kind == "ADDED" and obj["service"]:
            done_at[obj["service"]] = max(done_at.get(obj["service"], 0.0), t)
    latencies = [done_at[s] - applied[s] for s in names]
    quiet(requests, 2.0, 60)
    reqs = requests.between(t_start)
    out["apply"] = {
        "finished": True,
        "create_s": t_applied - t_start,
        "all_children_s": max(done_at.values()) - t_start,
        "per_service_s": summary(latencies),
        "requests_per_service": len(reqs) / n,
        "by_kind": {key: v / n for key, v in kinds(reqs).items()},
        "writes_per_service": sum(v in WRITES for _, v, _ in reqs) / n,
    }
    out["memory"]["applied"] = benchlib.proc_memory(pid)
    print(
        f"[{n}] children of all {n} services {out['apply']['all_children_s']:.2f}s after the first apply; "
        f"per service p50 {fmt_ms(out['apply']['per_service_s']['p50'])} ms",
        flush=True,
    )

    # 2. each Deployment's pod runs (a kubelet's part) and its agent reports -> status
    pods: dict[str, str] = {}

    def every_pod() -> bool:
        for pod in api.list("pods", NAMESPACE, "tts.residency.dev/service"):
            service_name = pod["metadata"]["labels"]["tts.residency.dev/service"]
            pods.setdefault(service_name, pod["metadata"]["name"])
        return len(pods) >= n

    wait("a pod of every service from its ReplicaSet", every_pod, timeout, 1.0)
    for group in range((n + args.pods_per_gpu - 1) // args.pods_per_gpu):
        cluster.ensure_node(f"node-{group // GPUS_PER_NODE}")
    t_pods = time.monotonic()
    reported: dict[str, float] = {}
    for i, name in enumerate(names):
        group = i // args.pods_per_gpu
        api.run_pod(pods[name], f"node-{group // GPUS_PER_NODE}")
        reported[name] = time.monotonic()
        api.patch(
            "pods",
            NAMESPACE,
            pods[name],
            {"metadata": {"annotations": {"tts.residency.dev/residency": residency("gpu", group, 0)}}},
        )

    def first_status() -> dict[str, float]:
        seen: dict[str, float] = {}
        for t, plural, _, obj in watches.since(t_pods):
            if plural == "ttsservices" and obj["pods"].get("gpu") == 1:
                seen.setdefault(obj["name"], t)
        return seen

    wait("every service's status to count its pod", lambda: len(first_status()) >= n, timeout, 0.25)
    seen = first_status()
    out["pods"] = {
        "status_s": summary([seen[s] - reported[s] for s in names]),
        "all_status_s": max(seen.values()) - t_pods,
    }
    quiet(requests, 3.0, timeout)
    out["pods"]["requests_per_pod"] = len(requests.between(t_pods)) / n
    out["memory"]["pods"] = benchlib.proc_memory(pid)
    print(
        f"[{n}] status of all {n} services counts their pods {out['pods']['all_status_s']:.2f}s after the "
        "first pod",
        flush=True,
    )

    # 3. idle background
    t_idle = time.monotonic()
    time.sleep(args.idle_seconds)
    idle = requests.between(t_idle, time.monotonic())
    idle_rate = len(idle) / args.idle_seconds
    out["idle"] = {
        "seconds": args.idle_seconds,
        "requests_per_s": idle_rate,
        "by_kind": kinds(idle),
        "writes_per_s": sum(v in WRITES for _, v, _ in idle) / args.idle_seconds,
    }

    # 4. residency changes, one at a time
    k = min(n, args.changes)
    picks = [names[int(i * n / k)] for i in range(k)]
    lat, total, writes, windows = [], [], [], []
    all_reqs: list[tuple[float, str, str]] = []
    starts: list[float] = []
    missed: list[str] = []
    for seq, name in enumerate(picks, start=1):
        i = names.index(name)
        note = {
            "metadata": {
                "annotations": {"tts.residency.dev/residency": residency("cpu", i // args.pods_per_gpu, seq)}
            }
        }
        t0 = time.monotonic()
        starts.append(t0)
        api.patch("pods", NAMESPACE, pods[name], note)

        def shown(name: str = name, t0: float = t0) -> bool:
            return any(
                p == "ttsservices" and o["name"] == name and o["pods"].get("cpu") == 1
                for _, p, _, o in watches.since(t0)
            )

        try:
            t_seen = wait(f"status of {name} to show the change", shown, args.change_timeout, 0.01)
        except TimeoutError:
            missed.append(name)  # reported as such: a figure, not a crash
            continue
        quiet(requests, 1.0, 15)
        t_end = time.monotonic()
        reqs = requests.between(t0, t_end)
        lat.append(t_seen - t0)
        windows.append(t_end - t0)
        total.append(len(reqs) - idle_rate * (t_end - t0))
        writes.append(sum(v in WRITES for _, v, _ in reqs))
        all_reqs += reqs
    out["change"] = {
        "changes": k,
        "missed": missed,
        "change_timeout_s": args.change_timeout,
        "to_status_s": summary(lat),
        "each_s": lat,
        "started_s": [round(t - t_pods, 2) for t in starts],
        "writes_per_change": summary(writes),
        "requests_per_change_net": summary(total),
        "window_s": summary(windows),
        "requests_by_kind": {key: v / k for key, v in kinds(all_reqs).items()},
    }
    out["memory"]["end"] = benchlib.proc_memory(pid)
    out["creates"] = child_creates(requests.between(t_start), n)
    if missed:
        print(f"[{n}] {len(missed)}/{k} changes not in status within {args.change_timeout:.0f}s", flush=True)
    p50 = fmt_ms(out["change"]["to_status_s"].get("p50"))
    print(
        f"[{n}] change → status p50 {p50} ms, writes per change "
        f"{out['change']['writes_per_change'].get('mean', float('nan')):.1f}",
        flush=True,
    )
    return out


def report(rows: list[dict[str, Any]]) -> None:
    done = [r for r in rows if r["apply"]["finished"]]
    table = [
        [
            r["services"],
            f"{r['apply']['create_s']:.2f}",
            f"{r['apply']['all_children_s']:.2f}",
            fmt_ms(r["apply"]["per_service_s"]["p50"]),
            fmt_ms(r["apply"]["per_service_s"]["p99"]),
            f"{r['apply']['requests_per_service']:.1f}",
            f"{r['apply']['writes_per_service']:.1f}",
        ]
        for r in done
    ]
    table += [
        [
            r["services"],
            "",
            f"did not finish: {r['apply']['services_with_children']}/{r['services']} "
            f"after {r['apply']['after_s']:.0f}s",
            "",
            "",
            "",
            "",
        ]
        for r in rows
        if r not in done
    ]
    print_table(
        "Apply → children created",
        [
            "services",
            "create all s",
            "all children s",
            "per service p50 ms",
            "p99 ms",
            "requests/service",
            "writes/service",
        ],
        table,
    )
    print_table(
        "Residency change → TTSService.status",
        [
            "services",
            "changes",
            "p50 ms",
            "p99 ms",
            "max ms",
            "writes/change",
            "requests/change (net of idle)",
            "idle requests/s",
            "first status of a new pod p50 ms",
        ],
        [
            [
                r["services"],
                f"{r['change']['changes'] - len(r['change']['missed'])}/{r['change']['changes']}",
                fmt_ms(r["change"]["to_status_s"].get("p50")),
                fmt_ms(r["change"]["to_status_s"].get("p99")),
                fmt_ms(r["change"]["to_status_s"].get("max")),
                f"{r['change']['writes_per_change'].get('mean', float('nan')):.1f}",
                f"{r['change']['requests_per_change_net'].get('mean', float('nan')):.1f}",
                f"{r['idle']['requests_per_s']:.1f}",
                fmt_ms(r["pods"]["status_s"]["p50"]),
            ]
            for r in done
        ],
    )
    print_table(
        "Child creates by the operator over the whole run (one per child expected)",
        ["services", "children", "created (201)", "refused 409 (duplicates)", "refused otherwise"],
        [
            [
                r["services"],
                r["creates"]["expected"],
                r["creates"]["created"],
                r["creates"]["conflicts"],
                r["creates"]["other_refusals"],
            ]
            for r in done
        ],
    )
    phases = ("idle", "applied", "pods", "end")
    print_table(
        "Operator memory (VmRSS; VmHWM = peak)",
        ["services", "idle RSS", "after apply", "with pods", "end", "peak (VmHWM)"],
        [
            [
                r["services"],
                *(fmt_bytes(r["memory"].get(k, {}).get("vmrss")) for k in phases),
                fmt_bytes(max(m.get("vmhwm", 0) for m in r["memory"].values())),
            ]
            for r in rows
        ],
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--counts", default="10,100,500", help="numbers of TTSServices (default 10,100,500)")
    p.add_argument("--changes", type=int, default=20, help="residency changes timed per count (default 20)")
    p.add_argument(
        "--change-timeout",
        type=float,
        default=60.0,
        help="seconds a change may take to reach status before it counts as missed (default 60)",
    )
    p.add_argument("--pods-per-gpu", type=int, default=4, help="pods sharing one GPU (default 4)")
    p.add_argument(
        "--idle-seconds",
        type=float,
        default=31.0,
        help="idle window for the background rate (default 31: one level check of every service)",
    )
    p.add_argument("--status-seconds", help="RESIDENCY_STATUS_SECONDS for the operator (default: its 0.5)")
    p.add_argument("--recheck-seconds", help="RESIDENCY_RECHECK_SECONDS for the operator (default: its 30)")
    p.add_argument("--json", help="write results here (default bench/results/operator-<time>.json)")
    args = p.parse_args(argv)
    try:
        counts = [int(c) for c in args.counts.split(",") if c.strip()]
    except ValueError:
        p.error("--counts takes whole numbers separated by commas, e.g. 10,100")
    if not counts or min(counts) < 1 or args.changes < 1 or args.pods_per_gpu < 1 or args.idle_seconds <= 0:
        p.error("--counts, --changes and --pods-per-gpu must be ≥ 1, --idle-seconds > 0")
    env = {}
    if args.status_seconds:
        env["RESIDENCY_STATUS_SECONDS"] = args.status_seconds
    if args.recheck_seconds:
        env["RESIDENCY_RECHECK_SECONDS"] = args.recheck_seconds
    rows = [run_scale(n, args, env) for n in counts]
    report(rows)
    benchlib.write_json(
        {
            "bench": "operator",
            "machine": benchlib.machine(),
            "operator_env": env,
            "pods_per_gpu": args.pods_per_gpu,
            "rows": rows,
        },
        args.json,
        "operator",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
