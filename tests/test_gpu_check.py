"""benchmarks/gpu_check.py's pieces that need no GPU: pytest counts, the sweep checks, JSON output,
and the exit code without CUDA. (The whole script runs on a GPU machine; `--allow-cpu` tries it here.)"""

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


def frames(second_start_s: float, second_gpu: str = "0"):
    """Two trials of two epochs on one node: the second starts at `second_start_s` on `second_gpu`."""
    epochs = pd.DataFrame({
        "trial_id": ["a", "a", "b", "b"], "epoch": [1, 2, 1, 2],
        "epoch_energy_j": [10.0, 12.0, 5.0, 6.0], "energy_j": [10.0, 22.0, 5.0, 11.0],
        "started_at_s": [100.0, 100.0, second_start_s, second_start_s],
        "ended_at_s": [101.0, 102.0, second_start_s + 1, second_start_s + 2],
        "gpu_ids": ["0", "0", second_gpu, second_gpu], "node_id": ["n1"] * 4, "energy_method": ["window"] * 4,
    })
    trials = pd.DataFrame({"trial_id": ["a", "b"], "lr": [1e-3, 1e-2], "batch_size": [128, 128],
                           "status": ["reached_target", "max_epochs"], "epochs": [2, 2], "time_s": [2.0, 2.0],
                           "energy_j": [22.0, 11.0], "gpu_energy_j": [22.0, 11.0], "energy_source": ["gpu", "gpu"],
                           "device": [H100, H100], "gpu_uuids": [UUID, UUID], "energy_note": ["", ""]})
    return trials, epochs


H100, UUID = "NVIDIA H100 80GB HBM3", "GPU-6e3d2d4c-1111-2222-3333-444455556666"


def test_sweep_checks_pass_for_back_to_back_gpu_trials_and_rows_carry_gpu_ids_and_energy_columns():
    trials, epochs = frames(second_start_s=103.0)
    checks = gpu_check.sweep_checks(trials, epochs, "# report\nenergy to accuracy: 22 J\n", {UUID: H100})
    assert all(value for value in checks.values() if isinstance(value, bool)), checks
    rows = gpu_check.sweep_rows(trials, epochs)
    assert [row["gpu_ids"] for row in rows] == ["0", "0"]
    assert [(row["device"], row["gpu_uuids"]) for row in rows] == [(H100, UUID)] * 2  # the GPU run's proof
    assert rows[0]["energy_method"] == "window" and "epoch_energy_j" not in rows[0]


def test_sweep_checks_catch_overlaps_missing_joules_and_windows_that_do_not_add_up():
    trials, epochs = frames(second_start_s=101.5)
    assert gpu_check.sweep_checks(trials, epochs, "x")["overlaps"] == [["a", "b"]]
    assert gpu_check.sweep_checks(*frames(101.5, second_gpu="1"), "x")["no_two_trials_on_a_gpu_at_once"]
    trials.loc[1, ["gpu_energy_j", "energy_source"]] = [math.nan, "none"]
    epochs.loc[0, "epoch_energy_j"] = 9.0
    checks = gpu_check.sweep_checks(trials, epochs, "energy not measured")
    assert checks["failing_trials"] == {"gpu_joules": ["b"], "epoch_sums": ["a"]}
    assert not checks["report_energy_measured"]


def test_sweep_checks_catch_a_trial_that_measured_another_gpu_than_it_trained_on():
    trials, epochs = frames(second_start_s=103.0)
    other = "GPU-99999999-1111-2222-3333-444455556666"
    trials["gpu_uuids"] = [other, f"{UUID},{other}"]  # another host GPU (an A100's), two GPUs
    checks = gpu_check.sweep_checks(trials, epochs, "x", {UUID: H100, other: "NVIDIA A100-SXM4-80GB"})
    assert checks["failing_trials"] == {"gpu_uuid": ["a", "b"]} and not checks["gpu_uuid_is_the_trained_on_device"]


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
