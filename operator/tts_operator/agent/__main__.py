"""`python -m tts_operator.agent`: the agent without the operator's command-line front end."""

from __future__ import annotations

import argparse
import sys

from tts_operator.agent.cli import add_arguments, run


def main() -> int:
    parser = argparse.ArgumentParser(prog="tts-operator agent", description="Residency agent sidecar")
    add_arguments(parser)
    return run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
