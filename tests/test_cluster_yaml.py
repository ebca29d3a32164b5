"""cluster.yaml is valid for Ray's cluster launcher (its own schema, offline) and keeps its promises:
a head that runs no trials, single-GPU workers, token auth and a loopback-only dashboard."""

import copy
import re
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


# The line of AWS's Deep Learning AMI (its public SSM parameter) or one build of it (an ami-... id).
DLAMI_LINE = re.compile(r"resolve:ssm:/aws/service/deeplearning/ami/x86_64/"
                        r"oss-nvidia-driver-gpu-pytorch-(?P<torch>\d+\.\d+)-ubuntu-(?P<ubuntu>\d+)\.04/latest/ami-id")


def test_every_node_boots_an_image_with_python_3_10_torch_and_a_current_driver(config):
    """Without an ImageId Ray boots its default DLAMI (Ubuntu 18.04: a Python older than 3.10, CUDA 11.2):
    `pip install -e` fails there."""
    from ray.autoscaler._private.aws.config import DEFAULT_AMI

    images = {name: node["node_config"].get("ImageId", "") for name, node in config["available_node_types"].items()}
    assert len(set(images.values())) == 1, images  # head and workers: one environment
    image = images["gpu_worker"]
    assert image.lower() not in ("", "latest_dlami") and image not in DEFAULT_AMI.values(), image
    line = DLAMI_LINE.fullmatch(image)
    assert line, f"{image}: not a Deep Learning AMI line with PyTorch and the OSS NVIDIA driver"
    # Ubuntu 24.04's DLAMI venv runs Python 3.12 (22.04's 3.10 or later) and ships a driver for its CUDA
    # torch; its torch must meet pyproject's floor (2.4).
    assert int(line["ubuntu"]) >= 22 and tuple(map(int, line["torch"].split("."))) >= (2, 4), image
    setup = config["setup_commands"]
    activate = next(i for i, c in enumerate(setup) if "source /opt/pytorch/bin/activate" in c)
    install = next(i for i, c in enumerate(setup) if "pip install" in c)
    assert activate < install and " -c ~/image-torch.txt " in setup[install]  # the image's torch, pinned


def test_workers_have_an_instance_profile_of_their_own(config):
    """Ray attaches its profile to the head only; a worker without one cannot upload a checkpoint."""
    profile = config["available_node_types"]["gpu_worker"]["node_config"].get("IamInstanceProfile", {})
    assert profile.get("Name") or profile.get("Arn", "").startswith("arn:aws:iam::"), profile
