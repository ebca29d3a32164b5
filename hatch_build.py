"""Build hook: ship the amdsmi import guard's .pth file in regular and editable wheels.

The .pth file runs at every interpreter start in the environment (drivers and Ray
workers alike), which is what makes the guard work without any manual step.
See trainables/amdsmi_guard.py.
"""

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

PTH_FILE = "instrument_sweep_amdsmi_guard.pth"


class AmdsmiGuardHook(BuildHookInterface):
    def initialize(self, version: str, build_data: dict) -> None:
        key = "force_include_editable" if version == "editable" else "force_include"
        build_data[key][PTH_FILE] = PTH_FILE
