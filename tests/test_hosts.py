"""A Ray cluster over hosts of its own (tests/ray_hosts.py): a head that runs no trials (CPU 0, as in
cluster.yaml), three workers with one logical GPU each, a client host with the token but no Ray
node, and an outsider without the token; each its own network namespace and address. Root only.

What a user of a real cluster relies on: one trial per GPU across hosts; a driver on any host
(a worker's, or through Ray Client from one without Ray); the token keeps outsiders out, and
says so; a host lost, or cut off for 30 s or 90 s, costs no epoch and no trial, and the console
says when it stopped answering, when Ray gave it up, what capacity is left and how to get it back.
"""

import json
import re
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

import analysis
from netns import Unavailable, require_root_netns
from processes import EpochGate, http_status, wait_until
from ray_hosts import RayHosts
from trainables.tuning.trial import EPOCH_GATE_ENV

pytestmark = [pytest.mark.cluster, pytest.mark.hosts]
WORKERS = ["w1", "w2", "w3"]

PLACEMENT = {
    "name": "three-gpus",
    "train": {"n_hidden": 32, "loader": "dataloader"},
    "stop": {"threshold": None, "max_epochs": 8},  # fixed epochs: every trial takes seconds
    "views": {"lr": {"lr": [0.05, 0.01, 0.001, 1.0e-4, 1.0e-5], "batch_size": 4}},
}
CLIENT = {**PLACEMENT, "name": "client", "stop": {"threshold": None, "max_epochs": 6},
          "views": {"lr": {"lr": [0.05, 0.01, 0.001], "batch_size": 4}}}
FAULT_EPOCHS, HELD_AT = 6, 2
FAULTS = {  # six trials on three GPUs, held at the gate after epoch 2 while hosts are lost and cut off
    "name": "faults",
    "train": {"n_hidden": 32},
    "stop": {"threshold": None, "max_epochs": FAULT_EPOCHS},
    "views": {"lr": {"lr": [0.05, 0.02, 0.01, 0.005, 0.002, 0.001], "batch_size": 4}},
    "resources": {"checkpoint_every_s": 0},  # a retry continues from the epoch its trial was held at
}
GATE = "gate"  # the workers' epoch gate, under the hosts' directory: no file (no gate) but in the faults test


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    try:
        require_root_netns()
    except Unavailable as exc:
        pytest.skip(f"a cluster of hosts of their own: {exc}")
    with RayHosts("ismh", "10.89.0", WORKERS, tmp_path_factory.mktemp("hosts")) as cluster:
        # Every worker's Ray (its trials) sees the gate, also when restarted; while its file is missing, none waits.
        cluster.node_env = {host: {EPOCH_GATE_ENV: str(cluster.tmp / GATE)} for host in WORKERS}
        cluster.start()
        yield cluster


@pytest.fixture(scope="module")
def sweeps(hosts, blob_dataset_dir):
    """Spec files, the dataset and storage shared by every host (one filesystem: as NFS)."""
    for raw in (PLACEMENT, CLIENT, FAULTS):
        (hosts.tmp / f"{raw['name']}.yaml").write_text(yaml.safe_dump(raw))
    return hosts.tmp, blob_dataset_dir, str(hosts.tmp / "shared")


def run_args(sweeps, name: str, experiment: str, address: str) -> list[str]:
    specs, data, shared = sweeps
    return ["run", str(specs / f"{name}.yaml"), "--data", data, "--address", address, "--storage", shared,
            "--name", experiment, "--no-analyze"]


def epochs_logged(experiment: Path) -> dict[int, list[int]]:
    """Each trial's epochs as its result.json lists them, row by row (not the analysis' view)."""
    found = {}
    for result in experiment.glob("trial-*/result.json"):
        rows = [json.loads(line) for line in result.read_text().splitlines()]
        found[rows[0]["trial_number"]] = [r["epoch"] for r in rows]
    return found


def test_outsider_is_refused_at_the_gcs_the_jobs_api_and_the_dashboard_naming_the_token(hosts, sweeps):
    # At the GCS: a driver without the token on a host that runs a node (w1's), so it gets that far.
    gcs = hosts.cli("w1", *run_args(sweeps, "three-gpus", "outsider", hosts.address), token=False, timeout=120)
    assert gcs.returncode == 2, gcs.stdout[-2000:] + gcs.stderr[-2000:]
    assert gcs.stderr.count("\n") == 1 and gcs.stderr.startswith("error: --address: could not join"), gcs.stderr
    assert "without its token" in gcs.stderr or "lacks its token" in gcs.stderr, gcs.stderr
    # The outsider's own host runs no node: it is told so, and that it has no token.
    here = hosts.cli("outsider", *run_args(sweeps, "three-gpus", "outsider", hosts.address), timeout=120)
    assert here.returncode == 2 and here.stderr.count("\n") == 1 and "token" in here.stderr, here.stderr
    for args in (["submit", "smoke", "--data", sweeps[1]], ["status", "raysubmit_x"], ["logs", "raysubmit_x"]):
        jobs = hosts.cli("outsider", *args, "--address", hosts.jobs_url, timeout=120)
        assert jobs.returncode == 2 and jobs.stderr.count("\n") == 1, jobs.stderr
        assert "refused" in jobs.stderr and "token" in jobs.stderr, jobs.stderr
    dashboard = hosts.net.run("outsider", ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                                           f"{hosts.jobs_url}/api/jobs/"])
    assert dashboard.stdout == "401"
    # The same request with the token gets through: what refused them was the token alone.
    assert http_status(f"{hosts.jobs_url}/api/jobs/", token=hosts.token()) == 200


def test_a_driver_on_a_worker_host_runs_one_trial_per_logical_gpu_across_hosts(hosts, sweeps):
    """Moved from test_multinode.py (a cluster on 127.0.0.1), with the driver on a worker's host:
    Ray used to connect it through the head's raylet, advertising the head's address, and it hung."""
    out = hosts.cli("w1", *run_args(sweeps, "three-gpus", "placement", hosts.address), timeout=400)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:] + hosts.logs()
    assert "4 node(s)" in out.stdout and "3 GPUs" in out.stdout and "[5/5 done]" in out.stdout

    experiment = Path(sweeps[2], "placement")
    epochs, trials = analysis.load_epochs(str(experiment)), analysis.load_trials(str(experiment))
    assert len(trials) == 5 and set(trials.status) == {"max_epochs"}
    assert all(e == list(range(1, 9)) for e in epochs_logged(experiment).values())
    assert (epochs.gpu_ids != "").all()
    spans = epochs.groupby("trial_id").agg(start=("started_at_s", "min"), end=("ended_at_s", "max"),
                                           node=("node", "first"), gpu=("gpu_ids", "first"))
    assert set(spans.node) <= set(WORKERS) and spans.node.nunique() >= 2  # workers ran trials, the head none
    for t in pd.concat([spans.start, spans.end]).unique():
        running = spans[(spans.start <= t) & (spans.end > t)]
        assert len(running) <= 3
        assert not running.duplicated(["node", "gpu"]).any()  # never two trials on one GPU


def test_a_host_without_ray_is_told_to_use_ray_client_which_prints_the_trials(hosts, sweeps):
    # Refused from this host's process table before any attempt to join (which hung): within the timeout.
    out = hosts.cli("client", *run_args(sweeps, "client", "client-gcs", hosts.address), timeout=180)
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    assert out.stderr.count("\n") == 1 and f"ray://{hosts.net.address('head')}:10001" in out.stderr, out.stderr

    client = f"ray://{hosts.net.address('head')}:10001"
    for attempt in ("client", "client-again"):
        out = hosts.cli("client", *run_args(sweeps, "client", attempt, client), timeout=400)
        if "Starting Ray client server failed" not in out.stderr:
            break  # the head starts a server for each client: on 2 busy cores that failed in 2 runs of 6
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert re.search(r"^cluster: Ray cluster at ray://", out.stdout, re.MULTILINE)
    dashboard = re.search(r"^dashboard: (.*)$", out.stdout, re.MULTILINE).group(1)
    assert "127.0.0.1" not in dashboard.split("://")[-1].split("/")[0], dashboard  # not the head's loopback
    assert len(re.findall(r"\[\d/3 done\] done   #\d", out.stdout)) == 3, out.stdout[-3000:]  # per-trial lines
    assert all(e == list(range(1, 7)) for e in epochs_logged(Path(sweeps[2], attempt)).values())


class Console:
    """A sweep's console output as it comes, each line with when it was first seen."""

    def __init__(self, log: Path) -> None:
        self.log, self.lines = log, []

    def read(self) -> None:
        text = self.log.read_text() if self.log.exists() else ""
        complete = text.splitlines()[:-1] if not text.endswith("\n") else text.splitlines()
        now = time.monotonic()
        self.lines += [(now, line) for line in complete[len(self.lines):]]

    def first(self, pattern: str, after: float = 0.0) -> float | None:
        return next((t for t, line in self.lines if t >= after and re.search(pattern, line)), None)

    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)


def test_hosts_lost_and_cut_off_mid_sweep_cost_no_epoch_and_the_console_says_what_happened(hosts, sweeps):
    """One sweep, the driver on the head, its trials held at the gate after epoch 2: w3 is killed
    (every process on it), then, once the console says so, w1 is cut off for 30 s and w2 for 90 s.
    A host Ray declares dead never rejoins; its Ray is restarted as the console says (`ray start`),
    one host at a time, and the running sweep uses it at once: each time one slot frees, which a
    retried trial must take ahead of the trials not started yet. The gate opens once every host
    is back and Ray has had its say on w2 (30 s after its link came back)."""
    gate = EpochGate(hosts.tmp / GATE, epochs=HELD_AT)
    log = hosts.tmp / "faults.log"
    run = hosts.spawn_cli("head", *run_args(sweeps, "faults", "faults", hosts.address), log=log)
    console = Console(log)

    def poll() -> bool:
        console.read()
        return run.poll() is not None

    gate.wait_held(3, sweep=run, log=log)  # a trial on each worker
    ip = {host: hosts.net.address(host) for host in WORKERS}

    def dead(host: str) -> bool:  # in the head's node table, which answered
        table = hosts.nodes()
        return bool(table) and not any(n.get("node_ip") == ip[host] and n.get("state") == "ALIVE" for n in table)

    def starts() -> int:
        return len(re.findall(r"\] start  #", console.text()))

    killed_at = time.monotonic()
    hosts.kill("w3")
    silent = rf"^host   w3 \({re.escape(ip['w3'])}\) not answering"
    wait_until(lambda: poll() or console.first(silent, killed_at), 120, "the console to say w3 is not answering")
    assert run.poll() is None, console.text()[-4000:] + hosts.logs()
    cut_at = time.monotonic()
    hosts.net.cut("w1")
    hosts.net.cut("w2")
    restored: dict[str, float] = {}
    restarts: dict[str, int] = {}  # host -> start lines on the console when its Ray was restarted
    restarting: threading.Thread | None = None
    failed: list[BaseException] = []

    def restart(host: str) -> None:
        try:
            hosts.start_worker(host)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            failed.append(exc)

    def slot_taken(host: str) -> bool:  # its Ray joined, and a trial started on the capacity it brought
        return not restarting.is_alive() and starts() > restarts[host]

    deadline = time.monotonic() + 900
    while not poll() and not failed:
        assert time.monotonic() < deadline, "the sweep did not end:\n" + console.text()[-4000:] + hosts.logs()
        now = time.monotonic()
        for host, cut_s in (("w1", 30), ("w2", 90)):
            if host not in restored and now - cut_at >= cut_s:
                hosts.net.restore(host)
                restored[host] = now
        # An operator following the console restarts Ray on a host it gave up on, one host at a time,
        # once the sweep has used the last one: so one slot frees at a time while the gate is closed.
        if restarting is None or slot_taken(next(reversed(restarts))):
            lost = [h for h in WORKERS if h not in restarts and (h == "w3" or h in restored) and dead(h)]
            if lost:
                restarts[lost[0]], restarting = starts(), threading.Thread(target=restart, args=lost[:1], daemon=True)
                restarting.start()
            elif gate.path.exists() and now - cut_at >= 120 and not any(map(dead, WORKERS)):
                gate.open()  # every host back, Ray's verdict on w2 in, every restarted host's slot taken
        time.sleep(1)
    if restarting is not None:  # before any assert: none is left starting Ray while the hosts go
        restarting.join(timeout=300)
    assert not failed, failed
    assert run.poll() == 0, console.text()[-4000:] + hosts.logs()

    out = console.text()
    experiment = Path(sweeps[2], "faults")
    logged = epochs_logged(experiment)  # every trial finished, each epoch in its file once
    every_epoch = list(range(1, FAULT_EPOCHS + 1))
    assert sorted(logged) == [1, 2, 3, 4, 5, 6] and all(e == every_epoch for e in logged.values()), \
        {n: [e for e in set(es) if es.count(e) > 1] or len(es) for n, es in logged.items()}
    assert set(analysis.load_trials(str(experiment)).status) == {"max_epochs"}

    def line_at(host: str, what: str, after: float) -> float:
        found = console.first(rf"^host   {host} \({re.escape(ip[host])}\) {what}", after)
        assert found is not None, f"no `{host} {what}` line:\n{out[-4000:]}"
        return found

    # Told within about 15 s that a host stopped answering; then that Ray gave it up, with the capacity left.
    assert line_at("w3", "not answering", killed_at) - killed_at <= 20
    for host in ("w1", "w2"):
        assert line_at(host, "not answering", cut_at) - cut_at <= 20
    for host in ("w3", "w2"):
        line_at(host, r"lost \(Ray marked it dead.*capacity now.*restart Ray on it", killed_at)
        line_at(host, "joined: capacity now", killed_at)  # capacity back: Ray restarted there joined the sweep
    # w1 came back within Ray's patience or was given up (busy machines answer health checks late).
    assert console.first(r"^host   w1 \(.*\) (answers again|lost)") is not None, out[-4000:]
    assert {"w2", "w3"} <= set(restarts), restarts
    # Each lost host's trial continued from the epoch it was held at: none lost.
    retries = re.findall(r"\] retry  #\d .*$", out, re.MULTILINE)  # one per host lost, none for a host cut off
    assert len(retries) == len(restarts) and all(f"from epoch {HELD_AT}'s checkpoint" in r for r in retries), \
        (restarts, retries)
    # Retried trials went ahead of trials not started yet: while the gate was closed, each slot that freed
    # was one host's Ray joining, and it went to a retried trial.
    started, waiting_retry, ahead = set(), [], 0
    for line in out.splitlines():
        if match := re.search(r"\] retry  #(\d)", line):
            waiting_retry.append(match.group(1))
        elif match := re.search(r"\] start  #(\d)", line):
            number = match.group(1)
            if number not in started:
                assert not waiting_retry, f"#{number} started while retried #{waiting_retry} waited:\n{out}"
            elif number in waiting_retry:
                waiting_retry.remove(number)
                ahead += len(started) < len(logged)  # with trials not started yet waiting too
            started.add(number)
    assert ahead >= 2, out[-4000:]  # w3's and w2's trials, each ahead of the trials not started yet
    # Ray's own messages about the lost nodes (state dumps, stack traces) stay off the console.
    for noise in ("Raylet is terminated", "missed too many heartbeats", "StackTrace", "gcs_client.cc"):
        assert noise not in out, noise
