"""The only module that touches Ray's private APIs (`ray._private`, Tune's controller);
tests/test_private_apis.py checks each one's behaviour on the Ray installed, and feeds each
patch a changed target to show what then happens.

    ray_private.check_fixes(without=False)   # before any trial: InputError (exit 2) where a fix no longer fits
    with ray_private.lean_local_start(log_monitor=False): ray.init()   # each patch: a context manager
    ray_private.PATCHES["local_uploads_whole"].kind                     # "fix" or "speed-up"

Every patch is one of two kinds (`PATCHES`):
- speed-ups (time or memory, and in kind the console's lines, the order trials wait in, the node
  a driver joins through; Ray's own behaviour is correct, only slower, noisier or, in rare
  setups, stuck): where one no longer fits the installed Ray (a target missing, its parameters
  changed, a name its code used gone, or an exception inside the patched call), Ray's own
  behaviour is used instead, with one warning that names Ray's version. A sweep never fails
  for one.
- fixes (without them a sweep can lose work or not resume, or a local Ray listens beyond
  loopback): `check_fixes` checks them before any trial starts; where one does not fit, the
  command stops with exit 2, naming Ray's version and the range tested (SUPPORTED_RAY),
  unless the user runs without them (`--without-ray-fixes`, `sweep(without_ray_fixes=True)`),
  warned that resume may then lose work. An exception inside a fix's patched call falls back
  to Ray's own behaviour with one warning, as for a speed-up. docs/upstream.md reports the Ray
  bug behind each fix, so the fix can go once Ray has it.

The patches:
- `enable_token_auth_if_token_available()` (speed-up; a convenience): Ray attaches a cluster
  token only with RAY_AUTH_MODE=token; its own helper (Ray 2.59 on) switches that on when a
  token exists. Without it, RAY_AUTH_MODE=token works as Ray documents; a Ray from 2.59 on
  without it (moved or changed) falls back with a warning, an older one silently.
- `lean_local_start(log_monitor)` (speed-up): a local `ray.init` starts, one after another,
  the GCS, an autoscaler monitor, an API server (with the dashboard off too) that it waits
  for, the raylet, and then waits for the raylet's registration, polling once a second; on
  the way it imports the dashboard's optional packages in the driver to see whether they are
  installed. Inside: no autoscaler monitor (a local Ray has nothing to scale), no API server
  unless the dashboard is asked for, a log monitor only where logs go to the driver, the
  packages looked up instead of imported, and the registration polled every 20 ms.
- `ray_on_loopback()` (fix: security): Ray's single-machine switch
  (`ray_constants.ENABLE_RAY_CLUSTER`), off for one `ray.init`, keeps a local Ray's every
  listener on 127.0.0.1. Without it a local Ray listens on the machine's address.
- `trial_actors_inheriting(worker_env)` (speed-up): Tune gives every trial actor a runtime env
  (`ray.tune.execution.class_cache`: PL_DISABLE_FORK=1 and the variables it propagates from
  the driver, such as AWS keys). Ray starts a worker with a runtime env through a setup
  process that imports Ray and then starts the worker, which imports Ray again: about 0.6 s
  of a core per trial process here, and the runtime-env agent's round trip. Inside, where the
  runtime env Tune made holds only environment variables that already have their values in
  `worker_env` (what the workers of a local Ray inherit from the driver that started it), the
  actors get no runtime env; anything else Tune puts in it keeps Tune's.
- `callbacks_not_tallied()` (speed-up): Tune's usage-telemetry tally of a run's callbacks
  (`ray.air._internal.usage.tag_callbacks`) imports every tracker integration Ray has to
  count callbacks by class: W&B, MLflow and Comet where installed, 1.7 s before the first
  trial. Skipped for one `fit()`.
- `starting_actors_kept()` (speed-up): Tune hands a finished trial's cached actor to the next
  pending trial even where that trial's own actor is already starting, and kills the starting
  one (`TuneController._maybe_reuse_cached_actor`). Where trials are shorter than an actor's
  start, the first actors up run every trial while the rest are started and killed in turn:
  100 two-epoch trials on 32 logical GPUs started 46-63 processes and ran on 1-4. Inside,
  an actor that is starting is kept for its trial; the cached one goes to a trial whose
  actor still waits for resources.
- `metrics_analysed(names)` (speed-up: memory): Tune keeps running statistics (max, min, mean,
  last, means of the last 5 and 10) of every number a trial reports, in the driver, for the
  run (`_TrainingRunMetadata.update_metric`) and again as JSON in its experiment state: about
  95 KiB a trial for our reports, most of the driver's growth with the sweep's size.
  Inside, only the named metrics are kept (what `ResultGrid.get_best_result` ranks by;
  sweeps name none: our analysis reads every epoch from the trials' files).
- `result_frames_not_loaded()` (speed-up): when `fit()` ends, Tune reads every trial's
  result.json into a pandas DataFrame for the `ResultGrid`
  (`ExperimentAnalysis._fetch_trial_dataframes`): 2.4 s in the driver for 1,000 trials, whose
  results our analysis then reads again. Inside, none is loaded (each
  `Result.metrics_dataframe` is None).
- `trials_staged_in_order(rank)` (speed-up kind: the order trials start in): Tune requests a
  process for every waiting trial at once, the one its scheduler picks first and the others in
  the order it made them (`TuneController._maybe_add_actors` walks `_pending_trials_list`): the
  first trials on the other slots are the spec's next, whatever the scheduler would pick.
  Inside, the waiting trials are sorted by `rank` first (equals in Tune's order): with
  tune_jobs.launch.LongestFirst's rank, the longest expected trials start first on every slot.
- `driver_logs_kept()` (fix: data loss): Tune's loggers write a trial's result.json and
  progress.csv in the driver's staging directory and sync it to storage with each snapshot of
  the experiment (every third checkpoint here). When a trial restarts after a failure they
  first copy the trial's files from storage over the driver's
  (`LoggerCallback._restore_from_remote`), so the rows logged since the last sync were lost: a
  retried trial's result.json skipped epochs. Inside, the copy is made only where the driver
  has no such file (a resumed experiment).
- `snapshots_ahead_of_deletion(margin)` (fix: resumability): with
  `CheckpointConfig(num_to_keep=K)` Tune deletes a trial's checkpoint as its K-th newer one
  registers, and forces a snapshot of the experiment every K checkpoints
  (`_ExperimentCheckpointManager`): the stored snapshot's latest checkpoint is deleted just
  before the next snapshot, and a driver killed in between left a trial whose checkpoint is
  gone ("cannot be loaded" on resume). Inside, the snapshot is forced every K - margin
  checkpoints, so it is stored while `margin` more checkpoints are made.
- `local_uploads_whole()` (fix: resumability): Tune's driver uploads its staging directory
  (experiment state, searcher state, each trial's logs) to storage after each snapshot, every
  file of it, each written in place (`ray.train._internal.storage._upload_to_fs_path`). A
  driver killed during an upload, often with snapshots every few epochs, could leave a
  truncated experiment state in storage, which `resume` cannot read. Inside, for local
  storage, each file lands whole (written beside, then renamed), the experiment's own files
  last, logs up to their last full line, and files unchanged since their last upload are not
  copied again.
- `restored_callbacks(tuner)` (speed-up): the callbacks a restored Tuner brings from its
  experiment (`Tuner._local_tuner.get_run_config()`), so `resume` adds only the loggers an
  experiment lacks and no TensorBoard logger. Where unknown (None), Tune adds its own.
- `restore_trial_log(callback, file, trial)` (fix: each epoch once): Tune's loggers' own copy
  of a trial's log from storage (`LoggerCallback._restore_from_remote`), which
  launch.PerEpochRows makes for a trial resumed from a checkpoint before it drops the rows of
  the epochs that trial trains again (`checkpoint_epoch(trial)`: up to which epoch it keeps
  them). Without it Tune copies the file as it opens it, and a resumed trial's result.json and
  progress.csv hold those epochs twice.

For storage URIs with credentials (not a patch; checked where such a URI is used):
- `storage_for_ray(location)`, `shipped_to_workers(fs)`: an S3 filesystem built with credentials
  given in a URI pickles them, and Tune pickles its storage filesystem into its stored state
  (tuner.pkl, each trial's storage in the experiment state, its checkpoints' filesystems). Ray
  marks the pickling of its own transfers (`SerializationContext.is_in_band_serialization`), so
  the filesystem handed to Ray pickles its credentials there only: workers get them, the stored
  state does not. Where Ray no longer marks them, such a URI is refused (exit 2), before anything
  is written.

For clusters of several hosts:
- `node_deaths_unprinted(quiet)` (speed-up kind: what is printed): the driver prints every
  error the GCS publishes; a lost node's are about 30 lines (the GCS's "marked dead" notice,
  the raylet's log and C++ stack trace). Inside, those two kinds are not printed
  (tune_jobs.host_watch says what happened); every other error is.
- `state_saver()` (speed-up kind: where the state is saved as SIGTERM comes): Tune saves the
  experiment's state as it stops from its main thread only, once that thread takes up the signal.
  Slurm ends a job by signalling all its processes at once, Ray's too: where the driver's main
  thread is then inside a call to Ray that waits for the GCS (Tune starting a retry of a trial
  whose node went), it waits until the driver gives up on the GCS and exits, saving nothing.
  Inside, a function that saves the running experiment's state as Tune does as it stops
  (`TuneController.checkpoint(force=True, wait=True)`), from any thread (launch.terminate_as_interrupt),
  Tune's own saves taking turns with it. A speed-up in kind: where it no longer fits, the state is
  saved where the main thread takes up the signal, as Tune alone does, and a sweep runs as before.
- `retried_trials_first()` (speed-up kind: the order waiting trials start in): Tune requeues a
  failed trial behind every trial not started yet, in its trial list and in its actor
  requests. Inside, the retried trial keeps its place and its actor goes first.
- `raylet_addresses()`, `joining_through(node_ip)` (speed-up kind: which node a driver joins
  through): the raylets in this host's process table, as their command lines name their node
  and GCS, and `ray.init`'s keyword for the node a driver joins through (`_node_ip_address`).
  Left to itself a driver joining by HOST:PORT takes a raylet that `ps` shows; where hosts
  share a process table (containers, network namespaces) that can be another host's, and the
  driver hung. Where they no longer fit, Ray's own choice, which is right where each host has
  its own process table.

Tune's copy of a trial's config in every result it keeps and logs (once dropped by a patch,
`results_without_config`) needs none: the param space holds only what identifies a trial
(tune_jobs.launch.param_space).
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import importlib
import importlib.util
import inspect
import json
import logging
import os
import re
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from trainables.errors import InputError

# The Ray releases every patch was tested with, both ends (pyproject.toml's range;
# tests/test_dependencies.py keeps the two the same).
SUPPORTED_RAY = ("2.52", "2.60")
WITHOUT_FIXES_FLAG = "--without-ray-fixes"
# Ray's switch for single-machine clusters (ray_constants.ENABLE_RAY_CLUSTER, read when Ray is
# imported): off, a new local Ray takes 127.0.0.1 as its node address and binds every port there.
SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
# What Tune sets in every trial actor's environment besides what it propagates from the driver
# (ray.tune.execution.class_cache.DEFAULT_ENV_VARS, which tests/test_private_apis.py compares).
TUNE_ACTOR_ENV = {"PL_DISABLE_FORK": "1"}
TOKEN_SETUP_LOGGER = "ray._private.authentication.authentication_token_setup"
TOKEN_HELPER_RAY = (2, 59)  # the first Ray with the token helper (`enable_token_auth_if_token_available`)


# -- what each patch relies on, and what happens where it no longer fits -------------------


# id(replacement) -> what it replaced, while a patch is on (`_swapped`): a patch checked while
# another is on (restore_trial_log inside driver_logs_kept) is checked against Ray's own code.
_SWAPPED: dict[int, object] = {}


@dataclass(frozen=True)
class Target:
    """One thing of Ray's a patch relies on: `path` ("module:Class.attribute"), the parameters it
    takes where the patch calls or replaces it (None: not checked), and names its code must
    use (attributes the patch sets or functions it replaces, as read there; keywords it pops and
    flags it writes, as strings there)."""

    path: str
    params: tuple[str, ...] | None = None
    names: tuple[str, ...] = ()

    def resolve(self):
        """Ray's own object, also where one of our patches has it swapped for now."""
        module, _, attributes = self.path.partition(":")
        found = importlib.import_module(module)
        for name in filter(None, attributes.split(".")):
            found = getattr(found, name)
            found = _SWAPPED.get(id(found), found)
        return found

    def mismatch(self) -> str | None:
        """How the installed Ray differs from what the patch relies on, or None."""
        try:
            found = self.resolve()
        except (ImportError, AttributeError):
            return f"{self.path} is missing"
        if self.params is not None:
            try:
                params = tuple(inspect.signature(found).parameters)
            except (TypeError, ValueError):
                params = None
            if params != self.params:
                return f"{self.path} takes ({', '.join(params or ('?',))}), not ({', '.join(self.params)})"
        unused = [name for name in self.names if not _code_uses(found, name)]
        return f"{self.path} no longer uses {', '.join(unused)}" if unused else None


def _code_uses(function, name: str) -> bool:
    """Whether `function`'s code (nested functions included) reads, sets or calls `name`, or holds
    it as a string (a keyword it pops, the text before a flag's value)."""
    code = getattr(inspect.unwrap(function), "__code__", None)
    pending = [code] if code else []
    while pending:
        code = pending.pop()
        if name in code.co_names or name in code.co_consts:
            return True
        pending += [c for c in code.co_consts if isinstance(c, types.CodeType)]
    return False


@dataclass(frozen=True)
class Patch:
    """A patch's kind and what Ray's own behaviour costs where it is off (for its warning)."""

    kind: Literal["speed-up", "fix"]
    without: str
    targets: tuple[Target, ...]


_TUNE_CONTROLLER = "ray.tune.execution.tune_controller:TuneController"
_CHECKPOINT_MANAGER = "ray.tune.execution.experiment_state:_ExperimentCheckpointManager"
PATCHES: dict[str, Patch] = {
    "enable_token_auth_if_token_available": Patch("speed-up", "set RAY_AUTH_MODE=token where the cluster wants a "
                                                              "token", (
        Target(f"{TOKEN_SETUP_LOGGER}:maybe_enable_token_auth_if_token_available", ("warn_if_disabled",)),)),
    "lean_local_start": Patch("speed-up", "a local Ray takes about a second longer to start", (
        Target("ray._private.node:Node.__init__", ("self", "ray_params", "head", "shutdown_at_exit", "spawn_reaper",
                                                   "connect_only", "default_worker", "ray_init_cluster")),
        Target("ray._private.node:Node.start_api_server", ("self", "include_dashboard", "raise_on_failure")),
        Target("ray._private.node:Node.start_ray_processes", ("self",)),
        Target("ray._private.node:Node.get_gcs_client", ("self",)),
        Target("ray._private.node:Node.__init__", names=("all_processes", "node_id")),
        Target("ray._private.parameter:RayParams.__init__", names=("no_monitor", "include_log_monitor")),
        Target("ray._private.ray_constants:PROCESS_TYPE_RAYLET"),
        Target("ray._private.utils:get_dashboard_dependency_error", ()))),
    "ray_on_loopback": Patch("fix", "a local Ray listens on this machine's network address, not only on 127.0.0.1", (
        Target("ray._private.ray_constants:ENABLE_RAY_CLUSTER"),)),
    "trial_actors_inheriting": Patch("speed-up", "each trial process starts through Ray's runtime-env setup "
                                                 "(about 0.6 s of a core)", (
        Target("ray.tune.execution.class_cache:_ActorClassCache.get", ("self", "trainable_cls"), ("_cache",)),
        Target("ray.actor:ActorClass.remote", names=("_default_options",)))),
    "callbacks_not_tallied": Patch("speed-up", "Tune imports every tracker integration before the first trial", (
        Target("ray.air._internal.usage:tag_callbacks", ("callbacks",)),
        Target("ray.tune.tune:run", names=("tag_callbacks",)))),
    "starting_actors_kept": Patch("speed-up", "Tune may kill starting trial processes to reuse a cached one", (
        Target(f"{_TUNE_CONTROLLER}._maybe_reuse_cached_actor", ("self", "trial")),
        Target(f"{_TUNE_CONTROLLER}.__init__",
               names=("_trial_to_actor", "_resetting_trials", "_actor_manager", "_started_actors")),
        Target("ray.air.execution._internal.actor_manager:RayActorManager.is_actor_started",
               ("self", "tracked_actor")))),
    "metrics_analysed": Patch("speed-up", "the driver keeps running statistics of every reported number", (
        Target("ray.tune.trainable.metadata:_TrainingRunMetadata.update_metric",
               ("self", "metric", "value", "step")),)),
    "result_frames_not_loaded": Patch("speed-up", "Tune reads every trial's results into a DataFrame at the end", (
        Target("ray.tune.analysis.experiment_analysis:ExperimentAnalysis._fetch_trial_dataframes", ("self",)),)),
    "driver_logs_kept": Patch("fix", "a retried trial's result.json can lose the epochs since the last snapshot", (
        Target("ray.tune.logger.logger:LoggerCallback._restore_from_remote", ("self", "file_name", "trial")),
        Target("ray.tune.logger.json:JsonLoggerCallback.log_trial_start", names=("_restore_from_remote",)),
        Target("ray.tune.logger.csv:CSVLoggerCallback._setup_trial", names=("_restore_from_remote",)),
        Target("ray.tune.experiment.trial:Trial.local_path"))),
    "snapshots_ahead_of_deletion": Patch("fix", "a driver killed between two snapshots can leave a trial whose "
                                                "stored checkpoint is deleted (resume cannot load it)", (
        Target(f"{_CHECKPOINT_MANAGER}.__init__", ("self", "storage", "checkpoint_period",
                                                   "sync_every_n_trial_checkpoints"),
               ("_sync_every_n_trial_checkpoints",)),
        Target(f"{_CHECKPOINT_MANAGER}.on_trial_checkpoint", names=("_sync_every_n_trial_checkpoints",)))),
    "local_uploads_whole": Patch("fix", "a driver killed during an upload can leave a truncated experiment state "
                                        "(resume cannot read it)", (
        Target("ray.train._internal.storage:_upload_to_fs_path", ("local_path", "fs", "fs_path", "exclude")),
        Target("ray.train._internal.storage:_FilesystemSyncer._sync_up_command", names=("_upload_to_fs_path",)))),
    "restored_callbacks": Patch("speed-up", "resume adds Tune's TensorBoard logger", (
        Target("ray.tune.tuner:Tuner.__init__", names=("_local_tuner",)),
        Target("ray.tune.impl.tuner_internal:TunerInternal.get_run_config", ("self",)))),
    "restore_trial_log": Patch("fix", "a resumed trial's result.json and progress.csv can hold the epochs after "
                                      "its checkpoint twice", (
        Target("ray.tune.experiment.trial:Trial.init_local_path", ("self",)),
        Target("ray.tune.experiment.trial:Trial.latest_checkpoint_result"),
        Target("ray.tune.logger.logger:LoggerCallback._restore_from_remote", ("self", "file_name", "trial")))),
    "node_deaths_unprinted": Patch("speed-up", "Ray's messages about lost nodes (about 30 lines each) are printed", (
        Target("ray._private.worker:listen_error_messages", ("worker", "threads_stopped"),
               ("gcs_error_subscriber", "poll")),
        Target("ray._private.worker:connect", names=("listen_error_messages",)),
        Target("ray._private.ray_constants:REMOVED_NODE_ERROR"),
        Target("ray._private.ray_constants:RAYLET_DIED_ERROR"))),
    "retried_trials_first": Patch("speed-up", "a retried trial waits behind every trial not started yet", (
        Target(f"{_TUNE_CONTROLLER}._requeue_trial", ("self", "trial"), ("_trials",)),
        Target(f"{_TUNE_CONTROLLER}._schedule_trial_actor", ("self", "trial"), ("_trial_to_actor",)),
        Target(f"{_TUNE_CONTROLLER}.__init__", names=("_trials", "_trial_to_actor", "_actor_manager")),
        Target("ray.air.execution._internal.actor_manager:RayActorManager._try_start_actors",
               names=("_resource_request_to_pending_actors",)))),
    "state_saver": Patch("speed-up", "a sweep whose driver is inside a call to Ray as SIGTERM comes ends without "
                                     "saving its state", (
        Target(f"{_TUNE_CONTROLLER}.checkpoint", ("self", "force", "wait")),
        Target(f"{_TUNE_CONTROLLER}.__init__"))),
    "trials_staged_in_order": Patch("speed-up", "the first trial on each slot is the next in the spec's order, not "
                                                "the next longest expected", (
        Target(f"{_TUNE_CONTROLLER}._maybe_add_actors", ("self",), ("_pending_trials_list",)),
        Target(f"{_TUNE_CONTROLLER}.__init__", names=("_pending_trials_list",)))),
    "joining_through": Patch("speed-up", "Ray chooses the node a driver joins through, which can be another host's "
                                         "where hosts share a process table", (
        Target("ray._private.services:RAYLET_EXECUTABLE"),
        Target("ray._private.services:start_raylet", names=("--node_ip_address=", "--gcs-address=")),
        Target("ray._private.worker:init", names=("_node_ip_address",)))),
}
FIXES = tuple(name for name, patch in PATCHES.items() if patch.kind == "fix")


def ray_version() -> str:
    import ray

    return ray.__version__


def supported_range() -> str:
    return f"Ray {SUPPORTED_RAY[0]} to {SUPPORTED_RAY[1]}"


def mismatch(patch: str) -> str | None:
    """What of `patch`'s targets the installed Ray no longer has as the patch relies on, or None."""
    return next((problem for target in PATCHES[patch].targets if (problem := target.mismatch())), None)


def check_fixes(without: bool = False, local: bool = True) -> bool:
    """Whether to apply the fixes: True where every one fits the installed Ray. Where one does not:
    InputError("ray", ...) (exit 2), or, `without` (the user's --without-ray-fixes), False with a
    warning. `without` where all fit: False, and a warning that they are off. Not `local` (a
    joined cluster): `ray_on_loopback`, which only a local Ray's start needs, is not checked."""
    checked = [name for name in FIXES if local or name != "ray_on_loopback"]
    problems = {name: problem for name in checked if (problem := mismatch(name))}
    what = "; ".join(f"{name}: {problem}" for name, problem in problems.items())
    if problems and not without:
        raise _refusal(what, "resume may then lose work")
    if without:
        _warn(f"running without instrument-sweep's fixes of Ray {ray_version()}"
              + (f" ({what})" if problems else "") + ": " + "; ".join(PATCHES[n].without for n in FIXES)
              + "; resume may lose work")
        _warned.update(problems)  # said here: no second warning where one is looked up later
    return not without


_warned: set[str] = set()  # the patches that warned in this process: one warning each


def _warn(text: str) -> None:
    print(f"warning: ray: {text}", file=sys.stderr, flush=True)


def _fell_back(patch: str, problem: str) -> None:
    """Say once per process that `patch` is off and Ray's own behaviour is used."""
    if patch in _warned:
        return
    _warned.add(patch)
    _warn(f"Ray {ray_version()} does not fit instrument-sweep's {patch} ({problem}; tested: {supported_range()}): "
          f"Ray's own behaviour instead, so {PATCHES[patch].without}")


def _fits(patch: str) -> bool:
    """Whether `patch` fits the installed Ray; where not, one warning (`_fell_back`)."""
    problem = mismatch(patch)
    if problem:
        _fell_back(patch, problem)
    return problem is None


class _Guard:
    """Our part of a patched call: where it raises, a warning (once) and Ray's own behaviour from
    then on. `with guard:` around our part; `guard.ok` is False once it has raised. Exceptions of
    the kinds in `passes` (the machine's, such as a full disk) propagate as Ray's own would."""

    def __init__(self, patch: str, passes: tuple[type[BaseException], ...] = ()) -> None:
        self.patch, self.ok, self.passes = patch, True, passes

    def __enter__(self) -> _Guard:
        return self

    def __exit__(self, kind, exc, traceback) -> bool:
        if kind is None or not issubclass(kind, Exception) or issubclass(kind, self.passes):
            return False
        self.ok = False
        _fell_back(self.patch, f"{kind.__name__} inside it: {exc}")
        return True


# -- the patches ------------------------------------------------------------------------------


def ray_release() -> tuple[int, int]:
    """The installed Ray's (major, minor)."""
    major, minor = ray_version().split(".")[:2]
    return int(major), int(minor)


def enable_token_auth_if_token_available() -> bool:
    """Turn on token auth where a token exists (~/.ray/auth_token, RAY_AUTH_TOKEN[_PATH]) and
    RAY_AUTH_MODE is unset; True where token auth is on. False where this Ray has no such
    helper yet (before TOKEN_HELPER_RAY: RAY_AUTH_MODE=token then works as documented; no
    warning) or it no longer fits (a warning: from TOKEN_HELPER_RAY on, one missing has moved)."""
    if ray_release() < TOKEN_HELPER_RAY or not _fits("enable_token_auth_if_token_available"):
        return False
    helper = PATCHES["enable_token_auth_if_token_available"].targets[0].resolve()
    logging.getLogger(TOKEN_SETUP_LOGGER).setLevel(logging.ERROR)  # its notice: we print what matters
    with _Guard("enable_token_auth_if_token_available"):
        return bool(helper(warn_if_disabled=False))
    return False


# The packages whose import Ray's dashboard check tries (ray/dashboard/optional_deps.py).
DASHBOARD_PACKAGES = ("aiohttp", "aiohttp_cors", "grpc", "opencensus", "opentelemetry",
                      "opentelemetry.exporter.prometheus", "opentelemetry.proto", "prometheus_client", "pydantic")
REGISTRATION_POLL_S = 0.02


@contextlib.contextmanager
def lean_local_start(log_monitor: bool) -> Iterator[None]:
    """A local Ray started inside (`ray.init()` without an address) starts no autoscaler monitor,
    no API server unless `include_dashboard=True`, and a log monitor only where `log_monitor`;
    its start returns as soon as its raylet has registered. Restored on leaving."""
    if not _fits("lean_local_start"):
        yield
        return
    import ray._private.utils as ray_utils
    from ray._private.node import Node

    init, start_api_server, start_ray_processes = Node.__init__, Node.start_api_server, Node.start_ray_processes
    guard = _Guard("lean_local_start")

    def lean_init(node, ray_params, head=False, *args, **kwargs):
        if head and not kwargs.get("connect_only") and guard.ok:
            ray_params.no_monitor = True
            ray_params.include_log_monitor = log_monitor
        init(node, ray_params, head, *args, **kwargs)

    def api_server_if_asked(node, *, include_dashboard, raise_on_failure):
        if include_dashboard or not guard.ok:
            start_api_server(node, include_dashboard=include_dashboard, raise_on_failure=raise_on_failure)

    def processes_then_registration(node):
        start_ray_processes(node)
        with guard:  # Ray's own wait follows
            if guard.ok:
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
def ray_on_loopback(fixes: bool = True) -> Iterator[None]:
    """Start a local Ray inside: it takes 127.0.0.1 as its node address, so its GCS, raylet, object
    manager, workers, agents and this driver listen on loopback only. Restored on leaving.

    Ray rewrites a loopback `_node_ip_address` to the machine's address unless its single-machine
    switch is off; the switch is read when Ray is imported (the driver usually has), so it is set
    on Ray's module for this process and in the environment for the processes Ray starts.
    Does nothing where RAY_ADDRESS makes ray.init() join an existing cluster, or without `fixes`
    (`check_fixes`: InputError where the switch is gone).
    """
    if os.environ.get("RAY_ADDRESS") or not fixes:
        yield
        return
    check_fix("ray_on_loopback")
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


def check_fix(patch: str) -> None:
    """InputError("ray", ...) where the fix `patch` does not fit the installed Ray (see `check_fixes`)."""
    problem = mismatch(patch)
    if problem:
        raise _refusal(f"{patch}: {problem}", PATCHES[patch].without)


def _refusal(what: str, then: str) -> InputError:
    """The exit-2 error where fixes (`what`: each named, with its problem) do not fit; `then`: what
    running without them costs."""
    return InputError("ray", f"Ray {ray_version()} changed internals that instrument-sweep fixes ({what}); tested: "
                             f"{supported_range()}. Install a tested Ray, or pass {WITHOUT_FIXES_FLAG} to run "
                             f"without its fixes ({then})")


@contextlib.contextmanager
def _swapped(owner, name: str, replacement) -> Iterator[None]:
    """Inside, `owner.name` is `replacement`; the original is restored on leaving. Meanwhile a
    Target that reaches it resolves to the original (`_SWAPPED`)."""
    original = getattr(owner, name)
    setattr(owner, name, replacement)
    if callable(replacement):
        _SWAPPED[id(replacement)] = original
    try:
        yield
    finally:
        setattr(owner, name, original)
        _SWAPPED.pop(id(replacement), None)


@contextlib.contextmanager
def trial_actors_inheriting(worker_env: Mapping[str, str]) -> Iterator[None]:
    """Inside, a trainable's actor class that Tune registers with a runtime env of environment
    variables only, each of which has that value in `worker_env` (the environment the workers
    inherit; empty where unknown), is registered without a runtime env."""
    if not _fits("trial_actors_inheriting"):
        yield
        return
    import ray
    from ray.tune.execution import class_cache

    get, guard = class_cache._ActorClassCache.get, _Guard("trial_actors_inheriting")

    def get_inheriting(cache, trainable_cls):
        new = trainable_cls not in cache._cache
        remote = get(cache, trainable_cls)
        with guard:
            runtime_env = remote._default_options.get("runtime_env") if new and guard.ok else None
            env_vars = (runtime_env or {}).get("env_vars") or {}
            if runtime_env and set(runtime_env) == {"env_vars"} and all(worker_env.get(k) == v
                                                                        for k, v in env_vars.items()):
                remote = cache._cache[trainable_cls] = ray.remote(trainable_cls)
        return remote

    with _swapped(class_cache._ActorClassCache, "get", get_inheriting):
        yield


@contextlib.contextmanager
def callbacks_not_tallied() -> Iterator[None]:
    """Inside, Tune does not tally the run's callbacks for Ray's usage telemetry (which imports
    wandb, mlflow and comet where installed, to compare classes). Restored on leaving."""
    if not _fits("callbacks_not_tallied"):
        yield
        return
    from ray.air._internal import usage

    no_tally = lambda callbacks: False  # noqa: E731 - as Ray's own does when given no callbacks
    with _swapped(usage, "tag_callbacks", no_tally):
        yield


@contextlib.contextmanager
def starting_actors_kept() -> Iterator[None]:
    """Inside, Tune does not kill a trial's actor that is starting to reuse a cached actor for that
    trial; trials whose actors wait for resources (no process yet) still take cached actors."""
    if not _fits("starting_actors_kept"):
        yield
        return
    from ray.tune.execution.tune_controller import TuneController

    reuse, guard = TuneController._maybe_reuse_cached_actor, _Guard("starting_actors_kept")

    def reuse_unless_starting(controller, trial) -> bool:
        with guard:
            if guard.ok:
                actor = controller._trial_to_actor.get(trial)
                if (actor is not None and trial not in controller._resetting_trials
                        and controller._actor_manager.is_actor_started(actor)  # has its resources and a process
                        and actor not in controller._started_actors):  # that has not finished starting
                    return False
        return reuse(controller, trial)

    with _swapped(TuneController, "_maybe_reuse_cached_actor", reuse_unless_starting):
        yield


@contextlib.contextmanager
def metrics_analysed(names: frozenset[str]) -> Iterator[None]:
    """Inside, Tune keeps its per-trial running statistics only for the metrics in `names`."""
    if not _fits("metrics_analysed"):
        yield
        return
    from ray.tune.trainable.metadata import _TrainingRunMetadata

    update = _TrainingRunMetadata.update_metric

    def update_named(metadata, metric, value, step=1):
        if metric in names:
            update(metadata, metric, value, step)

    with _swapped(_TrainingRunMetadata, "update_metric", update_named):
        yield


@contextlib.contextmanager
def result_frames_not_loaded() -> Iterator[None]:
    """Inside, the `ResultGrid` that `fit()` returns loads no trial's results into a DataFrame."""
    if not _fits("result_frames_not_loaded"):
        yield
        return
    from ray.tune.analysis.experiment_analysis import ExperimentAnalysis

    with _swapped(ExperimentAnalysis, "_fetch_trial_dataframes", lambda analysis: {}):
        yield


@contextlib.contextmanager
def driver_logs_kept() -> Iterator[None]:
    """Inside, Tune's loggers copy a trial's file from storage into the driver's staging directory
    only where the driver has none: the driver's own is newer (storage's is synced from it)."""
    if not _fits("driver_logs_kept"):
        yield
        return
    from ray.tune.logger.logger import LoggerCallback

    restore, guard = LoggerCallback._restore_from_remote, _Guard("driver_logs_kept")

    def restore_unless_kept(callback, file_name: str, trial) -> None:
        with guard:
            if guard.ok and Path(trial.local_path, file_name).exists():
                return
        restore(callback, file_name, trial)

    with _swapped(LoggerCallback, "_restore_from_remote", restore_unless_kept):
        yield


@contextlib.contextmanager
def snapshots_ahead_of_deletion(margin: int) -> Iterator[None]:
    """Inside, Tune forces its experiment snapshot every `num_to_keep - margin` checkpoints of a trial
    (at least every one) instead of every `num_to_keep`."""
    if not _fits("snapshots_ahead_of_deletion"):
        yield
        return
    from ray.tune.execution.experiment_state import _ExperimentCheckpointManager

    init, guard = _ExperimentCheckpointManager.__init__, _Guard("snapshots_ahead_of_deletion")

    def init_sooner(manager, *args, **kwargs) -> None:
        init(manager, *args, **kwargs)
        with guard:
            if guard.ok and manager._sync_every_n_trial_checkpoints:
                manager._sync_every_n_trial_checkpoints = max(1, manager._sync_every_n_trial_checkpoints - margin)

    with _swapped(_ExperimentCheckpointManager, "__init__", init_sooner):
        yield


LINE_LOGS = ("result.json", "progress.csv")  # Tune's per-trial logs, appended line by line
EXPERIMENT_STATE = "experiment_state-*.json"  # TuneController.CKPT_FILE_TMPL, rewritten in place
# What Tune writes in an experiment's folder before its first state (EXPERIMENT_STATE), besides trial folders
TUNE_FIRST_FILES = ("tuner.pkl", ".validate_storage_marker", "basic-variant-state-*.json", "search_gen_state-*.json")


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
    if not _fits("local_uploads_whole"):
        yield
        return
    import pyarrow.fs
    from ray.train._internal import storage

    upload, uploaded = storage._upload_to_fs_path, {}
    guard = _Guard("local_uploads_whole", passes=(OSError,))  # Tune's syncer logs those, as its own

    def upload_whole(local_path: str, fs, fs_path: str, exclude=None) -> None:
        if guard.ok and isinstance(fs, pyarrow.fs.LocalFileSystem) and os.path.isdir(local_path) and not exclude:
            with guard:
                _upload_whole(local_path, fs_path, uploaded)
                return
        upload(local_path=local_path, fs=fs, fs_path=fs_path, exclude=exclude)

    with _swapped(storage, "_upload_to_fs_path", upload_whole):
        yield


def restored_callbacks(tuner) -> list | None:
    """The callbacks `Tuner.restore` brought back from the experiment (the list the restored run
    uses: add to it), or None where this Ray does not show them."""
    if not _fits("restored_callbacks"):
        return None
    with _Guard("restored_callbacks"):
        run_config = tuner._local_tuner.get_run_config()
        if run_config.callbacks is None:
            run_config.callbacks = []
        return run_config.callbacks
    return None


def restore_trial_log(callback, file_name: str, trial) -> None:
    """Copy a trial's log `file_name` from storage into the driver's staging directory (made
    where missing), as Tune's loggers do when they open it (`LoggerCallback._restore_from_remote`:
    only where the trial has a checkpoint, so a trial that starts over has none). Where this Ray
    no longer fits, nothing is copied (a warning): Tune copies it as it opens the file."""
    if not _fits("restore_trial_log"):
        return
    with _Guard("restore_trial_log", passes=(OSError,)):  # storage's errors, as Tune's own copy raises them
        trial.init_local_path()
        callback._restore_from_remote(file_name, trial)


def checkpoint_epoch(trial) -> int | None:
    """The epoch of `trial`'s latest checkpoint, 0 before its first; None where this Ray no longer
    tells (`Trial.latest_checkpoint_result`: a target of `restore_trial_log`, checked with the fixes)."""
    if not _fits("restore_trial_log"):
        return None
    saved = getattr(trial.latest_checkpoint_result, "metrics", None) or {}
    return int(saved.get("epoch", 0))


# -- storage credentials: in Ray's transfers only -----------------------------------------------

# What `shipped_to_workers` relies on: Ray's serializer marks the pickling of what it sends (task
# and actor arguments, results, the object store) as "in band"; Tune pickles its state to storage
# and its staging folder (tuner.pkl, the experiment and searcher state) with cloudpickle outside it.
IN_BAND_TARGETS = (
    Target("ray._private.serialization:SerializationContext.is_in_band_serialization", ("self",)),
    Target("ray._private.serialization:SerializationContext._serialize_to_pickle5",
           names=("set_in_band_serialization",)),
    Target("ray._private.worker:Worker.get_serialization_context", ("self",)),
    Target("ray._private.worker:global_worker"))


def storage_for_ray(location: str):
    """(filesystem, path inside it) to hand Ray for `location` (Tune's storage_filesystem and
    storage_path, or a task that writes there): None and a local path as it is (Ray's own); for a URI
    `analysis.storage.filesystem`'s, which Ray's workers get as the driver has it, credentials given
    in the URI included (`shipped_to_workers`)."""
    from analysis import storage

    if not storage.is_uri(location):
        return None, location
    fs, path = storage.filesystem(location)
    return shipped_to_workers(fs), path


def shipped_to_workers(fs):
    """`fs` as Ray should get it: an S3 filesystem built with credentials (given in a URI) becomes one
    that pickles them only inside Ray's own transfers (to its workers, and their checkpoints back),
    and elsewhere (tuner.pkl, Tune's experiment state) as pyarrow's S3FileSystem of the same options
    without them; `resume` hands Tune its filesystem again. Another filesystem is returned as it is.
    InputError("--storage", ...) where this Ray no longer marks its transfers (IN_BAND_TARGETS)."""
    import pyarrow.fs
    from analysis.storage import CREDENTIALS_ADVICE, s3_options

    if not isinstance(fs, pyarrow.fs.S3FileSystem) or not s3_options(fs).get("secret_key"):
        return fs
    problem = next((problem for target in IN_BAND_TARGETS if (problem := target.mismatch())), None)
    if problem:
        raise InputError("--storage", f"credentials in the URI cannot be kept out of what Tune stores with Ray "
                                      f"{ray_version()} ({problem}; tested: {supported_range()}); "
                                      + CREDENTIALS_ADVICE)
    return _shipped_s3(s3_options(fs))


def in_ray_transfer() -> bool:
    """Whether this thread is pickling for Ray's own transfer (IN_BAND_TARGETS); False where Ray is
    not connected or no longer tells."""
    try:
        import ray
        from ray._private.worker import global_worker

        return ray.is_initialized() and bool(global_worker.get_serialization_context().is_in_band_serialization())
    except Exception:  # noqa: BLE001 - not knowing is not being inside: the credentials stay out
        return False


def _shipped_s3(options: dict):
    """The S3 filesystem `shipped_to_workers` makes, of pyarrow's keywords `options`."""
    return _shipped_s3_class()(**options)


@functools.cache
def _shipped_s3_class() -> type:
    import pyarrow.fs

    class ShippedS3FileSystem(pyarrow.fs.S3FileSystem):
        """pyarrow's S3FileSystem whose credentials pickle only inside Ray's transfers (see
        `shipped_to_workers`); a copy is the same filesystem (a copy pickled would lose them)."""

        def __reduce__(self):
            rebuild, (options,) = pyarrow.fs.S3FileSystem.__reduce__(self)
            if in_ray_transfer():
                return _shipped_s3, (options,)
            return rebuild, ({**options, "access_key": None, "secret_key": None, "session_token": None},)

        def __copy__(self):
            return self

        def __deepcopy__(self, memo):
            return self

    return ShippedS3FileSystem


# -- for clusters of several hosts


def _node_death_errors() -> tuple[str, ...]:
    from ray._private import ray_constants

    return ray_constants.REMOVED_NODE_ERROR, ray_constants.RAYLET_DIED_ERROR


@contextlib.contextmanager
def node_deaths_unprinted(quiet: bool = True) -> Iterator[None]:
    """A driver connected inside (`ray.init`) does not print Ray's messages about nodes that died:
    the GCS's "marked dead because the detector has missed too many heartbeats" and the raylet's
    "Raylet is terminated" with 20 lines of its log and a C++ stack trace, per node
    (`ray._private.worker.listen_error_messages`, which prints every error the GCS publishes).
    The sweep says what happened in its own lines (tune_jobs.host_watch); every other Ray error
    message is printed as before. Does nothing unless `quiet`."""
    if not quiet or not _fits("node_deaths_unprinted"):
        yield
        return
    from ray._private import worker

    listen, guard, node_deaths = worker.listen_error_messages, _Guard("node_deaths_unprinted"), _node_death_errors()

    class WithoutNodeDeaths:
        """The driver's GCS error subscriber, less the errors about dead nodes."""

        def __init__(self, subscriber) -> None:
            self._subscriber = subscriber

        def poll(self, *args, **kwargs):
            while True:
                polled = self._subscriber.poll(*args, **kwargs)
                with guard:
                    if guard.ok:
                        _, error = polled
                        if error is not None and error.get("type") in node_deaths:
                            continue
                return polled

        def __getattr__(self, name):
            return getattr(self._subscriber, name)

    def listen_without_node_deaths(driver, threads_stopped) -> None:
        with guard:
            if guard.ok:
                driver.gcs_error_subscriber = WithoutNodeDeaths(driver.gcs_error_subscriber)
        listen(driver, threads_stopped)

    with _swapped(worker, "listen_error_messages", listen_without_node_deaths):
        yield


@contextlib.contextmanager
def state_saver() -> Iterator[Callable[[], bool]]:
    """Inside, `save()`: the state of the experiment Tune runs now (its latest TuneController) saved and
    uploaded to storage as Tune saves it as it stops, from any thread, in turn with Tune's own saves; True
    where Tune's save ran (Tune logs a failed upload itself). False where no experiment runs yet, or this
    Ray does not fit (one warning)."""
    if not _fits("state_saver"):
        yield lambda: False
        return
    from ray.tune.execution.tune_controller import TuneController

    init, checkpoint, made = TuneController.__init__, TuneController.checkpoint, []
    guard, turns = _Guard("state_saver", passes=(OSError,)), threading.Lock()

    def init_and_keep(self, *args, **kwargs) -> None:
        init(self, *args, **kwargs)
        made[:] = [self]

    def checkpoint_in_turn(self, force: bool = False, wait: bool = False) -> None:
        with turns:  # Tune's saves and `save()` one at a time: both write the same state file
            checkpoint(self, force=force, wait=wait)

    def save() -> bool:
        if not made or not guard.ok:
            return False
        with guard:
            made[0].checkpoint(force=True, wait=True)
            return True
        return False

    with _swapped(TuneController, "__init__", init_and_keep), \
            _swapped(TuneController, "checkpoint", checkpoint_in_turn):
        yield save


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
    if not _fits("retried_trials_first"):
        yield
        return
    from ray.tune.execution.tune_controller import TuneController

    requeue, schedule_actor = TuneController._requeue_trial, TuneController._schedule_trial_actor
    guard, retried = _Guard("retried_trials_first"), set()  # requeued trials whose new actor is not requested yet

    def requeue_in_place(controller, trial) -> None:
        place = None
        with guard:
            if guard.ok:
                place = controller._trials.index(trial)
        requeue(controller, trial)
        with guard:
            if guard.ok and place is not None:
                controller._trials.remove(trial)
                controller._trials.insert(place, trial)
                retried.add(trial)

    def schedule_retried_first(controller, trial) -> None:
        schedule_actor(controller, trial)
        with guard:
            if not guard.ok or trial not in retried:
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


@contextlib.contextmanager
def trials_staged_in_order(rank: Callable[[object], object]) -> Iterator[None]:
    """Inside, Tune requests the processes of its waiting trials lowest `rank` first (equals in
    Tune's order); a retried trial's request, `retried_trials_first`'s, still goes ahead of them."""
    if not _fits("trials_staged_in_order"):
        yield
        return
    from ray.tune.execution.tune_controller import TuneController

    add_actors, guard = TuneController._maybe_add_actors, _Guard("trials_staged_in_order")

    def add_actors_in_order(controller) -> None:
        with guard:
            if guard.ok:
                controller._pending_trials_list.sort(key=rank)
        add_actors(controller)

    with _swapped(TuneController, "_maybe_add_actors", add_actors_in_order):
        yield


def raylet_addresses() -> list[tuple[str, str]] | None:
    """(node IP, GCS address) of every Ray raylet in this host's process table, as its command
    line names them; None where that cannot be told (no procfs; a Ray that no longer fits: a
    warning), and the caller lets Ray choose."""
    if not Path("/proc").is_dir() or not _fits("joining_through"):
        return None
    from ray._private import services

    executable = os.path.basename(services.RAYLET_EXECUTABLE).encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if not args or os.path.basename(args[0]) != executable:
            continue
        flags = dict(a.decode(errors="replace").split("=", 1) for a in args[1:] if a.startswith(b"--") and b"=" in a)
        if "--node_ip_address" in flags and "--gcs-address" in flags:
            found.append((flags["--node_ip_address"], flags["--gcs-address"]))
    return found


def joining_through(node_ip: str | None) -> dict:
    """`ray.init`'s keyword arguments for a driver that joins its cluster through the node at
    `node_ip` (from `raylet_addresses`); none where `node_ip` is None (Ray chooses)."""
    return {"_node_ip_address": node_ip} if node_ip else {}

