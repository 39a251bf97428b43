"""`tts-operator agent`: command-line options and the process lifecycle of the residency agent."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from tts_contract.extras import missing_extra
from tts_contract.flags import settings_from_args
from tts_operator.settings import AgentSettings

log = logging.getLogger("tts_operator.agent")


def run_agent(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """The agent with the settings read once from the environment and the flags; or the message naming
    the missing extra when installed without [operator]."""
    try:
        return run(settings_from_args(parser, AgentSettings, args))
    except ModuleNotFoundError as err:
        raise SystemExit(missing_extra(err, "tts-operator agent", "operator")) from None


def run(args: AgentSettings) -> int:
    """Run the agent until SIGTERM/SIGINT; answers the process exit status."""
    # Imported here so `tts-operator --help` does not pay for the Kubernetes client.
    from tts_operator.agent.health import HealthServer
    from tts_operator.agent.loop import Agent, Timing
    from tts_operator.agent.pod_client import PodClient
    from tts_operator.agent.runtime_client import RuntimeClient
    from tts_operator.kube import load_config

    if not logging.getLogger().handlers:
        logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpcore", "urllib3", "kubernetes"):
        # Their DEBUG logs every request of the loop; the agent logs what matters itself.
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    missing = [flag for flag, value in (("--pod", args.pod), ("--namespace", args.namespace)) if not value]
    if missing or args.pod is None or args.namespace is None:
        print(
            f"tts-operator agent: {' and '.join(missing)} required: pass them, or set POD_NAME/POD_NAMESPACE "
            "from the downward API (fieldRef metadata.name / metadata.namespace)",
            file=sys.stderr,
        )
        return 2
    try:
        load_config()
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
