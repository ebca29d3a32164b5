"""Where the seed sweep's wall time goes on the modelled H200, and how close each trial's joules come to the truth.

    python benchmarks/bench_energy_split.py                          # this checkout, on the fake H200
    python benchmarks/bench_energy_split.py --baseline-rev main      # ... and main's code first, same fake, same run
    python benchmarks/bench_energy_split.py --out /tmp/split.json --runs 2

Runs `instrument-sweep run --preset seed` as a user does (a local Ray, one GPU, the trials one after
another) on the fake NVML and CUDA of tests/fake_nvml with FAKE_NVML_PROFILE=H200: a 100 ms
counter read in 3.9 ms, 80 W idle without a CUDA context, 124 W with one, 673 W while an epoch
trains, a slow drift. The fake logs every counter read and every epoch (FAKE_NVML_STATS_DIR), so:

- the split (`split`): ray_start_s (the command's start to its "results:" line: CLI, dataset, Ray),
  trial_setup_s (inside the trials' spans, before and around the run: data, model, ...),
  training_s (the first runs' epochs), reporting_s (between epochs: reports, checkpoints),
  measurement_s (counter reads, waits for counter updates, idle probes: the trials'
  measurement_time_s; a baseline that lacks it: the fake's summed read time, and the reads it made
  inside its epoch and between-epoch windows are taken out of those), replays_s (the
  replays' work), analysis_s (the summary line to the command's end), other_s (the rest: Tune's
  scheduling, gaps between trials, Ray's stop). measurement_share = (measurement + replays) / wall.
  Each phase is one entry of an ordered dict, from the trials' rows (kept in the JSON, with each
  trial's wall-clock span), so a finer split (the ideal schedule of the trials on the GPU slots, the
  gaps between trials) extends it without running anything again.
- the truth (`truth`): each trial's headline joules against the model's over the same work
  (the epochs' true joules, from the fake's epoch log and power model), within its energy_err_j.

A baseline (`--baseline-rev REV`: that commit's code, exported with git archive, on this checkout's
fake) runs first, then this checkout, alternately for --runs; the JSON holds both and their ratios.
Writes --out (default benchmarks/results/energy-split-fake-H200.json) and prints one JSON line per
sweep, then a table. Needs about 3 minutes per sweep here (2 loaded cores).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAKE_NVML = ROOT / "tests" / "fake_nvml"
sys.path.insert(0, str(ROOT))

PROFILE = "H200"
PHASES = ("ray_start_s", "trial_setup_s", "training_s", "reporting_s", "measurement_s", "replays_s", "analysis_s",
          "other_s")


def run_sweep(code_root: Path, work: Path, name: str) -> dict:
    """One `instrument-sweep run --preset seed` with `code_root`'s code on the fake H200: its marks,
    its trials' last rows, the fake's read and epoch logs."""
    stats = work / f"{name}-stats"
    stats.mkdir(parents=True)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("CUDA_", "FAKE_", "RAY_ADDRESS"))},
           "PYTHONPATH": os.pathsep.join([str(FAKE_NVML), str(code_root)]), "FAKE_NVML_PROFILE": PROFILE,
           "FAKE_NVML_STATS_DIR": str(stats), "FAKE_NVML_T0": repr(time.time()),
           "RAY_OVERRIDE_RESOURCES": json.dumps({"GPU": 1}), "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "tune_jobs", "run", "--preset", "seed", "--storage",
                             str(work / name), "--name", "seed"], cwd=code_root, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    marks, lines = {}, []

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)
            for mark, start in (("ready", "results:"), ("summary", "trial  lr")):
                if line.startswith(start) and mark not in marks:
                    marks[mark] = time.perf_counter() - started

    reader = threading.Thread(target=read)
    reader.start()
    code = proc.wait()
    wall_s = time.perf_counter() - started
    reader.join()
    if code != 0:
        raise SystemExit(f"{name}: instrument-sweep run failed (exit {code}):\n{''.join(lines[-40:])}")
    import analysis

    epochs = analysis.load_epochs(str(work / name / "seed"))
    rows = [row for _, row in epochs.groupby("trial_id").tail(1).iterrows()]
    reads = [json.loads(path.read_text()) for path in stats.glob("*.json")]
    busy = [tuple(map(float, line.split())) for path in stats.glob("*.busy") for line in path.read_text().split("\n")
            if line]
    return {"name": name, "wall_s": wall_s, "marks": marks, "trials": [trial_row(r) for r in rows],
            "read_s": sum(r["read_s"] for r in reads), "reads": sum(r["reads"] for r in reads),
            "busy": sorted(busy), "t0": float(env["FAKE_NVML_T0"])}


TRIAL_KEYS = ("trial_number", "lr", "batch_size", "epoch", "status", "time_s", "energy_j", "energy_err_j",
              "energy_method", "replays", "first_run_time_s", "first_run_energy_j", "overhead_time_s",
              "measurement_time_s", "replay_time_s", "gpu_idle_w", "gpu_idle_no_context_w", "gpu_idle_after_w",
              "energy_uncertain", "energy_note", "started_at_s", "ended_at_s")


def trial_row(row) -> dict:
    """A trial's last row, the keys this benchmark reads (NaN where a baseline lacks them)."""
    return {key: _plain(row.get(key, math.nan)) for key in TRIAL_KEYS}


def _plain(value):
    return value.item() if hasattr(value, "item") else value


def split(sweep: dict) -> dict:
    """The sweep's wall time by phase (see the module docstring), in seconds, in order."""
    trials = sweep["trials"]
    total = lambda key: sum(_finite(t[key]) for t in trials)  # noqa: E731
    replays_s = sum(_finite(t["replays"]) * _finite(t["time_s"]) for t in trials if t["energy_method"] == "replay")
    measured = [t["measurement_time_s"] for t in trials if math.isfinite(_float(t["measurement_time_s"]))]
    training_s, reporting_s = total("first_run_time_s"), total("overhead_time_s")
    if measured:
        measurement_s = sum(measured)
    else:  # a baseline that read the counter at both ends of every epoch: those reads are in its windows
        measurement_s, read_s = sweep["read_s"], sweep["read_s"] / max(sweep["reads"], 1)
        inside_s = sum(max(int(t["epoch"]) - 1, 0) for t in trials) * read_s  # one read in each window
        training_s, reporting_s = training_s - inside_s, reporting_s - inside_s
    spans = sum(t["ended_at_s"] - t["started_at_s"] for t in trials)
    phases = {"ray_start_s": sweep["marks"].get("ready", math.nan),
              "trial_setup_s": spans - training_s - reporting_s - measurement_s - replays_s,
              "training_s": training_s, "reporting_s": reporting_s,
              "measurement_s": measurement_s, "replays_s": replays_s,
              "analysis_s": sweep["wall_s"] - sweep["marks"].get("summary", sweep["wall_s"])}
    phases["other_s"] = sweep["wall_s"] - sum(phases.values())
    return {key: round(phases[key], 3) for key in PHASES}


def truth(sweep: dict) -> list[dict]:
    """Each trial's headline joules against the model's true joules over the same work: the first run's
    (the span of its first 2 x epochs + 1 epoch-loop calls: train and validate each epoch, test the last;
    less its seconds outside first_run_time_s, where it reported and read the counter: the GPU idled) or,
    replayed, the replays' (the calls after those)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("fake_node", FAKE_NVML / "fake_node.py")  # not its pynvml
    fake_node = sys.modules["fake_node"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fake_node)
    gpu = fake_node.PROFILES[PROFILE]
    idle_w, load_w, drift = gpu["idle_w"], gpu["load_w"], gpu["drift_w_per_s"]
    busy = sweep["busy"]

    def true_j(a: float, b: float) -> float:  # the model's joules from a to b, context open
        base = idle_w * (b - a) + drift * ((b - sweep["t0"]) ** 2 - (a - sweep["t0"]) ** 2) / 2
        return base + (load_w - idle_w) * sum(max(0.0, min(e, b) - max(s, a)) for s, e in busy)

    rows = []
    for t in sweep["trials"]:
        calls = [(s, e) for s, e in busy if t["started_at_s"] <= s <= t["ended_at_s"]]
        per_run = 2 * int(t["epoch"]) + 1
        if t["energy_method"] == "replay":  # their epochs at load_w, the rest of their seconds idle
            work = calls[per_run:per_run * (1 + int(t["replays"]))]
            idle_then_w = idle_w + drift * ((work[0][0] + work[-1][1]) / 2 - sweep["t0"]) if work else math.nan
            true = (idle_then_w * t["replays"] * t["time_s"] + (load_w - idle_w) * sum(e - s for s, e in work)) / \
                t["replays"] if work else math.nan
        else:
            first = calls[:per_run]
            if first:  # the span less the run's seconds: where it reported, and read the counter there
                idle_then_w = idle_w + drift * ((first[0][0] + first[-1][1]) / 2 - sweep["t0"])
                true = true_j(first[0][0], first[-1][1]) - idle_then_w * (first[-1][1] - first[0][0] -
                                                                          t["first_run_time_s"])
            else:
                true = math.nan
        off = t["energy_j"] - true
        rows.append({"trial": t["trial_number"], "method": t["energy_method"], "replays": t["replays"],
                     "energy_j": round(t["energy_j"], 3), "true_j": round(true, 3), "off_j": round(off, 3),
                     "err_j": round(_float(t["energy_err_j"]), 3),
                     "within_error": bool(abs(off) <= _float(t["energy_err_j"])),
                     "rel_err": round(_float(t["energy_err_j"]) / t["energy_j"], 4) if t["energy_j"] else None})
    return rows


def _float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _finite(value) -> float:
    value = _float(value)
    return value if math.isfinite(value) else 0.0


def summarise(sweep: dict) -> dict:
    phases = split(sweep)
    rows = truth(sweep)
    return {"code": sweep["name"], "wall_s": round(sweep["wall_s"], 2), "split": phases,
            "measurement_share": round((phases["measurement_s"] + phases["replays_s"]) / sweep["wall_s"], 3),
            "counter_reads": sweep["reads"], "counter_read_s": round(sweep["read_s"], 2),
            "trials_within_error": sum(r["within_error"] for r in rows), "trials": len(rows),
            "max_rel_err": max((r["rel_err"] or 0.0) for r in rows) if rows else None,
            "truth": rows, "trial_rows": sweep["trials"]}


def export(rev: str, into: Path) -> Path:
    """`rev`'s tree (git archive), to run its code."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--baseline-rev", help="also run this commit's code first (e.g. main)")
    parser.add_argument("--runs", type=int, default=1, help="sweeps per code, alternating (default 1)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "energy-split-fake-H200.json")
    args = parser.parse_args()
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    subprocess.run([sys.executable, "-m", "tune_jobs", "data", "info", "synthetic"], check=True, capture_output=True,
                   cwd=ROOT)  # the built-in dataset, outside the timing
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-energy-split-") as tmp:
        codes = {"current": ROOT}
        if args.baseline_rev:
            codes = {"baseline": export(args.baseline_rev, Path(tmp, "baseline")), **codes}
        for run in range(args.runs):
            for name, code_root in codes.items():
                summary = summarise(run_sweep(code_root, Path(tmp), f"{name}-{run}"))
                summary["code"] = name
                results.setdefault(name, []).append(summary)
                print(json.dumps({k: v for k, v in summary.items() if k not in ("truth", "trial_rows")}), flush=True)
    medians = {name: {"wall_s": statistics.median(s["wall_s"] for s in runs),
                      "measurement_share": statistics.median(s["measurement_share"] for s in runs),
                      "split": {p: statistics.median(s["split"][p] for s in runs) for p in PHASES}}
               for name, runs in results.items()}
    out = {"commit": commit, "baseline_rev": args.baseline_rev, "profile": PROFILE, "runs": results, "median": medians}
    if "baseline" in medians:
        before, after = medians["baseline"], medians["current"]
        out["ratio"] = {"wall": round(after["wall_s"] / before["wall_s"], 3),
                        "measurement_share": round(after["measurement_share"] / before["measurement_share"], 3),
                        **{p: round(after["split"][p] / before["split"][p], 3) for p in PHASES
                           if before["split"][p] > 0}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    width = max(map(len, PHASES))
    print(f"\n{'phase':<{width}}  " + "  ".join(f"{name:>9}" for name in medians))
    for phase in (*PHASES, "measurement_share", "wall_s"):
        cells = [m["split"][phase] if phase in PHASES else m[phase] for m in medians.values()]
        print(f"{phase:<{width}}  " + "  ".join(f"{c:9.3f}" for c in cells))
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
