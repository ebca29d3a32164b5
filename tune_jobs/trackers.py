"""Experiment trackers through Ray Tune's own integrations: each trial one tracked run.

    instrument-sweep run --log mlflow                          # ./mlruns (or $MLFLOW_TRACKING_URI)
    instrument-sweep run --log mlflow=file:///srv/mlruns --log wandb
    WANDB_MODE=offline instrument-sweep run --log wandb=my-project
    sweep("seed", log=["mlflow=http://127.0.0.1:5000"])           # the notebook API; `log:` in a spec

Each trial's run gets its config as params (lr, batch size, seed, train and stop
settings) and every epoch's numeric report as metrics (step = epoch), so the last
step holds the trial's time and energy to accuracy. The trackers are optional
extras (`pip install -e '.[mlflow]'`, `'.[wandb]'`); a missing one stops the run
before Ray starts, naming the command.
"""

from __future__ import annotations

import importlib.util
import os
import sys

from analysis import storage
from trainables.errors import InputError

TRACKERS = {"mlflow": "mlflow", "wandb": "wandb"}  # --log name -> module it needs
DEFAULT_MLFLOW_URI = "./mlruns"
DEFAULT_WANDB_PROJECT = "instrument-sweep"


def parse_target(target: str, where: str = "log") -> tuple[str, str]:
    """"mlflow=URI" -> ("mlflow", "URI"); "wandb" -> ("wandb", ""). InputError names `where`."""
    tracker, _, option = str(target).partition("=")
    if tracker not in TRACKERS:
        raise InputError(where, f"unknown tracker {tracker!r}; use mlflow[=TRACKING_URI] or wandb[=PROJECT]")
    return tracker, option


def check_installed(targets: tuple[str, ...]) -> None:
    """InputError naming the pip command for each tracker whose package is missing."""
    for target in targets:
        tracker, _ = parse_target(target)
        if not _installed(TRACKERS[tracker]):
            raise InputError("--log", f"{tracker} is not installed; install it with: pip install -e '.[{tracker}]' "
                                      f"(or pip install 'instrument-sweep[{tracker}]')")


def _installed(module: str) -> bool:
    """Whether `module` can be imported, without importing it (mlflow takes seconds)."""
    if module in sys.modules:
        return sys.modules[module] is not None
    return importlib.util.find_spec(module) is not None


def tracker_callbacks(targets: tuple[str, ...], name: str, experiment: str) -> list:
    """Ray Tune logger callbacks for `targets`; runs are grouped under the experiment's `name`.

    W&B writes its run files into a local experiment's folder (`EXPERIMENT/wandb/`), not the
    trials' folders, which Tune copies before W&B has finished writing them.
    """
    callbacks = []
    for target in targets:
        tracker, option = parse_target(target)
        if tracker == "mlflow":
            from ray.air.integrations.mlflow import MLflowLoggerCallback

            uri = option or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_MLFLOW_URI
            if "://" not in uri and ":" not in uri.split("/")[0]:
                uri = os.path.abspath(os.path.expanduser(uri))  # a path: absolute, whatever the cwd
            if uri.startswith("/") or uri.startswith("file:"):
                # MLflow 3 keeps its file store (what a path names) behind this switch.
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            callbacks.append(MLflowLoggerCallback(tracking_uri=uri, experiment_name=name, tags={"sweep": name}))
        else:
            from ray.air.integrations.wandb import WandbLoggerCallback

            extra = {"mode": os.environ["WANDB_MODE"]} if os.environ.get("WANDB_MODE") else {}
            if not storage.is_uri(experiment):
                extra["dir"] = experiment
            project = option or os.environ.get("WANDB_PROJECT") or DEFAULT_WANDB_PROJECT
            callbacks.append(WandbLoggerCallback(project=project, group=name, **extra))
    return callbacks
