"""Sweeps submitted with `instrument-sweep slurm` to a real Slurm (tests/slurm_cluster.py) configured as strictly
as sites run it: a controller and two compute nodes, each in its own network namespace with its own hostname and
address, CPUs bound by cgroups, two typed logical GPUs per node, memory a consumable resource, nodes hidden from
users, jobs requeued only where they ask. Every job starts a Ray cluster over its allocation and runs the sweep
on it."""

import json
import re
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

import analysis
from netns import Unavailable
from processes import EpochGate, cli, new_tag, spec_file, wait_until
from slurm_cluster import GPU_TYPE, MEM_PER_CPU_MB, SlurmCluster, unavailable
from trainables.tuning.trial import EPOCH_GATE_ENV

pytestmark = [pytest.mark.slurm, pytest.mark.cluster]

NODES = ["node1", "node2"]
JOB_TIMEOUT_S = 600  # a bound for a stuck job on a loaded machine (a job here takes 20-60 s)
ACTIVE = ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED")
SWEEP = {  # four trials of 4 fixed epochs each: seconds of training, the rest is Ray starting
    "name": "slurm",
    "train": {"n_hidden": 32},
    "stop": {"threshold": None, "max_epochs": 4},
    "views": {"lr": {"lr": [0.05, 0.01, 0.001, 1.0e-4], "batch_size": 64}},
}
LONG_SWEEP = {  # two trials, stopped midway while held at an epoch gate, with a checkpoint after every epoch
    "name": "slurm-long",
    "train": {"n_hidden": 32},
    "stop": {"threshold": None, "max_epochs": 6},
    "views": {"lr": {"lr": [0.05, 0.01], "batch_size": 4}},
    "resources": {"checkpoint_every_s": 0},
}
# The Slurm page's example is `--dry-run` of this command (its spec, data and storage stand in for the test's)
DOCS_EXAMPLE = ["--nodes", "2", "--gpus-per-node", "a100:1", "--time", "01:00:00", "--setup", "module load cuda/12.4",
                "--name", "seed-1"]
# A site's environment script, as `--setup 'source .../site-env.sh'` loads it: every Python process that
# starts with it (on any node) leaves a mark, so a test sees which nodes' steps got the script's environment.
SITE_ENV = 'export PYTHONPATH="{site}" SITE_MARKS="{site}/marks"\n'
SITECUSTOMIZE = ("import os, pathlib, socket\n"
                 "pathlib.Path(os.environ['SITE_MARKS'], f'{socket.gethostname()}-{os.getpid()}').touch()\n")


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


@pytest.fixture(autouse=True)
def no_job_left(slurm):
    """Jobs a failed test left (its trials held at a gate, say) are cancelled: the next test gets the nodes."""
    yield
    jobs = slurm.run(["squeue", "-h", "-o", "%i"]).stdout.split()
    if jobs:
        slurm.run(["scancel", *jobs])


@pytest.fixture(scope="module")
def tag():
    return new_tag()


def command(slurm, tag, *args: str, **env: str) -> subprocess.CompletedProcess:
    """`instrument-sweep ARGS` against the test Slurm."""
    return cli(*args, tag=tag, timeout=300, SLURM_CONF=str(slurm.conf), **env)



def submit(slurm, tag, *args: str, **env: str) -> str:
    """Submit under the site default most clusters have: the job gets none of this shell's environment
    (SBATCH_EXPORT=NONE), unless `env` says otherwise."""
    out = command(slurm, tag, "slurm", *args, **{"SBATCH_EXPORT": "NONE", **env})
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return re.search(r"submitted: Slurm job (\d+)", out.stdout).group(1)


def wait_ended(slurm, job_id: str) -> str:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while (state := slurm.job_state(job_id)) in ACTIVE:
        assert time.monotonic() < deadline, f"job {job_id} still {state} after {JOB_TIMEOUT_S} s"
        time.sleep(0.5)
    return state


def job_output(storage: Path, name: str, job_id: str) -> str:
    return (storage / name / "slurm" / f"{job_id}.out").read_text()


def gate_line(gate: EpochGate) -> str:
    """A `--setup` line that gives the job's steps, and so its Ray nodes and trials, the gate (`srun
    --export=ALL` passes the script's environment on, also under SBATCH_EXPORT=NONE)."""
    return f"export {EPOCH_GATE_ENV}={gate.path}"


def wait_held(slurm, gate: EpochGate, job_id: str, output: Path, trials: int = 2) -> None:
    """Until `trials` of the job's trials wait at the gate (the job still running)."""
    def held() -> bool:
        state = slurm.job_state(job_id)
        assert state in ACTIVE, f"job {job_id} {state}:\n" + (output.read_text() if output.exists() else "")
        return sum(epochs == gate.epochs for epochs, _ in gate.held().values()) >= trials
    wait_until(held, JOB_TIMEOUT_S, f"{trials} trial(s) of job {job_id} to wait after epoch {gate.epochs}")


def allocated(slurm, job_id: str) -> dict[str, dict[str, str]]:
    """What Slurm gave a running job on each node, as `scontrol -d` shows it: {node: {"CPU_IDs": "0", "GRES":
    "gpu:fake:1(IDX:1)", ...}}."""
    out = slurm.run(["scontrol", "-d", "show", "job", job_id]).stdout
    found = {}
    for line in out.splitlines():
        if line.strip().startswith("Nodes="):
            fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
            for node in slurm.run(["scontrol", "show", "hostnames", fields["Nodes"]]).stdout.split():
                found[node] = fields
    return found


def test_two_sweeps_at_once_on_both_nodes_get_what_slurm_gave_each_and_nothing_else(slurm, tag, tmp_path,
                                                                                       blob_dataset_dir):
    """Two jobs of one CPU and one GPU per node share both nodes. One is submitted from a shell whose Ray
    token and address are not the job's, with typed GPUs (--gpus-per-node fake:1) and a memory request; the
    other under SBATCH_EXPORT=NONE with the GPUs asked for through --gres, and a site line in --setup."""
    spec, storage = spec_file(tmp_path, SWEEP), tmp_path / "shared"
    site = tmp_path / "site"
    (site / "marks").mkdir(parents=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    (site / "env.sh").write_text(SITE_ENV.format(site=site))
    flags = ["--data", blob_dataset_dir, "--storage", str(storage), "--nodes", "2", "--cpus-per-task", "1",
             "--time", "00:10:00"]
    # Each job's trials wait after their first epoch until Slurm's grant to both jobs has been read.
    gates = {name: EpochGate(tmp_path / f"gate-{name}", epochs=1) for name in ("a", "b")}
    jobs = {"a": submit(slurm, tag, spec, *flags, "--name", "a", "--gpus-per-node", f"{GPU_TYPE}:1", "--mem",
                        "2500M", SBATCH_EXPORT="ALL", RAY_AUTH_TOKEN="not-this-jobs", RAY_ADDRESS="10.9.9.9:6379",
                        **gates["a"].env),
            "b": submit(slurm, tag, spec, *flags, "--name", "b", f"--sbatch-arg=--gres=gpu:{GPU_TYPE}:1",
                        "--setup", f"source {site}/env.sh", "--setup", gate_line(gates["b"]), "--no-requeue",
                        "--no-analyze")}
    nodes = {name: set(slurm.job_nodes(job_id)) for name, job_id in jobs.items()}
    for name, job_id in jobs.items():
        wait_held(slurm, gates[name], job_id, storage / name / "slurm" / f"{job_id}.out")
    given = {name: allocated(slurm, job_id) for name, job_id in jobs.items()}  # while both run
    for gate in gates.values():
        gate.open()
    states = {name: wait_ended(slurm, job_id) for name, job_id in jobs.items()}
    spans_s = {name: slurm.job_span(job_id) for name, job_id in jobs.items()}

    outputs = {name: job_output(storage, name, job_id) for name, job_id in jobs.items()}
    assert states == {"a": "COMPLETED", "b": "COMPLETED"}, outputs
    assert nodes == {"a": set(NODES), "b": set(NODES)}  # both jobs on both nodes, at once (below)
    heads = {name: re.search(r"cluster: Ray cluster at (\S+): 2 node\(s\), 2 CPUs, 2 GPUs", out).group(1)
             for name, out in outputs.items()}
    assert heads["a"] != heads["b"]  # the same first node, each head on the port Ray bound for it
    # Each Ray node at its node's Slurm address (NodeAddr), whatever interface Ray would have picked, with the
    # CPU and GPU Slurm gave the job there (one CPU: none to keep for the driver)
    joined = ", ".join(f"{node} ({slurm.network.address(node)}: 1 CPUs, 1 GPUs)" for node in NODES)
    assert all(re.search(rf"ray: 2 node\(s\) up after [\d.]+ s: {re.escape(joined)}\n", out) for out in outputs.values())
    memory = {"a": "2500 MB", "b": f"{MEM_PER_CPU_MB} MB"}  # asked for; the site's default share of one CPU
    for name, job_id in jobs.items():  # each job's own Ray temp dir on each node, removed as its Ray step ended
        assert not (storage / name / "slurm" / f"ray-token-{job_id}").exists()  # and its token
        for node in NODES:
            assert not (slurm.node_tmpfs(node) / f"ray-{job_id}").exists()
            ray_output = (storage / name / "slurm" / f"{job_id}-ray-{node}.out").read_text()
            cpus = given[name][node]["CPU_IDs"]
            assert f"1 of 1 CPU(s) granted (CPUs {cpus}" in ray_output and f"GPU(s) 0, {memory[name]}\n" in ray_output
            assert f"ray: removed {slurm.tmpfs}/ray-{job_id}\n" in ray_output, ray_output[-2000:]
    assert (storage / "a" / "analysis" / "report.md").is_file()
    # The site's line ran before anything, and the job's steps on both nodes got the environment it made
    assert {mark.name.split("-")[0] for mark in (site / "marks").iterdir()} == set(NODES)

    spans = []
    for name in jobs:
        trials = analysis.load_trials(str(storage / name))
        epochs = analysis.load_epochs(str(storage / name))
        assert len(trials) == 4 and set(trials.status) == {"max_epochs"}
        assert set(trials.node) == set(NODES)  # every trial on a node of the allocation, and both used
        assert (epochs.groupby("trial_id").epoch.count() == 4).all()
        # CPU binding: every trial ran on exactly the CPU Slurm gave its job on that node
        assert (epochs.cpu_ids == epochs.node.map(lambda node: given[name][node]["CPU_IDs"])).all(), \
            (epochs[["node", "cpu_ids"]].drop_duplicates(), given[name])
        span = epochs.groupby("trial_id").agg(start=("started_at_s", "min"), end=("ended_at_s", "max"),
                                              node=("node", "first"), gpu=("gpu_ids", "first"))
        spans.append(span.assign(job=name))
    spans = pd.concat(spans)
    assert set(spans.gpu) == {"0"}  # each job's one GPU per node, numbered from 0 under ConstrainDevices
    for node in NODES:  # and Slurm gave the two jobs different CPUs and GPUs on each node
        assert given["a"][node]["CPU_IDs"] != given["b"][node]["CPU_IDs"]
        assert given["a"][node]["GRES"] != given["b"][node]["GRES"] and GPU_TYPE in given["a"][node]["GRES"]
    # The two jobs ran at the same time, as Slurm recorded them (their trials waited at their gates together).
    assert spans_s["a"][0] < spans_s["b"][1] and spans_s["b"][0] < spans_s["a"][1], spans_s
    for job, span in spans.groupby("job"):
        for t in pd.concat([span.start, span.end]).unique():
            running = span[(span.start <= t) & (span.end > t)]
            assert not running.duplicated(["node", "gpu"]).any()  # never two trials of a job on one GPU

    status = command(slurm, tag, "status", jobs["b"], "--storage", str(storage))
    assert status.returncode == 0 and status.stdout.startswith("COMPLETED\n")
    assert "progress: [4/4 done]" in status.stdout and f"slurm/{jobs['b']}.out" in status.stdout
    logs = command(slurm, tag, "logs", jobs["b"], "--storage", str(storage))
    assert logs.returncode == 0 and "[4/4 done]" in logs.stdout and "ray: 2 node(s) up" in logs.stdout
    refused = slurm.run(["scontrol", "requeue", jobs["b"]])  # --no-requeue: Slurm runs it once only
    assert refused.returncode != 0 and "disabled" in refused.stderr


def reports_logged(experiment: Path) -> dict[str, list[dict]]:
    """Each trial's reports as its result.json lists them, redone epochs included (analysis keeps one of each)."""
    return {p.parent.name: [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
            for p in experiment.glob("trial-*/result.json")}


def epochs_logged(experiment: Path) -> dict[str, list[int]]:
    return {trial: [r["epoch"] for r in reports] for trial, reports in reports_logged(experiment).items()}


def assert_continued(experiment: Path, stopped: dict[str, list[int]], stopped_at: float) -> None:
    """After a stop that saved the state while the trials waited at the gate, each trial went on from its last
    epoch (checkpointed and taken in by Tune before it waited): none was trained again."""
    for trial, reports in reports_logged(experiment).items():
        resumed = [r["epoch"] for r in reports if r["started_at_s"] > stopped_at]
        assert resumed and resumed[0] == max(stopped[trial]) + 1, (trial, stopped[trial], resumed)


def assert_held_at(experiment: Path, epochs: int) -> dict[str, list[int]]:
    """Both trials logged every epoch up to the gate's, once, and none after it; what they logged."""
    logged = epochs_logged(experiment)
    assert len(logged) == 2 and all(e == list(range(1, epochs + 1)) for e in logged.values()), logged
    return logged


def assert_every_epoch_once(experiment: Path) -> None:
    trials, epochs = analysis.load_trials(str(experiment)), analysis.load_epochs(str(experiment))
    assert len(trials) == 2 and set(trials.status) == {"max_epochs"}
    for _, trial in epochs.groupby("trial_id"):
        assert sorted(trial.epoch) == list(range(1, LONG_SWEEP["stop"]["max_epochs"] + 1))  # every epoch, once


def test_stopped_then_preempted_mid_sweep_resumes_as_new_jobs_with_every_epoch_once(slurm, tag, tmp_path,
                                                                                      blob_dataset_dir):
    """Stopped while its trials wait at the gate after epoch 2, resumed, preempted while they wait after epoch
    4, resumed again: the gate is given to every job's Ray nodes by a --setup line (kept for the resumes)."""
    storage, gate = tmp_path / "shared", EpochGate(tmp_path / "gate", epochs=2)
    experiment, resume = storage / "long", ["--resume", "long", "--storage", str(storage)]
    first = submit(slurm, tag, spec_file(tmp_path, LONG_SWEEP), "--data", blob_dataset_dir, "--storage", str(storage),
                   "--name", "long", "--no-analyze", "--nodes", "2", "--gpus-per-node", "2", "--cpus-per-task", "2",
                   "--setup", gate_line(gate))

    # As the time limit does (#SBATCH --signal=B:INT@60): SIGINT to the sweep, which saves its state and stops.
    wait_held(slurm, gate, first, experiment / "slurm" / f"{first}.out")
    subprocess.run(["scancel", "--batch", "--signal=INT", first], env=slurm.env, check=True)
    assert wait_ended(slurm, first) == "FAILED"  # exit code 130: interrupted
    assert f"continue with `instrument-sweep slurm --resume long --storage {storage}`" in \
        job_output(storage, "long", first)
    stopped_at, stopped = time.time(), assert_held_at(experiment, 2)

    # As preemption does: SIGTERM to every process of the job, Ray's on every node included. The sweep saves
    # its state as on SIGINT.
    gate.allow(4)
    second = submit(slurm, tag, *resume)
    assert "#SBATCH --gpus-per-node=2" in (experiment / "slurm" / "resume.sh").read_text()  # the first job's
    wait_held(slurm, gate, second, experiment / "slurm" / f"{second}.out")
    subprocess.run(["scancel", "--signal=TERM", "--full", second], env=slurm.env, check=True)
    preempted_at = time.time()
    assert wait_ended(slurm, second) == "FAILED"
    output = job_output(storage, "long", second)
    assert output.index("resuming: ") < output.index("SIGTERM: the sweep stops as on Ctrl-C, saving its state")
    assert_continued(experiment, stopped, stopped_at)
    preempted = assert_held_at(experiment, 4)
    status = command(slurm, tag, "status", second, "--storage", str(storage))
    assert status.stdout.startswith("FAILED\n")
    assert f"resume:   instrument-sweep slurm --resume long --storage {storage}" in status.stdout

    gate.open()
    third = submit(slurm, tag, *resume)
    assert not list((experiment / "slurm").glob("ray-token-*"))  # the killed job's token, removed at the latest now
    assert wait_ended(slurm, third) == "COMPLETED", job_output(storage, "long", third)
    assert_every_epoch_once(experiment)
    epochs = analysis.load_epochs(str(experiment))
    assert (epochs.ended_at_s < preempted_at).any()  # what the first jobs finished was kept, not trained again
    assert_continued(experiment, preempted, preempted_at)


def test_a_requeued_sweep_continues_as_the_same_job_with_every_epoch_once(slurm, tag, tmp_path, blob_dataset_dir):
    """`scontrol requeue`, as a node failure or preemption with PreemptMode=REQUEUE does: Slurm ends the job
    (SIGTERM to every process, then SIGKILL), then runs its script again as the same job; the site lets only
    jobs that ask be requeued (JobRequeue=0), and the job asks by default. Requeued while its trials wait at
    the gate after epoch 2."""
    storage, gate = tmp_path / "shared", EpochGate(tmp_path / "gate", epochs=2)
    experiment = storage / "rq"
    job = submit(slurm, tag, spec_file(tmp_path, LONG_SWEEP), "--data", blob_dataset_dir, "--storage", str(storage),
                 "--name", "rq", "--no-analyze", "--nodes", "2", "--cpus-per-task", "2", "--setup", gate_line(gate))
    try:
        wait_held(slurm, gate, job, experiment / "slurm" / f"{job}.out")
        # The held epochs' rows on the storage (the driver syncs them there from time to time; rows since the
        # last sync of a job that Slurm ends are not kept: see docs/slurm.md)
        wait_until(lambda: sorted(map(len, epochs_logged(experiment).values())) == [2, 2], JOB_TIMEOUT_S,
                   "the held epochs' rows on the storage")
        requeued = slurm.run(["scontrol", "requeue", job])
        requeued_at = time.time()
        assert requeued.returncode == 0, requeued.stderr

        def first_run_ended() -> bool:  # the job waits to start again, or has (its trials held at the gate)
            state = slurm.job_state(job)
            assert state in ACTIVE, job_output(storage, "rq", job)
            return state == "PENDING" or "resuming: " in job_output(storage, "rq", job)
        wait_until(first_run_ended, JOB_TIMEOUT_S, f"job {job}'s first run to end")
        stopped = assert_held_at(experiment, 2)
    finally:
        gate.open()  # also where a check failed: the job ends rather than holding the nodes
    assert wait_ended(slurm, job) == "COMPLETED", job_output(storage, "rq", job)
    assert slurm._job_field(job, "Restarts") == "1"
    output = job_output(storage, "rq", job)  # both runs' output, the first one's kept
    assert output.index("results: ") < output.index("SIGTERM: the sweep stops") < output.index("resuming: ")
    # Both times Ray had the CPUs Slurm gave each node, but one on the head's node, where the sweep runs
    joined = ", ".join(f"{node} ({slurm.network.address(node)}: {cpus} CPUs, 0 GPUs)" for node, cpus in
                       zip(NODES, (1, 2)))
    assert len(re.findall(rf"ray: 2 node\(s\) up after [\d.]+ s: {re.escape(joined)}\n", output)) == 2
    assert_every_epoch_once(experiment)
    assert_continued(experiment, stopped, requeued_at)


@pytest.mark.parametrize("case", ["no sbatch", "partition", "gpus", "gpu type", "node-local storage",
                                  "cloud storage", "a pattern in storage"])
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
    elif case == "gpu type":
        args += ["--gpus-per-node", "a100:1"]
        expected = (f"error: --gpus-per-node: a100:1 asked, but the nodes of the default partition have at most 0 "
                    f"GPU(s) of type a100 (types there: {GPU_TYPE})")
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


def test_the_docs_example_is_the_script_dry_run_writes(slurm, tag, tmp_path, blob_dataset_dir):
    """The Slurm page (docs/) shows the script under `<!-- slurm-example -->`."""
    storage = tmp_path / "shared"
    args = [arg.replace("a100:", f"{GPU_TYPE}:") for arg in DOCS_EXAMPLE]  # the test Slurm's GPUs have this type
    out = command(slurm, tag, "slurm", spec_file(tmp_path, SWEEP), "--data", blob_dataset_dir, "--storage",
                  str(storage), *args, "--dry-run")
    assert out.returncode == 0, out.stderr
    assert not (storage / "seed-1").exists() and not slurm.run(["squeue", "-h"]).stdout.strip()
    bin_dir = Path(__import__("sys").executable).parent
    written = (out.stdout.replace(str(storage), "/shared/sweeps").replace(str(bin_dir), "/home/you/venv/bin")
               .replace(f"{slurm.tmpfs}/", "/tmp/").replace(f"={GPU_TYPE}:", "=a100:"))
    docs = Path(__file__).resolve().parents[1] / "docs"
    examples = [m.group(1) for page in sorted(docs.rglob("*.md"))
                for m in re.finditer(r"<!-- slurm-example -->\n```bash\n(.*?)```", page.read_text(), re.S)]
    assert examples and all(example == written for example in examples)


def test_a_node_finds_its_address_where_slurm_hides_nodes_from_users(slurm):
    """PrivateData=nodes: a user's `scontrol show node` is refused; the job resolves its node's name. The job
    runs as `nobody`, with the system's Python and a copy of the project's packages (this test's own Python
    and checkout may lie where `nobody` cannot read)."""
    import shutil

    python = Path("/usr/bin/python3")
    if not python.exists():
        pytest.skip("no /usr/bin/python3 for a job of another user")
    public = slurm.dir / "public"  # where the job's user may write
    public.mkdir()
    public.chmod(0o1777)
    for package in ("trainables", "tune_jobs"):
        shutil.copytree(Path(__file__).resolve().parents[1] / package, public / "src" / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    script = public / "node-ip.sh"
    script.write_text(f'#!/bin/bash\nscontrol -o show node "$SLURMD_NODENAME" || true\n'
                      f"PYTHONPATH={public}/src {python} -m tune_jobs.slurm.in_job node-ip\n")
    job = slurm.run(["sbatch", "--parsable", "--uid=nobody", "--nodelist=node2", f"--chdir={public}",
                     f"--output={public}/%j.out", str(script)]).stdout.strip()
    assert wait_ended(slurm, job) == "COMPLETED", (public / f"{job}.out").read_text()
    out = (public / f"{job}.out").read_text().splitlines()
    assert out == ["slurm_load_node error: Access/permission denied", slurm.network.address("node2")]


def test_status_and_logs_of_an_unknown_job_exit_2(slurm, tag, tmp_path):
    for verb in ("status", "logs"):
        out = command(slurm, tag, verb, "999999", "--storage", str(tmp_path))
        assert out.returncode == 2 and out.stderr.startswith("error: JOB_ID: 999999: Slurm does not know this job")
