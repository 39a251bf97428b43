"""Bench: time to first audio and total time of `/v1/audio/speech`, streamed vs whole, in one run.

    python bench/streaming.py                      # hibari, wav, concurrency 1, 4, 16, two rounds
    python bench/streaming.py --format mp3 --rounds 3 --concurrency 1,4

One `tts-runtime serve` subprocess with hibari resident (--no-offload-after-use, so no restore is timed).
For each input (short, medium, 4,096 characters) and concurrency, every round sends `c` concurrent
requests streamed (`stream_format: "audio"`) and `c` whole (`"stream": false`), in alternating order.
Time to first audio is the first body byte that carries audio; total is the last byte. Ratios are whole
over streamed per round (paired: same round, same load), printed as median [min-max] over rounds.
The target line compares first audio of the long input (concurrency 1) with the synthesis time of its
first sentence alone (a whole request for just that sentence).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

import benchlib
from benchlib import fmt_ms, print_table

sys.path.insert(0, str(benchlib.REPO / "runtime"))
from tts_runtime.engine.segmenter import split

SHORT = "Residency keeps idle models off the GPU and brings them back fast."
PARAGRAPH = (
    "Dr. Smith paid $3.14 for 1,000 apples at the market on Tuesday, which surprised everyone. "
    '"Is it ready?" she asked; nobody answered, and the room went quiet for a while. '
    "The U.S. economy grew 2.5 percent last year, according to the report published in March. "
    "Trains left the station every ten minutes, carrying commuters to the city and back again. "
)
MEDIUM = (PARAGRAPH * 2)[:600].rsplit(" ", 1)[0] + "."
LONG = (PARAGRAPH * 20)[:4096]
INPUTS = {"short": SHORT, "medium": MEDIUM, "long": LONG}


class Server:
    """`tts-runtime serve` with hibari resident, on a free port; stopped by SIGTERM."""

    def __init__(self, log: Path) -> None:
        self.port = benchlib.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [
            benchlib.executable("tts-runtime"),
            "serve",
            "--port",
            str(self.port),
            "--device",
            "cpu",
            "--model",
            "hibari",
            "--no-offload-after-use",
        ]
        log.parent.mkdir(parents=True, exist_ok=True)
        self._file = log.open("wb")
        env = {k: v for k, v in os.environ.items() if not k.startswith("TTS_RUNTIME_")}
        self.proc = subprocess.Popen(
            args, stdout=self._file, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"tts-runtime serve exited ({self.proc.returncode}); see {log}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"tts-runtime serve not ready within 120s; see {log}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        self._file.close()


def one(url: str, text: str, fmt: str, streamed: bool) -> tuple[float, float]:
    """(first audio, total) in seconds for one request."""
    body: dict[str, Any] = {"model": "hibari", "input": text, "response_format": fmt, "stream": streamed}
    header = 44 if fmt == "wav" else 0  # a streamed wav's first bytes are its header: not audio yet
    started = time.perf_counter()
    first = None
    got = 0
    with httpx.Client(timeout=600) as client, client.stream("POST", f"{url}/v1/audio/speech", json=body) as r:
        if r.status_code != 200:
            raise SystemExit(f"request failed: {r.status_code} {r.read()[:300]!r}")
        for chunk in r.iter_raw():
            got += len(chunk)
            if first is None and got > header:
                first = time.perf_counter() - started
    total = time.perf_counter() - started
    return (first if first is not None else total), total


def burst(url: str, text: str, fmt: str, streamed: bool, c: int) -> list[tuple[float, float]]:
    with ThreadPoolExecutor(c) as pool:
        return list(pool.map(lambda _: one(url, text, fmt, streamed), range(c)))


def _medians(times: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(t[0] for t in times), statistics.median(t[1] for t in times)


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} [{min(values):.2f}-{max(values):.2f}]"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--format", default="wav", choices=["wav", "pcm", "mp3", "opus", "flac"])
    parser.add_argument("--concurrency", default="1,4,16", help="comma-separated (default 1,4,16)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per input and concurrency (default 2)")
    parser.add_argument("--json", help="write results here (default bench/results/streaming-<time>.json)")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    server = Server(benchlib.RESULTS / "streaming-serve.log")
    results: dict[str, Any] = {"machine": benchlib.machine(), "format": args.format, "runs": []}
    rows = []
    try:
        for _ in range(3):  # warm-up: the first session runs, G2P caches
            one(server.url, MEDIUM, args.format, True)
        first_sentence = split(LONG)[0].text
        alone = [one(server.url, first_sentence, args.format, False)[1] for _ in range(5)]
        for name, text in INPUTS.items():
            for c in levels:
                runs: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
                ratios_first, ratios_total = [], []
                for r in range(args.rounds):
                    order = (True, False) if r % 2 == 0 else (False, True)
                    got = {s: burst(server.url, text, args.format, s, c) for s in order}
                    for s in order:
                        runs[s] += got[s]
                    med = {s: _medians(got[s]) for s in order}
                    ratios_first.append(med[False][0] / med[True][0])
                    ratios_total.append(med[False][1] / med[True][1])
                p50 = {s: _medians(runs[s]) for s in runs}
                rows.append(
                    [
                        name,
                        len(text),
                        c,
                        fmt_ms(p50[True][0]),
                        fmt_ms(p50[False][0]),
                        spread(ratios_first),
                        fmt_ms(p50[True][1]),
                        fmt_ms(p50[False][1]),
                        spread(ratios_total),
                    ]
                )
                results["runs"].append(
                    {
                        "input": name,
                        "chars": len(text),
                        "concurrency": c,
                        "streamed": runs[True],
                        "whole": runs[False],
                        "ratio_first_audio": ratios_first,
                        "ratio_total": ratios_total,
                    }
                )
                print(rows[-1], flush=True)
    finally:
        server.stop()
    print_table(
        f"hibari, {args.format}, {args.rounds} rounds: p50 ms; "
        "ratios whole/streamed, median [min-max] over rounds",
        [
            "input",
            "chars",
            "conc.",
            "first audio streamed",
            "first audio whole",
            "ratio",
            "total streamed",
            "total whole",
            "ratio",
        ],
        rows,
    )
    long_first = next(r for r in results["runs"] if r["input"] == "long" and r["concurrency"] == levels[0])
    ttfa = statistics.median(x[0] for x in long_first["streamed"])
    sentence = statistics.median(alone)
    verdict = "met" if ttfa <= 1.5 * sentence else "NOT met"
    line = (
        f"target: first audio of the long input {fmt_ms(ttfa)} ms at concurrency {levels[0]}; "
        f"its first sentence ({len(first_sentence)} chars) alone takes {fmt_ms(sentence)} ms "
        f"-> {ttfa / sentence:.2f}x (target <= 1.5x: {verdict})"
    )
    print(line)
    results["target"] = {"first_audio_long": ttfa, "first_sentence_alone": sentence, "ratio": ttfa / sentence}
    benchlib.write_json(results, args.json, "streaming")


if __name__ == "__main__":
    main()
