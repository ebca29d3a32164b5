"""Energy over real Zeus: on this machine no GPU and no RAPL, so energy is NaN, never 0; and the GPU
path on a fake NVML counter modelled on the measured H200 (tests/fake_nvml: FAKE_NVML_PROFILE=H200),
whose true joules over any window are known (fake_node's model), checked against what trials report.

Only NVML's device calls are replaced (tests/fake_nvml/pynvml.py), and torch.cuda shows the same GPU
(tests/fake_nvml/sitecustomize.py); Zeus's real code runs on top. Each scenario runs in a fresh
interpreter (Zeus caches the GPUs it found), two at a time, all in one fixture; each test reads what
its scenario printed. (tests/test_gpus.py: which GPU.)
"""

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from processes import python_path
from trainables.training.energy import EnergyMeter, energy_source
from trainables.training.replay import ROUNDS
from trainables.training.report import EpochReport

FAKE_NVML = Path(__file__).with_name("fake_nvml")
POWER_W = 250.0
PARALLEL = 2  # scenarios at once: this machine's cores


def _has_measurable_energy() -> bool:
    return EnergyMeter().source != "none"


@pytest.mark.skipif(_has_measurable_energy(), reason="this machine measures energy")
def test_without_gpu_or_rapl_energy_is_missing_and_time_is_measured(small_splits):
    from trainables.training.config import TrainConfig
    from trainables.training.run import train_to_accuracy
    from trainables.training.stop import StopRule

    meter = EnergyMeter()
    assert meter.source == "none" and meter.gpu_indices == [] and meter.bare_probe is None
    assert math.isnan(meter.read_gpu()) and math.isnan(meter.read_cpu()) and meter.gpu_update() is None
    result = train_to_accuracy(small_splits, TrainConfig(batch_size=64, n_hidden=8),
                               StopRule(threshold=None, max_epochs=2), replay_budget_s=5.0)
    last = result.history[-1]
    assert last.energy_source == "none" and last.energy_method == "none" and not last.energy_uncertain
    assert math.isnan(last.energy_j) and math.isnan(last.first_run_cpu_energy_j) and last.time_s > 0
    assert last.first_run_time_s == pytest.approx(sum(r.epoch_time_s for r in result.history))


def test_energy_source_names_what_was_measured():
    assert [energy_source(g, c) for g, c in [(1, 1), (1, 0), (0, 1), (0, 0)]] == ["gpu+cpu", "gpu", "cpu", "none"]


def test_a_window_below_idle_power_beyond_its_errors_is_flagged_with_its_reason():
    """The H200's trial at lr 0.1: 89.7 J over its first run of 1.03 s is 87 W, against 124 W idle;
    the same run at 128 W is not flagged, nor a run below idle within its error bar."""
    h200 = dict(energy_method="replay", energy_j=86.8, time_s=0.641, energy_err_j=3.45, replays=4,
                first_run_energy_j=89.7, first_run_time_s=1.03, gpu_idle_w=124.0, gpu_idle_err_w=0.25)
    caveats = EpochReport(**h200).energy_caveats()
    assert caveats == ["first run: 87 W over 1.03 s, below the GPU's idle 124 W beyond the error bars"]
    assert EpochReport(**{**h200, "first_run_energy_j": 131.8}).energy_caveats() == []
    within = {**h200, "first_run_energy_j": 125.0, "first_run_energy_err_j": 4.0}  # 121 W, 124 W - 3 W
    assert EpochReport(**within).energy_caveats() == []
    drifted = {**within, "gpu_idle_after_w": 119.0}  # the idle floor drifted by 5 W: wider still
    assert EpochReport(**drifted).energy_caveats() == []
    coarse = EpochReport(energy_method="direct", energy_j=20.0, energy_err_j=1.5, time_s=0.1, first_run_energy_j=20.0,
                         first_run_time_s=0.1, gpu_idle_w=124.0).energy_caveats()
    assert coarse == ["energy error ±1.5 J is above 5% of 20 J (the counter's steps)"]
    assert EpochReport().energy_caveats() == []  # nothing measured: nothing to flag


# -- The GPU path on the fake NVML ----------------------------------------------------------------------
def fake_gpu_env(**env: str) -> dict:
    # One thread, as a trial's CPU share gets (and Ray's workers): the fake CUDA device is the CPU.
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CUDA_", "FAKE_"))}
    return {**clean, "PYTHONPATH": python_path(FAKE_NVML), "OMP_NUM_THREADS": "1", **env}


PRELUDE = """
    import json, math, sys, time
    sys.path.insert(0, "tests")
    import fake_node, pynvml
    from conftest import blobs
    from trainables.data.splits import prepare_splits
    from trainables.training.config import TrainConfig
    from trainables.training.replay import settle_energy
    from trainables.training.run import TrainingRun
    from trainables.training.stop import StopRule
    GPU = fake_node.DEVICES[0]
    WALL = time.time() - time.perf_counter()  # perf_counter seconds -> the fake's wall clock
    READS = []  # (wall clock, seconds) of every energy-counter read
    _read = pynvml.nvmlDeviceGetTotalEnergyConsumption

    def read(handle):
        began = time.time()
        value = _read(handle)
        READS.append((began, time.time() - began))
        return value

    pynvml.nvmlDeviceGetTotalEnergyConsumption = read
    out = {}

    def splits_of(rows):
        x, y = blobs(rows, seed=0)
        return prepare_splits(x, y, x[:200], y[:200], 0.2, 0)

    def trial(splits, config, epochs, report_at=(), gap_s=0.02, budget_s=10.0, state=None, checkpoint_at=None):
        \"\"\"A trial as the Tune trial runs it: report points at the epochs `report_at` (and the last), where
        the trial reports for `gap_s`; then its energy settled. The model's true joules beside what it reports.\"\"\"
        run = TrainingRun(splits, config, StopRule(threshold=None, max_epochs=epochs))
        if state is not None:
            run.load_state_dict(state)
        busy, saved = fake_node.BUSY, None
        first_busy, reads_before = len(busy.starts), len(READS)
        while not run.done:
            report = run.run_epoch(report_point=lambda last: last or run.epoch in report_at)
            if run.epoch == checkpoint_at:
                saved = run.state_dict()
            if not run.done and run.epoch in report_at:
                time.sleep(gap_s)  # reporting and checkpointing
        run_busy = (busy.starts[first_busy], busy.ends[-1])
        reads_in_run = [s for t, s in READS[reads_before:] if run_busy[0] <= t <= run_busy[1]]
        replay_busy = len(busy.starts)
        settled = settle_energy(run, report, budget_s)
        mid = sum(run_busy) / 2
        idle_w = GPU.idle_w + GPU.drift_w_per_s * (mid - fake_node.DRIFT_T0_S)
        # A retry's sums continue from the checkpoint's: its attempt as it measured it, then this one's truth:
        # its epochs' span, less its seconds outside the run's window (where the trial reported, and read the
        # counter there: the GPU idled).
        earlier = state or {"attempts": [], "time_s": 0.0, "overhead_time_s": 0.0}
        span_s, attempt_s = run_busy[1] - run_busy[0], settled.first_run_time_s - earlier["time_s"]
        true_first_j = sum(a["gpu_j"] for a in earlier["attempts"]) + GPU.true_energy_j(run_busy[1]) - \
            GPU.true_energy_j(run_busy[0]) - idle_w * (span_s - attempt_s)
        epochs_s = sum(e - s for s, e in zip(busy.starts[first_busy:replay_busy], busy.ends[first_busy:replay_busy]))
        now = time.time()  # just after the idle power was measured again
        row = {"report": settled.to_dict(), "true_first_run_j": true_first_j,
               "true_idle_after_w": GPU.idle_w + GPU.drift_w_per_s * (now - fake_node.DRIFT_T0_S),
               "attempt_s": attempt_s, "epochs_s": epochs_s,  # the run's seconds, and its epochs' alone
               "span_less_reporting_s": span_s - (settled.overhead_time_s - earlier["overhead_time_s"])
               - sum(reads_in_run),
               "reads_in_run": len(reads_in_run), "builds": run.loop.epoch_graph.builds,
               "true_idle_w": idle_w, "period_s": fake_node.UPDATE_PERIOD_S, "state": saved}
        if settled.replays:  # the replays' epochs draw load_w, the rest of their seconds idle_w
            a, b = busy.starts[replay_busy], busy.ends[-1]
            busy_s = sum(e - s for s, e in zip(busy.starts[replay_busy:], busy.ends[replay_busy:]))
            true_j = idle_w * settled.replays * settled.time_s + (GPU.load_w - GPU.idle_w) * busy_s
            row.update(true_replay_j=true_j / settled.replays, replay_busy_s=busy_s, replay_work_span_s=b - a,
                       replay_work_start=a, replay_work_end=b,
                       updates=[[fake_node.update_s(k), GPU.true_energy_j(fake_node.update_s(k))]
                                for k in range(math.floor(a / fake_node.UPDATE_PERIOD_S) - 2,
                                               math.ceil(b / fake_node.UPDATE_PERIOD_S) + 4)])
        return row
"""
END = """
    for row in out.values():
        row.pop("state", None)
    print(json.dumps(out))
"""

# On the modelled H200: a long trial (its own run stands), and the long one retried from its checkpoint
# in a new run, as Ray retries a trial.
H200 = """
    long_splits, long_config = splits_of(12000), TrainConfig(batch_size=64, n_hidden=16)
    out["long"] = trial(long_splits, long_config, epochs=8, report_at=(2, 5), checkpoint_at=5)
    out["retry"] = trial(long_splits, long_config, epochs=8, report_at=(6,), state=out["long"]["state"])
"""
# A short trial: with counter reads of 20 ms (a slow driver) its own window is off by more than 5% of its
# joules however fast this machine runs it, so it is replayed.
SHORT = """
    out["short"] = trial(splits_of(600), TrainConfig(batch_size=256, n_hidden=16), epochs=2)
"""
# A GPU whose idle power falls fast after it was probed (as the H200's first runs read 87 W against 124 W).
FALLING = """
    fake_node.DRIFT_T0_S = time.time()  # before any counter read: its idle falls from here
    out["falling"] = trial(splits_of(12000), TrainConfig(batch_size=64, n_hidden=16), epochs=80, budget_s=0.0)
"""
SCENARIOS = {
    "h200": (H200, fake_gpu_env(FAKE_NVML_PROFILE="H200")),
    "short": (SHORT, fake_gpu_env(FAKE_NVML_PROFILE="H200", FAKE_NVML_READ_S="0.02")),
    "falling": (FALLING, fake_gpu_env(FAKE_NVML_PROFILE="H200", FAKE_NVML_LOAD_W="124",
                                      FAKE_NVML_DRIFT_W_PER_S="-10")),
}


@pytest.fixture(scope="module")
def results() -> dict:
    """Every scenario's printed results (or the scenario's error), PARALLEL at a time."""
    waiting, running, out = list(SCENARIOS.items()), {}, {}
    while waiting or running:
        while waiting and len(running) < PARALLEL:
            name, (code, env) = waiting.pop(0)
            code = textwrap.dedent(PRELUDE) + textwrap.dedent(code) + textwrap.dedent(END)
            running[name] = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                                             stderr=subprocess.PIPE, text=True)
        name, proc = next(iter(running.items()))
        stdout, stderr = proc.communicate(timeout=300)
        del running[name]
        if proc.returncode == 0:
            out.update(json.loads(stdout.strip().splitlines()[-1]))
        else:
            out.setdefault("failed", []).append(f"scenario {name} failed:\n{stderr[-3000:]}")
    return out


def result(results: dict, name: str) -> dict:
    if name not in results:
        raise AssertionError("\n".join(results.get("failed", [f"{name}: not printed"])))
    row = results[name]
    return {**row, "report": EpochReport.from_dict(row["report"])}


def test_every_energy_column_has_a_time_column_over_the_same_window(results):
    """The headline, the first run and the replays: each figure's joules are the model's true joules over
    the seconds beside it (within its error bar), and its seconds are that window's."""
    for name in ("short", "long", "retry"):
        got = result(results, name)
        r = got["report"]
        assert r.energy_source == "gpu" and r.energy_note == "" and not r.energy_uncertain, (name, r)
        # The run's seconds: its epochs and the bookkeeping between them, not its reporting nor its reads.
        assert got["epochs_s"] <= got["attempt_s"] <= got["span_less_reporting_s"] + 0.01, (name, got)
        assert abs(r.first_run_energy_j - got["true_first_run_j"]) <= r.first_run_energy_err_j, (name, r)
        assert r.dynamic_energy_j == pytest.approx(r.energy_j - r.gpu_idle_w * r.time_s)
        if r.energy_method == "direct":
            assert (r.time_s, r.energy_j, r.energy_err_j) == (r.first_run_time_s, r.first_run_energy_j,
                                                               r.first_run_energy_err_j)
            assert r.replays == 0 and math.isnan(r.replay_time_s) and math.isnan(r.replay_energy_j)
        else:
            # The replays' seconds: their epochs and restarts (a few ms each), not the waits between rounds of
            # them (a counter update's, 10 ms and more).
            assert got["replay_busy_s"] <= r.replays * r.time_s <= got["replay_work_span_s"] + 0.005 * r.replays
            assert abs(r.energy_j - got["true_replay_j"]) <= r.energy_err_j, (name, r, got["true_replay_j"])
        assert r.energy_err_j <= 0.05 * r.energy_j
    assert result(results, "short")["report"].energy_method == "replay"
    assert result(results, "long")["report"].energy_method == "direct"


def test_replays_start_and_end_on_counter_updates_and_take_a_few_periods(results):
    """The replay window's joules are the counter's between two of its updates, to the millijoule: the
    update the run's window ended on, before the first replay, and the first after the last; its seconds
    are theirs, to within the reads that saw them. It lasts the replays and about a period a round (rounds
    of replays in one window: 3 at most), not 25 periods."""
    got = result(results, "short")
    r, updates, period_s = got["report"], got["updates"], got["period_s"]
    before = [u for u in updates if u[0] <= got["replay_work_start"]]
    after = [u for u in updates if u[0] >= got["replay_work_end"]]
    pairs = [(a, b) for a in before[-2:] for b in after[:2] if abs(b[1] - a[1] - r.replay_energy_j) < 0.002]
    assert len(pairs) == 1, (r.replay_energy_j, before[-2:], after[:2])
    (a, b), = pairs
    assert r.replay_time_s == pytest.approx(b[0] - a[0], abs=0.045)  # each update seen within two 20 ms reads
    assert r.replays >= 2 and r.replay_time_s - r.replays * r.time_s < (ROUNDS + 0.5) * period_s + ROUNDS * 0.05


def test_the_counter_is_read_at_report_points_alone_while_epochs_run(results):
    """Between the first epoch's start and the last epoch's end, one read per report point (the last
    epoch's window ends on an update after it): not two reads an epoch, 3.9 ms each on an H200."""
    assert result(results, "long")["reads_in_run"] == 2  # report points after epochs 2 and 5 of 8
    assert result(results, "short")["reads_in_run"] == 0


def test_replays_and_a_retry_reuse_the_epoch_steps_built_once_per_trial(results):
    """The loop's per-trial build (on CUDA: a warm-up epoch and the captured graph; here, on the CPU, the
    prepared step functions) happens once per run: its replays restart in place and reuse it, and a run
    continued from a checkpoint builds once and its replays reuse it too."""
    short, retry = result(results, "short"), result(results, "retry")
    assert short["report"].replays >= 2 and short["builds"] == 1
    assert retry["builds"] == 1 and retry["report"].epoch == 8


def test_idle_is_probed_without_a_context_with_one_and_after_and_its_drift_widens_the_error(results):
    """80 W before the process opens a CUDA context, 124 W with it (the floor subtracted), and again
    after the run. A GPU whose idle falls by 10 W a second from its probe on: the drift, measured after
    the run, widens the error bars to cover the truth, and explains a run below the probed idle (not
    flagged: the floor is not known better than that)."""
    got = result(results, "long")
    r = got["report"]
    assert abs(r.gpu_idle_no_context_w - 80.0) <= 2 * r.gpu_idle_err_w + 0.5
    assert abs(r.gpu_idle_w - got["true_idle_w"]) <= r.gpu_idle_err_w + 0.5 and r.gpu_idle_err_w < 0.2 * r.gpu_idle_w
    # One period's mean, off by the reads that saw its ends: as the probe's error over its 5 periods, 5 times.
    assert abs(r.gpu_idle_after_w - got["true_idle_after_w"]) <= 6 * r.gpu_idle_err_w + 2
    falling = result(results, "falling")
    f = falling["report"]
    assert abs(f.gpu_idle_after_w - falling["true_idle_after_w"]) <= 6 * f.gpu_idle_err_w + 2
    assert f.first_run_energy_j < f.gpu_idle_w * f.first_run_time_s  # below the idle power probed before it
    assert abs(f.first_run_energy_j - falling["true_first_run_j"]) <= f.first_run_energy_err_j
    assert f.energy_err_j >= (f.gpu_idle_w - f.gpu_idle_after_w) * 0.01  # the drift, over the wait of 10 ms and
    # more after the run
    assert not f.energy_uncertain and f.energy_note == ""


# -- Error bars over many short trials on a faster counter -------------------------------------------
SHORT_TRIALS = """
    rows = []
    for _ in range(TRIALS):
        got = trial(splits_of(2400), TrainConfig(batch_size=256, n_hidden=16), epochs=EPOCHS,
                    report_at=tuple(range(1, EPOCHS)), gap_s=0.002, budget_s=0.0)
        rows.append([got["report"]["first_run_energy_j"], got["true_first_run_j"],
                     got["report"]["first_run_energy_err_j"]])
    out["rows"] = {"rows": rows}
"""


def test_error_bars_cover_the_true_error_and_are_not_vacuous():
    """40 trials of 8 epochs, reporting (2 ms) after every one, on a 20 ms counter read in 3.9 ms: the
    first run's error bar covers its true error in >= 95% of them, and its median is at most 5x the true
    errors' 95th percentile."""
    code = textwrap.dedent(PRELUDE) + textwrap.dedent(SHORT_TRIALS.replace("TRIALS", "40").replace(
        "EPOCHS", "8")) + textwrap.dedent(END)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env=fake_gpu_env(FAKE_NVML_PROFILE="H200", FAKE_NVML_PERIOD_S="0.02",
                                          FAKE_NVML_JITTER_S="0.001"))
    assert out.returncode == 0, out.stderr[-3000:]
    rows = json.loads(out.stdout.strip().splitlines()[-1])["rows"]["rows"]
    errors = [abs(measured - true) for measured, true, _ in rows]
    bounds = [bound for *_, bound in rows]
    covered = sum(e <= b for e, b in zip(errors, bounds)) / len(rows)
    p95 = sorted(errors)[int(0.95 * len(errors)) - 1]
    assert covered >= 0.95, (covered, errors, bounds)
    assert sorted(bounds)[len(bounds) // 2] <= 5 * p95, (p95, bounds)


def test_zeus_loads_without_scikit_learn_and_its_auc_is_scikit_learns():
    """Zeus imports scikit-learn for one function, used only to integrate sampled power on GPUs
    older than Volta, which trials do not measure: trial processes skip it (70 MiB), also on such
    a GPU, and the function, where called, is scikit-learn's own."""
    code = textwrap.dedent("""
        import json, sys
        from trainables.training.energy import EnergyMeter
        from trainables.training.gpus import trial_gpus
        EnergyMeter(trial_gpus([]))
        loaded_for_cpu = "sklearn" in sys.modules
        meter = EnergyMeter()
        loaded_for_pascal = "sklearn" in sys.modules
        import zeus.monitor.power
        auc = zeus.monitor.power.auc([0.0, 1.0, 3.0], [2.0, 4.0, 4.0])
        metrics = sys.modules.get("sklearn.metrics")
        print(json.dumps({"loaded": [loaded_for_cpu, loaded_for_pascal], "source": meter.source, "note": meter.note,
                          "real_sklearn": hasattr(metrics, "roc_auc_score"), "auc": auc}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env=fake_gpu_env(FAKE_NVML_ARCH="PASCAL"))
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["loaded"] == [False, False]
    assert got["source"] == "none" and got["note"] == "Pascal, older than Volta: no NVML energy counter"
    assert got["real_sklearn"] and got["auc"] == 11.0


def test_a_zeus_that_needs_more_of_scikit_learn_is_imported_plainly(tmp_path):
    """Should a Zeus release import more of scikit-learn than `auc`, it still loads, for real."""
    monitor = tmp_path / "zeus" / "monitor"
    monitor.mkdir(parents=True)
    (tmp_path / "zeus" / "__init__.py").write_text("")
    (monitor / "__init__.py").write_text(
        "from sklearn.metrics import auc\nfrom sklearn.linear_model import LinearRegression\n"
        "class ZeusMonitor:\n    fit = LinearRegression\n")
    out = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import json
        from trainables.training.zeus_import import zeus_monitor_class
        monitor = zeus_monitor_class()
        print(json.dumps([monitor.__module__, monitor.fit.__module__]))
    """)], capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": python_path(tmp_path)})
    assert out.returncode == 0, out.stderr[-3000:]
    module, fit_module = json.loads(out.stdout.strip().splitlines()[-1])
    assert module == "zeus.monitor" and fit_module.startswith("sklearn.linear_model")
