"""The notebook API: `instrument-sweep run` from Python, results as DataFrames and figures.

    from tune_jobs import sweep
    result = sweep("smoke", data="synthetic", storage="sweeps")     # any preset or YAML path
    result = sweep("seed", repeats=3, stop={"threshold": 0.95})     # spec fields, like --set
    result.trials, result.epochs            # analysis.load_trials / load_epochs of the experiment
    result.path, result.report_path         # the experiment and its report.md
    result.figures()["pareto.png"]          # matplotlib Figures (inline in Jupyter)

It runs the CLI's own code (`tune_jobs.cli_sweep.run_sweep`): the same checks,
Ray settings (loopback only, token auth) and outputs. Bad input raises
`InputError` whose message is the CLI's `WHERE: PROBLEM`, before anything is written.
Progress is a bar in Jupyter and lines elsewhere.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from pathlib import Path

from analysis import storage
from trainables.errors import InputError
from tune_jobs.spec import DEFAULT_PRESET, SweepSpec, load_spec

__all__ = ["InputError", "SweepResult", "sweep"]


@dataclass(frozen=True)
class SweepResult:
    """A finished (or interrupted) sweep: where it is and how it ended.

    `exit_code` is what `instrument-sweep run` would have returned: 0 every trial
    ended by the stop rule, 1 some failed, 130 interrupted (continue with the
    `instrument-sweep resume` command it printed).
    """

    path: str
    report_path: str | None  # None where the sweep was not analyzed
    exit_code: int
    spec: SweepSpec

    @functools.cached_property
    def trials(self):
        """One row per trial (`analysis.load_trials`)."""
        import analysis

        return analysis.load_trials(self.path)

    @functools.cached_property
    def epochs(self):
        """One row per trial and epoch with every reported metric (`analysis.load_epochs`)."""
        import analysis

        return analysis.load_epochs(self.path)

    def figures(self) -> dict:
        """The report's figures by file name ("view-lr.png", "pareto.png", "loss.png", ...)."""
        from analysis.report import experiment_figures

        return experiment_figures(self.path, self.spec.report_info())


def sweep(spec: str | Path = DEFAULT_PRESET, data: str | None = None, storage: str = storage.DEFAULT_STORAGE,
          address: str | None = None, name: str | None = None, analyze: bool = True, verbose: bool = False,
          dashboard: bool = False, without_ray_fixes: bool = False, **overrides) -> SweepResult:
    """Run a sweep as `instrument-sweep run` does and return its result.

    `spec`: a preset name or a sweep YAML path; `data`: a dataset directory or
    "synthetic" (default: the spec's, synthetic in every preset); `overrides`: spec
    fields, e.g. `repeats=3, stop={"threshold": 0.95}`; `address`: a Ray cluster to
    join (default: start a local Ray and stop it afterwards); `dashboard`: start the
    local Ray with its dashboard, as `run --dashboard`; `without_ray_fixes`: run where the
    installed Ray no longer fits instrument-sweep's fixes of it, as `run --without-ray-fixes`
    (resume may then lose work; otherwise such a Ray raises InputError before any trial).
    """
    from tune_jobs.cli_sweep import print_spec, run_sweep

    loaded = load_spec(spec, values=overrides)
    if data is not None:
        loaded = replace(loaded, data=str(data))
    print_spec(loaded)
    outcome = run_sweep(loaded, storage, name, address, verbose, analyze=analyze, dashboard=dashboard,
                        without_ray_fixes=without_ray_fixes)
    return SweepResult(outcome.experiment, outcome.report_path, outcome.exit_code, loaded)
