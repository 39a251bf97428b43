"""Bench 3: the real operator (`tts-operator run`) against the emulated Kubernetes API at 10/100/500 services.

    python bench/operator_scale.py                       # N = 10, 100, 500
    python bench/operator_scale.py --counts 10,100       # a quicker run

For each N, on a fresh emulator (tests/support/kube_emulator.py, kmock) and a fresh operator subprocess:
  1. apply N TTSServices at once: time from each apply to its five children created;
  2. one pod per service (as its Deployment would make it) with an agent's residency report, `pods-per-gpu`
     pods sharing each GPU: time to the first `status` showing the pod;
  3. idle: the operator's background API requests per second;
  4. residency changes, one at a time (a pod's agent reports gpu → cpu): time from the annotation patch to
     `TTSService.status` showing it, and the operator's API requests per change (writes exactly; all
     requests net of the idle rate);
  5. the operator's memory (VmRSS / VmHWM from /proc) after each phase.
Times come from the emulator itself (each stored change is stamped when it happens), so polling adds nothing.
The operator runs with its production defaults (status 0.5 s after a change, level check every 30 s) unless
--status-seconds / --recheck-seconds say otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp.web
import httpx

import benchlib
from benchlib import fmt_bytes, fmt_ms, print_table, summary

sys.path.insert(0, str(benchlib.REPO / "tests"))
from support.kube import Emulator, KubeAPI, Process, make_pod

BENCH_AGENT = "residency-bench"  # the bench's own requests carry this User-Agent and are not counted
CHILDREN = ("deployments", "services", "serviceaccounts", "roles", "rolebindings")
WRITES = ("POST", "PUT", "PATCH", "DELETE")
GIB = benchlib.GIB


class TimedEmulator(Emulator):
    """The test emulator, plus a timestamp on every request it serves and every change it stores."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self.requests: list[tuple[float, str, str, str]] = []  # time, method, path, user agent
        self.changes: list[tuple[float, str, str, dict[str, Any]]] = []  # time, plural, type, object

    async def _handle(self, request: Any) -> aiohttp.web.StreamResponse:
        with self.lock:
            self.requests.append((time.monotonic(), str(request.method.value).upper(),
                                  str(request.url.path), str(request.headers.get("User-Agent", ""))))
        return await super()._handle(request)

    async def _emit(self, plural: str, kind: str, obj: dict[str, Any]) -> None:
        # Only what the bench reads, so waiting on it stays cheap at hundreds of services.
        meta = obj.get("metadata") or {}
        summary = {"name": meta.get("name"),
                   "service": (meta.get("labels") or {}).get("tts.residency.dev/service"),
                   "pods": status_pods(obj)}
        with self.lock:
            self.changes.append((time.monotonic(), plural, kind, summary))
        await super()._emit(plural, kind, obj)

    def operator_requests(self, since: float, until: float | None = None) -> list[tuple[float, str, str]]:
        with self.lock:
            reqs = list(self.requests)
        return [(t, m, p) for t, m, p, ua in reqs
                if t >= since and (until is None or t <= until) and not ua.startswith(BENCH_AGENT)]

    def changes_since(self, since: float) -> list[tuple[float, str, str, dict[str, Any]]]:
        with self.lock:
            i = len(self.changes)
            while i > 0 and self.changes[i - 1][0] >= since:
                i -= 1
            return self.changes[i:]


class Cluster(KubeAPI):
    """KubeAPI (blocking helpers, kubeconfig) around a TimedEmulator; the bench's requests carry its agent."""

    emulator: TimedEmulator

    def __init__(self, directory: Path) -> None:
        super().__init__(directory, emulator=TimedEmulator(), user_agent=BENCH_AGENT, timeout=30)


def service(name: str) -> dict[str, Any]:
    return {"apiVersion": "tts.residency.dev/v1alpha1", "kind": "TTSService",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"model": {"name": "hibari"}, "replicas": 1,
                     "residency": {"offloadAfterUse": True, "idleOffloadSeconds": 600,
                                   "idleReleaseSeconds": 3600, "pinned": False, "priority": 0}}}


def residency(state: str, group: int, seq: int) -> str:
    """An agent's report: one model, on GPU `group` (shared by `pods-per-gpu` pods)."""
    vram = 2 * GIB if state == "gpu" else 0
    return json.dumps({
        "models": [{"name": "hibari", "state": state, "vramBytes": vram, "hostBytes": GIB, "leases": 0,
                    "lastUsed": "2026-01-01T00:00:00Z"}],
        "gpu": {"uuid": f"GPU-bench-{group}", "index": 0, "totalBytes": 80 * GIB,
                "freeBytes": 60 * GIB, "processBytes": vram},
        "updated": f"2026-01-01T00:{seq // 60 % 60:02d}:{seq % 60:02d}Z"})


def kinds(reqs: list[tuple[float, str, str]]) -> dict[str, int]:
    """Requests counted by verb and resource: "PATCH pods", "PATCH ttsservices/status", "GET deployments"."""
    out: dict[str, int] = {}
    for _, method, path in reqs:
        parts = path.strip("/").split("/")
        sub = parts[-1] if len(parts) >= 2 and parts[-1] == "status" else None
        body = parts[:-1] if sub else parts
        plural = body[-2] if "namespaces" in body and len(body) > body.index("namespaces") + 3 else body[-1]
        key = f"{method} {plural}" + (f"/{sub}" if sub else "")
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items()))


def wait(what: str, done: Any, timeout: float, interval: float = 0.05) -> float:
    """Poll `done()` (in-memory, no API calls) until true; returns when; raises after `timeout`."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)
    return time.monotonic()


def quiet(emu: TimedEmulator, seconds: float, timeout: float) -> None:
    """Wait until the operator has written nothing for `seconds` (or `timeout` passes)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = time.monotonic()
        if not any(m in WRITES for _, m, _ in emu.operator_requests(now - seconds)):
            return
        time.sleep(0.1)


def start_operator(cluster: Cluster, directory: Path, env_extra: dict[str, str]) -> Process:
    port = benchlib.free_port()
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "PYTHONUNBUFFERED": "1",
           "RESIDENCY_RUNTIME_IMAGE": "ghcr.io/residency-dev/residency-runtime:bench",
           "RESIDENCY_AGENT_IMAGE": "ghcr.io/residency-dev/residency-operator:bench", **env_extra}
    args = [benchlib.executable("tts-operator"), "run", "--standalone", "--all-namespaces",
            "--liveness", f"http://127.0.0.1:{port}/healthz"]
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
    return proc


def status_pods(obj: dict[str, Any]) -> dict[str, int]:
    return dict((obj.get("status") or {}).get("pods") or {})


def run_scale(n: int, args: argparse.Namespace, env_extra: dict[str, str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="opbench-") as tmp:
        cluster = Cluster(Path(tmp))
        proc: Process | None = None
        try:
            proc = start_operator(cluster, Path(tmp), env_extra)
            return measure(n, cluster, proc, args)
        finally:
            if proc is not None:
                proc.stop()
                log = benchlib.RESULTS / "logs" / f"operator-{n}.log"
                log.parent.mkdir(parents=True, exist_ok=True)
                log.write_text(proc.logs())
            cluster.close()


def measure(n: int, cluster: Cluster, proc: Process, args: argparse.Namespace) -> dict[str, Any]:
    emu = cluster.emulator
    pid = proc.popen.pid
    names = [f"svc-{i:04d}" for i in range(n)]
    out: dict[str, Any] = {"services": n, "memory": {"idle": benchlib.proc_memory(pid)}}
    timeout = max(120.0, n * 1.0)

    # 1. apply -> children
    applied: dict[str, float] = {}
    t_start = time.monotonic()
    for name in names:
        applied[name] = time.monotonic()
        cluster.create("ttsservices", service(name))
    t_applied = time.monotonic()

    def children() -> dict[str, set[str]]:
        seen: dict[str, set[str]] = {}
        for _, plural, kind, obj in emu.changes_since(t_start):
            if plural in CHILDREN and kind == "ADDED":
                seen.setdefault(obj["service"] or "", set()).add(plural)
        return seen

    try:
        wait("every service's children", lambda: sum(len(v) == 5 for v in children().values()) >= n, timeout,
             0.25)
    except TimeoutError:
        complete = sum(len(v) == 5 for v in children().values())
        out["apply"] = {"finished": False, "services_with_children": complete, "after_s": timeout,
                        "requests": kinds(emu.operator_requests(t_start))}
        out["memory"]["applied"] = benchlib.proc_memory(pid)
        print(f"[{n}] only {complete}/{n} services had their children after {timeout:.0f}s", flush=True)
        return out
    done_at: dict[str, float] = {}
    for t, plural, kind, obj in emu.changes_since(t_start):
        if plural in CHILDREN and kind == "ADDED":
            done_at[obj["service"]] = max(done_at.get(obj["service"], 0.0), t)
    latencies = [done_at[s] - applied[s] for s in names]
    reqs = emu.operator_requests(t_start)
    out["apply"] = {"finished": True, "create_s": t_applied - t_start,
                    "all_children_s": max(done_at.values()) - t_start,
                    "per_service_s": summary(latencies),
                    "requests_per_service": len(reqs) / n,
                    "by_kind": {key: v / n for key, v in kinds(reqs).items()},
                    "writes_per_service": sum(m in WRITES for _, m, _ in reqs) / n}
    out["memory"]["applied"] = benchlib.proc_memory(pid)
    print(f"[{n}] children of all {n} services {out['apply']['all_children_s']:.2f}s after the first apply; "
          f"per service p50 {fmt_ms(out['apply']['per_service_s']['p50'])} ms", flush=True)

    # 2. pods with residency reports -> status
    quiet(emu, 1.0, 30)
    t_pods = time.monotonic()
    created: dict[str, float] = {}
    for i, name in enumerate(names):
        group = i // args.pods_per_gpu
        pod = make_pod(name, f"{name}-pod", node=f"node-{group}",
                       annotations={"tts.residency.dev/residency": residency("gpu", group, 0)})
        created[name] = time.monotonic()
        cluster.create("pods", pod)

    def first_status() -> dict[str, float]:
        seen: dict[str, float] = {}
        for t, plural, _, obj in emu.changes_since(t_pods):
            if plural == "ttsservices" and obj["pods"].get("gpu") == 1:
                seen.setdefault(obj["name"], t)
        return seen

    wait("every service's status to count its pod", lambda: len(first_status()) >= n, timeout, 0.25)
    seen = first_status()
    out["pods"] = {"status_s": summary([seen[s] - created[s] for s in names]),
                   "all_status_s": max(seen.values()) - t_pods}
    quiet(emu, 3.0, timeout)
    out["pods"]["requests_per_pod"] = len(emu.operator_requests(t_pods)) / n
    out["memory"]["pods"] = benchlib.proc_memory(pid)
    print(f"[{n}] status of all {n} services counts their pods {out['pods']['all_status_s']:.2f}s after the "
          "first pod", flush=True)

    # 3. idle background
    t_idle = time.monotonic()
    time.sleep(args.idle_seconds)
    idle = emu.operator_requests(t_idle, time.monotonic())
    idle_rate = len(idle) / args.idle_seconds
    out["idle"] = {"seconds": args.idle_seconds, "requests_per_s": idle_rate, "by_kind": kinds(idle),
                   "writes_per_s": sum(m in WRITES for _, m, _ in idle) / args.idle_seconds}

    # 4. residency changes, one at a time
    k = min(n, args.changes)
    picks = [names[int(i * n / k)] for i in range(k)]
    lat, total, writes, windows = [], [], [], []
    all_reqs: list[tuple[float, str, str]] = []
    starts: list[float] = []
    missed: list[str] = []
    for seq, name in enumerate(picks, start=1):
        i = names.index(name)
        note = {"metadata": {"annotations": {
            "tts.residency.dev/residency": residency("cpu", i // args.pods_per_gpu, seq)}}}
        t0 = time.monotonic()
        starts.append(t0)
        cluster.patch("pods", "default", f"{name}-pod", note)

        def shown(name: str = name, t0: float = t0) -> bool:
            return any(p == "ttsservices" and o["name"] == name and o["pods"].get("cpu") == 1
                       for _, p, _, o in emu.changes_since(t0))

        try:
            t_seen = wait(f"status of {name} to show the change", shown, args.change_timeout, 0.01)
        except TimeoutError:
            missed.append(name)  # reported as such: a figure, not a crash
            continue
        quiet(emu, 1.0, 15)
        t_end = time.monotonic()
        reqs = emu.operator_requests(t0, t_end)
        lat.append(t_seen - t0)
        windows.append(t_end - t0)
        total.append(len(reqs) - idle_rate * (t_end - t0))
        writes.append(sum(m in WRITES for _, m, _ in reqs))
        all_reqs += reqs
    out["change"] = {"changes": k, "missed": missed, "change_timeout_s": args.change_timeout,
                     "to_status_s": summary(lat), "each_s": lat,
                     "started_s": [round(t - t_pods, 2) for t in starts],
                     "writes_per_change": summary(writes),
                     "requests_per_change_net": summary(total), "window_s": summary(windows),
                     "requests_by_kind": {key: v / k for key, v in kinds(all_reqs).items()}}
    out["memory"]["end"] = benchlib.proc_memory(pid)
    if missed:
        print(f"[{n}] {len(missed)}/{k} changes not in status within {args.change_timeout:.0f}s", flush=True)
    p50 = fmt_ms(out["change"]["to_status_s"].get("p50"))
    print(f"[{n}] change → status p50 {p50} ms, writes per change "
          f"{out['change']['writes_per_change'].get('mean', float('nan')):.1f}", flush=True)
    return out


def report(rows: list[dict[str, Any]]) -> None:
    done = [r for r in rows if r["apply"]["finished"]]
    table = [[r["services"], f"{r['apply']['create_s']:.2f}", f"{r['apply']['all_children_s']:.2f}",
              fmt_ms(r["apply"]["per_service_s"]["p50"]), fmt_ms(r["apply"]["per_service_s"]["p99"]),
              f"{r['apply']['requests_per_service']:.1f}", f"{r['apply']['writes_per_service']:.1f}"]
             for r in done]
    table += [[r["services"], "", f"did not finish: {r['apply']['services_with_children']}/{r['services']} "
               f"after {r['apply']['after_s']:.0f}s", "", "", "", ""] for r in rows if r not in done]
    print_table("Apply → children created", ["services", "create all s", "all children s",
                                             "per service p50 ms", "p99 ms", "requests/service",
                                             "writes/service"], table)
    print_table("Residency change → TTSService.status",
                ["services", "changes", "p50 ms", "p99 ms", "max ms", "writes/change",
                 "requests/change (net of idle)", "idle requests/s", "first status of a new pod p50 ms"],
                [[r["services"],
                  f"{r['change']['changes'] - len(r['change']['missed'])}/{r['change']['changes']}",
                  fmt_ms(r["change"]["to_status_s"].get("p50")),
                  fmt_ms(r["change"]["to_status_s"].get("p99")),
                  fmt_ms(r["change"]["to_status_s"].get("max")),
                  f"{r['change']['writes_per_change'].get('mean', float('nan')):.1f}",
                  f"{r['change']['requests_per_change_net'].get('mean', float('nan')):.1f}",
                  f"{r['idle']['requests_per_s']:.1f}", fmt_ms(r["pods"]["status_s"]["p50"])] for r in done])
    phases = ("idle", "applied", "pods", "end")
    print_table("Operator memory (VmRSS; VmHWM = peak)",
                ["services", "idle RSS", "after apply", "with pods", "end", "peak (VmHWM)"],
                [[r["services"], *(fmt_bytes(r["memory"].get(k, {}).get("vmrss")) for k in phases),
                  fmt_bytes(max(m.get("vmhwm", 0) for m in r["memory"].values()))] for r in rows])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--counts", default="10,100,500", help="numbers of TTSServices (default 10,100,500)")
    p.add_argument("--changes", type=int, default=20, help="residency changes timed per count (default 20)")
    p.add_argument("--change-timeout", type=float, default=60.0,
                   help="seconds a change may take to reach status before it counts as missed (default 60)")
    p.add_argument("--pods-per-gpu", type=int, default=4, help="pods sharing one GPU (default 4)")
    p.add_argument("--idle-seconds", type=float, default=31.0,
                   help="idle window for the background rate (default 31: one level check of every service)")
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
    benchlib.write_json({"bench": "operator", "machine": benchlib.machine(), "operator_env": env,
                         "pods_per_gpu": args.pods_per_gpu, "rows": rows}, args.json, "operator")
    return 0


if __name__ == "__main__":
    sys.exit(main())
