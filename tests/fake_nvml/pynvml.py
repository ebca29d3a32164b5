"""A fake NVML for machines without an NVIDIA GPU: the real `pynvml` (nvidia-ml-py) with the
device calls replaced, so Zeus runs its real GPU code path on top of it.

Put this folder first on PYTHONPATH. Environment:
    FAKE_NVML_GPUS      number of GPUs (default 1)
    FAKE_NVML_POWER_W   constant power draw of every GPU (default 250)
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

UPDATE_PERIOD_S = 0.1
_T0 = time.monotonic()
_GPUS = int(os.environ.get("FAKE_NVML_GPUS", "1"))
_POWER_W = float(os.environ.get("FAKE_NVML_POWER_W", "250"))


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
    return NVML_DEVICE_ARCH_HOPPER  # noqa: F821


def nvmlDeviceGetC2cModeInfoV(handle):
    raise NVMLError(NVML_ERROR_NOT_SUPPORTED)  # noqa: F821


def nvmlDeviceGetTotalEnergyConsumption(handle):
    """Millijoules since start, updated every UPDATE_PERIOD_S like the real counter."""
    elapsed = time.monotonic() - _T0
    return int((elapsed // UPDATE_PERIOD_S) * UPDATE_PERIOD_S * _POWER_W * 1000)


def nvmlDeviceGetPowerUsage(handle):
    return int(_POWER_W * 1000)
