"""The amdsmi trap: Zeus needs `amdsmi`, whose import raises KeyError without AMD's library,
and Ray probes it at import in the driver and in every worker. The installed .pth guard turns
that into ImportError at every interpreter start, so plain `import ray` works everywhere,
while a working amdsmi (an AMD machine) imports unchanged."""

import os
import subprocess
import sys
import textwrap
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

from processes import python_path

ROOT = Path(__file__).resolve().parents[1]


def installed() -> bool:
    try:
        metadata.distribution("instrument-sweep")
        return True
    except metadata.PackageNotFoundError:
        return False


# The guard is the .pth an install puts in site-packages (CI installs the project); a node that runs
# the project from PYTHONPATH (benchmarks/gpu_node.sh) has none, and needs none without amdsmi.
needs_install = pytest.mark.skipif(not installed(), reason="project not installed: no guard .pth")


def python(code: str, env_extra: dict | None = None, timeout: int = 180) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter of this environment (what a Ray worker is)."""
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, timeout=timeout, env=env, cwd="/",
    )


@needs_install
def test_guard_is_active_at_interpreter_start_without_importing_the_project():
    out = python("""
        import sys
        print(any(type(f).__name__ == "AmdsmiGuardFinder" for f in sys.meta_path))
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"


@pytest.mark.slow
def test_ray_task_and_tune_trial_import_zeus_and_ray():
    out = python("""
        import ray
        import zeus.monitor
        from ray import tune
        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)

        @ray.remote
        def in_worker():
            import ray, zeus.monitor
            zeus.monitor.ZeusMonitor(gpu_indices=[] )
            return "task-ok"

        print(ray.get(in_worker.remote(), timeout=120))

        def trial(config):
            import zeus.monitor
            tune.report({"x": config["x"]})

        grid = tune.Tuner(trial, param_space={"x": 1},
                          run_config=tune.RunConfig(verbose=0)).fit()
        print("trial-ok" if grid.errors == [] and grid[0].metrics["x"] == 1 else grid.errors)
        ray.shutdown()
    """)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "task-ok" in out.stdout and "trial-ok" in out.stdout


FAKE_AMDSMI = {
    # No AMD library: the real package prints and raises KeyError at import.
    "missing_library": "print('cannot open libamd_smi.so')\nraise KeyError('libamd_smi.so')\n",
    # An AMD machine: the import works and must stay untouched.
    "working": "print('amdsmi loaded')\nVERSION = 'fake-7'\n",
    # Any other failure is not ours to hide.
    "other_error": "raise RuntimeError('driver mismatch')\n",
}


@pytest.mark.parametrize("case", [pytest.param(case, marks=needs_install) if case == "missing_library" else case
                                  for case in FAKE_AMDSMI])
def test_guard_changes_only_the_missing_library_failure(tmp_path, case):
    package = tmp_path / "amdsmi"
    package.mkdir()
    (package / "__init__.py").write_text(FAKE_AMDSMI[case])
    out = python(
        """
        try:
            import amdsmi
            print("imported", amdsmi.VERSION)
        except ImportError as exc:
            print("ImportError", type(exc).__name__)
        except Exception as exc:
            print("other", type(exc).__name__)
        """,
        env_extra={"PYTHONPATH": python_path(tmp_path)},
    )
    assert out.returncode == 0, out.stderr
    expected = {
        "missing_library": "ImportError AmdsmiUnavailableError",
        "working": "amdsmi loaded\nimported fake-7",
        "other_error": "other RuntimeError",
    }[case]
    assert out.stdout.strip() == expected
    if case == "missing_library":
        assert "cannot open" not in out.stdout  # the library's noise is swallowed with the error


@pytest.mark.slow
def test_built_wheel_ships_the_guard_pth(tmp_path):
    """A plain (non-editable) install gets the .pth too: it sits at the wheel's root."""
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    (wheel,) = tmp_path.glob("instrument_sweep-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "instrument_sweep_amdsmi_guard.pth" in names
    assert "trainables/amdsmi_guard.py" in names
