"""A trial's result.json and progress.csv hold each epoch once, also after a restart from a
checkpoint (tune_jobs.launch.PerEpochRows; the retries themselves are in test_faults.py,
test_hosts.py and test_s3.py)."""

import csv
import json

from tune_jobs.launch import keep_epochs_through


def test_a_restart_from_a_checkpoint_drops_the_rows_of_the_epochs_it_trains_again(tmp_path):
    rows = [{"epoch": e, "val_acc": 0.5 + e / 100, "status": "running"} for e in range(1, 8)]
    result = tmp_path / "result.json"
    result.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"epoch": 8, "val_')  # cut short by a crash
    progress = tmp_path / "progress.csv"
    with progress.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["val_acc", "epoch", "status"])
        writer.writeheader()
        writer.writerows(rows)
    appending = result.open("a")  # Tune's logger holds its file open for appending: the same file is cut

    for path in (result, progress):
        keep_epochs_through(path, 5)
    appending.write(json.dumps({"epoch": 6}) + "\n")
    appending.close()

    assert [json.loads(line)["epoch"] for line in result.read_text().splitlines()] == [1, 2, 3, 4, 5, 6]
    assert [int(r["epoch"]) for r in csv.DictReader(progress.open())] == [1, 2, 3, 4, 5]
    keep_epochs_through(progress, 0)  # no checkpoint: the trial starts over
    assert progress.read_text().splitlines() == ["val_acc,epoch,status"]
