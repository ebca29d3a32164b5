"""Submitting a sweep as a Ray Job to a real Ray head started with token auth, as cluster.yaml does."""

import re
import socket
import tempfile
from pathlib import Path

import pytest

import analysis
from processes import cli, free_port, http_status, kill_tagged, new_tag, start_ray_node, wait_until

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def ray_head():
    """A head node (2 CPUs, dashboard and Jobs API on 127.0.0.1) in its own processes."""
    tag = new_tag()
    temp_dir = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # short: Ray's socket paths have a length limit
    dashboard_port = free_port()
    start_ray_node(tag, temp_dir, free_port(), head=True, dashboard_port=dashboard_port,
                   log=Path(temp_dir) / "head.log")
    url = f"http://127.0.0.1:{dashboard_port}"
    wait_until(lambda: http_status(f"{url}/api/jobs/") in (200, 401), 120, "the Jobs API")
    yield url, tag
    kill_tagged(tag)


def test_unauthenticated_jobs_request_is_refused(ray_head):
    url, _ = ray_head
    token = (Path.home() / ".ray" / "auth_token").read_text().strip()
    assert http_status(f"{url}/api/jobs/") == 401
    assert http_status(f"{url}/api/jobs/", token="not-the-token") in (401, 403)
    assert http_status(f"{url}/api/jobs/", token=token) == 200


def test_submit_runs_the_sweep_as_a_job_until_succeeded(ray_head, tmp_path, blob_dataset_dir):
    url, tag = ray_head
    out = cli("submit", "smoke", "--address", url, "--data", blob_dataset_dir, "--storage", str(tmp_path),
              "--name", "job", tag=tag)
    assert out.returncode == 0, out.stderr[-3000:]
    job_id = re.search(r"submitted: (\S+)", out.stdout).group(1)
    assert f"{url}/#/jobs/{job_id}" in out.stdout and "instrument-sweep logs" in out.stdout
    assert "ray get-auth-token" in out.stdout  # how to get past the dashboard's token dialog

    def finished():
        status = cli("status", job_id, "--address", url, tag=tag).stdout.strip()
        return status if status in ("SUCCEEDED", "FAILED", "STOPPED") else None

    assert wait_until(finished, 240, "the job to finish", interval_s=2) == "SUCCEEDED", \
        cli("logs", job_id, "--address", url, tag=tag).stdout[-3000:]
    logs = cli("logs", job_id, "--address", url, tag=tag).stdout
    assert "[2/2 done]" in logs
    assert "cluster: Ray cluster at " in logs and "local Ray" not in logs  # the job joined the head's cluster
    assert len(analysis.load_trials(str(tmp_path / "job"))) == 2


def test_jobs_commands_refuse_bad_addresses(tmp_path):
    tag = new_tag()
    unreachable = cli("submit", "smoke", "--address", f"http://127.0.0.1:{free_port()}", tag=tag, timeout=180)
    assert unreachable.returncode == 2 and "cannot reach" in unreachable.stderr
    wrong_scheme = cli("status", "raysubmit_x", "--address", "ray://127.0.0.1:10001", tag=tag, timeout=180)
    assert wrong_scheme.returncode == 2 and "--address" in wrong_scheme.stderr


def non_loopback_ip() -> str | None:
    """This machine's outward address (no packet is sent), or None where it has only loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
            ip = s.getsockname()[0]
        except OSError:
            return None
    return None if ip.startswith("127.") else ip


def test_dashboard_and_jobs_api_listen_on_loopback_only(ray_head):
    url, _ = ray_head
    port = int(url.rsplit(":", 1)[1])
    ip = non_loopback_ip()
    if ip is None:
        pytest.skip("this machine has no non-loopback address")
    assert http_status(f"http://{ip}:{port}/api/jobs/") == 0  # nothing answers from outside
    assert http_status(f"{url}/api/jobs/") == 401


def test_rays_own_job_cli_needs_token_mode_and_run_joins_the_jobs_cluster(ray_head, tmp_path, blob_dataset_dir):
    """`ray job submit -- instrument-sweep run ...` (no --address): the driver joins the head's
    cluster through RAY_ADDRESS, and says so. Ray's CLI sends the token only with RAY_AUTH_MODE=token."""
    import subprocess
    import sys

    from processes import RAY_CLI, tagged_env

    url, tag = ray_head
    entrypoint = [sys.executable, "-m", "tune_jobs", "run", "smoke", "--data", blob_dataset_dir,
                  "--storage", str(tmp_path), "--name", "raycli", "--no-analyze"]
    without = subprocess.run([*RAY_CLI, "job", "list", "--address", url], capture_output=True, text=True,
                             timeout=180, env={k: v for k, v in tagged_env(tag).items() if k != "RAY_AUTH_MODE"})
    assert without.returncode != 0  # refused: no token sent
    out = subprocess.run([*RAY_CLI, "job", "submit", "--address", url, "--", *entrypoint], capture_output=True,
                         text=True, timeout=300, env=tagged_env(tag, RAY_AUTH_MODE="token"))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "cluster: Ray cluster at " in out.stdout and "local Ray" not in out.stdout
    assert "[2/2 done]" in out.stdout
