"""A sweep's wall time against its training: where the rest goes, with a baseline in the same run.

    python benchmarks/bench_sweep.py --analyze                        # the default run, as a user times it
    python benchmarks/bench_sweep.py --analyze --baseline-rev main --runs 5 --out /tmp/38-split.json
    python benchmarks/bench_sweep.py                                  # --no-analyze: the sweep alone
    python benchmarks/bench_sweep.py --load 200                       # 200 two-epoch trials: Tune's bookkeeping

Runs `instrument-sweep run` (the seed preset on the built-in dataset, cached beforehand) as a user
does, on a fresh local Ray (CPU trials side by side; on a GPU machine one trial per GPU), and
splits each sweep's wall time (benchmarks/timeline.py): before the first epoch, the trials' own
times and their ideal schedule on the cluster's slots (longest first), gaps between trials, after
the last epoch; and the target, the wall time within 1.25 x the ideal schedule + 2 s. Also: Ray
overhead per trial, (wall - startup - sum of trial times / slots) / trials, with a trial's time as
Tune counts it (time_total_s: its process from start to last report) and startup the command's
start to its "results:" line; the time between epochs; a trial process's peak memory; with
--analyze, analysis_s, the summary table to the command's end.

The machine is shared and noisy: the sweep runs --runs times (default 3), and with --baseline-rev
that commit's code (git archive) runs too, interleaved (baseline, this checkout, this checkout,
baseline, ...), so the two meet the same load; medians and their ratios (this / baseline) are
printed, one JSON line per sweep first, and written to --out with the machine's load averages.
On a GPU node, benchmarks/gpu_node.sh runs it after the GPU check where SWEEP_SPLIT=N is set.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import analysis  # noqa: E402
from benchmarks import timeline  # noqa: E402
from tune_jobs.spec import read_spec  # noqa: E402

LOAD_LRS = [0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001, 0.0005, 0.0002, 0.0001]
RATIO_KEYS = ("wall_s", "before_first_epoch_s", "trials_span_s", "after_last_epoch_s", "sum_trial_s",
              "lpt_schedule_s", "between_trials_s", "idle_at_end_s", "fixed_s", "overhead_per_trial_s")


def load_spec(n_trials: int) -> dict:
    """n_trials short trials (2 fixed epochs of a 16-unit net): all cost is bookkeeping."""
    points = len(LOAD_LRS) * 2
    return {"name": f"load-{n_trials}", "train": {"n_hidden": 16},
            "stop": {"threshold": None, "max_epochs": 2},
            "views": {"grid": {"lr": LOAD_LRS, "batch_size": [64, 128]}},
            "repeats": -(-n_trials // points)}


def run_once(args: argparse.Namespace, spec: str, storage: str, code_root: Path) -> dict:
    """One `instrument-sweep run` (--no-analyze unless --analyze) with `code_root`'s code, timed from
    outside, read back from its files."""
    load_before = os.getloadavg()[0]
    command = timeline.run_command(["run", spec, "--data", args.data, "--storage", storage, "--name", "bench",
                                    *([] if args.analyze else ["--no-analyze"])], code_root)
    if command.exit_code != 0:
        raise SystemExit(f"instrument-sweep run failed with exit code {command.exit_code}:\n"
                         + "".join(command.lines[-30:]))
    experiment = str(Path(storage, "bench"))
    epochs = analysis.load_epochs(experiment)
    _, cpus, gpus = command.cluster()
    n_slots = timeline.slots(command, read_spec(experiment).ray_resources(gpus, cpus))
    split = timeline.split(command, timeline.trial_spans(epochs), n_slots)
    wall_s, ready_s = command.wall_s, command.marks["results"]
    last = epochs.groupby("trial_id").tail(1)
    n_trials, trial_s = len(last), float(last.time_total_s.sum())
    return {
        "bench": "sweep",
        "spec": f"load-{args.load}" if args.load else args.preset,
        **split,
        "startup_s": round(ready_s, 2),  # CLI, dataset, Ray start: once per sweep
        "sum_time_total_s": round(trial_s, 2),
        "time_to_accuracy_sum_s": round(float(last.time_s.sum()), 2),
        "between_epochs_sum_s": round(float(last.overhead_time_s.sum()), 2),
        "overhead_per_trial_s": round((wall_s - ready_s - trial_s / n_slots) / n_trials, 3),
        "overhead_per_trial_with_startup_s": round((wall_s - trial_s / n_slots) / n_trials, 3),
        # Resident memory of a trial's process, sampled after every epoch; the largest over all trials.
        "peak_rss_per_trial_mib": round(float(epochs.rss_mib.max()), 1),
        **({"analysis_s": round(wall_s - command.marks["summary"], 2)} if args.analyze else {}),
        # What each trial ended with: the same code and data give the same (the figures' inputs).
        "outcomes": {int(r.trial_number): [r.status, int(r.epoch), round(float(r.test_acc), 4)]
                     for r in last.itertuples()},
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


def medians(rows: list[dict]) -> dict:
    """Each measured figure's median over `rows` (the floats); counts and the rest as the first row has them."""
    return {key: round(statistics.median(row[key] for row in rows), 3) if isinstance(value, float) else value
            for key, value in rows[0].items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--preset", default="seed")
    parser.add_argument("--load", type=int, metavar="N", help="instead: N short trials (Tune bookkeeping)")
    parser.add_argument("--data", default="synthetic")
    parser.add_argument("--runs", type=int, default=3, help="sweeps to run (of each code); medians are reported")
    parser.add_argument("--analyze", action="store_true", help="end each sweep with its analysis, as `run` does")
    parser.add_argument("--baseline-rev", metavar="REV", help="also run this commit's code, interleaved (e.g. main)")
    parser.add_argument("--out", type=Path, help="write every run, the medians and ratios here (JSON)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        spec = args.preset
        if args.load:
            spec = str(Path(tmp, "load.yaml"))
            Path(spec).write_text(yaml.safe_dump(load_spec(args.load)))
        if args.data == "synthetic":  # generate (or find) the built-in dataset outside the timing
            subprocess.run([sys.executable, "-m", "tune_jobs", "data", "info", "synthetic"], check=True,
                           capture_output=True)
        codes = {"current": timeline.ROOT}
        if args.baseline_rev:
            codes = {"baseline": timeline.export(args.baseline_rev, Path(tmp, "baseline")), **codes}
        runs: dict[str, list[dict]] = {name: [] for name in codes}
        for number in range(args.runs):
            order = list(codes) if number % 2 == 0 else list(reversed(codes))  # ABBA: both meet the same load
            for name in order:
                row = run_once(args, spec, str(Path(tmp, f"{name}-{number}")), codes[name])
                runs[name].append({"code": name, "run": number + 1, **row})
                print(json.dumps(runs[name][-1]), flush=True)

    median = {name: medians(rows) for name, rows in runs.items()}
    commit = subprocess.run(["git", "-C", str(timeline.ROOT), "rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or os.environ.get("INSTRUMENT_SWEEP_COMMIT", "")  # a copy without .git
    out = {"commit": commit,
           "baseline_rev": args.baseline_rev, "machine": f"{os.cpu_count()} cores, {platform.platform()}",
           "versions": {p: metadata.version(p) for p in ("ray", "torch")}, "python": platform.python_version(),
           "median": median, "runs": runs}
    if "baseline" in median:
        out["ratio"] = {key: round(median["current"][key] / median["baseline"][key], 3) for key in RATIO_KEYS
                        if median["baseline"].get(key)}
        out["same_outcomes"] = all(row["outcomes"] == runs["baseline"][0]["outcomes"]
                                   for rows in runs.values() for row in rows)
    for name, row in median.items():
        print(json.dumps({**row, "run": f"median of {len(runs[name])}"}))
    shown = [key for key, value in median["current"].items() if not isinstance(value, (dict, list))]
    width = max(map(len, shown))
    print(f"\n{'median':<{width}}  " + "  ".join(f"{name:>10}" for name in median)
          + ("  {:>10}".format("ratio") if "ratio" in out else ""))
    for key in shown:
        cells = "  ".join(f"{str(m.get(key)):>10}" for m in median.values())
        print(f"{key:<{width}}  {cells}" + (f"  {out['ratio'][key]:>10}" if key in out.get("ratio", {}) else ""))
    if "same_outcomes" in out:
        print(f"same trials, stop epochs and test accuracy in every run: {out['same_outcomes']}")
    if args.out:
        args.out.write_text(json.dumps(out, indent=1) + "\n")
        print(f"written: {args.out}")


if __name__ == "__main__":
    main()
