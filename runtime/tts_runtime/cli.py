"""`tts-runtime`: the command line (serve over HTTP, or MCP over stdio); flags override `TTS_RUNTIME_*`.

Imports are light at the top on purpose: worker processes start with *spawn*, which imports the main
module (this one, through the `tts-runtime` script) in every worker; uvicorn and the settings load only
in the commands that use them.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from types import FrameType
from typing import TYPE_CHECKING, Any

from tts_runtime import __version__ as VERSION

if TYPE_CHECKING:
    import uvicorn

    from tts_runtime.server.state import Drain
    from tts_runtime.settings import Settings

log = logging.getLogger("tts_runtime")


def build_parser() -> argparse.ArgumentParser:
    """The command line; its flags are made from the settings' fields (tts_contract.flags)."""
    from tts_contract.flags import add_flags
    from tts_runtime.settings import MODELS, Settings

    parser = argparse.ArgumentParser(
        prog="tts-runtime",
        description="Residency's TTS runtime: OpenAI-compatible speech that never lets an idle model squat "
        "on GPU memory. Each flag's help names its environment variable (a flag given wins).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {VERSION}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    serve = sub.add_parser(
        "serve", help="serve speech, residency, admin, metrics, status page and MCP over HTTP"
    )
    add_flags(serve, Settings)
    mcp = sub.add_parser("mcp", help="serve the MCP tools over stdio (for a local MCP client)")
    add_flags(mcp, Settings, groups=[MODELS])
    return parser


def load_settings(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Settings:
    """Settings from the environment with the flags given on the command line on top; exit 2 if wrong."""
    from tts_contract.flags import settings_from_args
    from tts_runtime.settings import Settings

    return settings_from_args(parser, Settings, args)


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def serve(parser: argparse.ArgumentParser, settings: Settings) -> int:
    from tts_runtime.engine import Engine, blank
    from tts_runtime.settings import ConfigError

    _configure_logging(settings.log_level)
    try:
        engine = Engine(
            settings.model_specs(),
            device=settings.device,
            gpu_memory_budget_bytes=settings.gpu_memory_budget_bytes,
        )
    except ConfigError as err:
        parser.error(str(err))
    # The workers start now, before the web server's imports, so both start-ups overlap (cold start).
    engine.prespawn()
    blank.end_unused()  # the first worker took it, if any model runs in a worker
    try:
        import uvicorn

        from tts_runtime.server.app import create_app

        app = create_app(settings, engine)
    except BaseException as err:
        engine.shutdown(0)  # the prespawned workers must not outlive a start-up that failed
        if isinstance(err, ConfigError):
            parser.error(str(err))
        raise
    runtime = app.state.runtime
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        # The one drain budget (docs/runtime.md): when it ends uvicorn cancels what still runs (answered
        # 503), and the engine gets what is left of the same budget, not a second one.
        timeout_graceful_shutdown=max(1, math.ceil(settings.drain_timeout_seconds)),
        server_header=False,
    )
    server = draining_server(config, runtime.drain)
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    log.info(
        "tts-runtime %s serving http://%s:%d models=%s device=%s gpu-management=%s admin-token=%s",
        VERSION,
        host,
        settings.port,
        ",".join(runtime.engine.names()),
        settings.device,
        "off" if settings.disable_gpu_management else "on",
        "on" if runtime.admin_token else "off",
    )
    server.run()
    return 0 if server.started else 1


def draining_server(config: uvicorn.Config, drain: Drain) -> Any:
    """uvicorn's graceful shutdown, plus: mark the app draining first, and exit 0 afterwards."""
    import uvicorn

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            drain.begin()
            # Not recorded in _captured_signals: uvicorn would re-raise it after shutdown and end us with
            # -SIGTERM instead of 0. A second signal forces the exit, as uvicorn does for Ctrl-C.
            if self.should_exit:
                self.force_exit = True
            self.should_exit = True

    return DrainingServer(config)


def serve_mcp_stdio(parser: argparse.ArgumentParser, settings: Settings) -> int:
    from tts_runtime.engine import Engine
    from tts_runtime.server.mcp_tools import build_mcp
    from tts_runtime.settings import ConfigError

    # stdout is the MCP channel: logs go to stderr only.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    try:
        engine = Engine(
            settings.model_specs(),
            device=settings.device,
            gpu_memory_budget_bytes=settings.gpu_memory_budget_bytes,
        )
    except ConfigError as err:
        parser.error(str(err))
    engine.start()
    try:
        build_mcp(engine, None, trust_local=True).run("stdio")
    finally:
        engine.shutdown(settings.drain_timeout_seconds)
    return 0


def _check_extras() -> None:
    """A `pip install .` without [runtime] gets one clear message, not an ImportError deep in a command."""
    from tts_contract.extras import missing_extra

    try:
        import uvicorn  # noqa: F401

        import tts_runtime.settings  # noqa: F401
    except ModuleNotFoundError as err:
        raise SystemExit(missing_extra(err, "tts-runtime", "runtime")) from None


def main(argv: list[str] | None = None) -> int:
    from tts_runtime.engine.tuning import tune_allocator

    tune_allocator()  # before any buffer is allocated; workers do the same (`become_worker`)
    if (sys.argv[1:] if argv is None else argv)[:1] == ["serve"]:
        from tts_runtime.engine import blank

        # A worker process starts now, before the settings and the web server are imported (they take
        # about half a second): its imports overlap them; the first model's worker adopts it.
        blank.start()
    _check_extras()
    parser = build_parser()
    args = parser.parse_args(argv)
    settings = load_settings(parser, args)
    if args.command == "mcp":
        return serve_mcp_stdio(parser, settings)
    return serve(parser, settings)


if __name__ == "__main__":
    sys.exit(main())
