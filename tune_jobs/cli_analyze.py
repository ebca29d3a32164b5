"""The `analyze` command: an experiment's tables, figures and report.md.

    instrument-sweep analyze sweeps/seed-20261125-200102                 # -> sweeps/seed-.../analysis/
    instrument-sweep analyze sweeps/seed-20261125-200102 --out results/  # anywhere local
    instrument-sweep analyze s3://bucket/sweeps/seed-1                   # -> ./analysis-seed-1/

Runs on a finished, running (partial), resumed or cloud-stored experiment; it
only reads the experiment. `run` and `resume` end with the same analysis unless
given --no-analyze.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from trainables.errors import InputError
from analysis import storage
from analysis.storage import SPEC_FILE
from tune_jobs.cli_sweep import FIGURE_PROCESSES, add_eta_argument
from tune_jobs.spec import read_spec


def register(commands: argparse._SubParsersAction) -> None:
    """Add `analyze` to the `instrument-sweep` parser."""
    analyze = commands.add_parser("analyze", help="write an experiment's tables, plots and report.md",
                                  description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    analyze.add_argument("path", metavar="PATH", help="experiment directory (holds sweep.yaml), or s3://... / gs://...")
    analyze.add_argument("--out", metavar="DIR", help="output directory (default: PATH/analysis; "
                                                      "for a cloud PATH ./analysis-NAME)")
    add_eta_argument(analyze)
    analyze.set_defaults(func=cmd_analyze)


def cmd_analyze(args: argparse.Namespace) -> int:
    from analysis import figure_server
    from analysis.report import write_report

    experiment = storage.take_credentials(args.path, "PATH") if storage.is_uri(args.path) else \
        str(Path(args.path).expanduser().absolute())
    if storage.is_uri(args.path):
        storage.check_reachable(experiment, "PATH")  # a bucket or endpoint that is not there: one line, exit 2
    elif not Path(experiment).exists():
        under = Path(storage.DEFAULT_STORAGE, args.path)
        hint = f"; did you mean {under}?" if under.is_dir() else ""
        raise InputError("PATH", f"{args.path} does not exist{hint}")
    spec_file = storage.join(experiment, SPEC_FILE)
    info = read_spec(experiment).report_info() if storage.exists(spec_file) else None
    if args.eta is not None and not 0 <= args.eta <= 1:
        raise InputError("--eta", f"must be in [0, 1], got {args.eta:g}")
    if FIGURE_PROCESSES > 1:
        figure_server.start()  # it loads the plotting code while the experiment is read
    report = write_report(experiment, args.out, info, eta=args.eta, figure_processes=FIGURE_PROCESSES)
    folder = Path(report).parent
    print(f"analysis: {folder}")
    for file in sorted(folder.iterdir()):
        if file.is_file():
            print(f"  {file.name}")
    print(f"report: {report}")
    return 0
