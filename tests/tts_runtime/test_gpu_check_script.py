"""bench/gpu_check.sh runs end to end without a GPU (its CPU fallback), so CI proves the script works."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.mark.timeout(900)
def test_gpu_check_runs_its_cpu_fallback_end_to_end(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: run bench/gpu_check.sh itself (minutes)")
    out = tmp_path / "check"
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", str(REPO / "bench" / "gpu_check.sh"), str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=880,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((out / "check.json").read_text())
    assert results["device"] == "cpu" and "skipped" in results["pytest"]
    rows = {(r["model"], r["mode"]) for r in results["rows"]}
    assert rows == {("one tensor", "keep-worker"), ("512 tensors", "keep-worker")}
    for r in results["rows"]:
        assert r["identical"] and r["restore_median_s"] > 0 and r["weights_bytes"] >= 4 << 20
        assert r["pinned_bytes"] == 0  # no CUDA: nothing is pinned, and the summary says so
    assert results["hibari"]["device"] == "cpu" and results["hibari"]["identical"]
    summary = (out / "SUMMARY.md").read_text()
    assert "| one tensor | keep-worker |" in summary and "| 512 tensors | keep-worker |" in summary
    assert "hibari: runs on `cpu`" in summary
