"""A fake NVML for machines without an NVIDIA GPU: the real `pynvml` (nvidia-ml-py) with the
device calls replaced, so Zeus runs its real GPU code path on top of it.

Put this folder first on PYTHONPATH. Environment:
    FAKE_NVML_GPUS      number of GPUs (default 1)
    FAKE_NVML_POWER_W   power draw of every GPU (default 250)
    FAKE_NVML_ARCH      NVML architecture name (default HOPPER; PASCAL has no energy counter,
                        so Zeus integrates sampled power instead)
    FAKE_NVML_PERIOD_S  the energy counter's update period (default 0.1)
The energy counter (mJ) advances like the real one: in steps every 100 ms.
"""

import importlib.machinery
import importlib.util
import os
import sys
import time

_paths = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]
_spec = importlib.machinery.PathFinder.find_spec("pynvml", _paths)
_real = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_real)
globals().update({k: v for k, v in vars(_real).items() if not k.startswith("__")})

UPDATE_PERIOD_S = float(os.environ.get("FAKE_NVML_PERIOD_S", "0.1"))
_T0 = time.monotonic()
_GPUS = int(os.environ.get("FAKE_NVML_GPUS", "1"))
_POWER_W = float(os.environ.get("FAKE_NVML_POWER_W", "250"))
_ARCH = os.environ.get("FAKE_NVML_ARCH", "HOPPER")


def nvmlInit():
    pass


def nvmlShutdown():
    pass


def nvmlDeviceGetCount():
    return _GPUS


def nvmlDeviceGetHandleByIndex(index):
    if not 0 <= index < _GPUS:
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)  # noqa: F821 - from the real module
    return index


def nvmlDeviceGetName(handle):
    return "Fake NVIDIA H100"


def nvmlDeviceGetArchitecture(handle):
    return getattr(_real, f"NVML_DEVICE_ARCH_{_ARCH}")


def nvmlDeviceGetC2cModeInfoV(handle):
    raise NVMLError(NVML_ERROR_NOT_SUPPORTED)  # noqa: F821


def nvmlDeviceGetTotalEnergyConsumption(handle):
    """Millijoules since start, updated every UPDATE_PERIOD_S like the real counter."""
    elapsed = time.monotonic() - _T0
    return int((elapsed // UPDATE_PERIOD_S) * UPDATE_PERIOD_S * _POWER_W * 1000)


def _power_mw() -> int:
    """The draw, 1 W above and below FAKE_NVML_POWER_W in turns every 100 ms, as sensors wobble."""
    step = int((time.monotonic() - _T0) // UPDATE_PERIOD_S)
    return int(_POWER_W * 1000) + (1000 if step % 2 else -1000)


def nvmlDeviceGetPowerUsage(handle):
    return _power_mw()


def nvmlDeviceGetFieldValues(handle, fields):
    """Instant (and average) power: every field reads the current draw, in mW."""
    values = []
    for field_id, scope in fields:
        value = c_nvmlFieldValue_t()  # noqa: F821
        value.fieldId, value.scopeId, value.nvmlReturn = field_id, scope, NVML_SUCCESS  # noqa: F821
        value.value.uiVal = _power_mw()
        values.append(value)
    return values


def nvmlDeviceGetPowerManagementLimitConstraints(handle):
    """(min, max) power limit in mW: an H100 SXM's."""
    return (200_000, 700_000)
