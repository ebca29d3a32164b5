"""How close a short trial's energy comes to the truth on a stepped counter, before and after replay.

    python benchmarks/bench_energy_error.py                  # on the fake NVML counter (100 ms steps, 250 W)
    python benchmarks/bench_energy_error.py --trials 20 --real   # on this machine's own GPU

Each trial: 60 epochs of about 20 ms, with 6 ms of "reporting" between epochs
(the excluded windows), as a fast-loop trial on a GPU. On the fake counter the
true energy is 250 W x time. Prints one JSON line per method:
- `direct`: the sum of epoch windows (what a trial measured before replay);
- `direct+approx`: the same with Zeus's approx_instant_energy (windows that saw no
  counter step get instant power x time);
- `direct (trial)`: the trial's own run, a window from one counter update to another, read at each
  report point, the GPU's idle power subtracted over the gaps;
- `settled`: what a trial reports now (replayed in one window when too coarse);
with the ratio measured/true (min, median, max), how often `energy_err_j` covered the
true error, and the median err / observed 95th-percentile error.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAKE_NVML = ROOT / "tests" / "fake_nvml"
POWER_W = 250.0
EPOCHS, EPOCH_S, GAP_S = 60, 0.020, 0.006


def windows_only(approx: bool) -> tuple[float, float]:
    """Sum of 60 epoch windows of EPOCH_S with GAP_S gaps, straight from ZeusMonitor (over the GPU a
    trial here would measure: this process's first CUDA device, found by UUID)."""
    import warnings

    from trainables.training.gpus import trial_gpus, zeus_monitor

    warnings.filterwarnings("ignore", message="The energy consumption of one or more GPUs was measured as zero")
    gpus = trial_gpus()
    if not gpus.measured:
        raise SystemExit(f"no GPU energy to measure here: {gpus.note or 'no CUDA device'}")
    monitor = zeus_monitor([gpus.gpu], cpu=False, approx_instant_energy=approx)
    joules = seconds = 0.0
    for epoch in range(EPOCHS):
        monitor.begin_window(f"e{epoch}", sync_execution=False)
        time.sleep(EPOCH_S)
        m = monitor.end_window(f"e{epoch}", sync_execution=False)
        joules, seconds = joules + sum(m.gpu_energy.values()), seconds + m.time
        time.sleep(GAP_S)
    return joules, seconds


def one_trial() -> dict:
    """A real TrainingRun sized for ~EPOCH_S epochs, GAP_S between epochs, then settle_energy."""
    import numpy as np

    from trainables.data.splits import prepare_splits
    from trainables.training.config import TrainConfig
    from trainables.training.energy import EnergyMeter
    from trainables.training.replay import settle_energy
    from trainables.training.run import TrainingRun
    from trainables.training.stop import StopRule

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(4000, 32)).astype(np.float32), rng.integers(0, 4, 4000)
    splits = prepare_splits(x, y, x[:200], y[:200], 0.2, 0)
    run = TrainingRun(splits, TrainConfig(batch_size=256, n_hidden=64), StopRule(threshold=None, max_epochs=EPOCHS),
                      meter=EnergyMeter(cpu=False))
    while True:
        report = run.run_epoch(report_point=True)  # the trial reports after every epoch, for GAP_S
        if run.done:
            break
        time.sleep(GAP_S)
    settled = settle_energy(run, report, budget_s=10.0)
    return {"direct": [report.energy_j, report.time_s, report.energy_err_j],
            "settled": [settled.energy_j, settled.time_s, settled.energy_err_j], "replays": settled.replays}


def summary(name: str, rows: list[list[float]]) -> dict:
    ratios = [j / (POWER_W * s) for j, s, *_ in rows]
    out = {"method": name, "trials": len(rows), "ratio_min": round(min(ratios), 3),
           "ratio_median": round(statistics.median(ratios), 3), "ratio_max": round(max(ratios), 3)}
    if all(len(r) > 2 for r in rows):
        errors = sorted(abs(j - POWER_W * s) for j, s, _ in rows)
        p95 = errors[max(0, int(0.95 * len(errors)) - 1)]
        out["err_covers"] = sum(abs(j - POWER_W * s) <= e for j, s, e in rows) / len(rows)
        out["err_over_p95"] = round(statistics.median(e for *_, e in rows) / p95, 2) if p95 > 0 else None
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--real", action="store_true", help="this machine's GPU instead of the fake counter")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.worker and not args.real:  # re-run under the fake counter
        path = os.pathsep.join([str(FAKE_NVML), str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
        env = {**os.environ, "PYTHONPATH": path, "FAKE_NVML_POWER_W": "250"}
        sys.exit(subprocess.call([sys.executable, __file__, "--worker", "--trials", str(args.trials)], env=env))
    sys.path.insert(0, str(ROOT))
    direct = [windows_only(approx=False) for _ in range(args.trials)]
    approx = [windows_only(approx=True) for _ in range(args.trials)]
    trials = [one_trial() for _ in range(args.trials)]
    for line in (summary("direct (epoch windows)", direct), summary("direct+approx_instant_energy", approx),
                 summary("direct (trial, with energy_err_j)", [t["direct"] for t in trials]),
                 {**summary("settled (replayed where needed)", [t["settled"] for t in trials]),
                  "replays_median": statistics.median(t["replays"] for t in trials)}):
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
