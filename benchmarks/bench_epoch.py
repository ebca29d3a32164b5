"""Epoch time of the fast loop against the seed's DataLoader loop, same data, same model, one process.

    python benchmarks/bench_epoch.py                        # CPU (and the GPU where there is one)
    python benchmarks/bench_epoch.py --data ~/uiowa --epochs 7 --threads 2

Per batch size in [32, 128, 512, 2048] and device: one warm-up epoch, then the
median of --epochs epochs, each loop on a fresh model (a GPU synchronised before
each clock read; benchmarks/gpu_check.py reuses these rows). Prints one JSON line per
(loader, batch size, device) with loader, batch_size, device, rows, epoch_s,
train_acc (after the last epoch: the loops must learn alike) and, for the fast
loop, ratio = dataloader epoch_s / fast epoch_s; then a table.

Denormals: CPU math flushes denormal floats, as trials do (`trial_gpus`). A
last row trains the fast loop at lr 0.1, batch 128 for 30 epochs, where the
sigmoid saturates, and prints late_over_early = median epoch time of epochs
26-30 / of epochs 2-6 with denormals flushed (goal: at most 1.2) and, measured
in the same run, without (the slowdown flushing removes).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainables.training.loops import make_loop  # noqa: E402
from trainables.training.model import InstrumentNet
from trainables.training.optim import make_optimizer  # noqa: E402
from trainables.data.splits import prepare_splits  # noqa: E402

BATCH_SIZES = (32, 128, 512, 2048)
DENORMAL_LR, DENORMAL_EPOCHS = 0.1, 30


def dataset(spec: str):
    """Standardized training split of a dataset directory / "synthetic"."""
    from trainables.data.sources import resolve_dataset

    ds = resolve_dataset(spec)
    splits = prepare_splits(ds.train_x, ds.train_y, ds.test_x, ds.test_y, 0.2, 0)
    return splits.train_x, splits.train_y, splits.n_classes


def fresh_model(loader: str, n_features: int, n_classes: int, device: torch.device):
    """The seed's model (seeded) and the optimizer TrainingRun gives `loader` (fused Adam for the fast loop)."""
    torch.manual_seed(0)
    model = InstrumentNet(n_features, 256, n_classes).to(device)
    return model, make_optimizer("adam", model.parameters(), 1e-3, fused=loader == "fast")


def train_timed(loader: str, x, y, n_classes: int, batch_size: int, device: torch.device,
                epochs: int) -> tuple[list[float], float, torch.nn.Module]:
    """Seconds of each of `epochs` epochs on a fresh model (the device synchronised before each clock
    read), the last epoch's training accuracy, and the trained model."""
    model, optimizer = fresh_model(loader, x.shape[1], n_classes, device)
    loop = make_loop(loader, x, y, batch_size, device, seed=0)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    for _ in range(epochs):
        sync()
        started = time.perf_counter()
        stats = loop.train_epoch(model, optimizer)
        sync()
        times.append(time.perf_counter() - started)
    return times, stats.acc, model


def epoch_seconds(loader: str, x, y, n_classes: int, batch_size: int, device: torch.device,
                  epochs: int) -> tuple[float, float]:
    """Median epoch seconds after warm-up, and the training accuracy of the last epoch (same results?)."""
    times, acc, _ = train_timed(loader, x, y, n_classes, batch_size, device, epochs + 1)  # the first warms up
    return statistics.median(times[1:]), acc


def bench_rows(x, y, n_classes: int, batch_size: int, device: torch.device, epochs: int) -> list[dict]:
    """The dataloader row and the fast row (with `ratio`) of one batch size and device, as printed."""
    measured = {loader: epoch_seconds(loader, x, y, n_classes, batch_size, device, epochs)
                for loader in ("dataloader", "fast")}
    rows = []
    for loader, (seconds, train_acc) in measured.items():
        row = {"loader": loader, "batch_size": batch_size, "device": device.type, "rows": int(len(y)),
               "epoch_s": round(seconds, 5), "train_acc": round(train_acc, 4)}
        if loader == "fast":
            row["ratio"] = round(measured["dataloader"][0] / seconds, 2)
        rows.append(row)
    return rows


def late_over_early(x, y, n_classes: int, flush: bool) -> tuple[float, float, float]:
    """(median epoch s of epochs 2-6, of the last 5, their ratio) at lr 0.1, batch 128, on CPU."""
    torch.set_flush_denormal(flush)
    try:
        torch.manual_seed(0)
        model = InstrumentNet(x.shape[1], 256, n_classes)
        optimizer = make_optimizer("adam", model.parameters(), DENORMAL_LR, fused=True)
        loop = make_loop("fast", x, y, 128, torch.device("cpu"), seed=0)
        times = []
        for _ in range(DENORMAL_EPOCHS):
            started = time.perf_counter()
            loop.train_epoch(model, optimizer)
            times.append(time.perf_counter() - started)
    finally:
        torch.set_flush_denormal(True)
    early, late = statistics.median(times[1:6]), statistics.median(times[-5:])
    return early, late, late / early


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--data", default="synthetic", help="dataset directory or 'synthetic'")
    parser.add_argument("--epochs", type=int, default=5, help="timed epochs per measurement (median)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # as every trial does (trainables.training.gpus.trial_gpus)
    x, y, n_classes = dataset(args.data)
    devices = [torch.device("cpu")] + ([torch.device("cuda", 0)] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        for batch_size in BATCH_SIZES:
            for row in bench_rows(x, y, n_classes, batch_size, device, args.epochs):
                rows.append(row)
                print(json.dumps(row), flush=True)
    print(f"\n{'device':<6} {'batch':>5} {'rows':>7} {'dataloader_s':>12} {'fast_s':>9} {'ratio':>6} "
          f"{'train_acc (dataloader / fast)':>30}")
    for fast in (r for r in rows if r["loader"] == "fast"):
        base = next(r for r in rows if r["loader"] == "dataloader" and r["batch_size"] == fast["batch_size"]
                    and r["device"] == fast["device"])
        print(f"{fast['device']:<6} {fast['batch_size']:>5} {fast['rows']:>7} {base['epoch_s']:>12.4f} "
              f"{fast['epoch_s']:>9.4f} {fast['ratio']:>5.2f}x {base['train_acc']:>20.4f} / {fast['train_acc']:.4f}")

    denormal = {flush: late_over_early(x, y, n_classes, flush) for flush in (True, False)}
    row = {"bench": "denormals", "lr": DENORMAL_LR, "batch_size": 128, "epochs": DENORMAL_EPOCHS, "device": "cpu",
           "early_epoch_s": round(denormal[True][0], 5), "late_epoch_s": round(denormal[True][1], 5),
           "late_over_early": round(denormal[True][2], 2),
           "late_over_early_unflushed": round(denormal[False][2], 2)}
    print(json.dumps(row), flush=True)
    print(f"\nlr {DENORMAL_LR:g}, batch 128, epochs 26-30 / 2-6: {row['late_over_early']:.2f}x with denormals "
          f"flushed (goal <= 1.2), {row['late_over_early_unflushed']:.2f}x without")


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()