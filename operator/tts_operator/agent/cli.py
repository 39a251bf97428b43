"""`tts-operator agent`: command-line options and the process lifecycle of the residency agent."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

log = logging.getLogger("tts_operator.agent")

DEFAULT_RUNTIME_URL = "http://127.0.0.1:8000"
DEFAULT_TOKEN_FILE = "/var/run/residency/admin-token"


def _positive(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 seconds, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The agent's options; defaults come from the downward API so the pod spec needs no arguments."""
    parser.add_argument("--pod", default=os.environ.get("POD_NAME"), help="own pod name (env POD_NAME)")
    parser.add_argument(
        "--namespace", default=os.environ.get("POD_NAMESPACE"), help="own pod namespace (env POD_NAMESPACE)"
    )
    parser.add_argument("--runtime-url", default=DEFAULT_RUNTIME_URL, help="the runtime over localhost")
    parser.add_argument(
        "--admin-token-file",
        default=os.environ.get("RESIDENCY_ADMIN_TOKEN_FILE", DEFAULT_TOKEN_FILE),
        help="bearer token for the runtime's admin routes, written by the runtime at its start "
        "(env RESIDENCY_ADMIN_TOKEN_FILE)",
    )
    parser.add_argument(
        "--health-port", type=int, default=8081, help="/healthz and /readyz (0: any free port)"
    )
    parser.add_argument("--health-host", default="0.0.0.0", help="address of the probe server")
    parser.add_argument(
        "--min-publish-interval",
        type=_positive,
        default=1.0,
        help="seconds between two writes of the residency annotation (the latest state always follows)",
    )
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        default=os.environ.get("LOG_LEVEL", "INFO").upper(),
        help="log verbosity (env LOG_LEVEL)",
    )


def run(args: argparse.Namespace) -> int:
    """Run the agent until SIGTERM/SIGINT; answers the process exit status."""
    # Imported here so `tts-operator --help` does not pay for the Kubernetes client.
    from tts_operator.agent.health import HealthServer
    from tts_operator.agent.loop import Agent, Timing
    from tts_operator.agent.pod_client import PodClient, load_kube_config
    from tts_operator.agent.runtime_client import RuntimeClient

    if not logging.getLogger().handlers:
        logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpcore", "urllib3", "kubernetes"):
        # Their DEBUG logs every request of the loop; the agent logs what matters itself.
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    missing = [flag for flag, value in (("--pod", args.pod), ("--namespace", args.namespace)) if not value]
    if missing:
        print(
            f"tts-operator agent: {' and '.join(missing)} required: pass them, or set POD_NAME/POD_NAMESPACE "
            "from the downward API (fieldRef metadata.name / metadata.namespace)",
            file=sys.stderr,
        )
        return 2
    try:
        load_kube_config()
    except Exception as err:
        print(
            f"tts-operator agent: no Kubernetes credentials: {err} (set KUBECONFIG or run in a pod)",
            file=sys.stderr,
        )
        return 2

    token_file = Path(args.admin_token_file) if args.admin_token_file else None
    runtime = RuntimeClient(args.runtime_url, token_file)
    agent = Agent(
        runtime, PodClient(args.pod, args.namespace), Timing(min_publish_interval=args.min_publish_interval)
    )
    try:
        health = HealthServer(args.health_host, args.health_port, agent.snapshot, agent.ready)
    except OSError as err:
        print(
            f"tts-operator agent: cannot listen on --health-port {args.health_port}: {err}", file=sys.stderr
        )
        return 2

    def _stop(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        agent.stop.set()
        agent.wake.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
    health.start()
    log.info("probes on port %d", health.port)
    try:
        agent.run()
    finally:
        health.stop()
        runtime.close()
    return 0
