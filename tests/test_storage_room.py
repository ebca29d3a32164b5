"""A quota is treated like a full disk: scratch filesystems refuse writes with EDQUOT while they show
space free. Before a run, while it runs (StorageGuard) and after it stops, the room a sweep needs is
allocated to see whether it fits. EDQUOT is injected (os.posix_fallocate); the full-disk cases run on
a real small disk in tests/test_faults.py."""

import errno
import os
import signal

import pytest

from trainables.errors import InputError
from tune_jobs import storage_space
from tune_jobs.storage_space import MIN_FREE_TO_CONTINUE_MB, MIN_FREE_TO_START_MB

QUOTA = os.strerror(errno.EDQUOT)  # "Disk quota exceeded"


@pytest.fixture
def quota_left_mb(monkeypatch):
    """Allocations beyond this many MB fail with EDQUOT, as a used-up quota refuses them; set `left[0]`."""
    left = [0.0]
    real = os.posix_fallocate

    def allocate(fd, offset, length):
        if (offset + length) / 1e6 > left[0]:
            raise OSError(errno.EDQUOT, QUOTA)
        real(fd, offset, length)

    monkeypatch.setattr(os, "posix_fallocate", allocate)
    return left


def test_a_run_is_refused_where_the_quota_leaves_too_little_room(tmp_path, quota_left_mb):
    quota_left_mb[0] = MIN_FREE_TO_START_MB - 1
    with pytest.raises(InputError) as err:
        storage_space.check_free_space(str(tmp_path))
    assert err.value.where == "--storage"
    assert err.value.problem.startswith(f"no room for 64 MB on {tmp_path}: your quota there is used up ({QUOTA}); "
                                        "a sweep needs at least 64 MB (free some space (or ask for more quota")
    assert not list(tmp_path.iterdir())  # the probe is gone
    quota_left_mb[0] = MIN_FREE_TO_START_MB + 1
    storage_space.check_free_space(str(tmp_path))


def test_the_guard_stops_a_sweep_as_its_quota_runs_out_and_the_stop_says_why(tmp_path, quota_left_mb, capsys):
    from tune_jobs.storage_guard import StorageGuard

    received = []
    before = signal.signal(signal.SIGUSR1, lambda *_: received.append("SIGUSR1"))  # Tune's graceful stop
    try:
        guard = StorageGuard(str(tmp_path))
        quota_left_mb[0] = MIN_FREE_TO_CONTINUE_MB + 1
        guard.on_step_end(1, [])
        assert not guard.tripped and not received
        quota_left_mb[0] = MIN_FREE_TO_CONTINUE_MB - 1
        guard._last_check = guard._last_probe = 0.0  # the next check and probe are due
        guard.on_step_end(2, [])
    finally:
        signal.signal(signal.SIGUSR1, before)
    assert guard.tripped and received == ["SIGUSR1"]
    assert capsys.readouterr().out == (f"storage nearly full (no room for 32 MB on {tmp_path}: your quota there is "
                                       f"used up ({QUOTA})): stopping the sweep safely\n")
    with pytest.raises(InputError) as err:  # what `run` then says, exit 2
        storage_space.check_stopped_for_space(str(tmp_path), "instrument-sweep resume c")
    assert err.value.problem.endswith("your quota there is used up (Disk quota exceeded): the sweep stopped safely "
                                      "with all results so far saved; free some space (or ask for more quota: "
                                      "`quota -s`; on Lustre `lfs quota -h DIR`), then `instrument-sweep resume c`")


def test_a_write_refused_by_the_quota_ends_the_sweep_with_one_line(tmp_path):
    """Between the guard's probes a write can still hit the quota; Tune wraps what its callbacks raise."""
    from ray.tune import TuneError

    from tune_jobs.cli_sweep import raise_if_no_room

    try:
        try:
            raise OSError(errno.EDQUOT, QUOTA, str(tmp_path / "c" / "trial-1" / "result.json"))
        except OSError as exc:
            raise TuneError("The Ray Tune run failed.") from exc
    except TuneError as wrapped:
        with pytest.raises(InputError) as err:
            raise_if_no_room(wrapped, str(tmp_path), "c", None)
    assert err.value.where == "--storage" and err.value.problem.startswith(
        f"a write was refused: your quota there is used up ({QUOTA}: {tmp_path}/c/trial-1/result.json); the sweep "
        "stopped, and what it saved before is kept: free some space")
    assert err.value.problem.endswith(f"then `instrument-sweep resume c --storage {tmp_path}`")
    raise_if_no_room(RuntimeError("not for want of room"), str(tmp_path), "c", None)  # others pass
