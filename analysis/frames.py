"""Experiment directory -> pandas DataFrames: one row per trial, one row per trial and epoch.

    from analysis import load_trials, load_epochs
    trials = load_trials("sweeps/seed-20261125-2000")      # or "s3://bucket/sweeps/seed-..."
    epochs = load_epochs("sweeps/seed-20261125-2000")

Reads Ray Tune's files directly (each trial's params.json and result.json), so a
running, interrupted, resumed or cloud-stored experiment loads the same way.
After a retry a trial may report an epoch twice; the last report of an epoch wins.
"""

from __future__ import annotations

import json
import math
import re

import pandas as pd

from analysis import storage
from trainables.training.config import trial_config
from trainables.training.report import EpochReport
from trainables.training.stop import Status

ENERGY_COLUMNS = ("energy_err_j", "energy_resolution_s", "replays", "replay_time_s", "replay_energy_j",
                  "first_run_time_s", "first_run_energy_j", "first_run_energy_err_j", "first_run_cpu_energy_j",
                  "gpu_idle_w", "gpu_idle_err_w", "gpu_idle_no_context_w", "gpu_idle_after_w", "dynamic_energy_j",
                  "gpu_max_power_w")  # copied from the trial's last report
LAST_REPORT = None  # a trial column that is its last epoch report's field of that name (documented in EpochReport)
# load_trials' columns, in order, each with its one-line doc (LAST_REPORT: EpochReport's).
TRIAL_COLUMNS: dict[str, str | None] = {
    "trial_id": "Ray Tune's id of the trial",
    "trial_number": "the trial's number in the sweep, from 1",
    "sweep": "comma-separated names of the views the trial belongs to",
    "lr": "the trial's learning rate",
    "batch_size": "the trial's batch size",
    "seed": "the trial's random seed",
    "status": "how the trial ended: its last report's status, error where it raised, running where unfinished",
    "reached_target": "whether status is reached_target",
    "epochs": "epochs trained (its last report's epoch)",
    "time_s": LAST_REPORT,
    "energy_j": "the trial's GPU joules to accuracy (its last report's), or its node's CPU joules where no other "
                "trial ran on that node meanwhile (energy_source cpu); NaN where not measured",
    **dict.fromkeys(ENERGY_COLUMNS, LAST_REPORT),
    "energy_source": "what energy_j holds: gpu, cpu (the node's CPU joules, attributed) or none",
    "energy_method": LAST_REPORT,
    "energy_note": "its last report's energy_note, with any reason for energy_uncertain it lacks (an older "
                   "experiment's)",
    "energy_uncertain": "the trial's energy is flagged (EpochReport.energy_caveats: an error above 5%, or a window "
                        "below the GPU's idle power beyond the errors), recomputed from its last report",
    "cpu_energy_shared": "first_run_cpu_energy_j was shared with other trials on the node: it ranks nothing",
    "overhead_time_s": LAST_REPORT,
    "measurement_time_s": LAST_REPORT,
    "test_acc": LAST_REPORT,
    "test_loss": LAST_REPORT,
    "val_acc": LAST_REPORT,
    "device": LAST_REPORT,
    "gpu_uuids": "every GPU the trial ran on over its attempts, by NVML UUID, comma-separated",
    "node": LAST_REPORT,
    "node_id": LAST_REPORT,
    "started_at_s": "wall clock (Unix seconds) when the trial's first attempt began",
    "ended_at_s": LAST_REPORT,
    "error": "the exception that ended a failed trial (status error), else empty",
}
# load_epochs' columns besides EpochReport's fields, each with its one-line doc.
EPOCH_COLUMNS: dict[str, str] = {
    "trial_id": "Ray Tune's id of the trial",
    "sweep": "comma-separated names of the views the trial belongs to",
    "config": "the trial's whole config: {'trial': {number, lr, batch_size, seed, views, train, stop, ...}}",
    # Ray Tune's own keys in each row of result.json
    "timestamp": "Ray Tune: wall clock (Unix seconds) of the report that carried the epoch",
    "date": "Ray Tune: the same, as text",
    "done": "Ray Tune: whether the report was the trial's last",
    "training_iteration": "Ray Tune: the trial's reports so far (epochs reported together share one)",
    "time_this_iter_s": "Ray Tune: seconds between the trial's previous report and this one",
    "time_total_s": "Ray Tune: time_this_iter_s summed over the trial's reports",
    "time_since_restore": "Ray Tune: seconds since the trial's last start or restore",
    "iterations_since_restore": "Ray Tune: reports since the trial's last start or restore",
    "checkpoint_dir_name": "Ray Tune: the checkpoint saved with this report, if any",
    "should_checkpoint": "Ray Tune: the report came with a checkpoint",
    "pid": "Ray Tune: the trial process's id",
    "hostname": "Ray Tune: the trial's host name",
    "node_ip": "Ray Tune: the trial's node address",
}


def _trial_dirs(fs, root: str) -> list[str]:
    """Trial directories: those holding Tune's params.json."""
    import pyarrow.fs

    dirs = [i.path for i in fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))
            if i.type == pyarrow.fs.FileType.Directory]
    params = fs.get_file_info([f"{d}/params.json" for d in dirs])  # one listing call, no reads
    return sorted(d for d, info in zip(dirs, params) if info.type == pyarrow.fs.FileType.File)


def _read(fs, path: str) -> str | None:
    """A file's text, or None where it does not exist (yet)."""
    try:
        with fs.open_input_stream(path) as src:
            return src.read().decode()
    except (FileNotFoundError, OSError):
        return None


def _results(text: str | None) -> list[dict]:
    """result.json lines, deduplicated by epoch (a retried epoch's last report wins)."""
    by_epoch: dict[int, dict] = {}
    for line in (text or "").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line being written right now
        if "epoch" in row:
            by_epoch[int(row["epoch"])] = row
    return [by_epoch[e] for e in sorted(by_epoch)]


def _load(experiment: str) -> list[tuple[str, dict, list[dict], str | None]]:
    """(trial_id, trial config, per-epoch results, error text) for every trial that started."""
    fs, root = storage.filesystem(experiment)
    settings = json.loads(_read(fs, f"{root}/{storage.SETTINGS_FILE}") or "null")  # None: configs whole in params.json
    trials = []
    for path in _trial_dirs(fs, root):
        config = trial_config(json.loads(_read(fs, f"{path}/params.json") or "{}").get("trial", {}), settings)
        results = _results(_read(fs, f"{path}/result.json"))
        trial_id = (results[-1].get("trial_id") if results else None) or path.rsplit("/", 1)[-1]
        trials.append((trial_id, config, results, _read(fs, f"{path}/error.txt")))
    return sorted(trials, key=lambda t: (t[1].get("number", math.inf), t[0]))


def _error_message(text: str | None) -> str:
    """The last `SomeError: message` line of Tune's error.txt (the exception that ended the trial)."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    for line in reversed(lines):
        if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b", line):
            return line
    return lines[-1] if lines else ""


def _status(results: list[dict], error: str | None) -> Status:
    last = Status(results[-1].get("status", Status.RUNNING.value)) if results else Status.RUNNING
    if last.ended_by_rule:
        return last
    return Status.ERROR if error else Status.RUNNING


def load_trials(experiment: str) -> pd.DataFrame:
    """One row per trial (columns TRIAL_COLUMNS); `sweep` lists the views it belongs to.

    `energy_j` is the trial's GPU joules; on nodes without GPUs it is filled from the node's
    CPU joules where attributable (`attribute_cpu_energy`). `energy_note` says why a trial's GPU
    energy is not measured or why it is flagged (`energy_uncertain`, decided by
    `EpochReport.energy_caveats` for old experiments too); `gpu_uuids` lists every GPU it ran on
    (several after a retry moved it). An older experiment's rows load too: columns it lacks are NaN.
    """
    rows = []
    for trial_id, config, results, error in _load(experiment):
        last = EpochReport.from_dict(results[-1] if results else {})
        status = _status(results, error)
        caveats = last.energy_caveats()
        rows.append({
            "trial_id": trial_id,
            "trial_number": config.get("number"),
            "sweep": ",".join(config.get("views", [])),
            "lr": config.get("lr"),
            "batch_size": config.get("batch_size"),
            "seed": config.get("seed"),
            "status": status.value,
            "reached_target": status is Status.REACHED_TARGET,
            "epochs": int(last.epoch),
            "time_s": last.time_s,
            "energy_j": last.energy_j,
            **{column: getattr(last, column) for column in ENERGY_COLUMNS},
            "energy_source": last.energy_source,
            "energy_method": last.energy_method,
            "energy_note": "; ".join(filter(None, [last.energy_note, *(c for c in caveats
                                                                          if c not in last.energy_note)])),
            "energy_uncertain": bool(caveats),
            "cpu_energy_shared": False,
            "overhead_time_s": last.overhead_time_s,
            "measurement_time_s": last.measurement_time_s,
            "test_acc": last.test_acc,
            "test_loss": last.test_loss,
            "val_acc": last.val_acc,
            "device": last.device,
            "gpu_uuids": ",".join(dict.fromkeys(uuid for r in results for uuid in
                                                str(r.get("gpu_uuids") or "").split(",") if uuid)),
            "node": last.node,
            "node_id": last.node_id,
            # The trial's span on the wall clock: from its first attempt's start to its last report.
            "started_at_s": min((r.get("started_at_s", math.nan) for r in results), default=math.nan),
            "ended_at_s": last.ended_at_s,
            "error": _error_message(error) if status is Status.ERROR else "",
        })
    frame = pd.DataFrame(rows, columns=list(TRIAL_COLUMNS))
    numeric = ("time_s", "overhead_time_s", "measurement_time_s", "energy_j", *ENERGY_COLUMNS, "test_acc",
               "test_loss", "val_acc", "lr", "started_at_s", "ended_at_s")
    for column in numeric:
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(float)
    frame["energy_uncertain"] = frame["energy_uncertain"].astype(bool)
    return attribute_cpu_energy(frame)


def attribute_cpu_energy(trials: pd.DataFrame) -> pd.DataFrame:
    """Where a trial has no GPU joules but its node's CPU joules: those stand as its energy only
    if no other trial ran on that node meanwhile (`energy_source` "cpu"); otherwise they are
    shared (`cpu_energy_shared`) and rank nothing. Decided after the fact, from the trials' spans."""
    trials = trials.copy()
    candidates = trials["energy_j"].isna() & trials["first_run_cpu_energy_j"].notna()
    for i in trials.index[candidates]:
        me = trials.loc[i]
        others = trials[(trials.index != i) & (trials["node_id"] == me["node_id"])]
        overlap = (others["started_at_s"] < me["ended_at_s"]) & (others["ended_at_s"] > me["started_at_s"])
        if overlap.any() or not math.isfinite(me["started_at_s"]):
            trials.loc[i, "cpu_energy_shared"] = True
        else:
            trials.loc[i, ["energy_j", "energy_source", "energy_method"]] = [me["first_run_cpu_energy_j"], "cpu",
                                                                             "direct"]
    return trials


def load_epochs(experiment: str) -> pd.DataFrame:
    """One row per trial and epoch with every reported metric, plus the trial's labels and its
    config (from params.json: a sweep's results do not carry it)."""
    rows = []
    for trial_id, config, results, _ in _load(experiment):
        for result in results:
            rows.append({**result, "trial_id": trial_id, "trial_number": config.get("number"),
                         "sweep": ",".join(config.get("views", [])), "config": {"trial": config}})
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=["trial_id", "trial_number", "sweep", "epoch"])
    return frame.sort_values(["trial_number", "epoch"], kind="stable").reset_index(drop=True)


def trial_paths(experiment: str) -> list[str]:
    """The experiment's trial directories (those holding Tune's params.json); [] for none."""
    fs, root = storage.filesystem(experiment)
    return _trial_dirs(fs, root)
