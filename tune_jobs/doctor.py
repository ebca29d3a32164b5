"""`instrument-sweep doctor`: what each node can measure, and why not.

    instrument-sweep doctor                          # this machine (no Ray started)
    instrument-sweep doctor --address auto --json    # every node of a running cluster, one Ray task each

Per node: its GPUs (NVML index, name, UUID, PCI bus id, architecture, MIG, whether a
trial there measures its energy and, where not, why: the same decision a trial makes,
`trainables.training.gpus.energy_note`; the counter's measured update period), the
order CUDA numbers GPUs in (CUDA_DEVICE_ORDER), the RAPL packages and whether they
are readable, the energy source a trial there would use and why, the Ray version,
token auth and the CPU count. Exit 0 when every node could be inspected.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
from pathlib import Path

NAN = float("nan")
RAPL_DIR = Path("/sys/class/powercap")  # Intel RAPL zones: intel-rapl:N (packages), intel-rapl:N:M (DRAM, ...)
RAPL_HOWTO = ("readable by root only: run as root, or start Zeus's daemon (zeusd) to read it, or make "
              "energy_uj readable (sudo chmod o+r /sys/class/powercap/intel-rapl:*/energy_uj)")


def register(commands: argparse._SubParsersAction) -> None:
    doctor = commands.add_parser("doctor", help="what each node can measure (GPU and CPU energy), and why not",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    doctor.add_argument("--address", help="Ray cluster to inspect: HOST:6379, ray://HOST:10001 or auto "
                                          "(default: this machine only)")
    doctor.add_argument("--json", action="store_true", help="print one JSON object with a `nodes` list")
    doctor.set_defaults(func=cmd_doctor)


def cmd_doctor(args: argparse.Namespace) -> int:
    nodes = inspect_cluster(args.address) if args.address else [inspect_node()]
    if args.json:
        print(json.dumps({"nodes": nodes}, indent=1))
    else:
        for node in nodes:
            print(describe(node))
    return 0 if all(not node.get("error") for node in nodes) else 1


def inspect_node(in_ray: bool = False) -> dict:
    """This machine: GPUs, CUDA's device order, RAPL, the energy source a trial would use, Ray,
    token auth, CPUs. `in_ray`: inspected from a Ray task, in the environment the node's Ray gives."""
    import ray

    gpus, gpu_problem = _gpus()
    rapl = _rapl_packages()
    rapl_readable = bool(rapl) and all(p["readable"] for p in rapl)
    unmeasured = "; ".join(f"GPU {g['index']}: {g['energy_note']}" for g in gpus if g["energy_note"])
    if any(g["energy_counter"] for g in gpus):
        source, why = "gpu", "a trial on a GPU of this node reads its NVML energy counter"
        if unmeasured:
            why += f" (except {unmeasured})"
    elif rapl_readable:
        source, why = "cpu", ("no GPU energy counter; the node's RAPL CPU joules stand as a trial's energy only "
                              "where no other trial ran on the node meanwhile (resources.exclusive_node: true)")
    else:
        reasons = [gpu_problem or unmeasured or "no GPU with an NVML energy counter (Volta or newer)",
                   RAPL_HOWTO if rapl else "no RAPL packages (no Intel RAPL on this CPU, or not exposed here)"]
        source, why = "none", "energy will be NaN: " + "; ".join(reasons)
    return {
        "node": socket.gethostname(),
        "gpus": gpus,
        "cuda_device_order": os.environ.get("CUDA_DEVICE_ORDER") or ("FASTEST_FIRST" if in_ray else "PCI_BUS_ID"),
        "cuda_device_order_set": bool(os.environ.get("CUDA_DEVICE_ORDER")),
        "rapl_packages": rapl,
        "rapl_readable": rapl_readable,
        "energy_source": source,
        "why": why,
        "ray_version": ray.__version__,
        "token_auth": _token_auth(),
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
    }


def inspect_cluster(address: str) -> list[dict]:
    """One `inspect_node` Ray task pinned to each alive node of the cluster at `address`."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from tune_jobs.cluster import connect, disconnect

    cluster = connect(address)
    try:
        remote = ray.remote(num_cpus=0)(_inspect_all_gpus)
        alive = [n for n in ray.nodes() if n.get("Alive")]
        refs = [remote.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote()
                for n in alive]
        nodes = []
        for node, ref in zip(alive, refs):
            try:
                nodes.append({**ray.get(ref, timeout=120), "ray_node_id": node["NodeID"]})
            except Exception as exc:  # noqa: BLE001 - report the node, go on with the others
                nodes.append({"node": node.get("NodeManagerAddress", "?"), "ray_node_id": node["NodeID"],
                              "error": f"{type(exc).__name__}: {exc}"})
        return nodes
    finally:
        disconnect(cluster)


def _inspect_all_gpus() -> dict:
    """`inspect_node` in a Ray task given no GPU: NVML sees every GPU of the node all the same."""
    return inspect_node(in_ray=True)


def _gpus() -> tuple[list[dict], str]:
    """Every GPU NVML sees (NVML's indices: PCI bus order), judged as a trial judges its own, with
    each measurable counter's update period; and why there are none where there are none."""
    from trainables.training.gpu_counter import measure_counter
    from trainables.training.gpus import node_gpus

    found, problem = node_gpus()
    gpus = []
    for gpu in found:
        period_s = NAN
        if not gpu.energy_note:
            import pynvml

            handle = pynvml.nvmlDeviceGetHandleByIndex(gpu.nvml_index)
            period_s = measure_counter(lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(handle))[0]
        gpus.append({"index": gpu.nvml_index, "name": gpu.name, "uuid": gpu.uuid, "pci_bus_id": gpu.pci_bus_id,
                     "architecture": gpu.architecture, "mig": gpu.mig, "energy_counter": not gpu.energy_note,
                     "energy_note": gpu.energy_note, "energy_update_s": period_s if math.isfinite(period_s) else None})
    return gpus, problem


def _rapl_packages() -> list[dict]:
    """The RAPL package zones (and their DRAM subzones) and whether this process can read them."""
    packages = []
    for zone in sorted(RAPL_DIR.glob("intel-rapl:*")):
        name_file, energy_file = zone / "name", zone / "energy_uj"
        try:
            name = name_file.read_text().strip()
        except OSError:
            continue
        if zone.name.count(":") == 1:  # a package, not a subzone
            try:
                energy_file.read_text()
                readable = True
            except OSError:
                readable = False
            packages.append({"zone": zone.name, "name": name, "readable": readable})
    return packages


def _order_text(node: dict) -> str:
    order, set_here = node["cuda_device_order"], node["cuda_device_order_set"]
    source = ("CUDA_DEVICE_ORDER" if set_here else "set by instrument-sweep for the Ray it starts here"
              if order == "PCI_BUS_ID" else "CUDA's default: CUDA_DEVICE_ORDER is not set where this node's Ray started")
    if order == "PCI_BUS_ID":
        return f"PCI_BUS_ID ({source}): CUDA's and Ray's GPU indices are NVML's and nvidia-smi's"
    return (f"{order} ({source}): with mixed GPU models CUDA's indices differ from nvidia-smi's; trials still "
            "measure the GPU they train on (matched by UUID); set CUDA_DEVICE_ORDER=PCI_BUS_ID where Ray starts")


def _token_auth() -> str:
    mode = os.environ.get("RAY_AUTH_MODE")
    has_token = bool(os.environ.get("RAY_AUTH_TOKEN")) or Path(
        os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token")).exists()
    if mode:
        return f"RAY_AUTH_MODE={mode}" + (" (token found)" if has_token else " (no token found)")
    return "token found (used automatically)" if has_token else "no token (a local run creates one)"


def describe(node: dict) -> str:
    if node.get("error"):
        return f"node {node['node']}: could not be inspected: {node['error']}"
    lines = [f"node {node['node']}: {node['cpus']} CPUs, Ray {node['ray_version']}, token auth: {node['token_auth']}"]
    for gpu in node["gpus"]:
        period = gpu["energy_update_s"]
        counter = (f"energy counter, updates every {period * 1000:.0f} ms" if period and math.isfinite(period)
                   else "energy counter" if gpu["energy_counter"] else f"not measured: {gpu['energy_note']}")
        lines.append(f"  GPU {gpu['index']}: {gpu['name']} ({gpu['uuid']}, bus {gpu['pci_bus_id']}): {counter}")
    if not node["gpus"]:
        lines.append("  GPUs: none")
    else:
        lines.append(f"  CUDA device order: {_order_text(node)}")
    rapl = ", ".join(f"{p['zone']} ({'readable' if p['readable'] else 'not readable'})" for p in node["rapl_packages"])
    lines.append(f"  RAPL: {rapl or 'none'}")
    lines.append(f"  energy source of a trial here: {node['energy_source']}: {node['why']}")
    return "\n".join(lines)
