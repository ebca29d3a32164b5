"""Sweep throughput: wall time, trial time, Ray/Tune overhead per trial, peak memory per trial.

    python benchmarks/bench_sweep.py                       # the seed preset on the built-in dataset
    python benchmarks/bench_sweep.py --load 200            # 200 two-epoch trials: Tune's bookkeeping
    python benchmarks/bench_sweep.py --analyze             # the default run as a user times it (report included)

Runs `instrument-sweep run` as a user does (a fresh local Ray, CPU trials side by
side) and reads the experiment back. Ray overhead per trial is
(wall - startup - sum of trial times / concurrency) / trials, where a trial's time
is what its own process spent from start to last report (Tune's time_total_s) and
startup (CLI, dataset, starting Ray) is reported apart; the figure with startup
spread over the trials is printed too. With --analyze the sweep ends with its analysis, as
`instrument-sweep run` does, and `analysis_s` is the time from the summary table to the
command's end (Ray's stop is before the table). The machine is shared and noisy, so the sweep
runs --runs times (default 3): one JSON line per run, then a line of medians and a
table of them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import analysis  # noqa: E402

LOAD_LRS = [0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001, 0.0005, 0.0002, 0.0001]


def load_spec(n_trials: int) -> dict:
    """n_trials short trials (2 fixed epochs of a 16-unit net): all cost is bookkeeping."""
    points = len(LOAD_LRS) * 2
    return {"name": f"load-{n_trials}", "train": {"n_hidden": 16},
            "stop": {"threshold": None, "max_epochs": 2},
            "views": {"grid": {"lr": LOAD_LRS, "batch_size": [64, 128]}},
            "repeats": -(-n_trials // points)}


def run_once(args: argparse.Namespace, spec: str, storage: str) -> dict:
    """One `instrument-sweep run` (--no-analyze unless --analyze), timed from outside, read back
    from its files."""
    started = time.perf_counter()
    run = subprocess.Popen([sys.executable, "-m", "tune_jobs", "run", spec, "--data", args.data, "--storage",
                            storage, "--name", "bench", *([] if args.analyze else ["--no-analyze"])],
                           stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    marks: dict[str, float] = {}

    def read() -> None:
        for line in run.stdout:  # "results: ..." once Ray is up, just before the trials start;
            for mark, start in (("ready", "results:"), ("summary", "trial  lr")):  # the summary once Ray stopped
                if line.startswith(start):
                    marks[mark] = time.perf_counter() - started

    reader = threading.Thread(target=read)
    reader.start()
    code = run.wait()
    wall_s = time.perf_counter() - started  # the command's own end, as a shell times it
    reader.join()
    if code != 0:
        raise SystemExit(f"instrument-sweep run failed with exit code {code}")
    ready_s = marks["ready"]
    epochs = analysis.load_epochs(str(Path(storage, "bench")))

    last = epochs.groupby("trial_id").tail(1)
    n_trials = len(last)
    concurrency = max(1, os.cpu_count() or 1)  # one CPU per trial by default
    trial_s = float(last.time_total_s.sum())
    return {
        "bench": "sweep",
        "spec": f"load-{args.load}" if args.load else args.preset,
        "trials": n_trials,
        "concurrency": concurrency,
        "wall_s": round(wall_s, 2),
        "startup_s": round(ready_s, 2),  # CLI, dataset, Ray start: once per sweep
        "sum_trial_s": round(trial_s, 2),
        "time_to_accuracy_sum_s": round(float(last.time_s.sum()), 2),
        "between_epochs_sum_s": round(float(last.overhead_time_s.sum()), 2),
        "overhead_per_trial_s": round((wall_s - ready_s - trial_s / concurrency) / n_trials, 3),
        "overhead_per_trial_with_startup_s": round((wall_s - trial_s / concurrency) / n_trials, 3),
        # Tune's bookkeeping (scheduling, actors, results, Ray start) per second of trial time.
        "tune_overhead_ratio": round((wall_s * concurrency - trial_s) / trial_s, 2),
        # Resident memory of a trial's process, sampled after every epoch; the largest over all trials.
        "peak_rss_per_trial_mib": round(float(epochs.rss_mib.max()), 1),
        **({"analysis_s": round(wall_s - marks["summary"], 2)} if args.analyze else {}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--preset", default="seed")
    parser.add_argument("--load", type=int, metavar="N", help="instead: N short trials (Tune bookkeeping)")
    parser.add_argument("--data", default="synthetic")
    parser.add_argument("--runs", type=int, default=3, help="sweeps to run; medians are reported (default 3)")
    parser.add_argument("--analyze", action="store_true", help="end each sweep with its analysis, as `run` does")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        spec = args.preset
        if args.load:
            spec = str(Path(tmp, "load.yaml"))
            Path(spec).write_text(yaml.safe_dump(load_spec(args.load)))
        if args.data == "synthetic":  # generate (or find) the built-in dataset outside the timing
            subprocess.run([sys.executable, "-m", "tune_jobs", "data", "info", "synthetic"], check=True,
                           capture_output=True)
        rows = []
        for number in range(args.runs):
            rows.append(run_once(args, spec, str(Path(tmp, f"run{number}"))))
            print(json.dumps({**rows[-1], "run": number + 1}), flush=True)

    median = {key: (statistics.median(row[key] for row in rows) if isinstance(value, float) else value)
              for key, value in rows[0].items()}
    print(json.dumps({**median, "run": f"median of {len(rows)}"}))
    width = max(map(len, median))
    for key, value in median.items():
        print(f"{key:<{width}}  {value}")


if __name__ == "__main__":
    main()
