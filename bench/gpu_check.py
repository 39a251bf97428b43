"""The GPU check's measurements (run by bench/gpu_check.sh): one summary of what the GPU path does.

    python bench/gpu_check.py --device cuda --size-gib 2 --out DIR     # on a GPU machine
    python bench/gpu_check.py --device cpu --size-gib 0.01 --out DIR   # the same path on CPU stand-ins

For a model of one big tensor and one of thousands of tensors, through the engine's real path (`Engine`,
torch backend, worker process) in each `cpuMode`: bytes freed by offload and release (NVML per process and
free memory), restore GB/s against a raw pinned host→GPU copy of the same size measured in the same run
(in a child process, so this process never holds a CUDA context), offload ms, outputs bit-identical after
every restore, pinned bytes against the weights. Then hibari on the CUDA provider (or why not). Writes
`check.json` and `SUMMARY.md` into `--out`. On CPU "restore" is a host memcpy and GPU figures are n/a.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # spawned workers inherit sys.path: they import residency_gpu's factories

import benchlib  # noqa: E402
from benchlib import fmt_bytes, fmt_ms  # noqa: E402
from residency_gpu import run_probe, settle_unloaded, snapshot  # noqa: E402

TEXT = "Residency keeps idle models off the GPU."


def _spec(name: str, factory: str, options: dict[str, Any], mode: str) -> Any:
    from tts_contract import ModelSpec

    return ModelSpec.model_validate(
        {
            "name": name,
            "backend": "torch",
            "factory": factory,
            "options": options,
            "cpuMode": mode,
            "policy": {"pinned": True},
            "loadTimeoutSeconds": 600,
            "requestTimeoutSeconds": 300,
        }
    )


def _synth(engine: Any) -> Any:
    with engine.lease("bench") as lease:
        return lease.synthesize(TEXT, voice="alto", speed=1.0).samples


def measure(
    kind: str, factory: str, options: dict[str, Any], device: str, mode: str, repeats: int
) -> dict[str, Any]:
    """One model in one cpuMode: load, offload/restore `repeats` times, release; memory per state."""
    import numpy as np

    from tts_runtime.engine import Engine, NoGpu, NvmlProbe

    gpu = NoGpu() if device == "cpu" else NvmlProbe()
    engine = Engine([_spec("bench", factory, options, mode)], device=device, gpu=gpu, admin_timeout=600)
    row: dict[str, Any] = {"model": kind, "mode": mode}
    try:
        rep = engine.load("bench", timeout=600)
        stats = engine._slots["bench"].stats
        row.update(
            load_s=rep.transitions["load"],
            host_bytes=rep.host_bytes,
            weights_bytes=stats.device_bytes if stats else None,
            pinned_bytes=stats.pinned_bytes if stats else None,
            context_bytes=stats.context_bytes if stats else None,
            nvml_pids=stats.gpu_pids if stats else None,
            mem_gpu=snapshot(engine),
            vram_gpu=rep.vram_bytes,
        )
        ref = _synth(engine)
        offloads, restores, same = [], [], True
        for i in range(repeats):
            rep = engine.offload("bench", timeout=600)
            offloads.append(rep.transitions["offload"])
            if i == 0:
                row["mem_cpu"], row["vram_cpu"] = snapshot(engine), rep.vram_bytes
            rep = engine.restore("bench", timeout=600)
            restores.append(rep.transitions["restore"])
            same = same and bool(np.array_equal(ref, _synth(engine)))
        st = engine._slots["bench"].stats
        row.update(
            offload_s=offloads, restore_s=restores, identical=same, pin_seconds=st.pin_seconds if st else None
        )
        engine.release("bench", timeout=600)
        row["mem_unloaded"] = settle_unloaded(engine)
    finally:
        engine.shutdown(drain_timeout=60)
    restore = statistics.median(restores)
    row["restore_median_s"] = restore
    row["offload_median_s"] = statistics.median(offloads)
    row["restore_gbps"] = row["host_bytes"] / restore / 1e9 if restore > 0 else None
    return row


def freed(row: dict[str, Any], key: str, frm: str, to: str) -> int | None:
    a, b = row[frm].get(key), row[to].get(key)
    if a is None or b is None:
        return None
    return int(b - a) if key == "gpu_free_bytes" else int(a - b)


def suspend_check(model: tuple[str, str, dict[str, Any]], repeats: int) -> str:
    """cpuMode `suspend` where the driver's probe proves it: GPU bytes freed, restore ms, same output."""
    from tts_runtime.engine.cuda_checkpoint import CheckpointHelper

    helper = CheckpointHelper()
    try:
        got = helper.probe()
    finally:
        helper.close()
    if not got.supported:
        return f"not supported here: {got.reason}"
    kind, factory, options = model
    r = measure(kind, factory, options, "cuda", "suspend", repeats)
    return (
        f"{kind}: freed by suspend {fmt_bytes(freed(r, 'gpu_process_bytes', 'mem_gpu', 'mem_cpu'))} "
        f"(NVML proc) / {fmt_bytes(freed(r, 'gpu_free_bytes', 'mem_gpu', 'mem_cpu'))} (free); GPU "
        f"bytes while suspended {fmt_bytes(r['mem_cpu'].get('gpu_process_bytes'))}; resume "
        f"{fmt_ms(r['restore_median_s'])} ms; offload {fmt_ms(r['offload_median_s'])} ms; identical "
        f"{'yes' if r['identical'] else '**no**'}"
    )


def hibari_check(device: str) -> dict[str, Any]:
    """The default voice: which provider its session really got, and why not CUDA when not."""
    from tts_contract import ModelSpec
    from tts_runtime.engine import Engine, NoGpu, NvmlProbe

    spec = ModelSpec.model_validate({"name": "hibari", "policy": {"pinned": True}})
    gpu = NoGpu() if device == "cpu" else NvmlProbe()
    engine = Engine([spec], device=device, gpu=gpu, admin_timeout=600)
    try:
        t0 = time.perf_counter()
        rep = engine.load("hibari", timeout=600)
        load_s = time.perf_counter() - t0
        with engine.lease("hibari") as lease:
            first = lease.synthesize("Hello from the GPU check.").samples
        off = engine.offload("hibari", timeout=600)
        back = engine.restore("hibari", timeout=600)
        with engine.lease("hibari") as lease:
            again = lease.synthesize("Hello from the GPU check.").samples
        return {
            "device": rep.device,
            "note": rep.error,
            "load_s": load_s,
            "vram_gpu": rep.vram_bytes,
            "vram_cpu": off.vram_bytes,
            "restore_s": back.transitions["restore"],
            "identical": bool(first.tobytes() == again.tobytes()),
        }
    finally:
        engine.shutdown(drain_timeout=60)


def summary(results: dict[str, Any]) -> str:
    device = results["device"]
    lines = [
        f"# GPU check ({'GPU: ' + results.get('gpu_name', '?') if device != 'cpu' else 'CPU fallback'})",
        "",
        f"- when: {results['when']}; machine: {results['machine'].get('cpu', '?')}",
        f"- pytest -m gpu: {results.get('pytest', 'not run')}",
        f"- reference copy (same run, {fmt_bytes(results['size_bytes'])}): {results['reference']} at "
        f"{results['reference_gbps']:.2f} GB/s",
        "",
    ]
    lines += [
        "| model | cpuMode | offload ms | restore ms | restore GB/s | vs reference | identical | "
        "pinned / weights | freed by offload (NVML proc / free) | freed by release (NVML proc / free) "
        "| GPU bytes in cpu |",
        "|" + "---|" * 11,
    ]
    for r in results["rows"]:
        gbps = r["restore_gbps"] or 0.0
        lines.append(
            f"| {r['model']} | {r['mode']} | {fmt_ms(r['offload_median_s'])} | "
            f"{fmt_ms(r['restore_median_s'])} | {gbps:.2f} | {gbps / results['reference_gbps']:.0%} | "
            f"{'yes' if r['identical'] else '**no**'} | {fmt_bytes(r['pinned_bytes'])} / "
            f"{fmt_bytes(r['weights_bytes'])} | "
            f"{fmt_bytes(freed(r, 'gpu_process_bytes', 'mem_gpu', 'mem_cpu'))} / "
            f"{fmt_bytes(freed(r, 'gpu_free_bytes', 'mem_gpu', 'mem_cpu'))} | "
            f"{fmt_bytes(freed(r, 'gpu_process_bytes', 'mem_gpu', 'mem_unloaded'))} / "
            f"{fmt_bytes(freed(r, 'gpu_free_bytes', 'mem_gpu', 'mem_unloaded'))} | "
            f"{fmt_bytes(r['mem_cpu'].get('gpu_process_bytes'))} |"
        )
    h = results.get("hibari") or {}
    lines += [
        "",
        f"- suspend (cpuMode `suspend`, CUDA checkpoint API): {results.get('suspend', 'n/a')}",
        f"- hibari: runs on `{h.get('device')}`"
        + (f" — {h['note']}" if h.get("note") else "")
        + f"; restore {fmt_ms(h.get('restore_s'))} ms; identical after restore: "
        f"{'yes' if h.get('identical') else '**no**'}",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cuda", "cpu"], required=True)
    p.add_argument("--size-gib", type=float, default=2.0, help="bytes of each model (default 2 GiB)")
    p.add_argument("--tensors", type=int, default=4096, help="tensors of the many-tensor model")
    p.add_argument("--modes", default="keep-worker,exit-worker")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--pytest", default="not run", help="the pytest -m gpu outcome line, for the summary")
    p.add_argument("--out", required=True, help="directory for check.json and SUMMARY.md")
    args = p.parse_args(argv)
    if args.size_gib <= 0 or args.tensors < 1 or args.repeats < 1:
        p.error("--size-gib > 0, --tensors ≥ 1, --repeats ≥ 1")
    modes = [m for m in args.modes.split(",") if m]
    size = int(args.size_gib * benchlib.GIB)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ref = run_probe(args.device, size)
    if args.device == "cuda" and not ref.get("cuda"):
        print("no CUDA device: run with --device cpu", file=sys.stderr)
        return 2
    results: dict[str, Any] = {
        "device": args.device,
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": benchlib.machine(),
        "size_bytes": size,
        "reference": ref["reference"],
        "reference_gbps": size / ref["ref_seconds"] / 1e9,
        "gpu_name": ref.get("device_name"),
        "pytest": args.pytest,
        "rows": [],
        "suspend": "n/a (no GPU)",
    }
    models = [
        ("one tensor", "support.tiny:factory", {"size_bytes": size}),
        (
            f"{args.tensors} tensors",
            "residency_gpu:many_tensors",
            {"count": args.tensors, "size_bytes": size},
        ),
    ]
    for kind, factory, options in models:
        for mode in modes:
            row = measure(kind, factory, options, args.device, mode, args.repeats)
            results["rows"].append(row)
            print(
                f"[{kind} {mode}] restore {row['restore_median_s'] * 1000:.1f} ms, offload "
                f"{row['offload_median_s'] * 1000:.1f} ms, identical {row['identical']}",
                flush=True,
            )
    if args.device == "cuda":
        results["suspend"] = suspend_check(models[0], args.repeats)
    results["hibari"] = hibari_check(args.device)
    (out / "check.json").write_text(json.dumps(results, indent=2, default=str))
    text = summary(results)
    (out / "SUMMARY.md").write_text(text)
    print(text)
    bad = [r for r in results["rows"] if not r["identical"]] or not results["hibari"]["identical"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
