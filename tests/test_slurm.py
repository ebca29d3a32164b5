"""Sweeps submitted with `instrument-sweep slurm` to a real Slurm (tests/slurm_cluster.py): a controller and
two compute nodes, each in its own network namespace with its own hostname and address, and two logical GPUs
per node. Every job starts a Ray cluster over its allocation and runs the sweep on it."""

import json
import re
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

import analysis
from netns import Unavailable
from processes import cli, new_tag
from slurm_cluster import SlurmCluster, unavailable

pytestmark = [pytest.mark.slurm, pytest.mark.cluster]

NODES = ["node1", "node2"]
JOB_TIMEOUT_S = 240
SWEEP = {  # four trials of 4 fixed epochs each: seconds of training, the rest is Ray starting
    "name": "slurm",
    "train": {"n_hidden": 32},
    "stop": {"threshold": None, "max_epochs": 4},
    "views": {"lr": {"lr": [0.05, 0.01, 0.001, 1.0e-4], "batch_size": 64}},
}
LONG_SWEEP = {  # two trials long enough to be cancelled midway, with a checkpoint after every epoch
    "name": "slurm-long",
    "train": {"n_hidden": 32},
    "stop": {"threshold": None, "max_epochs": 60},
    "views": {"lr": {"lr": [0.05, 0.01], "batch_size": 4}},
    "resources": {"checkpoint_every_s": 0},
}
# docs/slurm.md's job script is `--dry-run` of this command (its spec, data and storage stand in for the test's)
README_EXAMPLE = ["--nodes", "2", "--gpus-per-node", "2", "--time", "01:00:00", "--name", "seed-1"]


@pytest.fixture(scope="module")
def slurm():
    cluster = SlurmCluster("isslm", "10.88.0", NODES, cpus=2, gpus=2)
    try:
        cluster.__enter__()
    except Unavailable as exc:
        unavailable(str(exc))
    try:
        yield cluster
    finally:
        cluster.__exit__()


@pytest.fixture(scope="module")
def tag():
    return new_tag()


def command(slurm, tag, *args: str, **env: str) -> subprocess.CompletedProcess:
    """`instrument-sweep ARGS` against the test Slurm; Ray's object store kept small on the shared /dev/shm."""
    return cli(*args, tag=tag, timeout=120, SLURM_CONF=str(slurm.conf),
               RAY_DEFAULT_OBJECT_STORE_MEMORY_PROPORTION="0.02", **env)


def spec_file(tmp_path: Path, raw: dict) -> str:
    path = tmp_path / f"{raw['name']}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def submit(slurm, tag, *args: str) -> str:
    out = command(slurm, tag, "slurm", *args)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return re.search(r"submitted: Slurm job (\d+)", out.stdout).group(1)


def wait_ended(slurm, job_id: str) -> str:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while (state := slurm.job_state(job_id)) in ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING"):
        assert time.monotonic() < deadline, f"job {job_id} still {state} after {JOB_TIMEOUT_S} s"
        time.sleep(0.5)
    return state


def job_output(storage: Path, name: str, job_id: str) -> str:
    return (storage / name / "slurm" / f"{job_id}.out").read_text()


def test_two_sweeps_at_once_span_both_nodes_and_share_no_gpu(slurm, tag, tmp_path, blob_dataset_dir):
    spec, storage = spec_file(tmp_path, SWEEP), tmp_path / "shared"
    flags = ["--data", blob_dataset_dir, "--storage", str(storage), "--nodes", "2", "--gpus-per-node", "1",
             "--cpus-per-task", "1", "--time", "00:10:00"]
    jobs = {"a": submit(slurm, tag, spec, *flags, "--name", "a"),  # analyzed in the job: report.md
            "b": submit(slurm, tag, spec, *flags, "--name", "b", "--no-analyze")}
    nodes = {name: set(slurm.job_nodes(job_id)) for name, job_id in jobs.items()}
    states = {name: wait_ended(slurm, job_id) for name, job_id in jobs.items()}
    spans_s = {name: slurm.job_span(job_id) for name, job_id in jobs.items()}

    outputs = {name: job_output(storage, name, job_id) for name, job_id in jobs.items()}
    assert states == {"a": "COMPLETED", "b": "COMPLETED"}, outputs
    assert nodes == {"a": set(NODES), "b": set(NODES)}  # both jobs on both nodes, at once (below)
    heads = {name: re.search(r"cluster: Ray cluster at (\S+): 2 node\(s\), 2 CPUs, 2 GPUs", out).group(1)
             for name, out in outputs.items()}
    assert heads["a"] != heads["b"]  # the same first node, each head on its own free port
    # Each Ray node at its node's Slurm address (NodeAddr), whatever interface Ray would have picked
    joined = ", ".join(f"{node} ({slurm.network.address(node)})" for node in NODES)
    assert all(re.search(rf"ray: 2 node\(s\) up after [\d.]+ s: {re.escape(joined)}\n", out) for out in outputs.values())
    for name, job_id in jobs.items():  # each job's own Ray temp dir on each node, removed as its Ray step ended
        assert not (slurm.tmpfs / f"ray-{job_id}").exists()
        for node in NODES:
            ray_output = (storage / name / "slurm" / f"{job_id}-ray-{node}.out").read_text()
            assert f"ray: removed {slurm.tmpfs}/ray-{job_id}\n" in ray_output, ray_output[-2000:]
    assert (storage / "a" / "analysis" / "report.md").is_file()

    spans = []
    for name in jobs:
        trials = analysis.load_trials(str(storage / name))
        epochs = analysis.load_epochs(str(storage / name))
        assert len(trials) == 4 and set(trials.status) == {"max_epochs"}
        assert set(trials.node) == set(NODES)  # every trial on a node of the allocation, and both used
        assert (epochs.groupby("trial_id").epoch.count() == 4).all()
        span = epochs.groupby("trial_id").agg(start=("started_at_s", "min"), end=("ended_at_s", "max"),
                                              node=("node", "first"), gpu=("gpu_ids", "first"))
        spans.append(span.assign(job=name))
        token = storage / name / "slurm" / f"ray-token-{jobs[name]}"
        assert token.stat().st_mode & 0o777 == 0o600
    spans = pd.concat(spans)
    assert set(spans.gpu) <= {"0", "1"} and spans.groupby("job").gpu.nunique().eq(1).all()
    assert spans.groupby("job").gpu.first().nunique() == 2  # Slurm gave the two jobs different GPUs
    # The two jobs ran at the same time (their trials need not: each sweep trains for about 4 s).
    assert spans_s["a"][0] < spans_s["b"][1] and spans_s["b"][0] < spans_s["a"][1], spans_s
    for t in pd.concat([spans.start, spans.end]).unique():
        running = spans[(spans.start <= t) & (spans.end > t)]
        assert not running.duplicated(["node", "gpu"]).any()  # never two trials on one logical GPU

    status = command(slurm, tag, "status", jobs["b"], "--storage", str(storage))
    assert status.returncode == 0 and status.stdout.startswith("COMPLETED\n")
    assert "progress: [4/4 done]" in status.stdout and f"slurm/{jobs['b']}.out" in status.stdout
    logs = command(slurm, tag, "logs", jobs["b"], "--storage", str(storage))
    assert logs.returncode == 0 and "[4/4 done]" in logs.stdout and "ray: 2 node(s) up" in logs.stdout


def reports_logged(experiment: Path) -> dict[str, list[dict]]:
    """Each trial's reports as its result.json lists them, redone epochs included (analysis keeps one of each)."""
    return {p.parent.name: [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
            for p in experiment.glob("trial-*/result.json")}


def epochs_logged(experiment: Path) -> dict[str, list[int]]:
    return {trial: [r["epoch"] for r in reports] for trial, reports in reports_logged(experiment).items()}


def stop_midway(slurm, experiment: Path, job_id: str, more_than: int, how: list[str]) -> float:
    """Once the trials have logged more than `more_than` epochs in all, `scancel` the job `how` says; when."""
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while sum(map(len, epochs_logged(experiment).values())) <= more_than:
        assert slurm.job_state(job_id) in ("PENDING", "RUNNING"), (experiment / "slurm" / f"{job_id}.out").read_text()
        assert time.monotonic() < deadline
        time.sleep(0.2)
    subprocess.run(["scancel", *how, job_id], env=slurm.env, check=True)
    return time.time()


def test_stopped_then_cancelled_mid_sweep_resumes_as_new_jobs_with_every_epoch_once(slurm, tag, tmp_path,
                                                                                      blob_dataset_dir):
    storage = tmp_path / "shared"
    experiment, resume = storage / "long", ["--resume", "long", "--storage", str(storage)]
    first = submit(slurm, tag, spec_file(tmp_path, LONG_SWEEP), "--data", blob_dataset_dir, "--storage", str(storage),
                   "--name", "long", "--no-analyze", "--gpus-per-node", "2", "--cpus-per-task", "2")

    # As the time limit does (#SBATCH --signal=B:INT@60): SIGINT to the sweep, which saves its state and stops.
    stop_midway(slurm, experiment, first, 4, ["--batch", "--signal=INT"])
    assert wait_ended(slurm, first) == "FAILED"  # exit code 130: interrupted
    assert f"continue with `instrument-sweep slurm --resume long --storage {storage}`" in \
        job_output(storage, "long", first)
    stopped_at, stopped = time.time(), epochs_logged(experiment)
    assert all(epochs == list(range(1, len(epochs) + 1)) for epochs in stopped.values())
    assert 0 < sum(map(len, stopped.values())) < 2 * LONG_SWEEP["stop"]["max_epochs"]

    # A plain scancel: every process of the job ends at once.
    second = submit(slurm, tag, *resume)
    assert "#SBATCH --gpus-per-node=2" in (experiment / "slurm" / "resume.sh").read_text()  # the first job's
    cancelled_at = stop_midway(slurm, experiment, second, sum(map(len, stopped.values())) + 4, [])
    assert wait_ended(slurm, second) == "CANCELLED"
    assert "resuming: " in job_output(storage, "long", second)
    status = command(slurm, tag, "status", second, "--storage", str(storage))
    assert status.stdout.startswith("CANCELLED\n")
    assert f"resume:   instrument-sweep slurm --resume long --storage {storage}" in status.stdout

    third = submit(slurm, tag, *resume)
    assert wait_ended(slurm, third) == "COMPLETED", job_output(storage, "long", third)
    trials, epochs = analysis.load_trials(str(experiment)), analysis.load_epochs(str(experiment))
    assert len(trials) == 2 and set(trials.status) == {"max_epochs"}
    for _, trial in epochs.groupby("trial_id"):
        assert sorted(trial.epoch) == list(range(1, LONG_SWEEP["stop"]["max_epochs"] + 1))  # every epoch, once
    assert (epochs.ended_at_s < cancelled_at).any()  # what the first jobs finished was kept, not trained again
    for trial, reports in reports_logged(experiment).items():
        # After the stop, each trial went on from its last epoch: at most that one, whose checkpoint was still
        # on its way to the driver when the sweep stopped, was trained again.
        resumed = [r["epoch"] for r in reports if r["started_at_s"] > stopped_at]
        assert min(resumed) >= max(stopped.get(trial) or [1])


@pytest.mark.parametrize("case", ["no sbatch", "partition", "gpus", "node-local storage", "cloud storage",
                                  "a pattern in storage"])
def test_bad_input_says_which_flag_and_submits_nothing(slurm, tag, tmp_path, blob_dataset_dir, case):
    storage, env = tmp_path / "shared", {}
    args = ["slurm", spec_file(tmp_path, SWEEP), "--data", blob_dataset_dir, "--name", "bad", "--nodes", "2"]
    if case == "no sbatch":
        env["PATH"] = str(tmp_path)  # nothing there: the command itself runs as `python -m tune_jobs`
        expected = "error: sbatch: not found on PATH"
    elif case == "partition":
        args += ["--partition", "nope"]
        expected = "error: --partition: nope: Invalid partition name specified (partitions: debug)"
    elif case == "gpus":
        args += ["--gpus-per-node", "3"]
        expected = "error: --gpus-per-node: 3 asked, but the nodes of the default partition have at most 2 GPU(s)"
    elif case == "node-local storage":
        storage = slurm.tmpfs / "sweeps"
        expected = f"error: --storage: {storage} is under Slurm's TmpFS ({slurm.tmpfs}), each node's own disk; the job"
    elif case == "cloud storage":
        storage = "s3://bucket/sweeps"
        expected = "error: --storage: s3://bucket/sweeps: the job's script and output live in the experiment"
    else:  # Slurm would read %j (the job id) in the #SBATCH --output path
        storage = tmp_path / "100%j"
        expected = f"error: --storage: '{storage}': the job script holds this path unquoted; use one without spaces"
    out = command(slurm, tag, *args, "--storage", str(storage), **env)
    assert out.returncode == 2 and out.stderr.startswith(expected) and len(out.stderr.splitlines()) == 1, out.stderr
    assert not slurm.run(["squeue", "-h", "-n", "bad"]).stdout.strip()  # nothing submitted
    assert not (Path(str(storage)) / "bad").exists()  # nothing written


def test_readme_example_is_the_script_dry_run_writes(slurm, tag, tmp_path, blob_dataset_dir):
    storage = tmp_path / "shared"
    out = command(slurm, tag, "slurm", spec_file(tmp_path, SWEEP), "--data", blob_dataset_dir, "--storage",
                  str(storage), *README_EXAMPLE, "--dry-run")
    assert out.returncode == 0, out.stderr
    assert not (storage / "seed-1").exists() and not slurm.run(["squeue", "-h"]).stdout.strip()
    bin_dir = Path(__import__("sys").executable).parent
    written = (out.stdout.replace(str(storage), "/shared/sweeps").replace(str(bin_dir), "/home/you/venv/bin")
               .replace(f"{slurm.tmpfs}/", "/tmp/"))
    page = (Path(__file__).resolve().parents[1] / "docs" / "slurm.md").read_text()
    example = re.search(r"<!-- slurm-example -->\n```bash\n(.*?)```", page, re.S).group(1)
    assert written == example


def test_status_and_logs_of_an_unknown_job_exit_2(slurm, tag, tmp_path):
    for verb in ("status", "logs"):
        out = command(slurm, tag, verb, "999999", "--storage", str(tmp_path))
        assert out.returncode == 2 and out.stderr.startswith("error: JOB_ID: 999999: Slurm does not know this job")
