"""The notebook API (`from tune_jobs import sweep`) and the example notebook, executed in a real
Jupyter kernel on the smoke preset."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tune_jobs import InputError, sweep
from tune_jobs.cli import main
from tune_jobs.progress import SweepProgress, progress_callback
from tune_jobs.spec import load_spec

NOTEBOOK = Path(__file__).parents[1] / "examples" / "seed_study.ipynb"


@pytest.mark.parametrize("kwargs, argv", [
    ({"stop": {"threshold": 2}}, ["--set", "stop.threshold=2"]),
    ({"stop": {"threshhold": 0.9}}, ["--set", "stop.threshhold=0.9"]),
    ({"repeats": 0}, ["--set", "repeats=0"]),
    ({"name": "a/b"}, ["--name", "a/b"]),
    ({"address": "10.0.0.5"}, ["--address", "10.0.0.5"]),
])
def test_bad_input_raises_the_clis_one_line_message_and_writes_nothing(kwargs, argv, tmp_path, capsys,
                                                                     blob_dataset_dir):
    storage = tmp_path / "sweeps"
    assert main(["run", "smoke", "--data", blob_dataset_dir, "--storage", str(storage), *argv]) == 2
    printed = capsys.readouterr().err.strip()
    with pytest.raises(InputError) as raised:
        sweep("smoke", data=blob_dataset_dir, storage=str(storage), **kwargs)
    assert printed == f"error: {raised.value}" and "\n" not in printed
    assert not storage.exists() or not any(storage.iterdir())


def test_unknown_preset_is_named():
    with pytest.raises(InputError, match="unknown preset 'sede'"):
        sweep("sede")


def test_keyword_overrides_set_spec_fields_like_set():
    by_keywords = load_spec("seed", values={"repeats": 3, "stop": {"threshold": 0.95},
                                            "views": {"lr": {"lr": [0.01], "batch_size": 64}}})
    by_set = load_spec("seed", ["repeats=3", "stop.threshold=0.95", "views.lr={lr: [0.01], batch_size: 64}"])
    assert by_keywords == by_set
    assert by_keywords.stop.patience == 3 and [v.grid["lr"] for v in by_keywords.views] == [(0.01,), (0.001,)]


def test_importing_the_package_loads_neither_the_api_nor_ray():
    code = "import sys, tune_jobs.cli; print(json.dumps(['tune_jobs.api' in sys.modules, 'ray' in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True, timeout=180)
    assert json.loads(out.stdout) == [False, False], out.stderr


def test_progress_outside_jupyter_is_lines():
    assert isinstance(progress_callback(3), SweepProgress)


# -- Real sweeps (local Ray in a fresh process or a Jupyter kernel). ------------------------


@pytest.mark.slow
def test_sweep_returns_the_experiments_frames_report_and_figures(tmp_path, blob_dataset_dir):
    code = textwrap.dedent(f"""
        import json
        import analysis
        from tune_jobs import sweep
        result = sweep("smoke", data={blob_dataset_dir!r}, storage={str(tmp_path)!r}, name="api", dashboard=True)
        same = (result.trials.equals(analysis.load_trials(result.path))
                and result.epochs.equals(analysis.load_epochs(result.path)))
        figures = result.figures()
        print(json.dumps({{"path": result.path, "report": result.report_path, "code": result.exit_code,
                          "same": same, "trials": len(result.trials), "epochs": len(result.epochs),
                          "figures": {{k: type(v).__name__ for k, v in figures.items()}}}}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["path"] == str(tmp_path / "api") and got["code"] == 0 and got["same"]
    assert got["report"] == str(tmp_path / "api" / "analysis" / "report.md") and Path(got["report"]).is_file()
    assert got["trials"] == 2 and got["epochs"] >= 2
    assert got["figures"] == {"view-lr.png": "Figure", "pareto.png": "Figure", "loss.png": "Figure",
                              "accuracy.png": "Figure"}
    assert "[2/2 done] done" in out.stdout and "dashboard: http://127.0.0.1:" in out.stdout  # lines, as the CLI (--dashboard)


@pytest.mark.slow
def test_example_notebook_runs_the_smoke_study(tmp_path, blob_dataset_dir):
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    env = {"SEED_STUDY_PRESET": "smoke", "SEED_STUDY_DATA": blob_dataset_dir, "SEED_STUDY_STORAGE": str(tmp_path)}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits them
    try:
        NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    finally:
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 2  # the lr view's four panels, the Pareto front
    tables = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert any("trial_number" in t and "test_acc" in t for t in tables)
    widgets = [o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert widgets, "no progress bar widget"
    assert "[2/2 done]" not in json.dumps(outputs)  # the bar replaces the progress lines
    assert len([d for d in tmp_path.iterdir() if d.name.startswith("smoke-")]) == 1

