"""Typed, validated configuration of one training run.

`TrainConfig` holds what one trial trains with; `StopRule` says when it stops.
Both validate on construction and name the offending field in the error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from trainables.errors import InputError

LOADERS = ("fast", "dataloader")
ACTIVATIONS = ("sigmoid", "relu", "tanh")
OPTIMIZERS = ("adam", "sgd")


@dataclass(frozen=True)
class StopRule:
    """The seed's rule: stop once `metric` >= `threshold` for `patience` epochs in a row.

    `threshold=None` means fixed-epochs mode: train exactly `max_epochs` epochs.
    """

    threshold: float | None = 0.98  # target validation accuracy, in (0, 1]
    patience: int = 3  # consecutive epochs at or above the threshold
    max_epochs: int = 100  # hard cap on epochs
    metric: str = "val_acc"  # reported metric the rule watches

    def __post_init__(self) -> None:
        _require_int("max_epochs", self.max_epochs, minimum=1)
        _require_int("patience", self.patience, minimum=1)
        if self.threshold is not None:
            _require_number("threshold", self.threshold)
            if not 0.0 < self.threshold <= 1.0:
                raise InputError("threshold", f"must be in (0, 1], got {self.threshold!r}")
            if self.patience > self.max_epochs:
                raise InputError(
                    "patience",
                    f"must be <= max_epochs ({self.max_epochs}), got {self.patience}",
                )

    @property
    def fixed_epochs(self) -> bool:
        """True when there is no target: the run trains `max_epochs` epochs."""
        return self.threshold is None


@dataclass(frozen=True)
class TrainConfig:
    """Everything one trial trains with (model, optimizer, batching, data split)."""

    lr: float = 1e-3  # optimizer learning rate, > 0
    batch_size: int = 128  # rows per optimizer step, >= 1
    n_hidden: int = 256  # hidden units of the one dense layer
    activation: str = "sigmoid"  # the seed's activation
    optimizer: str = "adam"  # the seed's optimizer
    loader: str = "fast"  # "fast" (device-resident tensors) or "dataloader" (the seed's)
    val_fraction: float = 0.2  # share of training rows held out for validation
    seed: int = 0  # seeds the split, the weights and the shuffling
    cpus: int = 1  # torch threads when the trial runs on CPU

    def __post_init__(self) -> None:
        _require_number("lr", self.lr)
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise InputError("lr", f"must be a finite number > 0, got {self.lr!r}")
        _require_int("batch_size", self.batch_size, minimum=1)
        _require_int("n_hidden", self.n_hidden, minimum=1)
        _require_choice("activation", self.activation, ACTIVATIONS)
        _require_choice("optimizer", self.optimizer, OPTIMIZERS)
        _require_choice("loader", self.loader, LOADERS)
        _require_number("val_fraction", self.val_fraction)
        if not 0.0 < self.val_fraction < 1.0:
            raise InputError("val_fraction", f"must be in (0, 1), got {self.val_fraction!r}")
        _require_int("seed", self.seed, minimum=0)
        _require_int("cpus", self.cpus, minimum=1)


def _require_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(name, f"must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise InputError(name, f"must be an integer >= {minimum}, got {value!r}")


def _require_number(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(name, f"must be a number, got {value!r}")


def _require_choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise InputError(name, f"must be one of {', '.join(allowed)}; got {value!r}")
