"""What a sweep's job script runs on its nodes besides Ray and the sweep (tune_jobs.slurm.job writes the calls).

    python -m tune_jobs.slurm.in_job token "$RAY_AUTH_TOKEN_PATH"        # a new token, 0600 from the start
    python -m tune_jobs.slurm.in_job free-ports 2                        # "41233 38111": free on this node now
    python -m tune_jobs.slurm.in_job wait 10.0.0.5:41233 --nodes=2 --timeout-s=120 --steps 811 812

Each prints one `error: ...` line and exits 1 where it fails, which ends the job (`set -e`).
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from trainables.errors import InputError
from tune_jobs import security

POLL_S = 0.5


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
    parser = argparse.ArgumentParser(prog="python -m tune_jobs.slurm.in_job", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    steps = parser.add_subparsers(dest="step", required=True)
    token = steps.add_parser("token", help="make this job's Ray token (0600)")
    token.add_argument("path", type=Path)
    ports = steps.add_parser("free-ports", help="print free TCP ports of this node")
    ports.add_argument("count", type=int)
    wait = steps.add_parser("wait", help="wait until the Ray cluster has all its nodes")
    wait.add_argument("address")
    wait.add_argument("--nodes", type=int, required=True)
    wait.add_argument("--timeout-s", type=float, required=True)
    wait.add_argument("--steps", type=int, nargs="*", default=[], help="pids of the `ray start` steps' srun")
    args = parser.parse_args(argv)
    try:
        if args.step == "token":
            make_token(args.path)
        elif args.step == "free-ports":
            print(*free_ports(args.count))
        else:
            start = time.monotonic()
            alive = wait_for_nodes(args.address, args.nodes, args.timeout_s, args.steps)
            where = ", ".join(sorted(n.get("NodeManagerHostname") or n.get("NodeManagerAddress", "?") for n in alive))
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
