"""Analysis on real small sweeps: frames -> tables, figures, report.md and the `analyze` command.

    pytest tests/test_analysis.py -q

The experiments are the conftest fixtures (real Ray Tune sweeps over Gaussian blobs).
What energy a host measures differs (none here; GPU or RAPL joules elsewhere), so
the figure and table tests write it into the trial frame the way a node without
(or with) a GPU reports it; nothing of ours is faked.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import frames, load_epochs, load_trials, plots, summary
from analysis.report import experiment_info, write_report
from tune_jobs.spec import SPEC_FILE
from trainables.errors import InputError

FIGURES = ("view-lr.png", "view-batch_size.png", "pareto.png", "loss.png", "accuracy.png")
TABLES = ("trials.csv", "trials.parquet", "epochs.parquet", "summary.csv")


@pytest.fixture(scope="module")
def tiny_report(tiny_experiment, tmp_path_factory) -> Path:
    """report.md of the tiny threshold sweep, written once into a fresh folder."""
    return Path(write_report(tiny_experiment, str(tmp_path_factory.mktemp("analysis"))))


@pytest.fixture(scope="module")
def trials(tiny_experiment) -> pd.DataFrame:
    """The tiny sweep's trials as a node that measures no energy reports them."""
    return load_trials(tiny_experiment).assign(energy_j=np.nan, first_run_cpu_energy_j=np.nan,
                                                energy_source="none", energy_uncertain=False)


def with_gpu_energy(trials: pd.DataFrame, uncertain_trial: int | None = None) -> pd.DataFrame:
    """The trials as a GPU node reports them: joules measured, optionally one window under 1 s."""
    measured = trials.assign(energy_j=trials["time_s"] * 250.0, energy_source="gpu", energy_uncertain=False)
    if uncertain_trial is not None:
        measured.loc[measured["trial_number"] == uncertain_trial, "energy_uncertain"] = True
    return measured


def texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def legend_texts(legend) -> list[str]:
    return [t.get_text() for t in legend.get_texts()]


# -- files ----------------------------------------------------------------------------------


def test_report_writes_tables_figures_and_links_every_figure(tiny_report, tiny_experiment):
    folder = tiny_report.parent
    for name in (*TABLES, *FIGURES):
        assert (folder / name).stat().st_size > 0, name
        assert (folder / name).read_bytes()[:4] == b"\x89PNG" or not name.endswith(".png")
    report = tiny_report.read_text()
    for figure in FIGURES:
        assert f"]({figure})" in report
    assert "## View `lr` (x: learning rate)" in report and "## View `batch_size` (x: batch size)" in report
    assert "val_acc >= 0.9 for 2 epochs in a row (max 5 epochs)" in report
    assert "**Fastest to the target:** lr" in report
    assert "| 3 | 1e-05 | 64 | 0 | lr | max_epochs | 5 |" in report
    if load_trials(tiny_experiment).energy_j.isna().all():  # a host that measures no energy
        assert "**Least energy to the target:** not measured" in report
        assert "| not measured |" in report  # missing energy is said, never written as 0
    else:
        assert "**Least energy to the target:** lr" in report


def test_figures_drawn_in_processes_of_their_own_are_the_ones_drawn_in_place(tiny_report, tiny_experiment, tmp_path):
    from PIL import Image

    report = Path(write_report(tiny_experiment, str(tmp_path), figure_processes=3))
    pixels = lambda folder: {p.name: Image.open(p).tobytes() for p in sorted(folder.glob("*.png"))}  # noqa: E731
    assert list(pixels(report.parent)) == sorted(FIGURES)
    assert pixels(report.parent) == pixels(tiny_report.parent)
    links = lambda path: [line for line in path.read_text().splitlines() if ".png)" in line]  # noqa: E731
    assert links(report) == links(tiny_report) and len(links(report)) == len(FIGURES)


@pytest.mark.parametrize("processes", [1, 2])
def test_a_figure_that_cannot_be_saved_fails_the_report_after_the_others_are_saved(tiny_experiment, tmp_path,
                                                                                    processes):
    (tmp_path / "loss.png").mkdir()  # where the loss curves would go: nothing can be written there
    with pytest.raises((RuntimeError, OSError)) as caught:
        write_report(tiny_experiment, str(tmp_path), figure_processes=processes)
    assert "loss.png" in str(caught.value)
    saved = {p.name for p in tmp_path.glob("*.png") if p.is_file()}
    assert saved == (set(FIGURES) - {"loss.png"} if processes > 1 else {"view-lr.png", "view-batch_size.png",
                                                                         "pareto.png"})
    assert not (tmp_path / "report.md").exists()


def test_tables_round_trip(tiny_report, tiny_experiment):
    folder = tiny_report.parent
    trials = load_trials(tiny_experiment)
    pd.testing.assert_frame_equal(pd.read_parquet(folder / "trials.parquet"), trials, check_dtype=False)
    # an empty text cell (no error, no note, no GPU) reads back as NaN from any CSV
    text = [c for c in trials if pd.api.types.is_string_dtype(trials[c]) and c != "config"]
    assert {"error", "energy_note", "gpu_uuids"} <= set(text)
    from_csv = pd.read_csv(folder / "trials.csv", dtype=dict.fromkeys(text, str))
    from_csv[text] = from_csv[text].fillna("")
    pd.testing.assert_frame_equal(from_csv, trials, check_dtype=False)
    epochs = load_epochs(tiny_experiment)
    stored = pd.read_parquet(folder / "epochs.parquet")
    assert len(stored) == len(epochs) == trials["epochs"].sum()
    assert [json.loads(c) for c in stored["config"]] == list(epochs["config"])
    pd.testing.assert_frame_equal(stored.drop(columns="config"), epochs.drop(columns="config"), check_dtype=False)
    table = pd.read_csv(folder / "summary.csv")
    assert list(table.groupby("view", sort=False).size().items()) == [("lr", 3), ("batch_size", 2)]


def test_every_column_of_the_trials_and_epochs_frames_is_documented(tiny_experiment):
    """docs/reference/columns.md is generated from TRIAL_COLUMNS, EpochReport's fields and EPOCH_COLUMNS:
    a column the frames hold beyond those would be missing from it."""
    from trainables.training.report import FIELDS

    assert list(load_trials(tiny_experiment).columns) == list(frames.TRIAL_COLUMNS)
    assert set(load_epochs(tiny_experiment).columns) - set(FIELDS) - set(frames.EPOCH_COLUMNS) == set()


def test_analyze_command_writes_into_the_experiment_and_rejects_bad_input(tiny_experiment, tmp_path, capsys):
    from tune_jobs import cli_analyze

    parser = argparse.ArgumentParser(prog="instrument-sweep")
    cli_analyze.register(parser.add_subparsers())
    copy = tmp_path / "sweeps" / "tiny"
    shutil.copytree(tiny_experiment, copy)
    args = parser.parse_args(["analyze", str(copy)])
    assert args.func(args) == 0
    assert (copy / "analysis" / "report.md").is_file()
    assert f"report: {copy / 'analysis' / 'report.md'}" in capsys.readouterr().out
    assert len(load_trials(str(copy))) == 5  # the analysis folder is not taken for a trial

    def fails(*argv: str) -> InputError:
        args = parser.parse_args(["analyze", *argv])
        with pytest.raises(InputError) as caught:
            args.func(args)
        return caught.value

    assert fails(str(tmp_path / "missing")).where == "PATH"
    root = fails(str(tmp_path / "sweeps"))  # the storage root, not an experiment
    assert root.where == "PATH" and "no sweep.yaml and no trial directories" in root.problem and "tiny" in root.problem
    assert fails(str(copy / SPEC_FILE)).where == "PATH"
    assert fails(str(copy), "--out", str(copy / "analysis" / "report.md")).where == "--out"


def test_cloud_uri_writes_to_a_local_analysis_folder(tiny_experiment, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    report = write_report(f"file://{tiny_experiment}")  # read through pyarrow's filesystem, as s3:// is
    assert report == str(tmp_path / "analysis-tiny" / "report.md")
    assert (tmp_path / "analysis-tiny" / "view-lr.png").is_file()


def test_partial_experiment_is_analyzed_and_labelled(tiny_experiment, tmp_path):
    copy = tmp_path / "tiny"
    shutil.copytree(tiny_experiment, copy)
    slow = next(copy.glob("trial-003-*"))  # lr 1e-5: five epochs; cut it to two, still running
    lines = (slow / "result.json").read_text().splitlines()
    (slow / "result.json").write_text("\n".join(lines[:2]) + "\n")
    report = Path(write_report(str(copy), str(tmp_path / "out"))).read_text()
    assert "**Partial results:** 1 trial(s) still running" in report
    assert "| 3 | 1e-05 | 64 | 0 | lr | running | 2 |" in report


def test_spec_is_rebuilt_from_the_trials_without_sweep_yaml(tiny_experiment, tmp_path):
    copy = tmp_path / "tiny"
    shutil.copytree(tiny_experiment, copy)
    (copy / SPEC_FILE).unlink()
    trials = load_trials(str(copy))
    info = experiment_info(str(copy), trials, load_epochs(str(copy)))
    assert not info.from_spec
    assert (info.threshold, info.patience, info.max_epochs) == (0.9, 2, 5)
    assert info.views == (("lr", ("lr",)), ("batch_size", ("batch_size",)))
    # Each trial's whole config: what identifies it (params.json) joined with what all share
    # (trial_settings.json), as its checkpoints record it.
    config = load_epochs(str(copy)).config.iloc[0]["trial"]
    assert {"number", "lr", "batch_size", "seed", "views", "train", "stop", "report_every_s"} <= set(config)
    assert config["train"]["lr"] == config["lr"] and config["stop"]["patience"] == 2


# -- the seed's bar figure ------------------------------------------------------------------


def test_view_figure_has_four_labelled_panels_and_marks_the_missed_trial(trials):
    fig = plots.plot_view(trials, "lr", ("lr",), "val_acc >= 0.9 for 2 epochs")
    time_ax, energy_ax, acc_ax, epochs_ax = fig.axes
    assert [ax.get_ylabel() for ax in fig.axes] == [
        "time to accuracy (s)", "energy to accuracy (J)", "test accuracy (fraction correct)", "epochs"]
    assert {ax.get_xlabel() for ax in fig.axes} == {"learning rate"}
    assert [t.get_text() for t in time_ax.get_xticklabels()] == ["1e-05", "0.005", "0.05"]
    for ax in (time_ax, acc_ax, epochs_ax):
        bars = ax.patches
        assert len(bars) == 3
        assert "x" in (bars[0].get_hatch() or "")  # lr 1e-5 stopped at max_epochs
        assert bars[0].get_facecolor()[:3] == pytest.approx((0.85, 0.85, 0.85))
        assert not bars[1].get_hatch() and not bars[2].get_hatch()
    assert [b.get_height() for b in epochs_ax.patches] == [5, 2, 2]
    assert len(energy_ax.patches) == 0  # no zeros drawn for missing energy
    assert any(t.startswith(plots.NOT_MEASURED) for t in texts(fig))
    legend = legend_texts(fig.legends[0])
    assert legend[0] == "reached the target" and legend[1].startswith("missed the target")

    batch = plots.plot_view(trials, "batch_size", ("batch_size",))
    assert [len(ax.patches) for ax in batch.axes] == [2, 0, 2, 2]
    assert batch.axes[0].get_xlabel() == "batch size"
    assert [t.get_text() for t in batch.axes[0].get_xticklabels()] == ["32", "256"]


def test_measured_energy_is_drawn_and_windows_under_a_second_are_hatched(trials):
    fig = plots.plot_view(with_gpu_energy(trials, uncertain_trial=1), "lr", ("lr",))
    energy_ax = fig.axes[1]
    heights = [b.get_height() for b in energy_ax.patches]
    expected = summary.in_view(trials, "lr").set_index("lr").loc[[1e-5, 0.005, 0.05], "time_s"] * 250.0
    assert heights == pytest.approx(list(expected))
    hatches = [b.get_hatch() or "" for b in energy_ax.patches]
    assert "/" in hatches[2] and "/" not in hatches[1]  # trial 1 is lr 0.05
    assert not any(t.startswith(plots.NOT_MEASURED) for t in texts(fig))
    assert plots.LOW_RES_LABEL in legend_texts(fig.legends[0])


def test_repeats_show_mean_spread_and_single_runs(trials):
    second_seed = trials.assign(seed=1, time_s=trials["time_s"] * 1.5, trial_id=trials["trial_id"] + "-s1")
    both = pd.concat([trials, second_seed], ignore_index=True)
    table = summary.view_table(both, "lr", ("lr",))
    assert list(table["runs"]) == [2, 2, 2]
    row = table.iloc[2]  # lr 0.05
    runs = np.array([1.0, 1.5]) * trials.loc[trials["lr"] == 0.05, "time_s"].iloc[0]
    half = summary.t95(1) * runs.std(ddof=1) / np.sqrt(2)
    assert (row["time_s_mean"], row["time_s_std"]) == pytest.approx((runs.mean(), runs.std(ddof=1)))
    assert (row["time_s_ci95_lo"], row["time_s_ci95_hi"]) == pytest.approx((runs.mean() - half, runs.mean() + half))
    fig = plots.plot_view(both, "lr", ("lr",))
    assert len(fig.axes[0].patches) == 3  # one bar per configuration, not per trial
    legend = legend_texts(fig.legends[0])
    assert "mean ± 1 std over seeds (up to 2)" in legend and "single runs" in legend


def test_t95_matches_student_t():
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 5, 29, 30, 31, 60, 200):
        assert summary.t95(df) == pytest.approx(stats.t.ppf(0.975, df), rel=2e-3)


# -- Pareto front and recommendation --------------------------------------------------------


def test_pareto_front_keeps_only_non_dominated_finite_points():
    points = pd.DataFrame({"time_s_mean": [1.0, 2.0, 3.0, 2.0, 0.5, 1.0],
                           "energy_j_mean": [5.0, 3.0, 4.0, 3.0, np.nan, 5.0]})
    assert list(summary.pareto_front(points)) == [True, True, False, True, False, True]


def test_recommendation_names_fastest_and_least_energy_among_those_that_reached(trials):
    reached = trials[trials["reached_target"]]
    picks = summary.recommend(trials)
    assert list(picks.index) == ["fastest"]  # energy not measured: no least-energy pick
    assert picks.loc["fastest", "time_s"] == reached["time_s"].min()
    energy = with_gpu_energy(trials)
    least = energy["energy_j"].min() / 2
    energy.loc[energy["lr"] == 0.05, "energy_j"] = least  # now the least energy, not the fastest
    picks = summary.recommend(energy)
    assert picks.loc["least_energy", ["lr", "batch_size", "energy_j"]].tolist() == [0.05, 64, least]
    energy.loc[energy["lr"] == 1e-5, "energy_j"] = least / 10  # missed the target: never recommended
    assert summary.recommend(energy).loc["least_energy", "lr"] == 0.05


def test_pareto_plot_labels_points_and_says_when_energy_is_missing(trials):
    fig = plots.plot_pareto(with_gpu_energy(trials))
    ax = fig.axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("time to accuracy (s)", "energy to accuracy (J)")
    assert "Pareto front (reached the target)" in legend_texts(ax.get_legend())
    assert sorted(texts(fig)) == sorted(f"({lr:g}, {b})" for lr, b in zip(trials["lr"], trials["batch_size"]))
    time_only = plots.plot_pareto(trials)
    ax = time_only.axes[0]
    assert ax.get_xlabel() == "time to accuracy (s)" and plots.NOT_MEASURED in ax.get_title()
    assert len(ax.patches) == 5 and sum("x" in (b.get_hatch() or "") for b in ax.patches) == 1
    fastest = trials.loc[trials[trials["reached_target"]]["time_s"].idxmin()]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[0] == f"({fastest['lr']:g}, {fastest['batch_size']})" and labels[-1] == "(1e-05, 64)"
    assert ax.patches[0].get_facecolor()[:3] == pytest.approx((0.839, 0.153, 0.157), abs=1e-3)  # tab:red


# -- per-epoch curves -----------------------------------------------------------------------


def test_loss_and_accuracy_curves_per_view_with_the_target_line(tiny_experiment):
    epochs = load_epochs(tiny_experiment)
    views = [("lr", ("lr",)), ("batch_size", ("batch_size",))]
    loss = plots.plot_loss_curves(epochs, views)
    assert len(loss.axes) == 2
    for ax, n_trials in zip(loss.axes, (3, 2)):
        assert ax.get_yscale() == "log" and ax.get_xlabel() == "epoch"
        assert "loss" in ax.get_ylabel() and "log" in ax.get_ylabel()
        assert len([line for line in ax.get_lines() if len(line.get_xdata())]) == n_trials
    assert legend_texts(loss.axes[0].get_legend()) == ["lr 1e-05", "lr 0.005", "lr 0.05"]
    accuracy = plots.plot_accuracy_curves(epochs, views, threshold=0.9, patience=2)
    for ax in accuracy.axes:
        target = [line for line in ax.get_lines() if line.get_label().startswith("target")]
        assert len(target) == 1 and list(target[0].get_ydata()) == [0.9, 0.9]
        assert "target 0.9 (2 epochs in a row)" in legend_texts(ax.get_legend())


def test_fixed_epochs_sweep_has_no_target_figures_and_train_and_test_loss_together(tiny_fixed_experiment, tmp_path):
    report = Path(write_report(tiny_fixed_experiment, str(tmp_path)))
    written = {p.name for p in tmp_path.iterdir()}
    assert {"loss.png", "accuracy.png", *TABLES} <= written
    assert not {n for n in written if n.startswith("view-") or n == "pareto.png"}
    text = report.read_text()
    assert "4 fixed epochs (no target)" in text and "Highest final test accuracy" in text
    epochs = load_epochs(tiny_fixed_experiment)
    ax = plots.plot_loss_curves(epochs, [("lr", ("lr",))]).axes[0]
    assert ax.get_yscale() == "log"
    assert {"training loss", "test loss", "lr 0.001", "lr 0.01"} <= set(legend_texts(ax.get_legend()))
    styles = {line.get_linestyle() for line in ax.get_lines() if len(line.get_xdata()) == 4}
    assert styles == {"-", "--"}  # both trials' training (solid) and test (dashed) loss, 4 epochs each
    accuracy = plots.plot_accuracy_curves(epochs, [("lr", ("lr",))], threshold=None)
    assert not [line for line in accuracy.axes[0].get_lines() if line.get_label().startswith("target")]


# -- energy attribution, error bars and the cost ranking -------------------------------------


def test_nothing_measured_stays_nan_with_method_none(tiny_experiment):
    trials = load_trials(tiny_experiment)
    unmeasured = trials[trials.energy_source == "none"]
    assert (unmeasured.energy_method == "none").all() and not unmeasured.energy_uncertain.any()
    for column in ("energy_j", "energy_err_j", "dynamic_energy_j", "first_run_energy_j"):
        assert unmeasured[column].isna().all(), column
    measured = trials[trials.energy_source != "none"]  # a GPU or RAPL host
    assert measured.energy_method.isin(["direct", "replay"]).all() and (measured.energy_j >= 0).all()


def test_node_cpu_energy_counts_for_a_trial_only_where_it_ran_alone(tiny_experiment):
    """The tiny sweep ran trials two at a time on one node: with the node's RAPL joules written
    in, trials that overlapped another share them (they rank nothing); one alone owns them."""
    trials = load_trials(tiny_experiment).assign(energy_j=np.nan, energy_source="none", cpu_energy_shared=False)
    trials["first_run_cpu_energy_j"] = trials["time_s"] * 30.0
    both = frames.attribute_cpu_energy(trials)
    spans = list(zip(trials.started_at_s, trials.ended_at_s))
    overlapped = [any(s < e2 and e > s2 for j, (s2, e2) in enumerate(spans) if j != i) for i, (s, e) in enumerate(spans)]
    assert any(overlapped)
    assert both.cpu_energy_shared.tolist() == overlapped
    assert both.energy_j[both.cpu_energy_shared].isna().all()
    alone = both[~both.cpu_energy_shared]
    assert (alone.energy_source == "cpu").all() and (alone.energy_j == alone.first_run_cpu_energy_j).all()
    single = frames.attribute_cpu_energy(trials.iloc[[0]])
    assert single.energy_source.tolist() == ["cpu"] and not single.cpu_energy_shared.any()


def test_recommendation_says_when_energies_are_within_error_bars_and_ranks_by_eta(trials):
    energy = with_gpu_energy(trials).assign(energy_err_j=5.0, gpu_max_power_w=700.0)
    reached = energy[energy.reached_target]
    cheapest = reached.energy_j.min()
    energy.loc[energy.trial_id == reached.trial_id.iloc[0], "energy_j"] = cheapest + 4.0  # within 5 + 5 J
    picks = summary.recommend(energy, eta=0.5)
    least = picks.loc["least_energy"]
    assert least["ties"] != "" and least["energy_err_j"] == 5.0
    now = energy[energy.reached_target]
    assert picks.loc["eta_cost", "cost_j"] == pytest.approx((0.5 * now.energy_j + 0.5 * 700.0 * now.time_s).min())
    assert "eta_cost" not in summary.recommend(trials, eta=0.5).index  # no GPU energy: no cost ranking


# -- an older experiment: the H200's seed sweep, before one window per figure -------------------------


def h200_experiment(folder: Path) -> str:
    """The committed H200 run's seed sweep (benchmarks/results), its epochs written back as the trials'
    params.json and result.json: an experiment as the code before one window per figure left it."""
    import tarfile

    logs = Path(__file__).parents[1] / "benchmarks" / "results" / "gpu-check-NVIDIA-H200-logs.tar.gz"
    with tarfile.open(logs) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("sweep-analysis/epochs.parquet"))
        epochs = pd.read_parquet(tar.extractfile(member))
    for trial_id, rows in epochs.groupby("trial_id"):
        trial_dir = folder / f"trial-{trial_id}"
        trial_dir.mkdir(parents=True)
        (trial_dir / "params.json").write_text(json.dumps(json.loads(rows.config.iloc[0])))
        lines = rows.drop(columns=["config", "sweep"]).to_json(orient="records", lines=True)
        (trial_dir / "result.json").write_text(lines)
    return str(folder)


def test_an_older_experiment_loads_and_its_runs_below_idle_power_are_flagged(tmp_path):
    """Its columns load under today's names (cpu_energy_j as first_run_cpu_energy_j; those gone are
    dropped), and the 4 of its 9 trials whose first run read below the GPU's idle power (93, 87, 114
    and 92 W against 124 W: the per-epoch windows' artefact) are flagged, the reason in the note."""
    trials = load_trials(h200_experiment(tmp_path / "h200"))
    assert len(trials) == 9 and list(trials.columns) == list(frames.TRIAL_COLUMNS)
    assert trials.first_run_cpu_energy_j.isna().all() and trials.energy_j.notna().all()
    flagged = trials[trials.energy_uncertain]
    assert sorted(zip(flagged.lr, flagged.batch_size)) == [(0.001, 32), (0.001, 128), (0.1, 128), (1.0, 128)]
    assert all(note.startswith("first run: ") and "below the GPU's idle 124 W" in note for note in flagged.energy_note)
    assert (trials[~trials.energy_uncertain].energy_note.fillna("") == "").all()


def test_where_the_idle_floor_is_most_of_the_energy_the_report_says_so_and_shows_the_dynamic_energy(tmp_path):
    """The H200's seed sweep: 93% of its GPU joules are the 124 W idle floor. The report says which idle it
    subtracts, says that energy then ranks as time does, and shows the dynamic energy beside the energy in
    the tables and the recommendation; a sweep whose floor is a small share shows none of it."""
    from analysis.report import idle_floor_share, render_report

    experiment = h200_experiment(tmp_path / "h200")
    trials, epochs = load_trials(experiment), load_epochs(experiment)
    info = experiment_info(experiment, trials, epochs)
    assert round(idle_floor_share(trials), 2) == 0.93
    text = render_report(trials, info, {}, experiment)
    assert "Idle floor subtracted (dynamic_energy_j = energy_j - gpu_idle_w x time_s): 124 W, the GPU's draw with " \
           "the trial's CUDA context open" in text
    assert "93% of the GPU joules are that idle floor, so energy ranks the configurations as time does" in text
    assert "| dynamic energy (J) |" in text and "| dynamic (J) |" in text
    assert "8.765 J ± 0.35 J (counter) (dynamic 0.469 J)" in text  # lr 0.01, batch 128: the least energy
    busy = trials.assign(energy_j=trials.energy_j * 20, dynamic_energy_j=trials.energy_j * 19)  # a floor of 5%
    plain = render_report(busy, info, {}, experiment)
    assert "idle floor, so energy ranks" not in plain and "dynamic" not in plain.split("## Recommendation")[1]
