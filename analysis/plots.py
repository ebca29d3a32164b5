"""Trial and epoch frames -> matplotlib Figures (headless: no pyplot, never shown).

    from analysis import load_epochs, load_trials
    from analysis import plots
    trials, epochs = load_trials(path), load_epochs(path)
    plots.plot_view(trials, "lr", ("lr",), "val_acc >= 0.98 for 3 epochs").savefig("view-lr.png")
    plots.plot_loss_curves(epochs, [("lr", ("lr",))]).savefig("loss.png")
    plots.plot_accuracy_curves(epochs, [("lr", ("lr",))], threshold=0.98).savefig("accuracy.png")
    plots.plot_pareto(trials).savefig("pareto.png")

Figures are built with `matplotlib.figure.Figure` directly (Agg canvas on save), so
nothing registers in pyplot's global state and nothing needs closing. Markings:
bars of configurations that missed the target are grey with a red "xx" hatch;
energy whose counter error exceeds 5% is hatched "//", and measured energy carries
the counter's error bars (red); where energy was not
measured the panel says "energy not measured" instead of drawing zeros.
Trials outpaced in a race stopped early: their time, energy and epochs are labelled
"≥" (at least).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from analysis import summary
from trainables.training.stop import Status

REACHED_COLOR = "tab:blue"
MISSED_FACE, MISSED_EDGE, MISSED_HATCH = "0.85", "tab:red", "xx"
LOW_RES_HATCH = "//"
FRONT_COLOR = "tab:red"
NOT_MEASURED = "energy not measured"
NOT_MEASURED_WHY = "no GPU energy counter and no readable RAPL\non the nodes (energy_source: none)"
MISSED_LABEL = "missed the target (max_epochs, diverged, outpaced, error or still running)"
AT_LEAST_LABEL = "≥: outpaced in the race (stopped once it could not win): at least this much"
LOW_RES_LABEL = "energy error above 5% (the GPU counter's ~100 ms steps): indicative only"
COUNTER_ERR_COLOR = "tab:red"  # error bars of the energy counter (energy_err_j)
BAR_PANELS = (  # (metric, y-axis label, value format)
    ("time_s", "time to accuracy (s)", "{:.3g}"),
    ("energy_j", "energy to accuracy (J)", "{:.3g}"),
    ("test_acc", "test accuracy (fraction correct)", "{:.3f}"),
    ("epochs", "epochs", "{:.3g}"),
)

View = tuple[str, tuple[str, ...]]  # (view name, swept axes)


# -- the seed's four-panel bar figure ------------------------------------------------------


def plot_view(trials: pd.DataFrame, view: str, axes: Sequence[str] | None = None, target: str = "") -> Figure:
    """The seed's figure for one view: time, energy, test accuracy and epochs against the
    swept value, one bar per configuration (mean over seeds, ±1 std and dots with repeats)."""
    members = summary.in_view(trials, view)
    axes = tuple(axes) if axes is not None else summary.swept_axes(members)
    table = summary.view_table(trials, view, axes)
    labels = [summary.point_label(r.lr, r.batch_size, axes) for r in table.itertuples()]
    repeats = bool(len(table)) and int(table["runs"].max()) > 1
    fig = Figure(figsize=(max(11.0, 3.0 + 0.55 * len(table)), 7.5), layout="constrained")
    grid = fig.subplots(2, 2)
    for ax, (metric, ylabel, fmt) in zip(grid.flat, BAR_PANELS):
        ax.set_ylabel(ylabel)
        ax.set_xlabel(summary.axes_title(axes) if axes else "configuration (lr, batch size)")
        _ticks(ax, labels)
        if metric == "energy_j" and not summary.energy_measured(members):
            _say(ax, f"{NOT_MEASURED}\n({NOT_MEASURED_WHY})")
            continue
        _bars(ax, table, members, metric, fmt, repeats)
    fig.suptitle(f"view '{view}': {target}" if target else f"view '{view}'")
    handles = [Patch(facecolor=REACHED_COLOR, label="reached the target")]
    if len(table) and not table["all_reached"].all():
        handles.append(Patch(facecolor=MISSED_FACE, edgecolor=MISSED_EDGE, hatch=MISSED_HATCH, label=MISSED_LABEL))
    if len(table) and (table["energy_uncertain"] & table["energy_j_mean"].notna()).any():
        handles.append(Patch(facecolor=REACHED_COLOR, edgecolor="black", hatch=LOW_RES_HATCH, label=LOW_RES_LABEL))
    if len(table) and table["statuses"].str.contains(Status.OUTPACED.value).any():
        handles.append(Line2D([], [], linestyle="none", label=AT_LEAST_LABEL))
    if repeats:
        handles.append(Line2D([], [], color="black", marker="|", linestyle="none", markersize=10,
                              label=f"mean ± 1 std over seeds (up to {int(table['runs'].max())})"))
        handles.append(Line2D([], [], color="black", marker=".", linestyle="none", label="single runs"))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 3), fontsize="small")
    return fig


def _bars(ax, table: pd.DataFrame, members: pd.DataFrame, metric: str, fmt: str, repeats: bool) -> None:
    x = np.arange(len(table))
    heights = table[f"{metric}_mean"].to_numpy(dtype=float)
    missed = ~table["all_reached"].to_numpy(dtype=bool)
    low_res = table["energy_uncertain"].to_numpy(dtype=bool) & (metric == "energy_j")
    bars = ax.bar(x, np.nan_to_num(heights), color=REACHED_COLOR, edgecolor="black", linewidth=0.6)
    for bar, is_missed, is_low in zip(bars, missed, low_res):
        if is_missed:
            bar.set_facecolor(MISSED_FACE)
            bar.set_edgecolor(MISSED_EDGE)
        hatch = (MISSED_HATCH if is_missed else "") + (LOW_RES_HATCH if is_low else "")
        bar.set_hatch(hatch or None)
    if metric == "energy_j":  # the counter's error bars, in red, beside the seeds' spread
        counter = table["energy_err_j"].to_numpy(dtype=float)
        shown = np.isfinite(counter) & np.isfinite(heights)
        if shown.any():
            ax.errorbar(x[shown] + 0.15, heights[shown], yerr=counter[shown], fmt="none", ecolor=COUNTER_ERR_COLOR,
                        capsize=2, linewidth=1)
    if repeats:
        std = np.nan_to_num(table[f"{metric}_std"].to_numpy(dtype=float))
        ax.errorbar(x, np.nan_to_num(heights), yerr=std, fmt="none", ecolor="black", capsize=3, linewidth=1)
        for i, row in enumerate(table.itertuples()):
            runs = members[(members.lr == row.lr) & (members.batch_size == row.batch_size)][metric]
            ax.plot(np.full(len(runs), i), runs.to_numpy(dtype=float), ".", color="black", markersize=4)
    spread = np.nan_to_num(table[f"{metric}_std"].to_numpy(dtype=float)) if repeats else np.zeros(len(table))
    tops = np.nan_to_num(heights) + spread
    top = float(np.max(tops, initial=0.0))
    crowded = len(table) > 8  # values only, turned upright; the hatch says which missed
    for i, row in enumerate(table.itertuples()):
        value = heights[i]
        if math.isnan(value):
            text = "not measured" if metric == "energy_j" else _status_word(row.statuses)
        else:
            text = fmt.format(value)
            if metric in summary.LOWER_BOUND_METRICS and Status.OUTPACED.value in row.statuses:
                text = summary.AT_LEAST + text
            if row.reached < row.runs and not crowded:
                text += (f"\n{row.reached}/{row.runs} reached" if row.runs > 1 else f"\n{_status_word(row.statuses)}")
        ax.annotate(text, (i, tops[i]), xytext=(0, 2), textcoords="offset points",
                    ha="center", va="bottom", fontsize="x-small", rotation=90 if crowded else 0)
    ax.set_ylim(0, top * (1.3 if crowded else 1.25) if top > 0 else 1)
    if metric == "test_acc":
        ax.set_ylim(0, 1.22 if crowded else 1.12)
    if metric == "epochs":
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))


def _status_word(statuses: str) -> str:
    """ "max_epochs x2, diverged" -> "max epochs" (the first status, readable)."""
    return statuses.split(",")[0].split(" x")[0].replace("_", " ")


def _ticks(ax, labels: list[str]) -> None:
    ax.set_xticks(range(len(labels)), labels, rotation=45 if len(labels) > 6 else 0,
                  ha="right" if len(labels) > 6 else "center")
    ax.set_xlim(-0.6, max(len(labels), 1) - 0.4)


def _say(ax, text: str) -> None:
    """A panel that states something instead of drawing numbers."""
    ax.set_yticks([])
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", wrap=True,
            fontsize="medium", color="0.3", bbox={"boxstyle": "round", "facecolor": "0.95", "edgecolor": "0.7"})


# -- per-epoch curves -----------------------------------------------------------------------


def plot_loss_curves(epochs: pd.DataFrame, views: Sequence[View], with_test: bool | None = None) -> Figure:
    """Training loss per epoch per trial, log y (the seed's semilogy), one panel per view;
    with test loss every epoch (fixed-epochs sweeps) test loss is drawn dashed on the same axes."""
    with_test = _every_epoch_tested(epochs) if with_test is None else with_test
    title = "training and test loss per epoch" if with_test else "training loss per epoch"
    series = [("train_loss", "-", "training loss"), *([("test_loss", "--", "test loss")] if with_test else [])]
    return _curves(epochs, views, series, "mean cross-entropy loss (nats, log scale)", title, log=True)


def plot_accuracy_curves(epochs: pd.DataFrame, views: Sequence[View], threshold: float | None = None,
                         patience: int | None = None, with_test: bool | None = None) -> Figure:
    """Validation accuracy per epoch per trial with the target line; test accuracy dashed
    where it was measured every epoch (fixed-epochs sweeps)."""
    with_test = _every_epoch_tested(epochs) if with_test is None else with_test
    series = [("val_acc", "-", "validation accuracy"), *([("test_acc", "--", "test accuracy")] if with_test else [])]
    title = "validation and test accuracy per epoch" if with_test else "validation accuracy per epoch"
    fig = _curves(epochs, views, series, "accuracy (fraction correct)", title, log=False)
    for ax in fig.axes:
        if threshold is not None:
            rule = f"target {threshold:g}" + (f" ({patience} epochs in a row)" if patience else "")
            ax.axhline(threshold, color="black", linestyle=":", linewidth=1.2, label=rule)
            ax.legend(**_legend_place())
        shown = [y for line in ax.get_lines() for y in np.asarray(line.get_ydata(), dtype=float) if np.isfinite(y)]
        low = min([*shown, *([threshold] if threshold is not None else [])], default=0.0)
        ax.set_ylim(max(0.0, math.floor((low - 0.03) * 20) / 20), 1.01)
    return fig


def _every_epoch_tested(epochs: pd.DataFrame) -> bool:
    """True where trials were tested after every epoch (fixed-epochs mode), not only at the stop."""
    if "test_loss" not in epochs or epochs.empty:
        return False
    return bool(epochs.groupby("trial_id")["test_loss"].apply(lambda s: s.notna().sum() > 1).any())


def _curves(epochs: pd.DataFrame, views: Sequence[View], series: list[tuple[str, str, str]], ylabel: str,
            title: str, log: bool) -> Figure:
    views = list(views) or [("all", summary.POINT)]
    fig = Figure(figsize=(10, 0.6 + 3.4 * len(views)), layout="constrained")
    axs = np.atleast_1d(fig.subplots(len(views), 1, squeeze=False).ravel())
    for ax, (name, axes) in zip(axs, views):
        members = summary.in_view(epochs, name) if name != "all" else epochs
        configs = members[list(summary.POINT)].drop_duplicates().sort_values([*axes, *summary.POINT])
        colors = _colors(len(configs))
        for color, config in zip(colors, configs.itertuples(index=False)):
            runs = members[(members.lr == config.lr) & (members.batch_size == config.batch_size)]
            seeds = runs["seed"].nunique() if "seed" in runs else 1
            label = _curve_label(config.lr, config.batch_size, axes) + (f" ({seeds} seeds)" if seeds > 1 else "")
            for k, (_, trial) in enumerate(runs.groupby("trial_id", sort=False)):
                for s, (column, style, _) in enumerate(series):
                    values = trial[column].to_numpy(dtype=float)
                    if log:
                        values = np.where(values > 0, values, np.nan)
                    shown = ~np.isnan(values)
                    ax.plot(trial["epoch"].to_numpy()[shown], values[shown], style, color=color, linewidth=1.4,
                            marker="." if shown.sum() < 3 else None,
                            label=label if k == 0 and s == 0 else None)
        if len(series) > 1:  # which line style is which series
            for _, style, what in series:
                ax.plot([], [], style, color="0.4", label=what)
        if log:
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"view '{name}'" if name != "all" else "all trials", fontsize="medium")
        ax.grid(True, which="major", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(**_legend_place())
    fig.suptitle(title)
    return fig


def _curve_label(lr: float, batch_size: int, axes: tuple[str, ...]) -> str:
    """ "lr 0.001" in an lr view, "batch 128" in a batch-size view, else both."""
    if tuple(axes) == ("lr",):
        return f"lr {lr:g}"
    if tuple(axes) == ("batch_size",):
        return f"batch {int(batch_size)}"
    return f"lr {lr:g}, batch {int(batch_size)}"


def _legend_place() -> dict:
    return {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0), "fontsize": "small", "frameon": False}


def _colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


# -- time vs energy -------------------------------------------------------------------------


def plot_pareto(trials: pd.DataFrame) -> Figure:
    """Time vs energy to accuracy per configuration (mean over seeds), the Pareto front of
    those that reached the target, every point labelled (lr, batch). Without energy: time only."""
    table = summary.aggregate(trials)
    if not summary.energy_measured(trials):
        return _time_only(table)
    fig = Figure(figsize=(9, 6.5), layout="constrained")
    ax = fig.subplots()
    reached = table[table["all_reached"]]
    front = reached[summary.pareto_front(reached)].sort_values("time_s_mean")
    rest = reached.drop(front.index)
    missed = table[~table["all_reached"]]
    if int(table["runs"].max()) > 1:
        ax.errorbar(table["time_s_mean"], table["energy_j_mean"], xerr=table["time_s_std"].fillna(0),
                    yerr=table["energy_j_std"].fillna(0), fmt="none", ecolor="0.6", linewidth=1,
                    label="±1 std over seeds")
    ax.scatter(rest["time_s_mean"], rest["energy_j_mean"], color=REACHED_COLOR, s=40, zorder=3,
               label="reached the target")
    ax.scatter(missed["time_s_mean"], missed["energy_j_mean"], color="0.5", marker="x", s=40, zorder=3,
               label="missed the target (not on the front)")
    ax.plot(front["time_s_mean"], front["energy_j_mean"], "-o", drawstyle="steps-post", color=FRONT_COLOR,
            markersize=7, zorder=4, label="Pareto front (reached the target)")
    low = table[table["energy_uncertain"] & table["energy_j_mean"].notna()]
    if len(low):
        ax.scatter(low["time_s_mean"], low["energy_j_mean"], facecolors="none", edgecolors="black", s=160,
                   linewidths=1.2, zorder=5, label="energy below NVML resolution (< 1 s windows): unreliable")
    unmeasured = int(table["energy_j_mean"].isna().sum())
    if unmeasured:
        ax.text(0.99, 0.01, f"{unmeasured} configuration(s) without measured energy not shown",
                transform=ax.transAxes, ha="right", va="bottom", fontsize="small", color="0.3")
    for axis, column in (("x", "time_s_mean"), ("y", "energy_j_mean")):
        values = table[column].dropna()
        if len(values) and values.min() > 0 and values.max() / values.min() > 8:
            getattr(ax, f"set_{axis}scale")("log")
            which = getattr(ax, f"{axis}axis")
            which.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            which.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            which.set_minor_formatter(NullFormatter())
    shown = table[table["energy_j_mean"].notna()]
    _label_points(ax, shown["time_s_mean"], shown["energy_j_mean"],
                  [summary.point_label(r.lr, r.batch_size) for r in shown.itertuples()])
    ax.set_xlabel("time to accuracy (s)")
    ax.set_ylabel("energy to accuracy (J)")
    ax.set_title("time vs energy to accuracy, per configuration (lr, batch)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def _label_points(ax, xs: pd.Series, ys: pd.Series, labels: list[str]) -> None:
    """Label each point "(lr, batch)", nudging a label down while it would overlap one placed."""
    ax.autoscale_view()
    anchors = ax.transData.transform(np.column_stack([xs.to_numpy(float), ys.to_numpy(float)]))
    placed: list[tuple[float, float]] = []
    for (px, py), x, y, label in sorted(zip(map(tuple, anchors), xs, ys, labels), key=lambda p: -p[0][1]):
        dy = 4.0
        while any(abs(px - qx) < 70 and abs(py + dy - qy) < 9 for qx, qy in placed):
            dy -= 9.0
        placed.append((px, py + dy))
        ax.annotate(label, (x, y), xytext=(5, dy), textcoords="offset points", fontsize="x-small")


def _time_only(table: pd.DataFrame) -> Figure:
    """Energy not measured: time to accuracy per configuration, fastest marked."""
    order = table.assign(_missed=~table["all_reached"]).sort_values(["_missed", "time_s_mean"], kind="stable")
    fig = Figure(figsize=(9, 1.6 + 0.32 * max(len(order), 3)), layout="constrained")
    ax = fig.subplots()
    y = np.arange(len(order))[::-1]
    bars = ax.barh(y, order["time_s_mean"].fillna(0), color=REACHED_COLOR, edgecolor="black", linewidth=0.6,
                   xerr=order["time_s_std"].fillna(0) if int(order["runs"].max() or 1) > 1 else None)
    reached = order["all_reached"].to_numpy(dtype=bool)
    fastest = int(np.argmax(reached)) if reached.any() else None
    for i, (bar, ok) in enumerate(zip(bars, reached)):
        if not ok:
            bar.set_facecolor(MISSED_FACE)
            bar.set_edgecolor(MISSED_EDGE)
            bar.set_hatch(MISSED_HATCH)
        elif i == fastest:
            bar.set_facecolor(FRONT_COLOR)
    ax.set_yticks(y, [summary.point_label(r.lr, r.batch_size) for r in order.itertuples()])
    ax.set_xlabel("time to accuracy (s)")
    ax.set_ylabel("configuration (lr, batch)")
    ax.set_title(f"time to accuracy per configuration: {NOT_MEASURED}, so no time-energy Pareto front")
    handles = [Patch(facecolor=FRONT_COLOR, label="fastest that reached the target"),
               Patch(facecolor=REACHED_COLOR, label="reached the target")]
    if not reached.all():
        handles.append(Patch(facecolor=MISSED_FACE, edgecolor=MISSED_EDGE, hatch=MISSED_HATCH, label=MISSED_LABEL))
    fig.legend(handles=handles, fontsize="small", loc="outside lower center", ncols=len(handles))
    ax.text(0.99, 0.99, f"{NOT_MEASURED} ({NOT_MEASURED_WHY})", transform=ax.transAxes, ha="right", va="top",
            fontsize="x-small", color="0.3")
    ax.grid(True, axis="x", alpha=0.3)
    return fig
