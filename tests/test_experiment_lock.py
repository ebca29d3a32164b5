"""One command per experiment: the lock refuses a second holder, names the first, and is freed
when its holder dies; what is left of a killed command's local Ray is ended, nothing else.
Real processes and real OS locks; no Ray."""

import errno
import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

from processes import wait_until
from trainables.errors import InputError
from tune_jobs import experiment_lock
from tune_jobs.cluster import LOCAL_RAY_ENV, pids_with_env, stop_leftover_local_ray
from analysis.storage import LOCK_FILE


def holder_process(experiment, **record) -> subprocess.Popen:
    """Another process that takes the lock, records `record`, says "held" and waits."""
    code = textwrap.dedent(f"""
        import sys, time
        from tune_jobs import experiment_lock
        lock = experiment_lock.acquire({str(experiment)!r}, "run")
        lock.record(**{record!r})
        print("held", flush=True)
        time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_command_is_refused_naming_the_holder(tmp_path):
    holder = holder_process(tmp_path)
    try:
        with pytest.raises(InputError) as err:
            experiment_lock.acquire(str(tmp_path), "resume")
        assert err.value.where == "experiment"
        assert f"is in use by `instrument-sweep run` (pid {holder.pid} on " in err.value.problem
    finally:
        holder.kill()
        holder.wait()


def test_a_killed_holder_frees_the_lock_and_leaves_its_record(tmp_path):
    holder = holder_process(tmp_path, local_ray="abc123")
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with experiment_lock.hold(str(tmp_path), "resume") as lock:
        assert lock.previous["pid"] == holder.pid and lock.previous["local_ray"] == "abc123"
    with experiment_lock.hold(str(tmp_path), "resume") as lock:
        assert lock.previous == {}  # released normally: nothing left to clean up
    assert (tmp_path / LOCK_FILE).read_text() == ""


def test_run_creates_the_experiment_or_refuses_an_existing_one(tmp_path):
    with experiment_lock.hold(str(tmp_path / "new"), "run", create=True):
        assert (tmp_path / "new" / LOCK_FILE).is_file()
    # A run that ended before writing anything left only its lock file: no experiment, a new run may take it.
    with experiment_lock.hold(str(tmp_path / "new"), "run", create=True):
        (tmp_path / "new" / "sweep.yaml").write_text("name: seed\n")
    with pytest.raises(InputError) as err:
        experiment_lock.acquire(str(tmp_path / "new"), "run", create=True)
    assert err.value.where == "--name" and "already exists" in err.value.problem


def test_cloud_experiments_are_not_locked():
    with experiment_lock.hold("s3://bucket/sweeps/x", "run") as first:
        with experiment_lock.hold("s3://bucket/sweeps/x", "resume") as second:
            assert first.previous == second.previous == {}


def sleeper(tag: str) -> subprocess.Popen:
    """A process that carries `tag` the way a local Ray's processes do: in its environment."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                            env={**os.environ, LOCAL_RAY_ENV: tag})


def test_leftovers_of_the_recorded_local_ray_end_and_nothing_else():
    ours = [sleeper("dead-command-ray"), sleeper("dead-command-ray")]
    others = [sleeper("dead-command-ray2"), sleeper("another-ray")]  # e.g. a Ray another command started
    try:
        wait_until(lambda: pids_with_env(LOCAL_RAY_ENV, "dead-command-ray") == sorted(p.pid for p in ours), 60,
                   "the sleepers' environments", interval_s=0.05)
        assert stop_leftover_local_ray("dead-command-ray", "another-host") == 0  # another machine's: not here
        assert all(proc.poll() is None for proc in ours)
        assert stop_leftover_local_ray("dead-command-ray", socket.gethostname()) == 2
        for proc in ours:
            assert proc.wait(60) is not None
        assert all(proc.poll() is None for proc in others)
        assert stop_leftover_local_ray("", socket.gethostname()) == 0
    finally:
        for proc in ours + others:
            proc.kill()
            proc.wait()


def test_a_leftover_process_ends_with_its_children_whose_environment_is_hidden():
    """Ray's agents inherit the tag, but their process titles hide their environment from /proc:
    as children of a tagged process they are found, and end, with it."""
    code = ("import subprocess, sys, time; "
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], env={}); "
            "print(child.pid, flush=True); time.sleep(600)")
    parent = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, LOCAL_RAY_ENV: "dead-ray-3"},
                              stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    try:
        assert pids_with_env(LOCAL_RAY_ENV, "dead-ray-3") == sorted([parent.pid, child])
        assert stop_leftover_local_ray("dead-ray-3", socket.gethostname()) == 2
        parent.wait(60)
        wait_until(lambda: not os.path.exists(f"/proc/{child}"), 60, "the child to end", interval_s=0.1)
    finally:
        parent.kill()
        parent.wait()


@pytest.mark.parametrize("code", [errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP])
def test_a_filesystem_without_locks_is_named_in_one_line_and_nothing_is_left(tmp_path, monkeypatch, code):
    """Lustre mounted without `flock` answers flock() with ENOSYS, NFS without its lock daemon with ENOLCK,
    others with EOPNOTSUPP (injected here: this machine's filesystems lock)."""
    def refuse(fd, operation):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(experiment_lock.fcntl, "flock", refuse)
    experiment = tmp_path / "x"
    for attempt in (lambda: experiment_lock.acquire(str(experiment), "run", create=True),
                    lambda: experiment_lock.check_lockable(str(tmp_path))):
        with pytest.raises(InputError) as err:
            attempt()
        assert err.value.where == "--storage"
        assert f"refuses file locks (flock: {os.strerror(code)})" in err.value.problem
        assert "Lustre: mount with -o flock" in err.value.problem and " mounted at /" in err.value.problem
    assert not list(tmp_path.iterdir())  # the experiment made for the lock, and the probe, removed


def test_run_and_resume_on_a_filesystem_without_locks_exit_2_before_anything_starts(tmp_path, monkeypatch,
                                                                                      capsys, blob_dataset_dir):
    from tune_jobs.cli import main

    def refuse(fd, operation):
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))

    monkeypatch.setattr(experiment_lock.fcntl, "flock", refuse)
    storage = tmp_path / "sweeps"
    assert main(["run", "smoke", "--data", blob_dataset_dir, "--storage", str(storage), "--name", "x"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: --storage: {storage} is on a ") and "ray" not in err[0]
    assert not (storage / "x").exists()
    (storage / "y").mkdir()
    (storage / "y" / "sweep.yaml").write_text("name: smoke\n")
    assert main(["resume", "y", "--storage", str(storage)]) == 2
    assert capsys.readouterr().err.startswith(f"error: --storage: {storage / 'y'} is on a ")
