"""instrument-sweep's top layer: the `instrument-sweep` command and the notebook API.

    from tune_jobs import sweep
    result = sweep("smoke")           # see tune_jobs/api.py

`sweep` loads on first use, so the command line starts without importing it.
"""

from __future__ import annotations

__all__ = ["InputError", "SweepResult", "sweep"]


def __getattr__(name: str):
    if name in __all__:
        from tune_jobs import api

        return getattr(api, name)
    raise AttributeError(f"module 'tune_jobs' has no attribute {name!r}")
