"""Hosts with their own addresses on one machine: network namespaces on a bridge (root only).

    with Network("isw", "10.91.0", ["head", "w1", "w2"]) as net:   # skips the test where it cannot
        net.address("w1")                      # "10.91.0.12"; the root namespace is net.gateway, .1
        net.popen("w1", [...], env=..., hostname="w1")   # a process on host w1 (own UTS with hostname)
        net.cut("w1"); net.restore("w1")       # its link to the bridge down, then up again

Each host is a namespace `PREFIX-HOST` with a veth to the bridge `PREFIXbr`, loopback up and a
default route via the bridge (Ray guesses a node's address from the default route). The root
namespace holds the bridge's address (`gateway`), so tests can run drivers and CLIs from it.
Processes enter the host with `nsenter --net=` (`ip netns exec` remounts /sys, which hides the
cgroup tree from daemons such as slurmd). Everything is removed on exit, also when a test fails,
and what an earlier, killed run left under the same prefix is removed first. Only addresses
inside these namespaces are used; all hosts share this machine's filesystem and process table.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

NETNS_DIR = Path("/run/netns")


class Unavailable(RuntimeError):
    """Network namespaces cannot be made here (not root, no iproute2, or not permitted)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def require_root_netns() -> None:
    """Raise Unavailable with the reason unless this process can make network namespaces."""
    if os.geteuid() != 0:
        raise Unavailable("needs root to make network namespaces (CI runs as root)")
    try:
        probe = f"isw-probe-{os.getpid()}"
        made = _ip("netns", "add", probe, check=False)
        if made.returncode != 0:
            raise Unavailable(f"`ip netns add` failed: {made.stderr.strip()}")
        _ip("netns", "del", probe, check=False)
    except FileNotFoundError:
        raise Unavailable("`ip` (iproute2) is not installed") from None


class Network:
    """A bridge and one network namespace per host name (see the module docstring)."""

    def __init__(self, prefix: str, subnet: str, hosts: list[str], first_host: int = 11) -> None:
        if len(prefix) > 8:
            raise ValueError("prefix: at most 8 characters (Linux interface names hold 15)")
        self.prefix, self.subnet = prefix, subnet
        self.bridge = f"{prefix}br"
        self.gateway = f"{subnet}.1"
        self.hosts = {name: f"{subnet}.{first_host + i}" for i, name in enumerate(hosts)}
        self._veth = {name: f"{prefix}v{i}" for i, name in enumerate(hosts)}
        self._procs: list[subprocess.Popen] = []

    # -- set up and tear down
    def __enter__(self) -> "Network":
        require_root_netns()
        self.remove()  # what a killed run left
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for name, address in self.hosts.items():
                ns, outer = self.namespace(name), self._veth[name]
                _ip("netns", "add", ns)
                _ip("link", "add", outer, "type", "veth", "peer", "name", "eth0", "netns", ns)
                _ip("link", "set", outer, "master", self.bridge, "up")
                _ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
                _ip("-n", ns, "link", "set", "eth0", "up")
                _ip("-n", ns, "link", "set", "lo", "up")
                _ip("-n", ns, "route", "add", "default", "via", self.gateway)
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def remove(self) -> None:
        """End every process in this network's namespaces, then remove them and the bridge."""
        for proc in self._procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        for ns in [p.name for p in NETNS_DIR.glob(f"{self.prefix}-*")] if NETNS_DIR.is_dir() else []:
            self.kill_all(ns)
            _ip("netns", "del", ns, check=False)
        _ip("link", "del", self.bridge, check=False)
        # A namespace is destroyed (its veth with it) once nothing refers to it any more; a socket
        # can keep it a while after its processes are gone: the outer ends go now, by name.
        for line in _ip("-o", "link", "show", check=False).stdout.splitlines():
            name = line.split(":", 2)[1].strip().split("@", 1)[0] if line.count(":") >= 2 else ""
            if name.startswith(f"{self.prefix}v") and name[len(self.prefix) + 1:].isdigit():
                _ip("link", "del", name, check=False)
        for proc in self._procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        self._procs.clear()

    @staticmethod
    def kill_all(ns: str) -> None:
        """SIGKILL every process whose network namespace is `ns`."""
        for _ in range(3):
            pids = [int(p) for p in _ip("netns", "pids", ns, check=False).stdout.split()]
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)

    # -- use
    def namespace(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    def address(self, host: str) -> str:
        return self.hosts[host]

    def command(self, host: str, args: list[str], hostname: str | None = None) -> list[str]:
        """`args` as run on `host`; with `hostname`, in a UTS namespace of its own named so."""
        enter = ["nsenter", f"--net={NETNS_DIR / self.namespace(host)}"]
        if hostname is None:
            return [*enter, *args]
        script = 'hostname "$0" && exec "$@"'
        return [*enter, "unshare", "--uts", "sh", "-c", script, hostname, *args]

    def popen(self, host: str, args: list[str], hostname: str | None = None, **kwargs) -> subprocess.Popen:
        """Start `args` on `host` in a new session; ended (with its group) when the network is removed."""
        proc = subprocess.Popen(self.command(host, args, hostname), start_new_session=True, **kwargs)
        self._procs.append(proc)
        return proc

    def run(self, host: str, args: list[str], **kwargs) -> subprocess.CompletedProcess:
        """Run `args` on `host` to completion (output captured as text)."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        return subprocess.run(self.command(host, args), **kwargs)

    def cut(self, host: str) -> None:
        """Cut `host` off the network (its link to the bridge goes down); processes keep running."""
        _ip("link", "set", self._veth[host], "down")

    def restore(self, host: str) -> None:
        """Bring `host`'s link back up."""
        _ip("link", "set", self._veth[host], "master", self.bridge, "up")
