"""A local run stays on this machine: Ray's token file is private (0600) and every Ray listener is on
loopback. Token files live under a temporary HOME; the user's own ~/.ray is never touched."""

import ipaddress
import os
import re
import site
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from processes import EpochGate, tagged_env, tagged_pids, wait_until
from trainables.errors import InputError
from tune_jobs import cli
from tune_jobs.ray_private import ray_on_loopback
from tune_jobs.security import dashboard_login_hint, private_token_file

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"
RAY_TOKEN_ENV = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS")


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A temporary HOME with no Ray settings in the environment."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in RAY_TOKEN_ENV:
        monkeypatch.delenv(name, raising=False)
    return home


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def write_token(path: Path, file_mode: int, token: str = "ab" * 32) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(token)
    path.chmod(file_mode)
    return path


@pytest.mark.parametrize("found_mode", [0o644, 0o640, 0o604, 0o666])
def test_a_token_file_others_can_read_is_made_private_with_a_notice(home, capsys, found_mode):
    token = write_token(home / ".ray" / "auth_token", found_mode)
    assert private_token_file() == token
    assert mode(token) == 0o600 and token.read_text() == "ab" * 32
    notice = capsys.readouterr().err.strip()
    assert notice.count("\n") == 0 and "~/.ray/auth_token" in notice and f"{found_mode:04o}" in notice


def test_a_private_token_file_is_left_alone(home, capsys):
    token = write_token(home / ".ray" / "auth_token", 0o600)
    before = token.stat()
    private_token_file(create=True)
    assert mode(token) == 0o600 and token.stat().st_mtime_ns == before.st_mtime_ns
    assert capsys.readouterr().err == ""


def test_the_token_file_ray_reads_from_ray_auth_token_path_is_the_one_tightened(home, tmp_path, monkeypatch):
    default = write_token(home / ".ray" / "auth_token", 0o644)
    elsewhere = write_token(tmp_path / "secret" / "token", 0o644)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(elsewhere))
    assert private_token_file(create=True) == elsewhere
    assert mode(elsewhere) == 0o600 and mode(default) == 0o644  # Ray never reads the default here


def test_a_local_run_creates_a_missing_token_private_whatever_the_umask(home):
    old_umask = os.umask(0)
    try:
        token = private_token_file(create=True)
    finally:
        os.umask(old_umask)
    assert token == home / ".ray" / "auth_token"
    assert mode(token) == 0o600 and re.fullmatch(r"[0-9a-f]{64}", token.read_text())  # as Ray makes one


@pytest.mark.parametrize("env", [{}, {"RAY_AUTH_MODE": "disabled"}, {"RAY_AUTH_TOKEN": "x" * 64},
                                 {"RAY_ADDRESS": "10.0.0.5:6379"}, {"RAY_AUTH_TOKEN_PATH": "/nonexistent/token"}])
def test_no_token_is_created_where_ray_would_not_create_or_read_one(home, monkeypatch, env):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    private_token_file(create=bool(env))  # {}: not a local start (joining a cluster, submitting a job)
    assert not (home / ".ray" / "auth_token").exists()


def test_a_token_file_that_cannot_be_made_private_stops_the_run_with_exit_2(home, monkeypatch, capsys,
                                                                           blob_dataset_dir, tmp_path):
    write_token(home / ".ray" / "auth_token", 0o644)

    chmod = os.chmod

    def refuse(path, mode, **kwargs):  # the token's only: the run chmods other files (forkserver's socket)
        if not str(path).endswith("auth_token"):
            return chmod(path, mode, **kwargs)
        raise PermissionError(1, "Operation not permitted", str(path))

    monkeypatch.setattr(os, "chmod", refuse)  # what a file owned by another user gives
    code = cli.main(["run", "--preset", "smoke", "--data", blob_dataset_dir, "--storage", str(tmp_path / "s")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0
    assert err.startswith("error: ~/.ray/auth_token: ") and "0644" in err and "Operation not permitted" in err
    assert "chmod 600" in err


def test_a_token_file_that_cannot_be_created_is_named_in_the_error(home, monkeypatch):
    def refuse(path, flags, mode=0o777, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(InputError) as caught:
        private_token_file(create=True)
    assert caught.value.where == "~/.ray/auth_token" and "Permission denied" in caught.value.problem


def test_cluster_yaml_setup_commands_make_the_token_private_on_the_nodes(tmp_path):
    config = yaml.safe_load(CLUSTER_YAML.read_text())
    commands = [c for c in config["setup_commands"] if "auth_token" in c]
    assert commands and config["setup_commands"].index(commands[-1]) < 2  # before the slow pip install
    token = write_token(tmp_path / ".ray" / "auth_token", 0o644)  # as `ray get-auth-token --generate` leaves it
    for command in commands:
        subprocess.run(["bash", "-c", command], check=True, env={**os.environ, "HOME": str(tmp_path)})
    assert mode(token) == 0o600 and token.read_text() == "ab" * 32


def test_ray_on_loopback_switches_ray_to_one_machine_only_while_inside(monkeypatch):
    from ray._private import ray_constants, services, worker

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", raising=False)
    before = ray_constants.ENABLE_RAY_CLUSTER
    with ray_on_loopback():
        assert ray_constants.ENABLE_RAY_CLUSTER is False
        if worker._global_node is None:  # no Ray in this process: what a new local Ray would bind to
            assert services.get_node_ip_address() == "127.0.0.1"
        assert os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"  # for the processes Ray starts
    assert ray_constants.ENABLE_RAY_CLUSTER == before and "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in os.environ
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")  # ray.init() joins that cluster: nothing to change
    with ray_on_loopback():
        assert ray_constants.ENABLE_RAY_CLUSTER == before and "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in os.environ


def test_dashboard_hint_says_how_to_get_the_token_only_with_token_auth(home, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    hint = dashboard_login_hint()
    assert "ray get-auth-token" in hint and "~/.ray/auth_token" in hint and "cookie" in hint and "\n" not in hint
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert dashboard_login_hint() == ""


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    return ip.is_loopback or bool(getattr(ip, "ipv4_mapped", None) and ip.ipv4_mapped.is_loopback)


def listening_sockets(tag: str) -> set[tuple[str, int, str]]:
    """(address, port, process) of every TCP socket listening, or UDP socket bound, in the tagged processes."""
    import psutil

    found = set()
    for pid in tagged_pids(tag):
        try:
            process = psutil.Process(pid)
            name = " ".join(process.cmdline())
            for conn in process.net_connections(kind="inet"):
                bound_udp = conn.type == socket.SOCK_DGRAM and conn.laddr and not conn.raddr
                if conn.status == psutil.CONN_LISTEN or bound_udp:
                    found.add((conn.laddr.ip, conn.laddr.port, name))
        except (psutil.Error, OSError):
            continue
    return found


@pytest.mark.slow
def test_a_local_run_listens_on_loopback_only_and_leaves_a_private_token(tmp_path, process_tag, blob_dataset_dir):
    """A real sweep's Ray processes, sampled while it runs: none listens outside 127.0.0.0/8."""
    home = tmp_path / "home"
    token = write_token(home / ".ray" / "auth_token", 0o644)  # as an earlier Ray left it
    gate = EpochGate(tmp_path / "gate", epochs=1)  # trials wait until the sampling has seen Ray at work
    env = tagged_env(process_tag, HOME=str(home), PYTHONUSERBASE=site.getuserbase(), **gate.env)
    for name in RAY_TOKEN_ENV + ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER",):
        env.pop(name, None)
    stdout, stderr = tmp_path / "out.log", tmp_path / "err.log"
    seen: set[tuple[str, int, str]] = set()
    # Ray at work: its GCS, raylet, runtime-env agent, dashboard, the driver and a trial's worker, each
    # under its command line or the title Ray gives it later. (Not always the dashboard agent: another
    # Ray on this machine can hold its port 52365 for seconds.)
    processes = ("gcs_server", "raylet", "runtime_env/agent/main.py|ray::RuntimeEnvAgent", "dashboard.py",
                 "-m tune_jobs", "default_worker.py|ray::IDLE|ray::ImplicitFunc")

    def unseen() -> list[str]:
        names = " ".join(name for _, _, name in seen)
        return [process for process in processes if not any(title in names for title in process.split("|"))]

    def sample(done) -> bool:
        seen.update(listening_sockets(process_tag))
        return done()

    with stdout.open("w") as out_file, stderr.open("w") as err_file:
        run = subprocess.Popen([sys.executable, "-m", "tune_jobs", "run", "--preset", "smoke", "--data",
                                blob_dataset_dir, "--set", "stop.threshold=null", "--set", "stop.max_epochs=2",
                                "--no-analyze", "--dashboard", "--storage", str(tmp_path / "sweeps"), "--name", "s"],
                               stdout=out_file, stderr=err_file, env=env)
        try:
            wait_until(lambda: sample(lambda: not unseen()), 300, "a listening socket of each of Ray's processes",
                       interval_s=0.2)
        except TimeoutError:
            pass  # asserted below, naming the processes not seen
        gate.open()
        wait_until(lambda: sample(lambda: run.poll() is not None), 300, "the sweep to end", interval_s=0.2)
    out, err = stdout.read_text(), stderr.read_text()
    assert run.returncode == 0, out[-3000:] + err[-3000:]
    outside = sorted((ip, port, name[:120]) for ip, port, name in seen if not is_loopback(ip))
    assert not outside, outside
    assert not unseen(), f"no listening socket of {unseen()}: {sorted(seen)}"
    assert mode(token) == 0o600 and token.read_text() == "ab" * 32  # Ray used it, did not replace it
    assert "~/.ray/auth_token" in err and "0644" in err and "0600" in err
    assert re.search(r"dashboard: http://127\.0\.0\.1:\d+\ntoken: .*`ray get-auth-token`", out)
