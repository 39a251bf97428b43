"""`tts-operator`: `run` starts the Kopf operator; `agent` runs the per-pod residency agent."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _add_run(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = sub.add_parser("run", help="reconcile TTSService objects (Kopf operator)")
    run.add_argument("--standalone", action="store_true", help="no peering with other operator instances")
    scope = run.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", dest="namespaces", action="append", default=[], metavar="NS",
                       help="watch this namespace (repeatable; globs allowed, as in Kopf)")
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace")
    run.add_argument("--liveness", metavar="URL", help="serve a liveness probe, e.g. http://0.0.0.0:8080/healthz")
    run.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    run.add_argument("-d", "--debug", action="store_true", help="log at DEBUG level, Kopf internals included")


def _run(args: argparse.Namespace) -> int:
    import logging
    import os

    import kopf

    kopf.configure(verbose=args.verbose, debug=args.debug)
    if os.environ.get("RESIDENCY_DRA", "auto") == "auto":
        # GPU sharing mode dra needs watches of ResourceClaims and claim templates: opened only where they
        # would not be refused (the handlers read the decision when they register).
        from tts_operator.allocations import dra_available

        enabled, why = dra_available([] if args.all_namespaces else args.namespaces)
        os.environ["RESIDENCY_DRA"] = "on" if enabled else "off"
        logging.getLogger("tts_operator").info("DRA (gpu.sharing.mode dra): %s: %s",
                                               "on" if enabled else "off", why)
    import tts_operator.handlers  # noqa: F401  (registers the handlers)

    # Without a namespace, watch the whole cluster: Kopf's own default, said out loud.
    clusterwide = bool(args.all_namespaces or not args.namespaces)
    settings = kopf.OperatorSettings()
    # Exact namespaces need no cluster scanning: Kopf would otherwise LIST and WATCH every namespace (to
    # match globs) and every CRD, cluster-wide permissions the chart's per-namespace Roles do not grant
    # (it retried each 403 for about a minute before serving). The CRD must then exist before the start.
    settings.scanning.disabled = not clusterwide and not any(set("*?!,") & set(ns) for ns in args.namespaces)
    kopf.run(standalone=args.standalone, clusterwide=clusterwide, namespaces=args.namespaces,
             liveness_endpoint=args.liveness, settings=settings)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="tts-operator", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run(sub)
    agent = sub.add_parser("agent", help="the residency agent sidecar of an inference pod")
    if argv[:1] == ["agent"]:
        # Imported only when asked for, so `run` and the tests never depend on the agent package.
        from tts_operator.agent.cli import add_arguments
        from tts_operator.agent.cli import run as run_agent

        add_arguments(agent)
        agent.set_defaults(func=run_agent)
    args = parser.parse_args(argv)
    if args.command == "run":
        return _run(args)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
