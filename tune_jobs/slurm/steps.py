"""The sweep of a Slurm job ends the job's Ray steps as it exits, so each removes Ray's temp dir
(and the head's, the job's token) before the job ends: Slurm kills a job's steps at once (SIGKILL,
no SIGTERM first) when its script ends.

    export INSTRUMENT_SWEEP_RAY_STEPS="$steps"   # the job script: the `ray start` steps' srun pids
    end_steps_at_exit()                          # the sweep (tune_jobs.cli.entry), as it starts

`srun` passes SIGUSR1 on to its step's processes (SIGTERM it would turn into SIGKILL), where
tune_jobs.slurm.in_job's `run_then_remove` ends Ray and removes its temp dir. No project imports:
the command's entry point and the job script's writer both use it.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import time
from collections.abc import Sequence

RAY_STEPS_ENV = "INSTRUMENT_SWEEP_RAY_STEPS"  # the `ray start` steps' srun pids, for the job's sweep to end
END_STEPS_WITHIN_S = 60.0  # how long the sweep waits for its Ray steps to end as it exits


def end_steps_at_exit() -> None:
    """In a job's sweep (RAY_STEPS_ENV set; taken out of the environment, so nothing it starts sees it):
    `end_steps` as this process exits, after Ray's own exit handlers."""
    pids = [int(pid) for pid in os.environ.pop(RAY_STEPS_ENV, "").split() if pid.isdigit()]
    if pids:
        atexit.register(end_steps, pids)


def end_steps(pids: Sequence[int], within_s: float = END_STEPS_WITHIN_S) -> None:
    """End the `ray start` steps whose srun has one of `pids` (this process's children; others are left
    alone): SIGUSR1 to each srun, which passes it on to its step's processes (`run_then_remove` then ends
    Ray and removes its temp dir), and wait up to `within_s` for them to end."""
    ending = []
    for pid in pids:
        try:
            if os.waitpid(pid, os.WNOHANG)[0]:  # already ended: reaped now
                continue
        except ChildProcessError:  # not this process's child
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGUSR1)
        ending.append(pid)
    deadline = time.monotonic() + within_s
    while ending and time.monotonic() < deadline:
        time.sleep(0.1)
        ending = [pid for pid in ending if not os.waitpid(pid, os.WNOHANG)[0]]
