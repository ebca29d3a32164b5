"""A sweep's Slurm job: what it asks for, and the batch script that runs the sweep on it.

    allocation = Allocation(nodes=2, gpus_per_node=4, gpu_type="a100", cpus_per_task=9, mem="64G")
    files = JobFiles("/shared/sweeps/seed-1")            # its slurm/ folder: spec, script, outputs
    text = job_script(allocation, files, sweep_command, ray_temp_root="/tmp")

The script (the Slurm page of the docs walks through it line by line): the site's `--setup` lines
first; then this job's own token, made 0600 before Ray starts (and removed as the job ends); a Ray
head on the first node and one Ray worker per other node, each `srun --overlap --export=ALL ...
in_job ray-start` (a job step that ends with the job: Ray told what Slurm granted the job on that
node, read there at job time; at the node's Slurm address; on ports Ray binds itself; its temp dir
on node-local disk, removed as it ends); then the sweep's own command as the job's last process
(`exec`), so its output and exit code are the job's. `--signal=B:INT@60` reaches it like Ctrl-C
before the time limit, and SIGTERM (preemption, `scancel`) the same way: it saves its state and
stops. A requeued job (node failure, preemption, `scontrol requeue`; `--requeue` is on by default)
runs the script again as the same job, appending to its output, and continues the sweep it started.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from analysis.storage import JOB_DIR, SPEC_FILE
from trainables.errors import InputError
from tune_jobs.slurm.steps import RAY_STEPS_ENV

SIGNAL_BEFORE_END_S = 60  # the time limit: the sweep is told to stop (as Ctrl-C) this long before it
JOIN_TIMEOUT_S = 120.0  # default: Ray's nodes must have joined the head within this
GCS_GONE_S = 10  # the sweep's driver gives up on a Ray whose head has ended (the job's is never restarted)
RAY_SOCKET_ROOM = 40  # Ray's temp dir may be this long: its socket paths inside must stay under 108 bytes
TIME = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$")  # Slurm's forms: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S
MEMORY = re.compile(r"^\d+[KMGT]?$")  # Slurm's --mem: a number of megabytes, or with a unit K, M, G or T
STARTED_BY = "started-by-job"  # in the job folder: the id of the job whose script started the sweep


@dataclass(frozen=True)
class Allocation:
    """What the job asks Slurm for, and how its script sets up a node; each field is the `instrument-sweep
    slurm` flag of the same name (recorded in allocation.json: `--resume` asks for the same again)."""

    nodes: int = 1  # one Ray node per Slurm node: the head on the first
    gpus_per_node: int = 0  # GPUs per node, all given to Ray (0: trials run on CPUs)
    gpu_type: str | None = None  # the GPUs' type as the site names it (--gpus-per-node a100:4); None: any
    cpus_per_task: int = 1  # CPUs per node (one task per node), all Ray's but one on the first node
    mem: str | None = None  # memory per node, as sbatch --mem takes it (64G, 500M); None: the site's default
    time: str | None = None  # time limit, HH:MM:SS (or D-HH:MM:SS); None: the partition's default
    partition: str | None = None  # None: the cluster's default partition
    account: str | None = None  # None: the user's default account
    requeue: bool = True  # Slurm may requeue the job (node failure, preemption); it then continues the sweep
    join_timeout_s: float = JOIN_TIMEOUT_S  # how long the job waits for Ray's nodes to join
    setup: tuple[str, ...] = field(default_factory=tuple)  # shell lines the script runs first (module load ...)
    sbatch_args: tuple[str, ...] = field(default_factory=tuple)  # further sbatch options, one #SBATCH line each

    def __post_init__(self) -> None:
        for name, least in (("nodes", 1), ("gpus_per_node", 0), ("cpus_per_task", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise InputError(flag(name), f"must be a whole number >= {least}, got {value!r}")
        if self.gpu_type is not None and not re.fullmatch(r"[A-Za-z0-9][\w.-]*", self.gpu_type):
            raise InputError("--gpus-per-node", f"a GPU type must be a name such as a100 (letters, digits, _ . -), "
                                                f"got {self.gpu_type!r}")
        if self.gpu_type is not None and not self.gpus_per_node:
            raise InputError("--gpus-per-node", f"{self.gpu_type}:0: a type needs a count of 1 or more")
        if self.mem is not None and not MEMORY.match(self.mem):
            raise InputError("--mem", f"must be a size as sbatch --mem takes it (a number of MB, or with a unit "
                                      f"K, M, G or T: 500M, 64G), got {self.mem!r}")
        if self.time is not None and not TIME.match(self.time):
            raise InputError("--time", f"must be HH:MM:SS (or D-HH:MM:SS, MM, MM:SS), got {self.time!r}")
        for name in ("partition", "account"):
            value = getattr(self, name)
            if value is not None and not re.fullmatch(r"[\w.,+-]+", value):
                raise InputError(flag(name), f"must be a Slurm name (letters, digits, _ . , + -), got {value!r}")
        if isinstance(self.join_timeout_s, bool) or not isinstance(self.join_timeout_s, (int, float)) \
                or not self.join_timeout_s > 0:
            raise InputError("--join-timeout-s", f"must be a number of seconds > 0, got {self.join_timeout_s!r}")
        for line in self.setup:
            if not line.strip() or any(c in line for c in "\n\r\0"):
                raise InputError("--setup", f"must be one shell line such as 'module load cuda', got {line!r}")
        for arg in self.sbatch_args:
            if not arg.startswith("-") or any(c in arg for c in "\n\r\0"):
                raise InputError("--sbatch-arg", f"must be one sbatch option such as --qos=high, got {arg!r}")

    @property
    def gres_gpus(self) -> int:
        """GPUs per node asked for through `--sbatch-arg=--gres=gpu[:TYPE][:N]` (N is 1 where left out)."""
        count = 0
        for arg in self.sbatch_args:
            name, _, value = arg.partition("=")
            for item in value.split(",") if name == "--gres" else ():
                kind, *rest = item.split(":")
                if kind == "gpu":
                    count += int(rest[-1]) if rest and rest[-1].isdigit() else 1
        return count

    @property
    def gpus(self) -> str:
        """The GPUs per node as sbatch takes them: N, or TYPE:N."""
        return f"{self.gpu_type}:{self.gpus_per_node}" if self.gpu_type else str(self.gpus_per_node)

    def sbatch_options(self) -> list[str]:
        """The #SBATCH options of the allocation, in the order the script lists them."""
        options = [f"--nodes={self.nodes}", "--ntasks-per-node=1", f"--cpus-per-task={self.cpus_per_task}"]
        if self.gpus_per_node:
            options.append(f"--gpus-per-node={self.gpus}")
        options += [f"--{key}={value}" for key, value in (("mem", self.mem), ("time", self.time),
                                                          ("partition", self.partition), ("account", self.account))
                    if value]
        return options

    def describe(self) -> str:
        gpus = f"{self.gpus} GPU(s)" if self.gpus_per_node else \
            f"{self.gres_gpus} GPU(s) through --gres" if self.gres_gpus else "no GPU"
        memory = f", {self.mem} memory" if self.mem else ""
        where = f"partition {self.partition}" if self.partition else "the default partition"
        limit = f"time limit {self.time}" if self.time else "the partition's time limit"
        return f"{self.nodes} node(s) x ({self.cpus_per_task} CPU(s), {gpus}{memory}), {where}, {limit}"

    def overridden(self, **given) -> "Allocation":
        """This allocation with the flags that were given (not None) instead."""
        return replace(self, **{k: v for k, v in given.items() if v is not None})

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "Allocation":
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        return cls(**{k: tuple(v) if k in ("setup", "sbatch_args") else v for k, v in data.items() if k in known})


def parse_gpus(text: str) -> tuple[int, str | None]:
    """`--gpus-per-node` as given, N or TYPE:N, as (count, type); InputError naming the flag otherwise."""
    kind, _, count = text.rpartition(":")
    if not count.isdigit():
        raise InputError("--gpus-per-node", f"must be a count N or TYPE:N (a100:4), got {text!r}")
    return int(count), (kind or None)


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

    @property
    def started_by(self) -> Path:
        """The id of the job whose run.sh started the sweep: a requeued run of that job continues it."""
        return self.dir / STARTED_BY


def sweep_command(files: JobFiles, resume: bool, flags: tuple[str, ...] = ()) -> list[str]:
    """The `instrument-sweep` command a job runs on its head node (the head's address appended): `run` of
    the prepared spec, or `resume`, with the `flags` of run and resume it passes on (--no-analyze,
    --without-ray-fixes)."""
    experiment = Path(files.experiment)
    if resume:
        command = ["instrument-sweep", "resume", experiment.name]
    else:
        command = ["instrument-sweep", "run", files.spec.name, "--name", experiment.name]
    return [*command, "--storage", str(experiment.parent), *flags]


def job_script(allocation: Allocation, files: JobFiles, resume: bool, ray_temp_root: str,
               flags: tuple[str, ...] = (), bin_dir: str | None = None) -> str:
    """The batch script: Ray across the allocation, then the sweep on it (`sweep_command`; see the module
    docstring)."""
    name = Path(files.experiment).name
    q = shlex.quote
    bin_dir = bin_dir or str(Path(sys.executable).parent)
    timeout = f"--timeout-s={allocation.join_timeout_s:g}"
    output = "--output=%j-ray-%N.out --open-mode=append"  # each node's Ray output, kept across a requeue
    workers = allocation.nodes - 1
    lines = [
        "#!/bin/bash",
        f"# instrument-sweep: the sweep {name} on Ray across this job's nodes (written by `instrument-sweep slurm`)",
        f"#SBATCH --job-name={name}",
        *(f"#SBATCH {option}" for option in allocation.sbatch_options()),
        f"#SBATCH --chdir={files.dir}",
        f"#SBATCH --output={files.dir}/%j.out",
        "#SBATCH --open-mode=append",
        f"#SBATCH --{'' if allocation.requeue else 'no-'}requeue",
        f"#SBATCH --signal=B:INT@{SIGNAL_BEFORE_END_S}",
        *(f"#SBATCH {arg}" for arg in allocation.sbatch_args),
    ]
    if allocation.setup:
        lines += [
            "",
            "# The site's setup (--setup), before anything else; each line must succeed. (Not under `set -u`:",
            "# site scripts, conda's activate among them, read variables that may be unset.)",
            *(f"{line} || {{ echo {q(f'error: --setup: this line failed: {line}')} >&2; exit 1; }}"
              for line in allocation.setup),
        ]
    lines += [
        "set -euo pipefail",
        "",
        "# The install that wrote this script; Ray with token auth; CUDA numbers GPUs as nvidia-smi does; one",
        "# malloc arena per process keeps trials' memory flat; Ray's nodes stop at once when the job ends. A Ray",
        "# token or address of the submitting shell is not this job's. Each job step gets this environment",
        "# (`srun --export=ALL`: where the site's default is SBATCH_EXPORT=NONE, a step would get none).",
        f"export PATH={q(bin_dir)}:\"$PATH\"",
        "export RAY_AUTH_MODE=token CUDA_DEVICE_ORDER=PCI_BUS_ID MALLOC_ARENA_MAX=1",
        "export RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=0",
        "unset RAY_AUTH_TOKEN RAY_ADDRESS",
        "# How the sweep says to continue it, should it stop unfinished: as a new job.",
        f"export INSTRUMENT_SWEEP_RESUME={q(files.resume_command)}",
        "# This job's own Ray token, readable by you only (0600), made before any Ray process starts; removed as",
        "# the job ends (by the head's step; by this script where it fails before the sweep starts).",
        'export RAY_AUTH_TOKEN_PATH="$PWD/ray-token-$SLURM_JOB_ID"',
        "trap 'rm -f \"$RAY_AUTH_TOKEN_PATH\"' EXIT",
        'python -m tune_jobs.slurm.in_job token "$RAY_AUTH_TOKEN_PATH"',
        "",
        "# Each Ray node: a job step until the job ends, `ray start` at its node's Slurm address with the CPUs,",
        "# GPUs and memory Slurm granted this job there (one CPU of the first node left to the sweep), on ports",
        "# Ray binds itself; its temp dir on the node's own disk, removed as the step ends; its output in",
        "# JOBID-ray-NODE.out. The head first, on this node; the workers join it at the address it reports.",
        f'ray_temp="{ray_temp_root}/ray-$SLURM_JOB_ID"',
        f'srun --overlap --export=ALL --nodes=1 --ntasks=1 --nodelist="$SLURMD_NODENAME" {output} \\',
        '    python -m tune_jobs.slurm.in_job ray-start --head --temp-dir="$ray_temp" &',
        "steps=$!",
        f'head=$(python -m tune_jobs.slurm.in_job head-address "$ray_temp" {timeout} --steps $steps)',
    ]
    if workers:
        lines += [
            f"srun --overlap --export=ALL --nodes={workers} --ntasks={workers} --relative=1 {output} \\",
            '    python -m tune_jobs.slurm.in_job ray-start --address="$head" --temp-dir="$ray_temp" &',
            'steps="$steps $!"',
        ]
    lines += [
        f"# Wait until all {allocation.nodes} node(s) have joined (at most {allocation.join_timeout_s:g} s, "
        "--join-timeout-s; at once if a step ends).",
        f'python -m tune_jobs.slurm.in_job wait "$head" --nodes={allocation.nodes} {timeout} --steps $steps',
        "",
        "# The sweep on this cluster, as the job's own process: its output and exit code are the job's. SIGINT",
        f"# {SIGNAL_BEFORE_END_S} s before the time limit, or SIGTERM (preemption, scancel), stops it as Ctrl-C "
        "does (state saved);",
        f"# where Ray's nodes end with it (Slurm signals every process), it gives up on Ray within "
        f"{GCS_GONE_S} s, not Ray's 60.",
        f"export RAY_gcs_rpc_server_reconnect_timeout_s={GCS_GONE_S}",
        "# As it exits, it ends Ray's steps, which remove their temp dirs (Slurm would kill them at once).",
        f'export {RAY_STEPS_ENV}="$steps"',
    ]
    address = '--address "$head"'
    if resume:
        lines.append(f"exec {shlex.join(sweep_command(files, True, flags))} {address}")
    else:
        lines += [
            "# A requeued job (node failure, preemption, scontrol requeue) runs this script again, as the same job:",
            "# it continues the sweep it started (if that got as far as writing its spec).",
            f'if [ "$(cat {STARTED_BY} 2>/dev/null)" = "$SLURM_JOB_ID" ] && [ -e ../{SPEC_FILE} ]; then',
            f"    exec {shlex.join(sweep_command(files, True, flags))} {address}",
            "fi",
            f'echo "$SLURM_JOB_ID" > {STARTED_BY}',
            f"exec {shlex.join(sweep_command(files, False, flags))} {address}",
        ]
    return "\n".join(lines) + "\n"


def check_ray_temp_root(root: str) -> str:
    """`root` (Slurm's TmpFS) where Ray's temp dir fits in it, else /tmp: Ray's Unix socket paths inside
    its temp dir must stay under 108 bytes."""
    return root if len(f"{root}/ray-0123456789") <= RAY_SOCKET_ROOM else "/tmp"
