"""Scale: sweeps of 250, 500 and 1,000 trials on a simulated cluster of 4 nodes with 32 logical GPUs.

    python benchmarks/bench_scale.py                        # 250, 500 and 1,000 trials (about 10 minutes on 2 cores)
    python benchmarks/bench_scale.py --sizes 100 --nodes 4 --gpus-per-node 8

Starts Ray's multi-node setup on this machine (as tests/processes.start_ray_node does): a
head that runs no trials and --nodes worker nodes with --gpus-per-node logical GPUs
each. Each size is one sweep driven by a fresh driver process through the production
launch path (`tune_jobs.launch.start_sweep`: the Tuner, its stopper, loggers, storage
guard, progress lines and checkpoints), one trial per logical GPU. Only
the trial function is swapped for a lean one, so 32 trial processes fit on 2 cores
and 24 GiB: it imports no torch, reads the tiny dataset from Ray's object store,
scores it with a nearest-class-mean rule for 2 epochs, and reports its `EpochReport`s
and checkpoints as `sweep_trial` does (the epochs since the last report in one report
every `resources.report_every_s` and after the last epoch, a checkpoint after the last
epoch and every `resources.checkpoint_every_s`). What is measured is scheduling,
reporting and bookkeeping, not training.

Overhead per trial = (wall_s - sum of trial times / GPUs) / trials: the sweep's wall
time (driver start to the Tuner's return, Ray's cluster start excluded) beyond a
perfectly packed schedule of the trials' own run times (Tune's time_total_s: the
trial function from start to its last report), per trial. It includes starting the
32 trial processes once (they are reused), so it falls as sweeps grow; a rise from
the smallest to the largest size would show a cost per trial that grows with the sweep.

Prints one JSON line per size with trials, recorded (trials whose every result is in
the experiment), nodes, gpus, wall_s, overhead_s_per_trial, driver_peak_rss_mib (the
driver's peak when the Tuner returns, before this script reads the results); then one
line with analyze_s (`instrument-sweep analyze` of the largest experiment) and the
growth from the smallest to the largest size (goals: overhead <= 0.1 s per trial,
driver memory and overhead per trial within 20%, analyze <= 60 s).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

EPOCHS = 2
TAG = "INSTRUMENT_SWEEP_BENCH_TAG"  # every process of the simulated cluster carries it, so all can be ended
LEAN_ENV = {"MALLOC_ARENA_MAX": "1", "OMP_NUM_THREADS": "1", "RAY_prestart_worker_first_driver": "0",
            "RAY_DEDUP_LOGS": "0"}
RAY_CLI = [sys.executable, "-m", "ray.scripts.scripts"]  # also where Ray is on PYTHONPATH, with no `ray` script


def scale_spec(n_trials: int) -> dict:
    """n_trials distinct points, 2 fixed epochs each (lr varies; nothing trains)."""
    return {"name": f"scale-{n_trials}", "stop": {"threshold": None, "max_epochs": EPOCHS},
            "views": {"grid": {"lr": [round(1e-4 * (i + 1), 6) for i in range(n_trials)], "batch_size": 16}},
            "resources": {"cpus_per_trial": 1, "gpus_per_trial": 1, "max_failures": 0}}


def tiny_dataset():
    """40 training and 20 test rows, 4 features, 2 classes."""
    import numpy as np

    from trainables.data.dataset import Dataset

    rng = np.random.default_rng(0)
    make = lambda n: ((rng.normal(size=(n, 4)) + np.repeat([[0.0], [3.0]], n // 2, axis=0)).astype(np.float32),  # noqa: E731
                      np.repeat([0, 1], n // 2))
    (train_x, train_y), (test_x, test_y) = make(40), make(20)
    return Dataset(train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y, classes=("a", "b"),
                   metadata={"source": "bench_scale"}, path="<tiny>")


def lean_trial(config: dict, dataset, settings: dict | None = None) -> None:
    """sweep_trial's reporting and checkpointing without torch: a nearest-class-mean score per epoch."""
    import numpy as np

    from trainables.training.report import EpochReport
    from trainables.training.stop import StopRule
    from trainables.training.config import trial_config
    from trainables.tuning.trial import STATE_FILE, Cadence, ray_placement, resident_mib

    started_at_s = time.time()
    trial = trial_config(config["trial"], settings)
    rule = StopRule(**trial["stop"])
    labels = {"trial_number": trial["number"], "lr": trial["lr"], "batch_size": trial["batch_size"],
              "seed": trial["seed"], "views": ",".join(trial["views"]), "device": "cpu",
              "node": socket.gethostname(), **ray_placement()}
    hits, time_s, epoch = 0, 0.0, 0
    done, cadence = False, Cadence(trial)
    while not done:
        epoch += 1
        began = time.perf_counter()
        means = np.stack([dataset.train_x[dataset.train_y == c].mean(axis=0) for c in (0, 1)])
        predict = lambda x: ((x[:, None, :] - means) ** 2).sum(axis=2).argmin(axis=1)  # noqa: E731
        train_acc = float((predict(dataset.train_x) == dataset.train_y).mean())
        test_acc = float((predict(dataset.test_x) == dataset.test_y).mean())
        hits, status = rule.after_epoch(epoch, hits, train_acc, diverged=False)
        epoch_s = time.perf_counter() - began
        time_s += epoch_s
        done = status.value != "running"
        report = EpochReport(epoch=epoch, train_acc=train_acc, val_acc=train_acc, test_acc=test_acc,
                             epoch_time_s=epoch_s, time_s=time_s, status=status.value, overhead_time_s=0.0,
                             **labels, started_at_s=started_at_s, ended_at_s=time.time(), rss_mib=resident_mib())
        state = {"epoch": epoch}
        cadence.due(done)
        cadence.send(report.to_dict(),  # as sweep_trial
                     (lambda path: Path(path, STATE_FILE).write_text(json.dumps(state)))
                     if cadence.checkpoint else None)


def drive(args: argparse.Namespace) -> None:
    """One sweep of --drive trials on the cluster at --address; prints its figures as JSON."""
    import analysis
    from tune_jobs import launch
    from tune_jobs.cluster import connect, disconnect
    from tune_jobs.spec import spec_from_dict

    n = args.drive
    launch.sweep_trial = lean_trial  # the one thing swapped: everything else is what `run` uses
    spec = spec_from_dict(scale_spec(n))
    started = time.perf_counter()
    cluster = connect(args.address)
    launch.start_sweep(spec, tiny_dataset(), args.storage, spec.name, cluster)
    wall_s = time.perf_counter() - started
    driver_peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before reading results
    disconnect(cluster)
    experiment = str(Path(args.storage, spec.name))
    trials = analysis.load_trials(experiment)
    epochs = analysis.load_epochs(experiment)
    recorded = int(((trials.status == "max_epochs") & (trials.epochs == EPOCHS)).sum())
    trial_s = float(epochs.groupby("trial_id").time_total_s.max().sum())
    gpus = cluster.gpus
    print(json.dumps({
        "trials": n, "recorded": recorded, "nodes": cluster.nodes - 1, "gpus": int(gpus),
        "wall_s": round(wall_s, 2),
        "overhead_s_per_trial": round((wall_s - trial_s / gpus) / n, 4),
        "driver_peak_rss_mib": round(driver_peak_rss_mib, 1),
        "sum_trial_s": round(trial_s, 2),
        "trial_peak_rss_mib": round(float(epochs.rss_mib.max()), 1),
        "experiment": experiment,
    }), flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_env(tag: str) -> dict:
    return {**os.environ, **LEAN_ENV, TAG: tag, "RAY_AUTH_MODE": "token",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def end_tagged(tag: str) -> None:
    """SIGKILL every process carrying `tag` and their children: the nodes, their raylets, agents and
    trial workers."""
    from tune_jobs.cluster import pids_with_env

    for _ in range(3):
        pids = pids_with_env(TAG, tag)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        time.sleep(0.5)


def ray_node(tag: str, temp_dir: str, head_port: int, head: bool, gpus: int, log: Path) -> subprocess.Popen:
    """`ray start --block` for a head (no CPUs: it runs no trials) or a worker node, with its own ports."""
    args = [*RAY_CLI, "start", "--block", "--disable-usage-stats", f"--num-gpus={gpus}",
            f"--num-cpus={0 if head else gpus}", f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
            f"--metrics-export-port={free_port()}"]
    args += ([ "--head", f"--port={head_port}", f"--temp-dir={temp_dir}", "--include-dashboard=false"] if head
             else [f"--address=127.0.0.1:{head_port}"])
    return subprocess.Popen(args, stdout=log.open("w"), stderr=subprocess.STDOUT, env=ray_env(tag),
                            start_new_session=True)


def cluster_gpus(address: str, tag: str) -> float:
    code = f"import ray; ray.init(address='{address}'); print(ray.cluster_resources().get('GPU', 0))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=ray_env(tag))
    return float(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 and out.stdout.strip() else -1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--sizes", type=int, nargs="+", default=[250, 500, 1000], help="trials per sweep")
    parser.add_argument("--nodes", type=int, default=4, help="worker nodes (the head runs no trials)")
    parser.add_argument("--gpus-per-node", type=int, default=8, help="logical GPUs per worker node")
    parser.add_argument("--drive", type=int, help=argparse.SUPPRESS)  # internal: one sweep in this process
    parser.add_argument("--address", help=argparse.SUPPRESS)
    parser.add_argument("--storage", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drive:
        return drive(args)

    temp_dir = tempfile.mkdtemp(prefix="rs", dir="/tmp")  # short: Ray's socket paths are length-limited
    storage = tempfile.mkdtemp(prefix="bench-scale-")
    tag = uuid.uuid4().hex
    # `ray start` with token auth needs a token to exist (a local ray.init makes one, ray start does not).
    subprocess.run([*RAY_CLI, "get-auth-token", "--generate"], check=True, capture_output=True, env=ray_env(tag))
    try:
        head_port = free_port()
        address = f"127.0.0.1:{head_port}"
        began = time.perf_counter()
        ray_node(tag, temp_dir, head_port, True, 0, Path(temp_dir, "head.log"))
        for i in range(args.nodes):  # one at a time: raylets starting together on 2 cores can time out
            ray_node(tag, temp_dir, head_port, False, args.gpus_per_node, Path(temp_dir, f"worker{i}.log"))
            deadline = time.monotonic() + 180
            while cluster_gpus(address, tag) < (i + 1) * args.gpus_per_node:
                if time.monotonic() > deadline:
                    raise SystemExit(f"worker node {i + 1} did not join; see {temp_dir}")
                time.sleep(2)
        print(json.dumps({"cluster_start_s": round(time.perf_counter() - began, 1), "nodes": args.nodes,
                          "gpus": args.nodes * args.gpus_per_node}), flush=True)
        rows = []
        for n in args.sizes:
            out = subprocess.run([sys.executable, __file__, "--drive", str(n), "--address", address, "--storage",
                                  storage], capture_output=True, text=True, env=ray_env(tag))
            lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
            if out.returncode != 0 or not lines:
                raise SystemExit(f"the {n}-trial sweep failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
            rows.append(json.loads(lines[-1]))
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "experiment"}), flush=True)
        started = time.perf_counter()
        analyzed = subprocess.run([sys.executable, "-m", "tune_jobs", "analyze", rows[-1]["experiment"]],
                                  capture_output=True, text=True)
        analyze_s = time.perf_counter() - started
        small, large = rows[0], rows[-1]
        print(json.dumps({
            "analyze_trials": large["trials"], "analyze_s": round(analyze_s, 1), "analyze_exit": analyzed.returncode,
            "all_recorded": all(r["recorded"] == r["trials"] for r in rows),
            "overhead_growth": round(large["overhead_s_per_trial"] / small["overhead_s_per_trial"], 2),
            "driver_rss_growth": round(large["driver_peak_rss_mib"] / small["driver_peak_rss_mib"], 2),
        }), flush=True)
    finally:
        end_tagged(tag)
        shutil.rmtree(storage, ignore_errors=True)


if __name__ == "__main__":
    main()
