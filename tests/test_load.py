"""Load: a sweep of 200 short trials on this machine completes with every result recorded."""

import pytest
import yaml

import analysis
from benchmarks.bench_sweep import load_spec
from processes import cli

pytestmark = pytest.mark.slow


def test_two_hundred_trials_all_recorded(tmp_path, process_tag, blob_dataset_dir):
    spec = tmp_path / "load.yaml"
    spec.write_text(yaml.safe_dump(load_spec(200)))
    out = cli("run", str(spec), "--data", blob_dataset_dir, "--storage", str(tmp_path), "--name", "load",
              "--no-analyze", tag=process_tag, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    trials = analysis.load_trials(str(tmp_path / "load"))
    epochs = analysis.load_epochs(str(tmp_path / "load"))
    assert len(trials) == 200 and sorted(trials.trial_number) == list(range(1, 201))
    assert set(trials.status) == {"max_epochs"} and set(trials.epochs) == {2}
    assert len(epochs) == 400 and epochs.test_acc.notna().all()
    assert len(trials.drop_duplicates(["lr", "batch_size", "seed"])) == 200
