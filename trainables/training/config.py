"""`TrainConfig`: what one trial trains with, validated on construction (errors name the field).

When it stops is `trainables.training.stop.StopRule`. `trial_config` joins a sweep trial's
config from what identifies it and what the sweep's trials share.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from trainables.errors import InputError, require_choice, require_int, require_number

LOADERS = ("fast", "dataloader")
ACTIVATIONS = ("sigmoid", "relu", "tanh")
OPTIMIZERS = ("adam", "sgd")


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
        require_number("lr", self.lr)
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise InputError("lr", f"must be a finite number > 0, got {self.lr!r}")
        require_int("batch_size", self.batch_size, minimum=1)
        require_int("n_hidden", self.n_hidden, minimum=1)
        require_choice("activation", self.activation, ACTIVATIONS)
        require_choice("optimizer", self.optimizer, OPTIMIZERS)
        require_choice("loader", self.loader, LOADERS)
        require_number("val_fraction", self.val_fraction)
        if not 0.0 < self.val_fraction < 1.0:
            raise InputError("val_fraction", f"must be in (0, 1), got {self.val_fraction!r}")
        require_int("seed", self.seed, minimum=0)
        require_int("cpus", self.cpus, minimum=1)


def trial_config(identity: dict, settings: dict | None) -> dict:
    """A trial's whole config: number, lr, batch_size, seed, views (`identity`, Tune's param space),
    train, stop, replay_budget_s, checkpoint_every_s, report_every_s (`settings`, shared by the
    sweep's trials, with the trial's own lr, batch size and seed in train). `identity` that
    holds its train settings already (trackers log them; experiments from before the split) is whole."""
    if "train" in identity or settings is None:
        return identity
    own = {key: identity[key] for key in ("lr", "batch_size", "seed") if key in identity}
    return {**settings, **identity, "train": {**settings["train"], **own}}
