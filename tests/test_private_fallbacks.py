"""What happens where a private API no longer fits: each Ray patch and each private torch call is fed
a changed target (a parameter renamed, an attribute gone, an exception inside the patched call),
as a newer release could bring.

- Ray speed-ups (tune_jobs/ray_private.py): Ray's own behaviour, one warning naming Ray's version.
- Ray fixes: `check_fixes` stops before any trial (exit 2 from the CLI, nothing written) unless
  --without-ray-fixes, which runs with a warning that resume may lose work.
- torch (trainables/training/optim.py, model.py): the public path (torch.optim.Adam, autograd),
  one warning, and training goes on.
"""

import contextlib
import json
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

from processes import cli, tagged_pids, wait_until
from tune_jobs import ray_private
from trainables.errors import InputError
from tune_jobs.ray_private import PATCHES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RAY_VERSION = __import__("ray").__version__

SPEED_UPS = {  # each speed-up patch, entered as tune_jobs uses it
    "lean_local_start": lambda: ray_private.lean_local_start(log_monitor=False),
    "trial_actors_inheriting": lambda: ray_private.trial_actors_inheriting({}),
    "callbacks_not_tallied": ray_private.callbacks_not_tallied,
    "starting_actors_kept": ray_private.starting_actors_kept,
    "metrics_analysed": lambda: ray_private.metrics_analysed(frozenset()),
    "result_frames_not_loaded": ray_private.result_frames_not_loaded,
    "node_deaths_unprinted": lambda: ray_private.node_deaths_unprinted(quiet=True),
    "retried_trials_first": ray_private.retried_trials_first,
    "trials_staged_in_order": lambda: ray_private.trials_staged_in_order(lambda trial: 0),
    "state_saver": ray_private.state_saver,
}
FIXES = {
    "ray_on_loopback": ray_private.ray_on_loopback,
    "driver_logs_kept": ray_private.driver_logs_kept,
    "restore_trial_log": ray_private.restore_trial_log,  # called, not entered (launch.PerEpochRows)
    "snapshots_ahead_of_deletion": lambda: ray_private.snapshots_ahead_of_deletion(2),
    "local_uploads_whole": ray_private.local_uploads_whole,
}


def owner_and_name(target: ray_private.Target):
    module, _, path = target.path.partition(":")
    *owner_path, name = path.split(".")
    return ray_private.Target(f"{module}:{'.'.join(owner_path)}").resolve(), name


def change(monkeypatch, target: ray_private.Target, how: str):
    """Change Ray's `target` as a newer Ray could: a renamed parameter, or the attribute gone."""
    owner, name = owner_and_name(target)
    if how == "missing":
        monkeypatch.delattr(owner, name)
        return None

    def changed(*args, renamed=None, **kwargs):
        raise AssertionError("a changed target is never called by a patch")

    monkeypatch.setattr(owner, name, changed)
    return changed


def ray_warnings(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: ray:")]


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(ray_private, "_warned", set())  # each test sees its own first warning


def fitting() -> dict[str, str | None]:
    """Each patch's mismatch on the installed Ray: none (the token helper is missing before 2.59)."""
    token_helper = PATCHES["enable_token_auth_if_token_available"].targets[0]
    return {name: None for name in PATCHES} | ({} if ray_private.ray_release() >= ray_private.TOKEN_HELPER_RAY else {
        "enable_token_auth_if_token_available": f"{token_helper.path} is missing"})


def test_every_patch_fits_the_installed_ray():
    assert {name: ray_private.mismatch(name) for name in PATCHES} == fitting()
    assert ray_private.check_fixes() is True
    kinds = {name: patch.kind for name, patch in PATCHES.items()}
    assert sorted(name for name, kind in kinds.items() if kind == "fix") == sorted(FIXES)
    assert set(SPEED_UPS) < {name for name, kind in kinds.items() if kind == "speed-up"}


def test_every_patch_fits_while_the_others_are_on():
    """A sweep checks some patches while others are on: checked against our replacement instead of
    Ray's own code, restore_trial_log did not fit inside driver_logs_kept, and every resumed trial
    logged the epochs after its checkpoint twice."""
    with contextlib.ExitStack() as on:
        for patch in (ray_private.lean_local_start(False), ray_private.trial_actors_inheriting({}),
                      ray_private.callbacks_not_tallied(), ray_private.starting_actors_kept(),
                      ray_private.metrics_analysed(frozenset()), ray_private.result_frames_not_loaded(),
                      ray_private.driver_logs_kept(), ray_private.snapshots_ahead_of_deletion(1),
                      ray_private.local_uploads_whole(), ray_private.node_deaths_unprinted(),
                      ray_private.retried_trials_first(), ray_private.trials_staged_in_order(lambda trial: 0),
                      ray_private.state_saver()):
            on.enter_context(patch)
        assert {name: ray_private.mismatch(name) for name in PATCHES} == fitting()
    assert not ray_private._SWAPPED


@pytest.mark.parametrize("how", ["signature", "missing"])
@pytest.mark.parametrize("patch", sorted(SPEED_UPS))
def test_a_speed_up_that_no_longer_fits_leaves_rays_own_behaviour_with_one_warning(monkeypatch, capsys, patch, how):
    targets = [t for t in PATCHES[patch].targets if t.params is not None]
    changed = change(monkeypatch, targets[0], how)
    before = [getattr(*owner_and_name(t), None) for t in targets]
    for _ in range(2):  # e.g. a notebook's second sweep: still one warning
        with SPEED_UPS[patch]():
            assert [getattr(*owner_and_name(t), None) for t in targets] == before  # nothing swapped: Ray's own
    assert before[0] is changed or how == "missing"
    (warning,) = ray_warnings(capsys)
    assert f"Ray {RAY_VERSION} does not fit instrument-sweep's {patch}" in warning
    assert targets[0].path in warning and "tested: Ray 2.52 to 2.60" in warning and "Ray's own behaviour" in warning


def test_an_attribute_tune_no_longer_sets_is_a_mismatch(monkeypatch):
    """The controller attributes `starting_actors_kept` reads are checked in Tune's own code."""
    from ray.tune.execution.tune_controller import TuneController

    init = TuneController.__init__
    source = init.__code__

    def renamed(self, *args, **kwargs):  # as Tune would be with _started_actors renamed
        return init(self, *args, **kwargs)

    monkeypatch.setattr(TuneController, "__init__", renamed)
    assert "_started_actors" in source.co_names
    assert ray_private.mismatch("starting_actors_kept") == (
        "ray.tune.execution.tune_controller:TuneController.__init__ no longer uses "
        "_trial_to_actor, _resetting_trials, _actor_manager, _started_actors")


def test_starting_actors_kept_falls_back_to_tunes_reuse_where_the_controller_changed(monkeypatch, capsys):
    """A controller without the attributes the patch reads (renamed in a newer Tune) surfaced only
    mid-sweep, where it killed `fit()`; now that call, and every later one, is Tune's own."""
    from ray.tune.execution.tune_controller import TuneController

    reused = []

    def reuse(self, trial):  # Tune's own, as far as the patch can tell
        reused.append(trial)
        return True

    monkeypatch.setattr(TuneController, "_maybe_reuse_cached_actor", reuse)
    with ray_private.starting_actors_kept():
        controller = object.__new__(TuneController)  # none of the attributes the patch reads
        assert [TuneController._maybe_reuse_cached_actor(controller, t) for t in ("a", "b")] == [True, True]
    assert reused == ["a", "b"]
    (warning,) = ray_warnings(capsys)
    assert "starting_actors_kept (AttributeError inside it" in warning and f"Ray {RAY_VERSION}" in warning


def test_driver_logs_kept_falls_back_to_tunes_copy_where_a_trial_changed(monkeypatch, capsys, tmp_path):
    from ray.tune.logger.logger import LoggerCallback

    copied = []
    def restore(self, file_name, trial):  # Tune's own, as far as the patch can tell
        copied.append(file_name)

    monkeypatch.setattr(LoggerCallback, "_restore_from_remote", restore)
    kept = type("Trial", (), {"local_path": str(tmp_path)})()
    (tmp_path / "result.json").write_text("{}\n")
    with ray_private.driver_logs_kept():
        LoggerCallback._restore_from_remote(None, "result.json", kept)  # the driver's file: kept
        LoggerCallback._restore_from_remote(None, "result.json", object())  # no local_path: Tune's copy
    assert copied == ["result.json"]
    assert "driver_logs_kept (AttributeError inside it" in ray_warnings(capsys)[0]


def test_lean_local_start_falls_back_to_rays_own_start_where_a_node_changed(monkeypatch, capsys):
    """Our wait for the raylet's registration raising (a Node without the attributes it reads)
    leaves Ray's own start from then on: its own wait, and the API server it starts."""
    from ray._private.node import Node

    started = []

    def start_ray_processes(self):  # Ray's own, as far as the patch can tell
        started.append("processes")

    def start_api_server(self, *, include_dashboard, raise_on_failure):
        started.append("api server")

    monkeypatch.setattr(Node, "start_ray_processes", start_ray_processes)
    monkeypatch.setattr(Node, "start_api_server", start_api_server)
    with ray_private.lean_local_start(log_monitor=False):
        node = object.__new__(Node)  # none of the attributes the wait reads
        Node.start_api_server(node, include_dashboard=False, raise_on_failure=True)  # lean: not started
        for _ in range(2):
            Node.start_ray_processes(node)
        Node.start_api_server(node, include_dashboard=False, raise_on_failure=True)  # Ray's own from now on
    assert started == ["processes", "processes", "api server"]
    (warning,) = ray_warnings(capsys)
    assert "lean_local_start (AttributeError inside it" in warning and f"Ray {RAY_VERSION}" in warning


def test_trial_actors_inheriting_keeps_tunes_actor_class_where_ray_changed_it(monkeypatch, capsys):
    """An actor class without the options the patch reads (renamed in a newer Ray) is Tune's own,
    for that trainable and every later one."""
    from ray.tune.execution import class_cache

    made = object()  # Tune's actor class, as far as the patch can tell: no _default_options

    def get(self, trainable_cls):
        return self._cache.setdefault(trainable_cls, made)

    monkeypatch.setattr(class_cache._ActorClassCache, "get", get)
    with ray_private.trial_actors_inheriting({"PL_DISABLE_FORK": "1"}):
        cache = class_cache._ActorClassCache()
        assert [cache.get(trainable) for trainable in (type("A", (), {}), type("B", (), {}))] == [made, made]
    (warning,) = ray_warnings(capsys)
    assert "trial_actors_inheriting (AttributeError inside it" in warning


@pytest.mark.parametrize("how", ["signature", "missing", "raises"])
def test_resume_lets_tune_add_its_loggers_where_restored_callbacks_no_longer_fits(monkeypatch, capsys, how):
    """None: `resume_sweep` then lets Tune add the loggers it finds missing (TensorBoard's too)."""
    from ray.tune.impl.tuner_internal import TunerInternal

    tuner = type("Tuner", (), {})()  # no _local_tuner: our part raises where the target fits
    if how != "raises":
        change(monkeypatch, PATCHES["restored_callbacks"].targets[1], how)
    assert [ray_private.restored_callbacks(tuner) for _ in range(2)] == [None, None]
    (warning,) = ray_warnings(capsys)
    assert "restored_callbacks (" in warning and "Ray's own behaviour" in warning
    assert ("AttributeError inside it" in warning) == (how == "raises")
    assert hasattr(TunerInternal, "get_run_config") == (how != "missing")


@pytest.mark.parametrize("release, how", [((2, 60), "missing"), ((2, 60), "signature"), ((2, 60), "raises"),
                                          ((2, 58), "missing")])
def test_the_token_helper_missing_warns_from_the_ray_that_has_it(monkeypatch, capsys, release, how):
    """Ray 2.52-2.58 have no token helper: False, silently (RAY_AUTH_MODE=token works as documented).
    From 2.59 on one that is missing has moved, or changed: False and one warning."""
    from ray._private.authentication import authentication_token_setup

    def helper(warn_if_disabled):  # where it raises inside; "signature": its parameter renamed
        raise RuntimeError("changed inside")

    monkeypatch.setattr(ray_private, "ray_release", lambda: release)
    name = "maybe_enable_token_auth_if_token_available"  # the installed Ray may have none (before 2.59)
    if how == "missing":
        monkeypatch.delattr(authentication_token_setup, name, raising=False)
    else:
        monkeypatch.setattr(authentication_token_setup, name,
                            helper if how == "raises" else lambda warn=False: True, raising=False)
    assert [ray_private.enable_token_auth_if_token_available() for _ in range(2)] == [False, False]
    warned = ray_warnings(capsys)
    if release < ray_private.TOKEN_HELPER_RAY:
        assert warned == []
        return
    (warning,) = warned
    assert "enable_token_auth_if_token_available (" in warning and "RAY_AUTH_MODE=token" in warning
    assert ("maybe_enable_token_auth_if_token_available" in warning) == (how != "raises")
    assert ("RuntimeError inside it" in warning) == (how == "raises")


def test_retried_trials_first_leaves_tunes_requeue_where_the_controller_changed(monkeypatch, capsys):
    from ray.tune.execution.tune_controller import TuneController

    requeued = []

    def requeue(self, trial):  # Tune's own, as far as the patch can tell
        requeued.append(trial)
        return getattr(self, "_trials", None)

    monkeypatch.setattr(TuneController, "_requeue_trial", requeue)
    with ray_private.retried_trials_first():
        controller = object.__new__(TuneController)  # no trial list where the patch reads it
        for trial in ("a", "b"):
            TuneController._requeue_trial(controller, trial)
    assert requeued == ["a", "b"]
    (warning,) = ray_warnings(capsys)
    assert "retried_trials_first (AttributeError inside it" in warning


def test_trials_staged_in_order_leaves_tunes_order_where_the_controller_changed(monkeypatch, capsys):
    from ray.tune.execution.tune_controller import TuneController

    staged = []

    def add_actors(self):  # Tune's own, as far as the patch can tell
        staged.append(self)
        return getattr(self, "_pending_trials_list", None)

    monkeypatch.setattr(TuneController, "_maybe_add_actors", add_actors)
    with ray_private.trials_staged_in_order(lambda trial: 0):
        controller = object.__new__(TuneController)  # no waiting list where the patch sorts it
        for _ in range(2):
            TuneController._maybe_add_actors(controller)
    assert staged == [controller, controller]  # Tune's own staging, every time
    (warning,) = ray_warnings(capsys)
    assert "trials_staged_in_order (AttributeError inside it" in warning


def test_node_deaths_unprinted_passes_on_what_a_changed_subscriber_polls(monkeypatch, capsys):
    """A subscriber whose poll no longer gives (key, error) is Ray's own: every message goes on."""
    from ray._private import worker

    listened = []

    def listen(worker, threads_stopped):  # Ray's listener, as far as the patch can tell: one poll
        listened.append(worker.gcs_error_subscriber.poll())

    subscriber = type("Subscriber", (), {"poll": lambda self: "a message in a new shape"})()
    driver = type("Driver", (), {"gcs_error_subscriber": subscriber})()
    monkeypatch.setattr(worker, "listen_error_messages", listen)
    with ray_private.node_deaths_unprinted(quiet=True):
        for _ in range(2):
            worker.listen_error_messages(driver, None)
    assert listened == ["a message in a new shape"] * 2
    (warning,) = ray_warnings(capsys)
    assert "node_deaths_unprinted (ValueError inside it" in warning


def test_a_ray_whose_raylets_changed_chooses_the_drivers_node_itself_with_one_warning(monkeypatch, capsys):
    """Where Ray's raylet command line no longer names its node and GCS as the project reads them,
    a driver joining by HOST:PORT is not refused: Ray chooses its node, as on separate machines."""
    from ray._private import services

    from tune_jobs.cluster import local_node_ip

    def start_raylet(*args, **kwargs):  # a raylet started with other flags
        return ["raylet", "--node-ip=10.0.0.1"]

    monkeypatch.setattr(services, "start_raylet", start_raylet)
    assert ray_private.raylet_addresses() is None
    assert local_node_ip("127.0.0.1", 6379) is None  # not "no Ray node of the cluster runs on this host"
    (warning,) = ray_warnings(capsys)
    assert "joining_through (ray._private.services:start_raylet no longer uses --node_ip_address=, --gcs-address=" \
        in warning and "Ray chooses the node a driver joins through" in warning
    assert ray_private.joining_through(None) == {}


def test_a_resumed_trials_log_is_left_to_tune_where_restore_trial_log_no_longer_fits(monkeypatch, capsys, tmp_path):
    """Run --without-ray-fixes on a Ray without Tune's copy: nothing copied, one warning, no failed trial."""
    from ray.tune.logger.logger import LoggerCallback

    monkeypatch.delattr(LoggerCallback, "_restore_from_remote")
    trial = type("Trial", (), {"local_path": str(tmp_path / "trial"), "checkpoint": "a checkpoint"})()
    for _ in range(2):
        ray_private.restore_trial_log(LoggerCallback(), "result.json", trial)
    assert not (tmp_path / "trial").exists()
    (warning,) = ray_warnings(capsys)
    assert "restore_trial_log (ray.tune.logger.logger:LoggerCallback._restore_from_remote is missing" in warning


@pytest.mark.parametrize("inherited", [True, False])
def test_trial_actors_inheriting_keeps_tunes_runtime_env_where_it_holds_more_than_variables(monkeypatch, inherited):
    """The runtime env Tune gives trial actors is read from what Tune made, not rebuilt: where a
    Tune adds anything besides variables (here a working_dir), the actors keep it."""
    import ray
    from ray.tune.execution import class_cache

    runtime_env = {"env_vars": {"PL_DISABLE_FORK": "1"},
                   **({} if inherited else {"working_dir": "s3://bucket/code.zip"})}

    def get(self, trainable_cls):  # a Tune whose runtime env holds more than env_vars
        if trainable_cls not in self._cache:
            self._cache[trainable_cls] = ray.remote(runtime_env=runtime_env)(trainable_cls)
        return self._cache[trainable_cls]

    monkeypatch.setattr(class_cache._ActorClassCache, "get", get)

    class Trainable:
        pass

    with ray_private.trial_actors_inheriting({"PL_DISABLE_FORK": "1"}):
        actor_class = class_cache._ActorClassCache().get(Trainable)
    assert actor_class._default_options.get("runtime_env") == (None if inherited else runtime_env)


@pytest.mark.parametrize("patch", sorted(FIXES))
def test_a_fix_that_no_longer_fits_stops_before_any_trial_unless_run_without(monkeypatch, capsys, patch):
    target = PATCHES[patch].targets[0]
    change(monkeypatch, target, "signature" if target.params is not None else "missing")
    with pytest.raises(InputError) as refused:
        ray_private.check_fixes()
    assert refused.value.where == "ray"
    problem = refused.value.problem
    assert problem.startswith(f"Ray {RAY_VERSION} changed internals that instrument-sweep fixes ({patch}: "
                              f"{target.path}")
    assert "tested: Ray 2.52 to 2.60" in problem and "--without-ray-fixes" in problem
    assert ray_private.check_fixes(without=True) is False
    (warning,) = ray_warnings(capsys)
    assert f"running without instrument-sweep's fixes of Ray {RAY_VERSION} ({patch}: " in warning
    assert warning.endswith("resume may lose work")


def test_without_the_flag_a_local_ray_without_the_loopback_switch_is_not_started(tmp_path, blob_dataset_dir):
    """ray_on_loopback, the fix a local Ray's start needs, is checked before Ray starts: exit 2 in one line."""
    out = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        from ray._private import ray_constants
        del ray_constants.ENABLE_RAY_CLUSTER  # a Ray without its single-machine switch
        from tune_jobs.cli import entry
        entry()
    """), "run", "--preset", "smoke", "--data", blob_dataset_dir, "--storage", str(tmp_path), "--name", "s"],
        capture_output=True, text=True, cwd=ROOT, timeout=180)
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip().splitlines()[-1] == (
        f"error: ray: Ray {RAY_VERSION} changed internals that instrument-sweep fixes (ray_on_loopback: "
        "ray._private.ray_constants:ENABLE_RAY_CLUSTER is missing); tested: Ray 2.52 to 2.60. Install a tested "
        "Ray, or pass --without-ray-fixes to run without its fixes (a local Ray listens on this machine's "
        "network address, not only on 127.0.0.1)")
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("without", [False, True])
def test_the_jobs_run_command_carries_without_ray_fixes_only_where_asked(without):
    """A cluster's Ray may not fit the fixes the driver applies there: `submit --without-ray-fixes`
    hands the flag to the job's `run`."""
    import shlex

    from tune_jobs.cli import build_parser
    from tune_jobs.jobs import entrypoint
    from tune_jobs.spec import load_spec

    args = build_parser().parse_args(["submit", "smoke", *(["--without-ray-fixes"] if without else [])])
    command = shlex.split(entrypoint(load_spec("smoke"), None, None, without_ray_fixes=args.without_ray_fixes))
    assert command[:4] == ["python", "-m", "tune_jobs", "run"]
    assert ("--without-ray-fixes" in command) is without
    assert build_parser().parse_args(command[3:]).without_ray_fixes is without  # `run` takes it


# A driver whose Ray has a new parameter in `_restore_from_remote` (a fix's target) and in
# `tag_callbacks` (a speed-up's): what a user with a newer Ray would run.
CHANGED_RAY = """
import sys
from ray.air._internal import usage
from ray.tune.logger import logger
restore, tag = logger.LoggerCallback._restore_from_remote, usage.tag_callbacks
logger.LoggerCallback._restore_from_remote = lambda self, file_name, trial, remote=None: restore(self, file_name, trial)
usage.tag_callbacks = lambda callbacks, counted=None: tag(callbacks)
"""


@pytest.mark.slow
def test_run_resume_and_the_notebook_api_stop_on_a_changed_fix_unless_run_without(tmp_path, process_tag,
                                                                                  blob_dataset_dir):
    driver = tmp_path / "driver.py"
    driver.write_text(CHANGED_RAY + "from tune_jobs.cli import entry\nentry()\n")
    refused_line = f"error: ray: Ray {RAY_VERSION} changed internals that instrument-sweep fixes (driver_logs_kept: "

    def run(*args):
        return subprocess.run([sys.executable, str(driver), *args], capture_output=True, text=True, cwd=ROOT,
                              timeout=300, env={**os.environ, "INSTRUMENT_SWEEP_TEST_TAG": process_tag})

    storage = tmp_path / "sweeps"
    smoke = ("run", "--preset", "smoke", "--data", blob_dataset_dir, "--storage", str(storage), "--name", "s",
             "--no-analyze")
    refused = run(*smoke)
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert refused.stderr.strip().splitlines()[-1].startswith(refused_line)
    assert not (storage / "s").exists()  # nothing written
    wait_until(lambda: not tagged_pids(process_tag), 60, "its local Ray to stop", interval_s=0.2)

    ran = run(*smoke, "--without-ray-fixes")
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    warned = [line for line in ran.stderr.splitlines() if line.startswith("warning: ray:")]
    assert len(warned) == 2, warned
    assert "running without instrument-sweep's fixes" in warned[0] and warned[0].endswith("resume may lose work")
    assert "callbacks_not_tallied" in warned[1] and "Ray's own behaviour" in warned[1]
    assert "[2/2 done]" in ran.stdout

    resumed = run("resume", "s", "--storage", str(storage), "--no-analyze")
    assert resumed.returncode == 2 and resumed.stderr.strip().splitlines()[-1].startswith(refused_line)

    api = subprocess.run([sys.executable, "-c", CHANGED_RAY + textwrap.dedent(f"""
        from tune_jobs import InputError, sweep
        try:
            sweep("smoke", data={blob_dataset_dir!r}, storage={str(storage)!r}, name="api", analyze=False)
        except InputError as exc:
            print("REFUSED", exc.where)
    """)], capture_output=True, text=True, cwd=ROOT, timeout=300,
        env={**os.environ, "INSTRUMENT_SWEEP_TEST_TAG": process_tag})
    assert "REFUSED ray" in api.stdout, api.stderr[-3000:]
    assert not (storage / "api").exists()


# -- torch --------------------------------------------------------------------------------------


@pytest.fixture
def fresh_torch_checks():
    from trainables.training.model import private_backward_fits
    from trainables.training.optim import fused_adam_fits

    for check in (fused_adam_fits, private_backward_fits):
        check.cache_clear()
    yield
    for check in (fused_adam_fits, private_backward_fits):
        check.cache_clear()  # the next test checks the real torch again


def train_two_epochs(small_splits):
    from trainables.training.config import TrainConfig
    from trainables.training.run import TrainingRun
    from trainables.training.stop import StopRule

    # On the CPU, as the checks above: a GPU host would check (and warn) once more, for its CUDA device.
    run = TrainingRun(small_splits, TrainConfig(lr=1e-2, batch_size=64, loader="fast"),
                      StopRule(threshold=None, max_epochs=2), device=torch.device("cpu"))
    reports = [run.run_epoch() for _ in range(2)]
    run.close()
    return run, reports


@pytest.mark.parametrize("kernel", ["_fused_adam_", "_foreach_add_"])
def test_changed_fused_adam_kernels_fall_back_to_torch_adam_with_one_warning(monkeypatch, fresh_torch_checks,
                                                                              small_splits, kernel):
    from trainables.training.optim import FusedAdam, make_optimizer

    def changed(*args, **kwargs):  # a kernel whose arguments changed: it raises, as torch would
        raise TypeError(f"{kernel}() got an unexpected keyword argument")

    monkeypatch.setattr(torch, kernel, changed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        optimizers = [make_optimizer("adam", torch.nn.Linear(3, 2).parameters(), 0.1, fused=True) for _ in "ab"]
        run, reports = train_two_epochs(small_splits)
    assert all(type(o) is torch.optim.Adam for o in optimizers) and type(run.optimizer) is torch.optim.Adam
    assert not any(isinstance(o, FusedAdam) for o in optimizers)
    (warning,) = [w for w in caught if "no longer fit" in str(w.message)]
    assert f"torch {torch.__version__}: the fused Adam kernels" in str(warning.message)
    assert kernel in str(warning.message)
    assert reports[-1].train_acc > 0.5  # it trains


def test_a_changed_private_backward_op_falls_back_to_autograd_with_one_warning(monkeypatch, fresh_torch_checks,
                                                                               small_splits):
    from trainables.training.model import InstrumentNet, descent_targets

    monkeypatch.setattr(torch.ops.aten, "sigmoid_backward", lambda grad, h: grad)  # a wrong derivative
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = InstrumentNet(6, 8, 3, "sigmoid")
        x, y = torch.randn(10, 6), torch.randint(0, 3, (10,))
        with torch.no_grad():
            logits = model.forward_backward_fn()(x, descent_targets(y, 3, 10))
        ours = [p.grad.clone() for p in model.parameters()]
        run, reports = train_two_epochs(small_splits)
    model.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()  # autograd's gradients
    assert all(torch.allclose(a, p.grad, atol=1e-6) for a, p in zip(ours, model.parameters()))
    assert torch.allclose(logits, model(x).detach())
    (warning,) = [w for w in caught if "no longer fit" in str(w.message)]
    assert f"torch {torch.__version__}: the sigmoid step's private backward ops" in str(warning.message)
    assert reports[-1].train_acc > 0.5  # it trains


def test_every_target_of_uri_credentials_in_rays_transfers_fits_the_installed_ray():
    assert [target.mismatch() for target in ray_private.IN_BAND_TARGETS] == [None] * len(ray_private.IN_BAND_TARGETS)


@pytest.mark.parametrize("how", ["signature", "missing"])
def test_uri_credentials_are_refused_where_ray_no_longer_marks_its_transfers(monkeypatch, how):
    """Where Ray no longer tells its transfers from other pickling, credentials given in a URI would
    go into Tune's stored state or not reach the workers: exit 2 before anything is written, and
    storage without them is handed over as before."""
    from analysis import storage

    change(monkeypatch, ray_private.IN_BAND_TARGETS[0], how)
    with_keys, _ = storage.filesystem(storage.take_credentials(
        "s3://KEY:s3cr3t@fallback-bucket/s?endpoint_override=127.0.0.1:1&scheme=http"))
    with pytest.raises(InputError) as refused:
        ray_private.shipped_to_workers(with_keys)
    assert refused.value.where == "--storage" and "s3cr3t" not in str(refused.value)
    assert RAY_VERSION in refused.value.problem and "environment" in refused.value.problem
    without, _ = storage.filesystem("s3://other-bucket/s?endpoint_override=127.0.0.1:1&scheme=http")
    assert ray_private.shipped_to_workers(without) is without
