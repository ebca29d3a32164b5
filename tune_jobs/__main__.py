"""`python -m tune_jobs` is the `instrument-sweep` command."""

from tune_jobs.cli import entry

entry()
