"""The seed's classifier: one hidden dense layer, logits out."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

_ACTIVATIONS = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU, "tanh": nn.Tanh}
_ACTIVATION_INPLACE = {"sigmoid": torch.sigmoid_, "relu": torch.relu_, "tanh": torch.tanh_}
# d(activation)/d(input) from the activation's output h, as autograd computes it.
_ACTIVATION_BACKWARD = {
    "sigmoid": torch.ops.aten.sigmoid_backward,
    "tanh": torch.ops.aten.tanh_backward,
    "relu": lambda grad, h: torch.ops.aten.threshold_backward(grad, h, 0),
}


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
        self.activation = activation
        self.net = nn.Sequential(
            nn.Linear(n_features, n_hidden), _ACTIVATIONS[activation](), nn.Linear(n_hidden, n_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def forward_backward_fn(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """A training step's forward and backward pass without autograd: fn(x, targets) -> logits.

        fn writes into every parameter's `.grad` (allocated here, then overwritten in
        place) the gradient of the mean cross-entropy (nn.CrossEntropyLoss) over the
        batch: the same math autograd does, in a dozen tensor ops and no graph, which is
        what a step of this small network costs on a CPU. `targets` is
        `descent_targets`' slice for the batch: -one_hot(y) / len(x). fn binds the
        parameters' tensors, so take a new one if they are replaced (load_state_dict
        copies into them: that is fine), and call it under torch.no_grad() (once around
        the whole epoch: entering it per step costs time).
        """
        first, last = self.net[0], self.net[2]
        w1, b1, w2, b2 = first.weight, first.bias, last.weight, last.bias
        w1_t, w2_t = w1.t(), w2.t()
        g_w1, g_b1, g_w2, g_b2 = (_grad(p) for p in (w1, b1, w2, b2))
        activation, activation_backward = _ACTIVATION_INPLACE[self.activation], _ACTIVATION_BACKWARD[self.activation]
        addmm, mm, add, softmax, sum_ = torch.addmm, torch.mm, torch.add, torch.softmax, torch.sum  # local: per step

        def forward_backward(x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            hidden = activation(addmm(b1, x, w1_t))
            logits = addmm(b2, hidden, w2_t)
            grad_logits = add(targets, softmax(logits, 1), alpha=1.0 / x.shape[0])
            grad_hidden = activation_backward(grad_logits @ w2, hidden)
            mm(grad_logits.t(), hidden, out=g_w2)
            sum_(grad_logits, 0, out=g_b2)
            mm(grad_hidden.t(), x, out=g_w1)
            sum_(grad_hidden, 0, out=g_b1)
            return logits

        return forward_backward


def descent_targets(y: torch.Tensor, n_classes: int, batch_size: int) -> torch.Tensor:
    """Per row, -one_hot(y) / (rows in its batch): the targets of `InstrumentNet.forward_backward_fn`'s
    function for batches that are consecutive `batch_size`-row slices of `y` (the last may be shorter)."""
    n = y.shape[0]
    rows = torch.full((n, 1), float(batch_size), device=y.device)
    rows[n - n % batch_size:] = float(n % batch_size or batch_size)
    return nn.functional.one_hot(y, n_classes).float().div_(rows).neg_()


def _grad(p: torch.Tensor) -> torch.Tensor:
    """`p.grad`, allocated on first use."""
    if p.grad is None:
        p.grad = torch.empty_like(p)
    return p.grad
