"""Slurm's own commands, as the submitting host calls them (SLURM_CONF and the like from the environment).

    require("sbatch")                  # its path; InputError("sbatch", ...) where it is not on PATH
    run(["sbatch", "--test-only"], input=script)
    job_fields("4242")                 # scontrol's fields of a job: {"JobState": "RUNNING", ...}; {} once forgotten
    config_value("TmpFS")              # "/tmp"
    gpus_per_node("gpu", "a100")       # the most GPUs (of type a100) a node of partition "gpu" has (0 without)
"""

from __future__ import annotations

import re
import shutil
import subprocess

from trainables.errors import InputError

TIMEOUT_S = 60.0
FIELD = re.compile(r"(?:^|\s)([A-Za-z][\w:/]*)=")  # where each `Key=` of scontrol's one-line output starts


def require(command: str) -> str:
    """The path of one of Slurm's commands; InputError naming it where it is not on PATH."""
    path = shutil.which(command)
    if not path:
        raise InputError(command, "not found on PATH; run this where Slurm's commands work (a login node of "
                                  "the cluster), or install them (Debian: apt-get install slurm-client)")
    return path


def run(args: list[str], input: str | None = None) -> subprocess.CompletedProcess:
    """A Slurm command to completion, output as text; a command that hangs ends with InputError."""
    try:
        return subprocess.run(args, input=input, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise InputError(args[0], f"`{' '.join(args)}` did not answer within {TIMEOUT_S:.0f} s; is slurmctld "
                                  "reachable?") from None
    except FileNotFoundError:
        require(args[0])
        raise


def message(done: subprocess.CompletedProcess) -> str:
    """A failed command's error: its last line (Slurm's reason), without prefixes such as `sbatch: error:`."""
    lines = [line.strip() for line in (done.stderr or done.stdout).splitlines()
             if line.strip() and not line.startswith("Try ")]  # 'Try "sbatch --help" for more information
    if not lines:
        return f"exit code {done.returncode}"
    return re.sub(r"^(\w+: error: )?(Batch job submission failed: |allocation failure: )?", "", lines[-1])


def parse_fields(line: str) -> dict[str, str]:
    """`Key=Value Key2=Value two` (scontrol -o) as a dict; values may hold spaces and `=`."""
    starts = list(FIELD.finditer(line))
    return {m.group(1): line[m.end():(starts[i + 1].start() if i + 1 < len(starts) else len(line))].strip()
            for i, m in enumerate(starts)}


def job_fields(job_id: str) -> dict[str, str]:
    """scontrol's fields of a pending, running or recently ended job; {} where slurmctld no longer
    knows it (it forgets an ended job after MinJobAge, 300 s by default)."""
    done = run(["scontrol", "-o", "show", "job", job_id])
    line = done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else ""
    return parse_fields(line)


def accounted_state(job_id: str) -> tuple[str, str]:
    """(State, ExitCode) from Slurm's accounting; ("", "") where accounting is off or knows nothing."""
    if not shutil.which("sacct"):
        return "", ""
    done = run(["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State,ExitCode"])
    rows = [line.split("|") for line in done.stdout.splitlines() if "|" in line] if done.returncode == 0 else []
    return (rows[0][0].split()[0], rows[0][1]) if rows and rows[0][0] else ("", "")


def config_value(key: str, default: str = "") -> str:
    """One value of `scontrol show config` (the cluster's slurm.conf), or `default`."""
    done = run(["scontrol", "show", "config"])
    for line in done.stdout.splitlines():
        name, _, value = line.partition("=")
        if name.strip() == key:
            return value.strip()
    return default


def partitions() -> list[str]:
    """The partitions this user may submit to."""
    return sorted(set(run(["sinfo", "-h", "-o", "%R"]).stdout.split()))


def _gres(partition: str | None) -> list[tuple[str, int]]:
    """(type, count) of each GPU generic resource (gpu:N, gpu:TYPE:N) the nodes of `partition` (None:
    the default one, marked * by sinfo) have; type "" where untyped."""
    rows = [row.split(None, 1) for row in run(["sinfo", "-h", "-o", "%P %G"]).stdout.splitlines()]
    gres = " ".join(row[1] for row in rows if len(row) == 2 and (
        row[0].rstrip("*") == partition if partition else row[0].endswith("*")))
    return [(m.group(1) or "", int(m.group(2))) for m in re.finditer(r"\bgpu(?::([^:,\s()]+))?:(\d+)", gres)]


def gpus_per_node(partition: str | None, gpu_type: str | None = None) -> int:
    """The most GPUs (of `gpu_type`, where given) one node of `partition` has (0 without)."""
    return max((count for kind, count in _gres(partition) if gpu_type in (None, kind)), default=0)


def gpu_types(partition: str | None) -> list[str]:
    """The GPU types the nodes of `partition` declare."""
    return sorted({kind for kind, _ in _gres(partition) if kind})


def active_jobs(name: str) -> list[tuple[str, str]]:
    """(job id, state) of this user's pending or running jobs named `name`."""
    done = run(["squeue", "-h", "--me", "-n", name, "-o", "%i %T"])
    return [tuple(line.split()[:2]) for line in done.stdout.splitlines() if len(line.split()) >= 2]
