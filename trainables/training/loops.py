"""Epoch loops: the seed's DataLoader loop and a fast device-resident loop.

Both train every row once per epoch in a fresh random order, keep the last
partial batch, and return the epoch's training accuracy and mean loss.

- `DataLoaderLoop` ("dataloader"): TensorDataset + DataLoader(shuffle=True), as
  the seed does it. The faithful reference and the benchmark baseline.
- `FastLoop` ("fast", the default): the split lives on the trial's device as
  tensors; one permutation (a single gather) per epoch, batches are contiguous
  slices, loss and hit counts accumulate on the device, one host sync per epoch.
  On a CUDA device (with fused Adam) every step of an epoch is one CUDA graph,
  replayed each epoch: an H200 spent most of an epoch launching this small
  network's kernels one by one (8.3x the seed's loop at batch 128; one graph: 31x).
  The graph is built once per trial (`FastLoop.build`) and replayed by its replays.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from trainables.training.model import descent_targets
from trainables.training.optim import FusedAdam, batch_stepper

EVAL_CHUNK_ROWS = 16384  # rows per forward pass in `evaluate`


@dataclass(frozen=True)
class EpochStats:
    """Accuracy in [0, 1] and mean cross-entropy loss over `rows` rows."""

    acc: float
    loss: float
    rows: int

    @property
    def diverged(self) -> bool:
        """A non-finite loss: training must end at once."""
        return not math.isfinite(self.loss)


class EpochLoop(Protocol):
    generator: torch.Generator

    def train_epoch(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> EpochStats: ...

    def build(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> int: ...


class FastLoop:
    """Device-resident tensors, one permutation per epoch, slicing, one sync per epoch.

    Each step runs the function InstrumentNet.forward_backward_fn returns (the
    gradient of the mean cross-entropy without autograd's graph) and the
    optimizer (FusedAdam's `batch_stepper` where the optimizer is one); the
    step's logits are kept, and the epoch's loss and accuracy are computed from
    them once at the end (`summed_loss_and_hits`), with one transfer to the host.

    With FusedAdam the epoch's steps are prepared once (`EpochGraph`) and, on CUDA, captured
    once as a CUDA graph and replayed: the same kernels on the same tensors, so the same
    numbers as launching them one by one. The shuffle stays outside the graph.
    """

    def __init__(self, x, y, batch_size: int, device: torch.device, seed: int) -> None:
        self.x = torch.as_tensor(x, dtype=torch.float32).to(device)
        self.y = torch.as_tensor(y, dtype=torch.int64).to(device)
        self.batch_size = int(batch_size)
        self.device = device
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.epoch_graph: EpochGraph | None = EpochGraph(cuda=self.x.is_cuda)  # (a test's stand-in GPU: the CPU)

    def build(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
        """Build what every epoch on `model` and `optimizer` reuses: on CUDA, the warm-up epoch and the captured
        graph. Returns how many epochs that trained (0 or 2): the caller restores the weights and the shuffle."""
        graph = self.epoch_graph
        if graph is None or not graph.cuda or not isinstance(optimizer, FusedAdam):
            return 0
        for _ in range(2):
            self.train_epoch(model, optimizer)
        return 2

    def train_epoch(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> EpochStats:
        model.train()
        n = self.x.shape[0]
        perm = torch.randperm(n, device=self.device, generator=self.generator)
        with torch.no_grad():
            x, y = self.x.index_select(0, perm), self.y.index_select(0, perm)
            targets = descent_targets(y, model.net[2].out_features, self.batch_size)
            prepare = lambda: (model.forward_backward_fn(), batch_stepper(optimizer))  # noqa: E731
            if self.epoch_graph is not None and isinstance(optimizer, FusedAdam):
                loss_sum, hits = self.epoch_graph.epoch(model, optimizer, prepare, self.steps, (x, y, targets))
            else:
                loss_sum, hits = self.steps(*prepare(), x, y, targets)
        loss_total, hit_total = torch.stack([loss_sum, hits.double()]).tolist()
        return EpochStats(acc=hit_total / n, loss=loss_total / n, rows=n)

    def steps(self, forward_backward, step, x: torch.Tensor, y: torch.Tensor,
              targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One epoch's steps over rows already shuffled: (summed loss, hits) as device scalars."""
        logits = []
        for xb, tb in zip(x.split(self.batch_size), targets.split(self.batch_size)):
            logits.append(forward_backward(xb, tb))
            step()
        return summed_loss_and_hits(torch.cat(logits), y)


def _signature(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple:
    """What a captured epoch is bound to: the model and the optimizer, and the tensors it updates in
    place (parameters, gradients, Adam's moments; their step counters belong to the captured stepper)."""
    params = list(model.parameters())
    moments = [t for state in optimizer.state.values() for key, t in state.items()
               if key != "step" and isinstance(t, torch.Tensor)]
    tensors = [*params, *(p.grad for p in params if p.grad is not None), *moments]
    return (id(model), id(optimizer), *(t.data_ptr() for t in tensors))


class EpochGraph:
    """An epoch's steps, prepared once for a model and optimizer and reused every epoch; on CUDA, captured
    as one CUDA graph and replayed.

    The step functions bind the tensors they update in place (`_signature`), so they are prepared again
    (`builds`) only for another model or optimizer, or where their tensors are other tensors (`load_state_dict`
    of a checkpoint into a fresh optimizer; a restart that resets them in place keeps them). On CUDA a
    graph replays kernels on the addresses it captured: its inputs are copied into static tensors. A build
    there runs one epoch eagerly, on a side stream, as torch advises before a capture (lazy initialisations
    happen outside it); the next epoch is captured (`captures`), then replayed. The step functions are made
    (`prepare`) outside the capture: FusedAdam's stepper gathers Adam's step counters into one tensor when
    made, which the graph then counts in place (and checkpoints read). Where a capture fails, every later
    epoch runs eagerly, with one warning.
    """

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.graph: torch.cuda.CUDAGraph | None = None
        self.step_fns: tuple = ()  # on the CPU: the prepared step functions, reused
        self.inputs: tuple[torch.Tensor, ...] = ()
        self.outputs: tuple[torch.Tensor, torch.Tensor] | None = None
        self.bound: tuple = ()  # the model and optimizer (held, so that their ids stay theirs) ...
        self.signature: tuple = ()  # ... and `_signature` of them after the last build or capture
        self.builds = 0  # step functions prepared for new tensors (on CUDA: warm-up epochs)
        self.captures = 0  # CUDA graphs captured
        self.failed = False

    def epoch(self, model: nn.Module, optimizer: torch.optim.Optimizer, prepare, steps,
              inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """`steps(*prepare(), *inputs)` -> (summed loss, hits): with the steps prepared before, replayed,
        captured and replayed, or run eagerly."""
        if self.failed:
            return steps(*prepare(), *inputs)
        if _signature(model, optimizer) != self.signature:  # new tensors: build on them first
            self.builds += 1
            self.graph, self.bound = None, (model, optimizer)
            if self.cuda:
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    outputs = steps(*prepare(), *inputs)
                torch.cuda.current_stream().wait_stream(side)
            else:
                self.step_fns = prepare()
                outputs = steps(*self.step_fns, *inputs)
            self.signature = _signature(model, optimizer)
            return outputs
        if not self.cuda:
            return steps(*self.step_fns, *inputs)
        if self.graph is not None:
            for static, given in zip(self.inputs, inputs):
                static.copy_(given)
            self.graph.replay()
            return self.outputs
        step_fns = prepare()
        try:
            graph, static = torch.cuda.CUDAGraph(), tuple(t.clone() for t in inputs)
            with torch.cuda.graph(graph):
                outputs = steps(*step_fns, *static)
        except Exception as exc:  # noqa: BLE001 - any capture failure: the eager steps are the same math
            self.failed, self.bound = True, ()
            warnings.warn(f"torch {torch.__version__}: capturing an epoch as a CUDA graph failed "
                          f"({type(exc).__name__}: {exc}); epochs run step by step (slower, same results)")
            return steps(*step_fns, *inputs)
        self.graph, self.inputs, self.outputs = graph, static, outputs
        self.captures += 1
        graph.replay()
        return outputs


def summed_loss_and_hits(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy (float64) and count of rows whose first largest logit is y's, as device
    scalars. Same values as cross_entropy(reduction="sum") and argmax, at a third of their CPU time
    or less with few classes (torch's row-wise kernels are slow on 10-wide rows; this uses one max
    and a matrix-vector product)."""
    top, predicted = logits.max(dim=1)
    # Clamped: exp(-80) adds nothing next to the largest term's exp(0) = 1 in float32, and torch's
    # CPU exp takes a slow path below about -88 (60x: 1.5 ms an epoch once logits spread at large lr).
    ones = torch.ones(logits.shape[1], device=logits.device)
    sum_exp = (logits - top[:, None]).clamp_(min=-80.0).exp_() @ ones
    loss_sum = (sum_exp.log_().add_(top) - logits.gather(1, y[:, None]).squeeze(1)).sum(dtype=torch.float64)
    return loss_sum, (predicted == y).sum()


class DataLoaderLoop:
    """The seed's loop: TensorDataset + shuffled DataLoader, batches moved to the device."""

    def __init__(self, x, y, batch_size: int, device: torch.device, seed: int) -> None:
        dataset = TensorDataset(
            torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.int64)
        )
        self.generator = torch.Generator().manual_seed(seed)
        self.loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=self.generator)
        self.device = device
        self.loss_fn = nn.CrossEntropyLoss()

    def build(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
        """Nothing to build: the seed's loop launches every step."""
        return 0

    def train_epoch(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> EpochStats:
        model.train()
        loss_sum, hits, rows = 0.0, 0, 0
        for xb, yb in self.loader:
            xb, yb = xb.to(self.device), yb.to(self.device)
            optimizer.zero_grad()
            logits = model(xb)
            loss = self.loss_fn(logits, yb)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(yb)
            hits += (logits.argmax(dim=1) == yb).sum().item()
            rows += len(yb)
        return EpochStats(acc=hits / rows, loss=loss_sum / rows, rows=rows)


LOOPS = {"fast": FastLoop, "dataloader": DataLoaderLoop}


def make_loop(loader: str, x, y, batch_size: int, device: torch.device, seed: int) -> EpochLoop:
    """The epoch loop named by TrainConfig.loader."""
    if loader not in LOOPS:
        raise ValueError(f"loader must be one of {sorted(LOOPS)}, got {loader!r}")
    return LOOPS[loader](x, y, batch_size, device, seed)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> EpochStats:
    """Accuracy and mean loss of `model` on tensors already on the model's device."""
    model.eval()
    loss_sum = torch.zeros((), device=x.device, dtype=torch.float64)
    hits = torch.zeros((), device=x.device, dtype=torch.int64)
    for start in range(0, x.shape[0], EVAL_CHUNK_ROWS):
        chunk_loss, chunk_hits = summed_loss_and_hits(model(x[start : start + EVAL_CHUNK_ROWS]),
                                                      y[start : start + EVAL_CHUNK_ROWS])
        loss_sum += chunk_loss
        hits += chunk_hits
    n = max(int(x.shape[0]), 1)
    loss_total, hit_total = torch.stack([loss_sum, hits.double()]).tolist()
    return EpochStats(acc=hit_total / n, loss=loss_total / n, rows=int(x.shape[0]))
