"""The only module that touches Ray's private APIs (`ray._private`, Tune's controller);
tests/test_private_apis.py checks each one's behaviour, so a Ray that changes them fails
there, loudly.

- `enable_token_auth_if_token_available()`: Ray attaches a cluster token only with
  RAY_AUTH_MODE=token; its own helper switches that on when a token exists.
- `lean_local_start(log_monitor)`: a local `ray.init` starts, one after another, the GCS, an
  autoscaler monitor, an API server (with the dashboard off too) that it waits for, the
  raylet, and then waits for the raylet's registration, polling once a second; on the way
  it imports the dashboard's optional packages in the driver to see whether they are
  installed. Inside: no autoscaler monitor (a local Ray has nothing to scale), no API server
  unless the dashboard is asked for, a log monitor only where logs go to the driver, the
  packages looked up instead of imported, and the registration polled every 20 ms.
- `ray_on_loopback()`: Ray's single-machine switch (`ray_constants.ENABLE_RAY_CLUSTER`),
  off for one `ray.init`, keeps a local Ray's every listener on 127.0.0.1.
- `trial_actors_inheriting(worker_env)`: Tune gives every trial actor a runtime env
  (`ray.tune.execution.class_cache`: PL_DISABLE_FORK=1 and the variables it propagates from
  the driver, such as AWS keys). Ray starts a worker with a runtime env through a setup
  process that imports Ray and then starts the worker, which imports Ray again: about 0.6 s
  of a core per trial process here, and the runtime-env agent's round trip. Inside, where
  those variables already have their values in `worker_env` (what the workers of a local Ray
  inherit from the driver that started it), the actors get no runtime env.
- `callbacks_not_tallied()`: Tune's usage-telemetry tally of a run's callbacks
  (`ray.air._internal.usage.tag_callbacks`) imports every tracker integration Ray has to
  count callbacks by class: W&B, MLflow and Comet where installed, 1.7 s before the first
  trial. Skipped for one `fit()`.
- `starting_actors_kept()`: Tune hands a finished trial's cached actor to the next pending
  trial even where that trial's own actor is already starting, and kills the starting one
  (`TuneController._maybe_reuse_cached_actor`). Where trials are shorter than an actor's
  start, the first actors up run every trial while the rest are started and killed in turn:
  100 two-epoch trials on 32 logical GPUs started 46-63 processes and ran on 1-4. Inside,
  an actor that is starting is kept for its trial; the cached one goes to a trial whose
  actor still waits for resources.
- `metrics_analysed(names)`: Tune keeps running statistics (max, min, mean, last, means of
  the last 5 and 10) of every number a trial reports, in the driver, for the run
  (`_TrainingRunMetadata.update_metric`) and again as JSON in its experiment state: about
  95 KiB a trial for our reports, most of the driver's growth with the sweep's size.
  Inside, only the named metrics are kept (what `ResultGrid.get_best_result` ranks by;
  sweeps name none: our analysis reads every epoch from the trials' files).
- `results_without_config()`: Tune's trainable adds the trial's whole config to every result
  and every checkpoint's metrics, and the driver keeps each copy (a trial's last result, its
  kept checkpoints), writes it into its experiment state and into every row of result.json
  and progress.csv: about 3 KiB of objects a copy. Inside, the driver drops it on arrival;
  the trial keeps its config once, and Tune writes it to the trial's params.json.
- `result_frames_not_loaded()`: when `fit()` ends, Tune reads every trial's result.json into
  a pandas DataFrame for the `ResultGrid` (`ExperimentAnalysis._fetch_trial_dataframes`):
  2.4 s in the driver for 1,000 trials, whose results our analysis then reads again.
  Inside, none is loaded (each `Result.metrics_dataframe` is None).
- `driver_logs_kept()`: Tune's loggers write a trial's result.json and progress.csv in the
  driver's staging directory and sync it to storage with each snapshot of the experiment
  (every third checkpoint here). When a trial restarts after a failure they first copy the
  trial's files from storage over the driver's (`LoggerCallback._restore_from_remote`), so the
  rows logged since the last sync were lost: a retried trial's result.json skipped epochs.
  Inside, the copy is made only where the driver has no such file (a resumed experiment).
- `snapshots_ahead_of_deletion(margin)`: with `CheckpointConfig(num_to_keep=K)` Tune deletes a
  trial's checkpoint as its K-th newer one registers, and forces a snapshot of the experiment
  every K checkpoints (`_ExperimentCheckpointManager`): the stored snapshot's latest checkpoint
  is deleted just before the next snapshot, and a driver killed in between left a trial whose
  checkpoint is gone ("cannot be loaded" on resume). Inside, the snapshot is forced every
  K - margin checkpoints, so it is stored while `margin` more checkpoints are made.
- `local_uploads_whole()`: Tune's driver uploads its staging directory (experiment state,
  searcher state, each trial's logs) to storage after each snapshot, every file of it, each
  written in place (`ray.train._internal.storage._upload_to_fs_path`). A driver killed during
  an upload, often with snapshots every few epochs, could leave a truncated experiment state
  in storage, which `resume` cannot read. Inside, for local storage, each file lands whole
  (written beside, then renamed), the experiment's own files last, logs up to their last full
  line, and files unchanged since their last upload are not copied again.

Added for clusters of several hosts, each self-contained:
- `node_deaths_unprinted(quiet)` (what is printed; falls back to Ray's own with a warning): the
  driver prints every error the GCS publishes; a lost node's are about 30 lines (the GCS's
  "marked dead" notice, the raylet's log and C++ stack trace). Inside, those two kinds are not
  printed (tune_jobs.host_watch says what happened); every other error is.
- `retried_trials_first()` (the order waiting trials start in; falls back to Tune's with a
  warning): Tune requeues a failed trial behind every trial not started yet, in its trial list
  and in its actor requests. Inside, the retried trial keeps its place and its actor goes first.
- `restore_trial_log(callback, file, trial)`: Tune's loggers' own copy of a trial's log from
  storage (`LoggerCallback._restore_from_remote`), which launch.PerEpochRows makes before it
  drops the rows of the epochs a restarted trial trains again.
"""

from __future__ import annotations

import contextlib
import fnmatch
import importlib.util
import json
import logging
import os
import re
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

# Ray's switch for single-machine clusters (ray_constants.ENABLE_RAY_CLUSTER, read when Ray is
# imported): off, a new local Ray takes 127.0.0.1 as its node address and binds every port there.
SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
# What Tune sets in every trial actor's environment besides what it propagates from the driver
# (ray.tune.execution.class_cache.DEFAULT_ENV_VARS, which tests/test_private_apis.py compares).
TUNE_ACTOR_ENV = {"PL_DISABLE_FORK": "1"}
TOKEN_SETUP_LOGGER = "ray._private.authentication.authentication_token_setup"


def enable_token_auth_if_token_available() -> bool:
    """Turn on token auth where a token exists (~/.ray/auth_token, RAY_AUTH_TOKEN[_PATH]) and
    RAY_AUTH_MODE is unset; True where token auth is on. False also where this Ray has no such
    helper (RAY_AUTH_MODE=token then works as documented)."""
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:
        return False
    logging.getLogger(TOKEN_SETUP_LOGGER).setLevel(logging.ERROR)  # its notice: we print what matters
    return bool(maybe_enable_token_auth_if_token_available(warn_if_disabled=False))


# The packages whose import Ray's dashboard check tries (ray/dashboard/optional_deps.py).
DASHBOARD_PACKAGES = ("aiohttp", "aiohttp_cors", "grpc", "opencensus", "opentelemetry",
                      "opentelemetry.exporter.prometheus", "opentelemetry.proto", "prometheus_client", "pydantic")
REGISTRATION_POLL_S = 0.02


@contextlib.contextmanager
def lean_local_start(log_monitor: bool) -> Iterator[None]:
    """A local Ray started inside (`ray.init()` without an address) starts no autoscaler monitor,
    no API server unless `include_dashboard=True`, and a log monitor only where `log_monitor`;
    its start returns as soon as its raylet has registered. Restored on leaving."""
    import ray._private.utils as ray_utils
    from ray._private.node import Node

    init, start_api_server, start_ray_processes = Node.__init__, Node.start_api_server, Node.start_ray_processes

    def lean_init(node, ray_params, head=False, *args, **kwargs):
        if head and not kwargs.get("connect_only"):
            ray_params.no_monitor = True
            ray_params.include_log_monitor = log_monitor
        init(node, ray_params, head, *args, **kwargs)

    def api_server_if_asked(node, *, include_dashboard, raise_on_failure):
        if include_dashboard:
            start_api_server(node, include_dashboard=include_dashboard, raise_on_failure=raise_on_failure)

    def processes_then_registration(node):
        start_ray_processes(node)
        _wait_for_registration(node)

    def dashboard_packages_missing() -> ImportError | None:
        missing = next((name for name in DASHBOARD_PACKAGES if _find_spec(name) is None), None)
        return ImportError(f"No module named {missing!r}") if missing else None

    with (_swapped(Node, "__init__", lean_init), _swapped(Node, "start_api_server", api_server_if_asked),
          _swapped(Node, "start_ray_processes", processes_then_registration),
          _swapped(ray_utils, "get_dashboard_dependency_error", dashboard_packages_missing)):
        yield


def _find_spec(name: str):
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError):  # a parent package that is missing or broken
        return None


def _wait_for_registration(node, timeout_s: float = 30.0) -> None:
    """Until this node's raylet is in the GCS's node table, its process ends or `timeout_s` passes
    (Ray's own check, which follows, then finds it at once or reports the failure)."""
    from ray._private import ray_constants

    raylets = node.all_processes.get(ray_constants.PROCESS_TYPE_RAYLET, [])
    client, deadline = node.get_gcs_client(), time.monotonic() + timeout_s
    while time.monotonic() < deadline and not any(p.process.poll() is not None for p in raylets):
        if any(node_id.hex() == node.node_id for node_id in client.get_all_node_info(timeout=timeout_s)):
            return
        time.sleep(REGISTRATION_POLL_S)


@contextlib.contextmanager
def ray_on_loopback() -> Iterator[None]:
    """Start a local Ray inside: it takes 127.0.0.1 as its node address, so its GCS, raylet, object
    manager, workers, agents and this driver listen on loopback only. Restored on leaving.

    Ray rewrites a loopback `_node_ip_address` to the machine's address unless its single-machine
    switch is off; the switch is read when Ray is imported (the driver usually has), so it is set
    on Ray's module for this process and in the environment for the processes Ray starts.
    Does nothing where RAY_ADDRESS makes ray.init() join an existing cluster.
    """
    if os.environ.get("RAY_ADDRESS"):
        yield
        return
    from ray._private import ray_constants

    before_env = os.environ.get(SINGLE_MACHINE_ENV)
    os.environ[SINGLE_MACHINE_ENV] = "0"
    try:
        with _swapped(ray_constants, "ENABLE_RAY_CLUSTER", False):
            yield
    finally:
        if before_env is None:
            os.environ.pop(SINGLE_MACHINE_ENV, None)
        else:
            os.environ[SINGLE_MACHINE_ENV] = before_env


@contextlib.contextmanager
def _swapped(owner, name: str, replacement) -> Iterator[None]:
    """Inside, `owner.name` is `replacement`; the original is restored on leaving."""
    original = getattr(owner, name)
    setattr(owner, name, replacement)
    try:
        yield
    finally:
        setattr(owner, name, original)


@contextlib.contextmanager
def trial_actors_inheriting(worker_env: Mapping[str, str]) -> Iterator[None]:
    """Inside, Tune registers a trainable's actor class without a runtime env where every variable
    it would set in the actors' environment has that value in `worker_env`, the environment the
    workers inherit (empty where unknown: Tune's runtime env, as without this)."""
    import ray
    from ray.tune.execution import class_cache

    get = class_cache._ActorClassCache.get

    def get_inheriting(cache, trainable_cls):
        if trainable_cls not in cache._cache:
            propagated = {k: os.environ[k] for k in class_cache.ENV_VARS_TO_PROPAGATE if k in os.environ}
            wanted = {**class_cache.DEFAULT_ENV_VARS, **propagated}
            if all(worker_env.get(k) == v for k, v in wanted.items()):
                cache._cache[trainable_cls] = ray.remote(trainable_cls)
        return get(cache, trainable_cls)

    with _swapped(class_cache._ActorClassCache, "get", get_inheriting):
        yield


@contextlib.contextmanager
def callbacks_not_tallied() -> Iterator[None]:
    """Inside, Tune does not tally the run's callbacks for Ray's usage telemetry (which imports
    wandb, mlflow and comet where installed, to compare classes). Restored on leaving."""
    from ray.air._internal import usage

    no_tally = lambda callbacks: False  # noqa: E731 - as Ray's own does when given no callbacks
    with _swapped(usage, "tag_callbacks", no_tally):
        yield


@contextlib.contextmanager
def starting_actors_kept() -> Iterator[None]:
    """Inside, Tune does not kill a trial's actor that is starting to reuse a cached actor for that
    trial; trials whose actors wait for resources (no process yet) still take cached actors."""
    from ray.tune.execution.tune_controller import TuneController

    reuse = TuneController._maybe_reuse_cached_actor

    def reuse_unless_starting(controller, trial) -> bool:
        actor = controller._trial_to_actor.get(trial)
        starting = (actor is not None and trial not in controller._resetting_trials
                    and controller._actor_manager.is_actor_started(actor)  # has its resources and a process
                    and actor not in controller._started_actors)  # that has not finished starting
        return False if starting else reuse(controller, trial)

    with _swapped(TuneController, "_maybe_reuse_cached_actor", reuse_unless_starting):
        yield


@contextlib.contextmanager
def metrics_analysed(names: frozenset[str]) -> Iterator[None]:
    """Inside, Tune keeps its per-trial running statistics only for the metrics in `names`."""
    from ray.tune.trainable.metadata import _TrainingRunMetadata

    update = _TrainingRunMetadata.update_metric

    def update_named(metadata, metric, value, step=1):
        if metric in names:
            update(metadata, metric, value, step)

    with _swapped(_TrainingRunMetadata, "update_metric", update_named):
        yield


@contextlib.contextmanager
def results_without_config() -> Iterator[None]:
    """Inside, the driver drops the `config` entry Tune adds to each trial result and each
    checkpoint's metrics before anything keeps or logs them (the trial's own config stays)."""
    from ray.tune.execution.tune_controller import TuneController

    process_result, process_save = TuneController._process_trial_result, TuneController._process_trial_save

    def result_without_config(controller, trial, result):
        result.pop("config", None)
        return process_result(controller, trial, result)

    def save_without_config(controller, trial, checkpoint_value):
        if isinstance(getattr(checkpoint_value, "metrics", None), dict):
            checkpoint_value.metrics.pop("config", None)
        return process_save(controller, trial, checkpoint_value)

    with (_swapped(TuneController, "_process_trial_result", result_without_config),
          _swapped(TuneController, "_process_trial_save", save_without_config)):
        yield


@contextlib.contextmanager
def result_frames_not_loaded() -> Iterator[None]:
    """Inside, the `ResultGrid` that `fit()` returns loads no trial's results into a DataFrame."""
    from ray.tune.analysis.experiment_analysis import ExperimentAnalysis

    with _swapped(ExperimentAnalysis, "_fetch_trial_dataframes", lambda analysis: {}):
        yield


@contextlib.contextmanager
def driver_logs_kept() -> Iterator[None]:
    """Inside, Tune's loggers copy a trial's file from storage into the driver's staging directory
    only where the driver has none: the driver's own is newer (storage's is synced from it)."""
    from ray.tune.logger.logger import LoggerCallback

    restore = LoggerCallback._restore_from_remote

    def restore_unless_kept(callback, file_name: str, trial) -> None:
        if not Path(trial.local_path, file_name).exists():
            restore(callback, file_name, trial)

    with _swapped(LoggerCallback, "_restore_from_remote", restore_unless_kept):
        yield


@contextlib.contextmanager
def snapshots_ahead_of_deletion(margin: int) -> Iterator[None]:
    """Inside, Tune forces its experiment snapshot every `num_to_keep - margin` checkpoints of a trial
    (at least every one) instead of every `num_to_keep`."""
    from ray.tune.execution.experiment_state import _ExperimentCheckpointManager

    init = _ExperimentCheckpointManager.__init__

    def init_sooner(manager, *args, **kwargs) -> None:
        init(manager, *args, **kwargs)
        if manager._sync_every_n_trial_checkpoints:
            manager._sync_every_n_trial_checkpoints = max(1, manager._sync_every_n_trial_checkpoints - margin)

    with _swapped(_ExperimentCheckpointManager, "__init__", init_sooner):
        yield


LINE_LOGS = ("result.json", "progress.csv")  # Tune's per-trial logs, appended line by line
EXPERIMENT_STATE = "experiment_state-*.json"  # TuneController.CKPT_FILE_TMPL, rewritten in place


# How Tune's experiment state ends (`TuneController.save_to_dir` dumps trial_data, runner_data,
# then stats): only a whole file ends so, since quotes inside its strings are escaped.
STATE_END = re.compile(rb'"stats": \{"start_time": [-+0-9.eE]+\}\}\s*$')


def _is_whole_state(data: bytes) -> bool:
    """Whether `data` is a whole experiment state: its end read where Tune's end is known (a
    parse of 1,000 trials' state costs the driver three times its size), else a full parse."""
    if STATE_END.search(data[-200:]):
        return True
    try:
        json.loads(data)
    except ValueError:
        return False
    return True


def _upload_whole(local_dir: str, fs_dir: str, uploaded: dict[str, tuple[int, int, int]]) -> None:
    """Copy `local_dir` into `fs_dir` (both local): trial files first, then the top-level ones;
    each file whole, via a temporary name; line logs up to their last full line, the experiment
    state only when it is whole. `uploaded` holds each source's (inode, mtime, size) as last
    copied whole: a file unchanged since is skipped."""
    files = []
    for root, _, names in os.walk(local_dir):
        os.makedirs(os.path.join(fs_dir, os.path.relpath(root, local_dir)), exist_ok=True)
        files += [os.path.relpath(os.path.join(root, name), local_dir) for name in names]
    for rel in sorted(files, key=lambda rel: (os.sep not in rel, rel)):  # top-level files last
        source, target = os.path.join(local_dir, rel), os.path.join(fs_dir, rel)
        try:
            found = os.stat(source)  # before reading: a change after it is copied next time
            version = (found.st_ino, found.st_mtime_ns, found.st_size)
            if uploaded.get(source) == version:
                continue
            with open(source, "rb") as f:
                data = f.read()
        except FileNotFoundError:  # replaced or removed meanwhile: the next upload takes it
            continue
        if os.path.basename(rel) in LINE_LOGS:
            data = data[:data.rfind(b"\n") + 1]
        elif fnmatch.fnmatch(rel, EXPERIMENT_STATE) and not _is_whole_state(data):
            continue  # Tune rewrites it in place: caught mid-write, the next upload takes it
        temporary = f"{target}.uploading-{os.getpid()}"
        with open(temporary, "wb") as f:
            f.write(data)
        os.replace(temporary, target)
        if len(data) == found.st_size:  # whole: unless it changes, done
            uploaded[source] = version


@contextlib.contextmanager
def local_uploads_whole() -> Iterator[None]:
    """Inside, Tune's uploads of a directory to local storage land file by file, each whole, the
    top-level (experiment) files last; other uploads are Tune's own."""
    import pyarrow.fs
    from ray.train._internal import storage

    upload, uploaded = storage._upload_to_fs_path, {}

    def upload_whole(local_path: str, fs, fs_path: str, exclude=None) -> None:
        if isinstance(fs, pyarrow.fs.LocalFileSystem) and os.path.isdir(local_path) and not exclude:
            _upload_whole(local_path, fs_path, uploaded)
        else:
            upload(local_path=local_path, fs=fs, fs_path=fs_path, exclude=exclude)

    with _swapped(storage, "_upload_to_fs_path", upload_whole):
        yield


# -- Added for clusters of several hosts (issue 28); each self-contained, tested by behaviour in
# -- tests/test_private_apis.py. Class: the first two change only what is printed or the order in
# -- which waiting trials start, so a Ray that no longer fits falls back to its own behaviour with
# -- one warning; `restore_trial_log` is Tune's own copy, called where our loggers need it.
NODE_DEATH_ERRORS = ("node_removed", "raylet_died")  # ray_constants.REMOVED_NODE_ERROR, RAYLET_DIED_ERROR


@contextlib.contextmanager
def node_deaths_unprinted(quiet: bool = True) -> Iterator[None]:
    """A driver connected inside (`ray.init`) does not print Ray's messages about nodes that died:
    the GCS's "marked dead because the detector has missed too many heartbeats" and the raylet's
    "Raylet is terminated" with 20 lines of its log and a C++ stack trace, per node
    (`ray._private.worker.listen_error_messages`, which prints every error the GCS publishes).
    The sweep says what happened in its own lines (tune_jobs.host_watch); every other Ray error
    message is printed as before. Does nothing unless `quiet`."""
    if not quiet:
        yield
        return
    from ray._private import worker

    listen = getattr(worker, "listen_error_messages", None)
    if listen is None:
        _fallback_warning("node_deaths_unprinted", "Ray prints its own messages about lost nodes")
        yield
        return

    class WithoutNodeDeaths:
        """The driver's GCS error subscriber, less the errors about dead nodes."""

        def __init__(self, subscriber) -> None:
            self._subscriber = subscriber

        def poll(self, *args, **kwargs):
            while True:
                key, error = self._subscriber.poll(*args, **kwargs)
                if error is None or error.get("type") not in NODE_DEATH_ERRORS:
                    return key, error

        def __getattr__(self, name):
            return getattr(self._subscriber, name)

    def listen_without_node_deaths(driver, threads_stopped) -> None:
        driver.gcs_error_subscriber = WithoutNodeDeaths(driver.gcs_error_subscriber)
        listen(driver, threads_stopped)

    with _swapped(worker, "listen_error_messages", listen_without_node_deaths):
        yield


@contextlib.contextmanager
def retried_trials_first() -> Iterator[None]:
    """Inside, a trial that failed and is retried starts ahead of trials that have not started.

    Tune requeues a failed trial behind every other (`TuneController._requeue_trial` moves it to
    the end of its trial list, which its FIFO scheduler and the reuse of a finished trial's actor
    follow), and requests its new actor behind the actors already requested for pending trials
    (`RayActorManager`, which starts actors of one resource shape in request order): in a
    6-trial sweep on 2 GPUs a trial lost with its host restarted last, 2 minutes later. Inside,
    the retried trial keeps its place in the list (ahead of those not started) and its actor
    request goes first."""
    from ray.tune.execution.tune_controller import TuneController

    if not all(hasattr(TuneController, name) for name in ("_requeue_trial", "_schedule_trial_actor")):
        _fallback_warning("retried_trials_first", "a retried trial waits behind every trial not yet started")
        yield
        return
    requeue, schedule_actor = TuneController._requeue_trial, TuneController._schedule_trial_actor
    retried = set()  # requeued trials whose new actor is not requested yet

    def requeue_in_place(controller, trial) -> None:
        place = controller._trials.index(trial)
        requeue(controller, trial)
        controller._trials.remove(trial)
        controller._trials.insert(place, trial)
        retried.add(trial)

    def schedule_retried_first(controller, trial) -> None:
        schedule_actor(controller, trial)
        if trial not in retried:
            return
        retried.discard(trial)
        actor = controller._trial_to_actor.get(trial)
        for waiting in controller._actor_manager._resource_request_to_pending_actors.values():
            if actor in waiting:
                waiting.remove(actor)
                waiting.insert(0, actor)

    with (_swapped(TuneController, "_requeue_trial", requeue_in_place),
          _swapped(TuneController, "_schedule_trial_actor", schedule_retried_first)):
        yield


def restore_trial_log(callback, file_name: str, trial) -> None:
    """Copy a trial's log `file_name` from storage into the driver's staging directory, as Tune's
    loggers do when they open it (`LoggerCallback._restore_from_remote`: only where the trial has
    a checkpoint, so a trial that starts over has none)."""
    callback._restore_from_remote(file_name, trial)


def _fallback_warning(patch: str, consequence: str) -> None:
    """One warning: a patch that no longer fits this Ray is left out, and what that means."""
    import warnings

    warnings.warn(f"instrument-sweep: this Ray no longer has what `{patch}` patches; {consequence}",
                  RuntimeWarning, stacklevel=3)
