"""The `slurm` command: a sweep as a Slurm batch job (see tune_jobs/slurm/).

    instrument-sweep slurm seed --nodes 2 --gpus-per-node 4 --time 02:00:00 --storage ~/sweeps
    instrument-sweep slurm seed --gpus-per-node a100:4 --mem 64G --setup 'module load cuda/12.4'
    instrument-sweep slurm my_sweep.yaml --data ~/uiowa --partition gpu --account lab --dry-run > job.sh
    instrument-sweep slurm --resume seed-20261204-101500 --storage ~/sweeps --time 01:00:00
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys

from analysis import storage
from trainables.errors import InputError
from tune_jobs import ray_private
from tune_jobs.cli_sweep import add_eta_argument, add_fixes_argument, add_spec_arguments, print_spec, spec_from_args
from tune_jobs.slurm.job import JOIN_TIMEOUT_S

ALLOCATION_FLAGS = ("nodes", "cpus_per_task", "mem", "time", "partition", "account", "requeue", "join_timeout_s")


def register(commands: argparse._SubParsersAction) -> None:
    slurm = commands.add_parser("slurm", help="submit a sweep to Slurm: Ray across the job's nodes, the sweep on it",
                                description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_spec_arguments(slurm)
    add_eta_argument(slurm)
    slurm.add_argument("--resume", metavar="NAME", help="submit a job that continues this experiment (under "
                                                        "--storage); flags not given keep the last job's values")
    job = slurm.add_argument_group("the job")
    job.add_argument("--nodes", type=int, help="nodes; Ray's head on the first (default: 1)")
    job.add_argument("--gpus-per-node", metavar="[TYPE:]G",
                     help="GPUs per node, of a type where the site asks for one (a100:4); Ray gets what Slurm "
                          "grants, also through --sbatch-arg=--gres=gpu:TYPE:G (default: 0)")
    job.add_argument("--cpus-per-task", type=int, metavar="C",
                     help="CPUs per node, one task per node; Ray gets them all but one on the first node, for the "
                          "sweep's driver (default: one trial per GPU, and that one)")
    job.add_argument("--mem", metavar="SIZE", help="memory per node as sbatch takes it (64G), Ray's share of it "
                                                   "sized within (default: the partition's)")
    job.add_argument("--time", metavar="HH:MM:SS", help="time limit (default: the partition's)")
    job.add_argument("--partition", metavar="P", help="partition (default: the cluster's default)")
    job.add_argument("--account", metavar="A", help="account to charge (default: yours)")
    job.add_argument("--requeue", action=argparse.BooleanOptionalAction, default=None,
                     help="let Slurm requeue the job (node failure, preemption): it then continues the sweep "
                          "(default: on)")
    job.add_argument("--join-timeout-s", type=float, metavar="S",
                     help=f"how long the job waits for Ray's nodes to start and join (default: {JOIN_TIMEOUT_S:g})")
    job.add_argument("--setup", action="append", metavar="LINE",
                     help="a shell line the job script runs before anything else, its environment passed on to "
                          "every node, e.g. --setup 'module load cuda/12.4'; repeatable (conda: "
                          "'eval \"$(conda shell.bash hook)\" && conda activate sweeps')")
    job.add_argument("--sbatch-arg", dest="sbatch_args", action="append", metavar="ARG",
                     help="a further sbatch option, e.g. --sbatch-arg=--qos=high; repeatable")
    slurm.add_argument("--storage", default=storage.DEFAULT_STORAGE,
                       help="results root on a filesystem the nodes share; the job's script and output go into "
                            f"the experiment's {storage.JOB_DIR}/ folder "
                            f"(default: {storage.redact(storage.DEFAULT_STORAGE)})")
    slurm.add_argument("--name", help="experiment name under the storage root (default: SPEC-DATE-TIME)")
    slurm.add_argument("--dry-run", action="store_true", help="check everything, print the job script, submit nothing")
    slurm.add_argument("--no-analyze", action="store_true", help="the job skips tables, plots and report.md")
    add_fixes_argument(slurm)
    slurm.set_defaults(func=cmd_slurm)


def cmd_slurm(args: argparse.Namespace) -> int:
    from tune_jobs.slurm import submit
    from tune_jobs.slurm.job import Allocation, parse_gpus

    given = {name: getattr(args, name) for name in ALLOCATION_FLAGS}
    if args.gpus_per_node is not None:  # a count and its type go together: `2` after `a100:2` drops the type
        given["gpus_per_node"], given["gpu_type"] = parse_gpus(args.gpus_per_node)
    given["setup"] = tuple(args.setup) if args.setup else None
    given["sbatch_args"] = tuple(args.sbatch_args) if args.sbatch_args else None
    flags = (*(["--no-analyze"] if args.no_analyze else []),
             *([ray_private.WITHOUT_FIXES_FLAG] if args.without_ray_fixes else []))  # passed on to run / resume
    # A dry run's stdout is the script alone (`--dry-run > job.sh`); what the checks say goes to stderr.
    with contextlib.redirect_stdout(sys.stderr) if args.dry_run else contextlib.nullcontext():
        if args.resume:
            check_resume_flags(args)
        else:
            spec = spec_from_args(args)
            print_spec(spec)
        if not args.without_ray_fixes:  # the job runs this install's Ray: where it no longer fits, say so now
            ray_private.check_fixes(local=False)  # (the job joins the Ray it starts: no local Ray to check)
        if args.resume:
            job = submit.submit_resume(args.resume, args.storage, given, flags=flags,
                                       dry_run=args.dry_run)
        else:
            allocation = Allocation().overridden(**given)
            if given["cpus_per_task"] is None:  # one trial per GPU (or one on CPUs) at a time, and the driver's
                gpus = allocation.gpus_per_node or allocation.gres_gpus
                allocation = allocation.overridden(
                    cpus_per_task=max(1, gpus) * math.ceil(spec.resources.cpus_per_trial) + 1)
            job = submit.submit_new(spec, allocation, args.storage, args.name, flags=flags,
                                    dry_run=args.dry_run)
    if args.dry_run:
        print(job.script, end="")
        return 0
    print()
    print("\n".join(submit.submitted_lines(job)))
    return 0


def check_resume_flags(args: argparse.Namespace) -> None:
    """InputError where `--resume` comes with what only a new sweep takes (the spec and its overrides)."""
    spec_flags = {"SPEC": args.spec, "--preset": args.preset, "--name": args.name, "--data": args.data,
                  "--set": args.overrides, "--log": args.log, "--race": args.race, "--eta": args.eta is not None}
    given = [flag for flag, value in spec_flags.items() if value]
    if given:
        raise InputError("--resume", f"continues an experiment with its own spec, data and name; give no "
                                     f"{', '.join(given)} with it (only the job's flags, --storage, --no-analyze, "
                                     f"{ray_private.WITHOUT_FIXES_FLAG} and --dry-run)")
