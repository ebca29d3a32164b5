"""`instrument-sweep slurm` without a Slurm: the allocation's checks, the job script it writes, how Slurm's
answers are read, and how `status` reads a job's output. tests/test_slurm.py runs all of it on a real Slurm."""

import os
import subprocess
from pathlib import Path

import pytest

from analysis import storage
from trainables.errors import InputError
from tune_jobs import experiment_lock
from tune_jobs.cli import main
from tune_jobs.slurm import client, follow, in_job
from tune_jobs.slurm.job import Allocation, JobFiles, check_ray_temp_root, job_script, sweep_command
from tune_jobs.slurm.submit import refusal

# `scontrol -o show job` of a running job, as Slurm 22.05 prints it (abridged)
SCONTROL_LINE = ("JobId=14 JobName=t1 UserId=root(0) GroupId=root(0) JobState=RUNNING Reason=None Dependency=(null) "
                 "ExitCode=0:0 RunTime=00:00:42 TimeLimit=00:10:00 Partition=debug AllocNode:Sid=localhost:3165 "
                 "NodeList=node[1-2] BatchHost=node1 NumNodes=2 TRES=cpu=2,node=2,billing=2,gres/gpu=2 "
                 "CPUs/Task=1 Command=/shared/sweeps/t1/slurm/run.sh WorkDir=/shared/sweeps/t1/slurm "
                 "StdOut=/shared/sweeps/t1/slurm/14.out Power=")


def script(nodes: int = 2, gpus: int = 2, resume: bool = False) -> str:
    files = JobFiles("/shared/sweeps/seed-1")
    command = sweep_command(files, "/shared/sweeps", "seed-1", resume=resume)
    return job_script(Allocation(nodes=nodes, gpus_per_node=gpus, cpus_per_task=2, time="01:00:00"), files, command,
                      "/tmp", "/home/you/venv/bin")


def test_the_job_passes_run_and_resume_flags_on():
    files = JobFiles("/shared/sweeps/seed-1")
    flags = ("--no-analyze", "--without-ray-fixes")
    for resume in (False, True):
        assert sweep_command(files, "/shared/sweeps", "seed-1", resume=resume, flags=flags)[-2:] == list(flags)


@pytest.mark.parametrize("flag, fields", [
    ("--nodes", {"nodes": 0}), ("--gpus-per-node", {"gpus_per_node": -1}), ("--cpus-per-task", {"cpus_per_task": 1.5}),
    ("--time", {"time": "two hours"}), ("--partition", {"partition": "gpu\n#SBATCH --x"}),
    ("--account", {"account": "a b"}), ("--sbatch-arg", {"sbatch_args": ("qos=high",)}),
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
    # the token before any Ray process; the head, then the workers, then the wait, then the sweep as the job's process
    assert first("in_job token") < first("ray-start --head") < first("--relative=1") < first("in_job wait") \
        < first("exec instrument-sweep run spec.yaml --name seed-1") == len(lines) - 1
    assert "export INSTRUMENT_SWEEP_RESUME='instrument-sweep slurm --resume seed-1 --storage /shared/sweeps'" in lines
    assert "--num-cpus=2 --num-gpus=2" in text and "--wait" not in text


def test_one_node_cpu_job_starts_only_a_head_with_no_gpus():
    text = script(nodes=1, gpus=0, resume=True)
    assert "--relative" not in text and "--gpus-per-node" not in text and "--num-gpus=0" in text
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
    text = job_script(Allocation(time="01:00:00", sbatch_args=("--qos=high", "--mem=64G")), files,
                      sweep_command(files, "/shared/sweeps", "seed-1", resume=False), "/tmp", "/bin")
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
    text = job_script(Allocation(), files, sweep_command(files, str(tmp_path), "x", resume=True), "/tmp", "/bin")
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


@pytest.mark.parametrize("to", ["the step's task", "every process of the step"])
def test_a_ray_node_step_passes_on_the_signal_that_ends_it_then_removes_rays_temp_dir(tmp_path, to):
    """Slurm signals the task (srun passing on a signal) or every process of the step (the job ended): either
    way `ray start` ends, and its temp dir on the node's disk goes with it; the step's exit code is its."""
    import signal
    import sys
    import textwrap

    temp_dir = tmp_path / "ray-14"
    wrapper = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from tune_jobs.slurm.in_job import run_then_remove
        sys.exit(run_then_remove([sys.executable, "-c", {RAY_NODE!r}, {str(temp_dir)!r}], Path({str(temp_dir)!r})))
    """)
    step = subprocess.Popen([sys.executable, "-c", wrapper], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert step.stdout.readline() == "up\n" and (temp_dir / "session_1" / "logs" / "raylet.out").is_file()
        if to == "the step's task":
            step.send_signal(signal.SIGTERM)
        else:
            os.killpg(step.pid, signal.SIGTERM)
        out, _ = step.communicate(timeout=30)
    finally:
        step.kill()
    assert step.returncode == 128 + signal.SIGTERM and out == f"ray: removed {temp_dir}\n"
    assert not temp_dir.exists()


def test_a_nodes_slurm_address_is_used_as_an_ip_address():
    assert in_job.ip_address("localhost") == "127.0.0.1" and in_job.ip_address("10.88.0.12") == "10.88.0.12"
    assert in_job.temp_dir_of(["--block", "--temp-dir=/tmp/ray-14", "--num-cpus=2"]) == Path("/tmp/ray-14")
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


def test_waiting_for_ray_ends_at_once_when_a_ray_start_step_has_ended():
    import time

    ended = subprocess.Popen(["true"])
    ended.wait()
    running = subprocess.Popen(["sleep", "30"])
    try:
        assert in_job.step_ended(ended.pid) and not in_job.step_ended(running.pid)
        start = time.monotonic()
        with pytest.raises(RuntimeError, match="a `ray start` step ended"):
            in_job.wait_for_nodes(f"127.0.0.1:{in_job.free_ports(1)[0]}", 2, 60, steps=[running.pid, ended.pid])
        assert time.monotonic() - start < 5
    finally:
        running.kill()
        running.wait()
    assert len(set(in_job.free_ports(3))) == 3
