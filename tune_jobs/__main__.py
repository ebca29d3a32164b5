"""`python -m tune_jobs` is the `instrument-sweep` command."""

import sys

from tune_jobs.cli import main

sys.exit(main())
