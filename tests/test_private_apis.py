"""Each private API the project relies on, tested by behaviour: a Ray, torch or Python that
changes one fails here, by name, instead of somewhere downstream.

- tune_jobs/ray_private.py: Ray's token-auth helper; the processes of a local Ray's start
  (`lean_local_start`); the single-machine switch behind `ray_on_loopback`
  (tests/test_security.py); the runtime env Tune gives its trial actors
  (`trial_actors_inheriting`); Tune's callback tally; Tune's reuse of cached actors
  (`starting_actors_kept`), its running statistics (`metrics_analysed`), the config it copies
  into every result (why the param space holds only what identifies a trial), the DataFrames
  its result grid loads (`result_frames_not_loaded`), its loggers' copy from storage on a retry
  (`driver_logs_kept`), its snapshot cadence against checkpoint deletion
  (`snapshots_ahead_of_deletion`) and its uploads to local storage (`local_uploads_whole`); the
  errors a driver prints about dead nodes (`node_deaths_unprinted`), the place of a retried
  trial in Tune's queue (`retried_trials_first`), the order Tune requests its waiting trials'
  processes in (`trials_staged_in_order`) and its loggers' copy of a trial's log from
  storage (`restore_trial_log`), its controller's save of the state from any thread
  (`state_saver`); Ray's mark of its own transfers, which keeps credentials given in
  a storage URI out of Tune's stored state (`shipped_to_workers`).
  What each patch does where Ray changes under it: tests/test_private_fallbacks.py.
- tune_jobs/quick_exit.py: `atexit._run_exitfuncs`.
- trainables/training/optim.py: `torch._fused_adam_` and `torch._foreach_add_` (FusedAdam;
  its step-for-step equality with Adam is in test_training_core.py; its fallback where torch
  changes them, in test_private_fallbacks.py); the cache attribute of `torch._disable_dynamo`
  on Optimizer's methods.
- trainables/training/zeus_import.py: Zeus's module-level scikit-learn import (test_energy.py).
- trainables/training/gpus.py, `zeus_monitor`: Zeus numbering GPUs by CUDA_VISIBLE_DEVICES's
  integers, once per process, and its GPU objects' NVML `handle` (test_gpus.py).
"""

import csv
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from processes import python_path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def python(code: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=180, cwd=ROOT, env={**clean, **env})


@pytest.mark.parametrize("with_token", [True, False])
def test_ray_token_helper_turns_token_auth_on_only_where_a_token_exists(tmp_path, with_token):
    """Ray's helper (2.59 on) turns token auth on where a token exists; an older supported Ray has
    none, and then nothing is turned on (RAY_AUTH_MODE=token works as Ray documents)."""
    if with_token:
        (tmp_path / ".ray").mkdir()
        (tmp_path / ".ray" / "auth_token").write_text("a" * 32)
    out = python("""
        import os
        from tune_jobs import ray_private
        print(ray_private.enable_token_auth_if_token_available(), os.environ.get("RAY_AUTH_MODE"))
    """, HOME=str(tmp_path))
    assert out.returncode == 0, out.stderr[-2000:]
    from ray._private.authentication import authentication_token_setup

    helper = hasattr(authentication_token_setup, "maybe_enable_token_auth_if_token_available")
    assert out.stdout.split() == (["True", "token"] if with_token and helper else ["False", "None"])


@pytest.mark.slow
@pytest.mark.parametrize("lean", ["none", "plain", "logs and dashboard"])
def test_a_local_ray_starts_a_monitor_and_an_api_server_and_imports_dashboard_packages_unless_lean(lean):
    out = python(f"""
        import contextlib, json, sys
        import ray
        from ray._private import utils, worker
        from ray._private.node import Node
        from tune_jobs import ray_private
        patched = lambda: (Node.__init__, Node.start_api_server, Node.start_ray_processes,
                           utils.get_dashboard_dependency_error)
        before, lean = patched(), {lean!r}
        with (contextlib.nullcontext() if lean == "none" else
              ray_private.lean_local_start(log_monitor=lean != "plain")):
            ray.init(num_cpus=1, include_dashboard=lean == "logs and dashboard", log_to_driver=False)
        print(json.dumps(sorted(worker._global_node.all_processes)))
        print("aiohttp" in sys.modules, [n["Alive"] for n in ray.nodes()], ray.get(ray.remote(lambda: 7).remote()),
              patched() == before)
        ray.shutdown()
    """)
    assert out.returncode == 0, out.stderr[-3000:]
    processes, checks = out.stdout.splitlines()[-2:]
    assert [p for p in json.loads(processes) if p != "reaper"] == {  # the reaper: only where Ray can start one
        "none": ["dashboard", "gcs_server", "log_monitor", "monitor", "raylet"],
        "plain": ["gcs_server", "raylet"],
        "logs and dashboard": ["dashboard", "gcs_server", "log_monitor", "raylet"]}[lean]
    # Ray's dashboard check imports its packages in the driver; lean only looks them up (the API
    # server, where asked for, imports them in its own process).
    assert checks == f"{lean == 'none'} [True] 7 True"


@pytest.mark.slow
@pytest.mark.parametrize("inherited", ["none", "all", "but one"])
def test_tune_gives_trial_actors_a_runtime_env_unless_the_workers_inherit_its_variables(tmp_path, inherited):
    out = python(f"""
        import json, os
        import ray
        from ray import tune
        from ray.tune.execution import class_cache
        from tune_jobs import ray_private

        def trial(config):
            tune.report({{"runtime_env": ray.get_runtime_context().runtime_env,
                          "env": [os.environ.get(k) for k in ("PL_DISABLE_FORK", "AWS_ACCESS_KEY_ID")]}})

        os.environ.update(ray_private.TUNE_ACTOR_ENV, AWS_ACCESS_KEY_ID="started-with")  # as cluster.connect
        worker_env = dict(os.environ)
        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
        if {inherited!r} == "but one":  # changed since Ray started: the workers have the old value
            os.environ["AWS_ACCESS_KEY_ID"] = "changed"
        with ray_private.trial_actors_inheriting(worker_env if {inherited!r} != "none" else {{}}):
            grid = tune.Tuner(trial, run_config=tune.RunConfig(storage_path={str(tmp_path)!r}, verbose=0)).fit()
        print("RESULT", json.dumps([class_cache.DEFAULT_ENV_VARS == ray_private.TUNE_ACTOR_ENV,
                                    grid[0].metrics["runtime_env"], grid[0].metrics["env"]]))
    """)
    assert out.returncode == 0, out.stderr[-3000:]
    same_defaults, runtime_env, env = json.loads(out.stdout.split("RESULT", 1)[1])
    assert same_defaults  # what cluster.connect puts in a local Ray's environment is what Tune sets
    if inherited == "all":  # no runtime env: each actor's worker starts without Ray's setup process
        assert runtime_env == {} and env == ["1", "started-with"]
    else:  # Tune's own: the variables it propagates from the driver, through a runtime env
        expected = "changed" if inherited == "but one" else "started-with"
        assert runtime_env["env_vars"] == {"PL_DISABLE_FORK": "1", "AWS_ACCESS_KEY_ID": expected}
        assert env == ["1", expected]


def test_tunes_callback_tally_imports_trackers_and_is_skipped_inside_callbacks_not_tallied():
    out = python("""
        import inspect, sys
        import ray.tune.tune as tune_module
        from ray.tune import Callback
        from tune_jobs import ray_private
        print("air_usage.tag_callbacks(callbacks)" in inspect.getsource(tune_module.run))
        with ray_private.callbacks_not_tallied():
            print(tune_module.air_usage.tag_callbacks([Callback()]))
        print("ray.air.integrations.wandb" in sys.modules)
        print(dict(tune_module.air_usage._count_callbacks([Callback()])))  # what the tally does
        print("ray.air.integrations.wandb" in sys.modules)
        print(tune_module.air_usage.tag_callbacks is not None and tune_module.air_usage.tag_callbacks.__name__)
    """)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines() == ["True", "False", "False", "{'CustomCallback': 1}", "True", "tag_callbacks"]


def test_fast_loops_optimizer_works_without_importing_torch_dynamo():
    out = python("""
        import sys, torch
        from trainables.training.optim import make_optimizer
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 3)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
        weights = []
        for fused in (True, False):  # FusedAdam, then torch's Adam (whose step imports torch._dynamo)
            model.load_state_dict(state)
            opt = make_optimizer("adam", model.parameters(), 0.1, fused=fused)
            for _ in range(3):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
            opt.load_state_dict(opt.state_dict())
            weights.append(model.weight.detach().clone())
            print("torch._dynamo" in sys.modules)
        print(torch.allclose(weights[0], weights[1], atol=1e-6))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)  # with torch._dynamo loaded: as torch has it
        opt.zero_grad(); opt.load_state_dict(opt.state_dict())
    """)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", "True", "True"]
    # Without the cache set, torch's wrapper imports torch._dynamo as soon as an optimizer is made (1.4 s).
    plain = python("""
        import sys, torch
        torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
        print("torch._dynamo" in sys.modules)
    """)
    assert plain.stdout.split() == ["True"], plain.stderr[-2000:]


def test_quick_exit_runs_exit_handlers_and_waits_for_threads():
    out = python("""
        import atexit, threading, time
        from tune_jobs.quick_exit import exit_now
        atexit.register(lambda: print("handler ran", flush=True))
        threading.Thread(target=lambda: (time.sleep(0.2), print("thread done", flush=True))).start()
        exit_now(7)
    """)
    assert out.returncode == 7, out.stderr[-2000:]
    assert out.stdout.splitlines() == ["thread done", "handler ran"]


def test_torch_private_fused_adam_kernels_exist_and_step_like_adam():
    """The kernels FusedAdam calls, with the arguments it passes (torch's own Adam(fused=True) path)."""
    assert callable(getattr(torch, "_fused_adam_", None)) and callable(getattr(torch, "_foreach_add_", None))
    from trainables.training.optim import FusedAdam

    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(5, 3))
    b = torch.nn.Parameter(a.detach().clone())
    ours, theirs = FusedAdam([a], lr=0.1), torch.optim.Adam([b], lr=0.1)
    for _ in range(3):
        for p in (a, b):
            p.grad = (p.detach() ** 2).clone()
        ours.step()
        theirs.step()
    assert torch.allclose(a, b, atol=1e-6)
    assert float(ours.state[a]["step"]) == 3.0


SLOW_START_TRIAL = '''
import fcntl, os, time
with open(os.environ["STARTS_FILE"], "a+") as f:  # the driver imports it first
    fcntl.flock(f, fcntl.LOCK_EX)  # one process at a time: each its own place in the order
    f.seek(0)
    before = len(f.read().split())
    f.write(f"{os.getpid()}\\n")
# The first actor starts at once, the others (as Ray, torch and the dataset can take) only once
# trials have run FIRST_RUNS times: on the first actor, the only one up (2 minutes at most).
deadline = time.monotonic() + 120
while before >= 2 and time.monotonic() < deadline:
    with open(os.environ["RUNS_FILE"]) as runs:
        if len(runs.read().split()) >= int(os.environ["FIRST_RUNS"]):
            break
    time.sleep(0.05)


def trial(config):
    from ray import tune
    with open(os.environ["RUNS_FILE"], "a") as runs:
        runs.write(f"{os.getpid()}\\n")
    tune.report({"pid": os.getpid()})
'''


@pytest.mark.slow
@pytest.mark.parametrize("kept", [True, False])
def test_tune_kills_starting_actors_to_reuse_cached_ones_unless_kept(tmp_path, kept):
    """16 trials on 4 slots; one actor up at once, the other three starting until it has run 3
    trials: inside `starting_actors_kept`, each started process runs trials (all 4 slots in use);
    Tune alone kills starting actors to hand their trials to the first actor up."""
    (tmp_path / "slow_start.py").write_text(SLOW_START_TRIAL)
    starts, runs = tmp_path / "starts.txt", tmp_path / "runs.txt"
    runs.touch()
    out = python(f"""
        import contextlib, json, os
        import ray
        from ray import tune
        from tune_jobs import ray_private
        from slow_start import trial
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
        tuner = tune.Tuner(trial, param_space={{"i": tune.grid_search(list(range(16)))}},
                           tune_config=tune.TuneConfig(reuse_actors=True),
                           run_config=tune.RunConfig(storage_path={str(tmp_path / "runs")!r}, verbose=0))
        with ray_private.starting_actors_kept() if {kept} else contextlib.nullcontext():
            grid = tuner.fit()
        print("RESULT", json.dumps([os.getpid(), len(grid.errors), sorted({{r.metrics["pid"] for r in grid}})]))
    """, PYTHONPATH=python_path(tmp_path, ROOT), STARTS_FILE=str(starts), RUNS_FILE=str(runs), FIRST_RUNS="3")
    assert out.returncode == 0, out.stderr[-3000:]
    driver, errors, ran = json.loads(out.stdout.split("RESULT", 1)[1])
    started = [int(pid) for pid in starts.read_text().split() if int(pid) != driver]
    assert errors == 0
    if kept:
        assert sorted(started) == ran and len(ran) == 4, (started, ran)
    else:  # what the patch is for: started processes killed before they ran a trial
        assert len(started) > len(ran), (started, ran)


@pytest.mark.slow
def test_tune_keeps_running_statistics_of_every_reported_number_unless_named(tmp_path):
    out = python(f"""
        import json
        import ray
        from ray import tune
        from tune_jobs import ray_private

        def trial(config):
            for i in range(3):
                tune.report({{"val_acc": 0.5 + 0.1 * i, "loss": 1.0 - 0.1 * i, "epoch_time_s": 0.1}})

        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
        for name in ("all", "named"):
            tuner = tune.Tuner(trial, run_config=tune.RunConfig(name=name, storage_path={str(tmp_path)!r}, verbose=0))
            if name == "all":
                grid = tuner.fit()
            else:
                with ray_private.metrics_analysed(frozenset({{"val_acc"}})):
                    grid = tuner.fit()
            best = grid.get_best_result("val_acc", "max", scope="all")
            analysed = grid._experiment_analysis.trials[0].run_metadata.metric_analysis
            print("RESULT", json.dumps([name, round(best.metrics["val_acc"], 2), sorted(analysed)]))
    """)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line.split("RESULT", 1)[1]) for line in out.stdout.splitlines() if "RESULT" in line]
    (_, best_all, analysed_all), (_, best_named, analysed_named) = rows
    assert best_all == best_named == 0.7
    assert {"val_acc", "loss", "epoch_time_s"} <= set(analysed_all)  # Tune's own: every number
    assert analysed_named == ["val_acc"]


@pytest.mark.slow
def test_tune_copies_the_config_into_every_result_and_loads_frames_unless_told_not_to(tmp_path):
    """Tune copies a trial's config into every result it keeps and logs (why the sweep's param space
    holds only what identifies a trial: tune_jobs.launch.param_space), and loads every trial's
    results into a DataFrame at the end unless `result_frames_not_loaded`."""
    out = python(f"""
        import json, tempfile
        from pathlib import Path
        import ray
        from ray import tune
        from tune_jobs import ray_private

        def trial(config):
            for epoch in (1, 2, 3):
                with tempfile.TemporaryDirectory() as d:
                    Path(d, "state").write_text(str(epoch))
                    tune.report({{"epoch": epoch}}, checkpoint=tune.Checkpoint.from_directory(d))

        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
        for name in ("plain", "patched"):
            tuner = tune.Tuner(trial, param_space={{"lr": 0.1, "stop": {{"epochs": 3}}}},
                               run_config=tune.RunConfig(name=name, storage_path={str(tmp_path)!r}, verbose=0))
            if name == "plain":
                grid = tuner.fit()
            else:
                with ray_private.result_frames_not_loaded():
                    grid = tuner.fit()
            result = grid[0]
            rows = [json.loads(line) for line in Path(result.path, "result.json").read_text().splitlines()]
            saved = grid._experiment_analysis.trials[0].run_metadata.checkpoint_manager.latest_checkpoint_result
            params = json.loads(Path(result.path, "params.json").read_text())
            print("RESULT", json.dumps([name, "config" in result.metrics, ["config" in r for r in rows],
                                        "config" in saved.metrics, saved.metrics["epoch"], params,
                                        None if result.metrics_dataframe is None else len(result.metrics_dataframe)]))
    """)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {r[0]: r[1:] for r in (json.loads(line.split("RESULT", 1)[1]) for line in out.stdout.splitlines()
                                  if "RESULT" in line)}
    params = {"lr": 0.1, "stop": {"epochs": 3}}
    assert rows["plain"] == [True, [True] * 3, True, 3, params, 3]  # Tune's own: a copy everywhere
    assert rows["patched"] == [True, [True] * 3, True, 3, params, None]


def logged_epochs(out, experiment) -> tuple[list[int], list[int]]:
    """The epochs the one trial of `experiment` logged in result.json and in progress.csv, after
    checking that the script (`out`) ended well and saw no trial errors."""
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.split("RESULT", 1)[1]) == 0
    (trial_dir,) = experiment.glob("trial*")
    logged = [json.loads(line)["epoch"] for line in (trial_dir / "result.json").read_text().splitlines()]
    return logged, [int(row["epoch"]) for row in csv.DictReader((trial_dir / "progress.csv").open())]


# For `python`'s scripts: Tune uploads each snapshot of its experiment (its staging directory) to
# storage in the driver's step that takes it, as Tune's own `wait` does, not in the background: what
# is on storage then follows the trial's reports in order, however fast or loaded the machine.
SNAPSHOTS_AWAITED = """
        from ray.tune.execution.experiment_state import _ExperimentCheckpointManager
        sync_up = _ExperimentCheckpointManager.sync_up_experiment_state
        _ExperimentCheckpointManager.sync_up_experiment_state = (
            lambda manager, save_fn, force=False, wait=False: sync_up(manager, save_fn, force=force, wait=True))
"""


def dying_trial(died, checkpoint_at: str) -> str:
    """A function trainable's code for `python`: epochs 1-6 from its checkpoint's, a checkpoint at each
    epoch where `checkpoint_at` (an expression of `epoch`) holds, and its process dies once after
    epoch 5 (`died` marks it)."""
    return f"""
        def trial(config):
            start = 0
            if tune.get_checkpoint():
                with tune.get_checkpoint().as_directory() as path:
                    start = int(open(os.path.join(path, "epoch")).read())
            for epoch in range(start + 1, 7):
                with tempfile.TemporaryDirectory() as path:
                    open(os.path.join(path, "epoch"), "w").write(str(epoch))
                    checkpoint = tune.Checkpoint.from_directory(path) if {checkpoint_at} else None
                    tune.report({{"epoch": epoch}}, checkpoint=checkpoint)
                if epoch == 5 and not os.path.exists({str(died)!r}):
                    open({str(died)!r}, "w").close()
                    os._exit(1)
"""


@pytest.mark.slow
@pytest.mark.parametrize("kept", [True, False])
def test_tune_overwrites_a_retried_trials_newer_log_rows_with_storages_copy_unless_kept(tmp_path, kept):
    """A trial logs epochs 1-3 with checkpoints (the third makes Tune sync its staging directory to
    storage), then 4-5, then its process dies once. On the retry Tune's loggers copy the trial's
    result.json and progress.csv from storage over the driver's newer ones: epochs 4 and 5 are
    lost unless `driver_logs_kept`."""
    out = python(f"""
        import contextlib, json, os, tempfile
        import ray
        from ray import tune
        from tune_jobs import ray_private
{SNAPSHOTS_AWAITED}
{dying_trial(tmp_path / "died", checkpoint_at="True")}

        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
        tuner = tune.Tuner(trial, run_config=tune.RunConfig(
            name="r", storage_path={str(tmp_path)!r}, verbose=0,
            failure_config=tune.FailureConfig(max_failures=1),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=3)))
        with ray_private.driver_logs_kept() if {kept} else contextlib.nullcontext():
            grid = tuner.fit()
        print("RESULT", json.dumps(len(grid.errors)))
    """, TUNE_GLOBAL_CHECKPOINT_S="1000")
    logged, csv_epochs = logged_epochs(out, tmp_path / "r")
    if kept:
        assert logged == [1, 2, 3, 4, 5, 6] and len(csv_epochs) == 6, logged
    else:  # what the patch is for: the rows logged after storage's last sync are gone
        assert logged == [1, 2, 3, 6], logged


@pytest.mark.slow
@pytest.mark.parametrize("ahead", [True, False])
def test_tune_deletes_its_stored_snapshots_checkpoint_before_the_next_snapshot_unless_ahead(tmp_path, ahead):
    """A trial makes 12 checkpoints, keeping 4, and after each notes whether the experiment's stored
    snapshot changed. A snapshot's latest checkpoint must still be kept when the next checkpoint
    registers (a driver killed then resumes from it): Tune alone snapshots every 4th, so the 8th
    deletes the 4th while the stored snapshot still names it."""
    out = python(f"""
        import contextlib, glob, hashlib, json, os, tempfile
        import ray
        from ray import tune
        from tune_jobs import ray_private
{SNAPSHOTS_AWAITED}
        def stored_snapshot():
            return [hashlib.sha1(open(f, "rb").read()).hexdigest()
                    for f in glob.glob({str(tmp_path / "s" / "experiment_state-*.json")!r})]

        def trial(config):
            seen, synced_at = stored_snapshot(), []
            for i in range(1, 13):
                with tempfile.TemporaryDirectory() as path:
                    tune.report({{"i": i}}, checkpoint=tune.Checkpoint.from_directory(path))
                # Returns once the driver has taken another step: the one that registered checkpoint i,
                # deleted the oldest and maybe snapshotted (and uploaded the snapshot) is over.
                tune.report({{"i": i}})
                if stored_snapshot() != seen:
                    seen = stored_snapshot()
                    synced_at.append(i)
            tune.report({{"i": 13, "synced_at": synced_at}})

        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
        tuner = tune.Tuner(trial, run_config=tune.RunConfig(
            name="s", storage_path={str(tmp_path)!r}, verbose=0,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=4)))
        with ray_private.snapshots_ahead_of_deletion(2) if {ahead} else contextlib.nullcontext():
            grid = tuner.fit()
        print("RESULT", json.dumps(grid[0].metrics["synced_at"]))
    """, TUNE_GLOBAL_CHECKPOINT_S="1000")
    assert out.returncode == 0, out.stderr[-3000:]
    synced_at = json.loads(out.stdout.split("RESULT", 1)[1])
    # When checkpoint i registers, checkpoints i-3..i are kept; the stored snapshot names the
    # latest as of the last snapshot before i.
    stale = [i for i in range(2, 13) if max([s for s in synced_at if s < i], default=i) < i - 3]
    if ahead:
        assert synced_at == [2, 4, 6, 8, 10, 12] and not stale, synced_at
    else:  # what the patch is for
        assert synced_at == [4, 8, 12] and stale == [8, 12], synced_at


@pytest.mark.slow
@pytest.mark.parametrize("saved", [True, False])
def test_tune_saves_its_state_mid_run_only_from_its_main_thread_unless_state_saver(tmp_path, saved):
    """A trial makes 5 checkpoints and waits; another thread of the driver (as launch.terminate_as_interrupt's,
    while the main thread is inside a call to Ray) saves the experiment's state through `state_saver`: the
    stored state then holds the trial's last result. Without it nothing stores that before the trial ends."""
    gate = tmp_path / "go"
    out = python(f"""
        import glob, json, os, threading, tempfile, time
        import ray
        from ray import tune
        from tune_jobs import ray_private

        def trial(config):
            for i in range(1, 6):
                with tempfile.TemporaryDirectory() as path:
                    tune.report({{"i": i}}, checkpoint=tune.Checkpoint.from_directory(path))
            tune.report({{"i": 6}})  # returns once the driver has taken checkpoint 5 in
            open({str(gate)!r} + ".held", "w").close()
            while not os.path.exists({str(gate)!r}):
                time.sleep(0.05)

        def stored():  # the last result of the trial in the stored state
            for name in glob.glob({str(tmp_path / "s" / "experiment_state-*.json")!r}):
                trials = json.load(open(name))["trial_data"]
                return json.loads(trials[0][1]).get("last_result", {{}}).get("i") if trials else None

        def other_thread(save):
            while not os.path.exists({str(gate)!r} + ".held"):
                time.sleep(0.05)
            print("SAVED", save() if {saved} else None, flush=True)
            print("STORED", stored(), flush=True)
            open({str(gate)!r}, "w").close()

        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
        tuner = tune.Tuner(trial, run_config=tune.RunConfig(name="s", storage_path={str(tmp_path)!r}, verbose=0))
        with ray_private.state_saver() as save:
            threading.Thread(target=other_thread, args=(save,)).start()
            tuner.fit()
    """, TUNE_GLOBAL_CHECKPOINT_S="1000")
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"SAVED {True if saved else None}\n" in out.stdout, out.stdout[-2000:]
    stored = out.stdout.split("STORED ", 1)[1].split("\n", 1)[0]
    assert (stored == "6") is saved, out.stdout[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize("whole", [True, False])
def test_tune_rewrites_its_stored_experiment_state_in_place_unless_uploads_whole(tmp_path, whole):
    """A trial checkpoints 12 times, each time forcing a snapshot, and notes the stored experiment
    state's inode once each snapshot is there. Tune alone copies the snapshot over the stored
    experiment state in place (one inode throughout: a driver killed mid-copy leaves it truncated);
    inside `local_uploads_whole` each upload renames a whole copy in."""
    noted = tmp_path / "inodes.json"
    out = python(f"""
        import contextlib, glob, json, os, tempfile, time
        import ray
        from ray import tune
        from tune_jobs import ray_private

        def stored():
            found = {{}}
            for f in glob.glob({str(tmp_path / "w" / "experiment_state-*.json")!r}):
                try:
                    with open(f, "rb") as state:
                        found[f] = (os.fstat(state.fileno()).st_ino, state.read())
                except FileNotFoundError:  # replaced meanwhile
                    pass
            return found

        def trial(config):
            inodes = []
            for i in range(12):
                before, deadline = stored(), time.monotonic() + 120
                with tempfile.TemporaryDirectory() as path:
                    tune.report({{"i": i}}, checkpoint=tune.Checkpoint.from_directory(path))
                while stored() == before and time.monotonic() < deadline:  # this checkpoint's snapshot
                    time.sleep(0.01)
                inodes += [inode for inode, _ in stored().values()]
            with open({str(noted)!r}, "w") as f:
                json.dump(inodes, f)

        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
        tuner = tune.Tuner(trial, run_config=tune.RunConfig(
            name="w", storage_path={str(tmp_path)!r}, verbose=0,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))
        with ray_private.local_uploads_whole() if {whole} else contextlib.nullcontext():
            grid = tuner.fit()
        print("RESULT", json.dumps(len(grid.errors)))
    """, TUNE_GLOBAL_CHECKPOINT_S="1000")
    assert out.returncode == 0, out.stderr[-3000:]
    errors, inodes = json.loads(out.stdout.split("RESULT", 1)[1]), len(set(json.loads(noted.read_text())))
    experiment = tmp_path / "w"
    (trial_dir,) = experiment.glob("trial*")
    assert errors == 0 and len((trial_dir / "result.json").read_text().splitlines()) == 12
    assert not list(experiment.rglob("*.uploading-*"))
    if whole:
        assert inodes > 3, inodes  # a new one per snapshot (freed inodes can be reused)
    else:  # what the patch is for
        assert inodes == 1, inodes
    # Tune's state ends as `_is_whole_state` knows it (else each upload parses it, at a cost), and
    # no part of it is taken for the whole.
    from tune_jobs.ray_private import STATE_END, _is_whole_state

    (state,) = experiment.glob("experiment_state-*.json")
    data = state.read_bytes()
    assert STATE_END.search(data[-200:]) and json.loads(data)["stats"]
    assert not any(_is_whole_state(data[:n]) for n in range(len(data) - 400, len(data)))


@pytest.mark.slow
def test_ray_prints_every_error_the_gcs_publishes_on_the_driver_unless_node_deaths_unprinted():
    """The GCS publishes a node's death (and a raylet's, with its log and stack trace) to every
    driver, whose listener prints it; inside `node_deaths_unprinted` those two kinds are dropped
    and every other error is printed as before. One driver of each kind, one after the other."""
    out = python("""
        import sys, time
        import ray
        from ray._private import utils, worker
        from tune_jobs import ray_private

        class Printed:  # the driver's stdout, and what has been printed on it
            def __init__(self, stream):
                self.stream, self.text = stream, ""
            def write(self, text):
                self.text += text
                return self.stream.write(text)
            def __getattr__(self, name):
                return getattr(self.stream, name)

        sys.stdout = printed = Printed(sys.stdout)
        before = worker.listen_error_messages
        for quiet in (True, False):
            with ray_private.node_deaths_unprinted(quiet):
                ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
            client = worker.global_worker.gcs_client
            for kind in ("node_removed", "raylet_died", "worker_died"):
                utils.publish_error_to_driver(kind, f"MESSAGE-{quiet}-{kind}", gcs_client=client)
            # The GCS hands a driver its errors in the order published: the last printed, all were seen.
            deadline = time.monotonic() + 120
            while f"MESSAGE-{quiet}-worker_died" not in printed.text and time.monotonic() < deadline:
                time.sleep(0.05)
            ray.shutdown()
        print("RESTORED", worker.listen_error_messages is before)
    """)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "RESTORED True" in out.stdout
    for quiet in (True, False):
        assert f"MESSAGE-{quiet}-worker_died" in out.stdout
        for kind in ("node_removed", "raylet_died"):
            assert (f"MESSAGE-{quiet}-{kind}" in out.stdout) == (not quiet), out.stdout


@pytest.mark.slow
def test_tune_restarts_a_retried_trial_behind_those_not_started_unless_retried_first(tmp_path):
    """Four trials, one CPU: trial 0 dies once at its second report. Tune moves it behind trials 1-3
    (they run first, it last); inside `retried_trials_first` it restarts at once."""
    out = python(f"""
        import contextlib, os, time
        import ray
        from ray import tune
        from tune_jobs import ray_private

        def trial(config):
            with open(os.path.join({str(tmp_path)!r}, config["run"] + ".starts"), "a") as f:
                f.write(f"{{config['n']}}\\n")
            for step in range(3):
                tune.report({{"step": step}})
                died = os.path.join({str(tmp_path)!r}, config["run"] + ".died")
                if config["n"] == 0 and step == 1 and not os.path.exists(died):
                    open(died, "w").close()
                    os._exit(1)
                time.sleep(0.2)

        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
        for run in ("first", "plain"):
            tuner = tune.Tuner(tune.with_resources(trial, {{"cpu": 1}}),
                               param_space={{"n": tune.grid_search([0, 1, 2, 3]), "run": run}},
                               tune_config=tune.TuneConfig(reuse_actors=True),
                               run_config=tune.RunConfig(name=run, storage_path={str(tmp_path)!r}, verbose=0,
                                                         failure_config=tune.FailureConfig(max_failures=1)))
            with ray_private.retried_trials_first() if run == "first" else contextlib.nullcontext():
                print("ERRORS", len(tuner.fit().errors))
    """)
    assert out.returncode == 0 and out.stdout.count("ERRORS 0") == 2, out.stderr[-3000:]
    assert (tmp_path / "first.starts").read_text().split() == ["0", "0", "1", "2", "3"]
    assert (tmp_path / "plain.starts").read_text().split() == ["0", "1", "2", "3", "0"]  # Tune's own order


@pytest.mark.slow
def test_tune_requests_processes_in_the_order_it_made_the_trials_unless_staged_in_order(tmp_path):
    """Six trials on two slots, tune_jobs.launch.LongestFirst ranking them 6 to 1: Tune requests the
    trials' processes in the order it made them (after the one its scheduler picks), so the second
    slot's first trial is trial 1; inside `trials_staged_in_order` the first two are 6 and 5. On
    one slot the scheduler alone starts them in its order, each in the process the last one ran in.
    (On two slots each trial waits until two have started: both slots' first trials are running.)"""
    out = python(f"""
        import contextlib, os, time
        import ray
        from ray import tune
        from tune_jobs import ray_private
        from tune_jobs.launch import LongestFirst

        def trial(config):
            starts = os.path.join({str(tmp_path)!r}, config["run"] + ".starts")
            with open(starts, "a") as f:
                f.write(f"{{config['trial']['number']}} {{os.getpid()}}\\n")
            deadline = time.monotonic() + 120
            while config["slots"] == 2 and len(open(starts).readlines()) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            tune.report({{"done": 1}})

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        for run, slots in (("staged", 2), ("plain", 2), ("one-slot", 1)):
            scheduler = LongestFirst([6, 5, 4, 3, 2, 1])
            space = {{"trial": tune.grid_search([{{"number": n}} for n in range(1, 7)]), "run": run, "slots": slots}}
            tuner = tune.Tuner(tune.with_resources(trial, {{"cpu": 2 // slots}}), param_space=space,
                               tune_config=tune.TuneConfig(reuse_actors=True, scheduler=scheduler),
                               run_config=tune.RunConfig(name=run, storage_path={str(tmp_path)!r}, verbose=0))
            staged = ray_private.trials_staged_in_order(scheduler.trial_rank)
            with staged if run == "staged" else contextlib.nullcontext():
                print("ERRORS", len(tuner.fit().errors))
    """)
    assert out.returncode == 0 and out.stdout.count("ERRORS 0") == 3, out.stderr[-3000:]
    starts = {run: [line.split() for line in (tmp_path / f"{run}.starts").read_text().splitlines()]
              for run in ("staged", "plain", "one-slot")}
    assert {number for number, _ in starts["staged"][:2]} == {"6", "5"}
    assert {number for number, _ in starts["plain"][:2]} == {"6", "1"}  # Tune's own request order
    assert [number for number, _ in starts["one-slot"]] == ["6", "5", "4", "3", "2", "1"]
    assert len({pid for _, pid in starts["one-slot"]}) == 1  # one process, reused


def test_tunes_loggers_copy_a_trials_log_from_storage_only_where_it_has_a_checkpoint(tmp_path):
    """`restore_trial_log`: Tune's own copy from storage into the driver's staging directory."""
    from types import SimpleNamespace

    import pyarrow.fs
    from ray.tune.logger import JsonLoggerCallback

    from tune_jobs import ray_private

    (tmp_path / "stored").mkdir()
    (tmp_path / "stored" / "result.json").write_text('{"epoch": 1}\n')
    storage = SimpleNamespace(trial_fs_path=str(tmp_path / "stored"), storage_filesystem=pyarrow.fs.LocalFileSystem())
    for checkpoint, local in ((None, tmp_path / "fresh"), ("a checkpoint", tmp_path / "restored")):
        trial = SimpleNamespace(checkpoint=checkpoint, local_path=str(local), storage=storage,
                                init_local_path=lambda local=local: local.mkdir())  # as Trial makes its directory
        ray_private.restore_trial_log(JsonLoggerCallback(), "result.json", trial)
        assert local.is_dir() and (local / "result.json").exists() == (checkpoint is not None)
    assert (tmp_path / "restored" / "result.json").read_text() == '{"epoch": 1}\n'


@pytest.mark.slow
def test_a_raylets_command_line_names_its_node_and_gcs_and_a_driver_joins_through_the_node_named():
    """`raylet_addresses` reads a raylet's node address and GCS from its command line, and
    `joining_through` is the `ray.init` keyword a second driver joins through that node by."""
    out = python("""
        import subprocess, sys
        import ray
        from tune_jobs import ray_private

        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
        context = ray.get_runtime_context()
        gcs, node_ip = context.gcs_address, ray.util.get_node_ip_address()
        print("FOUND", (node_ip, gcs) in ray_private.raylet_addresses())
        second = subprocess.run([sys.executable, "-c", f'''
        import ray
        from tune_jobs import ray_private
        ray.init(address="{gcs}", log_to_driver=False, **ray_private.joining_through("{node_ip}"))
        print(ray.get_runtime_context().get_node_id())
        '''], capture_output=True, text=True, timeout=120)
        print("JOINED", second.stdout.strip().splitlines()[-1:] == [context.get_node_id()], second.stderr[-500:])
    """)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "FOUND True" in out.stdout and "JOINED True" in out.stdout, out.stdout[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize("ours", [True, False])
def test_tunes_loggers_log_the_epochs_a_restarted_trial_trains_again_twice_unless_per_epoch_rows(tmp_path, ours):
    """A trial checkpoints at epoch 3, logs 4 and 5, and its process dies once: the retry trains 4
    and 5 again. Tune's own loggers (with `driver_logs_kept`) log them twice; the project's
    (launch.EpochJsonLogger, EpochCsvLogger: `restore_trial_log` on a resume) once."""
    out = python(f"""
        import json, os, tempfile
        import ray
        from ray import tune
        from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
        from tune_jobs import ray_private
        from tune_jobs.launch import EpochCsvLogger, EpochJsonLogger

{dying_trial(tmp_path / "died", checkpoint_at="epoch == 3")}

        os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
        loggers = [EpochJsonLogger(), EpochCsvLogger()] if {ours} else [JsonLoggerCallback(), CSVLoggerCallback()]
        tuner = tune.Tuner(trial, run_config=tune.RunConfig(
            name="r", storage_path={str(tmp_path)!r}, verbose=0, callbacks=loggers,
            failure_config=tune.FailureConfig(max_failures=1)))
        with ray_private.driver_logs_kept():
            grid = tuner.fit()
        print("RESULT", json.dumps(len(grid.errors)))
    """)
    logged, csv_epochs = logged_epochs(out, tmp_path / "r")
    assert logged == csv_epochs == ([1, 2, 3, 4, 5, 6] if ours else [1, 2, 3, 4, 5, 4, 5, 6]), (logged, csv_epochs)


@pytest.mark.slow
def test_ray_marks_its_own_transfers_so_uri_credentials_reach_workers_and_no_other_pickle():
    """A filesystem `shipped_to_workers` made reaches a task with its credentials and comes back with
    them (a checkpoint's filesystem); pickled anywhere else, the driver or the worker, it has none."""
    out = python("""
        import pickle
        import ray
        from analysis import storage
        from tune_jobs import ray_private

        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
        root = storage.take_credentials("s3://KEY:s3cr3t-40@b/s?endpoint_override=127.0.0.1:1&scheme=http")
        fs, _ = ray_private.storage_for_ray(root)

        @ray.remote
        def on_worker(fs):
            return storage.s3_options(fs)["secret_key"], b"s3cr3t-40" in pickle.dumps(fs), fs

        secret, in_plain_pickle, back = ray.get(on_worker.remote(fs))
        print(secret, in_plain_pickle, storage.s3_options(back)["secret_key"], b"s3cr3t-40" in pickle.dumps(back))
    """)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[-4:] == ["s3cr3t-40", "False", "s3cr3t-40", "False"]
