"""Live metrics: what a trial publishes per epoch through Ray's metrics API, scraped from a real
Ray head's Prometheus endpoint during a sweep, and the Grafana dashboard that charts them."""

import json
import math
import re
import tempfile
import urllib.request
from pathlib import Path

import pytest
import yaml

import analysis
from processes import EpochGate, free_port, http_status, kill_tagged, new_tag, spawn_cli, start_ray_node, wait_until
from trainables.training.report import EpochReport
from trainables.training.stop import StopRule
from trainables.tuning.metrics import METRICS, PREFIX, TAG_KEYS, epoch_values, trial_tags

DASHBOARD = Path(__file__).parents[1] / "tune_jobs" / "grafana" / "instrument_sweep.json"
ENERGY_METRICS = {"power_w", "energy_j"}


def report(**fields) -> EpochReport:
    base = dict(epoch=4, val_acc=0.97, train_loss=0.1, hits_in_a_row=1, epoch_time_s=2.0, time_s=8.0,
                trial_number=3, lr=1e-3, batch_size=128, seed=0)
    return EpochReport(**{**base, **fields})


def test_unmeasured_energy_and_power_are_left_out_never_zero():
    values = epoch_values(report(), StopRule())
    assert not ENERGY_METRICS & set(values)
    assert values["val_acc"] == 0.97 and values["epoch"] == 4 and values["done"] == 0.0
    assert values["target_val_acc"] == 0.98


def test_measured_power_is_the_runs_joules_over_its_seconds():
    values = epoch_values(report(energy_j=1200.0, status="reached_target"), StopRule())
    assert values["power_w"] == 150.0 and values["energy_j"] == 1200.0 and values["done"] == 1.0
    assert set(values) == set(METRICS)


def test_no_target_line_without_an_accuracy_target():
    assert "target_val_acc" not in epoch_values(report(), StopRule(threshold=None, max_epochs=5))
    assert "target_val_acc" not in epoch_values(report(), StopRule(threshold=0.1, metric="val_loss"))


def test_tags_name_the_sweep_and_the_trial():
    assert trial_tags("seed-1", report()) == {"sweep": "seed-1", "trial": "3", "lr": "0.001",
                                              "batch_size": "128", "seed": "0"}


def dashboard_metrics() -> set[str]:
    """Every metric name (without Ray's prefix) the Grafana dashboard queries."""
    text = json.dumps([t.get("expr", "") for p in json.loads(DASHBOARD.read_text())["panels"]
                       for t in p.get("targets", [])] +
                      [v.get("query", "") for v in json.loads(DASHBOARD.read_text())["templating"]["list"]])
    return set(re.findall(r"ray_" + PREFIX + r"(\w+)", text))


def test_grafana_dashboard_queries_only_published_metrics():
    queried = dashboard_metrics()
    assert queried - set(METRICS) == set()
    assert {"val_acc", "target_val_acc", "power_w", "energy_j", "done"} <= queried


# -- A real sweep against a Ray head that exports metrics. ---------------------------------

SWEEP = {  # two trials that never reach the target: held after 2 epochs until every metric is scraped
    "name": "live",
    "train": {"n_hidden": 32},
    "stop": {"threshold": 0.995, "patience": 2, "max_epochs": 4},
    "views": {"lr": {"lr": [1.0e-5, 1.0e-6], "batch_size": 64}},
}
SAMPLE = re.compile(r"^ray_" + PREFIX + r"(\w+)\{(.*)\} (\S+)$")


def scrape(url: str) -> list[tuple[str, dict, float]]:
    """(name without prefixes, labels, value) of every instrument-sweep sample at `url`."""
    try:
        text = urllib.request.urlopen(url, timeout=5).read().decode()
    except OSError:
        return []
    samples = []
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2)))
            samples.append((match.group(1), labels, float(match.group(3))))
    return samples


@pytest.mark.slow
@pytest.mark.cluster  # starts a Ray head
def test_a_sweep_publishes_every_metric_with_its_trial_tags(tmp_path, blob_dataset_dir):
    tag = new_tag()
    temp_dir = tempfile.mkdtemp(prefix="rl", dir="/tmp")  # short: Ray's socket paths have a length limit
    head_port, dashboard_port, metrics_port = free_port(), free_port(), free_port()
    gate = EpochGate(tmp_path / "gate", epochs=2)  # the trials run on the head's workers: its environment
    samples = []

    def scraped_every_trial() -> bool:
        """Each trial's every metric (but energy, never measured on a CPU-only host) scraped at least once."""
        samples.extend(scrape(f"http://127.0.0.1:{metrics_port}/metrics"))
        names = {}
        for name, labels, _ in samples:
            names.setdefault(labels["trial"], set()).add(name)
        return len(names) == 2 and all(set(METRICS) - ENERGY_METRICS <= found for found in names.values())

    try:
        # Ray pushes metrics every 10 s by default; every second keeps this test short.
        start_ray_node(tag, temp_dir, head_port, head=True, dashboard_port=dashboard_port,
                       metrics_port=metrics_port, metrics_interval_ms=1000, log=Path(temp_dir) / "head.log",
                       env=gate.env)
        wait_until(lambda: http_status(f"http://127.0.0.1:{dashboard_port}/api/jobs/") in (200, 401), 120, "the head")
        spec = tmp_path / "live.yaml"
        spec.write_text(yaml.safe_dump(SWEEP))
        log = tmp_path / "run.log"
        run = spawn_cli("run", str(spec), "--data", blob_dataset_dir, "--address", f"127.0.0.1:{head_port}",
                        "--storage", str(tmp_path), "--name", "live", "--no-analyze", tag=tag, log=log)
        gate.wait_held(2)
        try:  # held after two epochs (their metrics set in their workers) until Ray has pushed them all
            wait_until(scraped_every_trial, 120, "every metric of both trials at the head's metrics port")
        except TimeoutError:
            pass  # asserted below, naming what is missing
        gate.open()
        assert run.wait(300) == 0, log.read_text()[-3000:]
    finally:
        kill_tagged(tag)

    epochs = analysis.load_epochs(str(tmp_path / "live"))
    trials = {str(r.trial_number): r for r in analysis.load_trials(str(tmp_path / "live")).itertuples()}
    # What each trial set, from what it reported: energy and power only where measured (a GPU, or
    # readable RAPL while the trial had the node's CPUs to itself), never on this CPU-only machine.
    rule = StopRule(**SWEEP["stop"])
    published = {str(n): set().union(*(epoch_values(EpochReport.from_dict(row), rule) for row in rows.to_dict("records")))
                 for n, rows in epochs.groupby("trial_number")}
    measured = bool(epochs.energy_j.notna().any())
    assert samples, "no instrument_sweep metric was scraped:\n" + log.read_text()[-2000:]
    seen = {}
    for name, labels, value in samples:
        assert set(TAG_KEYS) <= set(labels) and labels["sweep"] == "live"
        trial = trials[labels["trial"]]
        assert (labels["lr"], labels["batch_size"], labels["seed"]) == (f"{trial.lr:g}", str(trial.batch_size),
                                                                        str(trial.seed))
        assert math.isfinite(value)
        seen.setdefault(labels["trial"], set()).add(name)
    assert set(seen) == set(trials)  # every trial published
    for number, names in seen.items():
        expected = published[number]
        assert names == expected, f"trial {number}: missing {expected - names}, unexpected {names - expected}"
        assert expected >= set(METRICS) - ENERGY_METRICS
        assert (ENERGY_METRICS <= expected) == bool(epochs[epochs.trial_number == int(number)].energy_j.notna().any())
    assert dashboard_metrics() - ENERGY_METRICS <= set().union(*seen.values())
    if measured:
        assert dashboard_metrics() <= set().union(*seen.values())
