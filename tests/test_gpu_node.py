"""A sweep on a fake node of four GPUs of mixed models, through Ray and the CLI: every trial reports
exactly its own GPU's joules (the fake knows each GPU's power) and names its GPU by UUID; a trial
given no GPU on that node trains on the CPU and measures none. And the Ray a command starts
here numbers GPUs in PCI bus order.

The node is a real Ray node (`ray start --num-gpus=4`) whose environment puts the fake NVML and
CUDA (tests/fake_nvml) first on PYTHONPATH; its trial workers inherit them. CUDA numbers the GPUs
fastest first (CUDA_DEVICE_ORDER unset, as on a node started by hand), so Ray's GPU id k is never
NVML's GPU k.
"""

import math
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import yaml

from processes import (cli, cluster_gpus, free_port, http_status, kill_tagged, new_tag, start_ray_node, tagged_env,
                       wait_until)
from test_gpus import CUDA_ORDER, MIXED, PERIOD_S, fake_node_env, uuid

pytestmark = pytest.mark.cluster

SWEEP = {
    "name": "four-gpus",
    "train": {"n_hidden": 16},
    "stop": {"threshold": None, "max_epochs": 30},
    "views": {"lr": {"lr": [0.05, 0.01, 0.001, 0.0001], "batch_size": 64}},  # four trials: one per GPU
    "energy": {"replay_budget_s": 0},  # the trials' own windows, not replays
    "resources": {"checkpoint_every_s": 0, "report_every_s": 0},  # a report point after every epoch: trials of ~1 s
}
POWERS_W = sorted({gpu["power_w"] for gpu in MIXED})


@pytest.fixture(scope="module")
def four_gpu_node():
    tag = new_tag()
    temp_dir = tempfile.mkdtemp(prefix="rg", dir="/tmp")
    head_port, dashboard_port = free_port(), free_port()
    start_ray_node(tag, temp_dir, head_port, head=True, dashboard_port=dashboard_port, num_cpus=4, num_gpus=4,
                   log=Path(temp_dir) / "head.log", env=fake_node_env(MIXED))
    address = f"127.0.0.1:{head_port}"
    try:
        wait_until(lambda: http_status(f"http://127.0.0.1:{dashboard_port}/api/jobs/") in (200, 401), 120, "the head")
        wait_until(lambda: cluster_gpus(address, tag) == 4, 120, "the node's 4 GPUs", interval_s=1)
        yield address, tag
    finally:
        kill_tagged(tag)


def sweep(address: str, tag: str, folder: Path, *extra: str) -> str:
    spec = folder / "four-gpus.yaml"
    spec.write_text(yaml.safe_dump(SWEEP))
    out = cli("run", str(spec), "--data", str(folder.parent / "data"), "--address", address, "--storage",
              str(folder / "sweeps"), "--name", "gpus", *extra, tag=tag, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return str(folder / "sweeps" / "gpus")


@pytest.fixture(scope="module")
def data_dir(blob_dataset_dir, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("gpu-node")
    (folder / "data").symlink_to(blob_dataset_dir)
    return folder


def test_every_trial_reports_its_own_gpus_joules(four_gpu_node, data_dir):
    address, tag = four_gpu_node
    folder = data_dir / "one-per-gpu"
    folder.mkdir()
    experiment = sweep(address, tag, folder)
    trials = pd.read_csv(Path(experiment) / "analysis" / "trials.csv", keep_default_na=False, na_values=[""])
    epochs = pd.read_parquet(Path(experiment) / "analysis" / "epochs.parquet")
    assert len(trials) == 4 and set(trials.status) == {"max_epochs"}
    gpu_ids = epochs.groupby("trial_id")["gpu_ids"].agg(set)
    assert sorted(i for ids in gpu_ids for i in ids) == ["0", "1", "2", "3"]  # one trial per GPU
    for trial in trials.itertuples():
        (gpu_id,) = gpu_ids[trial.trial_id]
        nvml_index = CUDA_ORDER[int(gpu_id)]  # the GPU CUDA calls gpu_id, fastest first
        power_w = MIXED[nvml_index]["power_w"]
        assert trial.gpu_uuids == uuid(nvml_index) and trial.device == MIXED[nvml_index]["name"]
        assert trial.energy_source == "gpu" and trial.energy_method == "direct"
        # Reporting and checkpointing after every epoch, with no replays: where the idle floor's error over those
        # seconds (4 trials and Ray on 2 loaded cores) passes 5%, the trial says so; nothing else.
        assert pd.isna(trial.energy_note) or trial.energy_note.startswith("energy error ±"), trial.energy_note
        # The run's window, on the counter's updates at both ends, holds the GPU's power x its time (these GPUs
        # draw one power), within its error bar.
        assert abs(trial.energy_j - power_w * trial.time_s) <= trial.energy_err_j, (trial.gpu_uuids, trial)
        assert min(POWERS_W, key=lambda w: abs(w - trial.energy_j / trial.time_s)) == power_w  # no other GPU's
        assert abs(trial.gpu_idle_w / power_w - 1) < 0.2  # probed on its own GPU
    report = (Path(experiment) / "analysis" / "report.md").read_text()
    assert "joules from Zeus (gpu)" in report and "not measured" not in report


def test_a_trial_given_no_gpu_on_a_gpu_node_trains_on_the_cpu_and_measures_no_gpu(four_gpu_node, data_dir):
    """Ray 2.60 leaves a zero-GPU worker the node's CUDA_VISIBLE_DEVICES (unset: every GPU)."""
    address, tag = four_gpu_node
    folder = data_dir / "no-gpu"
    folder.mkdir()
    experiment = sweep(address, tag, folder, "--set", "resources.gpus_per_trial=0", "--set",
                       "views.lr.lr=[0.01]", "--no-analyze")
    import analysis

    (trial,) = analysis.load_trials(experiment).itertuples()
    assert trial.device == "cpu" and trial.gpu_uuids == "" and trial.energy_note == ""
    assert "gpu" not in trial.energy_source and math.isnan(trial.energy_j)


def test_a_local_ray_numbers_gpus_in_pci_bus_order(process_tag):
    """The Ray a command starts here gives its workers CUDA_DEVICE_ORDER=PCI_BUS_ID (unless set)."""
    code = textwrap.dedent("""
        import os, ray
        from tune_jobs.cluster import connect, disconnect
        info = connect(None)
        order = ray.get(ray.remote(num_cpus=0)(lambda: os.environ.get("CUDA_DEVICE_ORDER")).remote())
        disconnect(info)
        print(order, info.worker_env.get("CUDA_DEVICE_ORDER"))
    """)
    env = {k: v for k, v in tagged_env(process_tag).items() if k != "CUDA_DEVICE_ORDER" and k != "RAY_ADDRESS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["PCI_BUS_ID", "PCI_BUS_ID"]
