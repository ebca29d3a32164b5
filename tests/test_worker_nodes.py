"""What a cluster's workers need, and what losing one costs, on hosts of their own (tests/ray_hosts.py; root).

A head and two workers with one logical GPU each, and S3 (moto, tests/s3_server.py) on the test
network's bridge, authenticating every request as AWS does. The head and w1 run with credentials
(as a node with an instance profile); w2 is started without any AWS variable (as a worker that
cluster.yaml gave no profile). The driver on the head has credentials, so the bucket check before
Ray starts passes: only the per-node storage check (tune_jobs/storage_probe.py) can tell. And a
worker drained for preemption, then lost (a spot reclaim, as the docs say to handle it), costs its
trial no failure and no epoch.
"""

import contextlib
import json
import os
import re

import pytest
import yaml

from netns import Unavailable, require_root_netns
from processes import RAY_CLI, EpochGate, wait_until
from ray_hosts import RayHosts
from s3_server import S3Server
from trainables.tuning.trial import EPOCH_GATE_ENV
from tune_jobs.storage_probe import probe

BUCKET = "sweeps-bucket"
GATE = "gate"  # the workers' epoch gate, under the hosts' directory
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
            # w2: no credentials. The workers' trials see the gate, which has no file (no wait) but in one test.
            gate = {EPOCH_GATE_ENV: str(cluster.tmp / GATE)}
            cluster.node_env = {"head": s3.env, "w1": {**s3.env, **gate}, "w2": gate}
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
    refused = f"error: --storage: node w2 ({w2}): cannot write a file under s3://{BUCKET}/sweeps: "
    assert out.stderr.startswith(refused), out.stderr
    assert "node w1" not in out.stderr and "node head" not in out.stderr  # those have credentials
    assert "results:" not in out.stdout and "start  #" not in out.stdout  # no trial started
    assert s3.files(f"{BUCKET}/sweeps") == []  # nothing written: no experiment, no probe left behind


EPOCHS, HELD_AT = 6, 2
PREEMPTED = {  # two trials, one per worker, each checkpointing every epoch; held after epoch 2 for the drain
    "name": "preempted",
    "train": {"n_hidden": 32},
    "stop": {"threshold": None, "max_epochs": EPOCHS},
    "views": {"lr": {"lr": [0.01, 0.005], "batch_size": 4}},
    "resources": {"max_failures": 0, "checkpoint_every_s": 0},  # max_failures 0: a counted loss ends it ERROR
}


@pytest.mark.cluster
@pytest.mark.hosts
def test_a_worker_drained_for_preemption_then_lost_costs_no_failure_and_no_epoch(hosts, blob_dataset_dir):
    """What the docs tell spot users to do on AWS's interruption notice (`ray drain-node --reason
    DRAIN_NODE_REASON_PREEMPTION`): Tune then retries the lost worker's trial from its checkpoint
    without counting it against resources.max_failures (here 0: a counted loss ends it ERROR)."""
    cluster, _ = hosts
    (cluster.tmp / "preempted.yaml").write_text(yaml.safe_dump(PREEMPTED))
    experiment = cluster.tmp / "shared" / "preempted"
    log = cluster.tmp / "preempted.log"
    gate = EpochGate(cluster.tmp / GATE, epochs=HELD_AT)
    run = cluster.spawn_cli("head", "run", str(cluster.tmp / "preempted.yaml"), "--data", blob_dataset_dir,
                            "--address", cluster.address, "--storage", str(experiment.parent), "--name",
                            experiment.name, "--no-analyze", log=log)

    def rows() -> dict[int, list[dict]]:
        found = {}
        for result in experiment.glob("trial-*/result.json"):
            lines = [json.loads(line) for line in result.read_text().splitlines() if line.endswith("}")]
            if lines:
                found[lines[0]["trial_number"]] = lines
        return found

    gate.wait_held(2, sweep=run, log=log)  # one trial on each worker, epoch 2 reported and checkpointed

    def logged_on_w1() -> list[int]:  # the driver logs a report after the trial has gone on to the gate
        return [n for n, r in rows().items() if r[-1]["node"] == "w1" and r[-1]["epoch"] == HELD_AT]
    (trial,) = wait_until(logged_on_w1, 120, f"w1's trial's epoch {HELD_AT} in its result.json")
    w1 = next(n["node_id"] for n in cluster.nodes() if n["node_ip"] == cluster.net.address("w1") and
              n["state"] == "ALIVE")
    drain = cluster.net.run("head", [*RAY_CLI, "drain-node", "--address", cluster.address, "--node-id", w1, "--reason",
                                     "DRAIN_NODE_REASON_PREEMPTION", "--reason-message", "spot interruption",
                                     "--deadline-remaining-seconds", "30"],
                            env={**cluster.env("head"), "RAY_AUTH_MODE": "token"}, timeout=120)
    assert drain.returncode == 0, drain.stdout + drain.stderr
    cluster.kill("w1")  # reclaimed
    gate.open()  # w2's trial finishes, then the retried one runs there
    assert run.wait(timeout=600) == 0, log.read_text()[-4000:]
    out = log.read_text()
    assert re.search(rf"\] retry  #{trial} .*from epoch {HELD_AT}'s checkpoint, its node preempted: not counted "
                     "against max_failures", out), out[-3000:]
    logged = rows()
    every_epoch = list(range(1, EPOCHS + 1))
    assert all([r["epoch"] for r in trial_rows] == every_epoch for trial_rows in logged.values())  # none lost or twice
    assert {trial_rows[-1]["node"] for trial_rows in logged.values()} == {"w2"}  # the retried trial finished on w2
