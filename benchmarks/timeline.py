"""A sweep's wall time, split: before the first epoch, training, gaps between trials, after the last epoch.

    from benchmarks import timeline
    command = timeline.run_command(["run", "--preset", "seed", "--storage", "/tmp/s", "--name", "x"])
    rows = timeline.trial_spans(analysis.load_epochs("/tmp/s/x"))
    split = timeline.split(command, rows, slots=timeline.slots(command, spec))

The shared part of the benchmarks that time whole sweeps (bench_sweep.py; a GPU run's sweep):
`run_command` runs one `instrument-sweep` command as a user does and notes when its landmark
lines appear; `trial_spans` reads each trial's span from its epoch rows (wall-clock `started_at_s`
and `ended_at_s`, `epoch_time_s`); `split` puts the two together. Every figure is in seconds:

- before_first_epoch_s: the command's start to the first epoch's start, and within it the
  landmarks (`marks`: the data line, the cluster line, the first trial's process at work, its
  first epoch);
- training: each trial's own time (its first epoch's start to its last report: its epochs, the
  reporting between them, replays), their sum and the longest; the ideal schedule of those times
  on the cluster's `slots` (trials that can run at once): longest-processing-time-first list
  scheduling (`lpt_schedule_s`, what the benchmarks call ideal) and the lower bound
  max(longest, sum / slots);
- gaps: the slot-seconds in the trials' span where a slot trained nothing: between_trials_s (a
  slot from one trial's last report to its next trial's first epoch: the trial's hand-over and
  setup), waiting_to_start_s (a slot before its first trial) and idle_at_end_s (a slot after its
  last, while others still train);
- after_last_epoch_s: the last report to the command's end (summary, report, Ray's stop), and
  within it the summary and report lines;
- target_s = 1.25 x lpt_schedule_s + 2 s: a sweep as fast as its training, give or take;
  target_with_setup_s the same with each trial's time counted from its call (its own setup
  included, as Tune's time_total_s counts it: lpt_schedule_with_setup_s).

A slot's trials are found from their spans (`lanes`): a trial starts on the slot that freed
last before it, so a sweep whose trials overlap more than `slots` at once (another cluster) is
split on more lanes, and says so (`lanes` in the split).
"""

from __future__ import annotations

import heapq
import math
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Landmark lines of `instrument-sweep run` (their first appearance), by name.
LANDMARKS = {"data": "data:", "cluster": "cluster:", "results": "results:", "summary": "trial  lr",
             "report": "report:"}
CLUSTER_LINE = re.compile(r"cluster: .*?(\d+) node\(s\), ([\d.]+) CPUs, ([\d.]+) GPUs")
TARGET_FACTOR, TARGET_PLUS_S = 1.25, 2.0  # the target: a sweep within 1.25 x its ideal schedule + 2 s


@dataclass
class Command:
    """One timed command: its start (wall clock, Unix seconds), wall time, exit code, output lines
    and when each landmark line first appeared (seconds after the start)."""

    started_at_s: float
    wall_s: float
    exit_code: int
    lines: list[str] = field(default_factory=list)
    marks: dict[str, float] = field(default_factory=dict)

    def cluster(self) -> tuple[int, float, float]:
        """(nodes, CPUs, GPUs) of the cluster line; (0, 0, 0) without one."""
        for line in self.lines:
            if found := CLUSTER_LINE.match(line):
                return int(found[1]), float(found[2]), float(found[3])
        return 0, 0.0, 0.0


def run_command(args: list[str], code_root: Path = ROOT, env: dict | None = None) -> Command:
    """`python -m tune_jobs ARGS` with `code_root`'s code (its tree first on PYTHONPATH), its output
    read line by line as it comes (landmarks timed on arrival)."""
    env = {**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(code_root), (env or os.environ).get("PYTHONPATH")) if p)}
    started_at_s, started = time.time(), time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "tune_jobs", *args], cwd=code_root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    command = Command(started_at_s, 0.0, 0)

    def read() -> None:
        for line in proc.stdout:
            command.lines.append(line)
            for mark, start in LANDMARKS.items():
                if mark not in command.marks and line.startswith(start):
                    command.marks[mark] = time.perf_counter() - started

    reader = threading.Thread(target=read)
    reader.start()
    command.exit_code = proc.wait()
    command.wall_s = time.perf_counter() - started  # the command's own end, as a shell times it
    reader.join()
    return command


def export(rev: str, into: Path) -> Path:
    """`rev`'s tree (git archive) in `into`, to run that commit's code beside this checkout's."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


@dataclass(frozen=True)
class Span:
    """One trial's wall-clock span (Unix seconds): its process at work (the trial function called),
    its first epoch's start and its last report."""

    trial: int
    called_at_s: float
    first_epoch_at_s: float
    ended_at_s: float

    @property
    def own_s(self) -> float:
        """Its training: first epoch to last report."""
        return self.ended_at_s - self.first_epoch_at_s

    @property
    def called_s(self) -> float:
        """Its whole call: its own setup (torch's import in a new process, data, model) and training,
        as Tune's time_total_s counts a trial."""
        return self.ended_at_s - self.called_at_s


def trial_spans(epochs) -> list[Span]:
    """Each trial's span from its epoch rows (a DataFrame of `analysis.load_epochs`). A retried
    trial's span runs from its first attempt's first epoch to its last report (the time between
    attempts counts as its own: a retry is not a fixed cost)."""
    spans = []
    for number, rows in epochs.groupby("trial_number"):
        first = rows.loc[rows.ended_at_s.idxmin()]
        spans.append(Span(int(number), float(first.started_at_s),
                          float(first.ended_at_s) - float(first.epoch_time_s), float(rows.ended_at_s.max())))
    return sorted(spans, key=lambda s: s.first_epoch_at_s)


def slots(command: Command, per_trial: dict[str, float]) -> int:
    """How many trials the command's cluster runs at once, for trials that each ask `per_trial`
    ({"cpu": ..., "gpu": ...}, `SweepSpec.ray_resources`)."""
    _, cpus, gpus = command.cluster()
    fits = [math.floor(have / per_trial[kind] + 1e-9) for kind, have in (("cpu", cpus), ("gpu", gpus))
            if per_trial.get(kind, 0) > 0]
    return max(1, min(fits, default=1))


def lpt_schedule_s(times: list[float], n_slots: int) -> float:
    """The makespan of longest-processing-time-first list scheduling of `times` on `n_slots`."""
    loads = [0.0] * max(1, n_slots)
    for t in sorted(times, reverse=True):
        heapq.heappush(loads, heapq.heappop(loads) + t)
    return max(loads)


def lanes(spans: list[Span], n_slots: int) -> list[list[Span]]:
    """The trials by slot: each, in order of its first epoch, on the slot that freed last before it
    (a trial starts as a slot frees: the slot that freed just before it is its own; an earlier one
    idled, with nothing waiting), or a new slot where none is free (more trials at once than
    `n_slots`)."""
    ends: list[float] = [-math.inf] * n_slots
    by_lane: list[list[Span]] = [[] for _ in range(n_slots)]
    for span in spans:
        free = [lane for lane, end in enumerate(ends) if end <= span.first_epoch_at_s]
        if free:
            lane = max(free, key=lambda lane: ends[lane])
        else:
            lane = len(ends)
            ends.append(-math.inf)
            by_lane.append([])
        by_lane[lane].append(span)
        ends[lane] = span.ended_at_s
    return [lane for lane in by_lane if lane]


def split(command: Command, spans: list[Span], n_slots: int) -> dict:
    """The command's wall time split (see the module docstring), figures rounded to ms."""
    t0, wall = command.started_at_s, command.wall_s
    start, end = min(s.first_epoch_at_s for s in spans), max(s.ended_at_s for s in spans)
    first = min(spans, key=lambda s: s.first_epoch_at_s)
    own = [s.own_s for s in spans]
    by_lane = lanes(spans, n_slots)
    between = sum(b.first_epoch_at_s - a.ended_at_s for lane in by_lane for a, b in zip(lane, lane[1:]))
    ideal = lpt_schedule_s(own, n_slots)
    marks = {name: command.marks[name] for name in ("data", "cluster") if name in command.marks}
    marks.update(first_trial_called=first.called_at_s - t0, first_epoch=start - t0, last_report=end - t0)
    marks.update({name: command.marks[name] for name in ("summary", "report") if name in command.marks})
    figures = {
        "wall_s": wall,
        "before_first_epoch_s": start - t0,
        "trials_span_s": end - start,
        "after_last_epoch_s": t0 + wall - end,
        "sum_trial_s": sum(own),
        "longest_trial_s": max(own),
        "lpt_schedule_s": ideal,
        "lower_bound_s": max(max(own), sum(own) / n_slots),
        "between_trials_s": between,
        "waiting_to_start_s": sum(lane[0].first_epoch_at_s - start for lane in by_lane),
        "idle_at_end_s": sum(end - lane[-1].ended_at_s for lane in by_lane),
        "trial_setup_s": sum(s.first_epoch_at_s - s.called_at_s for s in spans),
        "fixed_s": wall - ideal,
        "target_s": TARGET_FACTOR * ideal + TARGET_PLUS_S,
        # The same with each trial's own setup counted as its time (Tune's time_total_s).
        "sum_trial_with_setup_s": sum(s.called_s for s in spans),
        "lpt_schedule_with_setup_s": lpt_schedule_s([s.called_s for s in spans], n_slots),
    }
    figures["target_with_setup_s"] = TARGET_FACTOR * figures["lpt_schedule_with_setup_s"] + TARGET_PLUS_S
    rounded = {key: round(value, 3) for key, value in figures.items()}
    return {**rounded, "within_target": wall <= figures["target_s"],
            "within_target_with_setup": wall <= figures["target_with_setup_s"], "slots": n_slots, "lanes": len(by_lane),
            "trials": len(spans), "start_order": [s.trial for s in spans],
            "trial_s": {s.trial: round(s.own_s, 3) for s in sorted(spans, key=lambda s: s.trial)},
            "marks": {key: round(value, 3) for key, value in marks.items()}}
