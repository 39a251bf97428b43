"""Bench 2: `tts-runtime serve` against the 30-line server a user would write instead (`baseline_server.py`).

    python bench/serving.py                     # all parts below, ~5 min on 2 cores
    python bench/serving.py throughput --rounds 3 --clients 1,4,8,16
    python bench/serving.py cold --repeats 3
    python bench/serving.py exit-worker --requests 12 --gap 2
    python bench/serving.py memory --models 3 --mem-rounds 2
    python bench/serving.py throughput --runtime /tmp/before/runtime   # Residency from another checkout

Both sides serve hibari (voice heart, one ONNX thread per request, seed 0, 16-bit PCM) on this machine's
CPU, and run interleaved in one process: every round measures each server in turn (the order rotates), so
whatever else loads the machine loads both; at one client the turns are request by request. Each ratio
is Residency ÷ baseline per round; the tables give the median and the spread (min–max) over the rounds.

  throughput   req/s and p50 at each client count: baseline, Residency resident (--no-offload-after-use)
               and Residency with the defaults (offloadAfterUse)
  cold         process start -> first audio bytes of one request (both load the model on the way)
  exit-worker  one request at a time, `--gap` seconds apart (an idle model's next request), keep-worker
               vs exit-worker, both offloadAfterUse: what a request pays for a restore in each mode
  memory       RSS and PSS of the runtime and its workers serving 1 and N hibari models, each in its own
               worker and all in one shared worker (`workerGroup`), against the baseline with one model:
               the per-model overhead of each
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

import benchlib
from benchlib import fmt_ms, print_table, summary

TEXT = "Residency keeps idle models off the GPU and brings them back fast."
BODY = {"model": "hibari", "input": TEXT, "voice": "heart", "response_format": "pcm"}
HERE = Path(__file__).resolve().parent


# -- servers ---------------------------------------------------------------------------------------
class Server:
    """A server subprocess on a free port, in its own session; output to a log file; SIGTERM to stop."""

    def __init__(self, label: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.label = label
        self.port = benchlib.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log = log_dir / f"serving-{label}.log"
        self._file = self.log.open("wb")
        self.t0 = time.perf_counter()
        argv = [a.replace("{port}", str(self.port)) for a in argv]
        self.proc = subprocess.Popen(
            argv, stdout=self._file, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        self.client = httpx.Client(
            base_url=self.url,
            timeout=120,
            # Idle connections end on this side first: uvicorn closes them after 5 s, httpx's default
            # expiry, so a request sent on one just then failed with "Server disconnected" (seen once).
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=64, keepalive_expiry=2.0),
        )

    def first_audio(self, body: dict[str, Any] = BODY, timeout: float = 180.0) -> float:
        """Seconds from process start to the first complete audio response."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.label} exited ({self.proc.returncode}); see {self.log}")
            try:
                r = self.client.post("/v1/audio/speech", json=body)
                if r.status_code == 200 and r.content:
                    return time.perf_counter() - self.t0
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"{self.label}: no audio within {timeout:g}s; see {self.log}")
            time.sleep(0.02)

    def speak(self, body: dict[str, Any] = BODY) -> None:
        r = self.client.post("/v1/audio/speech", json=body)
        if r.status_code != 200:
            raise RuntimeError(f"{self.label}: speech failed: {r.status_code} {r.text[:300]}")

    def pids(self) -> list[int]:
        """The server and every process below it (Residency's workers). A child is listed under the
        thread that started it (the runtime starts its workers from a spawner thread): read every thread's."""
        out, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            out.append(pid)
            for children in Path(f"/proc/{pid}/task").glob("*/children"):
                with contextlib.suppress(OSError):  # the thread or process ended meanwhile
                    todo += [int(c) for c in children.read_text(encoding="ascii").split()]
        return out

    def stop(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._file.close()


class Factory:
    """Builds the baseline and Residency servers; Residency is imported from `--runtime`."""

    def __init__(self, runtime: Path, log_dir: Path) -> None:
        self.runtime = runtime
        self.log_dir = log_dir
        self.tmp = Path(tempfile.mkdtemp(prefix="serving-bench-"))

    def _env(self, residency: bool) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TTS_RUNTIME_")}
        if residency:
            paths = [str(self.runtime), env.get("PYTHONPATH", "")]
            env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        return env

    def baseline(self, label: str = "baseline") -> Server:
        return Server(
            label,
            [sys.executable, str(HERE / "baseline_server.py"), "{port}"],
            self._env(False),
            self.log_dir,
        )

    def residency(
        self, label: str, models: list[dict[str, Any]] | None = None, offload_after_use: bool = False
    ) -> Server:
        argv = [
            benchlib.executable("tts-runtime"),
            "serve",
            "--port",
            "{port}",
            "--device",
            "cpu",
            "--log-level",
            "warning",
            "--offload-after-use" if offload_after_use else "--no-offload-after-use",
        ]
        if models is None:
            argv += ["--model", "hibari"]
        else:
            path = self.tmp / f"{label}.json"
            path.write_text(json.dumps({"models": models}), encoding="utf-8")
            argv += ["--models-file", str(path)]
        return Server(label, argv, self._env(True), self.log_dir)


# -- measuring -------------------------------------------------------------------------------------
def run_load(call: Callable[[], None], requests: int, clients: int) -> dict[str, Any]:
    """Latencies of `requests` calls made by `clients` threads; req/s over the wall time."""
    latencies: list[float] = []
    lock = threading.Lock()
    left = iter(range(requests))

    def client() -> None:
        while True:
            with lock:
                if next(left, None) is None:
                    return
            t0 = time.perf_counter()
            call()
            dt = time.perf_counter() - t0
            with lock:
                latencies.append(dt)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for f in [pool.submit(client) for _ in range(clients)]:
            f.result()
    wall = time.perf_counter() - t0
    return {**summary(latencies), "wall_s": wall, "rps": len(latencies) / wall}


def run_in_turn(servers: list[Server], requests: int, rnd: int) -> dict[str, dict[str, Any]]:
    """`requests` calls to each server by one client, one server after another (the order rotating):
    what `run_load(s.speak, requests, 1)` measures per server, under the same moments of the machine."""
    latencies: dict[str, list[float]] = {s.label: [] for s in servers}
    for i in range(requests):
        for s in rotate(servers, rnd + i):
            t0 = time.perf_counter()
            s.speak()
            latencies[s.label].append(time.perf_counter() - t0)
    return {k: {**summary(v), "wall_s": sum(v), "rps": len(v) / sum(v)} for k, v in latencies.items()}


def spread(values: Sequence[float], fmt: str = "{:.2f}") -> str:
    """'median [min–max]' of per-round values."""
    vals = [v for v in values if v == v]
    if not vals:
        return "—"
    med = statistics.median(vals)
    if len(vals) == 1:
        return fmt.format(med)
    return f"{fmt.format(med)} [{fmt.format(min(vals))}–{fmt.format(max(vals))}]"


def rotate(items: list[Any], k: int) -> list[Any]:
    k %= len(items)
    return items[k:] + items[:k]


def throughput(f: Factory, args: argparse.Namespace, out: dict[str, Any]) -> None:
    servers = [f.baseline(), f.residency("resident"), f.residency("defaults", offload_after_use=True)]
    rows: list[dict[str, Any]] = []
    try:
        for s in servers:
            s.first_audio()
            run_load(s.speak, args.warmup, 1)
        for rnd in range(args.rounds):
            for c in args.clients:
                n = args.requests if c == 1 else max(args.requests, 4 * c)
                # One client: request by request in turn, so a slow second of the machine lands on
                # every server alike (blocks of `n` requests each left a 66 ms p50 ±10% to chance).
                got = run_in_turn(servers, n, rnd) if c == 1 else None
                for s in rotate(servers, rnd + c):
                    r = got[s.label] if got is not None else run_load(s.speak, n, c)
                    rows.append({"round": rnd, "server": s.label, "clients": c, **r})
                    print(
                        f"round {rnd} {s.label:9} c={c:<2} p50 {fmt_ms(r['p50'])} ms {r['rps']:.1f} req/s",
                        flush=True,
                    )
    finally:
        for s in servers:
            s.stop()
    out["throughput"] = rows

    def per_round(label: str, c: int, key: str, over: str = "baseline") -> list[float]:
        vals = []
        for rnd in range(args.rounds):
            a = next(r for r in rows if (r["round"], r["server"], r["clients"]) == (rnd, label, c))
            b = next(r for r in rows if (r["round"], r["server"], r["clients"]) == (rnd, over, c))
            vals.append(a[key] / b[key])
        return vals

    table = []
    for c in args.clients:
        base = [r for r in rows if r["server"] == "baseline" and r["clients"] == c]
        res = [r for r in rows if r["server"] == "resident" and r["clients"] == c]
        table.append(
            [
                c,
                spread([r["rps"] for r in base], "{:.1f}"),
                spread([r["rps"] for r in res], "{:.1f}"),
                spread(per_round("resident", c, "rps")),
                spread(per_round("defaults", c, "rps")),
                spread([r["p50"] * 1000 for r in base], "{:.1f}"),
                spread([r["p50"] * 1000 for r in res], "{:.1f}"),
                spread(per_round("resident", c, "p50")),
                spread(per_round("defaults", c, "p50")),
                spread(per_round("defaults", c, "p50", over="resident")),
            ]
        )
    print_table(
        f"Throughput and latency, hibari on CPU, {args.rounds} interleaved rounds: median [min–max]",
        [
            "clients",
            "baseline req/s",
            "resident req/s",
            "req/s resident ÷ base",
            "req/s defaults ÷ base",
            "baseline p50 ms",
            "resident p50 ms",
            "p50 resident ÷ base",
            "p50 defaults ÷ base",
            "p50 defaults ÷ resident",
        ],
        table,
    )


def cold(f: Factory, args: argparse.Namespace, out: dict[str, Any]) -> None:
    kinds: list[tuple[str, Callable[[], Server]]] = [
        ("baseline", f.baseline),
        ("resident", lambda: f.residency("cold-resident")),
        ("defaults", lambda: f.residency("cold-defaults", offload_after_use=True)),
    ]
    got: dict[str, list[float]] = {k: [] for k, _ in kinds}
    for rnd in range(args.repeats):
        for label, make in rotate(kinds, rnd):
            s = make()
            try:
                got[label].append(s.first_audio())
            finally:
                s.stop()
            print(f"repeat {rnd} {label:9} first audio {got[label][-1]:.2f} s", flush=True)
    out["cold"] = got
    ratios = {k: [a / b for a, b in zip(got[k], got["baseline"], strict=True)] for k in got}
    print_table(
        f"Cold start to first audio, {args.repeats} interleaved repeats: median [min–max]",
        ["server", "seconds", "÷ baseline"],
        [[k, spread(v), spread(ratios[k]) if k != "baseline" else ""] for k, v in got.items()],
    )


def exit_worker(f: Factory, args: argparse.Namespace, out: dict[str, Any]) -> None:
    servers = [
        f.residency("keep-worker", [{"name": "hibari", "cpuMode": "keep-worker"}], offload_after_use=True),
        f.residency("exit-worker", [{"name": "hibari", "cpuMode": "exit-worker"}], offload_after_use=True),
    ]
    lat: dict[str, list[float]] = {s.label: [] for s in servers}
    try:
        for s in servers:
            s.first_audio()
        time.sleep(args.gap)
        for i in range(args.exit_requests):
            for s in rotate(servers, i):
                t0 = time.perf_counter()
                s.speak()
                lat[s.label].append(time.perf_counter() - t0)
            time.sleep(args.gap)
    finally:
        for s in servers:
            s.stop()
    out["exit_worker"] = lat
    ratios = [a / b for a, b in zip(lat["exit-worker"], lat["keep-worker"], strict=True)]
    print_table(
        f"One request every {args.gap:g} s, offloadAfterUse, {args.exit_requests} pairs",
        ["cpuMode", "p50 ms", "mean ms", "max ms", "per request ÷ keep-worker"],
        [
            [
                k,
                fmt_ms(statistics.median(v)),
                fmt_ms(statistics.fmean(v)),
                fmt_ms(max(v)),
                spread(ratios) if k == "exit-worker" else "",
            ]
            for k, v in lat.items()
        ],
    )


def _memory_of(pids: list[int]) -> dict[str, int]:
    rss = pss = 0
    for pid in pids:
        rss += benchlib.proc_memory(pid).get("vmrss", 0)
        try:
            with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as fh:
                for line in fh:
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1]) * 1024
        except OSError:
            pass
    return {"rss": rss, "pss": pss, "processes": len(pids)}


def memory(f: Factory, args: argparse.Namespace, out: dict[str, Any]) -> None:
    n = args.models
    names = [f"hibari-{i}" for i in range(n)]
    own = [{"name": m, "voices": ["heart"]} for m in names]
    shared = [{**m, "workerGroup": "hibari"} for m in own]
    cases: list[tuple[str, Callable[[], Server], list[str]]] = [
        ("baseline, 1 model", f.baseline, ["hibari"]),
        ("residency, 1 model", lambda: f.residency("mem-1"), ["hibari"]),
        (f"residency, {n} models, own workers", lambda: f.residency("mem-own", own), names),
        (f"residency, {n} models, one shared worker", lambda: f.residency("mem-shared", shared), names),
    ]
    rounds: list[dict[str, dict[str, Any]]] = []
    for k in range(args.mem_rounds):
        got: dict[str, dict[str, Any]] = {}
        for label, make, models in cases[k % len(cases) :] + cases[: k % len(cases)]:  # rotate the order
            s = make()
            try:
                for m in models:
                    s.first_audio({**BODY, "model": m})
                time.sleep(0.5)
                mem = _memory_of(s.pids())
            finally:
                s.stop()
            got[label] = {"case": label, "models": len(models), **mem}
            rss, pss = benchlib.fmt_bytes(mem["rss"]), benchlib.fmt_bytes(mem["pss"])
            print(f"round {k + 1}: {label}: RSS {rss} PSS {pss}", flush=True)
        rounds.append(got)
    out["memory"] = rounds
    base, one = cases[0][0], cases[1][0]

    def per_model(r: dict[str, dict[str, Any]], label: str, key: str) -> float:
        """What each model adds: over the baseline for one model, over one model for the others."""
        row = r[label]
        if label == base:
            return float("nan")
        if row["models"] == 1:
            return float(row[key] - r[base][key])
        return float(row[key] - r[one][key]) / (row["models"] - 1)

    mib = "{:.0f}"
    table = []
    for label, _, _ in cases:
        col = [r[label] for r in rounds]
        table.append(
            [
                label,
                col[0]["processes"],
                spread([c["rss"] / 2**20 for c in col], mib),
                spread([c["pss"] / 2**20 for c in col], mib),
                spread([per_model(r, label, "rss") / 2**20 for r in rounds], mib),
                spread([per_model(r, label, "pss") / 2**20 for r in rounds], mib),
            ]
        )
    print_table(
        f"Host memory with every model loaded (resident), MiB, median [min–max] of {len(rounds)} round(s)",
        ["case", "processes", "RSS (sum)", "PSS (sum)", "RSS per model", "PSS per model"],
        table,
    )
    print("per model: 1 model over the baseline; N models: each one after the first, over 1 model")


PARTS = {"throughput": throughput, "cold": cold, "exit-worker": exit_worker, "memory": memory}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "parts",
        nargs="*",
        default=["throughput", "cold", "exit-worker"],
        help=f"which of {', '.join(PARTS)} (default: throughput cold exit-worker)",
    )
    p.add_argument(
        "--runtime",
        default=str(benchlib.REPO / "runtime"),
        help="the runtime/ directory to import Residency from (default: this checkout)",
    )
    p.add_argument("--rounds", type=int, default=3, help="throughput: interleaved rounds (default 3)")
    p.add_argument("--clients", default="1,4,8,16", help="throughput: client counts (default 1,4,8,16)")
    p.add_argument("--requests", type=int, default=40, help="throughput: requests per run (default 40)")
    p.add_argument("--warmup", type=int, default=5, help="throughput: unmeasured requests first (default 5)")
    p.add_argument("--repeats", type=int, default=3, help="cold: interleaved repeats (default 3)")
    p.add_argument("--exit-requests", type=int, default=10, help="exit-worker: request pairs (default 10)")
    p.add_argument("--gap", type=float, default=2.0, help="exit-worker: idle seconds between requests")
    p.add_argument("--models", type=int, default=3, help="memory: models in the multi-model cases")
    p.add_argument("--mem-rounds", type=int, default=2, help="memory: interleaved rounds (default 2)")
    p.add_argument("--json", help="write results here (default bench/results/serving-<time>.json)")
    args = p.parse_args(argv)
    bad = [x for x in args.parts if x not in PARTS]
    if bad:
        p.error(f"unknown part(s) {bad}; choose from {', '.join(PARTS)}")
    try:
        args.clients = [int(c) for c in args.clients.split(",") if c.strip()]
    except ValueError:
        p.error("--clients takes whole numbers separated by commas, e.g. 1,4,8,16")
    if min(args.clients, default=0) < 1 or min(args.rounds, args.requests, args.repeats, args.mem_rounds) < 1:
        p.error("--clients, --rounds, --requests, --repeats and --mem-rounds must be ≥ 1")
    f = Factory(Path(args.runtime).resolve(), benchlib.RESULTS / "logs")
    out: dict[str, Any] = {
        "bench": "serving",
        "machine": benchlib.machine(),
        "text": TEXT,
        "runtime": str(f.runtime),
    }
    for part in args.parts:
        PARTS[part](f, args, out)
    benchlib.write_json(out, args.json, "serving")
    return 0


if __name__ == "__main__":
    sys.exit(main())
