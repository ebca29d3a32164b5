"""What a sweep's job script runs on its nodes besides the sweep (tune_jobs.slurm.job writes the calls).

    python -m tune_jobs.slurm.in_job token "$RAY_AUTH_TOKEN_PATH"        # a new token, 0600 from the start
    python -m tune_jobs.slurm.in_job node-ip                             # "10.0.0.5": this node's Slurm address
    python -m tune_jobs.slurm.in_job ray-start --head --temp-dir=/tmp/ray-42          # a Ray node, as a job step
    python -m tune_jobs.slurm.in_job head-address /tmp/ray-42 --timeout-s=120 --steps 811   # "10.0.0.5:41233"
    python -m tune_jobs.slurm.in_job ray-start --address=10.0.0.5:41233 --temp-dir=/tmp/ray-42
    python -m tune_jobs.slurm.in_job wait 10.0.0.5:41233 --nodes=2 --timeout-s=120 --steps 811 812

Each prints one `error: ...` line and exits 1 where it fails, which ends the job (`set -e`).
`ray-start` runs `ray start --block` as a job step, telling Ray what Slurm granted this job on this
node, read there and then (`granted`): the CPUs (less one on the head's node, for the sweep's
driver and Ray's GCS), the GPUs and the memory. It starts Ray at this node's Slurm address
(`node-ip`: its NodeAddr, or its name resolved where `scontrol show node` is hidden), since Ray
left to itself takes the address of the default route's interface, which on a node with Ethernet
and InfiniBand (or no default route) need not be the one the other nodes reach. Ray binds every
port itself (the head's GCS on port 0: the kernel's choice, so two jobs on one node never race for
one), and the head writes its address into its temp dir, where `head-address` reads it (Ray's client
server, unused, takes no port 0: it gets one from the job's id, `client_port`). When the
step ends, it removes Ray's temp dir (the node's own disk) and, on the head, the job's token
(RAY_AUTH_TOKEN_PATH). The sweep ends the steps as it exits (tune_jobs.slurm.steps: the job script
gives it their srun pids; SIGUSR1 through srun), since Slurm kills a job's steps at
once (SIGKILL, no SIGTERM first) when its script ends; it does send SIGTERM first to every process
of a job that is cancelled, preempted or requeued.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from trainables.cpus import cpu_ranges
from trainables.errors import InputError
from tune_jobs import security
from tune_jobs.cli import Parser
from tune_jobs.slurm import client

POLL_S = 0.5
# How a job step is told to end: Slurm's signals, and SIGUSR1 from the job's sweep through srun (which passes
# SIGUSR1 on to the step's processes, but SIGTERM as SIGKILL)
STEP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)
REMOVE_WITHIN_S = 3.0  # Ray's processes may still write into its temp dir for a moment after `ray start` ends
ADDRESS_FILE = "ray_current_cluster"  # where `ray start --head` writes its GCS address, in its temp dir
OBJECT_STORE_SHARE = 0.3  # of the job's memory on a node, for Ray's object store (Ray's own default share)
OBJECT_STORE_MIN_MB = 75  # Ray's least object store
# What every Ray node of a job gets: a step until the job ends; agents, workers and metrics on ports Ray
# binds itself; no log monitor (the sweep shows no trial output, as `run` without --verbose).
RAY_NODE_ARGS = ("--block", "--dashboard-agent-listen-port=0", "--min-worker-port=0", "--max-worker-port=0",
                 "--include-log-monitor=false", "--disable-usage-stats")
# The head's GCS on a port the kernel picks (reported in ADDRESS_FILE); no dashboard.
HEAD_ARGS = ("--head", "--port=0", "--include-dashboard=false")
# Ray's client server (which the sweep does not use: it joins the GCS) takes no port 0, and Ray's own default
# (10001) would clash between two jobs on a node: a port from the job's id, below Linux's ephemeral ports.
CLIENT_PORTS = range(20000, 30000)


def make_token(path: Path) -> None:
    """A new Ray token in `path`, the file RAY_AUTH_TOKEN_PATH names, created 0600 (an existing one is
    kept, and made 0600 where it is not; InputError where it cannot be)."""
    if security.token_file() != path:
        raise InputError("token", f"{path} is not the file RAY_AUTH_TOKEN_PATH names, which Ray reads")
    if not path.exists():
        security.write_new_token(path)
    security.private_token_file()


@dataclass(frozen=True)
class Granted:
    """What Slurm granted this job on this node, as a job step there sees it."""

    cpus: int  # CPUs (SLURM_CPUS_ON_NODE), at most as many as this step may run on
    cpu_ids: tuple[int, ...]  # the CPUs this step may run on (its affinity: the job's CPUs where Slurm binds)
    gpu_ids: tuple[str, ...]  # CUDA_VISIBLE_DEVICES as Slurm set it, () where it gave no GPU
    memory_mb: int | None  # SLURM_MEM_PER_NODE, or SLURM_MEM_PER_CPU x cpus; None where Slurm sets no limit

    def ray_args(self, head: bool, object_store_share: float = OBJECT_STORE_SHARE) -> list[str]:
        """`ray start` resources: all of this, but one CPU on the head's node (where it has two or more)
        for the sweep's driver and Ray's GCS; the object store `object_store_share` of the memory."""
        args = [f"--num-cpus={self.ray_cpus(head)}", f"--num-gpus={len(self.gpu_ids)}"]
        if self.memory_mb:
            store_mb = max(OBJECT_STORE_MIN_MB, int(self.memory_mb * object_store_share))
            args += [f"--memory={(self.memory_mb - store_mb) * 2**20}", f"--object-store-memory={store_mb * 2**20}"]
        return args

    def ray_cpus(self, head: bool) -> int:
        return self.cpus - 1 if head and self.cpus > 1 else self.cpus

    def describe(self, head: bool) -> str:
        """One line for the step's output: what Ray was told, and why."""
        cpus = self.ray_cpus(head)
        kept = "; one kept for the sweep's driver" if cpus < self.cpus else \
            ("; none left for the sweep's driver: ask for one more with --cpus-per-task" if head else "")
        gpus = f"GPU(s) {','.join(self.gpu_ids)}" if self.gpu_ids else "no GPU"
        memory = f"{self.memory_mb} MB" if self.memory_mb else "no memory limit"
        return (f"{cpus} of {self.cpus} CPU(s) granted (CPUs {cpu_ranges(self.cpu_ids)}{kept}), {gpus}, "
                f"{memory}")


def granted(env: Mapping[str, str] | None = None, cpu_ids: set[int] | None = None) -> Granted:
    """What Slurm granted this job on this node, read in a job step there (`env`: os.environ; `cpu_ids`:
    this process's affinity); InputError outside a Slurm job."""
    env = os.environ if env is None else env
    cpu_ids = os.sched_getaffinity(0) if cpu_ids is None else cpu_ids
    if not env.get("SLURM_CPUS_ON_NODE", "").isdigit():
        raise InputError("node", "SLURM_CPUS_ON_NODE is not set: run this in a Slurm job step")
    cpus = min(int(env["SLURM_CPUS_ON_NODE"]), len(cpu_ids))
    gave_gpus = any(env.get(key, "") not in ("", "0") for key in ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS",
                                                                  "SLURM_GPUS_ON_NODE"))
    gpu_ids = tuple(i for i in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if i.strip()) if gave_gpus else ()
    memory_mb = None
    if env.get("SLURM_MEM_PER_NODE", "").isdigit():
        memory_mb = int(env["SLURM_MEM_PER_NODE"])
    elif env.get("SLURM_MEM_PER_CPU", "").isdigit():
        memory_mb = int(env["SLURM_MEM_PER_CPU"]) * int(env["SLURM_CPUS_ON_NODE"])
    return Granted(cpus, tuple(sorted(cpu_ids)), gpu_ids, memory_mb or None)


def ip_address(host: str) -> str:
    """`host` (a name the node resolves, or an address) as an IP address: IPv4 where it has one."""
    try:
        found = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise InputError("node", f"{host}: this node cannot resolve its Slurm address ({exc})") from None
    return min(found, key=lambda info: info[0] != socket.AF_INET)[4][0]


def node_ip(node: str | None = None) -> str:
    """The IP address of this node (`node`: SLURMD_NODENAME) as Slurm reaches it: its NodeAddr, resolved;
    where Slurm does not show it (`PrivateData=nodes` hides nodes from users), the node's name resolved."""
    node = node or os.environ.get("SLURMD_NODENAME", "")
    if not node:
        raise InputError("node", "SLURMD_NODENAME is not set: run this in a Slurm job")
    done = client.run(["scontrol", "-o", "show", "node", node])
    address = client.parse_fields(done.stdout.strip()).get("NodeAddr") if done.returncode == 0 else None
    return ip_address(address or node)


def run_then_remove(command: Sequence[str], temp_dir: Path | None, token: Path | None = None) -> int:
    """Run `command` until it ends, passing on each signal that ends a job step (once: Slurm may signal
    every process of the step itself); then remove `temp_dir`. The file `token` goes as soon as such a
    signal comes (the job's Ray is ending: Slurm may kill the step before `command` has ended), or as
    `command` ends. `command`'s exit code."""
    child = subprocess.Popen(list(command))
    passed: set[int] = set()

    def pass_on(signum, _frame) -> None:
        if token is not None:
            token.unlink(missing_ok=True)
        if signum not in passed:
            passed.add(signum)
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGTERM if signum == signal.SIGUSR1 else signum)

    before = {sig: signal.signal(sig, pass_on) for sig in STEP_SIGNALS}
    try:
        code = child.wait()
        return code if code >= 0 else 128 - code  # ended by a signal: as a shell reports it
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
        if temp_dir is not None:
            remove_tree(temp_dir)
        if token is not None:
            token.unlink(missing_ok=True)


def remove_tree(path: Path) -> None:
    """Remove `path` and everything in it, trying again for a moment where processes still add files."""
    deadline = time.monotonic() + REMOVE_WITHIN_S
    while True:
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            print(f"ray: removed {path}", flush=True)
            return
        if time.monotonic() > deadline:
            print(f"ray: could not remove all of {path}", flush=True)
            return
        time.sleep(0.1)


def ray_start(head_address: str | None, temp_dir: Path) -> int:
    """`ray start` as this node's job step: the head (`head_address` None) or a worker joining it, with
    what Slurm granted here (see the module docstring); its exit code once it ends."""
    env = os.environ
    share = granted(env)
    head = head_address is None
    print(f"ray: {env.get('SLURMD_NODENAME', socket.gethostname())}{' (head)' if head else ''}: "
          f"{share.describe(head)}", flush=True)
    store_share = float(env.get("RAY_DEFAULT_OBJECT_STORE_MEMORY_PROPORTION", OBJECT_STORE_SHARE))
    role = [*HEAD_ARGS, f"--ray-client-server-port={client_port(env.get('SLURM_JOB_ID', ''))}"] if head else \
        [f"--address={head_address}"]
    command = ["ray", "start", f"--node-ip-address={node_ip()}", f"--temp-dir={temp_dir}", *RAY_NODE_ARGS,
               *share.ray_args(head, store_share), *role]
    token = env.get("RAY_AUTH_TOKEN_PATH") if head else None  # the job's: of no use once its head has ended
    return run_then_remove(command, temp_dir, Path(token) if token else None)


def client_port(job_id: str) -> int:
    """The port of the head's Ray client server: one of CLIENT_PORTS, from the job's id (two jobs running
    on one node at once have ids CLIENT_PORTS apart only after as many jobs in between)."""
    return CLIENT_PORTS[int(job_id) % len(CLIENT_PORTS)] if job_id.isdigit() else CLIENT_PORTS[0]


def head_address(temp_dir: Path, timeout_s: float, steps: Sequence[int] = ()) -> str:
    """The head's GCS address ("IP:PORT"), once `ray start --head` has written it into `temp_dir` (a file
    from before this call, as a requeued job finds after a crash, is not it) and the GCS listens there.
    RuntimeError after `timeout_s`, or at once where one of the `steps` ends."""
    path = temp_dir / ADDRESS_FILE
    since = time.time() - 1.0  # the file's time, as the node's clock and its filesystem keep it
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            address = path.read_text().strip() if path.stat().st_mtime >= since else ""
        except OSError:
            address = ""
        host, _, port = address.rpartition(":")
        if port.isdigit():
            with contextlib.suppress(OSError):
                socket.create_connection((host, int(port)), timeout=POLL_S).close()
                return address
        check_steps(steps, "the Ray head's address", deadline, timeout_s)


def check_steps(steps: Sequence[int], what: str, deadline: float, timeout_s: float) -> None:
    """While waiting for `what`: RuntimeError where one of the `ray start` steps has ended, or after the
    deadline; else sleep a poll's time."""
    if any(step_ended(pid) for pid in steps):
        raise RuntimeError(f"a `ray start` step ended while waiting for {what}; its output is in "
                           "JOBID-ray-NODE.out beside this job's output")
    if time.monotonic() > deadline:
        raise RuntimeError(f"timed out after {timeout_s:.0f} s waiting for {what} (raise --join-timeout-s "
                           "where Ray's imports from a shared filesystem are slow); Ray's output is in "
                           "JOBID-ray-NODE.out beside this job's output")
    time.sleep(POLL_S)


def step_ended(pid: int) -> bool:
    """Whether the job step whose `srun` has this pid (a child of the job script) has ended."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except (OSError, IndexError):
        return True
    return state == "Z"  # ended; the job script reaps it later


def wait_for_nodes(address: str, nodes: int, timeout_s: float, steps: Sequence[int] = ()) -> list[dict]:
    """Join the Ray cluster at `address` and poll until `nodes` nodes are alive; return them. RuntimeError
    once `timeout_s` has passed, or as soon as one of the `steps` (the `ray start` steps) ends."""
    deadline = time.monotonic() + timeout_s
    import ray

    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    try:
        while len(alive := [n for n in ray.nodes() if n.get("Alive")]) < nodes:
            check_steps(steps, f"{nodes} Ray nodes ({len(alive)} joined)", deadline, timeout_s)
        return alive
    finally:
        ray.shutdown()


def describe_node(node: dict) -> str:
    """"node1 (10.0.0.5: 7 CPUs, 4 GPUs)": a Ray node (ray.nodes()) and the resources Ray has there."""
    resources = node.get("Resources", {})
    return (f"{node.get('NodeManagerHostname', '?')} ({node.get('NodeManagerAddress', '?')}: "
            f"{resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = Parser(prog="python -m tune_jobs.slurm.in_job", description=__doc__,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    steps = parser.add_subparsers(dest="step", required=True)
    token = steps.add_parser("token", help="make this job's Ray token (0600)")
    token.add_argument("path", type=Path)
    steps.add_parser("node-ip", help="print this node's IP address as Slurm reaches it (its NodeAddr)")
    start = steps.add_parser("ray-start", help="`ray start` with what Slurm granted on this node, until the step "
                                               "ends; then its temp dir (and on the head, the token) removed")
    role = start.add_mutually_exclusive_group(required=True)
    role.add_argument("--head", action="store_true", help="the head (on the job's first node)")
    role.add_argument("--address", help="a worker joining the head at this address")
    start.add_argument("--temp-dir", type=Path, required=True, help="Ray's temp dir, on the node's own disk")
    address = steps.add_parser("head-address", help="wait for the head's address in its temp dir; print it")
    address.add_argument("temp_dir", type=Path)
    wait = steps.add_parser("wait", help="wait until the Ray cluster has all its nodes")
    wait.add_argument("address")
    wait.add_argument("--nodes", type=int, required=True)
    for waiting in (address, wait):
        waiting.add_argument("--timeout-s", type=float, required=True)
        waiting.add_argument("--steps", type=int, nargs="*", default=[], help="pids of the `ray start` steps' srun")
    args = parser.parse_args(argv)
    try:
        if args.step == "token":
            make_token(args.path)
        elif args.step == "node-ip":
            print(node_ip())
        elif args.step == "ray-start":
            return ray_start(None if args.head else args.address, args.temp_dir)
        elif args.step == "head-address":
            print(head_address(args.temp_dir, args.timeout_s, args.steps))
        else:
            start_s = time.monotonic()
            alive = wait_for_nodes(args.address, args.nodes, args.timeout_s, args.steps)
            print(f"ray: {len(alive)} node(s) up after {time.monotonic() - start_s:.1f} s: "
                  f"{', '.join(sorted(map(describe_node, alive)))}", flush=True)
    except InputError as exc:
        print(f"error: {exc.where}: {exc.problem}", file=sys.stderr)
        return 1
    except RuntimeError as exc:
        print(f"error: ray: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
