"""The `instrument-sweep` command line.

    instrument-sweep run                      # the default sweep on the built-in dataset
    instrument-sweep data info DIR            # what a dataset holds
    instrument-sweep --help                   # every command

Each command lives in the module named for what it does and registers itself
here; this file only wires arguments to functions and turns bad input into
`error: WHERE: PROBLEM` with exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from trainables.errors import InputError
from tune_jobs.quick_exit import exit_now

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


class Parser(argparse.ArgumentParser):
    """An argparse parser that takes no abbreviated flags (`--stor` is not `--storage`), so neither
    the docs nor a user's scripts depend on them; the commands' parsers are of this class too."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **{"allow_abbrev": False, **kwargs})


def build_parser() -> argparse.ArgumentParser:
    from tune_jobs import cli_analyze, cli_data, cli_jobs, cli_slurm, cli_sweep, doctor

    parser = Parser(
        prog="instrument-sweep",
        description="Sweep learning rate and batch size of an instrument classifier on Ray Tune; "
        "report time and energy to a target accuracy per trial.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    cli_sweep.register(commands)
    cli_slurm.register(commands)
    cli_jobs.register(commands)
    cli_analyze.register(commands)
    cli_data.register(commands)
    doctor.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_BAD_INPUT
    try:
        return int(args.func(args) or 0)
    except InputError as exc:
        from analysis.storage import redact

        print(redact(f"error: {exc.where}: {exc.problem}"), file=sys.stderr)  # a URI's secrets, wherever quoted
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def entry() -> NoReturn:
    """The `instrument-sweep` script: `main()`, then a quick exit (in a Slurm job's sweep, ending the
    job's Ray steps: tune_jobs.slurm.steps)."""
    from tune_jobs.slurm.steps import end_steps_at_exit

    end_steps_at_exit()
    exit_now(main())


if __name__ == "__main__":
    entry()
