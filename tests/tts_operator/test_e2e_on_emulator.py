"""The real-cluster e2e suite (tests/e2e, marker k8s) runs unchanged, and passes, against the API emulator."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from support.kube import KubeAPI

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
# The suite itself takes ~15 s here; its own timeout fires first so its clean-up (finally) still runs.
INNER_TIMEOUT_S = 150


def _run_suite(kubeconfig: Path, report: Path, log: Path) -> int:
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "PYTHONUNBUFFERED": "1"}
    args = [sys.executable, "-m", "pytest", "-m", "k8s", "tests/e2e", "-q", "-p", "no:cacheprovider",
            f"--timeout={INNER_TIMEOUT_S}", f"--junitxml={report}"]
    with log.open("wb") as out:
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            return proc.wait(timeout=INNER_TIMEOUT_S + 60)
        except subprocess.TimeoutExpired:
            # SIGINT lets pytest unwind, so the suite's finally blocks stop the processes it started.
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
            raise AssertionError(f"the e2e suite hung:\n{log.read_text(errors='replace')[-6000:]}") from None


def test_e2e_suite_passes_against_the_emulator(tmp_path: Path) -> None:
    # Strict: custom resources exist only once their CRD does, objects only in namespaces that exist.
    api = KubeAPI(tmp_path, strict=True)
    report, log = tmp_path / "e2e.xml", tmp_path / "e2e.log"
    try:
        code = _run_suite(api.kubeconfig, report, log)
        objects = dict(api.emulator.objects.items())
    finally:
        api.close()
    output = log.read_text(errors="replace")
    assert code == 0, f"the e2e suite failed ({code}):\n{output[-8000:]}"

    suite = ET.parse(report).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")  # type: ignore[assignment]
    assert suite is not None, output[-2000:]
    counts = {k: int(suite.get(k, "0")) for k in ("tests", "failures", "errors", "skipped")}
    assert counts == {"tests": 1, "failures": 0, "errors": 0, "skipped": 0}, (counts, output[-4000:])

    # It really ran here: its namespace, CRD and stand-in pod were made in this emulator and cleaned up.
    by_kind: dict[str, list[tuple[str, bool]]] = {}
    for (resource, _, name), stored in objects.items():
        by_kind.setdefault(str(resource.plural), []).append((name, stored.deleted))
    e2e_namespaces = [(n, gone) for n, gone in by_kind["namespaces"] if n.startswith("residency-e2e-")]
    assert len(e2e_namespaces) == 1 and e2e_namespaces[0][1], e2e_namespaces
    assert by_kind["customresourcedefinitions"] == [("ttsservices.tts.residency.dev", True)]
    pods = [stored for (resource, _, _), stored in objects.items() if resource.plural == "pods"]
    assert pods and all(p.deleted for p in pods)
    versions = [v for p in pods for v in p.history if v is not None]
    notes = [v.get("metadata", {}).get("annotations") or {} for v in versions]
    published = [n for n in notes if "tts.residency.dev/residency" in n]
    assert published, "the agent never published the residency annotation to this emulator"
