"""Experiment directory -> DataFrames, summaries, plots and a report.

    from analysis import load_trials, load_epochs, write_report
    trials = load_trials("sweeps/seed-20261125-2000")         # one row per trial
    write_report("sweeps/seed-20261125-2000")                 # -> .../analysis/report.md

The names below load on first use, so `from analysis import storage` stays light
(no pandas or matplotlib).
"""

from __future__ import annotations

import importlib

_HOMES = {
    "load_epochs": "analysis.frames", "load_trials": "analysis.frames", "write_report": "analysis.report",
    "aggregate": "analysis.summary", "in_view": "analysis.summary", "pareto_front": "analysis.summary",
    "recommend": "analysis.summary", "view_table": "analysis.summary",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'analysis' has no attribute {name!r}")
