"""`ray up cluster.yaml` as a user runs it, onto hosts of their own (tests/ray_up.py; root).

The config is cluster.yaml itself with only its provider (on-premise, the hosts' addresses), auth
(root's key) and node types (that provider has its own) swapped, and STORAGE set: its file mounts,
setup commands and start commands run as written, over SSH, on the head (from the laptop) and on
the worker (from the head's autoscaler). The instances give the head and the worker credentials
for S3 (moto on the bridge, authenticating every request), as instance profiles would, and
AWS_ENDPOINT_URL. Not exercised here: AWS itself (EC2, the image, IAM), GPUs, and pip reaching an
index (the image's venv is offline: the project's dependencies must already be there, as the
image's torch is).
"""

import os
import re
import signal
import sys

import pytest

import analysis
from netns import Unavailable
from processes import RAY_CLI, wait_until
from ray_up import HOME, LaunchHosts, unavailable
from s3_server import S3Server
from test_cluster_yaml import CLUSTER_YAML

pytestmark = [pytest.mark.cluster, pytest.mark.hosts, pytest.mark.s3]
BUCKET = "sweeps-bucket"
SPEC = """name: up
train: {n_hidden: 32}
stop: {threshold: null, max_epochs: 4}
views: {lr: {lr: [0.01, 0.001], batch_size: 64}}
resources: {checkpoint_every_s: 0}
"""
CLI = [sys.executable, "-m", "tune_jobs"]  # `instrument-sweep` on the laptop: the project's checkout


@pytest.fixture(scope="module")
def cluster(blob_dataset_dir):
    try:
        hosts = LaunchHosts("isup", "10.90.0", ["w1"])
        hosts.__enter__()
    except Unavailable as exc:
        unavailable(str(exc))
    try:
        with S3Server(host=hosts.net.gateway, iam=True) as s3:
            s3.create_bucket(BUCKET)
            instance = {**s3.env, "AWS_ENDPOINT_URL": s3.endpoint_url}
            # The worker's Ray gives a lost head 20 s, not Ray's 60 (see the `ray down` test).
            hosts.image_env = {"head": instance, "w1": {**instance, "RAY_gcs_rpc_server_reconnect_timeout_s": "20"}}
            (hosts.shared / "nfs").mkdir()
            hosts.hidden = {"w1": [str(hosts.shared / "nfs")]}  # a worker that does not mount the "NFS"
            hosts.start()
            hosts.share(blob_dataset_dir, "data")
            (hosts.shared / "up.yaml").write_text(SPEC)
            token = hosts.laptop(*RAY_CLI, "get-auth-token", "--generate")
            assert token.returncode == 0, token.stdout
            hosts.laptop("chmod", "600", f"{HOME}/.ray/auth_token")
            config = hosts.launch_config(CLUSTER_YAML, storage=f"s3://{BUCKET}/sweeps")
            up = hosts.ray("up", "-y", "--no-config-cache", str(config), log=hosts.shared / "up.log")
            assert up.returncode == 0, (hosts.shared / "up.log").read_text()[-5000:] + hosts.logs()
            hosts.wait_for_nodes(2)
            yield hosts, s3, config
    finally:
        hosts.__exit__()


def test_ray_up_installs_the_project_into_the_images_venv_keeping_its_torch(cluster):
    hosts, _, _ = cluster
    for host in hosts.nodes:
        site = hosts.sh(host, "ls /opt/pytorch/lib/python3*/site-packages").stdout.split()
        assert "torch" not in site, site  # pip took none: the image's torch stayed
        found = hosts.sh(host, f"source {HOME}/.bashrc >/dev/null 2>&1; command -v instrument-sweep; "
                               "python3 -c 'import tune_jobs, torch; print(tune_jobs.__file__)'").stdout.split()
        assert found == ["/opt/pytorch/bin/instrument-sweep", f"{HOME}/instrument-sweep/tune_jobs/__init__.py"], found


def test_a_node_that_does_not_mount_the_storage_is_named_before_any_trial_starts(cluster):
    hosts, _, config = cluster
    storage = hosts.shared / "nfs" / "sweeps"
    run = (f"instrument-sweep run {hosts.shared}/up.yaml --data {hosts.shared}/data --address auto "
           f"--storage {storage} --no-analyze; echo exit=$?")
    out = hosts.ray("exec", str(config), run, timeout=600).stdout
    w1 = hosts.net.address("w1")
    assert "exit=2" in out, out[-4000:]
    assert re.search(rf"^error: --storage: node w1 \({w1}\): {storage} does not exist there", out, re.M), out[-4000:]
    assert "results:" not in out and "start  #" not in out  # no trial started


def test_a_sweep_submitted_through_the_dashboard_tunnel_finishes_on_s3(cluster, monkeypatch):
    hosts, s3, config = cluster
    head = hosts.net.address("head")
    assert hosts.sh("laptop", f"curl -s -o /dev/null -w %{{http_code}} http://{head}:8265/api/version",
                    check=False).stdout in ("000", "")  # the dashboard listens on the head's loopback only
    tunnel = hosts.laptop_popen(*RAY_CLI, "dashboard", str(config),
                                log=hosts.shared / "tunnel.log")
    token = (hosts.home("laptop") / ".ray" / "auth_token").read_text().strip()
    through = "curl -s -o /dev/null -w %{http_code} -H 'Authorization: Bearer " + token + \
              "' http://127.0.0.1:8265/api/version"
    wait_until(lambda: tunnel.poll() is not None or hosts.sh("laptop", through, check=False).stdout == "200", 300,
               "the dashboard through `ray dashboard`'s tunnel")
    assert tunnel.poll() is None, (hosts.shared / "tunnel.log").read_text()

    address = "http://127.0.0.1:8265"
    submitted = hosts.laptop(*CLI, "submit", f"{hosts.shared}/up.yaml", "--data", f"{hosts.shared}/data",
                             "--address", address, "--name", "tunnelled")
    assert submitted.returncode == 0, submitted.stdout
    job = re.search(r"^submitted: (\S+)", submitted.stdout, re.M).group(1)
    logs = hosts.laptop(*CLI, "logs", job, "--address", address, "--follow", timeout=600).stdout
    status = hosts.laptop(*CLI, "status", job, "--address", address).stdout
    assert "SUCCEEDED" in status, logs[-5000:] + status
    assert "storage: 2 node(s) write, read and delete under s3://sweeps-bucket/sweeps" in logs, logs[-3000:]
    for key, value in s3.env.items():  # this process reads the results as a user would, with credentials
        monkeypatch.setenv(key, value)
    trials = analysis.load_trials(s3.uri(f"{BUCKET}/sweeps/tunnelled"))
    assert len(trials) == 2 and set(trials.status) == {"max_epochs"}
    os.killpg(tunnel.pid, signal.SIGTERM)  # the user's Ctrl-C: the tunnel closes
    tunnel.wait(timeout=30)


def test_ray_down_leaves_no_ray_node_running(cluster):
    """`ray down` runs `ray stop` on the head, then has the provider terminate every node: on AWS that
    ends the instances. The on-premise provider only marks them terminated (Ray's issue 17022), so a
    worker's Ray exits once it has lost the head for its GCS reconnect timeout (Ray's 60 s, 20 s on
    these hosts), all but its log monitor, which only the instance's end stops."""
    hosts, _, config = cluster
    down = hosts.ray("down", "-y", str(config), log=hosts.shared / "down.log")
    assert down.returncode == 0, (hosts.shared / "down.log").read_text()[-3000:]
    left = {}

    def settled(host: str, patience_s: float, kept: str = "") -> None:
        """Until `host` runs nothing but its sshd (and what `kept` names), which was there before `ray up`."""
        def idle() -> bool:
            left[host] = [p for p in hosts.ps(host) if not p.startswith("sshd: /usr/sbin/sshd -D")
                          and not (kept and kept in p)]
            return not left[host]
        try:
            wait_until(idle, patience_s, host, interval_s=2)
        except TimeoutError:
            pytest.fail(f"{host} still runs {left[host]}")

    settled("head", 120)  # the session of the launcher's SSH connection, kept 10 s after its last command, ends
    settled("w1", 300, kept="/ray/_private/log_monitor.py ")  # 20 s after the head went, on an idle machine
