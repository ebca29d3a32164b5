"""Submit a sweep to a Ray cluster as a Ray Job, and follow it.

    instrument-sweep submit tune_jobs/sweeps/seed.yaml --address http://127.0.0.1:8265
    instrument-sweep status raysubmit_XXXX --address http://127.0.0.1:8265
    instrument-sweep logs raysubmit_XXXX --follow

The spec is validated here, then handed to the job as JSON; the job runs
`python -m tune_jobs run ... --address auto` on the head node with this project
as its working_dir, so the cluster needs the project's dependencies installed
(cluster.yaml does that) but no copy of the spec. The Jobs API listens on the
head's dashboard port, bound to 127.0.0.1 there: reach it by SSH tunnel
(`ray dashboard cluster.yaml`). Ray token auth is sent automatically when
~/.ray/auth_token or RAY_AUTH_TOKEN holds the cluster's token.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shlex
import time
from pathlib import Path

from analysis.storage import CREDENTIALS_ADVICE, split_credentials
from trainables.errors import InputError, first_line
from tune_jobs.cluster import check_reachable, parse_address, token_hint, use_token_if_available
from tune_jobs.ray_private import WITHOUT_FIXES_FLAG
from tune_jobs.security import private_token_file
from tune_jobs.spec import SweepSpec

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_JOBS_ADDRESS = "http://127.0.0.1:8265"
# On the head: its INSTRUMENT_SWEEP_STORAGE (cluster.yaml sets an s3:// URI), else a home folder.
JOB_STORAGE = '"${INSTRUMENT_SWEEP_STORAGE:-$HOME/instrument-sweep/sweeps}"'
AGENT_WAIT_S = 60.0  # how long a just-started head may take to accept jobs
WORKING_DIR_EXCLUDES = [".git", ".venv", "sweeps", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache"]


def jobs_address(address: str | None) -> str:
    """The Jobs API address: --address, else RAY_API_SERVER_ADDRESS, else the local default."""
    return address or os.environ.get("RAY_API_SERVER_ADDRESS") or DEFAULT_JOBS_ADDRESS


def client(address: str | None):
    from ray.job_submission import JobSubmissionClient

    address = jobs_address(address)
    host, port = parse_address(address, "--address", schemes=("http",))
    check_reachable(host, port)
    private_token_file()
    use_token_if_available()
    for name in ("ray", "ray.dashboard.modules.dashboard_sdk", "ray.dashboard.modules.job.sdk"):  # upload chatter
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        return JobSubmissionClient(address)
    except Exception as exc:  # noqa: BLE001 - connection, auth, version: all are the user's setup
        first = first_line(exc)
        refused = any(word in str(exc).lower() for word in ("authentica", "unauthorized", "forbidden"))
        raise InputError("--address", f"the Ray Jobs API at {address} refused the connection: {first}"
                                      + (f"; {token_hint()}" if refused else "")) from None


def entrypoint(spec: SweepSpec, storage: str | None, name: str | None, without_ray_fixes: bool = False) -> str:
    """The job's shell command; without a storage, the head's default (JOB_STORAGE) applies."""
    args = ["python", "-m", "tune_jobs", "run", "--spec-json", json.dumps(spec.to_dict()), "--address", "auto"]
    if name:
        args += ["--name", name]
    if without_ray_fixes:
        args += [WITHOUT_FIXES_FLAG]
    return shlex.join(args) + " --storage " + (shlex.quote(storage) if storage else JOB_STORAGE)


def submit(spec: SweepSpec, address: str | None, storage: str | None = None, name: str | None = None,
           without_ray_fixes: bool = False) -> str:
    """Submit the sweep; return the job's submission id. Credentials in a storage URI are refused: the
    job's command line, which the cluster keeps and shows, would hold them."""
    clean, credentials = split_credentials(storage) if storage else (storage, None)
    if credentials:
        raise InputError("--storage", f"{clean}: credentials in the URI would be written into the Ray job's command "
                                      f"line, which the cluster keeps and shows; {CREDENTIALS_ADVICE} on the cluster")
    if not (PROJECT_ROOT / "pyproject.toml").is_file():
        raise InputError("submit", f"needs the project's source checkout as working_dir; {PROJECT_ROOT} is not "
                                   "one (install with `pip install -e .` from a clone)")
    jobs = client(address)
    deadline = time.monotonic() + AGENT_WAIT_S
    while True:
        try:
            return jobs.submit_job(
                entrypoint=entrypoint(spec, storage, name, without_ray_fixes),
                runtime_env={"working_dir": str(PROJECT_ROOT), "excludes": WORKING_DIR_EXCLUDES},
                metadata={"sweep": spec.name},
            )
        except RuntimeError as exc:
            # A head that has just started answers before its job agent is up: wait for it.
            if "No available agent" in str(exc) and time.monotonic() < deadline:
                time.sleep(1.0)
                continue
            raise InputError("--address", f"the Ray Jobs API at {jobs_address(address)} refused the job: {exc}") from None


def status(job_id: str, address: str | None) -> str:
    try:
        return str(client(address).get_job_status(job_id))
    except RuntimeError as exc:
        raise InputError("JOB_ID", f"{job_id}: {exc}") from None


def logs(job_id: str, address: str | None, follow: bool = False) -> None:
    jobs = client(address)
    try:
        if not follow:
            print(jobs.get_job_logs(job_id), end="")
            return

        async def tail() -> None:
            async for chunk in jobs.tail_job_logs(job_id):
                print(chunk, end="", flush=True)

        asyncio.run(tail())
    except RuntimeError as exc:
        raise InputError("JOB_ID", f"{job_id}: {exc}") from None
