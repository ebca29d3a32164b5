"""`EpochReport`: the one definition of what a trial reports after each epoch.

    report = run.run_epoch()                        # training fills the metrics
    report = report.labelled(trial_number=3, ...)   # the Tune trial adds who and where
    tune.report(batched([earlier..., report.to_dict()]))  # one Tune report for the epochs since the last
    unbatched(result)                               # -> the epochs' rows: result.json, one line per epoch
    EpochReport.from_dict(row)                      # how progress lines and analysis read a row back

A Tune report is the latest epoch's row; where the trial reports less often than every
epoch, it carries the epochs since its last report under EARLIER_EPOCHS (`batched`), and
the loggers that write result.json and progress.csv write one row per epoch (`unbatched`).

Times are seconds, energies joules; NaN means "not measured" (never 0).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

from trainables.training.stop import Status

NAN = float("nan")


@dataclass(frozen=True)
class EpochReport:
    """One trial's report for one epoch.

    `time_s` and `energy_j` are cumulative since the trial began: on the last
    epoch they are the time and energy to accuracy. `test_acc`/`test_loss` are
    NaN except where test was evaluated (the stopping epoch; every epoch in
    fixed-epochs mode). The labels after `test_loss` are filled by the Tune trial.
    """

    epoch: int = 0
    train_acc: float = NAN
    train_loss: float = NAN
    val_acc: float = NAN
    val_loss: float = NAN
    hits_in_a_row: int = 0  # epochs in a row at the stop rule's target
    epoch_time_s: float = NAN  # this epoch's window: training, validation (and test on the last)
    time_s: float = NAN  # cumulative epoch windows: the time to accuracy at the stop
    epoch_energy_j: float = NAN  # this epoch window's GPU joules
    energy_j: float = NAN  # the headline: cumulative GPU joules (Zeus's total_energy); NaN without a GPU
    energy_err_j: float = NAN  # uncertainty of energy_j from the counter's steps (about 2.5 sigma)
    energy_resolution_s: float = NAN  # the GPU energy counter's measured update period
    energy_method: str = "none"  # "direct" (summed epoch windows), "replay" (mean of replays) or "none"
    replays: int = 0  # runs of the trial's exact work replayed in one window (energy_method "replay")
    first_run_time_s: float = NAN  # the trial's own time_s, kept where a replay replaced the headline
    first_run_energy_j: float = NAN  # the trial's own energy_j: the sum of its epoch windows
    gpu_energy_j: float = NAN  # cumulative GPU joules of the trial's own run
    cpu_energy_j: float = NAN  # cumulative CPU packages + DRAM joules (RAPL) of the whole node
    gpu_idle_w: float = NAN  # the GPU's idle power, measured before the process's first trial (after a
    # retry on another GPU, this and gpu_idle_err_w, gpu_max_power_w: the GPUs' means weighted by time)
    gpu_idle_err_w: float = NAN
    dynamic_energy_j: float = NAN  # energy_j - gpu_idle_w * time_s: what training added to idle
    gpu_max_power_w: float = NAN  # the GPU's highest power limit (Zeus's MaxPower, for --eta)
    overhead_time_s: float = NAN  # cumulative time between epochs (reporting, checkpointing), not in time_s
    overhead_energy_j: float = NAN  # cumulative GPU joules between epochs, not in energy_j
    energy_source: str = "none"  # what energy_j holds: "gpu" or "none" (analysis may attribute "cpu")
    energy_note: str = ""  # one line: why the trial's GPU energy is not measured (or a caveat); "" otherwise
    status: str = Status.RUNNING.value  # a `Status` value: the stop rule's decision after this epoch
    test_acc: float = NAN
    test_loss: float = NAN
    # -- labels: which trial, and where it ran
    trial_number: int = 0
    lr: float = NAN
    batch_size: int = 0
    seed: int = 0
    views: str = ""  # comma-separated names of the views the trial belongs to
    device: str = ""  # GPU model name or "cpu"
    node: str = ""  # host name
    node_id: str = ""  # Ray node id
    gpu_ids: str = ""  # Ray's GPU ids of the trial, comma-separated ("" on CPU)
    gpu_uuids: str = ""  # the GPU(s) it trained on, by NVML UUID: more than one after a retry on another GPU
    cpu_ids: str = ""  # the CPUs its process may run on ("0-3,8"; under Slurm's CPU binding, its job's there)
    started_at_s: float = NAN  # wall clock (Unix seconds) when this attempt of the trial began
    ended_at_s: float = NAN  # wall clock when this report was made
    rss_mib: float = NAN  # the trial process's resident memory

    @property
    def done(self) -> bool:
        return Status(self.status) is not Status.RUNNING

    @property
    def energy_measured(self) -> bool:
        return math.isfinite(self.energy_j)

    def labelled(self, **labels) -> EpochReport:
        """This report with the trial's labels filled in."""
        return replace(self, **labels)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, row: dict) -> EpochReport:
        """Read back a reported row; keys it lacks take their defaults, extra keys are ignored."""
        return cls(**{name: row[name] for name in FIELDS if name in row and row[name] is not None})


FIELDS = tuple(f.name for f in fields(EpochReport))


EARLIER_EPOCHS = "earlier_epochs"  # a report's key for the epochs it carries besides its own, oldest first


def batched(rows: list[dict]) -> dict:
    """One Tune report for the epochs' rows `rows` (oldest first): the last row, carrying the others."""
    *earlier, last = rows
    return {**last, EARLIER_EPOCHS: earlier} if earlier else last


def unbatched(line: dict) -> list[dict]:
    """The epochs' rows one report holds, oldest first (see `batched`). The earlier epochs' rows
    also take the report's keys that are not EpochReport's (Tune's: trial_id, timestamp, ...)."""
    own = {k: v for k, v in line.items() if k != EARLIER_EPOCHS}
    return [*({**own, **row} for row in line.get(EARLIER_EPOCHS) or ()), own]
