"""`instrument-sweep status` and `logs` for a Slurm job id: Slurm's state of the job, and its output.

    is_job_id("4242")                           # True: a plain number is a Slurm job id (Ray's: raysubmit_...)
    print(status_text(find("4242", "sweeps")))  # RUNNING, then where, the last progress line and the output file
    logs(find("4242", "sweeps"), follow=True)   # the job's output until the job ends

Slurm knows a job while it is pending or running and for MinJobAge (300 s by default) after it
ended (scontrol); later only its accounting does (sacct), where the cluster keeps one. The
output file is in the experiment's JOB_DIR: scontrol names it, and once Slurm has forgotten
the job it is looked for under the storage root.
"""

from __future__ import annotations

import codecs
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from analysis.storage import JOB_DIR, SPEC_FILE
from trainables.errors import InputError
from tune_jobs.slurm import client
from tune_jobs.slurm.job import JobFiles

ACTIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING", "SIGNALING",
          "STAGE_OUT", "REQUEUE_HOLD", "REQUEUE_FED"}
PROGRESS = re.compile(r"^\[\d+/\d+ done\] ")  # tune_jobs.progress's lines
SLURM_LINE = re.compile(r"^(srun|slurmstepd)\S*: ")  # Slurm's own, e.g. as it stops the Ray steps at the end
FOLLOW_POLL_S = 1.0


def is_job_id(text: str) -> bool:
    """Whether `text` reads as a Slurm job id (a number; NUMBER_INDEX for an array task)."""
    return bool(re.fullmatch(r"\d+(_\d+)?", text))


@dataclass(frozen=True)
class SlurmJob:
    job_id: str
    state: str  # Slurm's JobState ("ENDED" where Slurm no longer says)
    fields: dict  # scontrol's fields ({} once forgotten)
    exit_code: str  # "0:0" (exit code:signal) where known
    output: Path | None

    @property
    def active(self) -> bool:
        return self.state in ACTIVE


def find(job_id: str, storage_root: str) -> SlurmJob:
    """The job as Slurm knows it, and its output file; InputError where neither Slurm nor the storage root do."""
    client.require("scontrol")
    fields = client.job_fields(job_id)
    state, exit_code = fields.get("JobState", ""), fields.get("ExitCode", "")
    output = Path(fields["StdOut"]) if fields.get("StdOut") else None
    if not fields:
        state, exit_code = client.accounted_state(job_id)
        found = sorted(Path(storage_root).expanduser().absolute().glob(f"*/{JOB_DIR}/{job_id}.out"))
        output = found[0] if found else None
        if not state and output is None:
            raise InputError("JOB_ID", f"{job_id}: Slurm does not know this job (it forgets an ended job after "
                                       f"MinJobAge, 300 s by default, where it keeps no accounting), and no "
                                       f"experiment under {storage_root} has its output; give the sweep's --storage")
        state = state or "ENDED"
    return SlurmJob(job_id, state, fields, exit_code, output)


def status_text(job: SlurmJob) -> str:
    """The state on the first line (as for a Ray job), then where and how far the sweep is."""
    f = job.fields
    if job.state == "PENDING":
        where = f"pending ({f.get('Reason', '?')})"
    elif job.active:
        where = f"on {f.get('NodeList', '?')} for {f.get('RunTime', '?')} of {f.get('TimeLimit', '?')}"
    else:
        code = job.exit_code.partition(":")[0]
        where = "ended" + (f" with exit code {code}" if code and job.state != "CANCELLED" else "")
    lines = [job.state, f"job:      Slurm job {job.job_id} {where}"]
    text = read_output(job).decode(errors="replace")
    progress = [line for line in text.splitlines() if PROGRESS.match(line)]
    if progress:
        lines.append(f"progress: {progress[-1]}")
    unfinished = not job.active and job.state != "COMPLETED"
    if unfinished and job.state != "CANCELLED":  # the sweep's last word: its error, or why it stopped
        last = next((line for line in reversed(text.splitlines()) if line.strip() and not SLURM_LINE.match(line)), "")
        lines += [f"last:     {last}"] if last and last not in progress else []
    if not job.active and (job.output is None or not job.output.is_file()):  # its node could not write it
        where = f" ({job.output})" if job.output is not None else ""
        lines.append(f"output:   no output file{where}: is --storage shared with the compute nodes? The job's "
                     "first node writes it there, into the experiment's slurm/ folder")
    elif job.output is not None:
        lines.append(f"output:   {job.output}")
    if job.output is not None:
        files = JobFiles(str(job.output.parent.parent))  # EXPERIMENT/JOB_DIR/JOBID.out
        if unfinished and Path(files.experiment, SPEC_FILE).exists():
            unsure = "if unfinished: " if job.state == "ENDED" else ""  # Slurm no longer says how it ended
            lines.append(f"resume:   {unsure}{files.resume_command}")
    return "\n".join(lines)


def read_output(job: SlurmJob, offset: int = 0) -> bytes:
    """The job's output from byte `offset` on (b"" where there is none yet)."""
    if job.output is None:
        return b""
    try:
        with open(job.output, "rb") as f:
            f.seek(offset)
            return f.read()
    except OSError:
        return b""


def logs(job: SlurmJob, follow: bool = False) -> None:
    """Print the job's output; with `follow`, as it grows, until the job has ended and all is printed."""
    offset, told, decoder = 0, False, codecs.getincrementaldecoder("utf-8")(errors="replace")
    while True:
        chunk = read_output(job, offset)  # may end inside a character: the decoder keeps its start
        offset += len(chunk)
        sys.stdout.write(decoder.decode(chunk))
        sys.stdout.flush()
        if not offset and job.active and not told:
            print(f"Slurm job {job.job_id} is {job.state}: no output yet (it goes to {job.output})", file=sys.stderr,
                  flush=True)
            told = True
        if not follow or not job.active:
            return
        time.sleep(FOLLOW_POLL_S)
        fresh = client.job_fields(job.job_id)
        job = SlurmJob(job.job_id, fresh.get("JobState", "ENDED"), fresh or job.fields, fresh.get("ExitCode", ""),
                       job.output)
