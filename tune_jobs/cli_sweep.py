"""Sweep commands: `run`, `resume`, `submit`, `status`, `logs`, `train`."""

from __future__ import annotations

import argparse


def register(commands: argparse._SubParsersAction) -> None:
    """Add the sweep commands to the `instrument-sweep` parser."""
