"""Sweeps stored on S3: a real S3-compatible server (moto's, tests/s3_server.py), real CLI processes.

The endpoint is named both ways a user can: in the URI's query string (`endpoint_override`,
`scheme`: Ray's and pyarrow's own) and in AWS_ENDPOINT_URL. Storage that cannot be used is
exit 2 with one line before Ray starts; a sweep interrupted or killed on S3 resumes with the
command it printed, and loses no epoch."""

import json
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest

import analysis
from analysis import storage
from processes import EpochGate, cli, free_port, spawn_cli, spec_file, tagged_env, wait_until
from trainables.errors import InputError
from s3_server import S3Server

pytestmark = pytest.mark.s3
BUCKET = "sweeps-bucket"

SHORT = {  # two trials, a few seconds each
    "name": "short",
    "train": {"n_hidden": 32},
    "stop": {"threshold": None, "max_epochs": 5},
    "views": {"lr": {"lr": [0.01, 0.001], "batch_size": 64}},
}
LONG = {  # three trials of 12 short epochs, interrupted twice while held at an epoch gate
    "name": "long",
    "train": {"n_hidden": 32},
    "stop": {"threshold": None, "max_epochs": 12},
    "views": {"lr": {"lr": [0.05, 0.01, 0.001], "batch_size": 8}},
}


@pytest.fixture(scope="module")
def s3():
    with S3Server() as server:
        server.create_bucket(BUCKET)
        yield server


@pytest.fixture(autouse=True)
def no_credentials_given(monkeypatch):
    """Each test's process starts without credentials given in a URI (analysis.storage keeps them)."""
    monkeypatch.setattr(storage, "_GIVEN", {})



def epochs_in(s3, experiment_path: str) -> dict[str, list[int]]:
    """Each trial's epochs as its result.json on S3 lists them (every row, not the analysis)."""
    found = {}
    for path in s3.files(experiment_path):
        if path.endswith("/result.json") and path.split("/")[-2].startswith("trial-"):  # not a checkpoint's
            found[path.split("/")[-2]] = [json.loads(line)["epoch"] for line in s3.read_text(path).splitlines()]
    return found


# -- Ray-free: the storage is checked before anything starts ----------------------------------

def test_uri_parts_go_into_the_path_ahead_of_the_query():
    root = "s3://b/sweeps?endpoint_override=127.0.0.1:9000&scheme=http"
    assert storage.join(root, "s1", "sweep.yaml") == \
        "s3://b/sweeps/s1/sweep.yaml?endpoint_override=127.0.0.1:9000&scheme=http"
    assert storage.basename(storage.join(root, "s1")) == "s1"
    assert storage.parent(storage.join(root, "s1")) == root
    assert storage.is_under(root, storage.join(root, "s1"))
    assert not storage.is_under(root, "s3://b/sweeps/s1")  # another endpoint: another store
    assert not storage.is_under(root, "s3://b/sweeps-other/s1?endpoint_override=127.0.0.1:9000&scheme=http")


@pytest.mark.slow  # real processes, 3-15 s each; no Ray
@pytest.mark.parametrize("case", ["missing bucket", "endpoint not answering"])
def test_storage_that_cannot_be_used_is_exit_2_in_one_line_before_ray_starts(s3, tmp_path, process_tag,
                                                                             blob_dataset_dir, case):
    where = (s3.uri("no-such-bucket/sweeps") if case == "missing bucket"
             else f"s3://{BUCKET}/sweeps?endpoint_override=127.0.0.1:{free_port()}&scheme=http")
    out = cli("run", spec_file(tmp_path, SHORT), "--data", blob_dataset_dir, "--storage", where, tag=process_tag,
              timeout=120, **s3.env)
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("error: --storage: "), out.stderr
    assert ("bucket 'no-such-bucket' does not exist" if case == "missing bucket" else "cannot reach") in out.stderr
    assert "cluster:" not in out.stdout and "results:" not in out.stdout  # Ray never started
    if case == "missing bucket":  # resume and analyze check the same way (an endpoint not answering: 6 s a try)
        resumed = cli("resume", "x", "--storage", where, tag=process_tag, timeout=120, **s3.env)
        assert resumed.returncode == 2 and resumed.stderr.startswith("error: --storage: "), resumed.stderr
        analyzed = cli("analyze", storage.join(where, "x"), tag=process_tag, timeout=120, **s3.env)
        assert analyzed.returncode == 2 and analyzed.stderr.startswith("error: PATH: bucket 'no-such-bucket'"), \
            analyzed.stderr


@pytest.mark.slow  # a real process; no Ray
def test_a_name_that_a_uri_cannot_hold_is_exit_2_before_anything_is_written(s3, tmp_path, process_tag,
                                                                             blob_dataset_dir):
    out = cli("run", spec_file(tmp_path, SHORT), "--data", blob_dataset_dir, "--storage",
              s3.uri(f"{BUCKET}/named"), "--name", "my sweep", tag=process_tag, timeout=120, **s3.env)
    assert out.returncode == 2 and out.stderr.startswith("error: --name: 'my sweep': an experiment stored at a "
                                                         "URI is named with letters"), out.stderr
    assert not s3.files(f"{BUCKET}/named")


# -- With Ray ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_run_resume_analyze_and_the_notebook_api_with_the_endpoint_in_the_uri(s3, tmp_path, process_tag, blob_dataset_dir):
    root = s3.uri(f"{BUCKET}/in-uri")
    out = cli("run", spec_file(tmp_path, SHORT), "--data", blob_dataset_dir, "--storage", root, "--name", "u",
              "--no-analyze", tag=process_tag, **s3.env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert f"results: {storage.join(root, 'u')}" in out.stdout
    found = epochs_in(s3, f"{BUCKET}/in-uri/u")
    assert len(found) == 2 and all(e == [1, 2, 3, 4, 5] for e in found.values()), found
    resumed = cli("resume", "u", "--storage", root, "--no-analyze", tag=process_tag, **s3.env)  # nothing left
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert epochs_in(s3, f"{BUCKET}/in-uri/u") == found

    analyzed = subprocess.run([sys.executable, "-m", "tune_jobs", "analyze", storage.join(root, "u")],
                              capture_output=True, text=True, timeout=300, cwd=tmp_path,
                              env=tagged_env(process_tag, **s3.env))
    assert analyzed.returncode == 0, analyzed.stderr[-3000:]
    assert (tmp_path / "analysis-u" / "report.md").is_file()  # a cloud experiment's report lands here

    code = (f"from tune_jobs import sweep; r = sweep({spec_file(tmp_path, SHORT)!r}, data={blob_dataset_dir!r}, "
            f"storage={root!r}, name='nb', analyze=False); print('TRIALS', len(r.trials), r.exit_code, r.path)")
    notebook = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                              env=tagged_env(process_tag, **s3.env))
    assert notebook.returncode == 0, notebook.stderr[-3000:]
    assert f"TRIALS 2 0 {storage.join(root, 'nb')}" in notebook.stdout


@pytest.mark.slow
def test_interrupted_then_killed_sweep_on_s3_resumes_as_printed_losing_nothing(s3, tmp_path, process_tag,
                                                                                 blob_dataset_dir):
    """AWS_ENDPOINT_URL names the endpoint. Ctrl-C while two trials wait after epoch 4: the run
    prints the resume command; run as printed, that resume is killed (SIGKILL, its process group)
    while two trials wait after epoch 8; the same command again finishes every trial, each epoch
    in result.json exactly once; `analyze` reads it."""
    env = {**s3.env, "AWS_ENDPOINT_URL": s3.endpoint_url}
    root, experiment = f"s3://{BUCKET}/by-env", f"{BUCKET}/by-env/k"
    gate = EpochGate(tmp_path / "gate", epochs=4)

    log = tmp_path / "run.log"
    run = spawn_cli("run", spec_file(tmp_path, LONG), "--data", blob_dataset_dir, "--storage", root, "--name", "k",
                    "--no-analyze", tag=process_tag, log=log, **env, **gate.env)
    gate.wait_held(2, sweep=run, log=log)
    os.kill(run.pid, signal.SIGINT)
    assert run.wait(120) == 130, log.read_text()[-3000:]
    hint = re.search(r"continue with `(instrument-sweep resume [^`]+)`", log.read_text())
    assert hint, log.read_text()[-3000:]
    resume = shlex.split(hint.group(1))[1:]  # as printed, the console script's name aside
    stopped = epochs_in(s3, experiment)
    assert sorted(map(len, stopped.values()))[-2:] == [4, 4], stopped  # the two held trials' epochs, on S3

    log = tmp_path / "resume.log"
    gate.allow(8)
    killed = spawn_cli(*resume, "--no-analyze", tag=process_tag, log=log, **env, **gate.env)
    gate.wait_held(2, sweep=killed, log=log)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait(60)
    gate.open()  # for what the killed run left behind; the last resume runs without the gate

    out = cli(*resume, "--no-analyze", tag=process_tag, timeout=600, **env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    found = epochs_in(s3, experiment)
    assert len(found) == 3 and all(e == list(range(1, 13)) for e in found.values()), found
    assert len(analysis.load_trials(s3.uri(experiment))) == 3
    analyzed = subprocess.run([sys.executable, "-m", "tune_jobs", "analyze", f"s3://{experiment}"], capture_output=True,
                              text=True, timeout=300, cwd=tmp_path, env=tagged_env(process_tag, **env))
    assert analyzed.returncode == 0 and (tmp_path / "analysis-k" / "report.md").is_file(), analyzed.stderr[-3000:]


# -- Credentials in the URI -------------------------------------------------------------------

ACCESS_KEY = "AKIAISSWEEP40TEST"
SECRET = "s3Cr+t/Kx40q9ZmVh2WnT0pB7LdR4yJc8uEfA6gN"  # like AWS's: 40 characters, '+' and '/' among them
CREDENTIALED = {  # two trials of 8 short epochs, a checkpoint after each: interrupted while held at epoch 2
    "name": "cred",
    "train": {"n_hidden": 32},
    "stop": {"threshold": None, "max_epochs": 8},
    "views": {"lr": {"lr": [0.05, 0.01], "batch_size": 8}},
    "resources": {"checkpoint_every_s": 0},
}


def secret_forms(secret: str) -> list[bytes]:
    """How a secret can sit in a file: as it is, percent-encoded (in a URI), as hex (Ray's experiment
    state holds pickles as hex) and in base64 (at each of its 3 alignments, whole groups only)."""
    import base64

    raw = secret.encode()
    return [raw, quote(secret, safe="").encode(), raw.hex().encode(),
            *(base64.b64encode(raw[i:])[:4 * ((len(raw) - i) // 3)] for i in range(3))]


def with_credentials(uri: str) -> str:
    """s3://KEY:SECRET@rest, the secret percent-encoded as a URI holds it."""
    return uri.replace("s3://", f"s3://{ACCESS_KEY}:{quote(SECRET, safe='')}@", 1)


def test_credentials_in_an_s3_uri_are_taken_out_and_its_filesystems_built_with_them():
    """User info (percent-decoded, as pyarrow reads it) or the query's access_key/secret_key/
    session_token; the rest of the query stays, in order; the store's filesystems get them, another
    store's (bucket or endpoint) do not."""
    query = "endpoint_override=127.0.0.1:1&scheme=http&region=us-east-1"
    clean = f"s3://cred-bucket/sweeps?{query}"
    assert storage.split_credentials(with_credentials(clean))[0] == clean
    assert storage.split_credentials(clean.replace("s3://", f"s3://{ACCESS_KEY}:{SECRET}@"))[0] == clean  # '/' as is
    by_query = f"s3://cred-bucket/sweeps?endpoint_override=127.0.0.1:1&access_key={ACCESS_KEY}&secret_key=" \
               f"{quote(SECRET, safe='')}&scheme=http&session_token=tok%2Fen&region=us-east-1"
    assert storage.split_credentials(by_query) == (clean, storage.Credentials(ACCESS_KEY, SECRET, "tok/en"))
    for plain in (clean, "s3://b/x", "/local/path", "hdfs://user@namenode:8020/x", "s3://b/runs@2/x"):
        assert storage.split_credentials(plain) == (plain, None)  # a user name is no secret, nor a key's '@'
    at_in_key = f"s3://cred-bucket/sweeps@v2/x?{query}"  # the bucket is what follows the credentials' '@'
    assert storage.split_credentials(with_credentials(at_in_key))[0] == at_in_key
    assert storage.split_credentials(at_in_key.replace("s3://", f"s3://{ACCESS_KEY}:{SECRET}@"))[0] == at_in_key

    assert storage.take_credentials(with_credentials(clean)) == clean
    fs, path = storage.filesystem(storage.join(clean, "x", "sweep.yaml"))
    assert path == "cred-bucket/sweeps/x/sweep.yaml"
    options = storage.s3_options(fs)
    assert (options["access_key"], options["secret_key"], options["endpoint_override"]) == \
        (ACCESS_KEY, SECRET, "127.0.0.1:1")
    assert storage.given_credentials(storage.join(clean, "x")) and "credentials" in storage.credentials_hint(clean)
    for other in ("s3://other-bucket/sweeps?" + query, "s3://cred-bucket/sweeps?" + query.replace(":1", ":2")):
        assert not storage.s3_options(storage.filesystem(other)[0])["secret_key"]
        assert not storage.given_credentials(other) and storage.credentials_hint(other) == ""
    assert SECRET not in repr(storage.split_credentials(with_credentials(clean))[1])


@pytest.mark.parametrize("uri", [f"abfs://account:{SECRET}@container/sweeps",
                                 f"abfs://container@account.dfs.core.windows.net/x?client_secret={SECRET}",
                                 "s3://KEYONLY@bucket/x", f"s3://bucket/x?secret_key={SECRET}"])
def test_credentials_that_cannot_be_taken_are_refused_without_showing_them(uri):
    with pytest.raises(InputError) as refused:
        storage.resolve_storage(uri)
    assert refused.value.where == "--storage" and SECRET not in str(refused.value), refused.value
    assert "environment" in refused.value.problem


def test_redact_hides_a_uris_password_and_secret_parameters_only():
    text = (f"s3://{ACCESS_KEY}:{SECRET}@b/x?endpoint_override=h:1&secret_key={SECRET}&region=r, "
            "hdfs://user@namenode/x")
    assert storage.redact(text) == (f"s3://{ACCESS_KEY}:***@b/x?endpoint_override=h:1&secret_key=***&region=r, "
                                    "hdfs://user@namenode/x")


def test_what_ray_is_handed_pickles_no_credentials_outside_rays_transfers():
    """Outside Ray's transfers (Tune's tuner.pkl, its experiment state) the filesystem pickles as
    pyarrow's own without credentials; a copy keeps them (Ray's side: test_private_apis)."""
    import copy
    import pickle

    import pyarrow.fs

    from tune_jobs import ray_private

    root = storage.take_credentials(with_credentials("s3://ship-bucket/s?endpoint_override=127.0.0.1:1&scheme=http"))
    fs, path = ray_private.storage_for_ray(root)
    assert path == "ship-bucket/s" and storage.s3_options(fs)["secret_key"] == SECRET
    stored = pickle.dumps(fs)
    assert not any(form in stored for form in secret_forms(SECRET))
    assert type(pickle.loads(stored)) is pyarrow.fs.S3FileSystem
    assert storage.s3_options(pickle.loads(stored))["endpoint_override"] == "127.0.0.1:1"
    assert copy.deepcopy(fs) is fs and copy.copy(fs) is fs
    plain, _ = storage.filesystem("s3://other/s?endpoint_override=127.0.0.1:1&scheme=http")
    assert ray_private.shipped_to_workers(plain) is plain  # nothing to keep out
    assert ray_private.storage_for_ray("/local/sweeps") == (None, "/local/sweeps")


def test_commands_that_would_write_uri_credentials_down_refuse_them(capsys):
    """A Ray job's command line (`submit`), a Slurm job's script (`slurm`: no URI at all), Ray Client
    (ray://, whose transfer leaves them out): exit 2, one line, the secret not in it."""
    from tune_jobs import cli, cli_sweep
    from tune_jobs.slurm import submit

    uri = with_credentials("s3://refuse-bucket/s?endpoint_override=127.0.0.1:1&scheme=http")
    assert cli.main(["submit", "smoke", "--storage", uri, "--address", "http://127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --storage: s3://refuse-bucket/s?") and "command line" in err, err
    with pytest.raises(InputError) as slurm:
        submit.shared_storage(uri)
    with pytest.raises(InputError) as client:
        cli_sweep.check_ray_client(storage.take_credentials(uri), "ray://127.0.0.1:10001")
    for text in (err, str(slurm.value), str(client.value)):
        assert not any(form.decode() in text for form in secret_forms(SECRET)), text


@pytest.mark.slow
def test_credentials_in_the_uri_are_used_and_never_printed_or_stored(s3, tmp_path, process_tag, blob_dataset_dir):
    """Credentials in --storage's URI and none in the environment (no AWS_* variable, a HOME without
    ~/.aws): the sweep runs (its trials write their checkpoints to S3 from Ray's workers), is
    interrupted once a checkpoint is on S3, resumes as its hint says (the credentials given again
    in the URI), and is analyzed; errors about such a URI show it redacted. The secret is in no
    command's output, no object on the bucket (pickles included) and no file under the run's
    directories: HOME, the working directory, Ray's temp dir."""
    import shutil
    import tempfile

    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir(), work.mkdir()
    ray_temp = tempfile.mkdtemp(prefix="40-ray-", dir="/tmp")  # short: Ray's socket paths must stay under 108 bytes
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({"HOME": str(home), "RAY_TMPDIR": ray_temp, "TMPDIR": str(tmp_path), "PYTHONUNBUFFERED": "1",
                "INSTRUMENT_SWEEP_TEST_TAG": process_tag})
    gate = EpochGate(tmp_path / "gate", epochs=2)  # the first run's trials wait after epoch 2 (checkpointed)
    root = f"s3://{BUCKET}/cred?endpoint_override={s3.endpoint}&scheme=http&region=us-east-1"
    experiment = f"{BUCKET}/cred/c"
    outputs = []

    def instrument_sweep(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, "-m", "tune_jobs", *args], capture_output=True, text=True,
                              timeout=timeout, cwd=work, env=env)
        outputs.append(done.stdout + done.stderr)
        return done

    try:
        log = tmp_path / "run.log"
        run = subprocess.Popen([sys.executable, "-m", "tune_jobs", "run", spec_file(tmp_path, CREDENTIALED),
                                "--data", blob_dataset_dir, "--storage", with_credentials(root), "--name", "c",
                                "--no-analyze"], stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=work,
                               env={**env, **gate.env}, start_new_session=True)
        gate.wait_held(1, sweep=run, log=log)
        assert any("/checkpoint_" in p for p in s3.files(experiment)), log.read_text()[-3000:]  # from Ray's workers
        os.kill(run.pid, signal.SIGINT)
        assert run.wait(120) == 130, log.read_text()[-3000:]
        outputs.append(log.read_text())
        hint = re.search(r"continue with `(instrument-sweep resume [^`]+)`(.*)", log.read_text())
        assert hint, log.read_text()[-3000:]
        resume = shlex.split(hint.group(1))[1:]
        at = resume.index("--storage") + 1
        problems = [] if resume[at] == root and "credentials" in hint.group(2) else \
            [f"the resume hint, which should name {root} and say how to give its credentials: {hint.group(0)}"]
        resume[at] = with_credentials(re.sub(r"^s3://[^/@]*@", "s3://", resume[at]))  # given again as they were

        resumed = instrument_sweep(*resume, "--no-analyze", timeout=400)
        assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
        found = epochs_in(s3, experiment)
        assert len(found) == 2 and all(e == list(range(1, 9)) for e in found.values()), found
        analyzed = instrument_sweep("analyze", with_credentials(storage.join(root, "c")))
        assert analyzed.returncode == 0 and (work / "analysis-c" / "report.md").is_file(), analyzed.stderr[-3000:]

        # Errors about such a URI (pyarrow's refusal of a query parameter, a missing bucket) show it without them.
        for uri, problem in ((f"s3://{BUCKET}/x/c?colour=blue", f"s3://{BUCKET}/x/c?colour=blue is not a storage URI"),
                             (storage.join(root.replace(BUCKET, "no-such-bucket"), "c"),
                              "bucket 'no-such-bucket' does not exist")):
            refused = instrument_sweep("analyze", with_credentials(uri), timeout=120)
            assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
            assert problem in refused.stderr, refused.stderr

        leaks = [f"the output of command {i}" for i, text in enumerate(outputs)
                 if any(form in text.encode() for form in secret_forms(SECRET))]
        for path in s3.objects(BUCKET):
            with s3.filesystem().open_input_stream(path) as f:
                data = f.read()
            leaks += [f"s3://{path}"] * any(form in data for form in secret_forms(SECRET))
        for folder in (tmp_path, Path(ray_temp)):
            for file in folder.rglob("*"):
                if file.is_file() and not file.is_symlink():
                    data = file.read_bytes()
                    leaks += [str(file)] * any(form in data for form in secret_forms(SECRET))
        problems += [f"the secret is in {', '.join(leaks)}"] if leaks else []
        assert not problems, "; ".join(problems)
    finally:
        shutil.rmtree(ray_temp, ignore_errors=True)
