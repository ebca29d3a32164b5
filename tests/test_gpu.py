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


def test_energy_of_a_gpu_run_comes_from_nvml_on_counter_updates():
    from trainables.data.splits import prepare_splits

    x, y = blobs(400_000, n_features=120, n_classes=10, seed=0)
    splits = prepare_splits(x, y, x[:5000], y[:5000], 0.2, 0)
    meter = EnergyMeter()
    assert "gpu" in meter.source and meter.gpu_indices == [0]
    assert meter.gpu_uuid == f"GPU-{torch.cuda.get_device_properties(0).uuid}"  # NVML's GPU is torch's device 0
    # 40 epochs of 320,000 rows: about 4 s on an H200 with the fast loop's CUDA graph (2026-12-04), far longer
    # than the counter's period: the run's own window stands (energy_method direct), within 5%.
    result = train_to_accuracy(splits, TrainConfig(batch_size=128), StopRule(threshold=None, max_epochs=40),
                               meter=meter, replay_budget_s=10.0)
    last = result.history[-1]
    assert last.energy_source == "gpu" and last.energy_method == "direct" and not last.energy_uncertain, last
    assert all(math.isnan(r.energy_j) for r in result.history[:-1])  # read at the start and the end alone
    assert 0.01 < last.energy_resolution_s < 1.0 and last.energy_err_j < 0.05 * last.energy_j
    assert last.energy_j >= (last.gpu_idle_w - last.gpu_idle_err_w) * last.time_s - last.energy_err_j
    assert math.isfinite(last.gpu_idle_w) and last.gpu_idle_w > 0 and last.gpu_max_power_w > last.gpu_idle_w
    assert abs(last.gpu_idle_after_w - last.gpu_idle_w) < 0.2 * last.gpu_idle_w
    assert last.dynamic_energy_j == pytest.approx(last.energy_j - last.gpu_idle_w * last.time_s)


def test_a_short_gpu_run_is_replayed_on_its_own_gpu_in_a_few_counter_periods():
    """A run far shorter than a counter period: replayed in one window on the counter's updates, reusing the
    run's captured graph; the per-run mean within 5%, the window the replays and about a period more."""
    from trainables.data.splits import prepare_splits
    from trainables.training.replay import settle_energy
    from trainables.training.run import TrainingRun

    x, y = blobs(2000, n_features=120, n_classes=10, seed=0)
    splits = prepare_splits(x, y, x[:500], y[:500], 0.2, 0)
    run = TrainingRun(splits, TrainConfig(batch_size=128), StopRule(threshold=None, max_epochs=3))
    while not run.done:
        report = run.run_epoch()
    last = settle_energy(run, report, budget_s=10.0)
    assert last.energy_method == "replay" and last.replays >= 1 and not last.energy_uncertain, last
    assert last.energy_err_j < 0.05 * last.energy_j
    assert last.replay_time_s - last.replays * last.time_s < 3 * last.energy_resolution_s
    assert (run.loop.epoch_graph.builds, run.loop.epoch_graph.captures) == (1, 1)  # once, at the run's start


def _graphed_and_eager(epochs: int, batch_size: int = 128):
    """The fast loop `epochs` epochs on CUDA with its epoch graph and without: (epoch stats, parameters,
    Adam's step counters, the loop) of each."""
    from trainables.training.loops import make_loop
    from trainables.training.model import InstrumentNet
    from trainables.training.optim import make_optimizer

    x, y = blobs(5000, n_features=120, n_classes=10, seed=0)
    device, results = torch.device("cuda", 0), {}
    for graphed in (True, False):
        torch.manual_seed(0)
        model = InstrumentNet(120, 256, 10).to(device)
        optimizer = make_optimizer("adam", model.parameters(), 1e-3, fused=True)
        loop = make_loop("fast", x, y, batch_size, device, seed=0)
        if not graphed:
            loop.epoch_graph = None
        stats = [loop.train_epoch(model, optimizer) for _ in range(epochs)]
        steps = [state["step"].item() for state in optimizer.state.values()]
        results[graphed] = (stats, [p.detach().clone() for p in model.parameters()], steps, loop)
    return results[True], results[False], math.ceil(len(y) / batch_size)


def test_the_fast_loop_replays_each_epoch_as_one_cuda_graph_with_the_same_numbers():
    """The first epoch runs step by step, the second is captured, the rest replay it: the same training
    as launching every kernel, and Adam's step counters (which checkpoints keep) count every batch."""
    (graphed, params, steps, loop), (eager, eager_params, eager_steps, _), batches = _graphed_and_eager(4)
    assert loop.epoch_graph.graph is not None and not loop.epoch_graph.failed
    assert [s.acc for s in graphed] == [s.acc for s in eager]
    assert [s.loss for s in graphed] == pytest.approx([s.loss for s in eager], rel=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(params, eager_params))
    assert steps == eager_steps == [4 * batches] * 4


def test_a_checkpointed_gpu_run_continues_exactly_through_a_new_graph():
    """A retry loads the checkpoint into a new run (new tensors for Adam's state): its loop captures again,
    and the run ends where an uninterrupted one does."""
    from trainables.data.splits import prepare_splits
    from trainables.training.energy import TimeOnlyMeter
    from trainables.training.run import TrainingRun

    x, y = blobs(5000, n_features=120, n_classes=10, seed=0)
    splits = prepare_splits(x, y, x[:500], y[:500], 0.2, 0)
    config, rule = TrainConfig(batch_size=64), StopRule(threshold=None, max_epochs=6)
    whole = TrainingRun(splits, config, rule, meter=TimeOnlyMeter())
    uninterrupted = [whole.run_epoch() for _ in range(6)]
    first = TrainingRun(splits, config, rule, meter=TimeOnlyMeter())
    before = [first.run_epoch() for _ in range(3)]
    state = first.state_dict()
    first.close()
    again = TrainingRun(splits, config, rule, meter=TimeOnlyMeter())
    again.load_state_dict(state)
    after = [again.run_epoch() for _ in range(3)]
    assert again.loop.epoch_graph.graph is not None and not again.loop.epoch_graph.failed
    assert again.loop.epoch_graph.captures == 1  # built as the run was made; the checkpoint loaded into its tensors
    assert [r.train_acc for r in before + after] == [r.train_acc for r in uninterrupted]
    assert after[-1].val_acc == uninterrupted[-1].val_acc and after[-1].test_acc == uninterrupted[-1].test_acc
