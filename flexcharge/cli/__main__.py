"""`python -m flexcharge.cli`: the command line, quiet when its output pipe closes early."""

import contextlib
import sys

from flexcharge.cli import main

with contextlib.suppress(BrokenPipeError):
    sys.exit(main())
