"""A Ray cluster over hosts of its own (network namespaces on a bridge, tests/netns.py), root only.

    with RayHosts("ismh", "10.89.0", workers=["w1", "w2"], tmp=tmp_path) as cluster:
        cluster.start()                          # the head, then each worker, one at a time
        cluster.address                          # "10.89.0.11:PORT": the head's GCS
        cluster.cli("w1", "run", ..., "--address", cluster.address)   # the CLI on host w1
        cluster.kill("w2"); cluster.start_worker("w2")   # a host lost, then its Ray restarted
        cluster.net.cut("w1"); cluster.net.restore("w1")  # its link down, then up

Hosts: `head` (runs no trials: 0 CPUs, as in cluster.yaml; its GCS, Ray Client server, dashboard
and Jobs API on its own address), each worker (CPUs and logical GPUs), `client` (the token, no
Ray node: a laptop on the cluster's network) and `outsider` (no token). Token auth is on; the
token lives in a file under `tmp` (0600) that only the members' environment names
(RAY_AUTH_TOKEN_PATH); every process gets a HOME under `tmp`, so nothing reads or writes the
user's ~/.ray. Each node has its own `--node-ip-address`, Ray temp dir and a capped object store
(the hosts share this machine's /tmp and /dev/shm). Everything in the namespaces is killed, and
the bridge removed, when the block ends, also when a test fails.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from netns import Network
from processes import RAY_CLI, kill_tagged, new_tag, start_ray_node, tagged_env

HEAD_PORT, CLIENT_PORT, DASHBOARD_PORT = 6379, 10001, 8265
OBJECT_STORE_MB = 100  # every node's store in the shared /dev/shm
# The hosts' processes must not find the project's venv Ray through another checkout's PYTHONPATH.
PROJECT = Path(__file__).resolve().parents[1]


class RayHosts:
    """A head, workers, a token-holding client host and an outsider, each a host of its own."""

    def __init__(self, prefix: str, subnet: str, workers: list[str], tmp: Path, cpus_per_worker: int = 1,
                 gpus_per_worker: int = 1) -> None:
        self.workers = list(workers)
        self.net = Network(prefix, subnet, ["head", *self.workers, "client", "outsider"])
        self.tmp = Path(tmp)
        self.tag = new_tag()
        self.cpus_per_worker, self.gpus_per_worker = cpus_per_worker, gpus_per_worker
        self.token_file = self.tmp / "cluster-token"
        self.node_env: dict[str, dict[str, str]] = {}  # what a host's Ray node (and so its trials) adds to its environment
        self.node_procs: dict[str, subprocess.Popen] = {}
        self._starts: dict[str, int] = {}
        self._temp_dirs: list[str] = []

    # -- set up and tear down
    def __enter__(self) -> "RayHosts":
        self.net.__enter__()
        try:
            self.tmp.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
            for host in self.net.hosts:
                (self.tmp / "home" / host).mkdir(parents=True, exist_ok=True)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.net.remove()
        finally:
            kill_tagged(self.tag)
            for temp_dir in self._temp_dirs:
                shutil.rmtree(temp_dir, ignore_errors=True)

    @property
    def address(self) -> str:
        """The head's GCS address (what `run --address` takes)."""
        return f"{self.net.address('head')}:{HEAD_PORT}"

    @property
    def jobs_url(self) -> str:
        return f"http://{self.net.address('head')}:{DASHBOARD_PORT}"

    def token(self) -> str:
        return self.token_file.read_text().strip()

    def env(self, host: str, token: bool | None = None, **extra: str) -> dict:
        """The environment of a process on `host`: its own HOME, the token file where `token` (by
        default everywhere but on the outsider)."""
        env = tagged_env(self.tag, HOME=str(self.tmp / "home" / host), RAY_DEDUP_LOGS="0", **extra)
        for key in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE", "RAY_ADDRESS"):
            env.pop(key, None)
        if host != "outsider" if token is None else token:
            env["RAY_AUTH_TOKEN_PATH"] = str(self.token_file)
        return env

    # -- Ray nodes
    def _start_node(self, host: str, head: bool) -> None:
        self._starts[host] = self._starts.get(host, 0) + 1
        temp_dir = tempfile.mkdtemp(prefix=f"ismh{host[:4]}", dir="/tmp")  # short: socket paths have a limit
        self._temp_dirs.append(temp_dir)
        log = self.tmp / f"{host}-{self._starts[host]}.log"
        self.node_procs[host] = start_ray_node(
            self.tag, temp_dir, HEAD_PORT, head=head, dashboard_port=DASHBOARD_PORT,
            num_cpus=0 if head else self.cpus_per_worker, num_gpus=0 if head else self.gpus_per_worker,
            log=log, head_host=self.net.address("head"), node_ip=self.net.address(host),
            dashboard_host=self.net.address("head"), object_store_mb=OBJECT_STORE_MB,
            env={**{k: v for k, v in self.env(host).items() if k in ("HOME", "RAY_AUTH_TOKEN_PATH", "RAY_DEDUP_LOGS")},
                 **self.node_env.get(host, {}),
                 # A raylet waits 15 s for its agents to start, and exits: on 2 cores busy with a
                 # sweep, a restarted node's agents took longer.
                 "RAY_agent_register_timeout_ms": "120000"},
            prefix=tuple(self.net.command(host, [], hostname=host)))

    def start(self) -> None:
        """The head, then each worker, one at a time (two raylets starting at once on 2 busy
        cores can time out), each waited for until the head's node table holds it alive."""
        self._start_and_wait("head", head=True)
        for host in self.workers:
            self.start_worker(host)

    def start_worker(self, host: str) -> None:
        """(Re)start Ray on worker `host` and wait until it has joined."""
        self._start_and_wait(host, head=False)

    def _start_and_wait(self, host: str, head: bool, attempts: int = 3, timeout_s: float = 120) -> None:
        """Start a node; where its `ray start` gives up (it times out on a busy machine), again."""
        ip = self.net.address(host)
        joined = lambda: any(n.get("node_ip") == ip and n.get("state") == "ALIVE" for n in self.nodes())  # noqa: E731
        for attempt in range(attempts):
            self._start_node(host, head)
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline and self.node_procs[host].poll() is None:
                if joined():
                    return
                time.sleep(1)
            self.kill(host)
        raise TimeoutError(f"Ray on {host} did not start in {attempts} attempts:\n{self.logs()}")

    def kill(self, host: str) -> None:
        """The host lost: SIGKILL every process on it (its raylet, workers and trials)."""
        Network.kill_all(self.net.namespace(host))

    # -- run things on a host
    def python(self, host: str, code: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return self.net.run(host, [sys.executable, "-c", code], env=self.env(host), timeout=timeout, cwd=PROJECT)

    def nodes(self) -> list[dict]:
        """The head's node table (Ray's state API through the dashboard, with the token); [] where it
        does not answer."""
        import json
        import urllib.request

        request = urllib.request.Request(f"{self.jobs_url}/api/v0/nodes?limit=100",
                                         headers={"Authorization": f"Bearer {self.token()}"})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return json.load(response)["data"]["result"]["result"]
        except (OSError, ValueError, KeyError):
            return []

    def cli(self, host: str, *args: str, timeout: float = 300, token: bool | None = None,
            **env: str) -> subprocess.CompletedProcess:
        """`instrument-sweep ARGS` on `host` to completion (`token`: see `env`); output captured as text."""
        return self.net.run(host, [sys.executable, "-m", "tune_jobs", *args], env=self.env(host, token, **env),
                            timeout=timeout, cwd=PROJECT)

    def spawn_cli(self, host: str, *args: str, log: Path, **env: str) -> subprocess.Popen:
        """`instrument-sweep ARGS` on `host` in the background, output to `log`."""
        return self.net.popen(host, [sys.executable, "-m", "tune_jobs", *args], env=self.env(host, **env),
                              stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=PROJECT)

    def ray_cli(self, host: str, *args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
        return self.net.run(host, [*RAY_CLI, *args], env=self.env(host, **env), timeout=timeout, cwd=PROJECT)

    def logs(self) -> str:
        """The tail of every node's `ray start` log, for a failing test's message."""
        return "\n".join(f"--- {p.name}\n" + p.read_text()[-1500:] for p in sorted(self.tmp.glob("*.log")))

