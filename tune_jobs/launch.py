"""Build, start and resume the Ray Tune experiment of a sweep.

    grid = start_sweep(spec, dataset, storage="/abs/sweeps", name="seed-20261125-2000", cluster=info)
    grid = resume_sweep("/abs/sweeps/seed-20261125-2000", spec, dataset, cluster=info)

The driver loads the dataset once; `tune.with_parameters` puts it in Ray's
object store, so every trial on a node shares one copy and worker nodes need no
files. Every trial is one point of the spec; the union of the views runs once.
"""

from __future__ import annotations

import os
from dataclasses import asdict

# Our progress lines replace Tune's tables; Tune's snapshot warning fires on every checkpoint.
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

from ray import tune  # noqa: E402
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback  # noqa: E402

from trainables.stopper import ThresholdPatienceStopper
from trainables.trainable import sweep_trial
from tune_jobs import storage
from tune_jobs.cluster import ClusterInfo
from tune_jobs.progress import SweepProgress
from tune_jobs.spec import SPEC_FILE, SweepSpec
from tune_jobs.storage_guard import StorageGuard


def param_space(spec: SweepSpec) -> dict:
    """One grid-search entry per trial, carrying all the trial needs (and analysis reads)."""
    trials = [
        {
            "number": t.number,
            "lr": t.lr,
            "batch_size": t.batch_size,
            "seed": t.seed,
            "views": list(t.views),
            "train": asdict(spec.train_config(t)),
            "stop": asdict(spec.stop),
        }
        for t in spec.trials()
    ]
    return {"trial": tune.grid_search(trials)}


def trial_dirname(trial) -> str:
    """Short, readable trial directories: trial-003-lr0.001-bs128-s0-<id>."""
    t = trial.config["trial"]
    return f"trial-{t['number']:03d}-lr{t['lr']:g}-bs{t['batch_size']}-s{t['seed']}-{trial.trial_id}"


def trainable(spec: SweepSpec, dataset, cluster: ClusterInfo):
    return tune.with_resources(
        tune.with_parameters(sweep_trial, dataset=dataset), spec.ray_resources(cluster.gpus)
    )


def stopper(spec: SweepSpec) -> ThresholdPatienceStopper:
    rule = spec.stop
    return ThresholdPatienceStopper(rule.metric, rule.threshold, rule.patience, rule.max_epochs)


def start_sweep(spec: SweepSpec, dataset, storage_root: str, name: str, cluster: ClusterInfo,
                progress: bool = True) -> tune.ResultGrid:
    """Write the spec beside the experiment, then run every trial to its stop."""
    import yaml

    storage.write_text(storage.join(storage_root, name, SPEC_FILE), yaml.safe_dump(spec.to_dict(), sort_keys=False))
    # The loggers named below write result.json (what analysis reads) and progress.csv; Tune adds
    # no others, TensorBoard's included (it adds 19% to a sweep's CPU time, on the trials' cores).
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    tuner = tune.Tuner(
        trainable(spec, dataset, cluster),
        param_space=param_space(spec),
        tune_config=tune.TuneConfig(num_samples=1, reuse_actors=True, trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage_root,
            stop=stopper(spec),
            failure_config=tune.FailureConfig(max_failures=spec.resources.max_failures),
            # Keeping 3 lets Tune snapshot its state every third checkpoint instead of every one.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=3),
            callbacks=[JsonLoggerCallback(), CSVLoggerCallback(), StorageGuard(storage_root),
                       *([SweepProgress(len(spec.trials()))] if progress else [])],
            verbose=0,
        ),
    )
    return tuner.fit()


def resume_sweep(experiment: str, spec: SweepSpec, dataset, cluster: ClusterInfo) -> tune.ResultGrid:
    """Continue an interrupted sweep: finished trials stay, unfinished and errored ones continue."""
    # The restored experiment brings its own loggers; Tune adds any it lacks (an experiment
    # from before start_sweep named them has none).
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "0"
    tuner = tune.Tuner.restore(experiment, trainable=trainable(spec, dataset, cluster), resume_errored=True)
    return tuner.fit()
