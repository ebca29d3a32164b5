"""The real GPU path where a CUDA GPU is present: NVML energy through Zeus, training on the device.
Skipped cleanly elsewhere (CI has no GPU); tests/test_energy.py covers the same code on a fake NVML."""

import math

import pytest
import torch

from trainables.training.config import TrainConfig
from trainables.training.stop import StopRule
from trainables.training.energy import EnergyMeter
from trainables.training.run import train_to_accuracy

from conftest import blobs

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU with CUDA")]


def test_energy_of_a_gpu_run_comes_from_nvml_and_adds_up():
    from trainables.data.splits import prepare_splits

    x, y = blobs(200_000, n_features=120, n_classes=10, seed=0)
    splits = prepare_splits(x, y, x[:5000], y[:5000], 0.2, 0)
    meter = EnergyMeter()
    assert "gpu" in meter.source and meter.gpu_indices == [0]
    assert meter.gpu_uuid == f"GPU-{torch.cuda.get_device_properties(0).uuid}"  # NVML's GPU is torch's device 0
    # 30 epochs: the fast loop may take under 0.1 s an epoch on an H100, and a direct measurement
    # within 5% needs the run to span about 25 counter periods.
    result = train_to_accuracy(splits, TrainConfig(batch_size=128), StopRule(threshold=None, max_epochs=30),
                               meter=meter)
    assert all(r.energy_source == "gpu" and r.energy_method == "direct" for r in result.history)
    assert all(r.epoch_energy_j >= 0 for r in result.history)
    assert result.energy_j == pytest.approx(sum(r.epoch_energy_j for r in result.history)) and result.energy_j > 0
    last = result.history[-1]
    assert 0.01 < last.energy_resolution_s < 1.0 and last.energy_err_j < 0.05 * last.energy_j
    assert math.isfinite(last.gpu_idle_w) and last.gpu_idle_w > 0 and last.gpu_max_power_w > last.gpu_idle_w
    assert last.dynamic_energy_j == pytest.approx(last.energy_j - last.gpu_idle_w * last.time_s)


def test_a_short_gpu_run_is_replayed_on_its_own_gpu():
    """A run far shorter than 25 counter periods: replayed in one window, the per-run mean within 5%."""
    from trainables.data.splits import prepare_splits

    x, y = blobs(2000, n_features=120, n_classes=10, seed=0)
    splits = prepare_splits(x, y, x[:500], y[:500], 0.2, 0)
    result = train_to_accuracy(splits, TrainConfig(batch_size=128), StopRule(threshold=None, max_epochs=3),
                               replay_budget_s=10.0)
    last = result.history[-1]
    assert last.energy_method == "replay" and last.replays >= 2
    assert last.energy_err_j < 0.05 * last.energy_j
    assert last.first_run_energy_j == pytest.approx(sum(r.epoch_energy_j for r in result.history))
