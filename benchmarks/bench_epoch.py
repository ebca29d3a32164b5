"""Epoch time of the fast loop against the seed's DataLoader loop, same data, same model, one process.

    python benchmarks/bench_epoch.py                        # CPU (and the GPU where there is one)
    python benchmarks/bench_epoch.py --data ~/uiowa --epochs 7 --threads 2

Per batch size in [32, 128, 512, 2048] and device: one warm-up epoch, then the
median of --epochs epochs, each loop on a fresh model (a GPU synchronised before
each clock read; benchmarks/gpu_check.py reuses these rows). Prints one JSON line per
(loader, batch size, device) with loader, batch_size, device, rows, epoch_s,
train_acc (after the last epoch: the loops must learn alike) and, for the fast
loop, ratio = dataloader epoch_s / fast epoch_s; then a table.
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

from trainables.loops import make_loop  # noqa: E402
from trainables.model import InstrumentNet
from trainables.optim import make_optimizer  # noqa: E402
from trainables.prepare import prepare_splits  # noqa: E402

BATCH_SIZES = (32, 128, 512, 2048)


def dataset(spec: str):
    """Standardized training split of a dataset directory / "synthetic"."""
    from trainables.dataset import resolve_dataset

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="synthetic", help="dataset directory or 'synthetic'")
    parser.add_argument("--epochs", type=int, default=5, help="timed epochs per measurement (median)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
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


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
