"""Everything a GPU machine should show, in one run and one JSON: host facts, idle power, a real sweep
(twice), NVML's energy counter period, the epoch loops and their baselines, and the GPU tests.

    python benchmarks/gpu_check.py                          # on a GPU machine: about 6 min on one H100/H200
    python benchmarks/gpu_check.py --out /tmp/gpu --skip-tests --budget-s 200
    python benchmarks/gpu_check.py --allow-cpu --epochs 1 --sweep-preset smoke --tests-args tests/test_stop_rule.py
    benchmarks/gpu_node.sh OUT_DIR                          # on a GPU node without internet (gpu_bundle.sh)

Writes OUT/gpu-check-<gpu name>.json (OUT: --out, default benchmarks/results) after every stage
(temp file + rename), and beside it the raw logs: <stem>.log (this script's progress),
<stem>-variants.log, <stem>-sweep-<name>.log, <stem>-pytest.log and <stem>-sweep-<name>-analysis/
(each sweep's tables, figures and report.md). Stages, in order, each within its share of --budget-s
(time a stage leaves unused passes to the next). This process opens no CUDA context before the nvml
stage (what needs one runs in a child), so the idle and sweep stages see the GPU as trials do:
  host   commit (git, or INSTRUMENT_SWEEP_COMMIT), gpu_name, driver (NVML), torch, cuda, versions;
         cuda_devices: each CUDA device's name beside the UUID (GPU-... or MIG-...), NVML index and
         name of the GPU NVML finds by torch's UUID, as a trial finds it; and CUDA_DEVICE_ORDER
  idle   the GPU's idle power over 10 counter periods, in a child without a CUDA context (no_context)
         and in one with a context open (context); checks: no context at most the context's
  sweep  `python -m tune_jobs run --preset seed` twice (a temporary storage each): as the defaults
         are, and with replays off (energy.replay_budget_s=0), each read back from its analysis
         folder: one row per trial, per-trial checks that compare independent things (`sweep_checks`:
         the joules over each window at least the idle power over its time, within the error bars;
         a trial's windows agree; its GPU is the one it trained on; ...), the wall split as
         bench_energy_split.py splits it; then the two compared per trial (replays_compared: what
         replays cost and change) and the idle power again without a context (after_sweep: drift)
  nvml   nvml_energy_update_s: NVML's energy counter polled in a tight loop for --nvml-s seconds while
         matmuls load the GPU, median interval between changes; idle and loaded power
  epoch  bench_epoch.py's rows (both loops, ratio) for batch 32/128/512/2048 on the built-in data and
         on UIowa-shaped random data (66,247 + 14,904 rows, 120 features, 10 classes); test accuracy
         of both loops after 10 epochs at batch 128; then, in a child process so a failure cannot
         take this one down, the fast loop other ways and its baselines (VARIANTS): step by step
         without the graph, torch.compile'd forward_backward_fn, the whole training step (autograd,
         fused capturable Adam) as one CUDA graph, torch.compile(mode="reduce-overhead") of that
         step, and a profile of one graphed epoch (kernels, microseconds per kernel)
  tests  pytest -rA --durations=15 -m "gpu or not (slow or cluster)" on the GPU test files (-n 8 where
         pytest-xdist is installed), for at least --tests-min-s: counts, every test's outcome, the
         slowest durations
Exit codes: 0 every stage ran and every check passed; 1 otherwise; 2 no CUDA (without --allow-cpu).
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import math
import numbers
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

STAGE_SHARES = {"host": 0.02, "idle": 0.03, "sweep": 0.30, "nvml": 0.01, "epoch": 0.22, "tests": 0.42}
UIOWA_SHAPE = {"train_rows": 66_247, "test_rows": 14_904, "features": 120, "classes": 10}
ACCURACY_BATCH, ACCURACY_EPOCHS, ACCURACY_TOLERANCE = 128, 10, 0.005
# (kind, batch size), run in this order: the fast loop step by step, with a compiled step; baselines beside
# it (the whole step in one CUDA graph; torch.compile reduce-overhead); a profile of one graphed epoch.
VARIANTS = [("eager", 128), ("eager", 32), ("compile", 128), ("step_graph", 128), ("step_graph", 2048),
            ("profile", 128), ("compile_reduce_overhead", 128), ("compile_reduce_overhead", 2048)]
SWEEPS = {"defaults": [], "replays_off": ["--set", "energy.replay_budget_s=0"]}  # name: extra `run` arguments
MARKS = {"ready": "results:", "summary": "trial  lr"}  # CLI lines whose time bench_energy_split's split reads
TESTS_ARGS = "tests/test_gpu.py tests/test_energy.py tests/test_gpus.py tests/test_training_core.py " \
             "tests/test_private_fallbacks.py"
IDLE_PERIODS = 10  # the idle stage's probes span this many counter periods
IDLE_AFTER_S = 20  # the sweep stage keeps this long for the idle probe after its sweeps
SWEEP_BASE = ["trial_id", "lr", "batch_size", "status", "epochs", "time_s", "energy_j", "energy_source", "device",
              "gpu_uuids", "energy_note"]
ENERGY_COLUMN = re.compile(r"energy|gpu|idle|_err|method|_w$|replay|first_run|measurement|overhead")
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


def run_logged(cmd: list[str], log_path: Path, timeout_s: float, marks: dict[str, str] | None = None,
               env: dict | None = None) -> tuple[int | None, float, dict[str, float]]:
    """Run `cmd` in its own process group, output to `log_path`; at `timeout_s` interrupt it (Ctrl-C: the
    CLI saves its sweep, pytest prints its counts), then kill the group. (exit code or None, seconds,
    {mark: seconds from the start to the first line starting with `marks[mark]`})."""
    started = time.perf_counter()
    seen: dict[str, float] = {}
    with log_path.open("w") as log:
        log.write(f"$ {shlex.join(cmd)}\n")
        log.flush()
        path = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])  # this checkout first
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE if marks else log, stderr=subprocess.STDOUT, cwd=ROOT,
                                start_new_session=True, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path, **(env or {})})

        def copy() -> None:  # the output to the log, noting when each mark's line came
            for line in proc.stdout:
                log.write(line)
                for mark, start in (marks or {}).items():
                    if mark not in seen and line.startswith(start):
                        seen[mark] = time.perf_counter() - started

        reader = threading.Thread(target=copy, daemon=True)
        if marks:
            reader.start()
        try:
            rc = proc.wait(timeout=max(1.0, timeout_s))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=GRACE_S)
            except subprocess.TimeoutExpired:
                pass
            rc = None
        seconds = time.perf_counter() - started
        kill_group(proc.pid)
        proc.wait()
        if marks:
            reader.join(timeout=5)
    return rc, seconds, seen


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


def host_child() -> None:
    """In a child (CUDA's context stays out of this process until the nvml stage): `host_facts` as JSON."""
    import torch

    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    print("HOST " + json.dumps(clean(host_facts(device, nvml_device()))), flush=True)


def child_json(args: list[str], prefix: str, timeout_s: float) -> dict:
    """Run this script with `args` in a child; the JSON of its output line starting with `prefix`."""
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, cwd=ROOT,
                         timeout=max(5.0, timeout_s))
    lines = [line for line in out.stdout.splitlines() if line.startswith(prefix)]
    if out.returncode != 0 or not lines:
        last = ((out.stderr or out.stdout).strip().splitlines() or [""])[-1]
        raise RuntimeError(f"{' '.join(args)} exited {out.returncode}: {last[-500:]}")
    return json.loads(lines[-1][len(prefix):])


def commit() -> dict:
    """The commit this checkout is at (git), or INSTRUMENT_SWEEP_COMMIT where it has no .git (a copy)."""
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return {"commit": head, "commit_source": "git", "commit_dirty": bool(dirty)}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": os.environ.get("INSTRUMENT_SWEEP_COMMIT"), "commit_source": "INSTRUMENT_SWEEP_COMMIT"}


# -- stage idle --------------------------------------------------------------------------------------------
def idle_child(kind: str, uuid: str) -> None:
    """In a child: the GPU's idle power over IDLE_PERIODS counter periods (trainables' gpu_counter), with
    no CUDA context in this process ("no_context") or with one open ("context"); which processes NVML
    listed with a context on the GPU before and after."""
    import pynvml

    from trainables.training.gpu_counter import measure_counter, running_contexts

    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByUUID(uuid) if uuid else pynvml.nvmlDeviceGetHandleByIndex(0)
    if kind == "context":
        import torch

        torch.zeros(1, device="cuda").add_(1)
        torch.cuda.synchronize()
    before = running_contexts(handle)
    started = time.perf_counter()
    period_s, idle_w, idle_err_w = measure_counter(lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(handle),
                                                   IDLE_PERIODS)
    row = {"kind": kind, "idle_w": idle_w, "idle_err_w": idle_err_w, "period_s": period_s,
           "seconds": time.perf_counter() - started, "contexts_before": before,
           "contexts_after": running_contexts(handle)}
    print("IDLE " + json.dumps(clean(row)), flush=True)


def idle_rows(report: Report, kinds: tuple[str, ...], timeout_s: float) -> dict:
    """`idle_child` of each kind, on the GPU the host stage named (a failure: that row's error)."""
    devices = report.data.get("cuda_devices") or [{}]
    rows = {}
    for kind in kinds:
        try:
            rows[kind] = child_json(["--idle-child", kind, devices[0].get("uuid", "")], "IDLE ", timeout_s)
        except Exception as exc:  # noqa: BLE001 - recorded: the check on it fails
            rows[kind] = {"kind": kind, "error": f"{type(exc).__name__}: {str(exc)[:800]}"}
        report.log(f"idle {kind}: {rows[kind]}")
    return rows


def idle_checks(idle: dict) -> dict:
    """Without a CUDA context the GPU draws at most what it draws with one (within both errors), and
    no process held a context while it was probed; after the sweep, within 10% of before (the drift)."""
    bare, ctx, after = (idle.get(k, {}) for k in ("no_context", "context", "after_sweep"))
    value = lambda row, key: row.get(key) if isinstance(row.get(key), numbers.Real) else math.nan  # noqa: E731
    checks = {
        "idle_no_context_at_most_context": value(bare, "idle_w") <= value(ctx, "idle_w") + value(bare, "idle_err_w")
        + value(ctx, "idle_err_w"),
        # -1: NVML cannot list them here (a container): nothing seen
        "idle_no_context_had_no_context": value(bare, "contexts_before") in (0, -1) and
        value(bare, "contexts_after") in (0, -1),
    }
    if after:
        checks["idle_after_sweep_within_10_percent"] = abs(value(after, "idle_w") - value(bare, "idle_w")) <= \
            0.1 * value(bare, "idle_w")
    return checks


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
    rc, seconds, _ = run_logged([sys.executable, "-m", "tune_jobs", "data", "info", "synthetic"],
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
        rc, _, _ = run_logged([sys.executable, __file__, "--variant-child", str(Path(tmp, "plan.json"))],
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
    """The fast loop's epoch, other ways, to show what its CUDA graph pays and what else could: `eager`
    launches every step's kernels one by one (the fast loop without its graph); `compile` runs the
    model's torch.compile'd forward_backward_fn eagerly; `step_graph` captures the whole training step
    (autograd's forward and backward, torch's fused capturable Adam) as one CUDA graph, replayed per
    batch; `compile_reduce_overhead` is that step through torch.compile(mode="reduce-overhead"). The last
    two drop an epoch's last partial batch (a graph has one shape). Returns epoch() -> training accuracy;
    the setup (capture, compilation) happens in the first epochs."""
    import torch

    from trainables.training.loops import make_loop

    if kind in ("step_graph", "compile_reduce_overhead"):
        return whole_step_epoch(kind, model, x, y, batch_size, device)
    loop = make_loop("fast", x, y, batch_size, device, seed=0)
    loop.epoch_graph = None  # step by step
    if kind == "compile":
        forward_backward = torch.compile(model.forward_backward_fn())
        model.forward_backward_fn = lambda: forward_backward
    elif kind != "eager":
        raise ValueError(f"unknown variant {kind!r}")
    return lambda: loop.train_epoch(model, optimizer).acc


def whole_step_epoch(kind: str, model, x, y, batch_size: int, device):
    """`variant_epoch`'s baselines: the whole step (autograd, fused capturable Adam) as one CUDA graph, or
    through torch.compile(mode="reduce-overhead")."""
    import torch

    if device.type != "cuda":
        raise RuntimeError("a CUDA graph of the whole step needs CUDA")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True, capturable=True)
    loss_fn = torch.nn.CrossEntropyLoss()
    static_x, static_y = x[:batch_size].clone(), y[:batch_size].clone()

    def step(xb, yb):
        optimizer.zero_grad(set_to_none=False)
        logits = model(xb)
        loss_fn(logits, yb).backward()
        optimizer.step()
        return (logits.argmax(1) == yb).sum()

    if kind == "compile_reduce_overhead":
        run = torch.compile(step, mode="reduce-overhead")
    else:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):  # warm-up before the capture, as torch advises
                step(static_x, static_y)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_hits = step(static_x, static_y)

        def run(xb, yb):
            static_x.copy_(xb)
            static_y.copy_(yb)
            graph.replay()
            return static_hits

    generator = torch.Generator(device=device).manual_seed(0)
    batches = len(y) // batch_size

    def epoch() -> float:
        perm = torch.randperm(len(y), device=device, generator=generator)
        hits = torch.zeros((), device=device, dtype=torch.int64)
        for b in range(batches):
            index = perm[b * batch_size:(b + 1) * batch_size]
            hits += run(x.index_select(0, index), y.index_select(0, index))
        return hits.item() / (batches * batch_size)

    return epoch


def profile_graphed_epoch(model, optimizer, x, y, batch_size: int, device) -> dict:
    """One epoch of the fast loop replaying its CUDA graph under torch.profiler: the GPU kernels it ran
    and their mean microseconds."""
    import torch

    from trainables.training.loops import make_loop

    if device.type != "cuda":
        raise RuntimeError("profiling the graphed epoch needs CUDA")
    loop = make_loop("fast", x, y, batch_size, device, seed=0)
    for _ in range(3):  # warm-up, capture, one replay
        loop.train_epoch(model, optimizer)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        loop.train_epoch(model, optimizer)
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    total_us = sum(e.device_time for e in kernels)
    return {"kernels": len(kernels), "kernel_us_total": round(total_us, 1),
            "us_per_kernel": round(total_us / len(kernels), 2) if kernels else None,
            "steps": -(-len(y) // batch_size)}


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
            if variant["loader"] == "fast+profile":
                row.update(profile_graphed_epoch(model, optimizer, x, y, variant["batch_size"], device))
                print("ROW " + json.dumps(row), flush=True)
                continue
            sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
            sync()
            started = time.perf_counter()
            epoch = variant_epoch(variant["loader"].split("+")[1], model, optimizer, x, y, variant["n_classes"],
                                  variant["batch_size"], device)
            for _ in range(2 if "compile" in variant["loader"] else 1):  # warm-up, compilation
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
    """Each of SWEEPS, then the two compared per trial, then the idle power again (after_sweep)."""
    devices = {d["uuid"]: d["name"] for d in report.data.get("cuda_devices", []) if d.get("uuid")}
    sweeps = report.data.setdefault("sweeps", {})
    for number, (name, extra) in enumerate(SWEEPS.items()):
        share = (deadline - time.monotonic() - IDLE_AFTER_S) / (len(SWEEPS) - number)
        sweeps[name] = one_sweep(report, args, name, extra, time.monotonic() + share, devices)
        report.save()
    rows = {name: {row["trial_id"].split("_")[-1]: row for row in sweep.get("trials", [])}
            for name, sweep in sweeps.items()}
    report.data["replays_compared"] = replays_compared(rows.get("defaults", {}), rows.get("replays_off", {}))
    report.data.setdefault("idle", {}).update(idle_rows(report, ("after_sweep",), IDLE_AFTER_S))
    report.data["idle_checks"] = idle_checks(report.data["idle"])


def one_sweep(report: Report, args, name: str, extra: list[str], deadline: float, devices: dict) -> dict:
    """`python -m tune_jobs run` once, read back from its analysis folder: its rows, checks and wall split."""
    import pandas as pd

    from bench_energy_split import split, trial_row

    storage = Path(tempfile.mkdtemp(prefix="gpu-check-sweep-"))
    try:
        cmd = [sys.executable, "-m", "tune_jobs", "run", "--preset", args.sweep_preset, "--storage", str(storage),
               "--name", "gpu-check", *extra, *itertools.chain.from_iterable(("--set", s) for s in args.sweep_set)]
        report.log(f"sweep {name}: $ {shlex.join(cmd)}")
        rc, seconds, marks = run_logged(cmd, report.path(f"sweep-{name}.log"), deadline - time.monotonic(),
                                        marks=MARKS)
        out = {"run": {"command": shlex.join(cmd), "exit_code": rc, "timed_out": rc is None,
                       "wall_s": round(seconds, 1), "marks": marks}}
        experiment, analysis = storage / "gpu-check", storage / "gpu-check" / "analysis"
        if not (analysis / "trials.csv").exists() and experiment.exists():  # interrupted: analyze what is there
            run_logged([sys.executable, "-m", "tune_jobs", "analyze", str(experiment)],
                       report.path(f"analyze-{name}.log"), 20)
        if not (analysis / "trials.csv").exists():
            raise RuntimeError(f"no trials.csv: sweep {name} left nothing to analyze (exit {rc}); "
                               f"see {report.path(f'sweep-{name}.log')}")
        trials = pd.read_csv(analysis / "trials.csv")
        epochs = pd.read_parquet(analysis / "epochs.parquet")
        report_md = (analysis / "report.md").read_text() if (analysis / "report.md").exists() else ""
        out["trials"] = sweep_rows(trials, epochs)
        out["checks"] = sweep_checks(trials, epochs, report_md, devices, error_bar=name == "defaults")
        last = [trial_row(row) for _, row in last_epochs(epochs).reset_index().iterrows()]
        out["split"] = split({"wall_s": seconds, "marks": marks, "trials": last, "read_s": math.nan})
        out["measurement_share"] = round((out["split"]["measurement_s"] + out["split"]["replays_s"]) / seconds, 3)
        report.log(f"sweep {name}: {out['run']}; split {out['split']}; checks {out['checks']}")
        shutil.copytree(analysis, report.path(f"sweep-{name}-analysis"), dirs_exist_ok=True)
        return out
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


def replays_compared(defaults: dict, replays_off: dict) -> list[dict]:
    """Per trial of both sweeps (by its number): what the replays changed (the headline against the
    run's own figure) and what they cost (the replays' window)."""
    rows = []
    for number, on in defaults.items():
        off = replays_off.get(number)
        if off is None:
            continue
        rows.append({"trial": number, "lr": on.get("lr"), "batch_size": on.get("batch_size"),
                     "method": on.get("energy_method"), "replays": on.get("replays"),
                     "replay_time_s": on.get("replay_time_s"), "energy_j": on.get("energy_j"),
                     "energy_err_j": on.get("energy_err_j"), "energy_j_replays_off": off.get("energy_j"),
                     "energy_err_j_replays_off": off.get("energy_err_j"), "time_s": on.get("time_s"),
                     "time_s_replays_off": off.get("time_s")})
    return rows


CHECKS = {  # a sweep's per-trial checks: what each compares
    "finished": "the trial ended by its stop rule",
    "gpu_joules": "its energy is GPU joules, finite and positive",
    "at_least_idle": "each window's joules (its own run's, the replays') at least the GPU's idle power (with a "
                     "context, probed apart) over that window's seconds, within both error bars",
    "error_bar": "energy_err_j at most 5% of energy_j",
    "windows_agree": "direct: the headline is its own run's; replayed: the replays' window holds the replays and "
                     "at most 3 counter periods more, and the run's own mean power is the replays', within the "
                     "error bars and 5%; the idle power after the trial within 10% of before",
    "gpu_ids": "Ray gave it GPU ids",
    "gpu_uuid": "the GPU it measured (by UUID) is one of this host's CUDA devices, of the model it trained on",
}


def trial_failures(trial: dict, cuda_devices: dict[str, str] | None) -> set[str]:
    """The CHECKS one trial (a trials.csv row, with its gpu_ids) fails (a column it lacks fails them)."""
    value = lambda key: float(trial[key]) if isinstance(trial.get(key), numbers.Real) else math.nan  # noqa: E731
    failed = set()
    if trial.get("status") not in TERMINAL:
        failed.add("finished")
    if not ("gpu" in str(trial.get("energy_source")) and 0 < value("energy_j") < math.inf):
        failed.add("gpu_joules")
    replayed = trial.get("energy_method") == "replay"
    windows = [("first_run_energy_j", "first_run_time_s", "first_run_energy_err_j")]
    windows += [("energy_j", "time_s", "energy_err_j")] if replayed else []
    idle_w, idle_err_w = value("gpu_idle_w"), value("gpu_idle_err_w")
    if not all(value(j) >= (idle_w - idle_err_w) * value(t) - value(e) for j, t, e in windows):
        failed.add("at_least_idle")
    if not value("energy_err_j") <= 0.05 * value("energy_j"):
        failed.add("error_bar")
    if replayed:
        period_s, work_s = value("energy_resolution_s"), value("replays") * value("time_s")
        own_w, own_err_w = value("first_run_energy_j") / value("first_run_time_s"), \
            value("first_run_energy_err_j") / value("first_run_time_s")
        replay_w, replay_err_w = value("energy_j") / value("time_s"), value("energy_err_j") / value("time_s")
        agree = (work_s <= value("replay_time_s") <= work_s + 3 * period_s
                 and abs(own_w - replay_w) <= own_err_w + replay_err_w + 0.05 * replay_w)
    else:
        agree = (value("time_s"), value("energy_j")) == (value("first_run_time_s"), value("first_run_energy_j"))
    if not (agree and abs(value("gpu_idle_after_w") - idle_w) <= 0.1 * idle_w):
        failed.add("windows_agree")
    if str(trial.get("gpu_ids", "")) in ("", "nan", "None"):
        failed.add("gpu_ids")
    measured = str(trial.get("gpu_uuids", "")).split(",")
    if len(measured) != 1 or not measured[0].startswith("GPU-") or (
            cuda_devices is not None and cuda_devices.get(measured[0]) != trial.get("device")):
        failed.add("gpu_uuid")
    return failed


def sweep_checks(trials, epochs, report_md: str, cuda_devices: dict[str, str] | None = None,
                 error_bar: bool = True) -> dict:
    """The issue's checks on a GPU sweep, each a bool (CHECKS, every trial passing; no two trials on one
    GPU at once; the report's energy measured), with the trials that failed each. `cuda_devices` (UUID ->
    torch's name, this host's): each trial measured one of them, of the model it trained on. Without
    `error_bar` (replays off) the 5% error bar is not asked for."""
    last = last_epochs(epochs)
    failures: dict[str, list] = {key: [] for key in CHECKS if error_bar or key != "error_bar"}
    for trial in trials.to_dict("records"):
        tid = trial["trial_id"]
        final = last.loc[tid].to_dict() if tid in last.index else {}
        for check in trial_failures({**trial, "gpu_ids": final.get("gpu_ids", "")}, cuda_devices) & set(failures):
            failures[check].append(tid)
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
    return {"trials": len(trials), **{f"every_trial_{key}": not ids for key, ids in failures.items()},
            "no_two_trials_on_a_gpu_at_once": not overlaps,
            "report_energy_measured": bool(report_md) and "not measured" not in report_md,
            "failing_trials": {key: ids for key, ids in failures.items() if ids}, "overlaps": overlaps}


# -- stage tests -------------------------------------------------------------------------------------------
def tests_stage(report: Report, args, deadline: float) -> None:
    """The GPU test files, every test named and timed, for at least --tests-min-s (none killed)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-rA", "--durations=15", "-p", "no:cacheprovider",
           "-m", args.tests_marker, *shlex.split(args.tests_args)]
    if importlib.util.find_spec("xdist") and args.tests_workers > 1:
        cmd += ["-n", str(args.tests_workers)]
    limit_s = max(deadline - time.monotonic() - GRACE_S, args.tests_min_s)
    report.log(f"$ {shlex.join(cmd)}  (limit {limit_s:.0f} s)")
    rc, seconds, _ = run_logged(cmd, report.path("pytest.log"), limit_s)
    output = report.path("pytest.log").read_text()
    report.data["tests"] = {"command": shlex.join(cmd), "exit_code": rc, "timed_out": rc is None,
                            "limit_s": round(limit_s), "wall_s": round(seconds, 1), **pytest_counts(output),
                            **pytest_outcomes(output)}


def pytest_outcomes(output: str) -> dict:
    """-rA's outcome of every test, and --durations' slowest (seconds, phase, test)."""
    outcomes = {}
    for line in output.splitlines():
        found = re.match(r"^(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS) (\S+)", line)
        if found:
            outcomes[found.group(2)] = found.group(1).lower()
    durations = [[float(seconds), phase, test] for seconds, phase, test in
                 re.findall(r"^([\d.]+)s (call|setup|teardown)\s+(\S+)", output, re.M)]
    return {"outcomes": outcomes, "durations": durations}


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
def failed_checks(data: dict) -> list[str]:
    """What keeps a run from all_ok, one line each: a stage that failed, a sweep's or the idle stage's
    check, a test that failed or errored or a test run cut short, the fast loop off the seed's accuracy."""
    failed = [f"stage {stage}: {info['status']}" for stage, info in data.get("stages", {}).items()
              if not info["status"].startswith("ok") and info["status"] != "skipped"]
    for name, sweep in data.get("sweeps", {}).items():
        failed += [f"sweep {name}: {key}" for key, value in sweep.get("checks", {}).items()
                   if isinstance(value, bool) and not value]
    failed += [f"idle: {key}" for key, value in data.get("idle_checks", {}).items() if not value]
    tests = data.get("tests", {})
    failed += [f"tests: {tests[key]} {key}" for key in ("failed", "errors") if tests.get(key)]
    failed += ["tests: cut short (timed out)"] if tests.get("timed_out") else []
    failed += [f"epoch accuracy: {row.get('data')} off by more than {ACCURACY_TOLERANCE:g}"
               for row in data.get("epoch_accuracy", []) if not row.get("within_0_5_points", True)]
    return failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="output folder")
    parser.add_argument("--budget-s", type=float, default=360, help="time for all stages (default 360)")
    parser.add_argument("--allow-cpu", action="store_true", help="without CUDA, run every stage on the CPU")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per epoch row, median (default 3)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch CPU threads")
    parser.add_argument("--nvml-s", type=float, default=3.0, help="seconds to poll the energy counter")
    parser.add_argument("--skip-variants", action="store_true",
                        help="no rows of the fast loop other ways, its baselines or its profile")
    parser.add_argument("--skip-sweep", action="store_true")
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--sweep-preset", default="seed")
    parser.add_argument("--sweep-set", action="append", default=[], metavar="KEY=VALUE", help="passed as --set")
    parser.add_argument("--tests-marker", default="gpu or not (slow or cluster)")
    parser.add_argument("--tests-args", default=TESTS_ARGS, help="pytest arguments: the test files (default: the "
                                                                 "GPU test files)")
    parser.add_argument("--tests-min-s", type=float, default=150,
                        help="the tests run this long at least, whatever the budget leaves (default 150)")
    parser.add_argument("--tests-workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="pytest-xdist workers where installed (default min(8, cores))")
    parser.add_argument("--variant-child", help=argparse.SUPPRESS)
    parser.add_argument("--host-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--idle-child", nargs=2, metavar=("KIND", "UUID"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant_child:
        variant_child(args.variant_child)
        return 0
    if args.host_child:
        host_child()
        return 0
    if args.idle_child:
        idle_child(*args.idle_child)
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
    for number, stage in enumerate(STAGE_SHARES):
        status = "skipped"
        stage_started = time.monotonic()
        if stage in shares:
            upto = list(shares)[: list(shares).index(stage) + 1]
            deadline = started + args.budget_s * sum(shares[s] for s in upto) / sum(shares.values())
            report.log(f"stage {number + 1}/{len(STAGE_SHARES)} {stage}: until +{deadline - started:.0f} s of "
                       f"{args.budget_s:.0f} s")
            try:
                if stage == "host":
                    report.data.update(commit(), **child_json(["--host-child"], "HOST ", 120),
                                       budget_s=args.budget_s, complete=False)
                    report.name(report.data["gpu_name"])
                    report.log(f"{report.data['gpu_name']}, driver {report.data['driver']}, torch "
                               f"{report.data['torch']}, CUDA {report.data['cuda']}, commit {report.data['commit']}; "
                               f"writing {report.path('json')}")
                elif stage == "idle":
                    report.data["idle"] = idle_rows(report, ("no_context", "context"),
                                                    max(30.0, deadline - time.monotonic()))
                    report.data["idle_checks"] = idle_checks(report.data["idle"])
                elif stage == "sweep":
                    sweep_stage(report, args, deadline)
                elif stage == "nvml":  # from here on, this process holds a CUDA context
                    report.data.update(nvml_energy_update(device, nvml_device(), args.nvml_s))
                    report.log(f"nvml_energy_update_s {report.data['nvml_energy_update_s']}: {report.data['nvml']}")
                elif stage == "epoch":
                    epoch_stage(report, device, args, deadline)
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                else:
                    tests_stage(report, args, deadline)
                    report.log(f"tests: {({k: v for k, v in report.data['tests'].items() if k != 'outcomes'})}")
                status = "ok" if time.monotonic() <= deadline else "ok, over budget"
            except Exception as exc:  # noqa: BLE001 - record it, go on with the next stage
                status = f"failed: {type(exc).__name__}: {exc}"
                if stage == "host":
                    report.name("unknown")
        report.data.setdefault("stages", {})[stage] = {"status": status,
                                                       "seconds": round(time.monotonic() - stage_started, 1)}
        report.log(f"stage {stage}: {status}")
        report.save()
    failed = failed_checks(report.data)
    report.data.update(complete=True, total_s=round(time.monotonic() - started, 1), all_ok=not failed,
                       failed_checks=failed)
    report.save()
    report.log(f"done in {report.data['total_s']} s: {report.path('json')} "
               f"({'all ok' if not failed else 'NOT all ok: ' + '; '.join(failed)})")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
