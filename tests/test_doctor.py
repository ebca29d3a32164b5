"""`instrument-sweep doctor`: what a node can measure and why not, on this host and on a fake GPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

from processes import python_path

FAKE_NVML = Path(__file__).with_name("fake_nvml")


def doctor(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tune_jobs", "doctor", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **env})


def test_json_names_every_field_and_why_energy_is_missing_where_it_is():
    out = doctor("--json")
    assert out.returncode == 0, out.stderr[-2000:]
    (node,) = json.loads(out.stdout)["nodes"]
    for key in ("node", "gpus", "rapl_readable", "energy_source", "why", "ray_version", "token_auth", "cpus"):
        assert key in node, key
    assert node["energy_source"] in ("gpu", "cpu", "none") and node["cpus"] >= 1
    if node["energy_source"] == "none":  # this machine: no GPU counter, no readable RAPL
        assert node["why"].startswith("energy will be NaN") and not node["rapl_readable"]
        assert not any(gpu["energy_counter"] for gpu in node["gpus"])
    if node["energy_source"] == "gpu":
        assert all(gpu["energy_update_s"] > 0 for gpu in node["gpus"] if gpu["energy_counter"])


def test_gpus_with_an_energy_counter_are_found_and_their_period_measured():
    out = doctor("--json", PYTHONPATH=python_path(FAKE_NVML), FAKE_NVML_GPUS="2")
    assert out.returncode == 0, out.stderr[-2000:]
    (node,) = json.loads(out.stdout)["nodes"]
    assert node["energy_source"] == "gpu"
    assert [g["index"] for g in node["gpus"]] == [0, 1]
    assert all(g["architecture"] == "HOPPER" and g["energy_counter"] and g["energy_note"] == ""
               and abs(g["energy_update_s"] - 0.1) < 0.01 for g in node["gpus"])
    old = json.loads(doctor("--json", PYTHONPATH=python_path(FAKE_NVML), FAKE_NVML_ARCH="PASCAL").stdout)["nodes"][0]
    assert not old["gpus"][0]["energy_counter"] and old["energy_source"] != "gpu"
    assert old["gpus"][0]["energy_note"] == "Pascal, older than Volta: no NVML energy counter"


def test_text_output_says_the_source_per_node():
    out = doctor()
    assert out.returncode == 0 and "energy source of a trial here:" in out.stdout


def test_text_output_says_which_gpu_is_not_measured_why_and_the_cuda_device_order():
    """(tests/test_gpus.py: doctor's decision per GPU is the trial's.)"""
    devices = [{"name": "NVIDIA H100 80GB HBM3"}, {"name": "Tesla V100-PCIE-32GB", "arch": "VOLTA", "counter": False}]
    env = {"PYTHONPATH": python_path(FAKE_NVML), "FAKE_NVML_DEVICES": json.dumps(devices)}
    lines = doctor(**env, CUDA_DEVICE_ORDER="FASTEST_FIRST").stdout.splitlines()
    assert "  GPU 1: Tesla V100-PCIE-32GB (GPU-fa4e0001-0000-4000-8000-000000000001, bus 00000000:11:00.0): not " \
           "measured: Volta or newer, but its driver exposes no energy counter (NVML: Not Supported)" in lines
    assert any(line.startswith("  CUDA device order: FASTEST_FIRST (CUDA_DEVICE_ORDER): with mixed GPU models")
               for line in lines)
    default = doctor(**env).stdout  # a local run sets PCI bus order for the Ray it starts
    assert "CUDA device order: PCI_BUS_ID (set by instrument-sweep for the Ray it starts here)" in default
