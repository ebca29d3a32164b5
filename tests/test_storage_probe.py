"""Every node checks the storage before any trial starts (tune_jobs/storage_probe.py).

On hosts of their own (tests/ray_hosts.py; root): a head and two workers with one logical GPU each,
and S3 (moto, tests/s3_server.py) on the test network's bridge, authenticating every request as
AWS does. The head and w1 run with credentials (as a node with an instance profile); w2 is started
without any AWS variable (as a worker that cluster.yaml gave no profile). The driver on the head
has credentials, so the bucket check before Ray starts passes: only the per-node check can tell.
"""

import contextlib
import os

import pytest
import yaml

from netns import Unavailable, require_root_netns
from ray_hosts import RayHosts
from s3_server import S3Server
from tune_jobs.storage_probe import probe

BUCKET = "sweeps-bucket"
SPEC = {
    "name": "probe",
    "train": {"n_hidden": 32},
    "stop": {"threshold": None, "max_epochs": 3},
    "views": {"lr": {"lr": [0.01, 0.001], "batch_size": 64}},
    "resources": {"checkpoint_every_s": 0},  # every epoch uploads a checkpoint from the trial's node
}


def test_a_local_root_that_a_node_does_not_see_is_not_made_there(tmp_path):
    assert probe(str(tmp_path)) == "" and list(tmp_path.iterdir()) == []  # written, read, deleted
    missing = tmp_path / "nfs" / "sweeps"
    assert probe(str(missing)) == f"{missing} does not exist there (is the shared filesystem mounted on it?)"
    assert not (tmp_path / "nfs").exists()


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    try:
        require_root_netns()
    except Unavailable as exc:
        pytest.skip(f"hosts of their own: {exc}")
    with pytest.MonkeyPatch.context() as patch:
        for key in [k for k in os.environ if k.startswith("AWS_")]:
            patch.delenv(key)  # no node inherits credentials from whoever runs the tests
        with contextlib.ExitStack() as stack:
            cluster = stack.enter_context(RayHosts("isu2", "10.92.0", ["w1", "w2"], tmp_path_factory.mktemp("probe")))
            s3 = stack.enter_context(S3Server(host=cluster.net.gateway, iam=True))
            s3.create_bucket(BUCKET)
            cluster.node_env = {"head": s3.env, "w1": s3.env}  # w2: none
            cluster.start()
            (cluster.tmp / "probe.yaml").write_text(yaml.safe_dump(SPEC))
            yield cluster, s3


@pytest.mark.cluster
@pytest.mark.hosts
@pytest.mark.s3
def test_a_worker_without_credentials_is_named_in_one_line_before_any_trial_starts(hosts, blob_dataset_dir):
    cluster, s3 = hosts
    out = cluster.cli("head", "run", str(cluster.tmp / "probe.yaml"), "--data", blob_dataset_dir, "--address",
                      cluster.address, "--storage", s3.uri(f"{BUCKET}/sweeps"), "--name", "refused", "--no-analyze",
                      timeout=300, **s3.env)
    assert out.returncode == 2, out.stdout[-3000:] + out.stderr[-3000:]
    w2 = cluster.net.address("w2")
    assert out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith(f"error: --storage: node w2 ({w2}): cannot write a file under s3://{BUCKET}/sweeps: "), \
        out.stderr
    assert "node w1" not in out.stderr and "node head" not in out.stderr  # those have credentials
    assert "results:" not in out.stdout and "start  #" not in out.stdout  # no trial started
    assert s3.files(f"{BUCKET}/sweeps") == []  # nothing written: no experiment, no probe left behind
