"""Cost of an energy window's boundaries: what a report point and a run's two ends add to a trial.

    python benchmarks/bench_energy.py            # this machine's GPUs / RAPL, whatever Zeus finds

A report point reads the counters once (`EnergyMeter.read_gpu`, `read_cpu`: on a GPU a CUDA sync
and one NVML read); a run's window starts and ends on a GPU counter update (`gpu_update`: about
half a counter period's wait each). Prints one JSON line: source, reads timed, median and p99
microseconds per report point, the ratio to a 10 ms epoch, and the median wait for an update.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainables.training.energy import EnergyMeter  # noqa: E402

READS = 2000
UPDATES = 10


def main() -> None:
    meter = EnergyMeter()
    for _ in range(50):  # warm-up
        meter.read_gpu(), meter.read_cpu()
    costs = []
    for _ in range(READS):
        started = time.perf_counter()
        meter.read_gpu(), meter.read_cpu()
        costs.append(time.perf_counter() - started)
    waits = []
    for _ in range(UPDATES if meter.gpu_measured else 0):
        started = time.perf_counter()
        meter.gpu_update()
        waits.append(time.perf_counter() - started)
    costs.sort()
    median_us = statistics.median(costs) * 1e6
    row = {"bench": "energy_boundary", "source": meter.source, "reads": READS, "median_us": round(median_us, 1),
           "p99_us": round(costs[int(0.99 * READS)] * 1e6, 1), "share_of_10ms_epoch": round(median_us / 1e4, 4),
           "update_wait_median_s": round(statistics.median(waits), 4) if waits else None}
    print(json.dumps(row))


if __name__ == "__main__":
    main()
