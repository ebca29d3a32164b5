"""Connecting to Ray: a local instance (on 127.0.0.1; its dashboard where asked) or an existing cluster.

    info = connect(None)                       # local Ray on this machine
    info = connect("10.0.0.5:6379")            # join a running cluster (GCS address)
    info = connect("ray://10.0.0.5:10001")     # Ray Client
    info = connect(None)                       # inside a Ray Job (RAY_ADDRESS set): joins its cluster
    disconnect(info)                           # a local Ray stops here
    with disconnecting(info): write_report(...)  # ... while the block runs
    stop_leftover_local_ray(ray_tag, host)     # `resume`: what is left of a killed command's local Ray

Addresses are checked before Ray is touched, so a typo or an unreachable host
fails in seconds with exit code 2 instead of hanging. A driver joins a cluster by
HOST:PORT through the Ray node on its own host (found by its address, never another
host's); a host without one is told to use Ray Client (ray://HOST:10001) instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from trainables.errors import InputError
from tune_jobs import ray_private
from tune_jobs.security import private_token_file, shown, token_file

CONNECT_TIMEOUT_S = 5.0
DASHBOARD_HOST = "127.0.0.1"  # never opened to the network; reach it by SSH tunnel
CLIENT_PORT = 10001  # Ray Client's default port on the head
LOCAL_RAY_ENV = "INSTRUMENT_SWEEP_LOCAL_RAY"  # tags the processes of a local Ray started by a command


@dataclass(frozen=True)
class ClusterInfo:
    address: str
    dashboard_url: str
    cpus: float
    gpus: float
    nodes: int
    started_here: bool
    max_node_cpus: float = 0.0  # the most CPUs any one node has
    ray_tag: str = ""  # a Ray started here: the LOCAL_RAY_ENV value every one of its processes inherits
    worker_env: Mapping[str, str] = field(default_factory=dict)  # a Ray started here: the environment its workers inherit


def parse_address(address: str, flag: str = "--address", schemes: tuple[str, ...] = ("ray",)) -> tuple[str, int]:
    """(host, port) of `address`; "auto" is returned as ("auto", 0). Errors name `flag`."""
    if address == "auto" and "ray" in schemes:
        return "auto", 0
    scheme, sep, rest = address.partition("://")
    if not sep:
        scheme, rest = "", address
    allowed = {"ray": "HOST:PORT (e.g. 10.0.0.5:6379), ray://HOST:10001 or auto",
               "http": "http://HOST:8265 (the Ray dashboard / Jobs API)"}
    wanted = " or ".join(allowed["ray" if s == "ray" else "http"] for s in schemes)
    if scheme and scheme not in schemes and not (scheme == "https" and "http" in schemes):
        raise InputError(flag, f"unsupported scheme {scheme}://; use {wanted}")
    if not scheme and "ray" not in schemes:
        raise InputError(flag, f"{address!r} has no scheme; use {wanted}")
    host, colon, port = rest.rstrip("/").rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(flag, f"{address!r} is not an address; use {wanted}")
    return host, int(port)


def check_reachable(host: str, port: int, flag: str = "--address") -> None:
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise InputError(flag, f"cannot reach {host}:{port} ({exc.strerror or exc}); is the Ray head running "
                               "and the port open (or tunnelled)?") from None


def use_token_if_available() -> None:
    """Send the cluster token (~/.ray/auth_token, RAY_AUTH_TOKEN[_PATH]) when one exists.

    Ray only attaches it with RAY_AUTH_MODE=token; a user with a token should not need to know.
    """
    quiet_ray_logs()
    ray_private.enable_token_auth_if_token_available()


def quiet_ray_logs() -> None:
    """Ray's INFO lines, and its notice at every start that token auth is on (where a token exists and
    RAY_AUTH_MODE is unset, as after the first local run): we print what matters ourselves."""
    logging.getLogger("ray").setLevel(logging.WARNING)
    logging.getLogger(ray_private.TOKEN_SETUP_LOGGER).setLevel(logging.ERROR)


def connect(address: str | None, log_to_driver: bool = False, dashboard: bool = False,
            ray_fixes: bool = True) -> ClusterInfo:
    """Start a local Ray (address None), lean (ray_private.lean_local_start), with its dashboard
    where asked (about 1.2 s more to start: Ray waits for it), or join the cluster at `address`.
    A local Ray listens on loopback only (ray_private.ray_on_loopback: InputError before it starts
    where this Ray lacks the switch), unless not `ray_fixes` (--without-ray-fixes)."""
    import ray

    flag = "--address"
    if address is None and os.environ.get("RAY_ADDRESS"):
        # A driver that Ray started (a Ray Job's entrypoint) finds its cluster here: join it.
        address, flag = os.environ["RAY_ADDRESS"], "RAY_ADDRESS"
    node_ip = None
    if address is not None:
        host, port = parse_address(address, flag)
        if host != "auto":
            check_reachable(host, port, flag)
        if host != "auto" and not address.startswith("ray://"):
            node_ip = local_node_ip(host, port, flag)
    private_token_file(create=address is None)
    if ray.is_initialized():
        raise InputError("ray", "this process is already connected to Ray; call ray.shutdown() first (a sweep "
                                "connects itself: give the cluster as address)")
    if address is not None:
        use_token_if_available()
    quiet_ray_logs()
    tag = uuid.uuid4().hex if address is None else ""
    worker_env: dict[str, str] = {}  # a joined cluster's workers: unknown here
    try:
        if address is None:
            # Every process of this Ray (GCS, raylet, dashboard, agents, workers) inherits the tag,
            # which is how a later `resume` knows what is left of it if this command is killed.
            os.environ[LOCAL_RAY_ENV] = tag
            # Trials come and go in reused Ray actors, each in a new thread; glibc gives every new
            # thread a malloc arena it never returns (~5 MB a trial). One arena keeps trial memory
            # flat; the workers of a local Ray inherit this. cluster.yaml sets it on its nodes.
            os.environ.setdefault("MALLOC_ARENA_MAX", "1")
            # CUDA numbers GPUs fastest first unless told otherwise: Ray's GPU ids (which it puts in
            # CUDA_VISIBLE_DEVICES) then differ from nvidia-smi's on a node with mixed models. Trials
            # match their GPU by UUID either way; this keeps the ids readable. cluster.yaml sets it too.
            os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
            # Ray starts a worker per CPU for the first driver as it connects: dozens on a large
            # node that a small sweep never uses; on 2 cores they delayed Ray's start by 0.6 s and
            # the first trial not at all.
            os.environ.setdefault("RAY_prestart_worker_first_driver", "0")
            # The raylet connects to its object store, which another of its threads starts; where the
            # store is not listening yet it tries again a second later (1 s of about one start in three
            # here). Every 20 ms instead, within the same 10 s.
            os.environ.setdefault("RAY_raylet_client_connect_timeout_milliseconds", "20")
            os.environ.setdefault("RAY_raylet_client_num_connect_attempts", "500")
            # What Tune would give each trial actor through a runtime env, the workers inherit from
            # here instead: they then start without a runtime-env setup process (ray_private).
            for key, value in ray_private.TUNE_ACTOR_ENV.items():
                os.environ.setdefault(key, value)
            worker_env = dict(os.environ)
            with (ray_private.ray_on_loopback(fixes=ray_fixes),
                  ray_private.lean_local_start(log_monitor=log_to_driver)):
                context = ray.init(include_dashboard=dashboard, dashboard_host=DASHBOARD_HOST,
                                   log_to_driver=log_to_driver, logging_level=logging.WARNING)
        else:
            # Ray Client runs Tune on the head: its progress lines reach us only as its logs.
            with ray_private.node_deaths_unprinted(not log_to_driver), stderr_held(not log_to_driver):
                context = ray.init(address=address, log_to_driver=log_to_driver or address.startswith("ray://"),
                                   logging_level=logging.WARNING, **ray_private.joining_through(node_ip))
    except ConnectionError as exc:
        raise InputError(flag, f"could not join a Ray cluster at {address!r}: {exc}; {token_hint()}") from None
    dashboard = dashboard_as_seen_here(getattr(context, "dashboard_url", "") or "", address)
    if address is not None:  # "auto" or RAY_ADDRESS: say which cluster it found
        address = (getattr(context, "address_info", None) or {}).get("gcs_address") or address
    return replace(describe(address or "local", dashboard, started_here=address is None), ray_tag=tag,
                   worker_env=worker_env)


def dashboard_as_seen_here(url: str, address: str | None) -> str:
    """The dashboard's address as Ray gives it (the head's own view), and how to reach it from here
    where that is the head's loopback and this host is not the head."""
    host = url.split("://", 1)[-1].rsplit(":", 1)[0]
    if not url or not address or address == "auto" or not host.startswith("127."):
        return url
    head = parse_address(address)[0]
    if head.startswith("127.") or _is_local_address(head):
        return url
    port = url.rsplit(":", 1)[-1]
    return (f"on the head, {host}:{port} there: forward it with `ssh -L {port}:127.0.0.1:{port} {head}` "
            f"(or `ray dashboard cluster.yaml`), then open http://127.0.0.1:{port}")


def token_hint() -> str:
    """What to check when a cluster that answers refuses us: most often its token."""
    path = token_file()
    if path is not None and not path.is_file():
        return (f"a cluster with token auth refuses whoever lacks its token, and none was found here: put the "
                f"cluster's token in {shown(path)} (or RAY_AUTH_TOKEN_PATH, RAY_AUTH_TOKEN)")
    source = "RAY_AUTH_TOKEN" if path is None else shown(path)
    return f"is the token in {source} this cluster's? (a cluster with token auth refuses any other)"


@contextlib.contextmanager
def stderr_held(hold: bool = True) -> Iterator[None]:
    """Inside, where `hold`, what this process writes to stderr (Ray's C++ client too) is kept
    back: written out when the block ends normally, dropped when it raises. A join that is
    refused (a missing token) or slow repeats a C++ warning every second for 20 s; we say what
    went wrong in one line instead."""
    if not hold:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        except BaseException:
            sys.stderr.flush()
            os.dup2(saved, 2)
            raise
        else:
            sys.stderr.flush()
            os.dup2(saved, 2)
            held.seek(0)
            os.write(2, held.read())
        finally:
            os.close(saved)


def local_node_ip(host: str, port: int, flag: str = "--address") -> str | None:
    """The address of this host's Ray node of the cluster whose GCS is `host`:`port`, where the
    process table shows one; None where it cannot be told (`ray_private.raylet_addresses`; no
    raylet of that GCS visible, as under procfs's hidepid or in a container: Ray then picks its own).

    A driver joining by HOST:PORT works through a raylet on its own host. Left to itself Ray picks
    any raylet of the cluster that `ps` shows (the head's first), which, where hosts share a
    process table (containers, network namespaces), is another host's: the driver then advertised
    that host's address and hung. Where the table shows the cluster's raylets, none of them on
    this host, this exits 2, naming Ray Client."""
    try:
        gcs_ip = socket.gethostbyname(host)
    except OSError:
        return None
    raylets = ray_private.raylet_addresses()
    if raylets is None:
        return None

    def of_this_cluster(at: str) -> bool:  # a GCS on this host may be named by any of its addresses
        at_host, _, at_port = at.rpartition(":")
        return at_port == str(port) and (at_host == gcs_ip or _is_local_address(gcs_ip) and _is_local_address(at_host))

    ours = [ip for ip, at in raylets if of_this_cluster(at)]
    if not ours:
        return None
    if ip := next((ip for ip in ours if _is_local_address(ip)), None):
        return ip
    path = token_file()
    no_token = f"; and no token was found here ({token_hint()})" if path is not None and not path.is_file() else ""
    raise InputError(flag, f"no Ray node of the cluster at {host}:{port} runs on this host, and a driver joins "
                           f"through one: run it on a node of the cluster, start one here first (`ray start "
                           f"--address={host}:{port}`), or join through Ray Client: --address "
                           f"ray://{host}:{CLIENT_PORT}{no_token}")


def _is_local_address(ip: str) -> bool:
    """Whether `ip` is an address of this host (network namespace): one a socket can bind."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((ip, 0))
        return True
    except OSError:
        return False


def disconnect(cluster: ClusterInfo) -> None:
    """Leave Ray; a Ray started here is stopped, its processes with it."""
    import ray

    ray.shutdown()


@contextlib.contextmanager
def disconnecting(cluster: ClusterInfo) -> Iterator[None]:
    """`disconnect` in a thread while the block runs, done when it ends: a third of a second of
    Ray's stop is its client waiting for a thread that polls every 250 ms."""
    stopping = threading.Thread(target=disconnect, args=(cluster,), name="ray-shutdown")
    stopping.start()
    try:
        yield
    finally:
        stopping.join()


def stop_leftover_local_ray(ray_tag: str, host: str, wait_s: float = 10.0) -> int:
    """End what is left of a local Ray an earlier command started and did not stop (it was killed):
    its dashboard and agents can hold their ports for a minute. Returns how many processes ended.

    Only this user's processes on this host whose environment carries LOCAL_RAY_ENV=`ray_tag`,
    the tag the earlier command gave its own Ray (recorded in tune_jobs.experiment_lock), are touched.
    """
    if not ray_tag or host != socket.gethostname():
        return 0
    leftover = pids_with_env(LOCAL_RAY_ENV, ray_tag)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in leftover:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and any(_alive(pid) for pid in leftover):
            time.sleep(0.1)
    return len(leftover)


def pids_with_env(variable: str, value: str) -> list[int]:
    """This user's processes (not this one) whose environment holds `variable`=`value`, and their
    descendants: Ray's agents inherit the variable, but the process titles Ray gives them hide
    their environment from /proc. [] without procfs."""
    entry, uid, me = f"{variable}={value}".encode(), os.getuid(), os.getpid()
    if not Path("/proc").is_dir():
        return []  # no procfs (macOS): a killed command's leftovers end on their own within a minute
    found, parents = set(), {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == me:
            continue
        try:
            if proc.stat().st_uid != uid:
                continue
            parents[int(proc.name)] = int((proc / "stat").read_text().rsplit(")", 1)[-1].split()[1])
            if entry in (proc / "environ").read_bytes().split(b"\0"):
                found.add(int(proc.name))
        except (OSError, ValueError, IndexError):
            continue  # ended meanwhile, or not ours to read
    while grown := {pid for pid, parent in parents.items() if parent in found} - found:
        found |= grown
    return sorted(found)


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return status.rsplit(")", 1)[-1].split()[0] != "Z"  # a zombie has ended; its parent reaps it


def describe(address: str = "local", dashboard: str = "", started_here: bool = True) -> ClusterInfo:
    """What the Ray this process is connected to offers."""
    import ray

    resources = ray.cluster_resources()
    alive = [n for n in ray.nodes() if n.get("Alive")]
    return ClusterInfo(
        address=address,
        dashboard_url=dashboard if not dashboard or "://" in dashboard or " " in dashboard else f"http://{dashboard}",
        cpus=float(resources.get("CPU", 0)),
        gpus=float(resources.get("GPU", 0)),
        nodes=len(alive),
        started_here=started_here,
        max_node_cpus=max((float(n.get("Resources", {}).get("CPU", 0)) for n in alive), default=0.0),
    )
