"""Submit a sweep, or the rest of one, as a Slurm batch job (`instrument-sweep slurm`).

    job = submit_new(spec, allocation, storage_arg, name)        # a SubmittedJob
    job = submit_resume("seed-1", storage_arg, given_flags)
    job = submit_new(..., dry_run=True)                                         # job.script only

Everything is checked before anything is written: the spec and dataset exactly as `run` checks
them (`resume`'s checks for a resume), a plain experiment name, a storage directory the nodes can
share, and the job itself with `sbatch --test-only` (an unknown partition or account, more GPUs
per node than the partition has). Then the experiment's JOB_DIR gets the spec, the allocation and
the script, and `sbatch` submits the script; if sbatch refuses it, what was written is removed
again.
"""

from __future__ import annotations

import math
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from analysis import storage
from trainables.errors import InputError
from tune_jobs import experiment_lock
from tune_jobs.cli_sweep import PLAIN_NAME, check_new_sweep, check_resumable
from tune_jobs.slurm import client
from tune_jobs.slurm.job import Allocation, JobFiles, check_ray_temp_root, job_script
from tune_jobs.spec import SweepSpec
from tune_jobs.storage_space import mount_of

NODE_LOCAL_FILESYSTEMS = {"tmpfs", "ramfs", "devtmpfs"}
PLAIN_PATH = re.compile(r"[\w./+,@=~-]+")  # paths the script and its #SBATCH lines hold as they are (no %:
# Slurm's file name patterns, %j and the like, in --output)


@dataclass(frozen=True)
class SubmittedJob:
    """A submitted job (job_id "" for a dry run) and the files it runs from and writes."""

    job_id: str
    script: str  # the script's text
    files: JobFiles
    allocation: Allocation
    resume: bool


def submit_new(spec: SweepSpec, allocation: Allocation, storage_arg: str, name: str | None,
               flags: tuple[str, ...] = (), dry_run: bool = False) -> SubmittedJob:
    """Check the sweep as `run` does, then submit a job that runs it with run's `flags` (see the module
    docstring)."""
    if name is None:  # SPEC-DATE-TIME
        check_plain_name(spec.name, "--name", "the spec's name, which starts the default --name")
    else:
        check_plain_name(name, "--name")
    client.require("sbatch")
    root = shared_storage(storage_arg)
    spec, _, root, name, experiment = check_new_sweep(spec, root, name)
    check_no_active_job(name)
    files = JobFiles(experiment)
    script = render(allocation, files, resume=False, flags=flags, cpus_per_trial=spec.resources.cpus_per_trial)
    if dry_run:
        return SubmittedJob("", script, files, allocation, resume=False)
    made = not Path(experiment).exists()
    try:
        storage.write_text(str(files.spec), yaml.safe_dump(spec.to_dict(), sort_keys=False))
        return write_and_submit(script, files, allocation, resume=False)
    except BaseException:
        if made:
            shutil.rmtree(experiment, ignore_errors=True)
        raise


def submit_resume(name_or_path: str, storage_arg: str, given: dict, flags: tuple[str, ...] = (),
                  dry_run: bool = False) -> SubmittedJob:
    """Check the experiment as `resume` does, then submit a job that continues it; the allocation is the
    last job's (allocation.json) with the `given` flags (not None) instead."""
    client.require("sbatch")
    root = shared_storage(storage_arg, create=False)
    prepared = JobFiles(storage.join(root, name_or_path))
    if prepared.spec.is_file() and not Path(prepared.experiment, storage.SPEC_FILE).is_file():
        name = Path(prepared.experiment).name
        check_no_active_job(name, "--resume")
        raise InputError("--resume", f"{prepared.experiment} has not started: its job ended before the sweep "
                                     f"did (its output is in {prepared.dir}); submit it again with "
                                     f"`instrument-sweep slurm {prepared.spec} --name {name}`")
    root, experiment, spec, _ = check_resumable(root, name_or_path)
    files = JobFiles(experiment)
    name = Path(experiment).name
    check_plain_name(name, "--resume", "the experiment's name")
    check_no_active_job(name, "--resume")
    recorded = Allocation.from_json(files.allocation.read_text()) if files.allocation.is_file() else Allocation()
    allocation = recorded.overridden(**given)
    script = render(allocation, files, resume=True, flags=flags, cpus_per_trial=spec.resources.cpus_per_trial)
    if dry_run:
        return SubmittedJob("", script, files, allocation, resume=True)
    for token in files.dir.glob("ray-token-*"):  # an earlier job's, killed before its head step removed it
        token.unlink(missing_ok=True)
    return write_and_submit(script, files, allocation, resume=True)


def render(allocation: Allocation, files: JobFiles, resume: bool, flags: tuple[str, ...] = (),
           cpus_per_trial: float = 1.0) -> str:
    """The job script (`job_script`), checked by `sbatch --test-only` (nothing is submitted); a note where
    the first node's CPUs, the driver's aside, run fewer trials than it has GPUs."""
    gpus = allocation.gpus_per_node or allocation.gres_gpus
    trials = int((allocation.cpus_per_task - 1) // cpus_per_trial)
    if trials < gpus:
        print(f"note: {allocation.cpus_per_task} CPU(s) per node leave the first node {allocation.cpus_per_task - 1} "
              f"for trials (one is the sweep's driver's), {cpus_per_trial:g} each: {trials} of its {gpus} GPU(s) "
              f"will run trials; --cpus-per-task {gpus * math.ceil(cpus_per_trial) + 1} gives each GPU its trial")
    bin_dir = Path(sys.executable).parent
    missing = [name for name in ("ray", "instrument-sweep") if not (bin_dir / name).is_file()]
    if missing:
        raise InputError("slurm", f"the job runs `ray` and `instrument-sweep` from {bin_dir}, which lacks "
                                  f"{' and '.join(missing)}; install the project there (pip install -e .)")
    script = job_script(allocation, files, resume, check_ray_temp_root(client.config_value("TmpFS", "/tmp")),
                        flags=flags, bin_dir=str(bin_dir))
    check_with_sbatch(script, allocation)
    return script


def write_and_submit(script: str, files: JobFiles, allocation: Allocation, resume: bool) -> SubmittedJob:
    """Write the script and the allocation into the job folder, then `sbatch` the script; a refusal leaves
    the folder as it was."""
    path = files.script(resume)
    before = {p: p.read_text() for p in (path, files.allocation) if p.is_file()}
    storage.write_text(str(path), script)
    storage.write_text(str(files.allocation), allocation.to_json())
    done = client.run(["sbatch", "--parsable", str(path)])
    job_id = done.stdout.strip().split(";")[0]
    if done.returncode != 0 or not job_id:
        for p in (path, files.allocation):
            p.unlink(missing_ok=True)
        for p, text in before.items():
            storage.write_text(str(p), text)
        raise InputError("sbatch", client.message(done))
    return SubmittedJob(job_id, script, files, allocation, resume)


def shared_storage(storage_arg: str, create: bool = True) -> str:
    """The storage root, as a directory every node can reach: not a cloud URI (the job's script and
    output live in the experiment), not node-local (Slurm's TmpFS, a tmpfs), no characters to quote."""
    needed = ("the job's nodes and this host must all see the experiment: give a directory on a filesystem "
              "they share (on most clusters, under your home or a /scratch or /work filesystem)")
    if storage.is_uri(storage_arg):
        raise InputError("--storage", f"{storage.split_credentials(storage_arg)[0]}: the job's script and output "
                                      f"live in the experiment directory, so {needed}")
    root = str(Path(storage_arg).expanduser().absolute())
    path = Path(root).resolve()
    tmpfs = client.config_value("TmpFS", "/tmp")
    if path == Path(tmpfs).resolve() or Path(tmpfs).resolve() in path.parents:
        raise InputError("--storage", f"{root} is under Slurm's TmpFS ({tmpfs}), each node's own disk; {needed}")
    _, fs_type = mount_of(path)
    if fs_type in NODE_LOCAL_FILESYSTEMS:
        raise InputError("--storage", f"{root} is on a {fs_type} (this host's memory); {needed}")
    if not PLAIN_PATH.fullmatch(root):
        raise InputError("--storage", f"{root!r}: the job script holds this path unquoted; use one without "
                                      "spaces, quotes, $ or %")
    root = storage.resolve_storage(root, create=create)
    experiment_lock.check_lockable(root)  # as the job's `run` locks the experiment, found out now
    return root


def check_plain_name(name: str, flag: str, what: str = "") -> None:
    """InputError naming `flag` where `name` is not a plain name, which the job's #SBATCH lines (its name,
    folder and output) hold as it is."""
    if not PLAIN_NAME.fullmatch(name):
        raise InputError(flag, f"{name!r}{f' ({what})' if what else ''}: a Slurm job's name must be letters, "
                               "digits, '.', '_' and '-', starting with a letter or digit")


def check_no_active_job(name: str, flag: str = "--name") -> None:
    """InputError while a job of this experiment (named after it) is pending or running."""
    active = client.active_jobs(name)
    if active:
        job_id, state = active[0]
        raise InputError(flag, f"Slurm job {job_id} of {name} is {state}; wait for it (instrument-sweep logs "
                               f"{job_id} --follow) or cancel it (scancel {job_id}) first")


def check_with_sbatch(script: str, allocation: Allocation) -> None:
    """`sbatch --test-only` on the script (nothing is submitted): InputError where Slurm refuses the job."""
    done = client.run(["sbatch", "--test-only"], input=script)
    if done.returncode != 0:
        raise refusal(client.message(done), allocation)


def refusal(problem: str, allocation: Allocation) -> InputError:
    """Slurm's refusal of the job as InputError, naming the flag where Slurm's message tells which."""
    lowered = problem.lower()
    if "account" in lowered:  # "Invalid account or account/partition combination specified"
        return InputError("--account", f"{allocation.account}: {problem}")
    if "partition" in lowered:  # "Invalid partition name specified"
        return InputError("--partition", f"{allocation.partition}: {problem} (partitions: "
                                         f"{', '.join(client.partitions())})")
    if "node configuration is not available" in lowered and allocation.gpus_per_node:
        has = client.gpus_per_node(allocation.partition, allocation.gpu_type)
        if allocation.gpus_per_node > has:
            where = f"partition {allocation.partition}" if allocation.partition else "the default partition"
            kind = f" of type {allocation.gpu_type}" if allocation.gpu_type else ""
            types = client.gpu_types(allocation.partition)
            known = f" (types there: {', '.join(types)})" if allocation.gpu_type and types else ""
            return InputError("--gpus-per-node", f"{allocation.gpus} asked, but the nodes of {where} have at "
                                                 f"most {has} GPU(s){kind}{known}")
    return InputError("sbatch", f"Slurm refuses the job ({allocation.describe()}): {problem}")


def submitted_lines(job: SubmittedJob) -> list[str]:
    """What `instrument-sweep slurm` prints after submitting: where things are, how to follow and resume."""
    return [
        f"submitted: Slurm job {job.job_id}: {job.allocation.describe()}",
        f"script:    {job.files.script(job.resume)}",
        f"output:    {job.files.output(job.job_id)}",
        f"follow:    instrument-sweep logs {job.job_id} --follow",
        f"status:    instrument-sweep status {job.job_id}",
        f"stop:      scancel --batch --signal=INT {job.job_id}   (saves the state at once; a plain scancel "
        "may redo the last epochs)",
        f"resume:    {job.files.resume_command}",
    ]
