"""Experiment directory -> DataFrames, summaries, plots and a report.

    from analysis import load_trials, load_epochs, write_report
    trials = load_trials("sweeps/seed-20261125-2000")         # one row per trial
    write_report("sweeps/seed-20261125-2000")                 # -> .../analysis/report.md
"""

from analysis.frames import load_epochs, load_trials
from analysis.report import write_report
from analysis.summary import aggregate, in_view, pareto_front, recommend, view_table

__all__ = ["aggregate", "in_view", "load_epochs", "load_trials", "pareto_front", "recommend", "view_table",
           "write_report"]
