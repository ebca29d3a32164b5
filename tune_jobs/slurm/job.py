"""A sweep's Slurm job: the allocation it asks for, and the batch script that runs the sweep on it.

    allocation = Allocation(nodes=2, gpus_per_node=4, cpus_per_task=8, time="02:00:00")
    files = JobFiles("/shared/sweeps/seed-1")            # its slurm/ folder: spec, script, outputs
    text = job_script(allocation, files, sweep_command, ray_temp_root="/tmp")

The script (docs/slurm.md, "The job script", walks through it line by line): a Ray head on the first node
and one Ray worker per other node, each `srun --overlap ... ray start --block` (through `in_job
ray-start`: at the node's Slurm address, and its temp dir removed as it ends), a job step that
ends with the job; this job's own token, made 0600 before Ray starts; the head's ports picked free
on its node; Ray's temp dir on node-local disk; then the sweep's own command as the job's last
process (`exec`), so its output and exit code are the job's, and `--signal=B:INT@60` reaches it
like Ctrl-C before the time limit: it saves its state and stops, and a resumed job continues.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from analysis.storage import JOB_DIR
from trainables.errors import InputError

SIGNAL_BEFORE_END_S = 60  # the time limit: the sweep is told to stop (as Ctrl-C) this long before it
WAIT_FOR_NODES_S = 120  # Ray's nodes must have joined the head within this
RAY_SOCKET_ROOM = 40  # Ray's temp dir may be this long: its socket paths inside must stay under 108 bytes
TIME = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$")  # Slurm's forms: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S


@dataclass(frozen=True)
class Allocation:
    """What the job asks Slurm for; each field is the `instrument-sweep slurm` flag of the same name."""

    nodes: int = 1  # one Ray node per Slurm node: the head on the first
    gpus_per_node: int = 0  # GPUs per node, all given to Ray (0: trials run on CPUs)
    cpus_per_task: int = 1  # CPUs per node (one task per node), all given to Ray
    time: str | None = None  # time limit, HH:MM:SS (or D-HH:MM:SS); None: the partition's default
    partition: str | None = None  # None: the cluster's default partition
    account: str | None = None  # None: the user's default account
    sbatch_args: tuple[str, ...] = field(default_factory=tuple)  # further sbatch options, one #SBATCH line each

    def __post_init__(self) -> None:
        for name, least in (("nodes", 1), ("gpus_per_node", 0), ("cpus_per_task", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise InputError(flag(name), f"must be a whole number >= {least}, got {value!r}")
        if self.time is not None and not TIME.match(self.time):
            raise InputError("--time", f"must be HH:MM:SS (or D-HH:MM:SS, MM, MM:SS), got {self.time!r}")
        for name in ("partition", "account"):
            value = getattr(self, name)
            if value is not None and not re.fullmatch(r"[\w.,+-]+", value):
                raise InputError(flag(name), f"must be a Slurm name (letters, digits, _ . , + -), got {value!r}")
        for arg in self.sbatch_args:
            if not arg.startswith("-") or any(c in arg for c in "\n\r\0"):
                raise InputError("--sbatch-arg", f"must be one sbatch option such as --qos=high, got {arg!r}")

    def sbatch_options(self) -> list[str]:
        """The #SBATCH options of the allocation, in the order the script lists them."""
        options = [f"--nodes={self.nodes}", "--ntasks-per-node=1", f"--cpus-per-task={self.cpus_per_task}"]
        if self.gpus_per_node:
            options.append(f"--gpus-per-node={self.gpus_per_node}")
        options += [f"--{key}={value}" for key, value in
                    (("time", self.time), ("partition", self.partition), ("account", self.account)) if value]
        return options

    def describe(self) -> str:
        gpus = f"{self.gpus_per_node} GPU(s)" if self.gpus_per_node else "no GPU"
        where = f"partition {self.partition}" if self.partition else "the default partition"
        limit = f"time limit {self.time}" if self.time else "the partition's time limit"
        return f"{self.nodes} node(s) x ({self.cpus_per_task} CPU(s), {gpus}), {where}, {limit}"

    def overridden(self, **given) -> "Allocation":
        """This allocation with the flags that were given (not None) instead."""
        return replace(self, **{k: v for k, v in given.items() if v is not None})

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "Allocation":
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        return cls(**{k: tuple(v) if k == "sbatch_args" else v for k, v in data.items() if k in known})


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class JobFiles:
    """The files of an experiment's Slurm jobs, in its JOB_DIR folder on the shared filesystem."""

    experiment: str

    @property
    def dir(self) -> Path:
        return Path(self.experiment, JOB_DIR)

    @property
    def spec(self) -> Path:
        """The validated spec that the first job runs."""
        return self.dir / "spec.yaml"

    @property
    def allocation(self) -> Path:
        """The last submitted allocation: what `--resume` asks for where no flag says otherwise."""
        return self.dir / "allocation.json"

    def script(self, resume: bool) -> Path:
        return self.dir / ("resume.sh" if resume else "run.sh")

    def output(self, job_id: str) -> Path:
        return self.dir / f"{job_id}.out"

    @property
    def resume_command(self) -> str:
        """How to continue the experiment: as a new job."""
        experiment = Path(self.experiment)
        return shlex.join(["instrument-sweep", "slurm", "--resume", experiment.name, "--storage",
                           str(experiment.parent)])


def sweep_command(files: JobFiles, root: str, name: str, resume: bool, flags: tuple[str, ...] = ()) -> list[str]:
    """The `instrument-sweep` command the job runs on its head node (the head's address appended), with the
    `flags` of run and resume it passes on (--no-analyze, --without-ray-fixes)."""
    if resume:
        command = ["instrument-sweep", "resume", name]
    else:
        command = ["instrument-sweep", "run", files.spec.name, "--name", name]
    return [*command, "--storage", root, *flags]


def job_script(allocation: Allocation, files: JobFiles, command: list[str], ray_temp_root: str,
               bin_dir: str | None = None) -> str:
    """The batch script: Ray across the allocation, then `command` on it (see the module docstring)."""
    name = Path(files.experiment).name
    q = shlex.quote
    bin_dir = bin_dir or str(Path(sys.executable).parent)
    ray_node = ["--block", f'--temp-dir="{ray_temp_root}/ray-$SLURM_JOB_ID"', f"--num-cpus={allocation.cpus_per_task}",
                f"--num-gpus={allocation.gpus_per_node}", "--dashboard-agent-listen-port=0",
                "--include-log-monitor=false", "--disable-usage-stats"]
    workers = allocation.nodes - 1
    lines = [
        "#!/bin/bash",
        f"# instrument-sweep: the sweep {name} on Ray across this job's nodes (written by `instrument-sweep slurm`)",
        f"#SBATCH --job-name={name}",
        *(f"#SBATCH {option}" for option in allocation.sbatch_options()),
        f"#SBATCH --chdir={files.dir}",
        f"#SBATCH --output={files.dir}/%j.out",
        f"#SBATCH --signal=B:INT@{SIGNAL_BEFORE_END_S}",
        *(f"#SBATCH {arg}" for arg in allocation.sbatch_args),
        "set -euo pipefail",
        "",
        "# The install that wrote this script; Ray with token auth; CUDA numbers GPUs as nvidia-smi does; one",
        "# malloc arena per process keeps trials' memory flat; Ray's nodes stop at once when the job ends.",
        f"export PATH={q(bin_dir)}:\"$PATH\"",
        "export RAY_AUTH_MODE=token CUDA_DEVICE_ORDER=PCI_BUS_ID MALLOC_ARENA_MAX=1",
        "export RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=0",
        "# How the sweep says to continue it, should it stop unfinished: as a new job.",
        f"export INSTRUMENT_SWEEP_RESUME={q(files.resume_command)}",
        "# This job's own Ray token, readable by you only (0600), made before any Ray process starts.",
        'export RAY_AUTH_TOKEN_PATH="$PWD/ray-token-$SLURM_JOB_ID"',
        'python -m tune_jobs.slurm.in_job token "$RAY_AUTH_TOKEN_PATH"',
        "",
        "# Ray's head: this node (the allocation's first), at the address Slurm reaches it by, on free ports.",
        "head_ip=$(python -m tune_jobs.slurm.in_job node-ip)",
        "read -r gcs_port client_port < <(python -m tune_jobs.slurm.in_job free-ports 2)",
        'head="$head_ip:$gcs_port"',
        "# Each Ray node: `ray start` at its node's Slurm address, its temp dir on the node's own disk (removed as",
        "# the step ends), the CPUs and GPUs Slurm gave this job there, agents on free ports. Each runs as a job",
        "# step until the job ends; its output goes to JOBID-ray-NODE.out.",
        f"ray_node=({' '.join(ray_node[:4])}",
        f"          {' '.join(ray_node[4:])})",
        'srun --overlap --nodes=1 --ntasks=1 --nodelist="$SLURMD_NODENAME" --output=%j-ray-%N.out \\',
        '    python -m tune_jobs.slurm.in_job ray-start --head --port="$gcs_port" \\',
        '    --ray-client-server-port="$client_port" --include-dashboard=false "${ray_node[@]}" &',
        "steps=$!",
    ]
    if workers:
        lines += [
            f"srun --overlap --nodes={workers} --ntasks={workers} --relative=1 --output=%j-ray-%N.out \\",
            '    python -m tune_jobs.slurm.in_job ray-start --address="$head" "${ray_node[@]}" &',
            'steps="$steps $!"',
        ]
    lines += [
        f"# Wait until all {allocation.nodes} node(s) have joined (at most {WAIT_FOR_NODES_S} s; an error at once if a step ends).",
        f'python -m tune_jobs.slurm.in_job wait "$head" --nodes={allocation.nodes} '
        f'--timeout-s={WAIT_FOR_NODES_S} --steps $steps',
        "",
        "# The sweep on this cluster, as the job's own process: its output and exit code are the job's, and",
        f"# {SIGNAL_BEFORE_END_S} s before the time limit Slurm's SIGINT stops it as Ctrl-C does (state saved; resumable).",
        f'exec {shlex.join(command)} --address "$head"',
    ]
    return "\n".join(lines) + "\n"


def check_ray_temp_root(root: str) -> str:
    """`root` (Slurm's TmpFS) where Ray's temp dir fits in it, else /tmp: Ray's Unix socket paths inside
    its temp dir must stay under 108 bytes."""
    return root if len(f"{root}/ray-0123456789") <= RAY_SOCKET_ROOM else "/tmp"
