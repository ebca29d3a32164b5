"""Sweep specs: shipped presets validate, the union of views runs once, overrides and dry runs."""

import subprocess
import sys

import pytest
import yaml

from trainables.errors import InputError
from tune_jobs.spec import load_spec, preset_names, spec_from_dict


@pytest.mark.parametrize("preset", preset_names())
def test_every_shipped_preset_validates_and_round_trips(preset):
    spec = load_spec(preset)
    assert spec.trials(), preset
    assert spec_from_dict(spec.to_dict()) == spec  # what sweep.yaml records reads back the same


def test_presets_ship_the_seed_studies():
    assert {"seed", "seed-lr-curves", "seed-fixed", "smoke"} <= set(preset_names())
    lr_curves = load_spec("seed-lr-curves")
    assert lr_curves.fixed_epochs and lr_curves.stop.max_epochs == 20
    assert sorted(t.lr for t in lr_curves.trials()) == [0.0001, 0.001, 0.01, 0.1]
    fixed = load_spec("seed-fixed")
    assert fixed.stop.max_epochs == 10 and [(t.lr, t.batch_size) for t in fixed.trials()] == [(1e-3, 128)]


def test_seed_preset_runs_the_union_of_its_views_once():
    spec = load_spec("seed")
    trials = spec.trials()
    assert len(trials) == 9  # 6 lrs + 4 batch sizes, with (1e-3, 128) shared
    assert [t.number for t in trials] == list(range(1, 10))
    points = {(t.lr, t.batch_size): t.views for t in trials}
    assert points[(1e-3, 128)] == ("lr", "batch_size")
    assert sorted(lr for (lr, b), v in points.items() if "lr" in v) == [1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0]
    assert sorted(b for (lr, b), v in points.items() if "batch_size" in v) == [32, 128, 512, 2048]
    assert (spec.stop.threshold, spec.stop.patience, spec.stop.max_epochs) == (0.98, 3, 100)
    assert spec.train.val_fraction == 0.2


def test_repeats_run_every_point_with_consecutive_seeds():
    spec = load_spec("seed", ["repeats=3"])
    trials = spec.trials()
    assert len(trials) == 27
    assert sorted({t.seed for t in trials}) == [0, 1, 2]
    assert len({(t.lr, t.batch_size, t.seed) for t in trials}) == 27


def test_overrides_set_any_field():
    spec = load_spec("seed", ["stop.threshold=0.9", "train.loader=dataloader", "views.lr.lr=[0.1, 0.01]",
                              "resources.cpus_per_trial=2"])
    assert spec.stop.threshold == 0.9 and spec.train.loader == "dataloader"
    assert spec.resources.cpus_per_trial == 2
    assert {t.lr for t in spec.trials() if "lr" in t.views} == {0.1, 0.01}
    assert all(spec.train_config(t).cpus == 2 for t in spec.trials())


def test_yaml_exponent_without_dot_is_a_number(tmp_path):
    """YAML 1.1 reads 1e-5 as a string; a spec writer should not have to know that."""
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"views": {"lr": {"lr": ["1e-5", "1e-3"], "batch_size": 64}}})
                    .replace("'", ""))
    assert [t.lr for t in load_spec(str(path)).trials()] == [1e-5, 1e-3]


def test_gpus_per_trial_auto_follows_the_cluster():
    spec = load_spec("seed")
    assert spec.ray_resources(cluster_gpus=0) == {"cpu": 1.0, "gpu": 0.0}
    assert spec.ray_resources(cluster_gpus=4) == {"cpu": 1.0, "gpu": 1.0}
    pinned = load_spec("seed", ["resources.gpus_per_trial=1"])
    assert pinned.ray_resources(cluster_gpus=0)["gpu"] == 1.0
    assert load_spec("seed", ["resources.gpus_per_trial=0"]).ray_resources(cluster_gpus=4)["gpu"] == 0.0


@pytest.mark.parametrize("gpus", ["0.5", "2", "1.5", "true"])
def test_gpus_per_trial_is_auto_0_or_1(gpus):
    """A trial's energy is its one whole GPU's: half a GPU would be charged the GPU's whole joules,
    two GPUs would be probed on one."""
    with pytest.raises(InputError) as err:
        load_spec("seed", [f"resources.gpus_per_trial={gpus}"])
    assert err.value.where == "resources.gpus_per_trial" and "must be 'auto', 0 or 1" in str(err.value)


def test_batch_larger_than_training_split_is_refused():
    spec = load_spec("seed")
    with pytest.raises(InputError) as err:
        spec.check_batch_sizes(n_train_rows=2000)  # 1600 rows after validation < 2048
    assert err.value.where == "views.batch_size.batch_size"
    spec.check_batch_sizes(n_train_rows=3000)


def test_dry_run_lists_trials_and_views_without_ray():
    out = subprocess.run([sys.executable, "-m", "tune_jobs", "run", "--dry-run"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if line[:1].isdigit()]
    assert [int(line.split()[0]) for line in lines] == list(range(1, 10))
    assert "views: lr, batch_size" in lines[2]
    assert "ray" not in out.stderr.lower()


def test_trials_report_every_report_every_s_but_every_epoch_for_a_tracker_or_a_race():
    from trainables.training.config import trial_config
    from tune_jobs.launch import param_space, trial_settings

    def trials(*overrides):
        spec = load_spec("smoke", list(overrides))
        return [trial_config(t, trial_settings(spec)) for t in param_space(spec)["trial"]["grid_search"]]

    assert {t["report_every_s"] for t in trials()} == {0.5} and {t["checkpoint_every_s"] for t in trials()} == {1.0}
    assert {t["report_every_s"] for t in trials("log=[mlflow]")} == {0.0}  # a tracker logs each report as a step
    assert {t["report_every_s"] for t in trials("race=time")} == {0.0}  # the race stops trials at reports


@pytest.mark.parametrize("overrides", [[], ["log=[mlflow]"]])
def test_a_trials_param_space_entry_holds_only_what_identifies_it_and_its_config_is_whole(overrides):
    """Tune copies each trial's config into every result it keeps and logs: the param space holds
    what identifies a trial, and `trial_config` joins what all share (train and stop settings,
    cadences) to the whole config checkpoints record, as it was before the split. With trackers
    (which log the config as each run's params) the entry holds it all."""
    from dataclasses import asdict

    from trainables.training.config import trial_config
    from tune_jobs.launch import param_space, trial_settings

    spec = load_spec("seed", overrides)
    entries, settings = param_space(spec)["trial"]["grid_search"], trial_settings(spec)
    whole = [{"number": t.number, "lr": t.lr, "batch_size": t.batch_size, "seed": t.seed, "views": list(t.views),
              "train": asdict(spec.train_config(t)), "stop": asdict(spec.stop),
              "replay_budget_s": spec.energy.replay_budget_s,
              "checkpoint_every_s": spec.resources.checkpoint_every_s,
              "report_every_s": 0.0 if spec.log else spec.resources.report_every_s} for t in spec.trials()]
    assert [trial_config(entry, settings) for entry in entries] == whole
    assert entries == (whole if spec.log else [{k: w[k] for k in ("number", "lr", "batch_size", "seed", "views")}
                                               for w in whole])
