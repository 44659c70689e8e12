"""`python -m flexcharge`: the command line."""

from flexcharge.cli import main

raise SystemExit(main())
