"""The trial's own GPU, or NaN: which GPU a trial trains on and whose joules it reports, on fake
GPU nodes (tests/fake_nvml: NVML and torch.cuda; Zeus's real code runs on top).

Each GPU of a fake node draws its own power, so joules name the GPU they were read from. Every
scenario runs in its own interpreter (Zeus and CUDA read the node once per process), two at a
time, all in one fixture; each test reads what its scenario printed. Most scenarios train through
the default TrainingRun, as before this project matched GPUs by UUID, so each also ran, and
failed, on that code.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from processes import python_path

FAKE_NVML = Path(__file__).with_name("fake_nvml")
PERIOD_S = 0.01  # the fake counters' step: a short trial still spans many


def uuid(index: int) -> str:
    """The fake node's UUID of NVML's GPU `index` (fake_node.py's default)."""
    return f"GPU-fa4e{index:04x}-0000-4000-8000-{index:012x}"


# A node of mixed models, NVML's (PCI bus) order. CUDA, fastest first, shows H100, L4, A100, V100:
# CUDA's index k is never NVML's k, so joules read by CUDA index come from another GPU. Then every
# way a GPU cannot be measured: eight GPUs (CUDA shows the MIG GPU's instances, after the L4s).
MIXED = [{"name": "NVIDIA A100-SXM4-40GB", "arch": "AMPERE", "power_w": 300},
         {"name": "NVIDIA H100 80GB HBM3", "arch": "HOPPER", "power_w": 500, "max_power_w": 700},
         {"name": "Tesla V100-SXM2-16GB", "arch": "VOLTA", "power_w": 200},
         {"name": "NVIDIA L4", "arch": "ADA", "power_w": 70, "max_power_w": 72}]
CUDA_ORDER = [1, 3, 0, 2]  # NVML's index of CUDA's device k, fastest first (MIXED)
NODE = [*MIXED,
        {"name": "Tesla V100-PCIE-32GB", "arch": "VOLTA", "power_w": 250, "counter": False},  # 4: no counter
        {"name": "Tesla P100-PCIE-16GB", "arch": "PASCAL", "power_w": 150},  # 5: older than Volta
        {"name": "NVIDIA L4", "arch": "ADA", "power_w": 75, "energy_error": "UNKNOWN"},  # 6: NVML error
        {"name": "NVIDIA A100-SXM4-40GB", "arch": "AMPERE", "power_w": 300, "mig": 2}]  # 7: MIG mode
MIG_INSTANCE = "MIG-fa4e0007-0001-4000-8000-000000000007"  # GPU 7's first instance
LOST = [{"name": "NVIDIA H100 80GB HBM3", "arch": "HOPPER", "power_w": 500}, {"lost": True}]  # NVML cannot open 1


def fake_node_env(devices: list[dict], **env: str) -> dict:
    """The environment of a process on a fake node: the fakes first on PYTHONPATH, the node's GPUs."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CUDA_", "FAKE_"))}
    return {**clean, "PYTHONPATH": python_path(FAKE_NVML), "FAKE_NVML_DEVICES": json.dumps(devices),
            "FAKE_NVML_PERIOD_S": str(PERIOD_S), "OMP_NUM_THREADS": "1", **env}


PRELUDE = """
    import json, math, sys, time
    sys.path.insert(0, "tests")
    from conftest import blobs
    from trainables.data.splits import prepare_splits
    from trainables.training.config import TrainConfig
    from trainables.training.stop import StopRule
    from trainables.training.run import TrainingRun
    x, y = blobs(3000, seed=0)
    splits = prepare_splits(x, y, x[:300], y[:300], 0.2, 0)
    CONFIG = TrainConfig(batch_size=64, n_hidden=16)
    out = {}

    def rule(epochs):
        return StopRule(threshold=None, max_epochs=epochs)

    def train(run, epochs, gap_s=0.0):
        \"\"\"`epochs` epochs; where `gap_s`, the trial reports (a report point: the counter is read) and then
        reports and checkpoints for gap_s after each; the last is a report point (a checkpoint's).\"\"\"
        rows = []
        for epoch in range(epochs):
            rows.append(run.run_epoch(report_point=bool(gap_s) or epoch == epochs - 1))
            time.sleep(gap_s)  # reporting and checkpointing between epochs
        return rows

    def rows_of(run, reports):
        return [{"device": str(run.device), "epoch": r.epoch, "time_s": r.time_s, "energy_j": r.energy_j,
                 "overhead_time_s": r.overhead_time_s, "energy_source": r.energy_source, "idle_w": r.gpu_idle_w,
                 "dynamic_energy_j": r.dynamic_energy_j, "energy_err_j": r.energy_err_j, "idle_err_w": r.gpu_idle_err_w,
                 "max_power_w": r.gpu_max_power_w,
                 "energy_note": getattr(r, "energy_note", None), "gpu_uuids": getattr(r, "gpu_uuids", None),
                 "gpu_indices": run.meter.gpu_indices} for r in reports]

    def trial(epochs=3, gap_s=0.0, ids=None):
        \"\"\"A trial: outside Ray (ids None) this process's first CUDA device, through the default
        TrainingRun, as before this change; in Ray, its GPU ids, as the Tune trial passes them.\"\"\"
        if ids is None:
            run = TrainingRun(splits, CONFIG, rule(epochs))
        else:
            from trainables.training.gpus import trial_gpus
            run = TrainingRun(splits, CONFIG, rule(epochs), gpus=trial_gpus(ids))
        return rows_of(run, train(run, epochs, gap_s))
"""
END = """
    print(json.dumps(out))
"""

# Zeus's GPU numbering, which `zeus_monitor` relies on: a Zeus that changes it fails here. First,
# before anything builds Zeus's GPU list: plain Zeus with a UUID in CUDA_VISIBLE_DEVICES.
ZEUS_NUMBERING = """
    import os
    import pynvml
    from zeus.device import get_gpus
    from trainables.training.gpus import trial_gpus, zeus_monitor
    got = out["zeus-numbering"] = {}
    try:
        get_gpus()
        got["plain"] = "no error"
    except Exception as exc:
        got["plain"] = type(exc).__name__
    monitor = zeus_monitor([trial_gpus([f"GPU-fa4e0002"]).gpu], cpu=False)
    got["indices"] = monitor.gpu_indices
    got["zeus"] = [pynvml.nvmlDeviceGetUUID(gpu.handle) for gpu in monitor.gpus.gpus]
    got["visible"] = os.environ["CUDA_VISIBLE_DEVICES"]
"""

# A Zeus whose list was built from CUDA_VISIBLE_DEVICES=2,3 before: a GPU in it is found by UUID;
# one not in it is refused, loudly.
ZEUS_OTHERWISE = """
    from zeus.device import get_gpus
    from trainables.training.gpus import NvmlGpu, zeus_monitor
    get_gpus()  # built now: Zeus's GPU 1 is NVML's 3

    def nvml_gpu(index):
        return NvmlGpu(index, f"GPU-fa4e{index:04x}-0000-4000-8000-{index:012x}", "", "", "", False, "")

    got = out["zeus-otherwise"] = {"found": zeus_monitor([nvml_gpu(3)], cpu=False).gpu_indices}
    try:
        zeus_monitor([nvml_gpu(1)], cpu=False)
        got["missing"] = "accepted"
    except RuntimeError as exc:
        got["missing"] = str(exc)
"""

# Retried on another GPU, in a new process as Ray retries: 40 epochs on Ray's GPU "0" and a
# checkpoint; then, from it, 40 more on GPU "1"; and 2 from it as a checkpoint written before the
# attempts were kept (no "attempts", its sums whole). No pause between epochs. The checkpoint's
# energy is read at its report point, up to a counter step behind, which is 10 ms here: 40 epochs
# take 0.15 s on 2 cores, and a 100 ms step of the H100's 500 W (50 J) would hide the 430 W x 0.15 s
# that weighing each GPU's idle power by its time is about.
RETRY_PERIOD_S = "0.01"
RETRY_FIRST = """
    import torch
    from trainables.training.gpus import trial_gpus
    first = TrainingRun(splits, CONFIG, rule(80), gpus=trial_gpus(["0"]))
    out["retry-first"] = rows_of(first, train(first, 40))
    torch.save(first.state_dict(), STATE_FILE)
"""
RETRY_SECOND = """
    import torch
    from trainables.training.gpus import trial_gpus
    again = TrainingRun(splits, CONFIG, rule(80), gpus=trial_gpus(["1"]))
    state = torch.load(STATE_FILE, weights_only=True)
    again.load_state_dict(state)
    out["retry-second"] = rows_of(again, train(again, 40))
    legacy = TrainingRun(splits, CONFIG, rule(80), gpus=trial_gpus(["1"]))
    (attempt,) = state["attempts"]
    legacy.load_state_dict({**{k: v for k, v in state.items() if k != "attempts"}, "gpu_energy_j": attempt["gpu_j"],
                            "gap_variance": 0.0})
    out["retry-legacy"] = rows_of(legacy, train(legacy, 2))
"""

# Every GPU of the node as a trial given it judges it (by UUID, as Ray passes UUIDs).
EVERY_GPU = """
    from trainables.training.gpus import trial_gpus
    out["every-gpu"] = {}
    for index in range(NODE_COUNT):
        gpus = trial_gpus([f"GPU-fa4e{index:04x}-0000-4000-8000-{index:012x}"])
        out["every-gpu"][index] = [gpus.note, gpus.gpu.uuid if gpus.gpu else None, str(gpus.device)]
"""

# A replay that does not end as the run did (a nondeterministic GPU kernel): reported, not averaged in.
REPLAY = """
    from dataclasses import replace
    from trainables.training.replay import settle_energy
    results = []
    for status in (None, "reached_target"):
        run = TrainingRun(splits, CONFIG, rule(3))
        report = train(run, 3)[-1]
        coarse = replace(report, energy_err_j=report.energy_j)  # the run's own window: too coarse to stand
        settled = settle_energy(run, replace(coarse, status=status or report.status), budget_s=5.0)
        results.append([settled.energy_method, settled.replays, settled.energy_j, settled.first_run_energy_j,
                        getattr(settled, "energy_note", None)])
    out["replay"] = results
"""

# NVML fails mid-trial: the counter raises once the test's file exists.
MID_TRIAL = """
    run = TrainingRun(splits, CONFIG, rule(5))
    reports = train(run, 2, 0.05)
    open(ERROR_FILE, "w").close()
    out["mid-trial"] = rows_of(run, reports + train(run, 3, 0.05))
"""


def scenario(devices: list[dict], *parts: str, **env: str) -> tuple[str, dict]:
    return textwrap.dedent(PRELUDE) + "".join(map(textwrap.dedent, parts)) + textwrap.dedent(END), \
        fake_node_env(devices, **env)


def ran(name: str, **kwargs) -> str:
    arguments = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    return f"\nout[{name!r}] = trial({arguments})\n"


SCENARIOS = {
    # CUDA's fastest-first order: the trial's CUDA device 0 is NVML's GPU 1, the H100.
    "fastest-first": scenario(NODE, ran("fastest-first", epochs=6, gap_s=0.04), CUDA_VISIBLE_DEVICES="0"),
    # PCI bus order (and, in the same process, what else needs one visible GPU).
    "pci-order": scenario(NODE, ran("pci-order", epochs=6, gap_s=0.04), ran("id-not-visible", ids=["2"]), REPLAY,
                          CUDA_VISIBLE_DEVICES="0", CUDA_DEVICE_ORDER="PCI_BUS_ID"),
    # As some schedulers set it (and Ray passes on): a UUID, here of NVML's GPU 2 (the V100).
    "uuid-form": scenario(NODE, ZEUS_NUMBERING, ran("uuid-form", epochs=6, gap_s=0.04),
                          ran("ray-uuid-id", epochs=6, gap_s=0.04, ids=[uuid(2)]), CUDA_VISIBLE_DEVICES=uuid(2)),
    "mig": scenario(NODE, ran("mig"), CUDA_VISIBLE_DEVICES=MIG_INSTANCE),
    # Slurm's ConstrainDevices (or a container) shows CUDA only NVML's GPU 2: Ray's "0" under PCI bus order.
    "constrained": scenario(NODE, ran("constrained", epochs=6, gap_s=0.04, ids=["0"]), CUDA_VISIBLE_DEVICES="0",
                            CUDA_DEVICE_ORDER="PCI_BUS_ID", FAKE_CUDA_SEES="[2]"),
    # Integer indices in PCI bus order: what Zeus read before this change was then the right GPU.
    "no-counter": scenario(NODE, ran("no-counter"), CUDA_VISIBLE_DEVICES="4", CUDA_DEVICE_ORDER="PCI_BUS_ID"),
    "pre-volta": scenario(NODE, ran("pre-volta"), CUDA_VISIBLE_DEVICES="5", CUDA_DEVICE_ORDER="PCI_BUS_ID"),
    "nvml-error": scenario(NODE, ran("nvml-error"), CUDA_VISIBLE_DEVICES="6", CUDA_DEVICE_ORDER="PCI_BUS_ID"),
    "lost": scenario(LOST, ran("lost"), CUDA_VISIBLE_DEVICES="1"),
    "mid-trial": scenario([{**MIXED[1], "energy_error": "UNKNOWN", "error_file": "ERROR_FILE"}], MID_TRIAL),
    # Zeus's own setup fails (its daemon configured but not there).
    "zeus-setup-error": scenario(MIXED, ran("zeus-setup-error"), CUDA_VISIBLE_DEVICES="0",
                                 ZEUSD_SOCK_PATH="/nonexistent/zeusd.sock"),
    # In Ray, CUDA_VISIBLE_DEVICES as Ray 2.60 leaves a zero-GPU worker: the node's (here unset: all).
    "unset": scenario(NODE, ran("ray-no-gpu", ids=[]), ran("ray-two-gpus", ids=["0", "1"]),
                      EVERY_GPU.replace("NODE_COUNT", str(len(NODE)))),
    "retry-first": scenario(NODE, RETRY_FIRST, FAKE_NVML_PERIOD_S=RETRY_PERIOD_S),
    "zeus-otherwise": scenario(NODE, ZEUS_OTHERWISE, CUDA_VISIBLE_DEVICES="2,3"),
}
THEN = {"retry-first": ("retry-second", scenario(NODE, RETRY_SECOND, FAKE_NVML_PERIOD_S=RETRY_PERIOD_S))}  # after it
PARALLEL = 2  # scenarios at once: this machine's cores


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    """Every scenario's printed results (or the scenario's error), PARALLEL at a time."""
    folder = tmp_path_factory.mktemp("fake-node")
    files = {"ERROR_FILE": str(folder / "nvml-fails-now"), "STATE_FILE": str(folder / "state.pt")}
    waiting, running, out = list(SCENARIOS.items()), {}, {}
    while waiting or running:
        while waiting and len(running) < PARALLEL:
            name, (code, env) = waiting.pop(0)
            for key, path in files.items():
                code, env = code.replace(key, repr(path)), {k: v.replace(key, path) for k, v in env.items()}
            running[name] = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                                             stderr=subprocess.PIPE, text=True)
        name, proc = next(iter(running.items()))
        stdout, stderr = proc.communicate(timeout=300)
        del running[name]
        if name in THEN:
            waiting.insert(0, THEN[name])
        if proc.returncode == 0:
            out.update(json.loads(stdout.strip().splitlines()[-1]))
        else:
            out.setdefault("failed", []).append(f"scenario {name} failed:\n{stderr[-3000:]}")
    return out


def result(results: dict, name: str):
    """What a scenario printed under `name`; a scenario that failed fails the tests that read it."""
    if name not in results:
        raise AssertionError("\n".join(results.get("failed", [f"{name}: not printed"])))
    return results[name]


def assert_own_joules(last: dict, power_w: float) -> None:
    """The run's window, on counter updates at both ends, holds power x its time, within its error bar
    (the GPUs here draw one power, idle or not)."""
    assert abs(last["energy_j"] - power_w * last["time_s"]) <= last["energy_err_j"], (last, power_w)


def assert_not_measured(rows: list[dict], note: str) -> None:
    """It trained every epoch, and says why its GPU energy is NaN: never 0, never a crash."""
    last = rows[-1]
    assert last["epoch"] == len(rows) and all(math.isfinite(r["time_s"]) for r in rows)
    assert "gpu" not in last["energy_source"] and math.isnan(last["energy_j"])
    assert note in (last["energy_note"] or ""), last["energy_note"]


def test_fastest_first_order_measures_the_gpu_torch_trains_on(results):
    """CUDA numbers the H100 first; NVML numbers it 1. The trial's joules are the H100's (500 W),
    not NVML 0's (the A100, 300 W), and its row names the H100."""
    rows = result(results, "fastest-first")
    assert rows[-1]["device"] == "cuda:0" and rows[-1]["energy_source"] == "gpu"
    assert_own_joules(rows[-1], MIXED[CUDA_ORDER[0]]["power_w"])
    assert rows[-1]["gpu_uuids"] == uuid(CUDA_ORDER[0])
    assert abs(rows[-1]["idle_w"] / MIXED[CUDA_ORDER[0]]["power_w"] - 1) < 0.2  # its own idle power


def test_pci_bus_order_measures_nvml_index_zero(results):
    rows = result(results, "pci-order")
    assert_own_joules(rows[-1], MIXED[0]["power_w"])
    assert rows[-1]["gpu_uuids"] == uuid(0)


def test_uuid_form_cuda_visible_devices_trains_and_measures_that_gpu(results):
    """Zeus cannot parse GPU-... entries (ValueError: the trial failed); the trial now measures the V100."""
    rows = result(results, "uuid-form")
    assert rows[-1]["energy_source"] == "gpu" and rows[-1]["gpu_uuids"] == uuid(2)
    assert_own_joules(rows[-1], MIXED[2]["power_w"])


def test_a_gpu_whose_cuda_index_is_not_nvmls_is_measured(results):
    """Where CUDA is shown fewer GPUs than NVML (a cgroup, a container), Ray's id "0" under PCI bus order is
    NVML's GPU 2, the V100: it is the GPU trained on, and measured (comparing the two indices made it NaN)."""
    rows = result(results, "constrained")
    assert rows[-1]["device"] == "cuda:0" and rows[-1]["gpu_uuids"] == uuid(2)
    assert rows[-1]["energy_source"] == "gpu" and rows[-1]["energy_note"] == ""
    assert_own_joules(rows[-1], MIXED[2]["power_w"])


def test_a_mig_instance_trains_with_energy_nan_and_says_why(results):
    rows = result(results, "mig")
    assert_not_measured(rows, "a MIG instance: NVML measures no energy of MIG slices")
    assert rows[-1]["gpu_uuids"] == MIG_INSTANCE


def test_a_volta_gpu_without_the_energy_counter_trains_with_energy_nan_and_says_why(results):
    """Zeus trusts the architecture and the counter read raised NotSupported: the trial failed."""
    assert_not_measured(result(results, "no-counter"), "Volta or newer, but its driver exposes no energy counter")


def test_a_gpu_older_than_volta_trains_with_energy_nan_and_says_why(results):
    """Zeus would integrate sampled power (and raise KeyError on a window without samples): not used."""
    assert_not_measured(result(results, "pre-volta"), "Pascal, older than Volta: no NVML energy counter")


def test_an_nvml_error_trains_with_energy_nan_and_says_why(results):
    assert_not_measured(result(results, "nvml-error"), "NVML error reading its energy counter: Unknown Error")


def test_an_nvml_error_mid_trial_ends_the_measurement_not_the_trial(results):
    rows = result(results, "mid-trial")
    assert_not_measured(rows, "Zeus failed while measuring GPU")
    assert rows[1]["energy_source"] == "gpu" and math.isfinite(rows[1]["energy_j"])  # measured until the error


def test_a_gpu_nvml_cannot_open_trains_with_energy_nan_and_says_why(results):
    assert_not_measured(result(results, "lost"), "NVML cannot name the GPU torch trains on")


def test_a_zeus_setup_error_trains_with_energy_nan_and_says_why(results):
    assert_not_measured(result(results, "zeus-setup-error"),
                        f"Zeus could not measure GPU {uuid(CUDA_ORDER[0])}: ZeusGPUInitError: Cannot reach Zeusd")


def test_a_trial_given_no_gpu_trains_on_the_cpu_on_a_gpu_node_and_measures_no_gpu(results):
    """Ray 2.60 leaves a zero-GPU worker the node's CUDA_VISIBLE_DEVICES (here: unset, all eight)."""
    rows = result(results, "ray-no-gpu")
    assert rows[-1]["device"] == "cpu" and rows[-1]["gpu_indices"] == [] and rows[-1]["gpu_uuids"] == ""
    assert math.isnan(rows[-1]["energy_j"]) and rows[-1]["energy_note"] == ""


def test_a_ray_uuid_id_is_the_gpu_trained_on_and_measured(results):
    """Ray's ids are the node's CUDA_VISIBLE_DEVICES entries where it held UUIDs."""
    rows = result(results, "ray-uuid-id")
    assert rows[-1]["device"] == "cuda:0" and rows[-1]["gpu_indices"] == [0] and rows[-1]["gpu_uuids"] == uuid(2)
    assert_own_joules(rows[-1], MIXED[2]["power_w"])


def test_two_gpus_or_an_id_this_process_does_not_see_are_not_measured(results):
    two = result(results, "ray-two-gpus")
    assert_not_measured(two, "given 2 GPUs")
    unseen = result(results, "id-not-visible")
    assert unseen[-1]["device"] == "cpu"
    assert_not_measured(unseen, "given GPU 2, which this process does not see")


def test_a_retry_on_another_gpu_continues_the_sums_probes_its_own_gpu_and_lists_both(results):
    """Each GPU's idle and maximum power count for the time on it: dynamic energy and --eta's cost
    are each GPU's share (the fake GPUs draw their idle power: dynamic about 0), and the error adds
    the new attempt's to the first's."""
    before, after = result(results, "retry-first"), result(results, "retry-second")
    moved = after[-1]
    first, second = (MIXED[CUDA_ORDER[k]] for k in (0, 1))  # the H100, then the L4
    assert abs(before[-1]["idle_w"] / first["power_w"] - 1) < 0.2
    assert before[-1]["gpu_uuids"] == uuid(CUDA_ORDER[0])
    assert moved["gpu_uuids"] == f"{uuid(CUDA_ORDER[0])},{uuid(CUDA_ORDER[1])}" and moved["epoch"] == 80
    assert "ran on 2 GPUs" in moved["energy_note"] and moved["energy_source"] == "gpu"
    on_first_s, total_s = before[-1]["time_s"], moved["time_s"]
    true_j = first["power_w"] * on_first_s + second["power_w"] * (total_s - on_first_s)
    assert abs(moved["energy_j"] - true_j) <= moved["energy_err_j"]  # the sums continue across the GPUs
    share = on_first_s / total_s
    assert abs(moved["idle_w"] / (share * first["power_w"] + (1 - share) * second["power_w"]) - 1) < 0.05
    # Within the error bars of the energy (the checkpoint's read at its report point: up to a step behind) and
    # of the idle powers; the L4's idle power for the whole run would leave the H100's excess, (500 - 70) W x
    # its seconds, beyond them.
    assert abs(moved["dynamic_energy_j"]) < moved["energy_err_j"] + moved["idle_err_w"] * total_s
    assert abs(moved["energy_j"] - second["power_w"] * total_s) > moved["energy_err_j"]
    assert moved["dynamic_energy_j"] == pytest.approx(moved["energy_j"] - moved["idle_w"] * total_s)
    assert moved["max_power_w"] == pytest.approx(share * first["max_power_w"] + (1 - share) * second["max_power_w"])
    assert before[-1]["energy_err_j"] < moved["energy_err_j"] < math.inf


def test_a_checkpoint_from_before_attempts_were_kept_still_loads(results):
    """Its sums continue, with its time taken to be on this GPU, as such checkpoints were summed."""
    before, after = result(results, "retry-first"), result(results, "retry-legacy")
    last = after[-1]
    assert [r["epoch"] for r in before + after] == list(range(1, 43))
    on_l4_s = last["time_s"] - before[-1]["time_s"]  # its sums whole, then 2 epochs on the L4, read at a report point
    added_j = last["energy_j"] - before[-1]["energy_j"]
    assert abs(added_j - MIXED[CUDA_ORDER[1]]["power_w"] * on_l4_s) <= last["energy_err_j"]
    assert abs(last["idle_w"] / MIXED[CUDA_ORDER[1]]["power_w"] - 1) < 0.2 and math.isfinite(last["energy_err_j"])
    assert last["dynamic_energy_j"] == pytest.approx(last["energy_j"] - last["idle_w"] * last["time_s"])


def test_a_replay_that_ends_otherwise_is_reported_not_averaged_in(results):
    same, other = result(results, "replay")
    assert same[0] == "replay" and same[1] >= 1  # the coarse run is replayed where replays match
    method, replays, energy_j, first_run_j, note = other
    assert method == "direct" and replays == 0 and energy_j == first_run_j
    assert "replay 1 ended at epoch 3 (max_epochs), the run at epoch 3 (reached_target): replays not used" in note


def test_zeus_numbers_gpus_by_integer_cuda_visible_devices_and_never_by_uuid(results):
    """What `zeus_monitor` relies on: Zeus builds its list from CUDA_VISIBLE_DEVICES's integers
    (here NVML's 2, set for the moment), and plain Zeus raises on a UUID there (the trials failed so)."""
    got = result(results, "zeus-numbering")
    assert got["plain"] == "ValueError"
    assert got["zeus"] == [uuid(2)] and got["indices"] == [0] and got["visible"] == uuid(2)  # the variable is back


def test_a_gpu_is_found_in_zeus_list_by_uuid_or_refused_loudly(results):
    got = result(results, "zeus-otherwise")
    assert got["found"] == [1]
    assert got["missing"] == f"Zeus's GPU list in this process ({uuid(2)}, {uuid(3)}) lacks {uuid(1)}"


def test_doctor_and_the_trial_decide_with_the_same_call(results):
    """doctor's note per GPU is the note a trial on that GPU reports; the order in force is said."""
    trials = result(results, "every-gpu")
    out = subprocess.run([sys.executable, "-m", "tune_jobs", "doctor", "--json"], capture_output=True, text=True,
                         timeout=120, env=fake_node_env(NODE))
    assert out.returncode == 0, out.stderr[-2000:]
    (node,) = json.loads(out.stdout)["nodes"]
    assert node["cuda_device_order"] == "PCI_BUS_ID" and not node["cuda_device_order_set"]
    assert [g["uuid"] for g in node["gpus"]] == [uuid(i) for i in range(len(NODE))]
    for gpu in node["gpus"]:
        note, trained_on, device = trials[str(gpu["index"])]
        if gpu["index"] == 7:  # in MIG mode: CUDA shows its instances, never the whole GPU
            assert "MIG" in gpu["energy_note"] and device == "cpu"
            continue
        assert gpu["energy_note"] == note and trained_on == gpu["uuid"]
        assert gpu["energy_counter"] == (not note) and (gpu["energy_update_s"] is not None) == (not note)
    assert [g["index"] for g in node["gpus"] if g["energy_counter"]] == [0, 1, 2, 3]


def test_the_note_and_every_gpu_reach_the_trials_table_and_report_md(tmp_path):
    """Two trials as they report: one retried on a second GPU, one on a MIG instance (energy NaN)."""
    from analysis import load_epochs, load_trials
    from analysis.report import experiment_info, render_report, write_tables
    from trainables.training.report import EpochReport

    moved = "ran on 2 GPUs (retried on another): its sums continue across them"
    mig = "a MIG instance: NVML measures no energy of MIG slices"
    attempts = {1: [(1, 10.0, "", uuid(1)), (2, 20.0, moved, f"{uuid(1)},{uuid(3)}")],
                2: [(1, math.nan, mig, MIG_INSTANCE), (2, math.nan, mig, MIG_INSTANCE)]}
    for number, rows in attempts.items():
        trial_dir = tmp_path / "exp" / f"trial-{number}"
        trial_dir.mkdir(parents=True)
        config = {"number": number, "lr": 0.01 * number, "batch_size": 64, "seed": 0, "views": ["lr"],
                  "stop": {"threshold": None, "max_epochs": 2}}
        (trial_dir / "params.json").write_text(json.dumps({"trial": config}))
        reports = [EpochReport(epoch=epoch, time_s=epoch * 1.0, energy_j=joules, energy_note=note, gpu_uuids=gpus,
                               energy_source="gpu" if joules == joules else "none", status="max_epochs" if epoch == 2
                               else "running", trial_number=number, device="NVIDIA H100 80GB HBM3").to_dict()
                   for epoch, joules, note, gpus in rows]
        (trial_dir / "result.json").write_text("".join(json.dumps({**r, "trial_id": f"t{number}"}) + "\n"
                                                       for r in reports))
    experiment = str(tmp_path / "exp")
    trials, epochs = load_trials(experiment), load_epochs(experiment)
    info = experiment_info(experiment, trials, epochs)
    write_tables(trials, epochs, info, tmp_path)
    table = pd.read_csv(tmp_path / "trials.csv", keep_default_na=False)
    assert table[["gpu_uuids", "energy_note"]].values.tolist() == [[f"{uuid(1)},{uuid(3)}", moved], [MIG_INSTANCE, mig]]
    report = render_report(trials, info, {}, experiment)
    assert f"1 trial(s) have no energy counter that measured them: not measured. Energy notes: trial(s) 1: " \
           f"{moved}; trial(s) 2: {mig}\n" in report
