"""Sweep commands: `run` and `resume`.

    instrument-sweep run                                  # seed preset, built-in data, local Ray
    instrument-sweep run --preset smoke                   # seconds
    instrument-sweep run my_sweep.yaml --data ~/uiowa --set repeats=3 --storage s3://bucket/sweeps
    instrument-sweep run --dry-run                        # list the trials, start nothing
    instrument-sweep run --race time                      # stop trials that can no longer be fastest
    instrument-sweep resume seed-20261125-200102          # finish an interrupted sweep

Everything the user gives is validated before Ray starts: a bad spec, dataset,
storage path or cluster address exits 2 with the key or file named, and
nothing is written. One command works on an experiment at a time
(tune_jobs.experiment_lock): a second `run --name` or `resume` of it exits 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import shlex
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

from trainables.errors import InputError
from trainables.training.stop import ENDED_BY_RULE, RACES, Status
from analysis import storage
from tune_jobs import experiment_lock, ray_private
from tune_jobs.cluster import connect, disconnect, disconnecting, stop_leftover_local_ray
from tune_jobs.security import dashboard_login_hint
from tune_jobs.spec import SPEC_FILE, DEFAULT_PRESET, SweepSpec, load_spec, preset_names, read_spec, spec_from_dict

EXIT_TRIALS_FAILED = 1
EXIT_INTERRUPTED = 130
FIGURE_PROCESSES = min(4, os.cpu_count() or 1)  # the commands draw a report's figures in this many processes
PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # a name that a URI or a Slurm job holds as it is
RESUME_ENV = "INSTRUMENT_SWEEP_RESUME"  # how to continue a sweep where `resume` is not the way (a Slurm job sets it)


def register(commands: argparse._SubParsersAction) -> None:
    """Add `run` and `resume` to the `instrument-sweep` parser."""
    run = commands.add_parser("run", help="run a sweep (default: the `seed` preset on the built-in dataset)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_spec_arguments(run)
    add_place_arguments(run)
    add_fixes_argument(run)
    run.add_argument("--name", help="experiment name under the storage root (default: SPEC-DATE-TIME)")
    add_eta_argument(run)
    run.add_argument("--dry-run", action="store_true", help="print the trials and exit without starting Ray")
    run.add_argument("--no-analyze", action="store_true", help="skip writing tables, plots and report.md")
    run.set_defaults(func=cmd_run)

    resume = commands.add_parser("resume", help="continue an interrupted sweep; finished trials are kept")
    resume.add_argument("experiment", help="experiment name under --storage, or its path inside --storage")
    add_place_arguments(resume)
    add_fixes_argument(resume)
    resume.add_argument("--no-analyze", action="store_true", help="skip writing tables, plots and report.md")
    resume.set_defaults(func=cmd_resume)


def add_spec_arguments(parser: argparse.ArgumentParser) -> None:
    """The sweep to run: a spec or preset, its data and overrides (read by `spec_from_args`)."""
    parser.add_argument("spec", nargs="?", help="sweep YAML file or preset name (default: seed)")
    parser.add_argument("--preset", help=f"preset name: {', '.join(preset_names())}")
    parser.add_argument("--spec-json", help=argparse.SUPPRESS)  # how `submit` hands a validated spec over
    parser.add_argument("--data", help="dataset directory, or 'synthetic' for the built-in dataset")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a spec field, e.g. --set stop.threshold=0.95 --set repeats=3")
    parser.add_argument("--log", action="append", default=[], metavar="TRACKER",
                        help="track each trial as a run: mlflow[=TRACKING_URI] (default ./mlruns) or "
                             "wandb[=PROJECT]; repeatable (extras: pip install -e '.[mlflow]' / '.[wandb]')")
    parser.add_argument("--race", choices=tuple(RACES),
                        help="stop a trial once it can no longer be the fastest (time) or the cheapest (energy) "
                             "to the target; its figures are then lower bounds (spec key `race`)")


def add_fixes_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(ray_private.WITHOUT_FIXES_FLAG, action="store_true",
                        help="run where this Ray's internals no longer fit instrument-sweep's fixes of Ray (which "
                             "keep a sweep resumable and its logs whole): without them, resume may lose work")


def add_eta_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--eta", type=float, metavar="E",
                        help="also rank by Zeus's cost E x energy + (1 - E) x max GPU power x time, E in [0, 1] "
                             "(the spec's energy.eta)")


def add_place_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--storage", default=storage.DEFAULT_STORAGE,
                        help="results root: a directory, or s3://... / gs://... (shared by all nodes) "
                             f"(default: {storage.redact(storage.DEFAULT_STORAGE)})")
    parser.add_argument("--address", help="Ray cluster to join: HOST:6379, ray://HOST:10001 or auto "
                                          "(default: start a local Ray)")
    parser.add_argument("--verbose", action="store_true", help="show the trials' own logs")
    parser.add_argument("--dashboard", action="store_true",
                        help="start the local Ray with its dashboard, on 127.0.0.1 (about 1 s more to start; "
                             "a cluster joined with --address keeps its own)")


def spec_from_args(args: argparse.Namespace) -> SweepSpec:
    if args.spec_json:
        return spec_from_dict(json.loads(args.spec_json))
    if args.spec and args.preset:
        raise InputError("--preset", "give either a spec file/preset or --preset, not both")
    overrides = [*args.overrides, *([f"energy.eta={args.eta!r}"] if args.eta is not None else []),
                 *([f"race={args.race}"] if args.race else [])]
    spec = load_spec(args.spec or args.preset or DEFAULT_PRESET, overrides)
    if args.log:
        from tune_jobs.trackers import parse_target

        for target in args.log:
            parse_target(target, where="--log")
        spec = replace(spec, log=tuple(args.log))
    return replace(spec, data=args.data) if args.data else spec


def cmd_run(args: argparse.Namespace) -> int:
    spec = spec_from_args(args)
    print_spec(spec)
    if args.dry_run:
        return 0
    return run_sweep(spec, args.storage, args.name, args.address, args.verbose, analyze=not args.no_analyze,
                     dashboard=args.dashboard, figure_processes=FIGURE_PROCESSES,
                     without_ray_fixes=args.without_ray_fixes).exit_code


@dataclass(frozen=True)
class SweepOutcome:
    """Where a sweep's experiment is, its report (None when not analyzed) and the command's exit code."""

    experiment: str
    report_path: str | None
    exit_code: int


def check_new_sweep(spec: SweepSpec, storage_arg: str, name: str | None, address: str | None = None):
    """What `run` checks before it connects to Ray (InputError, nothing written): the trackers, the data
    (loaded), the storage (created, with room) and the name (new, or holding only what `slurm` prepared
    for its job; `address` goes into the hint that continues one). Returns (spec with the data path
    absolute, dataset, storage root, name, experiment)."""
    from tune_jobs.trackers import check_installed

    check_installed(spec.log)
    dataset = load_data(spec)
    if spec.data != "synthetic":
        spec = replace(spec, data=str(Path(spec.data).expanduser().absolute()))
    from tune_jobs.storage_space import check_free_space

    name = name or f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if "/" in name or name in ("", ".", ".."):
        raise InputError("--name", f"must be a plain name without '/', got {name!r}")
    if storage.is_uri(storage_arg) and not PLAIN_NAME.fullmatch(name):  # a URI's path holds it as it is
        raise InputError("--name", f"{name!r}: an experiment stored at a URI is named with letters, digits, '.', "
                                   "'_' and '-', starting with a letter or digit (the default takes the spec's name)")
    root = storage.resolve_storage(storage_arg)
    check_ray_client(root, address)
    check_free_space(root)
    experiment_lock.check_lockable(root)
    experiment = storage.join(root, name)
    if storage.started(experiment):
        raise InputError("--name", f"{experiment} already exists; continue it with "
                                   f"`{resume_command(root, name, address)}`{storage.credentials_hint(root)} "
                                   "or choose another --name")
    return spec, dataset, root, name, experiment


def check_ray_client(root: str, address: str | None) -> None:
    """InputError where credentials given in the storage URI would have to pass Ray Client (ray://):
    its transfer to the cluster leaves them out (`ray_private.shipped_to_workers`)."""
    if address and address.startswith("ray://") and storage.given_credentials(root):
        raise InputError("--storage", f"credentials in the URI do not pass Ray Client ({address}); join the cluster "
                                      f"by HOST:6379, or {storage.CREDENTIALS_ADVICE} on the cluster")


def run_sweep(spec: SweepSpec, storage_arg: str, name: str | None = None, address: str | None = None,
              verbose: bool = False, analyze: bool = True, dashboard: bool = False,
              figure_processes: int = 1, without_ray_fixes: bool = False) -> SweepOutcome:
    """What `run` does after printing the spec: check data, storage and name (`check_new_sweep`:
    InputError, nothing written), connect to Ray and check its internals (`connect_and_describe`)
    and that every node can use the storage (`check_storage_on_nodes`), run every trial, summarize
    and analyze (the report's figures drawn in `figure_processes` processes). The notebook API calls
    it too."""
    spec, dataset, root, name, experiment = check_new_sweep(spec, storage_arg, name, address)
    cluster = connect_and_describe(address, verbose, dashboard, figure_server=analyze and figure_processes > 1,
                                   without_ray_fixes=without_ray_fixes)
    check_race(spec, cluster)
    check_storage_on_nodes(root, spec, cluster)
    with experiment_lock.hold(experiment, "run", create=True) as lock:  # exit 2 if another got here first
        lock.record(local_ray=cluster.ray_tag)
        from tune_jobs.launch import start_sweep

        print(f"results: {experiment}", flush=True)
        try:
            grid = start_sweep(spec, dataset, root, name, cluster, fixes=not without_ray_fixes)
        except BaseException as exc:
            disconnect(cluster)
            raise_if_no_room(exc, root, name, address)
            raise
        with disconnecting(cluster):  # Ray stops while the summary and the report are written
            return finish(spec, root, experiment, grid, analyze=analyze, figure_processes=figure_processes,
                          address=address)


def check_resumable(storage_arg: str, name_or_path: str, address: str | None = None):
    """What `resume` checks before it connects to Ray (at `address`) (InputError): the experiment lies
    under the storage root, its spec, and its data, the same as it was. Returns (root, experiment, spec,
    dataset)."""
    from tune_jobs.launch import check_same_dataset

    root = storage.resolve_storage(storage_arg, create=False)
    check_ray_client(root, address)
    experiment = experiment_under(root, name_or_path)
    experiment_lock.check_lockable(experiment)
    spec = read_spec(experiment)
    print_spec(spec, trials=False)
    dataset = load_data(spec)
    check_same_dataset(experiment, dataset)
    return root, experiment, spec, dataset


def cmd_resume(args: argparse.Namespace) -> int:
    from tune_jobs.launch import resume_sweep, unsaved_start

    root, experiment, spec, dataset = check_resumable(args.storage, args.experiment, args.address)
    unsaved_start(experiment)  # InputError before Ray starts where it can neither continue nor start over
    with experiment_lock.hold(experiment, "resume") as lock:  # exit 2 while another command works on it
        if lock.previous:  # the last command here was killed: its local Ray's agents may hold their ports
            ended = stop_leftover_local_ray(lock.previous.get("local_ray", ""), lock.previous.get("host", ""))
            if ended:
                print(f"ended {ended} leftover process(es) of the local Ray of the killed "
                      f"`instrument-sweep {lock.previous.get('command', '?')}` (pid {lock.previous.get('pid', '?')})",
                      flush=True)
        cluster = connect_and_describe(args.address, args.verbose, args.dashboard,
                                       figure_server=not args.no_analyze and FIGURE_PROCESSES > 1,
                                       without_ray_fixes=args.without_ray_fixes)
        lock.record(local_ray=cluster.ray_tag)
        check_storage_on_nodes(root, spec, cluster)
        print(f"resuming: {experiment}", flush=True)
        try:
            grid = resume_sweep(experiment, spec, dataset, cluster, fixes=not args.without_ray_fixes)
        except BaseException as exc:
            disconnect(cluster)
            raise_if_no_room(exc, storage.parent(experiment), storage.basename(experiment), args.address)
            raise
        with disconnecting(cluster):
            return finish(spec, root, experiment, grid, analyze=not args.no_analyze,
                          figure_processes=FIGURE_PROCESSES, address=args.address).exit_code


def raise_if_no_room(exc: BaseException, root: str, name: str, address: str | None) -> None:
    """Where a write refused for want of room (a full disk, a used-up quota) ended the sweep: InputError
    saying so, and how to continue."""
    from tune_jobs.storage_space import failed_for_space, no_room

    refused = no_room(exc)
    if refused is not None:
        raise failed_for_space(refused, resume_command(root, name, address)) from None


def check_race(spec: SweepSpec, cluster) -> None:
    """`race: energy` needs energy measured while trials run: GPU joules, so trials that own a GPU
    (a node's CPU joules are attributed to a trial only after the sweep, see analysis.frames)."""
    if spec.race != "energy" or spec.ray_resources(cluster.gpus)["gpu"] > 0:
        return
    disconnect(cluster)
    raise InputError("race", "energy needs GPU energy, and no trial would measure any: they get no GPU; "
                             "use race: time, or run on GPUs")


def check_storage_on_nodes(root: str, spec: SweepSpec, cluster) -> None:
    """Every node can write, read and delete under the storage root with its own credentials and
    mounts (`storage_probe.check_nodes`), before any trial starts; else InputError, Ray left."""
    from tune_jobs.storage_probe import check_nodes

    try:
        check_nodes(root, cluster, spec.ray_resources(cluster.gpus, cluster.max_node_cpus))
    except BaseException:
        disconnect(cluster)
        raise


def resume_command(root: str, name: str, address: str | None = None) -> str:
    """How to continue experiment `name` under `root`: what RESUME_ENV says where it is set (a Slurm job
    says `instrument-sweep slurm --resume ...`: a new job, not a sweep on the login node), else the
    `resume` command line as typed in a shell: --storage where `root` is not the default, --address
    where the sweep joined a cluster by it."""
    if os.environ.get(RESUME_ENV):
        return os.environ[RESUME_ENV]
    default = storage.DEFAULT_STORAGE if storage.is_uri(storage.DEFAULT_STORAGE) else \
        str(Path(storage.DEFAULT_STORAGE).expanduser().absolute())
    words = ["instrument-sweep", "resume", name]
    if root.rstrip("/") != default.rstrip("/"):
        words += ["--storage", root]
    if address:
        words += ["--address", address]
    return shlex.join(words)


def experiment_under(root: str, name_or_path: str) -> str:
    """The experiment's location, which must lie under `root`: restoring unpickles Tune's state."""
    if storage.is_uri(root) or storage.is_uri(name_or_path):
        location = storage.take_credentials(name_or_path, "experiment") if storage.is_uri(name_or_path) else \
            storage.join(root, name_or_path)
    else:
        candidate = Path(name_or_path).expanduser()
        path = candidate if candidate.is_absolute() or candidate.exists() else Path(root, name_or_path)
        location = str(path.resolve())
    if not storage.is_under(root, location):
        raise InputError("experiment", f"{name_or_path} is not under the storage root {root}; resume only "
                                       "restores trusted experiments under --storage (Tune's state is pickled): "
                                       f"`{resume_command(storage.parent(location), storage.basename(location))}`"
                                       + storage.credentials_hint(location))
    if not storage.exists(storage.join(location, SPEC_FILE)):
        raise InputError("experiment", f"{location} is not an instrument-sweep experiment (no {SPEC_FILE})")
    return location


def load_data(spec: SweepSpec):
    from trainables.data.dataset import class_counts
    from trainables.data.sources import resolve_dataset

    try:
        dataset = resolve_dataset(spec.data)
    except InputError as exc:
        raise InputError(exc.where if exc.where != "data" else "--data", exc.problem) from None
    spec.check_batch_sizes(dataset.n_train)
    spec.check_validation_split(class_counts(dataset.train_y, dataset.n_classes))
    print(f"data: {spec.data}: {dataset.n_train} train rows, {dataset.n_test} test rows, "
          f"{dataset.n_features} features, {dataset.n_classes} classes", flush=True)
    return dataset


def connect_and_describe(address: str | None, verbose: bool, dashboard: bool = False, figure_server: bool = False,
                         without_ray_fixes: bool = False):
    """Connect (see cluster.connect), check that this Ray's internals fit instrument-sweep's fixes
    (`ray_private.check_fixes`: InputError, Ray stopped, before any trial starts) and say where.
    Meanwhile, as Ray's start mostly waits on its processes, Ray Tune (about 1 s) is imported in
    the background, and where `figure_server`, the report's figure server starts
    (analysis.figure_server: it loads matplotlib in its own process)."""
    if figure_server:
        from analysis import figure_server as server

        server.start()
    importing = threading.Thread(target=importlib.import_module, args=("tune_jobs.launch",), daemon=True)
    importing.start()
    cluster = connect(address, log_to_driver=verbose, dashboard=dashboard, ray_fixes=not without_ray_fixes)
    importing.join()  # Tune imported whole first: imports of its modules from two threads at once can deadlock
    try:
        ray_private.check_fixes(without=without_ray_fixes, local=cluster.started_here)
    except InputError:
        disconnect(cluster)
        raise
    where = "local Ray" if cluster.started_here else f"Ray cluster at {cluster.address}"
    print(f"cluster: {where}: {cluster.nodes} node(s), {cluster.cpus:g} CPUs, {cluster.gpus:g} GPUs", flush=True)
    if cluster.dashboard_url:
        print(f"dashboard: {cluster.dashboard_url}", flush=True)
        if hint := dashboard_login_hint():
            print(f"token:     {hint}", flush=True)
    return cluster


def print_spec(spec: SweepSpec, trials: bool = True) -> None:
    goal = spec.stop.describe()
    t = spec.train
    print(f"sweep: {spec.name} -- {spec.description}".rstrip(" -"))
    print(f"train: {t.n_hidden} {t.activation} units, {t.optimizer}, loader {t.loader}, "
          f"validation {t.val_fraction:g}; stop: {goal}" + (f"; race: {spec.race}" if spec.race else ""))
    if trials:
        listed = spec.trials()
        print(f"trials: {len(listed)} ({spec.repeats} seed(s) per point; views: "
              f"{', '.join(v.name for v in spec.views)})")
        for trial in listed:
            print(trial.describe())
    print(flush=True)


def finish(spec: SweepSpec, root: str, experiment: str, grid, analyze: bool, figure_processes: int = 1,
           address: str | None = None) -> SweepOutcome:
    """Summary table, then tables/plots/report unless told not to (figures in `figure_processes`);
    where trials are left, the `resume` command that continues them (with `address`, if given).

    Exit 0 when every trial ended by the rule, 1 when some failed, 2 when low
    storage stopped the sweep, 130 when it was interrupted (resume continues both).
    """
    import analysis
    from tune_jobs.storage_space import check_stopped_for_space

    trials = analysis.load_trials(experiment)
    print_summary(trials)
    ended = [s.value for s in (*ENDED_BY_RULE, Status.ERROR)]
    unfinished = len(spec.trials()) - int(trials.status.isin(ended).sum())
    resume = resume_command(storage.parent(experiment), storage.basename(experiment), address)  # also nested
    if unfinished:
        check_stopped_for_space(root, resume)
        print(f"interrupted with {unfinished} trial(s) unfinished; continue with `{resume}`"
              + storage.credentials_hint(experiment))
        return SweepOutcome(experiment, None, EXIT_INTERRUPTED)
    report = None
    if analyze:
        from analysis.report import write_report

        report = write_report(experiment, info=spec.report_info(), figure_processes=figure_processes)
        print(f"report: {report}")
    failed = trials[trials.status == Status.ERROR.value]
    if len(failed) or grid.errors:
        print(f"{max(len(failed), len(grid.errors))} trial(s) failed; `{resume}` retries them"
              + storage.credentials_hint(experiment))
        return SweepOutcome(experiment, report, EXIT_TRIALS_FAILED)
    return SweepOutcome(experiment, report, 0)


def print_summary(trials) -> None:
    from tune_jobs.progress import fmt_energy

    print("\ntrial  lr         batch  seed  status          epochs  test_acc  time_s   energy")
    for row in trials.itertuples():
        print(f"{row.trial_number!s:>5}  {row.lr:<9g}  {row.batch_size!s:>5}  {row.seed!s:>4}  "
              f"{row.status:<14}  {row.epochs:>6}  {row.test_acc:8.4f}  {row.time_s:7.2f}  {fmt_energy(row.energy_j)}")
