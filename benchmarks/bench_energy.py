"""Cost of an energy window boundary: what `EnergyMeter.lap()` adds between two epochs.

    python benchmarks/bench_energy.py            # this machine's GPUs / RAPL, whatever Zeus finds

lap() ends one Zeus window and begins the next (on a GPU: a CUDA sync and two
NVML counter reads). Prints one JSON line: source, laps timed, median and p99
microseconds per lap, and the ratio to a 10 ms epoch.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainables.training.energy import EnergyMeter  # noqa: E402

LAPS = 2000


def main() -> None:
    meter = EnergyMeter()
    meter.start()
    for _ in range(50):  # warm-up
        meter.lap()
    costs = []
    for _ in range(LAPS):
        started = time.perf_counter()
        meter.lap()
        costs.append(time.perf_counter() - started)
    meter.stop()
    costs.sort()
    median_us = statistics.median(costs) * 1e6
    row = {"bench": "energy_lap", "source": meter.source, "laps": LAPS, "median_us": round(median_us, 1),
           "p99_us": round(costs[int(0.99 * LAPS)] * 1e6, 1), "share_of_10ms_epoch": round(median_us / 1e4, 4)}
    print(json.dumps(row))


if __name__ == "__main__":
    main()
