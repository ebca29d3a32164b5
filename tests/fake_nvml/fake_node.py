"""The fake GPU node that the fake NVML (pynvml.py) and the fake CUDA (sitecustomize.py) both show.

    import fake_node
    fake_node.DEVICES                 # the node's GPUs in NVML's order (PCI bus order)
    fake_node.cuda_devices()          # what CUDA shows this process, in CUDA's order
    fake_node.DEVICES[0].true_energy_j(t)   # the model's joules up to wall-clock time t (tests' ground truth)

Environment (read once, at import):
    FAKE_NVML_PROFILE   "H200": every default below as measured on an H200 (gpu-check-NVIDIA-H200.json):
                        counter period 100 ms (each update up to 4 ms off the grid), a 3.9 ms counter read,
                        80 W idle without a CUDA context, 124 W with one, 673 W under load, 700 W max,
                        drifting +0.05 W a second (the real drift was not measured; slow, as a GPU warms)
    FAKE_NVML_DEVICES   JSON list, one object per GPU in PCI bus order; every key optional:
                        name, arch (NVML architecture name: PASCAL, VOLTA, AMPERE, HOPPER, ...),
                        power_w (a constant draw: the default of the three below), idle_w (with a CUDA
                        context open), bare_idle_w (no context open), load_w (while an epoch trains),
                        drift_w_per_s, max_power_w, uuid ("GPU-..."), pci_bus_id,
                        counter (false: Volta or newer, but the energy counter is NotSupported),
                        mig (number of MIG instances: the GPU is in MIG mode),
                        energy_error (an NVML error name such as "UNKNOWN": energy and power reads
                        raise it), error_file (... only once this file exists: an error mid-run),
                        lost (true: NVML cannot get a handle: GPU_IS_LOST)
    FAKE_NVML_GPUS      without FAKE_NVML_DEVICES: this many identical GPUs (default 1) ...
    FAKE_NVML_POWER_W   ... drawing this power (default 250; also the default power_w above)
    FAKE_NVML_IDLE_W, FAKE_NVML_BARE_IDLE_W, FAKE_NVML_LOAD_W, FAKE_NVML_DRIFT_W_PER_S: the defaults
                        of idle_w, bare_idle_w, load_w, drift_w_per_s above
    FAKE_NVML_ARCH      ... of this architecture (default HOPPER; also the default arch above)
    FAKE_NVML_PERIOD_S  every energy counter's update period (default 0.1)
    FAKE_NVML_JITTER_S  each update lands up to this far before or after the period's grid (default 0)
    FAKE_NVML_READ_S    how long a counter read takes (default 0; pynvml.py)
    FAKE_NVML_T0        wall-clock time (Unix seconds) the drift counts from (default: this import)
    FAKE_NVML_STATS_DIR where each process keeps its counter reads' count and seconds (<pid>.json) and
                        its epochs' wall-clock intervals (<pid>.busy: "start end" lines)
    FAKE_CUDA_SEES      JSON list of the NVML indices CUDA may show this process, as a cgroup (Slurm's
                        ConstrainDevices) or a container allows; CUDA numbers only these (default: all)

The power model, per GPU: bare_idle_w until this process opens a CUDA context on it (the fake CUDA's
first tensor, generator, synchronize or set_device there), idle_w after, load_w while the process
trains an epoch or evaluates (the project's epoch loops: what a real GPU runs kernels for; the fake
CUDA computes them on the CPU), each plus drift_w_per_s x (t - FAKE_NVML_T0). The counter (mJ) holds
the model's energy at its last update: updates come every period (wall-clock grid, shared by every
process), so any window's true joules are known exactly (`true_energy_j`). The model is per process:
a process sees its own context and its own epochs, not another process's.

Default UUIDs are GPU-fa4e0000-0000-4000-8000-00000000000N and bus ids 00000000:1N:00.0 (N the NVML
index). CUDA numbers devices fastest first (a newer architecture first; ties in bus order) unless
CUDA_DEVICE_ORDER=PCI_BUS_ID, as the real one does; a GPU in MIG mode shows CUDA its instances.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import math
import os
import time
from dataclasses import dataclass, field

PROFILES = {
    "H200": {"name": "NVIDIA H200", "arch": "HOPPER", "period_s": 0.1, "jitter_s": 0.004, "read_s": 0.0039,
             "bare_idle_w": 80.0, "idle_w": 124.0, "load_w": 673.0, "max_power_w": 700.0, "drift_w_per_s": 0.05},
}
PROFILE = PROFILES.get(os.environ.get("FAKE_NVML_PROFILE", "").upper(), {})


def _setting(name: str, key: str, default):
    """FAKE_NVML_<name>, else the profile's `key`, else `default`."""
    value = os.environ.get(f"FAKE_NVML_{name}")
    return type(default)(value) if value is not None else PROFILE.get(key, default)


START_S = time.time()  # the counter counts from here (wall clock: the update grid is every process's)
UPDATE_PERIOD_S = _setting("PERIOD_S", "period_s", 0.1)
JITTER_S = min(_setting("JITTER_S", "jitter_s", 0.0), 0.45 * UPDATE_PERIOD_S)
READ_S = _setting("READ_S", "read_s", 0.0)  # how long a counter read takes (3.9 ms on an H200 VM)
DRIFT_T0_S = _setting("T0", "", START_S)
STATS_DIR = os.environ.get("FAKE_NVML_STATS_DIR", "")
ARCH_RANK = {"KEPLER": 2, "MAXWELL": 3, "PASCAL": 4, "VOLTA": 5, "TURING": 6, "AMPERE": 7, "ADA": 8,
             "HOPPER": 9, "BLACKWELL": 10}


class _Busy:
    """This process's epochs, as wall-clock intervals: while one runs, its GPU draws load_w."""

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.ends: list[float] = []  # math.inf while the last one runs
        self.before: list[float] = []  # busy seconds before each interval's start
        self.depth = 0

    @contextlib.contextmanager
    def epoch(self):
        self.depth += 1
        if self.depth == 1:
            now = time.time()
            self.before.append(self.before[-1] + self.ends[-1] - self.starts[-1] if self.starts else 0.0)
            self.starts.append(now)
            self.ends.append(math.inf)
        try:
            yield
        finally:
            self.depth -= 1
            if self.depth == 0:
                self.ends[-1] = time.time()
                if STATS_DIR:  # the ground truth of a process's epochs, for whoever reads the counters' stats
                    with open(os.path.join(STATS_DIR, f"{os.getpid()}.busy"), "a") as out:
                        out.write(f"{self.starts[-1]!r} {self.ends[-1]!r}\n")

    def seconds(self, t: float) -> float:
        """Busy seconds up to wall-clock time t."""
        i = bisect.bisect_right(self.starts, t) - 1
        return 0.0 if i < 0 else self.before[i] + min(self.ends[i], t) - self.starts[i]

    def now(self) -> bool:
        return self.depth > 0


BUSY = _Busy()
CONTEXTS: dict[str, float] = {}  # UUID -> when this process opened a CUDA context on that GPU


def open_context(device: "Device") -> None:
    """This process now holds a CUDA context on `device` (its GPU, for a MIG instance)."""
    for uuid in filter(None, (device.uuid, device.parent_uuid)):
        CONTEXTS.setdefault(uuid, time.time())


def update_s(k: int) -> float:
    """Wall-clock time of the counter's k-th update: the period's grid, up to JITTER_S off it."""
    if not JITTER_S:
        return k * UPDATE_PERIOD_S
    scatter = math.sin(k * 12.9898) * 43758.5453 % 1.0  # the same for every process: [0, 1)
    return k * UPDATE_PERIOD_S + JITTER_S * (2 * scatter - 1)


def last_update_s(t: float) -> float:
    """The counter's last update at or before t."""
    k = math.floor(t / UPDATE_PERIOD_S)
    while update_s(k) > t:
        k -= 1
    while update_s(k + 1) <= t:
        k += 1
    return update_s(k)


@dataclass(frozen=True)
class Device:
    """One GPU, or one MIG instance of a GPU (`parent` set)."""

    index: int  # NVML index (PCI bus order); a MIG instance: its GPU's
    name: str
    arch: str
    power_w: float  # idle_w, bare_idle_w and load_w where not given: a constant draw
    max_power_w: float
    uuid: str
    pci_bus_id: str
    idle_w: float = math.nan  # with a CUDA context open
    bare_idle_w: float = math.nan  # without one
    load_w: float = math.nan  # while an epoch trains
    drift_w_per_s: float = 0.0
    counter: bool = True
    energy_error: str = ""
    error_file: str = ""
    lost: bool = False
    mig: tuple = field(default=(), compare=False)  # its MIG instances (Device objects)
    parent: int | None = None  # a MIG instance: its GPU's NVML index
    parent_uuid: str = ""
    mig_index: int = 0

    def __post_init__(self) -> None:
        idle_w = self.power_w if math.isnan(self.idle_w) else self.idle_w
        object.__setattr__(self, "idle_w", idle_w)
        object.__setattr__(self, "bare_idle_w", idle_w if math.isnan(self.bare_idle_w) else self.bare_idle_w)
        object.__setattr__(self, "load_w", idle_w if math.isnan(self.load_w) else self.load_w)

    @property
    def rank(self) -> int:
        return ARCH_RANK.get(self.arch, 0)

    def power_at(self, t: float) -> float:
        """The model's draw at wall-clock time t, in watts."""
        opened = CONTEXTS.get(self.uuid)
        base = self.bare_idle_w if opened is None or t < opened else self.idle_w
        busy = opened is not None and BUSY.now()
        return (self.load_w if busy else base) + self.drift_w_per_s * (t - DRIFT_T0_S)

    def true_energy_j(self, t: float) -> float:
        """The model's joules from this process's start (START_S) to wall-clock time t: the ground truth."""
        t = max(t, START_S)
        opened = CONTEXTS.get(self.uuid)
        bare_until = t if opened is None else min(t, max(opened, START_S))
        joules = self.bare_idle_w * (bare_until - START_S) + self.idle_w * (t - bare_until)
        joules += self.drift_w_per_s * ((t - DRIFT_T0_S) ** 2 - (START_S - DRIFT_T0_S) ** 2) / 2
        if opened is not None and t > opened:
            joules += (self.load_w - self.idle_w) * (BUSY.seconds(t) - BUSY.seconds(opened))
        return joules

    def energy_mj(self) -> int:
        """The model's millijoules at the counter's last update, like the real counter (which steps)."""
        return int(self.true_energy_j(last_update_s(time.time())) * 1000)

    def power_mw(self) -> int:
        """The draw now, 1 W above and below the model in turns every period, as sensors wobble."""
        now = time.time()
        step = int(now // UPDATE_PERIOD_S)
        return int(self.power_at(now) * 1000) + (1000 if step % 2 else -1000)

    def failing(self) -> bool:
        return bool(self.energy_error) and (not self.error_file or os.path.exists(self.error_file))


_reads = {"reads": 0, "read_s": 0.0}


def count_read(seconds: float) -> None:
    """One counter read of `seconds`, kept in FAKE_NVML_STATS_DIR/<pid>.json (every read: a killed process
    has written them all)."""
    if not STATS_DIR:
        return
    _reads["reads"] += 1
    _reads["read_s"] += seconds
    with open(os.path.join(STATS_DIR, f"{os.getpid()}.json"), "w") as out:
        json.dump(_reads, out)


def _devices() -> list[Device]:
    described = os.environ.get("FAKE_NVML_DEVICES")
    if described:
        specs = json.loads(described)
    else:
        specs = [{}] * int(os.environ.get("FAKE_NVML_GPUS", "1"))
    devices = []
    for i, spec in enumerate(specs):
        uuid = spec.get("uuid", f"GPU-fa4e{i:04x}-0000-4000-8000-{i:012x}")
        power_w = float(spec.get("power_w", _setting("POWER_W", "idle_w", 250.0)))
        idle_w = float(spec.get("idle_w", _setting("IDLE_W", "idle_w", power_w)))
        gpu = dict(index=i, name=spec.get("name", PROFILE.get("name", "Fake NVIDIA H100")),
                   arch=spec.get("arch", os.environ.get("FAKE_NVML_ARCH", PROFILE.get("arch", "HOPPER"))),
                   power_w=power_w, idle_w=idle_w,
                   bare_idle_w=float(spec.get("bare_idle_w", _setting("BARE_IDLE_W", "bare_idle_w", idle_w))),
                   load_w=float(spec.get("load_w", _setting("LOAD_W", "load_w", idle_w))),
                   drift_w_per_s=float(spec.get("drift_w_per_s", _setting("DRIFT_W_PER_S", "drift_w_per_s", 0.0))),
                   max_power_w=float(spec.get("max_power_w", PROFILE.get("max_power_w", 700.0))), uuid=uuid,
                   pci_bus_id=spec.get("pci_bus_id", f"00000000:{0x10 + i:02X}:00.0"),
                   counter=bool(spec.get("counter", True)), energy_error=spec.get("energy_error", ""),
                   error_file=spec.get("error_file", ""), lost=bool(spec.get("lost", False)))
        instances = tuple(Device(**{**gpu, "name": f"{gpu['name']} MIG 1g", "power_w": gpu["power_w"] / 7,
                                    "idle_w": gpu["idle_w"] / 7, "bare_idle_w": gpu["bare_idle_w"] / 7,
                                    "load_w": gpu["load_w"] / 7, "uuid": f"MIG-{uuid[4:13]}{m + 1:04x}{uuid[17:]}",
                                    "parent": i, "parent_uuid": uuid, "mig_index": m})
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
