"""Sweep specs: YAML in, a validated `SweepSpec` out, expanded into trials.

    spec = load_spec("seed")                      # a preset from tune_jobs/sweeps/
    spec = load_spec("my_sweep.yaml", overrides=["stop.threshold=0.95", "repeats=3"])
    for trial in spec.trials(): print(trial.describe())

A sweep has named views. Each view is a small grid over `lr` and `batch_size`
(a list sweeps that axis, a scalar fixes it). The union of all views' points
runs once, and each trial remembers every view it belongs to; `repeats: N`
runs every point with seeds train.seed, train.seed+1, ...
`race: time` (or `energy`) stops trials that can no longer be the fastest
(or cheapest) to the target (`trainables.training.stop.Race`).
"""

from __future__ import annotations

import difflib
import itertools
import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from analysis import storage
from analysis.storage import SPEC_FILE
from trainables.data import splits
from trainables.training.config import TrainConfig
from trainables.training.stop import RACES, Race, StopRule
from trainables.documented import documented
from trainables.errors import InputError

PRESETS_DIR = Path(__file__).with_name("sweeps")
DEFAULT_PRESET = "seed"
AXES = ("lr", "batch_size")
TOP_KEYS = ("name", "description", "data", "train", "stop", "views", "repeats", "race", "resources", "energy", "log")


@dataclass(frozen=True)
class Resources:
    """What each trial asks Ray for, and how often a failed trial is retried."""

    cpus_per_trial: float = documented(1.0, "CPU cores each trial asks Ray for; also torch's threads on CPU",
                                       allowed="a number > 0")
    gpus_per_trial: float | str = documented("auto", "GPUs each trial asks Ray for; auto: 1 where the cluster shows "
                                                     "GPUs at the start, else 0", allowed="auto, 0 or 1")
    max_failures: int = documented(2, "retries of a failed trial, each from its last checkpoint",
                                   allowed="an integer >= 0")
    exclusive_node: bool = documented(False, "one trial per node at a time (it asks for the node's CPUs), so the "
                                             "node's CPU joules are its own", allowed="true or false")
    checkpoint_every_s: float = documented(1.0, "a trial checkpoints after an epoch once this long since its last "
                                                "checkpoint, and after its last epoch (0: every epoch)",
                                           allowed="seconds >= 0")
    report_every_s: float = documented(0.5, "a trial reports to Tune after an epoch once this long since its last "
                                            "report, and after its last epoch (0: every epoch)",
                                       allowed="seconds >= 0")

    def __post_init__(self) -> None:
        if not isinstance(self.exclusive_node, bool):
            raise InputError("resources.exclusive_node", f"must be true or false, got {self.exclusive_node!r}")
        if not _is_number(self.cpus_per_trial) or not self.cpus_per_trial > 0:
            raise InputError("resources.cpus_per_trial", f"must be a number > 0, got {self.cpus_per_trial!r}")
        if self.gpus_per_trial != "auto" and not (_is_number(self.gpus_per_trial) and self.gpus_per_trial in (0, 1)):
            raise InputError("resources.gpus_per_trial", "must be 'auto', 0 or 1 (a trial's energy is its one whole "
                                                         "GPU's: a shared or several-GPU trial would not be measured "
                                                         f"honestly), got {self.gpus_per_trial!r}")
        if isinstance(self.max_failures, bool) or not isinstance(self.max_failures, int) or self.max_failures < 0:
            raise InputError("resources.max_failures", f"must be an integer >= 0, got {self.max_failures!r}")
        for key in ("checkpoint_every_s", "report_every_s"):
            value = getattr(self, key)
            if not _is_number(value) or not 0 <= value < math.inf:
                raise InputError(f"resources.{key}", f"must be a number of seconds >= 0, got {value!r}")


@dataclass(frozen=True)
class EnergyOptions:
    """How energy is measured and ranked."""

    replay_budget_s: float = documented(10.0, "per trial: the most time spent replaying a trial too short for "
                                              "the GPU's energy counter (0: no replay)", allowed="seconds >= 0")
    eta: float | None = documented(None, "also rank by Zeus's cost eta x energy + (1 - eta) x max GPU power x time "
                                         "(as --eta)", allowed="in [0, 1], or null")

    def __post_init__(self) -> None:
        if not _is_number(self.replay_budget_s) or not 0 <= self.replay_budget_s < math.inf:
            raise InputError("energy.replay_budget_s", f"must be a number of seconds >= 0, got {self.replay_budget_s!r}")
        if self.eta is not None and not (_is_number(self.eta) and 0 <= self.eta <= 1):
            raise InputError("energy.eta", f"must be a number in [0, 1] (or null), got {self.eta!r}")


@dataclass(frozen=True)
class View:
    """One question the sweep answers, e.g. "how does lr matter at batch 128?"."""

    name: str
    grid: dict[str, tuple]  # axis ("lr" or "batch_size") -> values; one value fixes the axis

    @property
    def swept(self) -> tuple[str, ...]:
        """The axes this view varies (its plots' x-axis)."""
        return tuple(axis for axis, values in self.grid.items() if len(values) > 1)

    def points(self, defaults: TrainConfig) -> list[tuple[float, int]]:
        """(lr, batch_size) of every point of the view, in the order written."""
        lrs = self.grid.get("lr", (defaults.lr,))
        batches = self.grid.get("batch_size", (defaults.batch_size,))
        return [(float(lr), int(b)) for lr, b in itertools.product(lrs, batches)]


@dataclass(frozen=True)
class TrialSpec:
    """One trial of the sweep: a point, a seed, and the views it belongs to."""

    number: int  # 1-based, in expansion order
    lr: float
    batch_size: int
    seed: int
    views: tuple[str, ...]

    def describe(self) -> str:
        return f"{self.number:<4d} lr={self.lr:<8g} batch_size={self.batch_size:<5d} seed={self.seed:<3d} views: {', '.join(self.views)}"


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep: what to train, when to stop, which points, on what resources."""

    name: str = documented(doc="the sweep's name; experiments are named NAME-DATE-TIME (default: the file's name)",
                           allowed="a string without '/'")
    views: tuple[View, ...] = documented(doc="the questions the sweep answers: view name -> grid of lr and "
                                             "batch_size (a list sweeps an axis, a value fixes it)",
                                         allowed="at least one view")
    description: str = documented("", "one line shown at the start and in the report")
    data: str = documented("synthetic", "the dataset: a dataset directory, or the built-in synthetic instruments "
                                        "(as --data)", allowed="a directory, or synthetic")
    train: TrainConfig = documented(doc="what each trial trains with", default_factory=TrainConfig)
    stop: StopRule = documented(doc="when a trial stops", default_factory=StopRule)
    repeats: int = documented(1, "runs of every point, with random seeds train.seed, train.seed+1, ... (3 or "
                                 "more give error bars)", allowed="an integer >= 1")
    race: str | None = documented(None, "stop trials that can no longer be the fastest (time) or cheapest (energy) "
                                        "to the target (as --race); null: every trial runs to the stop rule",
                                  allowed=(*RACES, "null"))
    resources: Resources = documented(doc="what each trial asks Ray for, retries, checkpoint and report cadence",
                                      default_factory=Resources)
    energy: EnergyOptions = documented(doc="how energy is measured and ranked", default_factory=EnergyOptions)
    log: tuple[str, ...] = documented((), "experiment trackers, each trial a run (as --log)",
                                      allowed="mlflow, mlflow=TRACKING_URI, wandb, wandb=PROJECT")

    def __post_init__(self) -> None:
        from tune_jobs.trackers import parse_target

        for i, target in enumerate(self.log):
            parse_target(target, where=f"log[{i}]")
        if not self.views:
            raise InputError("views", "must name at least one view, e.g. views: {lr: {lr: [0.001, 0.01]}}")
        if isinstance(self.repeats, bool) or not isinstance(self.repeats, int) or self.repeats < 1:
            raise InputError("repeats", f"must be an integer >= 1, got {self.repeats!r}")
        if self.race is not None:
            Race(self.race)  # InputError("race", ...) unless time or energy
            if self.stop.fixed_epochs:
                raise InputError("race", "needs a target to race to; stop.threshold is null (fixed epochs)")

    @property
    def racer(self) -> Race | None:
        """The race the Tune stopper runs, or None."""
        return Race(self.race) if self.race is not None else None

    @property
    def fixed_epochs(self) -> bool:
        return self.stop.fixed_epochs

    def trials(self) -> list[TrialSpec]:
        """The union of all views' points, each once per repeat, numbered from 1."""
        views_of: dict[tuple[float, int], list[str]] = {}
        for view in self.views:
            for point in view.points(self.train):
                names = views_of.setdefault(point, [])
                if view.name not in names:
                    names.append(view.name)
        trials = []
        for (lr, batch_size), names in views_of.items():
            for repeat in range(self.repeats):
                trials.append(TrialSpec(len(trials) + 1, lr, batch_size, self.train.seed + repeat, tuple(names)))
        return trials

    def train_config(self, trial: TrialSpec) -> TrainConfig:
        cpus = max(1, int(self.resources.cpus_per_trial))
        return replace(self.train, lr=trial.lr, batch_size=trial.batch_size, seed=trial.seed, cpus=cpus)

    def ray_resources(self, cluster_gpus: float, node_cpus: float = 0.0) -> dict[str, float]:
        """What one trial asks Ray for on a cluster that shows `cluster_gpus` GPUs and at most
        `node_cpus` CPUs on one node (exclusive_node asks for all of them: one trial per node)."""
        gpus = self.resources.gpus_per_trial
        if gpus == "auto":
            gpus = 1.0 if cluster_gpus > 0 else 0.0
        cpus = max(float(node_cpus), float(self.resources.cpus_per_trial)) if self.resources.exclusive_node \
            else float(self.resources.cpus_per_trial)
        return {"cpu": cpus, "gpu": float(gpus)}

    def check_batch_sizes(self, n_train_rows: int) -> None:
        """Every batch size must fit in the training split (after validation is held out)."""
        n_fit = n_train_rows - int(round(n_train_rows * self.train.val_fraction))
        for view in self.views:
            for b in view.grid.get("batch_size", (self.train.batch_size,)):
                if b > n_fit:
                    where = f"views.{view.name}.batch_size" if "batch_size" in view.grid else "train.batch_size"
                    raise InputError(where, f"{b} is larger than the training split ({n_fit} rows after "
                                            f"holding out {self.train.val_fraction:g} for validation)")

    def check_validation_split(self, train_class_counts) -> None:
        """The validation split must leave every class rows and resolve an accuracy target."""
        target = self.stop.threshold if self.stop.metric == "val_acc" else None
        splits.check_validation_split(train_class_counts, self.train.val_fraction, target)

    def report_info(self):
        """What the analysis needs of this spec (`analysis.report.ExperimentInfo`)."""
        from analysis.report import ExperimentInfo

        return ExperimentInfo(self.name, self.description, self.stop, tuple((v.name, v.swept) for v in self.views),
                              self.repeats, from_spec=True, eta=self.energy.eta)

    def to_dict(self) -> dict[str, Any]:
        """Plain data that `spec_from_dict` reads back (what sweep.yaml records)."""
        return {
            "name": self.name,
            "description": self.description,
            "data": self.data,
            "train": {k: v for k, v in asdict(self.train).items() if k not in SECTIONS["train"][1]},
            "stop": asdict(self.stop),
            "views": {v.name: {axis: list(values) for axis, values in v.grid.items()} for v in self.views},
            "repeats": self.repeats,
            "race": self.race,
            "resources": asdict(self.resources),
            "energy": asdict(self.energy),
            "log": list(self.log),
        }


# The spec's sections: key -> (the dataclass its mapping builds, fields it does not take).
SECTIONS = {"train": (TrainConfig, ("cpus",)), "stop": (StopRule, ()), "resources": (Resources, ()),
            "energy": (EnergyOptions, ())}


# -- reading specs -----------------------------------------------------------------------


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def load_spec(source: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
              values: dict | None = None) -> SweepSpec:
    """A preset name or a YAML path (default: the `seed` preset), with `key=value` overrides
    (`--set`) and then `values`: {"repeats": 3, "stop.threshold": 0.95} or nested
    {"stop": {"threshold": 0.95}}, merged key by key (the notebook API's keywords)."""
    path = _spec_path(source)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise InputError(str(path), f"is not valid YAML{_yaml_where(exc)}") from None
    except OSError as exc:
        raise InputError(str(path), f"cannot be read: {exc.strerror}") from None
    if not isinstance(raw, dict):
        raise InputError(str(path), "must be a YAML mapping with keys " + ", ".join(TOP_KEYS))
    raw.setdefault("name", path.stem)
    for override in overrides:
        _apply_override(raw, override)
    for key, value in _dotted(values or {}):
        _set_key(raw, key, value, where=key)
    return spec_from_dict(raw)


def _dotted(values: dict) -> list[tuple[str, object]]:
    """{"repeats": 3, "stop": {"threshold": 0.9}} -> [("repeats", 3), ("stop.threshold", 0.9)]: a section's
    keys are set one by one (a view, one level down, is replaced whole)."""
    pairs: list[tuple[str, object]] = []
    for key, value in values.items():
        if isinstance(value, dict):
            pairs += [(f"{key}.{inner}", item) for inner, item in value.items()]
        else:
            pairs.append((key, value))
    return pairs


def read_spec(experiment: str) -> SweepSpec:
    """The spec an experiment was started with (its sweep.yaml, local or cloud)."""
    path = storage.join(experiment, SPEC_FILE)
    try:
        raw = yaml.safe_load(storage.read_text(path))
    except yaml.YAMLError as exc:
        raise InputError(path, f"is not valid YAML{_yaml_where(exc)}; restore it or start a new sweep") from None
    except OSError as exc:
        raise InputError(path, f"cannot be read: {exc.strerror or exc}") from None
    if not isinstance(raw, dict):
        raise InputError(path, "must be a YAML mapping (the sweep's resolved spec)")
    return spec_from_dict(raw)


def _yaml_where(exc: yaml.YAMLError) -> str:
    """" (line N: what the parser expected)", one line, for a YAML syntax error."""
    mark = getattr(exc, "problem_mark", None)
    if mark is None:
        return ""
    problem = " ".join(str(getattr(exc, "problem", "") or "").split())
    return f" (line {mark.line + 1}{': ' + problem if problem else ''})"


def _spec_path(source: str | Path | None) -> Path:
    if source is None:
        source = DEFAULT_PRESET
    path = Path(source)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise InputError(str(path), "no such sweep file")
        return path
    preset = PRESETS_DIR / f"{source}.yaml"
    if not preset.is_file():
        raise InputError("preset", f"unknown preset {str(source)!r}; presets: {', '.join(preset_names())} "
                                   "(or give a path to a .yaml sweep file)")
    return preset


def _apply_override(raw: dict, override: str) -> None:
    """`--set stop.threshold=0.95`: the value is parsed as YAML (numbers, lists, strings)."""
    key, sep, text = override.partition("=")
    if not sep or not key.strip():
        raise InputError("--set", f"expects KEY=VALUE (e.g. stop.threshold=0.95), got {override!r}")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    _set_key(raw, key.strip(), value, where=f"--set {key}")


def _set_key(raw: dict, key: str, value: object, where: str) -> None:
    """Set dotted `key` in `raw`, making sections on the way; errors name `where`."""
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise InputError(where, f"{part!r} is not a section")
    node[parts[-1]] = value


def spec_from_dict(raw: dict) -> SweepSpec:
    """Validate plain data (parsed YAML) into a SweepSpec; errors name the key."""
    _check_keys("", raw, TOP_KEYS)
    sections = {key: _dataclass_from(key, cls, raw.get(key) or {}, exclude=exclude)
                for key, (cls, exclude) in SECTIONS.items()}
    views = _views_from(raw.get("views"))
    data = raw.get("data", "synthetic")
    if not isinstance(data, str) or not data:
        raise InputError("data", f"must be a dataset directory or 'synthetic', got {data!r}")
    name = raw.get("name")
    if not isinstance(name, str) or not name or "/" in name:
        raise InputError("name", f"must be a non-empty string without '/', got {name!r}")
    return SweepSpec(
        name=name,
        description=str(raw.get("description") or ""),
        data=data,
        views=views,
        repeats=raw.get("repeats", 1),
        race=raw.get("race"),
        log=_log_from(raw.get("log")),
        **sections,
    )


def _log_from(raw: Any) -> tuple[str, ...]:
    """`log: mlflow` or `log: [mlflow=URI, wandb]`."""
    if raw is None:
        return ()
    raw = [raw] if isinstance(raw, str) else raw
    if not isinstance(raw, list) or not all(isinstance(t, str) for t in raw):
        raise InputError("log", f"must be a tracker or a list of them (mlflow[=URI], wandb[=PROJECT]), got {raw!r}")
    return tuple(raw)


def _views_from(raw: Any) -> tuple[View, ...]:
    if not isinstance(raw, dict) or not raw:
        raise InputError("views", "must map view names to grids, e.g. views: {lr: {lr: [0.001, 0.01], batch_size: 128}}")
    views = []
    for name, grid in raw.items():
        where = f"views.{name}"
        if not isinstance(grid, dict) or not grid:
            raise InputError(where, f"must map {' and/or '.join(AXES)} to a value or a list of values")
        _check_keys(where, grid, AXES)
        parsed = {}
        for axis, values in grid.items():
            values = values if isinstance(values, list) else [values]
            if not values:
                raise InputError(f"{where}.{axis}", "is an empty list; give at least one value")
            parsed[axis] = tuple(_axis_value(f"{where}.{axis}", axis, v) for v in values)
        views.append(View(str(name), parsed))
    return tuple(views)


def _axis_value(where: str, axis: str, value: Any) -> float | int:
    if axis == "lr":
        number = _as_number(where, value)
        if not number > 0 or not math.isfinite(number):
            raise InputError(where, f"learning rates must be finite numbers > 0, got {value!r}")
        return float(number)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(where, f"batch sizes must be integers >= 1, got {value!r}")
    return value


def _dataclass_from(section: str, cls: type, raw: Any, exclude: tuple[str, ...] = ()) -> Any:
    if not isinstance(raw, dict):
        raise InputError(section, f"must be a mapping, got {raw!r}")
    allowed = tuple(f.name for f in fields(cls) if f.name not in exclude)
    _check_keys(section, raw, allowed)
    floats = {f.name for f in fields(cls) if f.type in ("float", "float | None")}
    values = {k: (_as_number(f"{section}.{k}", v) if k in floats and v is not None else v) for k, v in raw.items()}
    try:
        return cls(**values)
    except InputError as exc:
        raise InputError(f"{section}.{exc.where.split('.')[-1]}", exc.problem) from None


def _check_keys(section: str, raw: dict, allowed: tuple[str, ...]) -> None:
    for key in raw:
        if key not in allowed:
            where = f"{section}.{key}" if section else str(key)
            hint = difflib.get_close_matches(str(key), allowed, n=1)
            did_you_mean = f"did you mean {hint[0]!r}? " if hint else ""
            raise InputError(where, f"unknown key; {did_you_mean}allowed: {', '.join(allowed)}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _as_number(where: str, value: Any) -> float | int:
    """Numbers, and numeric strings: YAML 1.1 reads `1e-5` (no dot) as a string."""
    if _is_number(value):
        return value
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise InputError(where, f"must be a number, got {value!r}")
