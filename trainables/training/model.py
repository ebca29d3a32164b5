"""The seed's classifier: one hidden dense layer, logits out.

    model = InstrumentNet(120, 256, 10, "sigmoid")
    forward_backward = model.forward_backward_fn()   # the fast loop's step: logits, gradients in .grad

`forward_backward_fn` computes the gradients by hand with torch's private backward ops
(`torch.ops.aten.*_backward`). It checks them once per process, activation and device
(`private_backward_fits`: one tiny step against autograd's); where a torch changed them, it
returns the same step through autograd, with one warning, and the trial trains on.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

import torch
from torch import nn

_ACTIVATIONS = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU, "tanh": nn.Tanh}
_ACTIVATION_INPLACE = {"sigmoid": torch.sigmoid_, "relu": torch.relu_, "tanh": torch.tanh_}


def _activation_backward(activation: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """d(activation)/d(input) from the activation's output h, as autograd computes it (torch's
    private ops, looked up when asked for)."""
    aten = torch.ops.aten
    if activation == "relu":
        threshold_backward = aten.threshold_backward
        return lambda grad, h: threshold_backward(grad, h, 0)
    return {"sigmoid": aten.sigmoid_backward, "tanh": aten.tanh_backward}[activation]


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
        the whole epoch: entering it per step costs time). Where this torch's private
        backward ops do not fit (`private_backward_fits`), fn runs the step through autograd.
        """
        if not private_backward_fits(self.activation, self.net[0].weight.device.type):
            return self._autograd_forward_backward_fn()
        return self._manual_forward_backward_fn()

    def _autograd_forward_backward_fn(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """`forward_backward_fn`'s contract through autograd: the public path."""
        params = list(self.parameters())
        grads = [_grad(p) for p in params]

        def forward_backward(x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            with torch.enable_grad():
                logits = self(x)
                loss = (targets * torch.log_softmax(logits, 1)).sum()  # mean cross-entropy
                for grad, new in zip(grads, torch.autograd.grad(loss, params)):
                    grad.copy_(new)
            return logits.detach()

        return forward_backward

    def _manual_forward_backward_fn(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """`forward_backward_fn` by hand, with torch's private backward ops."""
        first, last = self.net[0], self.net[2]
        w1, b1, w2, b2 = first.weight, first.bias, last.weight, last.bias
        w1_t, w2_t = w1.t(), w2.t()
        g_w1, g_b1, g_w2, g_b2 = (_grad(p) for p in (w1, b1, w2, b2))
        activation, activation_backward = _ACTIVATION_INPLACE[self.activation], _activation_backward(self.activation)
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


@functools.cache
def private_backward_fits(activation: str, device_type: str) -> bool:
    """Whether the hand-written step (torch's private backward ops) gives autograd's logits and
    gradients with this torch, for `activation` on `device_type`: one tiny step of each. Where
    not, one warning (per process, activation and device) naming torch's version."""
    try:
        model = InstrumentNet(5, 4, 3, activation).to(device_type)
        with torch.no_grad():  # fixed values: the check leaves the trial's random streams alone
            for i, p in enumerate(model.parameters()):
                p.copy_(torch.linspace(-1.0, 1.0, p.numel()).reshape(p.shape).roll(i))
        x = torch.linspace(-2.0, 2.0, 30, device=device_type).reshape(6, 5)
        y = torch.tensor([0, 1, 2, 0, 1, 2], device=device_type)
        targets = descent_targets(y, 3, 6)
        steps = []
        for step in (model._manual_forward_backward_fn(), model._autograd_forward_backward_fn()):
            with torch.no_grad():
                logits = step(x, targets)
            steps.append([logits.clone(), *(p.grad.clone() for p in model.parameters())])
        fits = all(torch.allclose(a, b, atol=1e-5) for a, b in zip(*steps))
        problem = "its gradients differ from autograd's"
    except Exception as exc:  # noqa: BLE001 - any failure of the private ops: the public path
        fits, problem = False, f"{type(exc).__name__}: {exc}"
    if not fits:
        warnings.warn(f"torch {torch.__version__}: the {activation} step's private backward ops (torch.ops.aten) no "
                      f"longer fit ({problem}); training through autograd instead", RuntimeWarning, stacklevel=2)
    return fits


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
