"""Experiment directory -> DataFrames, summaries, plots and a report."""

from analysis.frames import load_epochs, load_trials

__all__ = ["load_epochs", "load_trials"]
