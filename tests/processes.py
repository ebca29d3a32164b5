"""Run the CLI and Ray heads as real processes in tests, and clean up everything they start.

Every process gets an environment tag; Ray's own processes inherit it, so teardown
can find and end them all (a SIGKILLed driver leaves Ray's agents behind).

Tests act on what they observe, never on a guess of the machine's speed: `wait_until` an event
(a row on storage, a line in a log), and `EpochGate` for trials that train until the test lets
them go on, so an interrupt, kill or cut comes at the same point on any machine:

    gate = EpochGate(tmp_path / "gate", epochs=4)       # each trial trains 4 epochs, then waits
    driver = spawn_cli("run", ..., tag=tag, log=log, **gate.env)
    held = gate.wait_held(2)                            # two trials wait: {trial number: pid}
    os.kill(held[2], signal.SIGKILL)                    # e.g. kill one at a known epoch
    gate.open()                                         # and let every trial run to its end
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

TAG = "INSTRUMENT_SWEEP_TEST_TAG"
# Ray's CLI through this interpreter: a node that runs the project from PYTHONPATH has no `ray` script.
RAY_CLI = [sys.executable, "-m", "ray.scripts.scripts"]


def new_tag() -> str:
    return uuid.uuid4().hex


def python_path(*first: object) -> str:
    """PYTHONPATH with `first` (fake modules) ahead of what this interpreter was given: a node that
    runs the project from a PYTHONPATH (no install) keeps its packages in the subprocess."""
    return os.pathsep.join([*map(str, first), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])


def tagged_env(tag: str, **extra: str) -> dict:
    return {**os.environ, TAG: tag, "PYTHONUNBUFFERED": "1", **extra}


def cli(*args: str, tag: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    """`instrument-sweep ARGS` to completion; stdout and stderr captured as text."""
    return subprocess.run([sys.executable, "-m", "tune_jobs", *args], capture_output=True, text=True,
                          timeout=timeout, env=tagged_env(tag, **env))


def spec_file(directory: Path, raw: dict) -> str:
    """`raw` written as a spec file NAME.yaml in `directory` (its `name`); its path."""
    import yaml

    path = Path(directory) / f"{raw['name']}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def spawn_cli(*args: str, tag: str, log: Path, **env: str) -> subprocess.Popen:
    """`instrument-sweep ARGS` in the background, in its own session, output to `log`."""
    return subprocess.Popen([sys.executable, "-m", "tune_jobs", *args], stdout=log.open("w"),
                            stderr=subprocess.STDOUT, env=tagged_env(tag, **env), start_new_session=True)


def tagged_pids(tag: str, variable: str = TAG) -> list[int]:
    """Processes whose environment holds `variable`=`tag`."""
    from tune_jobs.cluster import pids_with_env

    return pids_with_env(variable, tag)


def kill_tagged(tag: str) -> None:
    """SIGKILL every process carrying `tag` (the CLI, its Ray, Ray's workers and agents)."""
    for _ in range(3):
        pids = tagged_pids(tag)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout_s: float, what: str, interval_s: float = 0.5):
    """`predicate()`'s first true value, polled every `interval_s`; TimeoutError naming `what` after
    `timeout_s` (a bound for a stuck run, set for a loaded machine: never a stand-in for an event)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")


class EpochGate:
    """Sweep trials that train `epochs` epochs and then wait until the test lets them go on
    (trainables.tuning.trial.wait_at_epoch_gate): pass `env` to the CLI or the Ray nodes that run them.

    A trial held at the gate has reported (and, by its cadence, checkpointed) its last epoch, and
    Tune's driver has taken that report in. A retried trial stops at the gate again."""

    def __init__(self, path: Path, epochs: int = 0) -> None:
        self.path = Path(path)
        self.held_path = Path(f"{self.path}.held")
        self.allow(epochs)

    @property
    def env(self) -> dict[str, str]:
        from trainables.tuning.trial import EPOCH_GATE_ENV

        return {EPOCH_GATE_ENV: str(self.path)}

    def allow(self, epochs: int) -> None:
        """Let trials train up to `epochs` epochs (in all), then wait."""
        self.epochs = epochs
        partial = self.path.with_name(self.path.name + ".new")
        partial.write_text(str(epochs))
        partial.replace(self.path)  # whole: a trial never reads a half-written number

    def open(self) -> None:
        """Let every trial train on to its end, now and after any retry."""
        self.path.unlink(missing_ok=True)

    def held(self) -> dict[int, tuple[int, int]]:
        """{trial number: (epochs trained, pid)} of each trial's latest wait at the gate (it may have
        gone on since, if the gate was moved or opened)."""
        text = self.held_path.read_text() if self.held_path.exists() else ""
        return {int(n): (int(e), int(pid)) for n, e, pid in (line.split() for line in text.splitlines())}

    def wait_held(self, trials: int, timeout_s: float = 300, sweep: subprocess.Popen | None = None,
                  log: Path | None = None) -> dict[int, int]:
        """Wait until `trials` trials wait at the gate's current epochs; {trial number: pid} of those.
        `sweep`: the process running them, which must not end first; `log`: its output, whose tail
        a failure shows."""
        what = f"{trials} trial(s) to wait after epoch {self.epochs}"
        tail = lambda: f"; its output ends:\n{log.read_text()[-3000:]}" if log and log.exists() else ""  # noqa: E731

        def waiting():
            found = {n: pid for n, (epochs, pid) in self.held().items() if epochs == self.epochs}
            if len(found) >= trials:
                return found
            if sweep is not None and sweep.poll() is not None:
                raise AssertionError(f"the sweep ended (exit {sweep.returncode}) before {what}{tail()}")
            return None
        try:
            return wait_until(waiting, timeout_s, what, interval_s=0.1)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}{tail()}") from None


def start_ray_node(tag: str, temp_dir: str, head_port: int, *, head: bool, dashboard_port: int = 0,
                   num_cpus: int = 2, num_gpus: int = 0, log: Path | None = None,
                   metrics_port: int | None = None, metrics_interval_ms: int | None = None,
                   head_host: str = "127.0.0.1", node_ip: str | None = None, dashboard_host: str = "127.0.0.1",
                   object_store_mb: int | None = None, env: dict | None = None,
                   prefix: tuple[str, ...] = ()) -> subprocess.Popen:
    """`ray start --block` for a head or a worker node on this machine, token auth on.

    `metrics_port`: where the node serves its Prometheus metrics (default: a free port);
    `metrics_interval_ms`: how often Ray pushes metrics there (Ray's default: 10 s);
    `env`: what the node's environment (this process's) adds or changes, which its workers inherit.
    A node of its own host (tests/ray_hosts.py): `prefix` runs it there (the host's nsenter
    command), `node_ip` is its address, `head_host` the head's, `temp_dir` its own, its object
    store capped at `object_store_mb`, and `env` holds its token file.
    """
    env = {**tagged_env(tag), **(env or {}), TAG: tag, "RAY_AUTH_MODE": "token",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    # `ray start` with token auth needs a token to exist (a local ray.init makes one, ray start does not).
    subprocess.run([*RAY_CLI, "get-auth-token", "--generate"], check=True, capture_output=True, env=env)
    # Own ports for the node's agents: another Ray on this machine (a test's in-process one) holds
    # the defaults, and a head whose job agent cannot bind accepts no jobs.
    args = [*RAY_CLI, "start", "--block", f"--num-cpus={num_cpus}", f"--num-gpus={num_gpus}", "--disable-usage-stats",
            f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={metrics_port or free_port()}",
            f"--temp-dir={temp_dir}"]
    if metrics_interval_ms:
        args.append("--system-config=" + json.dumps({"metrics_report_interval_ms": metrics_interval_ms}))
    if node_ip:
        args.append(f"--node-ip-address={node_ip}")
    if object_store_mb:
        args.append(f"--object-store-memory={object_store_mb * 2**20}")
    if head:
        args += ["--head", f"--port={head_port}", f"--dashboard-host={dashboard_host}",
                 f"--dashboard-port={dashboard_port}", "--include-dashboard=true"]
    else:
        args += [f"--address={head_host}:{head_port}"]
    out = log.open("w") if log else subprocess.DEVNULL
    return subprocess.Popen([*prefix, *args], stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def cluster_gpus(address: str, tag: str) -> float:
    """The GPUs Ray counts in the cluster at `address` (-1 where it cannot be joined yet)."""
    code = f"import ray; ray.init(address='{address}'); print(ray.cluster_resources().get('GPU', 0))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env=tagged_env(tag, RAY_AUTH_MODE="token"))
    return float(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else -1.0


def http_status(url: str, token: str | None = None) -> int:
    """HTTP status of GET url (0 when nothing answers)."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0
