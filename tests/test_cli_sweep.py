"""`instrument-sweep run` and `resume` as a user runs them: real processes, real local Ray."""

import json
import os
import signal
from pathlib import Path

import pytest
import yaml

import analysis
from processes import cli, spawn_cli, wait_until

pytestmark = pytest.mark.slow

# Three trials: one reaches the target in seconds, two crawl (lr 1e-6) to max_epochs.
SLOW_SWEEP = {
    "name": "crawl",
    "train": {"n_hidden": 32, "loader": "dataloader"},
    "stop": {"threshold": 0.9, "patience": 2, "max_epochs": 60},
    "views": {"lr": {"lr": [0.05, 1.0e-6], "batch_size": 8}, "batch": {"lr": 1.0e-6, "batch_size": [16]}},
}


def epochs_of(result_json: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in result_json.read_text().splitlines() if line.strip()]


def status_of(result_json: Path) -> str:
    lines = result_json.read_text().splitlines() if result_json.exists() else []
    return json.loads(lines[-1])["status"] if lines else "pending"


def test_run_smoke_preset_end_to_end(tmp_path, process_tag):
    out = cli("run", "--preset", "smoke", "--storage", str(tmp_path), "--name", "smoke", tag=process_tag)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "dashboard: http://127.0.0.1:" in out.stdout
    assert "[2/2 done]" in out.stdout and "status" in out.stdout  # live progress, then the summary table
    trials = analysis.load_trials(str(tmp_path / "smoke"))
    assert len(trials) == 2 and set(trials.status) <= {"reached_target", "max_epochs"}
    assert (tmp_path / "smoke" / "analysis" / "report.md").is_file()


def test_existing_name_is_refused_without_touching_it(tmp_path, process_tag, blob_dataset_dir):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    out = cli("run", "--preset", "smoke", "--data", blob_dataset_dir, "--storage", str(tmp_path),
              "--name", "taken", tag=process_tag)
    assert out.returncode == 2 and "--name" in out.stderr and "resume" in out.stderr
    assert sorted(p.name for p in (tmp_path / "taken").iterdir()) == ["keep.txt"]


def test_resume_after_killed_driver_finishes_only_what_was_missing(tmp_path, process_tag, blob_dataset_dir):
    spec = tmp_path / "crawl.yaml"
    spec.write_text(yaml.safe_dump(SLOW_SWEEP))
    storage = tmp_path / "sweeps"
    driver = spawn_cli("run", str(spec), "--data", blob_dataset_dir, "--storage", str(storage), "--name", "c",
                       "--no-analyze", tag=process_tag, log=tmp_path / "run.log")
    experiment = storage / "c"

    def first_done_and_another_running():
        results = sorted(experiment.glob("trial-*/result.json"))
        statuses = [status_of(r) for r in results]
        return len(results) >= 2 and "reached_target" in statuses and "running" in statuses and results

    wait_until(first_done_and_another_running, 180, "one finished and one running trial")
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and its whole process group, mid-sweep
    driver.wait(30)
    finished = {r.parent.name: r.read_bytes() for r in experiment.glob("trial-*/result.json")
                if status_of(r) in ("reached_target", "max_epochs")}
    assert finished

    out = cli("resume", "c", "--storage", str(storage), "--no-analyze", tag=process_tag)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for name, before in finished.items():  # finished trials were not re-run
        assert (experiment / name / "result.json").read_bytes() == before
    trials = analysis.load_trials(str(experiment))
    assert sorted(trials.trial_number) == [1, 2, 3]  # every trial exactly once
    assert set(trials.status) <= {"reached_target", "max_epochs"}
    for result in experiment.glob("trial-*/result.json"):
        epochs = epochs_of(result)
        assert epochs == list(range(1, len(epochs) + 1)), result  # continued, no epoch repeated


def test_resume_only_restores_experiments_under_the_storage_root(tmp_path, process_tag):
    elsewhere = tmp_path / "elsewhere" / "exp"
    elsewhere.mkdir(parents=True)
    out = cli("resume", str(elsewhere), "--storage", str(tmp_path / "sweeps"), tag=process_tag)
    assert out.returncode == 2
    assert "not under the storage root" in out.stderr
