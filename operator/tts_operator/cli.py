"""`tts-operator`: `run` starts the Kopf operator; `agent` runs the per-pod residency agent."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from tts_contract.extras import missing_extra
from tts_contract.flags import add_flags, settings_from_args


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    try:
        import kopf

        from tts_operator import settings as settings_module
    except ModuleNotFoundError as err:  # `pip install .` without [operator]
        raise SystemExit(missing_extra(err, "tts-operator run", "operator")) from None
    # Read once, here: the handlers module takes them on import (its timer's interval among them).
    settings = settings_from_args(parser, settings_module.OperatorSettings, args)
    kopf.configure(verbose=settings.verbose, debug=settings.debug)
    if settings.dra == "auto":
        # GPU sharing mode dra needs watches of ResourceClaims and claim templates: opened only where they
        # would not be refused (the handlers read the decision when they register).
        from tts_operator.allocations import dra_available

        enabled, why = dra_available([] if settings.all_namespaces else settings.namespace)
        settings = settings.model_copy(update={"dra": "on" if enabled else "off"})
        logging.getLogger("tts_operator").info("DRA (gpu.sharing.mode dra): %s: %s", settings.dra, why)
    settings_module.use(settings)
    import tts_operator.handlers  # noqa: F401  (registers the handlers)

    # Without a namespace, watch the whole cluster: Kopf's own default, said out loud.
    clusterwide = bool(settings.all_namespaces or not settings.namespace)
    kopf_settings = kopf.OperatorSettings()
    # Exact namespaces need no cluster scanning: Kopf would otherwise LIST and WATCH every namespace (to
    # match globs) and every CRD, cluster-wide permissions the chart's per-namespace Roles do not grant
    # (it retried each 403 for about a minute before serving). The CRD must then exist before the start.
    kopf_settings.scanning.disabled = not clusterwide and not any(
        set("*?!,") & set(ns) for ns in settings.namespace
    )
    kopf.run(
        standalone=settings.standalone,
        clusterwide=clusterwide,
        namespaces=settings.namespace,
        liveness_endpoint=settings.liveness,
        settings=kopf_settings,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="tts-operator", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        help="reconcile TTSService objects (Kopf operator)",
        description="Each flag's help names its environment variable (a flag given wins).",
    )
    agent = sub.add_parser("agent", help="the residency agent sidecar of an inference pod")
    try:
        from tts_operator.settings import AgentSettings, OperatorSettings
    except ModuleNotFoundError as err:
        raise SystemExit(missing_extra(err, "tts-operator", "operator")) from None
    add_flags(run, OperatorSettings)
    add_flags(agent, AgentSettings)
    args = parser.parse_args(argv)
    if args.command == "run":
        return _run(run, args)
    # Imported only when asked for, so `run` and the tests never depend on the agent package.
    from tts_operator.agent.cli import run_agent

    return run_agent(agent, args)


if __name__ == "__main__":
    sys.exit(main())
