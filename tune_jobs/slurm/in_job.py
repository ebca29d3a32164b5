"""What a sweep's job script runs on its nodes besides Ray and the sweep (tune_jobs.slurm.job writes the calls).

    python -m tune_jobs.slurm.in_job token "$RAY_AUTH_TOKEN_PATH"        # a new token, 0600 from the start
    python -m tune_jobs.slurm.in_job node-ip                             # "10.0.0.5": this node's Slurm address
    python -m tune_jobs.slurm.in_job free-ports 2                        # "41233 38111": free on this node now
    python -m tune_jobs.slurm.in_job ray-start --head --temp-dir=/tmp/ray-42 ...   # a Ray node, as a job step
    python -m tune_jobs.slurm.in_job wait 10.0.0.5:41233 --nodes=2 --timeout-s=120 --steps 811 812

Each prints one `error: ...` line and exits 1 where it fails, which ends the job (`set -e`). `ray-start`
runs `ray start ARGS` at this node's Slurm address (`node-ip`: its NodeAddr, resolved), since Ray left
to itself takes the address of the default route's interface, which on a node with Ethernet and
InfiniBand (or no default route) need not be the one the other nodes reach; when the step ends (the
job ends, and Slurm signals the step), it removes Ray's temp dir (`--temp-dir=`, the node's own disk).
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
from collections.abc import Sequence
from pathlib import Path

from trainables.errors import InputError
from tune_jobs import security
from tune_jobs.cli import Parser
from tune_jobs.slurm import client

POLL_S = 0.5
STEP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)  # how a job step is told to end
REMOVE_WITHIN_S = 3.0  # Ray's processes may still write into its temp dir for a moment after `ray start` ends


def make_token(path: Path) -> None:
    """A new Ray token in `path`, the file RAY_AUTH_TOKEN_PATH names, created 0600 (an existing one is
    kept, and made 0600 where it is not; InputError where it cannot be)."""
    if security.token_file() != path:
        raise InputError("token", f"{path} is not the file RAY_AUTH_TOKEN_PATH names, which Ray reads")
    if not path.exists():
        security.write_new_token(path)
    security.private_token_file()


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports that nothing on this node listens on now (the kernel's choice)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def ip_address(host: str) -> str:
    """`host` (a name the node resolves, or an address) as an IP address: IPv4 where it has one."""
    try:
        found = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise InputError("node", f"{host}: this node cannot resolve its Slurm address ({exc})") from None
    return min(found, key=lambda info: info[0] != socket.AF_INET)[4][0]


def node_ip(node: str | None = None) -> str:
    """The IP address of this node (`node`: SLURMD_NODENAME) as Slurm reaches it: its NodeAddr, resolved."""
    node = node or os.environ.get("SLURMD_NODENAME", "")
    if not node:
        raise InputError("node", "SLURMD_NODENAME is not set: run this in a Slurm job")
    done = client.run(["scontrol", "-o", "show", "node", node])
    address = client.parse_fields(done.stdout.strip()).get("NodeAddr") if done.returncode == 0 else None
    if not address:
        raise InputError("node", f"scontrol does not say {node}'s NodeAddr: {client.message(done)}")
    return ip_address(address)


def run_then_remove(command: Sequence[str], temp_dir: Path | None) -> int:
    """Run `command` until it ends, passing on each signal that ends a job step (once: Slurm may signal
    every process of the step itself); then remove `temp_dir`. `command`'s exit code."""
    child = subprocess.Popen(list(command))
    passed: set[int] = set()

    def pass_on(signum, _frame) -> None:
        if signum not in passed:
            passed.add(signum)
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signum)

    before = {sig: signal.signal(sig, pass_on) for sig in STEP_SIGNALS}
    try:
        code = child.wait()
        return code if code >= 0 else 128 - code  # ended by a signal: as a shell reports it
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
        if temp_dir is not None:
            remove_tree(temp_dir)


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


def temp_dir_of(ray_args: Sequence[str]) -> Path | None:
    """The --temp-dir=DIR among `ray start` arguments, if any."""
    found = [arg.partition("=")[2] for arg in ray_args if arg.startswith("--temp-dir=")]
    return Path(found[-1]) if found else None


def step_ended(pid: int) -> bool:
    """Whether the job step whose `srun` has this pid (a child of the job script) has ended."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except (OSError, IndexError):
        return True
    return state == "Z"  # ended; the job script reaps it later


def wait_for_nodes(address: str, nodes: int, timeout_s: float, steps: Sequence[int] = ()) -> list[dict]:
    """Poll the Ray cluster at `address` until `nodes` nodes are alive; return them. Raise RuntimeError
    once `timeout_s` has passed, or as soon as one of the `steps` (the `ray start` steps) ends."""
    start = time.monotonic()
    deadline = start + timeout_s
    host, _, port = address.rpartition(":")

    def check(what: str) -> None:
        ended = [pid for pid in steps if step_ended(pid)]
        if ended:
            raise RuntimeError(f"a `ray start` step ended while waiting for {what}; its output is in "
                               "JOBID-ray-NODE.out beside this job's output")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s:.0f} s waiting for {what}; Ray's output is in "
                               "JOBID-ray-NODE.out beside this job's output")
        time.sleep(POLL_S)

    while True:  # the head's GCS: listening yet?
        try:
            socket.create_connection((host, int(port)), timeout=POLL_S).close()
            break
        except OSError:
            check(f"the Ray head at {address}")
    import ray

    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    try:
        while len(alive := [n for n in ray.nodes() if n.get("Alive")]) < nodes:
            check(f"{nodes} Ray nodes ({len(alive)} joined)")
        return alive
    finally:
        ray.shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    parser = Parser(prog="python -m tune_jobs.slurm.in_job", description=__doc__,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    steps = parser.add_subparsers(dest="step", required=True)
    token = steps.add_parser("token", help="make this job's Ray token (0600)")
    token.add_argument("path", type=Path)
    steps.add_parser("node-ip", help="print this node's IP address as Slurm reaches it (its NodeAddr)")
    ports = steps.add_parser("free-ports", help="print free TCP ports of this node")
    ports.add_argument("count", type=int)
    steps.add_parser("ray-start", help="`ray start ARGS` at this node's Slurm address; its --temp-dir removed "
                                       "when it ends (ARGS are ray start's, as they are)")
    wait = steps.add_parser("wait", help="wait until the Ray cluster has all its nodes")
    wait.add_argument("address")
    wait.add_argument("--nodes", type=int, required=True)
    wait.add_argument("--timeout-s", type=float, required=True)
    wait.add_argument("--steps", type=int, nargs="*", default=[], help="pids of the `ray start` steps' srun")
    argv = list(sys.argv[1:] if argv is None else argv)
    ray_args = argv[1:] if argv[:1] == ["ray-start"] else []  # ray start's own, not parsed here
    args = parser.parse_args(argv[:1] if ray_args else argv)
    try:
        if args.step == "token":
            make_token(args.path)
        elif args.step == "node-ip":
            print(node_ip())
        elif args.step == "free-ports":
            print(*free_ports(args.count))
        elif args.step == "ray-start":
            command = ["ray", "start", f"--node-ip-address={node_ip()}", *ray_args]
            return run_then_remove(command, temp_dir_of(ray_args))
        else:
            start = time.monotonic()
            alive = wait_for_nodes(args.address, args.nodes, args.timeout_s, args.steps)
            where = ", ".join(sorted(f"{n.get('NodeManagerHostname', '?')} ({n.get('NodeManagerAddress', '?')})"
                                     for n in alive))
            print(f"ray: {len(alive)} node(s) up after {time.monotonic() - start:.1f} s: {where}", flush=True)
    except InputError as exc:
        print(f"error: {exc.where}: {exc.problem}", file=sys.stderr)
        return 1
    except RuntimeError as exc:
        print(f"error: ray: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
