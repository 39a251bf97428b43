"""`python -m tts_runtime`: the same command line as `tts-runtime`."""

import sys

from tts_runtime.cli import main

sys.exit(main())
