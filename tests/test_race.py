"""Race mode on real sweeps: trials that cannot win stop as "outpaced", and the winner does not change."""

import json
from pathlib import Path

import pytest

import analysis
from processes import cli, spec_file
from trainables.training.energy import EnergyMeter
from trainables.tuning.trial import EPOCH_PACE_ENV

# lr 0.05 stops at the target after 2 epochs, 3e-5 after 15 (seed 0) or 29 (seed 1), 1e-6 never (40
# epochs). Each epoch lasts at least EPOCH_S (trainables.tuning.trial.EPOCH_PACE_ENV): the winner leads by
# more than a second on any machine, not by the few milliseconds its epochs take on a fast one, which a
# busy machine's scheduler can take from one trial and not the other.
RACE_SWEEP = {
    "name": "race",
    "train": {"n_hidden": 32},
    "stop": {"threshold": 0.9, "patience": 2, "max_epochs": 40},
    "views": {"lr": {"lr": [0.05, 3.0e-5, 1.0e-6], "batch_size": 8}},
}
EPOCH_S = 0.1


def run_paced(raw: dict, tmp_path: Path, name: str, data_dir: str, tag: str) -> str:
    """`instrument-sweep run` of `raw`, each epoch EPOCH_S at least; the experiment's directory."""
    out = cli("run", spec_file(tmp_path, raw), "--data", data_dir, "--storage", str(tmp_path), "--name", name,
              "--no-analyze", tag=tag, **{EPOCH_PACE_ENV: str(EPOCH_S)})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return str(tmp_path / name)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_race_by_time_keeps_the_winner_and_stops_a_trial_that_cannot_win(tmp_path, seed, process_tag,
                                                                           blob_dataset_dir):
    raw = {**RACE_SWEEP, "train": {**RACE_SWEEP["train"], "seed": seed}}
    plain_dir = run_paced(raw, tmp_path, "plain", blob_dataset_dir, process_tag)
    plain = analysis.load_trials(plain_dir)
    raced_dir = run_paced({**raw, "race": "time"}, tmp_path, "raced", blob_dataset_dir, process_tag)
    raced = analysis.load_trials(raced_dir)

    assert set(plain.status) <= {"reached_target", "max_epochs"}
    never = raced[raced.lr == 1e-6].iloc[0]
    assert never.status == "outpaced" and never.epochs < 40  # stopped early, once it could not win
    best = raced[raced.status == "reached_target"].time_s.min()
    assert never.time_s > best  # it was behind the best finished trial when it stopped
    win_plain, win_raced = analysis.recommend(plain).loc["fastest"], analysis.recommend(raced).loc["fastest"]
    assert (win_raced.lr, win_raced.batch_size) == (win_plain.lr, win_plain.batch_size)
    # The same training, deterministic per seed: every epoch's losses and accuracies alike.
    figures = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc"]
    trained = []
    for path in (plain_dir, raced_dir):
        epochs = analysis.load_epochs(path)
        winner = (epochs.lr == win_plain.lr) & (epochs.batch_size == win_plain.batch_size)
        trained.append(epochs[winner][figures].reset_index(drop=True))
    assert len(trained[0]) == win_plain.epochs and trained[0].equals(trained[1])
    assert raced.time_s.sum() < plain.time_s.sum()

    # result.json records the status, and the report marks the figures as lower bounds.
    results = [json.loads(line) for path in Path(raced_dir).glob("trial-*/result.json")
               for line in path.read_text().splitlines()]
    assert sum(r["status"] == "outpaced" for r in results) == (raced.status == "outpaced").sum() >= 1
    report = Path(analysis.write_report(raced_dir)).read_text()
    assert f"| outpaced | ≥ {never.epochs} | ≥ {never.time_s:.3g} |" in report


@pytest.mark.slow
def test_race_by_energy_needs_gpu_energy(tmp_path, process_tag, blob_dataset_dir):
    if "gpu" in EnergyMeter().source:
        pytest.skip("this machine has a GPU energy counter, so race: energy may run here")
    out = cli("run", "--preset", "smoke", "--race", "energy", "--data", blob_dataset_dir, "--storage",
              str(tmp_path / "store"), "--name", "e", tag=process_tag, timeout=300)
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    assert out.stderr.startswith("error: race: energy needs GPU energy")
    assert not (tmp_path / "store" / "e").exists()  # nothing written
