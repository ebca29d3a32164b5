"""What `run` says about where it runs, without Ray: the dashboard as seen from the driver's host
and the `resume` command an unfinished sweep prints (tune_jobs.cluster, tune_jobs.cli_sweep)."""

import shlex
from pathlib import Path

import pytest

from analysis import storage
from trainables.errors import InputError
from tune_jobs import cluster, ray_private
from tune_jobs.cli_sweep import RESUME_ENV, resume_command
from tune_jobs.cluster import dashboard_as_seen_here


def test_a_dashboard_on_the_heads_loopback_comes_with_the_tunnel_that_reaches_it():
    for address in ("ray://10.0.0.5:10001", "10.0.0.5:6379"):
        seen = dashboard_as_seen_here("http://127.0.0.1:8265", address)
        assert "ssh -L 8265:127.0.0.1:8265 10.0.0.5" in seen and "http://127.0.0.1:8265" in seen
    assert dashboard_as_seen_here("http://127.0.0.1:8265", "127.0.0.1:6379") == "http://127.0.0.1:8265"  # here
    assert dashboard_as_seen_here("http://10.0.0.5:8265", "ray://10.0.0.5:10001") == "http://10.0.0.5:8265"
    assert dashboard_as_seen_here("", "ray://10.0.0.5:10001") == ""


def test_the_resume_command_names_storage_and_cluster_where_they_are_not_the_defaults(tmp_path, monkeypatch):
    monkeypatch.delenv(RESUME_ENV, raising=False)
    uri = "s3://b/sweeps?endpoint_override=127.0.0.1:9000&scheme=http"
    words = shlex.split(resume_command(uri, "s", "10.0.0.5:6379"))  # as a shell reads it back
    assert words == ["instrument-sweep", "resume", "s", "--storage", uri, "--address", "10.0.0.5:6379"]
    assert resume_command(str(tmp_path), "s") == f"instrument-sweep resume s --storage {tmp_path}"
    default = str(Path(storage.DEFAULT_STORAGE).expanduser().absolute())
    assert resume_command(default, "s") == "instrument-sweep resume s"


def test_where_the_environment_says_how_to_continue_that_is_the_resume_command(monkeypatch):
    """A Slurm job sets it: its sweep is continued as a new job, not by `resume` on the login node."""
    monkeypatch.setenv(RESUME_ENV, "instrument-sweep slurm --resume s --storage /shared/sweeps")
    assert resume_command("s3://b/sweeps", "s", "10.0.0.5:6379") == \
        "instrument-sweep slurm --resume s --storage /shared/sweeps"


def test_a_driver_is_refused_only_where_the_process_table_shows_the_clusters_nodes_on_other_hosts(monkeypatch):
    """HOST:PORT joins through this host's node. Where `ps` shows the cluster's raylets, all on
    other hosts (hosts sharing a process table), the driver is told to use Ray Client; where it
    shows none of them (procfs's hidepid, a container, a GCS named by another address), Ray chooses."""
    elsewhere = [("10.255.0.7", "10.255.0.1:6379")]  # a raylet of that GCS on an address not this host's
    monkeypatch.setattr(ray_private, "raylet_addresses", lambda: elsewhere)
    with pytest.raises(InputError, match=r"--address.*ray://10\.255\.0\.1:10001"):
        cluster.local_node_ip("10.255.0.1", 6379)
    assert cluster.local_node_ip("10.255.0.1", 6380) is None  # another cluster's raylet
    monkeypatch.setattr(ray_private, "raylet_addresses", lambda: [])
    assert cluster.local_node_ip("10.255.0.1", 6379) is None
    monkeypatch.setattr(ray_private, "raylet_addresses", lambda: [*elsewhere, ("127.0.0.1", "127.0.0.1:6379")])
    assert cluster.local_node_ip("127.0.0.1", 6379) == "127.0.0.1"
