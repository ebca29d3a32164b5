"""`instrument-sweep slurm` without a Slurm: the allocation's checks, the job script it writes, how Slurm's
answers are read, and how `status` reads a job's output. tests/test_slurm.py runs all of it on a real Slurm."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from analysis import storage
from trainables.errors import InputError
from tune_jobs import experiment_lock
from tune_jobs.cli import main
from tune_jobs.slurm import client, follow, in_job, steps
from tune_jobs.slurm.job import Allocation, JobFiles, check_ray_temp_root, job_script, parse_gpus, sweep_command
from tune_jobs.slurm.submit import refusal

# `scontrol -o show job` of a running job, as Slurm 22.05 prints it (abridged)
SCONTROL_LINE = ("JobId=14 JobName=t1 UserId=root(0) GroupId=root(0) JobState=RUNNING Reason=None Dependency=(null) "
                 "ExitCode=0:0 RunTime=00:00:42 TimeLimit=00:10:00 Partition=debug AllocNode:Sid=localhost:3165 "
                 "NodeList=node[1-2] BatchHost=node1 NumNodes=2 TRES=cpu=2,node=2,billing=2,gres/gpu=2 "
                 "CPUs/Task=1 Command=/shared/sweeps/t1/slurm/run.sh WorkDir=/shared/sweeps/t1/slurm "
                 "StdOut=/shared/sweeps/t1/slurm/14.out Power=")


def script(nodes: int = 2, gpus: int = 2, resume: bool = False, **allocation) -> str:
    files = JobFiles("/shared/sweeps/seed-1")
    return job_script(Allocation(nodes=nodes, gpus_per_node=gpus, cpus_per_task=2, time="01:00:00", **allocation),
                      files, resume, "/tmp", bin_dir="/home/you/venv/bin")


def test_the_job_passes_run_and_resume_flags_on():
    files = JobFiles("/shared/sweeps/seed-1")
    flags = ("--no-analyze", "--without-ray-fixes")
    for resume in (False, True):
        assert sweep_command(files, resume=resume, flags=flags)[-2:] == list(flags)
        assert sweep_command(files, resume=resume)[-2:] == ["--storage", "/shared/sweeps"]


@pytest.mark.parametrize("flag, fields", [
    ("--nodes", {"nodes": 0}), ("--gpus-per-node", {"gpus_per_node": -1}), ("--cpus-per-task", {"cpus_per_task": 1.5}),
    ("--gpus-per-node", {"gpus_per_node": 2, "gpu_type": "a 100"}), ("--gpus-per-node", {"gpu_type": "a100"}),
    ("--mem", {"mem": "64GB"}), ("--time", {"time": "two hours"}),
    ("--partition", {"partition": "gpu\n#SBATCH --x"}), ("--account", {"account": "a b"}),
    ("--join-timeout-s", {"join_timeout_s": 0}), ("--setup", {"setup": ("module load a\nrm -rf x",)}),
    ("--setup", {"setup": (" ",)}), ("--sbatch-arg", {"sbatch_args": ("qos=high",)}),
])
def test_allocation_refuses_bad_flags_naming_them(flag, fields):
    with pytest.raises(InputError) as err:
        Allocation(**fields)
    assert err.value.where == flag


def test_job_script_is_bash_and_starts_ray_before_the_sweep(tmp_path):
    text = script()
    path = tmp_path / "run.sh"
    path.write_text(text)
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    lines = text.splitlines()

    def first(fragment: str) -> int:
        return next(i for i, line in enumerate(lines) if fragment in line)

    assert lines[0] == "#!/bin/bash" and "#SBATCH --gpus-per-node=2" in lines and "#SBATCH --signal=B:INT@60" in lines
    # the token before any Ray process; the head, its address, then the workers, the wait, then the sweep as the
    # job's process (run, or resume where the job was requeued)
    assert first("in_job token") < first("ray-start --head") < first("in_job head-address") < first("--relative=1") \
        < first("in_job wait") < first("exec instrument-sweep resume seed-1") \
        < first("exec instrument-sweep run spec.yaml --name seed-1") == len(lines) - 1
    assert "export INSTRUMENT_SWEEP_RESUME='instrument-sweep slurm --resume seed-1 --storage /shared/sweeps'" in lines
    # the sweep is given the Ray steps' srun pids, to end them as it exits (`steps.end_steps_at_exit`)
    assert first("steps=$!") < first('export INSTRUMENT_SWEEP_RAY_STEPS="$steps"') < first("exec instrument-sweep")
    # What Ray gets on each node is read there at job time (in_job ray-start), not written here
    assert "--num-cpus" not in text and "--num-gpus" not in text and "--wait" not in text


def test_the_sweep_ends_its_jobs_ray_steps_as_it_exits_and_waits_for_them(tmp_path, monkeypatch):
    """As a job's script ends, Slurm kills its steps at once (SIGKILL): the sweep, which the script execs,
    ends them first (SIGUSR1 to each step's srun, its child, which passes it on) and waits while they clean up. A process that is
    not its child is left alone; the variable is taken out of the environment, so nothing the sweep starts
    acts on it too."""
    import atexit

    marker = tmp_path / "cleaned"
    step = subprocess.Popen([sys.executable, "-c", "import signal, sys, time, pathlib\n"
                             "def end(*_):\n    time.sleep(0.5)\n"  # a step's clean-up takes a moment
                             f"    pathlib.Path({str(marker)!r}).write_text('removed')\n    sys.exit(0)\n"
                             "signal.signal(signal.SIGUSR1, end)\nprint('ready', flush=True)\ntime.sleep(600)\n"],
                            stdout=subprocess.PIPE, text=True)
    stranger = subprocess.run(["sh", "-c", "sleep 600 >/dev/null 2>&1 & echo $!"], capture_output=True, text=True)
    other = int(stranger.stdout)
    try:
        assert step.stdout.readline() == "ready\n"
        registered = []
        monkeypatch.setattr(atexit, "register", lambda fn, *args: registered.append((fn, args)))
        monkeypatch.setenv(steps.RAY_STEPS_ENV, f"{step.pid} {other}")
        steps.end_steps_at_exit()
        assert steps.RAY_STEPS_ENV not in os.environ and registered == [(steps.end_steps, ([step.pid, other],))]
        steps.end_steps([step.pid, other], within_s=120)
        assert marker.read_text() == "removed"  # it waited for the step's clean-up
        assert not Path(f"/proc/{step.pid}").exists()  # and reaped it
        assert Path(f"/proc/{other}").exists()
    finally:
        step.kill()
        os.kill(other, signal.SIGKILL)


def test_one_node_cpu_job_starts_only_a_head_with_no_gpus():
    text = script(nodes=1, gpus=0, resume=True)
    assert "--relative" not in text and "--gpus-per-node" not in text and "ray-start --head" in text
    assert "--nodes=1 --timeout-s=120 --steps $steps" in text
    assert text.rstrip().endswith('exec instrument-sweep resume seed-1 --storage /shared/sweeps --address "$head"')


def test_ray_temp_dir_stays_short_enough_for_unix_sockets():
    assert check_ray_temp_root("/tmp") == "/tmp"
    assert check_ray_temp_root("/local/scratch/slurm/job-tmp/very/deep") == "/tmp"


def test_an_account_slurm_refuses_is_named():
    # Slurm's words (ESLURM_INVALID_ACCOUNT); the test Slurm keeps no accounts, so it never refuses one itself
    problem = client.message(subprocess.CompletedProcess([], 1, "", "sbatch: error: Batch job submission failed: "
                                                                      "Invalid account or account/partition "
                                                                      "combination specified\n"))
    err = refusal(problem, Allocation(account="nolab"))
    assert err.where == "--account" and err.problem.startswith("nolab: Invalid account")


def test_scontrol_fields_keep_values_with_spaces_and_equals():
    fields = client.parse_fields(SCONTROL_LINE)
    assert fields["JobState"] == "RUNNING" and fields["NodeList"] == "node[1-2]"
    assert fields["TRES"] == "cpu=2,node=2,billing=2,gres/gpu=2" and fields["AllocNode:Sid"] == "localhost:3165"
    assert fields["StdOut"] == "/shared/sweeps/t1/slurm/14.out" and fields["Power"] == ""
    assert follow.is_job_id("14") and follow.is_job_id("14_3") and not follow.is_job_id("raysubmit_ab12")


def test_status_of_an_unfinished_job_says_how_far_and_how_to_resume(tmp_path):
    experiment = tmp_path / "seed-1"
    (experiment / "slurm").mkdir(parents=True)
    (experiment / storage.SPEC_FILE).write_text("name: seed\n")
    output = experiment / "slurm" / "14.out"
    output.write_text("ray: 2 node(s) up after 6.0 s: node1, node2\n[1/9 done] start  #2 lr=0.01\n"
                      "[2/9 done] done   #1 lr=0.1\ninterrupted with 7 trial(s) unfinished\n"
                      "srun: error: node1: task 0: Terminated\n")
    running = follow.SlurmJob("14", "RUNNING", client.parse_fields(SCONTROL_LINE), "0:0", output)
    text = follow.status_text(running).splitlines()
    assert text[:3] == ["RUNNING", "job:      Slurm job 14 on node[1-2] for 00:00:42 of 00:10:00",
                        "progress: [2/9 done] done   #1 lr=0.1"]
    assert not any(line.startswith("resume:") for line in text)
    timeout = follow.status_text(follow.SlurmJob("14", "TIMEOUT", {}, "0:0", output)).splitlines()
    assert "last:     interrupted with 7 trial(s) unfinished" in timeout  # not Slurm's own line after it
    assert f"resume:   instrument-sweep slurm --resume seed-1 --storage {tmp_path}" in timeout


def test_status_of_a_job_that_ended_without_its_output_asks_whether_the_storage_is_shared(tmp_path):
    """A --storage on the login node's own disk passes every check there; on the compute node the job fails
    before it can write its output."""
    output = tmp_path / "sweeps" / "seed-1" / "slurm" / "15.out"
    failed = follow.status_text(follow.SlurmJob("15", "FAILED", {"StdOut": str(output)}, "1:0", output))
    assert failed.splitlines() == ["FAILED", "job:      Slurm job 15 ended with exit code 1",
                                   f"output:   no output file ({output}): is --storage shared with the compute "
                                   "nodes? The job's first node writes it there, into the experiment's slurm/ folder"]
    forgotten = follow.status_text(follow.SlurmJob("15", "FAILED", {}, "1:0", None))  # known to accounting only
    assert "output:   no output file: is --storage shared with the compute nodes?" in forgotten
    running = follow.status_text(follow.SlurmJob("15", "RUNNING", client.parse_fields(SCONTROL_LINE), "0:0", output))
    assert "output:   " + str(output) in running.splitlines()  # not written yet, maybe: not a question yet


def test_sbatch_args_come_last_among_the_sbatch_lines():
    files = JobFiles("/shared/sweeps/seed-1")
    text = job_script(Allocation(time="01:00:00", sbatch_args=("--qos=high", "--mem=64G")), files, False, "/tmp",
                      bin_dir="/bin")
    options = [line for line in text.splitlines() if line.startswith("#SBATCH")]
    assert options[-2:] == ["#SBATCH --qos=high", "#SBATCH --mem=64G"] and "#SBATCH --time=01:00:00" in options


# Slurm's `scontrol` as the login node runs it (the one Slurm command `status` and `logs` need): it knows
# job 14 while the file STATES holds states for it, one per call (RUNNING, then COMPLETED), and appends
# the next line of LINES to the job's output at each call, as the running sweep would; once STATES is
# used up it has forgotten the job, as Slurm does MinJobAge after it ended.
SCONTROL = """#!/bin/sh
PATH=/usr/bin:/bin
state=$(head -n 1 "$FAKE_SLURM/STATES"); sed -i 1d "$FAKE_SLURM/STATES"
head -n 1 "$FAKE_SLURM/LINES" >> "$FAKE_SLURM/out"; sed -i 1d "$FAKE_SLURM/LINES"
[ -n "$state" ] || { echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1; }
echo "JobId=14 JobName=seed-1 JobState=$state Reason=None ExitCode=0:0 RunTime=00:00:09 TimeLimit=00:10:00 \
NodeList=node[1-2] StdOut=$FAKE_SLURM/out"
"""


def fake_scontrol(tmp_path, monkeypatch, states: list[str], lines: list[str]):
    """PATH holding only the fake scontrol above (no sacct: a cluster without accounting)."""
    folder = tmp_path / "fake-slurm"
    (folder / "bin").mkdir(parents=True)
    (folder / "bin" / "scontrol").write_text(SCONTROL)
    (folder / "bin" / "scontrol").chmod(0o755)
    (folder / "STATES").write_text("".join(f"{state}\n" for state in states))
    (folder / "LINES").write_text("".join(f"{line}\n" for line in lines))
    monkeypatch.setenv("FAKE_SLURM", str(folder))
    monkeypatch.setenv("PATH", str(folder / "bin"))  # Slurm's own commands, where this machine has them: not here
    return folder


def test_logs_follow_prints_a_running_jobs_output_as_it_grows_until_the_job_ends(tmp_path, monkeypatch, capsys):
    lines = ["ray: 2 node(s) up after 6.0 s: node1, node2", "[1/2 done] done   #1 lr=0.1", "[2/2 done] done   #2"]
    fake_scontrol(tmp_path, monkeypatch, ["RUNNING", "RUNNING", "COMPLETED"], lines)
    monkeypatch.setattr(follow, "FOLLOW_POLL_S", 0.01)
    assert main(["logs", "14", "--follow"]) == 0
    assert capsys.readouterr().out == "".join(f"{line}\n" for line in lines)  # the last, written as it ended, too


def test_status_and_logs_find_the_output_under_the_storage_once_slurm_forgot_the_job(tmp_path, monkeypatch,
                                                                                      capsys):
    fake_scontrol(tmp_path, monkeypatch, [], [])
    root = tmp_path / "sweeps"
    (root / "seed-1" / "slurm").mkdir(parents=True)
    (root / "seed-1" / storage.SPEC_FILE).write_text("name: seed\n")
    (root / "seed-1" / "slurm" / "14.out").write_text("[1/9 done] done   #1 lr=0.1\ninterrupted with 8 trial(s) "
                                                      "unfinished\n")
    assert main(["status", "14", "--storage", str(root)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "ENDED", "job:      Slurm job 14 ended", "progress: [1/9 done] done   #1 lr=0.1",
        "last:     interrupted with 8 trial(s) unfinished", f"output:   {root}/seed-1/slurm/14.out",
        f"resume:   if unfinished: instrument-sweep slurm --resume seed-1 --storage {root}"]
    assert main(["logs", "14", "--storage", str(root)]) == 0
    assert capsys.readouterr().out.startswith("[1/9 done]")
    assert main(["status", "15", "--storage", str(root)]) == 2
    assert capsys.readouterr().err.startswith("error: JOB_ID: 15: Slurm does not know this job")


def test_a_folder_prepared_for_a_job_is_no_experiment_yet(tmp_path):
    experiment = tmp_path / "seed-1"
    (experiment / storage.JOB_DIR).mkdir(parents=True)
    assert not storage.started(str(experiment))
    with experiment_lock.hold(str(experiment), "run", create=True):  # the job's `run` takes it over
        with pytest.raises(InputError) as err:  # and holds it: another `run` of the name is refused
            experiment_lock.acquire(str(experiment), "run", create=True)
        assert err.value.where == "experiment"
        (experiment / storage.SPEC_FILE).write_text("name: seed\n")
    assert storage.started(str(experiment))  # it wrote its spec: an experiment now
    with pytest.raises(InputError) as err:
        experiment_lock.acquire(str(experiment), "run", create=True)
    assert err.value.where == "--name"


def test_a_job_that_died_holding_the_lock_before_writing_anything_can_be_submitted_again(tmp_path,
                                                                                         blob_dataset_dir):
    """Only its lock file is left beside the job's folder: `slurm --resume` says to submit it again, and
    that is not refused as "already exists"."""
    from tune_jobs.cli_sweep import check_new_sweep
    from tune_jobs.spec import load_spec

    experiment = tmp_path / "seed-1"
    (experiment / storage.JOB_DIR).mkdir(parents=True)
    (experiment / storage.JOB_DIR / "spec.yaml").write_text("name: smoke\n")
    experiment_lock.acquire(str(experiment), "run", create=True).release()  # as the kernel releases a killed one's
    assert (experiment / storage.LOCK_FILE).exists() and not storage.started(str(experiment))
    spec = load_spec("smoke", [f"data={blob_dataset_dir}"])
    assert check_new_sweep(spec, str(tmp_path), "seed-1")[3:] == ("seed-1", str(experiment))


def test_slurm_checks_the_spec_as_run_does(capsys):
    assert main(["run", "smoke", "--set", "stop.patience=0", "--dry-run"]) == 2
    run_error = capsys.readouterr().err
    assert main(["slurm", "smoke", "--set", "stop.patience=0"]) == 2
    assert capsys.readouterr().err == run_error and run_error.startswith("error: stop.patience: ")
    assert main(["slurm", "smoke", "--resume", "seed-1"]) == 2
    assert capsys.readouterr().err.startswith("error: --resume: continues an experiment with its own spec")


@pytest.mark.parametrize("flag", [["--data", "synthetic"], ["--set", "repeats=2"], ["--log", "mlflow"],
                                  ["--race", "time"], ["--eta", "0"], ["--preset", "smoke"]])
def test_resume_refuses_what_only_a_new_sweep_takes(capsys, flag):
    assert main(["slurm", "--resume", "seed-1", *flag]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --resume: continues an experiment with its own spec, data and name; give no "
                          f"{flag[0]} with it") and len(err.splitlines()) == 1


def test_slurm_checks_the_ray_fixes_before_anything_is_submitted(monkeypatch, capsys, tmp_path):
    """The job runs this install's Ray: a Ray that no longer fits the fixes stops `slurm` at once (exit 2,
    nothing written), not the job after it waited in the queue; --without-ray-fixes goes on (to sbatch)."""
    from ray.tune.logger.logger import LoggerCallback

    from tune_jobs.ray_private import PATCHES

    assert PATCHES["driver_logs_kept"].targets[0].path.endswith("LoggerCallback._restore_from_remote")
    monkeypatch.delattr(LoggerCallback, "_restore_from_remote")  # as a newer Ray could have it
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))  # no sbatch: a job that got that far would say so
    storage = tmp_path / "sweeps"
    for args in (["smoke", "--name", "s"], ["--resume", "s"]):
        assert main(["slurm", *args, "--storage", str(storage)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("error: ray: Ray ") and "(driver_logs_kept: " in err[-1]
        assert not storage.exists()
    assert main(["slurm", "smoke", "--name", "s", "--storage", str(storage), "--without-ray-fixes"]) == 2
    assert capsys.readouterr().err.startswith("error: sbatch: not found on PATH")


@pytest.mark.parametrize("name", ["my sweep$(touch PWNED)", "-x", "..", "a;b", "é"])
def test_a_name_the_job_script_cannot_hold_as_it_is_is_refused(capsys, monkeypatch, tmp_path, name):
    monkeypatch.chdir(tmp_path)
    assert main(["slurm", "smoke", f"--name={name}", "--storage", str(tmp_path / "sweeps"), "--dry-run"]) == 2
    err = capsys.readouterr().err.splitlines()  # after the spec (a dry run prints it to stderr)
    assert err[-1] == f"error: --name: {name!r}: a Slurm job's name must be letters, digits, '.', '_' and '-', " \
                      "starting with a letter or digit"
    assert not list(tmp_path.iterdir())


def test_the_resume_command_in_the_script_is_quoted(tmp_path):
    """Whatever the experiment's folder is called, the script's export runs nothing and holds the command."""
    files = JobFiles(str(tmp_path / "it's $(touch PWNED)"))
    text = job_script(Allocation(), files, True, "/tmp", bin_dir="/bin")
    (export,) = [line for line in text.splitlines() if line.startswith("export INSTRUMENT_SWEEP_RESUME=")]
    shown = subprocess.run(["bash", "-c", f'{export}; printf %s "$INSTRUMENT_SWEEP_RESUME"'], cwd=tmp_path,
                           capture_output=True, text=True).stdout
    assert shown == files.resume_command and not (tmp_path / "PWNED").exists()
    import shlex

    assert shlex.split(files.resume_command)[3] == "it's $(touch PWNED)"


def test_the_jobs_token_is_private_before_ray_reads_it(tmp_path, monkeypatch):
    token = tmp_path / "ray-token-14"
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    in_job.make_token(token)
    assert token.stat().st_mode & 0o777 == 0o600 and len(token.read_text()) == 64
    token.chmod(0o644)  # made readable meanwhile: private again, same token
    before = token.read_text()
    in_job.make_token(token)
    assert token.stat().st_mode & 0o777 == 0o600 and token.read_text() == before


# A `ray start --block` as far as its step is concerned: files in its temp dir, until a signal ends it.
RAY_NODE = """
import pathlib, sys, time
logs = pathlib.Path(sys.argv[1], "session_1", "logs")
logs.mkdir(parents=True)
(logs / "raylet.out").write_text("up")
print("up", flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("to, signum", [("the step's task", signal.SIGTERM), ("every process of the step", signal.SIGTERM),
                                        ("every process of the step", signal.SIGUSR1)])
def test_a_ray_node_step_passes_on_the_signal_that_ends_it_then_removes_rays_temp_dir(tmp_path, to, signum):
    """Slurm signals the task (srun passing on a signal) or every process of the step (the job ended; SIGUSR1:
    the job's sweep ending it through srun): either way `ray start` ends, and its temp dir on the node's disk
    goes with it (and on the head, the job's token); the step's exit code is its."""
    temp_dir, token = tmp_path / "ray-14", tmp_path / "ray-token-14"
    token.write_text("secret")
    step = ray_node_step(RAY_NODE, temp_dir, token)
    try:
        assert step.stdout.readline() == "up\n" and (temp_dir / "session_1" / "logs" / "raylet.out").is_file()
        if to == "the step's task":
            step.send_signal(signum)
        else:
            os.killpg(step.pid, signum)
        out, _ = step.communicate(timeout=30)
    finally:
        step.kill()
    assert step.returncode == 128 + signum and out == f"ray: removed {temp_dir}\n"
    assert not temp_dir.exists() and not token.exists()


def ray_node_step(node: str, temp_dir: Path, token: Path) -> subprocess.Popen:
    """`in_job`'s wrapper around the fake Ray node `node` (code), as a job step: its own session."""
    import sys
    import textwrap

    wrapper = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from tune_jobs.slurm.in_job import run_then_remove
        sys.exit(run_then_remove([sys.executable, "-c", {node!r}, {str(temp_dir)!r}], Path({str(temp_dir)!r}),
                                 Path({str(token)!r})))
    """)
    return subprocess.Popen([sys.executable, "-c", wrapper], stdout=subprocess.PIPE, text=True, start_new_session=True)


# A `ray start` slow to stop: it says so when told to, then takes its time (Slurm kills the step meanwhile).
SLOW_RAY_NODE = """
import pathlib, signal, sys, time
pathlib.Path(sys.argv[1]).mkdir()
signal.signal(signal.SIGTERM, lambda *_: print("stopping", flush=True))
print("up", flush=True)
time.sleep(120)
"""


def test_the_jobs_token_goes_as_soon_as_the_head_step_is_told_to_end(tmp_path):
    """Slurm kills a step KillWait after it signalled it (and at once where `srun` itself was signalled, as
    preemption does): the token must not wait for Ray to have stopped."""
    import signal

    temp_dir, token = tmp_path / "ray-14", tmp_path / "ray-token-14"
    token.write_text("secret")
    step = ray_node_step(SLOW_RAY_NODE, temp_dir, token)
    try:
        assert step.stdout.readline() == "up\n"
        step.send_signal(signal.SIGTERM)  # to the step's task, which passes it on
        assert step.stdout.readline() == "stopping\n"  # passed on, so the token was removed before
        assert not token.exists() and step.poll() is None
    finally:
        os.killpg(step.pid, signal.SIGKILL)
        step.wait()


def test_a_nodes_slurm_address_is_used_as_an_ip_address():
    assert in_job.ip_address("localhost") == "127.0.0.1" and in_job.ip_address("10.88.0.12") == "10.88.0.12"
    with pytest.raises(InputError) as err:
        in_job.ip_address("no-such-node.invalid")
    assert err.value.where == "node" and "cannot resolve its Slurm address" in err.value.problem


def test_where_slurm_is_required_a_machine_without_it_fails_the_slurm_tests_instead_of_skipping(monkeypatch):
    from slurm_cluster import REQUIRE_ENV, unavailable

    monkeypatch.delenv(REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="no apt-get"):
        unavailable("no apt-get")
    monkeypatch.setenv(REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match=f"{REQUIRE_ENV}=1, but no Slurm here: no apt-get"):
        unavailable("no apt-get")


def test_waiting_for_ray_ends_at_once_when_a_ray_start_step_has_ended(tmp_path):
    import time

    ended = subprocess.Popen(["true"])
    ended.wait()
    running = subprocess.Popen(["sleep", "600"])
    try:
        assert in_job.step_ended(ended.pid) and not in_job.step_ended(running.pid)
        start = time.monotonic()
        with pytest.raises(RuntimeError, match="a `ray start` step ended while waiting for the Ray head's address"):
            in_job.head_address(tmp_path, 600, steps=[running.pid, ended.pid])
        assert time.monotonic() - start < 300  # at once, not at the timeout (on a loaded machine: any time before)
    finally:
        running.kill()
        running.wait()


# What a job step sees on a node where Slurm granted the job 8 CPUs (bound: its affinity is those 8), two
# typed GPUs (global ids 2 and 3, CUDA's 0 and 1 under ConstrainDevices) and 64000 MB.
STEP_ENV = {"SLURM_CPUS_ON_NODE": "8", "SLURM_JOB_GPUS": "2,3", "SLURM_STEP_GPUS": "2,3", "SLURM_GPUS_ON_NODE": "2",
            "CUDA_VISIBLE_DEVICES": "0,1", "SLURM_MEM_PER_NODE": "64000"}


def test_ray_is_told_what_slurm_granted_on_its_node_read_there_and_then():
    """Not what the script was written with: the CPUs (bound or not), the GPUs however they were asked for
    (--gpus-per-node TYPE:N or --gres), the memory; one CPU of the head's node left to the sweep's driver."""
    bound = set(range(8, 16))
    share = in_job.granted(STEP_ENV, bound)
    assert share.cpus == 8 and share.cpu_ids == tuple(range(8, 16)) and share.gpu_ids == ("0", "1")
    assert share.ray_args(head=False) == ["--num-cpus=8", "--num-gpus=2", f"--memory={(64000 - 19200) * 2**20}",
                                          f"--object-store-memory={19200 * 2**20}"]
    assert share.ray_args(head=True)[:2] == ["--num-cpus=7", "--num-gpus=2"]
    assert share.describe(head=True) == ("7 of 8 CPU(s) granted (CPUs 8-15; one kept for the sweep's driver), "
                                         "GPU(s) 0,1, 64000 MB")
    # one CPU: nothing to keep; memory per CPU instead of per node; no GPU from Slurm: a CUDA_VISIBLE_DEVICES
    # from the submitting shell gives Ray none
    one = {"SLURM_CPUS_ON_NODE": "1", "SLURM_MEM_PER_CPU": "3000", "CUDA_VISIBLE_DEVICES": "0,1,2,3"}
    share = in_job.granted(one, {5})
    assert share.ray_args(head=True)[:2] == ["--num-cpus=1", "--num-gpus=0"] and share.memory_mb == 3000
    assert "none left for the sweep's driver" in share.describe(head=True)
    # a step bound to fewer CPUs than Slurm counts for the node gets what it may run on; no memory limit: Ray's own
    share = in_job.granted({"SLURM_CPUS_ON_NODE": "4"}, {0, 1})
    assert share.ray_args(head=False) == ["--num-cpus=2", "--num-gpus=0"]
    with pytest.raises(InputError, match="SLURM_CPUS_ON_NODE is not set: run this in a Slurm job step"):
        in_job.granted({}, {0})


def test_typed_gpus_are_asked_for_as_the_site_names_them():
    assert parse_gpus("4") == (4, None) and parse_gpus("a100:4") == (4, "a100") and parse_gpus("h100-80gb:1") == \
        (1, "h100-80gb")
    for bad in ("a100", "a100:", "four", ""):
        with pytest.raises(InputError) as err:
            parse_gpus(bad)
        assert err.value.where == "--gpus-per-node"
    text = script(gpu_type="a100", mem="64G")
    assert "#SBATCH --gpus-per-node=a100:2" in text and "#SBATCH --mem=64G" in text
    assert Allocation(gpus_per_node=2, gpu_type="a100").describe().startswith("1 node(s) x (1 CPU(s), a100:2 GPU(s))")


def test_the_scripts_steps_get_its_environment_and_not_the_submitting_shells_ray_settings():
    lines = script().splitlines()
    steps = [line for line in lines if line.startswith("srun ")]
    assert len(steps) == 2 and all("--export=ALL" in line for line in steps)  # under SBATCH_EXPORT=NONE too
    unset = lines.index("unset RAY_AUTH_TOKEN RAY_ADDRESS")
    assert unset < next(i for i, line in enumerate(lines) if "in_job token" in line)


# The commands a job script calls, as they would behave on a node: each records its call; `head-address`
# prints the head's address. The script's PATH line puts this folder first, as it does the install's bin.
FAKE_NODE = {
    "python": '#!/bin/sh\necho "python $*" >> "$CALLS"\n[ "$3" = head-address ] && echo 10.0.0.5:41233\nexit 0\n',
    "srun": '#!/bin/sh\necho "srun $*" >> "$CALLS"\n',
    "instrument-sweep": '#!/bin/sh\necho "instrument-sweep $*" >> "$CALLS"\n',
}


def run_job_script(text: str, folder: Path, job_id: str, bin_dir: Path) -> tuple[subprocess.CompletedProcess, list]:
    """`text` run as Slurm runs a batch script: in the job folder, with the job's id; (outcome, calls). Each
    run records into its own file: a step left in the background may record after the script ended."""
    import uuid

    calls = folder.parent / f"calls-{uuid.uuid4().hex}"
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "SLURM_JOB_ID": job_id, "SLURMD_NODENAME": "node1",
           "CALLS": str(calls)}
    (folder / "run.sh").write_text(text)
    done = subprocess.run(["bash", str(folder / "run.sh")], cwd=folder, env=env, capture_output=True, text=True)
    return done, calls.read_text().splitlines() if calls.exists() else []


def fake_node(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in FAKE_NODE.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return bin_dir


def test_a_requeued_job_continues_the_sweep_it_started_and_appends_to_its_output(tmp_path):
    """Slurm requeues a job (node failure, preemption, scontrol requeue) by running its script again as the
    same job: it must continue its sweep, where `run` would refuse the experiment as existing."""
    bin_dir, folder = fake_node(tmp_path), tmp_path / "sweeps" / "seed-1" / "slurm"
    folder.mkdir(parents=True)
    files = JobFiles(str(folder.parent))
    text = job_script(Allocation(nodes=2), files, False, "/tmp", bin_dir=str(bin_dir))
    assert "#SBATCH --requeue" in text and "#SBATCH --open-mode=append" in text
    assert "#SBATCH --no-requeue" in job_script(Allocation(requeue=False), files, False, "/tmp", bin_dir="/bin")

    sweeps = []
    # job 14, requeued before its sweep wrote its spec, then after; then its script submitted again as job 15
    for job_id, spec_written in (("14", False), ("14", False), ("14", True), ("15", True)):
        if spec_written:
            (folder.parent / "sweep.yaml").write_text("name: seed\n")
        done, calls = run_job_script(text, folder, job_id, bin_dir)
        assert done.returncode == 0, done.stderr
        sweeps += [c for c in calls if c.startswith("instrument-sweep ")]
        assert calls[0] == f"python -m tune_jobs.slurm.in_job token {folder}/ray-token-{job_id}"
        steps = [c for c in calls if c.startswith("srun ")]  # in the background: in any order among the rest
        assert len(steps) == 2 and all(" --export=ALL " in c for c in steps)
        assert any("ray-start --address=10.0.0.5:41233 " in c for c in steps)  # where the head said it is
    root = str(folder.parent.parent)
    assert sweeps == [f"instrument-sweep run spec.yaml --name seed-1 --storage {root} --address 10.0.0.5:41233",
                      f"instrument-sweep run spec.yaml --name seed-1 --storage {root} --address 10.0.0.5:41233",
                      f"instrument-sweep resume seed-1 --storage {root} --address 10.0.0.5:41233",
                      f"instrument-sweep run spec.yaml --name seed-1 --storage {root} --address 10.0.0.5:41233"]
    assert files.started_by.read_text() == "15\n"


def test_site_setup_lines_run_first_and_one_that_fails_ends_the_job_saying_which(tmp_path):
    bin_dir, folder = fake_node(tmp_path), tmp_path / "seed-1" / "slurm"
    folder.mkdir(parents=True)
    setup = ("export SITE_MODULES=cuda/12.4:$UNSET_BY_SITE", 'echo "loaded $SITE_MODULES" >> "$CALLS"')
    text = job_script(Allocation(setup=setup), JobFiles(str(folder.parent)), False, "/tmp", bin_dir=str(bin_dir))
    lines = text.splitlines()
    assert lines.index("set -euo pipefail") > max(i for i, line in enumerate(lines) if "SITE_MODULES" in line)
    done, calls = run_job_script(text, folder, "14", bin_dir)
    assert done.returncode == 0 and calls[0] == "loaded cuda/12.4:" and "in_job token" in calls[1]  # before all

    failing = job_script(Allocation(setup=("module load no-such-module",)), JobFiles(str(folder.parent)), False,
                         "/tmp", bin_dir=str(bin_dir))
    done, calls = run_job_script(failing, folder, "15", bin_dir)
    assert done.returncode == 1 and calls == []  # nothing else ran
    assert done.stderr.splitlines()[-1] == "error: --setup: this line failed: module load no-such-module"


def test_a_job_that_fails_before_its_sweep_starts_leaves_no_token(tmp_path):
    bin_dir, folder = fake_node(tmp_path), tmp_path / "seed-1" / "slurm"
    folder.mkdir(parents=True)
    (bin_dir / "python").write_text('#!/bin/sh\n[ "$3" = token ] && touch "$4" && exit 0\n'
                                    'echo "error: ray: timed out" >&2; exit 1\n')  # the head never reports
    done, _ = run_job_script(script(), folder, "14", bin_dir)
    assert done.returncode == 1 and "error: ray: timed out" in done.stderr
    assert not (folder / "ray-token-14").exists()


def test_the_join_timeout_is_the_jobs_option():
    text = script(join_timeout_s=600)
    assert "head-address \"$ray_temp\" --timeout-s=600 --steps $steps" in text
    assert "--nodes=2 --timeout-s=600 --steps $steps" in text


def test_the_head_is_found_at_the_address_it_reports_not_at_one_left_from_before(tmp_path):
    """Ray binds the head's port itself (port 0): no port is picked, released and raced for by a second job on
    the node. A file from before (a requeued job on the node it crashed on) is not the head's address."""
    import socket
    import time

    listener = socket.create_server(("127.0.0.1", 0))
    address = f"127.0.0.1:{listener.getsockname()[1]}"
    try:
        stale = tmp_path / in_job.ADDRESS_FILE
        stale.write_text(address)  # even where something listens there now
        os.utime(stale, (time.time() - 600, time.time() - 600))
        with pytest.raises(RuntimeError, match="timed out after 1 s waiting for the Ray head's address"):
            in_job.head_address(tmp_path, 1)
        stale.write_text(f"{address}\n")  # as `ray start --head --port=0` writes it once up
        assert in_job.head_address(tmp_path, 60) == address
    finally:
        listener.close()
    assert {in_job.client_port("42"), in_job.client_port("43")} <= set(in_job.CLIENT_PORTS)
    assert in_job.client_port("42") != in_job.client_port("43")


SCONTROL_PRIVATE = """#!/bin/sh
echo "slurm_load_node error: Access/permission denied" >&2
exit 1
"""


def test_node_ip_resolves_the_node_name_where_slurm_hides_nodes(tmp_path, monkeypatch):
    """PrivateData=nodes: `scontrol show node` answers users as above (Slurm 22.05's words)."""
    (tmp_path / "scontrol").write_text(SCONTROL_PRIVATE)
    (tmp_path / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert in_job.node_ip("localhost") == "127.0.0.1"


# Slurm's commands as `slurm --dry-run` calls them on a login node: the config's TmpFS, no active job, and
# `sbatch --test-only`, which accepts the job.
DRY_RUN_SLURM = {
    "scontrol": '#!/bin/sh\n[ "$1 $2" = "show config" ] && echo "TmpFS                   = /local/tmp"\nexit 0\n',
    "squeue": "#!/bin/sh\nexit 0\n",
    "sbatch": '#!/bin/sh\ncat > /dev/null\necho "sbatch: Job 3 to start at 2026-12-07T10:00:00" >&2\n',
}


def test_typed_gpus_and_the_drivers_core_are_what_slurm_is_asked_for(tmp_path, monkeypatch, capsys,
                                                                      blob_dataset_dir):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in DRY_RUN_SLURM.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    args = ["slurm", "smoke", "--data", blob_dataset_dir, "--storage", str(tmp_path / "sweeps"), "--name", "s",
            "--dry-run"]
    assert main([*args, "--gpus-per-node", "a100:2", "--mem", "64G", "--no-requeue", "--join-timeout-s", "300",
                 "--setup", "module load cuda/12.4"]) == 0
    text = capsys.readouterr().out
    # one trial per GPU (the spec's cpus_per_trial: 1) and one core for the sweep's driver
    for line in ("#SBATCH --cpus-per-task=3", "#SBATCH --gpus-per-node=a100:2", "#SBATCH --mem=64G",
                 "#SBATCH --no-requeue"):
        assert line in text.splitlines()
    assert "module load cuda/12.4 || " in text and "--timeout-s=300" in text
    assert main([*args]) == 0 and "#SBATCH --cpus-per-task=2" in capsys.readouterr().out  # on CPUs: a trial, the driver
    # GPUs asked for through --gres count as --gpus-per-node's do: a trial's CPU for each, and the driver's
    assert main([*args, "--sbatch-arg=--gres=gpu:a100:4"]) == 0
    assert "#SBATCH --cpus-per-task=5" in capsys.readouterr().out
    assert main([*args, "--sbatch-arg=--gres=shard:2,gpu:3"]) == 0
    assert "#SBATCH --cpus-per-task=4" in capsys.readouterr().out
    gres = Allocation(cpus_per_task=4, sbatch_args=("--gres=gpu:3",))
    assert "x (4 CPU(s), 3 GPU(s) through --gres)" in gres.describe()
    # Sized by hand for the GPUs alone, as `--cpus-per-task` was before the driver's core: said, not refused
    assert main([*args, "--gpus-per-node", "4", "--cpus-per-task", "4"]) == 0
    assert "note: 4 CPU(s) per node leave the first node 3 for trials (one is the sweep's driver's), 1 each: 3 of " \
           "its 4 GPU(s) will run trials; --cpus-per-task 5 gives each GPU its trial" in capsys.readouterr().err
    assert main([*args, "--gpus-per-node", "4", "--cpus-per-task", "5"]) == 0
    assert "note:" not in capsys.readouterr().err
    assert main([*args, "--gpus-per-node", "a100"]) == 2
    assert capsys.readouterr().err.startswith("error: --gpus-per-node: must be a count N or TYPE:N (a100:4), got 'a100'")


def test_sigterm_stops_a_sweep_as_sigint_does():
    """Preemption and `scancel` send SIGTERM, to which Ray's driver would exit at once; within `fit()` it is
    Ctrl-C: Tune saves the experiment's state and returns. Outside, Ray's handler is back."""
    import signal

    from tune_jobs.launch import terminate_as_interrupt

    def ray_handler(*_):  # as ray.init installs one
        raise SystemExit(15)

    before = signal.signal(signal.SIGTERM, ray_handler)
    try:
        with terminate_as_interrupt():
            with pytest.raises(KeyboardInterrupt):  # Python's SIGINT; within fit(), Tune's own handler
                signal.raise_signal(signal.SIGTERM)
        assert signal.getsignal(signal.SIGTERM) is ray_handler
    finally:
        signal.signal(signal.SIGTERM, before)


STUCK_DRIVER = """
import signal, sys, threading, time
from tune_jobs.launch import terminate_as_interrupt

def save():
    print("saving in", threading.current_thread().name, flush=True)
    return True

try:
    with terminate_as_interrupt(save):
        if sys.argv[1] == "stuck":  # as inside a call to Ray that waits for its ending GCS: signals go elsewhere
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        print("ready", flush=True)
        time.sleep(20)
except KeyboardInterrupt:
    print("interrupted", flush=True)
"""


@pytest.mark.parametrize("main_thread", ["free", "stuck"])
def test_sigterm_saves_the_state_from_another_thread_where_the_main_thread_does_not_take_it_up(main_thread):
    """Slurm ends a job by signalling all its processes at once, Ray's too; a driver whose main thread is
    then inside a call to Ray that waits for the GCS (a retry of a trial whose node went) runs no Python
    handler until it gives up on the GCS and exits. The line comes at once either way; where the main
    thread does not take the signal up within STUCK_S, the state is saved from another thread."""
    from tune_jobs.launch import STUCK_S, TERMINATED

    child = subprocess.Popen([sys.executable, "-c", STUCK_DRIVER, main_thread], stdout=subprocess.PIPE, text=True,
                             cwd=Path(__file__).resolve().parents[1])
    try:
        assert child.stdout.readline() == "ready\n"
        child.send_signal(signal.SIGTERM)
        lines = [child.stdout.readline() for _ in range(4 if main_thread == "stuck" else 2)]
    finally:
        child.kill()
        child.wait()
    if main_thread == "free":  # Python's handler: SIGINT, which Tune's fit() takes as a stop that saves the state
        assert sorted(lines) == sorted([TERMINATED + "\n", "interrupted\n"])
    else:
        assert lines[0] == TERMINATED + "\n"
        assert lines[1:] == [f"the driver's main thread is inside a call to Ray (not back after {STUCK_S:g} s): "
                             "saving the sweep's state from another thread\n", "saving in sigterm-watch\n",
                             "saved the sweep's state (where Tune's upload of it failed, Tune's error is above)\n"]
