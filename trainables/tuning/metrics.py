"""Live per-epoch metrics of every trial, through Ray's metrics pipeline (Prometheus format).

    ray start --head --metrics-export-port=8080 ...   # each node serves its metrics on that port
    instrument-sweep run --address 127.0.0.1:6379
    curl -s 127.0.0.1:8080/metrics | grep ray_instrument_sweep_

At each report the trial calls `publish(report, rule)`: one Ray gauge per
metric in `METRICS` (Ray exports them with its `ray_` prefix, about every 10 s),
tagged with the sweep (experiment) name, trial number, lr, batch size and seed.
A value that was not measured (NaN: energy and power without a GPU or readable
RAPL) is not published, so a missing series means "not measured", never 0.
tune_jobs/grafana/instrument_sweep.json charts these names.
"""

from __future__ import annotations

import functools
import math

from trainables.training.report import EpochReport
from trainables.training.stop import StopRule

PREFIX = "instrument_sweep_"
TAG_KEYS = ("sweep", "trial", "lr", "batch_size", "seed")

# name (without PREFIX) -> description; the one list of what a trial publishes.
METRICS = {
    "epoch": "epochs finished",
    "val_acc": "validation accuracy after the last epoch",
    "train_loss": "mean training loss of the last epoch",
    "hits_in_a_row": "epochs in a row at the stop rule's target",
    "epoch_time_s": "seconds of the last epoch's window (training, validation)",
    "time_s": "cumulative seconds of the epoch windows (time to accuracy at the stop)",
    "power_w": "mean GPU power of the run so far: energy_j over time_s (at reports, where measured)",
    "energy_j": "GPU joules of the run so far (energy to accuracy at the stop), at reports, where measured",
    "target_val_acc": "the stop rule's validation-accuracy target (where the rule watches val_acc)",
    "done": "0 while the trial runs, 1 once the stop rule ended it",
}


def epoch_values(report: EpochReport, rule: StopRule) -> dict[str, float]:
    """The metrics of one epoch report, by name; values that are not finite are left out."""
    values = {
        "epoch": report.epoch,
        "val_acc": report.val_acc,
        "train_loss": report.train_loss,
        "hits_in_a_row": report.hits_in_a_row,
        "epoch_time_s": report.epoch_time_s,
        "time_s": report.time_s,
        "energy_j": report.energy_j,
        "done": float(report.done),
    }
    if report.time_s > 0:  # NaN energy: no power where not measured
        values["power_w"] = report.energy_j / report.time_s
    if rule.metric == "val_acc" and rule.threshold is not None:
        values["target_val_acc"] = rule.threshold
    return {name: float(value) for name, value in values.items() if math.isfinite(value)}


def trial_tags(sweep: str, report: EpochReport) -> dict[str, str]:
    return {"sweep": sweep, "trial": str(report.trial_number), "lr": f"{report.lr:g}",
            "batch_size": str(report.batch_size), "seed": str(report.seed)}


@functools.cache
def _gauges() -> dict:
    """The gauges, made once per process (reused actors run many trials)."""
    from ray.util.metrics import Gauge

    return {name: Gauge(PREFIX + name, description, tag_keys=TAG_KEYS) for name, description in METRICS.items()}


def publish(report: EpochReport, rule: StopRule) -> None:
    """Set this trial's gauges from its epoch report (inside a Ray Tune trial)."""
    from ray import tune

    gauges = _gauges()
    tags = trial_tags(tune.get_context().get_experiment_name() or "", report)
    for name, value in epoch_values(report, rule).items():
        gauges[name].set(value, tags=tags)
