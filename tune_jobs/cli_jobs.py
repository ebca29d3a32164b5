"""Ray Jobs commands: `submit`, `status`, `logs` (see tune_jobs/jobs.py); `status` and `logs` also follow
a Slurm job that `instrument-sweep slurm` submitted (a plain number as JOB_ID, see tune_jobs/slurm/follow.py)."""

from __future__ import annotations

import argparse
import shutil
from dataclasses import replace

from analysis import storage
from tune_jobs import jobs
from tune_jobs.cli_sweep import add_fixes_argument
from tune_jobs.security import dashboard_login_hint
from tune_jobs.spec import load_spec, preset_names


def register(commands: argparse._SubParsersAction) -> None:
    submit = commands.add_parser("submit", help="submit a sweep to a Ray cluster as a Ray Job")
    submit.add_argument("spec", nargs="?", default="seed", help=f"sweep YAML or preset ({', '.join(preset_names())})")
    submit.add_argument("--address", help=f"Ray Jobs API, http://HOST:8265 (default: {jobs.DEFAULT_JOBS_ADDRESS})")
    submit.add_argument("--data", help="dataset directory on the cluster, or 'synthetic'")
    submit.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a spec field, as `run --set`; repeatable")
    submit.add_argument("--log", action="append", default=[], metavar="TRACKER",
                        help="mlflow[=TRACKING_URI] or wandb[=PROJECT], installed on the cluster (see `run --help`)")
    submit.add_argument("--storage", help="results root as the cluster sees it: s3://..., gs://... or NFS "
                                           "(default: the head's $INSTRUMENT_SWEEP_STORAGE, else ~/instrument-sweep/sweeps)")
    submit.add_argument("--name", help="experiment name (default: SPEC-DATE-TIME)")
    add_fixes_argument(submit)
    submit.set_defaults(func=cmd_submit)

    for verb, text in (("status", "a submitted sweep's job status"), ("logs", "a submitted sweep's output")):
        sub = commands.add_parser(verb, help=f"{text} (a Ray job, or a Slurm job: a number)")
        sub.add_argument("job_id", metavar="JOB_ID", help="raysubmit_... (Ray Jobs), or a Slurm job id")
        sub.add_argument("--address", help=f"Ray Jobs API (default: {jobs.DEFAULT_JOBS_ADDRESS})")
        sub.add_argument("--storage", default=storage.DEFAULT_STORAGE,
                         help="a Slurm job's storage root: where its output is found once Slurm has forgotten the "
                              f"job (default: {storage.redact(storage.DEFAULT_STORAGE)})")
        if verb == "logs":
            sub.add_argument("--follow", "-f", action="store_true", help="stream until the job ends")
        sub.set_defaults(func=cmd_status if verb == "status" else cmd_logs)


def cmd_submit(args: argparse.Namespace) -> int:
    from tune_jobs.trackers import parse_target

    for target in args.log:
        parse_target(target, where="--log")
    spec = load_spec(args.spec, args.overrides, values={"log": args.log} if args.log else None)
    if args.data:
        spec = replace(spec, data=args.data)
    job_id = jobs.submit(spec, args.address, args.storage, args.name, without_ray_fixes=args.without_ray_fixes)
    address = jobs.jobs_address(args.address)
    print(f"submitted: {job_id}")
    print(f"dashboard: {address}/#/jobs/{job_id}")
    if hint := dashboard_login_hint():
        print(f"token:     {hint}")
    print(f"follow:    instrument-sweep logs {job_id} --address {address} --follow")
    print(f"status:    instrument-sweep status {job_id} --address {address}")
    return 0


def slurm_job(args: argparse.Namespace):
    """The Slurm job JOB_ID names (a number, no --address, Slurm's commands here), else None: a Ray job."""
    from tune_jobs.slurm import follow

    if follow.is_job_id(args.job_id) and not args.address and shutil.which("scontrol"):
        return follow.find(args.job_id, args.storage)
    return None


def cmd_status(args: argparse.Namespace) -> int:
    from tune_jobs.slurm import follow

    job = slurm_job(args)
    print(follow.status_text(job) if job else jobs.status(args.job_id, args.address))
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from tune_jobs.slurm import follow

    job = slurm_job(args)
    if job:
        follow.logs(job, follow=args.follow)
    else:
        jobs.logs(args.job_id, args.address, follow=args.follow)
    return 0
