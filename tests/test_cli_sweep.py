"""`instrument-sweep run` and `resume` as a user runs them: real processes, real local Ray."""

import json

import pandas as pd
import pytest

import analysis
from processes import cli, tagged_pids, wait_until

pytestmark = pytest.mark.slow

def test_run_smoke_preset_end_to_end(tmp_path, process_tag):
    out = cli("run", "--preset", "smoke", "--storage", str(tmp_path), "--name", "smoke", tag=process_tag)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "dashboard:" not in out.stdout  # a local Ray starts without it unless --dashboard (test_security)
    assert "[2/2 done]" in out.stdout and "status" in out.stdout  # live progress, then the summary table
    trials = analysis.load_trials(str(tmp_path / "smoke"))
    assert len(trials) == 2 and set(trials.status) <= {"reached_target", "max_epochs"}
    assert (tmp_path / "smoke" / "analysis" / "report.md").is_file()
    table = pd.read_csv(tmp_path / "smoke" / "analysis" / "trials.csv")
    for column in ("energy_j", "energy_err_j", "energy_method", "replays", "replay_time_s", "replay_energy_j",
                   "first_run_time_s", "first_run_energy_j", "first_run_cpu_energy_j", "cpu_energy_shared",
                   "gpu_idle_w", "gpu_idle_no_context_w", "gpu_idle_after_w", "dynamic_energy_j", "energy_source",
                   "energy_uncertain", "measurement_time_s"):
        assert column in table.columns, column
    if (table.energy_source == "none").all():  # a host without a GPU counter or readable RAPL
        assert (table.energy_method == "none").all() and table.energy_j.isna().all()
    trial_files = {p.name for d in (tmp_path / "smoke").glob("trial-*") for p in d.iterdir()}
    assert {"result.json", "progress.csv", "params.json"} <= trial_files
    assert not any(name.startswith("events.out.tfevents") for name in trial_files)  # no TensorBoard
    # The local Ray it started is gone with it: no agent, monitor or worker is left running.
    wait_until(lambda: not tagged_pids(process_tag), 60, "Ray's processes to exit", interval_s=0.2)


def test_existing_name_is_refused_without_touching_it(tmp_path, process_tag, blob_dataset_dir):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    out = cli("run", "--preset", "smoke", "--data", blob_dataset_dir, "--storage", str(tmp_path),
              "--name", "taken", tag=process_tag)
    assert out.returncode == 2 and "--name" in out.stderr and "resume" in out.stderr
    assert sorted(p.name for p in (tmp_path / "taken").iterdir()) == ["keep.txt"]


def test_resume_only_restores_experiments_under_the_storage_root(tmp_path, process_tag):
    elsewhere = tmp_path / "elsewhere" / "exp"
    elsewhere.mkdir(parents=True)
    out = cli("resume", str(elsewhere), "--storage", str(tmp_path / "sweeps"), tag=process_tag)
    assert out.returncode == 2
    assert "not under the storage root" in out.stderr


def test_resume_against_other_data_is_refused_in_one_line(tmp_path, process_tag, blob_dataset_dir):
    """The experiment records its dataset's fingerprint; resuming on changed data exits 2, writes nothing."""
    import shutil

    import numpy as np

    data = tmp_path / "data"
    shutil.copytree(blob_dataset_dir, data)
    out = cli("run", "--preset", "smoke", "--data", str(data), "--storage", str(tmp_path / "sweeps"),
              "--name", "s", "--no-analyze", tag=process_tag)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    experiment = tmp_path / "sweeps" / "s"
    assert json.loads((experiment / "dataset.json").read_text())["train_x"]["shape"][1] == 16
    train = np.load(data / "train_data.npy")
    np.save(data / "train_data.npy", train[::-1].copy())  # same shape and dtype, other contents
    before = sorted(str(p) for p in experiment.rglob("*"))
    out = cli("resume", "s", "--storage", str(tmp_path / "sweeps"), tag=process_tag)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "error: --data:" in out.stderr and "same data" in out.stderr
    assert sorted(str(p) for p in experiment.rglob("*")) == before
