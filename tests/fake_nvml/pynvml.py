"""A fake NVML for machines without an NVIDIA GPU: the real `pynvml` (nvidia-ml-py) with the
device calls replaced, so Zeus runs its real GPU code path on top of it.

Put this folder first on PYTHONPATH. The node it shows (how many GPUs, their models, UUIDs, bus
ids, power, architectures, MIG mode, a missing counter, NVML errors) is described by environment
variables: see fake_node.py (FAKE_NVML_PROFILE=H200, FAKE_NVML_DEVICES, or FAKE_NVML_GPUS/_POWER_W/_ARCH,
FAKE_NVML_PERIOD_S); FAKE_NVML_READ_S makes each energy-counter read take that long, as NVML reads can.
Each GPU's energy counter (mJ) advances at its own power (fake_node's model: idle with and without
a CUDA context, load while epochs train, drift), in steps every period, like the real one, so joules
read name the GPU they were read from. NVML's indices are the PCI bus order. The folder's
sitecustomize.py shows torch the same GPUs through CUDA; the processes that hold a CUDA context on a
GPU are this process, once its fake CUDA opened one there.
"""

import importlib.machinery
import importlib.util
import os
import sys
import time
from types import SimpleNamespace

_here = os.path.dirname(os.path.abspath(__file__))
_paths = [p for p in sys.path if os.path.abspath(p or ".") != _here]
_spec = importlib.machinery.PathFinder.find_spec("pynvml", _paths)
_real = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_real)
globals().update({k: v for k, v in vars(_real).items() if not k.startswith("__")})

import fake_node  # noqa: E402 - beside this file, on the same PYTHONPATH

# What the real library's nvmlErrorString says for the errors the fake raises.
_real.NVMLError._errcode_to_string.update({
    _real.NVML_ERROR_NOT_SUPPORTED: "Not Supported", _real.NVML_ERROR_UNKNOWN: "Unknown Error",
    _real.NVML_ERROR_GPU_IS_LOST: "GPU is lost", _real.NVML_ERROR_NOT_FOUND: "Not Found",
    _real.NVML_ERROR_INVALID_ARGUMENT: "Invalid Argument"})


def _error(name: str):
    return NVMLError(getattr(_real, f"NVML_ERROR_{name}"))  # noqa: F821 - from the real module


def _device(handle) -> "fake_node.Device":
    if not isinstance(handle, fake_node.Device):
        raise _error("INVALID_ARGUMENT")
    return handle


def _readable(handle) -> "fake_node.Device":
    """The device behind `handle`, raising its NVML error where it has one now."""
    device = _device(handle)
    if device.failing():
        raise _error(device.energy_error)
    return device


def nvmlInit():
    pass


def nvmlShutdown():
    pass


def nvmlDeviceGetCount():
    return len(fake_node.DEVICES)


def nvmlDeviceGetHandleByIndex(index):
    if not 0 <= index < len(fake_node.DEVICES):
        raise _error("INVALID_ARGUMENT")
    if fake_node.DEVICES[index].lost:
        raise _error("GPU_IS_LOST")
    return fake_node.DEVICES[index]


def nvmlDeviceGetHandleByUUID(uuid):
    device = fake_node.by_uuid(uuid.decode() if isinstance(uuid, bytes) else uuid)
    if device is None:
        raise _error("NOT_FOUND")
    if device.lost:
        raise _error("GPU_IS_LOST")
    return device


def nvmlDeviceGetIndex(handle):
    device = _device(handle)
    if device.parent is not None:
        raise _error("INVALID_ARGUMENT")
    return device.index


def nvmlDeviceGetUUID(handle):
    return _device(handle).uuid


def nvmlDeviceGetName(handle):
    return _device(handle).name


def nvmlDeviceGetPciInfo(handle):
    return SimpleNamespace(busId=_device(handle).pci_bus_id.encode())  # bytes, as the real struct's field


nvmlDeviceGetPciInfo_v3 = nvmlDeviceGetPciInfo


def nvmlDeviceGetArchitecture(handle):
    return getattr(_real, f"NVML_DEVICE_ARCH_{_device(handle).arch}")


def nvmlDeviceGetMigMode(handle):
    """[current, pending]; GPUs older than Ampere have no MIG: NotSupported, as the real call."""
    device = _device(handle)
    if device.rank < fake_node.ARCH_RANK["AMPERE"]:
        raise _error("NOT_SUPPORTED")
    mode = NVML_DEVICE_MIG_ENABLE if device.mig else 0  # noqa: F821
    return [mode, mode]


def nvmlDeviceIsMigDeviceHandle(handle):
    return _device(handle).parent is not None


def nvmlDeviceGetMaxMigDeviceCount(handle):
    return len(_device(handle).mig)


def nvmlDeviceGetMigDeviceHandleByIndex(handle, index):
    instances = _device(handle).mig
    if not 0 <= index < len(instances):
        raise _error("NOT_FOUND")
    return instances[index]


def nvmlDeviceGetDeviceHandleFromMigDeviceHandle(handle):
    device = _device(handle)
    if device.parent is None:
        raise _error("INVALID_ARGUMENT")
    return fake_node.DEVICES[device.parent]


def nvmlDeviceGetC2cModeInfoV(handle):
    raise _error("NOT_SUPPORTED")


def nvmlDeviceGetTotalEnergyConsumption(handle):
    """Millijoules since start, updated every period like the real counter, read in FAKE_NVML_READ_S
    (the value is the counter's as the read ends). NotSupported on a MIG instance and where the GPU has
    no counter (older than Volta, or a driver without it)."""
    began = time.perf_counter()
    if fake_node.READ_S:
        time.sleep(fake_node.READ_S)
    device = _readable(handle)
    if device.parent is not None or not device.counter or device.rank < fake_node.ARCH_RANK["VOLTA"]:
        raise _error("NOT_SUPPORTED")
    value = device.energy_mj()
    fake_node.count_read(time.perf_counter() - began)
    return value


def nvmlDeviceGetComputeRunningProcesses(handle):
    """The processes with a CUDA context on the GPU: this one, once its fake CUDA opened one there."""
    device = _device(handle)
    if device.uuid not in fake_node.CONTEXTS:
        return []
    return [SimpleNamespace(pid=os.getpid(), usedGpuMemory=512 * 2**20, gpuInstanceId=0xFFFFFFFF,
                            computeInstanceId=0xFFFFFFFF)]


nvmlDeviceGetComputeRunningProcesses_v2 = nvmlDeviceGetComputeRunningProcesses_v3 = \
    nvmlDeviceGetComputeRunningProcesses


def nvmlDeviceGetPowerUsage(handle):
    return _readable(handle).power_mw()


def nvmlDeviceGetFieldValues(handle, fields):
    """Instant (and average) power: every field reads the current draw, in mW."""
    device = _readable(handle)
    values = []
    for field_id, scope in fields:
        value = c_nvmlFieldValue_t()  # noqa: F821
        value.fieldId, value.scopeId, value.nvmlReturn = field_id, scope, NVML_SUCCESS  # noqa: F821
        value.value.uiVal = device.power_mw()
        values.append(value)
    return values


def nvmlDeviceGetPowerManagementLimitConstraints(handle):
    """(min, max) power limit in mW (default: an H100 SXM's max)."""
    return (200_000, int(_device(handle).max_power_w * 1000))
