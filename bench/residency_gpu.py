"""Bench 1: load, offload, restore and memory per residency state of torch models of 1/4/16 GiB.

    python bench/residency_gpu.py --sizes 1,4,16 --json out.json          # on a GPU machine
    python bench/residency_gpu.py --device cpu --sizes 0.05,0.2            # same code path on CPU

Every model is the engine's real path: `Engine` + torch backend + worker process, in both `cpu` modes
(keep-worker, exit-worker). The model is `support.tiny.TinyTTS` sized with ballast and
loaded from a file on disk (this module's `tiny_from_file`), so "cold load" reads the same bytes the disk
baseline reads. The reference bandwidth (pinned host→GPU copy of one buffer of the model's size; on CPU a
host memcpy) is measured in a separate process in the same run, so this process never holds a CUDA context
and NVML's per-process figures are the engine's workers alone.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import benchlib
from benchlib import GIB, fmt_bytes, fmt_ms, fmt_s, print_table

# The tiny model is test code (tests/support/tiny.py); spawned workers inherit sys.path and import it too.
sys.path.insert(0, str(benchlib.REPO / "tests"))

MODES = ("keep-worker", "exit-worker")
TEXT = "Residency keeps idle models off the GPU."
# Targets from the issue; the original project's claims, for the side-by-side table.
TARGET_RESTORE_RATIO = 0.90
TARGET_OFFLOAD_S = 0.050
STATES = ("mem_gpu", "mem_cpu", "mem_unloaded")
ORIGINAL = {"restore_s": (2.0, 5.0), "offload_s": 2.0, "idle_bytes": 1 * GIB}


def tiny_from_file(path: str, size_bytes: int, seed: int = 0) -> Any:
    """Factory for the engine: a TinyTTS skeleton whose weights are read from `path` (a torch.save file).

    Built on the meta device first so nothing is allocated twice; when the engine itself builds a
    skeleton (exit-worker restore, weights come from shared memory) the file is not read at all.
    """
    import torch

    from support.tiny import TinyTTS

    with torch.device("meta"):
        model = TinyTTS(size_bytes=size_bytes, seed=seed)
    if torch.get_default_device().type == "meta":
        return model
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state, assign=True)
    return model


def many_tensors(count: int, size_bytes: int, seed: int = 0) -> Any:
    """Factory: TinyTTS plus `count` separate parameters sharing `size_bytes`, every one of which enters
    the output (a restore that brings any one back wrong changes the samples). Thousands of tensors are
    what makes a per-storage restore slow: this is the model that shows the one-copy arena."""
    import torch
    from torch import nn

    from support.tiny import TinyTTS

    class Many(TinyTTS):
        def __init__(self) -> None:
            super().__init__(seed=seed)
            n = max(1, size_bytes // 4 // max(count, 1))
            g = torch.Generator().manual_seed(seed + 1)
            self.pieces = nn.ParameterList(
                nn.Parameter(torch.rand(n, generator=g) * 1e-3, requires_grad=False) for _ in range(count)
            )

        def forward(self, codes: torch.Tensor, voice: int, speed: float) -> torch.Tensor:
            heads = torch.stack([p[0] for p in self.pieces]).sum()
            return super().forward(codes, voice, speed) + heads

    return Many()


# -- the weights file and the disk baseline --------------------------------------------------------
def write_weights(path: Path, size_bytes: int) -> int:
    """Save a TinyTTS state dict of `size_bytes` to `path` (reused if already there); returns file size."""
    import torch

    from support.tiny import TinyTTS

    if not path.exists():
        model = TinyTTS(size_bytes=size_bytes)
        tmp = path.with_suffix(".tmp")
        torch.save(model.state_dict(), tmp)
        del model
        gc.collect()
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        tmp.rename(path)
    return path.stat().st_size


def drop_cache(path: Path) -> None:
    """Evict the file from the page cache (clean pages; no root needed) so the next read is cold."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def read_file(path: Path) -> float:
    """Seconds to read the whole file into one preallocated buffer (what any loader must at least do)."""
    size = path.stat().st_size
    buf = bytearray(size)
    view = memoryview(buf)
    t0 = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        done = 0
        while done < size:
            n = f.readinto(view[done : done + 64 * 1024 * 1024])
            if not n:
                break
            done += n
    seconds = time.perf_counter() - t0
    del view, buf
    return seconds


def fs_type(path: Path) -> str:
    """The filesystem under `path` (tmpfs would make "disk" reads RAM reads: worth knowing)."""
    best, kind = "", "unknown"
    try:
        with open("/proc/mounts", encoding="utf-8") as f:
            for line in f:
                parts = line.split()
                mount = parts[1]
                if str(path.resolve()).startswith(mount) and len(mount) > len(best):
                    best, kind = mount, parts[2]
    except OSError:
        pass
    return kind


# -- the reference bandwidth, in its own process ---------------------------------------------------
def probe(device: str, nbytes: int) -> dict[str, Any]:
    """Run in a child: CUDA presence, pinned (and pageable) host→GPU GB/s, CUDA context bytes; CPU: memcpy."""
    import torch

    out: dict[str, Any] = {"torch": torch.__version__, "torch_cuda": torch.version.cuda}
    if device == "cpu":
        src = torch.ones(nbytes, dtype=torch.uint8)
        times = []
        for _ in range(4):
            t0 = time.perf_counter()
            dst = src.clone()  # what the torch backend's restore does on a CPU "device"
            times.append(time.perf_counter() - t0)
            del dst
        out.update(cuda=False, reference="host memcpy (torch clone)", ref_seconds=min(times[1:]))
        return out
    out["cuda"] = torch.cuda.is_available()
    if not out["cuda"]:
        return out
    dev = torch.device("cuda:0")
    torch.empty(1, device=dev)  # creates the context
    out["device_name"] = torch.cuda.get_device_name(dev)
    out["context_bytes"] = _nvml_process_bytes(os.getpid())
    host = torch.empty(nbytes, dtype=torch.uint8).pin_memory()
    gpu = torch.empty(nbytes, dtype=torch.uint8, device=dev)
    times = []
    for _ in range(4):
        torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        gpu.copy_(host, non_blocking=True)
        torch.cuda.synchronize(dev)
        times.append(time.perf_counter() - t0)
    out.update(reference="pinned host→GPU copy", ref_seconds=min(times[1:]))
    del host
    pageable = torch.empty(nbytes, dtype=torch.uint8)
    t0 = time.perf_counter()
    gpu.copy_(pageable)
    torch.cuda.synchronize(dev)
    out["pageable_seconds"] = time.perf_counter() - t0
    return out


def _nvml_process_bytes(pid: int) -> int | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(0)
        return sum(
            int(p.usedGpuMemory or 0) for p in pynvml.nvmlDeviceGetComputeRunningProcesses(h) if p.pid == pid
        )
    except Exception:
        return None


def run_probe(device: str, nbytes: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--probe", str(nbytes), "--device", device]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    if done.returncode != 0:
        raise SystemExit(f"bandwidth probe failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# -- one model through the engine ------------------------------------------------------------------
def snapshot(engine: Any) -> dict[str, Any]:
    """GPU bytes of the engine's processes per NVML, host memory of its workers and of /dev/shm."""
    report = engine.report()
    pids = engine.pids()
    gpu = report.gpu
    shm = os.statvfs("/dev/shm") if os.path.exists("/dev/shm") else None
    return {
        "state": report.models[0].state.value,
        "gpu_process_bytes": gpu.process_bytes if gpu is not None else None,
        "gpu_free_bytes": gpu.free_bytes if gpu is not None else None,
        "worker_rss_bytes": sum(benchlib.proc_memory(p).get("vmrss", 0) for p in pids[1:]),
        "workers": len(pids) - 1,
        "shm_used_bytes": (shm.f_blocks - shm.f_bfree) * shm.f_frsize if shm is not None else None,
    }


def settle_unloaded(engine: Any, timeout: float = 5.0) -> dict[str, Any]:
    """NVML drops an exited process a moment after it exits: poll briefly for the final figure."""
    deadline = time.monotonic() + timeout
    snap = snapshot(engine)
    while snap["gpu_process_bytes"] and time.monotonic() < deadline:
        time.sleep(0.1)
        snap = snapshot(engine)
    return snap


def synth(engine: Any) -> Any:
    with engine.lease("bench") as lease:
        return lease.synthesize(TEXT, voice="alto", speed=1.0).samples


def measure_model(path: Path, size_bytes: int, device: str, mode: str, repeats: int) -> dict[str, Any]:
    import numpy as np

    from tts_contract import ModelSpec
    from tts_runtime.engine import Engine, NoGpu, NvmlProbe

    spec = ModelSpec.model_validate(
        {
            "name": "bench",
            "backend": "torch",
            "factory": "residency_gpu:tiny_from_file",
            "options": {"path": str(path), "size_bytes": size_bytes},
            "cpuMode": mode,
            "policy": {"pinned": True},
            "loadTimeoutSeconds": 3600,
            "requestTimeoutSeconds": 600,
        }
    )
    gpu = NoGpu() if device == "cpu" else NvmlProbe()
    engine = Engine([spec], device=device, gpu=gpu, admin_timeout=3600)  # no start(): no idle monitor
    row: dict[str, Any] = {"mode": mode, "size_bytes": size_bytes}
    try:
        drop_cache(path)
        t0 = time.perf_counter()
        rep = engine.load("bench", timeout=3600)
        row["load_wall_s"] = time.perf_counter() - t0
        row["load_s"] = rep.transitions["load"]
        row["host_bytes"] = rep.host_bytes
        row["mem_gpu"] = snapshot(engine)
        ref = synth(engine)
        offloads, restores, walls, same = [], [], [], True
        for i in range(repeats):
            rep = engine.offload("bench", timeout=3600)
            offloads.append(rep.transitions["offload"])
            if i == 0:
                row["mem_cpu"] = snapshot(engine)
            t0 = time.perf_counter()
            rep = engine.restore("bench", timeout=3600)
            walls.append(time.perf_counter() - t0)
            restores.append(rep.transitions["restore"])
            same = same and bool(np.array_equal(ref, synth(engine)))
        row.update(offload_s=offloads, restore_s=restores, restore_wall_s=walls, identical=same)
        rep = engine.release("bench", timeout=3600)
        row["release_s"] = rep.transitions["release"]
        row["mem_unloaded"] = settle_unloaded(engine)
    finally:
        engine.shutdown(drain_timeout=60)
    return row


# -- the report ------------------------------------------------------------------------------------
def derive(
    row: dict[str, Any], ref: dict[str, Any], disk: dict[str, Any], device: str, fixed_s: float
) -> dict[str, Any]:
    """Medians, GB/s, the ratio to the reference bandwidth, and each target met or not."""
    restore = statistics.median(row["restore_s"])
    offload = statistics.median(row["offload_s"])
    gbps = row["host_bytes"] / restore / 1e9
    ref_gbps = row["host_bytes"] / ref["ref_seconds"] / 1e9
    cpu_bytes = row["mem_cpu"]["gpu_process_bytes"]
    context = ref.get("context_bytes")
    d = {
        "restore_median_s": restore,
        "offload_median_s": offload,
        "offload_max_s": max(row["offload_s"]),
        "restore_gbps": gbps,
        "reference_gbps": ref_gbps,
        "restore_ratio": gbps / ref_gbps,
        "load_over_cold_read": row["load_s"] / disk["cold_read_s"],
        "load_minus_fixed_s": row["load_s"] - fixed_s,
        "target_restore": gbps / ref_gbps >= TARGET_RESTORE_RATIO,
        "target_offload": max(row["offload_s"]) <= TARGET_OFFLOAD_S,
    }
    if device != "cpu":
        d["target_cpu_memory"] = cpu_bytes is not None and context is not None and cpu_bytes <= context
        d["target_unloaded_zero"] = row["mem_unloaded"]["gpu_process_bytes"] == 0
    return d


def yes(v: Any) -> str:
    return "n/a" if v is None else ("yes" if v else "**no**")


def report(results: dict[str, Any]) -> None:
    device = results["device"]
    rows = results["rows"]
    label = "GPU" if device != "cpu" else "CPU stand-in (not a GPU figure)"
    print_table(
        f"Cold load vs reading the same bytes from disk ({label}; an empty model loads in "
        f"{fmt_s(results['fixed_load_s'])} s: worker start, imports, CUDA context)",
        [
            "size",
            "cpu mode",
            "file",
            "cold read s (GB/s)",
            "warm read s",
            "cold load s",
            "load − empty s",
            "load/read",
        ],
        [
            [
                fmt_bytes(r["size_bytes"]),
                r["mode"],
                fmt_bytes(r["disk"]["file_bytes"]),
                f"{fmt_s(r['disk']['cold_read_s'])} ({r['disk']['cold_read_gbps']:.2f})",
                fmt_s(r["disk"]["warm_read_s"]),
                fmt_s(r["load_s"]),
                fmt_s(r["derived"]["load_minus_fixed_s"]),
                f"{r['derived']['load_over_cold_read']:.2f}x",
            ]
            for r in rows
        ],
    )
    print_table(
        f"Offload and restore ({label}; median of {results['repeats']})",
        [
            "size",
            "cpu mode",
            "offload ms (max)",
            "restore ms",
            "restore GB/s",
            "reference GB/s",
            "ratio",
            "identical",
        ],
        [
            [
                fmt_bytes(r["size_bytes"]),
                r["mode"],
                f"{fmt_ms(r['derived']['offload_median_s'])} ({fmt_ms(r['derived']['offload_max_s'])})",
                fmt_ms(r["derived"]["restore_median_s"]),
                f"{r['derived']['restore_gbps']:.2f}",
                f"{r['derived']['reference_gbps']:.2f}",
                f"{r['derived']['restore_ratio']:.0%}",
                yes(r["identical"]),
            ]
            for r in rows
        ],
    )
    print_table(
        f"Memory held per state ({label})",
        [
            "size",
            "cpu mode",
            "GPU: gpu",
            "GPU: cpu",
            "GPU: unloaded",
            "worker RSS gpu/cpu/unloaded",
            "/dev/shm in cpu",
        ],
        [
            [
                fmt_bytes(r["size_bytes"]),
                r["mode"],
                fmt_bytes(r["mem_gpu"]["gpu_process_bytes"]),
                fmt_bytes(r["mem_cpu"]["gpu_process_bytes"]),
                fmt_bytes(r["mem_unloaded"]["gpu_process_bytes"]),
                " / ".join(fmt_bytes(r[k]["worker_rss_bytes"]) for k in STATES),
                fmt_bytes((r["mem_cpu"]["shm_used_bytes"] or 0) - (r["mem_gpu"]["shm_used_bytes"] or 0)),
            ]
            for r in rows
        ],
    )
    ctx = results["probes"][0].get("context_bytes") if results["probes"] else None
    print_table(
        "Targets",
        [
            "size",
            "cpu mode",
            "restore ≥ 90% of reference",
            "offload ≤ 50 ms",
            f"cpu ≤ CUDA context ({fmt_bytes(ctx)})",
            "unloaded = 0",
        ],
        [
            [
                fmt_bytes(r["size_bytes"]),
                r["mode"],
                yes(r["derived"]["target_restore"]),
                yes(r["derived"]["target_offload"]),
                yes(r["derived"].get("target_cpu_memory")),
                yes(r["derived"].get("target_unloaded_zero")),
            ]
            for r in rows
        ],
    )
    lo, hi = ORIGINAL["restore_s"]
    print_table(
        "Against the original project's claims",
        ["size", "cpu mode", "restore: original 2–5 s", "offload: original 2 s", "idle GPU: original 1 GiB"],
        [
            [
                fmt_bytes(r["size_bytes"]),
                r["mode"],
                f"{fmt_s(r['derived']['restore_median_s'])} s ({lo / r['derived']['restore_median_s']:.0f}–"
                f"{hi / r['derived']['restore_median_s']:.0f}x faster)",
                f"{fmt_ms(r['derived']['offload_median_s'])} ms "
                f"({ORIGINAL['offload_s'] / max(r['derived']['offload_median_s'], 1e-6):.0f}x faster)",
                fmt_bytes(r["mem_cpu"]["gpu_process_bytes"])
                + " in cpu, "
                + fmt_bytes(r["mem_unloaded"]["gpu_process_bytes"])
                + " unloaded",
            ]
            for r in rows
        ],
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1,4,16", help="model sizes in GiB, comma-separated (default 1,4,16)")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--modes", default=",".join(MODES), help="cpu modes to measure (default both)")
    p.add_argument("--repeats", type=int, default=3, help="offload/restore cycles per model (default 3)")
    p.add_argument("--workdir", default=str(benchlib.RESULTS / "weights"), help="where the weight files go")
    p.add_argument("--keep-files", action="store_true", help="keep the weight files for the next run")
    p.add_argument("--json", help="write results here (default bench/results/residency-<device>-<time>.json)")
    p.add_argument("--probe", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.probe is not None:
        print(json.dumps(probe(args.device, args.probe)))
        return 0
    try:
        sizes = [float(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        p.error(f"--sizes {args.sizes!r}: give GiB numbers separated by commas, e.g. 1,4,16")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes or not sizes or any(s <= 0 for s in sizes) or args.repeats < 1:
        p.error(f"--modes takes {', '.join(MODES)}; --sizes positive GiB; --repeats ≥ 1")
    # Presence first, from a child process, so the message comes before any minutes of file writing.
    first = run_probe(args.device, 1024)
    if args.device == "cuda" and not first.get("cuda"):
        print(
            f"no CUDA device: torch {first['torch']} (CUDA build {first['torch_cuda']}) sees no GPU here. "
            "Run this on a GPU machine, or use `--device cpu --sizes 0.05,0.2` to exercise the same code "
            "path on CPU.",
            file=sys.stderr,
        )
        return 2
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    # The worker imports residency_gpu:tiny_from_file (spawned workers inherit sys.path).
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    results: dict[str, Any] = {
        "bench": "residency",
        "machine": benchlib.machine(),
        "device": args.device,
        "repeats": args.repeats,
        "workdir_fs": fs_type(workdir),
        "probes": [],
        "rows": [],
    }
    # What any load pays whatever the size: worker spawn, imports, CUDA context (an empty model).
    empty = workdir / "tiny-0.pt"
    write_weights(empty, 0)
    fixed = measure_model(empty, 0, args.device, "keep-worker", 1)
    results["fixed_load_s"] = fixed["load_s"]
    results["fixed_mem_cpu_gpu_bytes"] = fixed["mem_cpu"]["gpu_process_bytes"]
    print(f"[empty model] load {fixed['load_s']:.2f}s (process start, imports, CUDA context)", flush=True)
    for gib in sizes:
        size = int(gib * GIB)
        path = workdir / f"tiny-{size}.pt"
        t0 = time.perf_counter()
        file_bytes = write_weights(path, size)
        print(f"[{gib:g} GiB] weights file ready in {time.perf_counter() - t0:.1f}s", flush=True)
        warm = read_file(path)
        drop_cache(path)
        cold = read_file(path)
        disk = {
            "file_bytes": file_bytes,
            "cold_read_s": cold,
            "cold_read_gbps": file_bytes / cold / 1e9,
            "warm_read_s": warm,
            "page_cache_dropped": cold > 1.2 * warm,
        }
        ref = run_probe(args.device, size)
        ref["size_bytes"] = size
        results["probes"].append(ref)
        for mode in modes:
            row = measure_model(path, size, args.device, mode, args.repeats)
            row["disk"] = disk
            row["derived"] = derive(row, ref, disk, args.device, results["fixed_load_s"])
            results["rows"].append(row)
            print(
                f"[{gib:g} GiB {mode}] load {row['load_s']:.2f}s, restore "
                f"{row['derived']['restore_median_s'] * 1000:.1f} ms, offload "
                f"{row['derived']['offload_median_s'] * 1000:.1f} ms",
                flush=True,
            )
        if not args.keep_files:
            path.unlink()
    if not args.keep_files:
        empty.unlink()
    report(results)
    benchlib.write_json(results, args.json, f"residency-{args.device}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
