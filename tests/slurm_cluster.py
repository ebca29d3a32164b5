"""A real Slurm on one machine: a controller and compute nodes, each node its own host (root only).

    with SlurmCluster("isslm", "10.88.0", ["node1", "node2"], cpus=2, gpus=2) as slurm:  # Unavailable where it cannot
        slurm.env                      # os.environ with SLURM_CONF: for sbatch, squeue, scontrol, ...
        slurm.tmpfs                    # the nodes' TmpFS: each node's own disk (node_tmpfs), at this path
        slurm.job_state("12")          # "RUNNING", "COMPLETED", ... as scontrol reports it

Debian's slurm-wlm (installed with apt-get where missing, as root; where that cannot be, the tests
skip, or fail with INSTRUMENT_SWEEP_REQUIRE_SLURM=1: `unavailable`). Everything else lives in one
temp dir and ends with the cluster, also when a test fails: munged on its own socket (the
machine's /run/munge is not touched), slurmctld in the root network namespace with its own UTS
hostname, and one slurmd per node in that node's network namespace (tests/netns.py) with its own
UTS hostname, so a job's processes on each node see that node's address only, and its own TmpFS (a
directory of its own bound at the TmpFS path, as each node of a site has its own local disk there).

Configured as strictly as common sites run Slurm, not as leniently as a test could: CPUs bound and
processes tracked by cgroups (`task/cgroup,task/affinity`, `proctrack/cgroup`, cgroup.conf's
ConstrainCores, ConstrainDevices and ConstrainRAMSpace, on this machine's cgroup v1; each slurmd
roots its cgroups at slurm_NODE), cores and memory as consumable resources (`CR_Core_Memory`, a
default share of memory per CPU), typed GPUs (`Gres=gpu:fake:2`), nodes hidden from users
(`PrivateData=nodes`), jobs not requeueable unless they ask (`JobRequeue=0`). GPUs are logical:
gres files that are character devices made with mknod (Slurm rejects regular files and opens none
of them), so a GPU request sets CUDA_VISIBLE_DEVICES as on a GPU node (under ConstrainDevices,
numbered from 0 in each job). No accounting (`accounting_storage/none`: sacct reports nothing). A
job's processes have Slurm's default 30 s (KillWait) between SIGTERM and SIGKILL as it ends; a
requeued job waits REQUEUE_DELAY_S (Slurm's default: 120 s) before it starts again. Each slurmd,
and so every job process on its node, sees its own /etc/hosts naming the nodes and the controller
(bind-mounted in a mount namespace of its own), as a cluster's DNS would: without it every lookup
of a node's own hostname waits 10 s for a DNS server the namespaces cannot reach, and Ray looks
its hostname up several times as it starts. The machine's /etc/hosts is untouched. The config is
readable by every user, as a site's is, so jobs may run as another user (`sbatch --uid`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from netns import Network, Unavailable

REQUIRE_ENV = "INSTRUMENT_SWEEP_REQUIRE_SLURM"  # "1" (CI): a Slurm that cannot be had fails the tests
PACKAGES = ["slurm-wlm", "munge"]
DAEMONS = ["slurmctld", "slurmd", "munged", "sbatch"]
CONTROLLER = "ctl"
START_TIMEOUT_S = 300.0  # a bound for daemons stuck starting, on a loaded machine (they take seconds)
GPU_TYPE = "fake"  # the nodes' GPUs are typed, as most sites declare them (gres.conf Type=)
MEM_PER_CPU_MB = 3000  # each node's memory is 3000 MB a CPU, a job's default share (DefMemPerCPU)
CGROUP_ROOT = Path("/sys/fs/cgroup")  # cgroup v1: one hierarchy per controller
CGROUP_CONTROLLERS = ("cpuset", "memory", "devices", "freezer", "cpu", "cpuacct")
REQUEUE_DELAY_S = 10  # a requeued job waits this long before it starts again (cred_expire; Slurm: 120)


def unavailable(reason: str):
    """Skip the Slurm tests, saying why; or, where REQUIRE_ENV is "1" (CI), fail them: there they must run."""
    import pytest

    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{REQUIRE_ENV}=1, but no Slurm here: {reason}", pytrace=False)
    pytest.skip(reason)


def install_slurm() -> None:
    """Debian's Slurm and munge (about 10 s), where they are missing; Unavailable where that cannot be done."""
    if all(shutil.which(d) or Path("/usr/sbin", d).exists() for d in DAEMONS):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise Unavailable(f"Slurm is not installed, and only root with apt-get installs it here: "
                          f"apt-get install -y {' '.join(PACKAGES)}")
    install = ["apt-get", "install", "-y", "-q", "-o", "DPkg::Lock::Timeout=120", *PACKAGES]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    done = subprocess.run(install, capture_output=True, text=True, env=env)
    if done.returncode != 0:  # a fresh machine may have no package lists yet
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env)
        done = subprocess.run(install, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise Unavailable(f"`{' '.join(install)}` failed: {done.stderr.strip()[-500:]}")


class SlurmCluster:
    """A controller on the bridge's address and one slurmd per node (see the module docstring)."""

    def __init__(self, prefix: str, subnet: str, nodes: list[str], cpus: int = 2, gpus: int = 2,
                 partition: str = "debug") -> None:
        self.nodes, self.cpus, self.gpus, self.partition = nodes, cpus, gpus, partition
        self.network = Network(prefix, subnet, nodes)
        self.dir = Path()
        self._daemons: list[subprocess.Popen] = []

    # -- set up and tear down
    def __enter__(self) -> "SlurmCluster":
        install_slurm()
        self.network.__enter__()  # removes what a killed run left in its namespaces
        try:
            self._end_leftovers()
            self.dir = Path(tempfile.mkdtemp(prefix=self.dir_prefix, dir="/tmp"))  # short: TmpFS below
            self.dir.chmod(0o755)  # slurm.conf readable by every user, as a site's is
            self._write_config()
            self._start_munged()
            self._start_daemons()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for daemon in reversed(self._daemons):  # slurmctld and munged (the slurmds go with their namespaces)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(daemon.pid, signal.SIGKILL)
        self.network.remove()  # every process of the nodes: slurmd, slurmstepd, the jobs and their Ray
        for daemon in self._daemons:
            with contextlib.suppress(subprocess.TimeoutExpired):
                daemon.wait(timeout=5)
        self._daemons.clear()
        self._remove_cgroups()
        if self.dir.name:
            shutil.rmtree(self.dir, ignore_errors=True)

    def _remove_cgroups(self) -> None:
        """The cgroups the slurmds made (slurm_NODE in each controller's hierarchy), deepest first, once
        their processes have ended with the namespaces."""
        for root in (CGROUP_ROOT / controller / f"slurm_{node}" for controller in CGROUP_CONTROLLERS
                     for node in self.nodes):
            if root.is_dir():
                for path in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                    with contextlib.suppress(OSError):
                        path.rmdir()
                with contextlib.suppress(OSError):
                    root.rmdir()

    @property
    def dir_prefix(self) -> str:
        return f"{self.network.prefix}-"

    def _end_leftovers(self) -> None:
        """What a killed run left outside its namespaces: its munged and slurmctld, found by the temp dir
        they name (in their arguments or SLURM_CONF), and that dir."""
        mark = f"/tmp/{self.dir_prefix}".encode()
        for proc in Path("/proc").iterdir():
            try:
                if not proc.name.isdigit() or (proc / "comm").read_text().strip() not in ("munged", "slurmctld"):
                    continue
                named = mark in (proc / "cmdline").read_bytes() or b"SLURM_CONF=" + mark in (proc / "environ").read_bytes()
            except OSError:
                continue
            if named:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(int(proc.name), signal.SIGKILL)
        for old in Path("/tmp").glob(f"{self.dir_prefix}*"):
            shutil.rmtree(old, ignore_errors=True)
        self._remove_cgroups()

    @property
    def conf(self) -> Path:
        return self.dir / "slurm.conf"

    @property
    def tmpfs(self) -> Path:
        """Slurm's TmpFS, as a job on any node sees it: that node's own directory (`node_tmpfs`)."""
        return self.dir / "tmp"

    def node_tmpfs(self, node: str) -> Path:
        """What a job on `node` sees at `tmpfs`, as this machine sees it."""
        return self.dir / "node-tmp" / node

    @property
    def env(self) -> dict:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def _write_config(self) -> None:
        d = self.dir
        for sub in ("state", "spool", "log", "tmp", "dev"):
            (d / sub).mkdir()
        for node in self.nodes:
            self.node_tmpfs(node).mkdir(parents=True)
        for i in range(self.gpus):  # NVIDIA's major number; nothing opens them
            os.mknod(d / "dev" / f"nvidia{i}", 0o600 | 0o020000, os.makedev(195, i))
        nodes = "\n".join(f"NodeName={n} NodeAddr={self.network.address(n)} NodeHostname={n} CPUs={self.cpus} "
                          f"RealMemory={self.cpus * MEM_PER_CPU_MB} Gres=gpu:{GPU_TYPE}:{self.gpus} State=UNKNOWN" for n in self.nodes)
        self.conf.write_text(f"""\
ClusterName={self.network.prefix}
SlurmctldHost={CONTROLLER}({self.network.gateway})
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={d}/munge.socket,cred_expire={REQUEUE_DELAY_S}
CredType=cred/munge
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool/%n
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd-%n.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd-%n.log
TmpFS={self.tmpfs}
ProctrackType=proctrack/cgroup
TaskPlugin=task/cgroup,task/affinity
PrivateData=nodes
JobRequeue=0
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU={MEM_PER_CPU_MB}
ReturnToService=2
KillWait=30
GresTypes=gpu
{nodes}
PartitionName={self.partition} Nodes={','.join(self.nodes)} Default=YES MaxTime=INFINITE State=UP
""")
        names = [f"{self.network.gateway} {CONTROLLER}", *(f"{self.network.address(n)} {n}" for n in self.nodes)]
        (d / "hosts").write_text("\n".join(["127.0.0.1 localhost", *names]) + "\n")
        (d / "gres.conf").write_text(f"AutoDetect=off\nNodeName={','.join(self.nodes)} Name=gpu Type={GPU_TYPE} "
                                     f"File={d}/dev/nvidia[0-{self.gpus - 1}]\n")
        (d / "cgroup.conf").write_text("CgroupPlugin=autodetect\nConstrainCores=yes\nConstrainDevices=yes\n"
                                       "ConstrainRAMSpace=yes\n")

    def _start_munged(self) -> None:
        d = self.dir
        self._daemons.append(subprocess.Popen(
            ["munged", "--foreground", "--force", f"--socket={d}/munge.socket", f"--pid-file={d}/munged.pid",
             f"--log-file={d}/log/munged.log", f"--seed-file={d}/munged.seed"],
            start_new_session=True, stdout=subprocess.DEVNULL, stderr=(d / "log" / "munged.out").open("w")))
        self._wait(lambda: (d / "munge.socket").exists(), "munged")

    def _start_daemons(self) -> None:
        log = (self.dir / "log" / "daemons.out").open("w")
        hostname = 'hostname "$0" && exec "$@"'
        self._daemons.append(subprocess.Popen(
            ["unshare", "--uts", "sh", "-c", hostname, CONTROLLER, "slurmctld", "-D", "-i"],
            env=self.env, start_new_session=True, stdout=log, stderr=subprocess.STDOUT))
        # Each slurmd (and every job process on its node) in a mount namespace of its own: the nodes' /etc/hosts,
        # and its own TmpFS.
        own_mounts = 'mount --bind "$0" /etc/hosts && mount --bind "$1" "$2" && shift 2 && exec "$@"'
        for node in self.nodes:
            self.network.popen(node, ["unshare", "--mount", "sh", "-c", own_mounts, str(self.dir / "hosts"),
                                      str(self.node_tmpfs(node)), str(self.tmpfs), "slurmd", "-D"],
                               hostname=node, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self._wait(self._nodes_idle, "the nodes to be idle")

    def _nodes_idle(self) -> bool:
        out = self.run(["sinfo", "-h", "-N", "-o", "%N %t"])
        states = dict(line.split() for line in out.stdout.splitlines() if line.strip())
        return all(states.get(n) == "idle" for n in self.nodes)

    def _wait(self, ready, what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ready():
            for daemon in self._daemons:
                if daemon.poll() is not None:
                    raise RuntimeError(f"{daemon.args[0]} ended ({daemon.returncode}) while waiting for {what}; "
                                       f"logs in {self.dir / 'log'}: {self.logs()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}; logs: {self.logs()[-3000:]}")
            time.sleep(0.2)

    # -- use
    def run(self, args: list[str], **kwargs) -> subprocess.CompletedProcess:
        """A Slurm client command against this cluster (output captured as text)."""
        return subprocess.run(args, capture_output=True, text=True, env=self.env, timeout=180, **kwargs)

    def job_state(self, job_id: str) -> str:
        """The job's JobState as scontrol reports it ("" once slurmctld has forgotten it)."""
        return self._job_field(job_id, "JobState")

    def job_nodes(self, job_id: str, timeout_s: float = 600) -> list[str]:
        """The nodes Slurm gave the job, once it has started."""
        deadline = time.monotonic() + timeout_s
        while not (nodes := self._job_field(job_id, "NodeList")) or nodes == "(null)":
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} has no nodes after {timeout_s:.0f} s")
            time.sleep(0.5)
        return self.run(["scontrol", "show", "hostnames", nodes]).stdout.split()

    def job_span(self, job_id: str) -> tuple[str, str]:
        """(StartTime, EndTime) of a job Slurm still knows, as scontrol prints them (ISO, to the second)."""
        return self._job_field(job_id, "StartTime"), self._job_field(job_id, "EndTime")

    def _job_field(self, job_id: str, key: str) -> str:
        out = self.run(["scontrol", "-o", "show", "job", job_id]).stdout
        return next((f.split("=", 1)[1] for f in out.split() if f.startswith(f"{key}=")), "")

    def logs(self) -> str:
        return "\n".join(f"== {p.name}\n{p.read_text(errors='replace')}" for p in sorted((self.dir / "log").glob("*")))
