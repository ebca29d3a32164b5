"""Everything a GPU machine should show, in one run and one JSON: host facts, NVML's energy counter
period, the epoch loops, a real sweep and the tests.

    python benchmarks/gpu_check.py                          # on a GPU machine: under 5 min on one H100
    python benchmarks/gpu_check.py --out /tmp/gpu --skip-tests --budget-s 200
    python benchmarks/gpu_check.py --allow-cpu --epochs 1 --sweep-preset smoke --tests-args tests/test_stop_rule.py
    benchmarks/gpu_node.sh OUT_DIR                          # on a GPU node without internet (gpu_bundle.sh)

Writes OUT/gpu-check-<gpu name>.json (OUT: --out, default benchmarks/results) after every stage
(temp file + rename), and beside it the raw logs: <stem>.log (this script's progress),
<stem>-variants.log, <stem>-sweep.log, <stem>-pytest.log and <stem>-sweep-analysis/ (the sweep's
tables, figures and report.md). Stages, in order, each within its share of --budget-s (time a stage
leaves unused passes to the next):
  host   gpu_name, driver (NVML), torch, cuda, versions; cuda_devices: each CUDA device's name beside
         the UUID (GPU-... or MIG-...), NVML index and name of the GPU NVML finds by torch's UUID, as a
         trial finds it; and CUDA_DEVICE_ORDER
  nvml   nvml_energy_update_s: NVML's energy counter polled in a tight loop for --nvml-s seconds while
         matmuls load the GPU, median interval between changes; idle and loaded power
  epoch  bench_epoch.py's rows (both loops, ratio) for batch 32/128/512/2048 on the built-in data and
         on UIowa-shaped random data (66,247 + 14,904 rows, 120 features, 10 classes); test accuracy
         of both loops after 10 epochs at batch 128; then, in a child process so a failure cannot
         take this one down, the fast loop other ways, to show what its CUDA graph pays: step by
         step without the graph (batch 32 and 128), and with torch.compile'd forward_backward_fn (128)
  sweep  `python -m tune_jobs run --preset seed` (a temporary storage), read back from its analysis
         folder: one row per trial (with its device and the UUID of the GPU it measured), and checks
         (GPU joules, epoch windows adding up, Ray GPU ids, each trial's measured GPU UUID one of
         this host's CUDA devices, of the model torch named, no two trials on one GPU at once, the
         report's energy measured)
  tests  pytest -m "gpu or not (slow or cluster)" (-n 8 where pytest-xdist is installed): counts
Exit codes: 0 every stage ran and every check passed; 1 otherwise; 2 no CUDA (without --allow-cpu).
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from importlib import metadata
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_epoch  # noqa: E402  (the project's internals are reached through it only)

STAGE_SHARES = {"host": 0.04, "nvml": 0.04, "epoch": 0.34, "sweep": 0.32, "tests": 0.26}
UIOWA_SHAPE = {"train_rows": 66_247, "test_rows": 14_904, "features": 120, "classes": 10}
ACCURACY_BATCH, ACCURACY_EPOCHS, ACCURACY_TOLERANCE = 128, 10, 0.005
VARIANTS = [("eager", 128), ("eager", 32), ("compile", 128)]  # (kind, batch size), run in this order
SWEEP_BASE = ["trial_id", "lr", "batch_size", "status", "epochs", "time_s", "energy_j", "energy_source", "device",
              "gpu_uuids", "energy_note"]
ENERGY_COLUMN = re.compile(r"energy|gpu|idle|_err|method|_w$")
TERMINAL = {"reached_target", "max_epochs", "diverged", "outpaced"}
GRACE_S = 15  # after the interrupt, before a stage's subprocess is killed


# -- output: one JSON rewritten atomically, one progress log --------------------------------------------
class Report:
    """The result dict, written to OUT/<stem>.json after every stage, and a progress log beside it."""

    def __init__(self, out: Path) -> None:
        self.out, self.stem, self.data, self._lines = out, None, {}, []

    def name(self, gpu_name: str) -> None:
        self.stem = "gpu-check-" + (re.sub(r"[^A-Za-z0-9.]+", "-", gpu_name).strip("-") or "unknown")
        self.out.mkdir(parents=True, exist_ok=True)
        self.path("log").write_text("".join(self._lines))

    def path(self, suffix: str) -> Path:
        return self.out / (f"{self.stem}.{suffix}" if suffix in ("json", "log") else f"{self.stem}-{suffix}")

    def log(self, message: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {message}\n"
        print(line, end="", flush=True)
        self._lines.append(line)
        if self.stem:
            with self.path("log").open("a") as log:
                log.write(line)

    def save(self) -> None:
        if not self.stem:
            return
        tmp = self.path("json").with_suffix(".json.tmp")
        tmp.write_text(json.dumps(clean(self.data), indent=1, allow_nan=False) + "\n")
        os.replace(tmp, self.path("json"))


def clean(value):
    """JSON-safe: numpy scalars as Python numbers, NaN and infinities as null."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def run_logged(cmd: list[str], log_path: Path, timeout_s: float) -> tuple[int | None, float]:
    """Run `cmd` in its own process group, output to `log_path`; at `timeout_s` interrupt it (Ctrl-C: the
    CLI saves its sweep, pytest prints its counts), then kill the group. (exit code or None, seconds)."""
    started = time.perf_counter()
    with log_path.open("w") as log:
        log.write(f"$ {shlex.join(cmd)}\n")
        log.flush()
        path = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])  # this checkout first
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path})
        try:
            rc = proc.wait(timeout=max(1.0, timeout_s))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=GRACE_S)
            except subprocess.TimeoutExpired:
                pass
            rc = None
        kill_group(proc.pid)
        proc.wait()
    return rc, time.perf_counter() - started


def kill_group(pgid: int) -> None:
    """Kill what is left of a process group this script started (Ray workers, compile workers)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# -- stage host --------------------------------------------------------------------------------------------
def nvml_device():
    """(pynvml, handle of the GPU torch calls cuda:0) or (None, why not)."""
    try:
        import pynvml
        import torch

        pynvml.nvmlInit()
        if torch.cuda.is_available():
            try:
                return pynvml, pynvml.nvmlDeviceGetHandleByUUID(f"GPU-{torch.cuda.get_device_properties(0).uuid}")
            except Exception:  # noqa: BLE001 - older torch or a MIG slice: the first visible index
                pass
        first = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip()
        return pynvml, pynvml.nvmlDeviceGetHandleByIndex(int(first) if first.isdigit() else 0)
    except Exception as exc:  # noqa: BLE001 - no library, no driver, no device
        return None, f"no NVML: {type(exc).__name__}: {exc}"


def nvml_text(pynvml, function: str, *args) -> str | None:
    """An NVML string (driver version, device name), or None where NVML cannot say."""
    try:
        value = getattr(pynvml, function)(*args)
    except Exception:  # noqa: BLE001 - NVMLError and its many subclasses
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def cuda_devices() -> list[dict]:
    """Each CUDA device torch shows: its name, and the UUID, NVML index and name of the GPU (or MIG
    instance) NVML finds by torch's UUID: the match every trial makes (trainables/training/gpus.py)."""
    import torch

    from trainables.training.gpus import UnnamedGpu, cuda_device_gpu

    devices = []
    for index in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        row = {"cuda_index": index, "name": torch.cuda.get_device_name(index)}
        try:
            gpu = cuda_device_gpu(index)
            row.update(uuid=gpu.uuid, nvml_index=gpu.nvml_index, nvml_name=gpu.name)
        except UnnamedGpu as exc:  # no NVML, or it does not know the device: say so in the row
            row.update(uuid=str(exc).partition(":")[0], nvml_error=str(exc))
        devices.append(row)
    return devices


def host_facts(device, nvml) -> dict:
    import torch

    pynvml, handle = nvml
    cuda = device.type == "cuda"
    props = torch.cuda.get_device_properties(0) if cuda else None
    versions = {}
    for package in ("ray", "zeus", "nvidia-ml-py", "numpy", "pandas", "librosa", "numba", "pytest", "pytest-xdist"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "gpu_name": torch.cuda.get_device_name(0) if cuda else "cpu",
        "driver": nvml_text(pynvml, "nvmlSystemGetDriverVersion") if pynvml else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "host": {"hostname": socket.gethostname(), "python": platform.python_version(), "cpus": os.cpu_count(),
                 "nvml_device": nvml_text(pynvml, "nvmlDeviceGetName", handle) if pynvml else handle,
                 "capability": f"{props.major}.{props.minor}" if props else None,
                 "memory_gib": round(props.total_memory / 2**30, 1) if props else None,
                 "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                 "cuda_device_order": os.environ.get("CUDA_DEVICE_ORDER"), "versions": versions},
        "cuda_devices": cuda_devices() if pynvml else [],
    }


# -- stage nvml --------------------------------------------------------------------------------------------
def nvml_energy_update(device, nvml, seconds: float) -> dict:
    """Poll the energy counter (mJ) in a tight loop while matmuls load the device; median interval between
    changes. Idle power is read first, over half a second."""
    import torch

    pynvml, handle = nvml
    if pynvml is None:
        return {"nvml_energy_update_s": None, "nvml": handle}
    idle = []
    for _ in range(5):
        try:
            idle.append(pynvml.nvmlDeviceGetPowerUsage(handle) / 1000)
        except pynvml.NVMLError:  # no power reading on this device: the counter may still be there
            pass
        time.sleep(0.1)
    stop = threading.Event()

    def load() -> None:
        size = 8192 if device.type == "cuda" else 512
        a = torch.randn(size, size, device=device)
        b = torch.empty_like(a)
        while not stop.is_set():
            for _ in range(8):
                torch.mm(a, a, out=b)
            if device.type == "cuda":
                torch.cuda.synchronize()

    loader = threading.Thread(target=load, daemon=True)
    loader.start()
    time.sleep(0.3)  # ramp up
    read = pynvml.nvmlDeviceGetTotalEnergyConsumption
    changes, samples, last = [], 0, read(handle)
    started = time.perf_counter()
    while (now := time.perf_counter()) < started + seconds:
        value = read(handle)
        samples += 1
        if value != last:
            changes.append((now, value))
            last = value
    stop.set()
    loader.join()
    intervals = [b[0] - a[0] for a, b in itertools.pairwise(changes)]
    load_w = ((changes[-1][1] - changes[0][1]) / 1000 / (changes[-1][0] - changes[0][0])
              if len(changes) > 1 else None)
    return {"nvml_energy_update_s": round(statistics.median(intervals), 4) if intervals else None,
            "nvml": {"polled_s": seconds, "samples": samples, "poll_us": round(seconds / samples * 1e6, 1),
                     "changes": len(changes),
                     "interval_min_s": round(min(intervals), 4) if intervals else None,
                     "interval_max_s": round(max(intervals), 4) if intervals else None,
                     "idle_w": round(statistics.median(idle), 1) if idle else None,
                     "load_w": round(load_w, 1) if load_w else None}}


# -- stage epoch -------------------------------------------------------------------------------------------
def builtin_data(report: Report, timeout_s: float) -> dict:
    """The built-in dataset's arrays, through the CLI (generated first if not cached) and its npy files."""
    rc, seconds = run_logged([sys.executable, "-m", "tune_jobs", "data", "info", "synthetic"],
                             report.path("data.log"), timeout_s)
    found = re.search(r"^dataset:\s+(.+)$", report.path("data.log").read_text(), re.M)
    if rc != 0 or not found:
        raise RuntimeError(f"`instrument-sweep data info synthetic` failed (exit {rc}); see {report.path('data.log')}")
    folder = Path(found.group(1).strip())
    report.log(f"built-in dataset at {folder} ({seconds:.1f} s)")
    return {part: np.load(folder / f"{part}.npy", allow_pickle=False)
            for part in ("train_data", "train_labels", "test_data", "test_labels")}


def uiowa_shaped_data(seed: int = 0) -> dict:
    """Random Gaussian class blobs the shape of the UIowa features, about 90% separable."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(UIOWA_SHAPE["classes"], UIOWA_SHAPE["features"])) * 0.25
    arrays = {}
    for part, rows in (("train", UIOWA_SHAPE["train_rows"]), ("test", UIOWA_SHAPE["test_rows"])):
        labels = np.sort(rng.integers(0, UIOWA_SHAPE["classes"], rows))  # ordered by class, as UIowa's
        arrays[f"{part}_data"] = (centers[labels] + rng.normal(size=(rows, UIOWA_SHAPE["features"]))).astype(np.float32)
        arrays[f"{part}_labels"] = labels
    return arrays


def on_device(arrays: dict, device):
    """Standardized splits as the trials make them (bench_epoch's prepare_splits): train (numpy) and test (tensors)."""
    import torch

    s = bench_epoch.prepare_splits(arrays["train_data"], arrays["train_labels"], arrays["test_data"],
                                   arrays["test_labels"], 0.2, 0)
    return s, torch.as_tensor(s.test_x, device=device), torch.as_tensor(s.test_y, device=device)


def held_out_accuracy(model, x, y) -> float:
    import torch

    model.eval()
    with torch.no_grad():
        hits = sum(int((model(xb).argmax(1) == yb).sum()) for xb, yb in zip(x.split(16384), y.split(16384)))
    return hits / len(y)


def epoch_stage(report: Report, device, args, deadline: float) -> None:
    """bench_epoch rows, 10-epoch accuracy, then the experimental variants in a child process."""
    rows, accuracy = report.data.setdefault("epoch", []), report.data.setdefault("epoch_accuracy", [])
    datasets = {"builtin": builtin_data(report, max(10.0, deadline - time.monotonic())), "uiowa": uiowa_shaped_data()}
    prepared = {name: on_device(arrays, device) for name, arrays in datasets.items()}
    for name, batch_size in itertools.product(prepared, bench_epoch.BATCH_SIZES):
        if time.monotonic() > deadline:
            rows.append({"data": name, "batch_size": batch_size, "skipped": "stage budget spent"})
            continue
        s = prepared[name][0]
        for row in bench_epoch.bench_rows(s.train_x, s.train_y, s.n_classes, batch_size, device, args.epochs):
            rows.append({"data": name, **row})
            report.log(json.dumps(rows[-1]))
        report.save()
    for name, (s, test_x, test_y) in prepared.items():
        if time.monotonic() > deadline:
            accuracy.append({"data": name, "skipped": "stage budget spent"})
            continue
        row = {"data": name, "batch_size": ACCURACY_BATCH, "epochs": ACCURACY_EPOCHS}
        for loader in ("dataloader", "fast"):
            times, train_acc, model = bench_epoch.train_timed(loader, s.train_x, s.train_y, s.n_classes,
                                                              ACCURACY_BATCH, device, ACCURACY_EPOCHS)
            row[f"{loader}_test_acc"] = round(held_out_accuracy(model, test_x, test_y), 4)
            row[f"{loader}_s"] = round(sum(times), 3)
        row["within_0_5_points"] = abs(row["fast_test_acc"] - row["dataloader_test_acc"]) <= ACCURACY_TOLERANCE
        accuracy.append(row)
        report.log(json.dumps(row))
        report.save()
    if args.skip_variants or deadline - time.monotonic() < GRACE_S + 10:
        rows.append({"loader": "fast+variants", "skipped": "--skip-variants" if args.skip_variants
                     else "stage budget spent"})
        return
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        plan = {"device": str(device), "epochs": args.epochs, "threads": args.threads, "variants": []}
        for name, (s, _, _) in prepared.items():
            np.save(Path(tmp, f"{name}_x.npy"), s.train_x)
            np.save(Path(tmp, f"{name}_y.npy"), s.train_y)
        for (kind, batch_size), name in itertools.product(VARIANTS, prepared):
            plan["variants"].append({"loader": f"fast+{kind}", "data": name, "batch_size": batch_size,
                                     "x": str(Path(tmp, f"{name}_x.npy")), "y": str(Path(tmp, f"{name}_y.npy")),
                                     "n_classes": prepared[name][0].n_classes})
        Path(tmp, "plan.json").write_text(json.dumps(plan))
        report.log(f"variants in a child process: {len(plan['variants'])} rows, "
                   f"up to {deadline - time.monotonic():.0f} s")
        rc, _ = run_logged([sys.executable, __file__, "--variant-child", str(Path(tmp, "plan.json"))],
                           report.path("variants.log"), deadline - time.monotonic() - GRACE_S)
    done = [json.loads(line[4:]) for line in report.path("variants.log").read_text().splitlines()
            if line.startswith("ROW ")]
    for variant in plan["variants"]:
        row = next((r for r in done if (r["loader"], r["data"], r["batch_size"]) ==
                    (variant["loader"], variant["data"], variant["batch_size"])), None)
        row = row or {"loader": variant["loader"], "data": variant["data"], "batch_size": variant["batch_size"],
                      "error": "not run: stage budget spent" if rc is None else f"child exited {rc} first"}
        for loader, key in (("dataloader", "ratio"), ("fast", "vs_fast")):  # speed-ups over both loops
            base = next((r for r in rows if r.get("loader") == loader and r.get("data") == row["data"]
                         and r["batch_size"] == row["batch_size"] and r.get("epoch_s")), None)
            if base and row.get("epoch_s"):
                row[key] = round(base["epoch_s"] / row["epoch_s"], 2)
        rows.append(row)
        report.log(json.dumps(row))


def variant_epoch(kind: str, model, optimizer, x, y, n_classes: int, batch_size: int, device):
    """The fast loop's epoch, other ways, to show what its CUDA graph pays: `eager` launches every step's
    kernels one by one (the fast loop without its graph); `compile` runs the model's torch.compile'd
    forward_backward_fn eagerly. Returns epoch() -> training accuracy; the setup (compilation) happens in
    the first epochs."""
    import torch

    from trainables.training.loops import make_loop

    loop = make_loop("fast", x, y, batch_size, device, seed=0)
    loop.epoch_graph = None  # step by step
    if kind == "compile":
        forward_backward = torch.compile(model.forward_backward_fn())
        model.forward_backward_fn = lambda: forward_backward
    elif kind != "eager":
        raise ValueError(f"unknown variant {kind!r}")
    return lambda: loop.train_epoch(model, optimizer).acc


def variant_child(plan_path: str) -> None:
    """In the child: each planned variant's row (or its error) as one `ROW {json}` line."""
    import torch

    plan = json.loads(Path(plan_path).read_text())
    torch.set_num_threads(plan["threads"])
    device = torch.device(plan["device"])
    for variant in plan["variants"]:
        row = {key: variant[key] for key in ("loader", "data", "batch_size")}
        row["device"] = device.type
        try:
            x = torch.as_tensor(np.load(variant["x"]), device=device)
            y = torch.as_tensor(np.load(variant["y"]), device=device)
            row["rows"] = int(len(y))
            model, optimizer = bench_epoch.fresh_model("fast", x.shape[1], variant["n_classes"], device)
            sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
            sync()
            started = time.perf_counter()
            epoch = variant_epoch(variant["loader"].split("+")[1], model, optimizer, x, y, variant["n_classes"],
                                  variant["batch_size"], device)
            for _ in range(2 if variant["loader"].endswith("compile") else 1):  # warm-up, compilation
                epoch()
            sync()
            row["setup_s"] = round(time.perf_counter() - started, 3)
            times = []
            for _ in range(plan["epochs"]):
                sync()
                started = time.perf_counter()
                train_acc = epoch()
                sync()
                times.append(time.perf_counter() - started)
            row.update(epoch_s=round(statistics.median(times), 5), train_acc=round(train_acc, 4))
        except Exception as exc:  # noqa: BLE001 - an experimental variant records its failure
            row["error"] = f"{type(exc).__name__}: {str(exc)[:500]}"
        print("ROW " + json.dumps(row), flush=True)


# -- stage sweep -------------------------------------------------------------------------------------------
def sweep_stage(report: Report, args, deadline: float) -> None:
    import pandas as pd

    storage = Path(tempfile.mkdtemp(prefix="gpu-check-sweep-"))
    try:
        cmd = [sys.executable, "-m", "tune_jobs", "run", "--preset", args.sweep_preset, "--storage", str(storage),
               "--name", "gpu-check", *itertools.chain.from_iterable(("--set", s) for s in args.sweep_set)]
        report.log(f"$ {shlex.join(cmd)}")
        rc, seconds = run_logged(cmd, report.path("sweep.log"), deadline - time.monotonic() - GRACE_S - 20)
        report.data["sweep_run"] = {"command": shlex.join(cmd), "exit_code": rc, "timed_out": rc is None,
                                    "wall_s": round(seconds, 1)}
        experiment, analysis = storage / "gpu-check", storage / "gpu-check" / "analysis"
        if not (analysis / "trials.csv").exists() and experiment.exists():  # interrupted: analyze what is there
            run_logged([sys.executable, "-m", "tune_jobs", "analyze", str(experiment)], report.path("analyze.log"), 20)
        if not (analysis / "trials.csv").exists():
            raise RuntimeError(f"no trials.csv: the sweep left nothing to analyze (exit {rc}); "
                               f"see {report.path('sweep.log')}")
        trials = pd.read_csv(analysis / "trials.csv")
        epochs = pd.read_parquet(analysis / "epochs.parquet")
        report_md = (analysis / "report.md").read_text() if (analysis / "report.md").exists() else ""
        report.data["sweep"] = sweep_rows(trials, epochs)
        devices = {d["uuid"]: d["name"] for d in report.data.get("cuda_devices", [])}
        report.data["sweep_checks"] = sweep_checks(trials, epochs, report_md, devices)
        shutil.copytree(analysis, report.path("sweep-analysis"), dirs_exist_ok=True)
    finally:
        shutil.rmtree(storage, ignore_errors=True)


def last_epochs(epochs):
    return epochs.groupby("trial_id").tail(1).set_index("trial_id") if len(epochs) else epochs


def sweep_rows(trials, epochs) -> list[dict]:
    """One row per trial: the listed columns, every energy/GPU column, the Ray GPU ids and node."""
    last = last_epochs(epochs)
    rows = []
    for trial in trials.to_dict("records"):
        row = {key: trial.get(key) for key in SWEEP_BASE}
        row.update({key: value for key, value in trial.items() if ENERGY_COLUMN.search(key)})
        if trial["trial_id"] in last.index:
            final = last.loc[trial["trial_id"]].to_dict()
            row.update({key: value for key, value in final.items()
                        if ENERGY_COLUMN.search(key) and key not in row and not key.startswith("epoch_")})
            row.update(gpu_ids=str(final.get("gpu_ids", "")), node_id=final.get("node_id"))
        rows.append(row)
    return rows


def sweep_checks(trials, epochs, report_md: str, cuda_devices: dict[str, str] | None = None) -> dict:
    """The issue's checks on a GPU sweep, each a bool, with the trials that failed it. `cuda_devices`
    (UUID -> torch's name, this host's): each trial measured one of them, of the model it trained on."""
    failures = {key: [] for key in ("finished", "gpu_joules", "epoch_sums", "gpu_ids", "gpu_uuid")}
    last = last_epochs(epochs)
    for trial in trials.to_dict("records"):
        tid = trial["trial_id"]
        if trial["status"] not in TERMINAL:
            failures["finished"].append(tid)
        gpu_j = trial.get("gpu_energy_j", math.nan)
        if not ("gpu" in str(trial["energy_source"]) and math.isfinite(gpu_j) and gpu_j > 0):
            failures["gpu_joules"].append(tid)
        windows = epochs.loc[epochs.trial_id == tid, "epoch_energy_j"].astype(float)
        total = float(trial.get("first_run_energy_j", trial["energy_j"]))  # after a replay: the first run's
        if not (len(windows) and math.isfinite(total)
                and math.isclose(windows.sum(), total, rel_tol=1e-6, abs_tol=1e-6)):
            failures["epoch_sums"].append(tid)
        if tid not in last.index or str(last.loc[tid].get("gpu_ids", "")) in ("", "nan", "None"):
            failures["gpu_ids"].append(tid)
        measured = str(trial.get("gpu_uuids", "")).split(",")
        if len(measured) != 1 or not measured[0].startswith("GPU-") or (
                cuda_devices is not None and cuda_devices.get(measured[0]) != trial.get("device")):
            failures["gpu_uuid"].append(tid)
    overlaps = []
    if len(epochs) and {"started_at_s", "ended_at_s", "gpu_ids", "node_id"} <= set(epochs.columns):
        attempts = (epochs.groupby(["trial_id", "started_at_s"])
                    .agg(end=("ended_at_s", "max"), gpus=("gpu_ids", "first"), node=("node_id", "first"))
                    .reset_index().to_dict("records"))
        for a, b in itertools.combinations(attempts, 2):
            shared = set(str(a["gpus"]).split(",")) & set(str(b["gpus"]).split(",")) - {"", "nan", "None"}
            if a["trial_id"] != b["trial_id"] and a["node"] == b["node"] and shared and \
                    a["started_at_s"] < b["end"] and b["started_at_s"] < a["end"]:
                overlaps.append([a["trial_id"], b["trial_id"]])
    else:
        overlaps.append("epochs.parquet lacks started_at_s/ended_at_s/gpu_ids/node_id")
    return {"trials": len(trials),
            "all_finished": not failures["finished"],
            "gpu_joules_positive_finite": not failures["gpu_joules"],
            "epoch_energy_sums_match_total": not failures["epoch_sums"],
            "gpu_ids_on_every_trial": not failures["gpu_ids"],
            "gpu_uuid_is_the_trained_on_device": not failures["gpu_uuid"],
            "no_two_trials_on_a_gpu_at_once": not overlaps,
            "report_energy_measured": bool(report_md) and "not measured" not in report_md,
            "failing_trials": {key: ids for key, ids in failures.items() if ids}, "overlaps": overlaps}


# -- stage tests -------------------------------------------------------------------------------------------
def tests_stage(report: Report, args, deadline: float) -> None:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", args.tests_marker,
           *shlex.split(args.tests_args)]
    if importlib.util.find_spec("xdist") and args.tests_workers > 1:
        cmd += ["-n", str(args.tests_workers)]
    report.log(f"$ {shlex.join(cmd)}")
    rc, seconds = run_logged(cmd, report.path("pytest.log"), deadline - time.monotonic() - GRACE_S)
    report.data["tests"] = {"command": shlex.join(cmd), "exit_code": rc, "timed_out": rc is None,
                            "wall_s": round(seconds, 1), **pytest_counts(report.path("pytest.log").read_text())}


def pytest_counts(output: str) -> dict:
    """pytest's closing counts; where it printed none (killed), the progress characters counted."""
    for line in reversed(output.splitlines()):
        if re.search(r"\b(passed|failed|skipped|errors?|deselected|no tests ran)\b.* in [\d.]+s", line):
            found = re.findall(r"(\d+) (passed|failed|skipped|deselected|errors?|xfailed|xpassed)", line)
            counts = {{"error": "errors"}.get(word, word): int(number) for number, word in found}
            return {"passed": 0, "failed": 0, "skipped": 0, "errors": 0, **counts, "summary": line.strip("= ")}
    progress = "".join(line.split("[")[0] for line in output.splitlines()
                       if re.fullmatch(r"[.FsExX]+\s*(\[\s*\d+%\])?", line))
    return {"passed": progress.count("."), "failed": progress.count("F"), "skipped": progress.count("s"),
            "errors": progress.count("E"), "summary": "no summary line: counted from progress characters"}


# -- driver ------------------------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="output folder")
    parser.add_argument("--budget-s", type=float, default=270, help="time for all stages (default 270)")
    parser.add_argument("--allow-cpu", action="store_true", help="without CUDA, run every stage on the CPU")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per epoch row, median (default 3)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch CPU threads")
    parser.add_argument("--nvml-s", type=float, default=3.0, help="seconds to poll the energy counter")
    parser.add_argument("--skip-variants", action="store_true", help="no step-by-step / torch.compile rows")
    parser.add_argument("--skip-sweep", action="store_true")
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--sweep-preset", default="seed")
    parser.add_argument("--sweep-set", action="append", default=[], metavar="KEY=VALUE", help="passed as --set")
    parser.add_argument("--tests-marker", default="gpu or not (slow or cluster)")
    parser.add_argument("--tests-args", default="", help="more pytest arguments, e.g. test paths")
    parser.add_argument("--tests-workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="pytest-xdist workers where installed (default min(8, cores))")
    parser.add_argument("--variant-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant_child:
        variant_child(args.variant_child)
        return 0

    import torch

    if not torch.cuda.is_available() and not args.allow_cpu:
        print("CUDA is not available here: nothing to check (--allow-cpu runs every stage on the CPU)")
        return 2
    torch.set_num_threads(args.threads)
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    report, started = Report(args.out), time.monotonic()
    skipped = {"sweep": args.skip_sweep, "tests": args.skip_tests}
    shares = {stage: share for stage, share in STAGE_SHARES.items() if not skipped.get(stage)}
    ok = True
    nvml = (None, "not opened")
    for number, stage in enumerate(STAGE_SHARES):
        status = "skipped"
        stage_started = time.monotonic()
        if stage in shares:
            upto = list(shares)[: list(shares).index(stage) + 1]
            deadline = started + args.budget_s * sum(shares[s] for s in upto) / sum(shares.values())
            report.log(f"stage {number + 1}/5 {stage}: until +{deadline - started:.0f} s of {args.budget_s:.0f} s")
            try:
                if stage == "host":
                    nvml = nvml_device()
                    report.data.update(host_facts(device, nvml), budget_s=args.budget_s, complete=False)
                    report.name(report.data["gpu_name"])
                    report.log(f"{report.data['gpu_name']}, driver {report.data['driver']}, torch "
                               f"{report.data['torch']}, CUDA {report.data['cuda']}; writing {report.path('json')}")
                elif stage == "nvml":
                    report.data.update(nvml_energy_update(device, nvml, args.nvml_s))
                    report.log(f"nvml_energy_update_s {report.data['nvml_energy_update_s']}: {report.data['nvml']}")
                elif stage == "epoch":
                    epoch_stage(report, device, args, deadline)
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                elif stage == "sweep":
                    sweep_stage(report, args, deadline)
                    report.log(f"sweep: {report.data['sweep_run']}; checks {report.data['sweep_checks']}")
                else:
                    tests_stage(report, args, deadline)
                    report.log(f"tests: {report.data['tests']}")
                status = "ok" if time.monotonic() <= deadline else "ok, over budget"
            except Exception as exc:  # noqa: BLE001 - record it, go on with the next stage
                status = f"failed: {type(exc).__name__}: {exc}"
                if stage == "host":
                    report.name("unknown")
        report.data.setdefault("stages", {})[stage] = {"status": status,
                                                       "seconds": round(time.monotonic() - stage_started, 1)}
        ok &= status == "ok" or status == "skipped"
        report.log(f"stage {stage}: {status}")
        report.save()
    checks = report.data.get("sweep_checks", {})
    ok &= all(value for key, value in checks.items() if isinstance(value, bool))
    ok &= not report.data.get("tests", {}).get("failed") and not report.data.get("tests", {}).get("errors")
    ok &= all(row.get("within_0_5_points", True) for row in report.data.get("epoch_accuracy", []))
    report.data.update(complete=True, total_s=round(time.monotonic() - started, 1), all_ok=ok)
    report.save()
    report.log(f"done in {report.data['total_s']} s: {report.path('json')} ({'all ok' if ok else 'NOT all ok'})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
