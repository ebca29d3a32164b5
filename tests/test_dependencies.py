"""The dependency ranges pyproject.toml claims are the ones tested: .ci/run installs every floor
together from ci/oldest-constraints.txt, and tune_jobs/ray_private.py names the same Ray range."""

import re
import tomllib
from pathlib import Path

from packaging.version import Version

from tune_jobs import ray_private

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
REQUIREMENT = re.compile(r"^([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?(.*)$")


def claimed() -> dict[str, str]:
    """Each dependency's range, the test extra's included, by lower-case name."""
    project = PYPROJECT["project"]
    found = {}
    for line in [*project["dependencies"], *project["optional-dependencies"]["test"]]:
        name, spec = REQUIREMENT.match(line.replace(" ", "")).groups()
        found[name.lower()] = spec
    return found


def pinned() -> dict[str, str]:
    lines = (ROOT / "ci" / "oldest-constraints.txt").read_text().splitlines()
    return dict(line.split("==") for line in lines if line.strip() and not line.startswith("#"))


def floor(spec: str) -> str:
    return re.search(r">=([0-9.]+)", spec).group(1)


def test_the_oldest_leg_pins_every_floor_pyproject_claims():
    ranges, pins = claimed(), pinned()
    assert set(pins) == set(ranges)
    # torch: the claimed floor (2.4) exists for Python 3.11 only as multi-GB CUDA builds; the oldest
    # leg takes 2.13, the CPU wheel on CI's disk (docs/development.md says so).
    assert pins.pop("torch") == "2.13.0" and floor(ranges.pop("torch")) == "2.4"
    assert {name: Version(pins[name]) for name in ranges} == {name: Version(floor(spec))
                                                              for name, spec in ranges.items()}


def test_torch_has_no_ceiling_and_ray_the_range_its_patches_were_tested_with():
    ranges = claimed()
    assert ranges["torch"] == ">=2.4"
    low, high = ray_private.SUPPORTED_RAY
    minor = int(high.split(".")[1])
    assert ranges["ray"] == f">={low},<2.{minor + 1}"
