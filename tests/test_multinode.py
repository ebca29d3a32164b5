"""A multi-node Ray cluster on one machine: a head that runs no trials (CPU: 0, as in cluster.yaml)
and two worker nodes with one logical GPU each. One trial per GPU, never more at once."""

import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest
import yaml

import analysis
from processes import (cli, free_port, http_status, kill_tagged, new_tag, start_ray_node, tagged_env,
                       wait_until)

pytestmark = pytest.mark.cluster


def cuda_device_names() -> set[str]:
    """Names of this host's CUDA GPUs (none here)."""
    import torch

    return {torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())}

SWEEP = {
    "name": "two-gpus",
    "train": {"n_hidden": 32, "loader": "dataloader"},
    "stop": {"threshold": None, "max_epochs": 8},  # fixed epochs: every trial takes seconds
    "views": {"lr": {"lr": [0.05, 0.01, 0.001, 1.0e-4, 1.0e-5], "batch_size": 4}},
}


def cluster_gpus(address: str, tag: str) -> float:
    code = f"import ray; ray.init(address='{address}'); print(ray.cluster_resources().get('GPU', 0))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env=tagged_env(tag, RAY_AUTH_MODE="token"))
    return float(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else -1.0


@pytest.fixture(scope="module")
def two_gpu_cluster():
    tag = new_tag()
    temp_dir = tempfile.mkdtemp(prefix="rc", dir="/tmp")
    head_port, dashboard_port = free_port(), free_port()
    start_ray_node(tag, temp_dir, head_port, head=True, dashboard_port=dashboard_port, num_cpus=0,
                   log=Path(temp_dir) / "head.log")
    wait_until(lambda: http_status(f"http://127.0.0.1:{dashboard_port}/api/jobs/") in (200, 401), 120, "the head")
    address = f"127.0.0.1:{head_port}"
    for i in range(2):  # one at a time: two raylets starting together on 2 cores can time out
        start_ray_node(tag, temp_dir, head_port, head=False, num_cpus=2, num_gpus=1,
                       log=Path(temp_dir) / f"worker{i}.log")
        wait_until(lambda: cluster_gpus(address, tag) == i + 1, 120, f"worker node {i + 1} to join", interval_s=2)
    yield address, dashboard_port, tag
    kill_tagged(tag)


def test_one_trial_per_logical_gpu_across_nodes(two_gpu_cluster, tmp_path, blob_dataset_dir):
    address, _, tag = two_gpu_cluster
    spec = tmp_path / "two-gpus.yaml"
    spec.write_text(yaml.safe_dump(SWEEP))

    out = cli("run", str(spec), "--data", blob_dataset_dir, "--address", address, "--storage",
              str(tmp_path / "shared"), "--name", "mn", "--no-analyze", tag=tag, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "3 node(s)" in out.stdout and "2 GPUs" in out.stdout

    epochs = analysis.load_epochs(str(tmp_path / "shared" / "mn"))
    trials = analysis.load_trials(str(tmp_path / "shared" / "mn"))
    assert len(trials) == 5 and set(trials.status) == {"max_epochs"}
    assert set(epochs.device) <= {"cpu", *cuda_device_names()}  # logical GPUs: a real one only on a GPU host
    assert (epochs.gpu_ids != "").all()
    # Each trial's span on the wall clock and the (node, GPU) it held.
    spans = epochs.groupby("trial_id").agg(start=("started_at_s", "min"), end=("ended_at_s", "max"),
                                           node_id=("node_id", "first"), gpu=("gpu_ids", "first"))
    assert spans.node_id.nunique() == 2  # both worker nodes ran trials, the head none
    for t in pd.concat([spans.start, spans.end]).unique():
        running = spans[(spans.start <= t) & (spans.end > t)]
        assert len(running) <= 2
        assert not running.duplicated(["node_id", "gpu"]).any()  # never two trials on one GPU
