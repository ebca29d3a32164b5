"""Faults a sweep must survive without losing what it computed: killed driver, killed trial worker,
corrupted checkpoint, storage filling up, storage too small or read-only. Real processes, real Ray.
Each fault strikes at a point the test observes: trials held at an `EpochGate` after a known epoch."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import analysis
from analysis.storage import LOCK_FILE
from tune_jobs.cluster import LOCAL_RAY_ENV
from tune_jobs.launch import KEPT_CHECKPOINTS
from processes import EpochGate, cli, spawn_cli, spec_file, tagged_env, tagged_pids, wait_until

pytestmark = pytest.mark.slow

# Three trials: lr 0.05 reaches the target at epoch 2, the two at lr 1e-6 crawl to max_epochs; held at
# the gate after HELD_AT epochs (tests/processes.py), the crawlers are mid-sweep on any machine. Only the
# first command's trials see the gate: a resume's run on to their end.
CRAWL = {
    "name": "crawl",
    "train": {"n_hidden": 32},
    "stop": {"threshold": 0.9, "patience": 2, "max_epochs": 8},
    "views": {"lr": {"lr": [0.05, 1.0e-6], "batch_size": 8}, "batch": {"lr": 1.0e-6, "batch_size": [16]}},
    # A checkpoint after every epoch: a retry redoes one at most. Half a CPU each: all three run at once on
    # two cores, so the fast trial, started last (longest expected first), ends while the crawlers wait.
    "resources": {"checkpoint_every_s": 0, "cpus_per_trial": 0.5},
}
HELD_AT = 4


def rows(result_json: Path) -> list[dict]:
    text = result_json.read_text() if result_json.exists() else ""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def status_of(result_json: Path) -> str:
    found = rows(result_json)
    return found[-1]["status"] if found else "pending"


def start_crawl(tmp_path: Path, tag: str, data_dir: str, storage: Path, gate: EpochGate,
                name: str = "c") -> subprocess.Popen:
    return spawn_cli("run", spec_file(tmp_path, CRAWL), "--data", data_dir, "--storage", str(storage), "--name", name,
                     "--no-analyze", tag=tag, log=tmp_path / f"{name}.log", **gate.env)


def stored_as_finished(experiment: Path) -> set[str]:
    """The trial ids Tune's stored snapshot of the experiment (what `resume` restores) holds as
    finished; a snapshot being written counts as none."""
    try:
        state = json.loads(max(experiment.glob("experiment_state-*.json")).read_text())
        trials = [json.loads(entry[0]) for entry in state["trial_data"]]
    except (ValueError, KeyError, IndexError):
        return set()
    return {t["trial_id"] for t in trials if t.get("status") == "TERMINATED"}


def crawlers_held(experiment: Path, gate: EpochGate) -> dict[int, int]:
    """Wait until the crawlers are held after HELD_AT epochs (reported and checkpointed), storage
    shows the fast trial finished and both crawlers running, and Tune's stored snapshot holds the
    fast trial as finished (`resume` runs a trial that ended after the last snapshot again); the
    crawlers' {trial number: pid}."""
    held = gate.wait_held(2)

    def one_finished_two_running() -> bool:
        statuses = {r.parent.name.rsplit("-", 1)[1]: status_of(r) for r in experiment.glob("trial-*/result.json")}
        done = {trial for trial, status in statuses.items() if status == "reached_target"}
        return sorted(statuses.values()) == ["reached_target", "running", "running"] and \
            done <= stored_as_finished(experiment)
    wait_until(one_finished_two_running, 120, "storage and Tune's snapshot to show one finished and two running trials")
    return held


def finished_results(experiment: Path) -> dict[str, bytes]:
    """The result.json of each trial Tune's stored snapshot holds as finished: what `resume` keeps."""
    stored = stored_as_finished(experiment)
    return {r.parent.name: r.read_bytes() for r in experiment.glob("trial-*/result.json")
            if r.parent.name.rsplit("-", 1)[1] in stored}


def assert_epochs_continue(experiment: Path) -> None:
    """Each trial continued from its last checkpoint: epochs 1..N, each once (an epoch redone after
    the checkpoint replaces the row logged before), cumulative time rising."""
    for result in experiment.glob("trial-*/result.json"):
        found = rows(result)
        epochs = [r["epoch"] for r in found]
        assert epochs == list(range(1, len(epochs) + 1)), (result, epochs)
        last = {r["epoch"]: r for r in found}
        times = [last[e]["time_s"] for e in sorted(last)]
        assert times == sorted(times), result  # cumulative time continues from the checkpoint


def test_killed_driver_then_resume_finishes_only_what_was_missing(tmp_path, process_tag, blob_dataset_dir):
    storage, gate = tmp_path / "sweeps", EpochGate(tmp_path / "gate", HELD_AT)
    driver = start_crawl(tmp_path, process_tag, blob_dataset_dir, storage, gate)
    experiment = storage / "c"
    crawlers_held(experiment, gate)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and its process group, mid-sweep
    driver.wait(60)
    finished = finished_results(experiment)
    assert len(finished) == 1

    dead_ray = json.loads((experiment / LOCK_FILE).read_text())["local_ray"]  # what the driver recorded
    assert dead_ray
    # A process of the dead driver's Ray that lives on (as its dashboard and agents can, for a minute,
    # holding their ports), and one of another Ray that resume must leave alone.
    leftover = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"],
                                env=tagged_env(process_tag, **{LOCAL_RAY_ENV: dead_ray}))
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"],
                                 env=tagged_env(process_tag, **{LOCAL_RAY_ENV: "another-ray"}))

    out = cli("resume", "c", "--storage", str(storage), "--no-analyze", tag=process_tag)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "failed to bind" not in out.stdout + out.stderr
    assert leftover.poll() is not None and bystander.poll() is None
    assert f"leftover process(es) of the local Ray of the killed `instrument-sweep run` (pid {driver.pid})" in out.stdout
    assert not tagged_pids(dead_ray, LOCAL_RAY_ENV)  # nothing of the dead command's Ray is left
    bystander.kill()
    for name, before in finished.items():  # finished trials were not re-run
        assert (experiment / name / "result.json").read_bytes() == before
    trials = analysis.load_trials(str(experiment))
    assert sorted(trials.trial_number) == [1, 2, 3]  # every trial exactly once
    assert set(trials.status) <= {"reached_target", "max_epochs"}
    assert_epochs_continue(experiment)
    assert not list(experiment.glob("trial-*/events.out.tfevents*"))  # no TensorBoard logger, as `run`


def test_a_sweep_killed_before_tunes_first_state_starts_over_on_resume(tmp_path, process_tag, blob_dataset_dir):
    """A driver killed (a Slurm job requeued) after the sweep wrote its spec and Tune its tuner.pkl, but
    before Tune stored the experiment's state: `resume` (what the requeued job runs) starts the trials
    from the beginning, rather than failing in Tune's restore."""
    storage, gate = tmp_path / "sweeps", EpochGate(tmp_path / "gate", HELD_AT)
    experiment = storage / "c"
    driver = start_crawl(tmp_path, process_tag, blob_dataset_dir, storage, gate)
    wait_until(lambda: (experiment / "tuner.pkl").exists(), 120, "Tune's first file, tuner.pkl")
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait(60)
    gate.open()
    # Where Tune got as far as its first snapshot before the kill, what it stored then is taken away:
    # the storage as a kill a moment earlier leaves it.
    for late in [*experiment.glob("experiment_state-*.json"), *experiment.glob("basic-variant-state-*.json")]:
        late.unlink()
    for trial_dir in experiment.glob("trial-*"):
        shutil.rmtree(trial_dir)
    assert "tuner.pkl" in os.listdir(experiment)

    out = cli("resume", "c", "--storage", str(storage), "--no-analyze", tag=process_tag)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "Tune stored no state of this sweep before it stopped" in out.stdout
    assert "its trials start from the beginning" in out.stdout
    trials = analysis.load_trials(str(experiment))
    assert sorted(trials.trial_number) == [1, 2, 3]  # every trial exactly once
    assert set(trials.status) == {"reached_target", "max_epochs"}
    assert_epochs_continue(experiment)
    assert yaml.safe_load((experiment / "sweep.yaml").read_text())["name"] == "crawl"


def test_killed_trial_worker_is_retried_from_its_checkpoint(tmp_path, process_tag, blob_dataset_dir):
    storage, gate = tmp_path / "sweeps", EpochGate(tmp_path / "gate", HELD_AT)
    driver = start_crawl(tmp_path, process_tag, blob_dataset_dir, storage, gate)
    experiment = storage / "c"
    number, victim = min(gate.wait_held(2).items())
    os.kill(victim, signal.SIGKILL)  # the trial's Ray worker process
    gate.open()
    assert driver.wait(300) == 0, (tmp_path / "c.log").read_text()[-3000:]
    (result,) = [r for r in experiment.glob("trial-*/result.json") if rows(r)[0]["trial_number"] == number]
    log = (tmp_path / "c.log").read_text()
    # One line per retry, saying where the trial continues; the error is in the trial's error.txt.
    # Not anchored at a line's start: Ray's "(raylet) A worker died" notice is printed as its text,
    # then its newline, from another thread, and our line can land between the two.
    retry = re.findall(r"\[\d/3 done\] retry  #\d .*$", log, re.MULTILINE)
    assert len(retry) == 1, log
    assert re.search(rf"#{number} .*from epoch {HELD_AT}'s checkpoint, retry 1 of 2; "
                     rf"error in {result.parent.name}/error.txt$", retry[0]), retry[0]
    assert "Traceback" not in log and "ActorDiedError" not in log, log
    assert "worker process has died" in (result.parent / "error.txt").read_text()
    trials = analysis.load_trials(str(experiment))
    assert len(trials) == 3 and set(trials.status) <= {"reached_target", "max_epochs"}
    retried = rows(result)
    assert retried[-1]["epoch"] == CRAWL["stop"]["max_epochs"] and retried[-1]["pid"] != victim
    assert len(list(result.parent.glob("checkpoint_*"))) == KEPT_CHECKPOINTS  # the last ones, across the retry
    assert_epochs_continue(experiment)


def test_a_trial_killed_before_its_first_checkpoint_is_retried_from_the_start(tmp_path, process_tag,
                                                                                blob_dataset_dir):
    storage, gate = tmp_path / "sweeps", EpochGate(tmp_path / "gate", 0)  # held before their first epoch
    driver = start_crawl(tmp_path, process_tag, blob_dataset_dir, storage, gate)
    experiment = storage / "c"
    ((number, victim), *_) = gate.wait_held(1).items()
    assert cmdline(victim).startswith(b"ray::ImplicitFunc")  # a trial's Ray worker
    assert not any(rows(r) for r in experiment.glob("trial-*/result.json"))
    os.kill(victim, signal.SIGKILL)  # after its start (Ray, torch, the data), before its first epoch
    gate.open()
    assert driver.wait(300) == 0, (tmp_path / "c.log").read_text()[-3000:]
    log = (tmp_path / "c.log").read_text()
    retry = re.findall(r"\[\d/3 done\] retry  #\d .*$", log, re.MULTILINE)  # unanchored: see above
    assert len(retry) == 1 and f"#{number} " in retry[0], log
    assert "from the start (no checkpoint yet), retry 1 of 2" in retry[0], log
    assert "Traceback" not in log, log
    trials = analysis.load_trials(str(experiment))
    assert len(trials) == 3 and set(trials.status) <= {"reached_target", "max_epochs"}
    assert_epochs_continue(experiment)


def test_a_second_command_on_a_running_experiment_is_refused_and_harms_nothing(tmp_path, process_tag,
                                                                               blob_dataset_dir):
    storage, gate = tmp_path / "sweeps", EpochGate(tmp_path / "gate", HELD_AT)
    driver = start_crawl(tmp_path, process_tag, blob_dataset_dir, storage, gate)
    experiment = storage / "c"
    gate.wait_held(2)

    resume = cli("resume", "c", "--storage", str(storage), tag=process_tag, timeout=180)
    again = cli("run", str(tmp_path / "crawl.yaml"), "--data", blob_dataset_dir, "--storage", str(storage),
                "--name", "c", tag=process_tag, timeout=180)
    assert driver.poll() is None  # still running, held at the gate: each command met it mid-sweep
    gate.open()
    assert resume.returncode == 2 and resume.stderr.count("\n") == 1, resume.stderr
    assert resume.stderr.startswith(f"error: experiment: {experiment} is in use by `instrument-sweep run` "
                                    f"(pid {driver.pid} on "), resume.stderr
    assert again.returncode == 2 and again.stderr.count("\n") == 1, again.stderr
    assert again.stderr.startswith(f"error: --name: {experiment} already exists"), again.stderr
    assert not (experiment / "analysis").exists()

    assert driver.wait(300) == 0, (tmp_path / "c.log").read_text()[-3000:]  # the first finishes unharmed
    trials = analysis.load_trials(str(experiment))
    assert len(trials) == 3 and set(trials.status) <= {"reached_target", "max_epochs"}
    assert_epochs_continue(experiment)
    assert "retry" not in (tmp_path / "c.log").read_text()  # no trial failed meanwhile


def test_corrupted_checkpoint_fails_its_trial_only(tmp_path, process_tag, blob_dataset_dir):
    storage, gate = tmp_path / "sweeps", EpochGate(tmp_path / "gate", HELD_AT)
    driver = start_crawl(tmp_path, process_tag, blob_dataset_dir, storage, gate)
    experiment = storage / "c"
    crawlers_held(experiment, gate)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait(60)
    unfinished = [r.parent for r in experiment.glob("trial-*/result.json") if status_of(r) == "running"]
    victim = unfinished[0]
    for state in victim.glob("checkpoint_*/state.pt"):
        state.write_bytes(b"not a checkpoint")

    out = cli("resume", "c", "--storage", str(storage), "--no-analyze", tag=process_tag)
    assert out.returncode == 1, out.stdout[-3000:] + out.stderr[-3000:]  # some trials failed
    assert "resume" in out.stdout
    trials = analysis.load_trials(str(experiment)).set_index("trial_id")
    failed = trials[trials.status == "error"]
    assert len(failed) == 1 and victim.name.endswith(failed.index[0])
    assert "cannot be loaded" in failed.error.iloc[0]
    assert set(trials[trials.status != "error"].status) <= {"reached_target", "max_epochs"}
    assert len(trials) == 3


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of a chosen size (needs mount rights: root, as in CI); unmounted afterwards."""
    mounts = []

    def make(size_mb: int, read_only: bool = False) -> Path:
        where = tmp_path / f"disk{len(mounts)}"
        where.mkdir()
        options = f"size={size_mb}m" + (",ro" if read_only else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        mounts.append(where)
        return where

    yield make
    for where in mounts:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_storage_filling_up_stops_safely_and_resumes(tmp_path, process_tag, blob_dataset_dir, small_disk):
    disk, gate = small_disk(80), EpochGate(tmp_path / "gate", HELD_AT)
    driver = start_crawl(tmp_path, process_tag, blob_dataset_dir, disk, gate)
    experiment = disk / "c"
    gate.wait_held(2)
    filler = disk / "filler"
    with filler.open("wb") as out:  # leave about 20 MB: under the guard's 32 MB
        out.write(b"\0" * int(os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize - 20e6))
    assert driver.wait(300) == 2
    log = (tmp_path / "c.log").read_text()
    assert "--storage: only" in log and "stopped safely" in log and "resume" in log
    for state in experiment.glob("experiment_state-*.json"):
        json.loads(state.read_text())  # Tune's state is intact

    filler.unlink()
    out = cli("resume", "c", "--storage", str(disk), "--no-analyze", tag=process_tag)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    trials = analysis.load_trials(str(experiment))
    assert len(trials) == 3 and set(trials.status) <= {"reached_target", "max_epochs"}
    assert_epochs_continue(experiment)


@pytest.mark.parametrize("size_mb, read_only, message", [(40, False, "MB free"), (80, True, "not writable")])
def test_storage_too_small_or_read_only_is_refused_up_front(tmp_path, process_tag, blob_dataset_dir,
                                                            small_disk, size_mb, read_only, message):
    disk = small_disk(size_mb, read_only)
    out = cli("run", "--preset", "smoke", "--data", blob_dataset_dir, "--storage", str(disk / "sweeps"),
              tag=process_tag, timeout=180)
    assert out.returncode == 2 and "--storage" in out.stderr and message in out.stderr
    assert not (disk / "sweeps").exists() or not any((disk / "sweeps").iterdir())
