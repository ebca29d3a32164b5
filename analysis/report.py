"""Experiment -> analysis folder: tables (CSV, parquet), PNG figures and report.md.

    instrument-sweep analyze sweeps/seed-20261125-2000          # writes sweeps/seed-20261125-2000/analysis/
    instrument-sweep analyze s3://bucket/sweeps/seed-1 --out ./seed-1-analysis

    from analysis.report import write_report
    path = write_report("sweeps/seed-20261125-2000")           # ".../analysis/report.md"

Works on a running, finished, resumed or cloud-stored experiment: it reads the
trials' files as they are now (a partial experiment is labelled partial). The
spec (views, swept axes, stop rule) comes from the experiment's sweep.yaml; without
one it is rebuilt from the trials' own configs.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from analysis import figure_server, storage, summary
from analysis.frames import load_epochs, load_trials, trial_paths
from analysis.storage import SPEC_FILE
from trainables.errors import InputError
from trainables.training.stop import Status, StopRule

if TYPE_CHECKING:
    from matplotlib.figure import Figure

REPORT = "report.md"
DPI = 120
PNG_COMPRESSION = 1  # zlib level: 15% quicker to write than matplotlib's 6, files about 10% larger
# What a figure costs to draw, relative to the others (5 figures of the seed sweep: 0.2-0.4 s each);
# a view's figure and the loss curves cost 3.
FIGURE_WEIGHTS = {"pareto.png": 1, "accuracy.png": 2}
NOT_MEASURED = "not measured"
OUTPACED_NOTE = ("≥: outpaced in the race: the trial stopped once it was already slower (or used more energy) "
                 "than one that reached the target, so it could not win; its time, energy and epochs are "
                 "at least these.")


@dataclass(frozen=True)
class ExperimentInfo:
    """What the analysis needs from the sweep's spec (`tune_jobs.spec.SweepSpec.report_info()`)."""

    name: str
    description: str
    stop: StopRule | None  # None: no rule found (trials without one)
    views: tuple[tuple[str, tuple[str, ...]], ...]  # (view name, swept axes) in spec order
    repeats: int
    from_spec: bool  # False: rebuilt from the trials' configs (no spec given)
    eta: float | None = None  # rank also by Zeus's cost eta * energy + (1 - eta) * max_power * time

    @property
    def fixed_epochs(self) -> bool:
        return self.stop is None or self.stop.fixed_epochs

    @property
    def threshold(self) -> float | None:
        return None if self.stop is None else self.stop.threshold

    @property
    def patience(self) -> int | None:
        return None if self.stop is None else self.stop.patience

    @property
    def max_epochs(self) -> int | None:
        return None if self.stop is None else self.stop.max_epochs

    @property
    def target(self) -> str:
        return "unknown (no stop rule recorded)" if self.stop is None else self.stop.describe()


# -- entry point ----------------------------------------------------------------------------


def write_report(experiment: str, out: str | None = None, info: ExperimentInfo | None = None,
                 eta: float | None = None, figure_processes: int = 1) -> str:
    """Write tables, figures and report.md for `experiment`; return report.md's path.

    `out` defaults to `<experiment>/analysis/` for a local experiment and to
    `./analysis-<name>` for a cloud URI (s3://, gs://). `info` (views, stop rule)
    comes from the sweep's spec; without it, it is rebuilt from the trials' configs.
    `eta` (where given) replaces the spec's energy.eta for the cost ranking.
    `figure_processes`: how many processes draw the figures (see figures_drawn).
    """
    check_experiment(experiment)
    trials, epochs = load_trials(experiment), load_epochs(experiment)
    if trials.empty:
        raise InputError("PATH", f"{experiment} has no trial results yet; analyze it once a trial has reported")
    info = info or experiment_info(experiment, trials, epochs)
    if eta is not None:
        info = replace(info, eta=eta)
    folder = output_dir(experiment, out)
    with figures_drawn(trials, epochs, info, folder, figure_processes) as figures:
        write_tables(trials, epochs, info, folder)
        text = render_report(trials, info, figures, experiment)
    path = folder / REPORT
    path.write_text(text)
    return str(path)


def experiment_figures(experiment: str, info: ExperimentInfo | None = None) -> dict[str, Figure]:
    """The report's figures of `experiment`, by file name, without writing anything."""
    check_experiment(experiment)
    trials, epochs = load_trials(experiment), load_epochs(experiment)
    info = info or experiment_info(experiment, trials, epochs)
    return {file: figure for file, (figure, _) in make_figures(trials, epochs, info).items()}


def check_experiment(experiment: str) -> None:
    """Raise InputError("PATH", ...) unless `experiment` holds a sweep.yaml or trial directories."""
    if not storage.is_uri(experiment):
        path = Path(experiment)
        if not path.exists():
            raise InputError("PATH", f"{experiment} does not exist")
        if not path.is_dir():
            raise InputError("PATH", f"{experiment} is a file; give an experiment directory (it holds {SPEC_FILE})")
    elif not storage.exists(experiment):
        raise InputError("PATH", f"{experiment} does not exist")
    if storage.exists(storage.join(experiment, SPEC_FILE)) or trial_paths(experiment):
        return
    hint = ""
    if not storage.is_uri(experiment):
        inside = sorted(p.parent.name for p in Path(experiment).glob(f"*/{SPEC_FILE}"))
        if inside:
            hint = f"; experiments under it: {', '.join(inside[:8])}{' ...' if len(inside) > 8 else ''}"
    raise InputError("PATH", f"{experiment} is not an instrument-sweep experiment "
                             f"(no {SPEC_FILE} and no trial directories){hint}")


def output_dir(experiment: str, out: str | None) -> Path:
    """The local folder to write into (created); InputError("--out", ...) where it cannot be."""
    if out is not None and storage.is_uri(out):
        raise InputError("--out", f"must be a local directory, got {out}; copy the folder to the cloud afterwards")
    if out is None:
        uri = storage.is_uri(experiment)
        folder = Path(f"analysis-{storage.basename(experiment)}") if uri else Path(experiment, "analysis")
    else:
        folder = Path(out).expanduser()
    if folder.exists() and not folder.is_dir():
        raise InputError("--out", f"{folder} is a file; give a directory")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError("--out", f"cannot create {folder}: {exc.strerror}") from None
    return folder.absolute()


# -- the spec -------------------------------------------------------------------------------


def experiment_info(experiment: str, trials: pd.DataFrame, epochs: pd.DataFrame) -> ExperimentInfo:
    """Views, axes and stop rule rebuilt from the trials' configs (where no spec is given)."""
    stop = _stop_from_trials(epochs)
    views = tuple((v, summary.swept_axes(summary.in_view(trials, v))) for v in summary.views_of(trials))
    repeats = int(trials.groupby(list(summary.POINT)).size().max()) if len(trials) else 1
    try:
        rule = StopRule(**stop) if stop else None
    except (InputError, TypeError):
        rule = None
    return ExperimentInfo(storage.basename(experiment), "", rule, views, repeats, False)


def _stop_from_trials(epochs: pd.DataFrame) -> dict:
    """The stop rule each trial carries in its config (`load_epochs` puts it on every row)."""
    for config in epochs.get("config", pd.Series(dtype=object)).dropna():
        if isinstance(config, dict) and isinstance(config.get("trial", {}).get("stop"), dict):
            return config["trial"]["stop"]
    return {}


def views_with_trials(trials: pd.DataFrame, info: ExperimentInfo) -> list[tuple[str, tuple[str, ...]]]:
    """The spec's views that have trials, then any view only the trials name; "all" for trials
    in no view."""
    named = [(name, axes) for name, axes in info.views if len(summary.in_view(trials, name))]
    known = {name for name, _ in info.views}
    for name in summary.views_of(trials):
        if name not in known:
            named.append((name, summary.swept_axes(summary.in_view(trials, name))))
    if len(trials) and (trials["sweep"].fillna("") == "").any():
        named.append(("all", summary.swept_axes(trials)))
    return named


# -- files ----------------------------------------------------------------------------------


def write_tables(trials: pd.DataFrame, epochs: pd.DataFrame, info: ExperimentInfo, folder: Path) -> None:
    """trials.csv, trials.parquet, epochs.parquet and summary.csv (one row per view and configuration)."""
    trials.to_csv(folder / "trials.csv", index=False)
    trials.to_parquet(folder / "trials.parquet", index=False)
    parquet_ready(epochs).to_parquet(folder / "epochs.parquet", index=False)
    views_summary(trials, info).to_csv(folder / "summary.csv", index=False)


def parquet_ready(frame: pd.DataFrame) -> pd.DataFrame:
    """Nested values (Tune's `config` dict) as JSON text, so every column has one parquet type."""
    frame = frame.copy()
    for column in frame.columns:
        if frame[column].dtype == object and frame[column].map(lambda v: isinstance(v, (dict, list))).any():
            frame[column] = frame[column].map(
                lambda v: json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v)
    return frame


def views_summary(trials: pd.DataFrame, info: ExperimentInfo) -> pd.DataFrame:
    """Every view's table (summary.view_table) stacked, with the view's name first."""
    tables = [summary.view_table(trials, name, axes).assign(view=name)
              for name, axes in views_with_trials(trials, info)]
    if not tables:
        return summary.aggregate(trials.iloc[:0]).assign(view=pd.Series(dtype=str))
    stacked = pd.concat(tables, ignore_index=True)
    return stacked[["view", *[c for c in stacked.columns if c != "view"]]]


def make_figures(trials: pd.DataFrame, epochs: pd.DataFrame, info: ExperimentInfo) -> dict[str, tuple[Figure, str]]:
    """{file name: (figure, caption)} in report order: per view the seed's 4 panels, the Pareto
    front (where there is a target), then the loss and accuracy curves."""
    return {file: (draw(), caption) for file, (draw, caption) in _figure_plan(trials, epochs, info).items()}


def _figure_plan(trials: pd.DataFrame, epochs: pd.DataFrame,
                 info: ExperimentInfo) -> dict[str, tuple[Callable[[], Figure], str]]:
    """make_figures, each figure not yet drawn: {file name: (draw, caption)}."""
    plan: dict[str, tuple[Callable[[], Figure], str]] = {}
    if trials.empty or epochs.empty:
        return plan
    views = views_with_trials(trials, info)
    if not info.fixed_epochs:
        for name, axes in views:
            plan[f"view-{_safe(name)}.png"] = (_plot("plot_view", trials, name, axes, info.target),
                                               f"view {name}: time, energy, test accuracy and epochs to the target")
        plan["pareto.png"] = (_plot("plot_pareto", trials),
                              "time vs energy to accuracy with the Pareto front" if summary.energy_measured(trials)
                              else "time to accuracy per configuration (energy not measured)")
    plan["loss.png"] = (_plot("plot_loss_curves", epochs, views),
                        "training" + (" and test" if info.fixed_epochs else "") + " loss per epoch (log scale)")
    plan["accuracy.png"] = (
        _plot("plot_accuracy_curves", epochs, views, info.threshold, info.patience if not info.fixed_epochs else None),
        "validation accuracy per epoch" + ("" if info.fixed_epochs else " with the target line"))
    return plan


def _plot(function: str, *args) -> Callable[[], Figure]:
    """`analysis.plots.<function>(*args)`, to call later: matplotlib loads only where figures are drawn."""
    def draw() -> Figure:
        from analysis import plots

        return getattr(plots, function)(*args)
    return draw


@contextlib.contextmanager
def figures_drawn(trials: pd.DataFrame, epochs: pd.DataFrame, info: ExperimentInfo, folder: Path,
                  processes: int = 1) -> Iterator[dict[str, str]]:
    """Yields the figures' {file name: caption} in report order; they are saved by the time the
    block ends. With `processes` > 1 they are drawn in that many processes at once, while the
    block runs (forked from analysis.figure_server's process, started here if need be); where
    one fails to draw, RuntimeError once the others are saved."""
    plan = _figure_plan(trials, epochs, info)
    groups = _balanced(list(plan), processes)
    captions = {file: caption for file, (_, caption) in plan.items()}
    if len(groups) == 1:
        yield captions
        _draw_and_save(trials, epochs, info, folder, groups[0], plan)
        return
    workers = [figure_server.context().Process(target=_draw_and_save, name=", ".join(group),
                                               args=(trials, epochs, info, folder, group)) for group in groups]
    for worker in workers:
        worker.start()
    try:
        yield captions
    finally:
        for worker in workers:
            worker.join()
    if failed := [worker.name for worker in workers if worker.exitcode != 0]:
        raise RuntimeError(f"drawing {'; '.join(failed)} failed (its traceback is above)")


def _balanced(files: Sequence[str], processes: int) -> list[list[str]]:
    """`files` in at most `processes` groups of about equal drawing time, each in report order."""
    groups: list[list[str]] = [[] for _ in range(max(1, min(processes, len(files))))]
    load = [0] * len(groups)
    weight = lambda file: FIGURE_WEIGHTS.get(file, 3)  # noqa: E731
    for file in sorted(files, key=weight, reverse=True):  # heaviest first, each to the lightest group
        lightest = load.index(min(load))
        groups[lightest].append(file)
        load[lightest] += weight(file)
    return [sorted(group, key=list(files).index) for group in groups]


def _draw_and_save(trials: pd.DataFrame, epochs: pd.DataFrame, info: ExperimentInfo, folder: Path,
                   files: Sequence[str], plan: dict | None = None) -> None:
    plan = plan or _figure_plan(trials, epochs, info)
    for file in files:
        _save(plan[file][0](), folder / file)


def _save(figure: Figure, path: Path) -> None:
    figure.savefig(path, dpi=DPI, pil_kwargs={"compress_level": PNG_COMPRESSION})


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "view"


# -- report.md ------------------------------------------------------------------------------


def render_report(trials: pd.DataFrame, info: ExperimentInfo, figures: dict[str, str], experiment: str) -> str:
    """report.md's text: overview, recommendation, per-view tables and figures, all trials."""
    lines = [f"# Sweep report: {info.name}", ""]
    if info.description:
        lines += [info.description, ""]
    lines += _overview(trials, info, experiment)
    if trials.empty:
        return "\n".join([*lines, "No trial has started yet: nothing to analyze.", ""])
    dynamic = idle_floor_share(trials) > IDLE_FLOOR_SHARE  # the idle floor is most of the energy: show the rest
    lines += ["## Recommendation", "", *recommendation_text(trials, info), ""]
    if "pareto.png" in figures:
        lines += ["## Time vs energy", "", f"![{figures['pareto.png']}](pareto.png)", ""]
        lines += _front_table(trials)
    for name, axes in views_with_trials(trials, info):
        x = summary.axes_title(axes) if axes else "one configuration"
        table = summary.view_table(trials, name, axes)
        lines += [f"## View `{name}` (x: {x})", "", *_view_table(table, info, dynamic), ""]
        file = f"view-{_safe(name)}.png"
        if file in figures:
            lines += [f"![{figures[file]}]({file})", ""]
    lines += ["## Per-epoch curves", ""]
    lines += [f"![{caption}]({file})\n" for file, caption in figures.items() if file in ("loss.png", "accuracy.png")]
    lines += ["## All trials", "", *_trials_table(trials, dynamic), ""]
    errors = trials[trials["status"] == Status.ERROR.value]
    if len(errors):
        lines += ["## Errors", ""] + [f"- trial {_num(r.trial_number)} (`{r.trial_id}`): {r.error or 'see error.txt'}"
                                       for r in errors.itertuples()] + [""]
    lines += ["## Files", "", "- `trials.csv`, `trials.parquet`: one row per trial",
              "- `epochs.parquet`: one row per trial and epoch, every reported metric",
              "- `summary.csv`: one row per view and configuration: mean, std and 95% CI per metric", ""]
    return "\n".join(lines)


def _overview(trials: pd.DataFrame, info: ExperimentInfo, experiment: str) -> list[str]:
    counts = trials["status"].value_counts()
    statuses = ", ".join(f"{s} {n}" for s, n in counts.items())
    lines = [f"- experiment: `{experiment}`", f"- stop rule: {info.target}",
             f"- trials: {len(trials)}" + (f" ({statuses})" if statuses else "")
             + (f"; {info.repeats} seeds per configuration" if info.repeats > 1 else ""),
             f"- devices: {_devices(trials)}", f"- energy: {_energy_line(trials) if len(trials) else 'none yet'}",
             f"- written: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}"]
    if not info.from_spec:
        lines.append("- note: no readable sweep.yaml; views and stop rule were rebuilt from the trials' configs")
    running = int(counts.get(Status.RUNNING.value, 0))
    if running:
        lines += ["", f"**Partial results:** {running} trial(s) still running (or interrupted; "
                      "`instrument-sweep resume` continues them). Run `analyze` again when they finish."]
    return [*lines, ""]


def _devices(trials: pd.DataFrame) -> str:
    if trials.empty:
        return "none yet"
    reported = trials[trials["device"].fillna("") != ""]
    groups = reported.groupby("device")["node"]
    line = "; ".join(f"{device} ({n} trial(s) on {groups.get_group(device).nunique()} node(s))"
                     for device, n in groups.size().items())
    silent = len(trials) - len(reported)
    return line + (f"{'; ' if line else ''}{silent} trial(s) without a report yet" if silent else "")


def _energy_line(trials: pd.DataFrame) -> str:
    if not summary.energy_measured(trials):
        return (f"{NOT_MEASURED} (energy_source none: no GPU energy counter and no readable RAPL); "
                "time is measured, energy columns are empty, not zero" + _energy_notes(trials))
    sources = ", ".join(sorted(set(trials["energy_source"].astype(str)) - {"none"}))
    line = (f"joules from Zeus ({sources}); energy to accuracy covers training and validation of every epoch "
            "plus the final test")
    replayed = int((trials["energy_method"] == "replay").sum())
    if replayed:
        line += (f". {replayed} trial(s) were too short for the GPU's energy counter and were replayed back to back "
                 "in one window on the counter's updates: their time and energy are per-run means of the replays")
    line += _idle_line(trials)
    low = int(trials["energy_uncertain"].sum())
    if low:
        line += (f". {low} trial(s) are flagged (energy_uncertain: an energy error above 5%, or joules below the "
                 "GPU's idle power beyond the error bars; their notes say which): their joules are shown hatched "
                 "and marked †")
    shared = int(trials["cpu_energy_shared"].sum())
    if shared:
        line += (f". {shared} trial(s) without a GPU shared their node's CPU energy with other trials running "
                 "at the same time: it is kept as first_run_cpu_energy_j but ranks nothing (resources.exclusive_node: true "
                 "runs one trial per node)")
    missing = int((trials["energy_source"] == "none").sum()) - shared
    if missing > 0:
        line += f". {missing} trial(s) have no energy counter that measured them: {NOT_MEASURED}"
    return line + _energy_notes(trials)


IDLE_FLOOR_SHARE = 0.5  # above this share of the GPU joules, the report says energy ranks as time does


def idle_floor_share(trials: pd.DataFrame) -> float:
    """The share of the trials' GPU joules that is the GPU's idle floor (gpu_idle_w x time_s); NaN where
    not measured."""
    gpu = trials[(trials["energy_source"].astype(str) == "gpu") & trials["energy_j"].notna()]
    if "gpu_idle_w" not in gpu or gpu.empty:
        return float("nan")
    floor_j = (gpu["gpu_idle_w"] * gpu["time_s"]).sum(min_count=1)
    return float(floor_j / gpu["energy_j"].sum()) if gpu["energy_j"].sum() > 0 else float("nan")


def _idle_line(trials: pd.DataFrame) -> str:
    """Which idle power is subtracted (and the others probed); where the idle floor is most of the
    energy, one sentence saying so."""
    measured = trials[trials["gpu_idle_w"].notna()] if "gpu_idle_w" in trials else trials.iloc[:0]
    if measured.empty:
        return ""
    watts = lambda column: f"{measured[column].median():.0f} W" if column in measured and \
        measured[column].notna().any() else ""  # noqa: E731
    line = (f". Idle floor subtracted (dynamic_energy_j = energy_j - gpu_idle_w x time_s): {watts('gpu_idle_w')}, "
            "the GPU's draw with the trial's CUDA context open, probed in its process before its first trial")
    if watts("gpu_idle_no_context_w"):
        line += f"; without a context it drew {watts('gpu_idle_no_context_w')}"
    after = measured.dropna(subset=["gpu_idle_after_w"]) if "gpu_idle_after_w" in measured else measured.iloc[:0]
    if len(after):
        last = after.loc[after["ended_at_s"].idxmax()] if after["ended_at_s"].notna().any() else after.iloc[-1]
        line += (f"; after the last trial {last['gpu_idle_after_w']:.0f} W (drift "
                 f"{last['gpu_idle_after_w'] - last['gpu_idle_w']:+.1f} W, counted in the error bars)")
    share = idle_floor_share(trials)
    if share > IDLE_FLOOR_SHARE:
        line += (f". {share:.0%} of the GPU joules are that idle floor, so energy ranks the configurations as "
                 "time does: the tables show the dynamic energy beside it")
    return line


def _energy_notes(trials: pd.DataFrame) -> str:
    """The trials' energy notes (why their GPU energy is not measured, or a caveat), each once,
    with the trials it concerns."""
    notes = trials["energy_note"].fillna("").astype(str) if "energy_note" in trials else pd.Series(dtype=str)
    said = [f"trial(s) {', '.join(_num(n) for n in trials.loc[notes == note, 'trial_number'])}: {note}"
            for note in dict.fromkeys(notes) if note]
    return f". Energy notes: {'; '.join(said)}" if said else ""


def recommendation_text(trials: pd.DataFrame, info: ExperimentInfo) -> list[str]:
    """Markdown bullets: the fastest and the least-energy configuration that reached the target."""
    if info.fixed_epochs:
        final = summary.aggregate(trials)
        final = final[final["test_acc_mean"].notna()]
        if final.empty:
            return ["Fixed-epochs sweep (no target): no trial has finished yet."]
        best = final.loc[final["test_acc_mean"].idxmax()]
        return [f"Fixed-epochs sweep ({info.max_epochs} epochs, no target): no time or energy to accuracy. "
                f"Highest final test accuracy: {_config(best)}: {best['test_acc_mean']:.4f}"
                f"{_runs(best)}, {best['time_s_mean']:.3g} s for {best['epochs_mean']:.3g} epochs, "
                f"energy {_joules(best['energy_j_mean'], best['energy_uncertain'])}."]
    picks = summary.recommend(trials, info.eta)
    repeats = int(summary.aggregate(trials)["runs"].max()) if len(trials) else 1
    scope = ("Among configurations whose every run reached the target"
             + (f"; figures are means over up to {repeats} seeds" if repeats > 1 else "") + ":")
    if "fastest" not in picks.index:
        return ["No configuration reached the target "
                + ("in all of its runs " if repeats > 1 else "") + f"({info.target}); see the tables below."]
    fastest = picks.loc["fastest"]
    dynamic = idle_floor_share(trials) > IDLE_FLOOR_SHARE
    _pick = functools.partial(_picked, dynamic=dynamic)
    lines = [scope, "", f"- **Fastest to the target:** {_pick(fastest)}"]
    if "least_energy" in picks.index:
        least = picks.loc["least_energy"]
        same = (least["lr"], least["batch_size"]) == (fastest["lr"], fastest["batch_size"])
        lines.append(f"- **Least energy to the target:** {_pick(least)}"
                     + (" (the same configuration)" if same else ""))
        if least["ties"]:
            lines.append(f"  - not distinguishable by energy, within the counter's error bars, from: {least['ties']}")
        if bool(least["energy_uncertain"]):
            lines.append("  - † its energy is flagged (an error above 5%, or joules below the GPU's idle power: "
                         "see its note): treat the joules as indicative only; longer epochs, more data or a larger "
                         "replay budget give reliable figures.")
    else:
        lines.append(f"- **Least energy to the target:** {NOT_MEASURED} on this run (no GPU energy counter or "
                     "readable RAPL), so no least-energy pick; run on NVIDIA GPUs to measure it.")
    if info.eta is not None:
        if "eta_cost" in picks.index:
            best = picks.loc["eta_cost"]
            lines.append(f"- **Lowest cost at eta {info.eta:g}** (eta x energy + (1 - eta) x max power x time): "
                         f"{_pick(best)}, cost {best['cost_j']:.4g} J")
        else:
            lines.append(f"- **Cost at eta {info.eta:g}:** the ranking needs GPU energy and the GPU's maximum "
                         "power limit, which this run did not measure.")
    return lines


def _picked(row: pd.Series, dynamic: bool = False) -> str:
    """A recommended configuration's figures; with `dynamic`, its dynamic energy beside its energy."""
    beside = (f" (dynamic {row['dynamic_energy_j']:.3g} J)"
              if dynamic and pd.notna(row.get("dynamic_energy_j", float("nan"))) else "")
    return (f"{_config(row)}: {row['time_s']:.3g} s{_spread(row, 'time_s_std', 's')}, "
            f"{_joules(row['energy_j'], row['energy_uncertain'])}"
            f"{_error_bar(row)}{_spread(row, 'energy_j_std', 'J') if pd.notna(row['energy_j']) else ''}{beside}, "
            f"{row['epochs']:.3g} epochs, test accuracy {row['test_acc']:.4f}" + _runs(row))


def _error_bar(row: pd.Series) -> str:
    err = row.get("energy_err_j", float("nan"))
    return f" ± {err:.2g} J (counter)" if pd.notna(row["energy_j"]) and pd.notna(err) else ""


def _config(row: pd.Series) -> str:
    return f"lr {row['lr']:g}, batch size {int(row['batch_size'])}"


def _spread(row: pd.Series, column: str, unit: str) -> str:
    return f" (± {row[column]:.2g} {unit} std)" if int(row["runs"]) > 1 and pd.notna(row[column]) else ""


def _runs(row: pd.Series) -> str:
    return f" (mean of {int(row['runs'])} seeds)" if int(row["runs"]) > 1 else ""


def _joules(value: float, below_resolution: bool) -> str:
    if pd.isna(value):
        return f"energy {NOT_MEASURED}"
    return f"{value:.4g} J" + (" †" if below_resolution else "")


# -- markdown tables ------------------------------------------------------------------------


def md_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    """A GitHub-flavoured markdown table (no dependency on tabulate)."""
    clean = lambda cell: str(cell).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    return ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|",
            *("| " + " | ".join(clean(c) for c in row) + " |" for row in rows)]


def _stat(row: pd.Series, metric: str, digits: str = ".3g") -> str:
    """"0.316" for one run; "0.316 ± 0.018 [0.157, 0.474]" (mean ± std [95% CI]) for several."""
    mean = row[f"{metric}_mean"]
    if pd.isna(mean):
        return NOT_MEASURED if metric == "energy_j" else "–"
    text = format(mean, digits)
    if metric in summary.LOWER_BOUND_METRICS and Status.OUTPACED.value in row["statuses"]:
        text = summary.AT_LEAST + text
    if row[f"{metric}_n"] > 1:
        text += (f" ± {format(row[f'{metric}_std'], '.2g')} "
                 f"[{format(row[f'{metric}_ci95_lo'], digits)}, {format(row[f'{metric}_ci95_hi'], digits)}]")
    if metric == "energy_j" and row["energy_uncertain"]:
        text += " †"
    return text


def _view_table(table: pd.DataFrame, info: ExperimentInfo, dynamic: bool = False) -> list[str]:
    """A view's configurations; with `dynamic`, their dynamic energy beside their energy."""
    fixed = info.fixed_epochs
    headers = ["lr", "batch size", "runs", "status", "epochs",
               "time (s)" if fixed else "time to accuracy (s)",
               "energy (J)" if fixed else "energy to accuracy (J)", *(["dynamic energy (J)"] if dynamic else []),
               "test accuracy"]
    rows = [[f"{r['lr']:g}", str(int(r["batch_size"])), str(int(r["runs"])), r["statuses"],
             _stat(r, "epochs"), _stat(r, "time_s"), _stat(r, "energy_j"),
             *([_stat(r, "dynamic_energy_j")] if dynamic else []), _stat(r, "test_acc", ".4f")]
            for _, r in table.iterrows()]
    note = []
    if len(table) and int(table["runs"].max()) > 1:
        note = ["", "With several seeds: mean ± std [95% confidence interval of the mean, Student t]."]
        if int(table["runs"].max()) < 3:
            note[-1] += (" With 2 seeds the interval is wide (t = 12.7) and may cross physical bounds; "
                         "`repeats: 3` or more gives usable intervals.")
    if not fixed and len(table) and not table["all_reached"].all():
        note += ["", "Configurations that did not reach the target in every run show the time and energy "
                     "until they stopped, not to accuracy."]
    if len(table) and table["statuses"].str.contains(Status.OUTPACED.value).any():
        note += ["", OUTPACED_NOTE]
    return [*md_table(headers, rows), *note]


def _front_table(trials: pd.DataFrame) -> list[str]:
    if not summary.energy_measured(trials):
        return ["Energy was not measured, so there is no time-energy trade-off to show; "
                "the figure ranks configurations by time to accuracy.", ""]
    table = summary.aggregate(trials)
    reached = table[table["all_reached"]]
    front = reached[summary.pareto_front(reached)].sort_values("time_s_mean")
    if front.empty:
        return ["No configuration that reached the target has measured energy: no Pareto front.", ""]
    rows = [[f"{r['lr']:g}", str(int(r["batch_size"])), _stat(r, "time_s"), _stat(r, "energy_j"),
             _stat(r, "test_acc", ".4f")] for _, r in front.iterrows()]
    return ["Pareto front (no other configuration that reached the target is both faster and uses less energy):",
            "", *md_table(["lr", "batch size", "time to accuracy (s)", "energy to accuracy (J)", "test accuracy"],
                          rows), ""]


def _trials_table(trials: pd.DataFrame, dynamic: bool = False) -> list[str]:
    """Every trial; with `dynamic`, its dynamic energy beside its energy."""
    headers = ["#", "lr", "batch size", "seed", "views", "status", "epochs", "time (s)", "energy (J)",
               *(["dynamic (J)"] if dynamic else []), "test accuracy", "device", "node"]
    at_least = lambda r, text: (summary.AT_LEAST + text  # noqa: E731
                                if r.status == Status.OUTPACED.value and text[:1].isdigit() else text)
    rows = [[_num(r.trial_number), f"{r.lr:g}", _num(r.batch_size), _num(r.seed), r.sweep, r.status,
             at_least(r, str(r.epochs)),
             "–" if pd.isna(r.time_s) else at_least(r, f"{r.time_s:.3g}"),
             "–" if not r.epochs else at_least(r, _joules(r.energy_j, r.energy_uncertain).replace(" J", "")
                                                 .replace("energy ", "")),
             *([f"{r.dynamic_energy_j:.3g}" if pd.notna(r.dynamic_energy_j) else "–"] if dynamic else []),
             "–" if pd.isna(r.test_acc) else f"{r.test_acc:.4f}", r.device or "–", r.node or "–"]
            for r in trials.itertuples()]
    outpaced = (trials["status"] == Status.OUTPACED.value).any()
    return [*md_table(headers, rows), *(["", OUTPACED_NOTE] if outpaced else [])]


def _num(value) -> str:
    return "–" if value is None or pd.isna(value) else str(int(value))
