"""A fake CUDA for torch, showing the fake NVML's node (fake_node.py): on PYTHONPATH with pynvml.py.

torch.cuda reports the node's GPUs as CUDA would to this process: CUDA_VISIBLE_DEVICES (read at
the first torch.cuda call, as CUDA reads it once) in CUDA's order (fastest first, or PCI bus order
with CUDA_DEVICE_ORDER=PCI_BUS_ID), each with its name and UUID
(`torch.cuda.get_device_properties(i).uuid`, printed without the GPU-/MIG- prefix, as torch's).
A CPU-only torch cannot hold tensors on "cuda", so the fake keeps them on the CPU: tensors and
generators asked for on a CUDA device are made on the CPU (`Tensor.to`, the factory functions,
`torch.Generator`), and synchronize does nothing. Training on "cuda:K" here is training on the
CPU: what the fake makes testable is which GPU a trial picks and which GPU's joules it reads,
not CUDA itself. On a host with a real GPU the fake hides it the same way.

The first tensor or generator made on a CUDA device, synchronize or set_device opens this process's
CUDA context there, as the real ones do (querying devices and their properties does not), and the
fake NVML's GPU then draws its idle power with a context. The project's epoch loops (train_epoch,
evaluate: trainables.training.loops) mark the fake GPU busy while they run: it draws its load power
then, as a real GPU does while it runs their kernels (fake_node.py's power model).

FAKE_CUDA=0 leaves torch alone (a node whose torch has no CUDA). torch is patched right after its
first import, through an import hook, so processes that never import torch (Ray's own) pay
nothing. Python imports only the first sitecustomize on its path: this one runs the next one too.
"""

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from types import SimpleNamespace

_here = os.path.dirname(os.path.abspath(__file__))


def _cuda_devices() -> list:
    """The devices CUDA shows this process, fixed at the first call (CUDA's initialization)."""
    global _devices
    if _devices is None:
        import fake_node

        _devices = fake_node.cuda_devices()
    return _devices


_devices = None


def _ordinal(device) -> int:
    if device is None:
        return 0
    if isinstance(device, int):
        index = device
    else:
        index = getattr(device, "index", None)
        if isinstance(device, str):
            index = int(device.partition(":")[2] or 0)
        index = 0 if index is None else index
    if not 0 <= index < len(_cuda_devices()):
        raise RuntimeError(f"CUDA error: invalid device ordinal {index} (fake CUDA shows {len(_cuda_devices())})")
    return index


class _Uuid:
    """torch's CUuuid: printed as the bare UUID."""

    def __init__(self, text: str) -> None:
        self._text = text

    def __str__(self) -> str:
        return self._text

    __repr__ = __str__


def _properties(device=None):
    d = _cuda_devices()[_ordinal(device)]
    major = {"PASCAL": 6, "VOLTA": 7, "TURING": 7, "AMPERE": 8, "ADA": 8, "HOPPER": 9}.get(d.arch, 10)
    return SimpleNamespace(name=d.name, uuid=_Uuid(d.uuid.split("-", 1)[1]), major=major, minor=0,
                           total_memory=80 * 2**30, multi_processor_count=132,
                           pci_bus_id=int(d.pci_bus_id.split(":")[1], 16))


def _on_cpu(value):
    """`value` with a CUDA device (torch.device, "cuda", "cuda:K") replaced by the CPU (which opens the
    context there)."""
    kind = getattr(value, "type", value)
    if not (isinstance(kind, str) and kind.startswith("cuda")):
        return value
    _open_context(value)
    return "cpu"


def _open_context(device) -> None:
    import fake_node

    fake_node.open_context(_cuda_devices()[_ordinal(device)])


def _patch(torch) -> None:
    cuda = torch.cuda
    cuda.is_available = lambda: bool(_cuda_devices())
    cuda.device_count = lambda: len(_cuda_devices())
    cuda.get_device_properties = _properties
    cuda.get_device_name = lambda device=None: _properties(device).name
    cuda.get_device_capability = lambda device=None: (_properties(device).major, _properties(device).minor)
    cuda.synchronize = lambda device=None: _open_context(device)
    cuda.current_device = lambda: 0
    cuda.set_device = _open_context
    cuda.empty_cache = lambda: None

    def cpu_kwargs(function):
        def on_cpu(*args, **kwargs):
            if "device" in kwargs:
                kwargs["device"] = _on_cpu(kwargs["device"])
            return function(*args, **kwargs)
        on_cpu.__name__ = on_cpu.__qualname__ = function.__name__
        on_cpu.__doc__ = function.__doc__
        return on_cpu

    for name in ("as_tensor", "tensor", "zeros", "ones", "full", "empty", "arange", "randperm", "rand", "randn",
                 "randint", "zeros_like", "ones_like", "empty_like", "full_like"):
        setattr(torch, name, cpu_kwargs(getattr(torch, name)))
    to = torch.Tensor.to

    def tensor_to(self, *args, **kwargs):
        if "device" in kwargs:
            kwargs["device"] = _on_cpu(kwargs["device"])
        return to(self, *map(_on_cpu, args), **kwargs)

    torch.Tensor.to = tensor_to
    torch.Tensor.cuda = lambda self, *args, **kwargs: self

    class Generator(torch.Generator):
        """torch.Generator, on the CPU when asked for a CUDA device."""

        def __new__(cls, device="cpu"):
            return super().__new__(cls, device=_on_cpu(device))

        def __init__(self, device="cpu") -> None:
            pass

    torch.Generator = Generator


def _mark_busy(loops) -> None:
    """The project's epoch loops mark the fake GPU busy while they run (fake_node.BUSY)."""
    import functools

    import fake_node

    def busy(function):
        @functools.wraps(function)
        def marked(*args, **kwargs):
            with fake_node.BUSY.epoch():
                return function(*args, **kwargs)
        return marked

    for loop in loops.LOOPS.values():
        loop.train_epoch = busy(loop.train_epoch)
    loops.evaluate = busy(loops.evaluate)


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Patches each module of `patches` (name -> function of the module) right after its first import."""

    def __init__(self, patches: dict) -> None:
        self.patches = patches

    def find_spec(self, name, path=None, target=None):
        if name not in self.patches:
            return None
        patch = self.patches.pop(name)
        if not self.patches:
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            patch(module)

        spec.loader.exec_module = exec_and_patch
        return spec


if os.environ.get("FAKE_CUDA", "1") != "0" and "torch" not in sys.modules:
    sys.meta_path.insert(0, _PatchOnImport({"torch": _patch, "trainables.training.loops": _mark_busy}))

# The next sitecustomize on the path (a distribution's own), as if this one were not here.
_next = importlib.machinery.PathFinder.find_spec(
    "sitecustomize", [p for p in sys.path if os.path.abspath(p or ".") != _here])
if _next is not None:
    _module = importlib.util.module_from_spec(_next)
    _next.loader.exec_module(_module)
