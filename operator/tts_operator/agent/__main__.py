"""`python -m tts_operator.agent`: the agent without the operator's command-line front end."""

from __future__ import annotations

import argparse
import sys

from tts_contract.flags import add_flags
from tts_operator.agent.cli import run_agent
from tts_operator.settings import AgentSettings


def main() -> int:
    parser = argparse.ArgumentParser(prog="tts-operator agent", description="Residency agent sidecar")
    add_flags(parser, AgentSettings)
    return run_agent(parser, parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
