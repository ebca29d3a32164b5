"""The fake GPU node that the fake NVML (pynvml.py) and the fake CUDA (sitecustomize.py) both show.

    import fake_node
    fake_node.DEVICES                 # the node's GPUs in NVML's order (PCI bus order)
    fake_node.cuda_devices()          # what CUDA shows this process, in CUDA's order

Environment (read once, at import):
    FAKE_NVML_DEVICES   JSON list, one object per GPU in PCI bus order; every key optional:
                        name, arch (NVML architecture name: PASCAL, VOLTA, AMPERE, HOPPER, ...),
                        power_w, max_power_w, uuid ("GPU-..."), pci_bus_id,
                        counter (false: Volta or newer, but the energy counter is NotSupported),
                        mig (number of MIG instances: the GPU is in MIG mode),
                        energy_error (an NVML error name such as "UNKNOWN": energy and power reads
                        raise it), error_file (... only once this file exists: an error mid-run),
                        lost (true: NVML cannot get a handle: GPU_IS_LOST)
    FAKE_NVML_GPUS      without FAKE_NVML_DEVICES: this many identical GPUs (default 1) ...
    FAKE_NVML_POWER_W   ... drawing this power (default 250; also the default power_w above)
    FAKE_NVML_ARCH      ... of this architecture (default HOPPER; also the default arch above)
    FAKE_NVML_PERIOD_S  every energy counter's update period (default 0.1)
    FAKE_CUDA_SEES      JSON list of the NVML indices CUDA may show this process, as a cgroup (Slurm's
                        ConstrainDevices) or a container allows; CUDA numbers only these (default: all)

Default UUIDs are GPU-fa4e0000-0000-4000-8000-00000000000N and bus ids 00000000:1N:00.0 (N the NVML
index). CUDA numbers devices fastest first (a newer architecture first; ties in bus order) unless
CUDA_DEVICE_ORDER=PCI_BUS_ID, as the real one does; a GPU in MIG mode shows CUDA its instances.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field

T0 = time.monotonic()
UPDATE_PERIOD_S = float(os.environ.get("FAKE_NVML_PERIOD_S", "0.1"))
ARCH_RANK = {"KEPLER": 2, "MAXWELL": 3, "PASCAL": 4, "VOLTA": 5, "TURING": 6, "AMPERE": 7, "ADA": 8,
             "HOPPER": 9, "BLACKWELL": 10}


@dataclass(frozen=True)
class Device:
    """One GPU, or one MIG instance of a GPU (`parent` set)."""

    index: int  # NVML index (PCI bus order); a MIG instance: its GPU's
    name: str
    arch: str
    power_w: float
    max_power_w: float
    uuid: str
    pci_bus_id: str
    counter: bool = True
    energy_error: str = ""
    error_file: str = ""
    lost: bool = False
    mig: tuple = field(default=(), compare=False)  # its MIG instances (Device objects)
    parent: int | None = None  # a MIG instance: its GPU's NVML index
    mig_index: int = 0

    @property
    def rank(self) -> int:
        return ARCH_RANK.get(self.arch, 0)

    def energy_mj(self) -> int:
        """Millijoules since this process started, stepping every UPDATE_PERIOD_S like the real counter."""
        elapsed = time.monotonic() - T0
        return int((elapsed // UPDATE_PERIOD_S) * UPDATE_PERIOD_S * self.power_w * 1000)

    def power_mw(self) -> int:
        """The draw, 1 W above and below power_w in turns every period, as sensors wobble."""
        step = int((time.monotonic() - T0) // UPDATE_PERIOD_S)
        return int(self.power_w * 1000) + (1000 if step % 2 else -1000)

    def failing(self) -> bool:
        return bool(self.energy_error) and (not self.error_file or os.path.exists(self.error_file))


def _devices() -> list[Device]:
    described = os.environ.get("FAKE_NVML_DEVICES")
    if described:
        specs = json.loads(described)
    else:
        specs = [{}] * int(os.environ.get("FAKE_NVML_GPUS", "1"))
    devices = []
    for i, spec in enumerate(specs):
        uuid = spec.get("uuid", f"GPU-fa4e{i:04x}-0000-4000-8000-{i:012x}")
        gpu = dict(index=i, name=spec.get("name", "Fake NVIDIA H100"),
                   arch=spec.get("arch", os.environ.get("FAKE_NVML_ARCH", "HOPPER")),
                   power_w=float(spec.get("power_w", os.environ.get("FAKE_NVML_POWER_W", "250"))),
                   max_power_w=float(spec.get("max_power_w", 700.0)), uuid=uuid,
                   pci_bus_id=spec.get("pci_bus_id", f"00000000:{0x10 + i:02X}:00.0"),
                   counter=bool(spec.get("counter", True)), energy_error=spec.get("energy_error", ""),
                   error_file=spec.get("error_file", ""), lost=bool(spec.get("lost", False)))
        instances = tuple(Device(**{**gpu, "name": f"{gpu['name']} MIG 1g", "power_w": gpu["power_w"] / 7,
                                    "uuid": f"MIG-{uuid[4:13]}{m + 1:04x}{uuid[17:]}", "parent": i,
                                    "mig_index": m})
                          for m in range(int(spec.get("mig", 0))))
        devices.append(Device(**gpu, mig=instances))
    return devices


DEVICES = _devices()


def by_uuid(uuid: str) -> Device | None:
    """The GPU or MIG instance whose UUID is `uuid`."""
    for gpu in DEVICES:
        for device in (gpu, *gpu.mig):
            if device.uuid == uuid:
                return device
    return None


def cuda_devices() -> list[Device]:
    """What CUDA shows this process, in CUDA's order: CUDA_DEVICE_ORDER (fastest first, or PCI bus
    order), then CUDA_VISIBLE_DEVICES (indices into that order, or GPU-/MIG- UUIDs or unique
    prefixes of them; the first entry that names nothing ends the list, as in CUDA)."""
    if os.environ.get("CUDA_DEVICE_ORDER") == "PCI_BUS_ID":
        ordered = list(DEVICES)
    else:
        ordered = sorted(DEVICES, key=lambda d: -d.rank)  # stable: ties stay in bus order
    allowed = os.environ.get("FAKE_CUDA_SEES")
    if allowed:
        ordered = [d for d in ordered if d.index in json.loads(allowed)]
    enumerated = [instance for gpu in ordered for instance in (gpu.mig or (gpu,))]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return enumerated
    shown: list[Device] = []
    everything = [d for gpu in DEVICES for d in (gpu, *gpu.mig)]
    for entry in (e.strip() for e in visible.split(",")):
        if entry.isdigit():
            found = [enumerated[int(entry)]] if int(entry) < len(enumerated) else []
        else:
            found = [d for d in everything if entry and d.uuid.startswith(entry)]
        if len(found) != 1 or found[0] in shown:
            break
        shown.append(found[0])
    return shown
