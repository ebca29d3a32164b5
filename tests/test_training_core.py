"""Training core: standardization, loops, train_to_accuracy, divergence, checkpoint state."""

import math
import os
import time

import numpy as np
import pytest
import torch

from trainables.training.config import TrainConfig
from trainables.training.gpus import trial_gpus
from trainables.training.stop import StopRule
from trainables.errors import InputError
from trainables.training.loops import evaluate, make_loop, summed_loss_and_hits
from trainables.training.model import InstrumentNet, descent_targets
from trainables.training.optim import make_optimizer
from trainables.data.splits import (
    check_validation_split,
    min_validation_rows,
    prepare_splits,
    split_validation,
    standardize,
    validation_rows,
)
from trainables.training.run import TrainingRun, train_to_accuracy

from conftest import blobs


def test_standardize_uses_training_statistics_only():
    train = np.array([[0.0, 5.0], [2.0, 5.0], [4.0, 5.0]], dtype=np.float32)
    test = np.array([[100.0, 7.0]], dtype=np.float32)
    tr, te = standardize(train, test)
    assert np.allclose(tr.mean(axis=0), 0.0, atol=1e-6)
    # Test rows are scaled with train's mean 2 and std sqrt(8/3); they do not change train's stats.
    assert te[0, 0] == pytest.approx((100.0 - 2.0) / np.sqrt(8 / 3), rel=1e-5)
    # Zero-variance feature: centred, not divided by zero.
    assert np.all(np.isfinite(te)) and te[0, 1] == pytest.approx(2.0)


def test_trial_splits_are_standardized_with_the_training_split_alone():
    """Statistics from the training rows left after holding out validation: not val, not test."""
    x, y = blobs(1000, n_features=6, seed=3)
    test_x, test_y = blobs(200, n_features=6, seed=4)
    test_x = test_x + 10.0  # a shifted test set would move any statistics it took part in
    splits = prepare_splits(x, y, test_x, test_y, val_fraction=0.3, seed=5)
    raw_train, _, raw_val, _ = split_validation(x, y, 0.3, 5)
    mean, std = raw_train.mean(axis=0, dtype=np.float64), raw_train.std(axis=0, dtype=np.float64)
    assert np.allclose(splits.train_x.mean(axis=0), 0.0, atol=1e-5)
    assert np.allclose(splits.train_x.std(axis=0), 1.0, atol=1e-4)
    assert np.allclose(splits.val_x, (raw_val - mean) / std, atol=1e-5)
    assert np.allclose(splits.test_x, (test_x - mean) / std, atol=1e-5)


def test_validation_split_is_stratified_seeded_and_shuffled():
    y = np.repeat(np.arange(5), 100)  # class-ordered, like the UIowa training rows
    x = np.arange(500, dtype=np.float32)[:, None]
    tr_x, tr_y, va_x, va_y = split_validation(x, y, 0.2, seed=3)
    assert len(va_y) == 100 and len(tr_y) == 400
    assert np.bincount(va_y).tolist() == [20] * 5
    assert sorted(np.concatenate([tr_x, va_x])[:, 0].tolist()) == list(range(500))  # disjoint, complete
    assert not np.all(np.diff(tr_y) >= 0)  # no longer ordered by class
    again = split_validation(x, y, 0.2, seed=3)
    assert np.array_equal(again[0], tr_x) and np.array_equal(again[2], va_x)


def test_validation_rows_are_the_split_s_own_counts():
    y = np.repeat(np.arange(4), [1, 2, 7, 300])
    x = np.zeros((len(y), 1), np.float32)
    for fraction in (0.0001, 0.2, 0.5, 0.9):
        va_y = split_validation(x, y, fraction, seed=0)[3]
        assert np.bincount(va_y, minlength=4).tolist() == [validation_rows(n, fraction) for n in (1, 2, 7, 300)]


def test_validation_split_check_names_the_numbers():
    assert min_validation_rows(0.98) == 50 and min_validation_rows(0.9) == 10 and min_validation_rows(None) == 1
    assert min_validation_rows(1.0) == 1  # "all correct" needs no finer steps
    check_validation_split([300] * 4, 0.2, 0.98)  # 240 rows: fine
    with pytest.raises(InputError) as err:
        check_validation_split([300] * 4, 0.0001, 0.98)  # 1 row per class
    assert err.value.where == "train.val_fraction"
    assert "0.0001 leaves 4 validation rows of 1200; the target 0.98 needs at least 50" in err.value.problem
    check_validation_split([300] * 4, 0.0001, 0.75)  # 4 rows resolve 0.75
    with pytest.raises(InputError, match=r"no validation rows for class\(es\) 1 \(1 training row"):
        check_validation_split([300, 1, 300], 0.2, None)


@pytest.mark.parametrize("batch_size", [32, 100, 2048])
def test_both_loops_see_every_row_once_and_learn_alike(small_splits, batch_size):
    s = small_splits
    accs = {}
    for loader in ("fast", "dataloader"):
        torch.manual_seed(0)
        model = InstrumentNet(s.n_features, 32, s.n_classes)
        opt = make_optimizer("adam", model.parameters(), 1e-2, fused=loader == "fast")
        loop = make_loop(loader, s.train_x, s.train_y, batch_size, torch.device("cpu"), seed=0)
        for _ in range(8):
            stats = loop.train_epoch(model, opt)
            assert stats.rows == len(s.train_y)  # last partial batch kept
            assert 0.0 <= stats.acc <= 1.0 and math.isfinite(stats.loss)
        accs[loader] = evaluate(model, torch.as_tensor(s.val_x), torch.as_tensor(s.val_y)).acc
    assert accs["fast"] > 0.9 and accs["dataloader"] > 0.9
    assert abs(accs["fast"] - accs["dataloader"]) < 0.05


@pytest.mark.parametrize("activation", ["sigmoid", "relu", "tanh"])
def test_hand_written_backward_matches_autograd(activation):
    torch.manual_seed(0)
    model = InstrumentNet(12, 32, 5, activation)
    x, y = torch.randn(64, 12), torch.randint(0, 5, (64,))
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=False)  # written over, not added to
    with torch.no_grad():
        logits = model.forward_backward_fn()(x, descent_targets(y, 5, 64))
    assert torch.nn.functional.cross_entropy(logits, y).item() == pytest.approx(loss.item(), rel=1e-6)
    for got, want in zip((p.grad for p in model.parameters()), expected):
        assert torch.allclose(got, want, atol=1e-6, rtol=1e-5)


def test_descent_targets_scale_each_row_by_its_batch_including_the_short_last_one():
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    targets = descent_targets(y, 3, batch_size=4)  # batches of 4, 4 and 2 rows
    assert torch.equal(targets.argmin(dim=1), y)
    assert torch.allclose(targets.sum(dim=1), torch.tensor([-0.25] * 8 + [-0.5] * 2))


def test_epoch_loss_and_hits_match_cross_entropy_and_argmax_also_on_ties():
    torch.manual_seed(0)
    logits, y = torch.randn(1000, 10) * 300, torch.randint(0, 10, (1000,))  # spread past exp's -80 clamp
    logits[:100] = 1.0  # every class tied: argmax predicts class 0
    loss_sum, hits = summed_loss_and_hits(logits, y)
    assert loss_sum.item() == pytest.approx(torch.nn.functional.cross_entropy(logits.double(), y, reduction="sum").item(),
                                            rel=1e-6)
    assert hits.item() == (logits.argmax(dim=1) == y).sum().item()
    assert not math.isfinite(summed_loss_and_hits(torch.full((4, 10), float("nan")), y[:4])[0].item())


def test_a_batched_report_gives_back_each_epochs_row():
    from trainables.training.report import EARLIER_EPOCHS, EpochReport, batched, unbatched

    rows = [EpochReport(epoch=e, time_s=0.1 * e).to_dict() for e in (1, 2, 3)]
    report = batched(rows)
    assert report[EARLIER_EPOCHS] == rows[:2] and report["epoch"] == 3  # Tune sees the latest epoch
    tune_keys = {"trial_id": "abc", "training_iteration": 7}
    got = unbatched({**report, **tune_keys})
    assert [EpochReport.from_dict(r) for r in got] == [EpochReport.from_dict(r) for r in rows]
    assert all(r["trial_id"] == "abc" and EARLIER_EPOCHS not in r for r in got)
    assert batched(rows[:1]) == rows[0] and unbatched(rows[0]) == rows[:1]  # one epoch: as it is


def test_a_trial_held_at_the_tests_epoch_gate_has_reported_every_epoch_it_trained(tmp_path, monkeypatch):
    """Tests hold trials at an epoch gate (tests/processes.py EpochGate) and then act on what Tune has: a trial
    reports the epochs its cadence keeps waiting before it lists itself as held; without a gate, nothing waits."""
    import threading

    from trainables.training.report import EpochReport, batched
    from trainables.tuning import trial

    gate, reported = tmp_path / "gate", []
    held = tmp_path / "gate.held"
    monkeypatch.setattr(trial.tune, "report", lambda row: reported.append((row, held.exists())))
    cadence = trial.Cadence({"report_every_s": 3600, "checkpoint_every_s": 3600})
    rows = [EpochReport(epoch=e).to_dict() for e in (1, 2)]
    for row in rows:
        cadence.send(row)
    assert reported == []  # waiting for a later report

    monkeypatch.delenv(trial.EPOCH_GATE_ENV, raising=False)
    trial.wait_at_epoch_gate(3, 2, cadence.flush)  # no gate: goes on at once, reporting nothing early
    assert reported == [] and not held.exists()
    monkeypatch.setenv(trial.EPOCH_GATE_ENV, str(gate))
    gate.write_text("2")
    waiter = threading.Thread(target=trial.wait_at_epoch_gate, args=(3, 2, cadence.flush), daemon=True)
    waiter.start()
    try:
        deadline = time.monotonic() + 120
        while not held.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert held.read_text() == f"3 2 {os.getpid()}\n" and waiter.is_alive()
        assert reported == [(batched(rows), False)]  # both epochs, before it listed itself
    finally:
        gate.unlink()  # the gate opened: it goes on
        waiter.join(timeout=120)
    assert not waiter.is_alive() and len(reported) == 1


def test_train_to_accuracy_reaches_target_and_tests_once(small_splits):
    rule = StopRule(threshold=0.95, patience=3, max_epochs=50)
    result = train_to_accuracy(small_splits, TrainConfig(lr=1e-2, batch_size=64), rule)
    assert result.status == "reached_target" and result.reached_target
    assert rule.patience <= result.epochs <= rule.max_epochs
    assert [r.hits_in_a_row for r in result.history][-3:] == [1, 2, 3]
    assert all(r.val_acc >= 0.95 for r in result.history[-3:])
    assert result.test_acc > 0.9 and math.isfinite(result.test_loss)
    assert all(math.isnan(r.test_acc) for r in result.history[:-1])  # tested once, at the stop
    # Cumulative time is the sum of the contiguous per-epoch windows.
    assert result.time_s == pytest.approx(sum(r.epoch_time_s for r in result.history))
    assert all(r.epoch_time_s > 0 for r in result.history)


def test_max_epochs_caps_a_run_that_never_reaches(small_splits):
    rule = StopRule(threshold=1.0, patience=3, max_epochs=4)
    result = train_to_accuracy(small_splits, TrainConfig(lr=1e-5), rule)
    assert (result.status, result.epochs) == ("max_epochs", 4)
    assert not result.reached_target and math.isfinite(result.test_acc)


def test_fixed_epochs_returns_per_epoch_train_and_test_history(small_splits):
    result = train_to_accuracy(small_splits, TrainConfig(lr=1e-2), StopRule(threshold=None, max_epochs=5))
    assert result.epochs == 5 and len(result.history) == 5
    assert all(math.isfinite(r.test_acc) and math.isfinite(r.test_loss) for r in result.history)
    assert result.history[-1].train_loss < result.history[0].train_loss


def test_divergence_is_flagged_not_raised():
    x, y = blobs(600, seed=0)
    splits = prepare_splits(x, y, x[:100], y[:100], 0.2, 0)
    config = TrainConfig(lr=1e6, optimizer="sgd", activation="relu", batch_size=32)
    result = train_to_accuracy(splits, config, StopRule(threshold=0.98, max_epochs=20))
    assert result.status == "diverged" and result.diverged
    assert result.epochs < 20
    assert math.isnan(result.history[-1].train_loss)


def test_checkpoint_state_resumes_counters_and_matches_uninterrupted_run(small_splits):
    config, rule = TrainConfig(lr=1e-3, batch_size=64), StopRule(threshold=None, max_epochs=4)
    straight = train_to_accuracy(small_splits, config, rule)

    first = TrainingRun(small_splits, config, rule)
    first.run_epoch(), first.run_epoch()
    state = first.state_dict()
    first.close()
    resumed = TrainingRun(small_splits, config, rule)
    resumed.load_state_dict(state)
    records = [resumed.run_epoch(), resumed.run_epoch()]
    assert [r.epoch for r in records] == [3, 4]
    assert records[-1].time_s > state["time_s"]  # cumulative time continues
    assert records[-1].train_loss == pytest.approx(straight.history[-1].train_loss, rel=1e-5)
    assert records[-1].test_acc == pytest.approx(straight.history[-1].test_acc)


def test_a_run_held_between_epochs_counts_the_hold_as_overhead_not_as_the_next_epoch(small_splits):
    """The tests' epoch gate holds a trial between two epochs that are not report points (`pause`): the
    epochs' time, time to accuracy, stays the training's."""
    config, rule = TrainConfig(lr=1e-3, batch_size=64), StopRule(threshold=None, max_epochs=3)
    run = TrainingRun(small_splits, config, rule)
    run.run_epoch()
    run.pause()
    time.sleep(1.0)  # the hold
    started = time.perf_counter()
    second = run.run_epoch()
    assert second.epoch_time_s <= time.perf_counter() - started  # within the epoch's own call
    assert run.overhead_time_s >= 1.0
    run.close()


def test_a_state_taken_before_replays_is_the_runs_not_the_replays(small_splits):
    """A trial takes its final checkpoint's state as its run ends and saves it after the replays, which
    reuse the run's tensors (`restart`, `replay`): the state saved must be the run's weights."""
    config, rule = TrainConfig(lr=1e-3, batch_size=64), StopRule(threshold=None, max_epochs=2)
    run = TrainingRun(small_splits, config, rule)
    while not run.done:
        run.run_epoch()
    state = run.state_dict()
    trained = {name: tensor.clone() for name, tensor in run.model.state_dict().items()}
    run.restart()  # as a replay starts: the initial weights, in the same tensors
    assert any(not torch.equal(tensor, trained[name]) for name, tensor in run.model.state_dict().items())
    assert all(torch.equal(state["model"][name], trained[name]) for name in trained)
    assert state["optimizer"]["state"]  # Adam's moments as trained, not a fresh optimizer's
    run.close()


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"lr": 0}, "lr"),
        ({"lr": -1e-3}, "lr"),
        ({"lr": float("inf")}, "lr"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 12.0}, "batch_size"),
        ({"loader": "turbo"}, "loader"),
        ({"activation": "gelu"}, "activation"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"cpus": 0}, "cpus"),
    ],
)
def test_bad_train_config_names_the_field(kwargs, field):
    with pytest.raises(InputError) as err:
        TrainConfig(**kwargs)
    assert err.value.where == field


def test_fused_adam_steps_exactly_like_adam_and_checkpoints_alike():
    from trainables.training.optim import FusedAdam

    torch.manual_seed(0)
    a, b = InstrumentNet(12, 32, 5), InstrumentNet(12, 32, 5)
    b.load_state_dict(a.state_dict())
    reference, lean = torch.optim.Adam(a.parameters(), lr=1e-2), FusedAdam(b.parameters(), lr=1e-2)
    x, y = torch.randn(64, 12), torch.randint(0, 5, (64,))
    for _ in range(5):
        for model, opt in ((a, reference), (b, lean)):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=1e-6)
    # The per-batch stepper the fast loop uses takes the same steps.
    step, forward_backward = lean.batch_stepper(), b.forward_backward_fn()
    for _ in range(5):
        reference.zero_grad()
        torch.nn.functional.cross_entropy(a(x), y).backward()
        reference.step()
        with torch.no_grad():
            forward_backward(x, descent_targets(y, 5, 64))
            step()
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=1e-5)
    restored = FusedAdam(b.parameters(), lr=1e-2)
    restored.load_state_dict(lean.state_dict())
    assert float(restored.state_dict()["state"][0]["step"]) == 10


def test_a_checkpoint_refuses_other_data_or_another_trial_config():
    from trainables.tuning.trial import CheckpointMismatch, check_provenance

    trial = {"number": 1, "lr": 0.01, "batch_size": 64, "seed": 0, "views": ["lr"], "train": {}, "stop": {}}
    data = {"train_x": {"shape": [10, 4], "dtype": "float32"}, "blake2b": "abc"}
    check_provenance({"trial": trial, "dataset": data}, trial, data)  # the same: continues
    with pytest.raises(CheckpointMismatch, match="another dataset"):
        check_provenance({"trial": trial, "dataset": {**data, "blake2b": "def"}}, trial, data)
    with pytest.raises(CheckpointMismatch, match=r"another trial config \(lr differ\)"):
        check_provenance({"trial": {**trial, "lr": 0.1}, "dataset": data}, trial, data)
    with pytest.raises(CheckpointMismatch):
        check_provenance({}, trial, data)  # a checkpoint that does not say what produced it


@pytest.fixture
def denormals_kept():
    """Flushing is process-wide: start from torch's default, and restore it afterwards."""
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU cannot flush denormals")
    torch.set_flush_denormal(False)
    yield
    torch.set_flush_denormal(False)


def test_a_trial_flushes_denormals_and_learns_the_same(small_splits, denormals_kept):
    """Saturated sigmoids at large lr make denormal gradients, which made late CPU epochs 4-7x slower."""
    tiny = torch.tensor([1e-40])  # a float32 denormal
    assert (tiny * 1.0).item() != 0.0
    config, rule = TrainConfig(lr=0.1, batch_size=64, n_hidden=32), StopRule(threshold=None, max_epochs=4)
    kept = train_to_accuracy(small_splits, config, rule, device=torch.device("cpu"))
    # A trial given no GPU, as a Tune trial on CPUs: trial_gpus picks its device and flushes (on a GPU
    # host too, where a trial given a GPU would train on CUDA, whose numbers differ from the CPU's).
    run = TrainingRun(small_splits, config, rule, gpus=trial_gpus([]))
    assert run.device.type == "cpu" and (tiny * 1.0).item() == 0.0
    flushed = [run.run_epoch() for _ in range(4)]
    run.close()
    for a, b in zip(kept.history, flushed):
        assert a.train_acc == pytest.approx(b.train_acc, abs=0.01)
        assert a.test_acc == pytest.approx(b.test_acc, abs=0.01)
