"""Pick the trial's device: its visible CUDA GPU, else the CPU with its CPU share; flush denormals."""

from __future__ import annotations

import torch


def select_device(cpus: int = 1) -> torch.device:
    """The first visible CUDA device (the trial's GPU under CUDA_VISIBLE_DEVICES).

    Without one, the CPU, with torch's intra-op threads set to the `cpus` the
    trial was given so side-by-side trials do not oversubscribe the cores.
    Either way CPU math flushes denormal floats to zero (process-wide; a trial's
    process is its own): at large learning rates the sigmoid saturates, and
    denormal gradients made late CPU epochs 4-7x slower than early ones.
    """
    torch.set_flush_denormal(True)
    if torch.cuda.is_available():
        return torch.device("cuda", 0)
    torch.set_num_threads(max(1, int(cpus)))
    return torch.device("cpu")


def device_name(device: torch.device) -> str:
    """GPU model name, or "cpu"."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"
