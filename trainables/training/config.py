"""`TrainConfig`: what one trial trains with, validated on construction (errors name the field).

When it stops is `trainables.training.stop.StopRule`. `trial_config` joins a sweep trial's
config from what identifies it and what the sweep's trials share.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from trainables.documented import documented
from trainables.errors import InputError, require_choice, require_int, require_number

LOADERS = ("fast", "dataloader")
ACTIVATIONS = ("sigmoid", "relu", "tanh")
OPTIMIZERS = ("adam", "sgd")


@dataclass(frozen=True)
class TrainConfig:
    """Everything one trial trains with (model, optimizer, batching, data split)."""

    lr: float = documented(1e-3, "learning rate where a view does not sweep or fix it",
                           allowed="a finite number > 0")
    batch_size: int = documented(128, "rows per optimizer step where a view does not sweep or fix it",
                                 allowed="an integer >= 1, at most the training split's rows")
    n_hidden: int = documented(256, "hidden units of the one dense layer (the assignment's 120-256-10 network)",
                               allowed="an integer >= 1")
    activation: str = documented("sigmoid", "hidden activation (the assignment's: sigmoid)", allowed=ACTIVATIONS)
    optimizer: str = documented("adam", "optimizer (the assignment's: adam)", allowed=OPTIMIZERS)
    loader: str = documented("fast", "epoch loop: device-resident batches, or the assignment's own DataLoader loop",
                             allowed=LOADERS)
    val_fraction: float = documented(0.2, "share of the training rows held out (stratified) for validation",
                                     allowed="in (0, 1); enough rows per class to resolve the target")
    seed: int = documented(0, "random seed of the split, the weights and the shuffling; repeats use seed, "
                              "seed+1, ...", allowed="an integer >= 0")
    cpus: int = documented(1, "torch threads when the trial runs on CPU (set from resources.cpus_per_trial)",
                           allowed="an integer >= 1")

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
