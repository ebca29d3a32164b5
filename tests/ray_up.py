"""`ray up` for real: Ray's cluster launcher, its on-premise (`local`) provider, over SSH onto hosts of their own.

    with LaunchHosts("isup", "10.90.0", ["w1"]) as hosts:        # skips, or fails where REQUIRE_ENV=1
        hosts.image_env = {"head": {...}, "w1": {...}}           # what each instance gives its logins (before `up`)
        config = hosts.launch_config(CLUSTER_YAML, storage=...)   # cluster.yaml, provider/auth/node types swapped
        hosts.ray("up", "-y", config)                            # Ray's CLI on the laptop, as a user types it
        hosts.sh("head", "ps -e")                                # a command on a host, inside its namespaces

Hosts: `laptop` (where a user runs `ray up`: the project checkout as working directory, an SSH key,
~/.ray/auth_token), `head` and each worker. Each is a network namespace on a bridge (tests/netns.py)
with a PID and a mount namespace of its own (`unshare --pid --mount --fork --mount-proc`), so `ps`,
and so `ray stop`, see that host's processes only; its own UTS hostname, /etc/hosts and
/etc/passwd; its own HOME (root's: /home/root), /tmp and /run, bound from directories of the
fixture. `shared` (the fixture's directory) is seen by every host at the same path, as an NFS
mount would be. The head and the workers run sshd
(Debian's openssh-server; it and rsync are installed with apt-get where missing, as root) as the first
process of their PID namespace; the laptop a `sleep`. A command enters a host with nsenter.

The image of the head and the workers: /opt/pytorch (a tmpfs over /opt in the host) is a venv that
reaches the project's environment (torch, Ray and the project's dependencies, as the Deep Learning
AMI's PyTorch venv ships its own) but not the project, which cluster.yaml's setup commands install
there (`pip install -e`, for real); with a `ray` script. The namespaces reach no network beyond the
bridge, so that venv's pip is offline: no index, the build backend (hatchling) from a wheelhouse the
fixture downloads first; dependencies it lacks would fail the install, as a wrong image would.
Everything ends with the block, also when a test fails: every process in the namespaces, the bridge,
the fixture's directory (the hosts' /tmp, homes and venvs with it).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from netns import Network, Unavailable
from processes import RAY_CLI, wait_until

REQUIRE_ENV = "INSTRUMENT_SWEEP_REQUIRE_RAY_UP"  # "1" (CI): hosts that cannot be had fail the tests
PACKAGES = ["openssh-server", "rsync"]
PROJECT = Path(__file__).resolve().parents[1]
LAPTOP = "laptop"
HOME = "/home/root"  # root's home on every host: one of its own
BUILD_BACKEND = ["hatchling", "editables"]  # what pip's isolated build of the project installs


def unavailable(reason: str):
    """Skip, saying why; or, where REQUIRE_ENV is "1" (CI), fail: there these tests must run."""
    import pytest

    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{REQUIRE_ENV}=1, but `ray up` cannot be tested here: {reason}", pytrace=False)
    pytest.skip(reason)


def install_packages() -> None:
    """Debian's sshd and rsync where missing (Unavailable where that cannot be done). Services stay
    stopped: a policy-rc.d refuses their start for the install, where none is there already."""
    if Path("/usr/sbin/sshd").exists() and shutil.which("rsync"):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise Unavailable(f"sshd and rsync are not installed, and only root with apt-get installs them here: "
                          f"apt-get install -y {' '.join(PACKAGES)}")
    policy = Path("/usr/sbin/policy-rc.d")
    ours = not policy.exists()
    if ours:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        install = ["apt-get", "install", "-y", "-q", "-o", "DPkg::Lock::Timeout=300", *PACKAGES]
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        done = subprocess.run(install, capture_output=True, text=True, env=env)
        if done.returncode != 0:  # a fresh machine may have no package lists yet
            subprocess.run(["apt-get", "update", "-q", "-o", "DPkg::Lock::Timeout=300"], capture_output=True, env=env)
            done = subprocess.run(install, capture_output=True, text=True, env=env)
    finally:
        if ours:
            policy.unlink(missing_ok=True)
    if done.returncode != 0:
        raise Unavailable(f"`{' '.join(install)}` failed: {done.stderr.strip()[-500:]}")


class LaunchHosts:
    """A laptop, a head and workers, each a host of its own (see the module docstring)."""

    def __init__(self, prefix: str, subnet: str, workers: list[str], launched: bool = True) -> None:
        """`launched`: the head and the workers run sshd and have the image (for `ray up`); without, they are
        bare hosts like the laptop."""
        self.workers, self.launched = list(workers), launched
        self.nodes = ["head", *self.workers]
        self.net = Network(prefix, subnet, [LAPTOP, *self.nodes])
        self.shared = Path()
        self.image_env: dict[str, dict[str, str]] = {}  # per host: what its logins get from the instance
        self.hidden: dict[str, list[str]] = {}  # per host: shared directories it does not see (an empty tmpfs)
        self._init: dict[str, subprocess.Popen] = {}

    # -- set up and tear down
    def __enter__(self) -> "LaunchHosts":
        for what, path in (("the checkout", PROJECT), ("the tests' Python", Path(sys.prefix))):
            if Path("/tmp") in path.parents:  # each host's /tmp is its own: the hosts would not see it
                raise Unavailable(f"{what} is under /tmp ({path}), which every host here has a copy of its own of; "
                                  "clone the project elsewhere")
        if self.launched:
            install_packages()
        self.net.__enter__()
        try:
            self.shared = Path(tempfile.mkdtemp(prefix="37up-", dir="/tmp"))
            self.shared.chmod(0o755)
            if not self.launched:
                return self
            wheels = self.shared / "wheels"
            got = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "-d", str(wheels), *BUILD_BACKEND],
                                 capture_output=True, text=True)
            if got.returncode != 0:
                raise Unavailable(f"cannot download the build backend ({' '.join(BUILD_BACKEND)}): "
                                  f"{got.stderr.strip()[-300:]}")
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.shared / "id_ed25519")],
                           check=True)
        except BaseException:
            self.__exit__()
            raise
        return self

    def start(self) -> None:
        """Start every host: its namespaces, its files, sshd (the laptop: the SSH key)."""
        for host in self.net.hosts:
            self._start_host(host)
        if not self.launched:
            return
        laptop_ssh = self.home(LAPTOP) / ".ssh"
        laptop_ssh.mkdir(mode=0o700)
        for name in ("id_ed25519", "id_ed25519.pub"):
            shutil.copy(self.shared / name, laptop_ssh / name)
        for host in self.nodes:
            wait_until(lambda: self.sh(host, f"exec 3<>/dev/tcp/{self.net.address(host)}/22", check=False)
                       .returncode == 0, 180, f"sshd on {host}")

    def __exit__(self, *exc) -> None:
        try:
            self.net.remove()  # every process on the hosts (their PID namespaces end with their first)
        finally:
            for proc in self._init.values():
                if proc.poll() is None:
                    proc.kill()
            if self.shared.name:
                shutil.rmtree(self.shared, ignore_errors=True)

    def _start_host(self, host: str) -> None:
        root = self.shared / "hosts" / host
        home, tmp, run = root / "home" / "root", root / "tmp", root / "run"
        for path in (home, tmp, run):
            path.mkdir(parents=True, mode=0o700)
        hosts = "127.0.0.1 localhost\n" + "".join(f"{ip} {name}\n" for name, ip in self.net.hosts.items())
        (root / "hosts").write_text(hosts)
        (root / "resolv.conf").write_text("nameserver 127.0.0.1\n")  # no DNS: a lookup fails at once
        # root's home is the host's own /home/root (this machine's /root, where its Python lives, stays seen)
        passwd = Path("/etc/passwd").read_text().splitlines()
        (root / "passwd").write_text("".join(re.sub(r"^(root:[^:]*:0:0:[^:]*:)/root:", rf"\1{HOME}:", line) + "\n"
                                             for line in passwd))
        lines = [f"export {key}={shlex.quote(value)}" for key, value in self.image_env.get(host, {}).items()]
        (home / ".bashrc").write_text("# the instance's environment\n" + "".join(f"{line}\n" for line in lines))
        shared, inside = str(self.shared), tmp / self.shared.relative_to("/tmp")  # where /tmp's own copy shows it
        script = [
            "set -e", f"hostname {host}",
            f"mount --bind {root}/hosts /etc/hosts", f"mount --bind {root}/resolv.conf /etc/resolv.conf",
            f"mount --bind {root}/passwd /etc/passwd", f"mount --bind {root}/home /home", f"mount --bind {run} /run",
            # /tmp of its own, with the shared directory at its own path in it
            f"mkdir -p {inside}", f"mount --bind {shared} {inside}", f"mount --rbind {tmp} /tmp",
            "mount -t tmpfs tmpfs /opt",
            *(f"mount -t tmpfs tmpfs {path}" for path in self.hidden.get(host, [])),
        ]
        if host == LAPTOP or not self.launched:
            script.append("exec sleep infinity")
        else:
            self._write_sshd_config(host, root)
            script += ["mkdir -p /run/sshd", f"exec /usr/sbin/sshd -D -e -f {root}/sshd_config"]
        log = (root / "init.log").open("w")
        args = ["nsenter", f"--net=/run/netns/{self.net.namespace(host)}", "unshare", "--uts", "--pid", "--mount",
                "--fork", "--mount-proc", "sh", "-c", "\n".join(script)]
        self._init[host] = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(lambda: self._first_process(host) or self._init[host].poll() is not None, 120, f"host {host}")
        if self._init[host].poll() is not None:
            raise RuntimeError(f"host {host} did not start: {(root / 'init.log').read_text()}")
        if host != LAPTOP and self.launched:
            self._make_image(host)

    def _write_sshd_config(self, host: str, root: Path) -> None:
        key = root / "ssh_host_ed25519_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        (root / "sshd_config").write_text(
            f"ListenAddress {self.net.address(host)}\nHostKey {key}\nPidFile none\nUsePAM no\n"
            "PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "AuthorizedKeysFile .ssh/authorized_keys\nSubsystem sftp internal-sftp\n")
        ssh = self.home(host) / ".ssh"
        ssh.mkdir(mode=0o700)
        shutil.copy(self.shared / "id_ed25519.pub", ssh / "authorized_keys")
        (ssh / "authorized_keys").chmod(0o600)

    def _make_image(self, host: str) -> None:
        """/opt/pytorch: a venv reaching the project's environment (not the project), pip offline, `ray`."""
        site = next(p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir())
        version = f"python{sys.version_info.major}.{sys.version_info.minor}"
        ray_script = "#!/opt/pytorch/bin/python3\nimport sys\nfrom ray.scripts.scripts import main\nsys.exit(main())\n"
        self.sh(host, " && ".join([
            f"{shlex.quote(sys.executable)} -m venv --without-pip /opt/pytorch",
            f"echo {shlex.quote(site)} > /opt/pytorch/lib/{version}/site-packages/image.pth",
            f"printf '[global]\\nno-index = true\\nfind-links = {self.shared}/wheels\\n' > /opt/pytorch/pip.conf",
            f"printf {shlex.quote(ray_script)} > /opt/pytorch/bin/ray", "chmod +x /opt/pytorch/bin/ray"]))

    def _first_process(self, host: str) -> int | None:
        """The host's first process (its PID namespace's 1), as this machine numbers it."""
        children = Path(f"/proc/{self._init[host].pid}/task/{self._init[host].pid}/children")
        try:
            found = children.read_text().split()
        except OSError:
            return None
        return int(found[0]) if found else None

    # -- use
    def home(self, host: str) -> Path:
        """`host`'s HOME (root's, there), as this machine sees it."""
        return self.shared / "hosts" / host / "home" / "root"

    def share(self, directory: str, name: str) -> Path:
        """A copy of `directory` in `shared` (as every host sees it: each has a /tmp of its own)."""
        return Path(shutil.copytree(directory, self.shared / name))

    def command(self, host: str, args: list[str], cwd: str = "/") -> list[str]:
        """`args` as run on `host`: in its network, PID, mount and UTS namespaces."""
        return ["nsenter", "-t", str(self._first_process(host)), "-n", "-p", "-m", "-u", f"--wd={cwd}", *args]

    def sh(self, host: str, script: str, check: bool = True, timeout: float = 120, env: dict | None = None,
           cwd: str = "/") -> subprocess.CompletedProcess:
        """A shell script on `host` (root, HOME its own), output captured as text."""
        done = subprocess.run(self.command(host, ["bash", "-c", script], cwd), capture_output=True, text=True,
                              timeout=timeout, env={**self.base_env(), **(env or {})})
        if check and done.returncode != 0:
            raise RuntimeError(f"on {host}: `{script}` exited {done.returncode}:\n{done.stdout[-2000:]}\n"
                               f"{done.stderr[-2000:]}")
        return done

    @staticmethod
    def base_env() -> dict:
        """A login's environment, as far as the tests' processes go: no AWS or Ray variables of whoever runs them."""
        return {**{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_", "INSTRUMENT_SWEEP_"))},
                "HOME": HOME, "PYTHONUNBUFFERED": "1"}

    def laptop(self, *args: str, timeout: float = 600, log: Path | None = None,
               **env: str) -> subprocess.CompletedProcess:
        """`args` on the laptop, in the project's checkout (this interpreter's `ray` and `instrument-sweep`)."""
        out = log.open("w") if log else subprocess.PIPE
        done = subprocess.run(self.command(LAPTOP, list(args), cwd=str(PROJECT)), stdout=out, stderr=subprocess.STDOUT,
                              text=True, timeout=timeout, env={**self.base_env(), **env})
        if log:
            done.stdout = log.read_text()
        return done

    def ray(self, *args: str, timeout: float = 600, log: Path | None = None) -> subprocess.CompletedProcess:
        """Ray's CLI on the laptop (`ray up`, `ray exec`, `ray down`, ...), with Ray's autoscaler v1: under v2
        (`ray up`'s default since Ray 2.50) the on-premise provider launches no worker (Ray 2.60: the head's
        own instance is "no longer found" and each round adds a worker that never starts)."""
        return self.laptop(*RAY_CLI, *args, timeout=timeout, log=log, RAY_UP_enable_autoscaler_v2="0")

    def laptop_popen(self, *args: str, log: Path) -> subprocess.Popen:
        """`args` on the laptop in the background, in the project's checkout."""
        return self.popen(LAPTOP, list(args), log=log, cwd=str(PROJECT))

    def popen(self, host: str, args: list[str], log: Path, env: dict | None = None, cwd: str = "/") -> subprocess.Popen:
        """`args` on `host` in the background, output to `log` (ended with the hosts, as every process in their
        namespaces)."""
        return subprocess.Popen(self.command(host, args, cwd), stdout=log.open("w"), stderr=subprocess.STDOUT,
                                env={**self.base_env(), **(env or {})}, start_new_session=True)

    def launch_config(self, cluster_yaml: Path, storage: str) -> Path:
        """cluster.yaml for these hosts: the on-premise provider with the head's and the workers' addresses,
        root's SSH key, no node types (that provider has its own); STORAGE set as a user sets it.
        Everything else (file mounts, setup and start commands, ...) is cluster.yaml's own."""
        config = yaml.safe_load(cluster_yaml.read_text())
        for key in ("available_node_types", "head_node_type"):
            config.pop(key)
        config["provider"] = {"type": "local", "head_ip": self.net.address("head"),
                              "worker_ips": [self.net.address(w) for w in self.workers]}
        config["auth"] = {"ssh_user": "root", "ssh_private_key": "~/.ssh/id_ed25519"}
        config["max_workers"] = len(self.workers)
        config["setup_commands"] = [c.replace("s3://YOUR-BUCKET/sweeps", storage) for c in config["setup_commands"]]
        path = self.shared / "cluster.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def ps(self, host: str) -> list[str]:
        """The commands running on `host` (`ps` there: its PID namespace), but for the `ps` itself."""
        lines = self.sh(host, "ps -eo args=").stdout.splitlines()
        return [line for line in lines if line.strip() and not line.startswith(("ps -eo", "bash -c ps"))]

    def logs(self) -> str:
        """The tail of each host's own log, and of Ray's logs on the head, for a failing test's message."""
        parts = [f"--- {p}\n" + p.read_text()[-1500:] for p in sorted(self.shared.glob("hosts/*/init.log"))]
        monitor = self.shared / "hosts" / "head" / "tmp" / "ray" / "session_latest" / "logs" / "monitor.out"
        if monitor.exists():
            parts.append(f"--- head monitor.out\n{monitor.read_text()[-3000:]}")
        return "\n".join(parts)

    def wait_for_nodes(self, count: int, timeout_s: float = 400) -> None:
        """Until the head's Ray counts `count` alive nodes (asked on the head, with its token)."""
        code = ("import ray; ray.init(address='auto', logging_level='ERROR'); "
                "print('ALIVE', sum(n['Alive'] for n in ray.nodes()))")
        script = f"source {HOME}/.bashrc >/dev/null 2>&1; python3 -c {shlex.quote(code)}"

        def alive() -> bool:
            out = self.sh("head", script, check=False, timeout=120).stdout
            return f"ALIVE {count}" in out

        try:
            wait_until(alive, timeout_s, f"{count} nodes alive", interval_s=5)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{self.logs()}") from None
