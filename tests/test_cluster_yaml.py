"""cluster.yaml is valid for Ray's cluster launcher (its own schema, offline) and keeps its promises:
a head that runs no trials, single-GPU workers, token auth and a loopback-only dashboard."""

import copy
from pathlib import Path

import pytest
import yaml

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"


def validate(config: dict) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(config)))


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def test_cluster_yaml_passes_rays_schema(config):
    validate(config)


def test_schema_check_catches_mistakes(config):
    import jsonschema

    broken = copy.deepcopy(config)
    broken["available_node_types"]["gpu_worker"]["min_worker"] = 0  # a typo of min_workers
    with pytest.raises(jsonschema.ValidationError):
        validate(broken)


def test_cluster_yaml_keeps_its_promises(config):
    nodes = config["available_node_types"]
    assert nodes[config["head_node_type"]]["resources"] == {"CPU": 0}  # the head runs no trials
    assert nodes["gpu_worker"]["min_workers"] == 0 and nodes["gpu_worker"]["max_workers"] >= 1
    starts = " ".join(config["head_start_ray_commands"] + config["worker_start_ray_commands"])
    assert starts.count("RAY_AUTH_MODE=token") == 2
    assert starts.count("CUDA_DEVICE_ORDER=PCI_BUS_ID ray start") == 2  # Ray's GPU ids are nvidia-smi's
    assert "--dashboard-host=127.0.0.1" in " ".join(config["head_start_ray_commands"])
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert any("pip install" in c and "instrument-sweep" in c for c in config["setup_commands"])
    assert any("INSTRUMENT_SWEEP_STORAGE=s3://" in c for c in config["setup_commands"])
