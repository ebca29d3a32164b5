"""Train to a target accuracy, one epoch at a time, with time and energy per epoch.

    from trainables.training.run import train_to_accuracy
    result = train_to_accuracy(splits, TrainConfig(lr=1e-3, batch_size=128), StopRule())
    result.epochs, result.test_acc, result.time_s, result.energy_j

`TrainingRun` is the seed's loop cut at epoch boundaries so a Ray Tune trial can
report and checkpoint between epochs: each `run_epoch()` trains one epoch,
evaluates on validation (and, on the epoch the stop rule ends, on test), all
inside one energy window. Windows are contiguous and alternate: epoch, then
"between" (the caller's reporting and checkpointing), then the next epoch.
Time and energy to accuracy sum the epoch windows (what the seed measured);
the between windows are summed apart as overhead, so nothing goes unmeasured.
`train_to_accuracy` just loops it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from trainables.data.splits import Splits
from trainables.training.config import TrainConfig
from trainables.training.energy import NAN, EnergyMeter, EnergyWindow, counter_error_j
from trainables.training.gpus import TrialGpus, trial_gpus
from trainables.training.loops import EpochStats, evaluate, make_loop
from trainables.training.model import InstrumentNet
from trainables.training.optim import make_optimizer
from trainables.training.report import EpochReport
from trainables.training.stop import Status, StopRule


@dataclass(frozen=True)
class TrainResult:
    """The outcome of `train_to_accuracy`: the seed's (test_acc, test_loss, epochs) and more."""

    status: Status  # REACHED_TARGET, MAX_EPOCHS or DIVERGED
    epochs: int
    test_acc: float
    test_loss: float
    time_s: float
    energy_j: float
    energy_source: str
    history: list[EpochReport] = field(default_factory=list)

    @property
    def reached_target(self) -> bool:
        return self.status is Status.REACHED_TARGET

    @property
    def diverged(self) -> bool:
        return self.status is Status.DIVERGED


class TrainingRun:
    """One trial's model, optimizer, data on device and counters; advanced by `run_epoch`.

    It trains on `gpus.device` and measures with `meter` (default: `EnergyMeter(gpus)`); `gpus`
    defaults to this process's first CUDA device, if any (`trial_gpus()`), and a `device` given
    without `gpus` measures no GPU."""

    def __init__(
        self,
        splits: Splits,
        config: TrainConfig,
        rule: StopRule,
        device: torch.device | None = None,
        meter: EnergyMeter | None = None,
        gpus: TrialGpus | None = None,
    ) -> None:
        self.config, self.rule = config, rule
        if gpus is None:
            gpus = TrialGpus(device) if device is not None else trial_gpus(cpus=config.cpus)
        self.device = device or gpus.device
        torch.manual_seed(config.seed)
        self.model = InstrumentNet(
            splits.n_features, config.n_hidden, splits.n_classes, config.activation
        ).to(self.device)
        self.optimizer = self._new_optimizer()
        self.loop = make_loop(
            config.loader, splits.train_x, splits.train_y, config.batch_size, self.device, config.seed
        )
        self._initial_model = {k: v.clone() for k, v in self.model.state_dict().items()}
        as_x = lambda a: torch.as_tensor(a, dtype=torch.float32, device=self.device)  # noqa: E731
        as_y = lambda a: torch.as_tensor(a, dtype=torch.int64, device=self.device)  # noqa: E731
        self.val = (as_x(splits.val_x), as_y(splits.val_y))
        self.test = (as_x(splits.test_x), as_y(splits.test_y))
        self.meter = meter if meter is not None else EnergyMeter(gpus)
        self._reset_counters()
        self.gpu_uuids = [self.meter.gpu_uuid] if self.meter.gpu_uuid else []  # every GPU the trial ran on
        self.earlier_note = ""  # why energy was not measured in an attempt before a retry

    def _reset_counters(self) -> None:
        gpu = "gpu" in self.meter.source
        self.epoch = 0
        self.hits_in_a_row = 0
        self.time_s = 0.0
        self.gpu_energy_j = 0.0 if gpu else NAN
        self.cpu_energy_j = 0.0 if "cpu" in self.meter.source else NAN
        self.overhead_time_s = 0.0
        self.overhead_energy_j = 0.0 if gpu else NAN
        self.gap_variance = 0.0  # this attempt's sum over excluded windows of f(1 - f), f = frac(length / period)
        self.earlier: list[dict] = []  # the attempts before a retry (`_attempt`), from the checkpoint
        self.status = Status.RUNNING
        self._window: str | None = None  # which window is open: None, "epoch" or "between"

    def _new_optimizer(self) -> torch.optim.Optimizer:
        """The configured optimizer over the model (the fused kernel for the fast loop)."""
        return make_optimizer(self.config.optimizer, self.model.parameters(), self.config.lr,
                              fused=self.config.loader == "fast")

    def restart(self, rule: StopRule, meter) -> None:
        """Start the same work again from scratch: same seed, weights, shuffling; `rule`, `meter`.

        The data stay where they are on the device, so a replay repeats only the training."""
        self.rule, self.meter = rule, meter
        torch.manual_seed(self.config.seed)
        self.model.load_state_dict(self._initial_model)
        self.optimizer = self._new_optimizer()
        self.loop.generator.manual_seed(self.config.seed)
        self._reset_counters()

    @property
    def energy_j(self) -> float:
        """The headline energy: GPU joules of the epoch windows so far (NaN without a GPU)."""
        return self.gpu_energy_j

    @property
    def energy_err_j(self) -> float:
        """Uncertainty of `energy_j` from the counter's steps (`counter_error_j`); NaN without a GPU. After
        a retry, each attempt's (its own GPU's counter, its own two ends) in quadrature."""
        errors = [counter_error_j(a["gpu_j"], a["time_s"], a["idle_w"], a["period_s"], a["gap_variance"])
                  for a in self._attempts()]
        return errors[0] if len(errors) == 1 else math.sqrt(sum(e * e for e in errors))

    def _attempt(self) -> dict:
        """This attempt's share of the epoch windows (a retry starts a new one, maybe on another GPU) and
        its GPU's figures (NaN where none was probed)."""
        probe = self.meter.probe
        return {"time_s": self.time_s - sum(a["time_s"] for a in self.earlier),
                "gpu_j": self.gpu_energy_j - sum(a["gpu_j"] for a in self.earlier),
                "gap_variance": self.gap_variance,
                "idle_w": probe.idle_w if probe else NAN, "idle_err_w": probe.idle_err_w if probe else NAN,
                "max_power_w": probe.max_power_w if probe else NAN,
                "period_s": probe.update_period_s if probe else NAN}

    def _attempts(self) -> list[dict]:
        return [*self.earlier, self._attempt()]

    def _gpu_figure(self, key: str) -> float:
        """The GPU's `key` (idle_w, idle_err_w, max_power_w); after a retry, its mean over the attempts
        weighted by their time, so that x time_s sums each GPU's share (dynamic energy, --eta's cost)."""
        attempts = self._attempts()
        if len(attempts) == 1 or self.time_s <= 0:
            return attempts[-1][key]
        return sum(a[key] * a["time_s"] for a in attempts) / self.time_s

    @property
    def energy_note(self) -> str:
        """Why GPU energy is not measured (this attempt's or an earlier one's), or a caveat; "" if none."""
        moved = f"ran on {len(self.gpu_uuids)} GPUs (retried on another): its sums continue across them"
        return "; ".join(filter(None, [self._unmeasured_note, moved if len(self.gpu_uuids) > 1 else ""]))

    @property
    def _unmeasured_note(self) -> str:
        return "; ".join(dict.fromkeys(note for note in (self.earlier_note, self.meter.note) if note))

    @property
    def done(self) -> bool:
        return self.status is not Status.RUNNING

    def run_epoch(self) -> EpochReport:
        """Train one epoch, validate (and test when this epoch ends the run); measure it all."""
        if self.done:
            raise RuntimeError(f"training already ended ({self.status})")
        if self._window is None:
            self.meter.start()
        elif self._window == "between":
            between = self.meter.lap()
            self.overhead_time_s += between.time_s
            self.overhead_energy_j += between.gpu_j
            period_s = self.meter.update_period_s
            if math.isfinite(period_s):
                fraction = (between.time_s / period_s) % 1.0
                self.gap_variance += fraction * (1.0 - fraction)
        self._window = "epoch"
        self.epoch += 1
        train = self.loop.train_epoch(self.model, self.optimizer)
        val = evaluate(self.model, *self.val) if not train.diverged else EpochStats(NAN, NAN, 0)
        watched = val.acc if self.rule.metric == "val_acc" else val.loss
        self.hits_in_a_row, self.status = self.rule.after_epoch(self.epoch, self.hits_in_a_row, watched, train.diverged)
        test = None
        if not train.diverged and (self.done or self.rule.fixed_epochs):
            test = evaluate(self.model, *self.test)
        window = self.meter.stop() if self.done else self.meter.lap()
        self._window = None if self.done else "between"
        return self._record(train, val, test, window)

    def _record(
        self, train: EpochStats, val: EpochStats, test: EpochStats | None, window: EnergyWindow
    ) -> EpochReport:
        self.time_s += window.time_s
        self.gpu_energy_j += window.gpu_j  # NaN (not measured) stays NaN, never 0
        self.cpu_energy_j += window.cpu_j
        idle_w = self._gpu_figure("idle_w")
        return EpochReport(
            epoch=self.epoch,
            train_acc=train.acc,
            train_loss=train.loss,
            val_acc=val.acc,
            val_loss=val.loss,
            hits_in_a_row=self.hits_in_a_row,
            epoch_time_s=window.time_s,
            time_s=self.time_s,
            epoch_energy_j=window.gpu_j,
            energy_j=self.energy_j,
            energy_err_j=self.energy_err_j,
            energy_resolution_s=self.meter.update_period_s,
            energy_method="direct" if math.isfinite(self.energy_j) else "none",
            first_run_time_s=self.time_s,
            first_run_energy_j=self.energy_j,
            gpu_energy_j=self.gpu_energy_j,
            cpu_energy_j=self.cpu_energy_j,
            gpu_idle_w=idle_w,
            gpu_idle_err_w=self._gpu_figure("idle_err_w"),
            dynamic_energy_j=self.energy_j - idle_w * self.time_s,
            gpu_max_power_w=self._gpu_figure("max_power_w"),
            overhead_time_s=self.overhead_time_s,
            overhead_energy_j=self.overhead_energy_j,
            energy_source="gpu" if math.isfinite(self.energy_j) else "none",
            energy_note=self.energy_note,
            gpu_uuids=",".join(self.gpu_uuids),
            status=self.status.value,
            test_acc=test.acc if test else NAN,
            test_loss=test.loss if test else NAN,
        )

    def close(self) -> None:
        """Discard a window left open (a run abandoned before it ended)."""
        if self._window is not None:
            self.meter.close()
            self._window = None

    # -- checkpointing: everything needed to continue exactly where the run was.
    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "shuffle_rng": self.loop.generator.get_state(),
            "epoch": self.epoch,
            "hits_in_a_row": self.hits_in_a_row,
            "time_s": self.time_s,
            "gpu_energy_j": self.gpu_energy_j,
            "cpu_energy_j": self.cpu_energy_j,
            "overhead_time_s": self.overhead_time_s,
            "overhead_energy_j": self.overhead_energy_j,
            "gap_variance": sum(a["gap_variance"] for a in self._attempts()),
            "attempts": self._attempts(),
            "status": self.status.value,
            "gpu_uuids": list(self.gpu_uuids),
            "energy_note": self._unmeasured_note,
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.loop.generator.set_state(state["shuffle_rng"].cpu())
        self.epoch = int(state["epoch"])
        self.hits_in_a_row = int(state["hits_in_a_row"])
        self.time_s = float(state["time_s"])
        # Energy measured before the retry continues the sums where the meter still measures.
        self.gpu_energy_j = float(state["gpu_energy_j"]) if "gpu" in self.meter.source else NAN
        self.cpu_energy_j = float(state["cpu_energy_j"]) if "cpu" in self.meter.source else NAN
        self.overhead_time_s = float(state["overhead_time_s"])
        self.overhead_energy_j = float(state["overhead_energy_j"]) if "gpu" in self.meter.source else NAN
        # Each attempt so far, with its GPU's figures; this one starts afresh on its own GPU. A checkpoint
        # from before attempts were kept holds one, taken to be on this GPU (as such checkpoints were summed).
        self.earlier, self.gap_variance = [], float(state["gap_variance"])
        self.earlier = [{k: float(v) for k, v in a.items()} for a in state.get("attempts", [self._attempt()])]
        self.gap_variance = 0.0
        self.status = Status(state["status"])
        # A retry on another GPU probed that GPU (its meter's); the row lists every GPU it ran on.
        self.gpu_uuids = list(dict.fromkeys([*state.get("gpu_uuids", []), *self.gpu_uuids]))
        self.earlier_note = state.get("energy_note", "")


def train_to_accuracy(
    splits: Splits,
    config: TrainConfig,
    rule: StopRule,
    device: torch.device | None = None,
    meter: EnergyMeter | None = None,
    replay_budget_s: float = 0.0,
) -> TrainResult:
    """The seed's experiment: train until `rule` stops it, then report test accuracy.

    With `rule.threshold` set: stop when validation accuracy has been >= threshold
    for `patience` epochs in a row, or at `max_epochs`. With `threshold=None`
    (fixed-epochs mode): train `max_epochs` epochs, testing after each one; the
    history then holds per-epoch train/test accuracy and loss. A non-finite loss
    ends training at once with status "diverged" (never an exception). With
    `replay_budget_s` > 0, a run too short for the GPU counter is replayed
    (`trainables.training.replay`) and the last history entry carries the means.
    """
    from trainables.training.replay import settle_energy

    run = TrainingRun(splits, config, rule, device=device, meter=meter)
    history = []
    while not run.done:
        history.append(run.run_epoch())
    history[-1] = last = settle_energy(run, history[-1], replay_budget_s)
    return TrainResult(
        status=Status(last.status),
        epochs=last.epoch,
        test_acc=last.test_acc,
        test_loss=last.test_loss,
        time_s=last.time_s,
        energy_j=last.energy_j,
        energy_source=last.energy_source,
        history=history,
    )
