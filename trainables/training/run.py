"""Train to a target accuracy, one epoch at a time, with the run's time and energy.

    from trainables.training.run import train_to_accuracy
    result = train_to_accuracy(splits, TrainConfig(lr=1e-3, batch_size=128), StopRule())
    result.epochs, result.test_acc, result.time_s, result.energy_j

`TrainingRun` is the seed's loop cut at epoch boundaries so a Ray Tune trial can
report and checkpoint between epochs: each `run_epoch()` trains one epoch and
evaluates on validation (and, on the epoch the stop rule ends, on test).

It is measured as the seed measured it, one window around training to accuracy, read only
at its boundaries (an NVML read costs as much as an epoch of this model on an H200): the
window starts on a GPU counter update, waited for right before the first epoch, and ends
on the first update after the last epoch; where the caller reports (`report_point`), the
counter is read for the energy so far, and the time until the next epoch (reporting,
checkpointing) is overhead, outside the window. The window's GPU joules are the counter's
between its two updates less the GPU's idle power (`EnergyMeter.probe`) over the waits and
the overhead, when the GPU idles. Time to accuracy is the epochs' seconds (with the
trial's bookkeeping between epochs that did not report, microseconds).
`train_to_accuracy` just loops it.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field, replace

import torch

from trainables.data.splits import Splits
from trainables.training.config import TrainConfig
from trainables.training.energy import MIN_TAIL_S, NAN, EnergyMeter, counter_error_j, step_error_j, update_error_j
from trainables.training.gpu_counter import CounterUpdate
from trainables.training.gpus import TrialGpus, trial_gpus
from trainables.training.loops import EpochStats, evaluate, make_loop
from trainables.training.model import InstrumentNet
from trainables.training.optim import load_state, make_optimizer, reset_state
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


@dataclass
class _Window:
    """The open attempt's window: where it started, what it has summed, what was last read."""

    start: CounterUpdate | None  # the GPU counter update it started on (None: no GPU measured)
    mark_s: float  # perf_counter: the end of the last epoch, or where the next began to count
    cpu_mark_mj: float  # the CPU counter at mark_s (a segment's start)
    time_s: float = 0.0  # its epochs' seconds
    idle_s: float = 0.0  # seconds inside the GPU's span when the GPU idled: the wait before the first epoch, overhead
    cpu_j: float = 0.0
    between_since_s: float = NAN  # perf_counter: where the overhead being timed began (at a report point)
    gpu_j: float = NAN  # GPU joules so far, as last read (NaN between reads)
    err_j: float = NAN
    closed: bool = False  # the run ended: the window ended on a counter update


class TrainingRun:
    """One trial's model, optimizer, data on device and counters; advanced by `run_epoch`.

    It trains on `gpus.device` and measures with `meter` (default: `EnergyMeter(gpus)`, made before the
    model is on the GPU, so it probes the GPU without a CUDA context too); `gpus` defaults to this
    process's first CUDA device, if any (`trial_gpus()`), and a `device` given without `gpus` measures no
    GPU. What every epoch reuses (on CUDA: the epoch's graph) is built here, once (`EpochLoop.build`)."""

    # Tests only (trainables.tuning.trial.EPOCH_PACE_ENV): each epoch's window lasts at least this long, a
    # sleep after its training and validation, so outcomes decided by time hold on machines of any speed.
    min_epoch_s = 0.0

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
        self.meter = meter if meter is not None else EnergyMeter(gpus)
        torch.manual_seed(config.seed)
        self.model = InstrumentNet(
            splits.n_features, config.n_hidden, splits.n_classes, config.activation
        ).to(self.device)
        self.optimizer = make_optimizer(config.optimizer, self.model.parameters(), config.lr,
                                        fused=config.loader == "fast")
        self.loop = make_loop(
            config.loader, splits.train_x, splits.train_y, config.batch_size, self.device, config.seed
        )
        self._initial_model = {k: v.clone() for k, v in self.model.state_dict().items()}
        as_x = lambda a: torch.as_tensor(a, dtype=torch.float32, device=self.device)  # noqa: E731
        as_y = lambda a: torch.as_tensor(a, dtype=torch.int64, device=self.device)  # noqa: E731
        self.val = (as_x(splits.val_x), as_y(splits.val_y))
        self.test = (as_x(splits.test_x), as_y(splits.test_y))
        self.meter.probe_context()  # the model is on the GPU: the idle power its windows subtract
        if self.loop.build(self.model, self.optimizer):
            self.restart()
        self._reset_counters()
        self.gpu_uuids = [self.meter.gpu_uuid] if self.meter.gpu_uuid else []  # every GPU the trial ran on
        self.earlier_note = ""  # why energy was not measured in an attempt before a retry

    def _reset_counters(self) -> None:
        self.epoch = 0
        self.hits_in_a_row = 0
        self.time_s = 0.0  # the epochs' seconds, over every attempt
        self.cpu_energy_j = 0.0 if self.meter.cpu_indices else NAN
        self.overhead_time_s = 0.0
        self.earlier: list[dict] = []  # the attempts before a retry (`_attempt`), from the checkpoint
        self.status = Status.RUNNING
        self.end_update: CounterUpdate | None = None  # the GPU counter update the run's window ended on
        self._window: _Window | None = None
        self._between = False  # the caller reports between two epochs: overhead, outside the window

    def restart(self) -> None:
        """Back to the start of the same work, in place: the initial weights, a fresh optimizer's state and
        the seed's shuffling in the same tensors, so what the loop built on them (a CUDA graph) replays."""
        torch.manual_seed(self.config.seed)
        with torch.no_grad():
            for name, tensor in self.model.state_dict().items():
                tensor.copy_(self._initial_model[name])
        reset_state(self.optimizer)
        self.loop.generator.manual_seed(self.config.seed)

    def replay(self, rule: StopRule) -> tuple[int, Status]:
        """The same work again from its start, back to back and unmeasured (a replay window around it is
        the caller's): (epochs, status) where `rule` stopped it. The run's own figures stay."""
        self.restart()
        epoch, hits, status = 0, 0, Status.RUNNING
        while status is Status.RUNNING:
            epoch += 1
            _, _, _, hits, status = self._train_epoch(epoch, hits, rule)
        return epoch, status

    @property
    def idle_w(self) -> float:
        """The idle power this attempt's windows subtract (NaN without a probed GPU)."""
        return self.meter.probe.idle_w if self.meter.probe else NAN

    @property
    def idle_s(self) -> float:
        """Seconds this attempt's window holds the GPU idling (waits at its ends, overhead)."""
        return self._window.idle_s if self._window else 0.0

    @property
    def energy_j(self) -> float:
        """GPU joules of the run so far, as last read (NaN between reads, and without a GPU)."""
        return sum(a["gpu_j"] for a in self._attempts())

    @property
    def energy_err_j(self) -> float:
        """Uncertainty of `energy_j`: each attempt's (its own GPU's counter, its own window) in quadrature."""
        return math.sqrt(sum(_attempt_error_j(a) ** 2 for a in self._attempts()))

    def _attempt(self) -> dict:
        """This attempt's share of the run (a retry starts a new one, maybe on another GPU) and its GPU's
        figures (NaN where none was probed)."""
        probe, bare, window = self.meter.probe, self.meter.bare_probe, self._window
        if window is None:  # not begun: nothing measured yet
            gpu_j = err_j = 0.0 if self.meter.gpu_measured else NAN
        else:
            gpu_j, err_j = window.gpu_j, window.err_j
        return {"time_s": self.time_s - sum(a["time_s"] for a in self.earlier), "gpu_j": gpu_j, "err_j": err_j,
                "idle_w": probe.idle_w if probe else NAN, "idle_err_w": probe.idle_err_w if probe else NAN,
                "idle_no_context_w": bare.idle_w if bare and bare.contexts <= 0 else NAN,  # -1: NVML cannot say
                "max_power_w": probe.max_power_w if probe else NAN,
                "period_s": probe.update_period_s if probe else NAN}

    def _attempts(self) -> list[dict]:
        return [*self.earlier, self._attempt()]

    def _gpu_figure(self, key: str) -> float:
        """The GPU's `key` (idle_w, idle_err_w, ...); after a retry, its mean over the attempts weighted by
        their time, so that x time_s sums each GPU's share (dynamic energy, --eta's cost)."""
        attempts = self._attempts()
        if len(attempts) == 1 or self.time_s <= 0:
            return attempts[-1].get(key, NAN)
        return sum(a.get(key, NAN) * a["time_s"] for a in attempts) / self.time_s

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

    def run_epoch(self, report_point=False) -> EpochReport:
        """Train one epoch, validate (and test when this epoch ends the run); time it, and read the energy
        counters where the run ends or `report_point` says the caller reports now (a bool, or called with
        whether this epoch ends the run)."""
        if self.done:
            raise RuntimeError(f"training already ended ({self.status})")
        if self._window is None:
            self._open_window()
        elif self._between:
            self._end_overhead()
        self.epoch += 1
        train, val, test, self.hits_in_a_row, self.status = self._train_epoch(self.epoch, self.hits_in_a_row,
                                                                              self.rule)
        window = self._window
        now = time.perf_counter()
        if now - window.mark_s < self.min_epoch_s:
            time.sleep(self.min_epoch_s - (now - window.mark_s))
            now = time.perf_counter()
        epoch_time_s = now - window.mark_s
        window.mark_s = now
        window.time_s += epoch_time_s
        self.time_s += epoch_time_s
        reporting = report_point(self.done) if callable(report_point) else report_point
        if self.done:
            self._close_window(now)
        elif reporting:
            self._read_so_far(now)
        else:
            window.gpu_j = window.err_j = NAN  # not read at this epoch
        return self._record(train, val, test, epoch_time_s)

    def _train_epoch(self, epoch: int, hits: int, rule: StopRule):
        """One epoch's training, validation and (where it ends the run, or in fixed-epochs mode) test:
        (train, val, test or None, hits in a row, status)."""
        train = self.loop.train_epoch(self.model, self.optimizer)
        val = evaluate(self.model, *self.val) if not train.diverged else EpochStats(NAN, NAN, 0)
        watched = val.acc if rule.metric == "val_acc" else val.loss
        hits, status = rule.after_epoch(epoch, hits, watched, train.diverged)
        test = None
        if not train.diverged and (status is not Status.RUNNING or rule.fixed_epochs):
            test = evaluate(self.model, *self.test)
        return train, val, test, hits, status

    def pause(self) -> None:
        """The caller holds the run between epochs (the tests' epoch gate): until the next epoch, overhead,
        as after a report point (the GPU idles, outside the epochs' time)."""
        if self._window is not None and not self._between and not self.done:
            self._window.between_since_s, self._between = time.perf_counter(), True

    # -- the window: opened on a counter update, read at report points, closed on one
    def _open_window(self) -> None:
        start = self.meter.gpu_update()
        cpu_mj = self.meter.read_cpu()
        now = time.perf_counter()
        self._window = _Window(start=start, mark_s=now, cpu_mark_mj=cpu_mj,
                               idle_s=now - start.at_s if start else 0.0)

    def _end_overhead(self) -> None:
        """The caller's reporting ended: the window's next segment begins (after the CPU counters' read: the
        GPU idles through the overhead and the reads, which are measurement, not overhead)."""
        window = self._window
        self.overhead_time_s += time.perf_counter() - window.between_since_s
        window.cpu_mark_mj = self.meter.read_cpu()
        window.mark_s = time.perf_counter()
        window.idle_s += window.mark_s - window.between_since_s
        self._between = False

    def _read_so_far(self, now: float) -> None:
        """A report point: the energy so far (the GPU counter's last update: up to a step behind), and the
        overhead begins."""
        window = self._window
        self._add_cpu(self.meter.read_cpu())
        mj = self.meter.read_gpu()
        window.between_since_s, self._between = time.perf_counter(), True
        window.idle_s += window.between_since_s - now  # the reads: the GPU idles
        if window.start is None or not math.isfinite(mj):
            window.gpu_j = window.err_j = NAN
            return
        window.gpu_j = (mj - window.start.mj) / 1000.0 - self.idle_w * window.idle_s
        window.err_j = self._window_error_j(window.start.half_width_s) + step_error_j(
            window.gpu_j, window.time_s, self.idle_w, self.meter.update_period_s)

    def _close_window(self, now: float) -> None:
        """The run's last epoch ended: its window ends on the first counter update after it."""
        window = self._window
        self._add_cpu(self.meter.read_cpu())
        end = self.meter.gpu_update(not_before_s=now + MIN_TAIL_S)
        self.end_update = end
        if window.start is None or end is None:
            window.gpu_j = window.err_j = NAN
        else:
            window.idle_s += end.at_s - now
            window.gpu_j = (end.mj - window.start.mj) / 1000.0 - self.idle_w * window.idle_s
            window.err_j = self._window_error_j(window.start.half_width_s, end.half_width_s)
        window.closed = True

    def _add_cpu(self, cpu_mj: float) -> None:
        window = self._window
        joules = (cpu_mj - window.cpu_mark_mj) / 1000.0
        window.cpu_j += joules
        self.cpu_energy_j += joules
        window.cpu_mark_mj = cpu_mj

    def _window_error_j(self, *half_widths_s: float) -> float:
        """The updates' instants (the GPU idling around them) and the idle power over the idle seconds."""
        probe = self.meter.probe
        idle_err_w = probe.idle_err_w if probe and math.isfinite(probe.idle_err_w) else 0.0
        return update_error_j(self.idle_w, *half_widths_s) + idle_err_w * self._window.idle_s

    def _record(self, train: EpochStats, val: EpochStats, test: EpochStats | None, epoch_time_s: float
                ) -> EpochReport:
        idle_w, energy_j = self._gpu_figure("idle_w"), self.energy_j
        read = self._window.closed or self._between
        measured = math.isfinite(energy_j) if read else self.meter.gpu_measured
        energy_err_j = self.energy_err_j if math.isfinite(energy_j) else NAN
        return EpochReport(
            epoch=self.epoch,
            train_acc=train.acc,
            train_loss=train.loss,
            val_acc=val.acc,
            val_loss=val.loss,
            hits_in_a_row=self.hits_in_a_row,
            epoch_time_s=epoch_time_s,
            time_s=self.time_s,
            energy_j=energy_j,
            energy_err_j=energy_err_j,
            energy_resolution_s=self.meter.update_period_s,
            energy_method="direct" if measured else "none",
            first_run_time_s=self.time_s,
            first_run_energy_j=energy_j,
            first_run_energy_err_j=energy_err_j,
            first_run_cpu_energy_j=self.cpu_energy_j if read else NAN,
            gpu_idle_w=idle_w,
            gpu_idle_err_w=self._gpu_figure("idle_err_w"),
            gpu_idle_no_context_w=self._gpu_figure("idle_no_context_w"),
            dynamic_energy_j=energy_j - idle_w * self.time_s,
            gpu_max_power_w=self._gpu_figure("max_power_w"),
            overhead_time_s=self.overhead_time_s,
            measurement_time_s=self.meter.spent_s,
            energy_source="gpu" if measured else "none",
            energy_note=self.energy_note,
            gpu_uuids=",".join(self.gpu_uuids),
            status=self.status.value,
            test_acc=test.acc if test else NAN,
            test_loss=test.loss if test else NAN,
        )

    def close(self) -> None:
        """Discard a window left open (a run abandoned before it ended)."""
        if self._window is not None and not self._window.closed:
            self._window, self._between = None, False

    # -- checkpointing: everything needed to continue exactly where the run was.
    def state_dict(self) -> dict:
        """The run as it stands, copied (a replay reuses the run's tensors: `restart`): take it at a report
        point or after the run ended, where the energy so far was read (elsewhere this attempt's GPU joules
        are NaN: not read)."""
        return {
            "model": copy.deepcopy(self.model.state_dict()),
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "shuffle_rng": self.loop.generator.get_state(),
            "epoch": self.epoch,
            "hits_in_a_row": self.hits_in_a_row,
            "time_s": self.time_s,
            "cpu_energy_j": self.cpu_energy_j,
            "overhead_time_s": self.overhead_time_s,
            "attempts": self._attempts(),
            "status": self.status.value,
            "gpu_uuids": list(self.gpu_uuids),
            "energy_note": self._unmeasured_note,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state`, copying into the run's tensors (what the loop built on them stays)."""
        with torch.no_grad():
            for name, tensor in self.model.state_dict().items():
                tensor.copy_(state["model"][name])
        load_state(self.optimizer, state["optimizer"])
        self.loop.generator.set_state(state["shuffle_rng"].cpu())
        self.epoch = int(state["epoch"])
        self.hits_in_a_row = int(state["hits_in_a_row"])
        self.time_s = float(state["time_s"])
        self.cpu_energy_j = float(state["cpu_energy_j"]) if self.meter.cpu_indices else NAN
        self.overhead_time_s = float(state["overhead_time_s"])
        # Each attempt so far, with its GPU's figures; this one starts afresh on its own GPU. A checkpoint
        # from before attempts were kept holds one, taken to be on this GPU (as such checkpoints were summed).
        legacy = {**{k: v for k, v in self._attempt().items() if k != "err_j"}, "time_s": self.time_s,
                  "gpu_j": float(state.get("gpu_energy_j", NAN)), "gap_variance": float(state.get("gap_variance", 0.0))}
        self.earlier = [{k: float(v) for k, v in a.items()} for a in state.get("attempts", [legacy])]
        if not self.meter.gpu_measured:  # energy measured before the retry does not make this one measured
            self.earlier = [{**a, "gpu_j": NAN} for a in self.earlier]
        self.status = Status(state["status"])
        # A retry on another GPU probed that GPU (its meter's); the row lists every GPU it ran on.
        self.gpu_uuids = list(dict.fromkeys([*state.get("gpu_uuids", []), *self.gpu_uuids]))
        self.earlier_note = state.get("energy_note", "")


def _attempt_error_j(attempt: dict) -> float:
    """An attempt's error: as its window measured it, or, from a checkpoint written before windows
    started on counter updates, the error of its summed windows."""
    if "err_j" in attempt:
        return attempt["err_j"]
    return counter_error_j(attempt["gpu_j"], attempt["time_s"], attempt["idle_w"], attempt["period_s"],
                           attempt["gap_variance"])


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
    ends training at once with status "diverged" (never an exception). Energy is read
    at the start and the end only (the history's other epochs: NaN). With
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
