"""The stop rule: the one place that decides when a trial stops, and what its statuses mean.

    rule = StopRule(threshold=0.98, patience=3, max_epochs=100)      # the seed's rule
    hits, status = rule.after_epoch(epoch=5, hits_in_a_row=2, value=0.985, diverged=False)
    status is Status.REACHED_TARGET

    race = Race("time")                                               # race mode (`race: time`, `--race`)
    race.outpaced(report, best=race.best(finished_reports))           # True: this running trial cannot win

The trial (`TrainingRun.run_epoch`) calls `after_epoch` once per epoch and reports
the resulting `status`; the Tune stopper (`trainables.tuning.stopper`) only carries
that decision out. In race mode the stopper, which sees every trial's reports,
also asks `Race` whether a running trial is outpaced by the best finished one.
Every other package reads statuses through `Status`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum

from trainables.documented import documented
from trainables.errors import InputError, require_choice, require_int, require_number

# Metrics a trial reports each epoch that a rule may watch, and which way is better.
METRIC_MODES = {"val_acc": "max", "val_loss": "min"}


class Status(str, Enum):
    """A trial's status. The trial reports the first four, the race stopper OUTPACED;
    analysis adds ERROR for trials that raised."""

    RUNNING = "running"
    REACHED_TARGET = "reached_target"  # the target held for `patience` epochs in a row
    MAX_EPOCHS = "max_epochs"  # the cap (or, in fixed-epochs mode, the planned number of epochs)
    DIVERGED = "diverged"  # a non-finite training loss: stopped at once
    OUTPACED = "outpaced"  # race mode: already slower (or costlier) than a trial that reached the target
    ERROR = "error"  # the trial raised (Ray Tune's error.txt); never reported by a trial

    def __str__(self) -> str:
        return self.value

    @property
    def ended_by_rule(self) -> bool:
        """True for the statuses the stop rule (or its race) ends a trial with."""
        return self in ENDED_BY_RULE


ENDED_BY_RULE = frozenset({Status.REACHED_TARGET, Status.MAX_EPOCHS, Status.DIVERGED, Status.OUTPACED})

# Race modes: the figure a race compares, and the reported error of that figure (absent: exact).
RACES = {"time": ("time_s", None), "energy": ("energy_j", "energy_err_j")}


@dataclass(frozen=True)
class StopRule:
    """The seed's rule: stop once `metric` reaches `threshold` for `patience` epochs in a row.

    "Reaches" is >= for val_acc and <= for val_loss. `threshold=None` means
    fixed-epochs mode: train exactly `max_epochs` epochs.
    """

    threshold: float | None = documented(0.98, "target of `metric`; null: fixed-epochs mode (train max_epochs "
                                               "epochs, test every epoch)",
                                         allowed="val_acc: in (0, 1]; val_loss: > 0; or null")
    patience: int = documented(3, "epochs in a row the target must hold", allowed="an integer >= 1, <= max_epochs")
    max_epochs: int = documented(100, "hard cap on a trial's epochs (the planned epochs in fixed-epochs mode)",
                                 allowed="an integer >= 1")
    metric: str = documented("val_acc", "the reported metric the rule watches: reached from below (val_acc) or "
                                        "from above (val_loss)", allowed=tuple(METRIC_MODES))

    def __post_init__(self) -> None:
        if self.metric not in METRIC_MODES:
            raise InputError("metric", f"must be one of {', '.join(METRIC_MODES)} (what a trial reports "
                                            f"each epoch); got {self.metric!r}")
        require_int("max_epochs", self.max_epochs, minimum=1)
        require_int("patience", self.patience, minimum=1)
        if self.threshold is not None:
            require_number("threshold", self.threshold)
            if self.metric == "val_acc" and not 0.0 < self.threshold <= 1.0:
                raise InputError("threshold", f"must be in (0, 1] for val_acc, got {self.threshold!r}")
            if self.metric == "val_loss" and not self.threshold > 0.0:
                raise InputError("threshold", f"must be > 0 for val_loss, got {self.threshold!r}")
            if self.patience > self.max_epochs:
                raise InputError("patience", f"must be <= max_epochs ({self.max_epochs}), got {self.patience}")

    @property
    def fixed_epochs(self) -> bool:
        """True when there is no target: the run trains `max_epochs` epochs."""
        return self.threshold is None

    @property
    def mode(self) -> str:
        """"max" when higher values of `metric` are better, else "min"."""
        return METRIC_MODES[self.metric]

    def reaches(self, value: float) -> bool:
        """Whether one epoch's `metric` value is at the target (NaN never is)."""
        if self.threshold is None:
            return False
        return value >= self.threshold if self.mode == "max" else value <= self.threshold

    def after_epoch(self, epoch: int, hits_in_a_row: int, value: float, diverged: bool) -> tuple[int, Status]:
        """(hits in a row, status) after `epoch` (1-based) scored `value` on `metric`.

        Divergence wins; then the target held for `patience` epochs; then max_epochs.
        """
        hits = hits_in_a_row + 1 if self.reaches(value) else 0
        if diverged:
            return hits, Status.DIVERGED
        if self.threshold is not None and hits >= self.patience:
            return hits, Status.REACHED_TARGET
        if epoch >= self.max_epochs:
            return hits, Status.MAX_EPOCHS
        return hits, Status.RUNNING

    def describe(self) -> str:
        """One line, e.g. "val_acc >= 0.98 for 3 epochs in a row (max 100 epochs)"."""
        if self.fixed_epochs:
            return f"{self.max_epochs} fixed epochs (no target)"
        op = ">=" if self.mode == "max" else "<="
        return f"{self.metric} {op} {self.threshold:g} for {self.patience} epochs in a row (max {self.max_epochs} epochs)"


@dataclass(frozen=True)
class Race:
    """Race mode: once a trial has reached the target, a running trial that cannot win stops.

    `by="time"` compares time to accuracy (`time_s`), `by="energy"` energy to
    accuracy (`energy_j`). A running trial's figure only grows, so once it exceeds
    the best finished trial's it cannot win: it ends as OUTPACED and its figures
    are lower bounds ("at least"). Energy counts only beyond the error bars: the
    running trial's figure minus its `energy_err_j` must exceed the best one's
    plus its own (a report without `energy_err_j` counts as exact). Measured
    figures only: NaN never outpaces and never leads.
    """

    by: str = "time"  # "time" or "energy"

    def __post_init__(self) -> None:
        require_choice("race", self.by, tuple(RACES))

    @property
    def figure(self) -> str:
        """The reported field the race compares: "time_s" or "energy_j"."""
        return RACES[self.by][0]

    def _bounds(self, report: Mapping) -> tuple[float, float]:
        """(lowest, highest) the report's figure may be, given its error; NaN where not measured."""
        value = float(report.get(self.figure, math.nan))
        err_field = RACES[self.by][1]
        err = float(report.get(err_field) or 0.0) if err_field else 0.0
        err = err if math.isfinite(err) else 0.0
        return value - err, value + err

    def best(self, reports: Iterable[Mapping], current: float = math.inf) -> float:
        """The lowest upper bound of the figure among `reports` that reached the target (and `current`)."""
        for report in reports:
            if report.get("status") == Status.REACHED_TARGET.value:
                high = self._bounds(report)[1]
                if math.isfinite(high):
                    current = min(current, high)
        return current

    def outpaced(self, report: Mapping, best: float) -> bool:
        """Whether a running trial's report already exceeds `best` (see `best`): it cannot win."""
        if report.get("status", Status.RUNNING.value) != Status.RUNNING.value or not math.isfinite(best):
            return False
        low = self._bounds(report)[0]
        return math.isfinite(low) and low > best
