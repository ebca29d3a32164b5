"""Dataset commands: `data info`, `data synth`, `features`, `show-audio`."""

from __future__ import annotations

import argparse


def register(commands: argparse._SubParsersAction) -> None:
    """Add the dataset commands to the `instrument-sweep` parser."""
