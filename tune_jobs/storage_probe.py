"""Before any trial starts, every node of the cluster shows that it can use the sweep's storage.

    check_nodes(root, cluster, trial_resources)   # InputError naming each node that cannot; else returns
    probe(root)                                    # '' where this process can use it; else what failed

One small task per alive node, all at once, pinned to its node and asking for no CPU, writes a
probe file under the storage root, reads it back whole and deletes it, with that node's own
credentials and view of the filesystem, through the filesystem the driver opened
(`analysis.storage.filesystem`, wrapped by `ray_private.shipped_to_workers`), which Ray hands the
task as Tune hands it to each trial: its endpoint, options and any credentials given in the URI
travel with it; credentials it was not given are the node's own. So a
worker without credentials for the bucket (on AWS: no instance profile) and a node where a local
or NFS root is missing or read-only (a Slurm node that does not mount it) are named, each in one
line, before anything is written. A cluster where no alive node can run a trial (an autoscaling
one at rest: its head runs none) gets one more task that asks for a trial's resources: the
autoscaler brings up a node of the kind trials run on, and that node is checked. Nodes that join
later are not (a node type's nodes share one image and instance profile). A local Ray that the
command started itself runs on this host with this process's environment: local storage there
was checked already (`storage.resolve_storage`), a URI is checked here, without a task.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from analysis import storage
from trainables.errors import InputError, first_line
from tune_jobs import ray_private

PROBE_PREFIX = ".instrument-sweep-probe-"  # the probe file's name, under the storage root
ANSWER_TIMEOUT_S = 120.0  # an alive node's check that has not answered by then is named
NEW_NODE_TIMEOUT_S = 1800.0  # how long the check waits for the autoscaler to bring up a node that can run a trial

if TYPE_CHECKING:
    from tune_jobs.cluster import ClusterInfo


def _shown(location: str) -> str:
    """`location` for a message: a URI without its query (its endpoint and options) or credentials."""
    return storage.redact(location.partition("?")[0])


def probe(location: str, opened: tuple | None = None) -> str:
    """'' where this process can write a small file under `location`, read it back whole and delete it;
    else what failed, in one line (a local root that does not exist here is not created). `opened`:
    (filesystem, path) as `storage.filesystem(location)` gave them (default: opened here)."""
    import pyarrow.fs

    shown = _shown(location)
    fs, root = opened or storage.filesystem(location)
    step = "open"
    try:
        if not storage.is_uri(location) and fs.get_file_info(root).type != pyarrow.fs.FileType.Directory:
            return f"{shown} does not exist there (is the shared filesystem mounted on it?)"
        path = f"{root.rstrip('/')}/{PROBE_PREFIX}{uuid.uuid4().hex}"
        payload = path.encode()
        step = "write"
        with fs.open_output_stream(path) as out:
            out.write(payload)
        step = "read back"
        with fs.open_input_stream(path) as src:
            back = src.read()
        step = "delete"
        fs.delete_file(path)
    except (OSError, ValueError) as exc:  # pyarrow raises OSError (I/O, access) and ArrowInvalid (a ValueError)
        return f"cannot {step} a file under {shown}: {first_line(exc)}"
    if back != payload:
        return f"read back {len(back)} bytes of the {len(payload)} it wrote under {shown}"
    return ""


def _probe_on_node(location: str, opened: tuple) -> tuple[str, str]:
    """The task: (this node's Ray id, `probe`'s answer)."""
    import ray

    return ray.get_runtime_context().get_node_id(), probe(location, opened)


def check_nodes(location: str, cluster: ClusterInfo, trial_resources: dict[str, float]) -> None:
    """InputError("--storage", ...) naming every node of the connected cluster that cannot use the
    storage at `location`, each with its error; `trial_resources` is what one trial asks Ray for
    ({"cpu": ..., "gpu": ...}). Prints one line once every node answered."""
    if cluster.started_here:
        if storage.is_uri(location) and (problem := probe(location)):
            raise InputError("--storage", problem)
        return
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    fs, path = storage.filesystem(location)
    opened = (ray_private.shipped_to_workers(fs), path)  # credentials given in the URI travel as to trials
    nodes = {n["NodeID"]: n for n in ray.nodes() if n.get("Alive")}
    task = ray.remote(num_cpus=0, max_retries=0)(_probe_on_node)
    asked = {task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False))
             .remote(location, opened): node_id for node_id in nodes}
    problems = _answers(asked, ANSWER_TIMEOUT_S, nodes)
    checked = set(nodes)
    cpus, gpus = trial_resources.get("cpu", 0), trial_resources.get("gpu", 0)
    if not any(_fits(node, cpus, gpus) for node in nodes.values()):
        print(f"storage: no node can run a trial yet ({cpus:g} CPU, {gpus:g} GPU): checking the first one the "
              "cluster brings up", flush=True)
        new = task.options(num_cpus=cpus, num_gpus=gpus).remote(location, opened)
        problems += _answers({new: ""}, NEW_NODE_TIMEOUT_S, nodes, checked)
    if problems:
        raise InputError("--storage", "; ".join(problems) + " (every node writes the sweep's results with its own "
                                                          "credentials and mounts: see `Run on a cluster`)")
    print(f"storage: {len(checked)} node(s) write, read and delete under {_shown(location)}", flush=True)


def _answers(asked: dict, timeout_s: float, nodes: dict, checked: set | None = None) -> list[str]:
    """Wait up to `timeout_s` for the probes in `asked` (ref -> node id, '' where not pinned); return a
    line for each node that failed or did not answer. Node ids that answered go into `checked`."""
    import ray

    ready, pending = ray.wait(list(asked), num_returns=len(asked), timeout=timeout_s)
    problems = []
    for ref in ready:
        try:
            node_id, problem = ray.get(ref)
        except Exception as exc:  # noqa: BLE001 - the task could not run there (a worker that cannot start, ...)
            node_id, problem = asked[ref], f"the check could not run: {first_line(exc)}"
        if checked is not None:
            checked.add(node_id)
        if problem:
            problems.append(f"{_label(node_id, nodes)}: {problem}")
    for ref in pending:
        ray.cancel(ref, force=True)
        problems.append(f"{_label(asked[ref], nodes)}: did not answer within {timeout_s:.0f} s"
                        if asked[ref] else f"no node that can run a trial joined within {timeout_s:.0f} s")
    return problems


def _fits(node: dict, cpus: float, gpus: float) -> bool:
    resources = node.get("Resources", {})
    return resources.get("CPU", 0) >= cpus and resources.get("GPU", 0) >= gpus


def _label(node_id: str, nodes: dict) -> str:
    """'node w2 (10.0.0.12)': a node by its host name and address (looked up again where it joined meanwhile)."""
    import ray

    if not node_id:
        return "the node brought up for a trial"
    node = nodes.get(node_id) or next((n for n in ray.nodes() if n["NodeID"] == node_id), {})
    name, ip = node.get("NodeManagerHostname", ""), node.get("NodeManagerAddress", node_id[:12])
    return f"node {name} ({ip})" if name and name != ip else f"node {ip}"
