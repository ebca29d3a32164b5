"""Trial frame -> tables: per-view selection, repeat aggregation, Pareto front, recommendation.

    from analysis import load_trials
    from analysis.summary import aggregate, in_view, pareto_front, recommend
    trials = load_trials("sweeps/seed-20261125-2000")
    table = aggregate(in_view(trials, "lr"))           # one row per (lr, batch_size): mean/std/95% CI
    best = recommend(trials)                           # rows "fastest", "least_energy"
    front = table[pareto_front(table)]                 # non-dominated in (time_s_mean, energy_j_mean)

Pure functions of DataFrames; nothing here reads files or draws. A point is one
(lr, batch_size); with `repeats: N` it has N trials (seeds), summarised by the
mean, the sample standard deviation and a Student-t 95% confidence interval of
the mean. Missing energy (NaN) stays missing: means are over measured trials only.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

POINT = ("lr", "batch_size")  # what identifies a configuration
METRICS = ("time_s", "energy_j", "dynamic_energy_j", "epochs", "test_acc")  # summarised per configuration
AXIS_TITLES = {"lr": "learning rate", "batch_size": "batch size"}
AT_LEAST = "≥ "  # race mode: an outpaced trial stopped early, so its time, energy and epochs are lower bounds
LOWER_BOUND_METRICS = ("time_s", "energy_j", "epochs")

# Two-sided 95% Student-t critical values t(0.975, df) for df = 1..30.
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
        2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
        2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t95(df: int) -> float:
    """Two-sided 95% Student-t critical value; within about 0.1% of scipy.stats.t for df > 30."""
    if df < 1:
        return math.nan
    return _T95[df - 1] if df <= len(_T95) else 1.96 + 2.4 / df


def views_of(trials: pd.DataFrame) -> list[str]:
    """View names in order of first appearance in the `sweep` column ("lr,batch_size" -> both)."""
    names: list[str] = []
    for joined in trials["sweep"].fillna("").astype(str):
        for name in joined.split(","):
            if name and name not in names:
                names.append(name)
    return names


def in_view(trials: pd.DataFrame, view: str) -> pd.DataFrame:
    """The trials that belong to `view` (a trial may belong to several views)."""
    member = trials["sweep"].fillna("").astype(str).map(lambda joined: view in joined.split(","))
    return trials[member.astype(bool)]


def swept_axes(trials: pd.DataFrame) -> tuple[str, ...]:
    """The axes that vary across `trials`: a view's x-axis when no spec says it."""
    return tuple(axis for axis in POINT if trials[axis].nunique(dropna=True) > 1)


def point_label(lr: float, batch_size: int, axes: tuple[str, ...] = POINT) -> str:
    """A configuration's short label on the given axes: "0.001", "128", "(0.001, 128)"."""
    parts = {"lr": f"{lr:g}", "batch_size": f"{int(batch_size)}"}
    if len(axes) == 1:
        return parts[axes[0]]
    return f"({parts['lr']}, {parts['batch_size']})"


def axes_title(axes: tuple[str, ...]) -> str:
    """x-axis title for the swept axes: "learning rate", "batch size", "(lr, batch size)"."""
    if len(axes) == 1:
        return AXIS_TITLES[axes[0]]
    return "(learning rate, batch size)"


def aggregate(trials: pd.DataFrame, by: tuple[str, ...] = POINT) -> pd.DataFrame:
    """One row per configuration: runs, how many reached the target, and per metric
    `{m}_mean`, `{m}_std`, `{m}_ci95_lo`, `{m}_ci95_hi`, `{m}_n` (trials with a value).

    Also `reached` (count), `all_reached`, `statuses` (e.g. "reached_target x2"),
    `energy_source`, `energy_uncertain` (any trial), `energy_err_j` (the counter error of
    the mean energy), `gpu_max_power_w`, `seeds`. Rows sorted by `by`.
    """
    rows = []
    for key, group in trials.groupby(list(by), sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        row: dict = dict(zip(by, key))
        row["runs"] = len(group)
        row["reached"] = int(group["reached_target"].sum())
        row["all_reached"] = row["reached"] == row["runs"]
        counts = group["status"].value_counts(sort=False)
        row["statuses"] = ", ".join(f"{s} x{n}" if n > 1 else str(s) for s, n in counts.items())
        row["seeds"] = ",".join(str(s) for s in sorted(group["seed"].dropna().unique()))
        for metric in METRICS:
            row.update(describe(group[metric] if metric in group else pd.Series(math.nan, index=group.index), metric))
        row["energy_source"] = ",".join(sorted(set(group["energy_source"].astype(str))))
        row["energy_uncertain"] = bool(group["energy_uncertain"].any())
        errors = pd.to_numeric(group.get("energy_err_j", pd.Series(dtype=float)), errors="coerce").dropna()
        row["energy_err_j"] = math.sqrt(float((errors**2).sum())) / len(errors) if len(errors) else math.nan
        row["gpu_max_power_w"] = float(pd.to_numeric(group.get("gpu_max_power_w", pd.Series(dtype=float)),
                                                     errors="coerce").max())
        rows.append(row)
    columns = [*by, "runs", "reached", "all_reached", "statuses", "seeds",
               *[f"{m}_{s}" for m in METRICS for s in ("mean", "std", "ci95_lo", "ci95_hi", "n")],
               "energy_source", "energy_uncertain", "energy_err_j", "gpu_max_power_w"]
    return pd.DataFrame(rows, columns=columns)


def describe(values: pd.Series, name: str) -> dict[str, float]:
    """Mean, sample std and 95% CI of the mean over the finite values (NaN where undefined)."""
    finite = pd.to_numeric(values, errors="coerce").astype(float)
    finite = finite[np.isfinite(finite)]
    n = len(finite)
    mean = float(finite.mean()) if n else math.nan
    std = float(finite.std(ddof=1)) if n > 1 else math.nan
    half = t95(n - 1) * std / math.sqrt(n) if n > 1 else math.nan
    return {f"{name}_mean": mean, f"{name}_std": std, f"{name}_ci95_lo": mean - half,
            f"{name}_ci95_hi": mean + half, f"{name}_n": n}


def view_table(trials: pd.DataFrame, view: str, axes: tuple[str, ...] | None = None) -> pd.DataFrame:
    """The configurations of one view, sorted along its swept axes (default: those that vary)."""
    members = in_view(trials, view)
    axes = swept_axes(members) if axes is None else axes
    table = aggregate(members)
    order = [*axes, *(a for a in POINT if a not in axes)]
    return table.sort_values(order, kind="stable").reset_index(drop=True)


def pareto_front(points: pd.DataFrame, x: str = "time_s_mean", y: str = "energy_j_mean") -> pd.Series:
    """True for rows no other row beats in both `x` and `y` (lower is better); rows with a
    missing or infinite value are never on the front."""
    xs, ys = points[x].to_numpy(dtype=float), points[y].to_numpy(dtype=float)
    valid = np.isfinite(xs) & np.isfinite(ys)
    front = np.zeros(len(points), dtype=bool)
    for i in np.flatnonzero(valid):
        others = valid & (xs <= xs[i]) & (ys <= ys[i]) & ((xs < xs[i]) | (ys < ys[i]))
        front[i] = not others.any()
    return pd.Series(front, index=points.index, name="pareto")


def eta_cost(table: pd.DataFrame, eta: float) -> pd.Series:
    """Zeus's cost of each configuration: eta * energy + (1 - eta) * max_power * time, in joules
    (max_power: the GPU's highest power limit). NaN where GPU energy or max power is unknown."""
    gpu = table["energy_source"].astype(str).str.contains("gpu")
    cost = eta * table["energy_j_mean"] + (1 - eta) * table["gpu_max_power_w"] * table["time_s_mean"]
    return cost.where(gpu)


def recommend(trials: pd.DataFrame, eta: float | None = None) -> pd.DataFrame:
    """The fastest and the least-energy configuration among those whose every run reached
    the target, by mean over repeats, and with `eta` the lowest Zeus cost (`eta_cost`).
    Index: "fastest", "least_energy", "eta_cost" (a row only where there is one: none when no
    configuration reached, no energy rows when energy was not measured). Columns: lr,
    batch_size, runs, time_s, energy_j, dynamic_energy_j, epochs, test_acc (means), time_s_std, energy_j_std,
    energy_err_j, energy_uncertain, energy_source, cost_j, and `ties`: the other candidates
    whose energy is within both error bars of the pick's (not distinguishable by energy).
    """
    table = aggregate(trials)
    candidates = table[table["all_reached"] & (table["runs"] > 0)]
    picks = {}
    if len(candidates) and candidates["time_s_mean"].notna().any():
        picks["fastest"] = candidates.loc[candidates["time_s_mean"].idxmin()]
    measured = candidates[candidates["energy_j_mean"].notna()]
    if len(measured):
        picks["least_energy"] = measured.loc[measured["energy_j_mean"].idxmin()]
    cost = eta_cost(candidates, eta) if eta is not None else pd.Series(math.nan, index=candidates.index)
    if cost.notna().any():
        picks["eta_cost"] = candidates.loc[cost.idxmin()]
    columns = ["lr", "batch_size", "runs", "time_s", "energy_j", "dynamic_energy_j", "epochs", "test_acc",
               "time_s_std", "energy_j_std", "energy_err_j", "energy_uncertain", "energy_source", "cost_j", "ties"]
    rows = {
        name: {**{c: row[c] for c in ("lr", "batch_size", "runs", "time_s_std", "energy_j_std", "energy_err_j",
                                      "energy_uncertain", "energy_source")},
               **{m: row[f"{m}_mean"] for m in METRICS}, "cost_j": cost.get(row.name, math.nan),
               "ties": energy_ties(measured, row) if name == "least_energy" else ""}
        for name, row in picks.items()
    }
    return pd.DataFrame.from_dict(rows, orient="index", columns=columns)


def energy_ties(table: pd.DataFrame, pick: pd.Series) -> str:
    """Labels of the configurations whose mean energy is within the error bars of `pick`'s."""
    err = table["energy_err_j"].fillna(0.0) + (0.0 if math.isnan(pick["energy_err_j"]) else pick["energy_err_j"])
    close = (table["energy_j_mean"] - pick["energy_j_mean"]).abs() <= err
    others = table[close & (table.index != pick.name)]
    return ", ".join(point_label(r.lr, r.batch_size) for r in others.itertuples())


def energy_measured(trials: pd.DataFrame) -> bool:
    """True where at least one trial has a measured energy (joules, not NaN)."""
    return bool(pd.to_numeric(trials["energy_j"], errors="coerce").notna().any())
