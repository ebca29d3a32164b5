"""Build, start and resume the Ray Tune experiment of a sweep.

    grid = start_sweep(spec, dataset, storage="/abs/sweeps", name="seed-20261125-2000", cluster=info)
    grid = resume_sweep("/abs/sweeps/seed-20261125-2000", spec, dataset, cluster=info)

The driver loads the dataset once; `tune.with_parameters` puts it in Ray's
object store, so every trial on a node shares one copy (each maps it read-only as it
starts: about 1 ms of a core) and worker nodes need no files. Every trial is one point of the spec; the union of the views runs once.
Tune's param space holds only what identifies each trial (number, lr, batch size,
seed, views): Tune copies a trial's config into every result it keeps and logs,
so what all trials share (training and stop settings, cadences) goes once beside
the dataset (`trial_settings`, also written to the experiment's trial_settings.json, from
which analysis joins each trial's whole config), where the trackers do not log the config
as params. Trials start longest expected first (`LongestFirst`, tune_jobs.start_order), each
in the process of a trial that finished where one is free (reuse_actors: 2 processes for the
`seed` preset's 9 trials on 2 cores).
"""

from __future__ import annotations

import csv
import fnmatch
import io
import json
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import asdict
from pathlib import Path

from ray import tune
from ray.tune.experiment import Trial
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback, LoggerCallback
from ray.tune.schedulers import FIFOScheduler

from analysis import storage
from analysis.storage import DATASET_FILE, SETTINGS_FILE, SPEC_FILE
from trainables.errors import InputError
from trainables.training.config import trial_config
from trainables.training.report import unbatched
from trainables.tuning.stopper import StatusStopper
from trainables.tuning.trial import sweep_trial
from tune_jobs import ray_private
from tune_jobs.cluster import ClusterInfo
from tune_jobs.host_watch import HostWatch
from tune_jobs.progress import progress_callback
from tune_jobs.spec import SweepSpec
from tune_jobs.start_order import start_order
from tune_jobs.storage_guard import StorageGuard
from tune_jobs.trackers import tracker_callbacks

# Each trial keeps its last 5 checkpoints; Tune snapshots the experiment every 5 - 2 = 3rd, so
# the stored snapshot's checkpoint is kept for 2 checkpoints after the next snapshot is written
# (a driver killed in between resumes from it).
KEPT_CHECKPOINTS, SNAPSHOT_MARGIN = 5, 2


def param_space(spec: SweepSpec) -> dict:
    """One grid-search entry per trial: what identifies it (and analysis reads from params.json);
    with trackers also `trial_settings`, which they log as each run's params."""
    settings = trial_settings(spec) if spec.log else None
    trials = [trial_config({"number": t.number, "lr": t.lr, "batch_size": t.batch_size, "seed": t.seed,
                            "views": list(t.views)}, settings) for t in spec.trials()]
    return {"trial": tune.grid_search(trials)}


def trial_settings(spec: SweepSpec) -> dict:
    """What every trial of `spec` shares; `trial_config` adds a trial's own point to it."""
    return {
        "train": asdict(spec.train_config(spec.trials()[0])),  # lr, batch_size and seed: each trial's own
        "stop": asdict(spec.stop),
        "replay_budget_s": spec.energy.replay_budget_s,
        "checkpoint_every_s": spec.resources.checkpoint_every_s,
        # Every epoch is reported where a tracker logs each Tune report as a step, and in a
        # race, whose stopper can stop a trial only at a report.
        "report_every_s": 0.0 if spec.log or spec.race else spec.resources.report_every_s,
    }


def check_same_dataset(experiment: str, dataset) -> None:
    """InputError unless `dataset` has the fingerprint the experiment recorded (where it recorded one)."""
    path = storage.join(experiment, DATASET_FILE)
    if not storage.exists(path):
        return  # an experiment from before fingerprints: each trial's checkpoint still checks its own
    recorded = json.loads(storage.read_text(path))
    if recorded != dataset.fingerprint:
        shapes = lambda f: "train {} test {}".format(f["train_x"]["shape"], f["test_x"]["shape"])  # noqa: E731
        raise InputError("--data", f"is not the dataset this experiment was started with (recorded "
                                   f"{shapes(recorded)}, hash {recorded['blake2b'][:12]}; given {shapes(dataset.fingerprint)}, "
                                   f"hash {dataset.fingerprint['blake2b'][:12]}); resume needs the same data")


def trial_dirname(trial) -> str:
    """Short, readable trial directories: trial-003-lr0.001-bs128-s0-<id>."""
    t = trial.config["trial"]
    return f"trial-{t['number']:03d}-lr{t['lr']:g}-bs{t['batch_size']}-s{t['seed']}-{trial.trial_id}"


class PerEpochRows(LoggerCallback):
    """Mixin for Tune's file loggers: a report that carries several epochs (trainables'
    `report.batched`) is written as one row per epoch, so result.json and progress.csv keep a
    line per epoch however often trials report; and each epoch is there once. A trial that
    (re)starts from a checkpoint trains every epoch after it again (a retry after its process
    or host was lost, or `resume` from the experiment's last snapshot): its file keeps the rows
    up to the checkpoint's epoch, and the epochs redone are written as they come. (Tune alone
    kept the rows logged after the checkpoint as well: a retried trial's result.json held one
    epoch twice.)"""

    log_file = ""  # the trial's file this logger writes

    def log_trial_start(self, trial) -> None:
        self.log_trial_end(trial)  # Tune's CSV logger keeps its file open across a retry
        kept_through = ray_private.checkpoint_epoch(trial) or 0
        self._kept_through = {**getattr(self, "_kept_through", {}), trial: kept_through}
        path = Path(trial.local_path, self.log_file)
        if kept_through and not path.exists():  # resumed from a checkpoint: the stored copy, as Tune would fetch it
            ray_private.restore_trial_log(self, self.log_file, trial)
        if path.exists():
            keep_epochs_through(path, kept_through)
        super().log_trial_start(trial)

    def log_trial_result(self, iteration: int, trial, result: dict) -> None:
        kept_through = getattr(self, "_kept_through", {}).get(trial, 0)
        for row in unbatched(result):
            if int(row.get("epoch", kept_through + 1)) > kept_through:  # a finished trial re-sends its last
                super().log_trial_result(iteration, trial, row)


def keep_epochs_through(path: Path, epoch: int) -> None:
    """Rewrite a trial's result.json (a JSON object a line) or progress.csv (a header, then a row
    an epoch) in place, without the rows of epochs after `epoch`."""
    text = path.read_text()
    if path.suffix == ".csv":
        lines = text.splitlines(keepends=True)
        header = next(csv.reader(io.StringIO(lines[0]))) if lines else []
        if "epoch" not in header:
            return
        column = header.index("epoch")
        kept = lines[:1] + [line for line in lines[1:] if _csv_epoch(line, column) <= epoch]
    else:
        kept = [line for line in text.splitlines(keepends=True) if _json_epoch(line) <= epoch]
    if len(kept) != len(text.splitlines()):
        path.write_text("".join(kept))  # in place: Tune's logger may hold the file open for appending


def _json_epoch(line: str) -> float:
    try:
        return float(json.loads(line).get("epoch", 0))
    except (ValueError, AttributeError):
        return float("inf")  # a line cut short by a crash: dropped


def _csv_epoch(line: str, column: int) -> float:
    try:
        return float(next(csv.reader(io.StringIO(line)))[column])
    except (ValueError, IndexError, StopIteration):
        return float("inf")


class EpochJsonLogger(PerEpochRows, JsonLoggerCallback):
    """Tune's result.json logger, a line per epoch."""

    log_file = "result.json"


class EpochCsvLogger(PerEpochRows, CSVLoggerCallback):
    """Tune's progress.csv logger, a row per epoch."""

    log_file = "progress.csv"


class LongestFirst(FIFOScheduler):
    """Tune's FIFO scheduler, except that the trial it picks to start next, of those waiting, is a
    retried one if any, else the one earliest in `order` (trial numbers, tune_jobs.start_order):
    Tune stages that trial first and hands it the process of a trial that finished. With
    `ray_private.trials_staged_in_order(scheduler.trial_rank)` Tune also requests the waiting
    trials' processes in that order, so the first trials on the slots follow it too."""

    def __init__(self, order: list[int]) -> None:
        super().__init__()
        self.rank = {number: place for place, number in enumerate(order)}

    def trial_rank(self, trial: Trial) -> tuple[int, int]:
        """Lower starts sooner: retried trials first, then by place in the order (others after)."""
        number = (trial.config.get("trial") or {}).get("number")
        return (0 if trial.num_failures else 1, self.rank.get(number, len(self.rank)))

    def choose_trial_to_run(self, tune_controller) -> Trial | None:
        waiting = [trial for trial in tune_controller.get_trials() if trial.status == Trial.PENDING]
        if waiting:
            return min(waiting, key=self.trial_rank)  # the first of equals: Tune's own order
        return super().choose_trial_to_run(tune_controller)  # paused trials, as Tune's FIFO

    def debug_string(self) -> str:
        return "Using longest-expected-first scheduling."


def trainable(spec: SweepSpec, dataset, cluster: ClusterInfo):
    return tune.with_resources(tune.with_parameters(sweep_trial, dataset=dataset, settings=trial_settings(spec)),
                               spec.ray_resources(cluster.gpus, cluster.max_node_cpus))


@contextmanager
def tune_settings(auto_loggers: bool, cluster: ClusterInfo, scheduler: LongestFirst | None = None,
                  fixes: bool = True) -> Iterator[None]:
    """Tune's environment switches and our patches of it for the span of one `fit()`, restored afterwards.

    Our progress lines replace Tune's tables (RAY_AIR_NEW_OUTPUT=0) and its
    traceback of each failed trial (TUNE_PRINT_ALL_TRIAL_ERRORS=0: one retry or
    error line instead; Tune still writes the error to the trial's error.txt),
    Tune's snapshot warning would fire on every checkpoint, and `auto_loggers=False`
    keeps Tune to the loggers a sweep names (no TensorBoard files). Speed-ups (each falls back
    to Tune's own behaviour where it does not fit this Ray): Tune's telemetry tally of callbacks,
    which imports every tracker Ray integrates, is skipped, an actor that is starting is not
    killed to reuse a cached one, the driver keeps no running statistics of the trials' metrics
    and no DataFrame per trial at the end (the analysis reads the trials' files), the trial
    actors of a Ray started here get no runtime env (they inherit its variables), a retried
    trial starts ahead of trials not started yet, and, given a `scheduler`, Tune requests the
    waiting trials' processes in its order (`LongestFirst`). Fixes, where `fixes` (checked before:
    `ray_private.check_fixes`): a retried trial's log rows are not overwritten by storage's older
    copy, the stored snapshot's checkpoints outlive the next snapshot, and uploads to local
    storage land whole (see `ray_private`).
    """
    wanted = {"RAY_AIR_NEW_OUTPUT": "0", "TUNE_PRINT_ALL_TRIAL_ERRORS": "0",
              "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
              "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "0" if auto_loggers else "1"}
    saved = {key: os.environ.get(key) for key in wanted}
    os.environ.update(wanted)
    try:
        with (ray_private.callbacks_not_tallied(), ray_private.starting_actors_kept(),
              ray_private.metrics_analysed(frozenset()), ray_private.result_frames_not_loaded(),
              ray_private.trial_actors_inheriting(cluster.worker_env), ray_private.retried_trials_first(),
              ExitStack() as more):
            if scheduler is not None:
                more.enter_context(ray_private.trials_staged_in_order(scheduler.trial_rank))
            if fixes:
                for fix in (ray_private.driver_logs_kept(), ray_private.snapshots_ahead_of_deletion(SNAPSHOT_MARGIN),
                            ray_private.local_uploads_whole()):
                    more.enter_context(fix)
            yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def host_watch(cluster: ClusterInfo, progress: bool = True) -> list[HostWatch]:
    """A HostWatch where the sweep prints its progress on a cluster it joined (one node now or
    several: workers may join later)."""
    return [HostWatch()] if progress and not cluster.started_here else []


# After SIGTERM, how long the main thread has to take the signal up before the state is saved from another
# thread: longer than Tune's waits for its trials (1 s), well within the job's wait for an ended GCS (GCS_GONE_S)
STUCK_S = 3.0
TERMINATED = "SIGTERM: the sweep stops as on Ctrl-C, saving its state"


@contextmanager
def terminate_as_interrupt(save: Callable[[], bool] | None = None) -> Iterator[None]:
    """For the span of the block, SIGTERM (Slurm's preemption and `scancel`, `kill`) interrupts as SIGINT
    does, once: within Tune's `fit()`, Tune saves the experiment's state one last time and returns (a second
    SIGTERM does not cut that save short). (Ray's own handler, which `ray.init` installs in the driver, exits
    at once.) Only the main thread handles signals: elsewhere the block runs as it is.

    Python runs a signal's handler once the main thread runs Python again. Slurm signals every process of a
    job at once, Ray's too, and a main thread inside a call to Ray that waits for the (ending) GCS comes
    back only as the driver gives up on the GCS and exits. Given `save` (ray_private.state_saver), a thread
    of its own (woken by the signal: `signal.set_wakeup_fd`) says the line at once and, where the main
    thread has not taken the signal up within STUCK_S, saves the state itself."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    taken = threading.Event()

    def interrupt(*_) -> None:
        if taken.is_set():
            return
        taken.set()
        if save is None:
            print(TERMINATED, flush=True)
        signal.raise_signal(signal.SIGINT)

    before = signal.signal(signal.SIGTERM, interrupt)
    watch = None
    try:
        if save is not None:
            watch = _TerminateWatch(taken, save)
        yield
    finally:
        signal.signal(signal.SIGTERM, before)
        if watch is not None:
            watch.close()


class _TerminateWatch:
    """A thread that wakes as SIGTERM comes, whatever the main thread does: says `TERMINATED`, and calls
    `save` where `taken` is not set within STUCK_S (the main thread has not taken the signal up). The bytes
    of the signals it reads go on to the wakeup fd set before it (asyncio's, say), where one was."""

    def __init__(self, taken: threading.Event, save: Callable[[], bool]) -> None:
        self.taken, self.save, self.before = taken, save, None
        self.read_fd, self.write_fd = os.pipe()
        try:
            os.set_blocking(self.write_fd, False)  # as set_wakeup_fd requires: a full pipe drops a byte
            self.before = signal.set_wakeup_fd(self.write_fd, warn_on_full_buffer=False)
            self.thread = threading.Thread(target=self._watch, name="sigterm-watch", daemon=True)
            self.thread.start()
        except BaseException:
            if self.before is not None:
                signal.set_wakeup_fd(self.before)
            os.close(self.read_fd)
            os.close(self.write_fd)
            raise

    def _watch(self) -> None:
        seen = False
        try:
            while data := os.read(self.read_fd, 64):  # a byte per signal Python handles; none once closed
                if self.before >= 0:
                    with suppress(OSError):
                        os.write(self.before, data)
                if signal.SIGTERM in data and not seen:
                    seen = True
                    self._terminated()
        finally:
            os.close(self.read_fd)

    def _terminated(self) -> None:
        print(TERMINATED, flush=True)
        if self.taken.wait(STUCK_S):
            return
        print(f"the driver's main thread is inside a call to Ray (not back after {STUCK_S:g} s): saving the "
              "sweep's state from another thread", flush=True)
        try:
            saved = self.save()
        except OSError as exc:  # the storage's
            print(f"saving the sweep's state failed: {exc}", flush=True)
        else:
            print("saved the sweep's state (where Tune's upload of it failed, Tune's error is above)" if saved else
                  "the sweep's state could not be saved from another thread", flush=True)

    def close(self) -> None:
        signal.set_wakeup_fd(self.before)
        os.close(self.write_fd)  # the thread's read returns: it ends, closing its end
        self.thread.join(timeout=STUCK_S + 60)


def fit(tuner: tune.Tuner, callbacks: list) -> tune.ResultGrid:
    """`tuner.fit()`, which SIGTERM stops as SIGINT does (`terminate_as_interrupt`); each HostWatch among
    `callbacks` stops probing as it ends, however it ends."""
    try:
        with ray_private.state_saver() as save, terminate_as_interrupt(save):
            return tuner.fit()
    finally:
        for callback in callbacks:
            if isinstance(callback, HostWatch):
                callback.stop()


def start_sweep(spec: SweepSpec, dataset, storage_root: str, name: str, cluster: ClusterInfo,
                progress: bool = True, fixes: bool = True) -> tune.ResultGrid:
    """Write the spec beside the experiment, then run every trial to its stop (with our fixes of
    Tune where `fixes`: see `tune_settings`). A storage URI's filesystem, its credentials
    included, reaches the trials as `ray_private.storage_for_ray` builds it."""
    import yaml

    storage_fs, storage_path = ray_private.storage_for_ray(storage_root)  # InputError before anything is written
    experiment = storage.join(storage_root, name)
    storage.write_text(storage.join(experiment, SPEC_FILE), yaml.safe_dump(spec.to_dict(), sort_keys=False))
    storage.write_text(storage.join(experiment, DATASET_FILE), json.dumps(dataset.fingerprint, indent=1))
    storage.write_text(storage.join(experiment, SETTINGS_FILE), json.dumps(trial_settings(spec), indent=1))
    # The loggers named below write result.json (what analysis reads) and progress.csv; Tune adds
    # no others, TensorBoard's included (it adds 19% to a sweep's CPU time, on the trials' cores).
    callbacks = [EpochJsonLogger(), EpochCsvLogger(), StorageGuard(storage_root),
                 *tracker_callbacks(spec.log, name, experiment),
                 *([progress_callback(len(spec.trials()))] if progress else []),
                 *host_watch(cluster, progress)]
    scheduler = LongestFirst(start_order(spec, dataset.n_train))
    tuner = tune.Tuner(
        trainable(spec, dataset, cluster),
        param_space=param_space(spec),
        tune_config=tune.TuneConfig(num_samples=1, reuse_actors=True, trial_dirname_creator=trial_dirname,
                                    scheduler=scheduler),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            stop=StatusStopper(spec.racer),
            failure_config=tune.FailureConfig(max_failures=spec.resources.max_failures),
            # Tune snapshots its state every KEPT_CHECKPOINTS - SNAPSHOT_MARGIN checkpoints (see
            # tune_settings): every third, and a snapshot's checkpoint outlives the next snapshot.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=KEPT_CHECKPOINTS),
            callbacks=callbacks,
            verbose=0,
        ),
    )
    with tune_settings(auto_loggers=False, cluster=cluster, scheduler=scheduler, fixes=fixes):
        return fit(tuner, callbacks)


def unsaved_start(experiment: str) -> list[str] | None:
    """Where Tune stored no state of the experiment (`ray_private.EXPERIMENT_STATE`: a sweep stopped in its first
    second or so, between writing its spec and Tune's first snapshot, as a Slurm job requeued as it began), the
    names of what Tune had written by then (`ray_private.TUNE_FIRST_FILES`, trial folders with no checkpoint and
    no result), which a start over removes; None where Tune stored its state (`resume` continues it).
    InputError, nothing removed, where the experiment holds anything else: a trial's checkpoint or results (a
    state whose upload failed), files of others."""
    found = storage.entries(experiment)
    if any(fnmatch.fnmatch(name, ray_private.EXPERIMENT_STATE) for name in found):
        return None

    def tunes_first(name: str) -> bool:
        if found[name] is None and name.startswith("trial-"):
            inside = storage.entries(storage.join(experiment, name))
            return not inside.get("result.json") and not any(n.startswith("checkpoint_") for n in inside)
        return any(fnmatch.fnmatch(name, pattern) for pattern in ray_private.TUNE_FIRST_FILES)

    written = sorted(name for name in found if name not in storage.OWN_FILES)
    others = [name for name in written if not tunes_first(name)]
    if others:
        raise InputError("experiment", f"{experiment} holds no state of Tune's to resume from, yet holds "
                                       f"{', '.join(others[:3])}{' ...' if len(others) > 3 else ''}: left as it is; "
                                       f"run its spec ({storage.join(experiment, SPEC_FILE)}) under another --name")
    return written


def resume_sweep(experiment: str, spec: SweepSpec, dataset, cluster: ClusterInfo,
                 fixes: bool = True) -> tune.ResultGrid:
    """Continue an interrupted sweep: finished trials stay, unfinished and errored ones continue.
    Where Tune stored no state before the sweep stopped (`unsaved_start`: a Slurm job requeued in its first
    seconds), the sweep starts over from its spec, without what Tune had written.

    Check `check_same_dataset` first: a trial refuses a checkpoint written for other data. Tune's
    stored state holds no credentials: its filesystem is handed over again (`ray_private.storage_for_ray`).
    """
    unsaved = unsaved_start(experiment)
    if unsaved is not None:
        storage.remove(experiment, unsaved)
        print(f"note: Tune stored no state of this sweep before it stopped ({', '.join(unsaved) or 'nothing'} "
              "removed): its trials start from the beginning", flush=True)
        return start_sweep(spec, dataset, storage.parent(experiment), storage.basename(experiment), cluster,
                           fixes=fixes)
    fs, path = ray_private.storage_for_ray(experiment)
    tuner = tune.Tuner.restore(path, trainable=trainable(spec, dataset, cluster), resume_errored=True,
                               storage_filesystem=fs)
    # The restored experiment brings its own loggers; an experiment from before start_sweep named
    # them gets ours, and Tune adds none (no TensorBoard files, as `run`); one started on a local
    # Ray and resumed on a cluster gets a HostWatch. Where this Ray does not show the restored
    # callbacks, Tune adds the loggers it finds missing.
    callbacks = ray_private.restored_callbacks(tuner)
    if callbacks is not None:
        callbacks += [logger() for logger, kind in ((EpochJsonLogger, JsonLoggerCallback),
                                                    (EpochCsvLogger, CSVLoggerCallback))
                      if not any(isinstance(c, kind) for c in callbacks)]
        if not any(isinstance(c, HostWatch) for c in callbacks):
            callbacks += host_watch(cluster)
    # The restored experiment brings its own scheduler (an experiment from before LongestFirst:
    # Tune's FIFO); Tune requests the processes of the trials left in the spec's start order.
    scheduler = LongestFirst(start_order(spec, dataset.n_train))
    with tune_settings(auto_loggers=callbacks is None, cluster=cluster, scheduler=scheduler, fixes=fixes):
        return fit(tuner, callbacks or [])
