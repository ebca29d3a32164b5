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
    result = train_to_accuracy(splits, TrainConfig(batch_size=128), StopRule(threshold=None, max_epochs=3),
                               meter=meter)
    assert all(r.energy_source == meter.source for r in result.history)
    assert all(r.epoch_energy_j > 0 for r in result.history if not r.energy_uncertain)
    assert result.energy_j == pytest.approx(sum(r.epoch_energy_j for r in result.history))
    assert math.isfinite(result.history[-1].gpu_energy_j)
