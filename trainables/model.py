"""The seed's classifier: one hidden dense layer, logits out."""

from __future__ import annotations

import torch
from torch import nn

_ACTIVATIONS = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU, "tanh": nn.Tanh}


class InstrumentNet(nn.Module):
    """MLP n_features -> n_hidden (activation) -> n_classes logits.

    The seed's network is 120 -> 256 (sigmoid) -> 10; train with CrossEntropyLoss.
    """

    def __init__(
        self, n_features: int, n_hidden: int = 256, n_classes: int = 10, activation: str = "sigmoid"
    ) -> None:
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        self.net = nn.Sequential(
            nn.Linear(n_features, n_hidden), _ACTIVATIONS[activation](), nn.Linear(n_hidden, n_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def make_optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    """Adam (the seed's) or plain SGD."""
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    raise ValueError(f"optimizer must be adam or sgd, got {name!r}")
