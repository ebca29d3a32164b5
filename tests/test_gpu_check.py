"""benchmarks/gpu_check.py's pieces that need no GPU: pytest counts and outcomes, every check (each fed
a bad case it must fail), JSON output, and the exit code without CUDA. (The whole script runs on a GPU
machine; `--allow-cpu` tries it here.)"""

import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from benchmarks import gpu_check

ROOT = Path(__file__).resolve().parents[1]


def test_pytest_counts_come_from_the_summary_or_else_the_progress_characters():
    summary = gpu_check.pytest_counts("....\n3 passed, 1 failed, 2 skipped, 1 error, 4 deselected in 2.51s\n")
    assert (summary["passed"], summary["failed"], summary["skipped"], summary["errors"]) == (3, 1, 2, 1)
    killed = gpu_check.pytest_counts("..s.F.  [ 40%]\n.E..\n")
    assert (killed["passed"], killed["failed"], killed["skipped"], killed["errors"]) == (7, 1, 1, 1)


H100, UUID = "NVIDIA H100 80GB HBM3", "GPU-6e3d2d4c-1111-2222-3333-444455556666"


def frames(second_start_s: float, second_gpu: str = "0"):
    """Two trials of two epochs on one node, as a GPU sweep reports them: "a" direct (its own run), "b"
    replayed 4 times; the second starts at `second_start_s` on `second_gpu`."""
    epochs = pd.DataFrame({
        "trial_id": ["a", "a", "b", "b"], "epoch": [1, 2, 1, 2], "energy_j": [math.nan, 140.0, math.nan, 9.0],
        "started_at_s": [100.0, 100.0, second_start_s, second_start_s],
        "ended_at_s": [101.0, 102.0, second_start_s + 1, second_start_s + 2],
        "gpu_ids": ["0", "0", second_gpu, second_gpu], "node_id": ["n1"] * 4, "energy_method": ["direct", "direct",
                                                                                               "direct", "replay"],
    })
    trials = pd.DataFrame({
        "trial_id": ["a", "b"], "lr": [1e-3, 1e-2], "batch_size": [128, 128], "status": ["reached_target", "max_epochs"],
        "epochs": [2, 2], "time_s": [1.0, 0.05], "energy_j": [140.0, 9.0], "energy_err_j": [1.0, 0.3],
        "energy_source": ["gpu", "gpu"], "energy_method": ["direct", "replay"], "energy_resolution_s": [0.1, 0.1],
        "replays": [0, 4], "replay_time_s": [math.nan, 0.3], "replay_energy_j": [math.nan, 48.0],
        "first_run_time_s": [1.0, 0.06], "first_run_energy_j": [140.0, 10.5], "first_run_energy_err_j": [1.0, 1.0],
        "gpu_idle_w": [124.0, 124.0], "gpu_idle_err_w": [1.0, 1.0], "gpu_idle_after_w": [125.0, 123.0],
        "device": [H100, H100], "gpu_uuids": [UUID, UUID], "energy_note": ["", ""]})
    return trials, epochs


def test_sweep_checks_pass_for_back_to_back_gpu_trials_and_rows_carry_gpu_ids_and_energy_columns():
    trials, epochs = frames(second_start_s=103.0)
    checks = gpu_check.sweep_checks(trials, epochs, "# report\nenergy to accuracy: 140 J\n", {UUID: H100})
    assert all(value for value in checks.values() if isinstance(value, bool)), checks
    assert set(checks) >= {f"every_trial_{key}" for key in gpu_check.CHECKS}
    rows = gpu_check.sweep_rows(trials, epochs)
    assert [row["gpu_ids"] for row in rows] == ["0", "0"]
    assert [(row["device"], row["gpu_uuids"]) for row in rows] == [(H100, UUID)] * 2  # the GPU run's proof
    assert rows[1]["energy_method"] == "replay" and rows[1]["replay_time_s"] == 0.3


BAD = [  # (check, trial, {column: a value that must fail it, and that alone})
    ("finished", "a", {"status": "running"}),
    ("gpu_joules", "a", {"energy_source": "none"}),
    ("at_least_idle", "a", {"energy_j": 120.0, "first_run_energy_j": 120.0}),  # 120 W over 1 s, idle 124 +- 1 W
    ("at_least_idle", "b", {"energy_j": 5.0, "energy_err_j": 0.2, "first_run_energy_j": 6.0}),  # both at 100 W
    ("error_bar", "b", {"energy_err_j": 0.5}),  # 5.6% of 9 J
    ("windows_agree", "b", {"replay_time_s": 0.55}),  # the replays (0.2 s) and 3.5 periods more
    ("windows_agree", "b", {"replay_time_s": 0.15}),  # shorter than the replays it holds
    ("windows_agree", "a", {"time_s": 0.9}),  # direct, yet the headline is not its own run's
    ("windows_agree", "b", {"first_run_energy_j": 13.0}),  # its own run at 217 W, the replays at 180 W
    ("windows_agree", "a", {"gpu_idle_after_w": 140.0}),  # the idle power drifted by 13%
    ("gpu_ids", "a", {"gpu_ids": ""}),
    ("gpu_uuid", "a", {"gpu_uuids": "GPU-99999999-1111-2222-3333-444455556666"}),  # an A100's
]


@pytest.mark.parametrize("check, trial, values", BAD)
def test_each_sweep_check_fails_on_a_bad_trial(check, trial, values):
    trials, epochs = frames(second_start_s=103.0)
    for column, value in values.items():
        frame = epochs if column == "gpu_ids" else trials
        frame.loc[frame.trial_id == trial, column] = value
    other = "GPU-99999999-1111-2222-3333-444455556666"
    checks = gpu_check.sweep_checks(trials, epochs, "x", {UUID: H100, other: "NVIDIA A100-SXM4-80GB"})
    assert checks["failing_trials"] == {check: [trial]}, checks
    assert not checks[f"every_trial_{check}"]
    assert {check for check, *_ in BAD} == set(gpu_check.CHECKS)  # every check has its bad cases


def test_sweep_checks_catch_overlaps_and_an_unmeasured_report_and_spare_the_5_percent_without_replays():
    trials, epochs = frames(second_start_s=101.5)
    checks = gpu_check.sweep_checks(trials, epochs, "energy not measured")
    assert checks["overlaps"] == [["a", "b"]] and not checks["no_two_trials_on_a_gpu_at_once"]
    assert not checks["report_energy_measured"]
    assert gpu_check.sweep_checks(*frames(101.5, second_gpu="1"), "x")["no_two_trials_on_a_gpu_at_once"]
    trials.loc[1, "energy_err_j"] = 0.5
    assert "every_trial_error_bar" not in gpu_check.sweep_checks(trials, epochs, "x", error_bar=False)


def test_sweep_checks_catch_a_trial_that_measured_another_gpu_than_it_trained_on():
    trials, epochs = frames(second_start_s=103.0)
    other = "GPU-99999999-1111-2222-3333-444455556666"
    trials["gpu_uuids"] = [other, f"{UUID},{other}"]  # another host GPU (an A100's), two GPUs
    checks = gpu_check.sweep_checks(trials, epochs, "x", {UUID: H100, other: "NVIDIA A100-SXM4-80GB"})
    assert checks["failing_trials"] == {"gpu_uuid": ["a", "b"]} and not checks["every_trial_gpu_uuid"]


IDLE = {"no_context": {"idle_w": 80.1, "idle_err_w": 1.0, "contexts_before": 0, "contexts_after": 0},
        "context": {"idle_w": 124.0, "idle_err_w": 1.0, "contexts_before": 1, "contexts_after": 1},
        "after_sweep": {"idle_w": 82.0, "idle_err_w": 1.0, "contexts_before": 0, "contexts_after": 0}}


@pytest.mark.parametrize("check, probes", [
    ("idle_no_context_at_most_context", {"no_context": {"idle_w": 130.0}, "after_sweep": {"idle_w": 130.0}}),
    ("idle_no_context_at_most_context", {"context": {"idle_w": None, "error": "no CUDA"}}),  # a probe that failed
    ("idle_no_context_had_no_context", {"no_context": {"contexts_before": 1}}),
    ("idle_no_context_had_no_context", {"no_context": {"contexts_after": 2}}),
    ("idle_after_sweep_within_10_percent", {"after_sweep": {"idle_w": 90.0}}),
])
def test_each_idle_check_fails_on_a_bad_probe(check, probes):
    assert all(gpu_check.idle_checks(IDLE).values())
    checks = gpu_check.idle_checks({kind: {**IDLE[kind], **probes.get(kind, {})} for kind in IDLE})
    assert [k for k, ok in checks.items() if not ok] == [check]


GOOD_RUN = {"stages": {"host": {"status": "ok"}, "tests": {"status": "ok, over budget"}, "epoch": {"status": "skipped"}},
            "sweeps": {"defaults": {"checks": {"trials": 9, "every_trial_finished": True}}}, "idle_checks": IDLE and
            {"idle_no_context_at_most_context": True}, "tests": {"passed": 90, "failed": 0, "errors": 0,
                                                                 "timed_out": False},
            "epoch_accuracy": [{"data": "uiowa", "within_0_5_points": True}]}


@pytest.mark.parametrize("path, value, says", [
    (("stages", "nvml"), {"status": "failed: RuntimeError: no NVML"}, "stage nvml"),
    (("sweeps", "replays_off"), {"checks": {"every_trial_at_least_idle": False}}, "sweep replays_off: every_trial"),
    (("idle_checks", "idle_no_context_had_no_context"), False, "idle: idle_no_context_had_no_context"),
    (("tests", "failed"), 2, "tests: 2 failed"),
    (("tests", "errors"), 1, "tests: 1 errors"),
    (("tests", "timed_out"), True, "tests: cut short"),
    (("epoch_accuracy",), [{"data": "uiowa", "within_0_5_points": False}], "epoch accuracy: uiowa"),
])
def test_all_ok_fails_on_each_thing_that_is_not(path, value, says):
    import copy

    assert gpu_check.failed_checks(GOOD_RUN) == []
    data = copy.deepcopy(GOOD_RUN)
    *parents, key = path
    target = data
    for parent in parents:
        target = target.setdefault(parent, {})
    target[key] = value
    failed = gpu_check.failed_checks(data)
    assert len(failed) == 1 and failed[0].startswith(says), failed


def test_pytest_outcomes_name_and_time_every_test():
    output = ("12.31s call     tests/test_gpus.py::test_a\n0.50s setup    tests/test_gpu.py::test_b\n"
              "PASSED tests/test_gpus.py::test_a\nFAILED tests/test_gpu.py::test_b - AssertionError: x\n"
              "SKIPPED [1] tests/test_gpu.py:20: needs an NVIDIA GPU\n")
    got = gpu_check.pytest_outcomes(output)
    assert got["outcomes"] == {"tests/test_gpus.py::test_a": "passed", "tests/test_gpu.py::test_b": "failed",
                               "[1]": "skipped"}
    assert got["durations"] == [[12.31, "call", "tests/test_gpus.py::test_a"],
                                [0.5, "setup", "tests/test_gpu.py::test_b"]]


def test_json_output_is_strict_and_written_whole(tmp_path):
    report = gpu_check.Report(tmp_path)
    report.name("NVIDIA H100 80GB HBM3")
    report.data.update(value=math.nan, numbers=[pd.Series([1.5]).iloc[0]])
    report.save()
    assert json.loads((tmp_path / "gpu-check-NVIDIA-H100-80GB-HBM3.json").read_text()) == {"value": None,
                                                                                          "numbers": [1.5]}
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_without_cuda_it_says_so_and_exits_2(tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "CUDA is not available" in run.stdout
    assert not list(tmp_path.iterdir())


def test_cuda_devices_name_each_gpu_and_mig_instance_as_the_trials_do():
    """A GPU and a MIG instance on a fake node: each row's UUID is NVML's (GPU-... or MIG-...), found as a
    trial finds it (trainables/training/gpus.py), so the sweep's measured UUIDs can be looked up in it."""
    from test_gpus import MIG_INSTANCE, NODE, fake_node_env, uuid

    code = "import json; from benchmarks import gpu_check; print(json.dumps(gpu_check.cuda_devices()))"
    env = fake_node_env(NODE, CUDA_DEVICE_ORDER="PCI_BUS_ID", CUDA_VISIBLE_DEVICES=f"2,{MIG_INSTANCE}")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = json.loads(out.stdout.strip().splitlines()[-1])
    assert [(r["cuda_index"], r["uuid"], r.get("nvml_index"), r.get("nvml_error")) for r in rows] == [
        (0, uuid(2), 2, None), (1, MIG_INSTANCE, 7, None)]
    assert rows[0]["name"] == rows[0]["nvml_name"] == NODE[2]["name"]
