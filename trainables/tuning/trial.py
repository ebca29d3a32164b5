"""The Ray Tune trial: the training core, reporting and checkpointing every second or so.

    tune.Tuner(tune.with_parameters(sweep_trial, dataset=ds, settings=shared), param_space={"trial": ...})

Reads like the seed's loop: build the run, continue from a checkpoint if Tune
retried the trial, then per epoch train + validate (+ test at the stop), making an
`EpochReport`; the run's energy window reads the counter where the trial reports
(`Cadence.due`) and at the stop, then the trial settles its energy (replays where its
own run was too short for the counter: `settle_energy`). The trial reports to Tune after its
last epoch and after any epoch that ends `report_every_s` or more after its last
report, the epochs since then in one report (`report.batched`; Tune's round trip
cost 3.5 ms a report here, a seventh of an epoch). The last epoch, and any epoch
that ends `checkpoint_every_s` or more after the last checkpoint, is reported
alone (after the epochs waiting before it) with a checkpoint (model, optimizer,
RNG, counters, cumulative time and energy, and what produced it: the trial's
config and the dataset's fingerprint) so a retry continues the sums, redoes at
most that much training, and never continues on other data. (A checkpoint per
epoch cost 6 ms an epoch here, and Tune snapshots its experiment state as
checkpoints come.) Reporting and checkpointing are timed as overhead, outside the run's window;
the live metrics are published at reports too.

Tests hold trials between epochs through `EPOCH_GATE_ENV` (`wait_at_epoch_gate`), and pace their
epochs through `EPOCH_PACE_ENV` (`TrainingRun.min_epoch_s`): nothing else sets them, and without them
a trial never waits.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import ray
from ray import tune

from trainables.cpus import affinity
from trainables.training.config import TrainConfig, trial_config
from trainables.training.report import EpochReport, batched
from trainables.training.stop import StopRule
from trainables.tuning import metrics

PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
STATE_FILE = "state.pt"
RESULT_FILE = "result.json"
# Tests only (tests/processes.py `EpochGate`): a file holding N; trials train N epochs, then wait.
EPOCH_GATE_ENV = "INSTRUMENT_SWEEP_TEST_EPOCH_GATE"
EPOCH_PACE_ENV = "INSTRUMENT_SWEEP_TEST_EPOCH_S"  # tests: each epoch lasts at least this many seconds
GATE_POLL_S = 0.05

if TYPE_CHECKING:
    from trainables.data.dataset import Dataset
    from trainables.training.run import TrainingRun


class CheckpointMismatch(RuntimeError):
    """A checkpoint written by another trial config or for other data."""


def resident_mib() -> float:
    """This process's resident memory now, in MiB (Linux; NaN elsewhere)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * PAGE_BYTES / 2**20
    except OSError:
        return float("nan")


def ray_gpu_ids() -> list[str]:
    """The GPU ids Ray gave this trial (what it put in CUDA_VISIBLE_DEVICES; possibly logical); [] for none."""
    return [str(i) for i in ray.get_runtime_context().get_accelerator_ids().get("GPU", [])]


def ray_placement(gpu_ids: list[str] | None = None) -> dict:
    """Which Ray node and GPU ids (Ray's, possibly logical) this trial was given."""
    gpu_ids = ray_gpu_ids() if gpu_ids is None else gpu_ids
    return {"node_id": ray.get_runtime_context().get_node_id(), "gpu_ids": ",".join(gpu_ids)}


def check_provenance(saved: dict, trial: dict, fingerprint: dict) -> None:
    """Raise CheckpointMismatch unless a checkpoint's provenance is this trial's config and data."""
    if saved.get("dataset") != fingerprint:
        raise CheckpointMismatch("checkpoint was written for another dataset (shape, dtype or contents differ); "
                                 "start a new sweep for this data")
    if saved.get("trial") != trial:
        changed = sorted(k for k in set(trial) | set(saved.get("trial", {}))
                         if trial.get(k) != saved.get("trial", {}).get(k))
        raise CheckpointMismatch(f"checkpoint was written by another trial config ({', '.join(changed)} differ)")


class Cadence:
    """When a trial reports to Tune and when it checkpoints (see the module docstring), from the
    trial config's `report_every_s` and `checkpoint_every_s` (0 or missing: every epoch).

        if cadence.due(last_epoch): ...                 # decide as the epoch ends: a report point?
        cadence.send(row, save_state if cadence.checkpoint else None)  # report what is due, in order

    A report that carries a checkpoint carries only its own epoch: Tune keeps the metrics of
    each trial's last checkpoints and its last report in the driver and in every snapshot of
    its experiment state (the seed sweep's state was 76 KB a trial with the epochs batched in).
    """

    def __init__(self, trial: dict) -> None:
        self.report_every_s = float(trial.get("report_every_s", 0.0))
        self.checkpoint_every_s = float(trial.get("checkpoint_every_s", 0.0))
        self.reported_at = self.checkpointed_at = time.monotonic()
        self.unreported: list[dict] = []  # epochs' rows since the last report, oldest first
        self.report = self.checkpoint = False  # `due`'s decision for the epoch that just ended

    def due(self, last_epoch: bool) -> bool:
        """Decide, as an epoch ends, whether its row is reported now (returned) and with a checkpoint
        (`checkpoint`): the last epoch always is, with one."""
        now = time.monotonic()
        self.checkpoint = last_epoch or now - self.checkpointed_at >= self.checkpoint_every_s
        self.report = self.checkpoint or now - self.reported_at >= self.report_every_s
        return self.report

    def reports_due(self, row: dict) -> list[dict]:
        """The reports to send now, oldest first (`due` decided): none while `row` waits for a later
        one; else the waiting epochs and `row` in one (`batched`), or, with a checkpoint, the waiting
        epochs in one and `row` alone last, for the checkpoint."""
        self.unreported.append(row)
        if not self.report:
            return []
        now = time.monotonic()
        self.reported_at = now
        waiting, self.unreported = self.unreported, []
        if not self.checkpoint:
            return [batched(waiting)]
        self.checkpointed_at = now
        *earlier, own = waiting
        return [batched(earlier), own] if earlier else [own]

    def flush(self) -> None:
        """Report the epochs waiting for a later report now, in one."""
        if self.unreported:
            self.reported_at = time.monotonic()
            waiting, self.unreported = self.unreported, []
            tune.report(batched(waiting))

    def send(self, row: dict, save_state: Callable[[Path], None] | None = None) -> None:
        """Report `row` to Tune as `due` decided. `save_state` (given where `checkpoint`) writes the
        trial's state into the checkpoint's directory, which also keeps `row`."""
        reports = self.reports_due(row)
        if save_state is not None:
            *reports, result = reports
        for plain in reports:
            tune.report(plain)
        if save_state is None:
            return
        with tempfile.TemporaryDirectory(prefix="instrument-sweep-ckpt-") as path:
            save_state(Path(path))
            (Path(path) / RESULT_FILE).write_text(json.dumps(result))
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(path))


def report_held(run: "TrainingRun", cadence: Cadence, rule: StopRule) -> None:
    """A trial held at the tests' epoch gate: the hold is the run's overhead, not its next epoch's time;
    it reports the epochs its cadence keeps waiting, at once, and sets its live gauges from the last."""
    run.pause()
    if cadence.unreported:
        metrics.publish(EpochReport.from_dict(cadence.unreported[-1]), rule)
        cadence.flush()


def wait_at_epoch_gate(trial_number: int, epochs_done: int, report_now: Callable[[], None]) -> None:
    """Where the environment names a gate file (`EPOCH_GATE_ENV`, set by tests only): wait while the
    number it holds is no more than `epochs_done`, having reported every epoch trained (`report_now`,
    e.g. `report_held`) and appended "TRIAL EPOCHS PID" to "GATE.held"; a gate file that is gone
    lets every trial on. Called between epochs: a held trial's reports (and checkpoints) have been
    taken in by Tune, whose driver lets a trial's thread go on after a report only then."""
    gate = os.environ.get(EPOCH_GATE_ENV)
    held = False
    while gate:
        try:
            allowed = int(Path(gate).read_text())
        except FileNotFoundError:
            return
        if epochs_done < allowed:
            return
        if not held:
            report_now()
            with open(f"{gate}.held", "a") as listed:  # one small append: whole, even beside other trials'
                listed.write(f"{trial_number} {epochs_done} {os.getpid()}\n")
            held = True
        time.sleep(GATE_POLL_S)


def sweep_trial(config: dict, dataset: "Dataset", settings: dict | None = None) -> None:
    """One sweep trial: `trial_config(config["trial"], settings)` (trainables.training.config) says
    what to train (and is what its checkpoints record)."""
    started_at_s = time.time()
    # Torch and the training core load here, in the trial's process: the driver, which only
    # schedules trials, never imports torch (1.7 s and 200 MiB).
    import torch

    from trainables.data.splits import prepare_splits
    from trainables.training.gpus import trial_gpus
    from trainables.training.replay import settle_energy
    from trainables.training.run import TrainingRun
    from trainables.tuning.lean_exit import skip_final_collection

    skip_final_collection()  # when Tune stops this process: 0.15 s of a core instead of 0.72
    trial = trial_config(config["trial"], settings)
    provenance = {"trial": trial, "dataset": dataset.fingerprint}
    train_config, rule = TrainConfig(**trial["train"]), StopRule(**trial["stop"])
    splits = prepare_splits(dataset.train_x, dataset.train_y, dataset.test_x, dataset.test_y,
                            train_config.val_fraction, train_config.seed)
    # The device and the measured GPU follow what Ray gave the trial, never what CUDA happens to show.
    gpu_ids = ray_gpu_ids()
    gpus = trial_gpus(gpu_ids, train_config.cpus)
    run = TrainingRun(splits, train_config, rule, gpus=gpus)
    run.min_epoch_s = float(os.environ.get(EPOCH_PACE_ENV) or 0)
    labels = {
        "trial_number": trial["number"],
        "lr": train_config.lr,
        "batch_size": train_config.batch_size,
        "seed": train_config.seed,
        "views": ",".join(trial["views"]),
        "device": gpus.device_name,
        "node": socket.gethostname(),
        "cpu_ids": affinity(),
        **ray_placement(gpu_ids),
    }
    checkpoint = tune.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as path:
            try:
                state = torch.load(Path(path) / STATE_FILE, weights_only=True)
            except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint: say which, and why
                raise RuntimeError(f"checkpoint {checkpoint.path} cannot be loaded (corrupted, or not written "
                                   f"by this project): {type(exc).__name__}") from exc
            check_provenance(state.get("provenance", {}), trial, dataset.fingerprint)
            run.load_state_dict(state)
            if run.done:  # finished, but the final result may not have reached Tune
                tune.report(json.loads((Path(path) / RESULT_FILE).read_text()))
                return
    cadence = Cadence(trial)
    try:
        while not run.done:
            wait_at_epoch_gate(trial["number"], run.epoch, lambda: report_held(run, cadence, rule))
            report = run.run_epoch(report_point=cadence.due)  # the energy counter is read where the trial reports
            state = {**run.state_dict(), "provenance": provenance} if cadence.checkpoint else None
            if run.done:  # the final figures: replayed now, on its own GPU, where the run was too short
                report = settle_energy(run, report, float(trial.get("replay_budget_s", 0.0)))
            report = report.labelled(**labels, started_at_s=started_at_s, ended_at_s=time.time(),
                                     rss_mib=resident_mib())
            if cadence.report:
                metrics.publish(report, rule)  # live gauges for Ray's dashboard / Prometheus
            cadence.send(report.to_dict(),
                         None if state is None else lambda path: torch.save(state, path / STATE_FILE))
    finally:
        run.close()
