"""The seed's classifier: one hidden dense layer, logits out."""

from __future__ import annotations

import torch
from torch import nn

_ACTIVATIONS = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU, "tanh": nn.Tanh}
# d(activation)/d(input) from the activation's output h, as autograd computes it.
_ACTIVATION_BACKWARD = {
    "sigmoid": lambda grad, h: torch.ops.aten.sigmoid_backward(grad, h),
    "tanh": lambda grad, h: torch.ops.aten.tanh_backward(grad, h),
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

    def forward_backward(self, x: torch.Tensor, target_onehot: torch.Tensor) -> torch.Tensor:
        """One training step's forward and backward pass without autograd; returns log-probabilities.

        Sets every parameter's `.grad` to the gradient of the mean cross-entropy
        (nn.CrossEntropyLoss) over the batch: the same math autograd does, in about
        a dozen tensor ops and no graph, which is what a step of this small network
        costs on a CPU. `target_onehot` is float (batch, n_classes). Call it under
        torch.no_grad() (once around the whole epoch: entering it per step costs time).
        """
        first, last = self.net[0], self.net[2]
        hidden = self.net[1](torch.addmm(first.bias, x, first.weight.t()))
        log_probs = torch.log_softmax(torch.addmm(last.bias, hidden, last.weight.t()), dim=1)
        grad_logits = log_probs.exp().sub_(target_onehot).div_(x.shape[0])
        grad_hidden = _ACTIVATION_BACKWARD[self.activation](grad_logits @ last.weight, hidden)
        last.weight.grad = grad_logits.t() @ hidden
        last.bias.grad = grad_logits.sum(0)
        first.weight.grad = grad_hidden.t() @ x
        first.bias.grad = grad_hidden.sum(0)
        return log_probs
