"""Optimizers: the seed's Adam, plain SGD, and a lean fused Adam for the fast loop.

`FusedAdam` is torch.optim.Adam(fused=True) with the per-step Python bookkeeping
cut: one `_foreach_add_` on the step counters and one fused kernel per step,
same state layout (state_dict/load_state_dict and checkpoints are Adam's), same
math (tests check the parameters match Adam's step for step). On this project's
small network the bookkeeping is a tenth of a CPU step.

`make_optimizer` first keeps torch from importing torch._dynamo for the optimizer's
methods (`_optimizer_without_dynamo`): 1.4 s of every trial process's start. (FusedAdam's
steps never import it; torch's own Adam and SGD steps still do.)

FusedAdam calls torch's private kernels (`torch._fused_adam_`, `torch._foreach_add_`).
`make_optimizer` checks them once per process and device (`fused_adam_fits`: a tiny step
beside torch.optim.Adam's); where a torch changed them, it returns torch.optim.Adam with
one warning, and the trial trains on.
"""

from __future__ import annotations

import functools
import sys
import warnings
from collections.abc import Callable

import torch

# torch.optim.Optimizer's methods that torch wraps in `torch._disable_dynamo`.
_DYNAMO_WRAPPED = ("add_param_group", "state_dict", "load_state_dict", "zero_grad")


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
            _fused_adam(group, params, [p.grad for p in params], *_moments(states), steps)

    def batch_stepper(self) -> Callable[[], None]:
        """`step()` for a loop that steps every batch under torch.no_grad(), every parameter with
        a gradient. Adam's state is gathered once and each call reads the fresh gradients;
        torch's optimizer-hook wrapper is skipped (no hooks are used here); a group's step
        counters become views of one tensor, counted by one add. Less than half the cost of
        `step()` on this network. Take a new one after `load_state_dict`."""
        plans = []
        for group in self.param_groups:
            params = list(group["params"])
            states = [self._state(p) for p in params]
            counts = torch.stack([s["step"] for s in states])
            for i, state in enumerate(states):
                state["step"] = counts[i]
            plans.append((group, params, *_moments(states), counts, [s["step"] for s in states]))

        def step() -> None:
            for group, params, exp_avgs, exp_avg_sqs, counts, steps in plans:
                counts.add_(1)
                _fused_adam(group, params, [p.grad for p in params], exp_avgs, exp_avg_sqs, steps)

        return step

    def _state(self, p: torch.Tensor) -> dict:
        """Adam's per-parameter state, created as Adam creates it for the fused path."""
        state = self.state[p]
        if not state:
            state["step"] = torch.tensor(0.0, dtype=torch.float32, device=p.device)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state


def _moments(states: list[dict]) -> tuple[list, list]:
    """Adam's first and second moment tensors of each parameter's state."""
    return [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states]


def _fused_adam(group: dict, params: list, grads: list, exp_avgs: list, exp_avg_sqs: list, steps: list) -> None:
    """Torch's fused Adam kernel over one group, steps already counted (as Adam(fused=True) does)."""
    beta1, beta2 = group["betas"]
    torch._fused_adam_(
        params, grads, exp_avgs, exp_avg_sqs, [], steps,
        amsgrad=False, lr=group["lr"], beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"],
        eps=group["eps"], maximize=False, grad_scale=None, found_inf=None,
    )


def batch_stepper(optimizer: torch.optim.Optimizer) -> Callable[[], None]:
    """The cheapest way to call `optimizer.step()` once per batch: FusedAdam's own, else `step`."""
    return optimizer.batch_stepper() if isinstance(optimizer, FusedAdam) else optimizer.step


@torch.no_grad()
def reset_state(optimizer: torch.optim.Optimizer) -> None:
    """The optimizer as freshly made, in place: every state tensor zeroed (a fresh Adam's first step
    starts from step 0 and zero moments, as from none), so the tensors, and what binds them (a stepper,
    a captured CUDA graph), stay."""
    for state in optimizer.state.values():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                value.zero_()
            elif isinstance(value, (int, float)):
                state[key] = type(value)(0)


@torch.no_grad()
def load_state(optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """`optimizer.load_state_dict(saved)`, copying into the state tensors it has where they fit (same
    parameters, keys and shapes), so what binds them stays; torch's own load where they do not."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state = saved.get("state", {})
    fits = len(saved.get("param_groups", [])) == len(optimizer.param_groups) and len(state) == len(params) and all(
        set(state.get(i, {})) == set(optimizer.state.get(p, {})) and all(
            not isinstance(v, torch.Tensor) or optimizer.state[p][k].shape == v.shape for k, v in state[i].items())
        for i, p in enumerate(params))
    if not fits:
        optimizer.load_state_dict(saved)
        return
    for i, p in enumerate(params):
        for key, value in state[i].items():
            if isinstance(value, torch.Tensor):
                optimizer.state[p][key].copy_(value)
            else:
                optimizer.state[p][key] = value
    for group, saved_group in zip(optimizer.param_groups, saved["param_groups"]):
        group.update({k: v for k, v in saved_group.items() if k != "params"})


def _optimizer_without_dynamo() -> None:
    """Let torch.optim.Optimizer's methods run without importing torch._dynamo, where it is not loaded.

    torch wraps them in `torch._disable_dynamo`, which imports torch._dynamo on a method's first
    call (1.4 s here, in every trial process, before its first epoch) only to hide the method
    from torch.compile; the wrapper caches the disabled function on the method's function as
    `__dynamo_disable`. Trials never compile, so each is cached as itself: the same call, no import.
    Where torch._dynamo is already loaded (someone compiles), nothing changes.
    """
    if "torch._dynamo" in sys.modules:
        return
    for name in _DYNAMO_WRAPPED:
        function = getattr(getattr(torch.optim.Optimizer, name), "__wrapped__", None)
        if function is not None and not hasattr(function, "__dynamo_disable"):
            setattr(function, "__dynamo_disable", function)


@functools.cache
def fused_adam_fits(device_type: str) -> bool:
    """Whether FusedAdam steps as Adam does with this torch on `device_type`: two tiny steps
    (`step`, then `batch_stepper`) against Adam's update written out in public tensor ops
    (torch.optim.Adam's own step would import torch._dynamo). Where not, one warning (per
    process and device) naming torch's version."""
    try:
        start = torch.linspace(-1.0, 1.0, 6, device=device_type).reshape(3, 2)
        param = torch.nn.Parameter(start.clone())
        fused = FusedAdam([param], lr=0.1)
        beta1, beta2, eps = *fused.defaults["betas"], fused.defaults["eps"]
        expected, m, v = start.clone(), torch.zeros_like(start), torch.zeros_like(start)
        with torch.no_grad():
            for t, step in enumerate((fused.step, fused.batch_stepper()), start=1):
                grad = expected ** 2 - 0.5
                param.grad = param.detach() ** 2 - 0.5
                step()
                m, v = beta1 * m + (1 - beta1) * grad, beta2 * v + (1 - beta2) * grad ** 2
                expected -= 0.1 * (m / (1 - beta1 ** t)) / ((v / (1 - beta2 ** t)).sqrt() + eps)
        fits = torch.allclose(param, expected, atol=1e-6) and float(fused.state[param]["step"]) == 2.0
        problem = "its steps differ from Adam's"
    except Exception as exc:  # noqa: BLE001 - any failure of the private kernels: the public path
        fits, problem = False, f"{type(exc).__name__}: {exc}"
    if not fits:
        warnings.warn(f"torch {torch.__version__}: the fused Adam kernels (torch._fused_adam_, torch._foreach_add_) "
                      f"no longer fit ({problem}); training with torch.optim.Adam instead", RuntimeWarning,
                      stacklevel=2)
    return fits


def make_optimizer(name: str, params, lr: float, fused: bool = False) -> torch.optim.Optimizer:
    """Adam (the seed's) or plain SGD. `fused`: Adam through FusedAdam where torch has the kernel
    for the parameters' device and it steps as Adam does (`fused_adam_fits`)."""
    _optimizer_without_dynamo()
    params = list(params)
    if name == "adam":
        if fused:
            try:
                optimizer = FusedAdam(params, lr=lr)
            except RuntimeError:  # no fused Adam for this device: the standard implementation
                pass
            else:
                if fused_adam_fits(params[0].device.type if params else "cpu"):
                    return optimizer
        return torch.optim.Adam(params, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    raise ValueError(f"optimizer must be adam or sgd, got {name!r}")
