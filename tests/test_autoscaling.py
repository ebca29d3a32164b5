"""cluster.yaml's autoscaling, proven on Ray's fake multi-node provider (one host of its own; root).

Ray's `fake_multinode` provider starts each worker its autoscaler launches as a Ray node on the
head's host, with the resources of its node type. The config is cluster.yaml's node types: the
head (no CPU for trials), the GPU workers (what AWS detects on a g5.xlarge: 4 CPUs, 1 GPU; a fake
GPU, tests/fake_nvml), the upscaling speed; max_workers lowered to 3 for 2 cores and the idle
timeout to 15 s. The head starts with cluster.yaml's own start command. A 9-trial sweep, each
trial asking for a GPU, brings up workers to the limit and never past it, every trial ends by the
stop rule, and once it ends the workers go away after the idle timeout. The trials wait after their
first epoch until three of them do (each on a worker of its own), so the demand for GPUs lasts until
the limit is reached, however fast they train. The host is a network, PID and mount namespace of its
own (tests/ray_up.py): its Ray's ports, /tmp/ray and `ray stop` touch nothing else.
"""

import re
import shlex
import sys
from pathlib import Path

import pytest
import yaml

import analysis
from netns import Unavailable
from processes import EpochGate
from ray_up import PROJECT, LaunchHosts
from test_cluster_yaml import CLUSTER_YAML
from trainables.training.stop import ENDED_BY_RULE

pytestmark = [pytest.mark.cluster, pytest.mark.hosts]
MAX_WORKERS = 3  # cluster.yaml's 8, lowered for 2 cores
IDLE_TIMEOUT_MIN = 0.25
G5_XLARGE = {"CPU": 4, "GPU": 1}  # what Ray's AWS provider detects on cluster.yaml's worker instance type
FAKE_GPU = Path(__file__).with_name("fake_nvml")
SPEC = {  # nine trials of about 10 s here, each on a GPU of its own
    "name": "nine",
    "train": {"n_hidden": 32, "loader": "dataloader"},
    "stop": {"threshold": 0.9, "patience": 2, "max_epochs": 30},
    "views": {"lr": {"lr": [0.02, 0.015, 0.01, 0.008, 0.006, 0.005, 0.004, 0.003, 0.002], "batch_size": 8}},
}


def fake_config() -> dict:
    """cluster.yaml on the fake multi-node provider: its node types, its head's start command."""
    from ray.autoscaler._private.util import validate_config

    config = yaml.safe_load(CLUSTER_YAML.read_text())
    types = config["available_node_types"]
    head, worker = types[config["head_node_type"]], types["gpu_worker"]
    assert worker["node_config"]["InstanceType"] == "g5.xlarge" and worker["resources"] == {}  # detected: G5_XLARGE
    fake = {
        "cluster_name": config["cluster_name"],
        "max_workers": MAX_WORKERS,
        "upscaling_speed": config["upscaling_speed"],
        "idle_timeout_minutes": IDLE_TIMEOUT_MIN,
        # The fake provider starts its nodes itself: no SSH updater, no launch config to compare.
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True},
        "auth": {"ssh_user": config["auth"]["ssh_user"]},
        "available_node_types": {
            "ray.head.default": {"resources": head["resources"], "node_config": {}, "max_workers": 0},
            # a capped object store: the fake nodes share this machine's /dev/shm
            "gpu_worker": {"resources": {**G5_XLARGE, "object_store_memory": 100 * 2**20}, "node_config": {},
                           "min_workers": worker["min_workers"], "max_workers": MAX_WORKERS},
        },
        "head_node_type": "ray.head.default",  # the name the fake provider gives its head
    }
    # What a fake node never runs (file mounts, setup and start commands: the provider starts it); Ray's
    # defaults (prepare_config) come from a file its wheel lacks for this provider.
    fake.update({key: [] for key in ("cluster_synced_files", "rsync_exclude", "rsync_filter", "initialization_commands",
                                     "setup_commands", "head_setup_commands", "worker_setup_commands",
                                     "head_start_ray_commands", "worker_start_ray_commands")})
    fake.update(file_mounts={}, file_mounts_sync_continuously=False)
    validate_config(fake)
    return fake


@pytest.fixture(scope="module")
def host():
    hosts = LaunchHosts("isup", "10.90.0", [], launched=False)
    try:
        hosts.__enter__()
    except Unavailable as exc:
        pytest.skip(f"a host of its own: {exc}")
    try:
        hosts.start()
        yield hosts
    finally:
        hosts.__exit__()


def test_a_nine_trial_sweep_scales_gpu_workers_to_the_limit_and_they_go_when_idle(host, blob_dataset_dir):
    venv = Path(sys.executable).parent
    gate = EpochGate(host.shared / "gate", epochs=1)  # where the host sees it: the shared directory
    env = {"PATH": f"{venv}:/usr/bin:/bin", "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1",
           "PYTHONPATH": str(FAKE_GPU), "FAKE_NVML_GPUS": "1", "RAY_DEDUP_LOGS": "0",
           **gate.env}  # the head's environment, so its autoscaler's, so every worker's it starts
    (host.home("head") / "ray_bootstrap_config.yaml").write_text(yaml.safe_dump(fake_config()))
    (host.shared / "nine.yaml").write_text(yaml.safe_dump(SPEC))
    start = yaml.safe_load(CLUSTER_YAML.read_text())["head_start_ray_commands"]
    assert start[0] == "ray stop"
    host.sh("head", f"{shlex.quote(sys.executable)} -m ray.scripts.scripts get-auth-token --generate", env=env)
    started = host.sh("head", start[1], env=env, timeout=300, check=False)
    assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]

    log = host.shared / "sweep.log"
    run = [sys.executable, "-m", "tune_jobs", "run", str(host.shared / "nine.yaml"), "--data",
           str(host.share(blob_dataset_dir, "data")),
           "--address", "auto", "--storage", str(host.shared / "sweeps"), "--name", "nine", "--no-analyze",
           "--set", "resources.gpus_per_trial=1"]
    sweep = host.popen("head", run, log=log, env=env, cwd=str(PROJECT))
    monitor = "tail -40 /tmp/ray/session_latest/logs/monitor.log"
    try:
        gate.wait_held(MAX_WORKERS, timeout_s=600, sweep=sweep, log=log)
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}\n{host.sh('head', monitor, check=False).stdout}") from None
    gate.open()
    sweep.wait(timeout=900)
    out = log.read_text()
    assert sweep.returncode == 0, out[-5000:] + host.sh("head", monitor, check=False).stdout

    # Before any trial: no node could run one (the head has no CPU), so the check waited for a worker.
    assert "storage: no node can run a trial yet (1 CPU, 1 GPU)" in out, out[:3000]
    capacities = [int(g) for g in re.findall(r"joined: capacity now (\d+) GPUs", out)]
    assert max(capacities) == MAX_WORKERS, out[-4000:]  # up to the limit, never past it
    trials = analysis.load_trials(str(host.shared / "sweeps" / "nine"))
    assert len(trials) == 9 and set(trials.status) <= {s.value for s in ENDED_BY_RULE}, trials.status
    epochs = analysis.load_epochs(str(host.shared / "sweeps" / "nine"))
    assert (epochs.gpu_ids != "").all()  # each trial on a worker's GPU (the head has none)

    code = ("import ray, time; ray.init(address='auto', logging_level='ERROR')\n"
            "alive = lambda: sum(n['Alive'] and n['Resources'].get('GPU', 0) > 0 for n in ray.nodes())\n"
            "deadline = time.monotonic() + 240\n"
            "print('AT END', alive(), flush=True)\n"
            "while alive() and time.monotonic() < deadline: time.sleep(1)\n"
            "print('WORKERS', alive())")
    left = host.sh("head", f"{shlex.quote(sys.executable)} -c {shlex.quote(code)}", env=env, timeout=300).stdout
    assert "AT END 0" not in left and "WORKERS 0" in left, left  # up when the sweep ended, gone once idle
    host.sh("head", "ray stop --force", env=env, check=False)  # in this host's PID namespace only
