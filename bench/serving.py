"""Bench 2: latency and throughput of `/v1/audio/speech` against the same model called in-process.

    python bench/serving.py                      # hibari and the tiny torch model, a few minutes on 2 cores
    python bench/serving.py --models hibari --requests 100 --concurrency 1

For each model, four ways to get the same audio, each warmed up first:
  raw           the model object called directly (hibari.Hibari / TinyTTS), no engine
  engine        Engine.lease() + synthesize in this process (the worker process included, as in the server)
  http          a real `tts-runtime serve` subprocess, model resident (--no-offload-after-use)
  http-offload  the same server with offloadAfterUse on: each request may pay a restore
The overhead ratio is http over engine (and over raw) at the median; the restores counted from /metrics
say how many requests of the offload run paid for one.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

import benchlib
from benchlib import fmt_ms, print_table, summary

TEXT = "Residency keeps idle models off the GPU and brings them back fast."
MODELS: dict[str, dict[str, Any]] = {
    "hibari": {"flag": "hibari", "spec": {"name": "hibari"}, "voice": "heart"},
    "tiny": {"flag": "tiny=tts_runtime.testing.tiny:factory",
             "spec": {"name": "tiny", "backend": "plugin", "factory": "tts_runtime.testing.tiny:factory"},
             "voice": "alto"},
}
Call = Callable[[], None]


def run_load(call: Call, requests: int, concurrency: int, warmup: int) -> dict[str, Any]:
    """Latencies of `requests` calls made by `concurrency` threads, after `warmup` unmeasured calls."""
    for _ in range(warmup):
        call()
    latencies: list[float] = []
    lock = threading.Lock()
    left = iter(range(requests))

    def worker() -> None:
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
    with ThreadPoolExecutor(concurrency) as pool:
        for f in [pool.submit(worker) for _ in range(concurrency)]:
            f.result()
    wall = time.perf_counter() - t0
    return {**summary(latencies), "wall_s": wall, "throughput_rps": len(latencies) / wall}


# -- the in-process baselines ----------------------------------------------------------------------
def raw_call(model: str) -> tuple[Call, Callable[[], None]]:
    if model == "hibari":
        from hibari import Hibari

        h = Hibari("heart", threads=1)  # the engine's hibari backend uses one ORT thread too

        def call() -> None:
            h(TEXT, speed=1.0, seed=0)

        return call, lambda: None
    import torch

    from tts_runtime.testing.tiny import TinyTTS

    tiny = TinyTTS()

    def call_tiny() -> None:
        with torch.inference_mode():
            tiny.synthesize(TEXT, "alto", 1.0)

    return call_tiny, lambda: None


def engine_call(model: str) -> tuple[Call, Callable[[], None]]:
    from tts_contract import ModelSpec
    from tts_runtime.engine import Engine

    spec = ModelSpec.model_validate({**MODELS[model]["spec"], "policy": {"offloadAfterUse": False}})
    engine = Engine([spec], device="cpu")
    engine.start()
    voice = MODELS[model]["voice"]

    def call() -> None:
        with engine.lease(model) as lease:
            lease.synthesize(TEXT, voice=voice, speed=1.0)

    return call, lambda: engine.shutdown(drain_timeout=30)


# -- the server ------------------------------------------------------------------------------------
class Server:
    """`tts-runtime serve` as a subprocess on a free port; output to a log file; stopped by SIGTERM."""

    def __init__(self, model: str, offload_after_use: bool, log_dir: Path) -> None:
        self.port = benchlib.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        policy = "--offload-after-use" if offload_after_use else "--no-offload-after-use"
        args = [benchlib.executable("tts-runtime"), "serve", "--port", str(self.port), "--device", "cpu",
                "--model", MODELS[model]["flag"], policy]
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log = log_dir / f"serve-{model}-{'offload' if offload_after_use else 'resident'}.log"
        self._file = self.log.open("wb")
        env = {k: v for k, v in os.environ.items() if not k.startswith("TTS_RUNTIME_")}
        self.proc = subprocess.Popen(args, stdout=self._file, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"tts-runtime serve exited ({self.proc.returncode}); see {self.log}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"tts-runtime serve not ready within 60s; see {self.log}")
            time.sleep(0.1)

    def transitions(self, model: str) -> dict[str, float]:
        """Counts and total seconds of the verbs done so far, from /metrics."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        out: dict[str, float] = {}
        pattern = re.compile(r'^residency_transition(s_total|_duration_seconds_sum)\{([^}]*)\} ([0-9.e+-]+)$')
        for line in text.splitlines():
            m = pattern.match(line)
            if not m:
                continue
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
            if labels.get("model") != model or labels.get("outcome") != "ok":
                continue
            kind = "count" if m.group(1) == "s_total" else "seconds"
            out[f"{labels['verb']}_{kind}"] = float(m.group(3))
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._file.close()


def http_call(server: Server, model: str, fmt: str) -> tuple[Call, Callable[[], None]]:
    client = httpx.Client(base_url=server.url, timeout=120, limits=httpx.Limits(max_connections=32))
    body = {"model": model, "input": TEXT, "voice": MODELS[model]["voice"], "response_format": fmt}

    def call() -> None:
        r = client.post("/v1/audio/speech", json=body)
        if r.status_code != 200:
            raise RuntimeError(f"speech request failed: {r.status_code} {r.text[:300]}")

    return call, client.close


# -- main ------------------------------------------------------------------------------------------
def measure(model: str, how: str, args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    server: Server | None = None
    if how.startswith("http"):
        server = Server(model, how == "http-offload", benchlib.RESULTS / "logs")
        call, close = http_call(server, model, args.format)
    else:
        call, close = (raw_call if how == "raw" else engine_call)(model)
    try:
        for conc in args.concurrency:
            n = args.offload_requests if how == "http-offload" else args.requests
            run_load(call, args.warmup, 1, 0)
            before = server.transitions(model) if server else {}
            result = run_load(call, n, conc, 0)
            after = server.transitions(model) if server else {}
            delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
            row = {"model": model, "how": how, "concurrency": conc, **result, "transitions": delta}
            rows.append(row)
            print(f"{model:7} {how:13} c={conc} p50 {fmt_ms(result['p50'])} ms "
                  f"p99 {fmt_ms(result['p99'])} ms {result['throughput_rps']:.1f} req/s {delta or ''}",
                  flush=True)
    finally:
        close()
        if server is not None:
            server.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="hibari,tiny", help="hibari and/or tiny (default both)")
    p.add_argument("--ways", default="raw,engine,http,http-offload", help="which of the four to run")
    p.add_argument("--requests", type=int, default=200, help="measured requests per run (default 200)")
    p.add_argument("--offload-requests", type=int, default=60,
                   help="measured requests of the http-offload runs (each may pay a restore; default 60)")
    p.add_argument("--concurrency", default="1,4", help="client threads, comma-separated (default 1,4)")
    p.add_argument("--warmup", type=int, default=5, help="unmeasured requests first (default 5)")
    p.add_argument("--format", default="pcm", choices=["pcm", "wav", "flac"], help="response_format")
    p.add_argument("--json", help="write results here (default bench/results/serving-<time>.json)")
    args = p.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    ways = [w.strip() for w in args.ways.split(",") if w.strip()]
    try:
        args.concurrency = [int(c) for c in args.concurrency.split(",") if c.strip()]
    except ValueError:
        p.error("--concurrency takes whole numbers separated by commas, e.g. 1,4")
    if any(m not in MODELS for m in models) or not models:
        p.error(f"--models takes {', '.join(MODELS)}")
    if any(w not in ("raw", "engine", "http", "http-offload") for w in ways) or not ways:
        p.error("--ways takes raw, engine, http, http-offload")
    if min(args.concurrency, default=0) < 1 or args.requests < 1 or args.offload_requests < 1:
        p.error("--concurrency, --requests and --offload-requests must be ≥ 1")
    rows: list[dict[str, Any]] = []
    for model in models:
        for how in ways:
            measure(model, how, args, rows)
    report(rows)
    benchlib.write_json({"bench": "serving", "machine": benchlib.machine(), "text": TEXT,
                         "format": args.format, "rows": rows}, args.json, "serving")
    return 0


def report(rows: list[dict[str, Any]]) -> None:
    def find(model: str, how: str, conc: int) -> dict[str, Any] | None:
        return next((r for r in rows if (r["model"], r["how"], r["concurrency"]) == (model, how, conc)), None)

    table = []
    for r in rows:
        eng = find(r["model"], "engine", r["concurrency"])
        raw = find(r["model"], "raw", r["concurrency"])
        over_engine = f"{r['p50'] / eng['p50'] - 1:+.1%}" if eng and r["how"].startswith("http") else ""
        over_raw = f"{r['p50'] / raw['p50'] - 1:+.1%}" if raw and r["how"] != "raw" else ""
        t = r["transitions"]
        restores = ""
        if r["how"] == "http-offload":
            count = t.get("restore_count", 0.0)
            mean = t.get("restore_seconds", 0.0) / count if count else 0.0
            restores = f"{count:.0f}/{r['n']} ({fmt_ms(mean)} ms each)"
        table.append([r["model"], r["how"], r["concurrency"], fmt_ms(r["p50"]), fmt_ms(r["p99"]),
                      f"{r['throughput_rps']:.1f}", over_engine, over_raw, restores])
    print_table("Speech latency and throughput (CPU)",
                ["model", "way", "clients", "p50 ms", "p99 ms", "req/s", "p50 vs engine", "p50 vs raw",
                 "restores"], table)


if __name__ == "__main__":
    sys.exit(main())
