"""The CPUs a process may run on (its affinity: under Slurm's CPU binding, the CPUs its job was given).

    affinity()                    # this process's, as Slurm and taskset write CPU lists: "0-3,8"
    cpu_ranges([0, 1, 2, 3, 8])   # "0-3,8"
"""

from __future__ import annotations

import os
from collections.abc import Iterable


def cpu_ranges(ids: Iterable[int]) -> str:
    """CPU ids as ranges, as Slurm and taskset write them: "0-3,8"."""
    ranges: list[list[int]] = []
    for i in sorted(set(ids)):
        if ranges and i == ranges[-1][1] + 1:
            ranges[-1][1] = i
        else:
            ranges.append([i, i])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)


def affinity() -> str:
    """The CPUs this process may run on (os.sched_getaffinity), as ranges; "" where the OS does not say."""
    return cpu_ranges(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else ""
