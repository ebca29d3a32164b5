"""`--log mlflow[=URI]` / `--log wandb`: each trial a tracked run through Ray Tune's integrations,
checked in a local MLflow file store and W&B's offline run files; a missing extra exits 2."""

import os
import subprocess
import sys

import pytest

from tune_jobs.cli import main
from tune_jobs.spec import load_spec


@pytest.mark.parametrize("module", ["mlflow", "wandb"])
def test_a_missing_tracker_exits_2_naming_the_pip_command(module, monkeypatch, tmp_path, capsys, blob_dataset_dir):
    monkeypatch.setitem(sys.modules, module, None)  # as where the extra is not installed
    code = main(["run", "smoke", "--data", blob_dataset_dir, "--storage", str(tmp_path / "s"), "--log", module])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == (f"error: --log: {module} is not installed; install it with: "
                                 f"pip install -e '.[{module}]' (or pip install 'instrument-sweep[{module}]')")
    assert not (tmp_path / "s").exists() or not any((tmp_path / "s").iterdir())


def test_unknown_trackers_are_refused_in_flags_and_specs(capsys):
    assert main(["run", "smoke", "--log", "tensorboard", "--dry-run"]) == 2
    assert "error: --log: unknown tracker 'tensorboard'" in capsys.readouterr().err
    assert main(["submit", "smoke", "--log", "neptune", "--address", "http://127.0.0.1:1"]) == 2
    assert "error: --log: unknown tracker 'neptune'" in capsys.readouterr().err
    with pytest.raises(Exception, match=r"log\[1\]: unknown tracker 'neptune'"):
        load_spec("smoke", ["log=[wandb, neptune]"])


def test_trackers_are_recorded_in_the_spec():
    spec = load_spec("smoke", values={"log": ["mlflow=file:///tmp/mlruns", "wandb"]})
    assert spec.log == ("mlflow=file:///tmp/mlruns", "wandb")
    assert load_spec("smoke", ["log=mlflow"]).log == ("mlflow",)
    assert spec.to_dict()["log"] == ["mlflow=file:///tmp/mlruns", "wandb"]


@pytest.mark.slow
def test_each_trial_is_a_tracked_run_in_mlflow_and_wandb_offline(tmp_path, blob_dataset_dir):
    mlflow = pytest.importorskip("mlflow")
    pytest.importorskip("wandb")
    from processes import cli, kill_tagged, new_tag, wait_until

    tag = new_tag()
    wandb_keys = (b"val_acc", b"energy_j", b"time_s", b"isw-test", b"tracked", b"lr")

    def wandb_files() -> list:
        return sorted((tmp_path / "s" / "tracked" / "wandb").glob("offline-run-*/run-*.wandb"))

    def wandb_written() -> bool:
        return len(wandb_files()) == 2 and all(all(k in f.read_bytes() for k in wandb_keys) for f in wandb_files())

    try:
        out = cli("run", "smoke", "--data", blob_dataset_dir, "--storage", str(tmp_path / "s"), "--name", "tracked",
                  "--no-analyze", "--log", f"mlflow={tmp_path / 'mlruns'}", "--log", "wandb=isw-test", tag=tag,
                  WANDB_MODE="offline", WANDB_SILENT="true", WANDB_INIT_TIMEOUT="300", WANDB__SERVICE_WAIT="300")
        if out.returncode == 0:  # W&B's own service process may still be flushing its offline files
            try:
                wait_until(wandb_written, 180, "W&B's offline run files")
            except TimeoutError:
                pass  # asserted below, file by file, naming what is missing
    finally:
        kill_tagged(tag)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]

    import analysis

    trials = analysis.load_trials(str(tmp_path / "s" / "tracked")).set_index("trial_number")
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    client = mlflow.tracking.MlflowClient(str(tmp_path / "mlruns"))
    experiment = client.get_experiment_by_name("tracked")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 2
    for run in runs:
        number = int(run.data.params["trial/number"])
        trial = trials.loc[number]
        assert run.info.status == "FINISHED" and run.data.tags["sweep"] == "tracked"
        assert float(run.data.params["trial/lr"]) == trial.lr and int(run.data.params["trial/batch_size"]) == trial.batch_size
        assert len(client.get_metric_history(run.info.run_id, "val_acc")) == trial.epochs  # one step per epoch
        assert run.data.metrics["time_s"] == pytest.approx(trial.time_s)  # the last step: time to accuracy
        assert run.data.metrics["test_acc"] == pytest.approx(trial.test_acc)
        assert "energy_j" in run.data.metrics

    # W&B offline: one run file per trial, holding its config, per-epoch history and group.
    files = wandb_files()
    assert len(files) == 2
    for path in files:
        data = path.read_bytes()
        assert [key for key in wandb_keys if key not in data] == [], path
