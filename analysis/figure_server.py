"""The process the report's figures are drawn from, in processes forked from it (see
analysis.report.figures_drawn): it imports the plotting code once, in itself, so a drawing
process starts in milliseconds instead of importing matplotlib (about 0.7 s of a core).

    from analysis import figure_server
    figure_server.start()      # first thing, where a core is idle: it loads in the background

This module imports neither pandas nor matplotlib: starting the server costs its caller nothing.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import multiprocessing.forkserver
import os
import sys

PRELOADED = ["analysis.plots", "analysis.report"]


def context() -> multiprocessing.context.ForkServerContext:
    """The multiprocessing context whose processes are forked from the server (started by the
    first of them where `start` was not called)."""
    forkserver = multiprocessing.get_context("forkserver")
    forkserver.set_forkserver_preload(PRELOADED)
    return forkserver


def start() -> None:
    """Start the server now, in the background; returns at once. Call it before other threads
    print: the server is started with this process's stdout pointed at /dev/null for the moment
    (it and its drawing processes print nothing, and so do not hold a pipe the command's output
    goes to open after the command ends; their errors go to stderr)."""
    context()
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 1)
        multiprocessing.forkserver.ensure_running()
    finally:
        os.dup2(saved, 1)
        os.close(saved)
