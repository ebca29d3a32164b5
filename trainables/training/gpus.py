"""Which GPU a trial trains on and whose joules it reports: one decision, by the GPU's UUID.

    from trainables.training.gpus import trial_gpus, node_gpus
    gpus = trial_gpus(["1"])    # in a Ray trial: its ids, ray.get_runtime_context().get_accelerator_ids()["GPU"]
    gpus = trial_gpus()         # outside Ray: this process's first CUDA device, if it has one
    cuda_device_gpu(0)          # what NVML calls CUDA device 0 (matched by UUID): an NvmlGpu
    gpus.device                 # what to train on: cuda:K, or the CPU
    gpus.gpu                    # the GPU trained on as NVML names it (NvmlGpu: uuid, name, nvml_index, ...)
    gpus.measured, gpus.note    # whether its energy is measured; where not, one line saying why
    node_gpus()                 # every GPU NVML sees, judged the same way (`doctor`)

A trial given no GPU trains on the CPU and measures no GPU, on any node, whatever
CUDA_VISIBLE_DEVICES says (Ray 2.60 leaves a zero-GPU worker the node's value). Given one, the
id is what Ray put in CUDA_VISIBLE_DEVICES (an index, or a GPU-/MIG- UUID where the node's own
CUDA_VISIBLE_DEVICES held UUIDs), so its place there is the torch device. That device's UUID
(`torch.cuda.get_device_properties(k).uuid`, `cuda_device_gpu`) names the GPU in NVML whatever
order CUDA numbers devices in (fastest first unless CUDA_DEVICE_ORDER=PCI_BUS_ID) and whichever
devices it shows the process (under Slurm's ConstrainDevices or in a container, CUDA's 0 may be
NVML's 3, so no index is compared with NVML's): the GPU trained on is the GPU measured. Its energy
is measured where `energy_note` finds nothing against it: not a MIG slice or a GPU in MIG mode,
Volta or newer, and its counter answers. Every other case (and a Zeus that fails to set up or to
read it: `EnergyMeter`) trains all the same and reports the reason; energy is then NaN, never
another GPU's joules and never a crash.

`zeus_monitor` is the one place that speaks Zeus's GPU numbering (see there).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    import torch

_zeus_lock = threading.Lock()


@dataclass(frozen=True)
class NvmlGpu:
    """One GPU (or MIG instance) as NVML names it, and whether its energy counter can be read."""

    nvml_index: int  # NVML's index (PCI bus order, nvidia-smi's); a MIG instance: its GPU's
    uuid: str  # "GPU-..." (a MIG instance: "MIG-...")
    name: str
    pci_bus_id: str
    architecture: str  # NVML's name for it: "HOPPER", "AMPERE", "PASCAL", ...; "?" where NVML cannot say
    mig: bool  # a MIG instance, or a GPU in MIG mode
    energy_note: str  # "" where its NVML energy counter is read; else why not, in one line


@dataclass(frozen=True)
class TrialGpus:
    """What a trial trains on and which GPU's energy it measures."""

    device: "torch.device"
    gpu: NvmlGpu | None = None  # the GPU trained on (None on the CPU, or where NVML cannot name it)
    note: str = ""  # why that GPU's energy is not measured; "" where it is, or where no GPU was given

    @property
    def measured(self) -> bool:
        return self.gpu is not None and not self.note

    @property
    def device_name(self) -> str:
        """The GPU's model name, or "cpu"."""
        if self.device.type != "cuda":
            return "cpu"
        import torch

        return torch.cuda.get_device_name(self.device)


def trial_gpus(assigned: Sequence[str | int] | None = None, cpus: int = 1) -> TrialGpus:
    """The device and measured GPU of a trial given the GPU ids `assigned` (see the module docstring).

    On the CPU torch's intra-op threads are set to the `cpus` the trial was given, so side-by-side
    trials do not oversubscribe the cores. Either way CPU math flushes denormal floats to zero
    (process-wide; a trial's process is its own): at large learning rates the sigmoid saturates,
    and denormal gradients made late CPU epochs 4-7x slower than early ones.
    """
    import torch

    torch.set_flush_denormal(True)
    ids = None if assigned is None else [str(a) for a in assigned]
    if ids == [] or (ids is None and not torch.cuda.is_available()):
        return _on_cpu(cpus)
    if not torch.cuda.is_available():
        return _on_cpu(cpus, f"given GPU {ids[0]}, but torch sees no CUDA device: trained on the CPU")
    ordinal = 0 if ids is None else _cuda_ordinal(ids[0])
    if ordinal is None:
        return _on_cpu(cpus, f"given GPU {ids[0]}, which this process does not see (CUDA_VISIBLE_DEVICES="
                             f"{os.environ.get('CUDA_VISIBLE_DEVICES')!r}): trained on the CPU")
    device = torch.device("cuda", ordinal)
    try:
        gpu = cuda_device_gpu(ordinal)
    except UnnamedGpu as exc:  # no NVML, or it does not know the device: train, say why
        return TrialGpus(device, None, one_line(f"NVML cannot name the GPU torch trains on ({exc})"))
    note = gpu.energy_note
    if not note and ids and len(ids) > 1:
        note = f"given {len(ids)} GPUs: it trains on one, and the energy of a several-GPU trial is not measured"
    return TrialGpus(device, gpu, note)


class UnnamedGpu(Exception):
    """NVML cannot name a CUDA device: "UUID: why" (torch's bare UUID, "?" where torch cannot read it)."""


def cuda_device_gpu(ordinal: int) -> NvmlGpu:
    """The GPU (or MIG instance) that CUDA device `ordinal` of this process is, as NVML names it: found
    by the UUID torch reads, whatever order CUDA numbers devices in. UnnamedGpu where NVML cannot."""
    import torch

    bare_uuid = "?"
    try:
        bare_uuid = str(torch.cuda.get_device_properties(ordinal).uuid)
        pynvml = _nvml()
        return _describe(pynvml, _handle_by_uuid(pynvml, bare_uuid))
    except Exception as exc:  # noqa: BLE001 - no NVML, or it does not know the device
        raise UnnamedGpu(f"{bare_uuid}: {error_text(exc)}") from exc


def node_gpus() -> tuple[list[NvmlGpu], str]:
    """Every GPU NVML sees, in NVML's order, each judged by `energy_note`; and why there are none
    where there are none."""
    try:
        pynvml = _nvml()
        count = pynvml.nvmlDeviceGetCount()
    except Exception as exc:  # noqa: BLE001 - no driver, no library: say so
        return [], f"no NVIDIA driver or NVML ({type(exc).__name__})"
    gpus = []
    for index in range(count):
        try:
            gpus.append(_describe(pynvml, pynvml.nvmlDeviceGetHandleByIndex(index)))
        except Exception as exc:  # noqa: BLE001 - a GPU NVML cannot open: listed, with the error
            gpus.append(NvmlGpu(index, "?", "?", "?", "?", False, one_line(f"NVML error: {exc}")))
    measurable = [gpu for gpu in gpus if not gpu.energy_note]
    try:  # as a trial's meter does: Zeus set up over its GPU
        if measurable:
            zeus_monitor(measurable, cpu=False)
    except Exception as exc:  # noqa: BLE001 - Zeus's setup (zeusd, its GPU list) fails for every GPU here
        zeus = one_line(f"Zeus cannot set up its GPU meter here: {error_text(exc)}")
        gpus = [replace(gpu, energy_note=gpu.energy_note or zeus) for gpu in gpus]
    return gpus, "" if gpus else "NVML sees no GPU"


def energy_note(pynvml, handle) -> str:
    """Why NVML cannot measure this GPU's energy, in one line; "" where it can (its counter answers).

    The same decision for `doctor` and for every trial: Zeus's own (Volta or newer) is not enough,
    since a driver may not expose the counter on a Volta-or-newer GPU."""
    try:
        if _is_mig_instance(pynvml, handle):
            return "a MIG instance: NVML measures no energy of MIG slices"
        if _in_mig_mode(pynvml, handle):
            return "in MIG mode: NVML measures no energy of MIG slices"
        arch = pynvml.nvmlDeviceGetArchitecture(handle)
        if arch < pynvml.NVML_DEVICE_ARCH_VOLTA:
            return f"{_arch_name(pynvml, arch).title()}, older than Volta: no NVML energy counter"
        pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
    except pynvml.NVMLError as exc:
        if exc.value == pynvml.NVML_ERROR_NOT_SUPPORTED:
            return "Volta or newer, but its driver exposes no energy counter (NVML: Not Supported)"
        return one_line(f"NVML error reading its energy counter: {exc}")
    return ""


def zeus_monitor(gpus: Sequence[NvmlGpu] = (), cpu: bool = True, **options):
    """Zeus's `ZeusMonitor` over `gpus`, and RAPL where `cpu` (ZeusMonitor's other `options` passed
    on); its `gpu_indices` are Zeus's indices of `gpus`, in order.

    Zeus numbers GPUs by CUDA_VISIBLE_DEVICES's integer entries, read once per process when it
    first builds its GPU list: it cannot name a GPU by UUID, a UUID or MIG entry there makes it
    raise, and under CUDA's fastest-first order its index i is not the GPU CUDA calls i. So, for
    as long as the monitor takes to set up (under a lock), CUDA_VISIBLE_DEVICES holds the GPUs'
    NVML indices (as Zeus itself advises for MIG), or "" (no GPU) for a monitor of none; each GPU
    is then found in Zeus's list by its UUID, whoever built the list. A GPU not in it is an
    error, loudly (tests/test_gpus.py checks Zeus's numbering too).
    """
    from trainables.training.zeus_import import zeus_monitor_class

    ZeusMonitor = zeus_monitor_class()  # first: zeus.monitor without scikit-learn
    from zeus.device import get_gpus

    with _zeus_lock:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(gpu.nvml_index) for gpu in gpus)
        try:
            indices = []
            if gpus:
                pynvml = _nvml()
                listed = [_text(pynvml.nvmlDeviceGetUUID(gpu.handle)) for gpu in get_gpus().gpus]
                for gpu in gpus:
                    if gpu.uuid not in listed:
                        raise RuntimeError(f"Zeus's GPU list in this process ({', '.join(listed)}) lacks {gpu.uuid}")
                    indices.append(listed.index(gpu.uuid))
            return ZeusMonitor(gpu_indices=indices, cpu_indices=None if cpu else [], **options)
        finally:
            if visible is None:
                del os.environ["CUDA_VISIBLE_DEVICES"]
            else:
                os.environ["CUDA_VISIBLE_DEVICES"] = visible


# -- helpers --------------------------------------------------------------------------------------------
def _on_cpu(cpus: int, note: str = "") -> TrialGpus:
    import torch

    torch.set_num_threads(max(1, int(cpus)))
    return TrialGpus(torch.device("cpu"), None, note)


def _cuda_ordinal(gpu_id: str) -> int | None:
    """The torch device of the GPU Ray calls `gpu_id` in this process; None where it sees no such GPU.

    Ray sets CUDA_VISIBLE_DEVICES to the trial's ids, so an id's place there is its torch device;
    a UUID (or the unique prefix CUDA accepts) is looked up among torch's devices."""
    import torch

    if not gpu_id.isdigit():
        found = [k for k in range(torch.cuda.device_count())
                 if any(f"{prefix}{torch.cuda.get_device_properties(k).uuid}".startswith(gpu_id)
                        for prefix in ("GPU-", "MIG-"))]
        return found[0] if len(found) == 1 else None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return int(gpu_id) if int(gpu_id) < torch.cuda.device_count() else None
    entries = [entry.strip() for entry in visible.split(",")]
    return entries.index(gpu_id) if gpu_id in entries else None


def _nvml():
    import pynvml

    pynvml.nvmlInit()
    return pynvml


def _handle_by_uuid(pynvml, bare_uuid: str):
    """NVML's handle of the device torch calls by `bare_uuid` (torch prints UUIDs without GPU-/MIG-)."""
    for prefix in ("GPU-", "MIG-"):
        try:
            return pynvml.nvmlDeviceGetHandleByUUID(prefix + bare_uuid)
        except pynvml.NVMLError as exc:
            error = exc
    raise error


def _describe(pynvml, handle) -> NvmlGpu:
    instance = _is_mig_instance(pynvml, handle)
    whole = pynvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(handle) if instance else handle
    try:
        arch = _arch_name(pynvml, pynvml.nvmlDeviceGetArchitecture(whole))
    except pynvml.NVMLError:
        arch = "?"
    return NvmlGpu(nvml_index=pynvml.nvmlDeviceGetIndex(whole), uuid=_text(pynvml.nvmlDeviceGetUUID(handle)),
                   name=_text(pynvml.nvmlDeviceGetName(handle)),
                   pci_bus_id=_text(pynvml.nvmlDeviceGetPciInfo(whole).busId), architecture=arch,
                   mig=instance or _in_mig_mode(pynvml, whole), energy_note=energy_note(pynvml, handle))


def _is_mig_instance(pynvml, handle) -> bool:
    try:
        return bool(pynvml.nvmlDeviceIsMigDeviceHandle(handle))
    except pynvml.NVMLError:  # a driver without MIG
        return False


def _in_mig_mode(pynvml, handle) -> bool:
    try:
        return pynvml.nvmlDeviceGetMigMode(handle)[0] == pynvml.NVML_DEVICE_MIG_ENABLE
    except pynvml.NVMLError:  # NotSupported: a GPU without MIG
        return False


def _arch_name(pynvml, arch: int) -> str:
    names = [n.removeprefix("NVML_DEVICE_ARCH_") for n in dir(pynvml)
             if n.startswith("NVML_DEVICE_ARCH_") and getattr(pynvml, n) == arch]
    return names[0] if names else f"architecture {arch}"


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def one_line(text: str, limit: int = 240) -> str:
    """One line of at most `limit` characters."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."
