"""Optimizers: the seed's Adam, plain SGD, and a lean fused Adam for the fast loop.

`FusedAdam` is torch.optim.Adam(fused=True) with the per-step Python bookkeeping
cut: one `_foreach_add_` on the step counters and one fused kernel per step,
same state layout (state_dict/load_state_dict and checkpoints are Adam's), same
math (tests check the parameters match Adam's step for step). On this project's
small network the bookkeeping is a tenth of a CPU step.
"""

from __future__ import annotations

import torch


class FusedAdam(torch.optim.Adam):
    """Adam (no amsgrad, no weight-decay variants beyond Adam's L2) stepping through torch's fused kernel."""

    def __init__(self, params, lr: float) -> None:
        super().__init__(params, lr=lr, fused=True)  # raises where torch has no fused Adam for the device

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            states = [self._state(p) for p in params]
            steps = [s["step"] for s in states]
            torch._foreach_add_(steps, 1)
            beta1, beta2 = group["betas"]
            torch._fused_adam_(
                params, [p.grad for p in params], [s["exp_avg"] for s in states],
                [s["exp_avg_sq"] for s in states], [], steps, amsgrad=False, lr=group["lr"], beta1=beta1,
                beta2=beta2, weight_decay=group["weight_decay"], eps=group["eps"], maximize=False,
                grad_scale=None, found_inf=None,
            )

    def _state(self, p: torch.Tensor) -> dict:
        """Adam's per-parameter state, created as Adam creates it for the fused path."""
        state = self.state[p]
        if not state:
            state["step"] = torch.tensor(0.0, dtype=torch.float32, device=p.device)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state


def make_optimizer(name: str, params, lr: float, fused: bool = False) -> torch.optim.Optimizer:
    """Adam (the seed's) or plain SGD. `fused`: Adam through FusedAdam where torch has the kernel."""
    params = list(params)
    if name == "adam":
        if fused:
            try:
                return FusedAdam(params, lr=lr)
            except RuntimeError:  # no fused Adam for this device: the standard implementation
                pass
        return torch.optim.Adam(params, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    raise ValueError(f"optimizer must be adam or sgd, got {name!r}")
